//! `idledger bench replay`: folding the log into every projection, against a raw scan
//! plus decode of the same records.

use super::{fill, progress, reopen, round3};
use crate::error::Error;
use crate::store::{EventLog, SledEventLog};
use clap::Args;
use idledger_domain::decode_record;
use idledger_replay::{fold, Until};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Options of `idledger bench replay`.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Data directory; filled first when it holds fewer than `--events` events.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Events to fold.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
}

/// Runs `bench replay`.
pub async fn replay(args: ReplayArgs) -> Result<ExitCode, Error> {
    {
        let log = SledEventLog::open(&args.data_dir)?;
        let have = log.head().position;
        if have < args.events {
            fill(&log, args.events - have).await?;
        }
    }
    let store = reopen(&args.data_dir).await?;
    let n = args.events;
    let pb = progress::bar(Some(4 * n), "replay");
    let mut best_ours = f64::MAX;
    let mut best_base = f64::MAX;
    let mut best_scan = f64::MAX;
    let mut folded = 0;
    for _round in 0..2 {
        // The floor: sled's scan alone, touching each record's bytes.
        let started = Instant::now();
        let mut count = 0u64;
        for r in store.records().take(n as usize) {
            let (_, bytes) = r?;
            std::hint::black_box(bytes.len());
            count += 1;
        }
        best_scan = best_scan.min(started.elapsed().as_secs_f64() / count.max(1) as f64);
        // Baseline: scan and decode every record, nothing else.
        let started = Instant::now();
        let mut count = 0u64;
        for r in store.records().take(n as usize) {
            let (pos, bytes) = r?;
            let env =
                decode_record(&bytes).map_err(|e| Error::Other(format!("position {pos}: {e}")))?;
            std::hint::black_box(&env);
            count += 1;
        }
        best_base = best_base.min(started.elapsed().as_secs_f64() / count.max(1) as f64);
        pb.inc(count);
        // Ours: the same scan, decoded on every core, folded into every projection.
        let started = Instant::now();
        let projections = fold(store.envelopes_parallel()?, Until::Position(n), |_| {})?;
        folded = projections.position;
        std::hint::black_box(&projections);
        best_ours = best_ours.min(started.elapsed().as_secs_f64() / folded.max(1) as f64);
        pb.inc(folded);
    }
    pb.finish_and_clear();
    let events_per_s = 1.0 / best_ours;
    let baseline_events_per_s = 1.0 / best_base;
    outln!(
        "{}",
        serde_json::json!({
            "bench": "replay",
            "events": folded,
            "events_per_s": events_per_s.round(),
            "baseline_events_per_s": baseline_events_per_s.round(),
            "ratio": round3(events_per_s / baseline_events_per_s),
            "scan_only_events_per_s": (1.0 / best_scan).round(),
        })
    )?;
    Ok(ExitCode::SUCCESS)
}
