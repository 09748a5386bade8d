//! Command-line parsing and dispatch. Each subcommand's work lives in its own module.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// idledger: an event-sourced identity engine for Microsoft Entra ID.
#[derive(Parser, Debug)]
#[command(name = "idledger", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the engine end to end on a data dir and print a summary.
    Demo(crate::demo::DemoArgs),
    /// Print envelopes as JSON Lines (sealed secrets show as "sealed").
    Log(LogArgs),
    /// Verify the hash chain, encodings and positions of the whole log.
    Verify(DataDir),
    /// Fold the log (up to a position or time) and print the projections as JSON.
    Replay(ReplayArgs),
    /// Write a compliance export (CSV or JSON Lines) and its manifest.
    Export(crate::export::ExportArgs),
    /// Check an export against the log: rows, count, file hash and the chain.
    VerifyExport(crate::export::VerifyExportArgs),
    /// Measure the event log.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Microsoft Graph tools.
    #[command(subcommand)]
    Graph(GraphCommand),
    /// Serve the HTTP API on the event log.
    Serve(crate::server::ServeArgs),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Issue a token while the server is stopped; prints it once.
    Create(crate::server::TokenCreateArgs),
}

#[derive(Subcommand, Debug)]
enum GraphCommand {
    /// Test a connection: token, granted permissions, the reads the product needs, both groups.
    Check(crate::graph::check::CheckArgs),
}

/// Where the log is read from: a local data dir, or a running server's event feed (with
/// the token in `IDLEDGER_TOKEN`; the work is still done locally).
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct DataDir {
    /// The data directory (holds the sled store under `store/`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A running server, e.g. http://127.0.0.1:8080 (token from IDLEDGER_TOKEN).
    #[arg(long)]
    pub server: Option<String>,
}

/// Options of `idledger log`.
#[derive(Args, Debug)]
pub struct LogArgs {
    #[command(flatten)]
    pub dir: DataDir,
    /// First position to print.
    #[arg(long, default_value_t = 1)]
    pub from_position: u64,
    /// Only this stream (e.g. `user-<id>`, `domain-<id>`, `tokens`).
    #[arg(long)]
    pub stream: Option<String>,
    /// Print at most this many envelopes.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// Options of `idledger replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub dir: DataDir,
    /// Stop after this position.
    #[arg(long, conflicts_with = "until_time")]
    pub until_position: Option<u64>,
    /// Stop after the last event recorded at or before this time (RFC 3339).
    #[arg(long)]
    pub until_time: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Durable appends from concurrent writers, against raw sled with as many flushes.
    Append(crate::bench::AppendArgs),
    /// Folding the log into all projections, against a raw sled scan plus decode.
    Replay(crate::bench::ReplayArgs),
    /// GET /v1/users/{id} on a serve process: p99 at a fixed rate, and throughput against a bare axum handler.
    Api(crate::bench_api::ApiArgs),
    /// A first sync of a large generated group, then an incremental run of known changes.
    Sync(crate::bench_sync::SyncArgs),
    /// A password-changes export of N events and its verify-export, in rows/s.
    Export(crate::bench_export::ExportBenchArgs),
    /// N due users rotated against graphsim by a serve process, the concurrency limit checked.
    Rotate(crate::bench_rotate::RotateArgs),
    /// The bare axum handler `bench api` compares against.
    #[command(hide = true)]
    BareServer(crate::bench_api::BareArgs),
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        return serve(args);
    }
    init_tracing("warn", false);
    let result = match cli.command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Token(TokenCommand::Create(a)) => {
            runtime().and_then(|rt| rt.block_on(crate::server::token_create(a)))
        }
        Command::Demo(a) => runtime().and_then(|rt| rt.block_on(crate::demo::run(a))),
        Command::Log(a) => crate::inspect::log(&a),
        Command::Verify(a) => crate::inspect::verify(&a),
        Command::Replay(a) => crate::inspect::replay(&a),
        Command::Export(a) => crate::export::export(&a),
        Command::VerifyExport(a) => crate::export::verify_export(&a),
        Command::Graph(GraphCommand::Check(a)) => {
            runtime().map(|rt| rt.block_on(crate::graph::check::run(a)))
        }
        Command::Bench(BenchCommand::Append(a)) => {
            runtime().and_then(|rt| rt.block_on(crate::bench::append(a)))
        }
        Command::Bench(BenchCommand::Sync(a)) => {
            runtime().and_then(|rt| rt.block_on(crate::bench_sync::sync(a)))
        }
        Command::Bench(BenchCommand::Export(a)) => {
            runtime().and_then(|rt| rt.block_on(crate::bench_export::run(a)))
        }
        Command::Bench(BenchCommand::Rotate(a)) => {
            runtime().and_then(|rt| rt.block_on(crate::bench_rotate::rotate(a)))
        }
        Command::Bench(BenchCommand::Api(a)) => {
            runtime().and_then(|rt| rt.block_on(crate::bench_api::api(a)))
        }
        Command::Bench(BenchCommand::BareServer(a)) => {
            runtime().and_then(|rt| rt.block_on(crate::bench_api::bare_server(a)))
        }
        Command::Bench(BenchCommand::Replay(a)) => {
            runtime().and_then(|rt| rt.block_on(crate::bench::replay(a)))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Other(e.to_string()))
}

fn serve(args: crate::server::ServeArgs) -> ExitCode {
    let config = match crate::server::Config::load(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing("info", config.log_format == "json");
    match runtime().and_then(|rt| rt.block_on(crate::server::serve(args, config))) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "serve failed");
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn init_tracing(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("IDLEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    // Colour codes only for a person at a terminal, never in a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// A CLI command failed (as opposed to finding a problem, which is an exit code).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// An append failed.
    #[error(transparent)]
    Append(#[from] crate::store::AppendError),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}
