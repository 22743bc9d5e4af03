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
    sign_out_everywhere_reaches_b(&accounts_cluster().await).await;
}

/// Also run on a Redis Cluster and on Sentinel (`topologies.rs`).
pub(crate) async fn sign_out_everywhere_reaches_b(cluster: &Cluster) {
    let (laptop, _) = sign_up(cluster, &cluster.a, "ann@example.org").await;
    let phone = sign_in(cluster, &cluster.b, "ann@example.org").await;
    let (bob, _) = sign_up(cluster, &cluster.b, "bob@example.org").await;
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
    assert_signed_out(&laptop, cluster).await;
    assert_signed_out(&phone, cluster).await;
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

/// The Redis session store itself (its Lua write and the per-account index) on this test's own
/// Redis, as the store contract checks SQLite and MongoDB: what the cluster relies on when a
/// person signs out everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_of_an_account_end_together_and_stay_ended() {
    use std::collections::HashMap;

    use fred::interfaces::{KeysInterface, SortedSetsInterface};
    use llm_chat_server::cluster::RedisConnections;
    use llm_chat_server::domain::UserId;
    use llm_chat_server::sessions::{RedisSessionStore, SessionWrites, Sessions};
    use tower_sessions::session::{Id, Record};
    use tower_sessions::session_store::SessionStore;

    let redis = crate::harness::Redis::start();
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let latency = llm_chat_server::metrics::Metrics::default().redis_latency;
    let connections = RedisConnections::connect(&redis.url(), &prefix, latency)
        .await
        .expect("Redis");
    let store = RedisSessionStore::new(&connections);
    let sessions = Sessions::Redis(store.clone());
    let record = |data: Value| Record {
        id: Id::default(),
        data: serde_json::from_value::<HashMap<String, Value>>(data).unwrap(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    let (ann, bob) = (UserId::new(), UserId::new());
    let signed_in = |user: &UserId| record(json!({"user_id": user.as_ref(), "auth": "local"}));
    let (mut laptop, mut phone, mut bobs) = (signed_in(&ann), signed_in(&ann), signed_in(&bob));
    let mut anonymous = record(json!({"user_id": ann.as_ref()}));
    for record in [&mut laptop, &mut phone, &mut bobs, &mut anonymous] {
        store.create(record).await.unwrap();
    }
    let index = format!("{prefix}:sessions-of:{ann}");
    let ttl: i64 = connections.client.ttl(&index).await.unwrap();
    assert!(
        (3590..=3600).contains(&ttl),
        "the index expires with its sessions: {ttl}"
    );
    // A session deleted (a plain sign-out, a new id at sign-in) leaves the index.
    let mut cycled = signed_in(&ann);
    store.create(&mut cycled).await.unwrap();
    store.delete(&cycled.id).await.unwrap();
    let members: i64 = connections.client.zcard(&index).await.unwrap();
    assert_eq!(members, 2, "the laptop's and the phone's sessions");

    let ended = sessions.revoke_user(&ann).await.unwrap();

    assert_eq!(
        ended, 2,
        "only the laptop's and the phone's sessions were listed"
    );
    let loaded = |id: Id| {
        let store = store.clone();
        async move { store.load(&id).await.unwrap().is_some() }
    };
    assert!(!loaded(laptop.id).await && !loaded(phone.id).await);
    assert!(loaded(bobs.id).await, "another account's session ended");
    assert!(loaded(anonymous.id).await, "an anonymous session ended");
    // A request that loaded the laptop's session before it ended writes it back: it stays ended.
    laptop.data.insert("conversation_id".into(), json!("c1"));
    store.save(&laptop).await.unwrap();
    assert!(!loaded(laptop.id).await, "an ended session came back");
    // An anonymous session is created by its first write only (`put`), never by a save; and
    // once its id is rotated (deleted), a save by a request that loaded it before does not
    // bring the key back (SET ... XX).
    let fresh = record(json!({"user_id": "someone"}));
    store.put(&fresh).await.unwrap();
    assert!(loaded(fresh.id).await, "the first write stored nothing");
    store.delete(&fresh.id).await.unwrap();
    store.save(&fresh).await.unwrap();
    let key = format!("{prefix}:session:{}", fresh.id);
    let exists: i64 = connections.client.exists(&key).await.unwrap();
    assert_eq!(exists, 0, "a save brought back a rotated session's key");
    let never = record(json!({"user_id": "someone"}));
    store.save(&never).await.unwrap();
    assert!(!loaded(never.id).await, "a save created a session");
    assert_eq!(sessions.revoke_user(&ann).await.unwrap(), 0);
    assert_eq!(sessions.revoke_user(&bob).await.unwrap(), 1);
    assert!(!loaded(bobs.id).await);
}

/// The Redis store's touch (a session in use has its expiry moved on without its data being
/// written): the key's expiry, the value's recorded expiry and the account's index move on,
/// the stored data stays as it is, and a session that ended stays ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sessions_in_use_are_touched_without_their_data_being_written() {
    use std::collections::HashMap;

    use fred::interfaces::{KeysInterface, SortedSetsInterface};
    use llm_chat_server::cluster::RedisConnections;
    use llm_chat_server::domain::UserId;
    use llm_chat_server::sessions::{RedisSessionStore, SessionWrites, Sessions};
    use tower_sessions::session::{Id, Record};
    use tower_sessions::session_store::SessionStore;

    let redis = crate::harness::Redis::start();
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let latency = llm_chat_server::metrics::Metrics::default().redis_latency;
    let connections = RedisConnections::connect(&redis.url(), &prefix, latency)
        .await
        .expect("Redis");
    let store = RedisSessionStore::new(&connections);
    let ann = UserId::new();
    let mut laptop = Record {
        id: Id::default(),
        data: serde_json::from_value::<HashMap<String, Value>>(json!({
            "user_id": ann.as_ref(), "auth": "local", "conversation_id": "old", "n": 12345
        }))
        .unwrap(),
        expiry_date: time::OffsetDateTime::now_utc() + time::Duration::hours(1),
    };
    store.create(&mut laptop).await.unwrap();
    let mut current = laptop.clone();
    current.data.insert("conversation_id".into(), json!("new"));
    store.save(&current).await.unwrap();
    let key = format!("{prefix}:session:{}", laptop.id);
    let index = format!("{prefix}:sessions-of:{ann}");
    let before: String = connections.client.get(&key).await.unwrap();

    // A request that loaded the older copy touches it, a day on.
    let mut stale = laptop.clone();
    stale.expiry_date = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    store.touch(&stale).await.unwrap();

    let after: String = connections.client.get(&key).await.unwrap();
    let expires = stale.expiry_date.unix_timestamp();
    assert_eq!(
        after,
        before.replace(
            &format!(",{}]", current.expiry_date.unix_timestamp()),
            &format!(",{expires}]")
        ),
        "only the recorded expiry changes"
    );
    let loaded = store.load(&laptop.id).await.unwrap().unwrap();
    assert_eq!(loaded.data["conversation_id"], json!("new"));
    assert_eq!(loaded.data["n"], json!(12345));
    assert_eq!(loaded.expiry_date.unix_timestamp(), expires);
    for at in [&key, &index] {
        let ttl: i64 = connections.client.ttl(at).await.unwrap();
        assert!((86_390..=86_400).contains(&ttl), "{at}: {ttl}");
    }
    let score: Option<f64> = connections
        .client
        .zscore(&index, laptop.id.to_string())
        .await
        .unwrap();
    assert_eq!(score, Some(expires as f64));
    // Never backwards.
    store.touch(&laptop).await.unwrap();
    let ttl: i64 = connections.client.ttl(&key).await.unwrap();
    assert!(ttl > 86_000, "{ttl}");

    // Ended everywhere: a touch does not bring it back.
    assert_eq!(
        Sessions::Redis(store.clone())
            .revoke_user(&ann)
            .await
            .unwrap(),
        1
    );
    store.touch(&stale).await.unwrap();
    let exists: i64 = connections.client.exists(&key).await.unwrap();
    assert_eq!(exists, 0, "a touch brought back an ended session");
}
