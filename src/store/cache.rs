//! A write-through cache of whole conversations in front of a store, so a
//! turn does not read its history back from the store: the turn that wrote
//! the last two messages left them here.
//!
//! Two modes. [`CachedStore::new`] is for a store this process writes alone
//! (the embedded SQLite file, one instance): every mutation goes through
//! here; `append` updates the cached copy when the store's answer shows it
//! was current, every other mutation drops it. A load that raced a mutation
//! does not fill the cache (a per-conversation generation tells), so a
//! stale copy is never kept.
//!
//! [`CachedStore::shared`] is for a store other instances write too (Redis
//! mode): each copy is labelled with the store's revision of the
//! conversation ([`ConversationStore::revision`], moved on by every write in
//! its own transaction, whoever makes it). A load asks the store for the
//! revision (one small read) and uses the copy only when it is the same;
//! an append updates the copy only when the store says the revision just
//! before it was the copy's. Another instance's write is thus seen by the
//! next load here, as without a cache.
//!
//! Bounded by the approximate bytes of message text it holds; the least
//! recently used conversations go first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{
    BranchPool, Conversation, ConversationMeta, ConversationSettings, ConversationStore, Exported,
    NewMessage, SearchHit, SettingsChange, StoreResult, StoredMessage, Summary,
};
use crate::domain::{ChatMessage, ConversationId, UserId};

type Key = (UserId, ConversationId);

/// Fixed cost counted per message besides its text (the struct, the Arcs).
const PER_MESSAGE_BYTES: usize = 96;

/// What a cached message is counted as: its text twice (the text and,
/// once a turn has sent it upstream, its JSON form) and the fixed cost.
fn message_bytes(message: &StoredMessage) -> usize {
    2 * message.message.content.len() + PER_MESSAGE_BYTES
}
const PER_CONVERSATION_BYTES: usize = 256;

struct Slot {
    /// Bumped by every mutation, so a load that started before one does
    /// not store what it read.
    generation: u64,
    conversation: Option<Conversation>,
    /// The store's revision of `conversation` (shared mode; `None`: not
    /// known, so the copy is not used there).
    revision: Option<u64>,
    bytes: usize,
    last_used: u64,
}

impl Slot {
    /// A slot with no copy yet.
    fn empty(generation: u64, last_used: u64) -> Self {
        Slot {
            generation,
            conversation: None,
            revision: None,
            bytes: 0,
            last_used,
        }
    }

    /// Drops the cached copy; returns the bytes it counted.
    fn forget(&mut self) -> usize {
        self.conversation = None;
        self.revision = None;
        std::mem::take(&mut self.bytes)
    }
}

struct Inner {
    slots: HashMap<Key, Slot>,
    bytes: usize,
    tick: u64,
    hits: u64,
    misses: u64,
}

/// The cache; wraps any store.
pub struct CachedStore {
    inner: Arc<dyn ConversationStore>,
    state: Mutex<Inner>,
    capacity_bytes: usize,
    /// Other processes write the store too: copies are checked against
    /// the store's revision before use.
    shared: bool,
}

fn conversation_bytes(conversation: &Conversation) -> usize {
    PER_CONVERSATION_BYTES
        + conversation
            .messages
            .iter()
            .map(message_bytes)
            .sum::<usize>()
        + conversation.summary.as_ref().map_or(0, |s| s.text.len())
}

impl CachedStore {
    /// Caches `inner`'s conversations, up to about `capacity_bytes` of text,
    /// for a store only this process writes.
    pub fn new(inner: Arc<dyn ConversationStore>, capacity_bytes: usize) -> Self {
        Self::with_mode(inner, capacity_bytes, false)
    }

    /// Caches `inner`'s conversations for a store other processes write
    /// too, checking each copy against the store's revision before use;
    /// `inner` must keep revisions ([`ConversationStore::revision`]), or
    /// nothing is ever served from memory.
    pub fn shared(inner: Arc<dyn ConversationStore>, capacity_bytes: usize) -> Self {
        Self::with_mode(inner, capacity_bytes, true)
    }

    fn with_mode(inner: Arc<dyn ConversationStore>, capacity_bytes: usize, shared: bool) -> Self {
        Self {
            inner,
            state: Mutex::new(Inner {
                slots: HashMap::new(),
                bytes: 0,
                tick: 0,
                hits: 0,
                misses: 0,
            }),
            capacity_bytes,
            shared,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// (hits, misses) of `load`, for tests and metrics.
    pub fn stats(&self) -> (u64, u64) {
        let state = self.lock();
        (state.hits, state.misses)
    }

    /// Runs a mutation other than `append`, then drops the cached copy
    /// and bumps the generation: a load that overlapped the mutation does
    /// not keep what it read, and the next load reads the store.
    async fn mutate<T>(&self, key: Key, mutation: impl std::future::Future<Output = T>) -> T {
        let result = mutation.await;
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(slot) = state.slots.get_mut(&key) {
            slot.generation += 1;
            state.bytes -= slot.forget();
        }
        result
    }

    /// Stores `conversation`, of the store's `revision`, as the cached copy
    /// of `key`.
    fn put(
        state: &mut Inner,
        key: &Key,
        slot_generation: u64,
        conversation: Conversation,
        revision: Option<u64>,
    ) {
        let bytes = conversation_bytes(&conversation);
        state.tick += 1;
        let tick = state.tick;
        let slot = state
            .slots
            .entry(key.clone())
            .or_insert_with(|| Slot::empty(slot_generation, tick));
        state.bytes = state.bytes - slot.bytes + bytes;
        slot.bytes = bytes;
        slot.conversation = Some(conversation);
        slot.revision = revision;
        slot.last_used = tick;
    }

    /// Evicts the least recently used conversations until within capacity
    /// (down to 90 %, so eviction runs now and then, not on every insert).
    fn evict(&self, state: &mut Inner) {
        if state.bytes <= self.capacity_bytes && state.slots.len() <= MAX_SLOTS {
            return;
        }
        let mut order: Vec<(u64, Key)> = state
            .slots
            .iter()
            .map(|(key, slot)| (slot.last_used, key.clone()))
            .collect();
        order.sort_unstable_by_key(|(used, _)| *used);
        let target = self.capacity_bytes / 10 * 9;
        let slot_target = MAX_SLOTS / 10 * 9;
        for (_, key) in order {
            if state.bytes <= target && state.slots.len() <= slot_target {
                break;
            }
            if let Some(slot) = state.slots.remove(&key) {
                state.bytes -= slot.bytes;
            }
        }
    }
}

impl CachedStore {
    /// Counts a miss and answers the generation a load starting now must
    /// still find to keep what it read (making the slot if there is none).
    fn slot_for_load(state: &mut Inner, key: &Key, tick: u64) -> u64 {
        state.misses += 1;
        let slot = state
            .slots
            .entry(key.clone())
            .or_insert_with(|| Slot::empty(0, tick));
        slot.generation
    }

    /// `load` in shared mode: the copy if the store's revision is still
    /// the copy's, else the store's conversation with its revision.
    async fn load_shared(&self, user: &UserId, id: &ConversationId) -> StoreResult<Conversation> {
        let key = (user.clone(), id.clone());
        let known = self.lock().slots.get(&key).and_then(|slot| {
            slot.conversation.as_ref()?;
            slot.revision
        });
        if let Some(known) = known {
            match self.inner.revision(user, id).await {
                Ok(Some(now)) if now == known => {
                    let mut state = self.lock();
                    state.tick += 1;
                    let tick = state.tick;
                    if let Some(slot) = state.slots.get_mut(&key) {
                        if let (Some(conversation), Some(revision)) =
                            (&slot.conversation, slot.revision)
                        {
                            // Still the copy that was checked (a local
                            // mutation since would have dropped it or
                            // moved its revision on).
                            if revision == known {
                                slot.last_used = tick;
                                let copy = conversation.clone();
                                state.hits += 1;
                                return Ok(copy);
                            }
                        }
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    // Gone (deleted or moved by another instance), or the
                    // store failed: the copy is of no use either way.
                    let mut state = self.lock();
                    let state = &mut *state;
                    if let Some(slot) = state.slots.get_mut(&key) {
                        slot.generation += 1;
                        state.bytes -= slot.forget();
                    }
                    return Err(err);
                }
            }
        }
        let generation = {
            let mut state = self.lock();
            state.tick += 1;
            let tick = state.tick;
            Self::slot_for_load(&mut state, &key, tick)
        };
        let (conversation, revision) = self.inner.load_revised(user, id).await?;
        self.keep_unless_changed(&key, generation, &conversation, revision);
        Ok(conversation)
    }

    /// Keeps what a load read, of the store's `revision`, unless a
    /// mutation here came since the load began (the slot's generation
    /// moved on from `generation`).
    fn keep_unless_changed(
        &self,
        key: &Key,
        generation: u64,
        conversation: &Conversation,
        revision: Option<u64>,
    ) {
        let mut state = self.lock();
        if state
            .slots
            .get(key)
            .is_some_and(|slot| slot.generation == generation)
        {
            Self::put(&mut state, key, generation, conversation.clone(), revision);
            self.evict(&mut state);
        }
    }
}

/// Slots kept at most (a slot without a conversation still costs a little).
const MAX_SLOTS: usize = 100_000;

#[async_trait]
impl ConversationStore for CachedStore {
    async fn create_with(
        &self,
        user: &UserId,
        id: &ConversationId,
        settings: &ConversationSettings,
    ) -> StoreResult<ConversationMeta> {
        let key = (user.clone(), id.clone());
        let meta = self.inner.create_with(user, id, settings).await?;
        let mut state = self.lock();
        let generation = match state.slots.get_mut(&key) {
            Some(slot) => {
                slot.generation += 1;
                slot.generation
            }
            None => 0,
        };
        // A new conversation is empty: its first turn needs no load.
        Self::put(
            &mut state,
            &key,
            generation,
            Conversation {
                meta: meta.clone(),
                messages: Default::default(),
                summary: None,
                settings: settings.clone(),
            },
            // Shared: not known; the first load reads it (small).
            None,
        );
        self.evict(&mut state);
        Ok(meta)
    }

    async fn load(&self, user: &UserId, id: &ConversationId) -> StoreResult<Conversation> {
        if self.shared {
            return self.load_shared(user, id).await;
        }
        let key = (user.clone(), id.clone());
        let generation = {
            let mut state = self.lock();
            state.tick += 1;
            let tick = state.tick;
            if let Some(slot) = state.slots.get_mut(&key) {
                if let Some(conversation) = &slot.conversation {
                    slot.last_used = tick;
                    let copy = conversation.clone();
                    state.hits += 1;
                    return Ok(copy);
                }
            }
            Self::slot_for_load(&mut state, &key, tick)
        };
        let conversation = self.inner.load(user, id).await?;
        self.keep_unless_changed(&key, generation, &conversation, None);
        Ok(conversation)
    }

    async fn meta(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        if self.shared {
            // Another instance may have changed it: only the store knows.
            return self.inner.meta(user, id).await;
        }
        let key = (user.clone(), id.clone());
        if let Some(meta) = self
            .lock()
            .slots
            .get(&key)
            .and_then(|slot| slot.conversation.as_ref())
            .map(|c| c.meta.clone())
        {
            return Ok(meta);
        }
        self.inner.meta(user, id).await
    }

    async fn list(
        &self,
        user: &UserId,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<ConversationMeta>> {
        self.inner.list(user, limit, offset).await
    }

    async fn append(
        &self,
        user: &UserId,
        id: &ConversationId,
        messages: Vec<NewMessage>,
    ) -> StoreResult<ConversationMeta> {
        let key = (user.clone(), id.clone());
        // What the cached copy gains if it was current (clones share text).
        let added: Vec<StoredMessage> = messages
            .iter()
            .map(|m| StoredMessage {
                message: ChatMessage::new(m.role, m.content.as_str()),
                tokens: m.tokens,
            })
            .collect();
        let result = if self.shared {
            self.inner.append_revised(user, id, messages).await
        } else {
            self.inner
                .append(user, id, messages)
                .await
                .map(|m| (m, None))
        };
        let mut state = self.lock();
        let state = &mut *state;
        let Some(slot) = state.slots.get_mut(&key) else {
            return result.map(|(meta, _)| meta);
        };
        slot.generation += 1;
        let (meta, revisions) = match result {
            Ok(answer) => answer,
            Err(err) => {
                // Unknown outcome: read it again next time.
                state.bytes -= slot.forget();
                return Err(err);
            }
        };
        let current = slot.conversation.as_ref().is_some_and(|c| {
            c.messages.len() + added.len() == meta.message_count as usize
                && c.meta.message_count as usize == c.messages.len()
        }) && (!self.shared
            // Nobody else wrote between the copy and this append.
            || revisions.is_some_and(|(before, _)| slot.revision == Some(before)));
        if !current {
            state.bytes -= slot.forget();
            return Ok(meta);
        }
        slot.revision = revisions.map(|(_, after)| after);
        let conversation = slot.conversation.as_mut().expect("checked above");
        let grown: usize = added.iter().map(message_bytes).sum();
        // In place unless a turn still holds the previous history.
        Arc::make_mut(&mut conversation.messages).extend(added);
        conversation.meta = meta.clone();
        slot.bytes += grown;
        state.bytes += grown;
        state.tick += 1;
        slot.last_used = state.tick;
        self.evict(state);
        Ok(meta)
    }

    async fn delete_last_message(
        &self,
        user: &UserId,
        id: &ConversationId,
    ) -> StoreResult<Option<ChatMessage>> {
        self.mutate(
            (user.clone(), id.clone()),
            self.inner.delete_last_message(user, id),
        )
        .await
    }

    async fn branches(&self, user: &UserId, id: &ConversationId) -> StoreResult<BranchPool> {
        self.inner.branches(user, id).await
    }

    async fn fork(
        &self,
        user: &UserId,
        id: &ConversationId,
        at: u64,
        messages: Vec<NewMessage>,
    ) -> StoreResult<ConversationMeta> {
        self.mutate(
            (user.clone(), id.clone()),
            self.inner.fork(user, id, at, messages),
        )
        .await
    }

    async fn switch_branch(
        &self,
        user: &UserId,
        id: &ConversationId,
        index: u64,
        position: u64,
    ) -> StoreResult<ConversationMeta> {
        self.mutate(
            (user.clone(), id.clone()),
            self.inner.switch_branch(user, id, index, position),
        )
        .await
    }

    async fn reset(&self, user: &UserId, id: &ConversationId) -> StoreResult<ConversationMeta> {
        self.mutate((user.clone(), id.clone()), self.inner.reset(user, id))
            .await
    }

    async fn delete(&self, user: &UserId, id: &ConversationId) -> StoreResult<()> {
        self.mutate((user.clone(), id.clone()), self.inner.delete(user, id))
            .await
    }

    async fn set_summary(
        &self,
        user: &UserId,
        id: &ConversationId,
        summary: Summary,
    ) -> StoreResult<()> {
        self.mutate(
            (user.clone(), id.clone()),
            self.inner.set_summary(user, id, summary),
        )
        .await
    }

    async fn set_settings(
        &self,
        user: &UserId,
        id: &ConversationId,
        settings: &ConversationSettings,
    ) -> StoreResult<()> {
        self.mutate(
            (user.clone(), id.clone()),
            self.inner.set_settings(user, id, settings),
        )
        .await
    }

    async fn change_settings(
        &self,
        user: &UserId,
        id: &ConversationId,
        change: &SettingsChange,
    ) -> StoreResult<ConversationSettings> {
        self.mutate(
            (user.clone(), id.clone()),
            self.inner.change_settings(user, id, change),
        )
        .await
    }

    async fn set_title(
        &self,
        user: &UserId,
        id: &ConversationId,
        title: &str,
    ) -> StoreResult<ConversationMeta> {
        self.mutate(
            (user.clone(), id.clone()),
            self.inner.set_title(user, id, title),
        )
        .await
    }

    async fn search(&self, user: &UserId, query: &str, limit: u32) -> StoreResult<Vec<SearchHit>> {
        self.inner.search(user, query, limit).await
    }

    async fn count_all(&self) -> StoreResult<u64> {
        self.inner.count_all().await
    }

    async fn export_page(
        &self,
        after: Option<(UserId, ConversationId)>,
        limit: u32,
    ) -> StoreResult<Vec<Exported>> {
        self.inner.export_page(after, limit).await
    }

    async fn import_branched(
        &self,
        user: &UserId,
        conversation: &Conversation,
        pool: &BranchPool,
    ) -> StoreResult<bool> {
        self.mutate(
            (user.clone(), conversation.meta.conversation_id.clone()),
            self.inner.import_branched(user, conversation, pool),
        )
        .await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn forget_user(&self, user: &UserId) {
        let mut state = self.lock();
        let Inner { slots, bytes, .. } = &mut *state;
        for ((owner, _), slot) in slots.iter_mut() {
            if owner == user {
                // As in `mutate`: a load in flight does not keep what it read.
                slot.generation += 1;
                *bytes -= slot.forget();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Role;
    use crate::store::sqlite::{SqliteDb, SqliteStore};

    fn cached(capacity: usize) -> (tempfile::TempDir, Arc<SqliteStore>, CachedStore) {
        let dir = tempfile::tempdir().unwrap();
        let inner = Arc::new(SqliteStore::new(
            SqliteDb::open(&dir.path().join("c.db")).unwrap(),
        ));
        let cache = CachedStore::new(inner.clone(), capacity);
        (dir, inner, cache)
    }

    fn msg(role: Role, content: &str) -> NewMessage {
        NewMessage {
            role,
            content: content.to_string(),
            tokens: Some(2),
        }
    }

    /// Three turns as a turn makes them: a load, then its two messages
    /// (`q0`, `a0`, ...).
    async fn three_turns(store: &CachedStore, user: &UserId, id: &ConversationId) {
        for turn in 0..3 {
            store.load(user, id).await.unwrap();
            store
                .append(
                    user,
                    id,
                    vec![
                        msg(Role::User, &format!("q{turn}")),
                        msg(Role::Assistant, &format!("a{turn}")),
                    ],
                )
                .await
                .unwrap();
        }
    }

    fn texts(conversation: &Conversation) -> Vec<String> {
        conversation
            .messages
            .iter()
            .map(|m| m.message.content.to_string())
            .collect()
    }

    #[tokio::test]
    async fn conversations_moved_to_another_user_are_not_served_under_the_old_one() {
        use crate::store::accounts::AccountStore;
        use crate::store::StoreError;
        let (_dir, inner, cache) = cached(1 << 20);
        let (anonymous, account, id) = (UserId::new(), UserId::new(), ConversationId::new());
        cache.create(&anonymous, &id).await.unwrap();
        cache
            .append(&anonymous, &id, vec![msg(Role::User, "before sign-in")])
            .await
            .unwrap();
        cache.load(&anonymous, &id).await.unwrap();

        inner
            .transfer_conversations(&anonymous, &account)
            .await
            .unwrap();
        cache.forget_user(&anonymous);

        assert!(matches!(
            cache.load(&anonymous, &id).await,
            Err(StoreError::NotFound)
        ));
        let moved = cache.load(&account, &id).await.unwrap();
        assert_eq!(texts(&moved), ["before sign-in"]);
    }

    #[tokio::test]
    async fn turns_are_served_from_memory_and_match_the_store() {
        let (_dir, inner, cache) = cached(1 << 20);
        let (user, id) = (UserId::new(), ConversationId::new());
        cache.create(&user, &id).await.unwrap();
        three_turns(&cache, &user, &id).await;

        let from_cache = cache.load(&user, &id).await.unwrap();
        let from_store = inner.load(&user, &id).await.unwrap();

        assert_eq!(cache.stats(), (4, 0), "every load should have been a hit");
        assert_eq!(texts(&from_cache), ["q0", "a0", "q1", "a1", "q2", "a2"]);
        assert_eq!(texts(&from_cache), texts(&from_store));
        assert_eq!(from_cache.meta, from_store.meta);
        assert_eq!(from_cache.messages, from_store.messages);
    }

    #[tokio::test]
    async fn every_other_change_is_read_back_from_the_store() {
        let (_dir, _inner, cache) = cached(1 << 20);
        let (user, id) = (UserId::new(), ConversationId::new());
        cache.create(&user, &id).await.unwrap();
        cache
            .append(
                &user,
                &id,
                vec![msg(Role::User, "q"), msg(Role::Assistant, "a")],
            )
            .await
            .unwrap();

        cache.delete_last_message(&user, &id).await.unwrap();
        assert_eq!(texts(&cache.load(&user, &id).await.unwrap()), ["q"]);
        let summary = Summary {
            text: "s".into(),
            covers: 1,
            tokens: 1,
        };
        cache
            .set_summary(&user, &id, summary.clone())
            .await
            .unwrap();
        assert_eq!(cache.load(&user, &id).await.unwrap().summary, Some(summary));
        let meta = cache.set_title(&user, &id, "named").await.unwrap();
        assert_eq!(cache.meta(&user, &id).await.unwrap(), meta);
        assert_eq!(
            cache.load(&user, &id).await.unwrap().meta.title.as_deref(),
            Some("named")
        );
        cache.reset(&user, &id).await.unwrap();
        let reset = cache.load(&user, &id).await.unwrap();
        assert!(reset.messages.is_empty() && reset.summary.is_none());
        cache.delete(&user, &id).await.unwrap();
        assert!(matches!(
            cache.load(&user, &id).await,
            Err(crate::store::StoreError::NotFound)
        ));
        // Another user never sees it, cached or not.
        assert!(cache.load(&UserId::new(), &id).await.is_err());
    }

    #[tokio::test]
    async fn a_change_made_behind_its_back_is_not_covered_over_by_an_append() {
        let (_dir, inner, cache) = cached(1 << 20);
        let (user, id) = (UserId::new(), ConversationId::new());
        cache.create(&user, &id).await.unwrap();
        cache.load(&user, &id).await.unwrap();
        // Written without the cache (as if by something else).
        inner
            .append(&user, &id, vec![msg(Role::User, "elsewhere")])
            .await
            .unwrap();

        cache
            .append(&user, &id, vec![msg(Role::User, "here")])
            .await
            .unwrap();

        // The cached copy did not match the store's count: it was dropped.
        assert_eq!(
            texts(&cache.load(&user, &id).await.unwrap()),
            ["elsewhere", "here"]
        );
    }

    /// Two instances (each its own connection to one file, each its own
    /// cache): turns on one instance are served from memory; what the
    /// other writes meanwhile (a turn, a title, settings, an edit, a
    /// delete) is what the next load reads.
    #[tokio::test]
    async fn shared_copies_are_used_while_the_stored_revision_is_theirs_and_no_longer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let a = CachedStore::shared(
            Arc::new(SqliteStore::new(SqliteDb::open(&path).unwrap())),
            1 << 20,
        );
        let b = CachedStore::shared(
            Arc::new(SqliteStore::new(SqliteDb::open(&path).unwrap())),
            1 << 20,
        );
        let (user, id) = (UserId::new(), ConversationId::new());
        a.create(&user, &id).await.unwrap();
        three_turns(&a, &user, &id).await;
        assert_eq!(
            texts(&a.load(&user, &id).await.unwrap()),
            ["q0", "a0", "q1", "a1", "q2", "a2"]
        );
        // The first load read the new conversation; the others were copies.
        assert_eq!(a.stats(), (3, 1));

        b.append(&user, &id, vec![msg(Role::User, "from b")])
            .await
            .unwrap();
        let seen = a.load(&user, &id).await.unwrap();
        assert_eq!(texts(&seen)[6..], ["from b"]);
        assert_eq!(a.stats(), (3, 2), "B's append made A read the store");
        // A appends after B's write: its copy (read after it) stays in use.
        a.append(&user, &id, vec![msg(Role::Assistant, "to b")])
            .await
            .unwrap();
        assert_eq!(
            texts(&a.load(&user, &id).await.unwrap())[6..],
            ["from b", "to b"]
        );
        assert_eq!(a.stats(), (4, 2));

        b.set_title(&user, &id, "named by b").await.unwrap();
        assert_eq!(
            a.meta(&user, &id).await.unwrap().title.as_deref(),
            Some("named by b")
        );
        let loaded = a.load(&user, &id).await.unwrap();
        assert_eq!(loaded.meta.title.as_deref(), Some("named by b"));
        let settings = ConversationSettings {
            system_prompt: Some("Set on b.".into()),
            ..Default::default()
        };
        b.set_settings(&user, &id, &settings).await.unwrap();
        assert_eq!(a.load(&user, &id).await.unwrap().settings, settings);
        b.fork(&user, &id, 1, vec![msg(Role::Assistant, "a0 again")])
            .await
            .unwrap();
        assert_eq!(
            texts(&a.load(&user, &id).await.unwrap()),
            ["q0", "a0 again"]
        );
        // B's copy, made before A's appends, is not used either.
        assert_eq!(
            texts(&b.load(&user, &id).await.unwrap()),
            ["q0", "a0 again"]
        );

        // An append of A's that follows a write of B's it has not read:
        // the copy is dropped, and the next load reads everything.
        b.append(&user, &id, vec![msg(Role::User, "b again")])
            .await
            .unwrap();
        a.append(&user, &id, vec![msg(Role::Assistant, "a again")])
            .await
            .unwrap();
        assert_eq!(
            texts(&a.load(&user, &id).await.unwrap()),
            ["q0", "a0 again", "b again", "a again"]
        );

        b.delete(&user, &id).await.unwrap();
        assert!(matches!(
            a.load(&user, &id).await,
            Err(crate::store::StoreError::NotFound)
        ));
        assert_eq!(a.lock().bytes, 0, "the deleted conversation's copy is gone");
    }

    #[tokio::test]
    async fn it_stays_within_its_capacity_and_evicted_conversations_load_again() {
        let (_dir, _inner, cache) = cached(8 * 1024);
        let user = UserId::new();
        let mut ids = Vec::new();
        for i in 0..20 {
            let id = ConversationId::new();
            cache.create(&user, &id).await.unwrap();
            cache
                .append(
                    &user,
                    &id,
                    vec![msg(Role::User, &format!("{i} {}", "x".repeat(1000)))],
                )
                .await
                .unwrap();
            ids.push(id);
        }

        assert!(
            cache.lock().bytes <= 8 * 1024,
            "{} bytes",
            cache.lock().bytes
        );
        let first = cache.load(&user, &ids[0]).await.unwrap();
        assert!(texts(&first)[0].starts_with("0 xxx"));
        let (_, misses) = cache.stats();
        assert_eq!(
            misses, 1,
            "the oldest conversation should have been evicted"
        );
    }
}
