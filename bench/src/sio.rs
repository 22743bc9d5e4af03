//! A small Socket.IO v4 client (Engine.IO v4, WebSocket transport only) on
//! tokio-tungstenite, kept cheap so the load generator costs little CPU per frame:
//! one task owns the socket, frames are classified by prefix, not parsed as JSON.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// What one incoming frame is, for the turn loop.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Engine.IO ping (`2`): answer with a pong.
    Ping,
    /// A Socket.IO event on `/` (`42["name",...]`): the name and the whole text.
    Event(&'a str, &'a str),
    /// Anything else (pong, noop, connect, ...).
    Other,
    /// Engine.IO close or Socket.IO disconnect.
    Close,
}

pub fn classify(text: &str) -> Frame<'_> {
    if text == "2" {
        return Frame::Ping;
    }
    if text == "1" || text == "41" {
        return Frame::Close;
    }
    if let Some(rest) = text.strip_prefix("42[\"") {
        if let Some(end) = rest.find('"') {
            return Frame::Event(&rest[..end], text);
        }
    }
    Frame::Other
}

/// Connects to `ws://addr/socket.io/?EIO=4&transport=websocket` (from `source`, when
/// given, to spread connections over several loopback addresses), with the cookie, and
/// completes the Engine.IO open and the Socket.IO connect to `/`.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>, cookie: Option<&str>) -> Result<Ws> {
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
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert("Cookie", HeaderValue::from_str(cookie)?);
    }
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .context("websocket handshake")?;
    let handshake = async {
        // Engine.IO open packet.
        let open = next_text(&mut ws).await?;
        if !open.starts_with('0') {
            bail!("expected the Engine.IO open packet, got {open:?}");
        }
        ws.send(Message::text("40")).await?;
        loop {
            let text = next_text(&mut ws).await?;
            if text.starts_with("40") {
                return Ok(());
            }
            if text.starts_with("44") {
                bail!("connect refused: {text}");
            }
            if text == "2" {
                ws.send(Message::text("3")).await?;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), handshake)
        .await
        .map_err(|_| anyhow!("Socket.IO handshake timed out"))??;
    Ok(ws)
}

/// The next text frame (binary and control frames skipped).
pub async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(err.into()),
        }
    }
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
    let payload = serde_json::json!(["send_message", {"message": message, "conversation_id": conversation_id}]);
    format!("42{payload}")
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
}
