//! A guard between the SDK and moto that refuses what AWS refuses and moto accepts. Every request
//! is forwarded to moto unchanged (Host included, so the URLs moto builds point back at the guard),
//! except those AWS would refuse: they get AWS's error, in the shape the SDK parses.
//!
//! - SSM PutParameter: a value over 4,096 characters in the Standard tier (or with no tier: the
//!   account default is Standard), over 8,192 in Advanced or Intelligent-Tiering; a name longer
//!   than 1,011 characters counted with its ARN; more than 15 levels of hierarchy.
//! - EC2, any action (CreateTags, RunInstances, CreateFleet...): a tag key over 128 characters, a
//!   value over 256, more than 50 tags for one resource in one request.
//! - SQS SendMessage and SendMessageBatch: over 1 MiB (1,048,576 bytes) of body and attributes
//!   (moto counts characters of the body alone).
//!
//! - S3 CompleteMultipartUpload: moto's answer gets S3's documented root element.
//!
//! Faults are opt-in (`AwsGuard::fail_next`), e.g. SSM's throttling of PutParameter.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, Uri, header};
use axum::response::Response;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

/// SSM: the Standard tier's largest value, in characters.
pub const SSM_STANDARD_VALUE_MAX: usize = 4_096;
/// SSM: the Advanced (and Intelligent-Tiering) tier's largest value, in characters.
pub const SSM_ADVANCED_VALUE_MAX: usize = 8_192;
/// SSM: the longest name, counted with the ARN before it (`arn:aws:ssm:<region>:<account>:parameter/`).
pub const SSM_NAME_WITH_ARN_MAX: usize = 1_011;
/// SSM: the deepest hierarchy of a parameter name.
pub const SSM_HIERARCHY_MAX: usize = 15;
/// EC2: the longest tag key and value, in characters, and the most tags on one resource.
pub const EC2_TAG_KEY_MAX: usize = 128;
pub const EC2_TAG_VALUE_MAX: usize = 256;
pub const EC2_TAGS_MAX: usize = 50;
/// SQS: the largest message (body and attributes), or batch, in bytes.
pub const SQS_MESSAGE_MAX_BYTES: usize = 1_048_576;

/// moto's account id, which ARNs carry.
const ACCOUNT: &str = "123456789012";

/// A refusal the guard makes on request, for tests about AWS's bad days.
#[derive(Debug, Clone)]
pub struct Fault {
    /// The operation: `PutParameter`, `SendMessage`, or an EC2 action such as `CreateFleet`.
    pub operation: String,
    /// Only requests whose body contains this (a parameter name, a queue URL...): the guard serves
    /// every test of the process, and a fault must meet only its own test's requests.
    pub body_contains: String,
    pub times: usize,
    /// AWS's error code and message.
    pub code: String,
    pub message: String,
}

impl Fault {
    /// SSM's answer to PutParameter above its low, account-wide rate (the SDK retries it).
    pub fn put_parameter_throttled(name_contains: &str, times: usize) -> Self {
        Self {
            operation: "PutParameter".into(),
            body_contains: name_contains.into(),
            times,
            code: "ThrottlingException".into(),
            message: "Rate exceeded".into(),
        }
    }

    /// SSM's answer to concurrent updates of a parameter (the SDK does not retry it).
    pub fn put_parameter_too_many_updates(name_contains: &str, times: usize) -> Self {
        Self {
            operation: "PutParameter".into(),
            body_contains: name_contains.into(),
            times,
            code: "TooManyUpdates".into(),
            message: "There are concurrent updates for a resource that supports one update at a time.".into(),
        }
    }
}

struct Shared {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    faults: Mutex<Vec<Fault>>,
}

/// A running guard; it serves until the process ends.
pub struct AwsGuard {
    endpoint: String,
    shared: Arc<Shared>,
}

impl AwsGuard {
    /// Starts a guard in front of `upstream` (moto's endpoint, `http://host:port`) on a free
    /// loopback port. It runs on its own thread and runtime, so it serves sync tests and outlives
    /// the runtime of any one async test.
    pub fn start(upstream: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the AWS guard");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            faults: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        std::thread::Builder::new()
            .name("aws-guard".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("the AWS guard's runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    axum::serve(listener, app).await.unwrap();
                });
            })
            .expect("start the AWS guard's thread");
        Self { endpoint, shared }
    }

    /// The endpoint to give the SDK, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The endpoint the guard forwards to.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// The next `fault.times` requests of `fault.operation` whose body contains
    /// `fault.body_contains` are refused with its code and message, without reaching moto.
    pub fn fail_next(&self, fault: Fault) {
        self.shared.faults.lock().unwrap().push(fault);
    }
}

/// The protocol of a request, which decides how a refusal is written.
enum Call {
    /// awsJson (SSM, SQS): `X-Amz-Target: AmazonSSM.PutParameter`.
    Json {
        service: String,
        operation: String,
    },
    /// EC2's query protocol: a form with `Action=...`.
    Ec2 {
        operation: String,
        form: Vec<(String, String)>,
    },
    Other,
}

struct Refusal {
    code: String,
    message: String,
}

fn refusal(code: &str, message: impl Into<String>) -> Option<Refusal> {
    Some(Refusal {
        code: code.into(),
        message: message.into(),
    })
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(error) => return plain(400, &format!("the AWS guard could not read the request: {error}")),
    };
    let call = call_of(&parts.headers, &body);
    let refused = take_fault(&shared, &call, &body).or_else(|| refuse(&call, &parts.headers, &body));
    if let Some(refusal) = refused {
        return answer(&call, &parts.headers, refusal);
    }
    forward(&shared, parts, body).await
}

fn call_of(headers: &HeaderMap, body: &[u8]) -> Call {
    if let Some((service, operation)) = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.split_once('.'))
    {
        return Call::Json {
            service: service.into(),
            operation: operation.into(),
        };
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if form && credential_scope(headers).is_some_and(|(_, service)| service == "ec2") {
        let form = form_pairs(body);
        if let Some((_, action)) = form.iter().find(|(name, _)| name == "Action") {
            return Call::Ec2 {
                operation: action.clone(),
                form,
            };
        }
    }
    Call::Other
}

/// The region and service a SigV4 `Authorization` header was signed for.
fn credential_scope(headers: &HeaderMap) -> Option<(String, String)> {
    let authorization = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let credential = authorization.split("Credential=").nth(1)?.split(',').next()?;
    let mut scope = credential.split('/').skip(2);
    Some((scope.next()?.to_string(), scope.next()?.to_string()))
}

fn take_fault(shared: &Shared, call: &Call, body: &[u8]) -> Option<Refusal> {
    let operation = match call {
        Call::Json { operation, .. } | Call::Ec2 { operation, .. } => operation,
        Call::Other => return None,
    };
    let body = String::from_utf8_lossy(body);
    let mut faults = shared.faults.lock().unwrap();
    let index = faults
        .iter()
        .position(|f| f.times > 0 && &f.operation == operation && body.contains(&f.body_contains))?;
    let fault = &mut faults[index];
    fault.times -= 1;
    let refused = refusal(&fault.code, fault.message.clone());
    if fault.times == 0 {
        faults.remove(index);
    }
    refused
}

fn refuse(call: &Call, headers: &HeaderMap, body: &[u8]) -> Option<Refusal> {
    match call {
        Call::Json { service, operation } if service == "AmazonSSM" && operation == "PutParameter" => {
            let request: Value = serde_json::from_slice(body).ok()?;
            let region = credential_scope(headers).map_or_else(|| "us-east-1".to_string(), |(region, _)| region);
            put_parameter(&request, &region)
        }
        Call::Json { service, operation } if service == "AmazonSQS" && operation == "SendMessage" => {
            let request: Value = serde_json::from_slice(body).ok()?;
            let size = message_size(&request);
            (size > SQS_MESSAGE_MAX_BYTES).then(|| Refusal {
                code: "InvalidParameterValue".into(),
                message: format!(
                    "One or more parameters are invalid. Reason: Message must be shorter than {SQS_MESSAGE_MAX_BYTES} bytes."
                ),
            })
        }
        Call::Json { service, operation } if service == "AmazonSQS" && operation == "SendMessageBatch" => {
            let request: Value = serde_json::from_slice(body).ok()?;
            let size: usize = request["Entries"].as_array()?.iter().map(message_size).sum();
            (size > SQS_MESSAGE_MAX_BYTES).then(|| Refusal {
                code: "BatchRequestTooLong".into(),
                message: format!(
                    "Batch requests cannot be longer than {SQS_MESSAGE_MAX_BYTES} bytes. You have sent {size} bytes."
                ),
            })
        }
        Call::Ec2 { form, .. } => ec2_tags(form),
        _ => None,
    }
}

fn put_parameter(request: &Value, region: &str) -> Option<Refusal> {
    let name = request["Name"].as_str().unwrap_or_default();
    let value = request["Value"].as_str().unwrap_or_default();
    let arn = format!("arn:aws:ssm:{region}:{ACCOUNT}:parameter/");
    if arn.len() + name.trim_start_matches('/').chars().count() > SSM_NAME_WITH_ARN_MAX {
        return refusal(
            "ValidationException",
            format!(
                "Parameter name: {name} is too long. The maximum length of a parameter name, including the \
                 {} characters of its ARN ({arn}), is {SSM_NAME_WITH_ARN_MAX} characters.",
                arn.len()
            ),
        );
    }
    if name.starts_with('/') && name.split('/').count() - 1 > SSM_HIERARCHY_MAX {
        return refusal(
            "HierarchyLevelLimitExceededException",
            format!(
                "A hierarchy can have a maximum of {SSM_HIERARCHY_MAX} levels. For more information, see \
                 https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-su-create.html"
            ),
        );
    }
    let length = value.chars().count();
    match request["Tier"].as_str() {
        None | Some("Standard") if length > SSM_STANDARD_VALUE_MAX => refusal(
            "ValidationException",
            format!(
                "Standard tier parameters support a maximum parameter value of {SSM_STANDARD_VALUE_MAX} characters. \
                 To create a larger parameter value, upgrade the parameter to use the advanced-parameter tier. For \
                 more information, see https://docs.aws.amazon.com/systems-manager/latest/userguide/parameter-store-advanced-parameters.html"
            ),
        ),
        Some(_) if length > SSM_ADVANCED_VALUE_MAX => refusal(
            "ValidationException",
            format!(
                "Advanced tier parameters support a maximum parameter value of {SSM_ADVANCED_VALUE_MAX} characters."
            ),
        ),
        _ => None,
    }
}

/// What SQS counts against its limit: the body, and each attribute's name, type and value.
fn message_size(message: &Value) -> usize {
    let body = message["MessageBody"].as_str().map_or(0, str::len);
    let attributes = message["MessageAttributes"].as_object().map_or(0, |attributes| {
        attributes
            .iter()
            .map(|(name, attribute)| {
                let text = |field: &str| attribute[field].as_str().map_or(0, str::len);
                // Binary values travel as base64: three bytes for every four characters.
                name.len() + text("DataType") + text("StringValue") + text("BinaryValue") * 3 / 4
            })
            .sum()
    });
    body + attributes
}

/// EC2's tag limits, for every group of `...Tag.N.Key`/`...Tag.N.Value` fields of a request (a
/// group is one resource's tags: `Tag.N` of CreateTags, `TagSpecification.M.Tag.N` of RunInstances
/// or CreateFleet).
fn ec2_tags(form: &[(String, String)]) -> Option<Refusal> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, value) in form {
        let Some((group, field)) = tag_field(name) else {
            continue;
        };
        let length = value.chars().count();
        match field {
            "Key" => {
                *counts.entry(group).or_default() += 1;
                if length > EC2_TAG_KEY_MAX {
                    return refusal(
                        "InvalidParameterValue",
                        format!("Tag key exceeds the maximum length of {EC2_TAG_KEY_MAX} characters"),
                    );
                }
            }
            _ if length > EC2_TAG_VALUE_MAX => {
                return refusal(
                    "InvalidParameterValue",
                    format!("Tag value exceeds the maximum length of {EC2_TAG_VALUE_MAX} characters"),
                );
            }
            _ => {}
        }
    }
    counts.values().any(|&n| n > EC2_TAGS_MAX).then(|| Refusal {
        code: "TagLimitExceeded".into(),
        message: "The maximum number of Tags for a resource has been reached.".into(),
    })
}

/// `TagSpecification.1.Tag.3.Key` → (`TagSpecification.1.`, `Key`); `Tag.1.Value` → (``, `Value`).
fn tag_field(name: &str) -> Option<(&str, &str)> {
    let (rest, field) = name.rsplit_once('.')?;
    if field != "Key" && field != "Value" {
        return None;
    }
    let (rest, index) = rest.rsplit_once('.')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let group = rest.strip_suffix("Tag")?;
    (group.is_empty() || group.ends_with('.')).then_some((group, field))
}

fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A refusal as AWS writes it for the request's protocol, with status 400.
fn answer(call: &Call, headers: &HeaderMap, refusal: Refusal) -> Response {
    let request_id = request_id();
    let builder = Response::builder().status(400).header("x-amzn-requestid", &request_id);
    match call {
        Call::Ec2 { .. } => builder
            .header(header::CONTENT_TYPE, "text/xml;charset=UTF-8")
            .body(Body::from(format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
                 <Message>{}</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>",
                xml_escape(&refusal.code),
                xml_escape(&refusal.message)
            )))
            .unwrap(),
        _ => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .cloned()
                .unwrap_or_else(|| "application/x-amz-json-1.1".parse().unwrap());
            let sqs = matches!(call, Call::Json { service, .. } if service == "AmazonSQS");
            // SQS is query-compatible: the SDK takes the code from `x-amzn-query-error`.
            let (kind, builder) = if sqs {
                let query_error = format!("{};Sender", refusal.code);
                (
                    format!("com.amazonaws.sqs#{}", refusal.code),
                    builder.header("x-amzn-query-error", query_error),
                )
            } else {
                (refusal.code.clone(), builder)
            };
            builder
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(
                    json!({"__type": kind, "message": refusal.message}).to_string(),
                ))
                .unwrap()
        }
    }
}

fn request_id() -> String {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    format!("00000000-0000-4000-8000-{serial:012x}")
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Headers of one hop, which a proxy does not pass on.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::UPGRADE,
    header::EXPECT,
];

async fn forward(shared: &Shared, parts: axum::http::request::Parts, body: Bytes) -> Response {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // moto answers S3 CompleteMultipartUpload with a `CompleteMultipartUploadResponse` root; S3
    // documents (and the SDK parses) `CompleteMultipartUploadResult`
    // (https://docs.aws.amazon.com/AmazonS3/latest/API/API_CompleteMultipartUpload.html).
    let completes_upload = parts.method == axum::http::Method::POST
        && parts.uri.query().is_some_and(|q| q.contains("uploadId="))
        && credential_scope(&parts.headers).is_some_and(|(_, service)| service == "s3");
    let Ok(uri) = format!("{}{path}", shared.upstream).parse::<Uri>() else {
        return plain(400, &format!("the AWS guard cannot forward to {path}"));
    };
    let mut request = axum::http::Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(Full::new(body))
        .unwrap();
    *request.headers_mut() = parts.headers;
    for name in &HOP_BY_HOP {
        request.headers_mut().remove(name);
    }
    match shared.client.request(request).await {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            for name in &HOP_BY_HOP {
                parts.headers.remove(name);
            }
            if completes_upload {
                use http_body_util::BodyExt;
                let Ok(collected) = body.collect().await else {
                    return plain(502, "the AWS guard lost moto's answer");
                };
                let text = String::from_utf8_lossy(&collected.to_bytes())
                    .replace("CompleteMultipartUploadResponse", "CompleteMultipartUploadResult");
                parts.headers.remove(header::CONTENT_LENGTH);
                return Response::from_parts(parts, Body::from(text));
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => plain(
            502,
            &format!("the AWS guard cannot reach moto at {}: {error}", shared.upstream),
        ),
    }
}

fn plain(status: u16, text: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(text.to_string()))
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_fields_are_grouped_by_resource() {
        assert_eq!(tag_field("Tag.1.Key"), Some(("", "Key")));
        assert_eq!(
            tag_field("TagSpecification.2.Tag.10.Value"),
            Some(("TagSpecification.2.", "Value"))
        );
        assert_eq!(
            tag_field("LaunchTemplateData.TagSpecification.1.Tag.1.Key"),
            Some(("LaunchTemplateData.TagSpecification.1.", "Key"))
        );
        assert_eq!(tag_field("Filter.1.Name"), None);
        assert_eq!(tag_field("TagSpecification.1.ResourceType"), None);
        assert_eq!(tag_field("NotATag.1.Key"), None);
        assert_eq!(tag_field("Tag.x.Key"), None);
    }

    #[test]
    fn forms_are_percent_decoded() {
        let pairs = form_pairs(b"Action=CreateTags&Tag.1.Key=a%2Fb+c&Tag.1.Value=%E2%9C%93&Empty=&Bad=%zz");
        assert_eq!(
            pairs,
            [
                ("Action".to_string(), "CreateTags".to_string()),
                ("Tag.1.Key".into(), "a/b c".into()),
                ("Tag.1.Value".into(), "✓".into()),
                ("Empty".into(), "".into()),
                ("Bad".into(), "%zz".into()),
            ]
        );
    }

    #[test]
    fn tag_values_are_counted_in_characters_not_bytes() {
        let form = vec![
            ("Tag.1.Key".to_string(), "k".to_string()),
            ("Tag.1.Value".into(), "✓".repeat(256)),
        ];
        assert!(ec2_tags(&form).is_none());
        let form = vec![
            ("Tag.1.Key".to_string(), "k".to_string()),
            ("Tag.1.Value".into(), "✓".repeat(257)),
        ];
        assert_eq!(ec2_tags(&form).unwrap().code, "InvalidParameterValue");
    }

    #[test]
    fn fifty_tags_per_resource_are_allowed_across_several_resources() {
        let tags = |spec: usize, n: usize| {
            (1..=n).map(move |i| (format!("TagSpecification.{spec}.Tag.{i}.Key"), format!("k{i}")))
        };
        let form: Vec<_> = tags(1, 50).chain(tags(2, 50)).collect();
        assert!(ec2_tags(&form).is_none());
        let form: Vec<_> = tags(1, 50).chain(tags(2, 51)).collect();
        assert_eq!(ec2_tags(&form).unwrap().code, "TagLimitExceeded");
    }

    #[test]
    fn ssm_names_are_measured_with_their_arn() {
        let arn = "arn:aws:ssm:us-east-1:123456789012:parameter/".len();
        let fits = format!("/{}", "a".repeat(SSM_NAME_WITH_ARN_MAX - arn));
        let request = json!({"Name": fits, "Value": "v", "Type": "String"});
        assert!(put_parameter(&request, "us-east-1").is_none());
        let request = json!({"Name": format!("{fits}b"), "Value": "v", "Type": "String"});
        assert_eq!(
            put_parameter(&request, "us-east-1").unwrap().code,
            "ValidationException"
        );
        let deep = "/a".repeat(16);
        let request = json!({"Name": deep, "Value": "v", "Type": "String"});
        assert_eq!(
            put_parameter(&request, "us-east-1").unwrap().code,
            "HierarchyLevelLimitExceededException"
        );
        let request = json!({"Name": "/a".repeat(15), "Value": "v", "Type": "String"});
        assert!(put_parameter(&request, "us-east-1").is_none());
    }

    #[test]
    fn sqs_counts_attributes_with_the_body() {
        let message = json!({
            "MessageBody": "abc",
            "MessageAttributes": {"k": {"DataType": "String", "StringValue": "✓"}},
        });
        assert_eq!(message_size(&message), 3 + 1 + 6 + 3);
    }
}
