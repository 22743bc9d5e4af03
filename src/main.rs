//! `llm-chat-server`: load settings, build the app, serve until Ctrl-C or
//! SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use llm_chat_server::config::{LogFormat, Settings};
use llm_chat_server::startup::{shutdown_signal, Application};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
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

    let demo = matches!(settings.llm, llm_chat_server::config::LlmProvider::Demo);
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

    let shutdown = async {
        shutdown_signal().await;
        // If draining hangs, do not hang with it.
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_secs(15)).await;
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
