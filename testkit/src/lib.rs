//! What the tests and the bench of llm-chat-server share, written once.

pub mod fake_llm;
pub mod sio;
