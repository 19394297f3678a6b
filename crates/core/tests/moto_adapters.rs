//! The SQS, SSM and DynamoDB adapters, and the webhook over them, against moto server.

mod common;

use std::sync::Arc;

use common::*;
use serde_json::json;
use sophons_core::Config;
use sophons_core::config::ConfigError;
use sophons_core::job::JobMessage;
use sophons_core::parameters::{Parameters, ParametersError, Prefetched, SsmParameters};
use sophons_core::queue::{DELIVERY_ID_ATTRIBUTE, SqsQueue};
use sophons_core::slots::{ClaimAnswer, ClaimedSlot, DynamoSlots, SlotClaim, Slots, SlotsError};
use sophons_core::waiting::{DynamoWaiting, Waiting, WaitingError};
use sophons_core::webhook::Webhook;
use testkit::moto;

async fn new_queue(sdk: &aws_config::SdkConfig) -> String {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let name = moto::unique("jobs");
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap()
}

async fn receive_all(sdk: &aws_config::SdkConfig, queue_url: &str) -> Vec<aws_sdk_sqs::types::Message> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let output = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    output.messages.unwrap_or_default()
}

#[tokio::test]
async fn secure_parameters_are_written_read_back_and_deleted() {
    let sdk = moto::sdk_config().await;
    let ssm = SsmParameters::new(&sdk);
    let name = format!("/{}/jit/i-0123", moto::unique("t"));
    ssm.put_secure(&name, "encoded-jit-config", &[]).await.unwrap();
    assert_eq!(ssm.get(&name).await.unwrap(), "encoded-jit-config");
    let kind = ssm
        .client()
        .get_parameter()
        .name(&name)
        .send()
        .await
        .unwrap()
        .parameter
        .unwrap()
        .r#type;
    assert_eq!(kind, Some(aws_sdk_ssm::types::ParameterType::SecureString));
    ssm.delete(&name).await.unwrap();
    assert_eq!(ssm.get(&name).await, Err(ParametersError::NotFound(name.clone())));
    // Deleting what is gone is not an error: stop-runner and the sweep may both try.
    ssm.delete(&name).await.unwrap();
}

#[tokio::test]
async fn a_launch_slot_in_dynamodb_is_claimed_once_and_freed_only_by_its_own_claim() {
    let sdk = moto::sdk_config().await;
    let table = moto::slots_table(&sdk, &moto::unique("slots")).await;
    let slots = DynamoSlots::new(&sdk, &table);
    let claim = |job_id: u64, at_ms: u64| SlotClaim {
        job_id,
        relaunches: 1,
        // Nanoseconds the table does not keep: a claim as made and as read back are one claim.
        at: std::time::UNIX_EPOCH + std::time::Duration::from_nanos(at_ms * 1_000_000 + 777),
    };
    let first = claim(1, 1_700_000_000_123);
    assert_eq!(slots.claim("template_cpu", 3, &first).await, Ok(ClaimAnswer::Claimed));
    assert_eq!(
        slots.claim("template_cpu", 3, &claim(2, 1_700_000_000_456)).await,
        Ok(ClaimAnswer::Held(Some(first.stored()))),
        "a second claim is refused and learns who holds the slot"
    );
    assert_eq!(
        slots.get("template_cpu", 3).await,
        Ok(Some(first.stored())),
        "and changes nothing"
    );
    assert_eq!(
        slots.claim("template_gpu", 3, &claim(3, 1)).await,
        Ok(ClaimAnswer::Claimed)
    );
    assert_eq!(
        slots.release("template_cpu", 3, &claim(2, 1_700_000_000_456)).await,
        Ok(false),
        "another claim does not free it"
    );
    let mut listed = slots.list(Some("template_cpu")).await.unwrap();
    assert_eq!(
        listed,
        vec![ClaimedSlot {
            template: "template_cpu".into(),
            slot: 3,
            claim: first.stored()
        }]
    );
    listed = slots.list(None).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(slots.release("template_cpu", 3, &first).await, Ok(true));
    assert_eq!(slots.get("template_cpu", 3).await, Ok(None));
    assert_eq!(
        slots.release("template_cpu", 3, &first).await,
        Ok(false),
        "already free"
    );
    assert_eq!(
        slots.claim("template_cpu", 3, &claim(4, 5)).await,
        Ok(ClaimAnswer::Claimed),
        "a freed slot can be claimed again"
    );
}

#[tokio::test]
async fn a_missing_slot_table_is_named_in_the_error() {
    let sdk = moto::sdk_config().await;
    let slots = DynamoSlots::new(&sdk, "sophons-no-such-table");
    let error = slots.list(None).await.unwrap_err();
    assert_eq!(error, SlotsError::NoTable("sophons-no-such-table".into()));
    assert!(error.to_string().contains("slots_table"), "{error}");
}

#[tokio::test]
async fn jobs_wait_in_dynamodb_oldest_first_and_one_parked_again_is_never_removed_by_its_waker() {
    let sdk = moto::sdk_config().await;
    let table = moto::waiting_table(&sdk, &moto::unique("waiting")).await;
    let waiting = DynamoWaiting::new(&sdk, &table);
    let place = |queued_ms: u64, job_id: u64| format!("{queued_ms:016}#{job_id:020}");
    waiting.park("cpu", &place(2_000, 7), "second", "d-7").await.unwrap();
    waiting.park("cpu", &place(1_000, 9), "first", "d-9").await.unwrap();
    waiting.park("cpu", &place(3_000, 1), "third", "d-1").await.unwrap();
    waiting
        .park("gpu", &place(500, 2), "other template", "d-2")
        .await
        .unwrap();

    let oldest = waiting.oldest("cpu", 2).await.unwrap();
    let bodies: Vec<&str> = oldest.iter().map(|parked| parked.body.as_str()).collect();
    assert_eq!(
        bodies,
        ["first", "second"],
        "oldest first, one template, at most the limit"
    );
    assert_eq!(oldest[0].delivery_id, "d-9");

    // Woken, then parked again (a later trip) before its waker takes the first read off the list.
    waiting
        .park("cpu", &place(1_000, 9), "first, trip 1", "d-9")
        .await
        .unwrap();
    assert_eq!(waiting.remove("cpu", &oldest[0]).await, Ok(false));
    assert_eq!(waiting.oldest("cpu", 1).await.unwrap()[0].body, "first, trip 1");
    assert_eq!(waiting.remove("cpu", &oldest[1]).await, Ok(true));
    let left: Vec<String> = waiting
        .oldest("cpu", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|parked| parked.body)
        .collect();
    assert_eq!(left, ["first, trip 1", "third"]);

    // A wake marks the job it sends; of two wakes that read it, one marks it; once served it is taken off.
    let third = waiting.oldest("cpu", 10).await.unwrap().pop().unwrap();
    assert_eq!(third.woken_at, None);
    assert_eq!(waiting.mark_woken("cpu", &third).await, Ok(true));
    assert_eq!(
        waiting.mark_woken("cpu", &third).await,
        Ok(false),
        "the second wake read it unmarked"
    );
    let marked = waiting.oldest("cpu", 10).await.unwrap().pop().unwrap();
    assert!(marked.woken_at.is_some());
    assert_eq!(
        waiting.mark_woken("cpu", &marked).await,
        Ok(true),
        "a wake that read the mark renews it"
    );
    waiting.remove_woken("cpu", &place(3_000, 1)).await.unwrap();
    waiting.remove_woken("cpu", &place(1_000, 9)).await.unwrap();
    let left: Vec<String> = waiting
        .oldest("cpu", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.body)
        .collect();
    assert_eq!(left, ["first, trip 1"], "the woken job is off; one never woken stays");

    let missing = DynamoWaiting::new(&sdk, "sophons-no-such-waiting");
    let error = missing.oldest("cpu", 1).await.unwrap_err();
    assert!(matches!(error, WaitingError::NoTable(_)), "{error:?}");
    assert!(error.to_string().contains("waiting_table"), "{error}");
}

#[tokio::test]
async fn the_config_document_is_read_from_its_ssm_parameter() {
    let sdk = moto::sdk_config().await;
    let ssm = SsmParameters::new(&sdk);
    let name = format!("/{}/config", moto::unique("t"));
    let document = config_json("https://sqs.us-east-1.amazonaws.com/123456789012/jobs").to_string();
    ssm.client()
        .put_parameter()
        .name(&name)
        .value(&document)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .unwrap();
    // Config::load reads the environment; this test process owns its environment.
    unsafe {
        std::env::remove_var(sophons_core::config::CONFIG_ENV);
        std::env::set_var(sophons_core::config::CONFIG_PARAM_ENV, &name);
    }
    let config = Config::load(&ssm).await.unwrap();
    assert_eq!(config.deployment, "sophons");
    unsafe { std::env::set_var(sophons_core::config::CONFIG_PARAM_ENV, "/no/such/parameter") };
    let error = Config::load(&ssm).await.unwrap_err();
    assert!(matches!(error, ConfigError::Unreadable { .. }), "{error}");
    assert!(error.to_string().contains("/no/such/parameter"), "{error}");
}

#[tokio::test]
async fn a_signed_queued_job_arrives_in_sqs_as_one_message_with_the_delivery_id() {
    let sdk = moto::sdk_config().await;
    let queue_url = new_queue(&sdk).await;
    let webhook = Webhook::new(Arc::new(config(&queue_url)), SECRET, Arc::new(SqsQueue::new(&sdk)));
    let payload = queued_payload(&["self-hosted", "template_cpu"])
        .to_string()
        .into_bytes();
    let response = webhook
        .handle(request(&signed("workflow_job", "delivery-moto", &payload)))
        .await;
    assert_eq!(response.status().as_u16(), 202);

    let messages = receive_all(&sdk, &queue_url).await;
    assert_eq!(messages.len(), 1);
    let message = JobMessage::decode(messages[0].body().unwrap()).unwrap();
    assert_eq!((message.job_id, message.template.as_str()), (289782451, "template_cpu"));
    let attribute = &messages[0].message_attributes().unwrap()[DELIVERY_ID_ATTRIBUTE];
    assert_eq!(attribute.string_value(), Some("delivery-moto"));
}

#[tokio::test]
async fn no_bad_row_of_the_table_leaves_a_message() {
    let sdk = moto::sdk_config().await;
    let queue_url = new_queue(&sdk).await;
    let webhook = Webhook::new(Arc::new(config(&queue_url)), SECRET, Arc::new(SqsQueue::new(&sdk)));
    let ours = queued_payload(&["self-hosted"]).to_string().into_bytes();
    let mut public = queued_payload(&["self-hosted"]);
    public["repository"]["private"] = json!(false);
    let public = public.to_string().into_bytes();
    let mut big = queued_payload(&["self-hosted"]);
    big["padding"] = json!("x".repeat(70_000));
    let big = big.to_string().into_bytes();
    let hosted = queued_payload(&["ubuntu-latest"]).to_string().into_bytes();
    let wrong = sophons_core::webhook::sign(b"wrong", &ours);
    let events = vec![
        (401, testkit::apigw::delivery("workflow_job", "d", &wrong, &ours)),
        (413, signed("workflow_job", "d", &big)),
        (200, signed("ping", "d", b"{}")),
        (202, signed("workflow_job", "d", &hosted)),
        (403, signed("workflow_job", "d", &public)),
        (400, signed("workflow_job", "d", b"{")),
        (404, testkit::apigw::event("POST", "/other", &[], b"", false)),
        (405, testkit::apigw::event("PUT", "/webhook", &[], b"", false)),
    ];
    for (expected, event) in events {
        let response = webhook.handle(request(&event)).await;
        assert_eq!(response.status().as_u16(), expected);
    }
    assert!(receive_all(&sdk, &queue_url).await.is_empty());
}

#[tokio::test]
async fn a_queue_that_does_not_exist_gives_500() {
    let sdk = moto::sdk_config().await;
    let missing = format!("{}/123456789012/{}", moto::endpoint(), moto::unique("gone"));
    let webhook = Webhook::new(Arc::new(config(&missing)), SECRET, Arc::new(SqsQueue::new(&sdk)));
    let payload = queued_payload(&["self-hosted"]).to_string().into_bytes();
    let response = webhook.handle(request(&signed("workflow_job", "d", &payload))).await;
    assert_eq!(response.status().as_u16(), 500);
}

#[tokio::test]
async fn a_jit_config_larger_than_a_standard_parameter_is_stored() {
    // GitHub's JIT configs are over 4 KB now; SSM's Standard tier holds 4,096 characters, and
    // the guard in front of moto refuses more, as AWS does.
    let sdk = moto::sdk_config().await;
    let ssm = SsmParameters::new(&sdk);
    let name = format!("/{}/jit/i-0123", moto::unique("t"));
    let jit_config = "j".repeat(5_000);
    ssm.put_secure(&name, &jit_config, &[]).await.unwrap();
    assert_eq!(ssm.get(&name).await.unwrap(), jit_config);
    ssm.delete(&name).await.unwrap();
}

#[tokio::test]
async fn a_jit_parameter_carries_the_arn_of_the_instance_it_is_for_even_when_rewritten() {
    let sdk = moto::sdk_config().await;
    let ssm = SsmParameters::new(&sdk);
    let name = format!("/{}/jit/i-0456", moto::unique("t"));
    let arn = "arn:aws:ec2:us-east-1:123456789012:instance/i-0456";
    let owner = [(sophons_core::names::JIT_OWNER_TAG.to_string(), arn.to_string())];
    ssm.put_secure(&name, "first", &[]).await.unwrap();
    // Overwritten (PutParameter refuses tags with Overwrite): the tag is written after it.
    ssm.put_secure(&name, "second", &owner).await.unwrap();
    let tags = ssm
        .client()
        .list_tags_for_resource()
        .resource_type(aws_sdk_ssm::types::ResourceTypeForTagging::Parameter)
        .resource_id(&name)
        .send()
        .await
        .unwrap();
    let found: Vec<(&str, &str)> = tags.tag_list().iter().map(|t| (t.key(), t.value())).collect();
    assert_eq!(found, vec![(sophons_core::names::JIT_OWNER_TAG, arn)]);
    assert_eq!(ssm.get(&name).await.unwrap(), "second");
    ssm.delete(&name).await.unwrap();
}

#[tokio::test]
async fn a_cold_start_reads_its_parameters_together_and_any_other_on_its_own() {
    let sdk = moto::sdk_config().await;
    let ssm = SsmParameters::new(&sdk);
    let prefix = format!("/{}", moto::unique("t"));
    ssm.put_secure(&format!("{prefix}/config"), "{\"document\": 1}", &[])
        .await
        .unwrap();
    ssm.put_secure(&format!("{prefix}/github/token"), "ghp_secret", &[])
        .await
        .unwrap();
    ssm.put_secure(&format!("{prefix}/other"), "read later", &[])
        .await
        .unwrap();
    let cold_start = Prefetched::read(
        &ssm,
        vec![
            format!("{prefix}/config"),
            format!("{prefix}/github/token"),
            format!("{prefix}/missing"),
        ],
    )
    .await;
    assert_eq!(
        cold_start.get(&format!("{prefix}/github/token")).await.unwrap(),
        "ghp_secret"
    );
    // Deleted after the cold start's read: served from what was read, as one request.
    ssm.delete(&format!("{prefix}/config")).await.unwrap();
    assert_eq!(
        cold_start.get(&format!("{prefix}/config")).await.unwrap(),
        "{\"document\": 1}"
    );
    assert_eq!(cold_start.get(&format!("{prefix}/other")).await.unwrap(), "read later");
    assert_eq!(
        cold_start.get(&format!("{prefix}/missing")).await,
        Err(ParametersError::NotFound(format!("{prefix}/missing"))),
        "a parameter that does not exist is reported as a read of its own would"
    );
}

#[tokio::test]
async fn interruptions_in_dynamodb_are_recorded_once_claimed_once_and_back_offs_start_and_end_once() {
    use sophons_core::interruptions::{
        DynamoInterruptions, Interrupted, Interruptions, InterruptionsError, Ran, Rerun,
    };
    use std::time::{Duration, SystemTime};
    let sdk = moto::sdk_config().await;
    let table = moto::interruptions_table(&sdk, &moto::unique("interruptions")).await;
    let store = DynamoInterruptions::new(&sdk, &table);
    let now = SystemTime::now();
    let interrupted = Interrupted {
        job_id: 42,
        repository: "my-org/app".into(),
        run_id: 7,
        template: "cpu".into(),
        instance_id: "i-0abc".into(),
        at: now,
        warned: true,
    };
    assert_eq!(store.record(&interrupted).await, Ok(true));
    assert_eq!(
        store.record(&interrupted).await,
        Ok(false),
        "the warning and the end record once"
    );
    let recorded = store.recorded().await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].job_id, 42);
    assert_eq!(recorded[0].instance_id, "i-0abc");
    let ms = |at: SystemTime| at.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    assert_eq!(ms(recorded[0].at), ms(now));
    assert!(recorded[0].warned);

    let rerun = Rerun {
        repository: "my-org/app".into(),
        run_id: 7,
        job_name: "build (ubuntu, 1)".into(),
        attempt: 1,
        job_id: 42,
    };
    assert_eq!(store.claim_rerun(&rerun).await, Ok(true));
    assert_eq!(
        store.claim_rerun(&rerun).await,
        Ok(true),
        "the same job takes its claim again"
    );
    let other = Rerun {
        job_id: 43,
        ..rerun.clone()
    };
    assert_eq!(
        store.claim_rerun(&other).await,
        Ok(false),
        "one re-run per job name and attempt"
    );
    assert_eq!(
        store.rerun_of("my-org/app", 7, "build (ubuntu, 1)").await.unwrap(),
        Some(rerun.clone())
    );
    assert_eq!(store.rerun_of("my-org/app", 7, "test").await.unwrap(), None);
    store.release_rerun(&other).await.unwrap();
    assert!(
        store
            .rerun_of("my-org/app", 7, "build (ubuntu, 1)")
            .await
            .unwrap()
            .is_some(),
        "only its own claim is given back"
    );
    store.release_rerun(&rerun).await.unwrap();
    assert_eq!(
        store.rerun_of("my-org/app", 7, "build (ubuntu, 1)").await.unwrap(),
        None
    );
    store.settle(42, "i-0abc").await.unwrap();
    assert!(store.recorded().await.unwrap().is_empty());

    let window = Duration::from_secs(1800);
    let old = now - Duration::from_secs(3600);
    assert_eq!(store.spot_lost("cpu", "i-1", old, now - window, window).await, Ok(0));
    assert_eq!(
        store.spot_lost("cpu", "i-2", now, now - window, window).await,
        Ok(1),
        "an old loss is out of the window"
    );
    assert_eq!(
        store.spot_lost("cpu", "i-2", now, now - window, window).await,
        Ok(1),
        "one loss per instance"
    );
    assert_eq!(
        store.spot_lost("gpu", "i-3", now, now - window, window).await,
        Ok(1),
        "per template"
    );

    let until = now + Duration::from_secs(3600);
    assert_eq!(store.start_backoff("cpu", until, now).await, Ok(true));
    assert_eq!(
        store.start_backoff("cpu", until + Duration::from_secs(5), now).await,
        Ok(false),
        "started once"
    );
    let backoffs = store.backoffs().await.unwrap();
    assert_eq!(backoffs.len(), 1);
    assert_eq!((backoffs[0].0.as_str(), ms(backoffs[0].1)), ("cpu", ms(until)));
    assert_eq!(
        store.end_backoff("cpu", now).await,
        Ok(false),
        "only the back-off read is ended"
    );
    assert_eq!(store.end_backoff("cpu", until).await, Ok(true));
    assert_eq!(store.end_backoff("cpu", until).await, Ok(false), "ended once");
    assert_eq!(
        store.start_backoff("cpu", until, now).await,
        Ok(true),
        "a new one may start"
    );

    // Which job a runner ran: the webhook writes it (a redelivery writes it again), the sweep
    // reads it by instance; another instance's is not mixed in.
    let ran = Ran {
        instance_id: "i-0123456789abcdef0".into(),
        job_id: 55,
        repository: "my-org/other".into(),
        run_id: 99,
        run_attempt: 2,
        job_name: "lint (ubuntu, 3.11)".into(),
    };
    assert_eq!(store.ran_on(&ran.instance_id).await, Ok(None));
    store.ran(&ran).await.unwrap();
    store.ran(&ran).await.unwrap();
    store
        .ran(&Ran {
            instance_id: "i-0123456789abcdef1".into(),
            job_id: 56,
            ..ran.clone()
        })
        .await
        .unwrap();
    assert_eq!(store.ran_on(&ran.instance_id).await, Ok(Some(ran.clone())));
    assert_eq!(
        store.ran_on("i-0123456789abcdef1").await.unwrap().map(|r| r.job_id),
        Some(56)
    );

    let missing = DynamoInterruptions::new(&sdk, "no-such-table");
    assert!(matches!(missing.recorded().await, Err(InterruptionsError::NoTable(_))));
    assert!(matches!(missing.ran(&ran).await, Err(InterruptionsError::NoTable(_))));
}
