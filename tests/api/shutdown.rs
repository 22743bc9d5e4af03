//! Graceful drain on SIGTERM: replies in flight finish within
//! SHUTDOWN_GRACE_SECONDS or are stopped with their partial text stored,
//! sockets are told to reconnect (with jitter), and the process exits 0.

use std::time::Duration;

use testkit::browser::msg;
use testkit::eventually;

use crate::helpers::{spawn_app, User, TURN_TIMEOUT};

const PIECES: [&str; 16] = [
    "One",
    " two",
    " three",
    " four",
    " five",
    " six",
    " seven",
    " eight",
    " nine",
    " ten",
    " eleven",
    " twelve",
    " thirteen",
    " fourteen",
    " fifteen",
    " sixteen.",
];

async fn history_of(user: &User, id: &str) -> Vec<(String, String)> {
    user.history(id).await
}

#[tokio::test]
async fn sigterm_during_ten_streaming_replies_stores_every_partial_reply_and_exits_zero() {
    let mut app = spawn_app(&[("SHUTDOWN_GRACE_SECONDS", "2")]).await;
    app.llm
        .set_default(testkit::fake_llm::Behaviour::SlowStream(
            testkit::fake_llm::pieces(&PIECES),
            Duration::from_millis(300),
        ));
    // Ten users, all connected first, then all sending at once, so every
    // reply is still streaming when the signal comes.
    let mut users = Vec::new();
    for n in 0..10 {
        let user = app.new_user().await;
        let id = user.start_conversation().await;
        let socket = user.socket().await;
        users.push((user, id, socket, n));
    }
    for (_, id, socket, n) in &users {
        socket.send_message(&format!("Count for me, {n}"), Some(id));
    }
    for (_, _, socket, _) in users.iter_mut() {
        socket.wait_for("response_chunk", TURN_TIMEOUT).await;
    }
    let watcher = users[0].0.clone();

    let terminate = app.terminate(Duration::from_secs(30));
    let readiness = async {
        eventually(Duration::from_secs(2), "/readyz to report draining", || {
            let watcher = watcher.clone();
            async move {
                let ready = watcher.get("/readyz").await;
                (ready.status == 503 && ready.json["checks"]["draining"] == true).then_some(())
            }
        })
        .await
    };
    let (code, ()) = tokio::join!(terminate, readiness);

    assert_eq!(code, Some(0), "exit code after SIGTERM");
    for (_, _, socket, _) in users.iter_mut() {
        let announced = socket.wait_for("server_restarting", TURN_TIMEOUT).await;
        let delay = announced["reconnect_in_ms"].as_u64().unwrap();
        assert!((250..5_000).contains(&delay), "{delay}");
    }
    app.restart().await;
    let full = PIECES.concat();
    for (user, id, _, n) in &users {
        let history = history_of(user, id).await;
        assert_eq!(history.len(), 2, "{history:?}");
        assert_eq!(history[0], msg("user", &format!("Count for me, {n}")));
        let partial = &history[1].1;
        assert!(
            full.starts_with(partial.as_str()) && partial.len() < full.len(),
            "{partial:?}"
        );
        assert!(partial.starts_with("One"), "{partial:?}");
    }
}

#[tokio::test]
async fn a_reply_that_ends_within_the_grace_period_is_completed_before_exit() {
    let mut app = spawn_app(&[("SHUTDOWN_GRACE_SECONDS", "20")]).await;
    app.llm.slow_stream(
        &["Finish", " this", " reply", " first."],
        Duration::from_millis(200),
    );
    let user = app.new_user().await;
    let id = user.start_conversation().await;
    let mut socket = user.socket().await;
    socket.send_message("Quick one", Some(&id));
    socket.wait_for("response_chunk", TURN_TIMEOUT).await;

    let code = app.terminate(Duration::from_secs(30)).await;
    let end = socket.wait_for("response_end", TURN_TIMEOUT).await;

    assert_eq!(code, Some(0));
    assert_eq!(end["stopped"], false);
    app.restart().await;
    assert_eq!(
        history_of(&user, &id).await,
        [
            msg("user", "Quick one"),
            msg("assistant", "Finish this reply first.")
        ]
    );
}
