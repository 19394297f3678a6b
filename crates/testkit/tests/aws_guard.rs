//! The guard in front of moto refuses what AWS refuses, in the shapes the SDK parses, and passes
//! everything else through unchanged. Run with moto (`scripts/with-moto.sh`, or `.venv`).

use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::{ParameterTier, ParameterType};
use testkit::aws_guard::{Fault, SQS_MESSAGE_MAX_BYTES, SSM_ADVANCED_VALUE_MAX, SSM_STANDARD_VALUE_MAX};
use testkit::moto;

async fn ssm() -> aws_sdk_ssm::Client {
    aws_sdk_ssm::Client::new(&moto::sdk_config().await)
}

async fn put(ssm: &aws_sdk_ssm::Client, name: &str, value: &str, tier: Option<ParameterTier>) -> Result<(), String> {
    ssm.put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::SecureString)
        .set_tier(tier)
        .overwrite(true)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| format!("{}: {}", e.code().unwrap_or("?"), e.message().unwrap_or("?")))
}

#[tokio::test]
async fn the_sdk_talks_to_the_guard_and_the_guard_to_moto() {
    assert_ne!(moto::endpoint(), moto::raw_endpoint());
    assert_eq!(moto::guard().upstream(), moto::raw_endpoint());
    let ssm = ssm().await;
    let name = format!("/{}/small", moto::unique("guard"));
    put(&ssm, &name, "a value", None).await.unwrap();
    let read = ssm
        .get_parameter()
        .name(&name)
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(read.parameter.unwrap().value.as_deref(), Some("a value"));
    // moto's own errors pass through as they are.
    let missing = ssm
        .get_parameter()
        .name(format!("{name}-missing"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some("ParameterNotFound"));
    // moto builds queue URLs from the Host header, which the guard passes on: they lead back to it.
    let sqs = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let url = sqs
        .create_queue()
        .queue_name(moto::unique("guard"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    assert!(url.starts_with(moto::endpoint()), "{url}");
    sqs.send_message()
        .queue_url(&url)
        .message_body("hello")
        .send()
        .await
        .unwrap();
    let received = sqs.receive_message().queue_url(&url).send().await.unwrap();
    assert_eq!(received.messages()[0].body(), Some("hello"));
}

#[tokio::test]
async fn a_value_over_4096_characters_is_refused_in_the_standard_tier() {
    let ssm = ssm().await;
    let name = format!("/{}/jit/i-0", moto::unique("guard"));
    let fits = "x".repeat(SSM_STANDARD_VALUE_MAX);
    let over = "x".repeat(SSM_STANDARD_VALUE_MAX + 1);
    put(&ssm, &name, &fits, None).await.unwrap();
    put(&ssm, &name, &fits, Some(ParameterTier::Standard)).await.unwrap();
    for tier in [None, Some(ParameterTier::Standard)] {
        let refused = put(&ssm, &name, &over, tier.clone()).await.unwrap_err();
        assert!(
            refused.starts_with(
                "ValidationException: Standard tier parameters support a maximum parameter value of 4096 characters"
            ),
            "{tier:?}: {refused}"
        );
    }
    // Characters, not bytes: 4,096 three-byte characters fit.
    put(&ssm, &name, &"✓".repeat(SSM_STANDARD_VALUE_MAX), None)
        .await
        .unwrap();
    let stored = ssm
        .get_parameter()
        .name(&name)
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stored.parameter.unwrap().value.unwrap().chars().count(),
        SSM_STANDARD_VALUE_MAX
    );
}

#[tokio::test]
async fn advanced_and_intelligent_tiering_values_may_reach_8192_characters() {
    let ssm = ssm().await;
    let name = format!("/{}/jit/i-0", moto::unique("guard"));
    for tier in [ParameterTier::Advanced, ParameterTier::IntelligentTiering] {
        put(&ssm, &name, &"x".repeat(5_000), Some(tier.clone())).await.unwrap();
        put(&ssm, &name, &"x".repeat(SSM_ADVANCED_VALUE_MAX), Some(tier.clone()))
            .await
            .unwrap();
        let refused = put(&ssm, &name, &"x".repeat(SSM_ADVANCED_VALUE_MAX + 1), Some(tier.clone()))
            .await
            .unwrap_err();
        assert!(refused.starts_with("ValidationException: "), "{tier:?}: {refused}");
    }
}

#[tokio::test]
async fn parameter_names_longer_or_deeper_than_aws_allows_are_refused() {
    let ssm = ssm().await;
    let prefix = format!("/{}/", moto::unique("guard"));
    // 1,011 characters with `arn:aws:ssm:us-east-1:123456789012:parameter/` (45) before the name.
    let longest = format!("{prefix}{}", "n".repeat(1_011 - 45 - (prefix.len() - 1)));
    put(&ssm, &longest, "v", None).await.unwrap();
    let refused = put(&ssm, &format!("{longest}n"), "v", None).await.unwrap_err();
    assert!(
        refused.starts_with("ValidationException: Parameter name: "),
        "{refused}"
    );
    let deepest = format!("{prefix}{}", vec!["l"; 14].join("/"));
    put(&ssm, &deepest, "v", None).await.unwrap();
    let refused = put(&ssm, &format!("{deepest}/l"), "v", None).await.unwrap_err();
    assert!(
        refused.starts_with("HierarchyLevelLimitExceededException: "),
        "{refused}"
    );
}

#[tokio::test]
async fn put_parameter_throttling_is_a_fault_a_test_asks_for() {
    let ssm = ssm().await;
    let name = format!("/{}/slot", moto::unique("guard"));
    moto::guard().fail_next(Fault::put_parameter_too_many_updates(&name, 1));
    let refused = put(&ssm, &name, "v", None).await.unwrap_err();
    assert!(
        refused.starts_with("TooManyUpdates: There are concurrent updates"),
        "{refused}"
    );
    put(&ssm, &name, "v", None).await.unwrap();
    // The SDK retries ThrottlingException (3 attempts in all): one is absorbed, three are not.
    moto::guard().fail_next(Fault::put_parameter_throttled(&name, 1));
    put(&ssm, &name, "v2", None).await.unwrap();
    moto::guard().fail_next(Fault::put_parameter_throttled(&name, 3));
    let refused = put(&ssm, &name, "v3", None).await.unwrap_err();
    assert_eq!(refused, "ThrottlingException: Rate exceeded");
    let stored = ssm
        .get_parameter()
        .name(&name)
        .with_decryption(true)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.parameter.unwrap().value.as_deref(), Some("v2"));
    // A fault meets only requests that contain its text: other tests' parameters pass.
    moto::guard().fail_next(Fault::put_parameter_too_many_updates(&name, 1));
    put(&ssm, &format!("/{}/other", moto::unique("guard")), "v", None)
        .await
        .unwrap();
    assert!(put(&ssm, &name, "v4", None).await.is_err());
}

fn error(e: impl aws_sdk_ec2::error::ProvideErrorMetadata) -> String {
    format!("{}: {}", e.code().unwrap_or("?"), e.message().unwrap_or("?"))
}

fn tags(n: usize, key: impl Fn(usize) -> String, value: impl Fn(usize) -> String) -> Vec<Tag> {
    (0..n)
        .map(|i| Tag::builder().key(key(i)).value(value(i)).build())
        .collect()
}

#[tokio::test]
async fn ec2_tags_beyond_aws_limits_are_refused() {
    let ec2 = aws_sdk_ec2::Client::new(&moto::sdk_config().await);
    let vpc = ec2.create_vpc().cidr_block("10.9.0.0/16").send().await.unwrap();
    let vpc = vpc.vpc.unwrap().vpc_id.unwrap();
    let create_tags = |tags: Vec<Tag>| ec2.create_tags().resources(&vpc).set_tags(Some(tags)).send();
    let refused = create_tags(tags(1, |_| "k".repeat(129), |_| "v".into()))
        .await
        .map_err(error)
        .unwrap_err();
    assert_eq!(
        refused,
        "InvalidParameterValue: Tag key exceeds the maximum length of 128 characters"
    );
    let refused = create_tags(tags(1, |_| "k".into(), |_| "v".repeat(257)))
        .await
        .map_err(error)
        .unwrap_err();
    assert_eq!(
        refused,
        "InvalidParameterValue: Tag value exceeds the maximum length of 256 characters"
    );
    let refused = create_tags(tags(51, |i| format!("k{i}"), |_| "v".into()))
        .await
        .map_err(error)
        .unwrap_err();
    assert_eq!(
        refused,
        "TagLimitExceeded: The maximum number of Tags for a resource has been reached."
    );
    create_tags(tags(50, |i| format!("{i:0>128}"), |_| "v".repeat(256)))
        .await
        .unwrap();
    let described = ec2.describe_vpcs().vpc_ids(&vpc).send().await.unwrap();
    assert_eq!(described.vpcs()[0].tags().len(), 50);
    // TagSpecification of RunInstances and CreateFleet: the guard answers before moto reads the rest.
    let spec = |n| {
        TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .set_tags(Some(tags(n, |i| format!("k{i}"), |_| "v".into())))
            .build()
    };
    let refused = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec(51))
        .send()
        .await
        .map_err(error)
        .unwrap_err();
    assert!(refused.starts_with("TagLimitExceeded: "), "{refused}");
    let refused = ec2
        .create_fleet()
        .tag_specifications(spec(51))
        .send()
        .await
        .map_err(error)
        .unwrap_err();
    assert!(refused.starts_with("TagLimitExceeded: "), "{refused}");
}

#[tokio::test]
async fn sqs_messages_over_1_mib_with_their_attributes_are_refused() {
    use aws_sdk_sqs::error::ProvideErrorMetadata;
    use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
    let sqs = aws_sdk_sqs::Client::new(&moto::sdk_config().await);
    let url = sqs
        .create_queue()
        .queue_name(moto::unique("guard"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let attribute = MessageAttributeValue::builder()
        .data_type("String")
        .string_value("1234")
        .build()
        .unwrap();
    // "k" + "String" + "1234": 11 bytes of attributes.
    let body = "x".repeat(SQS_MESSAGE_MAX_BYTES - 11);
    let send = |body: String| {
        sqs.send_message()
            .queue_url(&url)
            .message_body(body)
            .message_attributes("k", attribute.clone())
            .send()
    };
    send(body.clone()).await.unwrap();
    let refused = send(format!("{body}x")).await.unwrap_err();
    assert_eq!(refused.code(), Some("InvalidParameterValue"), "{refused:?}");
    assert_eq!(
        refused.message(),
        Some("One or more parameters are invalid. Reason: Message must be shorter than 1048576 bytes.")
    );
    // Bytes, not characters (moto counts characters): 400,000 three-byte characters are too many.
    let refused = send("✓".repeat(400_000)).await.unwrap_err();
    assert_eq!(refused.code(), Some("InvalidParameterValue"), "{refused:?}");
    let entry = |id: &str| {
        SendMessageBatchRequestEntry::builder()
            .id(id)
            .message_body("y".repeat(SQS_MESSAGE_MAX_BYTES / 2 + 1))
            .build()
            .unwrap()
    };
    let refused = sqs
        .send_message_batch()
        .queue_url(&url)
        .entries(entry("a"))
        .entries(entry("b"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Some("BatchRequestTooLong"), "{refused:?}");
}

#[tokio::test]
async fn pages_of_a_listing_pass_through_the_guard() {
    use aws_sdk_ec2::types::Filter;
    let ec2 = aws_sdk_ec2::Client::new(&moto::sdk_config().await);
    let marker = moto::unique("paged");
    let spec = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key("guard-test").value(&marker).build())
        .build();
    for _ in 0..3 {
        ec2.run_instances()
            .image_id("ami-12c6146b")
            .min_count(45)
            .max_count(45)
            .tag_specifications(spec.clone())
            .send()
            .await
            .unwrap();
    }
    let filter = Filter::builder().name("tag:guard-test").values(&marker).build();
    let pages: Vec<_> = ec2
        .describe_instances()
        .filters(filter)
        .into_paginator()
        .page_size(2)
        .send()
        .try_collect()
        .await
        .unwrap();
    // moto pages by reservation: two of 45 instances, then one.
    let listed: usize = pages
        .iter()
        .flat_map(|p| p.reservations())
        .map(|r| r.instances().len())
        .sum();
    assert_eq!((pages.len(), listed), (2, 135));
}

#[test]
fn a_bare_http_1_0_request_passes_through_as_the_bench_sends_its_moto_reset() {
    use std::io::{Read, Write};
    // The bench resets moto with `POST /moto-api/reset HTTP/1.0` and no Host; a GET of the same
    // API shows the path works without wiping the moto every test of this run shares.
    let address = moto::endpoint().trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.write_all(b"GET /moto-api/ HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{}",
        answer.lines().next().unwrap_or_default()
    );
}
