//! Key writes: passwords waiting for, or delivered to, workstation agents.

use chrono::{DateTime, Utc};
use idledger_domain::{Envelope, Event, KeyId, KeyWriteId, KeyWriteState, RotationId, UserId};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::BTreeMap;

/// One key write.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyWriteView {
    /// The write.
    pub id: KeyWriteId,
    /// Whose password.
    pub user_id: UserId,
    /// The hardware key's serial.
    pub key_id: KeyId,
    /// The rotation whose password it carries.
    pub rotation_id: RotationId,
    /// Where it stands.
    pub state: KeyWriteState,
    /// When it was queued.
    pub queued_at: DateTime<Utc>,
    /// Position of `KeyWriteQueued` (agents get writes in this order).
    pub queued_position: u64,
    /// Last handed to the agent.
    pub delivered_at: Option<DateTime<Utc>>,
    /// How often it was handed to an agent.
    pub deliveries: u32,
    /// Acknowledged (written or failed).
    pub acknowledged_at: Option<DateTime<Utc>>,
    /// The agent's failure detail.
    pub detail: Option<String>,
}

impl KeyWriteView {
    /// Still owed to the agent: queued, or delivered without acknowledgement.
    pub fn is_pending(&self) -> bool {
        matches!(self.state, KeyWriteState::Queued | KeyWriteState::Delivered)
    }
}

/// All key writes, with the pending ones indexed by queue position.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeyWrites {
    #[serde(serialize_with = "crate::users::sorted_values")]
    by_id: FxHashMap<KeyWriteId, KeyWriteView>,
    #[serde(skip)]
    pending: BTreeMap<u64, KeyWriteId>,
    #[serde(skip)]
    by_user: FxHashMap<UserId, Vec<KeyWriteId>>,
}

impl KeyWrites {
    /// A key write by id.
    pub fn get(&self, id: KeyWriteId) -> Option<&KeyWriteView> {
        self.by_id.get(&id)
    }

    /// Pending writes for any of `keys`, oldest first.
    pub fn pending_for<'a>(
        &'a self,
        keys: &'a [KeyId],
    ) -> impl Iterator<Item = &'a KeyWriteView> + 'a {
        self.pending
            .values()
            .filter_map(|id| self.by_id.get(id))
            .filter(move |w| keys.contains(&w.key_id))
    }

    /// Every write still owed to an agent, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &KeyWriteView> + '_ {
        self.pending.values().filter_map(|id| self.by_id.get(id))
    }

    /// One user's key writes, oldest first.
    pub fn of_user(&self, user: UserId) -> impl Iterator<Item = &KeyWriteView> + '_ {
        self.by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
    }

    /// Number of key writes.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No key writes.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn apply(
        &mut self,
        user: UserId,
        env: &Envelope,
    ) -> Option<(RotationId, KeyWriteState)> {
        let at = env.recorded_at;
        let (id, state) = match &env.event {
            Event::KeyWriteQueued(e) => {
                self.by_id.insert(
                    e.key_write_id,
                    KeyWriteView {
                        id: e.key_write_id,
                        user_id: user,
                        key_id: e.key_id.clone(),
                        rotation_id: e.rotation_id,
                        state: KeyWriteState::Queued,
                        queued_at: at,
                        queued_position: env.position,
                        delivered_at: None,
                        deliveries: 0,
                        acknowledged_at: None,
                        detail: None,
                    },
                );
                self.pending.insert(env.position, e.key_write_id);
                self.by_user.entry(user).or_default().push(e.key_write_id);
                return Some((e.rotation_id, KeyWriteState::Queued));
            }
            Event::KeyWriteDelivered(e) => (e.key_write_id, KeyWriteState::Delivered),
            Event::KeyWriteConfirmed(e) => (e.key_write_id, KeyWriteState::Confirmed),
            Event::KeyWriteFailed(e) => (e.key_write_id, KeyWriteState::Failed),
            Event::KeyWriteSuperseded(e) => (e.key_write_id, KeyWriteState::Superseded),
            _ => return None,
        };
        let w = self.by_id.get_mut(&id)?;
        w.state = state;
        match &env.event {
            Event::KeyWriteDelivered(_) => {
                w.delivered_at = Some(at);
                w.deliveries = w.deliveries.saturating_add(1);
            }
            Event::KeyWriteConfirmed(_) | Event::KeyWriteSuperseded(_) => {
                w.acknowledged_at = Some(at)
            }
            Event::KeyWriteFailed(e) => {
                w.acknowledged_at = Some(at);
                w.detail = Some(e.detail.clone());
            }
            _ => {}
        }
        if !w.is_pending() {
            self.pending.remove(&w.queued_position);
        }
        Some((w.rotation_id, state))
    }

    /// A deleted user's writes are no longer owed to anyone.
    pub(crate) fn drop_pending_of(&mut self, user: UserId) {
        for id in self.by_user.get(&user).into_iter().flatten() {
            if let Some(w) = self.by_id.get(id) {
                self.pending.remove(&w.queued_position);
            }
        }
    }
}
