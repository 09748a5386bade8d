//! Rotation decisions: who is eligible, when a rotation is due and why, and the protocol
//! that never locks anyone out (ENGINE.md §7): what an attempt's result means, when a new
//! password may be sent, what a restart records. The binary carries these rules out; the
//! state they read ([`PasswordState`]) is folded from the user's stream by [`evolve`].

use crate::decide::user::Status;
use crate::decide::Rejection;
use crate::events::{
    KeyWriteQueued, KeyWriteSuperseded, RotationFailed, RotationInterrupted, RotationRequested,
    RotationRetried, RotationStarted, RotationSucceeded, SupersedeReason,
};
use crate::ids::{KeyId, KeyWriteId, RotationId};
use crate::types::{RotationReason, SealedSecret};
use crate::Event;
use chrono::{DateTime, Duration, Utc};

/// After Graph refuses a rotation, the scheduler waits this long before trying again:
/// a refusal (an admin account, a policy) does not go away by itself within minutes.
pub const REFUSAL_BACKOFF_HOURS: i64 = 24;

/// What the rules need to know of a user and their domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationFacts {
    /// Imported and active.
    pub active: bool,
    /// In scope of the sync group.
    pub in_sync_group: bool,
    /// Member of the rotation group.
    pub in_rotation_group: bool,
    /// A hardware key is assigned.
    pub has_key: bool,
    /// The user's domain is federated: Graph cannot set the password.
    pub federated: bool,
    /// A rotation is in flight.
    pub pending: bool,
    /// The last rotation's outcome is unknown: an admin looks first.
    pub needs_attention: bool,
    /// When the last rotation succeeded.
    pub last_success: Option<DateTime<Utc>>,
    /// When the password was last revealed.
    pub last_revealed: Option<DateTime<Utc>>,
    /// When Graph last refused a rotation of this user (a definite failure).
    pub last_refused: Option<DateTime<Utc>>,
    /// The domain's `auto_password_change_days`.
    pub every_days: Option<u16>,
    /// The domain's `rotate_after_reveal_hours`.
    pub after_reveal_hours: u32,
}

/// What every rotation needs, scheduled or asked for: an active user holding a key. Known
/// before the rest of the facts are gathered, so a pass over all users can skip most.
pub fn may_ever_rotate(active: bool, has_key: bool) -> bool {
    active && has_key
}

impl RotationFacts {
    /// Scheduled rotations apply to the user at all.
    pub fn eligible(&self) -> bool {
        self.may_rotate()
            && self.in_sync_group
            && self.in_rotation_group
            && self.every_days.is_some()
    }

    /// A new password may be set for the user at all (an admin's request is served): the
    /// schedule's other conditions aside.
    pub fn may_rotate(&self) -> bool {
        may_ever_rotate(self.active, self.has_key) && !self.federated
    }

    /// When the next scheduled rotation is due, and why, seen at `now` (a user never
    /// rotated is due `now`); `None` when none is scheduled.
    pub fn next_due(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, RotationReason)> {
        if !self.eligible() || self.pending || self.needs_attention {
            return None;
        }
        let days = self.every_days?;
        let not_before = self
            .last_refused
            .filter(|r| self.last_success.is_none_or(|s| *r > s))
            .map(|r| r + Duration::hours(REFUSAL_BACKOFF_HOURS));
        let later = |t: DateTime<Utc>| not_before.map_or(t, |n| n.max(t));
        let Some(last) = self.last_success else {
            return Some((later(now), RotationReason::Initial));
        };
        // Settings are bounded when saved; a time past the calendar (from a log written
        // before the bounds) is never, not a panic in the scheduler.
        let scheduled = last
            .checked_add_signed(Duration::days(i64::from(days)))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let after_reveal = self.last_revealed.filter(|r| *r >= last).and_then(|r| {
            r.checked_add_signed(Duration::hours(i64::from(self.after_reveal_hours)))
        });
        Some(match after_reveal {
            Some(t) if t < scheduled => (later(t), RotationReason::AfterReveal),
            _ => (later(scheduled), RotationReason::Scheduled),
        })
    }

    /// Due at `now`.
    pub fn due_at(&self, now: DateTime<Utc>) -> Option<RotationReason> {
        self.next_due(now)
            .filter(|(t, _)| *t <= now)
            .map(|(_, reason)| reason)
    }
}

/// Whether `upn` belongs to one of the tenant's federated domains (`federated`: lower
/// case, sorted), whose passwords Graph cannot set.
pub fn in_federated_domain(upn: &str, federated: &[String]) -> bool {
    // Most tenants have none: no lower-casing of every user's domain at every look.
    if federated.is_empty() {
        return false;
    }
    upn.rsplit_once('@').is_some_and(|(_, domain)| {
        federated
            .binary_search(&domain.to_ascii_lowercase())
            .is_ok()
    })
}

/// What one attempt to set the password in Graph came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// Graph set it.
    Set,
    /// Graph set it, after a request of the same attempt went unanswered or was answered
    /// with a 5xx: that request may still land (with the same password, but after a newer
    /// rotation it would bring this one back), so an uncertainty window opens.
    SetAfterUnknown {
        /// What the earlier request came to.
        error: String,
    },
    /// Graph refused this attempt (a 4xx other than throttling) and nothing of the attempt
    /// may have landed: the refusal is definite for this attempt, and for no other.
    Refused {
        /// Graph's error code.
        code: Option<String>,
        /// What it said.
        error: String,
    },
    /// Graph throttled the attempt (429) and no request of it may have landed: nothing
    /// happened, and Graph asked for a wait.
    Throttled {
        /// What it said.
        error: String,
    },
    /// The request never left (no token, the connection refused, the credentials
    /// retired): nothing happened, as with throttling, and the rotation waits.
    NotSent {
        /// What stopped it.
        error: String,
    },
    /// No answer, or a 5xx; or a refusal or throttling after a request of the same
    /// attempt got no answer: it may or may not be set.
    Unknown {
        /// What happened.
        error: String,
    },
}

/// What to do after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Record success and queue the key write.
    Succeed,
    /// Record the unknown outcome of an earlier request of attempt `attempt` (its window
    /// opens), then success as [`NextStep::Succeed`] does.
    SucceedAfterUnknown {
        /// The attempt's number.
        attempt: u32,
        /// What the earlier request came to.
        error: String,
    },
    /// Record a definite failure: the previous password stays current.
    Fail {
        /// Graph's error code.
        code: Option<String>,
        /// What it said.
        error: String,
    },
    /// Record the retry and try the same password again.
    Retry {
        /// The attempt that failed (1-based).
        attempt: u32,
        /// What happened.
        error: String,
    },
    /// Record nothing (nothing of the attempt landed) and send the same password again
    /// after the wait Graph asked for.
    Wait {
        /// What Graph said.
        error: String,
    },
    /// Give up for now with the outcome unknown: the candidate is kept (reveal names it),
    /// the user needs attention, and the engine tries the same password again later.
    GiveUp {
        /// What happened last.
        error: String,
    },
}

/// The protocol's decision after an attempt of `open`, given at most `max_attempts`
/// attempts before giving up for now.
///
/// **A refusal proves that this attempt did nothing, and nothing about an earlier one
/// whose answer was lost**: once an attempt may have reached Graph the rotation ends only
/// confirmed, or stays open with its candidate.
pub fn after_attempt(open: &OpenRotation, result: AttemptResult, max_attempts: u32) -> NextStep {
    let attempt = open.attempts + 1;
    let unknown = |error: String| {
        if attempt < max_attempts {
            NextStep::Retry { attempt, error }
        } else {
            NextStep::GiveUp { error }
        }
    };
    match result {
        AttemptResult::Set => NextStep::Succeed,
        AttemptResult::SetAfterUnknown { error } => NextStep::SucceedAfterUnknown { attempt, error },
        AttemptResult::Refused { code, error } if !open.reached => NextStep::Fail { code, error },
        AttemptResult::Refused { code, error } => unknown(format!(
            "refused ({}): {error}; an earlier attempt may have set the password, so the same one is tried again",
            code.as_deref().unwrap_or("no code")
        )),
        AttemptResult::Unknown { error } => unknown(error),
        // Throttling is Graph's "not now", neither an unknown outcome (no uncertainty
        // window opens) nor a refusal (nothing about the user or the password is wrong,
        // and an admin's waiting request stays): however long it lasts, the rotation waits.
        AttemptResult::Throttled { error } | AttemptResult::NotSent { error } => {
            NextStep::Wait { error }
        }
    }
}

/// A rotation whose password may be in Entra ID but is not confirmed: started and not
/// ended, or given up for now with its outcome unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRotation {
    /// The rotation this belongs to (also the correlation id of its events).
    pub rotation_id: RotationId,
    /// Why it started.
    pub reason: RotationReason,
    /// Attempts whose outcome was recorded as unknown (retried, interrupted, given up).
    pub attempts: u32,
    /// An attempt may have reached Graph: the rotation can no longer fail definitively.
    pub reached: bool,
    /// Given up for now: not in flight; the candidate is tried again after a wait.
    pub gave_up: bool,
}

/// The protocol's view of one user's passwords, folded from the user's stream by
/// [`evolve`]: what the engine holds, what may be in Entra ID, and since when it is unsure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PasswordState {
    /// The rotation whose password Graph confirmed last: the engine's current password.
    pub current: Option<RotationId>,
    /// When the current password was last confirmed by Graph (not by a reassert).
    pub last_success: Option<DateTime<Utc>>,
    /// The rotation not yet confirmed, if any.
    pub open: Option<OpenRotation>,
    /// When an attempt's outcome was last recorded as unknown: a request with that
    /// password may land until the uncertainty window after it has passed.
    pub last_uncertain_at: Option<DateTime<Utc>>,
    /// When Graph last confirmed a password of this user (a rotation or a reassert).
    pub last_confirmed_at: Option<DateTime<Utc>>,
    /// When Graph last refused a rotation definitively.
    pub last_refused_at: Option<DateTime<Utc>>,
    /// A rotation asked for and not started yet.
    pub requested: Option<RotationReason>,
}

/// Folds one event of the user's stream, recorded at `at`.
pub fn evolve(mut s: PasswordState, event: &Event, at: DateTime<Utc>) -> PasswordState {
    let is_open =
        |s: &PasswordState, id: RotationId| s.open.as_ref().is_some_and(|o| o.rotation_id == id);
    match event {
        Event::RotationStarted(e) => {
            s.open = Some(OpenRotation {
                rotation_id: e.rotation_id,
                reason: e.reason,
                attempts: 0,
                reached: false,
                gave_up: false,
            });
            // A reassert runs before the rotation that was asked for; it does not serve it.
            if e.reason != RotationReason::Reassert {
                s.requested = None;
            }
        }
        Event::RotationRetried(e) if is_open(&s, e.rotation_id) => {
            if let Some(o) = s.open.as_mut() {
                o.attempts = o.attempts.max(e.attempt);
                o.reached = true;
            }
            s.last_uncertain_at = Some(at);
        }
        Event::RotationInterrupted(e) if is_open(&s, e.rotation_id) => {
            if let Some(o) = s.open.as_mut() {
                o.attempts += 1;
                o.reached = true;
            }
            s.last_uncertain_at = Some(at);
        }
        Event::RotationFailed(e) if is_open(&s, e.rotation_id) => {
            if e.retryable {
                if let Some(o) = s.open.as_mut() {
                    o.attempts += 1;
                    o.reached = true;
                    o.gave_up = true;
                }
                s.last_uncertain_at = Some(at);
            } else {
                // A refused reassert drops a waiting request too: Graph refuses this
                // user's password, and a new one would be refused the same way.
                let reassert = s
                    .open
                    .as_ref()
                    .is_some_and(|o| o.reason == RotationReason::Reassert);
                s.open = None;
                s.requested = None;
                s.last_refused_at = Some(at);
                // A reassert starts only after the window, so nothing sent before it can
                // still land; it was refused, so it did not land either. What it was for,
                // overwriting a late landing, a new password does as well: the next one
                // (after the refusal's wait) is not another reassert, which Graph would
                // refuse the same way for ever if it refuses this very password.
                if reassert {
                    s.last_uncertain_at = None;
                }
            }
        }
        Event::RotationSucceeded(e) => {
            let reason = s
                .open
                .as_ref()
                .filter(|o| o.rotation_id == e.rotation_id)
                .map(|o| o.reason);
            if reason.is_some() {
                s.open = None;
            }
            if reason != Some(RotationReason::Reassert) {
                s.last_success = Some(at);
            }
            s.current = Some(e.rotation_id);
            s.last_confirmed_at = Some(at);
        }
        Event::RotationRequested(e) => s.requested = Some(e.reason),
        Event::UserDeleted(_) => {
            s.open = None;
            s.requested = None;
        }
        _ => {}
    }
    s
}

/// The timing of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// How long after an attempt with an unknown outcome a request carrying its password
    /// may still land (the Graph client's request timeout plus a margin).
    pub uncertainty: Duration,
    /// Attempts of a rotation before it is given up for now.
    pub max_attempts: u32,
}

/// The longest wait between tries of a candidate given up for now.
pub const MAX_CANDIDATE_RETRY_HOURS: i64 = 24;

/// What the engine does next for one user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing to do.
    Idle,
    /// Nothing now; look again then.
    WaitUntil(DateTime<Utc>),
    /// Send the open rotation's own password (again).
    Drive(RotationId),
    /// Send the current password again before any new one: a rotation with reason
    /// [`RotationReason::Reassert`] carrying it.
    Reassert,
    /// Start a rotation with a new password.
    Start(RotationReason),
}

impl PasswordState {
    /// When requests with the password of an unknown attempt can no longer land.
    pub fn window_end(&self, p: &Protocol) -> Option<DateTime<Utc>> {
        self.last_uncertain_at.map(|t| t + p.uncertainty)
    }

    /// A password was sent without an answer since the last confirmation that came after
    /// its window: the current password is sent again before anything new.
    pub fn needs_reassert(&self, p: &Protocol) -> bool {
        match (self.window_end(p), self.last_confirmed_at) {
            (None, _) => false,
            (Some(end), Some(confirmed)) => confirmed < end,
            (Some(_), None) => true,
        }
    }

    /// The candidate reveal names and the key write will carry once confirmed: the open
    /// rotation's password once an attempt of it may have reached Graph.
    pub fn unconfirmed_candidate(&self) -> Option<RotationId> {
        self.open
            .as_ref()
            .filter(|o| o.reached)
            .map(|o| o.rotation_id)
    }

    /// The password Entra ID may hold besides the current one, as a break-glass reveal
    /// must name it: an open rotation's from the moment it is durable (its first attempt
    /// may be on its way to Graph), unless it only sends the current one again.
    pub fn possible_candidate(&self) -> Option<RotationId> {
        self.open
            .as_ref()
            .filter(|o| o.reason != RotationReason::Reassert)
            .map(|o| o.rotation_id)
    }

    /// The new password wanted: a recorded request first, else what the schedule says.
    pub fn wanted(&self, due: Option<RotationReason>) -> Option<RotationReason> {
        self.requested.or(due)
    }

    /// A rotation is being driven (started, not given up, not ended).
    pub fn in_flight(&self) -> Option<RotationId> {
        self.open
            .as_ref()
            .filter(|o| !o.gave_up)
            .map(|o| o.rotation_id)
    }
}

/// What the engine does next for a user at `now`. `wanted` is a new password the engine
/// wants: what the schedule says ([`RotationFacts::due_at`]) or a recorded request
/// ([`PasswordState::wanted`]), for a user who may be rotated now. The rules:
/// - an open rotation is settled before anything new: driven while in flight, and tried
///   again with its own password after its window (with a doubling wait) once given up;
/// - **a different password is never sent while a request carrying another may still
///   land**: nothing new starts before the uncertainty window after the last unknown
///   outcome has passed;
/// - after that window the current password is sent again once (a reassert) before any
///   new one, so that whatever landed late is overwritten by the password the engine
///   holds.
pub fn next(
    s: &PasswordState,
    wanted: Option<RotationReason>,
    now: DateTime<Utc>,
    p: &Protocol,
) -> Next {
    if let Some(o) = &s.open {
        if !o.gave_up {
            return Next::Drive(o.rotation_id);
        }
        let doublings = o.attempts.saturating_sub(p.max_attempts).min(16);
        let wait = (p.uncertainty * 2i32.pow(doublings))
            .min(Duration::hours(MAX_CANDIDATE_RETRY_HOURS))
            .max(p.uncertainty);
        let at = s.last_uncertain_at.map_or(now, |t| t + wait);
        return if now >= at {
            Next::Drive(o.rotation_id)
        } else {
            Next::WaitUntil(at)
        };
    }
    let Some(reason) = wanted else {
        return Next::Idle;
    };
    match s.window_end(p) {
        Some(end) if now < end => Next::WaitUntil(end),
        _ if s.needs_reassert(p) && s.current.is_some() => Next::Reassert,
        _ => Next::Start(reason),
    }
}

/// An admin's request to rotate now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManualRotation {
    /// Start it now.
    Start,
    /// Record the request (these events; none when it is recorded already); the rotation
    /// runs when the rules allow, about `until`.
    Deferred {
        /// The events to append.
        events: Vec<Event>,
        /// When it is expected to start.
        until: DateTime<Utc>,
    },
}

/// Decides an admin's request to rotate a user's password now. One asked for while a
/// rotation is in flight inside an uncertainty window (an attempt's answer was lost, and
/// the rotation is being tried again) is recorded and deferred like any other inside the
/// window: it runs once that rotation has settled and the window has passed. One asked
/// for while a rotation is simply under way is refused: that rotation is the new password.
pub fn request_manual(
    s: &PasswordState,
    now: DateTime<Utc>,
    p: &Protocol,
) -> Result<ManualRotation, Rejection> {
    if s.in_flight().is_some() {
        let Some(end) = s.window_end(p).filter(|end| now < *end) else {
            return Err(Rejection::Conflict(
                "a rotation of this user is in flight".into(),
            ));
        };
        let events = match s.requested {
            Some(_) => vec![],
            None => vec![RotationRequested {
                reason: RotationReason::Manual,
            }
            .into()],
        };
        return Ok(ManualRotation::Deferred { events, until: end });
    }
    let until = match next(s, Some(RotationReason::Manual), now, p) {
        Next::Start(_) if s.requested.is_none() => return Ok(ManualRotation::Start),
        Next::WaitUntil(t) => t,
        _ => now,
    };
    let events = match s.requested {
        Some(_) => vec![],
        None => vec![RotationRequested {
            reason: RotationReason::Manual,
        }
        .into()],
    };
    Ok(ManualRotation::Deferred { events, until })
}

/// The events that record `step`, just decided for the open rotation `open`: a success
/// supersedes every write the user's key is still owed (`owed`: queued, or delivered and
/// not acknowledged: an older password is no longer the user's, and handed out again
/// after its lease it would overwrite the newer one on the key) and queues `new_write`
/// (the user's key and a fresh write id) unless it was a reassert, which changed no
/// password.
pub fn events_after(
    step: &NextStep,
    open: &OpenRotation,
    owed: &[KeyWriteId],
    new_write: Option<(KeyWriteId, KeyId)>,
) -> Vec<Event> {
    let rotation_id = open.rotation_id;
    match step {
        NextStep::SucceedAfterUnknown { attempt, error } => {
            let retried = RotationRetried {
                rotation_id,
                attempt: *attempt,
                error: error.clone(),
            };
            std::iter::once(retried.into())
                .chain(events_after(&NextStep::Succeed, open, owed, new_write))
                .collect()
        }
        NextStep::Succeed if open.reason == RotationReason::Reassert => {
            vec![RotationSucceeded { rotation_id }.into()]
        }
        NextStep::Succeed => {
            let mut events: Vec<Event> = vec![RotationSucceeded { rotation_id }.into()];
            events.extend(owed.iter().map(|w| {
                Event::from(KeyWriteSuperseded {
                    key_write_id: *w,
                    reason: SupersedeReason::NewerRotation { rotation_id },
                })
            }));
            if let Some((key_write_id, key_id)) = new_write {
                events.push(
                    KeyWriteQueued {
                        key_write_id,
                        rotation_id,
                        key_id,
                    }
                    .into(),
                );
            }
            events
        }
        NextStep::Fail { code, error } => vec![RotationFailed {
            rotation_id,
            retryable: false,
            graph_code: code.clone(),
            error: error.clone(),
        }
        .into()],
        NextStep::Retry { attempt, error } => vec![RotationRetried {
            rotation_id,
            attempt: *attempt,
            error: error.clone(),
        }
        .into()],
        NextStep::Wait { .. } => vec![],
        NextStep::GiveUp { error } => vec![RotationFailed {
            rotation_id,
            retryable: true,
            graph_code: None,
            error: error.clone(),
        }
        .into()],
    }
}

/// Whether a user's password may be rotated at all: active, with a hardware key (the
/// password would reach no one otherwise), outside a federated domain. When is for
/// [`next`] and [`request_manual`] to say.
pub fn check_rotatable(status: Status, has_key: bool, federated: bool) -> Result<(), Rejection> {
    match status {
        Status::Active => {}
        Status::Unknown | Status::Deleted => return Err(Rejection::NotFound("user")),
        Status::Candidate | Status::Deactivated => {
            let name = if status == Status::Candidate {
                "candidate"
            } else {
                "deactivated"
            };
            return Err(Rejection::Conflict(format!(
                "only active users are rotated; this one is {name}"
            )));
        }
    }
    if !has_key {
        return Err(Rejection::Conflict(
            "the user has no key: the new password would reach no one".into(),
        ));
    }
    if federated {
        return Err(Rejection::Conflict(
            "the user's domain is federated: its passwords are kept by the federation's identity provider, and Graph cannot set them".into(),
        ));
    }
    Ok(())
}

/// The events that record a process start finding `s`'s rotation open: whatever attempt
/// was in flight when the previous process stopped may have reached Graph.
pub fn on_resume(s: &PasswordState) -> Vec<Event> {
    s.open
        .as_ref()
        .map(|o| {
            RotationInterrupted {
                rotation_id: o.rotation_id,
            }
            .into()
        })
        .into_iter()
        .collect()
}

/// The user's stream as rotation commands decide on it: the user's standing and key, and
/// the protocol's view of their passwords (folded with each event's commit time, which
/// the uncertainty window is measured from).
#[derive(Clone, Debug, Default)]
pub struct RotationStream {
    /// What every decision about the user knows.
    pub user: crate::decide::user::UserState,
    /// The protocol's state.
    pub passwords: PasswordState,
    /// The sealed password of each rotation that may still matter: the open one and the
    /// current one (a reassert carries the current one again).
    sealed: Vec<(RotationId, SealedSecret)>,
}

impl RotationStream {
    /// The current password as sealed when its rotation started.
    pub fn current_sealed(&self) -> Option<&SealedSecret> {
        let current = self.passwords.current?;
        self.sealed
            .iter()
            .find(|(id, _)| *id == current)
            .map(|(_, sealed)| sealed)
    }
}

/// Folds one committed event of the user's stream into [`RotationStream`].
pub fn evolve_stream(mut s: RotationStream, e: &crate::Envelope) -> RotationStream {
    if let Event::RotationStarted(started) = &e.event {
        s.sealed
            .push((started.rotation_id, started.sealed_password.clone()));
    }
    s.user = crate::decide::user::evolve(s.user, &e.event);
    s.passwords = evolve(s.passwords, &e.event, e.recorded_at);
    // Only the open and the current rotation's passwords can be sent again.
    let (open, current) = (
        s.passwords.open.as_ref().map(|o| o.rotation_id),
        s.passwords.current,
    );
    s.sealed
        .retain(|(id, _)| Some(*id) == open || Some(*id) == current);
    if matches!(e.event, Event::UserDeleted(_)) {
        s.sealed.clear();
    }
    s
}

/// Who asks for a new rotation, and what they decided beforehand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// The scheduler, at its look, for `reason` (a reassert, or a new password the
    /// schedule or a request wants). `due` is what the schedule says now and `may_rotate`
    /// whether the user may be rotated now ([`RotationFacts`]): the user may have waited
    /// behind the domain's limit since the look, and is decided on again.
    Scheduler {
        /// What the look decided.
        reason: RotationReason,
        /// What the schedule says now.
        due: Option<RotationReason>,
        /// Whether the user may be rotated now.
        may_rotate: bool,
    },
    /// An admin, now.
    Admin,
}

/// What starting a rotation decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartDecision {
    /// Append these events: the rotation starts with `reason`; a reassert carries the
    /// current password, anything else `new_password`.
    Start {
        /// `RotationStarted`.
        events: Vec<Event>,
        /// Why it starts.
        reason: RotationReason,
    },
    /// An admin's request recorded (or already recorded) for later: these events; it is
    /// expected to run about `until`.
    Deferred {
        /// The events to append.
        events: Vec<Event>,
        /// When it is expected to start.
        until: DateTime<Utc>,
    },
}

impl StartDecision {
    /// The events to append.
    pub fn events(&self) -> &[Event] {
        match self {
            StartDecision::Start { events, .. } | StartDecision::Deferred { events, .. } => events,
        }
    }
}

/// Decides a new rotation of the user folded in `s`, on the stream as it is at the
/// append: whether it may start at all ([`check_rotatable`]; `federated` is the domain's
/// fact), whether the protocol allows a new password now ([`next`], [`request_manual`]),
/// and what it sends: a reassert the current password again, anything else
/// `new_password`, sealed beforehand for the user.
pub fn decide_start(
    s: &RotationStream,
    asked: Asked,
    federated: bool,
    rotation_id: RotationId,
    new_password: Option<&SealedSecret>,
    now: DateTime<Utc>,
    p: &Protocol,
) -> Result<StartDecision, Rejection> {
    check_rotatable(s.user.status, s.user.key_id.is_some(), federated)?;
    let reason = match asked {
        Asked::Admin => match request_manual(&s.passwords, now, p)? {
            ManualRotation::Start => RotationReason::Manual,
            ManualRotation::Deferred { events, until } => {
                return Ok(StartDecision::Deferred { events, until })
            }
        },
        Asked::Scheduler {
            reason,
            due,
            may_rotate,
        } => {
            let wanted = s.passwords.wanted(due).filter(|_| may_rotate);
            match (reason, next(&s.passwords, wanted, now, p)) {
                (RotationReason::Reassert, Next::Reassert) => RotationReason::Reassert,
                (asked, Next::Start(now_due)) if asked != RotationReason::Reassert => now_due,
                (_, Next::Drive(_)) => {
                    return Err(Rejection::Conflict(
                        "a rotation of this user is in flight".into(),
                    ))
                }
                _ => {
                    return Err(Rejection::Conflict(
                        "the rules do not allow this rotation now; it was not started".into(),
                    ))
                }
            }
        }
    };
    let sealed_password = match reason {
        RotationReason::Reassert => s
            .current_sealed()
            .cloned()
            .ok_or(Rejection::NotFound("current password"))?,
        _ => new_password
            .cloned()
            .ok_or_else(|| Rejection::Conflict("no new password was made for it".into()))?,
    };
    Ok(StartDecision::Start {
        events: vec![RotationStarted {
            rotation_id,
            reason,
            sealed_password,
        }
        .into()],
        reason,
    })
}

/// Records that rotation `rotation_id` was interrupted (found open by a process start, or
/// its attempt cut short when the domain's credentials went away): whatever attempt was
/// under way may have reached Graph ([`on_resume`]). Nothing once it is no longer open.
pub fn decide_interrupted(s: &RotationStream, rotation_id: RotationId) -> Vec<Event> {
    match &s.passwords.open {
        Some(o) if o.rotation_id == rotation_id => on_resume(&s.passwords),
        _ => vec![],
    }
}

/// Ends the open rotation `rotation_id` of a deleted user whose password can no longer
/// be opened (their key was shredded: nothing to set, nothing to keep). Nothing once it
/// is no longer open.
pub fn decide_unopenable(s: &RotationStream, rotation_id: RotationId, error: String) -> Vec<Event> {
    match &s.passwords.open {
        Some(o) if o.rotation_id == rotation_id => vec![RotationFailed {
            rotation_id,
            retryable: false,
            graph_code: None,
            error,
        }
        .into()],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(day: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap()
    }

    fn facts() -> RotationFacts {
        RotationFacts {
            active: true,
            in_sync_group: true,
            in_rotation_group: true,
            has_key: true,
            federated: false,
            pending: false,
            needs_attention: false,
            last_success: None,
            last_revealed: None,
            last_refused: None,
            every_days: Some(7),
            after_reveal_hours: 24,
        }
    }

    #[test]
    fn an_eligible_user_never_rotated_is_due_at_once() {
        assert_eq!(facts().due_at(t(1)), Some(RotationReason::Initial));
    }

    #[test]
    fn every_condition_of_eligibility_is_needed() {
        let cases = [
            RotationFacts {
                active: false,
                ..facts()
            },
            RotationFacts {
                in_sync_group: false,
                ..facts()
            },
            RotationFacts {
                in_rotation_group: false,
                ..facts()
            },
            RotationFacts {
                has_key: false,
                ..facts()
            },
            RotationFacts {
                every_days: None,
                ..facts()
            },
            RotationFacts {
                pending: true,
                ..facts()
            },
            RotationFacts {
                needs_attention: true,
                ..facts()
            },
        ];
        for f in cases {
            assert_eq!(f.due_at(t(30)), None, "{f:?}");
        }
    }

    #[test]
    fn a_rotation_is_due_when_the_last_success_is_old_enough() {
        let f = RotationFacts {
            last_success: Some(t(1)),
            ..facts()
        };
        assert_eq!(f.due_at(t(7)), None);
        assert_eq!(f.due_at(t(8)), Some(RotationReason::Scheduled));
        assert_eq!(f.next_due(t(2)), Some((t(8), RotationReason::Scheduled)));
    }

    #[test]
    fn a_reveal_brings_the_next_rotation_forward() {
        let f = RotationFacts {
            last_success: Some(t(1)),
            last_revealed: Some(t(2)),
            ..facts()
        };
        assert_eq!(f.next_due(t(2)), Some((t(3), RotationReason::AfterReveal)));
        // A reveal before the last rotation is of an older password: it does not count.
        let f = RotationFacts {
            last_success: Some(t(2)),
            last_revealed: Some(t(1)),
            ..facts()
        };
        assert_eq!(f.next_due(t(2)), Some((t(9), RotationReason::Scheduled)));
        // A delay past the calendar (saved before settings were bounded) is never.
        let f = RotationFacts {
            last_success: Some(t(1)),
            last_revealed: Some(t(2)),
            after_reveal_hours: u32::MAX,
            ..facts()
        };
        assert_eq!(f.next_due(t(2)), Some((t(8), RotationReason::Scheduled)));
    }

    #[test]
    fn after_a_refusal_the_scheduler_waits_a_day() {
        let f = RotationFacts {
            last_refused: Some(t(1)),
            ..facts()
        };
        assert_eq!(f.due_at(t(1)), None);
        assert_eq!(f.due_at(t(2)), Some(RotationReason::Initial));
        // A refusal older than the last success does not count.
        let f = RotationFacts {
            last_refused: Some(t(1)),
            last_success: Some(t(3)),
            ..facts()
        };
        assert_eq!(f.next_due(t(4)), Some((t(10), RotationReason::Scheduled)));
    }

    fn open(attempts: u32, reached: bool) -> OpenRotation {
        OpenRotation {
            rotation_id: rid(1),
            reason: RotationReason::Manual,
            attempts,
            reached,
            gave_up: false,
        }
    }

    fn rid(n: u128) -> RotationId {
        RotationId(uuid::Uuid::from_u128(n))
    }

    fn refused() -> AttemptResult {
        AttemptResult::Refused {
            code: Some("Request_BadRequest".into()),
            error: "complexity".into(),
        }
    }

    fn unknown() -> AttemptResult {
        AttemptResult::Unknown {
            error: "503".into(),
        }
    }

    #[test]
    fn a_refusal_ends_a_rotation_only_while_no_attempt_may_have_landed() {
        assert_eq!(
            after_attempt(&open(0, false), AttemptResult::Set, 3),
            NextStep::Succeed
        );
        assert!(matches!(
            after_attempt(&open(0, false), refused(), 3),
            NextStep::Fail { .. }
        ));
        // After an unknown outcome a refusal proves nothing about the earlier attempt.
        assert!(matches!(
            after_attempt(&open(1, true), refused(), 3),
            NextStep::Retry { attempt: 2, .. }
        ));
        assert!(matches!(
            after_attempt(&open(2, true), refused(), 3),
            NextStep::GiveUp { .. }
        ));
    }

    #[test]
    fn unknown_outcomes_retry_then_give_up_for_now() {
        assert_eq!(
            after_attempt(&open(0, false), unknown(), 3),
            NextStep::Retry {
                attempt: 1,
                error: "503".into()
            }
        );
        assert_eq!(
            after_attempt(&open(2, true), unknown(), 3),
            NextStep::GiveUp {
                error: "503".into()
            }
        );
    }

    #[test]
    fn a_federated_domain_is_matched_by_the_principal_names_domain_in_any_case() {
        let federated = vec!["fabrikam.com".to_owned(), "tailspin.io".to_owned()];
        assert!(in_federated_domain("Megan@Fabrikam.COM", &federated));
        assert!(!in_federated_domain("megan@sub.fabrikam.com", &federated));
        assert!(!in_federated_domain("megan@contoso.com", &federated));
        assert!(!in_federated_domain("no-at-sign", &federated));
        assert!(!in_federated_domain("megan@fabrikam.com", &[]));
        let f = RotationFacts {
            federated: true,
            ..facts()
        };
        assert!(!f.eligible() && !f.may_rotate());
        assert_eq!(f.due_at(t(1)), None);
    }

    #[test]
    fn throttling_waits_and_records_nothing() {
        let throttled = AttemptResult::Throttled {
            error: "429".into(),
        };
        let wait = NextStep::Wait {
            error: "429".into(),
        };
        assert_eq!(after_attempt(&open(0, false), throttled.clone(), 3), wait);
        assert_eq!(after_attempt(&open(2, true), throttled, 3), wait);
        assert!(events_after(&wait, &open(0, false), &[], None).is_empty());
    }

    const P: Protocol = Protocol {
        uncertainty: Duration::seconds(120),
        max_attempts: 3,
    };

    fn at(secs: i64) -> DateTime<Utc> {
        t(1) + Duration::seconds(secs)
    }

    /// Folds `events`, the i-th recorded at `at(i)`.
    fn given(events: &[Event]) -> PasswordState {
        events
            .iter()
            .enumerate()
            .fold(PasswordState::default(), |s, (i, e)| {
                evolve(s, e, at(i as i64))
            })
    }

    fn started(n: u128) -> Event {
        crate::events::RotationStarted {
            rotation_id: rid(n),
            reason: RotationReason::Manual,
            sealed_password: crate::types::SealedSecret {
                key_id: crate::ids::DataKeyId(uuid::Uuid::from_u128(9)),
                nonce: [0; 24],
                ciphertext: vec![1],
            },
        }
        .into()
    }

    fn succeeded(n: u128) -> Event {
        crate::events::RotationSucceeded {
            rotation_id: rid(n),
        }
        .into()
    }

    fn interrupted(n: u128) -> Event {
        RotationInterrupted {
            rotation_id: rid(n),
        }
        .into()
    }

    fn gave_up(n: u128) -> Event {
        crate::events::RotationFailed {
            rotation_id: rid(n),
            retryable: true,
            graph_code: None,
            error: "503".into(),
        }
        .into()
    }

    #[test]
    fn an_open_rotation_is_settled_before_anything_new() {
        let s = given(&[started(1)]);
        assert_eq!(
            next(&s, Some(RotationReason::Scheduled), at(5), &P),
            Next::Drive(rid(1))
        );
        // Given up at at(1): tried again with its own password after the window.
        let s = given(&[started(1), gave_up(1)]);
        assert_eq!(s.unconfirmed_candidate(), Some(rid(1)));
        assert_eq!(next(&s, None, at(60), &P), Next::WaitUntil(at(121)));
        assert_eq!(
            next(&s, Some(RotationReason::Scheduled), at(121), &P),
            Next::Drive(rid(1))
        );
    }

    #[test]
    fn no_new_password_inside_the_window_and_a_reassert_after_it() {
        // Rotation 1 confirmed at at(0); rotation 2 interrupted at at(2), confirmed at at(3).
        let s = given(&[succeeded(1), started(2), interrupted(2), succeeded(2)]);
        assert_eq!(s.current, Some(rid(2)));
        assert_eq!(next(&s, None, at(10), &P), Next::Idle);
        assert_eq!(
            next(&s, Some(RotationReason::Scheduled), at(10), &P),
            Next::WaitUntil(at(122))
        );
        assert_eq!(
            next(&s, Some(RotationReason::Scheduled), at(122), &P),
            Next::Reassert
        );
        // A reassert confirmed after the window clears the way.
        let mut s = s;
        s = evolve(s, &started(3), at(130));
        assert_eq!(s.requested, None);
        s = evolve(s, &succeeded(3), at(131));
        assert_eq!(
            next(&s, Some(RotationReason::Scheduled), at(131), &P),
            Next::Start(RotationReason::Scheduled)
        );
    }

    #[test]
    fn a_refused_reassert_is_not_asked_again_before_a_new_password() {
        let s = given(&[succeeded(1), started(2), interrupted(2), succeeded(2)]);
        assert_eq!(
            next(&s, Some(RotationReason::Scheduled), at(122), &P),
            Next::Reassert
        );
        let reassert = crate::events::RotationStarted {
            rotation_id: rid(3),
            reason: RotationReason::Reassert,
            sealed_password: crate::types::SealedSecret {
                key_id: crate::ids::DataKeyId(uuid::Uuid::from_u128(9)),
                nonce: [0; 24],
                ciphertext: vec![1],
            },
        };
        let refused = crate::events::RotationFailed {
            rotation_id: rid(3),
            retryable: false,
            graph_code: Some("Request_BadRequest".into()),
            error: "refused".into(),
        };
        let s = evolve(s, &reassert.into(), at(130));
        let s = evolve(s, &refused.into(), at(131));
        assert_eq!(s.current, Some(rid(2)));
        assert_eq!(
            next(&s, Some(RotationReason::Scheduled), at(131), &P),
            Next::Start(RotationReason::Scheduled)
        );
    }

    #[test]
    fn a_manual_request_inside_the_window_is_recorded_and_deferred() {
        let s = given(&[succeeded(1), started(2), interrupted(2), succeeded(2)]);
        match request_manual(&s, at(10), &P) {
            Ok(ManualRotation::Deferred { events, until }) => {
                assert_eq!(until, at(122));
                assert_eq!(events.len(), 1);
                let s = evolve(s.clone(), &events[0], at(10));
                assert_eq!(s.requested, Some(RotationReason::Manual));
                assert_eq!(next(&s, s.wanted(None), at(200), &P), Next::Reassert);
                // Asked again: nothing more to record.
                assert!(matches!(
                    request_manual(&s, at(11), &P),
                    Ok(ManualRotation::Deferred { events, .. }) if events.is_empty()
                ));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            request_manual(&given(&[succeeded(1)]), at(10), &P),
            Ok(ManualRotation::Start)
        );
        assert!(request_manual(&given(&[started(1)]), at(10), &P).is_err());
    }

    /// A rotation being tried again after a lost answer may take long: a request meanwhile
    /// is recorded and deferred to the window's end, not refused; it runs after the open
    /// rotation settles (and its reassert), never beside it.
    #[test]
    fn a_manual_request_while_a_retried_rotation_is_in_flight_is_deferred() {
        let s = given(&[succeeded(1), started(2), interrupted(2)]);
        match request_manual(&s, at(10), &P) {
            Ok(ManualRotation::Deferred { events, until }) => {
                assert_eq!(until, at(122));
                assert_eq!(events.len(), 1);
                let s = evolve(s.clone(), &events[0], at(10));
                assert_eq!(s.requested, Some(RotationReason::Manual));
                // The open rotation is driven first, whatever is wanted.
                assert_eq!(next(&s, s.wanted(None), at(200), &P), Next::Drive(rid(2)));
                let s = evolve(s, &succeeded(2), at(201));
                assert_eq!(s.requested, Some(RotationReason::Manual));
                assert_ne!(next(&s, s.wanted(None), at(202), &P), Next::Idle);
            }
            other => panic!("{other:?}"),
        }
        // Past the window, still in flight: refused (that rotation is the new password).
        assert!(request_manual(&s, at(200), &P).is_err());
    }

    #[test]
    fn a_restart_records_every_open_rotation_as_interrupted() {
        assert_eq!(on_resume(&given(&[succeeded(1)])), vec![]);
        assert_eq!(on_resume(&given(&[started(2)])), vec![interrupted(2)]);
        let s = given(&[started(2), interrupted(2)]);
        assert!(s.open.as_ref().unwrap().reached);
        assert_eq!(s.unconfirmed_candidate(), Some(rid(2)));
    }

    /// The user's stream: imported with a key, then `events`, the i-th recorded at `at(i)`.
    fn stream_of(events: &[Event]) -> RotationStream {
        let user = crate::ids::UserId(uuid::Uuid::from_u128(7));
        let imported: Event = crate::events::UserImported {
            sso: Default::default(),
        }
        .into();
        let key: Event = crate::events::KeyAssigned {
            key_id: KeyId("K-1".into()),
        }
        .into();
        let mut all = vec![imported, key];
        all.extend_from_slice(events);
        all.iter()
            .enumerate()
            .fold(RotationStream::default(), |s, (i, e)| {
                let envelope = crate::Envelope {
                    position: i as u64 + 1,
                    stream: crate::StreamId::user(user),
                    version: i as u64 + 1,
                    event_id: uuid::Uuid::from_u128(i as u128),
                    recorded_at: at(i as i64 - 2),
                    actor: crate::Actor::System,
                    correlation_id: None,
                    causation_id: None,
                    event: e.clone(),
                    prev_hash: crate::Hash([0; 32]),
                    hash: crate::Hash([0; 32]),
                };
                evolve_stream(s, &envelope)
            })
    }

    fn sealed(n: u8) -> SealedSecret {
        SealedSecret {
            key_id: crate::ids::DataKeyId(uuid::Uuid::from_u128(9)),
            nonce: [n; 24],
            ciphertext: vec![n],
        }
    }

    fn started_with(n: u128, reason: RotationReason) -> Event {
        RotationStarted {
            rotation_id: rid(n),
            reason,
            sealed_password: sealed(n as u8),
        }
        .into()
    }

    fn scheduler(reason: RotationReason) -> Asked {
        Asked::Scheduler {
            reason,
            due: Some(RotationReason::Scheduled),
            may_rotate: true,
        }
    }

    #[test]
    fn a_start_is_decided_on_the_stream_as_it_is_at_the_append() {
        let new = sealed(42);
        let s = stream_of(&[]);
        let decided = decide_start(&s, Asked::Admin, false, rid(5), Some(&new), at(1), &P);
        assert_eq!(
            decided,
            Ok(StartDecision::Start {
                events: vec![RotationStarted {
                    rotation_id: rid(5),
                    reason: RotationReason::Manual,
                    sealed_password: new.clone(),
                }
                .into()],
                reason: RotationReason::Manual,
            })
        );
        // Another process started one meanwhile: nothing new while it is in flight.
        let s = stream_of(&[started_with(1, RotationReason::Manual)]);
        for asked in [Asked::Admin, scheduler(RotationReason::Scheduled)] {
            assert!(matches!(
                decide_start(&s, asked, false, rid(5), Some(&new), at(1), &P),
                Err(Rejection::Conflict(_))
            ));
        }
        // The key was taken away, the user deleted, the domain federated: no rotation.
        let unassigned: Event = crate::events::KeyUnassigned {
            key_id: KeyId("K-1".into()),
        }
        .into();
        let deleted: Event = crate::events::UserDeleted { reason: None }.into();
        for (s, federated) in [
            (stream_of(&[unassigned]), false),
            (stream_of(&[deleted]), false),
            (stream_of(&[]), true),
        ] {
            assert!(
                decide_start(&s, Asked::Admin, federated, rid(5), Some(&new), at(1), &P).is_err()
            );
        }
        // The schedule no longer wants it (the user left the rotation group meanwhile).
        let s = stream_of(&[]);
        let not_now = Asked::Scheduler {
            reason: RotationReason::Scheduled,
            due: None,
            may_rotate: true,
        };
        assert!(decide_start(&s, not_now, false, rid(5), Some(&new), at(1), &P).is_err());
    }

    #[test]
    fn inside_the_window_an_admin_is_deferred_and_after_it_the_current_password_goes_first() {
        let new = sealed(42);
        // Rotation 1 confirmed; rotation 2's attempt interrupted at at(3), then confirmed.
        let s = stream_of(&[
            started_with(1, RotationReason::Initial),
            succeeded(1),
            started_with(2, RotationReason::Manual),
            interrupted(2),
            succeeded(2),
        ]);
        match decide_start(&s, Asked::Admin, false, rid(5), Some(&new), at(10), &P) {
            Ok(StartDecision::Deferred { events, until }) => {
                assert_eq!(until, at(123));
                assert!(matches!(events.as_slice(), [Event::RotationRequested(_)]));
            }
            other => panic!("deferred expected, got {other:?}"),
        }
        // After the window the scheduler's reassert carries rotation 2's password again,
        // never the new one; a new password asked for instead is refused.
        assert_eq!(
            decide_start(
                &s,
                scheduler(RotationReason::Reassert),
                false,
                rid(5),
                None,
                at(130),
                &P
            ),
            Ok(StartDecision::Start {
                events: vec![RotationStarted {
                    rotation_id: rid(5),
                    reason: RotationReason::Reassert,
                    sealed_password: sealed(2),
                }
                .into()],
                reason: RotationReason::Reassert,
            })
        );
        assert!(decide_start(
            &s,
            scheduler(RotationReason::Scheduled),
            false,
            rid(5),
            Some(&new),
            at(130),
            &P
        )
        .is_err());
    }

    #[test]
    fn interruptions_and_unopenable_passwords_are_recorded_only_for_the_open_rotation() {
        let open = stream_of(&[started_with(1, RotationReason::Manual)]);
        assert_eq!(decide_interrupted(&open, rid(1)), vec![interrupted(1)]);
        assert_eq!(decide_interrupted(&open, rid(2)), vec![]);
        assert_eq!(decide_unopenable(&open, rid(1), "shredded".into()).len(), 1);
        // Ended meanwhile (another process recorded its outcome): nothing more.
        let ended = stream_of(&[started_with(1, RotationReason::Manual), succeeded(1)]);
        assert_eq!(decide_interrupted(&ended, rid(1)), vec![]);
        assert_eq!(decide_unopenable(&ended, rid(1), "shredded".into()), vec![]);
    }
}
