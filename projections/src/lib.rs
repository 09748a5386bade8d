//! idledger's projections: pure, deterministic folds of envelopes into current state.
//!
//! [`Projections::apply`] is the only way state changes. The live projector in the binary
//! and `replay` call the same function, so folding the whole log from empty gives exactly
//! the live state.
//!
//! **Architecture invariant:** no clock, no IO, no randomness. Times come from envelopes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod domains;
pub mod key_writes;
pub mod rotations;
pub mod tokens;
pub mod users;

use chrono::{DateTime, Utc};
use idledger_domain::{Envelope, Event, Hash, StreamKind};
use serde::Serialize;

pub use domains::{DomainView, Domains, RunAction, RunUserOutcome, SyncRunStatus, SyncRunView};
pub use key_writes::{KeyWriteView, KeyWrites};
pub use rotations::{RotationOutcome, RotationView, Rotations};
pub use tokens::{TokenView, Tokens};
pub use users::{UserStatus, UserView, Users};

/// All projections, folded together in log order.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Projections {
    /// Position of the last envelope applied (0 when empty).
    pub position: u64,
    /// Commit time of the last envelope applied.
    pub recorded_at: Option<DateTime<Utc>>,
    /// Hash of the last envelope applied.
    pub head_hash: Hash,
    /// Domains and their sync runs.
    pub domains: Domains,
    /// Users.
    pub users: Users,
    /// Password rotations.
    pub rotations: Rotations,
    /// Key writes.
    pub key_writes: KeyWrites,
    /// API tokens.
    pub tokens: Tokens,
}

impl Projections {
    /// The key writes an agent serving `keys` may be handed at `now`, oldest first: queued
    /// ones, and delivered ones left unacknowledged for `lease` (the agent may have
    /// crashed) — only while the write's user still holds the write's key, so a password
    /// reaches only the key of the user it belongs to.
    pub fn deliverable_writes<'a>(
        &'a self,
        keys: &'a [idledger_domain::KeyId],
        now: DateTime<Utc>,
        lease: chrono::Duration,
    ) -> impl Iterator<Item = &'a KeyWriteView> + 'a {
        self.key_writes.pending_for(keys).filter(move |w| {
            let leased = w.state == idledger_domain::KeyWriteState::Delivered
                && w.delivered_at.is_some_and(|t| t + lease > now);
            let held = self.users.get(w.user_id).is_some_and(|u| {
                u.status != UserStatus::Deleted && u.key_id.as_ref() == Some(&w.key_id)
            });
            held && !leased
        })
    }

    /// Empty state, before position 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one envelope it may consume. Same result as [`Projections::apply`]; moves the
    /// large payloads (user attributes) instead of cloning them, which is most of a
    /// replay's allocation.
    pub fn apply_owned(&mut self, env: Envelope) {
        let moves = matches!(env.event, Event::UserAttributesChanged(_));
        match env.stream.user_id() {
            // Only the users projection reads this kind.
            Some(user_id) if moves && env.position > self.position => {
                self.position = env.position;
                self.recorded_at = Some(env.recorded_at);
                self.head_hash = env.hash;
                if let Some(c) = env.correlation_id {
                    let run = idledger_domain::SyncRunId(c);
                    self.domains.note_run_user_event(run, user_id, &env.event);
                }
                self.users.apply_owned(user_id, env);
            }
            _ => self.apply(&env),
        }
    }

    /// Folds one envelope. Envelopes must come in log order; one at or before the current
    /// position is ignored, so re-delivery is harmless.
    pub fn apply(&mut self, env: &Envelope) {
        if env.position <= self.position {
            return;
        }
        self.position = env.position;
        self.recorded_at = Some(env.recorded_at);
        self.head_hash = env.hash;
        match env.stream.kind() {
            StreamKind::Domain => {
                if let Some(domain_id) = env.stream.domain_id() {
                    self.domains.apply(domain_id, env);
                }
            }
            StreamKind::User => {
                if let Some(user_id) = env.stream.user_id() {
                    self.users.apply(user_id, env);
                    if let Some(c) = env.correlation_id {
                        self.domains.note_run_user_event(
                            idledger_domain::SyncRunId(c),
                            user_id,
                            &env.event,
                        );
                    }
                    let domain_id = self.users.get(user_id).map(|u| u.domain_id);
                    self.rotations.apply(user_id, domain_id, env);
                    if let Some((rotation, state)) = self.key_writes.apply(user_id, env) {
                        self.rotations.set_key_write_state(rotation, state);
                    }
                    if let Event::UserDeleted(_) = env.event {
                        self.key_writes.drop_pending_of(user_id);
                    }
                }
            }
            StreamKind::Tokens => self.tokens.apply(env),
            StreamKind::Other => {}
        }
    }
}
