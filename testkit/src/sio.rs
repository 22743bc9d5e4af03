//! A Socket.IO v4 client (Engine.IO v4) on two levels.
//!
//! - Frames, for the bench's hot loops: [`connect`] gives the raw WebSocket after the
//!   handshake; [`classify`] sorts a frame by its prefix and [`field_u64`] reads a number out
//!   of it, without parsing JSON.
//! - [`SioClient`], for the tests: over WebSocket or HTTP long-polling only ([`Transport`]),
//!   with a `Cookie` and an `Origin` header; it emits events (optionally with an ack) and
//!   awaits events in order under timeouts. Pings are answered in the background. Every
//!   received [`Event`] carries the moment it arrived, for latency figures.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bound on the Socket.IO part of [`connect`] (after the WebSocket upgrade).
const FRAME_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on all of [`SioClient::connect`].
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Engine.IO v4 packet separator in a polling payload.
const RECORD_SEPARATOR: char = '\u{1e}';

// ------------------------------------------------------------------ frames

pub type Ws = WebSocketStream<TcpStream>;

/// What one incoming frame is, for a read loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Engine.IO ping (`2`): answer with a pong.
    Ping,
    /// A Socket.IO event on `/` (`42["name",...]`): the name and the whole text.
    Event(&'a str, &'a str),
    /// Anything else (pong, noop, connect, ack, ...).
    Other,
    /// Engine.IO close or Socket.IO disconnect.
    Close,
}

pub fn classify(text: &str) -> Frame<'_> {
    if text == "2" {
        return Frame::Ping;
    }
    if text.starts_with('1') || text.starts_with("41") {
        return Frame::Close;
    }
    if let Some(rest) = text.strip_prefix("42[\"") {
        if let Some(end) = rest.find('"') {
            return Frame::Event(&rest[..end], text);
        }
    }
    Frame::Other
}

/// The whole number after `key` (e.g. `"index":`) in a frame.
pub fn field_u64(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `42["send_message",{"message":..,"conversation_id":..}]`
pub fn send_message_frame(message: &str, conversation_id: &str) -> String {
    let payload = json!(["send_message", {"message": message, "conversation_id": conversation_id}]);
    format!("42{payload}")
}

/// Connects to `ws://addr/socket.io/?EIO=4&transport=websocket` (from `source`, when given,
/// to spread connections over several loopback addresses), with the cookie, and completes
/// the Engine.IO open and the Socket.IO connect to `/`.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>, cookie: Option<&str>) -> Result<Ws> {
    Ok(open_websocket(addr, source, cookie, None).await?.ws)
}

/// The next text frame (binary and control frames skipped).
pub async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => bail!("connection closed: {frame:?}"),
            None => bail!("connection closed"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
        }
    }
}

/// A connected WebSocket and its two session ids.
struct Opened {
    ws: Ws,
    /// The Engine.IO session id.
    engine_sid: String,
    /// The Socket.IO session id (of the `40{"sid"}` packet).
    sid: String,
}

fn sid_of(json: &str) -> String {
    serde_json::from_str::<Value>(json).unwrap_or(Value::Null)["sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn open_websocket(
    addr: SocketAddr,
    source: Option<IpAddr>,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<Opened> {
    let headers: Vec<(&str, &str)> = [("cookie", cookie), ("origin", origin)]
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name, value)))
        .collect();
    open_websocket_with(addr, source, &headers).await
}

/// The WebSocket handshake with these request headers.
async fn open_websocket_with(
    addr: SocketAddr,
    source: Option<IpAddr>,
    headers: &[(&str, &str)],
) -> Result<Opened> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("bind {ip}"))?;
    }
    let tcp = socket.connect(addr).await.context("tcp connect")?;
    tcp.set_nodelay(true)?;
    let mut request =
        format!("ws://{addr}/socket.io/?EIO=4&transport=websocket").into_client_request()?;
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .context("websocket handshake")?;
    let handshake = async {
        // Engine.IO open packet: 0{"sid":..,"pingInterval":..}
        let open = next_text(&mut ws).await?;
        let Some(open_json) = open.strip_prefix('0') else {
            bail!("expected the Engine.IO open packet, got {open:?}");
        };
        let engine_sid = sid_of(open_json);
        ws.send(Message::text("40")).await?;
        loop {
            let text = next_text(&mut ws).await?;
            if let Some(payload) = text.strip_prefix("40") {
                return Ok((engine_sid, sid_of(payload)));
            }
            if let Some(payload) = text.strip_prefix("44") {
                bail!("namespace connect refused: {payload}");
            }
            match classify(&text) {
                Frame::Ping => ws.send(Message::text("3")).await?,
                Frame::Close => bail!("server closed the session during the handshake ({text})"),
                _ => {}
            }
        }
    };
    let (engine_sid, sid) = tokio::time::timeout(FRAME_HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow!("Socket.IO handshake timed out"))??;
    Ok(Opened {
        ws,
        engine_sid,
        sid,
    })
}

// ------------------------------------------------------------------ events

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    /// HTTP long-polling only (never upgraded), as `transports: ['polling']`.
    Polling,
}

/// One received event. It reads like its payload: `event["key"]` is `event.data["key"]`, and
/// it displays as its payload.
#[derive(Clone)]
pub struct Event {
    pub name: String,
    pub data: Value,
    pub at: Instant,
}

impl std::ops::Index<&str> for Event {
    type Output = Value;

    fn index(&self, key: &str) -> &Value {
        &self.data[key]
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.data.fmt(f)
    }
}

/// `("name", data)`, for failure messages.
impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({:?}, {:?})", self.name, self.data)
    }
}

#[derive(Debug)]
enum Incoming {
    Connected(String),
    ConnectError(String),
    Event(Event),
    Ack(u64, Value),
    Closed(String),
}

/// What one Engine.IO packet of text means for the client (`None`: nothing).
fn parse_packet(text: &str) -> Option<Incoming> {
    let at = Instant::now();
    if let Some(payload) = text.strip_prefix("40") {
        return Some(Incoming::Connected(sid_of(payload)));
    }
    if let Some(payload) = text.strip_prefix("44") {
        return Some(Incoming::ConnectError(payload.to_owned()));
    }
    if classify(text) == Frame::Close {
        return Some(Incoming::Closed(format!(
            "server disconnected the socket ({text})"
        )));
    }
    if let Some(packet) = text.strip_prefix("42") {
        // `["event", data]` after an optional ack id; a missing data is `Null`.
        let event = (|| {
            let json_start = packet.find('[')?;
            let array: Value = serde_json::from_str(&packet[json_start..]).ok()?;
            let items = array.as_array()?;
            Some((items.first()?.as_str()?.to_owned(), items.get(1).cloned()))
        })();
        let (name, data) = match event {
            Some((name, data)) => (name, data.unwrap_or(Value::Null)),
            None => ("<unparsable>".to_owned(), json!(text)),
        };
        return Some(Incoming::Event(Event { name, data, at }));
    }
    if let Some(packet) = text.strip_prefix("43") {
        let json_start = packet.find('[')?;
        let id = packet[..json_start].parse().ok()?;
        let array: Value = serde_json::from_str(&packet[json_start..]).ok()?;
        return Some(Incoming::Ack(
            id,
            array.get(0).cloned().unwrap_or(Value::Null),
        ));
    }
    None
}

/// The events of one reply as one socket saw it (sender or watcher).
#[derive(Debug, Default, Clone)]
pub struct Turn {
    /// Every reply event in arrival order.
    pub events: Vec<Event>,
    pub reply_started: Option<Value>,
    pub token_usage: Option<Value>,
    pub chunks: Vec<Event>,
    pub end: Option<Value>,
    pub error: Option<Value>,
}

/// Whether this event ends a reply.
pub fn is_end(event: &Event) -> bool {
    event.name == "response_end" || event.name == "error"
}

impl Turn {
    /// A turn from reply events in arrival order (several calls' worth may be joined).
    pub fn from_events(events: Vec<Event>) -> Turn {
        let mut turn = Turn::default();
        for event in events {
            turn.events.push(event.clone());
            match event.name.as_str() {
                "reply_started" => turn.reply_started = Some(event.data),
                "token_usage" => turn.token_usage = Some(event.data),
                "response_chunk" => turn.chunks.push(event),
                "response_end" => turn.end = Some(event.data),
                "error" => turn.error = Some(event.data),
                _ => {}
            }
        }
        turn
    }

    /// The concatenated `chunk` texts.
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .map(|chunk| chunk.data["chunk"].as_str().unwrap_or_default())
            .collect()
    }

    /// The `index` of every chunk, in arrival order.
    pub fn indexes(&self) -> Vec<i64> {
        self.chunks
            .iter()
            .map(|chunk| chunk.data["index"].as_i64().unwrap_or(-1))
            .collect()
    }

    /// The event names in order.
    pub fn names(&self) -> Vec<&str> {
        self.events
            .iter()
            .map(|event| event.name.as_str())
            .collect()
    }

    /// The `response_end` payload, panicking with the whole turn when the turn failed.
    #[track_caller]
    pub fn expect_end(&self) -> &Value {
        self.end
            .as_ref()
            .unwrap_or_else(|| panic!("turn did not end with response_end: {:?}", self.events))
    }

    /// The `error` payload, panicking with the whole turn when the turn succeeded.
    #[track_caller]
    pub fn expect_error(&self) -> &Value {
        self.error
            .as_ref()
            .unwrap_or_else(|| panic!("turn did not end with error: {:?}", self.events))
    }

    /// (name, data) pairs, for failure messages.
    pub fn summary(&self) -> Vec<(String, Value)> {
        self.events
            .iter()
            .map(|event| (event.name.clone(), event.data.clone()))
            .collect()
    }
}

/// The events of a turn on the sending socket (`reply_started` is for watchers).
const TURN_EVENTS: [&str; 4] = ["token_usage", "response_chunk", "response_end", "error"];
/// The events of a reply on any socket.
const REPLY_EVENTS: [&str; 5] = [
    "reply_started",
    "token_usage",
    "response_chunk",
    "response_end",
    "error",
];

// ------------------------------------------------------------------ client

/// One Socket.IO connection to namespace `/`.
pub struct SioClient {
    /// Packets to send; an empty one closes the transport.
    outgoing: mpsc::UnboundedSender<String>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Events received but not yet taken, in arrival order.
    buffer: VecDeque<Event>,
    acks: Vec<(u64, Value)>,
    next_ack: u64,
    closed: Option<String>,
    /// The Socket.IO session id from the `40{"sid"}` packet.
    pub sid: String,
    /// The Engine.IO session id (the `sid` query parameter of polling requests).
    pub engine_sid: String,
    pub transport: Transport,
    /// The task that sends comes first.
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for SioClient {
    fn drop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl SioClient {
    /// Connects over WebSocket to `ws://addr/socket.io/`, optionally with a `Cookie` and an
    /// `Origin` header, and completes the namespace connect. `Err` says why the server
    /// refused (the upgrade's HTTP status, or a `44` connect error).
    pub async fn connect(
        addr: SocketAddr,
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> Result<SioClient, String> {
        SioClient::connect_with(addr, Transport::WebSocket, cookie, origin).await
    }

    /// The same over this transport.
    pub async fn connect_with(
        addr: SocketAddr,
        transport: Transport,
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> Result<SioClient, String> {
        let connecting = async {
            let (outgoing, outgoing_rx) = mpsc::unbounded_channel::<String>();
            let (incoming_tx, incoming) = mpsc::unbounded_channel();
            let mut client = SioClient {
                outgoing: outgoing.clone(),
                incoming,
                buffer: VecDeque::new(),
                acks: Vec::new(),
                next_ack: 1,
                closed: None,
                sid: String::new(),
                engine_sid: String::new(),
                transport,
                tasks: Vec::new(),
            };
            match transport {
                Transport::WebSocket => {
                    let opened = open_websocket(addr, None, cookie, origin)
                        .await
                        .map_err(|error| format!("{error:#}"))?;
                    client.sid = opened.sid;
                    client.engine_sid = opened.engine_sid;
                    client.tasks = vec![tokio::spawn(websocket_task(
                        opened.ws,
                        outgoing_rx,
                        incoming_tx,
                    ))];
                    Ok(client)
                }
                Transport::Polling => {
                    let (tasks, engine_sid) =
                        polling(addr, cookie, origin, outgoing, outgoing_rx, incoming_tx).await?;
                    client.tasks = tasks;
                    client.engine_sid = engine_sid;
                    client.send_packet("40".to_owned());
                    client.sid = client.namespace_connected().await?;
                    Ok(client)
                }
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "Socket.IO handshake ({transport:?}) did not finish within {HANDSHAKE_TIMEOUT:?}"
                ))
            })
    }

    /// Connects over WebSocket with these handshake headers (an
    /// `Authorization: Bearer` token, say) and no cookie.
    pub async fn connect_with_headers(
        addr: SocketAddr,
        headers: &[(&str, &str)],
    ) -> Result<SioClient, String> {
        SioClient::connect_from_with_headers(addr, None, headers).await
    }

    /// The same from the local address `source` (another 127.0.0.0/8 address, say), when
    /// given.
    pub async fn connect_from_with_headers(
        addr: SocketAddr,
        source: Option<IpAddr>,
        headers: &[(&str, &str)],
    ) -> Result<SioClient, String> {
        let connecting = async {
            let (outgoing, outgoing_rx) = mpsc::unbounded_channel::<String>();
            let (incoming_tx, incoming) = mpsc::unbounded_channel();
            let opened = open_websocket_with(addr, source, headers)
                .await
                .map_err(|error| format!("{error:#}"))?;
            Ok(SioClient {
                outgoing,
                incoming,
                buffer: VecDeque::new(),
                acks: Vec::new(),
                next_ack: 1,
                closed: None,
                sid: opened.sid,
                engine_sid: opened.engine_sid,
                transport: Transport::WebSocket,
                tasks: vec![tokio::spawn(websocket_task(
                    opened.ws,
                    outgoing_rx,
                    incoming_tx,
                ))],
            })
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting)
            .await
            .unwrap_or_else(|_| Err("Socket.IO handshake did not finish in time".to_owned()))
    }

    /// Waits for the answer to `40`: the Socket.IO session id.
    async fn namespace_connected(&mut self) -> Result<String, String> {
        loop {
            match self.incoming.recv().await {
                Some(Incoming::Connected(sid)) => return Ok(sid),
                Some(Incoming::ConnectError(why)) => {
                    return Err(format!("namespace connect refused: {why}"))
                }
                Some(Incoming::Closed(why)) => {
                    return Err(format!("closed during the handshake: {why}"))
                }
                Some(Incoming::Event(event)) => self.buffer.push_back(event),
                Some(Incoming::Ack(..)) => {}
                None => return Err("transport ended during the handshake".to_owned()),
            }
        }
    }

    fn send_packet(&self, packet: String) {
        self.outgoing
            .send(packet)
            .expect("socket transport task is running");
    }

    /// Emits `42["event", data]`.
    pub fn emit(&self, event: &str, data: Value) {
        self.send_packet(format!("42{}", json!([event, data])));
    }

    /// Sends one raw Socket.IO packet text (e.g. `42["send_message"]` with no payload).
    pub fn emit_raw(&self, packet: &str) {
        self.send_packet(packet.to_owned());
    }

    /// Emits with an ack id and waits (bounded) for the ack's first argument.
    pub async fn emit_with_ack(&mut self, event: &str, data: Value, timeout: Duration) -> Value {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send_packet(format!("42{id}{}", json!([event, data])));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(position) = self.acks.iter().position(|(ack, _)| *ack == id) {
                return self.acks.remove(position).1;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.incoming.recv()).await {
                Ok(Some(Incoming::Ack(ack, data))) => self.acks.push((ack, data)),
                Ok(Some(Incoming::Event(received))) => self.buffer.push_back(received),
                Ok(Some(Incoming::Closed(reason))) => {
                    panic!("socket closed ({reason}) while waiting for the ack of {event:?}")
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("socket task ended while waiting for the ack of {event:?}"),
                Err(_) => panic!(
                    "no ack for {event:?} within {timeout:?}; events meanwhile: {:?}",
                    self.buffer
                ),
            }
        }
    }

    /// `send_message {message, conversation_id?}`.
    pub fn send_message(&self, message: &str, conversation_id: Option<&str>) {
        let mut payload = json!({"message": message});
        if let Some(id) = conversation_id {
            payload["conversation_id"] = json!(id);
        }
        self.emit("send_message", payload);
    }

    /// `watch_conversation {conversation_id, last_index?}` with an ack; returns the ack.
    pub async fn watch(&mut self, conversation_id: &str, last_index: Option<i64>) -> Value {
        let mut payload = json!({"conversation_id": conversation_id});
        if let Some(last_index) = last_index {
            payload["last_index"] = json!(last_index);
        }
        self.emit_with_ack("watch_conversation", payload, Duration::from_secs(10))
            .await
    }

    /// Closes the connection as a reloading browser does (Socket.IO disconnect, then the
    /// transport closes).
    pub async fn disconnect(mut self) {
        let _ = self.outgoing.send("41".to_owned());
        let _ = self.outgoing.send(String::new());
        // The first task sends (the websocket task, or the polling writer): let it finish the
        // close; the polling reader is then aborted with the client.
        let mut tasks = self.tasks.drain(..);
        if let Some(sender) = tasks.next() {
            let _ = tokio::time::timeout(Duration::from_secs(5), sender).await;
        }
        for task in tasks {
            task.abort();
        }
    }

    async fn receive(&mut self, deadline: Instant) -> Option<Event> {
        if let Some(event) = self.buffer.pop_front() {
            return Some(event);
        }
        loop {
            if let Some(reason) = &self.closed {
                panic!("socket is closed ({reason}) while waiting for an event");
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.incoming.recv()).await {
                Ok(Some(Incoming::Event(event))) => return Some(event),
                Ok(Some(Incoming::Ack(id, data))) => self.acks.push((id, data)),
                Ok(Some(Incoming::Closed(reason))) => self.closed = Some(reason),
                Ok(Some(_)) => {}
                Ok(None) => self.closed = Some("socket task ended".to_owned()),
                Err(_) => return None,
            }
        }
    }

    /// Waits until the server closes the connection; `true` when it did within `timeout`
    /// (events meanwhile are dropped).
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        if self.closed.is_some() {
            return true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.incoming.recv()).await {
                Ok(Some(Incoming::Closed(reason))) => {
                    self.closed = Some(reason);
                    return true;
                }
                Ok(Some(_)) => continue,
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<Event> {
        self.receive(Instant::now() + timeout).await
    }

    /// Waits for the first event named `name` whose data satisfies `matches`; events passed
    /// over stay queued, in order, for later calls. Panics after `timeout`.
    pub async fn wait_for_matching(
        &mut self,
        name: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Event {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        let found = loop {
            match self.receive(deadline).await {
                Some(event) if event.name == name && matches(&event.data) => break Some(event),
                Some(other) => skipped.push(other),
                None => break None,
            }
        };
        for event in skipped.iter().rev() {
            self.buffer.push_front(event.clone());
        }
        found.unwrap_or_else(|| {
            panic!("no matching {name:?} event within {timeout:?}; received meanwhile: {skipped:?}")
        })
    }

    /// Waits for the first event named `name` (others stay queued in order).
    pub async fn wait_for(&mut self, name: &str, timeout: Duration) -> Event {
        self.wait_for_matching(name, timeout, |_| true).await
    }

    /// The events named in `kinds`, in arrival order, up to and including the first one
    /// `last` accepts. Other events stay queued in order. Panics after `timeout` with what
    /// was received.
    async fn events_until(
        &mut self,
        timeout: Duration,
        kinds: &[&str],
        last: impl Fn(&Event) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        let mut skipped = Vec::new();
        loop {
            let Some(event) = self.receive(deadline).await else {
                panic!(
                    "the expected event did not come within {timeout:?}; {kinds:?} events: {events:?}; other events: {skipped:?}"
                )
            };
            if !kinds.contains(&event.name.as_str()) {
                skipped.push(event);
                continue;
            }
            let done = last(&event);
            events.push(event);
            if done {
                break;
            }
        }
        for event in skipped.into_iter().rev() {
            self.buffer.push_front(event);
        }
        events
    }

    /// Reply events (`reply_started`, `token_usage`, `response_chunk`, `response_end`,
    /// `error`) in arrival order, up to and including the first one `last` accepts. Other
    /// events stay queued in order. Panics after `timeout` with what was received.
    pub async fn reply_events_until(
        &mut self,
        timeout: Duration,
        last: impl Fn(&Event) -> bool,
    ) -> Vec<Event> {
        self.events_until(timeout, &REPLY_EVENTS, last).await
    }

    /// Reply events up to and including the chunk with this `index` (or an end or error).
    pub async fn events_until_chunk(&mut self, index: i64, timeout: Duration) -> Vec<Event> {
        self.reply_events_until(timeout, |event| {
            is_end(event) || (event.name == "response_chunk" && event.data["index"] == index)
        })
        .await
    }

    /// Gathers one reply as any socket sees it, up to `response_end` or `error`.
    pub async fn collect_reply(&mut self, timeout: Duration) -> Turn {
        Turn::from_events(self.reply_events_until(timeout, is_end).await)
    }

    /// Gathers one turn as the sending socket sees it: `token_usage`, `response_chunk`s,
    /// until `response_end` or `error`. Other events (like `reply_started` or
    /// `conversation_updated`) stay queued in order. Panics after `timeout` with what was
    /// received.
    pub async fn collect_turn(&mut self, timeout: Duration) -> Turn {
        Turn::from_events(self.events_until(timeout, &TURN_EVENTS, is_end).await)
    }

    /// Every event that arrives within `window`: only for asserting on what a socket got
    /// after an awaited point, never to order events.
    pub async fn drain(&mut self, window: Duration) -> Vec<Event> {
        let deadline = Instant::now() + window;
        let mut events = Vec::new();
        while let Some(event) = self.receive(deadline).await {
            events.push(event);
        }
        events
    }
}

// --------------------------------------------------------------- transports

/// Owns a connected WebSocket: answers pings, forwards what it receives, sends what it is
/// given (an empty packet closes the connection).
async fn websocket_task(
    mut ws: Ws,
    mut outgoing_rx: mpsc::UnboundedReceiver<String>,
    incoming_tx: mpsc::UnboundedSender<Incoming>,
) {
    let closed = |why: String| {
        let _ = incoming_tx.send(Incoming::Closed(why));
    };
    loop {
        tokio::select! {
            frame = ws.next() => {
                let text = match frame {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => break closed(format!("websocket closed: {frame:?}")),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => break closed(format!("websocket error: {error}")),
                    None => break closed("websocket ended".to_owned()),
                };
                if classify(&text) == Frame::Ping {
                    if ws.send(Message::text("3")).await.is_err() {
                        break closed("cannot answer a ping".to_owned());
                    }
                } else if let Some(incoming) = parse_packet(&text) {
                    let is_close = matches!(incoming, Incoming::Closed(_));
                    let _ = incoming_tx.send(incoming);
                    if is_close {
                        break;
                    }
                }
            }
            packet = outgoing_rx.recv() => match packet {
                Some(packet) if !packet.is_empty() => {
                    if ws.send(Message::text(packet)).await.is_err() {
                        break closed("cannot send".to_owned());
                    }
                }
                _ => {
                    let _ = ws.close(None).await;
                    // Wait (bounded) for the server's close frame.
                    let _ = tokio::time::timeout(Duration::from_secs(2), async {
                        while let Some(Ok(_)) = ws.next().await {}
                    })
                    .await;
                    break;
                }
            },
        }
    }
}

/// HTTP long-polling: the handshake, then a reader (one long-poll GET at a time) and a writer
/// (one POST at a time) task; returns them (writer first) and the Engine.IO session id.
async fn polling(
    addr: SocketAddr,
    cookie: Option<&str>,
    origin: Option<&str>,
    pong: mpsc::UnboundedSender<String>,
    mut outgoing_rx: mpsc::UnboundedReceiver<String>,
    incoming_tx: mpsc::UnboundedSender<Incoming>,
) -> Result<(Vec<JoinHandle<()>>, String), String> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in [("cookie", cookie), ("origin", origin)] {
        if let Some(value) = value {
            headers.insert(
                name,
                reqwest::header::HeaderValue::from_str(value).map_err(|e| e.to_string())?,
            );
        }
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .default_headers(headers)
        .build()
        .map_err(|e| e.to_string())?;
    let base = format!("http://{addr}/socket.io/?EIO=4&transport=polling");
    let response = http
        .get(&base)
        .timeout(HANDSHAKE_TIMEOUT)
        .send()
        .await
        .map_err(|error| format!("polling handshake failed: {error}"))?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("polling handshake refused: {status} {body}"));
    }
    let open = body.split(RECORD_SEPARATOR).next().unwrap_or_default();
    let Some(open_json) = open.strip_prefix('0') else {
        return Err(format!("expected an Engine.IO open packet, got {body:?}"));
    };
    let open: Value = serde_json::from_str(open_json).map_err(|e| e.to_string())?;
    let sid = open["sid"]
        .as_str()
        .ok_or_else(|| format!("no sid in {open}"))?
        .to_owned();
    let ping_interval = open["pingInterval"].as_u64().unwrap_or(25_000);
    let ping_timeout = open["pingTimeout"].as_u64().unwrap_or(20_000);
    let url = format!("{base}&sid={sid}");

    // Reader: one long-poll GET at a time, each answer split into packets.
    let reader = {
        let http = http.clone();
        let url = url.clone();
        let incoming_tx = incoming_tx.clone();
        let poll_timeout = Duration::from_millis(ping_interval + ping_timeout + 5_000);
        tokio::spawn(async move {
            loop {
                let body = match http.get(&url).timeout(poll_timeout).send().await {
                    Ok(response) => ok_text(response).await,
                    Err(error) => Err(error.to_string()),
                };
                let body = match body {
                    Ok(body) => body,
                    Err(why) => {
                        let _ = incoming_tx.send(Incoming::Closed(format!("poll failed: {why}")));
                        break;
                    }
                };
                let mut closed = false;
                for packet in body.split(RECORD_SEPARATOR) {
                    if classify(packet) == Frame::Ping {
                        let _ = pong.send("3".to_owned());
                    } else if let Some(incoming) = parse_packet(packet) {
                        closed |= matches!(incoming, Incoming::Closed(_));
                        let _ = incoming_tx.send(incoming);
                    }
                }
                if closed {
                    break;
                }
            }
        })
    };
    // Writer: one POST at a time (Engine.IO refuses overlapping POSTs), batching whatever is
    // queued.
    let writer = tokio::spawn(async move {
        while let Some(first) = outgoing_rx.recv().await {
            let mut packets = vec![first];
            while let Ok(more) = outgoing_rx.try_recv() {
                packets.push(more);
            }
            let closing = packets.iter().any(String::is_empty);
            packets.retain(|packet| !packet.is_empty());
            if closing {
                packets.push("1".to_owned()); // Engine.IO close
            }
            let sent = http
                .post(&url)
                .header("content-type", "text/plain;charset=UTF-8")
                .timeout(Duration::from_secs(10))
                .body(packets.join(&RECORD_SEPARATOR.to_string()))
                .send()
                .await;
            let sent = match sent {
                Ok(response) => ok_text(response).await.map(drop),
                Err(error) => Err(error.to_string()),
            };
            if let Err(why) = sent {
                let _ = incoming_tx.send(Incoming::Closed(format!("POST failed: {why}")));
                break;
            }
            if closing {
                break;
            }
        }
    });
    Ok((vec![writer, reader], sid))
}

/// The body of a successful response; else the status and body as the error.
async fn ok_text(response: reqwest::Response) -> Result<String, String> {
    let status = response.status();
    let body = response.text().await;
    match body {
        Ok(body) if status.is_success() => Ok(body),
        Ok(body) => Err(format!("refused: {status} {body}")),
        Err(error) => Err(format!("body failed: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_frames() {
        assert_eq!(classify("2"), Frame::Ping);
        assert_eq!(classify("41"), Frame::Close);
        let text = r#"42["response_chunk",{"chunk":"a","index":0}]"#;
        assert_eq!(classify(text), Frame::Event("response_chunk", text));
        assert_eq!(classify("40{\"sid\":\"x\"}"), Frame::Other);
    }

    #[test]
    fn parses_events_acks_and_closes() {
        let Some(Incoming::Event(event)) = parse_packet(r#"42["response_chunk",{"index":3}]"#)
        else {
            panic!("not an event")
        };
        assert_eq!(
            (event.name.as_str(), &event["index"]),
            ("response_chunk", &json!(3))
        );
        let Some(Incoming::Ack(1, ack)) = parse_packet(r#"431[{"ok":true}]"#) else {
            panic!("not an ack")
        };
        assert_eq!(ack, json!({"ok": true}));
        assert!(matches!(parse_packet("41"), Some(Incoming::Closed(_))));
        assert!(matches!(parse_packet("1"), Some(Incoming::Closed(_))));
    }
}
