//! Redelivery through the octocrab adapter against the fake GitHub over real HTTP: cursor pages
//! read from the `Link` header, GitHub's bad days (429, 5xx, a stall, no permission), and a
//! redelivery that reaches the real webhook handler and gets its job served once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sophons_core::Config;
use sophons_core::fakes::{FakeParameters, FakeQueue};
use sophons_core::github::OctocrabGithub;
use sophons_core::job::JobMessage;
use sophons_core::redeliver::{Redeliver, RedeliveryReport, Stopped};
use sophons_core::webhook::Webhook;
use testkit::github::{GithubServer, org_hook, repo_hook};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

const TOKEN: &str = "ghp_testtoken";
const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/sophons-jobs";
const HOOK_ID: u64 = 4242;

fn config(fake: &GithubServer, edit: impl FnOnce(&mut Value)) -> Config {
    let mut value = config_json(QUEUE);
    value["github"]["api_url"] = json!(fake.url());
    value["github"]["webhook_id"] = json!(HOOK_ID);
    edit(&mut value);
    Config::parse(&value.to_string()).unwrap()
}

async fn redeliverer(fake: &GithubServer, config: &Config) -> Redeliver {
    fake.set_token(TOKEN);
    let parameters = FakeParameters::with(&[("/sophons/github/token", TOKEN)]);
    let github = OctocrabGithub::connect(&config.github, &parameters).await.unwrap();
    Redeliver::new(config, Arc::new(github)).expect("a hook is configured")
}

async fn run(redeliver: &Redeliver) -> RedeliveryReport {
    redeliver.run(Instant::now() + Duration::from_secs(60)).await
}

fn minutes(n: u64) -> Duration {
    Duration::from_secs(n * 60)
}

fn queued(job_id: u64) -> Value {
    let mut payload = queued_payload(&["self-hosted", "template_cpu"]);
    payload["workflow_job"]["id"] = json!(job_id);
    payload
}

#[tokio::test]
async fn the_walk_follows_link_cursors_over_three_pages_and_stops_past_the_look_back() {
    let fake = GithubServer::start().await;
    let hook = org_hook("my-org", HOOK_ID);
    // Oldest first: 60 past the three hours, then 250 within them, three of which failed.
    for n in 0..60 {
        fake.add_hook_delivery(&hook, &format!("old-{n}"), "workflow_job", 500, minutes(200), queued(n));
    }
    for n in 0..250 {
        let status = if [10, 120, 240].contains(&n) { 502 } else { 202 };
        fake.add_hook_delivery(
            &hook,
            &format!("new-{n}"),
            "workflow_job",
            status,
            minutes(100),
            queued(n),
        );
    }
    let redeliver = redeliverer(&fake, &config(&fake, |_| {})).await;
    let report = run(&redeliver).await;
    assert_eq!(
        (report.listed, report.redelivered, report.failed),
        (250, 3, 0),
        "{report:?}"
    );
    let pages = fake.requests_to("GET", &format!("/orgs/my-org/hooks/{HOOK_ID}/deliveries"));
    assert_eq!(
        pages.len(),
        3,
        "the third page reaches past the look-back; a fourth is not read"
    );
    assert_eq!(pages[0].query, "per_page=100");
    assert!(pages[1].query.contains("cursor=v1_"), "{}", pages[1].query);
    let attempts = fake.requests_to("POST", "/attempts");
    assert_eq!(attempts.len(), 3);
    let redelivered: Vec<String> = fake
        .hook_deliveries(&hook)
        .into_iter()
        .filter(|d| d.redelivery)
        .map(|d| d.guid)
        .collect();
    assert_eq!(redelivered, ["new-10", "new-120", "new-240"], "oldest event first");
}

#[tokio::test]
async fn a_repository_hook_is_read_and_redelivered_through_the_repository() {
    let fake = GithubServer::start().await;
    let hook = repo_hook("my-org/app", 9);
    fake.add_hook_delivery(&hook, "g-1", "workflow_job", 500, minutes(5), queued(1));
    let config = config(&fake, |v| {
        v["github"]["webhook_id"] = json!(9);
        v["github"]["webhook_repository"] = json!("my-org/app");
    });
    let report = run(&redeliverer(&fake, &config).await).await;
    assert_eq!(report.redelivered, 1, "{report:?}");
    assert_eq!(
        fake.requests_to("POST", "/repos/my-org/app/hooks/9/deliveries/1/attempts")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_429_stops_the_run_and_the_next_run_redelivers() {
    let fake = GithubServer::start().await;
    let hook = org_hook("my-org", HOOK_ID);
    fake.add_hook_delivery(&hook, "g-1", "workflow_job", 500, minutes(5), queued(1));
    let redeliver = redeliverer(&fake, &config(&fake, |_| {})).await;
    fake.fail_next(
        "/deliveries",
        1,
        429,
        vec![],
        json!({"message": "API rate limit exceeded"}),
    );
    let limited = run(&redeliver).await;
    assert_eq!(limited.stopped, Some(Stopped::GithubUnavailable), "{limited:?}");
    assert!(fake.requests_to("POST", "/attempts").is_empty());
    let next = run(&redeliver).await;
    assert_eq!((next.redelivered, next.stopped), (1, None), "{next:?}");
}

#[tokio::test]
async fn a_5xx_list_stops_the_run_and_a_5xx_redeliver_is_counted_once_not_retried() {
    let fake = GithubServer::start().await;
    let hook = org_hook("my-org", HOOK_ID);
    fake.add_hook_delivery(&hook, "g-1", "workflow_job", 500, minutes(5), queued(1));
    let redeliver = redeliverer(&fake, &config(&fake, |_| {})).await;
    fake.fail_next("/deliveries", 3, 502, vec![], json!({"message": "Server Error"}));
    let down = run(&redeliver).await;
    assert_eq!(down.stopped, Some(Stopped::GithubUnavailable), "{down:?}");
    fake.fail_next("/attempts", 1, 502, vec![], json!({"message": "Server Error"}));
    let failed = run(&redeliver).await;
    assert_eq!((failed.redelivered, failed.failed), (0, 1), "{failed:?}");
    assert_eq!(
        fake.requests_to("POST", "/attempts").len(),
        1,
        "a redelivery is never retried in the run: a lost answer could make two"
    );
    assert_eq!(run(&redeliver).await.redelivered, 1);
    assert_eq!(fake.requests_to("POST", "/attempts").len(), 2);
}

#[tokio::test]
async fn a_stalled_github_is_given_up_at_the_deadline_and_the_next_run_redelivers() {
    let fake = GithubServer::start().await;
    let hook = org_hook("my-org", HOOK_ID);
    fake.add_hook_delivery(&hook, "g-1", "workflow_job", 500, minutes(5), queued(1));
    let redeliver = redeliverer(&fake, &config(&fake, |_| {})).await;
    fake.stall_next("/deliveries", 1, Duration::from_secs(30));
    let started = std::time::Instant::now();
    // The deadline margin is 10 s: this run stops 2 s from now.
    let stalled = redeliver.run(Instant::now() + Duration::from_secs(12)).await;
    assert_eq!(stalled.stopped, Some(Stopped::OutOfTime), "{stalled:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(fake.requests_to("POST", "/attempts").is_empty());
    assert_eq!(run(&redeliver).await.redelivered, 1);
}

#[tokio::test]
async fn no_permission_or_a_wrong_hook_id_is_one_stop_and_an_ok_report() {
    let fake = GithubServer::start().await;
    fake.add_hook(&org_hook("my-org", 1));
    let redeliver = redeliverer(&fake, &config(&fake, |_| {})).await;
    let report = run(&redeliver).await;
    assert_eq!(
        report,
        RedeliveryReport {
            stopped: Some(Stopped::NoPermission),
            ..RedeliveryReport::default()
        }
    );
    assert_eq!(fake.requests_to("GET", "/deliveries").len(), 1);
    fake.fail_next(
        "/deliveries",
        1,
        403,
        vec![],
        json!({"message": "Resource not accessible by integration"}),
    );
    assert_eq!(run(&redeliver).await.stopped, Some(Stopped::NoPermission));
}

/// The webhook behind a bare HTTP/1.1 listener, as API Gateway puts it behind a URL: each request
/// becomes an API Gateway event for `Webhook::handle`.
async fn serve_webhook(webhook: Arc<Webhook>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let webhook = Arc::clone(&webhook);
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, length) = loop {
                    let read = stream.read(&mut chunk).await.unwrap();
                    raw.extend_from_slice(&chunk[..read]);
                    if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                        let length = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().to_string())
                            })
                            .and_then(|v| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        raw.drain(..end + 4);
                        break (head, length);
                    }
                };
                while raw.len() < length {
                    let read = stream.read(&mut chunk).await.unwrap();
                    raw.extend_from_slice(&chunk[..read]);
                }
                let headers: Vec<(String, String)> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .collect();
                let pairs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let event = testkit::apigw::event("POST", "/webhook", &pairs, &raw[..length], false);
                let status = webhook.handle(request(&event)).await.status().as_u16();
                let answer = format!("HTTP/1.1 {status} Webhook\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                stream.write_all(answer.as_bytes()).await.unwrap();
            });
        }
    });
    url
}

#[tokio::test]
async fn a_delivery_the_webhook_missed_is_redelivered_to_it_and_its_job_served_once() {
    let fake = GithubServer::start().await;
    let hook = org_hook("my-org", HOOK_ID);
    let config = config(&fake, |_| {});
    let queue = Arc::new(FakeQueue::default());
    let webhook = Arc::new(Webhook::new(Arc::new(config.clone()), SECRET, queue.clone()));
    fake.set_webhook_target(&serve_webhook(webhook).await, |body| {
        sophons_core::webhook::sign(SECRET.as_bytes(), body)
    });
    // The webhook was down (GitHub's timeout) when job 777 was queued; another job got through.
    fake.add_hook_delivery(&hook, "guid-missed", "workflow_job", 0, minutes(20), queued(777));
    fake.add_hook_delivery(&hook, "guid-served", "workflow_job", 202, minutes(10), queued(778));
    let redeliver = redeliverer(&fake, &config).await;

    let report = run(&redeliver).await;
    assert_eq!((report.redelivered, report.failed), (1, 0), "{report:?}");
    let sent = queue.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0].delivery_id, "guid-missed",
        "the redelivery keeps the event's guid"
    );
    assert_eq!(JobMessage::decode(&sent[0].body).unwrap().job_id, 777);
    let redelivery = fake.hook_deliveries(&hook).into_iter().find(|d| d.redelivery).unwrap();
    assert_eq!(
        (redelivery.guid.as_str(), redelivery.status_code),
        ("guid-missed", 202),
        "the signed redelivery was accepted"
    );

    // The next hour: the event has a successful delivery now, and nothing is sent twice.
    let next = run(&redeliver).await;
    assert_eq!(next.redelivered, 0, "{next:?}");
    assert_eq!(queue.sent().len(), 1, "job 777 was enqueued exactly once");
}
