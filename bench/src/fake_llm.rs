//! `chat-bench fake-llm`: testkit's fake OpenAI-compatible server as a process of its own.
//! `POST {any}/chat/completions` streams N deltas of B bytes as SSE (lean framing:
//! `data: {"choices":[{"index":0,"delta":{"content":..}}]}`), then `data: [DONE]`, with D ms
//! before each delta (D = 0: one write for the whole body). A request without
//! `"stream": true` gets one JSON body with the concatenation. It parses and keeps no
//! request, so a long prompt costs it nothing but a scan for `"stream":true`.
//!
//! Extra delays (both 0 by default): `--first-delay-ms F` once before the first
//! delta of a streamed reply (on top of D), and `--complete-delay-ms C` before a
//! non-streamed reply (the server's upload analysis and titles use those).

use std::time::Duration;

use anyhow::Result;
use testkit::fake_llm::{Behaviour, FakeLlm, Framing, Stream};

use crate::args::Args;

/// Chunk `i` of `bytes` characters: `"w{i} "` padded with letters.
pub fn chunk_text(i: usize, bytes: usize) -> String {
    let mut text = format!("w{i} ");
    while text.len() < bytes {
        text.push('x');
    }
    text.truncate(bytes.max(1));
    text
}

pub async fn run(args: &Args) -> Result<()> {
    let port = args.u64("port")? as u16;
    let chunks = args.u64_or("chunks", 20)? as usize;
    let delay_ms = args.u64_or("delay-ms", 0)?;
    let bytes = args.u64_or("chunk-bytes", 16)? as usize;
    let pieces: Vec<String> = (0..chunks).map(|i| chunk_text(i, bytes)).collect();
    let reply = Stream {
        delay: Duration::from_millis(delay_ms),
        first_delay: Duration::from_millis(args.u64_or("first-delay-ms", 0)?),
        answer_delay: Duration::from_millis(args.u64_or("complete-delay-ms", 0)?),
        ..Stream::new(&pieces, Framing::Lean)
    };
    let llm = FakeLlm::start_on(port, false).await?;
    llm.set_default(Behaviour::Prepared(reply));
    println!("fake-llm listening on http://{}", llm.addr());
    // The server runs on this runtime until the process is killed.
    std::future::pending::<()>().await;
    Ok(())
}
