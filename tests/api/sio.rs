//! A minimal Socket.IO v4 client (Engine.IO v4, websocket transport only) over
//! tokio-tungstenite: enough to connect with a cookie, emit events, and await events in
//! order under a timeout. Pings (`2`) are answered with pongs (`3`) in the background.

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

#[derive(Debug)]
enum Incoming {
    Event(String, Value),
    Closed(String),
}

/// One Socket.IO connection to namespace `/`.
pub struct SioClient {
    outgoing: mpsc::UnboundedSender<Message>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// Events received but not yet taken, in arrival order.
    buffer: VecDeque<(String, Value)>,
    closed: Option<String>,
    /// The Socket.IO session id from the `40{"sid"}` packet.
    pub sid: String,
    task: Option<JoinHandle<()>>,
}

impl Drop for SioClient {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The events of one turn on the sending socket.
#[derive(Debug, Default, Clone)]
pub struct Turn {
    /// Every turn event (`token_usage`, `response_chunk`, `response_end`, `error`) in order.
    pub events: Vec<(String, Value)>,
    pub token_usage: Option<Value>,
    pub chunks: Vec<Value>,
    pub end: Option<Value>,
    pub error: Option<Value>,
}

impl Turn {
    /// The concatenated `chunk` texts.
    pub fn text(&self) -> String {
        self.chunks
            .iter()
            .map(|chunk| chunk["chunk"].as_str().unwrap_or_default())
            .collect()
    }

    /// The event names in order.
    pub fn names(&self) -> Vec<&str> {
        self.events.iter().map(|(name, _)| name.as_str()).collect()
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
}

const TURN_EVENTS: [&str; 4] = ["token_usage", "response_chunk", "response_end", "error"];

impl SioClient {
    /// Connects to `ws://addr/socket.io/?EIO=4&transport=websocket`, optionally with a
    /// `Cookie` and an `Origin` header, and completes the namespace connect. `Err` says why
    /// the server refused (HTTP status of the upgrade, or a `44` connect error).
    pub async fn connect(
        addr: SocketAddr,
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> Result<SioClient, String> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, Self::connect_inner(addr, cookie, origin))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "Socket.IO handshake did not finish within {HANDSHAKE_TIMEOUT:?}"
                ))
            })
    }

    async fn connect_inner(
        addr: SocketAddr,
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> Result<SioClient, String> {
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
        let mut request = url
            .into_client_request()
            .map_err(|error| error.to_string())?;
        if let Some(cookie) = cookie {
            request.headers_mut().insert(
                "cookie",
                HeaderValue::from_str(cookie).map_err(|error| error.to_string())?,
            );
        }
        if let Some(origin) = origin {
            request.headers_mut().insert(
                "origin",
                HeaderValue::from_str(origin).map_err(|error| error.to_string())?,
            );
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|error| format!("websocket upgrade refused: {error}"))?;

        // Engine.IO open packet: 0{"sid":..,"pingInterval":..}
        let open = next_text(&mut ws).await?;
        if !open.starts_with('0') {
            return Err(format!("expected an Engine.IO open packet, got {open:?}"));
        }
        ws.send(Message::text("40"))
            .await
            .map_err(|error| error.to_string())?;
        let sid = loop {
            let packet = next_text(&mut ws).await?;
            if packet == "2" {
                ws.send(Message::text("3"))
                    .await
                    .map_err(|error| error.to_string())?;
            } else if let Some(payload) = packet.strip_prefix("40") {
                let payload: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
                break payload["sid"].as_str().unwrap_or_default().to_owned();
            } else if let Some(payload) = packet.strip_prefix("44") {
                return Err(format!("namespace connect refused: {payload}"));
            } else if packet.starts_with('1') {
                return Err("server closed the Engine.IO session during the handshake".to_owned());
            } else {
                return Err(format!(
                    "unexpected packet during the handshake: {packet:?}"
                ));
            }
        };

        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel::<Message>();
        let (incoming_tx, incoming) = mpsc::unbounded_channel();
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
                                let _ = incoming_tx.send(Incoming::Closed("cannot answer ping".to_owned()));
                                break;
                            }
                        } else if let Some(packet) = text.strip_prefix("42") {
                            match parse_event(packet) {
                                Some((name, data)) => { let _ = incoming_tx.send(Incoming::Event(name, data)); }
                                None => { let _ = incoming_tx.send(Incoming::Event("<unparsable>".to_owned(), json!(text))); }
                            }
                        } else if text.starts_with("41") || text.starts_with('1') {
                            let _ = incoming_tx.send(Incoming::Closed(format!("server disconnected the socket ({text})")));
                            break;
                        }
                    }
                    message = outgoing_rx.recv() => {
                        match message {
                            Some(message) => {
                                if ws.send(message).await.is_err() {
                                    let _ = incoming_tx.send(Incoming::Closed("cannot send".to_owned()));
                                    break;
                                }
                            }
                            None => { let _ = ws.close(None).await; break; }
                        }
                    }
                }
            }
        });
        Ok(SioClient {
            outgoing,
            incoming,
            buffer: VecDeque::new(),
            closed: None,
            sid,
            task: Some(task),
        })
    }

    /// Emits `42["event", data]`.
    pub fn emit(&self, event: &str, data: Value) {
        self.emit_raw(&format!("42{}", json!([event, data])));
    }

    /// Sends one raw Socket.IO packet text (e.g. `42["send_message"]` with no payload).
    pub fn emit_raw(&self, packet: &str) {
        self.outgoing
            .send(Message::text(packet.to_owned()))
            .expect("socket task is running");
    }

    /// `send_message {message, conversation_id?}`.
    pub fn send_message(&self, message: &str, conversation_id: Option<&str>) {
        let mut payload = json!({"message": message});
        if let Some(id) = conversation_id {
            payload["conversation_id"] = json!(id);
        }
        self.emit("send_message", payload);
    }

    /// Closes the connection (the server sees a disconnect).
    pub async fn disconnect(mut self) {
        let _ = self.outgoing.send(Message::text("41"));
        let _ = self.outgoing.send(Message::Close(None));
        // The task sends the close frame, then ends when the server answers or hangs up.
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }

    async fn receive(&mut self, deadline: Instant) -> Option<(String, Value)> {
        if let Some(event) = self.buffer.pop_front() {
            return Some(event);
        }
        if let Some(reason) = &self.closed {
            panic!("socket is closed ({reason}) while waiting for an event");
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, self.incoming.recv()).await {
            Ok(Some(Incoming::Event(name, data))) => Some((name, data)),
            Ok(Some(Incoming::Closed(reason))) => {
                self.closed = Some(reason.clone());
                panic!("socket closed ({reason}) while waiting for an event");
            }
            Ok(None) => panic!("socket task ended while waiting for an event"),
            Err(_) => None,
        }
    }

    /// Waits until the server closes the connection; `true` when it did
    /// within `timeout` (events meanwhile are dropped).
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        if self.closed.is_some() {
            return true;
        }
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.incoming.recv()).await {
                Ok(Some(Incoming::Event(..))) => continue,
                Ok(Some(Incoming::Closed(reason))) => {
                    self.closed = Some(reason);
                    return true;
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The next event, or `None` after `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<(String, Value)> {
        self.receive(Instant::now() + timeout).await
    }

    /// Waits for the first event named `event` whose data satisfies `matches`; events
    /// passed over stay queued, in order, for later calls. Panics after `timeout`.
    pub async fn wait_for_matching(
        &mut self,
        event: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        let found = loop {
            match self.receive(deadline).await {
                Some((name, data)) if name == event && matches(&data) => break Some(data),
                Some(other) => skipped.push(other),
                None => break None,
            }
        };
        for event in skipped.iter().rev() {
            self.buffer.push_front(event.clone());
        }
        found.unwrap_or_else(|| {
            panic!("no {event:?} event within {timeout:?}; received meanwhile: {skipped:?}")
        })
    }

    /// Waits for the first event named `event` (others stay queued in order).
    pub async fn wait_for(&mut self, event: &str, timeout: Duration) -> Value {
        self.wait_for_matching(event, timeout, |_| true).await
    }

    /// Gathers one turn: `token_usage`, `response_chunk`s, until `response_end` or `error`.
    /// Other events (like `conversation_updated`) stay queued in order. Panics after
    /// `timeout` with what was received.
    pub async fn collect_turn(&mut self, timeout: Duration) -> Turn {
        let deadline = Instant::now() + timeout;
        let mut turn = Turn::default();
        let mut skipped = Vec::new();
        loop {
            let Some((name, data)) = self.receive(deadline).await else {
                panic!("turn did not finish within {timeout:?}; turn events: {:?}; other events: {skipped:?}", turn.events)
            };
            if !TURN_EVENTS.contains(&name.as_str()) {
                skipped.push((name, data));
                continue;
            }
            turn.events.push((name.clone(), data.clone()));
            match name.as_str() {
                "token_usage" => turn.token_usage = Some(data),
                "response_chunk" => turn.chunks.push(data),
                "response_end" => {
                    turn.end = Some(data);
                    break;
                }
                _ => {
                    turn.error = Some(data);
                    break;
                }
            }
        }
        for event in skipped.into_iter().rev() {
            self.buffer.push_front(event);
        }
        turn
    }

    /// Takes every event that arrives within `window` (for asserting on what a socket got
    /// after an awaited point; never used to order events).
    pub async fn drain(&mut self, window: Duration) -> Vec<(String, Value)> {
        let deadline = Instant::now() + window;
        let mut events = Vec::new();
        while let Some(event) = self.receive(deadline).await {
            events.push(event);
        }
        events
    }
}

async fn next_text<S>(ws: &mut S) -> Result<String, String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("websocket closed during the handshake: {frame:?}"))
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                return Err(format!("websocket error during the handshake: {error}"))
            }
            None => return Err("websocket ended during the handshake".to_owned()),
        }
    }
}

/// `["event", data]` (after an optional ack id) into (event, data); a missing data is `Null`.
fn parse_event(packet: &str) -> Option<(String, Value)> {
    let json_start = packet.find('[')?;
    let array: Value = serde_json::from_str(&packet[json_start..]).ok()?;
    let items = array.as_array()?;
    let name = items.first()?.as_str()?.to_owned();
    Some((name, items.get(1).cloned().unwrap_or(Value::Null)))
}
