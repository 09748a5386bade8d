//! `idledger bench`: the engine measured, each figure against a baseline measured in the
//! same run (raw sled, a bare axum handler) where one exists. Every bench prints one JSON
//! line; BENCHMARKS.md records them with their commands.

pub mod agent;
pub mod api;
pub mod append;
pub mod console;
pub mod export;
pub mod follow;
pub mod oidc;
pub mod proofs;
pub mod replay;
pub mod rotate;
pub mod signin;
pub mod sync;

use super::progress;
use crate::error::Error;
use crate::store::sled_log::{open_raw, RawStore};
use crate::store::{AppendRequest, EventLog, ExpectedVersion, SledEventLog};
use chrono::Utc;
use idledger_domain::envelope::{encode_record, RecordFields};
use idledger_domain::events::{UserAttributesChanged, UserDiscovered};
use idledger_domain::Hash;
use idledger_domain::{Actor, DomainId, Event, ProposedEvent, StreamId, UserAttributes, UserId};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use uuid::Uuid;

/// `idledger bench …`.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Durable appends from concurrent writers, against raw sled with as many flushes.
    Append(append::AppendArgs),
    /// Folding the log into all projections, against a raw sled scan plus decode.
    Replay(replay::ReplayArgs),
    /// GET /v1/users/{id} on a serve process: p99 at a fixed rate, and throughput against a bare axum handler.
    Api(api::ApiArgs),
    /// The console's pages (frame and API calls, through a session) with N users and N candidates.
    Console(console::ConsoleArgs),
    /// A first sync of a large generated group, then an incremental run of known changes.
    Sync(sync::SyncArgs),
    /// A password-changes export of N events and its verify-export, in rows/s.
    Export(export::ExportBenchArgs),
    /// N due users rotated against graphsim by a serve process, the concurrency limit checked.
    Rotate(rotate::RotateArgs),
    /// The Merkle tree recomputed over a large log, then inclusion and consistency proofs
    /// served by a serve process at a fixed rate, against /healthz at the same rate.
    Proofs(proofs::ProofsArgs),
    /// Passwordless sign-ins (options and assertion) on a serve process, each verified and
    /// durably recorded, against the assertion verification alone.
    Signin(signin::SigninArgs),
    /// The OpenID Connect provider: code flows (the exchange at /token measured), then
    /// discovery and JWKS, against /healthz.
    Oidc(oidc::OidcArgs),
    /// A `backup --follow` copy kept up with a serve process taking appends at a fixed
    /// rate: the copy's lag, and the appends against the same load with no follower.
    Follow(follow::FollowArgs),
    /// An agent's poll for its key writes with every other key's backlog pending, against
    /// a scan of all pending writes.
    AgentPoll(agent::AgentPollArgs),
    /// The bare axum handler `bench api` compares against.
    #[command(hide = true)]
    BareServer(api::BareArgs),
}

/// Runs a bench.
pub fn run(command: BenchCommand) -> Result<ExitCode, Error> {
    let rt = super::runtime()?;
    rt.block_on(async {
        match command {
            BenchCommand::Append(a) => append::append(a).await,
            BenchCommand::Replay(a) => replay::replay(a).await,
            BenchCommand::Api(a) => api::api(a).await,
            BenchCommand::Console(a) => console::console(a).await,
            BenchCommand::Sync(a) => sync::sync(a).await,
            BenchCommand::Export(a) => export::run(a).await,
            BenchCommand::Rotate(a) => rotate::rotate(a).await,
            BenchCommand::Proofs(a) => proofs::proofs(a).await,
            BenchCommand::Signin(a) => signin::signin(a).await,
            BenchCommand::Oidc(a) => oidc::oidc(a).await,
            BenchCommand::Follow(a) => follow::follow(a).await,
            BenchCommand::AgentPoll(a) => agent::agent_poll(a).await,
            BenchCommand::BareServer(a) => api::bare_server(a).await,
        }
    })
}

/// Users per writer: each writer cycles over its own streams, so versions are its own.
const STREAMS_PER_WRITER: usize = 16;

/// Builds realistic user events of about `record_bytes` stored bytes.
pub(crate) struct EventMaker {
    domain: DomainId,
    padding: usize,
}

impl EventMaker {
    pub(crate) fn new(record_bytes: usize) -> Self {
        let mut maker = EventMaker {
            domain: DomainId(Uuid::new_v4()),
            padding: 0,
        };
        let probe = maker.event(UserId(Uuid::new_v4()), 1);
        let stream = StreamId::user(UserId(Uuid::new_v4()));
        let fields = RecordFields {
            position: 1_000_000,
            stream: &stream,
            version: 2,
            recorded_at: Utc::now(),
            proposed: &probe,
        };
        let size = encode_record(fields, &Hash::ZERO)
            .map(|r| r.0.len())
            .unwrap_or(0);
        maker.padding = record_bytes.saturating_sub(size);
        maker
    }

    /// The event at `version` (1-based) of a user's stream.
    pub(crate) fn event(&self, user: UserId, version: u64) -> ProposedEvent {
        let attributes = UserAttributes {
            user_principal_name: format!("{}@bench.onmicrosoft.com", user.0.simple()),
            display_name: format!("User {version} {}", "x".repeat(self.padding)),
            mail: None,
            given_name: Some("Bench".into()),
            surname: Some(format!("{version}")),
            account_enabled: true,
        };
        let event: Event = if version == 1 {
            UserDiscovered {
                user_id: user,
                domain_id: self.domain,
                external_id: user.0.to_string(),
                attributes,
            }
            .into()
        } else {
            UserAttributesChanged { attributes }.into()
        };
        ProposedEvent::new(Uuid::now_v7(), Actor::Sync(self.domain), event)
    }
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Fills the log with `count` more events, 100 per append, from several tasks.
pub(crate) async fn fill(log: &Arc<SledEventLog>, count: u64) -> Result<(), Error> {
    let maker = EventMaker::new(256);
    fill_with(log, count, 100, move |user, n| {
        (1..=n).map(|v| maker.event(user, v)).collect()
    })
    .await
}

/// A generated user's discovery, as the benches fill their logs with.
pub(crate) fn bench_user_discovered(user: UserId, domain: DomainId) -> Event {
    UserDiscovered {
        user_id: user,
        domain_id: domain,
        external_id: Uuid::new_v4().to_string(),
        attributes: UserAttributes {
            user_principal_name: format!("{}@contoso.onmicrosoft.com", user.0.simple()),
            display_name: "Bench User".into(),
            account_enabled: true,
            ..UserAttributes::default()
        },
    }
    .into()
}

/// Fills the log with `count` more events from eight tasks, each append a new user's
/// stream holding `story(user, n)`: its first `n` events (at most `per_append`).
pub(crate) async fn fill_with(
    log: &Arc<SledEventLog>,
    count: u64,
    per_append: u64,
    story: impl Fn(UserId, u64) -> Vec<ProposedEvent> + Send + Sync + 'static,
) -> Result<(), Error> {
    let story = Arc::new(story);
    let remaining = Arc::new(AtomicU64::new(count));
    let pb = progress::bar(Some(count), "fill");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (log, story, remaining, pb) =
            (log.clone(), story.clone(), remaining.clone(), pb.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let took = remaining
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                        r.checked_sub(per_append.min(r)).filter(|_| r > 0)
                    })
                    .unwrap_or(0);
                let n = took.min(per_append);
                if n == 0 {
                    return Ok::<_, Error>(());
                }
                let user = UserId(Uuid::new_v4());
                log.append(AppendRequest::new(
                    StreamId::user(user),
                    ExpectedVersion::NoStream,
                    story(user, n),
                ))
                .await?;
                pb.inc(n);
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Error::Other(e.to_string()))??;
    }
    pb.finish_and_clear();
    log.flush().await?;
    Ok(())
}

/// An auditor token issued into `log` (flushed): what the benches read a serve with.
pub(crate) async fn auditor_token(log: &SledEventLog) -> Result<String, Error> {
    let (_, token, _) = crate::server::issue_token(
        log,
        Actor::Operator,
        idledger_domain::Role::Auditor,
        "bench".into(),
        vec![],
    )
    .await?;
    log.flush().await?;
    Ok(token)
}

/// Opens a data dir for reading once the log that had it open (dropped just before) has
/// let go: its writer task needs a moment to drop its handle on the store.
pub(crate) async fn reopen(data_dir: &std::path::Path) -> Result<RawStore, Error> {
    for _ in 0..100 {
        match open_raw(data_dir) {
            Ok(s) => return Ok(s),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    Err(Error::Other("could not reopen the store".into()))
}
