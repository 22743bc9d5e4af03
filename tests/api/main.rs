//! Black-box tests of the real `llm-chat-server` binary: HTTP routes and Socket.IO events as
//! written in docs/PROTOCOL.md, against a fake OpenAI-compatible LLM on loopback.
//! One server process, temp dir and fake LLM per test, so tests run in parallel.

// The suite's toolkit (on top of the shared `testkit`): not every helper is used by every
// feature file.
#[allow(dead_code)]
mod helpers;

mod abuse;
mod accounts;
mod azure;
mod bad_input;
mod branches;
mod caching_and_compression;
mod capacity;
mod chat_turn;
mod context_window;
mod conversation_limits;
mod conversations;
mod csrf;
mod few_shot;
mod health_and_config;
mod hostile;
mod import;
mod isolation;
mod live_sync;
mod llm_failures;
mod models;
mod oidc;
mod openai_api;
mod proxy_auth;
mod quotas;
mod realtime;
mod regenerate;
mod save_history;
mod search;
mod sessions;
mod shares;
mod shutdown;
mod signout_everywhere;
mod slow_clients;
mod startup;
mod stop_generation;
mod tokens;
mod upload;
