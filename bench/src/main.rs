//! `chat-bench`: the benchmark harness of issue 6.
//!
//! Subcommands:
//! - `fake-llm`: a fake OpenAI-compatible streaming server (SSE).
//! - `reference`: the transport reference, a bare socketioxide server answering each
//!   `send_message` with the frames of one turn and nothing else; with `--llm-url`, the
//!   proxy reference, which streams each reply from the fake LLM and forwards its deltas.
//! - `turns`: closed-loop chat turns at C concurrent virtual users, one JSON line.
//! - `idle`: N idle connected sockets, server RSS per socket, one JSON line.
//! - `fanout`: one conversation, W sockets of the same user watching it; per-chunk
//!   delay from the sender's socket to each watcher, delivery checks, one JSON line.
//! - `cross`: the same across two instances (senders on A, watchers on B, via Redis).
//! - `upload`: wall time of one upload through `POST /upload_file`, one JSON line.

mod args;
mod fake_llm;
mod idle;
mod procstat;
mod reference;
mod soak;
mod stats;
mod turns;
mod upload;
mod watch;

use anyhow::{bail, Result};

const USAGE: &str = "usage:
  chat-bench fake-llm  --port P [--chunks N=20] [--delay-ms D=0] [--chunk-bytes B=16]
  chat-bench reference --port P [--chunks N=20] [--chunk-bytes B=16]
                   [--llm-url http://FAKE_LLM (proxy reference: stream each reply from it)]
                   [--history keep|one-message (proxy: send the conversation so far, the
                    default, or only the new message)]
  chat-bench turns --url http://127.0.0.1:PORT --users C --duration-secs S
                   [--warmup-secs W=3] [--history N=0] [--server-pid PID] [--label L]
                   [--turn-timeout-secs T=30] [--source-addrs K=1] [--llm-delay-ms D=0]
                   [--fresh-every K=0 (new conversation with N messages every K turns)]
                   [--source-nets K (user i from 127.0.(i%K+1).1, one /24 each: spreads
                    over nginx's ip_hash; instead of --source-addrs)]
                   [--cpu-pids name=pid,.. (CPU over the window, summed per name)]
  chat-bench idle  --url http://127.0.0.1:PORT --sockets N [--server-pid PID]
                   [--settle-secs S=3] [--source-addrs K=8] [--label L]
  chat-bench soak  --urls http://A,http://B [--users C=100] [--duration-secs S=180]
                   [--pid-files FA,FB | --pids PA,PB] [--think-ms T=300] [--sample-secs 5]
                   [--progress-secs 10] [--turn-timeout-secs 60] [--settle-secs 3] [--label L]
                   [--drop-every K=0 (drop the socket mid-reply every K-th turn, resume it)]
  chat-bench fanout --url http://127.0.0.1:PORT --watchers W --duration-secs S
                   [--warmup-secs W=3] [--conversations N=1] [--server-pid PID]
                   [--cpu-pids name=pid,..] [--turn-timeout-secs T=30] [--label L]
                   [--watcher-grace-ms G=5000 (then a watcher's reply counts as unfinished)]
  chat-bench cross --url-a http://A --url-b http://B --conversations N --duration-secs S
                   [--watchers W=1] [--warmup-secs W=3] [--server-pid PID_A]
                   [--cpu-pids b=PID,redis=PID,..] [--llm-delay-ms D] [--label L]
  chat-bench upload --url http://127.0.0.1:PORT [--file-bytes B=5000000]
                   [--concurrency C] [--llm-delay-ms D] [--baseline-secs S]
                   [--server-pid PID] [--timeout-secs T=600] [--label L]
                   [--one-line yes (the same bytes without newlines)]
  fake-llm also takes [--first-delay-ms F=0] (once before the first delta)
                   and [--complete-delay-ms C=0] (before a non-streamed reply)";

fn main() -> Result<()> {
    let mut argv = std::env::args().skip(1);
    let Some(command) = argv.next() else {
        bail!("{USAGE}");
    };
    let args = args::Args::parse(argv.collect())?;
    let threads = args.opt_u64("threads")?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = threads {
        builder.worker_threads(threads as usize);
    }
    let runtime = builder.build()?;
    runtime.block_on(async move {
        match command.as_str() {
            "fake-llm" => fake_llm::run(&args).await,
            "reference" => reference::run(&args).await,
            "turns" => turns::run(&args).await,
            "idle" => idle::run(&args).await,
            "soak" => soak::run(&args).await,
            "fanout" => watch::run_fanout(&args).await,
            "cross" => watch::run_cross(&args).await,
            "upload" => upload::run(&args).await,
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                Ok(())
            }
            other => bail!("unknown subcommand {other:?}\n{USAGE}"),
        }
    })
}
