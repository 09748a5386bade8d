//! Sync from Entra ID: one worker per domain with credentials, runs on a schedule and on
//! demand, the approval of quarantined removals, and the import of candidates.
//!
//! [`SyncService`] owns the workers. A supervisor compares them with the projections every
//! `supervise_every` (and at once after a credentials change through the API): a domain
//! that gained credentials gets a worker, one that lost them (or got new ones, or a new
//! Graph address) has its worker cancelled, which fails a run in flight with a clear
//! error. Runs of one domain are serialized by the domain's run lock (kept across its
//! workers); domains never wait for each other.

mod run;

pub use run::{PlannedChange, RunReport, SyncRun};

use crate::engine::Engine;
use crate::graph::{GraphClient, GraphError, GraphSettings, GraphTrust, RetryPolicy};
use crate::projector::NotReached;
use crate::secrets::SecretsError;
use crate::store::{AppendError, CommandError, ExpectedVersion, StoreError};
use chrono::Utc;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use idledger_domain::decide::user::{evolve as user_evolve, UserCommand};
use idledger_domain::decide::Rejection;
use idledger_domain::events::{SyncRunFailed, SyncRunStarted};
use idledger_domain::{
    Actor, DomainId, Event, RemovalBehavior, StreamId, SyncRunId, SyncTrigger, UserId,
};
use idledger_projections::UserStatus;
use rand::Rng;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Why a sync request or run failed: a rule refused it, or something outside it failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The rules refused it (no such domain or run, no credentials, a bad id).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The tenant is not set up as the product needs (a group missing or ambiguous).
    #[error("{0}")]
    Tenant(String),
    /// Graph failed.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The credentials were removed while the run was in flight.
    #[error("the domain's credentials were removed; the run stopped")]
    Cancelled,
    /// The run stopped on a bug (a panic, logged); the next run starts afresh.
    #[error("the run stopped on an internal error; the next run starts afresh")]
    Panicked,
    /// Appending failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Reading the log failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing or unsealing failed.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The projections did not catch up in time.
    #[error(transparent)]
    NotReached(#[from] NotReached),
    /// A user kept changing while the run tried to record it.
    #[error("user {0} kept changing during the run")]
    Contended(String),
    /// The task carrying out approved removals ended without an answer (the server is
    /// stopping); approving again finishes them, as does the next start.
    #[error("the approved removals were interrupted: {0}")]
    Interrupted(String),
}

impl From<CommandError> for SyncError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::Rejected(r) => SyncError::Rejected(r),
            CommandError::Append(a) => SyncError::Append(a),
            CommandError::Store(s) => SyncError::Store(s),
            CommandError::Contended => SyncError::Rejected(Rejection::Conflict(
                "the resource changed meanwhile; retry".into(),
            )),
        }
    }
}

impl SyncError {
    /// Graph's own error code, when Graph gave one.
    pub fn graph_code(&self) -> Option<String> {
        match self {
            SyncError::Graph(e) => e.code(),
            _ => None,
        }
    }
}

/// Settings of the sync workers.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// How Graph requests are retried.
    pub retry: RetryPolicy,
    /// Whom the Graph clients trust for TLS (the built-in roots and `graph_ca_bundle`).
    pub trust: GraphTrust,
    /// How often workers are compared with the domains' credentials.
    pub supervise_every: Duration,
    /// How old the last full round may get before a run reads everything again.
    pub full_round_every: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            retry: RetryPolicy::default(),
            trust: GraphTrust::default(),
            supervise_every: Duration::from_secs(1),
            full_round_every: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a worker was built from: a change means a new client.
type Fingerprint = (u64, String, String);

struct Worker {
    fingerprint: Fingerprint,
    client: Arc<GraphClient>,
    cancel: watch::Sender<bool>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

/// Dry runs whose changes are kept for paging. A dry run is no fact, so its changes live
/// here and not in the log: the newest few, gone at restart.
const KEPT_DRY_RUNS: usize = 8;

/// A dry run's changes, in user id order.
type DryRunChanges = (DomainId, SyncRunId, Arc<[PlannedChange]>);

struct Inner {
    engine: Engine,
    config: SyncConfig,
    workers: Mutex<HashMap<DomainId, Worker>>,
    /// Each domain's run lock, kept across its workers: a run cancelled with its worker
    /// holds it until its last appends have landed (see `start_run`).
    run_locks: Mutex<HashMap<DomainId, Arc<tokio::sync::Mutex<()>>>>,
    /// Each domain's imports hold it shared (they go on beside a run), a removal of the
    /// domain alone, for a moment, before its users leave.
    import_locks: Mutex<HashMap<DomainId, Arc<tokio::sync::RwLock<()>>>>,
    dry_runs: Mutex<std::collections::VecDeque<DryRunChanges>>,
    /// Each domain's run recorded and waiting for its turn (not a dry run), with the
    /// position of its record: a request to run meanwhile is that run.
    waiting: Mutex<HashMap<DomainId, (SyncRunId, u64)>>,
    /// Held while a run that may be waited for is recorded: a request at the same moment
    /// finds it once recorded, not half.
    starting: tokio::sync::Mutex<()>,
    /// When each domain's worker means to start its next scheduled run (the interval with
    /// its jitter, or the wait Graph asked for), for the console to show rather than guess.
    next_runs: Mutex<HashMap<DomainId, chrono::DateTime<chrono::Utc>>>,
}

/// The sync workers of every domain.
#[derive(Clone)]
pub struct SyncService {
    inner: Arc<Inner>,
}

/// A run accepted: its id and the position of its `SyncRunStarted`.
pub struct Accepted {
    /// The run this event belongs to (also the correlation id of its events).
    pub run_id: SyncRunId,
    /// Position of `SyncRunStarted`.
    pub position: u64,
    /// The run's end; `None` for a request that joined a run already waiting.
    pub done: Option<tokio::task::JoinHandle<Result<RunReport, SyncError>>>,
}

impl SyncService {
    /// Whom the Graph clients trust for TLS: a connection test trusts the same.
    pub fn graph_trust(&self) -> &GraphTrust {
        &self.inner.config.trust
    }

    /// Starts the supervisor.
    pub fn start(engine: Engine, config: SyncConfig) -> Self {
        let svc = SyncService {
            inner: Arc::new(Inner {
                engine,
                config,
                workers: Mutex::new(HashMap::new()),
                run_locks: Mutex::default(),
                import_locks: Mutex::default(),
                dry_runs: Mutex::default(),
                waiting: Mutex::default(),
                starting: tokio::sync::Mutex::new(()),
                next_runs: Mutex::default(),
            }),
        };
        let weak = Arc::downgrade(&svc.inner);
        let every = svc.inner.config.supervise_every;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                SyncService { inner }.supervise();
            }
        });
        svc
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<DomainId, Worker>> {
        self.inner.workers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the workers in line with the domains' credentials.
    pub fn supervise(&self) {
        // Held while the credentials are read, not only while workers change: a tick that
        // read them just before an admin removed them would otherwise start a worker with
        // the removed secret after the admin's own supervise stopped it.
        let mut workers = self.workers();
        let wanted: Vec<(DomainId, Fingerprint, GraphSettings)> = {
            let p = self.inner.engine.projector.read();
            p.domains
                .all()
                .into_iter()
                .filter(|d| !d.removed)
                .filter_map(|d| {
                    let c = d.credentials_in_force()?;
                    let secret = match self
                        .inner
                        .engine
                        .keyring
                        .unseal(&StreamId::domain(d.id), &c.client_secret)
                    {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(domain = %d.name, error = %e, "cannot open the domain's client secret");
                            return None;
                        }
                    };
                    // The stream's version, not the time: two saves can share a timestamp
                    // (one group commit, or a clock behind the log's).
                    let fp = (
                        c.version,
                        d.settings.graph_url.clone(),
                        d.settings.authority_url.clone(),
                    );
                    Some((
                        d.id,
                        fp,
                        GraphSettings {
                            authority_url: d.settings.authority_url.clone(),
                            graph_url: d.settings.graph_url.clone(),
                            tenant_id: c.tenant_id.clone(),
                            client_id: c.client_id.clone(),
                            client_secret: secret,
                        },
                    ))
                })
                .collect()
        };
        workers.retain(|id, w| {
            let keep = wanted
                .iter()
                .any(|(d, fp, _)| d == id && *fp == w.fingerprint);
            if !keep {
                w.client.retire();
                w.cancel.send_replace(true);
                tracing::info!(domain = %id, "sync worker stopped");
            }
            keep
        });
        for (id, fp, settings) in wanted {
            if workers.contains_key(&id) {
                continue;
            }
            let client = match GraphClient::new(
                settings,
                self.inner.config.retry.clone(),
                &self.inner.config.trust,
            ) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    tracing::error!(domain = %id, error = %e, "cannot build a Graph client");
                    continue;
                }
            };
            let (cancel, cancelled) = watch::channel(false);
            workers.insert(
                id,
                Worker {
                    fingerprint: fp,
                    client,
                    cancel,
                    lock: self.run_lock(id),
                },
            );
            tokio::spawn(self.clone().schedule(id, cancelled));
            tracing::info!(domain = %id, "sync worker started");
        }
    }

    fn run_lock(&self, domain: DomainId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .run_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks.entry(domain).or_default().clone()
    }

    /// How many domains have a run or an import lock (kept for good once made): requests
    /// naming made-up domains must add none.
    pub fn domain_locks(&self) -> usize {
        let runs = self
            .inner
            .run_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let imports = self
            .inner
            .import_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        runs.len() + imports.len()
    }

    fn import_lock(&self, domain: DomainId) -> Arc<tokio::sync::RwLock<()>> {
        let mut locks = self
            .inner
            .import_locks
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        locks.entry(domain).or_default().clone()
    }

    /// When `domain`'s next scheduled run is meant to start; none while a run is under way
    /// or no worker runs.
    pub fn next_scheduled(&self, domain: DomainId) -> Option<chrono::DateTime<chrono::Utc>> {
        self.next_runs().get(&domain).copied()
    }

    fn next_runs(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<DomainId, chrono::DateTime<chrono::Utc>>> {
        self.inner
            .next_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets the time `at` a worker set, unless a newer worker of the domain (its
    /// credentials replaced) set its own since.
    fn clear_next_run(&self, domain: DomainId, at: chrono::DateTime<chrono::Utc>) {
        let mut next = self.next_runs();
        if next.get(&domain) == Some(&at) {
            next.remove(&domain);
        }
    }

    /// The scheduled runs of one domain, until its worker is cancelled.
    async fn schedule(self, domain: DomainId, mut cancelled: watch::Receiver<bool>) {
        // How long Graph asked to be left alone when the last run ended on its refusal.
        let mut asked: Option<Duration> = None;
        loop {
            let minutes = {
                let p = self.inner.engine.projector.read();
                p.domains
                    .get(domain)
                    .map_or(15, |d| d.settings.sync_interval_minutes.max(1))
            };
            let jitter = rand::thread_rng().gen_range(0.9..1.1);
            let wait = next_wait(minutes, jitter, asked.take());
            // At most u32::MAX minutes and a tenth (the interval), well inside the calendar.
            let at = chrono::Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default();
            self.next_runs().insert(domain, at);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancelled.wait_for(|c| *c) => {
                    self.clear_next_run(domain, at);
                    return;
                }
            }
            self.clear_next_run(domain, at);
            match self
                .start_run(domain, SyncTrigger::Scheduled, false, None)
                .await
            {
                Ok(Accepted {
                    done: Some(done), ..
                }) => {
                    if let Ok(Err(SyncError::Graph(e))) = done.await {
                        asked = e.retry_after();
                    }
                }
                // A manual run is waiting: it is this turn's run.
                Ok(Accepted { done: None, .. }) => {}
                Err(e) => tracing::warn!(%domain, error = %e, "scheduled sync not started"),
            }
            if *cancelled.borrow() {
                return;
            }
        }
    }

    /// The Graph client of `domain`'s worker and a receiver that turns true when the
    /// worker is cancelled (its credentials removed or replaced); `None` without a worker.
    pub fn client(&self, domain: DomainId) -> Option<(Arc<GraphClient>, watch::Receiver<bool>)> {
        self.supervise_if_stale(domain);
        let workers = self.workers();
        workers
            .get(&domain)
            .map(|w| (w.client.clone(), w.cancel.subscribe()))
    }

    /// Brings `domain`'s worker in step with what the projections hold before it is
    /// handed out: started for credentials saved a moment ago, stopped or replaced for
    /// credentials removed or replaced a moment ago (before the admin's own supervise ran),
    /// so no caller gets a client with a secret that is no longer saved. A domain in step
    /// is not looked at again: callers include anonymous sign-in pages, whose requests
    /// must not each open every secret.
    fn supervise_if_stale(&self, domain: DomainId) {
        let wanted: Option<Fingerprint> = {
            let p = self.inner.engine.projector.read();
            p.domains.get(domain).filter(|d| !d.removed).and_then(|d| {
                let c = d.credentials_in_force()?;
                Some((
                    c.version,
                    d.settings.graph_url.clone(),
                    d.settings.authority_url.clone(),
                ))
            })
        };
        let running = self.workers().get(&domain).map(|w| w.fingerprint.clone());
        if wanted != running {
            self.supervise();
        }
    }

    /// Why `domain` has no worker, as an error.
    pub fn no_worker(&self, domain: DomainId) -> SyncError {
        let p = self.inner.engine.projector.read();
        match p.domains.get(domain) {
            None => Rejection::NotFound("domain").into(),
            Some(d) if d.removed => {
                Rejection::Conflict(format!("domain {} was removed", d.name)).into()
            }
            Some(d) if d.credentials_removed_at.is_some() && d.credentials.is_none() => {
                Rejection::Conflict(format!(
                    "the credentials of domain {} were removed; sync is stopped until new ones are saved",
                    d.name
                ))
                .into()
            }
            Some(d) if d.credentials.is_none() => Rejection::Conflict(format!(
                "domain {} has no credentials; save them first",
                d.name
            ))
            .into(),
            Some(d) => Rejection::Conflict(format!(
                "domain {} has no sync worker (its client secret cannot be opened)",
                d.name
            ))
            .into(),
        }
    }

    /// Starts a run now: appends `SyncRunStarted` and runs it on its own task. `by` is
    /// who asked: the admin of a manual run (the log says who started it), or `None` for
    /// the scheduler.
    pub async fn start_run(
        &self,
        domain: DomainId,
        trigger: SyncTrigger,
        dry_run: bool,
        by: Option<&Actor>,
    ) -> Result<Accepted, SyncError> {
        self.inner.engine.settle().await?;
        self.supervise();
        let (client, lock, cancelled) = {
            let workers = self.workers();
            match workers.get(&domain) {
                Some(w) => (w.client.clone(), w.lock.clone(), w.cancel.subscribe()),
                None => {
                    drop(workers);
                    return Err(self.no_worker(domain));
                }
            }
        };
        let full = {
            let every = chrono::Duration::from_std(self.inner.config.full_round_every)
                .unwrap_or(chrono::Duration::MAX);
            let p = self.inner.engine.projector.read();
            p.domains
                .get(domain)
                .is_none_or(|d| d.full_round_due(Utc::now(), every))
        };
        let run_id = SyncRunId(uuid::Uuid::now_v7());
        // One run waits for its turn at most: clicks on "Sync now" while a run holds the
        // domain, or the scheduler's turn meanwhile, are that run, not one full round
        // each, queued before an approval that waits for the same turn. A dry run changes
        // nothing and is always its own.
        let unwait = move |service: &SyncService| {
            let mut w = service
                .inner
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if w.get(&domain).is_some_and(|(id, _)| *id == run_id) {
                w.remove(&domain);
            }
        };
        let starting = match dry_run {
            true => None,
            false => Some(self.inner.starting.lock().await),
        };
        let queued = starting.as_ref().and_then(|_| {
            let w = self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.get(&domain).copied()
        });
        if let Some((run_id, position)) = queued {
            return Ok(Accepted {
                run_id,
                position,
                done: None,
            });
        }
        let position = crate::store::append_correlated(
            &*self.inner.engine.log,
            StreamId::domain(domain),
            ExpectedVersion::Any,
            by.unwrap_or(&Actor::Sync(domain)),
            Some(run_id.0),
            vec![SyncRunStarted {
                run_id,
                trigger,
                dry_run,
                full,
            }
            .into()],
        )
        .await?;
        if starting.is_some() {
            let mut w = self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.insert(domain, (run_id, position));
        }
        drop(starting);
        let engine = self.inner.engine.clone();
        let service = self.clone();
        // Whether the run has read a full round: planned so, or switched to one when its
        // delta token expired. A failed run records it too.
        let read_full = Arc::new(AtomicBool::new(false));
        let round = read_full.clone();
        let done = tokio::spawn(async move {
            let mut started = std::time::Instant::now();
            // The lock is taken once and held until the run's appends have landed: were it
            // taken inside the run's future, a cancel would drop it with that future, and
            // the next run of the domain (a new worker's, with new credentials, already
            // waiting) would get it first and read projections those appends have not
            // reached yet, taking their users for new and discovering them twice.
            let result = async {
                let serial = tokio::select! {
                    g = lock.lock() => g,
                    _ = wait_cancelled(cancelled.clone()) => {
                        unwait(&service);
                        return Err(SyncError::Cancelled);
                    }
                };
                // Its turn: a request from now on is for a run after this one. The run's
                // duration counts from here, not from the wait behind another run.
                unwait(&service);
                started = std::time::Instant::now();
                // The cancel first: a run whose credentials were removed starts no request.
                // A panic (a bug) ends the run as failed, on record, with its lock let go:
                // not a run that stays `running` until the next start.
                let run = std::panic::AssertUnwindSafe(async {
                    SyncRun::new(&engine, &client, domain, run_id, dry_run, full, round.clone())
                        .await?
                        .execute()
                        .await
                });
                let result = tokio::select! {
                    biased;
                    _ = wait_cancelled(cancelled) => Err(SyncError::Cancelled),
                    r = futures_util::FutureExt::catch_unwind(run) => {
                        r.unwrap_or(Err(SyncError::Panicked))
                    }
                };
                let shredder = engine.clone();
                if result.is_err() {
                    // The run's future is gone (cancelled, or its other appends dropped
                    // with the first error), but appends it handed to the writer still
                    // land: wait for them, and for the projections to show them.
                    engine.log.barrier().await;
                    let _ = engine.settle().await;
                    // A deletion that landed this way never reached its shred: done
                    // here, not only at the next start.
                    let _ = tokio::task::spawn_blocking(move || shred_deleted(&shredder, domain))
                        .await;
                } else {
                    // A shred whose rewrite of the key store failed in an earlier run is
                    // carried out now (nothing to do when none is owed).
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Err(e) = shredder.keyring.finish_shreds() {
                            tracing::warn!(error = %e, "an owed shred could not be carried out; the next run retries");
                        }
                    })
                    .await;
                }
                drop(serial);
                result
            }
            .await;
            let name = engine
                .projector
                .read()
                .domains
                .get(domain)
                .map_or_else(|| "unknown".to_owned(), |d| d.name.clone());
            let read = read_full.load(Ordering::Acquire);
            let (ran_full, outcome) = match &result {
                Ok(r) if r.quarantined => (r.full, "quarantined"),
                Ok(r) => (r.full, "succeeded"),
                Err(SyncError::Cancelled) => (read, "cancelled"),
                Err(_) => (read, "failed"),
            };
            // A dry run changes nothing: the series (and the alerts on them) count only
            // runs that did something, or failed to.
            if !dry_run {
                crate::metrics::sync_run(&name, ran_full, outcome, started.elapsed());
            }
            if let (true, Ok(report)) = (dry_run, &result) {
                service.keep_dry_run(domain, run_id, report.changes.clone());
            }
            if let Err(e) = &result {
                // Graph's words are a peer's: bounded, so the failure can always be recorded.
                let error = crate::graph::clipped(&e.to_string(), crate::graph::MAX_RECORDED_ERROR);
                tracing::warn!(%domain, run = %run_id.0, error, "sync run failed");
                let failed = SyncRunFailed {
                    run_id,
                    error,
                    graph_code: e.graph_code(),
                    full: Some(read),
                };
                if let Err(e2) = crate::store::append_correlated(
                    &*engine.log,
                    StreamId::domain(domain),
                    ExpectedVersion::Any,
                    &Actor::Sync(domain),
                    Some(run_id.0),
                    vec![failed.into()],
                )
                .await
                {
                    tracing::error!(error = %e2, "cannot record the failed run");
                }
            }
            result
        });
        Ok(Accepted {
            run_id,
            position,
            done: Some(done),
        })
    }

    fn keep_dry_run(&self, domain: DomainId, run_id: SyncRunId, changes: Arc<[PlannedChange]>) {
        let mut kept = self
            .inner
            .dry_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if kept.len() == KEPT_DRY_RUNS {
            kept.pop_front();
        }
        kept.push_back((domain, run_id, changes));
    }

    /// The changes of one of the newest dry runs of `domain`, in user id order; `None` for
    /// a run that is no dry run, not of `domain`, or no longer kept.
    pub fn dry_run_changes(
        &self,
        domain: DomainId,
        run_id: SyncRunId,
    ) -> Option<Arc<[PlannedChange]>> {
        let kept = self
            .inner
            .dry_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .find(|(d, r, _)| *d == domain && *r == run_id)
            .map(|(_, _, changes)| changes.clone())
    }

    /// Closes every run an earlier process left running (it died mid-run) as failed, so no
    /// run stays `running` for ever. Call once at start, before any worker runs.
    pub async fn close_interrupted_runs(&self) -> Result<usize, SyncError> {
        let engine = &self.inner.engine;
        engine.settle().await?;
        let stuck: Vec<(DomainId, SyncRunId)> = {
            let p = engine.projector.read();
            p.domains
                .all()
                .into_iter()
                .flat_map(|d| p.domains.runs_of(d.id))
                // Not ended: running, or held with its list on record before it died.
                .filter(|r| r.finished_at.is_none())
                .map(|r| (r.domain_id, r.run_id))
                .collect()
        };
        for (domain, run_id) in &stuck {
            let failed = SyncRunFailed {
                run_id: *run_id,
                error: "interrupted by a restart".into(),
                graph_code: None,
                full: None,
            };
            crate::store::append_correlated(
                &*engine.log,
                StreamId::domain(*domain),
                ExpectedVersion::Any,
                &Actor::System,
                Some(run_id.0),
                vec![failed.into()],
            )
            .await?;
        }
        if !stuck.is_empty() {
            tracing::warn!(
                runs = stuck.len(),
                "closed sync runs an earlier process left running"
            );
        }
        Ok(stuck.len())
    }

    /// Approves a quarantined run: records the approval, applies the removals it held
    /// back to the users still out of the sync group, and records the approval finished.
    /// Approving an approved run whose removals were not all carried out (a crash, a
    /// failed append) finishes them; a finished one is refused as approved already.
    /// Returns the position of the last event.
    pub async fn approve(
        &self,
        domain: DomainId,
        run_id: SyncRunId,
        actor: &Actor,
    ) -> Result<u64, SyncError> {
        // All of it apart from the request: a client that stops waiting (or a request
        // timeout) must not leave an approval on record with its removals not begun.
        let svc = self.clone();
        let actor = actor.clone();
        tokio::spawn(async move { svc.approve_now(domain, run_id, &actor).await })
            .await
            .map_err(|e| SyncError::Interrupted(e.to_string()))?
    }

    async fn approve_now(
        &self,
        domain: DomainId,
        run_id: SyncRunId,
        actor: &Actor,
    ) -> Result<u64, SyncError> {
        let engine = &self.inner.engine;
        // Made-up ids leave nothing behind (each domain's lock is kept for good).
        if engine.projector.read().domains.get(domain).is_none() {
            return Err(Rejection::NotFound("sync run").into());
        }
        // Not while a run of the domain is going: a held run records its list before its
        // leavers, and an approval in between would find them still in the group.
        // The lock also keeps two approvals of one domain apart.
        let run_lock = self.run_lock(domain);
        let _run = run_lock.lock().await;
        engine.settle().await?;
        let (approved, applied) = {
            let p = engine.projector.read();
            let run = p
                .domains
                .run(run_id)
                .filter(|r| r.domain_id == domain)
                .ok_or(Rejection::NotFound("sync run"))?;
            // Its users were let go with it; nothing of its runs is carried out.
            if p.domains.get(domain).is_none_or(|d| d.removed) {
                return Err(Rejection::DomainRemoved.into());
            }
            (run.approved, run.removals_applied)
        };
        if applied {
            return Err(Rejection::Conflict("the run was approved already".into()).into());
        }
        let mut last = 0;
        if !approved {
            // Whether the run is quarantined and not yet approved is the domain stream's
            // to decide.
            last = self
                .decide_domain(
                    domain,
                    run_id,
                    actor,
                    idledger_domain::decide::domain::DomainCommand::ApproveQuarantine(run_id),
                )
                .await?;
        }
        crate::crash::point("approve_before_removals");
        Ok(self.finish_approval(domain, run_id, actor).await?.max(last))
    }

    /// Carries out the removals of an approved run still owed, then records it finished.
    async fn finish_approval(
        &self,
        domain: DomainId,
        run_id: SyncRunId,
        actor: &Actor,
    ) -> Result<u64, SyncError> {
        let (behavior, held) = {
            let p = self.inner.engine.projector.read();
            let run = p
                .domains
                .run(run_id)
                .ok_or(Rejection::NotFound("sync run"))?;
            let behavior = approval_behavior(&p, run).ok_or(Rejection::NotFound("domain"))?;
            (behavior, run.held_removals.clone())
        };
        let applied = self.apply_held(run_id, behavior, held, actor).await?;
        let done = self
            .decide_domain(
                domain,
                run_id,
                actor,
                idledger_domain::decide::domain::DomainCommand::FinishApproval(run_id),
            )
            .await?;
        Ok(applied.map_or(done, |p| p.max(done)))
    }

    async fn decide_domain(
        &self,
        domain: DomainId,
        run_id: SyncRunId,
        actor: &Actor,
        command: idledger_domain::decide::domain::DomainCommand,
    ) -> Result<u64, SyncError> {
        Ok(crate::store::decide_and_append(
            &*self.inner.engine.log,
            &StreamId::domain(domain),
            actor,
            Some(run_id.0),
            idledger_domain::decide::domain::evolve,
            |st| idledger_domain::decide::domain::decide(st, command.clone()),
        )
        .await?)
    }

    /// Finishes, in the background, every approval an earlier process left cut short (at
    /// start): the approved runs not on record as finished.
    pub fn finish_approvals(&self) {
        let unfinished: Vec<(DomainId, SyncRunId)> = {
            let p = self.inner.engine.projector.read();
            p.domains
                .runs()
                .filter(|r| r.approved && !r.removals_applied)
                // A removed domain's users were all let go with it; its runs take no more.
                .filter(|r| p.domains.get(r.domain_id).is_some_and(|d| !d.removed))
                .map(|r| (r.domain_id, r.run_id))
                .collect()
        };
        if unfinished.is_empty() {
            return;
        }
        let svc = self.clone();
        tokio::spawn(async move {
            for (domain, run_id) in unfinished {
                let run_lock = svc.run_lock(domain);
                let _run = run_lock.lock().await;
                match svc.finish_approval(domain, run_id, &Actor::System).await {
                    Ok(_) => {
                        tracing::info!(run = %run_id.0, "finished an approval an earlier process left cut short")
                    }
                    Err(e) => {
                        tracing::error!(run = %run_id.0, error = %e, "finishing an approved quarantine failed")
                    }
                }
            }
        });
    }

    /// Applies the removal `behavior` to each of `held` still owed it. Answers the position
    /// of the last event, if any was appended.
    async fn apply_held(
        &self,
        run_id: SyncRunId,
        behavior: RemovalBehavior,
        held: Vec<UserId>,
        actor: &Actor,
    ) -> Result<Option<u64>, SyncError> {
        let engine = &self.inner.engine;
        let positions = stream::iter(held)
            .map(|user| async move {
                let stream = StreamId::user(user);
                let reason = {
                    let p = engine.projector.read();
                    removal_owed(&p, user, behavior)
                };
                let Some(reason) = reason else {
                    return Ok::<Option<u64>, SyncError>(None);
                };
                // Decided on the user's stream through the command path: whether they are
                // still out, and which writes their key is owed, as of the append (an
                // agent's answer or an admin's change meanwhile is folded in, not lost).
                // As the last decision (the one appended) found: anything to do, a deletion.
                let acted = AtomicBool::new(false);
                let deletes = AtomicBool::new(false);
                let p = crate::store::decide_and_append(
                    &*engine.log,
                    &stream,
                    actor,
                    Some(run_id.0),
                    user_evolve,
                    |st| {
                        let events = idledger_domain::decide::user::decide(
                            st,
                            UserCommand::ApplyHeldRemoval { behavior, reason },
                        )?;
                        let deleted = events.iter().any(|e| matches!(e, Event::UserDeleted(_)));
                        acted.store(!events.is_empty(), Ordering::Relaxed);
                        deletes.store(deleted, Ordering::Relaxed);
                        Ok(events)
                    },
                )
                .await?;
                if deletes.load(Ordering::Relaxed) {
                    engine.keyring.shred(&stream)?;
                }
                Ok(acted.load(Ordering::Relaxed).then_some(p))
            })
            .buffer_unordered(64)
            .try_collect::<Vec<Option<u64>>>()
            .await?;
        Ok(positions.into_iter().flatten().max())
    }

    /// Waits until a run, an approval or an import of the domain still going has ended,
    /// its appends landed. Called after the domain's removal, whatever comes later sees
    /// the domain removed.
    pub async fn quiesce(&self, domain: DomainId) {
        let run_lock = self.run_lock(domain);
        drop(run_lock.lock().await);
        let import_lock = self.import_lock(domain);
        drop(import_lock.write().await);
    }

    /// Imports candidates of `domain` (all of them with `None`) with the domain's SSO
    /// defaults. Every id is checked before anything is appended. Returns how many were
    /// imported and the position of the last event.
    pub async fn import(
        &self,
        domain: DomainId,
        ids: Option<Vec<UserId>>,
        actor: &Actor,
    ) -> Result<(usize, u64), SyncError> {
        let engine = &self.inner.engine;
        // Made-up ids leave nothing behind (each domain's lock is kept for good).
        if engine.projector.read().domains.get(domain).is_none() {
            return Err(Rejection::NotFound("domain").into());
        }
        // Under the domain's import lock, which a removal waits for before its users
        // leave: an import that outlasted the removal would bring them back after they
        // left. (Not the run lock: an import need not wait for a run reading Graph.)
        let import_lock = self.import_lock(domain);
        let _import = import_lock.read().await;
        engine.settle().await?;
        let (sso, targets) = {
            let p = engine.projector.read();
            let d = p.domains.get(domain).ok_or(Rejection::NotFound("domain"))?;
            if d.removed {
                return Err(Rejection::Conflict(format!("domain {} was removed", d.name)).into());
            }
            let targets: Vec<UserId> = match ids {
                None => p
                    .users
                    .of_domain(domain)
                    .filter(|u| u.status == UserStatus::Candidate && u.in_sync_group)
                    .map(|u| u.id)
                    .collect(),
                Some(mut ids) => {
                    // Each user once: a repeated id is one import, counted once.
                    ids.sort_unstable();
                    ids.dedup();
                    for id in &ids {
                        match p.users.get(*id) {
                            Some(u)
                                if u.domain_id == domain
                                    && u.status == UserStatus::Candidate
                                    && u.in_sync_group => {}
                            // Imported already: nothing to do, and not an error.
                            Some(u)
                                if u.domain_id == domain
                                    && matches!(
                                        u.status,
                                        UserStatus::Active | UserStatus::Deactivated
                                    ) => {}
                            _ => {
                                return Err(Rejection::Invalid {
                                    field: "user_ids",
                                    message: format!("{} is not a candidate of this domain", id.0),
                                }
                                .into())
                            }
                        }
                    }
                    ids
                }
            };
            (d.sso_defaults, targets)
        };
        let results: Vec<Option<u64>> = stream::iter(targets)
            .map(|user| async move {
                let imports = AtomicBool::new(false);
                match crate::store::decide_and_append(
                    &*engine.log,
                    &StreamId::user(user),
                    actor,
                    None,
                    user_evolve,
                    |st| {
                        let events =
                            idledger_domain::decide::user::decide(st, UserCommand::Import(sso))?;
                        imports.store(!events.is_empty(), Ordering::Relaxed);
                        Ok(events)
                    },
                )
                .await
                {
                    // Only what was imported now counts (one imported already decides nothing).
                    Ok(p) => Ok(imports.load(Ordering::Relaxed).then_some(p)),
                    // Left the group since the check: not imported, not an error.
                    Err(CommandError::Rejected(Rejection::Conflict(_))) => Ok(None),
                    Err(e) => Err(SyncError::from(e)),
                }
            })
            .buffer_unordered(256)
            .try_collect()
            .await?;
        let imported = results.iter().flatten().count();
        let last = results
            .into_iter()
            .flatten()
            .max()
            .unwrap_or_else(|| engine.log.head().position);
        Ok((imported, last))
    }
}

/// Shreds the keys the key store still holds of `domain`'s deleted users.
fn shred_deleted(engine: &Engine, domain: DomainId) {
    let deleted: Vec<StreamId> = engine
        .projector
        .read()
        .users
        .of_domain(domain)
        .filter(|u| u.status == UserStatus::Deleted)
        .map(|u| StreamId::user(u.id))
        .collect();
    for stream in deleted {
        // Not only where the store still holds the key: a shred whose rewrite failed has
        // taken it from memory but not from the file, and this retries that rewrite (a
        // no-op when none is owed).
        if let Err(e) = engine.keyring.shred(&stream) {
            tracing::warn!(%stream, error = %e, "a deleted user's keys could not be shredded; the next run retries");
        }
    }
}

/// Resolves when the worker is cancelled; never when it is dropped without a cancel.
pub async fn wait_cancelled(mut rx: watch::Receiver<bool>) {
    if rx.wait_for(|c| *c).await.is_err() {
        // The worker is gone without a cancel: never fire.
        std::future::pending::<()>().await;
    }
}

/// The removal behaviour an approval of `run` applies: neither a setting made stricter
/// after the quarantine (deactivate became delete) nor the one it was held under, if it
/// became milder since. `None`: the run's domain is gone.
pub(super) fn approval_behavior(
    p: &idledger_projections::Projections,
    run: &idledger_projections::SyncRunView,
) -> Option<RemovalBehavior> {
    let now = p.domains.get(run.domain_id)?.settings.removal_behavior;
    Some(run.held_under.map_or(now, |held| held.milder(now)))
}

/// Why `user` left, when a held removal under `behavior` still has something to do to
/// them: out of the sync group, and not yet removed as `behavior` says.
pub(super) fn removal_owed(
    p: &idledger_projections::Projections,
    user: UserId,
    behavior: RemovalBehavior,
) -> Option<idledger_domain::LeaveReason> {
    let u = p.users.get(user)?;
    let owed = match behavior {
        RemovalBehavior::Keep | RemovalBehavior::Deactivate => u.status == UserStatus::Active,
        RemovalBehavior::Delete => {
            matches!(u.status, UserStatus::Active | UserStatus::Deactivated)
        }
    };
    if owed && !u.in_sync_group {
        u.left_reason
    } else {
        None
    }
}

/// The most a scheduled run waits on Graph's word: past it, the interval resumes.
const MOST_ASKED_WAIT: Duration = Duration::from_secs(24 * 3600);

/// Until the next scheduled run: the domain's interval (jittered, so domains drift apart),
/// or longer when Graph's last answer asked for a longer wait (`Retry-After` beyond what
/// the client waits itself): asking sooner only counts against the tenant's budget.
fn next_wait(interval_minutes: u32, jitter: f64, asked: Option<Duration>) -> Duration {
    let interval = Duration::from_secs_f64(f64::from(interval_minutes) * 60.0 * jitter);
    interval.max(asked.unwrap_or_default().min(MOST_ASKED_WAIT))
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn a_scheduled_run_waits_as_long_as_graph_asked_within_a_day() {
        let minutes = |d: Duration| d.as_secs() / 60;
        assert_eq!(minutes(next_wait(15, 1.0, None)), 15);
        assert_eq!(
            minutes(next_wait(15, 1.0, Some(Duration::from_secs(60)))),
            15
        );
        assert_eq!(
            minutes(next_wait(15, 1.0, Some(Duration::from_secs(3600)))),
            60
        );
        assert_eq!(
            minutes(next_wait(15, 1.0, Some(Duration::from_secs(u64::MAX / 4)))),
            24 * 60
        );
    }
}
