//! TLS to Redis (`rediss://`, issue 16): a `redis-server` that speaks only TLS (`--port 0
//! --tls-port P`) on loopback, with a CA and certificates made for the test (rcgen). Two
//! instances on it act as one server; an instance that cannot trust Redis's certificate, or
//! finds it names another host, or lacks the client certificate Redis asks for, stops at
//! start with a sentence saying so, and never prints the password.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use testkit::fake_llm::FakeLlm;
use testkit::free_port;
use testkit::server::{run_to_exit, test_env};

use crate::harness::{tail_of, Cluster, RedisSetup, REDIS_SERVER};

// ------------------------------------------------------------------ certificates

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// Its certificate, PEM.
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses) with `purpose`, signed by this
    /// CA: (certificate PEM, private key PEM).
    pub fn issue(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("certificate params");
        params.distinguished_name.push(
            DnType::CommonName,
            names
                .first()
                .cloned()
                .unwrap_or_else(|| "client".to_owned()),
        );
        params.extended_key_usages = vec![purpose];
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }
}

// ------------------------------------------------------------------ Redis over TLS

/// A `redis-server` on 127.0.0.1 that speaks only TLS (no plain-text port), with a
/// certificate for `names` signed by `ca`. Killed on drop.
pub struct TlsRedis {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl TlsRedis {
    /// `client_certificates`: whether it asks every client for a certificate signed by `ca`
    /// (`--tls-auth-clients yes`).
    pub fn start(ca: &TestCa, names: &[&str], client_certificates: bool) -> TlsRedis {
        assert!(
            Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: install Debian's redis-server package"
        );
        let dir = tempfile::tempdir().expect("temp dir for redis");
        let (cert, key) = ca.issue(names, ExtendedKeyUsagePurpose::ServerAuth);
        let file = |name: &str, content: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write a PEM file");
            path.display().to_string()
        };
        let (cert, key, ca_file) = (
            file("server.pem", &cert),
            file("server.key", &key),
            file("ca.pem", &ca.pem),
        );
        let port = free_port();
        let log = dir.path().join("redis.log");
        let log_file = std::fs::File::create(&log).expect("redis log file");
        let auth_clients = if client_certificates { "yes" } else { "no" };
        let mut child = Command::new(REDIS_SERVER)
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
            .args(["--tls-ca-cert-file", &ca_file])
            .args(["--tls-auth-clients", auth_clients])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir", &dir.path().display().to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {REDIS_SERVER}: {error}"));
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "redis-server with TLS on port {port} exited ({status}):\n{}",
                    tail_of(&log, 20)
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server with TLS did not listen on {port} within 10 s:\n{}",
                tail_of(&log, 20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis {
            port,
            dir,
            child: Some(child),
        }
    }

    /// `rediss://` to it, by address.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port)
    }

    /// Writes `content` to a file in this server's temp dir; its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write a file");
        path
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- TLS redis log (last 20 lines) ----\n{}",
                tail_of(&self.dir.path().join("redis.log"), 20)
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ------------------------------------------------------------------ tests

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Runs one instance against `redis_url` with `extra` variables, expecting it to stop at
/// start; its exit code and output.
async fn refused_start(redis_url: &str, extra: &[(&str, String)]) -> (Option<i32>, String) {
    let llm = FakeLlm::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut env = test_env(&llm, dir.path());
    env.insert("REDIS_URL".to_owned(), redis_url.to_owned());
    env.insert("SECRET_KEY".to_owned(), "k".repeat(48));
    for (key, value) in extra {
        env.insert((*key).to_owned(), value.clone());
    }
    let bin = Path::new(env!("CARGO_BIN_EXE_llm-chat-server"));
    run_to_exit(bin, &env, dir.path()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_a_tls_only_redis_act_as_one() {
    let ca = TestCa::new("chat test CA");
    let redis = TlsRedis::start(&ca, &["127.0.0.1", "localhost"], false);
    let ca_file = path_str(&redis.write("trusted-ca.pem", &ca.pem));
    let cluster = Cluster::start_on(
        RedisSetup::Tls(redis),
        &[("REDIS_TLS_CA_FILE", &ca_file)],
        false,
    )
    .await;
    for instance in [&cluster.a, &cluster.b] {
        let (status, body) = cluster.readyz(instance).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["checks"]["redis"], "up", "{body}");
        assert_eq!(body["checks"]["adapter"], "subscribed", "{body}");
        assert_eq!(body["redis"]["mode"], "single", "{body}");
    }
    crate::cookie_from_a_works_on_b(&cluster).await;
    crate::tab_on_b_watches_reply_on_a(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_misnamed_redis_certificate_stops_the_instance_at_start() {
    let ca = TestCa::new("chat test CA");
    let redis = TlsRedis::start(&ca, &["127.0.0.1", "localhost"], false);
    let url = format!("rediss://:s3cret-pass@127.0.0.1:{}/0", redis.port);
    let other_ca = redis.write("other-ca.pem", &TestCa::new("another CA").pem);
    let right_ca = redis.write("right-ca.pem", &ca.pem);

    // The system's CA certificates alone, then another CA: Redis's certificate is not trusted.
    for extra in [vec![], vec![("REDIS_TLS_CA_FILE", path_str(&other_ca))]] {
        let started = Instant::now();
        let (code, output) = refused_start(&url, &extra).await;
        assert_eq!(code, Some(1), "output:\n{output}");
        assert!(
            output.contains("REDIS_URL=rediss://***@127.0.0.1")
                && output.contains("TLS certificate is not signed by a trusted CA")
                && output.contains("REDIS_TLS_CA_FILE"),
            "the error does not say the certificate is untrusted ({extra:?}):\n{output}"
        );
        assert!(
            !output.contains("s3cret-pass"),
            "the password leaked:\n{output}"
        );
        // Refused at once, not after the retries meant for a Redis still starting.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "took {:?}",
            started.elapsed()
        );
    }

    // Trusted, but the certificate names other hosts: the name is checked.
    let misnamed = TlsRedis::start(&ca, &["redis.internal"], false);
    let (code, output) = refused_start(
        &format!("rediss://:s3cret-pass@127.0.0.1:{}/0", misnamed.port),
        &[("REDIS_TLS_CA_FILE", path_str(&right_ca))],
    )
    .await;
    assert_eq!(code, Some(1), "output:\n{output}");
    assert!(
        output.contains("TLS certificate does not name the host"),
        "the error does not say the name differs:\n{output}"
    );
    assert!(
        !output.contains("s3cret-pass"),
        "the password leaked:\n{output}"
    );

    // A CA file that is not there.
    let missing = redis.write("unused", "").with_file_name("missing-ca.pem");
    let (code, output) = refused_start(&url, &[("REDIS_TLS_CA_FILE", path_str(&missing))]).await;
    assert_eq!(code, Some(1), "output:\n{output}");
    assert!(
        output.contains(&format!(
            "REDIS_TLS_CA_FILE={}: cannot read it",
            missing.display()
        )),
        "{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_asks_for_client_certificates_takes_the_configured_one() {
    let ca = TestCa::new("chat test CA");
    let redis = TlsRedis::start(&ca, &["127.0.0.1"], true);
    let ca_file = path_str(&redis.write("ca.pem", &ca.pem));
    let (cert, key) = ca.issue(&[], ExtendedKeyUsagePurpose::ClientAuth);
    let cert_file = path_str(&redis.write("client.pem", &cert));
    let key_file = path_str(&redis.write("client.key", &key));

    // Without one, Redis ends the handshake and the instance says what to set.
    let (code, output) =
        refused_start(&redis.url(), &[("REDIS_TLS_CA_FILE", ca_file.clone())]).await;
    assert_eq!(code, Some(1), "output:\n{output}");
    assert!(
        output.contains("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE"),
        "the error does not name the client certificate variables:\n{output}"
    );

    // With it, both instances work as one.
    let cluster = Cluster::start_on(
        RedisSetup::Tls(redis),
        &[
            ("REDIS_TLS_CA_FILE", &ca_file),
            ("REDIS_TLS_CERT_FILE", &cert_file),
            ("REDIS_TLS_KEY_FILE", &key_file),
        ],
        false,
    )
    .await;
    let (status, body) = cluster.readyz(&cluster.b).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["redis"], "up", "{body}");
    crate::cookie_from_a_works_on_b(&cluster).await;
}
