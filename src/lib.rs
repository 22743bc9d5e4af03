//! LLM chat server: a Rust port of a Flask-SocketIO chat application.
//!
//! The binary in `main.rs` only loads [`config::Settings`] and runs
//! [`startup::Application`]; everything else lives in this library so the
//! tests can reason about the same types.

#[cfg(not(feature = "system-alloc"))]
pub mod alloc;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod context;
pub mod domain;
pub mod drain;
pub mod error;
pub mod events;
pub mod files;
pub mod http;
pub mod import;
pub mod llm;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod oidc;
pub mod ratelimit;
pub mod realtime;
pub mod redact;
pub mod replies;
pub mod serve;
pub mod sessions;
pub mod startup;
pub mod state;
pub mod store;
pub mod turn;
