//! One webhook request derived from bytes, and the webhook's promises checked on its answer.
//!
//! Shared by the fuzz target (`fuzz_targets/webhook.rs`) and the stable property test and corpus
//! replay (`crates/core/tests/webhook_props.rs`), so a corpus file is the same request to both.
//!
//! An input is `[flags, delivery, text_len, text.., body..]`:
//! - flags bits 0-1, the signature header: 0 correct for the body, 1 `text`, 2 absent,
//!   3 well-formed but made with another secret;
//! - bits 2-3, the event header: 0 `workflow_job`, 1 `ping`, 2 `text`, 3 absent;
//! - bits 4-5, the transport: 0 `Webhook::answer`, 1 an API Gateway v2 event with a text body,
//!   2 the same with a base64 body, 3 `Webhook::answer` with the method and path taken from `text`;
//! - bit 6, the body: 0 raw bytes, 1 edits to a queued delivery of ours (see [`Edit`]);
//! - bit 7: the queue refuses the send.
//!
//! `delivery`: 0 no `X-GitHub-Delivery`, 255 `text`, anything else `delivery-<n>`.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};

use base64::Engine;
use lambda_http::http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Value, json};
use sophons_core::Config;
use sophons_core::fakes::FakeQueue;
use sophons_core::job::JobMessage;
use sophons_core::queue::QueueError;
use sophons_core::webhook::{DELIVERY_HEADER, Decision, EVENT_HEADER, SIGNATURE_HEADER, Webhook, sign};

pub const SECRET: &[u8] = b"It's a Secret to Everybody";
pub const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/sophons-jobs";
/// Low enough that the fuzzer (`-max_len=20000`) reaches the 413 row.
pub const MAX_BODY_BYTES: usize = 16_384;

/// The webhook's table as the README documents it, written out again so that a change to
/// `Decision::status` is caught here rather than trusted.
pub const ROWS: [(Decision, &str, u16); 10] = [
    (Decision::NotFound, "not_found", 404),
    (Decision::MethodNotAllowed, "method_not_allowed", 405),
    (Decision::TooLarge, "too_large", 413),
    (Decision::Unauthorized, "unauthorized", 401),
    (Decision::Pong, "pong", 200),
    (Decision::Ignored, "ignored", 202),
    (Decision::BadRequest, "bad_request", 400),
    (Decision::Forbidden, "forbidden", 403),
    (Decision::Enqueued, "enqueued", 202),
    (Decision::QueueFailed, "queue_failed", 500),
];

/// The rows an unsigned request may get: everything decided before the signature is read.
pub const UNSIGNED_ROWS: [&str; 4] = ["not_found", "method_not_allowed", "too_large", "unauthorized"];

pub static CONFIG: LazyLock<Arc<Config>> = LazyLock::new(|| {
    let document = json!({
        "deployment": "sophons",
        "queue_url": QUEUE,
        "dlq_url": format!("{QUEUE}-dlq"),
        "webhook_secret_param": "/sophons/github/webhook-secret",
        "slots_table": "sophons-slots",
        "max_body_bytes": MAX_BODY_BYTES,
        "github": { "api_url": "https://api.github.com", "owner": "my-org", "scope": "org",
                    "runner_group_id": 1, "token_param": "/sophons/github/token" },
        "repositories": ["my-org/app", "my-org/Hello-World"],
        "allow_public_repositories": false,
        "runner_script": { "bucket": "sophons-scripts", "key": "runner.sh" },
        "templates": {
            "template_cpu": { "labels": ["linux", "x64"], "launch_template": "sophons-template_cpu",
                              "instance_types": ["c7i.large"], "subnet_ids": ["subnet-0abc"], "max_runners": 20 },
            "template_gpu": { "labels": ["linux", "x64", "gpu"], "launch_template": "sophons-template_gpu",
                              "instance_types": ["g5.xlarge"], "subnet_ids": ["subnet-0abc"], "max_runners": 2 }
        }
    });
    Arc::new(Config::parse(&document.to_string()).expect("the fuzz config is valid"))
});

/// GitHub's documented `queued` delivery, made one of ours: it is enqueued as it stands.
pub static QUEUED: LazyLock<Value> = LazyLock::new(|| {
    let mut payload: Value = serde_json::from_str(include_str!(
        "../../crates/testkit/fixtures/github-webhooks/workflow_job.queued.payload.json"
    ))
    .expect("the fixture is JSON");
    payload["workflow_job"]["labels"] = json!(["self-hosted", "template_cpu"]);
    payload["repository"]["full_name"] = json!("my-org/app");
    payload["repository"]["name"] = json!("app");
    payload["repository"]["owner"]["login"] = json!("my-org");
    payload["repository"]["private"] = json!(true);
    payload
});

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    Correct,
    FromText,
    Absent,
    OtherSecret,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    WorkflowJob,
    Ping,
    FromText,
    Absent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Answer,
    ApiGatewayText,
    ApiGatewayBase64,
    AnswerOddRoute,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub signature: Signature,
    pub event: Event,
    pub transport: Transport,
    pub json_edits: bool,
    pub queue_refuses: bool,
    pub delivery: u8,
    pub text: Vec<u8>,
    pub body: Vec<u8>,
}

impl Input {
    pub fn from_bytes(data: &[u8]) -> Self {
        let flags = data.first().copied().unwrap_or(0);
        let delivery = data.get(1).copied().unwrap_or(1);
        let text_len = usize::from(data.get(2).copied().unwrap_or(0));
        let rest = data.get(3..).unwrap_or_default();
        let (text, body) = rest.split_at(text_len.min(rest.len()));
        Self {
            signature: [
                Signature::Correct,
                Signature::FromText,
                Signature::Absent,
                Signature::OtherSecret,
            ][usize::from(flags & 3)],
            event: [Event::WorkflowJob, Event::Ping, Event::FromText, Event::Absent][usize::from((flags >> 2) & 3)],
            transport: [
                Transport::Answer,
                Transport::ApiGatewayText,
                Transport::ApiGatewayBase64,
                Transport::AnswerOddRoute,
            ][usize::from((flags >> 4) & 3)],
            json_edits: flags & 0x40 != 0,
            queue_refuses: flags & 0x80 != 0,
            delivery,
            text: text.to_vec(),
            body: body.to_vec(),
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let position = |all: &[bool]| all.iter().position(|&b| b).unwrap_or(0) as u8;
        let signature = position(&[
            self.signature == Signature::Correct,
            self.signature == Signature::FromText,
            self.signature == Signature::Absent,
            self.signature == Signature::OtherSecret,
        ]);
        let event = position(&[
            self.event == Event::WorkflowJob,
            self.event == Event::Ping,
            self.event == Event::FromText,
            self.event == Event::Absent,
        ]);
        let transport = position(&[
            self.transport == Transport::Answer,
            self.transport == Transport::ApiGatewayText,
            self.transport == Transport::ApiGatewayBase64,
            self.transport == Transport::AnswerOddRoute,
        ]);
        let flags = signature
            | (event << 2)
            | (transport << 4)
            | (u8::from(self.json_edits) << 6)
            | (u8::from(self.queue_refuses) << 7);
        let text = &self.text[..self.text.len().min(255)];
        let mut bytes = vec![flags, self.delivery, text.len() as u8];
        bytes.extend_from_slice(text);
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// The body as sent: the raw bytes, or the queued delivery with the edits applied.
    pub fn payload(&self) -> Vec<u8> {
        if !self.json_edits {
            return self.body.clone();
        }
        let mut payload = QUEUED.clone();
        for edit in Edit::parse(&self.body) {
            edit.apply(&mut payload);
        }
        serde_json::to_vec(&payload).expect("a Value always serialises")
    }
}

/// The fields of a delivery the webhook reads (and a few it does not), by number.
pub const FIELDS: [&[&str]; 17] = [
    &["action"],
    &["workflow_job", "id"],
    &["workflow_job", "run_id"],
    &["workflow_job", "run_attempt"],
    &["workflow_job", "labels"],
    &["workflow_job", "name"],
    &["workflow_job", "workflow_name"],
    &["workflow_job", "html_url"],
    &["workflow_job", "created_at"],
    &["workflow_job", "head_branch"],
    &["repository", "full_name"],
    &["repository", "name"],
    &["repository", "private"],
    &["repository", "owner", "login"],
    &["repository", "owner"],
    &["workflow_job"],
    &["repository"],
];
/// Field number `FIELDS.len()` appends to `workflow_job.labels` instead of replacing a field.
pub const PUSH_LABEL: u8 = FIELDS.len() as u8;

/// Words that make the webhook take its other branches.
pub const WORDS: [&str; 12] = [
    "self-hosted",
    "template_cpu",
    "template_gpu",
    "linux",
    "x64",
    "gpu",
    "Self-Hosted",
    "queued",
    "completed",
    "my-org",
    "my-org/app",
    "my-org/Hello-World",
];

/// One edit of the queued delivery: `[field, kind, len, bytes..]` in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub field: u8,
    pub kind: u8,
    pub bytes: Vec<u8>,
}

impl Edit {
    pub fn parse(mut data: &[u8]) -> Vec<Edit> {
        let mut edits = Vec::new();
        while let [field, kind, len, rest @ ..] = data {
            let (bytes, rest) = rest.split_at(usize::from(*len).min(rest.len()));
            edits.push(Edit {
                field: *field,
                kind: *kind,
                bytes: bytes.to_vec(),
            });
            data = rest;
        }
        edits
    }

    pub fn encode(edits: &[Edit]) -> Vec<u8> {
        let mut data = Vec::new();
        for edit in edits {
            let bytes = &edit.bytes[..edit.bytes.len().min(255)];
            data.extend_from_slice(&[edit.field, edit.kind, bytes.len() as u8]);
            data.extend_from_slice(bytes);
        }
        data
    }

    /// The new value; `None` removes the field.
    fn value(&self) -> Option<Value> {
        let bytes = &self.bytes;
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        let number = u64::from_be_bytes(word);
        Some(match self.kind % 10 {
            0 => return None,
            1 => Value::String(String::from_utf8_lossy(bytes).into_owned()),
            2 => json!(number),
            3 => json!(-(number as i64).wrapping_abs().max(1)),
            4 => json!(f64::from_bits(number)),
            5 => json!(number % 2 == 1),
            6 => Value::Null,
            7 => json!(
                bytes
                    .split(|&b| b == b',')
                    .map(|label| String::from_utf8_lossy(label).into_owned())
                    .collect::<Vec<_>>()
            ),
            8 => json!({}),
            _ => json!(WORDS[usize::from(bytes.first().copied().unwrap_or(0)) % WORDS.len()]),
        })
    }

    pub fn apply(&self, payload: &mut Value) {
        let field = self.field % (PUSH_LABEL + 1);
        if field == PUSH_LABEL {
            let labels = object_at(payload, &["workflow_job"])
                .entry("labels")
                .or_insert_with(|| json!([]));
            if !labels.is_array() {
                *labels = json!([]);
            }
            if let (Some(labels), Some(value)) = (labels.as_array_mut(), self.value()) {
                labels.push(value);
            }
            return;
        }
        let path = FIELDS[usize::from(field)];
        let (last, parents) = path.split_last().expect("no field path is empty");
        let object = object_at(payload, parents);
        match self.value() {
            Some(value) => {
                object.insert((*last).to_string(), value);
            }
            None => {
                object.remove(*last);
            }
        }
    }
}

/// The object at `path`, made one (replacing whatever was there) where it is not.
fn object_at<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut serde_json::Map<String, Value> {
    let mut node = value;
    for key in path {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .expect("made an object above")
            .entry(*key)
            .or_insert_with(|| json!({}));
    }
    if !node.is_object() {
        *node = json!({});
    }
    node.as_object_mut().expect("made an object above")
}

/// What the webhook answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub decision: String,
    pub status: u16,
    pub enqueued: usize,
}

/// Runs the input through the webhook and panics, saying which promise broke, if one did.
/// `None`: the bytes make no API Gateway event (API Gateway would not have sent it).
pub fn check(input: &Input) -> Option<Observed> {
    // A fresh FakeQueue per input: it records every send, so one shared across a million runs
    // would grow without bound, and "nothing was enqueued" is then about this input alone.
    let queue = Arc::new(FakeQueue::default());
    if input.queue_refuses {
        queue.refuse_with(QueueError::Refused {
            queue_url: QUEUE.into(),
            reason: "refused by the fuzz input".into(),
        });
    }
    let webhook = Webhook::new(CONFIG.clone(), SECRET, queue.clone());
    let payload = input.payload();
    // The body exactly as the webhook will see it: a text body reaches it as UTF-8.
    let seen = match input.transport {
        Transport::ApiGatewayText => String::from_utf8_lossy(&payload).into_owned().into_bytes(),
        _ => payload.clone(),
    };
    let text = String::from_utf8_lossy(&input.text).into_owned();
    let signature: Option<Vec<u8>> = match input.signature {
        Signature::Correct => Some(sign(SECRET, &seen).into_bytes()),
        Signature::FromText => Some(input.text.clone()),
        Signature::Absent => None,
        Signature::OtherSecret => Some(sign(b"another secret", &seen).into_bytes()),
    };
    let event: Option<Vec<u8>> = match input.event {
        Event::WorkflowJob => Some(b"workflow_job".to_vec()),
        Event::Ping => Some(b"ping".to_vec()),
        Event::FromText => Some(input.text.clone()),
        Event::Absent => None,
    };
    let delivery: Option<Vec<u8>> = match input.delivery {
        0 => None,
        255 => Some(input.text.clone()),
        n => Some(format!("delivery-{n}").into_bytes()),
    };
    let headers = [
        (SIGNATURE_HEADER, signature),
        (EVENT_HEADER, event),
        (DELIVERY_HEADER, delivery),
        ("content-type", Some(b"application/json".to_vec())),
    ];

    let (method, path) = match input.transport {
        Transport::AnswerOddRoute => {
            let methods = [Method::GET, Method::POST, Method::PUT, Method::HEAD, Method::OPTIONS];
            let method = methods[usize::from(input.text.first().copied().unwrap_or(0)) % methods.len()].clone();
            (method, text.chars().skip(1).collect::<String>())
        }
        _ => (Method::POST, "/webhook".to_string()),
    };
    let standard_route = method == Method::POST && (path == "/webhook" || path.ends_with("/webhook"));

    let observed = match input.transport {
        Transport::Answer | Transport::AnswerOddRoute => {
            let mut map = HeaderMap::new();
            for (name, value) in &headers {
                // A value no HTTP request can carry is a header that was not sent.
                if let Some(value) = value.as_deref().and_then(|v| HeaderValue::from_bytes(v).ok()) {
                    map.insert(HeaderName::from_static(name), value);
                }
            }
            let answer = block_on(webhook.answer(&method, &path, &map, &seen));
            let row = ROWS
                .iter()
                .find(|(decision, ..)| *decision == answer.decision)
                .unwrap_or_else(|| panic!("{:?} is not a row of the table", answer.decision));
            assert_eq!(answer.decision.as_str(), row.1, "{:?} is named as in the table", row.0);
            assert_eq!(
                answer.decision.status().as_u16(),
                row.2,
                "{:?} answers its status",
                row.0
            );
            if answer.decision == Decision::Enqueued {
                assert!(answer.job_id.is_some(), "an enqueued answer names its job");
            }
            Observed {
                decision: row.1.to_string(),
                status: row.2,
                enqueued: queue.sent().len(),
            }
        }
        Transport::ApiGatewayText | Transport::ApiGatewayBase64 => {
            let base64 = input.transport == Transport::ApiGatewayBase64;
            let headers: serde_json::Map<String, Value> = headers
                .iter()
                .filter_map(|(name, value)| {
                    let value = value.as_deref()?;
                    Some((
                        name.to_string(),
                        Value::String(String::from_utf8_lossy(value).into_owned()),
                    ))
                })
                .collect();
            let body = if base64 {
                base64::engine::general_purpose::STANDARD.encode(&payload)
            } else {
                String::from_utf8_lossy(&payload).into_owned()
            };
            let event = api_gateway_event(headers, body, base64);
            let request = lambda_http::request::from_str(&event.to_string()).ok()?;
            let response = block_on(webhook.handle(request));
            let status = response.status().as_u16();
            let body: Value = match response.body() {
                lambda_http::Body::Text(text) => serde_json::from_str(text).expect("the answer is JSON"),
                other => panic!("the answer is a JSON text body, not {other:?}"),
            };
            let name = body["decision"].as_str().expect("the answer names its decision");
            let row = ROWS
                .iter()
                .find(|(_, row_name, _)| *row_name == name)
                .unwrap_or_else(|| panic!("`{name}` is not a row of the table"));
            assert_eq!(status, row.2, "`{name}` answers its status");
            assert!(body["reason"].is_string(), "the answer says why");
            Observed {
                decision: name.to_string(),
                status,
                enqueued: queue.sent().len(),
            }
        }
    };

    let signed = input.signature == Signature::Correct;
    if !signed {
        assert_eq!(observed.enqueued, 0, "an unsigned request enqueued a job: {observed:?}");
        assert!(
            UNSIGNED_ROWS.contains(&observed.decision.as_str()),
            "an unsigned request got past the signature check: {observed:?}"
        );
    } else if standard_route && seen.len() <= MAX_BODY_BYTES {
        assert!(
            !UNSIGNED_ROWS.contains(&observed.decision.as_str()),
            "a correctly signed request was refused before its event was read: {observed:?}"
        );
    }
    if observed.decision == "enqueued" {
        let sent = queue.sent();
        assert_eq!(sent.len(), 1, "an enqueued job is sent exactly once");
        let message = JobMessage::decode(&sent[0].body).expect("the message decodes");
        assert!(CONFIG.templates.contains_key(&message.template), "the template exists");
        assert_eq!(sent[0].delivery_id, message.delivery_id);
        assert!(!input.queue_refuses);
    } else {
        assert_eq!(observed.enqueued, 0, "only an enqueued answer sends: {observed:?}");
    }
    if observed.decision == "queue_failed" {
        assert!(input.queue_refuses, "the queue failed though it took every message");
    }
    Some(observed)
}

/// An API Gateway HTTP API (payload format 2.0) event for POST /webhook.
fn api_gateway_event(headers: serde_json::Map<String, Value>, body: String, base64: bool) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/webhook",
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "sophonsapi",
            "domainName": "sophonsapi.execute-api.eu-west-1.amazonaws.com",
            "domainPrefix": "sophonsapi",
            "http": { "method": "POST", "path": "/webhook", "protocol": "HTTP/1.1",
                      "sourceIp": "192.30.252.1", "userAgent": "GitHub-Hookshot/044aadd" },
            "requestId": "request-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "28/Nov/2026:06:00:00 +0000",
            "timeEpoch": 1795500000000u64
        },
        "body": body,
        "isBase64Encoded": base64
    })
}

/// The webhook over a FakeQueue never waits on anything, so polling to completion needs no
/// runtime (and keeps tokio out of the fuzz build).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}
