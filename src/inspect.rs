//! `idledger log`, `verify` and `replay` over a local data dir.

use crate::cli::{CliError, LogArgs, ReplayArgs};
use crate::progress;
use crate::store::sled_log::open_raw;
use idledger_domain::decode_record;
use idledger_replay::{fold, Until, Verifier};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::ExitCode;

/// Prints envelopes as JSON Lines.
pub fn log(args: &LogArgs) -> Result<ExitCode, CliError> {
    let store = open_raw(&args.dir.data_dir)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    let limit = args.limit.unwrap_or(u64::MAX);
    for r in store.records() {
        if printed >= limit {
            break;
        }
        let (pos, bytes) = r?;
        if pos < args.from_position {
            continue;
        }
        let env = decode_record(&bytes).map_err(|e| crate::store::StoreError::Corrupt {
            position: pos,
            reason: e.to_string(),
        })?;
        if args
            .stream
            .as_deref()
            .is_some_and(|s| s != env.stream.as_str())
        {
            continue;
        }
        if writeln!(out, "{}", env.to_json()).is_err() {
            // The reader went away (`| head`): stop quietly.
            return Ok(ExitCode::SUCCESS);
        }
        printed += 1;
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

/// Verifies the chain; prints one JSON line; exit 1 on any problem. Never panics on a
/// damaged store: sled's own panics on unreadable files are caught and reported.
pub fn verify(data_dir: &Path) -> Result<ExitCode, CliError> {
    let dir = data_dir.to_owned();
    let outcome = std::panic::catch_unwind(move || verify_inner(&dir));
    let line = match outcome {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            serde_json::json!({"ok": false, "first_bad_position": 0, "reason": e.to_string()})
        }
        Err(_) => {
            serde_json::json!({"ok": false, "first_bad_position": 0, "reason": "the store could not be read"})
        }
    };
    println!("{line}");
    Ok(if line["ok"] == true {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn verify_inner(data_dir: &Path) -> Result<serde_json::Value, CliError> {
    let store = open_raw(data_dir)?;
    let pb = progress::bar(Some(store.last_position()?), "verify");
    let mut v = Verifier::new();
    for r in store.records() {
        match r {
            Ok((pos, bytes)) => v.push(pos, &bytes),
            Err(e) => {
                v.unreadable(v.events() + 1, e.to_string());
                break;
            }
        }
        if v.events() % 4096 == 0 {
            pb.set_position(v.events());
        }
    }
    pb.finish_and_clear();
    Ok(v.finish().summary_json())
}

/// Folds the log up to a point and prints the projections.
pub fn replay(args: &ReplayArgs) -> Result<ExitCode, CliError> {
    let store = open_raw(&args.dir.data_dir)?;
    let until = match (args.until_position, args.until_time) {
        (Some(p), _) => Until::Position(p),
        (None, Some(t)) => Until::Time(t),
        (None, None) => Until::End,
    };
    let pb = progress::bar(Some(store.last_position()?), "replay");
    let projections = fold(store.envelopes_parallel(), until, |e| {
        if e.position % 4096 == 0 {
            pb.set_position(e.position);
        }
    })?;
    pb.finish_and_clear();
    let mut out = BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, &projections)
        .map_err(|e| CliError::Other(e.to_string()))?;
    let _ = writeln!(out);
    Ok(ExitCode::SUCCESS)
}
