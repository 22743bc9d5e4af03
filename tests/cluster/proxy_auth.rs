//! `AUTH_MODE=proxy` behind nginx (issue 13): nginx authenticates people (HTTP basic auth,
//! standing in for oauth2-proxy's `auth_request`) and names them to the instances in
//! `X-Forwarded-Email`, on both of `deploy/nginx.conf`'s locations. The instances believe
//! that header only from `TRUSTED_PROXIES` (127.0.0.1/32, where nginx connects from): the
//! same header sent straight to an instance from 127.0.0.2 is ignored.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use testkit::browser::{Browser, Endpoint};
use testkit::sio::SioClient;

use crate::harness::{set_mode, Cluster, Nginx, TURN_TIMEOUT};

/// Where nginx connects from, and the only trusted proxy.
const TRUSTED: &str = "127.0.0.1/32";
/// Another loopback address: a peer outside `TRUSTED_PROXIES`.
const OUTSIDER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// nginx checks the password and replaces whatever `X-Forwarded-Email` the client sent with
/// the authenticated user's address, in every `location` that proxies to the instances.
fn with_basic_auth(users_file: &Path) -> impl FnOnce(String) -> String + '_ {
    move |config| {
        let mut out = Vec::new();
        for line in config.lines() {
            out.push(line.to_owned());
            if line.trim() == "proxy_pass http://chat_app;" {
                out.push("        auth_basic \"chat\";".to_owned());
                out.push(format!(
                    "        auth_basic_user_file {};",
                    users_file.display()
                ));
                out.push(
                    "        proxy_set_header X-Forwarded-Email $remote_user@example.com;"
                        .to_owned(),
                );
            }
        }
        let added = out.iter().filter(|l| l.contains("auth_basic ")).count();
        assert!(
            added >= 2,
            "expected the proxied locations of deploy/nginx.conf"
        );
        out.join("\n")
    }
}

/// A person signed in at nginx with basic auth: one cookie jar, one `Authorization` header.
struct Person {
    browser: Browser,
    authorization: String,
}

impl Person {
    fn new(user: &str, password: &str) -> Person {
        let browser = Browser::new(Duration::from_secs(20));
        // reqwest encodes the header; read it back for the socket handshake.
        let request = browser
            .http()
            .get("http://127.0.0.1/")
            .basic_auth(user, Some(password))
            .build()
            .unwrap();
        let authorization = request.headers()["authorization"]
            .to_str()
            .unwrap()
            .to_owned();
        Person {
            browser,
            authorization,
        }
    }

    async fn get(&self, at: &impl Endpoint, path: &str) -> testkit::browser::ApiResponse {
        let url = format!("{}{path}", at.base_url());
        self.browser
            .send(
                self.browser
                    .http()
                    .get(url)
                    .header("authorization", &self.authorization),
            )
            .await
    }

    async fn post(&self, at: &impl Endpoint, path: &str) -> testkit::browser::ApiResponse {
        let url = format!("{}{path}", at.base_url());
        self.browser
            .send(
                self.browser
                    .http()
                    .post(url)
                    .header("authorization", &self.authorization),
            )
            .await
    }

    async fn socket(&self, at: &impl Endpoint) -> SioClient {
        let cookie = self.browser.cookie_header().unwrap_or_default();
        SioClient::connect_with_headers(
            at.addr(),
            &[
                ("authorization", self.authorization.as_str()),
                ("cookie", cookie.as_str()),
            ],
        )
        .await
        .expect("socket through nginx")
    }
}

/// A client on 127.0.0.2 that sends `X-Forwarded-Email` itself.
fn outsider_client() -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(OUTSIDER)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn json_of(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_sign_in_proxy_people_are_their_accounts_and_the_header_from_elsewhere_is_ignored()
{
    let cluster = Cluster::start_with(
        &[
            ("AUTH_MODE", "proxy"),
            ("TRUSTED_PROXIES", TRUSTED),
            ("AUTH_PROXY_LOGOUT_URL", "/oauth2/sign_out"),
        ],
        false,
    )
    .await;
    let users = tempfile::tempdir().unwrap();
    set_mode(users.path(), 0o755);
    let users_file = users.path().join("htpasswd");
    std::fs::write(&users_file, "ada:{PLAIN}ada-pass\nbob:{PLAIN}bob-pass\n").unwrap();
    set_mode(&users_file, 0o644);
    let nginx = Nginx::start_edited(
        &[cluster.a.addr, cluster.b.addr],
        with_basic_auth(&users_file),
    );

    // nginx itself turns away whoever it cannot authenticate.
    let stranger = Person::new("ada", "wrong");
    assert_eq!(stranger.get(&nginx, "/auth/me").await.status, 401);

    // Through nginx: the account the proxy names, created on the first visit (the first
    // account is the admin).
    let ada = Person::new("ada", "ada-pass");
    let me = ada.get(&nginx, "/auth/me").await;
    me.assert_status(200);
    assert_eq!(me.json["email"], "ada@example.com", "{}", me.text);
    assert_eq!(me.json["auth"], "proxy", "{}", me.text);
    assert_eq!(me.json["is_admin"], true, "{}", me.text);
    let ada_id = me.json["user_id"].as_str().unwrap().to_owned();
    let config = ada.get(&nginx, "/get_config").await;
    assert_eq!(config.json["auth"]["mode"], "proxy", "{}", config.text);
    assert_eq!(config.json["auth"]["signup_open"], false, "{}", config.text);

    // A conversation and a streamed turn, over a socket through nginx.
    let started = ada.post(&nginx, "/start_conversation").await;
    started.assert_status(200);
    let conversation = started.json["conversation_id"].as_str().unwrap().to_owned();
    let mut socket = ada.socket(&nginx).await;
    socket.send_message("hello through the proxy", Some(&conversation));
    let turn = socket.collect_reply(TURN_TIMEOUT).await;
    assert_eq!(turn.text(), "You said: hello through the proxy");
    let listed = ada.get(&nginx, "/list_conversations").await;
    assert_eq!(
        listed.json["conversations"][0]["conversation_id"], conversation,
        "{}",
        listed.text
    );

    // Bob is another person, not an admin, and sees none of Ada's conversations.
    let bob = Person::new("bob", "bob-pass");
    let bob_me = bob.get(&nginx, "/auth/me").await;
    assert_eq!(bob_me.json["email"], "bob@example.com", "{}", bob_me.text);
    assert_eq!(bob_me.json["is_admin"], false, "{}", bob_me.text);
    assert_ne!(bob_me.json["user_id"], ada_id.as_str());
    let bobs = bob.get(&nginx, "/list_conversations").await;
    assert_eq!(
        bobs.json["conversations"],
        serde_json::json!([]),
        "{}",
        bobs.text
    );
    let peek = bob
        .get(&nginx, &format!("/load_conversation/{conversation}"))
        .await;
    assert_eq!(peek.status, 404, "{}", peek.text);

    // Straight to an instance from the trusted address, the header is believed: the same
    // account (so the negative check below is not vacuous).
    let trusted = reqwest::Client::new()
        .get(format!("{}/auth/me", cluster.b.base_url()))
        .header("x-forwarded-email", "ada@example.com")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(trusted).await;
    assert_eq!(
        (status, body["user_id"].as_str()),
        (200, Some(ada_id.as_str()))
    );

    // From 127.0.0.2, outside TRUSTED_PROXIES, the same header is ignored: no identity, and
    // without anonymous use nothing answers.
    let outsider = outsider_client();
    for (path, instance) in [
        ("/auth/me", &cluster.a),
        ("/list_conversations", &cluster.b),
    ] {
        let response = outsider
            .get(format!("{}{path}", instance.base_url()))
            .header("x-forwarded-email", "ada@example.com")
            .send()
            .await
            .unwrap();
        let (status, body) = json_of(response).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["error"], "unauthenticated", "{path}: {body}");
    }
    let refused = SioClient::connect_from_with_headers(
        SocketAddr::new(cluster.a.addr.ip(), cluster.a.addr.port()),
        Some(OUTSIDER),
        &[("x-forwarded-email", "ada@example.com")],
    )
    .await;
    assert!(
        refused.is_err(),
        "a socket from outside TRUSTED_PROXIES got in"
    );

    // Signing out ends the session and sends the page to the proxy's own sign-out.
    let out = ada.post(&nginx, "/auth/logout").await;
    out.assert_status(200);
    assert_eq!(out.json["logout_url"], "/oauth2/sign_out", "{}", out.text);
}
