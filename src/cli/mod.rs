//! The command line: argument types, dispatch, and the printing of each command. Nothing
//! else in the crate imports this room; the work itself is done by the rooms below it.

/// `println!` for a command's output. A reader that went away (`| head -c0`, a closed
/// terminal) makes the command fail with one line on stderr and exit 2 instead of a panic;
/// the macro is defined before the modules so that every command module can use it.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::error::Error::from)
    }};
}

pub mod backup;
pub mod bench;
pub mod demo;
pub mod export;
pub mod graph;
pub mod inspect;
pub mod progress;
pub mod proofs;
pub mod serve;
pub mod token;

use crate::audit::Source;
use crate::error::Error;
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
    Demo(demo::DemoArgs),
    /// Print envelopes as JSON Lines (sealed secrets show as "sealed").
    Log(LogArgs),
    /// Verify the hash chain, encodings and positions of the whole log (and, with
    /// --checkpoint, that a server's history extends the one accepted before).
    Verify(VerifyArgs),
    /// Fold the log (up to a position or time) and print the projections as JSON.
    Replay(ReplayArgs),
    /// Write a compliance export (CSV or JSON Lines) and its manifest.
    Export(export::ExportArgs),
    /// Check an export against the log: rows, count, file hash and the chain.
    VerifyExport(export::VerifyExportArgs),
    /// Measure the engine.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Microsoft Graph tools.
    #[command(subcommand)]
    Graph(GraphCommand),
    /// Serve the HTTP API on the event log.
    Serve(serve::ServeArgs),
    /// API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Back up a stopped server's data dir, or a running server (--server, online), into
    /// one file: the records as stored, the sealed key store and log key (never the master
    /// key), and a manifest; or, with --follow, keep a copy that grows with the log.
    Backup(backup::BackupArgs),
    /// Restore a backup file or a --follow copy into a new data dir, checking every part of
    /// it; nothing is left behind when any check fails.
    Restore(backup::RestoreArgs),
    /// Print the log's public key (C2SP verifier key) from a data dir.
    LogKey(proofs::LogKeyArgs),
    /// Prove that the record at a position is in a server's signed tree head.
    Prove(proofs::ProveArgs),
    /// Signed tree head files (checkpoints).
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
}

#[derive(Subcommand, Debug)]
enum CheckpointCommand {
    /// Check that two checkpoints describe one history (same size: same root; else a
    /// consistency proof from --server).
    Compare(proofs::CompareArgs),
}

/// Options of `idledger verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub dir: DataDir,
    /// A checkpoint file (with --server): the server's latest signed tree head must
    /// extend the one in it, and replaces it once everything holds. The log's key is
    /// pinned beside it in FILE.pub (without --public-key, the server's, trusted on first
    /// use); a server whose key differs from the pinned one fails.
    #[arg(long, requires = "server")]
    pub checkpoint: Option<PathBuf>,
    /// The log's public key (its text, or a file holding it), for --checkpoint (alone it
    /// would check nothing, so it is refused without one). Optional: without it the key
    /// pinned beside the checkpoint is used, or the server's is trusted on first use.
    #[arg(long, requires = "checkpoint")]
    pub public_key: Option<String>,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Issue a token while the server is stopped; prints it once.
    Create(token::TokenCreateArgs),
}

#[derive(Subcommand, Debug)]
enum GraphCommand {
    /// Test a connection: token, granted permissions, the reads the product needs, both groups.
    Check(graph::CheckArgs),
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

impl DataDir {
    /// Where to read: the data dir, or the server with the token in `IDLEDGER_TOKEN`.
    pub fn source(&self) -> Result<Source, Error> {
        match (&self.data_dir, &self.server) {
            (Some(dir), _) => Ok(Source::DataDir(dir.clone())),
            (None, Some(url)) => {
                let token = std::env::var("IDLEDGER_TOKEN").map_err(|_| {
                    Error::Other("set IDLEDGER_TOKEN to an admin or auditor token".into())
                })?;
                Ok(Source::Server {
                    url: url.clone(),
                    token,
                })
            }
            (None, None) => Err(Error::Other("give --data-dir or --server".into())),
        }
    }
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

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        return serve(args);
    }
    init_tracing("warn", false);
    let answers_in_json = cli.command.answers_in_json();
    let result = match cli.command {
        Command::Serve(_) => unreachable!("handled above"),
        Command::Token(TokenCommand::Create(a)) => {
            runtime().and_then(|rt| rt.block_on(token::create(a)))
        }
        Command::Demo(a) => runtime().and_then(|rt| rt.block_on(demo::run(a))),
        Command::Log(a) => inspect::log(&a),
        Command::Verify(a) => match (&a.checkpoint, &a.dir.server) {
            (Some(file), Some(url)) => {
                proofs::verify_checkpoint(url, file, a.public_key.as_deref())
            }
            _ => inspect::verify(&a.dir),
        },
        Command::LogKey(a) => proofs::log_key(&a),
        Command::Backup(a) => runtime().and_then(|rt| rt.block_on(backup::backup(&a))),
        Command::Restore(a) => runtime().and_then(|rt| rt.block_on(backup::restore(&a))),
        Command::Prove(a) => proofs::prove(&a),
        Command::Checkpoint(CheckpointCommand::Compare(a)) => proofs::compare(&a),
        Command::Replay(a) => inspect::replay(&a),
        Command::Export(a) => export::export(&a),
        Command::VerifyExport(a) => export::verify_export(&a),
        Command::Graph(GraphCommand::Check(a)) => {
            runtime().and_then(|rt| rt.block_on(graph::check(a)))
        }
        Command::Bench(b) => bench::run(b),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if answers_in_json {
                print_unchecked(&e);
            }
            ExitCode::from(2)
        }
    }
}

impl Command {
    /// The auditor's checks, whose one JSON line on stdout is what scripts read.
    fn answers_in_json(&self) -> bool {
        matches!(
            self,
            Command::Verify(_)
                | Command::VerifyExport(_)
                | Command::Prove(_)
                | Command::Checkpoint(_)
        )
    }
}

/// The line of a check that could not be made: `ok` is false, so a script reading only
/// `ok` never takes it for a history that holds, and `checked` false tells it apart from
/// one that fails.
#[derive(serde::Serialize)]
struct Unchecked {
    ok: bool,
    checked: bool,
    error: String,
}

fn print_unchecked(e: &Error) {
    let line = Unchecked {
        ok: false,
        checked: false,
        error: format!("{e:#}"),
    };
    if let Ok(text) = serde_json::to_string(&line) {
        let _ = outln!("{text}");
    }
}

/// A multi-threaded runtime for one command.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Other(e.to_string()))
}

fn serve(args: serve::ServeArgs) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing("info", config.log_format == crate::server::LogFormat::Json);
    let served = runtime().and_then(|rt| {
        rt.block_on(crate::server::run(
            &args.data_dir,
            &config,
            crate::server::shutdown_signal(),
        ))
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
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
