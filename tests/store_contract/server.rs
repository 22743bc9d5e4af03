//! A SecantusDB server (a MongoDB wire-protocol server) for the tests.
//!
//! The server runs under a small `sh` watchdog whose stdin is a pipe from
//! this test process. The pipe is never written: when the test process ends
//! (normally, by panic or by a signal) the kernel closes it, the watchdog's
//! `read` returns, and it kills the server and removes its temporary folder.
//! So one shared server can live in a `static` and still never outlive the
//! test run, without relying on destructors at exit.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use testkit::free_port;

/// The watchdog: prints its temporary folder, starts the server (`"$@"`)
/// with that folder as TMPDIR and its log inside, kills it when stdin
/// reaches end-of-file (then removes the folder), exits when it exits.
const WATCHDOG: &str = r#"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/secantusd-test.XXXXXX") || exit 1
echo "$tmp"
exec 3<&0
TMPDIR="$tmp" "$@" >"$tmp/server.log" 2>&1 3<&- </dev/null &
srv=$!
( read -r _ <&3; touch "$tmp/stopped"; kill -9 "$srv" 2>/dev/null ) &
reader=$!
exec 3<&-
wait "$srv"
status=$?
kill "$reader" 2>/dev/null
if [ -e "$tmp/stopped" ]; then rm -rf "$tmp"; fi
exit "$status"
"#;

/// A running SecantusDB server; dropping it kills the server.
pub struct Server {
    pub port: u16,
    folder: PathBuf,
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

impl Server {
    /// The connection string.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Starts a new server on a free loopback port and waits until it
    /// accepts connections.
    pub fn start() -> Server {
        Self::start_at(None)
    }

    /// Starts a server on `port` (a restart on the port of a stopped one),
    /// or on a free port.
    pub fn start_at(fixed: Option<u16>) -> Server {
        let bin = std::env::var("SECANTUSD_BIN").unwrap_or_else(|_| {
            panic!(
                "SECANTUSD_BIN is not set. The MongoDB store tests need a real SecantusDB \
                 server: run scripts/test.sh (it installs SecantusDB and sets SECANTUSD_BIN), \
                 or set SECANTUSD_BIN to the path of secantusd-py"
            )
        });
        assert!(
            std::path::Path::new(&bin).is_file(),
            "SECANTUSD_BIN={bin} does not exist: run scripts/test.sh to install SecantusDB"
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = fixed.unwrap_or_else(free_port);
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(WATCHDOG)
                .arg("secantusd-watchdog")
                .arg(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--storage-path", ":memory:", "--log-level", "WARNING"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting sh for the SecantusDB watchdog");
            let stdin = child.stdin.take().expect("piped stdin");
            let mut folder = String::new();
            BufReader::new(child.stdout.take().expect("piped stdout"))
                .read_line(&mut folder)
                .expect("reading the watchdog's folder");
            let server = Server {
                port,
                folder: PathBuf::from(folder.trim()),
                watchdog: Mutex::new(Some((child, stdin))),
            };
            if server.wait_ready(Duration::from_secs(60)) {
                return server;
            }
            last_log =
                std::fs::read_to_string(server.folder.join("server.log")).unwrap_or_default();
            server.stop();
            let _ = std::fs::remove_dir_all(&server.folder);
        }
        panic!("SecantusDB ({bin}) did not start; its log:\n{last_log}");
    }

    fn wait_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return true;
            }
            if let Some((child, _)) = self.watchdog.lock().unwrap().as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false; // the server exited
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Kills the server now and waits until it is gone.
    pub fn stop(&self) {
        let taken = self.watchdog.lock().unwrap().take();
        if let Some((mut child, stdin)) = taken {
            drop(stdin); // end-of-file: the watchdog kills the server
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The server shared by every test of this binary (started on first use,
/// killed by its watchdog when the test process exits).
pub fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(Server::start)
}
