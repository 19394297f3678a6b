//! A Lambda Runtime API endpoint: runs a real binary as Lambda runs it (the binary long-polls
//! `/next` for an event and posts its answer), so tests and the demo exercise exactly what ships.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

const API: &str = "/2018-06-01/runtime";

type Outcome = Result<Value, Value>;

#[derive(Clone)]
struct Shared {
    events: Arc<tokio::sync::Mutex<mpsc::Receiver<(String, Value, Duration)>>>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Outcome>>>>,
    init_error: Arc<Mutex<Option<Value>>>,
    first_poll: Arc<Mutex<Option<Instant>>>,
}

/// One Lambda function: a Runtime API endpoint and the binary polling it.
pub struct LambdaProcess {
    name: String,
    shared: Shared,
    sender: mpsc::Sender<(String, Value, Duration)>,
    child: tokio::process::Child,
    /// Every line the binary wrote to stdout or stderr.
    pub output: Arc<Mutex<Vec<String>>>,
    /// The tasks that read stdout and stderr into `output`.
    readers: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
    counter: u64,
    server: tokio::task::JoinHandle<()>,
}

impl LambdaProcess {
    /// Starts the endpoint and the binary with `env` (plus the variables Lambda sets).
    pub async fn spawn(binary: &Path, name: &str, env: &[(&str, String)]) -> Self {
        let (sender, receiver) = mpsc::channel(64);
        let shared = Shared {
            events: Arc::new(tokio::sync::Mutex::new(receiver)),
            waiting: Arc::default(),
            init_error: Arc::default(),
            first_poll: Arc::default(),
        };
        let app = axum::Router::new()
            .route(&format!("{API}/invocation/next"), get(next))
            .route(&format!("{API}/invocation/{{id}}/response"), post(response))
            .route(&format!("{API}/invocation/{{id}}/error"), post(error))
            .route(&format!("{API}/init/error"), post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let started = Instant::now();
        let mut command = tokio::process::Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = output.clone();
            let echo = std::env::var_os("SOPHONS_ECHO_LAMBDA_LOGS").is_some();
            let prefix = name.to_string();
            readers.push(tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if echo {
                        eprintln!("[{prefix}] {line}");
                    }
                    output.lock().unwrap().push(line);
                }
            }));
        }
        Self {
            name: name.into(),
            shared,
            sender,
            child,
            output,
            readers,
            started,
            counter: 0,
            server,
        }
    }

    /// Sends one event and waits for the answer: `Ok(response)` or `Err(error payload)`.
    pub async fn invoke(&mut self, event: Value) -> Outcome {
        self.invoke_with_deadline(event, Duration::from_secs(60)).await
    }

    /// As `invoke`, with the deadline the binary sees in `Lambda-Runtime-Deadline-Ms`.
    pub async fn invoke_with_deadline(&mut self, event: Value, deadline: Duration) -> Outcome {
        self.counter += 1;
        let id = format!("{}-{}", self.name, self.counter);
        let (tx, rx) = oneshot::channel();
        self.shared.waiting.lock().unwrap().insert(id.clone(), tx);
        self.sender
            .send((id, event, deadline))
            .await
            .expect("endpoint is running");
        tokio::select! {
            outcome = rx => outcome.unwrap_or_else(|_| Err(Value::String("answer lost".into()))),
            status = self.child.wait() => {
                self.drain_output().await;
                let init_error = self.shared.init_error.lock().unwrap().clone();
                Err(serde_json::json!({
                    "exited": status.map(|s| s.to_string()).unwrap_or_default(),
                    "init_error": init_error,
                    "output": self.output.lock().unwrap().join("\n"),
                }))
            }
            _ = tokio::time::sleep(deadline + Duration::from_secs(30)) => Err(Value::String("timed out".into())),
        }
    }

    /// From exec until the binary first asked for an event: Lambda's Init Duration.
    pub async fn init_duration(&self) -> Option<Duration> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(at) = *self.shared.first_poll.lock().unwrap() {
                return Some(at - self.started);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    /// Every output line so far, joined.
    pub fn logs(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// The process id of the binary.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the binary to exit on its own (a failed cold start), with its status.
    /// Its output is read to the end before this returns, so `logs` holds the last line.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok);
        if status.is_some() {
            self.drain_output().await;
        }
        status
    }

    /// Every output line, once no line has arrived for 20 ms (at most 1 s): after an answer,
    /// the lines the binary wrote before answering are in the pipes but maybe not yet read.
    pub async fn settled_logs(&self) -> String {
        let until = Instant::now() + Duration::from_secs(1);
        let mut seen = self.output.lock().unwrap().len();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.output.lock().unwrap().len();
            if now == seen {
                break;
            }
            seen = now;
        }
        self.logs()
    }

    /// After the binary exited: waits for the readers to reach the end of its stdout and
    /// stderr (the pipes close at exit), and for the init error it may have posted.
    /// Without this, a test that reads `logs` right after the exit races the readers.
    async fn drain_output(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    /// The init error the binary reported, if any.
    pub fn init_error(&self) -> Option<Value> {
        self.shared.init_error.lock().unwrap().clone()
    }
}

impl Drop for LambdaProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        self.server.abort();
    }
}

async fn next(State(shared): State<Shared>) -> impl IntoResponse {
    shared.first_poll.lock().unwrap().get_or_insert_with(Instant::now);
    let received = shared.events.lock().await.recv().await;
    let Some((id, event, deadline)) = received else {
        return (StatusCode::GONE, HeaderMap::new(), String::new());
    };
    let deadline_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .saturating_add(deadline)
        .as_millis();
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
    headers.insert("lambda-runtime-deadline-ms", deadline_ms.to_string().parse().unwrap());
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:local".parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        "Root=1-00000000-000000000000000000000000".parse().unwrap(),
    );
    (StatusCode::OK, headers, event.to_string())
}

fn settle(shared: &Shared, id: &str, outcome: Outcome) -> StatusCode {
    match shared.waiting.lock().unwrap().remove(id) {
        Some(waiter) => {
            let _ = waiter.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::BAD_REQUEST,
    }
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()))
}

async fn response(State(shared): State<Shared>, UrlPath(id): UrlPath<String>, body: String) -> StatusCode {
    settle(&shared, &id, Ok(parse(&body)))
}

async fn error(State(shared): State<Shared>, UrlPath(id): UrlPath<String>, body: String) -> StatusCode {
    settle(&shared, &id, Err(parse(&body)))
}

async fn init_error(State(shared): State<Shared>, body: String) -> StatusCode {
    *shared.init_error.lock().unwrap() = Some(parse(&body));
    StatusCode::ACCEPTED
}
