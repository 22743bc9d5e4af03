//! Redis deployments bigger than one server, started for one test on loopback ports: a Redis
//! Cluster of three masters (`redis-server --cluster-enabled yes`, joined with
//! `redis-cli --cluster create`) and a Sentinel set (a master, a replica and three
//! `redis-server --sentinel`). Every process is killed when its guard drops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::harness::{spawn_redis_server, tail_of};

const REDIS_CLI: &str = "/usr/bin/redis-cli";
/// The Sentinel set's name for its master.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// A port `p` free on 127.0.0.1 whose cluster bus port `p + 10000` is free too.
fn free_port_with_bus() -> u16 {
    for _ in 0..200 {
        let port = testkit::free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port with a free cluster bus port (+10000)");
}

/// One command to a server on 127.0.0.1:`port`, in the inline protocol; the raw answer
/// (what arrived within 300 ms after the first bytes).
pub fn ask(port: u16, command: &str) -> String {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(500),
    ) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(300)));
    if stream
        .write_all(format!("{command}\r\n").as_bytes())
        .is_err()
    {
        return String::new();
    }
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    while let Ok(read) = stream.read(&mut buffer) {
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Kills a child (SIGKILL) and reaps it.
fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

// ------------------------------------------------------------------ Redis Cluster

/// Three masters, no replicas, every slot covered. Killed on drop.
pub struct RedisCluster {
    pub ports: Vec<u16>,
    children: Vec<Option<Child>>,
    dir: TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        require(REDIS_CLI);
        let dir = tempfile::tempdir().expect("temp dir for the redis cluster");
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for node in 0..3 {
            let port = free_port_with_bus();
            let node_dir = cluster.dir.path().join(format!("node{node}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
            let child = spawn_redis_server(port, &node_dir, &args, &cluster.log(node));
            cluster.ports.push(port);
            cluster.children.push(Some(child));
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new(REDIS_CLI)
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|error| panic!("cannot run {REDIS_CLI}: {error}"));
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&created.stdout),
            String::from_utf8_lossy(&created.stderr)
        );
        // Every node must agree that the cluster is up before an instance connects.
        let deadline = Instant::now() + Duration::from_secs(20);
        for &port in &cluster.ports {
            loop {
                if ask(port, "CLUSTER INFO").contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the redis cluster did not reach cluster_state:ok within 20 s: {}",
                    ask(port, "CLUSTER INFO")
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn log(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("node{node}.log"))
    }

    /// `redis-cluster://` with every node, as fred reads it.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-cluster://127.0.0.1:{}?{}",
            self.ports[0],
            others.join("&")
        )
    }

    /// The shard channels each node holds subscribers for, for failure reports.
    pub fn shard_channels(&self) -> String {
        self.ports
            .iter()
            .map(|port| {
                let answer = ask(*port, "PUBSUB SHARDCHANNELS");
                let channels: Vec<&str> = answer
                    .lines()
                    .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
                    .collect();
                format!("{port}: [{}]", channels.join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// How many keys the node on `port` holds.
    pub fn keys_on(&self, port: u16) -> u64 {
        ask(port, "DBSIZE")
            .trim()
            .trim_start_matches(':')
            .parse()
            .unwrap_or(0)
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in 0..self.ports.len() {
                eprintln!(
                    "---- redis cluster node {node} log (last 15 lines) ----\n{}",
                    tail_of(&self.log(node), 15)
                );
            }
        }
        for child in &mut self.children {
            kill(child);
        }
    }
}

// ------------------------------------------------------------------ Sentinel

/// A master, one replica and three sentinels watching them (quorum 2, a master is down after
/// one second without an answer). Killed on drop.
pub struct RedisSentinel {
    pub master_port: u16,
    pub replica_port: u16,
    pub sentinel_ports: Vec<u16>,
    master: Option<Child>,
    replica: Option<Child>,
    sentinels: Vec<Option<Child>>,
    dir: TempDir,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        let dir = tempfile::tempdir().expect("temp dir for the sentinel set");
        let master_port = testkit::free_port();
        let replica_port = testkit::free_port();
        let data = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).expect("dir");
            path
        };
        let master = spawn_redis_server(
            master_port,
            &data("master"),
            &[],
            &dir.path().join("master.log"),
        );
        let replica = spawn_redis_server(
            replica_port,
            &data("replica"),
            &[
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                master_port.to_string(),
            ],
            &dir.path().join("replica.log"),
        );
        let mut set = RedisSentinel {
            master_port,
            replica_port,
            sentinel_ports: Vec::new(),
            master: Some(master),
            replica: Some(replica),
            sentinels: Vec::new(),
            dir,
        };
        set.wait_for(Duration::from_secs(20), "the replica to sync", |set| {
            ask(set.replica_port, "INFO replication").contains("master_link_status:up")
        });
        for index in 0..3 {
            let port = testkit::free_port();
            let sentinel_dir = set.dir.path().join(format!("sentinel{index}"));
            std::fs::create_dir_all(&sentinel_dir).expect("sentinel dir");
            // Sentinel rewrites its config file: one per sentinel, writable.
            let config = sentinel_dir.join("sentinel.conf");
            std::fs::write(
                &config,
                format!(
                    "sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 4000\n\
                     sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"
                ),
            )
            .expect("sentinel.conf");
            let child = spawn_redis_server(
                port,
                &sentinel_dir,
                &[config.display().to_string(), "--sentinel".to_owned()],
                &set.dir.path().join(format!("sentinel{index}.log")),
            );
            set.sentinel_ports.push(port);
            set.sentinels.push(Some(child));
        }
        // Each sentinel has found the replica and the other sentinels.
        set.wait_for(
            Duration::from_secs(20),
            "the sentinels to know each other",
            |set| {
                set.sentinel_ports.iter().all(|&port| {
                    let answer = ask(port, &format!("SENTINEL MASTER {SENTINEL_SERVICE}"));
                    field_after(&answer, "num-other-sentinels") == Some(2)
                        && field_after(&answer, "num-slaves") == Some(1)
                })
            },
        );
        set
    }

    fn wait_for(&self, limit: Duration, what: &str, done: impl Fn(&RedisSentinel) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `redis-sentinel://` with every sentinel, as fred reads it.
    pub fn url(&self) -> String {
        let others: Vec<String> = self.sentinel_ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "redis-sentinel://127.0.0.1:{}/0?sentinelServiceName={SENTINEL_SERVICE}&{}",
            self.sentinel_ports[0],
            others.join("&")
        )
    }

    /// The port the sentinels name as master now.
    pub fn current_master(&self) -> Option<u16> {
        let answer = ask(
            self.sentinel_ports[0],
            &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {SENTINEL_SERVICE}"),
        );
        answer
            .lines()
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
            .nth(1)
            .and_then(|port| port.trim().parse().ok())
    }

    /// Kills the master (SIGKILL) and waits until the sentinels have promoted the replica.
    pub fn kill_master_and_wait_for_failover(&mut self) {
        kill(&mut self.master);
        self.wait_for(Duration::from_secs(30), "the failover", |set| {
            set.current_master() == Some(set.replica_port)
                && ask(set.replica_port, "ROLE").contains("master")
        });
    }

    fn logs(&self) -> String {
        let mut all = String::new();
        for name in ["master", "replica", "sentinel0", "sentinel1", "sentinel2"] {
            all.push_str(&format!(
                "---- {name} (last 10 lines) ----\n{}\n",
                tail_of(&self.dir.path().join(format!("{name}.log")), 10)
            ));
        }
        all
    }
}

/// In a RESP array of alternating names and values, the number after `name`.
fn field_after(answer: &str, name: &str) -> Option<u64> {
    let lines: Vec<&str> = answer
        .lines()
        .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
        .collect();
    let at = lines.iter().position(|l| *l == name)?;
    lines.get(at + 1)?.trim().parse().ok()
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for child in &mut self.sentinels {
            kill(child);
        }
        kill(&mut self.replica);
        kill(&mut self.master);
    }
}

/// Asserts that a tool the tests need is installed.
pub fn require(path: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's redis-server package (apt-get install redis-server redis-tools)"
    );
}
