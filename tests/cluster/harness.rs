//! A real cluster on loopback for one test: its own `redis-server`, a fake LLM, two instances
//! of the real binary sharing that Redis (own key prefix) and one SQLite file, and optionally
//! Debian's nginx in front of them with the project's `deploy/nginx.conf`. Every process is
//! killed when its guard drops, panics included.
//!
//! A user is a [`Browser`]: one cookie jar, used against any instance or nginx.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use testkit::browser::{http_client, ApiResponse, Browser, Endpoint};
use testkit::fake_llm::{echo_pieces, Behaviour, FakeLlm};
use testkit::free_port;
use testkit::server::{test_env, Env, ServerProcess};

use crate::tls::ServerTls;

pub const REDIS_SERVER: &str = "/usr/bin/redis-server";
pub const NGINX: &str = "/usr/sbin/nginx";
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one reply.
pub const TURN_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one event that should come promptly.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Tail of a text file, for failure reports.
pub fn tail_of(path: &Path, lines: usize) -> String {
    testkit::server::tail(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

// ------------------------------------------------------------------ Redis

/// Starts `redis-server` on 127.0.0.1:`port` without persistence, working in `dir`, with
/// `extra` arguments (a config file first, when given), and waits until it answers PING.
/// With `tls` it speaks only TLS on `port`. Its output goes to `log`.
pub fn spawn_redis_server(
    port: u16,
    dir: &Path,
    extra: &[String],
    tls: Option<&ServerTls>,
    log: &Path,
) -> Child {
    assert!(
        Path::new(REDIS_SERVER).exists(),
        "{REDIS_SERVER} is missing: install Debian's redis-server package (apt-get install redis-server)"
    );
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("redis log file");
    let listen = match tls {
        Some(tls) => tls.server_args(port),
        None => vec!["--port".to_owned(), port.to_string()],
    };
    let mut child = Command::new(REDIS_SERVER)
        .args(extra)
        .args(listen)
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .args(["--dir", &dir.display().to_string()])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("log handle"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {REDIS_SERVER}: {error}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "redis-server on port {port} exited ({status}) before answering PING:\n{}",
                tail_of(log, 20)
            );
        }
        if redis_ping(tls, port) {
            return child;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-server on port {port} did not answer PING within 10 s:\n{}",
                tail_of(log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` of this test on 127.0.0.1, without persistence, in plain text or only
/// TLS. Killed on drop.
pub struct Redis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
    tls: Option<ServerTls>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::launch(None)
    }

    /// One that speaks only TLS, with `tls`'s files.
    pub fn start_tls(tls: ServerTls) -> Redis {
        Redis::launch(Some(tls))
    }

    fn launch(tls: Option<ServerTls>) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir for redis"),
            child: None,
            tls,
        };
        redis.spawn();
        redis
    }

    /// `redis://`, or `rediss://` for one on TLS, by address.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Its TLS files (panics for a plain-text one).
    pub fn tls(&self) -> &ServerTls {
        self.tls.as_ref().expect("a redis-server on TLS")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let child = spawn_redis_server(
            self.port,
            self.dir.path(),
            &[],
            self.tls.as_ref(),
            &self.log_path(),
        );
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

    /// The shard channels Redis has subscribers for (`PUBSUB SHARDCHANNELS`), for failure
    /// reports.
    pub fn shard_channels(&self) -> String {
        resp_values(&ask(self.tls.as_ref(), self.port, "PUBSUB SHARDCHANNELS")).join(" ")
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

/// A byte stream to a server: TCP, or TLS over TCP.
pub trait Duplex: Read + Write {}

impl<T: Read + Write> Duplex for T {}

/// A connection to a server on 127.0.0.1:`port`, over TLS with `tls`'s client certificate
/// when given, whose reads give up after `quiet` without a byte; `None` if it cannot be
/// made.
fn connect(tls: Option<&ServerTls>, port: u16, quiet: Duration) -> Option<Box<dyn Duplex>> {
    let tcp = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    )
    .ok()?;
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(2)));
    match tls {
        Some(tls) => tls.wrap(tcp, quiet),
        None => {
            let _ = tcp.set_read_timeout(Some(quiet));
            Some(Box::new(tcp))
        }
    }
}

/// Sends one command (inline protocol) and reads the raw answer until `complete(answer)`
/// or no byte has come for `quiet`; empty if the server cannot be reached.
fn exchange(
    tls: Option<&ServerTls>,
    port: u16,
    command: &str,
    quiet: Duration,
    complete: impl Fn(&[u8]) -> bool,
) -> String {
    let Some(mut stream) = connect(tls, port, quiet) else {
        return String::new();
    };
    if stream
        .write_all(format!("{command}\r\n").as_bytes())
        .and_then(|()| stream.flush())
        .is_err()
    {
        return String::new();
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    while !complete(&answer) {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => answer.extend_from_slice(&buffer[..read]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// One command to a server on 127.0.0.1:`port` (over TLS with `tls`), in the inline
/// protocol; the raw answer (what arrived until 300 ms passed without a byte).
pub fn ask(tls: Option<&ServerTls>, port: u16, command: &str) -> String {
    exchange(tls, port, command, Duration::from_millis(300), |_| false)
}

/// The values of a raw RESP answer (its type and length lines dropped).
pub fn resp_values(answer: &str) -> Vec<&str> {
    answer
        .lines()
        .filter(|line| !line.starts_with('*') && !line.starts_with('$'))
        .collect()
}

/// Whether the server on 127.0.0.1:`port` answers PING (over TLS with `tls`).
pub fn redis_ping(tls: Option<&ServerTls>, port: u16) -> bool {
    exchange(tls, port, "PING", Duration::from_millis(500), |answer| {
        answer.ends_with(b"\r\n")
    }) == "+PONG\r\n"
}

// -------------------------------------------------------------- instances

/// One running `llm-chat-server`. Killed on drop.
pub struct Instance {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Killed on drop (printing its output when a test failed).
    _process: ServerProcess,
}

impl Endpoint for Instance {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Instance {
    /// SIGKILL, as a crash: the process ends mid-work, nothing is drained or released.
    pub async fn kill(&mut self) {
        self._process.kill().await;
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self._process.pid().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{signal} {pid} failed");
    }

    pub async fn start(name: &'static str, env: &Env, dir: &Path) -> Instance {
        let bin = Path::new(env!("CARGO_BIN_EXE_llm-chat-server"));
        let mut process = ServerProcess::start(bin, env, dir)
            .await
            .unwrap_or_else(|failure| panic!("instance {name}: {failure}"));
        process.label = format!("instance {name}");
        Instance {
            name,
            addr: process.addr,
            _process: process,
        }
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
        Nginx::start_edited(upstreams, |config| config)
    }

    /// The same, with the adapted `deploy/nginx.conf` changed by `edit` first.
    pub fn start_edited(upstreams: &[SocketAddr], edit: impl FnOnce(String) -> String) -> Nginx {
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
            edit(adapt_deploy_config(&deploy, upstreams, addr))
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

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

// ---------------------------------------------------------------- cluster

/// The Redis deployment a [`Cluster`] runs on.
pub enum RedisSetup {
    Single(Redis),
    Cluster(crate::topology::RedisCluster),
    Sentinel(crate::topology::RedisSentinel),
}

impl RedisSetup {
    /// `REDIS_URL` for the instances.
    pub fn url(&self) -> String {
        match self {
            RedisSetup::Single(redis) => redis.url(),
            RedisSetup::Cluster(cluster) => cluster.url(),
            RedisSetup::Sentinel(sentinel) => sentinel.url(),
        }
    }

    /// Its TLS files when it speaks only TLS.
    pub fn tls(&self) -> Option<&ServerTls> {
        match self {
            RedisSetup::Single(redis) => redis.tls.as_ref(),
            RedisSetup::Cluster(cluster) => cluster.tls.as_ref(),
            RedisSetup::Sentinel(sentinel) => sentinel.tls.as_ref(),
        }
    }

    fn single(&mut self) -> &mut Redis {
        match self {
            RedisSetup::Single(redis) => redis,
            _ => panic!("this test needs a single redis-server"),
        }
    }

    /// Kills the single server (SIGKILL).
    pub fn kill(&mut self) {
        self.single().kill();
    }

    /// Starts the single server again on its port.
    pub fn restart(&mut self) {
        self.single().restart();
    }

    /// The shard channels Redis holds subscribers for, for failure reports.
    pub fn shard_channels(&self) -> String {
        match self {
            RedisSetup::Single(redis) => redis.shard_channels(),
            RedisSetup::Cluster(cluster) => cluster.shard_channels(),
            RedisSetup::Sentinel(_) => "<not asked of a sentinel set>".to_owned(),
        }
    }
}

/// Redis, the fake LLM, instances `a` and `b`, and (if asked) nginx in front of both.
/// Fields drop in order: nginx, the instances, then Redis.
pub struct Cluster {
    pub nginx: Option<Nginx>,
    pub a: Instance,
    pub b: Instance,
    pub redis: RedisSetup,
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
        Cluster::start_on(RedisSetup::Single(Redis::start()), overrides, with_nginx).await
    }

    /// The same on the given Redis deployment (one server, a Redis Cluster or Sentinel).
    pub async fn start_on(
        redis: RedisSetup,
        overrides: &[(&str, &str)],
        with_nginx: bool,
    ) -> Cluster {
        let llm = FakeLlm::start().await;
        // Unless a test scripts otherwise: `You said: <message>` in four pieces.
        llm.set_default_fn(|request| Behaviour::Stream(echo_pieces(&request.last_user_message())));
        let dir = tempfile::tempdir().expect("cluster temp dir");
        let mut env = test_env(&llm, dir.path());
        for (key, value) in [
            ("REDIS_URL", redis.url()),
            (
                "REDIS_PREFIX",
                format!("t{}", uuid::Uuid::new_v4().simple()),
            ),
            ("SECRET_KEY", random_secret()),
            ("LLM_MODEL", "fake".to_owned()),
        ] {
            env.insert(key.to_owned(), value);
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

    /// A new browser with an empty cookie jar, used against any instance or nginx.
    pub fn new_user(&self) -> Browser {
        Browser::new(HTTP_TIMEOUT)
    }

    /// `GET /readyz` on `at`, as (status, body), with no cookie; a failed request is
    /// status 0.
    pub async fn readyz(&self, at: &impl Endpoint) -> (u16, Value) {
        let response = http_client(HTTP_TIMEOUT)
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

/// `GET path` on `at` outside any browser, with this exact `Cookie` header if given.
pub async fn plain_get(at: &impl Endpoint, path: &str, cookie: Option<&str>) -> ApiResponse {
    let outsider = Browser::new(HTTP_TIMEOUT);
    let mut request = outsider.http().get(format!("{}{path}", at.base_url()));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    outsider.send(request).await
}
