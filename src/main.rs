//! The `ordersaga` binary: parse the configuration, wire, run.

use clap::Parser;

use ordersaga::adapters::postgres::PgStore;
use ordersaga::config::{Cli, Command};
use ordersaga::{startup, telemetry};

/// mimalloc instead of glibc's allocator (see Cargo.toml).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log.log_format);
    match run(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ordersaga: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    let command = match command {
        Command::Migrate(args) => {
            PgStore::migrate(&args.url().map_err(anyhow::Error::msg)?).await?;
            tracing::info!("migrations applied");
            return Ok(());
        }
        Command::Probe(args) => return ordersaga::tools::probe::run(args).await,
        other => other,
    };
    let (roles, settings) = command.plan().map_err(anyhow::Error::msg)?;
    let running = startup::start(settings, roles).await?;
    running.run_until(shutdown_signal()).await
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutdown requested");
}
