//! Wiring: open the store, pick the LLM, build the Socket.IO server and the
//! router with their layers, bind the listener, serve until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use socketioxide::adapter::{Adapter, LocalAdapter};
use socketioxide::SocketIo;
use socketioxide_core::adapter::DefinedAdapter;
use socketioxide_redis::drivers::fred::FredDriver;
use socketioxide_redis::{FredAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::CorsLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, DefaultOnResponse, TraceLayer};

use crate::cluster::RedisConnections;
use crate::config::Settings;
use crate::context::TokenCounter;
use crate::events::{ServerEvent, ServerRestarting};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::oidc::Providers;
use crate::ratelimit::{MemoryLimiter, RateLimiter, RedisLimiter};
use crate::realtime::{self, SocketNotifier};
use crate::replies::ReplyHub;
use crate::state::AppState;
use crate::store::accounts::ActiveAccounts;
use crate::turn::{apply_remote_stop, end_lapsed_replies, Chat, TurnRegistry};
use crate::{cluster, drain, http, sessions};

/// Largest Socket.IO message accepted (a chat message is at most
/// `MAX_MESSAGE_CHARS` characters, up to 4 bytes each, plus JSON).
fn socket_payload_limit(settings: &Settings) -> u64 {
    (settings.max_message_chars as u64 * 4 + 16 * 1024).max(64 * 1024)
}

/// Bytes each websocket reads from its connection at a time. The buffer is
/// allocated (and zeroed) per socket and stays resident while the socket is
/// idle, so engineioxide's 4 KiB default is a large part of an idle
/// connection's cost; chat traffic is a few hundred bytes a frame, and a
/// bigger frame is only read in more calls.
const WS_READ_BUFFER_SIZE: usize = 1024;

type Closer = Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, ()> + Send>;

/// A bound, ready-to-serve server.
pub struct Application {
    listener: TcpListener,
    router: Router,
    close_sockets: Closer,
    local_addr: SocketAddr,
    turns: Arc<TurnRegistry>,
    draining: Arc<AtomicBool>,
    shutdown_grace: Duration,
    http: crate::config::HttpLimits,
}

/// The Socket.IO server for adapter `A`, its namespace registered, and the
/// routes inside its layer.
async fn with_sockets<A>(
    builder: socketioxide::SocketIoBuilder<A>,
    state: AppState,
    notifier: Arc<SocketNotifier<A>>,
) -> anyhow::Result<(Router, Closer)>
where
    A: Adapter + DefinedAdapter,
    A::InitRes: Into<RegisterResult>,
{
    let payload_limit = socket_payload_limit(&state.chat.settings);
    let (socket_layer, io) = builder
        .with_state(state.clone())
        .max_payload(payload_limit)
        .ws_max_message_size(payload_limit as usize)
        .ws_max_frame_size(payload_limit as usize)
        .ws_read_buffer_size(WS_READ_BUFFER_SIZE)
        .max_buffer_size(realtime::SOCKET_BUFFER)
        .build_layer();
    realtime::register(&io).into().wait().await?;
    notifier.attach(io.clone());
    // Just outside socketioxide's layer (inside the session and request-id
    // layers): a socket keeps only what it reads of its handshake request.
    let handshake = realtime::HandshakeHeaders {
        proxy_identity: state
            .chat
            .settings
            .auth
            .proxy
            .as_ref()
            .map(|proxy| proxy.header.clone()),
    };
    let router = http::router(&state)
        .with_state(state)
        .layer(socket_layer)
        .layer(axum::middleware::from_fn_with_state(
            handshake,
            realtime::slim_handshake,
        ));
    let close: Closer = Box::new(move || {
        Box::pin(async move {
            // Each socket is told to come back after its own random delay,
            // so a deploy does not turn into a reconnect storm.
            for socket in io.sockets() {
                let delay = rand::random_range(250..5_000u64);
                let event = ServerEvent::ServerRestarting(ServerRestarting {
                    reconnect_in_ms: delay,
                });
                if let Err(err) = socket.emit(event.name(), &event) {
                    tracing::debug!(socket = %socket.id, error = %err, "could not announce the restart");
                }
            }
            io.close().await
        })
    });
    Ok((router, close))
}

/// What registering a namespace gives back, for either adapter.
pub enum RegisterResult {
    Done,
    Pending(futures_util::future::BoxFuture<'static, anyhow::Result<()>>),
}

impl RegisterResult {
    async fn wait(self) -> anyhow::Result<()> {
        match self {
            RegisterResult::Done => Ok(()),
            RegisterResult::Pending(future) => future.await,
        }
    }
}

impl From<()> for RegisterResult {
    fn from(_: ()) -> Self {
        RegisterResult::Done
    }
}

impl From<socketioxide_redis::InitRes<FredDriver>> for RegisterResult {
    fn from(init: socketioxide_redis::InitRes<FredDriver>) -> Self {
        RegisterResult::Pending(Box::pin(async move {
            init.await.map_err(|e| {
                anyhow::anyhow!("could not subscribe the Socket.IO adapter on Redis: {e}")
            })
        }))
    }
}

impl Application {
    /// Builds everything and binds; fails with a message naming what is wrong.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let metrics = Arc::new(Metrics::default());
        let redis = match &settings.redis_url {
            Some(url) => Some(
                RedisConnections::connect_buffered(
                    url,
                    &settings.redis_tls,
                    &settings.redis_prefix,
                    metrics.redis_latency.clone(),
                    settings.redis_pubsub_buffer,
                )
                .await?,
            ),
            None => None,
        };
        let sessions::Backends {
            conversations: store,
            accounts,
            tokens: access_tokens,
            presets,
            shares,
            usage,
            sessions,
        } = sessions::open(&settings, redis.as_ref()).await?;
        let oidc = match &settings.auth.oidc {
            Some(oidc) => Some(Arc::new(Providers::discover(oidc).await?)),
            None => None,
        };
        let models = Arc::new(
            crate::turn::Models::build(&settings, &metrics)
                .context("configuring the language models")?,
        );
        let llm = models.default_model().llm.clone();
        let tokens = TokenCounter::new(settings.tokenizer);
        // Load the tokenizers now, not during the first user's turn.
        tokens.count("warm up");
        for model in models.all() {
            model.tokens.count("warm up");
        }
        let turns = Arc::new(TurnRegistry::default());
        let llm_slots = (settings.llm_max_concurrency > 0).then(|| {
            Arc::new(tokio::sync::Semaphore::new(
                settings.llm_max_concurrency as usize,
            ))
        });
        let draining = Arc::new(AtomicBool::new(false));
        let (replies, limiter): (Arc<ReplyHub>, Arc<dyn RateLimiter>) = match &redis {
            Some(redis) => (
                ReplyHub::with_redis(redis, settings.reply_resume_ttl, settings.reply_lease),
                Arc::new(RedisLimiter::new(redis)),
            ),
            None => (
                ReplyHub::in_memory(settings.reply_resume_ttl),
                Arc::new(MemoryLimiter::default()),
            ),
        };
        let active_accounts = Arc::new(ActiveAccounts::new(accounts.clone()));
        let summary_backoff = Arc::new(crate::turn::SummaryBackoff::default());
        let state = |notifier: Arc<dyn Notifier>| AppState {
            chat: Chat {
                settings: settings.clone(),
                store: store.clone(),
                usage: usage.clone(),
                llm: llm.clone(),
                tokens,
                models: models.clone(),
                notifier,
                metrics: metrics.clone(),
                replies: replies.clone(),
                turns: turns.clone(),
                redis: redis.clone(),
                llm_slots: llm_slots.clone(),
                summary_backoff: summary_backoff.clone(),
            },
            limiter: limiter.clone(),
            accounts: accounts.clone(),
            access_tokens: access_tokens.clone(),
            presets: presets.clone(),
            shares: shares.clone(),
            active_accounts: active_accounts.clone(),
            sessions: sessions.clone(),
            oidc: oidc.clone(),
            draining: draining.clone(),
            asset_version: http::page::asset_version().into(),
        };

        let (router, close_sockets) = match &redis {
            None => {
                let notifier = Arc::new(SocketNotifier::<LocalAdapter>::default());
                with_sockets(SocketIo::builder(), state(notifier.clone()), notifier).await?
            }
            Some(redis) => {
                let config = RedisAdapterConfig::new().with_prefix(redis.adapter_prefix());
                let adapter =
                    RedisAdapterCtr::new_with_fred_config(redis.adapter_subscriber.clone(), config)
                        .await
                        .context("starting the Socket.IO Redis adapter (REDIS_URL)")?;
                let notifier = Arc::new(SocketNotifier::<
                    FredAdapter<socketioxide::adapter::Emitter>,
                >::default());
                let app_state = state(notifier.clone());
                // Replies whose instance died are ended by one of the others.
                tokio::spawn(end_lapsed_replies(app_state.chat.clone()));
                let built = with_sockets(
                    SocketIo::builder().with_adapter::<FredAdapter<_>>(adapter),
                    app_state,
                    notifier,
                )
                .await?;
                // The adapter's driver does not re-subscribe after Redis
                // comes back; without this the instance would go deaf.
                redis.keep_adapter_subscribed();
                let (hub, stoppable) = (replies.clone(), turns.clone());
                let (lagging, lag_count) = (replies.clone(), metrics.clone());
                let instance = replies.instance().to_string();
                tokio::spawn(cluster::listen(
                    redis.clone(),
                    cluster::Handlers {
                        reply: Box::new(move |raw| hub.deliver_remote(raw)),
                        lagged: Box::new(move || {
                            Metrics::inc(&lag_count.listener_lagged);
                            lagging.repair_all()
                        }),
                        control: Box::new(move |raw| apply_remote_stop(&stoppable, raw, &instance)),
                    },
                ));
                built
            }
        };

        let router = sessions.apply(router, &settings);
        let mut router = router
            // 5xx answers are logged where they happen (an internal error once,
            // with its cause); a failing /readyz probe during an outage must
            // not flood the log at ERROR.
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(request_span)
                    .on_response(DefaultOnResponse::new().level(tracing::Level::INFO))
                    .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
            )
            // Outside the trace layer, so its span has the id; echoed back.
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            // A bug in one handler answers 500 JSON instead of dropping the
            // connection; the server keeps serving.
            .layer(CatchPanicLayer::custom(panic_response));
        if !settings.cors_allowed_origins.is_empty() {
            router = router.layer(cors_layer(&settings.cors_allowed_origins)?);
        }

        let address = settings.bind_address();
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("could not listen on {address} (HOST/PORT)"))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            router,
            close_sockets,
            local_addr,
            turns,
            draining,
            shutdown_grace: settings.shutdown_grace,
            http: settings.http,
        })
    }

    /// The address bound (the real port when `PORT=0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then closes sockets and drains.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let (close_sockets, turns, draining, grace) = (
            self.close_sockets,
            self.turns,
            self.draining,
            self.shutdown_grace,
        );
        // Replies the drain could not see stored: the exit code says so.
        let unstored = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let unstored_at_exit = unstored.clone();
        crate::serve::serve(self.listener, self.router, self.http, async move {
            shutdown.await;
            let left = drain::drain(&turns, &draining, grace).await;
            unstored_at_exit.store(left, Ordering::SeqCst);
            // Open sockets would keep the server alive forever.
            close_sockets().await;
        })
        .await?;
        match unstored.load(Ordering::SeqCst) {
            0 => Ok(()),
            left => Err(std::io::Error::other(format!(
                "{left} replies in flight could not be stored before exiting"
            ))),
        }
    }
}

fn cors_layer(origins: &[String]) -> anyhow::Result<CorsLayer> {
    use axum::http::{HeaderValue, Method};
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
        .allow_headers([axum::http::header::CONTENT_TYPE]);
    let values = origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o)
                .with_context(|| format!("CORS_ALLOWED_ORIGINS: {o:?} is not a valid origin"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(layer.allow_origin(values).allow_credentials(true))
}

/// One span per request: method, path (never the query, which can hold a
/// user's search text) and the request id.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    crate::error::ApiError::Internal(anyhow::anyhow!("a request handler panicked")).into_response()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
