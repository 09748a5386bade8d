//! `idledger log`, `verify` and `replay` over a local data dir or a server's event feed.

use crate::cli::{CliError, DataDir, LogArgs, ReplayArgs};
use crate::progress;
use crate::store::parallel_decode::{decoder_threads, parallel_map};
use crate::store::sled_log::open_raw;
use crate::store::StoreError;
use idledger_domain::decode_record;
use idledger_replay::verify::CheckedRecord;
use idledger_replay::{fold, Until, Verifier};
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;

/// Records per page read from a server.
const REMOTE_PAGE: usize = 10_000;

/// Calls `f` with each stored record `(position, bytes)` from `from` on, in log order,
/// until `f` breaks: from the data dir, or from the server's `GET /v1/events`, whose items
/// carry the stored record, so the checking is done here and not by the server.
pub(crate) fn each_record(
    source: &DataDir,
    from: u64,
    mut f: impl FnMut(u64, &[u8]) -> ControlFlow<()>,
) -> Result<(), CliError> {
    if let Some(dir) = &source.data_dir {
        let store = open_raw(dir)?;
        for r in store.records() {
            let (pos, bytes) = r?;
            if pos >= from && f(pos, &bytes).is_break() {
                break;
            }
        }
        return Ok(());
    }
    let server = source
        .server
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let token = std::env::var("IDLEDGER_TOKEN")
        .map_err(|_| CliError::Other("set IDLEDGER_TOKEN to an admin or auditor token".into()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::new();
    let mut next = Some(from.max(1));
    while let Some(pos) = next {
        let url = format!("{server}/v1/events?from_position={pos}&limit={REMOTE_PAGE}");
        let page: serde_json::Value = rt.block_on(async {
            let other = |e: reqwest::Error| CliError::Other(e.without_url().to_string());
            let resp = http
                .get(&url)
                .bearer_auth(&token)
                .send()
                .await
                .map_err(other)?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.map_err(other)?;
            if !status.is_success() {
                return Err(CliError::Other(format!(
                    "{server} answered {status}: {}",
                    body["error"]["message"]
                )));
            }
            Ok(body)
        })?;
        for item in page["items"].as_array().into_iter().flatten() {
            use base64::Engine;
            let position = item["position"].as_u64().unwrap_or(0);
            let bytes = item["record"]
                .as_str()
                .and_then(|r| base64::engine::general_purpose::STANDARD.decode(r).ok())
                .ok_or_else(|| {
                    CliError::Other(format!("position {position}: the feed carries no record"))
                })?;
            if f(position, &bytes).is_break() {
                return Ok(());
            }
        }
        next = page["next"].as_str().and_then(|n| n.parse().ok());
    }
    Ok(())
}

pub(crate) fn decode_at(pos: u64, bytes: &[u8]) -> Result<idledger_domain::Envelope, StoreError> {
    decode_record(bytes).map_err(|e| StoreError::Corrupt {
        position: pos,
        reason: e.to_string(),
    })
}

/// Prints envelopes as JSON Lines.
pub fn log(args: &LogArgs) -> Result<ExitCode, CliError> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    let mut printed = 0u64;
    let limit = args.limit.unwrap_or(u64::MAX);
    let mut failed = None;
    each_record(&args.dir, args.from_position, |pos, bytes| {
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

/// Verifies the chain; prints one JSON line; exit 1 on any problem. Never panics on a
/// damaged store: sled's own panics on unreadable files are caught and reported.
pub fn verify(source: &DataDir) -> Result<ExitCode, CliError> {
    let source = source.clone();
    let outcome = std::panic::catch_unwind(move || verify_inner(&source));
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

pub(crate) fn last_position(source: &DataDir) -> Option<u64> {
    source
        .data_dir
        .as_ref()
        .and_then(|d| open_raw(d).ok()?.last_position().ok())
}

fn verify_inner(source: &DataDir) -> Result<serde_json::Value, CliError> {
    let pb = progress::bar(last_position(source), "verify");
    let mut v = Verifier::new();
    // Records are parsed, hashed and decoded on every core; the checks that need order
    // run here.
    let read = crate::export::records_of(source).map(|records| {
        parallel_map(records, CheckedRecord::check, decoder_threads(), |what| {
            CliError::Other(what.to_owned())
        })
    });
    let failed = match read {
        Ok(checked) => checked
            .map(|r| {
                r.map(|record| {
                    v.accept(&record);
                    if v.events() % 4096 == 0 {
                        pb.set_position(v.events());
                    }
                })
            })
            .find_map(Result::err),
        Err(e) => Some(e),
    };
    if let Some(e) = failed {
        // Reading stopped (an unreadable record, a lost connection): that is a finding too.
        v.unreadable(v.events() + 1, e.to_string());
    }
    pb.finish_and_clear();
    Ok(v.finish().summary_json())
}

/// Folds the log up to a point and prints the projections.
pub fn replay(args: &ReplayArgs) -> Result<ExitCode, CliError> {
    let until = match (args.until_position, args.until_time) {
        (Some(p), _) => Until::Position(p),
        (None, Some(t)) => Until::Time(t),
        (None, None) => Until::End,
    };
    let pb = progress::bar(last_position(&args.dir), "replay");
    let tick = |e: &idledger_domain::Envelope| {
        if e.position % 4096 == 0 {
            pb.set_position(e.position);
        }
    };
    let projections = match &args.dir.data_dir {
        Some(dir) => fold(open_raw(dir)?.envelopes_parallel()?, until, tick)?,
        None => {
            let mut envelopes = Vec::new();
            let mut failed = None;
            each_record(&args.dir, 1, |pos, bytes| match decode_at(pos, bytes) {
                Ok(e) if until.is_past(&e) => ControlFlow::Break(()),
                Ok(e) => {
                    envelopes.push(e);
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            })?;
            if let Some(e) = failed {
                return Err(e.into());
            }
            fold(envelopes.into_iter().map(Ok::<_, StoreError>), until, tick)?
        }
    };
    pb.finish_and_clear();
    let mut out = BufWriter::new(std::io::stdout().lock());
    serde_json::to_writer_pretty(&mut out, &projections)
        .map_err(|e| CliError::Other(e.to_string()))?;
    let _ = writeln!(out);
    Ok(ExitCode::SUCCESS)
}
