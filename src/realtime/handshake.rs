//! What a socket keeps of its handshake request.
//!
//! socketioxide keeps the `Parts` of the request that opened a socket for
//! the socket's whole life. As they arrive here they hold much more than
//! the socket reads: the parsed cookie jar and the request id (as
//! extensions), every header, and header values and a URI that are slices
//! of the connection's read buffer, so they keep that whole buffer
//! allocated. For each Socket.IO request, [`slim_handshake`] rebuilds the
//! parts from owned copies of only what engineioxide, socketioxide and this
//! module read afterwards.
//!
//! It runs inside the session and request-id layers (they have already
//! read the cookie and the id) and just outside socketioxide's layer.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::Response;
use tower_sessions::Session;

/// Where socketioxide serves (its default path; engineioxide takes the path
/// itself and everything under it).
const SOCKET_PATH: &str = "/socket.io";

/// The headers read after this layer: the websocket upgrade (engineioxide
/// and hyper), the long-polling payload's type, the origin check, an access
/// token, and the client's address behind a trusted proxy.
static KEPT_HEADERS: [HeaderName; 12] = [
    header::HOST,
    header::ORIGIN,
    header::UPGRADE,
    header::CONNECTION,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::CONTENT_TYPE,
    header::AUTHORIZATION,
    header::FORWARDED,
    HeaderName::from_static("x-forwarded-for"),
];

/// The headers to keep besides [`KEPT_HEADERS`]: the trusted proxy's
/// identity header (`AUTH_MODE=proxy`), if any.
#[derive(Clone, Default)]
pub struct HandshakeHeaders {
    pub proxy_identity: Option<HeaderName>,
}

/// Middleware: a Socket.IO request goes on with [`slim_parts`] of itself;
/// any other request as it is.
pub async fn slim_handshake(
    State(kept): State<HandshakeHeaders>,
    request: Request,
    next: Next,
) -> Response {
    let socket_io = request
        .uri()
        .path()
        .strip_prefix(SOCKET_PATH)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    if !socket_io {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let parts = slim_parts(parts, kept.proxy_identity.as_ref());
    next.run(Request::from_parts(parts, body)).await
}

/// The method, an owned copy of the URI, the version, owned copies of the
/// kept headers (and of `proxy_identity`), and the extensions the socket
/// uses: hyper's upgrade handle, the peer address and the session.
pub fn slim_parts(parts: Parts, proxy_identity: Option<&HeaderName>) -> Parts {
    let Parts {
        method,
        uri,
        version,
        headers: all,
        mut extensions,
        ..
    } = parts;
    let extra = proxy_identity.filter(|name| !KEPT_HEADERS.contains(name));
    let names = KEPT_HEADERS.iter().chain(extra);
    // Sized for the names present: a map's entries are about 100 bytes each.
    let present = names.clone().filter(|name| all.contains_key(*name)).count();
    let mut headers = HeaderMap::with_capacity(present);
    for name in names {
        for value in all.get_all(name) {
            if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
                copy.set_sensitive(value.is_sensitive());
                headers.append(name.clone(), copy);
            }
        }
    }
    let mut kept = Extensions::new();
    if let Some(upgrade) = extensions.remove::<hyper::upgrade::OnUpgrade>() {
        kept.insert(upgrade);
    }
    if let Some(peer) = extensions.remove::<ConnectInfo<SocketAddr>>() {
        kept.insert(peer);
    }
    if let Some(session) = extensions.remove::<Session>() {
        kept.insert(session);
    }
    // `Uri::try_from(String)` takes the string's own allocation.
    let uri = Uri::try_from(uri.to_string()).unwrap_or(uri);
    let (mut slim, ()) = axum::http::Request::new(()).into_parts();
    slim.method = method;
    slim.uri = uri;
    slim.version = version;
    slim.headers = headers;
    slim.extensions = kept;
    slim
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use bytes::Bytes;
    use tower::{service_fn, Layer, ServiceExt};
    use tower_http::request_id::{MakeRequestUuid, SetRequestIdLayer};
    use tower_sessions::{MemoryStore, SessionManagerLayer};

    use super::*;

    /// A service that keeps the parts of the last request it got.
    #[allow(clippy::type_complexity)]
    fn recording() -> (
        Arc<Mutex<Option<Parts>>>,
        impl tower::Service<
                Request,
                Response = Response,
                Error = std::convert::Infallible,
                Future = impl Send,
            > + Clone
            + Send,
    ) {
        let seen: Arc<Mutex<Option<Parts>>> = Arc::default();
        let inner = {
            let seen = seen.clone();
            service_fn(move |request: Request| {
                let seen = seen.clone();
                async move {
                    *seen.lock().unwrap() = Some(request.into_parts().0);
                    Ok::<_, std::convert::Infallible>(Response::new(Body::empty()))
                }
            })
        };
        (seen, inner)
    }

    /// A handshake as hyper hands it over: the URI and every header value a
    /// slice of one read buffer.
    fn handshake(buffer: &Bytes) -> axum::http::Request<Body> {
        let text = std::str::from_utf8(buffer).unwrap();
        let slice = |s: &str| {
            let start = text.find(s).unwrap();
            buffer.slice(start..start + s.len())
        };
        let mut request = axum::http::Request::new(Body::empty());
        *request.uri_mut() =
            Uri::from_maybe_shared(slice("/socket.io/?EIO=4&transport=websocket")).unwrap();
        let headers = [
            ("host", "chat.example:8080"),
            ("origin", "http://chat.example:8080"),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("authorization", "Bearer tok_abc"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-auth-email", "ada@example.com"),
            ("cookie", "id=AAAAAAAAAAAAAAAAAAAAAA; theme=dark"),
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("accept-language", "en-GB,en;q=0.9"),
            ("cache-control", "no-cache"),
        ];
        for (name, value) in headers {
            let value = HeaderValue::from_maybe_shared(slice(value)).unwrap();
            request.headers_mut().append(name, value);
        }
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 2], 41000))));
        request
    }

    #[tokio::test]
    async fn a_socket_request_keeps_only_owned_copies_of_what_is_read_later() {
        let buffer = Bytes::from(
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n\
             host: chat.example:8080\r\norigin: http://chat.example:8080\r\n\
             upgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\
             authorization: Bearer tok_abc\r\nx-forwarded-for: 203.0.113.7\r\n\
             x-auth-email: ada@example.com\r\n\
             cookie: id=AAAAAAAAAAAAAAAAAAAAAA; theme=dark\r\n\
             user-agent: Mozilla/5.0 (X11; Linux x86_64)\r\n\
             accept-language: en-GB,en;q=0.9\r\ncache-control: no-cache\r\n\r\n",
        );
        let (seen, inner) = recording();
        let kept = HandshakeHeaders {
            proxy_identity: Some(HeaderName::from_static("x-auth-email")),
        };
        // The layers around it in the server: the request id, the session
        // (and its cookie jar).
        let service =
            SetRequestIdLayer::x_request_id(MakeRequestUuid)
                .layer(SessionManagerLayer::new(MemoryStore::default()).layer(
                    axum::middleware::from_fn_with_state(kept, slim_handshake).layer(inner),
                ));
        service.oneshot(handshake(&buffer)).await.unwrap();
        let parts = seen.lock().unwrap().take().unwrap();

        let mut names: Vec<&str> = parts.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "authorization",
                "connection",
                "host",
                "origin",
                "sec-websocket-key",
                "sec-websocket-version",
                "upgrade",
                "x-auth-email",
                "x-forwarded-for",
            ]
        );
        assert_eq!(
            parts.headers["sec-websocket-key"],
            "dGhlIHNhbXBsZSBub25jZQ=="
        );
        assert_eq!(parts.headers["x-auth-email"], "ada@example.com");
        assert_eq!(parts.uri, "/socket.io/?EIO=4&transport=websocket");
        // Only the peer address and the session are left of the extensions
        // (no cookie jar, no request id).
        assert_eq!(parts.extensions.len(), 2);
        assert_eq!(
            parts.extensions.get::<ConnectInfo<SocketAddr>>().unwrap().0,
            SocketAddr::from(([10, 0, 0, 2], 41000))
        );
        assert!(parts.extensions.get::<Session>().is_some());
        // Nothing points into the read buffer any more.
        let inside = |bytes: &[u8]| buffer.as_ptr_range().contains(&bytes.as_ptr());
        assert!(!inside(parts.uri.path().as_bytes()));
        for value in parts.headers.values() {
            assert!(
                !inside(value.as_bytes()),
                "{value:?} still borrows the buffer"
            );
        }
    }

    #[tokio::test]
    async fn other_requests_pass_as_they_are() {
        let buffer = Bytes::from_static(b"/api/health user-agent: probe/1.0");
        let (seen, inner) = recording();
        let mut request = axum::http::Request::new(Body::empty());
        *request.uri_mut() = Uri::from_maybe_shared(buffer.slice(0..11)).unwrap();
        request.headers_mut().insert(
            header::USER_AGENT,
            HeaderValue::from_maybe_shared(buffer.slice(24..)).unwrap(),
        );
        axum::middleware::from_fn_with_state(HandshakeHeaders::default(), slim_handshake)
            .layer(inner)
            .oneshot(request)
            .await
            .unwrap();
        let parts = seen.lock().unwrap().take().unwrap();
        assert_eq!(parts.uri, "/api/health");
        assert_eq!(parts.headers[header::USER_AGENT], "probe/1.0");
        assert_eq!(
            parts.headers[header::USER_AGENT].as_bytes().as_ptr(),
            buffer[24..].as_ptr()
        );
    }
}
