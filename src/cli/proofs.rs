//! `idledger log-key`, `prove`, `checkpoint compare`, and `verify --checkpoint`: the
//! auditor's commands of provable history. One JSON line each; exit 0 when everything
//! holds, 1 when something does not, 2 when the question could not be asked.
//!
//! `--public-key` is optional everywhere (the commands are spelled without it in issue
//! 14): without it, the key pinned beside the checkpoint file is used, else the server's
//! own, trusted on first use, and stderr says so (see `audit::proofs::key_to_hold`).

use super::progress;
use crate::audit::proofs::{self, KeyFrom, Server};
use crate::error::Error;
use clap::Args;
use idledger_replay::tree::LogPublicKey;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The log's public key from the command line: the key's text, or a file holding it.
pub fn public_key(value: &str) -> Result<LogPublicKey, Error> {
    if let Ok(key) = LogPublicKey::parse(value) {
        return Ok(key);
    }
    let text = std::fs::read_to_string(value).map_err(|e| {
        Error::Other(format!(
            "--public-key {value:?} is neither a key (name+id+key) nor a readable file: {e}"
        ))
    })?;
    LogPublicKey::parse(&text).map_err(|e| Error::Other(format!("{value}: {e}")))
}

/// The server of `--server`, with the token in `IDLEDGER_TOKEN`.
pub fn server(url: &str) -> Result<Server, Error> {
    let token = std::env::var("IDLEDGER_TOKEN")
        .map_err(|_| Error::Other("set IDLEDGER_TOKEN to an admin or auditor token".into()))?;
    Server::new(url, &token)
}

fn print<T: serde::Serialize>(report: &T, ok: bool) -> Result<ExitCode, Error> {
    outln!(
        "{}",
        serde_json::to_string(report).map_err(|e| Error::Other(e.to_string()))?
    )?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Options of `idledger log-key`.
#[derive(Args, Debug)]
pub struct LogKeyArgs {
    /// The data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// `idledger log-key`: prints the log's public key (C2SP verifier key text).
pub fn log_key(args: &LogKeyArgs) -> Result<ExitCode, Error> {
    let key = crate::notary::key::public_key(&args.data_dir)
        .map_err(|e| Error::Other(format!("{e} (a log gets its key at its first `serve`)")))?;
    outln!("{key}")?;
    Ok(ExitCode::SUCCESS)
}

/// Options of `idledger prove`.
#[derive(Args, Debug)]
pub struct ProveArgs {
    /// The server, e.g. http://127.0.0.1:8080 (token from IDLEDGER_TOKEN).
    #[arg(long)]
    pub server: String,
    /// The record's position.
    #[arg(long)]
    pub position: u64,
    /// The log's public key (its text, or a file holding it). Without it, the key pinned
    /// beside --checkpoint's file, else the server's own (which proves only that the
    /// server signed a head holding the record).
    #[arg(long)]
    pub public_key: Option<String>,
    /// A checkpoint accepted before: the head the record is proven in must extend it.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
}

/// `idledger prove`: the record at a position, proven in a signed tree head, all checked
/// here.
pub fn prove(args: &ProveArgs) -> Result<ExitCode, Error> {
    let given = args.public_key.as_deref().map(public_key).transpose()?;
    let server = server(&args.server)?;
    let report = proofs::prove_with(&server, given, args.position, args.checkpoint.as_deref())?;
    if report.key == KeyFrom::Server {
        eprintln!(
            "note: no --public-key, and no key pinned beside a --checkpoint: proved against the server's own key, which shows only that the server signed a head holding the record, not that the head is the log's. Pass --public-key KEY (from `idledger log-key` on the server's machine), or --checkpoint FILE with the key `idledger verify --checkpoint FILE` pinned in FILE.pub"
        );
    }
    print(&report, report.ok)
}

/// Options of `idledger checkpoint compare`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    /// One checkpoint file.
    pub a: PathBuf,
    /// The other.
    pub b: PathBuf,
    /// The log's public key (its text, or a file holding it). Without it, the key pinned
    /// beside the checkpoints (`A.pub`, `B.pub`, written by `verify --checkpoint`).
    #[arg(long)]
    pub public_key: Option<String>,
    /// A server to fetch the consistency proof from, when the sizes differ.
    #[arg(long)]
    pub server: Option<String>,
}

/// `idledger checkpoint compare`: whether two checkpoints describe one history.
pub fn compare(args: &CompareArgs) -> Result<ExitCode, Error> {
    let given = args.public_key.as_deref().map(public_key).transpose()?;
    let server = args.server.as_deref().map(server).transpose()?;
    let report = proofs::compare_files(&args.a, &args.b, given, server.as_ref())?;
    print(&report, report.ok)
}

/// `idledger verify --server URL --checkpoint FILE`: the server's history extends the
/// checkpoint, its records give every root it signed; the new head becomes the checkpoint.
/// Without `key`, the key pinned in `FILE.pub`, else the server's, trusted on first use
/// and pinned there once the visit holds.
pub fn verify_checkpoint(url: &str, file: &Path, key: Option<&str>) -> Result<ExitCode, Error> {
    let given = key.map(public_key).transpose()?;
    let server = server(url)?;
    let pb = progress::bar(None, "verify");
    let report = proofs::visit(&server, given, file, |n| {
        if n % 4096 == 0 {
            pb.set_position(n);
        }
    })?;
    pb.finish_and_clear();
    if report.key == KeyFrom::FirstUse {
        let pin = proofs::pin_path(file);
        let what = match proofs::pinned_key(file).ok().flatten() {
            Some(key) if report.ok => format!(
                "{key}, pinned in {}: later visits hold the server to it",
                pin.display()
            ),
            _ => "for this visit only: it did not hold, so nothing was pinned".to_owned(),
        };
        eprintln!(
            "note: no --public-key and none pinned: the server's key was trusted on first use ({what}). Compare it with the log's key got out of band (`idledger log-key --data-dir DIR` on the server's machine); to pin a key you hold from the start, pass --public-key KEY on the first visit, or write the key to {} before it",
            pin.display()
        );
    }
    print(&report, report.ok)
}
