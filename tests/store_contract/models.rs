//! Conversation settings (model, system prompt, temperature) and presets,
//! the same on every backend: settings are kept beside the history (which
//! stays user and assistant messages only), replaced for their owner only,
//! copied by export and import; presets are per user.

use llm_chat_server::domain::{ConversationId, Role, UserId};
use llm_chat_server::store::presets::NewPreset;
use llm_chat_server::store::{ConversationSettings, SettingsChange};

use crate::checks::{assert_not_found, contents, copy_all, msg};
use crate::fixture::Fixture;

fn pirate() -> ConversationSettings {
    ConversationSettings {
        model: Some("small".into()),
        system_prompt: Some("You are a pirate. Answer like one.".into()),
        temperature: Some(0.25),
    }
}

pub async fn a_conversation_keeps_its_settings_apart_from_its_history(f: &Fixture) {
    let user = UserId::new();
    let (own, plain) = (ConversationId::new(), ConversationId::new());

    f.store.create_with(&user, &own, &pirate()).await.unwrap();
    f.store.create(&user, &plain).await.unwrap();
    f.store
        .append(
            &user,
            &own,
            vec![msg(Role::User, "ahoy"), msg(Role::Assistant, "arr")],
        )
        .await
        .unwrap();

    let loaded = f.store.load(&user, &own).await.unwrap();
    assert_eq!(loaded.settings, pirate());
    assert_eq!(contents(&loaded), ["ahoy", "arr"]);
    assert!(loaded
        .messages
        .iter()
        .all(|m| m.message.role != Role::System));
    let page = f.store.load_page(&user, &own, None, 1).await.unwrap();
    assert_eq!(page.settings, pirate());
    assert_eq!(page.messages.len(), 1);
    let empty_page = f.store.load_page(&user, &own, Some(0), 5).await.unwrap();
    assert_eq!(empty_page.settings, pirate());
    assert!(empty_page.messages.is_empty());
    assert_eq!(
        f.store.load(&user, &plain).await.unwrap().settings,
        ConversationSettings::default()
    );
    assert_eq!(
        f.store
            .load_page(&user, &plain, None, 10)
            .await
            .unwrap()
            .settings,
        ConversationSettings::default()
    );
}

pub async fn settings_are_replaced_for_the_owner_only(f: &Fixture) {
    let (alice, mallory) = (UserId::new(), UserId::new());
    let id = ConversationId::new();
    f.store.create(&alice, &id).await.unwrap();
    f.store
        .append(&alice, &id, vec![msg(Role::User, "hello")])
        .await
        .unwrap();
    let before = f.store.meta(&alice, &id).await.unwrap();

    assert_not_found(f.store.set_settings(&mallory, &id, &pirate()).await);
    assert_not_found(
        f.store
            .set_settings(&alice, &ConversationId::new(), &pirate())
            .await,
    );
    assert_eq!(
        f.store.load(&alice, &id).await.unwrap().settings,
        ConversationSettings::default()
    );

    f.store.set_settings(&alice, &id, &pirate()).await.unwrap();
    let loaded = f.store.load(&alice, &id).await.unwrap();
    assert_eq!(loaded.settings, pirate());
    assert_eq!(contents(&loaded), ["hello"]);
    assert_eq!(loaded.meta.title, before.title);
    assert_eq!(loaded.meta.message_count, 1);

    // Back to the defaults: every field cleared.
    let only_model = ConversationSettings {
        model: Some("big".into()),
        ..Default::default()
    };
    f.store
        .set_settings(&alice, &id, &only_model)
        .await
        .unwrap();
    assert_eq!(
        f.store.load(&alice, &id).await.unwrap().settings,
        only_model
    );
    f.store
        .set_settings(&alice, &id, &ConversationSettings::default())
        .await
        .unwrap();
    assert_eq!(
        f.store.load(&alice, &id).await.unwrap().settings,
        ConversationSettings::default()
    );
}

pub async fn a_settings_change_changes_only_the_fields_it_names(f: &Fixture) {
    let (alice, mallory) = (UserId::new(), UserId::new());
    let id = ConversationId::new();
    f.store.create_with(&alice, &id, &pirate()).await.unwrap();
    f.store
        .append(&alice, &id, vec![msg(Role::User, "hello")])
        .await
        .unwrap();
    let before = f.store.meta(&alice, &id).await.unwrap();
    let new_prompt = SettingsChange {
        system_prompt: Some(Some("Speak French.".into())),
        ..Default::default()
    };

    assert_not_found(f.store.change_settings(&mallory, &id, &new_prompt).await);
    assert_not_found(
        f.store
            .change_settings(&alice, &ConversationId::new(), &new_prompt)
            .await,
    );
    assert_eq!(f.store.load(&alice, &id).await.unwrap().settings, pirate());

    let now = f
        .store
        .change_settings(&alice, &id, &new_prompt)
        .await
        .unwrap();
    let french = ConversationSettings {
        system_prompt: Some("Speak French.".into()),
        ..pirate()
    };
    assert_eq!(now, french);
    let loaded = f.store.load(&alice, &id).await.unwrap();
    assert_eq!(loaded.settings, french);
    assert_eq!(contents(&loaded), ["hello"]);
    assert_eq!(loaded.meta.title, before.title);
    assert_eq!(loaded.meta.updated_at, before.updated_at);

    // Cleared back to the default, set, and left: in one change.
    let mixed = SettingsChange {
        model: Some(Some("big".into())),
        system_prompt: None,
        temperature: Some(None),
    };
    let expected = ConversationSettings {
        model: Some("big".into()),
        system_prompt: Some("Speak French.".into()),
        temperature: None,
    };
    assert_eq!(
        f.store.change_settings(&alice, &id, &mixed).await.unwrap(),
        expected
    );
    assert_eq!(f.store.load(&alice, &id).await.unwrap().settings, expected);
    // Nothing named: the settings as they are.
    assert_eq!(
        f.store
            .change_settings(&alice, &id, &SettingsChange::default())
            .await
            .unwrap(),
        expected
    );
    let everything_cleared = SettingsChange {
        model: Some(None),
        system_prompt: Some(None),
        temperature: Some(None),
    };
    assert_eq!(
        f.store
            .change_settings(&alice, &id, &everything_cleared)
            .await
            .unwrap(),
        ConversationSettings::default()
    );
    assert_eq!(
        f.store
            .load_page(&alice, &id, None, 5)
            .await
            .unwrap()
            .settings,
        ConversationSettings::default()
    );
}

pub async fn settings_survive_export_and_import(f: &Fixture) {
    let target_fixture = f.another().await;
    let user = UserId::new();
    let (own, plain) = (ConversationId::new(), ConversationId::new());
    f.store.create_with(&user, &own, &pirate()).await.unwrap();
    f.store.create(&user, &plain).await.unwrap();

    let (inserted, _) = copy_all(&f.store, &target_fixture.store, 10).await;

    assert_eq!(inserted, 2);
    let target = &target_fixture.store;
    assert_eq!(target.load(&user, &own).await.unwrap().settings, pirate());
    assert_eq!(
        target.load(&user, &plain).await.unwrap().settings,
        ConversationSettings::default()
    );
    target_fixture.finish().await;
}

fn preset(name: &str) -> NewPreset {
    NewPreset {
        name: name.into(),
        model: Some("small".into()),
        system_prompt: Some(format!("{name} prompt")),
        temperature: Some(1.5),
    }
}

pub async fn presets_are_made_listed_found_and_deleted_per_user(f: &Fixture) {
    let (alice, bob) = (UserId::new(), UserId::new());
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::new_v4().to_string()).collect();

    let first = f
        .presets
        .create_preset(&alice, &ids[0], &preset("Pirate"), 10)
        .await
        .unwrap()
        .expect("created");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let bare = NewPreset {
        name: "Bare".into(),
        model: None,
        system_prompt: None,
        temperature: None,
    };
    f.presets
        .create_preset(&alice, &ids[1], &bare, 10)
        .await
        .unwrap()
        .expect("created");
    f.presets
        .create_preset(&bob, &ids[2], &preset("Bob's"), 10)
        .await
        .unwrap()
        .expect("created");

    assert_eq!(first.preset_id, ids[0]);
    assert_eq!(first.name, "Pirate");
    assert_eq!(first.model.as_deref(), Some("small"));
    assert_eq!(first.system_prompt.as_deref(), Some("Pirate prompt"));
    assert_eq!(first.temperature, Some(1.5));
    let listed = f.presets.presets(&alice).await.unwrap();
    assert_eq!(
        listed.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["Pirate", "Bare"]
    );
    assert_eq!(listed[0], first);
    assert_eq!(
        (
            listed[1].model.clone(),
            listed[1].system_prompt.clone(),
            listed[1].temperature
        ),
        (None, None, None)
    );
    assert_eq!(
        f.presets.preset(&alice, &ids[0]).await.unwrap(),
        Some(first.clone())
    );
    // Another user's preset is not found, not deleted, not listed.
    assert_eq!(f.presets.preset(&bob, &ids[0]).await.unwrap(), None);
    assert!(!f.presets.delete_preset(&bob, &ids[0]).await.unwrap());
    assert_eq!(f.presets.presets(&bob).await.unwrap().len(), 1);
    assert_eq!(f.presets.presets(&alice).await.unwrap().len(), 2);

    assert!(f.presets.delete_preset(&alice, &ids[0]).await.unwrap());
    assert!(!f.presets.delete_preset(&alice, &ids[0]).await.unwrap());
    assert_eq!(f.presets.preset(&alice, &ids[0]).await.unwrap(), None);
    assert_eq!(
        f.presets
            .presets(&alice)
            .await
            .unwrap()
            .iter()
            .map(|p| p.preset_id.clone())
            .collect::<Vec<_>>(),
        [ids[1].clone()]
    );
    assert_eq!(f.presets.presets(&bob).await.unwrap()[0].name, "Bob's");
}

pub async fn presets_stop_at_the_per_user_limit(f: &Fixture) {
    let (alice, bob) = (UserId::new(), UserId::new());
    for n in 0..3 {
        let id = uuid::Uuid::new_v4().to_string();
        let made = f
            .presets
            .create_preset(&alice, &id, &preset(&format!("p{n}")), 3)
            .await;
        assert!(matches!(made, Ok(Some(_))), "{made:?}");
    }

    let refused = f
        .presets
        .create_preset(
            &alice,
            &uuid::Uuid::new_v4().to_string(),
            &preset("one too many"),
            3,
        )
        .await;

    assert!(matches!(refused, Ok(None)), "{refused:?}");
    assert_eq!(f.presets.presets(&alice).await.unwrap().len(), 3);
    // Another user's limit is their own.
    let bobs = f
        .presets
        .create_preset(&bob, &uuid::Uuid::new_v4().to_string(), &preset("b"), 3)
        .await;
    assert!(matches!(bobs, Ok(Some(_))), "{bobs:?}");
}

pub async fn presets_are_copied_once_with_every_field(f: &Fixture) {
    let target = f.another().await;
    let (alice, bob) = (UserId::new(), UserId::new());
    for (user, name) in [(&alice, "Pirate"), (&bob, "Bob's"), (&alice, "Second")] {
        f.presets
            .create_preset(user, &uuid::Uuid::new_v4().to_string(), &preset(name), 10)
            .await
            .unwrap()
            .expect("created");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    let all = f.presets.presets_for_copy().await.unwrap();
    let mut copied = 0;
    for (user, preset) in &all {
        copied += usize::from(target.presets.import_preset(user, preset).await.unwrap());
    }
    let mut again = 0;
    for (user, preset) in &all {
        again += usize::from(target.presets.import_preset(user, preset).await.unwrap());
    }

    assert_eq!(
        all.iter()
            .map(|(user, p)| (user.clone(), p.name.clone()))
            .collect::<Vec<_>>(),
        [
            (alice.clone(), "Pirate".to_string()),
            (bob.clone(), "Bob's".to_string()),
            (alice.clone(), "Second".to_string()),
        ]
    );
    assert_eq!((copied, again), (3, 0));
    for user in [&alice, &bob] {
        assert_eq!(
            target.presets.presets(user).await.unwrap(),
            f.presets.presets(user).await.unwrap()
        );
    }
    target.finish().await;
}
