//! Talking to a running server as a browser does: a [`Browser`] is one cookie jar (so one
//! session, one user) used against any [`Endpoint`] (a server, an instance of a cluster, a
//! proxy in front of them), over HTTP and Socket.IO.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::sio::{SioClient, Transport};

/// Something HTTP and Socket.IO clients can talk to.
pub trait Endpoint {
    fn addr(&self) -> SocketAddr;

    fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }
}

impl Endpoint for SocketAddr {
    fn addr(&self) -> SocketAddr {
        *self
    }
}

/// A reqwest client as the tests use it: no proxy, no redirects, this bound per request.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client")
}

/// A response as the tests look at it.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body parsed as JSON, `Value::Null` when it is not JSON.
    pub json: Value,
}

impl ApiResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|value| value.to_str().unwrap_or_default().to_owned())
    }

    /// `body[field]` as a string, panicking with the body when it is not one.
    #[track_caller]
    pub fn str_field(&self, field: &str) -> String {
        self.json
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_else(|| {
                panic!(
                    "response has no string field {field:?}: {} {}",
                    self.status, self.text
                )
            })
            .to_owned()
    }

    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts the contract's error shape: status, `error` code and `message` sentence.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str, message: &str) {
        self.assert_status(status);
        assert_eq!(
            self.json["message"],
            json!(message),
            "unexpected message; body: {}",
            self.text
        );
        assert_eq!(
            self.json["error"],
            json!(code),
            "unexpected error code; body: {}",
            self.text
        );
    }

    /// Asserts a 200 with this `message`.
    #[track_caller]
    pub fn assert_ok_message(&self, message: &str) {
        self.assert_status(200);
        assert_eq!(self.json["message"], json!(message), "body: {}", self.text);
    }
}

/// One browser: its own cookie jar, so its own session and user id.
#[derive(Clone)]
pub struct Browser {
    http: reqwest::Client,
    jar: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Browser {
    /// An empty cookie jar; each request is bounded by `timeout`.
    pub fn new(timeout: Duration) -> Browser {
        Browser::with_client(http_client(timeout))
    }

    /// An empty cookie jar on this client (whose connections it may share with others).
    pub fn with_client(http: reqwest::Client) -> Browser {
        Browser {
            http,
            jar: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The `Cookie` header this browser sends, if it holds any cookie.
    pub fn cookie_header(&self) -> Option<String> {
        let jar = self.jar.lock().unwrap();
        (!jar.is_empty()).then(|| {
            jar.iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// The value of one cookie, if held.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(name).cloned()
    }

    /// The underlying client (requests made with it go through [`Browser::send`] to carry
    /// and keep cookies).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> ApiResponse {
        let request = match self.cookie_header() {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        };
        let response = request.send().await.expect("HTTP request to the server");
        self.store_cookies(response.headers());
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("response body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        ApiResponse {
            status,
            headers,
            text,
            json,
        }
    }

    fn store_cookies(&self, headers: &reqwest::header::HeaderMap) {
        let mut jar = self.jar.lock().unwrap();
        for value in headers.get_all("set-cookie") {
            let Ok(value) = value.to_str() else { continue };
            let mut parts = value.split(';');
            let Some((name, cookie_value)) = parts.next().and_then(|pair| pair.split_once('='))
            else {
                continue;
            };
            let expired = parts.any(|attribute| {
                let attribute = attribute.trim().to_ascii_lowercase();
                attribute == "max-age=0" || attribute.starts_with("max-age=-")
            });
            if expired || cookie_value.is_empty() {
                jar.remove(name.trim());
            } else {
                jar.insert(name.trim().to_owned(), cookie_value.trim().to_owned());
            }
        }
    }

    pub async fn get(&self, at: &impl Endpoint, path: &str) -> ApiResponse {
        self.send(self.http.get(format!("{}{path}", at.base_url())))
            .await
    }

    pub async fn delete(&self, at: &impl Endpoint, path: &str) -> ApiResponse {
        self.send(self.http.delete(format!("{}{path}", at.base_url())))
            .await
    }

    /// PATCH with a JSON body.
    pub async fn patch_json(&self, at: &impl Endpoint, path: &str, body: Value) -> ApiResponse {
        self.send(
            self.http
                .patch(format!("{}{path}", at.base_url()))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// POST without a body.
    pub async fn post(&self, at: &impl Endpoint, path: &str) -> ApiResponse {
        self.send(self.http.post(format!("{}{path}", at.base_url())))
            .await
    }

    pub async fn post_json(&self, at: &impl Endpoint, path: &str, body: Value) -> ApiResponse {
        self.post_raw(at, path, "application/json", body.to_string())
            .await
    }

    pub async fn post_raw(
        &self,
        at: &impl Endpoint,
        path: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> ApiResponse {
        self.send(
            self.http
                .post(format!("{}{path}", at.base_url()))
                .header("content-type", content_type)
                .body(body),
        )
        .await
    }

    /// `POST /upload_file` with one multipart field `file` holding these bytes.
    pub async fn upload(
        &self,
        at: &impl Endpoint,
        file_name: &str,
        bytes: impl AsRef<[u8]>,
    ) -> ApiResponse {
        let (content_type, body) = multipart(&[Part::File {
            field: "file",
            file_name,
            bytes: bytes.as_ref(),
        }]);
        self.post_raw(at, "/upload_file", &content_type, body).await
    }

    /// `POST /start_conversation`, returning the new conversation's id.
    pub async fn start_conversation(&self, at: &impl Endpoint) -> String {
        let response = self.post(at, "/start_conversation").await;
        response.assert_ok_message("New conversation started.");
        response.str_field("conversation_id")
    }

    /// `POST /add_few_shot_example` to the current conversation, asserting success.
    pub async fn add_example(
        &self,
        at: &impl Endpoint,
        user_prompt: &str,
        assistant_response: &str,
    ) {
        let response = self
            .post_json(
                at,
                "/add_few_shot_example",
                json!({"user_prompt": user_prompt, "assistant_response": assistant_response}),
            )
            .await;
        response.assert_ok_message("Few-shot example added successfully!");
    }

    /// The stored history via `GET /load_conversation/{id}` as (role, content) pairs.
    /// Note: loading makes this conversation the session's current one.
    pub async fn history(
        &self,
        at: &impl Endpoint,
        conversation_id: &str,
    ) -> Vec<(String, String)> {
        let response = self
            .get(at, &format!("/load_conversation/{conversation_id}"))
            .await;
        assert_eq!(
            response.status, 200,
            "load_conversation failed: {}",
            response.text
        );
        messages(&response.json["conversation"])
    }

    /// The `conversations` array of `GET /list_conversations`.
    pub async fn list(&self, at: &impl Endpoint) -> Vec<Value> {
        let response = self.get(at, "/list_conversations").await;
        assert_eq!(
            response.status, 200,
            "list_conversations failed: {}",
            response.text
        );
        response.json["conversations"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no conversations array: {}", response.text))
    }

    /// The ids listed by `GET /list_conversations`, in order.
    pub async fn listed_ids(&self, at: &impl Endpoint) -> Vec<String> {
        self.list(at)
            .await
            .iter()
            .map(|entry| {
                entry["conversation_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// A WebSocket Socket.IO connection to `at` carrying this browser's cookie (and no
    /// Origin header).
    pub async fn socket(&self, at: &impl Endpoint) -> SioClient {
        self.socket_with(at, Transport::WebSocket, None).await
    }

    /// A Socket.IO connection to `at` over `transport`, with this browser's cookie and this
    /// `Origin`.
    pub async fn socket_with(
        &self,
        at: &impl Endpoint,
        transport: Transport,
        origin: Option<&str>,
    ) -> SioClient {
        SioClient::connect_with(
            at.addr(),
            transport,
            self.cookie_header().as_deref(),
            origin,
        )
        .await
        .unwrap_or_else(|error| panic!("socket connection to {} refused: {error}", at.addr()))
    }
}

/// `[{role, content}]` as (role, content) pairs.
pub fn messages(value: &Value) -> Vec<(String, String)> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected an array of messages, got {value}"))
        .iter()
        .map(|message| {
            (
                message["role"].as_str().unwrap_or_default().to_owned(),
                message["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// A (role, content) pair, for comparing histories.
pub fn msg(role: &str, content: &str) -> (String, String) {
    (role.to_owned(), content.to_owned())
}

/// One part of a `multipart/form-data` body.
pub enum Part<'a> {
    File {
        field: &'a str,
        file_name: &'a str,
        bytes: &'a [u8],
    },
    Text {
        field: &'a str,
        value: &'a str,
    },
}

/// A `multipart/form-data` body: (content type with boundary, bytes).
pub fn multipart(parts: &[Part<'_>]) -> (String, Vec<u8>) {
    let boundary = format!("----llmchattest{}", uuid::Uuid::new_v4().simple());
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match part {
            Part::File {
                field,
                file_name,
                bytes,
            } => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
            }
            Part::Text { field, value } => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{field}\"\r\n\r\n").as_bytes(),
                );
                body.extend_from_slice(value.as_bytes());
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
