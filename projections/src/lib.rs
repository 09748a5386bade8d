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
pub mod names;
pub mod provider;
pub mod rotations;
pub mod signins;
pub mod tokens;
pub mod users;

use chrono::{DateTime, Utc};
use idledger_domain::{Envelope, Event, Hash, StreamKind};
use serde::Serialize;

pub use domains::{
    DomainView, Domains, RunAction, RunUserOutcome, SyncRunStatus, SyncRunView,
    WorkstationCertificateView,
};
pub use key_writes::{KeyWriteView, KeyWrites};
pub use provider::{AppView, Provider, SigningKeyView};
pub use rotations::{RotationOutcome, RotationView, Rotations};
pub use signins::{PasskeyView, SignInRecord, SignInView, SignIns};
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
    /// Every user ever discovered, deleted ones included.
    pub users: Users,
    /// Password rotations.
    pub rotations: Rotations,
    /// Every key write and where it stands.
    pub key_writes: KeyWrites,
    /// API tokens.
    pub tokens: Tokens,
    /// Enrolment links, passkeys, authenticator apps and recent sign-ins.
    pub signins: SignIns,
    /// The OpenID Connect provider's apps and signing keys.
    pub provider: Provider,
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
                // A lease past the calendar's end (a huge setting) never runs out.
                && w.delivered_at.is_some_and(|t| {
                    t.checked_add_signed(lease).is_none_or(|end| end > now)
                });
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
                    self.domains
                        .note_run_user_event(run, user_id, &env.event, &self.users);
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
                    // Before the user's record moves: a run's outcome may depend on
                    // where the user stood.
                    if let Some(c) = env.correlation_id {
                        self.domains.note_run_user_event(
                            idledger_domain::SyncRunId(c),
                            user_id,
                            &env.event,
                            &self.users,
                        );
                    }
                    self.users.apply(user_id, env);
                    self.signins.apply(user_id, env);
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
            StreamKind::Provider => self.provider.apply(env),
            StreamKind::Other => {}
        }
    }
}

/// A test's envelope: `event` at `position` of `stream`, with nothing else to it.
#[cfg(test)]
pub(crate) fn test_envelope(
    position: u64,
    stream: idledger_domain::StreamId,
    event: idledger_domain::Event,
) -> idledger_domain::Envelope {
    idledger_domain::Envelope {
        position,
        stream,
        version: position,
        recorded_at: DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
        event_id: uuid::Uuid::from_u128(u128::from(position)),
        actor: idledger_domain::Actor::System,
        correlation_id: None,
        causation_id: None,
        event,
        prev_hash: idledger_domain::Hash::ZERO,
        hash: idledger_domain::Hash::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idledger_domain::events::*;
    use idledger_domain::{
        Actor, DataKeyId, DomainId, Hash, KeyId, KeyWriteId, KeyWriteState, LeaveReason, Role,
        RotationId, RotationReason, SealedSecret, SsoMethod, SsoSettings, StreamId, TokenId,
        UserAttributes, UserId,
    };

    fn at(second: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + second, 0).expect("a valid time")
    }

    fn user() -> UserId {
        UserId(uuid::Uuid::from_u128(1))
    }

    /// Envelopes of `events` on `stream`, at positions after `from`, ten seconds apart.
    fn on(stream: &StreamId, from: u64, events: Vec<Event>) -> Vec<Envelope> {
        (from + 1..)
            .zip(events)
            .map(|(position, event)| Envelope {
                position,
                stream: stream.clone(),
                version: position,
                event_id: uuid::Uuid::from_u128(u128::from(position)),
                recorded_at: at(position as i64 * 10),
                actor: Actor::System,
                correlation_id: None,
                causation_id: None,
                event,
                prev_hash: Hash::default(),
                hash: Hash([position as u8; 32]),
            })
            .collect()
    }

    fn folded(envelopes: &[Envelope]) -> Projections {
        let mut p = Projections::new();
        for e in envelopes {
            p.apply(e);
        }
        p
    }

    fn name(n: &str) -> UserAttributes {
        UserAttributes {
            user_principal_name: format!("{n}@contoso.com"),
            display_name: n.into(),
            account_enabled: true,
            ..UserAttributes::default()
        }
    }

    fn sealed() -> SealedSecret {
        SealedSecret {
            key_id: DataKeyId(uuid::Uuid::from_u128(9)),
            nonce: [0; 24],
            ciphertext: vec![1],
        }
    }

    fn a_user_with_a_key() -> Vec<Event> {
        vec![
            UserDiscovered {
                user_id: user(),
                domain_id: DomainId(uuid::Uuid::from_u128(2)),
                external_id: "e".into(),
                attributes: name("ada"),
            }
            .into(),
            UserImported {
                sso: SsoSettings {
                    enabled: true,
                    method: SsoMethod::Passwordless,
                },
            }
            .into(),
            KeyAssigned {
                key_id: KeyId("K1".into()),
            }
            .into(),
        ]
    }

    /// The user with a key, rotated once, the rotation's key write queued.
    fn rotated(rotation: RotationId, write: KeyWriteId) -> Vec<Event> {
        let mut events = a_user_with_a_key();
        events.extend([
            RotationStarted {
                rotation_id: rotation,
                reason: RotationReason::Initial,
                sealed_password: sealed(),
            }
            .into(),
            RotationSucceeded {
                rotation_id: rotation,
            }
            .into(),
            KeyWriteQueued {
                key_write_id: write,
                rotation_id: rotation,
                key_id: KeyId("K1".into()),
            }
            .into(),
        ]);
        events
    }

    #[test]
    fn a_user_is_a_candidate_until_imported_and_stays_active_after_leaving_the_group() {
        let mut events = a_user_with_a_key();
        events.push(
            MemberLeftSyncGroup {
                reason: LeaveReason::LeftGroup,
            }
            .into(),
        );
        let log = on(&StreamId::user(user()), 0, events);
        let candidate = folded(&log[..1]);
        let u = candidate.users.get(user()).unwrap();
        assert_eq!((u.status, u.in_sync_group), (UserStatus::Candidate, true));
        assert_eq!(u.effective_sso(), SsoSettings::default());
        let p = folded(&log);
        let u = p.users.get(user()).unwrap();
        assert_eq!((u.status, u.in_sync_group), (UserStatus::Active, false));
        assert!(u.effective_sso().enabled);
        assert_eq!(u.key_id, Some(KeyId("K1".into())));
        assert_eq!((u.imported_at, u.updated_at), (Some(at(20)), at(40)));
        assert_eq!(p.position, 4);
        assert_eq!(p.head_hash, Hash([4; 32]));
    }

    #[test]
    fn searches_page_as_the_id_order_walk_does() {
        let mut p = Projections::new();
        // Ids given out of order, so storage order is not id order.
        for (position, n) in (0u64..).zip([7u128, 3, 11, 1, 9, 5, 2, 8, 4, 10, 6]) {
            let id = UserId(uuid::Uuid::from_u128(n));
            for e in on(
                &StreamId::user(id),
                position,
                vec![UserDiscovered {
                    user_id: id,
                    domain_id: DomainId(uuid::Uuid::from_u128(2)),
                    external_id: format!("e{n}"),
                    attributes: name(&format!("u{n}")),
                }
                .into()],
            ) {
                p.apply(&e);
            }
        }
        let odd = |u: &crate::UserView| u.id.0.as_u128() % 2 == 1;
        for needle in ["u", "1", "", "x"] {
            for after in [None, Some(3u128), Some(6), Some(11)] {
                let after = after.map(|a| UserId(uuid::Uuid::from_u128(a)));
                for n in [0, 1, 2, 10] {
                    let walked: Vec<UserId> = p
                        .users
                        .iter_after(after)
                        .filter(|u| odd(u) && u.attributes.display_name.contains(needle))
                        .take(n)
                        .map(|u| u.id)
                        .collect();
                    let found: Vec<UserId> = p
                        .users
                        .search(after, n, needle, odd)
                        .iter()
                        .map(|u| u.id)
                        .collect();
                    assert_eq!(found, walked, "{needle:?} after {after:?}, {n}");
                }
            }
        }
    }

    #[test]
    fn envelopes_at_or_before_the_position_are_ignored() {
        let log = on(&StreamId::user(user()), 0, a_user_with_a_key());
        let mut p = folded(&log);
        let before = serde_json::to_value(&p).unwrap();
        for e in &log {
            p.apply(e);
        }
        let mut stale = log[2].clone();
        stale.event = UserDeleted { reason: None }.into();
        p.apply(&stale);
        assert_eq!(serde_json::to_value(&p).unwrap(), before);
    }

    #[test]
    fn folding_owned_envelopes_gives_what_folding_borrowed_ones_does() {
        let mut events = a_user_with_a_key();
        events.push(
            UserAttributesChanged {
                attributes: name("ada lovelace"),
            }
            .into(),
        );
        events.push(UserDeactivated { reason: None }.into());
        let log = on(&StreamId::user(user()), 0, events);
        let mut owned = Projections::new();
        for e in log.clone() {
            owned.apply_owned(e);
        }
        assert_eq!(
            serde_json::to_value(&owned).unwrap(),
            serde_json::to_value(folded(&log)).unwrap()
        );
        assert_eq!(
            owned.users.get(user()).unwrap().attributes.display_name,
            "ada lovelace"
        );
    }

    #[test]
    fn principal_names_find_live_users_whatever_the_case_through_renames() {
        let found = |p: &Projections, name: &str| {
            p.users
                .by_principal_name(name)
                .map(|u| u.id)
                .collect::<Vec<_>>()
        };
        let mut events = a_user_with_a_key();
        let renamed = events.len();
        events.push(
            UserAttributesChanged {
                attributes: name("ada.lovelace"),
            }
            .into(),
        );
        events.push(UserDeleted { reason: None }.into());
        let log = on(&StreamId::user(user()), 0, events);
        for owned in [false, true] {
            let mut p = Projections::new();
            let fold = |p: &mut Projections, e: &Envelope| {
                if owned {
                    p.apply_owned(e.clone())
                } else {
                    p.apply(e)
                }
            };
            for e in &log[..renamed] {
                fold(&mut p, e);
            }
            assert_eq!(found(&p, "ADA@Contoso.com"), vec![user()], "owned: {owned}");
            fold(&mut p, &log[renamed]);
            assert_eq!(found(&p, "ada@contoso.com"), vec![], "owned: {owned}");
            assert_eq!(found(&p, "Ada.Lovelace@contoso.com"), vec![user()]);
            fold(&mut p, &log[renamed + 1]);
            assert_eq!(found(&p, "ada.lovelace@contoso.com"), vec![], "deleted");
        }
    }

    /// A reveal that showed the open rotation's unconfirmed candidate revealed the password
    /// that rotation makes current: should it succeed later, the password was revealed as
    /// of then, and the after-reveal rotation follows from there.
    #[test]
    fn a_revealed_candidate_that_succeeds_counts_as_revealed_when_it_does() {
        let (a, b) = (
            RotationId(uuid::Uuid::from_u128(5)),
            RotationId(uuid::Uuid::from_u128(6)),
        );
        let mut events = a_user_with_a_key();
        let started = |rotation_id| -> Event {
            RotationStarted {
                rotation_id,
                reason: RotationReason::Manual,
                sealed_password: sealed(),
            }
            .into()
        };
        events.push(started(a));
        events.push(RotationSucceeded { rotation_id: a }.into());
        events.push(started(b));
        events.push(
            RotationRetried {
                rotation_id: b,
                attempt: 1,
                error: "no answer".into(),
            }
            .into(),
        );
        for rotation_id in [a, b] {
            events.push(
                PasswordRevealed {
                    rotation_id,
                    reason: "locked out".into(),
                }
                .into(),
            );
        }
        events.push(RotationSucceeded { rotation_id: b }.into());
        let log = on(&StreamId::user(user()), 0, events);
        let p = folded(&log);
        let u = p.users.get(user()).unwrap();
        let succeeded = log.last().unwrap().recorded_at;
        assert_eq!(u.last_rotation_at, Some(succeeded));
        assert_eq!(
            u.last_revealed_at,
            Some(succeeded),
            "the current password was revealed"
        );
        // Only the current password shown: its reveal stays when it was.
        let mut only_current = log[..log.len() - 3].to_vec();
        only_current.push(log[log.len() - 3].clone());
        only_current.push(log.last().unwrap().clone());
        let p = folded(&only_current);
        let u = p.users.get(user()).unwrap();
        assert!(u.last_revealed_at < u.last_rotation_at);
    }

    #[test]
    fn a_key_finds_the_live_user_it_is_assigned_to() {
        let holders = |p: &Projections, key: &str| {
            p.users
                .key_holders(&KeyId(key.into()))
                .map(|u| u.id)
                .collect::<Vec<_>>()
        };
        let mut events = a_user_with_a_key();
        events.push(
            KeyAssigned {
                key_id: KeyId("K2".into()),
            }
            .into(),
        );
        events.push(
            KeyUnassigned {
                key_id: KeyId("K2".into()),
            }
            .into(),
        );
        events.push(
            KeyAssigned {
                key_id: KeyId("K3".into()),
            }
            .into(),
        );
        events.push(UserDeleted { reason: None }.into());
        let log = on(&StreamId::user(user()), 0, events);
        let mut p = Projections::new();
        let after = |n: usize, p: &mut Projections| p.apply(&log[n]);
        for n in 0..3 {
            after(n, &mut p);
        }
        assert_eq!(holders(&p, "K1"), vec![user()]);
        assert_eq!(holders(&p, "k1"), vec![], "key ids are exact");
        after(3, &mut p);
        assert_eq!(
            (holders(&p, "K1"), holders(&p, "K2")),
            (vec![], vec![user()])
        );
        after(4, &mut p);
        assert_eq!(holders(&p, "K2"), vec![]);
        after(5, &mut p);
        assert_eq!(holders(&p, "K3"), vec![user()]);
        after(6, &mut p);
        assert_eq!(holders(&p, "K3"), vec![], "a deleted user holds nothing");
    }

    #[test]
    fn a_quarantine_recorded_in_parts_holds_every_part() {
        let domain = DomainId(uuid::Uuid::from_u128(2));
        let run = idledger_domain::SyncRunId(uuid::Uuid::from_u128(3));
        let id = |n| UserId(uuid::Uuid::from_u128(n));
        let part = |held: Vec<UserId>| -> Event {
            SyncQuarantined {
                run_id: run,
                held_removals: held,
                domain_users: 10,
            }
            .into()
        };
        let log = on(
            &StreamId::domain(domain),
            0,
            vec![
                DomainRegistered {
                    domain_id: domain,
                    name: "contoso.com".into(),
                    settings: Default::default(),
                }
                .into(),
                SyncRunStarted {
                    run_id: run,
                    trigger: idledger_domain::SyncTrigger::Manual,
                    dry_run: false,
                    full: true,
                }
                .into(),
                part(vec![id(9), id(4)]),
                part(vec![id(7), id(1)]),
            ],
        );
        let p = folded(&log);
        let r = p.domains.run(run).unwrap();
        assert_eq!(r.held_removals, vec![id(1), id(4), id(7), id(9)]);
        assert_eq!(p.domains.get(domain).unwrap().quarantined_run(), Some(run));
    }

    #[test]
    fn a_running_sync_counts_what_it_has_appended_until_its_own_counters_replace_them() {
        let domain = DomainId(uuid::Uuid::from_u128(2));
        let run = idledger_domain::SyncRunId(uuid::Uuid::from_u128(3));
        let (a, b, c) = (
            user(),
            UserId(uuid::Uuid::from_u128(4)),
            UserId(uuid::Uuid::from_u128(5)),
        );
        let discovered = |u: UserId, n: &str| -> Event {
            UserDiscovered {
                user_id: u,
                domain_id: domain,
                external_id: n.into(),
                attributes: name(n),
            }
            .into()
        };
        let mut p = folded(&on(
            &StreamId::domain(domain),
            0,
            vec![DomainRegistered {
                domain_id: domain,
                name: "contoso.com".into(),
                settings: Default::default(),
            }
            .into()],
        ));
        // Carol is known from before the run.
        let mut position = 1;
        let mut apply = |p: &mut Projections, stream: StreamId, run_event: bool, event: Event| {
            let mut env = on(&stream, position, vec![event]).remove(0);
            env.correlation_id = run_event.then_some(run.0);
            position += 1;
            p.apply(&env);
        };
        apply(&mut p, StreamId::user(c), false, discovered(c, "carol"));
        // Dan left before it.
        let dan = UserId(uuid::Uuid::from_u128(6));
        apply(&mut p, StreamId::user(dan), false, discovered(dan, "dan"));
        apply(
            &mut p,
            StreamId::user(dan),
            false,
            MemberLeftSyncGroup {
                reason: LeaveReason::LeftGroup,
            }
            .into(),
        );
        let started = SyncRunStarted {
            run_id: run,
            trigger: idledger_domain::SyncTrigger::Manual,
            dry_run: false,
            full: true,
        };
        apply(&mut p, StreamId::domain(domain), false, started.into());
        let so_far = |p: &Projections| p.domains.run(run).unwrap().counters;
        apply(&mut p, StreamId::user(a), true, discovered(a, "ada"));
        apply(&mut p, StreamId::user(b), true, discovered(b, "bob"));
        apply(
            &mut p,
            StreamId::user(b),
            true,
            UserImported {
                sso: SsoSettings::default(),
            }
            .into(),
        );
        assert_eq!((so_far(&p).added, so_far(&p).imported), (2, 1));
        // Changed, then gone from the group and deactivated: one user, counted once, as
        // what happened last outranks.
        apply(
            &mut p,
            StreamId::user(c),
            true,
            UserAttributesChanged {
                attributes: name("carol"),
            }
            .into(),
        );
        assert_eq!(so_far(&p).changed, 1);
        apply(
            &mut p,
            StreamId::user(c),
            true,
            MemberLeftSyncGroup {
                reason: LeaveReason::LeftGroup,
            }
            .into(),
        );
        apply(
            &mut p,
            StreamId::user(c),
            true,
            UserDeactivated {
                reason: Some(LeaveReason::LeftGroup),
            }
            .into(),
        );
        // Still out, for another reason now: no news, as the run counts it.
        apply(
            &mut p,
            StreamId::user(dan),
            true,
            MemberLeftSyncGroup {
                reason: LeaveReason::DeletedInEntra,
            }
            .into(),
        );
        let c_now = so_far(&p);
        assert_eq!(c_now.deleted, 0);
        assert_eq!(
            (
                c_now.added,
                c_now.changed,
                c_now.left,
                c_now.imported,
                c_now.removed
            ),
            (2, 0, 1, 1, 1)
        );
        // Completed: the run's own counters (which also count the unchanged) stand.
        let done = idledger_domain::SyncCounters {
            added: 2,
            left: 1,
            imported: 1,
            removed: 1,
            unchanged: 7,
            ..Default::default()
        };
        let completed = SyncRunCompleted {
            run_id: run,
            counters: done,
            full: Some(true),
        };
        apply(&mut p, StreamId::domain(domain), false, completed.into());
        apply(
            &mut p,
            StreamId::user(a),
            true,
            UserImported {
                sso: SsoSettings::default(),
            }
            .into(),
        );
        assert_eq!(so_far(&p), done);
    }

    #[test]
    fn a_rotation_and_its_key_write_move_together() {
        let rotation = RotationId(uuid::Uuid::from_u128(7));
        let write = KeyWriteId(uuid::Uuid::from_u128(8));
        let log = on(&StreamId::user(user()), 0, rotated(rotation, write));
        let p = folded(&log[..4]);
        assert_eq!(p.rotations.pending().len(), 1);
        let p = folded(&log);
        let r = p.rotations.get(rotation).unwrap();
        assert_eq!(r.outcome, RotationOutcome::Succeeded);
        assert_eq!(r.key_write_state, Some(KeyWriteState::Queued));
        assert_eq!(
            p.users.get(user()).unwrap().current_rotation,
            Some(rotation)
        );
        assert_eq!(p.users.get(user()).unwrap().last_rotation_at, Some(at(50)));

        let mut p = p;
        let delivered = on(
            &StreamId::user(user()),
            6,
            vec![KeyWriteDelivered {
                key_write_id: write,
            }
            .into()],
        );
        p.apply(&delivered[0]);
        let r = p.rotations.get(rotation).unwrap();
        assert_eq!(r.key_write_state, Some(KeyWriteState::Delivered));
    }

    #[test]
    fn a_write_is_deliverable_to_its_keys_agent_while_unleased_and_held() {
        let rotation = RotationId(uuid::Uuid::from_u128(7));
        let write = KeyWriteId(uuid::Uuid::from_u128(8));
        let mut events = rotated(rotation, write);
        events.push(
            KeyWriteDelivered {
                key_write_id: write,
            }
            .into(),
        );
        let log = on(&StreamId::user(user()), 0, events);
        let p = folded(&log);
        let lease = chrono::Duration::seconds(60);
        let keys = [KeyId("K1".into())];
        let ids = |p: &Projections, now| {
            p.deliverable_writes(&keys, now, lease)
                .map(|w| w.id)
                .collect::<Vec<_>>()
        };
        // Delivered at 70 s: leased until 130 s.
        assert_eq!(ids(&p, at(100)), vec![]);
        assert_eq!(ids(&p, at(131)), vec![write]);
        // A lease longer than the calendar is leased for ever, not a panic.
        assert_eq!(
            p.deliverable_writes(&keys, at(131), chrono::Duration::MAX)
                .count(),
            0
        );
        assert_eq!(
            p.deliverable_writes(&[KeyId("K2".into())], at(131), lease)
                .count(),
            0
        );
        let mut p = p;
        let unassigned = on(
            &StreamId::user(user()),
            7,
            vec![KeyUnassigned {
                key_id: KeyId("K1".into()),
            }
            .into()],
        );
        p.apply(&unassigned[0]);
        assert_eq!(ids(&p, at(131)), vec![]);
    }

    #[test]
    fn tokens_are_found_by_hash_until_revoked() {
        let id = TokenId(uuid::Uuid::from_u128(3));
        let log = on(
            &StreamId::tokens(),
            0,
            vec![
                TokenIssued {
                    token_id: id,
                    role: Role::Auditor,
                    name: "audit".into(),
                    key_ids: vec![],
                    token_hash: Hash([5; 32]),
                }
                .into(),
                TokenRevoked { token_id: id }.into(),
            ],
        );
        let live = folded(&log[..1]);
        let t = live.tokens.by_hash(&Hash([5; 32])).unwrap();
        assert_eq!((t.role, t.revoked_at), (Role::Auditor, None));
        assert!(!live.tokens.none_live());
        let revoked = folded(&log);
        assert_eq!(revoked.tokens.get(id).unwrap().revoked_at, Some(at(20)));
        assert!(revoked.tokens.none_live());
    }

    /// A move of the domain's URLs comes with its secret in one append; folded in two
    /// steps, the old secret is never in force for the new URLs.
    #[test]
    fn credentials_are_in_force_only_for_the_urls_they_were_saved_for() {
        let domain = DomainId(uuid::Uuid::from_u128(9));
        let sealed = |b: u8| idledger_domain::SealedSecret {
            key_id: idledger_domain::DataKeyId(uuid::Uuid::from_u128(3)),
            nonce: [b; 24],
            ciphertext: vec![b; 8],
        };
        let creds = |b: u8| -> Event {
            DomainCredentialsSet {
                tenant_id: "t".into(),
                client_id: "c".into(),
                client_secret: sealed(b),
            }
            .into()
        };
        let moved = idledger_domain::DomainSettings {
            graph_url: "https://graph.example.net".into(),
            ..Default::default()
        };
        let log = on(
            &StreamId::domain(domain),
            0,
            vec![
                DomainRegistered {
                    domain_id: domain,
                    name: "contoso.com".into(),
                    settings: Default::default(),
                }
                .into(),
                creds(1),
                DomainSettingsChanged { settings: moved }.into(),
                creds(2),
            ],
        );
        let at = |n: usize| folded(&log[..n]);
        let saved = at(2);
        let c = saved.domains.get(domain).unwrap().credentials_in_force();
        assert_eq!(c.map(|c| c.client_secret.nonce[0]), Some(1));
        let between = at(3);
        let d = between.domains.get(domain).unwrap();
        assert!(d.credentials.is_some());
        assert!(d.credentials_in_force().is_none());
        let after = at(4);
        let c = after.domains.get(domain).unwrap().credentials_in_force();
        assert_eq!(c.map(|c| c.client_secret.nonce[0]), Some(2));
    }

    /// A removed passkey or authenticator app ends the apps' tokens issued before it (their
    /// refresh families end with it): the lost device keeps no access either.
    #[test]
    fn a_removed_sign_in_device_withdraws_the_apps_tokens_issued_before_it() {
        let mut events = a_user_with_a_key();
        let before = folded(&on(&StreamId::user(user()), 0, events.clone()));
        assert_eq!(
            before
                .users
                .get(user())
                .unwrap()
                .app_tokens_withdrawn_position,
            0
        );
        for removed in [
            Event::from(PasskeyRemoved {
                credential_id: "AAAA".into(),
            }),
            TotpRemoved {}.into(),
        ] {
            events.push(removed);
            let log = on(&StreamId::user(user()), 0, events.clone());
            let u = folded(&log).users.get(user()).unwrap().clone();
            assert_eq!(u.app_tokens_withdrawn_position, log.len() as u64);
            assert_eq!(
                u.sign_in_withdrawn_position, 0,
                "sessions are not its business"
            );
        }
    }

    /// A revoked grant is remembered while access tokens naming it can live, then dropped
    /// by a later revocation's fold (log time), so the list stays short.
    #[test]
    fn revoked_grants_are_remembered_longer_than_any_access_token_lives() {
        let refused = |grant: u128, second: i64| -> Event {
            AppTokenRefused {
                app_id: idledger_domain::AppId(uuid::Uuid::from_u128(5)),
                reason: "invalid_grant: authorization code reused".into(),
                revoked_family: Some(uuid::Uuid::from_u128(grant)),
                at: at(second),
            }
            .into()
        };
        let mut events = a_user_with_a_key();
        events.push(refused(100, 0));
        events.push(refused(101, 86_400));
        events.push(refused(101, 86_401));
        let p = folded(&on(&StreamId::user(user()), 0, events.clone()));
        let u = p.users.get(user()).unwrap();
        assert!(u.grant_revoked(uuid::Uuid::from_u128(100)));
        assert!(u.grant_revoked(uuid::Uuid::from_u128(101)));
        assert!(!u.grant_revoked(uuid::Uuid::from_u128(102)));
        assert_eq!(u.revoked_grants.len(), 2, "a replayed grant is kept once");
        events.push(refused(102, 2 * 86_400 + 1_000));
        let p = folded(&on(&StreamId::user(user()), 0, events));
        let u = p.users.get(user()).unwrap();
        assert!(!u.grant_revoked(uuid::Uuid::from_u128(100)));
        assert!(u.grant_revoked(uuid::Uuid::from_u128(101)));
        assert!(u.grant_revoked(uuid::Uuid::from_u128(102)));
    }
}
