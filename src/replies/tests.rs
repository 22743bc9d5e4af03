use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::Notify;

use super::event::Logged;
use super::log::{Envelope, Renewal, ReplyLog};
use super::memory::{MemoryLog, MemoryReplies};
use super::watcher::{Next, WatchState, Watcher};
use super::*;
use crate::events::{Offer, ServerEvent};

/// A socket's events as it took them. `room` (when set) is how many more
/// it takes before it reports a full buffer, as a slow client's socket.
#[derive(Default)]
struct Recorder(
    Mutex<Vec<(String, Value)>>,
    Mutex<Option<usize>>,
    AtomicBool,
);

impl EventSink for Recorder {
    fn offer(&self, event: &ServerEvent<'_>) -> Offer {
        if self.2.load(Ordering::SeqCst) {
            return Offer::Gone;
        }
        if let Some(room) = self.1.lock().unwrap().as_mut() {
            if *room == 0 {
                return Offer::Full;
            }
            *room -= 1;
        }
        let payload = serde_json::to_value(event).unwrap();
        self.0
            .lock()
            .unwrap()
            .push((event.name().to_string(), payload));
        Offer::Queued
    }

    fn disconnect(&self) {
        self.2.store(true, Ordering::SeqCst);
    }
}

impl Recorder {
    /// A socket that takes `room` events before its buffer is full.
    fn with_room(room: usize) -> Self {
        Self(
            Mutex::default(),
            Mutex::new(Some(room)),
            AtomicBool::new(false),
        )
    }
    /// The client read what was queued: room for `room` more.
    fn make_room(&self, room: usize) {
        *self.1.lock().unwrap() = Some(room);
    }
    fn disconnected(&self) -> bool {
        self.2.load(Ordering::SeqCst)
    }
    fn chunks(&self) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(e, _)| e == "response_chunk")
            .map(|(_, p)| p["index"].as_u64().unwrap())
            .collect()
    }
    fn names(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }
    fn reply_ids(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p["reply_id"].as_str().unwrap_or("<none>").to_string())
            .collect()
    }
}

async fn flush() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

fn chunk(index: u64) -> ReplyEvent {
    ReplyEvent::Chunk {
        index,
        chunk: format!("c{index}"),
    }
}

fn started() -> ReplyEvent {
    ReplyEvent::Started {
        message: "hi".into(),
        branch: None,
    }
}

#[tokio::test]
async fn a_resuming_watcher_gets_every_chunk_once_in_order() {
    let hub = ReplyHub::in_memory(Duration::from_secs(60));
    let (user, id) = (UserId::new(), ConversationId::new());
    let relay = hub.relay(&user, &id, Some("origin".into()));
    relay.send(started());
    for index in 0..5 {
        relay.send(chunk(index));
    }
    flush().await;

    let resumed = Arc::new(Recorder::default());
    let streaming = hub
        .watch(&user, &id, "tab", resumed.clone(), Some((2, None)))
        .await;
    for index in 5..8 {
        relay.send(chunk(index));
    }
    relay.send(ReplyEvent::End {
        stopped: false,
        chunks: 8,
    });
    flush().await;

    assert!(streaming);
    assert_eq!(resumed.chunks(), vec![3, 4, 5, 6, 7]);
    assert_eq!(
        resumed.names().last().map(String::as_str),
        Some("response_end")
    );
    assert!(!resumed.names().contains(&"reply_started".to_string()));
    assert!(resumed.reply_ids().iter().all(|r| r == relay.reply_id()));
}

#[test]
fn live_events_during_a_replay_are_held_then_filtered_so_each_chunk_comes_once() {
    let recorder = Arc::new(Recorder::default());
    let watcher = Watcher::new(
        "tab",
        recorder.clone(),
        WatchState {
            held: Some(Vec::new()),
            ..WatchState::default()
        },
    );
    let id = ConversationId::new();
    let reply: Arc<str> = Arc::from("r1");
    let logged = |event: ReplyEvent| Logged {
        reply: reply.clone(),
        origin: None,
        event,
    };
    // Chunks 3 and 4 arrive live while the log (chunks 0..=3) is read.
    assert_eq!(watcher.deliver(&id, &logged(chunk(3))), Next::Done);
    assert_eq!(watcher.deliver(&id, &logged(chunk(4))), Next::Done);
    assert!(recorder.names().is_empty(), "emitted during the replay");

    let log: Vec<Logged> = std::iter::once(started())
        .chain((0..=3).map(chunk))
        .map(logged)
        .collect();
    let resume = Resume {
        reply: None,
        last_index: 1,
    };
    assert_eq!(watcher.finish_replay(&id, &log, resume), Next::Done);
    assert_eq!(watcher.deliver(&id, &logged(chunk(5))), Next::Done);
    let end = ReplyEvent::End {
        stopped: false,
        chunks: 6,
    };
    assert_eq!(watcher.deliver(&id, &logged(end)), Next::Done);

    assert_eq!(recorder.chunks(), vec![2, 3, 4, 5]);
    assert_eq!(
        recorder.0.lock().unwrap()[0].1["chunk"],
        serde_json::json!("c2")
    );
    assert_eq!(
        recorder.names().last().map(String::as_str),
        Some("response_end")
    );
}

#[tokio::test]
async fn a_new_watcher_gets_the_whole_reply_and_the_origin_gets_nothing_from_the_hub() {
    let hub = ReplyHub::in_memory(Duration::from_secs(60));
    let (user, id) = (UserId::new(), ConversationId::new());
    let origin = Arc::new(Recorder::default());
    hub.watch(&user, &id, "origin", origin.clone(), None).await;
    let relay = hub.relay(&user, &id, Some("origin".into()));
    relay.send(started());
    relay.send(chunk(0));
    flush().await;

    let other = Arc::new(Recorder::default());
    hub.watch(&user, &id, "other", other.clone(), Some((-1, None)))
        .await;
    relay.send(chunk(1));
    relay.send(ReplyEvent::End {
        stopped: false,
        chunks: 2,
    });
    flush().await;

    assert_eq!(
        other.names(),
        [
            "reply_started",
            "response_chunk",
            "response_chunk",
            "response_end"
        ]
    );
    assert!(origin.names().is_empty());
    let stranger = Arc::new(Recorder::default());
    assert!(
        !hub.watch(&UserId::new(), &id, "x", stranger.clone(), Some((-1, None)))
            .await
    );
    assert!(stranger.names().is_empty());
}

/// The in-memory log, whose reads wait until the test lets them go on.
struct GatedLog {
    inner: Arc<MemoryLog>,
    reading: Notify,
    go_on: Notify,
}

#[async_trait]
impl ReplyLog for GatedLog {
    async fn record(&self, envelopes: &[Envelope], renewals: &[Renewal]) -> Result<(), String> {
        self.inner.record(envelopes, renewals).await
    }
    async fn read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Vec<Logged>, String> {
        self.reading.notify_one();
        self.go_on.notified().await;
        self.inner.read(user, conversation).await
    }
}

/// A resume registers its watcher, then reads the log. When the reply
/// starts between the two, its first events reach the watcher live (held)
/// and are in the log it reads: the same reply, so each comes once.
#[tokio::test]
async fn a_resume_at_the_moment_a_reply_starts_gets_its_first_chunks_once() {
    let memory = Arc::new(MemoryLog {
        replies: Mutex::new(MemoryReplies::default()),
        ttl: Duration::from_secs(60),
    });
    let gated = Arc::new(GatedLog {
        inner: memory.clone(),
        reading: Notify::new(),
        go_on: Notify::new(),
    });
    let hub = Arc::new(ReplyHub {
        memory: Some(memory),
        ..ReplyHub::new(gated.clone())
    });
    let (user, id) = (UserId::new(), ConversationId::new());
    // The previous reply, ended.
    let previous = hub.relay(&user, &id, Some("origin".into()));
    previous.send(started());
    previous.send(chunk(0));
    previous.send(ReplyEvent::End {
        stopped: false,
        chunks: 1,
    });

    let resumed = Arc::new(Recorder::default());
    let watching = {
        let (hub, user, id, resumed) = (hub.clone(), user.clone(), id.clone(), resumed.clone());
        tokio::spawn(async move {
            hub.watch(&user, &id, "tab", resumed, Some((-1, None)))
                .await
        })
    };
    gated.reading.notified().await;
    // The watcher is registered and its read is under way: a reply starts.
    let relay = hub.relay(&user, &id, Some("origin".into()));
    relay.send(started());
    relay.send(chunk(0));
    relay.send(chunk(1));
    gated.go_on.notify_one();
    assert!(watching.await.unwrap(), "the new reply is streaming");
    relay.send(chunk(2));
    relay.send(ReplyEvent::End {
        stopped: false,
        chunks: 3,
    });
    flush().await;

    assert_eq!(
        resumed.names(),
        [
            "reply_started",
            "response_chunk",
            "response_chunk",
            "response_chunk",
            "response_end"
        ],
        "{:?}",
        resumed.0.lock().unwrap()
    );
    assert_eq!(resumed.chunks(), vec![0, 1, 2]);
    assert!(resumed.reply_ids().iter().all(|r| r == relay.reply_id()));
    assert_ne!(previous.reply_id(), relay.reply_id());
}

#[tokio::test]
async fn a_resume_naming_an_older_reply_gets_the_newer_one_whole() {
    let hub = ReplyHub::in_memory(Duration::from_secs(60));
    let (user, id) = (UserId::new(), ConversationId::new());
    let relay = hub.relay(&user, &id, Some("origin".into()));
    relay.send(started());
    for index in 0..3 {
        relay.send(chunk(index));
    }

    // The tab saw chunks 0 and 1 of an earlier reply: its index is not
    // about this one.
    let older = Arc::new(Recorder::default());
    hub.watch(
        &user,
        &id,
        "old",
        older.clone(),
        Some((1, Some("0ld".into()))),
    )
    .await;
    assert_eq!(older.chunks(), vec![0, 1, 2]);
    assert_eq!(older.names()[0], "reply_started");
    // A tab that saw chunks 0 and 1 of this reply gets chunk 2 only.
    let same = Arc::new(Recorder::default());
    let id_now = relay.reply_id().to_string();
    hub.watch(&user, &id, "same", same.clone(), Some((1, Some(id_now))))
        .await;
    assert_eq!(same.names(), ["response_chunk"]);
    assert_eq!(same.chunks(), vec![2]);
}

/// Another instance's reply, as its relay logs and publishes it.
/// `envelope` as another instance publishes it (a batch of one).
fn published(envelope: &Envelope) -> String {
    super::log::publish_batch(&envelope.instance, std::slice::from_ref(envelope)).unwrap()
}

fn remote(user: &UserId, id: &ConversationId, reply: &str, event: ReplyEvent) -> Envelope {
    Envelope {
        instance: Arc::from("other-instance"),
        user: Arc::from(user.as_ref()),
        conversation: Arc::from(id.as_ref()),
        logged: Logged {
            reply: Arc::from(reply),
            origin: Some(Arc::from("sender")),
            event,
        },
    }
}

#[tokio::test]
async fn chunks_the_listener_missed_are_read_from_the_log_once_in_order() {
    let (memory, hub) = memory_hub();
    let (user, id) = (UserId::new(), ConversationId::new());
    let watcher = Arc::new(Recorder::default());
    hub.watch(&user, &id, "tab", watcher.clone(), Some((-1, None)))
        .await;
    let events: Vec<Envelope> = std::iter::once(started())
        .chain((0..6).map(chunk))
        .chain(std::iter::once(ReplyEvent::End {
            stopped: false,
            chunks: 6,
        }))
        .map(|e| remote(&user, &id, "r1", e))
        .collect();
    memory.record(&events, &[]).await.unwrap();
    // Published, but the listener lost chunks 1, 2 and 4.
    for (at, envelope) in events.iter().enumerate() {
        if ![2, 3, 5].contains(&at) {
            hub.deliver_remote(&published(envelope));
        }
    }
    flush().await;

    assert_eq!(watcher.chunks(), vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(
        watcher
            .names()
            .iter()
            .filter(|n| *n == "response_end")
            .count(),
        1
    );
    assert_eq!(
        watcher.names().last().map(String::as_str),
        Some("response_end")
    );
}

#[tokio::test]
async fn after_the_listener_lagged_every_watcher_gets_the_rest_of_its_reply_and_the_next() {
    let (memory, hub) = memory_hub();
    let (user, id) = (UserId::new(), ConversationId::new());
    let watcher = Arc::new(Recorder::default());
    hub.watch(&user, &id, "tab", watcher.clone(), Some((-1, None)))
        .await;
    let first = [started(), chunk(0), chunk(1)].map(|e| remote(&user, &id, "r1", e));
    memory.record(&first, &[]).await.unwrap();
    hub.deliver_remote(&published(&first[0]));
    hub.deliver_remote(&published(&first[1]));
    // The rest of r1, and all of r2, were lost: r1's end never comes.
    let rest = [
        remote(
            &user,
            &id,
            "r1",
            ReplyEvent::End {
                stopped: false,
                chunks: 2,
            },
        ),
        remote(&user, &id, "r2", started()),
        remote(&user, &id, "r2", chunk(0)),
    ];
    memory.record(&rest, &[]).await.unwrap();

    hub.repair_all();
    flush().await;

    // r1's end is gone with its log (replaced by r2's): r2 comes whole.
    assert_eq!(
        watcher.names(),
        [
            "reply_started",
            "response_chunk",
            "reply_started",
            "response_chunk"
        ]
    );
    assert_eq!(watcher.reply_ids(), ["r1", "r1", "r2", "r2"]);
}

#[test]
fn a_published_batch_is_one_message_that_its_own_instance_skips() {
    let (user, id) = (UserId::new(), ConversationId::new());
    let mut batch: Vec<Envelope> = [started(), chunk(0), chunk(1)]
        .into_iter()
        .map(|e| remote(&user, &id, "r1", e))
        .collect();
    // A round holds the events of several replies and conversations.
    let (someone, elsewhere) = (UserId::new(), ConversationId::new());
    batch.insert(1, remote(&someone, &elsewhere, "r2", started()));
    let raw = super::log::publish_batch("other-instance", &batch).unwrap();
    assert!(raw.starts_with("other-instance\t["), "{raw}");

    assert!(super::log::received_batch("other-instance", &raw).is_none());
    let received = super::log::received_batch("this-instance", &raw).unwrap();
    let indexes: Vec<Option<u64>> = received
        .iter()
        .map(|e| match e.logged.event {
            ReplyEvent::Chunk { index, .. } => Some(index),
            _ => None,
        })
        .collect();
    assert_eq!(indexes, vec![None, None, Some(0), Some(1)]);
    let replies: Vec<(&str, &str)> = received
        .iter()
        .map(|e| (&*e.logged.reply, &*e.conversation))
        .collect();
    assert_eq!(
        replies,
        [
            ("r1", id.as_ref()),
            ("r2", elsewhere.as_ref()),
            ("r1", id.as_ref()),
            ("r1", id.as_ref())
        ]
    );
    for malformed in ["", "no tab here", "x\t{not json", "x\t{}"] {
        assert!(super::log::received_batch("this-instance", malformed).is_none());
    }
}

#[tokio::test]
async fn a_watch_that_registers_after_its_socket_closed_leaves_no_watcher() {
    let hub = ReplyHub::in_memory(Duration::from_secs(60));
    let (user, id) = (UserId::new(), ConversationId::new());
    // The disconnect handler ran first; the watch handler of the same socket after it.
    hub.forget_socket("tab");
    let streaming = hub
        .watch(&user, &id, "tab", Arc::new(Recorder::default()), None)
        .await;
    assert!(!streaming);
    assert_eq!(hub.watcher_count(), 0);
    // Another socket still registers.
    hub.watch(&user, &id, "other", Arc::new(Recorder::default()), None)
        .await;
    assert_eq!(hub.watcher_count(), 1);
}

/// One round the writer recorded: each event as `(reply id, name)`, and
/// the replies whose leases it renewed.
#[derive(Debug, Clone, Default)]
struct Round {
    events: Vec<(String, String)>,
    renewed: Vec<String>,
}

/// The in-memory log, telling the test each round the writer records. A
/// round waits for a permit of `open` (so the test can hold one in
/// flight), and while `refuse` is set rounds fail and Redis counts as
/// disconnected.
struct RoundLog {
    inner: Arc<MemoryLog>,
    open: tokio::sync::Semaphore,
    refuse: std::sync::atomic::AtomicBool,
    /// Rounds begun (refused ones included).
    begun: std::sync::atomic::AtomicUsize,
    rounds: Mutex<Vec<Round>>,
}

impl RoundLog {
    fn new(permits: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Arc::new(MemoryLog {
                replies: Mutex::new(MemoryReplies::default()),
                ttl: Duration::from_secs(60),
            }),
            open: tokio::sync::Semaphore::new(permits),
            refuse: Default::default(),
            begun: Default::default(),
            rounds: Mutex::new(Vec::new()),
        })
    }

    fn begun(&self) -> usize {
        self.begun.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn rounds(&self) -> Vec<Round> {
        self.rounds.lock().unwrap().clone()
    }

    fn refuse(&self, refuse: bool) {
        self.refuse
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
    }

    /// Waits (at most 10 s) until `done` holds of the recorded rounds.
    async fn until(&self, what: &str, done: impl Fn(&[Round]) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done(&self.rounds()) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}; rounds: {:?}",
                self.rounds()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[async_trait]
impl ReplyLog for RoundLog {
    async fn record(&self, envelopes: &[Envelope], renewals: &[Renewal]) -> Result<(), String> {
        self.begun.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.open.acquire().await.unwrap().forget();
        if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("refused".to_string());
        }
        let events = envelopes
            .iter()
            .map(|e| {
                let name = match &e.logged.event {
                    ReplyEvent::Started { .. } => "started".to_string(),
                    ReplyEvent::Chunk { index, .. } => format!("chunk {index}"),
                    ReplyEvent::End { .. } => "end".to_string(),
                    ReplyEvent::Error { .. } => "error".to_string(),
                };
                (e.logged.reply.to_string(), name)
            })
            .collect();
        let renewed = renewals.iter().map(|r| r.reply.to_string()).collect();
        self.inner.record(envelopes, renewals).await?;
        self.rounds.lock().unwrap().push(Round { events, renewed });
        Ok(())
    }
    async fn read(
        &self,
        user: &UserId,
        conversation: &ConversationId,
    ) -> Result<Vec<Logged>, String> {
        self.inner.read(user, conversation).await
    }
    fn available(&self) -> bool {
        !self.refuse.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A hub whose relays go through the writer (the Redis mode's), over `log`,
/// renewing leases every `renew_every`.
fn writer_hub(log: Arc<RoundLog>, renew_every: Duration, patience: Duration) -> Arc<ReplyHub> {
    Arc::new(ReplyHub {
        timing: writer::Timing {
            renew_every,
            backlog_patience: patience,
            slow_socket_patience: crate::events::SLOW_SOCKET_PATIENCE,
        },
        ..ReplyHub::new(log)
    })
}

const HOUR: Duration = Duration::from_secs(3600);

/// `(reply, name)` pairs for a round's expected events.
fn named(events: &[(&str, &str)]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|(reply, name)| (reply.to_string(), name.to_string()))
        .collect()
}

/// Group commit: what every relay queued while a round was in flight is
/// logged in the next round, one round for all the replies, each reply's
/// events in order, and delivered here only once logged; a reply's last
/// event sent alone is logged at once, in a round of its own.
#[tokio::test]
async fn events_of_several_replies_queued_during_a_round_share_the_next_round_in_order() {
    let log = RoundLog::new(0);
    let hub = writer_hub(log.clone(), HOUR, HOUR);
    let user = UserId::new();
    let (first_id, second_id) = (ConversationId::new(), ConversationId::new());
    let (first_tab, second_tab) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    hub.watch(&user, &first_id, "tab1", first_tab.clone(), None)
        .await;
    hub.watch(&user, &second_id, "tab2", second_tab.clone(), None)
        .await;

    let first = hub.relay(&user, &first_id, Some("origin1".into()));
    first.send(started());
    flush().await;
    assert_eq!(log.begun(), 1, "a lone event goes at once");
    // The first round is in flight (held): the rest queue meanwhile.
    let second = hub.relay(&user, &second_id, Some("origin2".into()));
    second.send(started());
    first.send(chunk(0));
    second.send(chunk(0));
    first.send(chunk(1));
    first.send(ReplyEvent::End {
        stopped: false,
        chunks: 2,
    });
    second.send(chunk(1));
    flush().await;
    assert_eq!(
        log.begun(),
        1,
        "a second round while the first is in flight"
    );
    assert!(
        first_tab.names().is_empty(),
        "delivered before it was logged"
    );
    log.open.add_permits(1000);
    log.until("two rounds", |rounds| rounds.len() >= 2).await;
    flush().await;

    let (a, b) = (first.reply_id(), second.reply_id());
    let rounds = log.rounds();
    assert_eq!(rounds.len(), 2, "{rounds:?}");
    assert_eq!(rounds[0].events, named(&[(a, "started")]));
    assert_eq!(
        rounds[1].events,
        named(&[
            (b, "started"),
            (a, "chunk 0"),
            (b, "chunk 0"),
            (a, "chunk 1"),
            (a, "end"),
            (b, "chunk 1"),
        ])
    );
    assert_eq!(
        first_tab.names(),
        [
            "reply_started",
            "response_chunk",
            "response_chunk",
            "response_end"
        ]
    );
    assert_eq!(first_tab.chunks(), vec![0, 1]);
    assert!(first_tab.reply_ids().iter().all(|r| r == a));
    assert_eq!(second_tab.chunks(), vec![0, 1]);
    assert!(second_tab.reply_ids().iter().all(|r| r == b));

    second.send(ReplyEvent::End {
        stopped: false,
        chunks: 2,
    });
    log.until("the end in a round", |rounds| rounds.len() >= 3)
        .await;
    flush().await;
    assert_eq!(log.rounds()[2].events, named(&[(b, "end")]));
    assert_eq!(
        second_tab.names().last().map(String::as_str),
        Some("response_end")
    );
    let logged = log.read(&user, &first_id).await.unwrap();
    assert_eq!(logged.len(), 4);
    assert!(logged.iter().all(|l| *l.reply == *a));
}

/// Leases are renewed by the writer's rounds on their own rhythm (not
/// with every event), for every reply in flight here, until its last event
/// or until its relay is dropped without one.
#[tokio::test]
async fn the_writer_renews_leases_until_a_reply_ends_or_its_relay_is_gone() {
    let log = RoundLog::new(usize::MAX >> 4);
    let hub = writer_hub(log.clone(), Duration::from_millis(50), HOUR);
    let user = UserId::new();
    let relays: Vec<Relay> = (0..3)
        .map(|_| hub.relay(&user, &ConversationId::new(), None))
        .collect();
    for relay in &relays {
        relay.send(started());
    }
    let ids: Vec<String> = relays.iter().map(|r| r.reply_id().to_string()).collect();
    let renewed = |round: &Round, id: &String| round.renewed.contains(id);
    log.until("every reply renewed", |rounds| {
        rounds
            .iter()
            .any(|r| r.events.is_empty() && ids.iter().all(|id| renewed(r, id)))
    })
    .await;

    let mut relays = relays.into_iter();
    let ended = relays.next().unwrap();
    ended.send(ReplyEvent::End {
        stopped: false,
        chunks: 0,
    });
    drop(relays.next()); // its turn is gone without an end
    let streaming = relays.next().unwrap();
    log.until("the end logged", |rounds| {
        rounds
            .iter()
            .any(|r| r.events.iter().any(|(_, e)| e == "end"))
    })
    .await;
    flush().await;
    let from = log.rounds().len();
    log.until("three more renewals", |rounds| {
        rounds[from..]
            .iter()
            .filter(|r| !r.renewed.is_empty())
            .count()
            >= 3
    })
    .await;

    for round in &log.rounds()[from..] {
        assert!(round.events.is_empty(), "{round:?}");
        assert_eq!(round.renewed, [streaming.reply_id()], "{round:?}");
    }
}

/// While Redis refuses rounds, events are delivered here at once (without
/// a round trip each); once it accepts again they are logged in order,
/// before later events.
#[tokio::test]
async fn events_redis_refused_are_delivered_at_once_and_logged_in_order_when_it_is_back() {
    let log = RoundLog::new(usize::MAX >> 4);
    let hub = writer_hub(log.clone(), Duration::from_millis(50), HOUR);
    let (user, id) = (UserId::new(), ConversationId::new());
    let tab = Arc::new(Recorder::default());
    hub.watch(&user, &id, "tab", tab.clone(), None).await;
    log.refuse(true);

    let relay = hub.relay(&user, &id, Some("origin".into()));
    relay.send(started());
    relay.send(chunk(0));
    flush().await;
    let tries = log.begun();
    relay.send(chunk(1));
    flush().await;
    assert_eq!(tab.chunks(), vec![0, 1]);
    assert_eq!(log.begun(), tries, "a round tried while Redis is away");
    assert!(log.read(&user, &id).await.unwrap().is_empty());

    log.refuse(false);
    log.until("the backlog logged", |rounds| !rounds.is_empty())
        .await;
    relay.send(chunk(2));
    relay.send(ReplyEvent::End {
        stopped: false,
        chunks: 3,
    });
    log.until("the end logged", |rounds| {
        rounds
            .iter()
            .any(|r| r.events.iter().any(|(_, e)| e == "end"))
    })
    .await;
    flush().await;

    let names: Vec<String> = log
        .rounds()
        .iter()
        .flat_map(|r| r.events.iter().map(|(_, e)| e.clone()))
        .collect();
    assert_eq!(
        names,
        ["started", "chunk 0", "chunk 1", "chunk 2", "end"],
        "each event logged once, in order"
    );
    assert_eq!(log.read(&user, &id).await.unwrap().len(), 5);
    assert_eq!(tab.chunks(), vec![0, 1, 2]);
    assert_eq!(tab.names().last().map(String::as_str), Some("response_end"));
}

/// The refused events of a reply whose relay is gone are given up after
/// the backlog's patience; a later reply is logged as usual.
#[tokio::test]
async fn refused_events_of_a_finished_turn_are_given_up_after_the_patience() {
    let log = RoundLog::new(usize::MAX >> 4);
    let hub = writer_hub(
        log.clone(),
        Duration::from_millis(20),
        Duration::from_millis(100),
    );
    let (user, id) = (UserId::new(), ConversationId::new());
    log.refuse(true);
    let relay = hub.relay(&user, &id, None);
    relay.send(started());
    relay.send(ReplyEvent::End {
        stopped: false,
        chunks: 0,
    });
    drop(relay);
    tokio::time::sleep(Duration::from_millis(300)).await;

    log.refuse(false);
    let next = hub.relay(&user, &id, None);
    next.send(started());
    log.until("the next reply logged", |rounds| !rounds.is_empty())
        .await;

    assert_eq!(
        log.rounds()[0].events,
        named(&[(next.reply_id(), "started")])
    );
}

/// Waits (at most 10 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An in-memory hub whose watchers' sockets are given up after `patience`.
fn hub_with_patience(patience: Duration) -> Arc<ReplyHub> {
    let memory = Arc::new(MemoryLog {
        replies: Mutex::new(MemoryReplies::default()),
        ttl: Duration::from_secs(60),
    });
    Arc::new(ReplyHub {
        memory: Some(memory.clone()),
        timing: writer::Timing {
            slow_socket_patience: patience,
            ..writer::Timing::for_lease(Duration::from_secs(5))
        },
        ..ReplyHub::new(memory)
    })
}

/// A socket buffers a bounded number of events. A replay of a long reply,
/// and the live events that come while the socket is full, wait for room
/// and then arrive whole, each once, in order.
#[tokio::test]
async fn a_replay_longer_than_the_sockets_room_arrives_whole_once_it_has_room() {
    let hub = hub_with_patience(Duration::from_secs(30));
    let (user, id) = (UserId::new(), ConversationId::new());
    let relay = hub.relay(&user, &id, Some("origin".into()));
    relay.send(started());
    for index in 0..300 {
        relay.send(chunk(index));
    }
    flush().await;

    let tab = Arc::new(Recorder::with_room(50));
    assert!(
        hub.watch(&user, &id, "tab", tab.clone(), Some((-1, None)))
            .await
    );
    // Live events while the socket is full are held behind the replay.
    for index in 300..310 {
        relay.send(chunk(index));
    }
    relay.send(ReplyEvent::End {
        stopped: false,
        chunks: 310,
    });
    flush().await;
    assert_eq!(
        tab.names().len(),
        50,
        "the socket took what it had room for"
    );
    assert_eq!(tab.chunks(), (0..49).collect::<Vec<u64>>());

    // The client reads a little at a time.
    for _ in 0..6 {
        tab.make_room(60);
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    until("the end", || {
        tab.names().last().map(String::as_str) == Some("response_end")
    })
    .await;
    assert_eq!(tab.chunks(), (0..310).collect::<Vec<u64>>());
    assert_eq!(
        tab.names().first().map(String::as_str),
        Some("reply_started")
    );
    assert_eq!(tab.names().len(), 312);
    assert!(!tab.disconnected());
}

/// A socket that takes nothing for the patience is disconnected (its
/// client resumes from the log), and a live one goes on meanwhile.
#[tokio::test]
async fn a_watcher_whose_socket_takes_nothing_is_disconnected_and_others_go_on() {
    let hub = hub_with_patience(Duration::from_millis(300));
    let (user, id) = (UserId::new(), ConversationId::new());
    let stuck = Arc::new(Recorder::with_room(3));
    let live = Arc::new(Recorder::default());
    hub.watch(&user, &id, "stuck", stuck.clone(), None).await;
    hub.watch(&user, &id, "live", live.clone(), None).await;
    let relay = hub.relay(&user, &id, Some("origin".into()));
    relay.send(started());
    for index in 0..10 {
        relay.send(chunk(index));
    }
    relay.send(ReplyEvent::End {
        stopped: false,
        chunks: 10,
    });
    flush().await;
    assert_eq!(live.chunks(), (0..10).collect::<Vec<u64>>());
    assert_eq!(stuck.chunks(), vec![0, 1]);
    assert!(!stuck.disconnected(), "disconnected before its patience");

    until("the stuck socket to be disconnected", || {
        stuck.disconnected()
    })
    .await;
    assert_eq!(stuck.chunks(), vec![0, 1]);
    assert_eq!(
        live.names().last().map(String::as_str),
        Some("response_end")
    );
}

/// The log of `events` of reply `reply`, as another instance's turn
/// recorded them (origin socket "sender").
async fn logged_remote(
    memory: &MemoryLog,
    user: &UserId,
    id: &ConversationId,
    reply: &str,
    events: Vec<ReplyEvent>,
) -> Vec<Envelope> {
    let envelopes: Vec<Envelope> = events
        .into_iter()
        .map(|e| remote(user, id, reply, e))
        .collect();
    memory.record(&envelopes, &[]).await.unwrap();
    envelopes
}

/// Another instance's reply `reply` (start, chunks 0 and 1) is logged, and
/// only its chunk 1 reaches the listener: the rest was lost.
async fn deliver_without_its_start(
    memory: &MemoryLog,
    hub: &Arc<ReplyHub>,
    user: &UserId,
    id: &ConversationId,
    reply: &str,
) {
    let events = vec![started(), chunk(0), chunk(1)];
    let logged = logged_remote(memory, user, id, reply, events).await;
    hub.deliver_remote(&published(&logged[2]));
}

fn end(chunks: u64) -> ReplyEvent {
    ReplyEvent::End {
        stopped: false,
        chunks,
    }
}

fn memory_hub() -> (Arc<MemoryLog>, Arc<ReplyHub>) {
    let memory = Arc::new(MemoryLog {
        replies: Mutex::new(MemoryReplies::default()),
        ttl: Duration::from_secs(60),
    });
    let hub = Arc::new(ReplyHub::new(memory.clone()));
    (memory, hub)
}

/// A socket starting a turn follows the conversation from then on. The
/// last event of another instance's reply that ended before may reach it
/// after it registered (published late): that reply is older than the
/// watcher, and none of it is sent, although the log still holds it whole.
#[tokio::test]
async fn a_late_event_of_a_reply_that_ended_before_the_watch_sends_nothing() {
    let (memory, hub) = memory_hub();
    let (user, id) = (UserId::new(), ConversationId::new());
    let old = logged_remote(&memory, &user, &id, "r1", vec![started(), chunk(0), end(1)]).await;
    hub.deliver_remote(&published(&old[0]));
    hub.deliver_remote(&published(&old[1]));

    let tab = Arc::new(Recorder::default());
    hub.watch(&user, &id, "tab", tab.clone(), None).await;
    hub.deliver_remote(&published(&old[2]));
    flush().await;
    assert_eq!(tab.names(), Vec::<String>::new());

    // The next reply of another tab comes whole, and so does one after it
    // whose start the listener lost (read from the log).
    let next = logged_remote(&memory, &user, &id, "r2", vec![started(), chunk(0), end(1)]).await;
    for envelope in &next {
        hub.deliver_remote(&published(envelope));
    }
    deliver_without_its_start(&memory, &hub, &user, &id, "r3").await;
    flush().await;
    assert_eq!(tab.reply_ids(), ["r2", "r2", "r2", "r3", "r3", "r3"]);
    assert_eq!(tab.chunks(), [0, 0, 1]);
}

/// Once the socket's own reply has started (the log now holds it or a
/// later one), a reply of another instance whose start it missed is read
/// from the log as for any watcher.
#[tokio::test]
async fn after_its_own_reply_started_a_watcher_repairs_a_reply_it_missed_the_start_of() {
    let hub = ReplyHub::in_memory(Duration::from_secs(60));
    let memory = hub.memory.clone().unwrap();
    let (user, id) = (UserId::new(), ConversationId::new());
    let tab = Arc::new(Recorder::default());
    hub.watch(&user, &id, "tab", tab.clone(), None).await;
    let own = hub.relay(&user, &id, Some("tab".into()));
    own.send(started());
    own.send(chunk(0));
    own.send(end(1));
    drop(own);
    flush().await;

    deliver_without_its_start(&memory, &hub, &user, &id, "r2").await;
    flush().await;
    assert_eq!(
        tab.names(),
        ["reply_started", "response_chunk", "response_chunk"]
    );
    assert_eq!(tab.reply_ids(), ["r2", "r2", "r2"]);
}
