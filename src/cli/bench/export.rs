//! `idledger bench export`: a password-changes CSV export of a log of N password-change
//! events, and its `verify-export`, in rows per second.

use crate::audit::source::records_of_store;
use crate::error::Error;
use crate::store::{EventLog, SledEventLog};
use clap::Args;
use idledger_domain::events::*;
use idledger_domain::*;
use idledger_replay::{ExportFormat, ExportKind, ExportQuery};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// Options of `idledger bench export`.
#[derive(Args, Debug)]
pub struct ExportBenchArgs {
    /// Password-change events in the log (filled when the data dir holds none).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Data directory (a fresh temporary one when omitted).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// One user's password story: discovery, then rotations of seven steps each
/// (started, succeeded, key write queued, delivered, confirmed; a reveal; a superseded
/// write every other rotation).
fn story(user: UserId, domain: DomainId, events: u64) -> Vec<Event> {
    let mut out: Vec<Event> = vec![super::bench_user_discovered(user, domain)];
    while (out.len() as u64) < events + 1 {
        let rotation_id = RotationId(Uuid::now_v7());
        let key_write_id = KeyWriteId(Uuid::now_v7());
        out.extend([
            RotationStarted {
                rotation_id,
                reason: RotationReason::Scheduled,
                sealed_password: SealedSecret {
                    key_id: DataKeyId(Uuid::nil()),
                    nonce: [7; 24],
                    ciphertext: vec![9; 40],
                },
            }
            .into(),
            RotationSucceeded { rotation_id }.into(),
            KeyWriteQueued {
                key_write_id,
                rotation_id,
                key_id: KeyId("HZ-BENCH".into()),
            }
            .into(),
            KeyWriteDelivered { key_write_id }.into(),
            KeyWriteConfirmed { key_write_id }.into(),
            PasswordRevealed {
                rotation_id,
                reason: "bench".into(),
            }
            .into(),
        ]);
    }
    out.truncate(events as usize + 1);
    out
}

/// Fills the log with `count` password-change events, 60 per user.
async fn fill(log: &Arc<SledEventLog>, count: u64) -> Result<(), Error> {
    let domain = DomainId(Uuid::now_v7());
    super::fill_with(log, count, 60, move |user, n| {
        story(user, domain, n)
            .into_iter()
            .map(|e| ProposedEvent::new(Uuid::now_v7(), Actor::System, e))
            .collect()
    })
    .await
}

/// Runs the benchmark and prints one JSON line.
pub async fn run(args: ExportBenchArgs) -> Result<ExitCode, Error> {
    let dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("idledger-bench-export-{}", Uuid::new_v4().simple()))
    });
    {
        let log = SledEventLog::open(&dir)?;
        if log.head().position == 0 {
            fill(&log, args.events).await?;
        }
        log.flush().await?;
    }
    // Measure what an auditor runs, `idledger export --data-dir` and `verify-export`, on
    // the closed store (opened before the clock starts: sled keeps its lock a while after
    // the log is dropped).
    let store = super::reopen(&dir).await?;
    let out = dir.join("bench-export.csv");
    let query = ExportQuery {
        kind: ExportKind::PasswordChanges,
        from: None,
        to: None,
        domain: None,
        user: None,
    };
    let file = out.clone();
    let manifest_path = crate::audit::Manifest::path_of(&out);
    let blocking = |job: Box<dyn FnOnce() -> Result<(f64, bool), Error> + Send>| async {
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| Error::Other(e.to_string()))?
    };
    let (export_s, _) = blocking(Box::new(move || {
        let t = Instant::now();
        crate::audit::export_file(
            records_of_store(&store)?,
            &query,
            ExportFormat::Csv,
            &file,
            |_| Ok(None),
            |_| {},
        )?;
        Ok((t.elapsed().as_secs_f64(), true))
    }))
    .await?;
    // verify-export reads the store cold too, as a fresh `idledger verify-export` would.
    let store = super::reopen(&dir).await?;
    let (verify_s, verified) = blocking(Box::new(move || {
        let t = Instant::now();
        let report = crate::audit::verify_export_file(
            &out,
            records_of_store(&store)?,
            crate::audit::HeadKey::None,
            |_| {},
        )?;
        Ok((t.elapsed().as_secs_f64(), report.ok))
    }))
    .await?;
    let manifest: crate::audit::Manifest = serde_json::from_slice(&std::fs::read(&manifest_path)?)
        .map_err(|e| Error::Other(e.to_string()))?;
    let rows = manifest.rows;
    outln!(
        "{}",
        serde_json::json!({
            "bench": "export",
            "rows": rows,
            "log_events": manifest.log_position,
            "export_seconds": export_s,
            "export_rows_per_s": rows as f64 / export_s,
            "verify_seconds": verify_s,
            "verify_rows_per_s": rows as f64 / verify_s,
            "verified": verified,
        })
    )?;
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(if verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
