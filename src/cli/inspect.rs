//! `idledger log`, `verify` and `replay`: the auditor's reads of a data dir or a server's
//! feed, printed. The work is [`crate::audit`]'s; this module parses and prints.

use super::progress;
use super::{DataDir, LogArgs, ReplayArgs};
use crate::audit::chain;
use crate::audit::source::{decode_at, each_record, last_position};
use crate::error::Error;
use idledger_replay::Until;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;

/// Prints envelopes as JSON Lines.
pub fn log(args: &LogArgs) -> Result<ExitCode, Error> {
    let source = args.dir.source()?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    let limit = args.limit.unwrap_or(u64::MAX);
    let mut failed = None;
    each_record(&source, args.from_position, |pos, bytes| {
        if printed >= limit {
            return ControlFlow::Break(());
        }
        let env = match decode_at(pos, bytes) {
            Ok(e) => e,
            Err(e) => {
                failed = Some(e);
                return ControlFlow::Break(());
            }
        };
        if args
            .stream
            .as_deref()
            .is_some_and(|s| s != env.stream.as_str())
        {
            return ControlFlow::Continue(());
        }
        if writeln!(out, "{}", env.to_json()).is_err() {
            // The reader went away (`| head`): stop quietly.
            return ControlFlow::Break(());
        }
        printed += 1;
        ControlFlow::Continue(())
    })?;
    let _ = out.flush();
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Verifies the chain; prints one JSON line; exit 1 on any problem.
pub fn verify(dir: &DataDir) -> Result<ExitCode, Error> {
    // A log that cannot be opened (a running server holds it, a wrong path) checked
    // nothing: exit 2, never a chain found broken.
    let source = dir.source()?;
    let pb = progress::bar(last_position(&source), "verify");
    let report = chain::verify(&source, |n| {
        if n % 4096 == 0 {
            pb.set_position(n);
        }
    });
    pb.finish_and_clear();
    let report = report?;
    outln!("{}", report.summary_json())?;
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Folds the log up to a point and prints the projections.
pub fn replay(args: &ReplayArgs) -> Result<ExitCode, Error> {
    let until = match (args.until_position, args.until_time) {
        (Some(p), _) => Until::Position(p),
        (None, Some(t)) => Until::Time(t),
        (None, None) => Until::End,
    };
    let source = args.dir.source()?;
    let pb = progress::bar(last_position(&source), "replay");
    let projections = chain::replay(&source, until, |e| {
        if e.position % 4096 == 0 {
            pb.set_position(e.position);
        }
    })?;
    pb.finish_and_clear();
    let mut out = BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, &projections)
        .map_err(|e| Error::Other(e.to_string()))?;
    let _ = writeln!(out);
    Ok(ExitCode::SUCCESS)
}
