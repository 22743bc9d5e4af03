//! Redis deployments bigger than one server, started for one test on loopback ports: a Redis
//! Cluster of three masters (`redis-server --cluster-enabled yes`, joined with
//! `redis-cli --cluster create`) and a Sentinel set (a master, a replica and three
//! `redis-server --sentinel`). Every process is killed when its guard drops.
//!
//! Either speaks plain text or only TLS (`start_tls`): then every server has `--port 0
//! --tls-port P` with a certificate naming 127.0.0.1 (the address nodes announce and the
//! sentinels give), the cluster bus and replication are TLS (`--tls-cluster yes
//! --tls-replication yes`), and so are the sentinels' links to the servers and each other.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::harness::{resp_values, spawn_redis_server, tail_of};
use crate::tls::{ServerTls, TestCa};

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
    /// Set when the nodes speak only TLS.
    pub tls: Option<ServerTls>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        RedisCluster::launch(None)
    }

    /// One whose nodes speak only TLS, client links and cluster bus, with certificates
    /// from `ca` naming 127.0.0.1.
    pub fn start_tls(ca: &TestCa) -> RedisCluster {
        RedisCluster::launch(Some(ServerTls::new(ca, &["127.0.0.1"], false)))
    }

    fn launch(tls: Option<ServerTls>) -> RedisCluster {
        require(REDIS_CLI);
        let dir = tempfile::tempdir().expect("temp dir for the redis cluster");
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            children: Vec::new(),
            dir,
            tls,
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
            let child = spawn_redis_server(
                port,
                &node_dir,
                &args,
                cluster.tls.as_ref(),
                &cluster.log(node),
            );
            cluster.ports.push(port);
            cluster.children.push(Some(child));
        }
        let nodes: Vec<String> = cluster
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new(REDIS_CLI)
            .args(
                cluster
                    .tls
                    .as_ref()
                    .map(ServerTls::cli_args)
                    .unwrap_or_default(),
            )
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
                if cluster
                    .ask(port, "CLUSTER INFO")
                    .contains("cluster_state:ok")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the redis cluster did not reach cluster_state:ok within 20 s: {}",
                    cluster.ask(port, "CLUSTER INFO")
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    fn log(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("node{node}.log"))
    }

    /// One command to the node on `port`; its raw answer.
    pub fn ask(&self, port: u16, command: &str) -> String {
        crate::harness::ask(self.tls.as_ref(), port, command)
    }

    /// `redis-cluster://` (`rediss-cluster://` on TLS) with every node, as fred reads it.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss-cluster"
        } else {
            "redis-cluster"
        };
        let others: Vec<String> = self.ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "{scheme}://127.0.0.1:{}?{}",
            self.ports[0],
            others.join("&")
        )
    }

    /// The shard channels each node holds subscribers for, for failure reports.
    pub fn shard_channels(&self) -> String {
        self.ports
            .iter()
            .map(|port| {
                let answer = self.ask(*port, "PUBSUB SHARDCHANNELS");
                format!("{port}: [{}]", resp_values(&answer).join(" "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// How many keys the node on `port` holds.
    pub fn keys_on(&self, port: u16) -> u64 {
        self.ask(port, "DBSIZE")
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
    /// Set when every server and sentinel speaks only TLS.
    pub tls: Option<ServerTls>,
}

impl RedisSentinel {
    pub fn start() -> RedisSentinel {
        RedisSentinel::launch(None)
    }

    /// One whose servers and sentinels speak only TLS, to clients and to each other, with
    /// certificates from `ca` naming 127.0.0.1.
    pub fn start_tls(ca: &TestCa) -> RedisSentinel {
        RedisSentinel::launch(Some(ServerTls::new(ca, &["127.0.0.1"], false)))
    }

    fn launch(tls: Option<ServerTls>) -> RedisSentinel {
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
            tls.as_ref(),
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
            tls.as_ref(),
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
            tls,
        };
        set.wait_for(Duration::from_secs(20), "the replica to sync", |set| {
            set.ask(set.replica_port, "INFO replication")
                .contains("master_link_status:up")
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
                set.tls.as_ref(),
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
                    let answer = set.ask(port, &format!("SENTINEL MASTER {SENTINEL_SERVICE}"));
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

    /// One command to the server or sentinel on `port`; its raw answer.
    pub fn ask(&self, port: u16, command: &str) -> String {
        crate::harness::ask(self.tls.as_ref(), port, command)
    }

    /// `redis-sentinel://` (`rediss-sentinel://` on TLS) with every sentinel, as fred reads
    /// it.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss-sentinel"
        } else {
            "redis-sentinel"
        };
        let others: Vec<String> = self.sentinel_ports[1..]
            .iter()
            .map(|p| format!("node=127.0.0.1:{p}"))
            .collect();
        format!(
            "{scheme}://127.0.0.1:{}/0?sentinelServiceName={SENTINEL_SERVICE}&{}",
            self.sentinel_ports[0],
            others.join("&")
        )
    }

    /// The port the sentinels name as master now.
    pub fn current_master(&self) -> Option<u16> {
        let answer = self.ask(
            self.sentinel_ports[0],
            &format!("SENTINEL GET-MASTER-ADDR-BY-NAME {SENTINEL_SERVICE}"),
        );
        resp_values(&answer)
            .get(1)
            .and_then(|port| port.trim().parse().ok())
    }

    /// Kills the master (SIGKILL) and waits until the sentinels have promoted the replica.
    pub fn kill_master_and_wait_for_failover(&mut self) {
        kill(&mut self.master);
        self.wait_for(Duration::from_secs(30), "the failover", |set| {
            set.current_master() == Some(set.replica_port)
                && set.ask(set.replica_port, "ROLE").contains("master")
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
    let lines = resp_values(answer);
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
