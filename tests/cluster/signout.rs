//! Signing out everywhere and disabling an account on a cluster (issue 13): the sessions
//! live in the shared Redis and the sockets on both instances, so an action on instance A must
//! end the person's sessions and close their sockets on instance B too, and nobody else's.

use serde_json::{json, Value};
use testkit::browser::{ApiResponse, Browser, Endpoint};
use testkit::sio::SioClient;

use crate::harness::{Cluster, Instance, EVENT_TIMEOUT};

const PASSWORD: &str = "correct horse battery";

async fn accounts_cluster() -> Cluster {
    Cluster::start_with(&[("AUTH_MODE", "local"), ("SIGNUP", "open")], false).await
}

async fn sign_up(cluster: &Cluster, at: &Instance, email: &str) -> (Browser, Value) {
    let browser = cluster.new_user();
    let response = browser
        .post_json(
            at,
            "/auth/signup",
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
    response.assert_status(201);
    (browser, response.json)
}

async fn sign_in(cluster: &Cluster, at: &Instance, email: &str) -> Browser {
    let browser = cluster.new_user();
    browser
        .post_json(
            at,
            "/auth/login",
            json!({"email": email, "password": PASSWORD}),
        )
        .await
        .assert_status(200);
    browser
}

/// The socket still acts for its user: watching an unknown conversation is answered.
async fn assert_socket_alive(socket: &mut SioClient) {
    socket.emit(
        "watch_conversation",
        json!({"conversation_id": uuid::Uuid::new_v4().to_string()}),
    );
    let error = socket.wait_for("error", EVENT_TIMEOUT).await;
    assert_eq!(error["message"], "Conversation not found.", "{error}");
}

async fn assert_signed_out(browser: &Browser, cluster: &Cluster) {
    for at in [&cluster.a, &cluster.b] {
        let me: ApiResponse = browser.get(at, "/auth/me").await;
        me.assert_error(401, "unauthenticated", "Sign in to continue.");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_everywhere_on_a_closes_the_persons_sockets_on_b_and_nobody_elses() {
    let cluster = accounts_cluster().await;
    let (laptop, _) = sign_up(&cluster, &cluster.a, "ann@example.org").await;
    let phone = sign_in(&cluster, &cluster.b, "ann@example.org").await;
    let (bob, _) = sign_up(&cluster, &cluster.b, "bob@example.org").await;
    let mut phone_on_b = phone.socket(&cluster.b).await;
    let mut laptop_on_b = laptop.socket(&cluster.b).await;
    let mut laptop_on_a = laptop.socket(&cluster.a).await;
    let mut bob_on_b = bob.socket(&cluster.b).await;
    let mut bob_on_a = bob.socket(&cluster.a).await;

    let out = laptop
        .post_json(&cluster.a, "/auth/logout", json!({"everywhere": true}))
        .await;

    out.assert_status(200);
    assert_eq!(out.json["message"], "Signed out everywhere.");
    for (name, socket) in [
        ("the phone's socket on B", &mut phone_on_b),
        ("the laptop's socket on B", &mut laptop_on_b),
        ("the laptop's socket on A", &mut laptop_on_a),
    ] {
        assert!(
            socket.wait_closed(EVENT_TIMEOUT).await,
            "{name} stayed connected"
        );
    }
    assert_signed_out(&laptop, &cluster).await;
    assert_signed_out(&phone, &cluster).await;
    assert!(
        SioClient::connect(cluster.b.addr, phone.cookie_header().as_deref(), None)
            .await
            .is_err(),
        "the phone's ended session opened a socket on B"
    );
    assert_socket_alive(&mut bob_on_b).await;
    assert_socket_alive(&mut bob_on_a).await;
    bob.get(&cluster.a, "/auth/me").await.assert_status(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_disabled_on_a_loses_its_sockets_and_sessions_on_b() {
    let cluster = accounts_cluster().await;
    let (admin, _) = sign_up(&cluster, &cluster.a, "root@example.org").await;
    let (bob, bob_account) = sign_up(&cluster, &cluster.b, "bob@example.org").await;
    let mut bob_on_b = bob.socket(&cluster.b).await;
    let mut admin_on_b = admin.socket(&cluster.b).await;

    let path = format!("/admin/users/{}", bob_account["user_id"].as_str().unwrap());
    let request = admin
        .http()
        .patch(format!("{}{path}", cluster.a.base_url()))
        .json(&json!({"disabled": true}));
    let disabled = admin.send(request).await;

    disabled.assert_status(200);
    assert_eq!(disabled.json["disabled"], true, "{}", disabled.text);
    assert!(
        bob_on_b.wait_closed(EVENT_TIMEOUT).await,
        "the disabled account's socket on B stayed connected"
    );
    assert_signed_out(&bob, &cluster).await;
    assert_socket_alive(&mut admin_on_b).await;
}
