//! Starting the real `llm-chat-server` binary against a fake LLM, and talking to it as users.
//!
//! Each test gets its own process, temp dir (database, saved conversations, working dir) and
//! fake LLM, so tests run in parallel. A [`User`] is one browser: one cookie jar, one session.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::fake_llm::FakeLlm;
use crate::sio::SioClient;

/// How long a server may take to print its listening line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one HTTP request from a test.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one socket turn (first-byte/idle timeouts are 2 s, up to 3 tries).
pub const TURN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for one socket event that should come promptly.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

const LISTENING_PREFIX: &str = "llm-chat-server listening on http://";

/// Environment variables for the child process (the child's environment is cleared first,
/// so nothing inherited, like `AZURE_API_URL` or `MONGODB_URI`, changes its behaviour).
pub type Env = BTreeMap<String, String>;

/// The address the current server process listens on, shared with every [`User`] so a
/// restarted server is reached with the same cookie jars.
struct Endpoint {
    addr: RwLock<SocketAddr>,
}

impl Endpoint {
    fn addr(&self) -> SocketAddr {
        *self.addr.read().unwrap()
    }
}

/// A running server, its fake LLM and its temp dir. The process is killed on drop.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base_url: String,
    pub llm: FakeLlm,
    pub dir: TempDir,
    pub env: Env,
    endpoint: Arc<Endpoint>,
    http: reqwest::Client,
    server: Option<ServerProcess>,
}

struct ServerProcess {
    child: Child,
    output: Arc<Mutex<String>>,
}

/// The environment every test server starts from.
pub fn base_env(llm: &FakeLlm, dir: &TempDir) -> Env {
    let dir_path = dir.path();
    let mut env = Env::new();
    for (key, value) in [
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        (
            "DATABASE_PATH",
            dir_path.join("chat.db").display().to_string(),
        ),
        (
            "SAVED_CONVERSATIONS_DIR",
            dir_path.join("saved").display().to_string(),
        ),
        ("LLM_PROVIDER", "openai".to_owned()),
        ("OPENAI_BASE_URL", llm.base_url()),
        ("OPENAI_API_KEY", "test-key".to_owned()),
        ("LLM_MODEL", "fake-model".to_owned()),
        (
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ),
        ("LLM_FIRST_BYTE_TIMEOUT_SECONDS", "2".to_owned()),
        ("LLM_IDLE_TIMEOUT_SECONDS", "2".to_owned()),
        ("LLM_RETRY_MAX_WAIT_SECONDS", "2".to_owned()),
    ] {
        env.insert(key.to_owned(), value);
    }
    if let Ok(path) = std::env::var("PATH") {
        env.insert("PATH".to_owned(), path);
    }
    // `scripts/test.sh` runs this whole suite a second time against a real
    // MongoDB-protocol server: each test server gets its own database.
    if let Ok(uri) = std::env::var("TEST_MONGODB_URI") {
        env.insert("MONGODB_URI".to_owned(), uri);
        env.insert(
            "MONGODB_DB".to_owned(),
            format!("t_{}", uuid::Uuid::new_v4().simple()),
        );
    }
    env
}

/// Starts a server with the base environment plus `overrides`.
pub async fn spawn_app(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with(|_, env| {
        for (key, value) in overrides {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
    })
    .await
}

/// Starts a server after `configure` edited the environment (it may remove variables too).
pub async fn spawn_app_with(configure: impl FnOnce(&FakeLlm, &mut Env)) -> TestApp {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut env = base_env(&llm, &dir);
    configure(&llm, &mut env);
    spawn_app_in(llm, dir, env).await
}

/// Starts a server with exactly `env`, working in `dir` (which may hold a `.env`).
pub async fn spawn_app_in(llm: FakeLlm, dir: TempDir, env: Env) -> TestApp {
    let (addr, server) = start_server(&env, &dir)
        .await
        .unwrap_or_else(|failure| panic!("{failure}"));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    TestApp {
        addr,
        base_url: format!("http://{addr}"),
        llm,
        dir,
        env,
        endpoint: Arc::new(Endpoint {
            addr: RwLock::new(addr),
        }),
        http,
        server: Some(server),
    }
}

/// Runs the binary with `env` in `dir` and waits (bounded) for it to exit without ever
/// listening. Returns the exit code and everything it printed (stdout + stderr).
pub async fn run_expecting_startup_failure(env: &Env, dir: &TempDir) -> (Option<i32>, String) {
    let mut child = server_command(env, dir)
        .spawn()
        .expect("start llm-chat-server");
    let output = Arc::new(Mutex::new(String::new()));
    let stdout = tokio::spawn(collect(child.stdout.take().unwrap(), output.clone()));
    let stderr = tokio::spawn(collect(child.stderr.take().unwrap(), output.clone()));
    let status = tokio::time::timeout(STARTUP_TIMEOUT, child.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stdout.await;
        let _ = stderr.await;
    })
    .await;
    let printed = output.lock().unwrap().clone();
    match status {
        Ok(status) => (status.expect("wait for server").code(), printed),
        Err(_) => {
            let _ = child.kill().await;
            panic!("server was expected to refuse to start but still runs after {STARTUP_TIMEOUT:?}; output:\n{printed}")
        }
    }
}

fn server_command(env: &Env, dir: &TempDir) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_llm-chat-server"));
    command
        .env_clear()
        .envs(env)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn collect(stream: impl AsyncRead + Unpin, into: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("[server] {line}");
        }
        let mut text = into.lock().unwrap();
        text.push_str(&line);
        text.push('\n');
    }
}

async fn start_server(env: &Env, dir: &TempDir) -> Result<(SocketAddr, ServerProcess), String> {
    let mut child = server_command(env, dir)
        .spawn()
        .map_err(|error| format!("cannot start llm-chat-server: {error}"))?;
    let output = Arc::new(Mutex::new(String::new()));
    tokio::spawn(collect(child.stderr.take().unwrap(), output.clone()));
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let addr = loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line = match tokio::time::timeout(remaining, stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                tokio::time::sleep(Duration::from_millis(100)).await; // let stderr drain
                return Err(format!(
                    "llm-chat-server exited before listening ({status:?}); output:\n{}",
                    output.lock().unwrap()
                ));
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(format!(
                    "llm-chat-server did not print its listening line within {STARTUP_TIMEOUT:?}; output:\n{}",
                    output.lock().unwrap()
                ));
            }
        };
        {
            let mut text = output.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
        if let Some(start) = line.find(LISTENING_PREFIX) {
            let rest = &line[start + LISTENING_PREFIX.len()..];
            let rest = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .trim_end_matches('/');
            match rest.parse::<SocketAddr>() {
                Ok(addr) => break addr,
                Err(error) => {
                    return Err(format!("cannot parse the listening line {line:?}: {error}"))
                }
            }
        }
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdout.next_line().await {
            if std::env::var_os("TEST_LOG").is_some() {
                eprintln!("[server stdout] {line}");
            }
        }
    });
    Ok((addr, ServerProcess { child, output }))
}

impl TestApp {
    /// A new browser with an empty cookie jar that has loaded the page (`GET /`), as a
    /// browser does before its socket connects, so it holds a session cookie.
    pub async fn new_user(&self) -> User {
        let user = self.new_user_without_page();
        let page = user.get("/").await;
        assert_eq!(page.status, 200, "GET / failed: {}", page.text);
        user
    }

    /// A new browser with an empty cookie jar that has made no request yet.
    pub fn new_user_without_page(&self) -> User {
        User {
            endpoint: self.endpoint.clone(),
            http: self.http.clone(),
            jar: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// Everything the server printed so far.
    pub fn server_output(&self) -> String {
        self.server
            .as_ref()
            .map(|server| server.output.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the server to exit;
    /// returns its exit code. `restart` starts it again afterwards.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut server = self.server.take().expect("the server is running");
        let pid = server.child.id().expect("the server has a pid");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(timeout, server.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server did not exit within {timeout:?} after SIGTERM"))
            .expect("wait for the server");
        status.code()
    }

    /// Stops the server (waiting for it to exit) and starts it again with the same
    /// environment and directory. Existing [`User`]s keep their cookies and follow it.
    pub async fn restart(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.child.kill().await.expect("kill server");
        }
        let (addr, server) = start_server(&self.env, &self.dir)
            .await
            .unwrap_or_else(|failure| panic!("{failure}"));
        *self.endpoint.addr.write().unwrap() = addr;
        self.addr = addr;
        self.base_url = format!("http://{addr}");
        self.server = Some(server);
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let output = self.server_output();
            let tail: String = {
                let lines: Vec<&str> = output.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            eprintln!("---- server output (last 40 lines) ----\n{tail}\n---------------------------------------");
        }
        if let Some(server) = self.server.as_mut() {
            let _ = server.child.start_kill();
        }
    }
}

/// A response as the tests look at it.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body parsed as JSON, `Value::Null` when it is not JSON.
    pub json: Value,
}

impl ApiResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|value| value.to_str().unwrap_or_default().to_owned())
    }

    /// `body[field]` as a string, panicking with the body when it is not one.
    pub fn str_field(&self, field: &str) -> String {
        self.json
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "response has no string field {field:?}: {} {}",
                    self.status, self.text
                )
            })
            .to_owned()
    }

    /// Asserts the contract's error shape: status, `error` code and `message` sentence.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, message: &str) {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert_eq!(
            self.json["message"],
            json!(message),
            "unexpected message; body: {}",
            self.text
        );
        assert_eq!(
            self.json["error"],
            json!(code),
            "unexpected error code; body: {}",
            self.text
        );
    }

    /// Asserts a 200 with this `message`.
    #[track_caller]
    pub fn assert_ok_message(&self, message: &str) {
        assert_eq!(self.status, 200, "unexpected status; body: {}", self.text);
        assert_eq!(self.json["message"], json!(message), "body: {}", self.text);
    }
}

/// One browser: its own cookie jar, so its own session and user id.
#[derive(Clone)]
pub struct User {
    endpoint: Arc<Endpoint>,
    http: reqwest::Client,
    jar: Arc<Mutex<BTreeMap<String, String>>>,
}

impl User {
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.endpoint.addr(), path)
    }

    /// The `Cookie` header this browser would send, if it holds any cookie.
    pub fn cookie_header(&self) -> Option<String> {
        let jar = self.jar.lock().unwrap();
        if jar.is_empty() {
            return None;
        }
        Some(
            jar.iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }

    /// The value of the `chat_session` cookie, if held.
    pub fn session_cookie(&self) -> Option<String> {
        self.jar.lock().unwrap().get("chat_session").cloned()
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> ApiResponse {
        let request = match self.cookie_header() {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let response = request.send().await.expect("HTTP request to the server");
        self.store_cookies(response.headers());
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        ApiResponse {
            status,
            headers,
            text,
            json,
        }
    }

    fn store_cookies(&self, headers: &reqwest::header::HeaderMap) {
        let mut jar = self.jar.lock().unwrap();
        for value in headers.get_all("set-cookie") {
            let Ok(value) = value.to_str() else { continue };
            let mut parts = value.split(';');
            let Some((name, cookie_value)) = parts.next().and_then(|pair| pair.split_once('='))
            else {
                continue;
            };
            let expired = parts.any(|attribute| {
                let attribute = attribute.trim().to_ascii_lowercase();
                attribute == "max-age=0" || attribute.starts_with("max-age=-")
            });
            if expired || cookie_value.is_empty() {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_owned(), cookie_value.trim().to_owned());
            }
        }
    }

    pub async fn get(&self, path: &str) -> ApiResponse {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn delete(&self, path: &str) -> ApiResponse {
        self.send(self.http.delete(self.url(path))).await
    }

    /// POST without a body.
    pub async fn post(&self, path: &str) -> ApiResponse {
        self.send(self.http.post(self.url(path))).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> ApiResponse {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> ApiResponse {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// `POST /upload_file` with one multipart field `file` holding these bytes.
    pub async fn upload(&self, file_name: &str, bytes: &[u8]) -> ApiResponse {
        let (content_type, body) = multipart(&[Part::File {
            field: "file",
            file_name,
            bytes,
        }]);
        self.post_raw("/upload_file", &content_type, body).await
    }

    /// `POST /start_conversation`, returning the new conversation's id.
    pub async fn start_conversation(&self) -> String {
        let response = self.post("/start_conversation").await;
        response.assert_ok_message("New conversation started.");
        response.str_field("conversation_id")
    }

    /// `POST /add_few_shot_example` to the current conversation, asserting success.
    pub async fn add_example(&self, user_prompt: &str, assistant_response: &str) {
        let response = self
            .post_json(
                "/add_few_shot_example",
                json!({"user_prompt": user_prompt, "assistant_response": assistant_response}),
            )
            .await;
        response.assert_ok_message("Few-shot example added successfully!");
    }

    /// The stored history via `GET /load_conversation/{id}` as (role, content) pairs.
    /// Note: loading makes this conversation the session's current one.
    pub async fn history(&self, conversation_id: &str) -> Vec<(String, String)> {
        let response = self
            .get(&format!("/load_conversation/{conversation_id}"))
            .await;
        assert_eq!(
            response.status, 200,
            "load_conversation failed: {}",
            response.text
        );
        messages(&response.json["conversation"])
    }

    /// The `conversations` array of `GET /list_conversations`.
    pub async fn list(&self) -> Vec<Value> {
        let response = self.get("/list_conversations").await;
        assert_eq!(
            response.status, 200,
            "list_conversations failed: {}",
            response.text
        );
        response.json["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no conversations array: {}", response.text))
    }

    /// The ids listed by `GET /list_conversations`, in order.
    pub async fn listed_ids(&self) -> Vec<String> {
        self.list()
            .await
            .iter()
            .map(|entry| {
                entry["conversation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// A Socket.IO connection carrying this browser's cookie (and no Origin header).
    pub async fn socket(&self) -> SioClient {
        SioClient::connect(self.addr(), self.cookie_header().as_deref(), None)
            .await
            .unwrap_or_else(|error| panic!("socket connection refused: {error}"))
    }
}

/// `[{role, content}]` as (role, content) pairs.
pub fn messages(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of messages, got {value}"))
        .iter()
        .map(|message| {
            (
                message["role"].as_str().unwrap_or_default().to_owned(),
                message["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A (role, content) pair, for comparing histories.
pub fn msg(role: &str, content: &str) -> (String, String) {
    (role.to_owned(), content.to_owned())
}

pub enum Part<'a> {
    File {
        field: &'a str,
        file_name: &'a str,
        bytes: &'a [u8],
    },
    Text {
        field: &'a str,
        value: &'a str,
    },
}

/// A `multipart/form-data` body: (content type with boundary, bytes).
pub fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = format!("----llmchattest{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match part {
            Part::File {
                field,
                file_name,
                bytes,
            } => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
            }
            Part::Text { field, value } => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes(),
                );
                body.extend_from_slice(value.as_bytes());
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Polls `check` until it returns `Some`, for stored effects that land after an event.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses an RFC 3339 timestamp field, panicking with context when it is not one.
#[track_caller]
pub fn timestamp(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {value}"));
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|error| panic!("{text:?} is not RFC 3339: {error}"))
}
