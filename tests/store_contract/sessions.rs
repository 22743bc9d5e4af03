//! The contract of the session stores beside the conversations (SQLite, MongoDB) for signing
//! out everywhere: every session signed in to an account ends at once, nobody else's does,
//! an anonymous browser's session is never taken for an account's, and a session that ended
//! stays ended when a request that loaded it before writes it back; a save never brings back
//! a session that was deleted (an id rotated at sign-in), only a first write (`put`) creates
//! one; a touch moves the expiry on and nothing else. (Redis sessions are covered through the
//! cluster tests.)

use std::collections::HashMap;

use llm_chat_server::domain::UserId;
use llm_chat_server::sessions::{SessionWrites, Sessions};
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

fn writes(sessions: &Sessions) -> &dyn SessionWrites {
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

pub async fn a_save_never_brings_back_a_deleted_session_and_a_touch_moves_only_the_expiry(
    f: &Fixture,
) {
    let sessions = f.sessions();
    let ann = UserId::new();
    // A pending session's first write creates it.
    let anonymous = record(json!({"user_id": "anon", "conversation_id": "a"}));
    writes(&sessions).put(&anonymous).await.unwrap();
    assert!(
        stored(&sessions, &anonymous).await,
        "the first write stored nothing"
    );

    // Its id rotated (deleted): a request that loaded it before saves it: it stays gone.
    store(&sessions).delete(&anonymous.id).await.unwrap();
    store(&sessions).save(&anonymous).await.unwrap();
    assert!(
        !stored(&sessions, &anonymous).await,
        "a save brought back a deleted session"
    );
    // Nor does a save create a session never stored.
    let never = record(json!({"user_id": "anon"}));
    store(&sessions).save(&never).await.unwrap();
    assert!(!stored(&sessions, &never).await, "a save created a session");

    // A touch moves the expiry on (to the second) and keeps the stored data.
    let mut laptop = signed_in(&ann);
    store(&sessions).create(&mut laptop).await.unwrap();
    let mut current = laptop.clone();
    current
        .data
        .insert("conversation_id".into(), json!("newer"));
    store(&sessions).save(&current).await.unwrap();
    let mut stale = laptop.clone();
    stale.expiry_date = OffsetDateTime::now_utc() + time::Duration::days(2);
    writes(&sessions).touch(&stale).await.unwrap();
    let loaded = store(&sessions).load(&laptop.id).await.unwrap().unwrap();
    assert_eq!(
        loaded.data["conversation_id"],
        json!("newer"),
        "a touch wrote data"
    );
    assert_eq!(
        loaded.expiry_date.unix_timestamp(),
        stale.expiry_date.unix_timestamp(),
        "the expiry did not move on"
    );
    // Never backwards.
    writes(&sessions).touch(&laptop).await.unwrap();
    let loaded = store(&sessions).load(&laptop.id).await.unwrap().unwrap();
    assert_eq!(
        loaded.expiry_date.unix_timestamp(),
        stale.expiry_date.unix_timestamp()
    );
    // Still indexed by its account; and once ended, a touch does not bring it back.
    assert_eq!(sessions.revoke_user(&ann).await.unwrap(), 1);
    writes(&sessions).touch(&stale).await.unwrap();
    assert!(
        !stored(&sessions, &laptop).await,
        "a touch brought back an ended session"
    );
}
