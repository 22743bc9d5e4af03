//! `llm-chat-server`: load settings, build the app, serve until Ctrl-C or
//! SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use llm_chat_server::config::{LogFormat, Settings};
use llm_chat_server::migrate::{self, Backend};
use llm_chat_server::startup::{shutdown_signal, Application};
use tracing_subscriber::EnvFilter;

/// mimalloc: a turn makes many small, short-lived allocations (frames,
/// chunks, JSON), which glibc's malloc served at about 13 % of the CPU.
/// `--features system-alloc` builds with the system allocator instead
/// (smaller idle sockets, fewer turns/s: BENCHMARKS.md "The allocator trade").
/// Its options are set as the process loads, by `llm_chat_server::alloc`.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: llm-chat-server                     serve (settings from the environment and .env)
       llm-chat-server migrate --from sqlite --to mongodb
                                           copy every conversation and session between stores
                                           (DATABASE_PATH, MONGODB_URI, MONGODB_DB); safe to repeat
       llm-chat-server --help | --version";

/// What the command line asks for.
enum Command {
    Serve,
    Migrate { from: Backend, to: Backend },
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    match args.first().map(String::as_str) {
        None => Ok(Command::Serve),
        Some("migrate") => {
            let (mut from, mut to) = (None, None);
            let mut rest = args[1..].iter();
            while let Some(flag) = rest.next() {
                let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
                let backend = Backend::parse(value).map_err(|e| e.to_string())?;
                match flag.as_str() {
                    "--from" => from = Some(backend),
                    "--to" => to = Some(backend),
                    other => return Err(format!("unknown option {other:?}")),
                }
            }
            match (from, to) {
                (Some(from), Some(to)) => Ok(Command::Migrate { from, to }),
                _ => Err("migrate needs --from and --to".to_string()),
            }
        }
        Some(other) => Err(format!("unknown command {other:?}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--help" | "-h" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("--version" | "-V") => {
            println!("llm-chat-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(why) => {
            eprintln!("llm-chat-server: {why}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(errors) => {
            eprintln!("llm-chat-server: {errors}");
            return ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }

    if let Command::Migrate { from, to } = command {
        return match migrate::run(&settings, from, to).await {
            Ok(report) => {
                println!("migrate: {report}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("\nllm-chat-server migrate: {err:#}");
                ExitCode::from(1)
            }
        };
    }

    let hard_stop = settings.shutdown_grace + Duration::from_secs(15);
    let demo = matches!(
        settings.models.default_model().provider,
        llm_chat_server::config::LlmProvider::Demo
    );
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(err) => {
            eprintln!("llm-chat-server: could not start: {err:#}");
            return ExitCode::from(1);
        }
    };
    if demo {
        tracing::warn!("no language model configured: demo mode (set AZURE_API_URL and API_KEY, or LLM_PROVIDER=openai)");
    }
    // Tests and scripts wait for this exact line.
    println!("llm-chat-server listening on http://{}", app.local_addr());

    let shutdown = async move {
        shutdown_signal().await;
        // If draining hangs, do not hang with it.
        tokio::spawn(async move {
            tokio::time::sleep(hard_stop).await;
            eprintln!("llm-chat-server: shutdown took too long; exiting");
            std::process::exit(1);
        });
    };
    match app.run_until(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("llm-chat-server: server error: {err}");
            ExitCode::from(1)
        }
    }
}
