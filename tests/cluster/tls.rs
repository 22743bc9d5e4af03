//! TLS to Redis (`rediss://`, issue 16): a `redis-server` that speaks only TLS (`--port 0
//! --tls-port P`) on loopback, with a CA and certificates made for the test (rcgen). Two
//! instances on it act as one server; an instance that cannot trust Redis's certificate, or
//! finds it names another host, or lacks the client certificate Redis asks for, stops at
//! start with a sentence saying so, and never prints the password. The same files serve the
//! TLS Redis Cluster and Sentinel set of `topology.rs`.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::rustls::pki_types::pem::PemObject;
use fred::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use fred::rustls::{self, ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use testkit::fake_llm::FakeLlm;
use testkit::server::{run_to_exit, test_env};

use crate::harness::{Cluster, Duplex, Redis, RedisSetup};

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

/// What a `redis-server` that speaks only TLS needs, in a temp dir: a certificate for some
/// names signed by a test CA, that CA, and a client certificate from the same CA which the
/// tests' own connections (and `redis-cli`, and the servers' connections to each other)
/// present. Shared by every node of a cluster or Sentinel set.
pub struct ServerTls {
    dir: TempDir,
    auth_clients: bool,
    /// The tests' own TLS client: trusts the CA, presents the client certificate.
    client: Arc<ClientConfig>,
    /// The name the tests' client checks the certificate against (the first of `names`).
    server_name: ServerName<'static>,
}

impl ServerTls {
    /// `auth_clients`: whether the servers ask every client for a certificate signed by `ca`
    /// (`--tls-auth-clients yes`).
    pub fn new(ca: &TestCa, names: &[&str], auth_clients: bool) -> ServerTls {
        let dir = tempfile::tempdir().expect("temp dir for TLS files");
        let (cert, key) = ca.issue(names, ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = ca.issue(&[], ExtendedKeyUsagePurpose::ClientAuth);
        for (name, content) in [
            ("server.pem", &cert),
            ("server.key", &key),
            ("client.pem", &client_cert),
            ("client.key", &client_key),
            ("ca.pem", &ca.pem),
        ] {
            std::fs::write(dir.path().join(name), content).expect("write a PEM file");
        }
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("CA PEM"))
            .expect("CA certificate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(client_cert.as_bytes()).expect("client PEM")],
                PrivateKeyDer::from_pem_slice(client_key.as_bytes()).expect("client key PEM"),
            )
            .expect("client certificate");
        let first = names.first().copied().unwrap_or("127.0.0.1").to_owned();
        ServerTls {
            dir,
            auth_clients,
            client: Arc::new(client),
            server_name: ServerName::try_from(first).expect("a server name"),
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The CA certificate's file (PEM), for `REDIS_TLS_CA_FILE`.
    pub fn ca_file(&self) -> String {
        self.file("ca.pem")
    }

    /// `redis-server` arguments for TLS only on `port` (no plain-text port). Every link a
    /// server opens itself (the cluster bus, a replica to its master, a sentinel to the
    /// servers and the other sentinels) is TLS too, with the client certificate.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let auth_clients = if self.auth_clients { "yes" } else { "no" };
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &self.file("server.pem"),
            "--tls-key-file",
            &self.file("server.key"),
            "--tls-client-cert-file",
            &self.file("client.pem"),
            "--tls-client-key-file",
            &self.file("client.key"),
            "--tls-ca-cert-file",
            &self.ca_file(),
            "--tls-auth-clients",
            auth_clients,
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect()
    }

    /// `redis-cli` arguments to reach such a server.
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".to_owned(),
            "--cacert".to_owned(),
            self.ca_file(),
            "--cert".to_owned(),
            self.file("client.pem"),
            "--key".to_owned(),
            self.file("client.key"),
        ]
    }

    /// `tcp` after a TLS handshake with the server (given 2 s), its reads then giving up
    /// after `quiet` without a byte; `None` if the handshake fails.
    pub fn wrap(&self, mut tcp: TcpStream, quiet: Duration) -> Option<Box<dyn Duplex>> {
        let mut connection =
            ClientConnection::new(self.client.clone(), self.server_name.clone()).ok()?;
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
        while connection.is_handshaking() {
            connection.complete_io(&mut tcp).ok()?;
        }
        let _ = tcp.set_read_timeout(Some(quiet));
        Some(Box::new(StreamOwned::new(connection, tcp)))
    }

    /// Writes `content` to a file next to the others; its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write a file");
        path
    }
}

// ------------------------------------------------------------------ tests

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// Runs one instance against `redis_url` with `extra` variables, expecting it to stop at
/// start; its exit code and output.
pub async fn refused_start(redis_url: &str, extra: &[(&str, String)]) -> (Option<i32>, String) {
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
    let redis = Redis::start_tls(ServerTls::new(&ca, &["127.0.0.1", "localhost"], false));
    let ca_file = path_str(&redis.tls().write("trusted-ca.pem", &ca.pem));
    let cluster = Cluster::start_on(
        RedisSetup::Single(redis),
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
    let redis = Redis::start_tls(ServerTls::new(&ca, &["127.0.0.1", "localhost"], false));
    let url = format!("rediss://:s3cret-pass@127.0.0.1:{}/0", redis.port);
    let other_ca = redis
        .tls()
        .write("other-ca.pem", &TestCa::new("another CA").pem);
    let right_ca = redis.tls().write("right-ca.pem", &ca.pem);

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
    let misnamed = Redis::start_tls(ServerTls::new(&ca, &["redis.internal"], false));
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
    let missing = redis
        .tls()
        .write("unused", "")
        .with_file_name("missing-ca.pem");
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
    let redis = Redis::start_tls(ServerTls::new(&ca, &["127.0.0.1"], true));
    let ca_file = redis.tls().ca_file();
    let (cert, key) = ca.issue(&[], ExtendedKeyUsagePurpose::ClientAuth);
    let cert_file = path_str(&redis.tls().write("instance.pem", &cert));
    let key_file = path_str(&redis.tls().write("instance.key", &key));

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
        RedisSetup::Single(redis),
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
