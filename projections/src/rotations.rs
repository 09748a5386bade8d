//! The rotation history: every rotation, its steps and outcome, per user.

use chrono::{DateTime, Utc};
use idledger_domain::{
    Actor, DomainId, Envelope, Event, KeyWriteId, KeyWriteState, RotationId, RotationReason,
    SealedSecret, UserId,
};
use rustc_hash::FxHashMap;
use serde::Serialize;

/// How a rotation ended, if it has.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RotationOutcome {
    /// Started, no outcome yet: resumed with its own password after a restart.
    Pending,
    /// Graph set the password.
    Succeeded,
    /// Graph refused; the previous password stays current.
    Failed,
    /// The outcome is unknown after the retries; the candidate is kept and tried again
    /// later, until Graph confirms it.
    Unknown,
}

/// One rotation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RotationView {
    /// The rotation this belongs to (also the correlation id of its events).
    pub rotation_id: RotationId,
    /// Whose password.
    pub user_id: UserId,
    /// The user's domain when it started.
    pub domain_id: Option<DomainId>,
    /// Why.
    pub reason: RotationReason,
    /// Who started it.
    pub actor: Actor,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Position of `RotationStarted`.
    pub started_position: u64,
    /// The candidate password, sealed (never serialized).
    #[serde(skip)]
    pub sealed_password: SealedSecret,
    /// Attempts that ended with an unknown outcome.
    pub retries: u32,
    /// How it ended, or pending.
    pub outcome: RotationOutcome,
    /// Graph's error code on failure.
    pub graph_code: Option<String>,
    /// The last error text.
    pub error: Option<String>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// The key write carrying its password.
    pub key_write_id: Option<KeyWriteId>,
    /// Where that key write stands.
    pub key_write_state: Option<KeyWriteState>,
    /// Times its password was revealed.
    pub reveals: u32,
}

/// All rotations.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rotations {
    #[serde(serialize_with = "crate::users::sorted_values")]
    by_id: FxHashMap<RotationId, RotationView>,
    #[serde(skip)]
    by_user: FxHashMap<UserId, Vec<RotationId>>,
    /// Every rotation under the position of its start: log order, which the clock (and
    /// so a UUIDv7) need not follow.
    #[serde(skip)]
    by_start: std::collections::BTreeMap<u64, RotationId>,
}

impl Rotations {
    /// A rotation by id.
    pub fn get(&self, id: RotationId) -> Option<&RotationView> {
        self.by_id.get(&id)
    }

    /// One user's rotations, oldest first.
    pub fn of_user(&self, user: UserId) -> impl DoubleEndedIterator<Item = &RotationView> + '_ {
        self.by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }

    /// All rotations, the last started first; with `before`, only those started before
    /// that position.
    pub fn newest_first(&self, before: Option<u64>) -> impl Iterator<Item = &RotationView> + '_ {
        self.by_start
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .filter_map(|(_, id)| self.by_id.get(id))
    }

    /// Rotations with no outcome yet (to resume after a restart), oldest first.
    pub fn pending(&self) -> Vec<&RotationView> {
        let mut v: Vec<_> = self
            .by_id
            .values()
            .filter(|r| r.outcome == RotationOutcome::Pending)
            .collect();
        v.sort_by_key(|r| r.started_position);
        v
    }

    /// Number of rotations.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No rotations.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn apply(&mut self, user: UserId, domain: Option<DomainId>, env: &Envelope) {
        let at = env.recorded_at;
        let id = match &env.event {
            Event::RotationStarted(e) => {
                self.by_id.insert(
                    e.rotation_id,
                    RotationView {
                        rotation_id: e.rotation_id,
                        user_id: user,
                        domain_id: domain,
                        reason: e.reason,
                        actor: env.actor.clone(),
                        started_at: at,
                        started_position: env.position,
                        sealed_password: e.sealed_password.clone(),
                        retries: 0,
                        outcome: RotationOutcome::Pending,
                        graph_code: None,
                        error: None,
                        finished_at: None,
                        key_write_id: None,
                        key_write_state: None,
                        reveals: 0,
                    },
                );
                self.by_user.entry(user).or_default().push(e.rotation_id);
                self.by_start.insert(env.position, e.rotation_id);
                return;
            }
            Event::RotationRetried(e) => e.rotation_id,
            Event::RotationInterrupted(e) => e.rotation_id,
            Event::RotationSucceeded(e) => e.rotation_id,
            Event::RotationFailed(e) => e.rotation_id,
            Event::KeyWriteQueued(e) => e.rotation_id,
            Event::PasswordRevealed(e) => e.rotation_id,
            _ => return,
        };
        let Some(r) = self.by_id.get_mut(&id) else {
            return;
        };
        match &env.event {
            Event::RotationRetried(e) => {
                r.retries = r.retries.max(e.attempt);
                r.error = Some(e.error.clone());
            }
            Event::RotationInterrupted(_) => {
                r.retries += 1;
                r.error =
                    Some("interrupted: an attempt may have reached Graph without an answer".into());
            }
            Event::RotationSucceeded(_) => {
                r.outcome = RotationOutcome::Succeeded;
                r.finished_at = Some(at);
            }
            Event::RotationFailed(e) => {
                r.outcome = if e.retryable {
                    RotationOutcome::Unknown
                } else {
                    RotationOutcome::Failed
                };
                r.graph_code = e.graph_code.clone();
                r.error = Some(e.error.clone());
                r.finished_at = Some(at);
            }
            Event::KeyWriteQueued(e) => {
                r.key_write_id = Some(e.key_write_id);
                r.key_write_state = Some(KeyWriteState::Queued);
            }
            Event::PasswordRevealed(_) => r.reveals += 1,
            _ => {}
        }
    }

    /// Mirrors a key write's state onto its rotation.
    pub(crate) fn set_key_write_state(&mut self, rotation: RotationId, state: KeyWriteState) {
        if let Some(r) = self.by_id.get_mut(&rotation) {
            r.key_write_state = Some(state);
        }
    }
}
