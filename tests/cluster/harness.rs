//! A real cluster on loopback for one test: its own `redis-server`, a fake LLM, two instances
//! of the real binary sharing that Redis (own key prefix) and one SQLite file, and optionally
//! Debian's nginx in front of them with the project's `deploy/nginx.conf`. Every process is
//! killed when its guard drops, panics included.
//!
//! A [`User`] is one browser: one cookie jar, used against any instance or nginx.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::fake_llm::FakeLlm;
use crate::sio::{SioClient, Transport};

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
pub const NGINX: &str = "/usr/sbin/nginx";
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one reply.
pub const TURN_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one event that should come promptly.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
const LISTENING_PREFIX: &str = "llm-chat-server listening on http://";

/// A free TCP port on 127.0.0.1 (bound then released; the caller binds it right away).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Tail of a text file, for failure reports.
fn tail_of(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ------------------------------------------------------------------ Redis

/// A `redis-server` of this test on 127.0.0.1, without persistence. Killed on drop.
pub struct Redis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: install Debian's redis-server package (apt-get install redis-server)"
        );
        let mut redis = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir for redis"),
            child: None,
        };
        redis.spawn();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("redis log file");
        let mut child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {REDIS_SERVER}: {error}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "redis-server on port {} exited ({status}) before answering PING:\n{}",
                    self.port,
                    tail_of(&self.log_path(), 20)
                );
            }
            if redis_ping(self.port) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server on port {} did not answer PING within 10 s:\n{}",
                    self.port,
                    tail_of(&self.log_path(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Kills the server (SIGKILL, as a crash) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty: there is no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- redis log (last 20 lines) ----\n{}",
                tail_of(&self.log_path(), 20)
            );
        }
        self.kill();
    }
}

impl Redis {
    /// The shard channels Redis has subscribers for (`PUBSUB SHARDCHANNELS`), raw, for
    /// failure reports.
    pub fn shard_channels(&self) -> String {
        let Ok(mut stream) = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(500),
        ) else {
            return "<redis unreachable>".to_owned();
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
        if stream.write_all(b"PUBSUB SHARDCHANNELS\r\n").is_err() {
            return "<cannot ask redis>".to_owned();
        }
        let mut answer = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(read) = stream.read(&mut buffer) {
            if read == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..read]);
        }
        String::from_utf8_lossy(&answer)
            .lines()
            .filter(|line| !line.starts_with('*') && !line.starts_with('$'))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn redis_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}

// -------------------------------------------------------------- instances

/// Environment for the child processes (cleared first, then exactly this).
pub type Env = BTreeMap<String, String>;

/// Something HTTP and Socket.IO clients can talk to: an instance or nginx.
pub trait Endpoint {
    fn addr(&self) -> SocketAddr;
    fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }
}

/// One running `llm-chat-server`. Killed on drop.
pub struct Instance {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: tokio::process::Child,
    output: Arc<Mutex<String>>,
}

impl Endpoint for Instance {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Instance {
    pub async fn start(name: &'static str, env: &Env, dir: &Path) -> Instance {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_llm-chat-server"))
            .env_clear()
            .envs(env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start llm-chat-server");
        let output = Arc::new(Mutex::new(String::new()));
        tokio::spawn(collect(child.stderr.take().unwrap(), output.clone()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let line = match tokio::time::timeout(remaining, stdout.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(_) => {
                    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                    tokio::time::sleep(Duration::from_millis(200)).await; // let stderr drain
                    panic!(
                        "instance {name} exited before listening ({status:?}); output:\n{}",
                        output.lock().unwrap()
                    );
                }
                Err(_) => {
                    let _ = child.start_kill();
                    panic!(
                        "instance {name} did not print its listening line within {STARTUP_TIMEOUT:?}; output:\n{}",
                        output.lock().unwrap()
                    );
                }
            };
            output.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(start) = line.find(LISTENING_PREFIX) {
                let rest = line[start + LISTENING_PREFIX.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_end_matches('/');
                break rest
                    .parse::<SocketAddr>()
                    .unwrap_or_else(|error| panic!("bad listening line {line:?}: {error}"));
            }
        };
        let rest = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                rest.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Instance {
            name,
            addr,
            child,
            output,
        }
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let output = self.output();
            let lines: Vec<&str> = output.lines().collect();
            eprintln!(
                "---- instance {} output (last 40 lines) ----\n{}",
                self.name,
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        let _ = self.child.start_kill();
    }
}

async fn collect(stream: impl AsyncRead + Unpin, into: Arc<Mutex<String>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("[server] {line}");
        }
        into.lock().unwrap().push_str(&format!("{line}\n"));
    }
}

// ------------------------------------------------------------------ nginx

/// Debian's nginx in front of the given instances, with `deploy/nginx.conf` (its `map`,
/// `upstream` and `server` blocks as they are, except that the upstream's servers and the
/// `listen` address become loopback ones) inside a wrapper that keeps pid, logs and temp files
/// in a temp dir. Killed on drop.
pub struct Nginx {
    pub addr: SocketAddr,
    dir: TempDir,
    child: Option<Child>,
}

impl Endpoint for Nginx {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// `deploy/nginx.conf` with its upstream servers replaced by `upstreams` and its `listen`
/// directive by `listen`.
pub fn adapt_deploy_config(deploy: &str, upstreams: &[SocketAddr], listen: SocketAddr) -> String {
    let mut out = Vec::new();
    let mut in_upstream = false;
    let mut upstream_blocks = 0;
    let mut saw_ip_hash = false;
    let mut listens = 0;
    for line in deploy.lines() {
        let code = line.split('#').next().unwrap_or_default().trim();
        if code.starts_with("upstream ") && code.ends_with('{') {
            in_upstream = true;
            upstream_blocks += 1;
            out.push(line.to_owned());
            continue;
        }
        if in_upstream {
            if code == "}" {
                for upstream in upstreams {
                    out.push(format!("    server {upstream};"));
                }
                in_upstream = false;
            } else if code.starts_with("server ") {
                continue; // the deployment's app1/app2 hosts
            } else if code == "ip_hash;" {
                saw_ip_hash = true;
            }
            out.push(line.to_owned());
            continue;
        }
        if code.starts_with("listen ") {
            listens += 1;
            if listens == 1 {
                out.push(format!("    listen {listen};"));
            }
            continue;
        }
        out.push(line.to_owned());
    }
    assert_eq!(
        upstream_blocks, 1,
        "deploy/nginx.conf should define exactly one upstream block"
    );
    assert!(
        saw_ip_hash,
        "deploy/nginx.conf's upstream should use ip_hash (long-polling needs stickiness)"
    );
    assert!(listens >= 1, "deploy/nginx.conf has no listen directive");
    out.join("\n")
}

impl Nginx {
    pub fn start(upstreams: &[SocketAddr]) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} is missing: install Debian's nginx package (apt-get install nginx)"
        );
        let deploy_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx.conf");
        let deploy = std::fs::read_to_string(&deploy_path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", deploy_path.display()));
        let dir = tempfile::tempdir().expect("temp dir for nginx");
        // nginx's workers (user nobody when started as root) create temp files in here.
        set_mode(dir.path(), 0o755);
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let prefix = dir.path().display().to_string();
        let config = format!(
            "# generated by tests/cluster for one test\n\
             daemon off;\n\
             master_process on;\n\
             worker_processes 1;\n\
             pid {prefix}/nginx.pid;\n\
             error_log {prefix}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             log_format cluster '$remote_addr \"$request\" $status upstream=$upstream_addr rt=$request_time';\n\
             access_log {prefix}/access.log cluster;\n\
             client_body_temp_path {prefix}/client_body;\n\
             proxy_temp_path {prefix}/proxy;\n\
             fastcgi_temp_path {prefix}/fastcgi;\n\
             uwsgi_temp_path {prefix}/uwsgi;\n\
             scgi_temp_path {prefix}/scgi;\n\
             # ---- deploy/nginx.conf, adapted ----\n\
             {}\n\
             }}\n",
            adapt_deploy_config(&deploy, upstreams, addr)
        );
        let config_path = dir.path().join("nginx.conf");
        std::fs::write(&config_path, &config).expect("write nginx.conf");
        let check = Command::new(NGINX)
            .args([
                "-t",
                "-q",
                "-p",
                &prefix,
                "-e",
                &format!("{prefix}/error.log"),
            ])
            .arg("-c")
            .arg(&config_path)
            .output()
            .expect("run nginx -t");
        assert!(
            check.status.success(),
            "nginx -t rejects the generated config:\n{}\n{}\n---- config ----\n{config}",
            String::from_utf8_lossy(&check.stderr),
            tail_of(&dir.path().join("error.log"), 20)
        );
        let child = Command::new(NGINX)
            .args(["-p", &prefix, "-e", &format!("{prefix}/error.log")])
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {NGINX}: {error}"));
        let mut nginx = Nginx {
            addr,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(status))) = nginx.child.as_mut().map(Child::try_wait) {
                panic!(
                    "nginx exited ({status}) at start:\n{}",
                    tail_of(&nginx.dir.path().join("error.log"), 20)
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr} within 10 s:\n{}",
                tail_of(&nginx.dir.path().join("error.log"), 20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    /// The access log so far (which upstream served what).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- nginx error log ----\n{}\n---- nginx access log (last 30) ----\n{}",
                tail_of(&self.dir.path().join("error.log"), 30),
                tail_of(&self.dir.path().join("access.log"), 30)
            );
        }
        if let Some(mut child) = self.child.take() {
            // SIGKILL to the master; its workers notice the master is gone and exit, but
            // kill them too so nothing outlives the test.
            let workers = worker_pids(child.id());
            let _ = child.kill();
            let _ = child.wait();
            for pid in workers {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// The children of `pid` (nginx workers), from /proc.
fn worker_pids(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

// ---------------------------------------------------------------- cluster

/// Redis, the fake LLM, instances `a` and `b`, and (if asked) nginx in front of both.
/// Fields drop in order: nginx, the instances, then Redis.
pub struct Cluster {
    pub nginx: Option<Nginx>,
    pub a: Instance,
    pub b: Instance,
    pub redis: Redis,
    pub llm: FakeLlm,
    /// The shared SQLite file and saved conversations; removed after the instances stop.
    _dir: TempDir,
}

/// 64 random characters.
fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Cluster {
    pub async fn start() -> Cluster {
        Cluster::start_with(&[], false).await
    }

    /// With these extra environment variables, and nginx in front when `with_nginx`.
    pub async fn start_with(overrides: &[(&str, &str)], with_nginx: bool) -> Cluster {
        let redis = Redis::start();
        let llm = FakeLlm::start().await;
        let dir = tempfile::tempdir().expect("cluster temp dir");
        let mut env = Env::new();
        for (key, value) in [
            ("HOST", "127.0.0.1".to_owned()),
            ("PORT", "0".to_owned()),
            ("REDIS_URL", redis.url()),
            (
                "REDIS_PREFIX",
                format!("t{}", uuid::Uuid::new_v4().simple()),
            ),
            ("SECRET_KEY", random_secret()),
            (
                "DATABASE_PATH",
                dir.path().join("chat.db").display().to_string(),
            ),
            (
                "SAVED_CONVERSATIONS_DIR",
                dir.path().join("saved").display().to_string(),
            ),
            ("LLM_PROVIDER", "openai".to_owned()),
            ("OPENAI_BASE_URL", llm.base_url()),
            ("OPENAI_API_KEY", "k".to_owned()),
            ("LLM_MODEL", "fake".to_owned()),
            (
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            ),
        ] {
            env.insert(key.to_owned(), value);
        }
        if let Ok(path) = std::env::var("PATH") {
            env.insert("PATH".to_owned(), path);
        }
        for (key, value) in overrides {
            env.insert((*key).to_owned(), (*value).to_owned());
        }
        // One after the other: the first creates the shared SQLite file and its schema.
        let a = Instance::start("A", &env, dir.path()).await;
        let b = Instance::start("B", &env, dir.path()).await;
        let nginx = with_nginx.then(|| Nginx::start(&[a.addr, b.addr]));
        Cluster {
            nginx,
            a,
            b,
            redis,
            llm,
            _dir: dir,
        }
    }

    pub fn nginx(&self) -> &Nginx {
        self.nginx.as_ref().expect("cluster started with nginx")
    }

    /// A new browser with an empty cookie jar.
    pub fn new_user(&self) -> User {
        User {
            http: http_client(),
            jar: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// `GET /readyz` on `at`, as (status, body), with no cookie; a failed request is
    /// status 0.
    pub async fn readyz(&self, at: &impl Endpoint) -> (u16, Value) {
        let response = http_client()
            .get(format!("{}/readyz", at.base_url()))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.json().await.unwrap_or(Value::Null);
                (status, body)
            }
            Err(error) => (0, json!({"request_failed": error.to_string()})),
        }
    }
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// `GET path` on `at` outside any browser, with this exact `Cookie` header if given.
pub async fn plain_get(at: &impl Endpoint, path: &str, cookie: Option<&str>) -> ApiResponse {
    let user = User {
        http: http_client(),
        jar: Arc::new(Mutex::new(BTreeMap::new())),
    };
    let mut request = user.http.get(format!("{}{path}", at.base_url()));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    user.send(request).await
}

// -------------------------------------------------------------------- users

/// A response as the tests look at it.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body as JSON, `Value::Null` when it is not JSON.
    pub json: Value,
}

impl ApiResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|value| value.to_str().unwrap_or_default().to_owned())
    }

    #[track_caller]
    pub fn str_field(&self, field: &str) -> String {
        self.json[field]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "response has no string field {field:?}: {} {}",
                    self.status, self.text
                )
            })
            .to_owned()
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }
}

/// One browser: its own cookie jar, used against any endpoint.
#[derive(Clone)]
pub struct User {
    http: reqwest::Client,
    jar: Arc<Mutex<BTreeMap<String, String>>>,
}

impl User {
    /// The `Cookie` header this browser sends, if it holds any cookie.
    pub fn cookie_header(&self) -> Option<String> {
        let jar = self.jar.lock().unwrap();
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> ApiResponse {
        let request = match self.cookie_header() {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let response = request.send().await.expect("HTTP request");
        {
            let mut jar = self.jar.lock().unwrap();
            for value in response.headers().get_all("set-cookie") {
                let Ok(value) = value.to_str() else { continue };
                let mut parts = value.split(';');
                let Some((name, cookie)) = parts.next().and_then(|pair| pair.split_once('='))
                else {
                    continue;
                };
                let expired = parts.any(|attribute| {
                    let attribute = attribute.trim().to_ascii_lowercase();
                    attribute == "max-age=0" || attribute.starts_with("max-age=-")
                });
                if expired || cookie.is_empty() {
                    jar.remove(name.trim());
                } else {
                    jar.insert(name.trim().to_owned(), cookie.trim().to_owned());
                }
            }
        }
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

    pub async fn get(&self, at: &impl Endpoint, path: &str) -> ApiResponse {
        self.send(self.http.get(format!("{}{path}", at.base_url())))
            .await
    }

    pub async fn post(&self, at: &impl Endpoint, path: &str) -> ApiResponse {
        self.send(self.http.post(format!("{}{path}", at.base_url())))
            .await
    }

    pub async fn post_json(&self, at: &impl Endpoint, path: &str, body: Value) -> ApiResponse {
        self.send(
            self.http
                .post(format!("{}{path}", at.base_url()))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// `POST /upload_file` with one multipart field `file`.
    pub async fn upload(&self, at: &impl Endpoint, file_name: &str, bytes: Vec<u8>) -> ApiResponse {
        let boundary = format!("----cluster{}", uuid::Uuid::new_v4().simple());
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: text/plain\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        self.send(
            self.http
                .post(format!("{}/upload_file", at.base_url()))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body),
        )
        .await
    }

    /// `POST /start_conversation` on `at`; returns the new id.
    pub async fn start_conversation(&self, at: &impl Endpoint) -> String {
        let response = self.post(at, "/start_conversation").await;
        response.assert_status(200);
        assert_eq!(
            response.json["message"], "New conversation started.",
            "{}",
            response.text
        );
        response.str_field("conversation_id")
    }

    /// The stored history via `GET /load_conversation/{id}` on `at`, as (role, content).
    pub async fn history(
        &self,
        at: &impl Endpoint,
        conversation_id: &str,
    ) -> Vec<(String, String)> {
        let response = self
            .get(at, &format!("/load_conversation/{conversation_id}"))
            .await;
        response.assert_status(200);
        response.json["conversation"]
            .as_array()
            .unwrap_or_else(|| panic!("no conversation array: {}", response.text))
            .iter()
            .map(|message| {
                (
                    message["role"].as_str().unwrap_or_default().to_owned(),
                    message["content"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The ids `GET /list_conversations` on `at` shows.
    pub async fn listed_ids(&self, at: &impl Endpoint) -> Vec<String> {
        let response = self.get(at, "/list_conversations").await;
        response.assert_status(200);
        response.json["conversations"]
            .as_array()
            .unwrap_or_else(|| panic!("no conversations array: {}", response.text))
            .iter()
            .map(|entry| {
                entry["conversation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// A WebSocket Socket.IO connection to `at` with this browser's cookie.
    pub async fn socket(&self, at: &impl Endpoint) -> SioClient {
        self.socket_with(at, Transport::WebSocket, None).await
    }

    pub async fn socket_with(
        &self,
        at: &impl Endpoint,
        transport: Transport,
        origin: Option<&str>,
    ) -> SioClient {
        SioClient::connect(
            at.addr(),
            transport,
            self.cookie_header().as_deref(),
            origin,
        )
        .await
        .unwrap_or_else(|error| panic!("socket connection to {} refused: {error}", at.addr()))
    }
}

/// A (role, content) pair.
pub fn msg(role: &str, content: &str) -> (String, String) {
    (role.to_owned(), content.to_owned())
}
