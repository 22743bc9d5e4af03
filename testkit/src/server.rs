//! The real `llm-chat-server` binary as a child process: started with exactly the given
//! environment in a given directory, its address read from the line it prints once it
//! listens, everything it prints kept for failure reports (`TEST_LOG=1` also echoes it).
//! The process is killed when its [`ServerProcess`] drops.
//!
//! The binary's path comes from the caller: `env!("CARGO_BIN_EXE_llm-chat-server")` exists
//! only in the root crate's own tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader, Lines};
use tokio::process::{Child, Command};

use crate::fake_llm::FakeLlm;

/// How long a server may take to print its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the server prints once it listens, before `HOST:PORT`.
pub const LISTENING_PREFIX: &str = "llm-chat-server listening on http://";

/// Environment variables for the child process (its environment is cleared first, so
/// nothing inherited, like `AZURE_API_URL` or `MONGODB_URI`, changes its behaviour).
pub type Env = BTreeMap<String, String>;

/// An environment of exactly these variables plus this process's `PATH` (so the server
/// finds the programs it runs).
pub fn env_with_path<'a>(vars: impl IntoIterator<Item = (&'a str, String)>) -> Env {
    let mut env: Env = vars
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
    if let Ok(path) = std::env::var("PATH") {
        env.insert("PATH".to_owned(), path);
    }
    env
}

/// The environment a test server starts from: on 127.0.0.1 with a free port, its SQLite file
/// and saved conversations in `dir`, the OpenAI provider at the fake `llm`, `RUST_LOG` from
/// `TEST_RUST_LOG` (default `warn`), and `PATH`.
pub fn test_env(llm: &FakeLlm, dir: &Path) -> Env {
    env_with_path([
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        ("DATABASE_PATH", dir.join("chat.db").display().to_string()),
        (
            "SAVED_CONVERSATIONS_DIR",
            dir.join("saved").display().to_string(),
        ),
        ("LLM_PROVIDER", "openai".to_owned()),
        ("OPENAI_BASE_URL", llm.base_url()),
        ("OPENAI_API_KEY", "test-key".to_owned()),
        ("LLM_MODEL", "fake-model".to_owned()),
        (
            "RUST_LOG",
            std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        ),
    ])
}

/// The address in a listening line, if `line` is one.
pub fn listening_addr(line: &str) -> Option<Result<SocketAddr, String>> {
    let start = line.find(LISTENING_PREFIX)?;
    let rest = line[start + LISTENING_PREFIX.len()..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches('/');
    Some(
        rest.parse()
            .map_err(|error| format!("cannot parse the listening line {line:?}: {error}")),
    )
}

/// `bin` with exactly `env`, in `dir`, stdin closed, stdout and stderr piped, killed on drop.
pub fn command(bin: &Path, env: &Env, dir: &Path) -> Command {
    let mut command = Command::new(bin);
    command
        .env_clear()
        .envs(env)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Appends every line of `stream` to `into`.
async fn collect(stream: impl AsyncRead + Unpin, into: Arc<Mutex<String>>) {
    collect_lines(BufReader::new(stream).lines(), into).await
}

async fn collect_lines(mut lines: Lines<impl AsyncBufRead + Unpin>, into: Arc<Mutex<String>>) {
    while let Ok(Some(line)) = lines.next_line().await {
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("[server] {line}");
        }
        let mut text = into.lock().unwrap();
        text.push_str(&line);
        text.push('\n');
    }
}

/// A running server.
pub struct ServerProcess {
    pub addr: SocketAddr,
    /// Names the process in the output printed when it drops during a panic.
    pub label: String,
    child: Child,
    output: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts `bin` with exactly `env` in `dir` and waits (up to [`STARTUP_TIMEOUT`]) for its
    /// listening line. `Err` says why it did not listen, with everything it printed.
    pub async fn start(bin: &Path, env: &Env, dir: &Path) -> Result<ServerProcess, String> {
        let mut child = command(bin, env, dir)
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", bin.display()))?;
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
                    tokio::time::sleep(Duration::from_millis(200)).await; // let stderr drain
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
            if let Some(addr) = listening_addr(&line) {
                break addr?;
            }
        };
        tokio::spawn(collect_lines(stdout, output.clone()));
        Ok(ServerProcess {
            addr,
            label: "server".to_owned(),
            child,
            output,
        })
    }

    /// `http://HOST:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the server printed so far (stdout and stderr, by lines).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The last `lines` lines of [`ServerProcess::output`].
    pub fn output_tail(&self, lines: usize) -> String {
        tail(&self.output(), lines)
    }

    /// The server's process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server has a pid")
    }

    /// Kills the server and waits until it is gone.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill the server");
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the server to exit; returns its exit
    /// code.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let pid = self.child.id().expect("the server has a pid");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server did not exit within {timeout:?} after SIGTERM"))
            .expect("wait for the server");
        status.code()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} output (last 40 lines) ----\n{}\n---------------------------------------",
                self.label,
                self.output_tail(40)
            );
        }
        let _ = self.child.start_kill();
    }
}

/// Runs `bin` with exactly `env` in `dir` until it exits (up to [`STARTUP_TIMEOUT`]), as a
/// server that must refuse to start. Returns its exit code and everything it printed.
pub async fn run_to_exit(bin: &Path, env: &Env, dir: &Path) -> (Option<i32>, String) {
    let mut child = command(bin, env, dir)
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

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
