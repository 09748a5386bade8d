//! Password rotation (ENGINE.md §7): never lock anyone out.
//!
//! The rules are [`idledger_domain::rotation`]'s, over the user's stream
//! ([`RotationStream`]), decided at the append through the one command path
//! ([`crate::store::decide_and_append_timed`]); this module carries them out. A rotation
//! is `RotationStarted` with the new password sealed,
//! appended (so flushed) before Graph is asked; then, per attempt, Graph's answer decides
//! the next event ([`after_attempt`]): `RotationSucceeded` with the key write in the same
//! append, a definite `RotationFailed` (only while no attempt may have landed),
//! `RotationRetried` with the *same* password, or `RotationFailed { retryable: true }`:
//! given up for now, the candidate kept and tried again after a wait.
//!
//! An attempt that may have reached Graph without an answer (no answer, a 5xx, the
//! process stopped, the credentials went) opens the uncertainty window: no *different*
//! password is sent for that user until it has passed, and then the current password is
//! sent again first ([`RotationReason::Reassert`]). A process start records every open
//! rotation as interrupted before driving it again with its own password.
//!
//! The scheduler ticks every `check_every`: it asks [`next`] for every user and starts,
//! resumes or reasserts accordingly, at most `max_concurrent_rotations` per domain at a
//! time (a semaphore shared with resumed rotations).

use crate::engine::Engine;
use crate::password;
use crate::projector::NotReached;
use crate::secrets::{Secret, SecretsError};
use crate::store::AppendError;
use crate::sync::{wait_cancelled, SyncService};
use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use idledger_domain::decide::Rejection;
use idledger_domain::rotation::{
    after_attempt, check_rotatable, decide_interrupted, decide_start, decide_unopenable,
    events_after, evolve_stream, in_federated_domain, may_ever_rotate, next, Asked, AttemptResult,
    Next, NextStep, Protocol, RotationFacts, RotationStream, StartDecision,
};
use idledger_domain::{
    Actor, DomainId, Event, KeyWriteId, RotationId, RotationReason, StreamId, UserId,
};
use idledger_projections::{Projections, RotationOutcome, UserStatus, UserView};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Why a rotation request failed, or why a rotation was left open for the next tick.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// The rules refused it.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The domain has no credentials now: nothing reaches Graph until they are back.
    #[error("{0}")]
    NoCredentials(String),
    /// Sealing or unsealing failed.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// Appending failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// The projections did not catch up in time.
    #[error(transparent)]
    NotReached(#[from] NotReached),
    /// The service is shutting down.
    #[error("the rotation service is stopping")]
    Stopping,
    /// Graph kept throttling the attempt (nothing of it landed): the rotation stays open
    /// for the scheduler's next look.
    #[error("Graph keeps throttling: {0}")]
    Throttled(String),
}

impl From<crate::store::CommandError> for RotationError {
    fn from(e: crate::store::CommandError) -> Self {
        use crate::store::CommandError as C;
        match e {
            C::Rejected(r) => RotationError::Rejected(r),
            C::Append(a) => RotationError::Append(a),
            C::Store(s) => RotationError::Append(AppendError::Store(s)),
            C::Contended => conflict("the user changed meanwhile; retry"),
        }
    }
}

fn not_found(what: &'static str) -> RotationError {
    Rejection::NotFound(what).into()
}

fn conflict(message: impl Into<String>) -> RotationError {
    Rejection::Conflict(message.into()).into()
}

/// Settings of the rotation scheduler.
#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// How often due and unfinished rotations are looked for.
    pub check_every: Duration,
    /// Attempts with the same password before the outcome is given up as unknown (for now).
    pub max_attempts: u32,
    /// First wait between attempts; doubles each time.
    pub retry_delay: Duration,
    /// How long after an attempt with an unknown outcome a request may still land: no
    /// different password is sent for that user before it has passed.
    pub uncertainty: Duration,
}

/// The shortest uncertainty window by default: Graph's request timeout plus a margin,
/// and never less than this.
pub const MIN_DEFAULT_UNCERTAINTY: Duration = Duration::from_secs(120);

impl RotationConfig {
    /// The default window for a Graph request timeout: the timeout plus a minute, at
    /// least [`MIN_DEFAULT_UNCERTAINTY`].
    pub fn default_uncertainty(graph_timeout: Duration) -> Duration {
        (graph_timeout + Duration::from_secs(60)).max(MIN_DEFAULT_UNCERTAINTY)
    }

    fn protocol(&self) -> Protocol {
        Protocol {
            uncertainty: chrono::Duration::from_std(self.uncertainty)
                .unwrap_or(chrono::Duration::MAX),
            max_attempts: self.max_attempts.max(1),
        }
    }
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            check_every: Duration::from_secs(60),
            max_attempts: 4,
            retry_delay: Duration::from_secs(2),
            uncertainty: Self::default_uncertainty(
                crate::graph::RetryPolicy::default().request_timeout,
            ),
        }
    }
}

/// What `POST /v1/users/{id}/rotate` came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManualStart {
    /// Started now.
    Started {
        /// The rotation this belongs to (also the correlation id of its events).
        rotation_id: RotationId,
        /// Position of `RotationStarted`.
        position: u64,
    },
    /// Recorded; the scheduler starts it when the rules allow.
    Deferred {
        /// About when it starts.
        until: chrono::DateTime<Utc>,
        /// Position of `RotationRequested` (the log's head when it was recorded already).
        position: u64,
    },
}

/// What [`RotationService::begin`] came to.
enum Begun {
    /// `RotationStarted` is on the device: `password` is to be driven to Graph.
    Started {
        id: RotationId,
        position: u64,
        password: Secret,
    },
    /// An admin's request, recorded for the scheduler.
    Deferred {
        until: chrono::DateTime<Utc>,
        position: u64,
    },
}

struct Inner {
    engine: Engine,
    sync: SyncService,
    config: RotationConfig,
    /// Rotations being driven by this process.
    in_flight: Mutex<HashSet<RotationId>>,
    /// Rotations this process started, or recorded as interrupted when it found them
    /// open: every other open rotation may have had an attempt in flight when the last
    /// process stopped.
    recovered: Mutex<HashSet<RotationId>>,
    /// Rotations Graph kept throttling, and when the wait it asked for ends: no drive
    /// sends before then.
    throttled_until: Mutex<HashMap<RotationId, std::time::Instant>>,
    /// Domains whose due users are being worked through.
    busy: Mutex<HashSet<DomainId>>,
    /// Per domain: the configured limit and its semaphore.
    limits: Mutex<HashMap<DomainId, (u32, Limit)>>,
}

/// The rotation scheduler and protocol.
#[derive(Clone)]
pub struct RotationService {
    inner: Arc<Inner>,
}

/// The facts the rotation rules need, from the projections.
pub fn facts(p: &Projections, u: &UserView) -> RotationFacts {
    let d = p.domains.get(u.domain_id);
    RotationFacts {
        active: u.status == UserStatus::Active,
        in_sync_group: u.in_sync_group,
        in_rotation_group: u.in_rotation_group,
        has_key: u.key_id.is_some(),
        federated: d.is_some_and(|d| {
            in_federated_domain(&u.attributes.user_principal_name, &d.federated_domains)
        }),
        pending: u.password.in_flight().is_some(),
        needs_attention: u.password.open.as_ref().is_some_and(|o| o.gave_up),
        last_success: u.password.last_success,
        last_revealed: u.last_revealed_at,
        last_refused: u.password.last_refused_at,
        every_days: d
            .filter(|d| !d.removed && d.credentials.is_some())
            .and_then(|d| d.settings.auto_password_change_days),
        after_reveal_hours: d.map_or(24, |d| d.settings.rotate_after_reveal_hours),
    }
}

impl RotationService {
    /// Starts the scheduler's ticks.
    pub fn start(engine: Engine, sync: SyncService, config: RotationConfig) -> Self {
        let svc = RotationService {
            inner: Arc::new(Inner {
                engine,
                sync,
                config,
                in_flight: Mutex::new(HashSet::new()),
                recovered: Mutex::new(HashSet::new()),
                throttled_until: Mutex::new(HashMap::new()),
                busy: Mutex::new(HashSet::new()),
                limits: Mutex::new(HashMap::new()),
            }),
        };
        let weak = Arc::downgrade(&svc.inner);
        let every = svc.inner.config.check_every;
        tokio::spawn(async move {
            loop {
                let Some(inner) = weak.upgrade() else { return };
                RotationService { inner }.tick().await;
                tokio::time::sleep(every).await;
            }
        });
        svc
    }

    fn limit(&self, domain: DomainId, max: u32) -> Limit {
        let mut limits = self.inner.limits.lock().unwrap_or_else(|e| e.into_inner());
        let max = max.max(1);
        match limits.get_mut(&domain) {
            Some((m, l)) => {
                // The same limit, resized: a new one would not count the rotations
                // holding permits of the old, and both limits would run at once.
                l.resize(*m, max);
                *m = max;
                l.clone()
            }
            None => {
                let l = Limit::new(max);
                limits.insert(domain, (max, l.clone()));
                l
            }
        }
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the rules say for `u` now. A new password is wanted when the schedule says so
    /// or an admin's request is recorded, for a user who may be rotated (active, with a
    /// key, in a domain with credentials); an open rotation is settled regardless, as long
    /// as the domain has credentials to reach Graph with.
    fn next_for(&self, p: &Projections, u: &UserView, now: chrono::DateTime<Utc>) -> Next {
        let credentials = p
            .domains
            .get(u.domain_id)
            .is_some_and(|d| !d.removed && d.credentials.is_some());
        if !credentials {
            return Next::Idle;
        }
        let f = facts(p, u);
        let wanted = u.password.wanted(f.due_at(now)).filter(|_| f.may_rotate());
        next(&u.password, wanted, now, &self.inner.config.protocol())
    }

    /// When the next rotation with a new password is expected to start for `u`, and why:
    /// the schedule or a recorded request, not before the uncertainty window has passed.
    pub fn next_due(
        &self,
        p: &Projections,
        u: &UserView,
        now: chrono::DateTime<Utc>,
    ) -> Option<(chrono::DateTime<Utc>, RotationReason)> {
        // Most users are passed by before their facts (a domain lookup, the
        // federated-domain check) are gathered.
        if !may_ever_rotate(u.status == UserStatus::Active, u.key_id.is_some()) {
            return None;
        }
        let f = facts(p, u);
        let (at, reason) = match u.password.requested.filter(|_| f.may_rotate()) {
            Some(reason) => (now, reason),
            None => f.next_due(now)?,
        };
        let not_before = u.password.window_end(&self.inner.config.protocol());
        Some((not_before.map_or(at, |w| w.max(at)), reason))
    }

    /// One look: settle open rotations, reassert where a window has passed, start the
    /// due and the requested ones.
    pub async fn tick(&self) {
        if self.inner.engine.settle().await.is_err() {
            return;
        }
        let now = Utc::now();
        let mut drive = Vec::new();
        let mut start: HashMap<DomainId, Vec<(UserId, RotationReason)>> = HashMap::new();
        {
            let p = self.inner.engine.projector.read();
            for u in p.users.iter_after(None) {
                match self.next_for(&p, u, now) {
                    Next::Drive(id) => drive.push(id),
                    Next::Reassert => start
                        .entry(u.domain_id)
                        .or_default()
                        .push((u.id, RotationReason::Reassert)),
                    Next::Start(reason) => {
                        start.entry(u.domain_id).or_default().push((u.id, reason))
                    }
                    Next::Idle | Next::WaitUntil(_) => {}
                }
            }
        }
        {
            let mut until = Self::lock(&self.inner.throttled_until);
            let now = std::time::Instant::now();
            until.retain(|_, t| *t > now);
            drive.retain(|id| !until.contains_key(id));
        }
        for id in drive {
            let svc = self.clone();
            tokio::spawn(async move { svc.drive(id, None).await });
        }
        for (domain, users) in start {
            if !Self::lock(&self.inner.busy).insert(domain) {
                continue;
            }
            let svc = self.clone();
            tokio::spawn(async move {
                let _busy = BusyDomain {
                    busy: &svc.inner.busy,
                    domain,
                };
                let max = {
                    let p = svc.inner.engine.projector.read();
                    p.domains
                        .get(domain)
                        .map_or(1, |d| d.settings.max_concurrent_rotations)
                };
                stream::iter(users)
                    .for_each_concurrent(max.max(1) as usize, |(user, reason)| {
                        let svc = svc.clone();
                        async move {
                            if let Err(e) = svc
                                .rotate_now(user, reason, Actor::Scheduler(domain))
                                .await
                            {
                                tracing::debug!(user = %user.0, error = %e, "scheduled rotation not started");
                            }
                        }
                    })
                    .await;
            });
        }
    }

    /// Starts a rotation and drives it to its outcome, within the domain's limit.
    async fn rotate_now(
        &self,
        user: UserId,
        reason: RotationReason,
        actor: Actor,
    ) -> Result<(), RotationError> {
        let (domain, max) = self.domain_of(user)?;
        let permit = self
            .limit(domain, max)
            .acquire()
            .await
            .map_err(|_| RotationError::Stopping)?;
        match self.begin(user, Some(reason), actor).await? {
            Begun::Started { id, password, .. } => {
                self.drive(id, Some((password, Some(permit)))).await
            }
            // Only an admin's request is deferred.
            Begun::Deferred { .. } => {}
        }
        Ok(())
    }

    fn domain_of(&self, user: UserId) -> Result<(DomainId, u32), RotationError> {
        let p = self.inner.engine.projector.read();
        let u = p.users.get(user).ok_or_else(|| not_found("user"))?;
        let max = p
            .domains
            .get(u.domain_id)
            .map_or(1, |d| d.settings.max_concurrent_rotations);
        Ok((u.domain_id, max))
    }

    /// `POST /v1/users/{id}/rotate`: starts a rotation now when the rules allow (its
    /// outcome follows on a task), else records the request for the scheduler.
    pub async fn start_manual(
        &self,
        user: UserId,
        actor: Actor,
    ) -> Result<ManualStart, RotationError> {
        self.inner.engine.settle().await?;
        match self.begin(user, None, actor).await? {
            Begun::Started {
                id,
                position,
                password,
            } => {
                let svc = self.clone();
                tokio::spawn(async move { svc.drive(id, Some((password, None))).await });
                Ok(ManualStart::Started {
                    rotation_id: id,
                    position,
                })
            }
            Begun::Deferred { until, position } => Ok(ManualStart::Deferred { until, position }),
        }
    }

    /// The user, if a rotation (new password) may be started for them at all.
    fn rotatable<'p>(
        &self,
        p: &'p Projections,
        user: UserId,
    ) -> Result<&'p UserView, RotationError> {
        let u = p.users.get(user).ok_or_else(|| not_found("user"))?;
        let f = facts(p, u);
        check_rotatable(u.status.decided(), f.has_key, f.federated)?;
        p.domains
            .get(u.domain_id)
            .ok_or_else(|| not_found("domain"))?;
        Ok(u)
    }

    /// Makes and seals a new password (a reassert seals nothing new: it carries the
    /// current one), then decides the start on the user's stream as it is at the append
    /// ([`decide_start`]) and appends `RotationStarted`, or an admin's deferred request.
    /// `reason`: what the scheduler decided; `None` for an admin's request.
    async fn begin(
        &self,
        user: UserId,
        reason: Option<RotationReason>,
        actor: Actor,
    ) -> Result<Begun, RotationError> {
        let stream = StreamId::user(user);
        // What the rules need from other streams (the domain's settings and federation,
        // the schedule), from the projections; the user's own state is folded at the append.
        let (asked, length, domain, federated) = {
            let p = self.inner.engine.projector.read();
            let u = self.rotatable(&p, user)?;
            let f = facts(&p, u);
            let asked = match reason {
                Some(reason) => Asked::Scheduler {
                    reason,
                    due: f.due_at(Utc::now()),
                    may_rotate: f.may_rotate(),
                },
                None => Asked::Admin,
            };
            let d = p
                .domains
                .get(u.domain_id)
                .ok_or_else(|| not_found("domain"))?;
            (asked, d.settings.password_length, u.domain_id, f.federated)
        };
        if self.inner.sync.client(domain).is_none() {
            return Err(RotationError::NoCredentials(
                self.inner.sync.no_worker(domain).to_string(),
            ));
        }
        let keyring = &self.inner.engine.keyring;
        let new_password = match reason {
            Some(RotationReason::Reassert) => None,
            _ => {
                let password = password::generate(length);
                let sealed = keyring.seal(&stream, &password)?;
                Some((password, sealed))
            }
        };
        let rotation_id = RotationId(uuid::Uuid::now_v7());
        // Known to this process before it is in the log: a tick that sees the new rotation
        // at once must not take it for one an earlier process left open (interrupted), nor
        // drive it itself (behind the domain's limit, which a manual rotation is not).
        // The drive the caller starts next is its driver.
        Self::lock(&self.inner.recovered).insert(rotation_id);
        // Given up if this future is (an HTTP request whose client went away while the
        // append was under way, which may still land): a tick then drives it.
        let claim = DriverClaim {
            inner: &self.inner,
            id: rotation_id,
        };
        Self::lock(&self.inner.in_flight).insert(rotation_id);
        let decided = Mutex::new(None);
        let protocol = self.inner.config.protocol();
        let log = &*self.inner.engine.log;
        let appended = crate::store::decide_and_append_timed(
            log,
            &stream,
            &actor,
            Some(rotation_id.0),
            evolve_stream,
            |s| {
                let sealed = new_password.as_ref().map(|(_, sealed)| sealed);
                let decision = decide_start(
                    s,
                    asked,
                    federated,
                    rotation_id,
                    sealed,
                    Utc::now(),
                    &protocol,
                )?;
                let events = decision.events().to_vec();
                *Self::lock(&decided) = Some(decision);
                Ok(events)
            },
        )
        .await;
        // The password is on the device before Graph ever sees it, whatever the log's
        // durability: with `durability = "process"` an acknowledged append may still be
        // lost with the machine, and a password Graph set but the log lost locks its user
        // out.
        let settled = match appended {
            Ok(position) => crate::store::EventLog::settle(log)
                .await
                .map(|()| position)
                .map_err(|e| RotationError::Append(AppendError::Store(e))),
            Err(e) => Err(e.into()),
        };
        let decided = Self::lock(&decided).take();
        let (position, events, reason) = match (settled, decided) {
            (Ok(position), Some(StartDecision::Start { events, reason })) => {
                (position, events, reason)
            }
            (result, decided) => {
                Self::lock(&self.inner.recovered).remove(&rotation_id);
                let position = result?;
                return match decided {
                    Some(StartDecision::Deferred { until, .. }) => {
                        Ok(Begun::Deferred { until, position })
                    }
                    _ => Err(conflict("the rotation was not decided")),
                };
            }
        };
        crate::crash::point("after_started");
        let password = match (new_password, reason) {
            (Some((password, _)), r) if r != RotationReason::Reassert => password,
            _ => match events.first() {
                Some(Event::RotationStarted(started)) => {
                    keyring.unseal(&stream, &started.sealed_password)?
                }
                _ => return Err(conflict("the rotation was not decided")),
            },
        };
        // The caller's drive, started with no await in between, takes it over.
        std::mem::forget(claim);
        Ok(Begun::Started {
            id: rotation_id,
            position,
            password,
        })
    }

    /// Drives a rotation to its outcome (or leaves it open when its domain's worker goes
    /// away). `started` carries the password and permit of a rotation just begun (whose
    /// `begin` made this its one driver); a resumed one takes both itself.
    async fn drive(&self, id: RotationId, started: Option<(Secret, Permit)>) {
        if started.is_none() && !Self::lock(&self.inner.in_flight).insert(id) {
            return;
        }
        // Let go however the drive ends (a panic, the task dropped at shutdown): a claim
        // left behind would keep every later look from driving the rotation.
        let _claim = DriverClaim {
            inner: &self.inner,
            id,
        };
        let outcome = |this: &Self| {
            let p = this.inner.engine.projector.read();
            p.rotations.get(id).map(|r| {
                let domain = r
                    .domain_id
                    .and_then(|d| p.domains.get(d))
                    .filter(|d| !d.removed)
                    .map(|d| d.name.clone());
                (r.outcome, r.started_at, r.finished_at, domain)
            })
        };
        let before = outcome(self).map(|(o, ..)| o);
        if let Err(e) = self.drive_inner(id, started).await {
            tracing::warn!(rotation = %id.0, error = %e, "rotation left open; the scheduler takes it up again");
        }
        // The outcome just appended, projected (bounded: a metric is not worth a stall).
        let engine = &self.inner.engine;
        let _ = engine
            .projector
            .wait_for(engine.log.head().position, Duration::from_secs(2))
            .await;
        if let Some((after, started_at, finished_at, domain)) = outcome(self) {
            let label = match after {
                RotationOutcome::Succeeded => Some("succeeded"),
                RotationOutcome::Failed => Some("refused"),
                RotationOutcome::Unknown => Some("unknown"),
                RotationOutcome::Pending => None,
            };
            // A rotation is counted when it reaches an outcome, not each time a drive
            // ends: another round that gives up again leaves it unknown, as it was.
            let reached = before != Some(after);
            if let (Some(label), true) = (label, reached) {
                let end = finished_at.unwrap_or_else(chrono::Utc::now);
                let took = (end - started_at).to_std().unwrap_or_default();
                let was_unknown = before == Some(RotationOutcome::Unknown);
                crate::metrics::rotation_driven(domain, label, took, was_unknown);
            }
        }
    }

    /// Deleted, so their keys were shredded on purpose.
    fn user_deleted(&self, user: UserId) -> bool {
        let p = self.inner.engine.projector.read();
        p.users
            .get(user)
            .is_some_and(|u| u.status == UserStatus::Deleted)
    }

    /// The user and state of an open rotation, from the projections.
    fn open_rotation(&self, id: RotationId) -> Result<Option<OpenView>, RotationError> {
        let p = self.inner.engine.projector.read();
        let r = p.rotations.get(id).ok_or_else(|| not_found("rotation"))?;
        let u = p.users.get(r.user_id).ok_or_else(|| not_found("user"))?;
        let Some(open) = u.password.open.clone().filter(|o| o.rotation_id == id) else {
            return Ok(None);
        };
        let max = p
            .domains
            .get(u.domain_id)
            .map_or(1, |d| d.settings.max_concurrent_rotations);
        Ok(Some(OpenView {
            user: u.id,
            domain: u.domain_id,
            external: u.external_id.clone(),
            sealed: r.sealed_password.clone(),
            open,
            max,
        }))
    }

    /// Records, once per process, that `o` was found open: the last process (or an
    /// attempt whose outcome could not be recorded) may have had a request in flight.
    /// Answers whether it recorded that now.
    async fn note_resumed(&self, id: RotationId, o: &OpenView) -> Result<bool, RotationError> {
        if Self::lock(&self.inner.recovered).contains(&id) {
            return Ok(false);
        }
        self.record(o, id, |s| decide_interrupted(s, id)).await?;
        Self::lock(&self.inner.recovered).insert(id);
        Ok(true)
    }

    /// Appends what `decide` makes of the user's stream as it is at the append, for the
    /// open rotation `id` of `o`.
    async fn record(
        &self,
        o: &OpenView,
        id: RotationId,
        decide: impl Fn(&RotationStream) -> Vec<Event>,
    ) -> Result<u64, RotationError> {
        let position = crate::store::decide_and_append_timed(
            &*self.inner.engine.log,
            &StreamId::user(o.user),
            &Actor::Scheduler(o.domain),
            Some(id.0),
            evolve_stream,
            |s| Ok(decide(s)),
        )
        .await?;
        Ok(position)
    }

    async fn drive_inner(
        &self,
        id: RotationId,
        started: Option<(Secret, Permit)>,
    ) -> Result<(), RotationError> {
        let engine = &self.inner.engine;
        let (mut password, _permit) = match started {
            Some((pw, permit)) => (Some(pw), permit),
            None => {
                let Some(o) = self.open_rotation(id)? else {
                    return Ok(());
                };
                // On record before waiting for the domain's turn: until it is, reveal and
                // the rules take the attempt the last process may have sent for unsent.
                self.note_resumed(id, &o).await?;
                let permit = self
                    .limit(o.domain, o.max)
                    .acquire()
                    .await
                    .map_err(|_| RotationError::Stopping)?;
                (None, Some(permit))
            }
        };
        // Graph's throttling answers in a row, and the wait it last asked for.
        let mut throttled = 0u32;
        let mut wait_asked = None;
        loop {
            engine.settle().await?;
            let Some(o) = self.open_rotation(id)? else {
                return Ok(());
            };
            let stream = StreamId::user(o.user);
            let actor = Actor::Scheduler(o.domain);
            if self.note_resumed(id, &o).await? {
                continue;
            }
            let pw = match password.take() {
                Some(pw) => pw,
                None => match engine.keyring.unseal(&stream, &o.sealed) {
                    Ok(pw) => pw,
                    // The key store could not be read: the password is still there, and an
                    // attempt may have reached Graph. The rotation stays open for the next
                    // turn; only a key that is gone ends it.
                    Err(e @ SecretsError::Storage(_)) => return Err(e.into()),
                    Err(e) if !self.user_deleted(o.user) => {
                        // A key lost or damaged for a user who still has it: ending the
                        // rotation would forget a password Graph may hold. It stays open
                        // (in flight on the user, a warning at every turn) until an operator
                        // restores the key store.
                        return Err(e.into());
                    }
                    Err(e) => {
                        // The user's key was shredded: nothing to set, nothing to keep.
                        let error = format!("the sealed password cannot be opened: {e}");
                        self.record(&o, id, |s| decide_unopenable(s, id, error.clone()))
                            .await?;
                        return Ok(());
                    }
                },
            };
            let Some((client, cancelled)) = self.inner.sync.client(o.domain) else {
                return Err(RotationError::NoCredentials(
                    "the domain has no credentials; the rotation waits for them".into(),
                ));
            };
            // The cancel first: credentials removed before the request starts send nothing.
            let answer = tokio::select! {
                biased;
                _ = wait_cancelled(cancelled) => {
                    // The request may have left: record that its outcome is unknown.
                    if let Err(e) = self.record(&o, id, |s| decide_interrupted(s, id)).await {
                        // Not on record either: the next drive records it as interrupted.
                        Self::lock(&self.inner.recovered).remove(&id);
                        return Err(e);
                    }
                    return Err(RotationError::NoCredentials("the domain's credentials were removed".into()));
                }
                a = client.set_password(&o.external, &pw) => a,
            };
            crate::crash::point("after_graph");
            let result = match answer {
                Ok(set) if set.after_unavailable => AttemptResult::SetAfterUnknown {
                    error: "Graph answered 503 first; that request may still be applied".into(),
                },
                Ok(_) => AttemptResult::Set,
                Err(e) if e.error.is_throttled() && !e.maybe_applied => {
                    throttled += 1;
                    wait_asked = e.error.retry_after();
                    AttemptResult::Throttled {
                        error: crate::graph::clipped(
                            &e.error.to_string(),
                            crate::graph::MAX_RECORDED_ERROR,
                        ),
                    }
                }
                // Graph's words are a peer's: bounded, so the attempt can always be recorded.
                Err(e) if e.error.is_definite() && !e.maybe_applied => AttemptResult::Refused {
                    code: e.error.code(),
                    error: crate::graph::clipped(
                        &e.error.to_string(),
                        crate::graph::MAX_RECORDED_ERROR,
                    ),
                },
                // Not an unknown outcome: an uncertainty window would let no later
                // refusal end the rotation, for a password Graph was never asked to set.
                Err(e) if e.never_sent() => {
                    throttled += 1;
                    wait_asked = None;
                    AttemptResult::NotSent {
                        error: crate::graph::clipped(
                            &e.error.to_string(),
                            crate::graph::MAX_RECORDED_ERROR,
                        ),
                    }
                }
                Err(e) => AttemptResult::Unknown {
                    error: crate::graph::clipped(
                        &e.error.to_string(),
                        crate::graph::MAX_RECORDED_ERROR,
                    ),
                },
            };
            let step = after_attempt(&o.open, result, self.inner.config.max_attempts);
            if let NextStep::Wait { error } = &step {
                // Nothing of the attempt landed, so nothing to record: as Graph asked (or
                // doubling, when it did not say), the same password again; past the
                // attempts of one drive, at the scheduler's next look (holding no slot
                // of the domain meanwhile).
                let base = self.inner.config.retry_delay;
                let wait = wait_asked
                    .unwrap_or(base * 2u32.saturating_pow(throttled.min(6)))
                    .max(base)
                    .min(MAX_THROTTLE_WAIT);
                if throttled >= self.inner.config.max_attempts {
                    // The next drive waits what Graph asked too: the scheduler's look
                    // may come sooner.
                    Self::lock(&self.inner.throttled_until)
                        .insert(id, std::time::Instant::now() + wait);
                    tracing::warn!(rotation = %id.0, ?wait, %error, "Graph keeps throttling: the rotation waits for a later look");
                    return Err(RotationError::Throttled(error.clone()));
                }
                tracing::info!(rotation = %id.0, ?wait, %error, "throttled by Graph: the same password after the wait");
                password = Some(pw);
                tokio::time::sleep(wait).await;
                continue;
            }
            // Decided on the user's stream as it is at the append: the writes still owed and
            // the key held *now* (an admin may have moved the key while Graph was asked).
            let write_id = KeyWriteId(uuid::Uuid::now_v7());
            let recorded = crate::store::decide_and_append(
                &*engine.log,
                &stream,
                &actor,
                Some(id.0),
                idledger_domain::decide::user::evolve,
                |st| {
                    let key = st
                        .key_id
                        .clone()
                        .filter(|_| st.status != idledger_domain::decide::user::Status::Deleted);
                    Ok(events_after(
                        &step,
                        &o.open,
                        &st.undelivered(),
                        key.map(|k| (write_id, k)),
                    ))
                },
            )
            .await;
            if recorded.is_err() {
                // The attempt's outcome is not on record: the next drive must treat it as
                // possibly in flight (interrupted), never as a fresh start.
                Self::lock(&self.inner.recovered).remove(&id);
            }
            recorded.map_err(RotationError::from)?;
            match step {
                NextStep::Retry { attempt, .. } => {
                    let base = self.inner.config.retry_delay;
                    let wait = base * 2u32.saturating_pow(attempt.saturating_sub(1).min(6));
                    tracing::info!(rotation = %id.0, attempt, ?wait, "outcome unknown: the same password again");
                    password = Some(pw);
                    tokio::time::sleep(wait).await;
                }
                _ => return Ok(()),
            }
        }
    }
}

/// The longest wait for Graph's throttling within one drive of a rotation: a longer
/// `Retry-After` is cut to this (the next try is throttled again if it was too soon).
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(15 * 60);

/// What driving an open rotation needs to know.
struct OpenView {
    user: UserId,
    domain: DomainId,
    external: String,
    sealed: idledger_domain::SealedSecret,
    open: idledger_domain::rotation::OpenRotation,
    max: u32,
}

/// A permit of a domain's limit, held (for its drop) while the rotation runs; none for
/// manual rotations, which do not wait behind the scheduler's queue.
type Permit = Option<LimitPermit>;

/// A rotation being driven: claimed by `begin` for the drive it hands it to (released
/// if it hands it to none), or by a drive itself; given back however the drive ends.
struct DriverClaim<'a> {
    inner: &'a Inner,
    id: RotationId,
}

impl Drop for DriverClaim<'_> {
    fn drop(&mut self) {
        RotationService::lock(&self.inner.in_flight).remove(&self.id);
        if std::thread::panicking() {
            // A drive that panicked may have sent the password: the next drive is a
            // resumption, recorded as one (its attempt's outcome unknown), not the
            // continuation of this process's own.
            RotationService::lock(&self.inner.recovered).remove(&self.id);
        }
    }
}

/// A domain whose due users are being worked through, given back however that ends.
struct BusyDomain<'a> {
    busy: &'a Mutex<HashSet<DomainId>>,
    domain: DomainId,
}

impl Drop for BusyDomain<'_> {
    fn drop(&mut self) {
        RotationService::lock(self.busy).remove(&self.domain);
    }
}

/// A domain's limit on rotations at once, which may change while rotations run.
#[derive(Clone)]
struct Limit {
    semaphore: Arc<Semaphore>,
    /// Permits taken back from the limit but still held: each is forgotten, not returned,
    /// when its rotation ends.
    owed: Arc<std::sync::atomic::AtomicUsize>,
}

/// A place within a domain's [`Limit`], held while a rotation runs.
struct LimitPermit {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    owed: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let owed = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if let (Ok(_), Some(p)) = (owed, self.permit.take()) {
            p.forget();
        }
    }
}

impl Limit {
    fn new(max: u32) -> Limit {
        Limit {
            semaphore: Arc::new(Semaphore::new(max as usize)),
            owed: Arc::default(),
        }
    }

    async fn acquire(&self) -> Result<LimitPermit, tokio::sync::AcquireError> {
        Ok(LimitPermit {
            permit: Some(self.semaphore.clone().acquire_owned().await?),
            owed: self.owed.clone(),
        })
    }

    /// From `from` places in all to `to`. Fewer: the free ones go at once, the rest as the
    /// rotations holding them end, so none starts (waiting ones included) until fewer than
    /// the new limit run. More: places still owed are forgiven first.
    fn resize(&self, from: u32, to: u32) {
        use std::sync::atomic::Ordering;
        if to > from {
            let more = (to - from) as usize;
            let owed = self
                .owed
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n - n.min(more))
                })
                .unwrap_or_default();
            self.semaphore.add_permits(more - owed.min(more));
        } else if to < from {
            let fewer = (from - to) as usize;
            let owed = fewer - self.semaphore.forget_permits(fewer);
            self.owed.fetch_add(owed, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// However the limit moves while rotations hold places (and others wait), no more run
    /// than it says.
    #[tokio::test]
    async fn a_changed_limit_counts_the_rotations_already_running() {
        let l = Limit::new(3);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(l.acquire().await.unwrap());
        }
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await.unwrap() }
        });
        tokio::task::yield_now().await;
        l.resize(3, 1);
        held.pop();
        held.pop();
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "started while two ran under a limit of one"
        );
        held.pop();
        let one = waiting.await.unwrap();
        assert!(
            l.semaphore.available_permits() == 0,
            "more than the new limit"
        );
        l.resize(1, 4);
        let mut more = Vec::new();
        for _ in 0..3 {
            more.push(l.acquire().await.unwrap());
        }
        assert_eq!(l.semaphore.available_permits(), 0, "more than four");
        // Lowered while all four run, raised again before any ends: nothing is owed.
        l.resize(4, 2);
        l.resize(2, 3);
        drop((one, more));
        assert_eq!(l.semaphore.available_permits(), 3);
    }
}
