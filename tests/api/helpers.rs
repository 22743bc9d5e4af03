//! Starting the real `llm-chat-server` binary against a fake LLM, and talking to it as users.
//!
//! Each test gets its own process, temp dir (database, saved conversations, working dir) and
//! fake LLM, so tests run in parallel. A [`User`] is one browser: one cookie jar, one session,
//! following the server across restarts.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;
use testkit::browser::{http_client, ApiResponse, Browser, Endpoint};
use testkit::fake_llm::FakeLlm;
use testkit::server::{test_env, Env, ServerProcess};
use testkit::sio::SioClient;

/// Bound on one HTTP request from a test.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one socket turn (first-byte/idle timeouts are 2 s, up to 3 tries).
pub const TURN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for one socket event that should come promptly.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

const BIN: &str = env!("CARGO_BIN_EXE_llm-chat-server");

/// The address the current server process listens on, shared with every [`User`] so a
/// restarted server is reached with the same cookie jars.
struct AppEndpoint {
    addr: RwLock<SocketAddr>,
}

impl Endpoint for AppEndpoint {
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
    endpoint: Arc<AppEndpoint>,
    http: reqwest::Client,
    server: Option<ServerProcess>,
}

/// The environment every test server starts from.
pub fn base_env(llm: &FakeLlm, dir: &TempDir) -> Env {
    let mut env = test_env(llm, dir.path());
    for (key, value) in [
        ("LLM_FIRST_BYTE_TIMEOUT_SECONDS", "2"),
        ("LLM_IDLE_TIMEOUT_SECONDS", "2"),
        ("LLM_RETRY_MAX_WAIT_SECONDS", "2"),
    ] {
        env.insert(key.to_owned(), value.to_owned());
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

async fn start_server(env: &Env, dir: &TempDir) -> ServerProcess {
    ServerProcess::start(Path::new(BIN), env, dir.path())
        .await
        .unwrap_or_else(|failure| panic!("{failure}"))
}

/// Starts a server with exactly `env`, working in `dir` (which may hold a `.env`).
pub async fn spawn_app_in(llm: FakeLlm, dir: TempDir, env: Env) -> TestApp {
    let server = start_server(&env, &dir).await;
    let addr = server.addr;
    TestApp {
        addr,
        base_url: server.base_url(),
        llm,
        dir,
        env,
        endpoint: Arc::new(AppEndpoint {
            addr: RwLock::new(addr),
        }),
        http: http_client(HTTP_TIMEOUT),
        server: Some(server),
    }
}

/// Runs the binary with `env` in `dir` and waits (bounded) for it to exit without ever
/// listening. Returns the exit code and everything it printed (stdout + stderr).
pub async fn run_expecting_startup_failure(env: &Env, dir: &TempDir) -> (Option<i32>, String) {
    testkit::server::run_to_exit(Path::new(BIN), env, dir.path()).await
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

    /// A new browser with an empty cookie jar whose requests come from this local
    /// address (a loopback address other than the server's, say: another client).
    pub fn new_user_from(&self, source: std::net::IpAddr) -> User {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .local_address(source)
            .build()
            .expect("http client");
        User {
            endpoint: self.endpoint.clone(),
            browser: Browser::with_client(http),
        }
    }

    /// A new browser with an empty cookie jar that has made no request yet.
    pub fn new_user_without_page(&self) -> User {
        User {
            endpoint: self.endpoint.clone(),
            browser: Browser::with_client(self.http.clone()),
        }
    }

    /// Everything the server printed so far.
    pub fn server_output(&self) -> String {
        self.server
            .as_ref()
            .map(ServerProcess::output)
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the server to exit;
    /// returns its exit code. `restart` starts it again afterwards.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut server = self.server.take().expect("the server is running");
        server.terminate(timeout).await
    }

    /// Stops the server (waiting for it to exit) and starts it again with the same
    /// environment and directory. Existing [`User`]s keep their cookies and follow it.
    pub async fn restart(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.kill().await;
        }
        let server = start_server(&self.env, &self.dir).await;
        *self.endpoint.addr.write().unwrap() = server.addr;
        self.addr = server.addr;
        self.base_url = server.base_url();
        self.server = Some(server);
    }
}

/// One browser of this app: its own cookie jar, so its own session and user id.
#[derive(Clone)]
pub struct User {
    endpoint: Arc<AppEndpoint>,
    browser: Browser,
}

impl User {
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.addr()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint.base_url())
    }

    /// The `Cookie` header this browser would send, if it holds any cookie.
    pub fn cookie_header(&self) -> Option<String> {
        self.browser.cookie_header()
    }

    /// The value of the `chat_session` cookie, if held.
    pub fn session_cookie(&self) -> Option<String> {
        self.browser.cookie("chat_session")
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> ApiResponse {
        self.browser.send(request).await
    }

    pub async fn get(&self, path: &str) -> ApiResponse {
        self.browser.get(&*self.endpoint, path).await
    }

    pub async fn delete(&self, path: &str) -> ApiResponse {
        self.browser.delete(&*self.endpoint, path).await
    }

    /// POST without a body.
    pub async fn post(&self, path: &str) -> ApiResponse {
        self.browser.post(&*self.endpoint, path).await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> ApiResponse {
        self.browser.post_json(&*self.endpoint, path, body).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> ApiResponse {
        let at = &*self.endpoint;
        self.browser.post_raw(at, path, content_type, body).await
    }

    /// PATCH with a body of this content type.
    pub async fn patch_raw(
        &self,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> ApiResponse {
        let request = self
            .browser
            .http()
            .patch(self.url(path))
            .header("content-type", content_type)
            .body(body);
        self.browser.send(request).await
    }

    pub async fn patch_json(&self, path: &str, body: Value) -> ApiResponse {
        self.patch_raw(path, "application/json", body.to_string())
            .await
    }

    /// `POST /upload_file` with one multipart field `file` holding these bytes.
    pub async fn upload(&self, file_name: &str, bytes: &[u8]) -> ApiResponse {
        self.browser.upload(&*self.endpoint, file_name, bytes).await
    }

    /// `POST /start_conversation`, returning the new conversation's id.
    pub async fn start_conversation(&self) -> String {
        self.browser.start_conversation(&*self.endpoint).await
    }

    /// `POST /add_few_shot_example` to the current conversation, asserting success.
    pub async fn add_example(&self, user_prompt: &str, assistant_response: &str) {
        let at = &*self.endpoint;
        self.browser
            .add_example(at, user_prompt, assistant_response)
            .await
    }

    /// The stored history via `GET /load_conversation/{id}` as (role, content) pairs.
    /// Note: loading makes this conversation the session's current one.
    pub async fn history(&self, conversation_id: &str) -> Vec<(String, String)> {
        self.browser.history(&*self.endpoint, conversation_id).await
    }

    /// The `conversations` array of `GET /list_conversations`.
    pub async fn list(&self) -> Vec<Value> {
        self.browser.list(&*self.endpoint).await
    }

    /// The ids listed by `GET /list_conversations`, in order.
    pub async fn listed_ids(&self) -> Vec<String> {
        self.browser.listed_ids(&*self.endpoint).await
    }

    /// A Socket.IO connection carrying this browser's cookie (and no Origin header).
    pub async fn socket(&self) -> SioClient {
        self.browser.socket(&*self.endpoint).await
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
