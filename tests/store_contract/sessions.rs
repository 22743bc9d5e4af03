//! The contract of the session stores beside the conversations (SQLite, MongoDB) for signing
//! out everywhere: every session signed in to an account ends at once, nobody else's does,
//! an anonymous browser's session is never taken for an account's, and a session that ended
//! stays ended when a request that loaded it before writes it back. (Redis sessions are
//! covered through the cluster tests.)

use std::collections::HashMap;

use llm_chat_server::domain::UserId;
use llm_chat_server::sessions::Sessions;
use serde_json::json;
use time::OffsetDateTime;
use tower_sessions::session::{Id, Record};
use tower_sessions::session_store::SessionStore;

use crate::fixture::Fixture;

fn record(data: serde_json::Value) -> Record {
    let data: HashMap<String, serde_json::Value> = serde_json::from_value(data).unwrap();
    Record {
        id: Id::default(),
        data,
        expiry_date: OffsetDateTime::now_utc() + time::Duration::hours(1),
    }
}

fn signed_in(user: &UserId) -> Record {
    record(json!({"user_id": user.as_ref(), "auth": "local", "conversation_id": "x"}))
}

fn store(sessions: &Sessions) -> &dyn SessionStore {
    match sessions {
        Sessions::Sqlite(store) => store,
        Sessions::Mongo(store) => store,
        Sessions::Redis(store) => store,
    }
}

async fn stored(sessions: &Sessions, record: &Record) -> bool {
    store(sessions).load(&record.id).await.unwrap().is_some()
}

pub async fn an_accounts_sessions_end_together_and_stay_ended(f: &Fixture) {
    let sessions = f.sessions();
    let (ann, bob) = (UserId::new(), UserId::new());
    let mut laptop = signed_in(&ann);
    let mut phone = signed_in(&ann);
    let mut bobs = signed_in(&bob);
    // An anonymous browser whose (random) user id happens to be the account's must not count.
    let mut anonymous = record(json!({"user_id": ann.as_ref()}));
    for record in [&mut laptop, &mut phone, &mut bobs, &mut anonymous] {
        store(&sessions).create(record).await.unwrap();
    }

    let ended = sessions.revoke_user(&ann).await.unwrap();

    assert_eq!(ended, 2);
    assert!(!stored(&sessions, &laptop).await && !stored(&sessions, &phone).await);
    assert!(
        stored(&sessions, &bobs).await,
        "another account's session ended"
    );
    assert!(
        stored(&sessions, &anonymous).await,
        "an anonymous session ended"
    );
    // A request that loaded the laptop's session before it ended writes it back: it stays ended.
    laptop
        .data
        .insert("conversation_id".into(), json!("changed"));
    store(&sessions).save(&laptop).await.unwrap();
    assert!(
        !stored(&sessions, &laptop).await,
        "an ended session came back"
    );
    assert_eq!(sessions.revoke_user(&ann).await.unwrap(), 0);
    // A session signed in afterwards is a new one, and ends with the next sign-out everywhere.
    let mut again = signed_in(&ann);
    store(&sessions).create(&mut again).await.unwrap();
    assert!(stored(&sessions, &again).await);
    assert_eq!(sessions.revoke_user(&ann).await.unwrap(), 1);
    assert!(!stored(&sessions, &again).await);
    assert_eq!(sessions.revoke_user(&bob).await.unwrap(), 1);
}

pub async fn a_session_deleted_or_cycled_leaves_the_accounts_other_sessions_alone(f: &Fixture) {
    let sessions = f.sessions();
    let ann = UserId::new();
    let mut laptop = signed_in(&ann);
    let mut phone = signed_in(&ann);
    for record in [&mut laptop, &mut phone] {
        store(&sessions).create(record).await.unwrap();
    }

    store(&sessions).delete(&laptop.id).await.unwrap();
    // Saved as it is (for copying between stores): it is back, and indexed.
    sessions.save(&laptop).await.unwrap();

    assert!(stored(&sessions, &laptop).await && stored(&sessions, &phone).await);
    assert_eq!(sessions.revoke_user(&ann).await.unwrap(), 2);
}
