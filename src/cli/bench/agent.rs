//! `idledger bench agent-poll`: what a workstation agent's poll for its key writes costs
//! the projections (the query runs under the projector's read lock, which every other
//! reader and the projector itself wait on), with the other keys' backlog pending (their
//! agents offline), against the scan of every pending write that query used to be.

use super::round3;
use crate::cli::progress;
use crate::error::Error;
use chrono::Utc;
use clap::Args;
use idledger_domain::events::{KeyAssigned, KeyWriteQueued};
use idledger_domain::{
    Actor, DomainId, Envelope, Event, Hash, KeyId, KeyWriteId, KeyWriteState, RotationId, StreamId,
    UserId,
};
use idledger_projections::users::UserStatus;
use idledger_projections::Projections;
use std::process::ExitCode;
use std::time::Instant;
use uuid::Uuid;

/// Options of `idledger bench agent-poll`.
#[derive(Args, Debug)]
pub struct AgentPollArgs {
    /// Users, each holding a key of their own.
    #[arg(long, default_value_t = 20_000)]
    pub users: u64,
    /// Writes pending per key.
    #[arg(long, default_value_t = 5)]
    pub writes_per_key: u64,
    /// Polls timed, each for one key.
    #[arg(long, default_value_t = 2_000)]
    pub polls: u64,
}

/// The projections of `users` users with a key each and `writes` queued writes per key;
/// and the keys.
fn backlog(users: u64, writes: u64) -> (Projections, Vec<KeyId>) {
    let mut p = Projections::new();
    let mut keys = Vec::new();
    let (domain, now) = (DomainId(Uuid::now_v7()), Utc::now());
    let mut position = 0;
    let pb = progress::bar(Some(users), "fold");
    for _ in 0..users {
        let user = UserId(Uuid::now_v7());
        let key = KeyId(format!("HZ-{}", user.0.simple()));
        let mut events: Vec<Event> = vec![
            super::bench_user_discovered(user, domain),
            KeyAssigned {
                key_id: key.clone(),
            }
            .into(),
        ];
        events.extend((0..writes).map(|_| {
            KeyWriteQueued {
                key_write_id: KeyWriteId(Uuid::now_v7()),
                rotation_id: RotationId(Uuid::now_v7()),
                key_id: key.clone(),
            }
            .into()
        }));
        let stream = StreamId::user(user);
        for (version, event) in (1..).zip(events) {
            position += 1;
            p.apply_owned(Envelope {
                position,
                stream: stream.clone(),
                version,
                recorded_at: now,
                event_id: Uuid::now_v7(),
                actor: Actor::System,
                correlation_id: None,
                causation_id: None,
                event,
                prev_hash: Hash::default(),
                hash: Hash::default(),
            });
        }
        keys.push(key);
        pb.inc(1);
    }
    pb.finish_and_clear();
    (p, keys)
}

/// The baseline: every pending write scanned for the key's, then the same checks as
/// `Projections::deliverable_writes`.
fn scanned(
    p: &Projections,
    key: &KeyId,
    now: chrono::DateTime<Utc>,
    lease: chrono::Duration,
) -> usize {
    p.key_writes
        .pending()
        .filter(|w| &w.key_id == key)
        .filter(|w| {
            let leased = w.state == KeyWriteState::Delivered
                && w.delivered_at
                    .is_some_and(|t| t.checked_add_signed(lease).is_none_or(|end| end > now));
            let held = p.users.get(w.user_id).is_some_and(|u| {
                u.status != UserStatus::Deleted && u.key_id.as_ref() == Some(&w.key_id)
            });
            held && !leased
        })
        .count()
}

/// Runs the benchmark and prints one JSON line.
pub async fn agent_poll(args: AgentPollArgs) -> Result<ExitCode, Error> {
    let (p, keys) = backlog(args.users.max(1), args.writes_per_key);
    let every = (keys.len() / args.polls.max(1) as usize).max(1);
    let sample: Vec<&KeyId> = keys.iter().step_by(every).collect();
    let (now, lease) = (Utc::now(), chrono::Duration::seconds(300));
    let (mut best_ours, mut best_base) = (f64::MAX, f64::MAX);
    for _round in 0..3 {
        let started = Instant::now();
        let mut ours = 0;
        for key in &sample {
            ours += p
                .deliverable_writes(std::slice::from_ref(*key), now, lease)
                .count();
        }
        best_ours = best_ours.min(started.elapsed().as_secs_f64() / sample.len() as f64);
        let started = Instant::now();
        let mut base = 0;
        for key in &sample {
            base += scanned(&p, key, now, lease);
        }
        best_base = best_base.min(started.elapsed().as_secs_f64() / sample.len() as f64);
        if ours != base || ours != sample.len() * args.writes_per_key as usize {
            return Err(Error::Other(format!(
                "the polls found {ours} writes, the scans {base}: they must agree"
            )));
        }
    }
    outln!(
        "{}",
        serde_json::json!({
            "bench": "agent-poll",
            "keys": keys.len(),
            "pending": p.key_writes.pending().count(),
            "polls": sample.len(),
            "poll_us": round3(best_ours * 1e6),
            "baseline_scan_poll_us": round3(best_base * 1e6),
            "speedup": round3(best_base / best_ours),
        })
    )?;
    Ok(ExitCode::SUCCESS)
}
