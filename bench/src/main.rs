//! `chat-bench`: the benchmark harness of issue 6.
//!
//! Subcommands:
//! - `fake-llm`: a fake OpenAI-compatible streaming server (SSE).
//! - `reference`: the transport reference, a bare socketioxide server answering each
//!   `send_message` with the frames of one turn and nothing else.
//! - `turns`: closed-loop chat turns at C concurrent virtual users, one JSON line.
//! - `idle`: N idle connected sockets, server RSS per socket, one JSON line.

mod args;
mod fake_llm;
mod idle;
mod procstat;
mod reference;
mod sio;
mod soak;
mod stats;
mod turns;

use anyhow::{bail, Result};

const USAGE: &str = "usage:
  chat-bench fake-llm  --port P [--chunks N=20] [--delay-ms D=0] [--chunk-bytes B=16]
  chat-bench reference --port P [--chunks N=20] [--chunk-bytes B=16]
  chat-bench turns --url http://127.0.0.1:PORT --users C --duration-secs S
                   [--warmup-secs W=3] [--history N=0] [--server-pid PID] [--label L]
                   [--turn-timeout-secs T=30] [--source-addrs K=1] [--llm-delay-ms D=0]
                   [--fresh-every K=0 (new conversation with N messages every K turns)]
  chat-bench idle  --url http://127.0.0.1:PORT --sockets N [--server-pid PID]
                   [--settle-secs S=3] [--source-addrs K=8] [--label L]
  chat-bench soak  --urls http://A,http://B [--users C=100] [--duration-secs S=180]
                   [--pid-files FA,FB | --pids PA,PB] [--think-ms T=300] [--sample-secs 5]
                   [--progress-secs 10] [--turn-timeout-secs 60] [--settle-secs 3] [--label L]
                   [--drop-every K=0 (drop the socket mid-reply every K-th turn, resume it)]";

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
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                Ok(())
            }
            other => bail!("unknown subcommand {other:?}\n{USAGE}"),
        }
    })
}
