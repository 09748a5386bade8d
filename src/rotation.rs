//! Password rotation (ENGINE.md §7): never lock anyone out.
//!
//! A rotation is `RotationStarted` with the new password sealed, appended (so flushed)
//! before Graph is asked; then, per attempt, Graph's answer decides the next event
//! ([`idledger_domain::rotation::after_attempt`]): `RotationSucceeded` with the key write
//! in the same append, a definite `RotationFailed` (the previous password stays current),
//! or `RotationRetried` with the *same* sealed password until the attempts run out
//! (`RotationFailed { retryable: true }`, the user needs attention, both candidates kept).
//! A rotation with no outcome — the process died, or the credentials went — is driven
//! again by the next tick with its own password, so Graph and the engine agree in the end.
//!
//! The scheduler ticks every `check_every`: it resumes rotations without an outcome and
//! starts those due, at most `max_concurrent_rotations` per domain at a time (a semaphore
//! shared with manual and resumed rotations).

use crate::password;
use crate::secrets::{Secret, SecretsError};
use crate::store::{AppendError, ExpectedVersion};
use crate::sync::{wait_cancelled, Engine, SyncService};
use chrono::Utc;
use futures_util::stream::{self, StreamExt};
use idledger_domain::events::*;
use idledger_domain::rotation::{after_attempt, AttemptResult, NextStep, RotationFacts};
use idledger_domain::{
    Actor, DomainId, Event, KeyWriteId, KeyWriteState, RotationId, RotationReason, StreamId, UserId,
};
use idledger_projections::{Projections, RotationOutcome, UserStatus, UserView};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Fault injection for the crash tests: with `IDLEDGER_TEST_CRASH_AT` set to a point's
/// name the process aborts there, as a power cut would stop it.
fn crash_point(name: &str) {
    if std::env::var("IDLEDGER_TEST_CRASH_AT").is_ok_and(|v| v == name) {
        eprintln!("IDLEDGER_TEST_CRASH_AT={name}: aborting");
        std::process::abort();
    }
}

/// Why a rotation request failed.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// No such user.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The user's state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// Sealing failed.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// Appending failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// Something else on our side.
    #[error("{0}")]
    Internal(String),
}

/// Settings of the rotation scheduler.
#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// How often due and unfinished rotations are looked for.
    pub check_every: Duration,
    /// Attempts with the same password before the outcome is given up as unknown.
    pub max_attempts: u32,
    /// First wait between attempts; doubles each time.
    pub retry_delay: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        RotationConfig {
            check_every: Duration::from_secs(60),
            max_attempts: 4,
            retry_delay: Duration::from_secs(2),
        }
    }
}

struct Inner {
    engine: Engine,
    sync: SyncService,
    config: RotationConfig,
    /// Rotations being driven by this process.
    in_flight: Mutex<HashSet<RotationId>>,
    /// Domains whose due users are being worked through.
    busy: Mutex<HashSet<DomainId>>,
    /// Per domain: the configured limit and its semaphore.
    limits: Mutex<HashMap<DomainId, (u32, Arc<Semaphore>)>>,
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
        pending: u.pending_rotation.is_some(),
        needs_attention: u.needs_attention,
        last_success: u.last_rotation_at,
        last_revealed: u.last_revealed_at,
        last_refused: p
            .rotations
            .of_user(u.id)
            .last()
            .filter(|r| r.outcome == RotationOutcome::Failed)
            .and_then(|r| r.finished_at),
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

    fn limit(&self, domain: DomainId, max: u32) -> Arc<Semaphore> {
        let mut limits = self.inner.limits.lock().unwrap_or_else(|e| e.into_inner());
        let max = max.max(1);
        match limits.get(&domain) {
            Some((m, s)) if *m == max => s.clone(),
            _ => {
                let s = Arc::new(Semaphore::new(max as usize));
                limits.insert(domain, (max, s.clone()));
                s
            }
        }
    }

    /// One look: resume rotations without an outcome, start the due ones.
    pub async fn tick(&self) {
        if self.inner.engine.settle().await.is_err() {
            return;
        }
        let now = Utc::now();
        let (pending, due) = {
            let p = self.inner.engine.projector.read();
            let pending: Vec<RotationId> = p
                .rotations
                .pending()
                .iter()
                .map(|r| r.rotation_id)
                .collect();
            let mut due: HashMap<DomainId, Vec<(UserId, RotationReason)>> = HashMap::new();
            for u in p.users.iter_after(None) {
                if let Some(reason) = facts(&p, u).due_at(now) {
                    due.entry(u.domain_id).or_default().push((u.id, reason));
                }
            }
            (pending, due)
        };
        for id in pending {
            let svc = self.clone();
            tokio::spawn(async move { svc.drive(id, None).await });
        }
        for (domain, users) in due {
            if !self
                .inner
                .busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(domain)
            {
                continue;
            }
            let svc = self.clone();
            tokio::spawn(async move {
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
                svc.inner
                    .busy
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&domain);
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
            .acquire_owned()
            .await
            .map_err(|e| RotationError::Internal(e.to_string()))?;
        let (id, _, password) = self.begin(user, reason, actor).await?;
        self.drive(id, Some((password, Some(permit)))).await;
        Ok(())
    }

    fn domain_of(&self, user: UserId) -> Result<(DomainId, u32), RotationError> {
        let p = self.inner.engine.projector.read();
        let u = p.users.get(user).ok_or(RotationError::NotFound("user"))?;
        let max = p
            .domains
            .get(u.domain_id)
            .map_or(1, |d| d.settings.max_concurrent_rotations);
        Ok((u.domain_id, max))
    }

    /// `POST /v1/users/{id}/rotate`: starts a rotation now; its outcome follows on a task.
    pub async fn start_manual(
        &self,
        user: UserId,
        actor: Actor,
    ) -> Result<(RotationId, u64), RotationError> {
        self.inner
            .engine
            .settle()
            .await
            .map_err(|e| RotationError::Internal(e.to_string()))?;
        let (id, position, password) = self.begin(user, RotationReason::Manual, actor).await?;
        let svc = self.clone();
        tokio::spawn(async move { svc.drive(id, Some((password, None))).await });
        Ok((id, position))
    }

    /// Checks the user, makes and seals the password, appends `RotationStarted`.
    async fn begin(
        &self,
        user: UserId,
        reason: RotationReason,
        actor: Actor,
    ) -> Result<(RotationId, u64, Secret), RotationError> {
        let (version, length, domain) = {
            let p = self.inner.engine.projector.read();
            let u = p
                .users
                .get(user)
                .filter(|u| u.status != UserStatus::Deleted)
                .ok_or(RotationError::NotFound("user"))?;
            if u.status != UserStatus::Active {
                return Err(RotationError::Conflict(format!(
                    "only active users are rotated; this one is {}",
                    u.status.as_str()
                )));
            }
            if u.key_id.is_none() {
                return Err(RotationError::Conflict(
                    "the user has no key: the new password would reach no one".into(),
                ));
            }
            if u.pending_rotation.is_some() {
                return Err(RotationError::Conflict(
                    "a rotation of this user is in flight".into(),
                ));
            }
            let d = p
                .domains
                .get(u.domain_id)
                .ok_or(RotationError::NotFound("domain"))?;
            (u.version, d.settings.password_length, u.domain_id)
        };
        if self.inner.sync.client(domain).is_none() {
            return Err(RotationError::Conflict(
                self.inner.sync.no_worker(domain).to_string(),
            ));
        }
        let stream = StreamId::user(user);
        let password = password::generate(length);
        let sealed = self.inner.engine.keyring.seal(&stream, &password)?;
        let rotation_id = RotationId(uuid::Uuid::now_v7());
        let started = RotationStarted {
            rotation_id,
            reason,
            sealed_password: sealed,
        };
        // The password is durable (flushed) before Graph ever sees it.
        let done = self
            .append(
                &stream,
                ExpectedVersion::Exact(version),
                &actor,
                rotation_id,
                vec![started.into()],
            )
            .await
            .map_err(|e| match e {
                RotationError::Append(AppendError::WrongExpectedVersion { .. }) => {
                    RotationError::Conflict("the user changed meanwhile; retry".into())
                }
                e => e,
            })?;
        crash_point("after_started");
        Ok((rotation_id, done, password))
    }

    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        actor: &Actor,
        rotation: RotationId,
        events: Vec<Event>,
    ) -> Result<u64, RotationError> {
        let log = &*self.inner.engine.log;
        let at = crate::store::append_correlated(
            log,
            stream.clone(),
            expected,
            actor,
            Some(rotation.0),
            events,
        );
        Ok(at.await?)
    }

    /// Drives a rotation to its outcome (or leaves it pending when its domain's worker
    /// goes away). `started` carries the password and permit of a rotation just begun;
    /// a resumed one takes both itself.
    async fn drive(&self, id: RotationId, started: Option<(Secret, Permit)>) {
        if !self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
        {
            return;
        }
        if let Err(e) = self.drive_inner(id, started).await {
            tracing::warn!(rotation = %id.0, error = %e, "rotation left without an outcome; it resumes on the next tick");
        }
        self.inner
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
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
                let (domain, max) = {
                    let p = engine.projector.read();
                    let r = p
                        .rotations
                        .get(id)
                        .ok_or(RotationError::NotFound("rotation"))?;
                    let u = p
                        .users
                        .get(r.user_id)
                        .ok_or(RotationError::NotFound("user"))?;
                    let max = p
                        .domains
                        .get(u.domain_id)
                        .map_or(1, |d| d.settings.max_concurrent_rotations);
                    (u.domain_id, max)
                };
                let permit = self
                    .limit(domain, max)
                    .acquire_owned()
                    .await
                    .map_err(|e| RotationError::Internal(e.to_string()))?;
                (None, Some(permit))
            }
        };
        loop {
            engine
                .settle()
                .await
                .map_err(|e| RotationError::Internal(e.to_string()))?;
            let (user, domain, external, key, attempt, sealed) = {
                let p = engine.projector.read();
                let r = p
                    .rotations
                    .get(id)
                    .ok_or(RotationError::NotFound("rotation"))?;
                if r.outcome != RotationOutcome::Pending {
                    return Ok(());
                }
                let u = p
                    .users
                    .get(r.user_id)
                    .ok_or(RotationError::NotFound("user"))?;
                (
                    u.id,
                    u.domain_id,
                    u.external_id.clone(),
                    u.key_id.clone(),
                    r.retries + 1,
                    r.sealed_password.clone(),
                )
            };
            let stream = StreamId::user(user);
            let actor = Actor::Scheduler(domain);
            let pw = match password.take() {
                Some(pw) => pw,
                None => match engine.keyring.unseal(&stream, &sealed) {
                    Ok(pw) => pw,
                    Err(e) => {
                        // The user was deleted and their key shredded: nothing to set.
                        let failed = RotationFailed {
                            rotation_id: id,
                            retryable: false,
                            graph_code: None,
                            error: format!("the sealed password cannot be opened: {e}"),
                        };
                        self.append(
                            &stream,
                            ExpectedVersion::Any,
                            &actor,
                            id,
                            vec![failed.into()],
                        )
                        .await?;
                        return Ok(());
                    }
                },
            };
            let Some((client, cancelled)) = self.inner.sync.client(domain) else {
                return Err(RotationError::Conflict(
                    "the domain has no credentials; the rotation waits for them".into(),
                ));
            };
            let answer = tokio::select! {
                a = client.set_password(&external, &pw) => a,
                _ = wait_cancelled(cancelled) => {
                    return Err(RotationError::Conflict("the domain's credentials were removed".into()));
                }
            };
            crash_point("after_graph");
            let result = match answer {
                Ok(()) => AttemptResult::Set,
                Err(e) if e.is_definite() => AttemptResult::Refused {
                    code: e.code(),
                    error: e.to_string(),
                },
                Err(e) => AttemptResult::Unknown {
                    error: e.to_string(),
                },
            };
            let throttled = matches!(&result, AttemptResult::Unknown { .. });
            let step = after_attempt(result, attempt, self.inner.config.max_attempts);
            let events: Vec<Event> = match &step {
                NextStep::Succeed => {
                    let mut events: Vec<Event> = vec![RotationSucceeded { rotation_id: id }.into()];
                    let older: Vec<KeyWriteId> = {
                        let p = engine.projector.read();
                        p.key_writes
                            .of_user(user)
                            .filter(|w| w.state == KeyWriteState::Queued)
                            .map(|w| w.id)
                            .collect()
                    };
                    events.extend(older.into_iter().map(|w| {
                        Event::from(KeyWriteSuperseded {
                            key_write_id: w,
                            by_rotation: id,
                        })
                    }));
                    if let Some(key_id) = key {
                        events.push(
                            KeyWriteQueued {
                                key_write_id: KeyWriteId(uuid::Uuid::now_v7()),
                                rotation_id: id,
                                key_id,
                            }
                            .into(),
                        );
                    }
                    events
                }
                NextStep::Fail { code, error } => vec![RotationFailed {
                    rotation_id: id,
                    retryable: false,
                    graph_code: code.clone(),
                    error: error.clone(),
                }
                .into()],
                NextStep::Retry { attempt, error } => vec![RotationRetried {
                    rotation_id: id,
                    attempt: *attempt,
                    error: error.clone(),
                }
                .into()],
                NextStep::GiveUp { error } => vec![RotationFailed {
                    rotation_id: id,
                    retryable: true,
                    graph_code: None,
                    error: error.clone(),
                }
                .into()],
            };
            self.append(&stream, ExpectedVersion::Any, &actor, id, events)
                .await?;
            match step {
                NextStep::Retry { attempt, .. } => {
                    let base = self.inner.config.retry_delay;
                    let wait = base * 2u32.saturating_pow(attempt.saturating_sub(1).min(6));
                    tracing::info!(rotation = %id.0, attempt, ?wait, throttled, "outcome unknown: the same password again");
                    password = Some(pw);
                    tokio::time::sleep(wait).await;
                }
                _ => return Ok(()),
            }
        }
    }
}

/// A permit of a domain's limit, held (for its drop) while the rotation runs; none for
/// manual rotations, which do not wait behind the scheduler's queue.
type Permit = Option<tokio::sync::OwnedSemaphorePermit>;
