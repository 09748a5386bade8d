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

/// All key writes, with the pending ones indexed by queue position, and by key: an
/// agent's poll reads its own keys' writes, not every key's backlog.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KeyWrites {
    #[serde(serialize_with = "crate::users::sorted_values")]
    by_id: FxHashMap<KeyWriteId, KeyWriteView>,
    #[serde(skip)]
    pending: BTreeMap<u64, KeyWriteId>,
    #[serde(skip)]
    pending_by_key: FxHashMap<KeyId, BTreeMap<u64, KeyWriteId>>,
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
        let mut queued: Vec<(u64, KeyWriteId)> = keys
            .iter()
            .filter_map(|k| self.pending_by_key.get(k))
            .flat_map(|writes| writes.iter().map(|(p, id)| (*p, *id)))
            .collect();
        // An agent serves a key or a few; one named twice is served once.
        queued.sort_unstable_by_key(|(p, _)| *p);
        queued.dedup_by_key(|(p, _)| *p);
        queued.into_iter().filter_map(|(_, id)| self.by_id.get(&id))
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
                self.pending_by_key
                    .entry(e.key_id.clone())
                    .or_default()
                    .insert(env.position, e.key_write_id);
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
        let (done, rotation) = (!w.is_pending(), w.rotation_id);
        if done {
            let (position, key) = (w.queued_position, w.key_id.clone());
            self.unqueue(position, &key);
        }
        Some((rotation, state))
    }

    /// The write queued at `position` for `key` is no longer pending.
    fn unqueue(&mut self, position: u64, key: &KeyId) {
        self.pending.remove(&position);
        if let Some(writes) = self.pending_by_key.get_mut(key) {
            writes.remove(&position);
            if writes.is_empty() {
                self.pending_by_key.remove(key);
            }
        }
    }

    /// A deleted user's writes are no longer owed to anyone.
    pub(crate) fn drop_pending_of(&mut self, user: UserId) {
        let owed: Vec<(u64, KeyId)> = self
            .by_user
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .map(|w| (w.queued_position, w.key_id.clone()))
            .collect();
        for (position, key) in owed {
            self.unqueue(position, &key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_domain::events::{
        KeyWriteConfirmed, KeyWriteQueued, KeyWriteSuperseded, SupersedeReason,
    };
    use idledger_domain::StreamId;

    fn key(n: u8) -> KeyId {
        KeyId(format!("K{n}"))
    }

    /// What the index must answer: every pending write of the keys, by a scan of all.
    fn scanned(w: &KeyWrites, keys: &[KeyId]) -> Vec<KeyWriteId> {
        w.pending()
            .filter(|v| keys.contains(&v.key_id))
            .map(|v| v.id)
            .collect()
    }

    #[test]
    fn a_keys_pending_writes_are_its_own_oldest_first_as_a_scan_of_all_finds() {
        let mut w = KeyWrites::default();
        let users = [
            UserId(uuid::Uuid::from_u128(1)),
            UserId(uuid::Uuid::from_u128(2)),
        ];
        let id = |n: u64| KeyWriteId(uuid::Uuid::from_u128(u128::from(100 + n)));
        let mut position = 0;
        let mut apply = |w: &mut KeyWrites, user: UserId, event: Event| {
            position += 1;
            w.apply(
                user,
                &crate::test_envelope(position, StreamId::user(user), event),
            );
        };
        // Writes 1..=6 alternate between the two users' keys (K1, K2).
        for n in 1..=6u64 {
            let u = (n % 2) as usize;
            apply(
                &mut w,
                users[u],
                KeyWriteQueued {
                    key_write_id: id(n),
                    rotation_id: RotationId(uuid::Uuid::from_u128(u128::from(n))),
                    key_id: key(u as u8 + 1),
                }
                .into(),
            );
        }
        let check = |w: &KeyWrites| {
            for keys in [
                vec![key(1)],
                vec![key(2)],
                vec![key(2), key(1), key(1)],
                vec![key(3)],
            ] {
                let indexed: Vec<_> = w.pending_for(&keys).map(|v| v.id).collect();
                assert_eq!(indexed, scanned(w, &keys), "{keys:?}");
            }
        };
        check(&w);
        assert_eq!(
            w.pending_for(&[key(2), key(1)])
                .map(|v| v.id)
                .collect::<Vec<_>>(),
            (1..=6).map(id).collect::<Vec<_>>()
        );
        apply(
            &mut w,
            users[1],
            KeyWriteConfirmed {
                key_write_id: id(1),
            }
            .into(),
        );
        let newer = SupersedeReason::NewerRotation {
            rotation_id: RotationId(uuid::Uuid::from_u128(4)),
        };
        apply(
            &mut w,
            users[0],
            KeyWriteSuperseded {
                key_write_id: id(2),
                reason: newer,
            }
            .into(),
        );
        check(&w);
        assert_eq!(
            w.pending_for(&[key(1)]).map(|v| v.id).collect::<Vec<_>>(),
            vec![id(4), id(6)]
        );
        w.drop_pending_of(users[1]);
        check(&w);
        assert_eq!(w.pending_for(&[key(2), key(1)]).count(), 2);
        w.drop_pending_of(users[0]);
        check(&w);
        assert!(w.pending_by_key.is_empty() && w.pending.is_empty());
    }
}
