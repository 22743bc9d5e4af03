//! A small Socket.IO v4 client (Engine.IO v4) for the cluster tests, over either transport:
//! WebSocket (tokio-tungstenite) or HTTP long-polling only (reqwest), so the nginx tests can
//! prove both. It connects with a `Cookie` (and optionally an `Origin`) header, emits events
//! (optionally with an ack), and awaits events in order under timeouts. Pings are answered in
//! the background. Every received event carries the moment it arrived, for latency figures.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Engine.IO v4 packet separator in a polling payload.
const RECORD_SEPARATOR: char = '\u{1e}';

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    /// HTTP long-polling only (never upgraded), as `transports: ['polling']`.
    Polling,
}

/// One received event.
#[derive(Clone, Debug)]
pub struct Event {
    pub name: String,
    pub data: Value,
    pub at: Instant,
}

#[derive(Debug)]
enum Incoming {
    Connected(String),
    ConnectError(String),
    Event(Event),
    Ack(u64, Value),
    Closed(String),
}

/// What to do with one Engine.IO packet of text.
fn parse_packet(text: &str) -> Option<Incoming> {
    let at = Instant::now();
    if let Some(payload) = text.strip_prefix("40") {
        let payload: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        return Some(Incoming::Connected(
            payload["sid"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    if let Some(payload) = text.strip_prefix("44") {
        return Some(Incoming::ConnectError(payload.to_owned()));
    }
    if text.starts_with("41") || text == "1" {
        return Some(Incoming::Closed(format!(
            "server disconnected the socket ({text})"
        )));
    }
    if let Some(packet) = text.strip_prefix("42") {
        let json_start = packet.find('[')?;
        let array: Value = serde_json::from_str(&packet[json_start..]).ok()?;
        let items = array.as_array()?;
        return Some(Incoming::Event(Event {
            name: items.first()?.as_str()?.to_owned(),
            data: items.get(1).cloned().unwrap_or(Value::Null),
            at,
        }));
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

    pub fn names(&self) -> Vec<&str> {
        self.events
            .iter()
            .map(|event| event.name.as_str())
            .collect()
    }

    #[track_caller]
    pub fn expect_end(&self) -> &Value {
        self.end
            .as_ref()
            .unwrap_or_else(|| panic!("reply did not end with response_end: {:?}", self.summary()))
    }

    #[track_caller]
    pub fn expect_error(&self) -> &Value {
        self.error
            .as_ref()
            .unwrap_or_else(|| panic!("reply did not end with error: {:?}", self.summary()))
    }

    /// (name, data) pairs, for failure messages.
    pub fn summary(&self) -> Vec<(String, Value)> {
        self.events
            .iter()
            .map(|event| (event.name.clone(), event.data.clone()))
            .collect()
    }
}

const REPLY_EVENTS: [&str; 5] = [
    "reply_started",
    "token_usage",
    "response_chunk",
    "response_end",
    "error",
];

/// One Socket.IO connection to namespace `/`.
pub struct SioClient {
    outgoing: mpsc::UnboundedSender<String>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    buffer: VecDeque<Event>,
    acks: Vec<(u64, Value)>,
    next_ack: u64,
    closed: Option<String>,
    pub sid: String,
    /// The Engine.IO session id (the `sid` query parameter of polling requests).
    pub engine_sid: String,
    pub transport: Transport,
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
    /// Connects to `http://addr/socket.io/` with this transport, `Cookie` and `Origin`, and
    /// completes the namespace connect. `Err` says why it was refused.
    pub async fn connect(
        addr: SocketAddr,
        transport: Transport,
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> Result<SioClient, String> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let (outgoing, outgoing_rx) = mpsc::unbounded_channel::<String>();
            let (incoming_tx, incoming) = mpsc::unbounded_channel();
            let (tasks, engine_sid) = match transport {
                Transport::WebSocket => {
                    websocket(addr, cookie, origin, outgoing_rx, incoming_tx).await?
                }
                Transport::Polling => {
                    polling(
                        addr,
                        cookie,
                        origin,
                        outgoing.clone(),
                        outgoing_rx,
                        incoming_tx,
                    )
                    .await?
                }
            };
            let mut client = SioClient {
                outgoing,
                incoming,
                buffer: VecDeque::new(),
                acks: Vec::new(),
                next_ack: 1,
                closed: None,
                sid: String::new(),
                engine_sid,
                transport,
                tasks,
            };
            client.send_packet("40".to_owned());
            loop {
                match client.incoming.recv().await {
                    Some(Incoming::Connected(sid)) => {
                        client.sid = sid;
                        return Ok(client);
                    }
                    Some(Incoming::ConnectError(why)) => {
                        return Err(format!("namespace connect refused: {why}"))
                    }
                    Some(Incoming::Closed(why)) => {
                        return Err(format!("closed during the handshake: {why}"))
                    }
                    Some(Incoming::Event(event)) => client.buffer.push_back(event),
                    Some(Incoming::Ack(..)) => {}
                    None => return Err("transport ended during the handshake".to_owned()),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "Socket.IO handshake ({transport:?}) did not finish within {HANDSHAKE_TIMEOUT:?}"
            ))
        })
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

    /// `send_message {message, conversation_id}`.
    pub fn send_message(&self, message: &str, conversation_id: &str) {
        self.emit(
            "send_message",
            json!({"message": message, "conversation_id": conversation_id}),
        );
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
        let _ = self.outgoing.send(String::new()); // transport close marker
                                                   // The first task sends (the websocket task, or the polling writer): let it finish
                                                   // the close; the polling reader is then aborted with the client.
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

    /// Waits for the first event named `name` whose data satisfies `matches`; events passed
    /// over stay queued in order. Panics after `timeout`.
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
            let seen: Vec<_> = skipped.iter().map(|e| (&e.name, &e.data)).collect();
            panic!("no matching {name:?} event within {timeout:?}; received meanwhile: {seen:?}")
        })
    }

    /// Reply events (`reply_started`, `token_usage`, `response_chunk`, `response_end`,
    /// `error`) in arrival order, up to and including the first one `last` accepts. Other
    /// events stay queued in order. Panics after `timeout` with what was received.
    pub async fn reply_events_until(
        &mut self,
        timeout: Duration,
        last: impl Fn(&Event) -> bool,
    ) -> Vec<Event> {
        let deadline = Instant::now() + timeout;
        let mut events = Vec::new();
        let mut skipped = Vec::new();
        loop {
            let Some(event) = self.receive(deadline).await else {
                panic!(
                    "expected reply event did not come within {timeout:?}; reply events: {:?}; other events: {:?}",
                    events.iter().map(|e: &Event| (&e.name, &e.data)).collect::<Vec<_>>(),
                    skipped.iter().map(|e: &Event| (&e.name, &e.data)).collect::<Vec<_>>()
                )
            };
            if !REPLY_EVENTS.contains(&event.name.as_str()) {
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

    /// Reply events up to and including the chunk with this `index` (or an end or error).
    pub async fn events_until_chunk(&mut self, index: i64, timeout: Duration) -> Vec<Event> {
        self.reply_events_until(timeout, |event| {
            is_end(event) || (event.name == "response_chunk" && event.data["index"] == index)
        })
        .await
    }

    /// Gathers one reply up to `response_end` or `error`.
    pub async fn collect_reply(&mut self, timeout: Duration) -> Turn {
        Turn::from_events(self.reply_events_until(timeout, is_end).await)
    }

    /// Every event that arrives within `window`: only for asserting that nothing more came
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

async fn websocket(
    addr: SocketAddr,
    cookie: Option<&str>,
    origin: Option<&str>,
    mut outgoing_rx: mpsc::UnboundedReceiver<String>,
    incoming_tx: mpsc::UnboundedSender<Incoming>,
) -> Result<(Vec<JoinHandle<()>>, String), String> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    for (name, value) in [("cookie", cookie), ("origin", origin)] {
        if let Some(value) = value {
            request.headers_mut().insert(
                name,
                HeaderValue::from_str(value).map_err(|e| e.to_string())?,
            );
        }
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|error| format!("websocket upgrade refused: {error}"))?;
    // Engine.IO open packet: 0{"sid":..,"pingInterval":..}
    let open = loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => break text.to_string(),
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "websocket closed before the open packet: {frame:?}"
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(format!("websocket error: {error}")),
            None => return Err("websocket ended before the open packet".to_owned()),
        }
    };
    let Some(open_json) = open.strip_prefix('0') else {
        return Err(format!("expected an Engine.IO open packet, got {open:?}"));
    };
    let engine_sid = serde_json::from_str::<Value>(open_json).unwrap_or(Value::Null)["sid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                frame = ws.next() => {
                    let text = match frame {
                        Some(Ok(Message::Text(text))) => text.to_string(),
                        Some(Ok(Message::Close(frame))) => {
                            let _ = incoming_tx.send(Incoming::Closed(format!("websocket closed: {frame:?}")));
                            break;
                        }
                        Some(Ok(_)) => continue,
                        Some(Err(error)) => {
                            let _ = incoming_tx.send(Incoming::Closed(format!("websocket error: {error}")));
                            break;
                        }
                        None => {
                            let _ = incoming_tx.send(Incoming::Closed("websocket ended".to_owned()));
                            break;
                        }
                    };
                    if text == "2" {
                        if ws.send(Message::text("3")).await.is_err() {
                            let _ = incoming_tx.send(Incoming::Closed("cannot answer a ping".to_owned()));
                            break;
                        }
                    } else if let Some(incoming) = parse_packet(&text) {
                        let closed = matches!(incoming, Incoming::Closed(_));
                        let _ = incoming_tx.send(incoming);
                        if closed { break; }
                    }
                }
                packet = outgoing_rx.recv() => {
                    match packet {
                        Some(packet) if !packet.is_empty() => {
                            if ws.send(Message::text(packet)).await.is_err() {
                                let _ = incoming_tx.send(Incoming::Closed("cannot send".to_owned()));
                                break;
                            }
                        }
                        _ => {
                            let _ = ws.close(None).await;
                            // Wait (bounded) for the server's close frame.
                            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                while let Some(Ok(_)) = ws.next().await {}
                            }).await;
                            break;
                        }
                    }
                }
            }
        }
    });
    Ok((vec![task], engine_sid))
}

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
    let open = body
        .split(RECORD_SEPARATOR)
        .next()
        .unwrap_or_default()
        .to_owned();
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
                let result = http.get(&url).timeout(poll_timeout).send().await;
                let body = match result {
                    Ok(response) if response.status().is_success() => match response.text().await {
                        Ok(body) => body,
                        Err(error) => {
                            let _ = incoming_tx
                                .send(Incoming::Closed(format!("poll body failed: {error}")));
                            break;
                        }
                    },
                    Ok(response) => {
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        let _ = incoming_tx
                            .send(Incoming::Closed(format!("poll refused: {status} {body}")));
                        break;
                    }
                    Err(error) => {
                        let _ = incoming_tx.send(Incoming::Closed(format!("poll failed: {error}")));
                        break;
                    }
                };
                let mut closed = false;
                for packet in body.split(RECORD_SEPARATOR) {
                    if packet == "2" {
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
            let mut packets: Vec<String> = packets.into_iter().filter(|p| !p.is_empty()).collect();
            if closing {
                packets.push("1".to_owned()); // Engine.IO close
            }
            if packets.is_empty() {
                break;
            }
            let result = http
                .post(&url)
                .header("content-type", "text/plain;charset=UTF-8")
                .timeout(Duration::from_secs(10))
                .body(packets.join(&RECORD_SEPARATOR.to_string()))
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => {
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    let _ = incoming_tx
                        .send(Incoming::Closed(format!("POST refused: {status} {body}")));
                    break;
                }
                Err(error) => {
                    let _ = incoming_tx.send(Incoming::Closed(format!("POST failed: {error}")));
                    break;
                }
            }
            if closing {
                break;
            }
        }
    });
    Ok((vec![writer, reader], sid))
}
