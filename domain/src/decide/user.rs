//! Decisions an admin makes on a user's stream.

use super::*;

/// Where a user stands, for decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    /// No such user.
    #[default]
    Unknown,
    /// Not imported.
    Candidate,
    /// Imported.
    Active,
    /// SSO off; PC unlock kept.
    Deactivated,
    /// Gone; their data key is shredded.
    Deleted,
}

impl Status {
    /// The status name used in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Candidate => "candidate",
            Status::Active => "active",
            Status::Deactivated => "deactivated",
            Status::Deleted => "deleted",
        }
    }
}

/// What decisions about a user need to know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserState {
    /// Where it stands.
    pub status: Status,
    /// An admin's override of the domain's SSO defaults.
    pub sso_override: Option<SsoSettings>,
    /// In scope of the sync group (a member, enabled, existing).
    pub in_sync_group: bool,
    /// The assigned hardware key.
    pub key_id: Option<KeyId>,
    /// Every key write of the user.
    pub writes: std::collections::BTreeMap<KeyWriteId, OwedWrite>,
    /// SSO settings applied at import.
    pub imported_sso: Option<SsoSettings>,
    /// The user's domain.
    pub domain: Option<DomainId>,
    /// Enrolment, sign-in methods and lockouts.
    pub signin: super::signin::SignInState,
    /// Refresh-token families of the apps the user signed in to.
    pub refresh: super::refresh::Families,
    /// The rotation whose password Graph confirmed last: the one a key must hold. A
    /// reassert sends that same password again, so its success leaves this as it was: a
    /// write of the password, written late onto a key taken away, is still found exposed.
    pub current_password: Option<RotationId>,
    /// The reassert started last, if the last rotation started was one.
    pub reasserting: Option<RotationId>,
    /// Kept by the removal behaviour since they last left the sync group: their removal
    /// is settled, and approving it again does nothing.
    pub kept_out: bool,
}

/// A key write as decisions see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwedWrite {
    /// The key it is for.
    pub key: KeyId,
    /// The rotation whose password it carries.
    pub rotation: RotationId,
    /// Where it stands.
    pub state: KeyWriteState,
    /// How often it was handed to an agent: a delivery names the count its caller saw, so
    /// two agents' requests racing for one write cannot both be handed its password.
    pub deliveries: u32,
    /// Superseded, then written after all (`KeyWriteWrittenLate`): answered once.
    pub written_late: bool,
}

impl UserState {
    /// Writes still owed to the key (queued, or delivered and unacknowledged).
    pub fn undelivered(&self) -> Vec<KeyWriteId> {
        self.writes
            .iter()
            .filter(|(_, w)| matches!(w.state, KeyWriteState::Queued | KeyWriteState::Delivered))
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Folds one event of the user's stream.
pub fn evolve(mut s: UserState, e: &Event) -> UserState {
    match e {
        Event::KeyWriteQueued(e) => {
            s.writes.insert(
                e.key_write_id,
                OwedWrite {
                    key: e.key_id.clone(),
                    rotation: e.rotation_id,
                    state: KeyWriteState::Queued,
                    deliveries: 0,
                    written_late: false,
                },
            );
        }
        Event::KeyWriteDelivered(e) => {
            if let Some(w) = s.writes.get_mut(&e.key_write_id) {
                w.state = KeyWriteState::Delivered;
                w.deliveries = w.deliveries.saturating_add(1);
            }
        }
        Event::KeyWriteConfirmed(e) => set_write(&mut s, e.key_write_id, KeyWriteState::Confirmed),
        Event::KeyWriteFailed(e) => set_write(&mut s, e.key_write_id, KeyWriteState::Failed),
        Event::KeyWriteSuperseded(e) => {
            set_write(&mut s, e.key_write_id, KeyWriteState::Superseded)
        }
        Event::KeyWriteWrittenLate(e) => {
            if let Some(w) = s.writes.get_mut(&e.key_write_id) {
                w.written_late = true;
            }
        }
        Event::UserDiscovered(e) => {
            s.domain = Some(e.domain_id);
            s.status = Status::Candidate;
            s.in_sync_group = true;
        }
        Event::MemberLeftSyncGroup(_) => s.in_sync_group = false,
        Event::KeyAssigned(e) => s.key_id = Some(e.key_id.clone()),
        Event::KeyUnassigned(_) => s.key_id = None,
        Event::MemberRejoinedSyncGroup(_) => {
            s.in_sync_group = true;
            s.kept_out = false;
        }
        Event::UserKept(_) => s.kept_out = true,
        Event::UserImported(e) => {
            s.status = Status::Active;
            s.imported_sso = Some(e.sso);
        }
        Event::UserReactivated(_) => s.status = Status::Active,
        Event::UserDeactivated(_) => s.status = Status::Deactivated,
        Event::UserDeleted(_) => s.status = Status::Deleted,
        Event::UserSsoOverrideSet(e) => s.sso_override = e.sso,
        Event::RotationStarted(e) => {
            s.reasserting = (e.reason == RotationReason::Reassert).then_some(e.rotation_id);
        }
        Event::RotationSucceeded(e) => {
            if s.reasserting != Some(e.rotation_id) || s.current_password.is_none() {
                s.current_password = Some(e.rotation_id);
            }
        }
        Event::AppTokensIssued(_) | Event::AppTokenRefused(_) | Event::AppTokensRevoked(_) => {
            s.refresh.evolve(e)
        }
        e => super::signin::evolve(&mut s.signin, e),
    }
    // Deactivation, deletion or SSO off ends every refresh family at once, and so does a
    // removed passkey or authenticator app (a family does not record which one its sign-in
    // used; a lost device must not keep refreshing); a changed method ends the families of
    // the old one. Coming back revives none of them.
    if !s.refresh.by_id.is_empty() {
        match super::signin::sign_in_allowed(s.status, s.imported_sso, s.sso_override) {
            Err(_) => s.refresh.close_all(),
            Ok(_) if matches!(e, Event::PasskeyRemoved(_) | Event::TotpRemoved(_)) => {
                s.refresh.close_all()
            }
            Ok(sso) => s.refresh.close_other_methods(sso.method),
        }
    }
    s
}

/// An admin's command on a user.
#[derive(Clone, Debug, PartialEq)]
pub enum UserCommand {
    /// Set (or clear with `None`) the per-user SSO override.
    SetSsoOverride(Option<SsoSettings>),
    /// Bring a deactivated user back.
    Activate,
    /// Deactivate an active user.
    Deactivate,
    /// Import a candidate with these SSO settings (the domain's defaults).
    Import(SsoSettings),
    /// Assign a hardware key (replacing the one assigned, if any); `write` is the id of
    /// the write that brings it the user's current password, if there is one.
    AssignKey {
        /// The key.
        key: KeyId,
        /// A fresh key write id.
        write: KeyWriteId,
    },
    /// Take the hardware key away.
    UnassignKey,
    /// The user's domain is being removed: they stop signing in and give their key back,
    /// since no sync or rotation looks after them again and the key may serve someone
    /// else (the same person, synced anew by another domain).
    LeaveRemovedDomain,
    /// Hand write `write` to an agent serving `keys` (its password leaves the engine).
    DeliverWrite {
        /// The key write asked about.
        write: KeyWriteId,
        /// The agent's keys.
        keys: Vec<KeyId>,
        /// How often the caller saw it delivered already; another count means someone
        /// else was handed it meanwhile (its lease runs from then), so it is not handed
        /// out again now.
        seen_deliveries: u32,
    },
    /// Record an agent's answer about write `write`.
    AcknowledgeWrite {
        /// The key write asked about.
        write: KeyWriteId,
        /// The agent's keys.
        keys: Vec<KeyId>,
        /// What it did.
        outcome: WriteOutcome,
        /// Which delivery it answers (1 for the first), when the agent says: a failure
        /// reported for an earlier delivery, handed out again since (the lease ran out),
        /// is stale; the agent that has the latest delivery answers.
        delivery: Option<u32>,
        /// A fresh key write id, for a write of the current password again (a late
        /// "written" of a write superseded since may have put an older one on the key).
        rewrite: KeyWriteId,
    },
    /// Another user's superseded write landed on `key` late: if the key is this user's,
    /// it is owed their current password again (`write`, a fresh id).
    RewriteKey {
        /// The key written.
        key: KeyId,
        /// A fresh key write id.
        write: KeyWriteId,
    },
    /// An admin asks for the user's current password on their key again (`write`, a
    /// fresh id): the agent could not write it, or the key was reset or replaced by one
    /// with the same serial. Without it the key holds another password than Entra ID
    /// until the next rotation, days away.
    WriteKeyAgain {
        /// A fresh key write id.
        write: KeyWriteId,
    },
    /// Lift the user's sign-in locks (the admin knows who is at the door); `at` is now.
    UnlockSignIn {
        /// When this is decided.
        at: chrono::DateTime<chrono::Utc>,
    },
    /// Record a break-glass reveal of rotation `rotation`'s password, with its reason.
    RecordReveal {
        /// The rotation whose password is shown.
        rotation: RotationId,
        /// The open rotation whose unconfirmed candidate is shown beside it, if any: it may
        /// become the current password, and must count as revealed when it does.
        candidate: Option<RotationId>,
        /// Why, in the admin's words.
        reason: String,
    },
    /// Apply the removal a quarantined sync run held back, now approved: only while the
    /// user is still out of the sync group (they may have come back meanwhile).
    ApplyHeldRemoval {
        /// The domain's removal behaviour.
        behavior: RemovalBehavior,
        /// Why the user left, as last recorded.
        reason: LeaveReason,
    },
    /// Record an invite sent to `to` by `via`.
    RecordInvite {
        /// The address.
        to: String,
        /// The mailer (`smtp`, `outbox`).
        via: String,
        /// The enrolment link it carries; it replaces any earlier one.
        link: Option<EnrolmentLink>,
    },
}

fn set_write(s: &mut UserState, id: KeyWriteId, state: KeyWriteState) {
    if let Some(w) = s.writes.get_mut(&id) {
        w.state = state;
    }
}

/// An agent wrote some password onto `key` after its write was superseded (an older
/// password of this user, or another user's after the key changed hands): unless the key
/// is no longer this user's, or a write not handed out yet will write it anyway, the key
/// is owed the user's current password again. Without it the key could hold another
/// password than Entra ID until the next rotation, and its user could not sign in at
/// their PC.
fn rewrite_after_late_write(s: &UserState, key: &KeyId, rewrite: KeyWriteId) -> Vec<Event> {
    let still_queued = s
        .writes
        .values()
        .any(|w| w.key == *key && w.state == KeyWriteState::Queued);
    match s.current_password {
        Some(rotation_id)
            if s.key_id.as_ref() == Some(key) && s.status != Status::Deleted && !still_queued =>
        {
            vec![KeyWriteQueued {
                key_write_id: rewrite,
                rotation_id,
                key_id: key.clone(),
            }
            .into()]
        }
        _ => vec![],
    }
}

/// Every write the user's key was still owed ends with the key: a password reaches
/// only the key of the user it belongs to, and only while they hold it.
fn supersede(s: &UserState, reason: SupersedeReason) -> impl Iterator<Item = Event> {
    s.undelivered().into_iter().map(move |w| {
        KeyWriteSuperseded {
            key_write_id: w,
            reason: reason.clone(),
        }
        .into()
    })
}

impl UserCommand {
    /// Taken only for a user of a live domain: a removed domain's users are looked after
    /// by no sync or rotation, and do not come back to sign in or hold a key.
    pub fn needs_live_domain(&self) -> bool {
        matches!(
            self,
            UserCommand::Activate
                | UserCommand::Import(_)
                | UserCommand::AssignKey { .. }
                | UserCommand::WriteKeyAgain { .. }
                | UserCommand::RecordInvite { .. }
        )
    }
}

/// The removal behaviour's action for a user of `status` who left the sync group for
/// `reason`, and what follows from it. Candidates are never removed: they were never
/// imported. A deletion ends every write still `owed` to the user's key: their data key
/// is shredded with them, so no agent can be handed that password any more, and the log
/// says so rather than leave the writes looking queued forever.
pub fn removal_for(
    behavior: RemovalBehavior,
    status: Status,
    reason: LeaveReason,
    owed: &[KeyWriteId],
) -> Vec<Event> {
    match (behavior, status) {
        (RemovalBehavior::Keep, Status::Active) => vec![UserKept { reason }.into()],
        (RemovalBehavior::Deactivate, Status::Active) => vec![UserDeactivated {
            reason: Some(reason),
        }
        .into()],
        (RemovalBehavior::Delete, Status::Active | Status::Deactivated) => {
            let deleted = UserDeleted {
                reason: Some(reason),
            };
            std::iter::once(deleted.into())
                .chain(owed.iter().map(|&key_write_id| {
                    KeyWriteSuperseded {
                        key_write_id,
                        reason: SupersedeReason::UserDeleted {},
                    }
                    .into()
                }))
                .collect()
        }
        _ => vec![],
    }
}

/// The reason of a break-glass reveal, trimmed: 1 to 1000 characters.
pub fn reveal_reason(reason: &str) -> Result<String, Rejection> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > 1000 {
        return Err(invalid("reason", "say why, in 1 to 1000 characters"));
    }
    if !plain_text(reason) {
        return Err(invalid(
            "reason",
            "no control or bidirectional-override characters",
        ));
    }
    Ok(reason.to_owned())
}

/// What a workstation agent did with a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The key holds the password.
    Written,
    /// The key could not be written; the agent says why.
    Failed(String),
}

/// An agent serving `keys` asks for or answers about write `write`.
fn agents_write<'s>(
    s: &'s UserState,
    write: KeyWriteId,
    keys: &[KeyId],
) -> Result<&'s OwedWrite, Rejection> {
    // Another key's write is not found: an agent learns nothing of other keys.
    s.writes
        .get(&write)
        .filter(|w| keys.contains(&w.key))
        .ok_or(Rejection::NotFound("key write"))
}

/// What a decision about a user needs from other streams, gathered by the caller from the
/// projections when it sends the command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outside {
    /// The user's domain was removed.
    pub domain_removed: bool,
    /// Another live user who holds the key an [`UserCommand::AssignKey`] names.
    pub key_held_by: Option<UserId>,
}

/// Decides a command, with what it needs from other streams: a removed domain's users are
/// looked after by nothing, and one key serves one live user.
pub fn decide_with(
    s: &UserState,
    c: UserCommand,
    outside: &Outside,
) -> Result<Vec<Event>, Rejection> {
    if outside.domain_removed && c.needs_live_domain() {
        return Err(Rejection::Conflict(
            "the user's domain was removed: nothing looks after its users any more".into(),
        ));
    }
    if let (UserCommand::AssignKey { key, .. }, Some(other)) = (&c, outside.key_held_by) {
        return Err(Rejection::Conflict(format!(
            "key {} is assigned to user {}; unassign it there first",
            key.0, other.0
        )));
    }
    decide(s, c)
}

/// Decides a command.
pub fn decide(s: &UserState, c: UserCommand) -> Result<Vec<Event>, Rejection> {
    match (s.status, c) {
        (
            _,
            UserCommand::DeliverWrite {
                write,
                keys,
                seen_deliveries,
            },
        ) => {
            let w = agents_write(s, write, &keys)?;
            if !matches!(w.state, KeyWriteState::Queued | KeyWriteState::Delivered)
                || s.key_id.as_ref() != Some(&w.key)
                || s.status == Status::Deleted
            {
                // Not owed any more, or the key is no longer the user's.
                return Err(Rejection::NotFound("key write"));
            }
            if w.deliveries != seen_deliveries {
                return Err(Rejection::Conflict(
                    "the key write was just handed out".into(),
                ));
            }
            Ok(vec![KeyWriteDelivered {
                key_write_id: write,
            }
            .into()])
        }
        (
            _,
            UserCommand::AcknowledgeWrite {
                write,
                keys,
                outcome,
                delivery,
                rewrite,
            },
        ) => {
            let w = agents_write(s, write, &keys)?;
            if w.state == KeyWriteState::Superseded
                && w.deliveries > 0
                && matches!(outcome, WriteOutcome::Written)
            {
                // Answered once: a repeat (an agent retrying after a lost answer) owes
                // nothing more.
                if w.written_late {
                    return Ok(vec![]);
                }
                let late = KeyWriteWrittenLate {
                    key_write_id: write,
                };
                // The user's current password on a key they no longer hold: its holder
                // may have it now.
                let exposed = s.key_id.as_ref() != Some(&w.key)
                    && s.status != Status::Deleted
                    && s.current_password == Some(w.rotation);
                let rotate = exposed.then(|| {
                    RotationRequested {
                        reason: RotationReason::Exposed,
                    }
                    .into()
                });
                return Ok(std::iter::once(late.into())
                    .chain(rotate)
                    .chain(rewrite_after_late_write(s, &w.key, rewrite))
                    .collect());
            }
            // The same answer again (an agent retrying after a lost reply) is the answer
            // it gave: no error for a success, nothing appended.
            let repeated = matches!(
                (w.state, &outcome),
                (KeyWriteState::Confirmed, WriteOutcome::Written)
                    | (KeyWriteState::Failed, WriteOutcome::Failed(_))
            );
            if repeated {
                return Ok(vec![]);
            }
            if !matches!(w.state, KeyWriteState::Queued | KeyWriteState::Delivered) {
                return Err(Rejection::Conflict(format!(
                    "the key write is {} already",
                    w.state.as_str()
                )));
            }
            if w.state == KeyWriteState::Queued {
                // No agent has had the password: "written" would record a password on a
                // key that never got it.
                return Err(Rejection::Conflict(
                    "the key write was not handed out yet: fetch it first".into(),
                ));
            }
            if s.key_id.as_ref() != Some(&w.key) || s.status == Status::Deleted {
                return Err(Rejection::Conflict(
                    "the key write is not owed any more: the key is no longer the user's".into(),
                ));
            }
            // Every delivery carries the same password: a late "written" is still true,
            // but a late "failed" would mark failed a write the latest delivery may make.
            let failed = matches!(outcome, WriteOutcome::Failed(_));
            if let Some(d) = delivery.filter(|d| *d > w.deliveries) {
                return Err(Rejection::Conflict(format!(
                    "the key write was handed out {} times, not {d}",
                    w.deliveries
                )));
            }
            if failed && delivery.is_some_and(|d| d != w.deliveries) {
                return Err(Rejection::Conflict(format!(
                    "the key write was handed out again since (delivery {}): that delivery answers",
                    w.deliveries
                )));
            }
            Ok(vec![match outcome {
                WriteOutcome::Written => KeyWriteConfirmed {
                    key_write_id: write,
                }
                .into(),
                WriteOutcome::Failed(detail) => {
                    if detail.chars().count() > 2000 {
                        return Err(invalid("detail", "at most 2000 characters"));
                    }
                    if !plain_text(&detail) {
                        return Err(invalid(
                            "detail",
                            "no control or bidirectional-override characters",
                        ));
                    }
                    KeyWriteFailed {
                        key_write_id: write,
                        detail,
                    }
                    .into()
                }
            }])
        }
        (status, UserCommand::ApplyHeldRemoval { behavior, reason }) => {
            Ok(if s.in_sync_group || s.kept_out {
                vec![]
            } else {
                removal_for(behavior, status, reason, &s.undelivered())
            })
        }
        // Asked again on an agent's retry: a write of theirs still owed (queued, or handed
        // out and not answered) is enough.
        (_, UserCommand::RewriteKey { .. }) if !s.undelivered().is_empty() => Ok(vec![]),
        (_, UserCommand::RewriteKey { key, write }) => Ok(rewrite_after_late_write(s, &key, write)),
        (Status::Unknown | Status::Deleted, UserCommand::UnlockSignIn { .. }) => {
            Err(Rejection::NotFound("user"))
        }
        (_, UserCommand::UnlockSignIn { at }) => {
            let signin = &s.signin;
            let factors: Vec<Factor> = signin
                .locks
                .keys()
                .chain(
                    signin
                        .locked_until
                        .iter()
                        .filter(|(_, u)| at < **u)
                        .map(|(f, _)| f),
                )
                .copied()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            // Nothing locked, nothing to record.
            Ok(if factors.is_empty() {
                vec![]
            } else {
                vec![SignInUnlocked { factors }.into()]
            })
        }
        (Status::Unknown | Status::Deleted, UserCommand::WriteKeyAgain { .. }) => {
            Err(Rejection::NotFound("user"))
        }
        (Status::Candidate, UserCommand::WriteKeyAgain { .. }) => Err(Rejection::Conflict(
            "a candidate must be imported first".into(),
        )),
        (_, UserCommand::WriteKeyAgain { write }) => {
            let Some(key) = &s.key_id else {
                return Err(Rejection::Conflict("the user holds no key".into()));
            };
            if s.current_password.is_none() {
                return Err(Rejection::Conflict(
                    "no password of the user is held yet: rotate it, which writes the key".into(),
                ));
            }
            if !s.undelivered().is_empty() {
                // Two writes of one password would only race each other on the key.
                return Err(Rejection::Conflict(
                    "a key write is still owed (queued, or handed out and not answered): \
                     it writes the current password"
                        .into(),
                ));
            }
            Ok(rewrite_after_late_write(s, key, write))
        }
        (Status::Unknown | Status::Deleted, UserCommand::RecordReveal { .. }) => {
            Err(Rejection::NotFound("user"))
        }
        (
            _,
            UserCommand::RecordReveal {
                rotation,
                candidate,
                reason,
            },
        ) => {
            let reason = reveal_reason(&reason)?;
            Ok(std::iter::once(rotation)
                .chain(candidate.filter(|c| *c != rotation))
                .map(|rotation_id| {
                    PasswordRevealed {
                        rotation_id,
                        reason: reason.clone(),
                    }
                    .into()
                })
                .collect())
        }
        (Status::Active, UserCommand::RecordInvite { to, via, link }) => {
            Ok(vec![InviteSent { to, via, link }.into()])
        }
        (Status::Unknown | Status::Deleted, UserCommand::RecordInvite { .. }) => {
            Err(Rejection::NotFound("user"))
        }
        (status, UserCommand::RecordInvite { .. }) => Err(Rejection::Conflict(format!(
            "only active users are invited; this one is {}",
            status.as_str()
        ))),
        (Status::Unknown, UserCommand::LeaveRemovedDomain) => Err(Rejection::NotFound("user")),
        (status, UserCommand::LeaveRemovedDomain) => {
            let mut events: Vec<Event> = Vec::new();
            if status == Status::Active {
                events.push(UserDeactivated { reason: None }.into());
            }
            if let (Status::Active | Status::Deactivated, Some(k)) = (status, &s.key_id) {
                events.push(KeyUnassigned { key_id: k.clone() }.into());
                events.extend(supersede(
                    s,
                    SupersedeReason::KeyUnassigned { key_id: k.clone() },
                ));
            }
            Ok(events)
        }
        (Status::Unknown, _) => Err(Rejection::NotFound("user")),
        (Status::Deleted, _) => Err(Rejection::Conflict("the user was deleted".into())),
        // The key the user holds already: nothing to do, whatever rule its serial predates.
        (_, UserCommand::AssignKey { key: k, .. }) if s.key_id.as_ref() == Some(&k) => Ok(vec![]),
        (_, UserCommand::AssignKey { key: k, .. }) if !super::key_id_ok(&k.0) => Err(invalid(
            "key_id",
            "a key's serial: 1 to 128 printable ASCII characters, no spaces",
        )),
        (Status::Candidate, UserCommand::AssignKey { .. }) => Err(Rejection::Conflict(
            "a candidate must be imported first".into(),
        )),
        (_, UserCommand::AssignKey { key: k, write }) => {
            let mut events: Vec<Event> = match &s.key_id {
                Some(held) if *held == k => return Ok(vec![]),
                Some(held) => {
                    let mut events: Vec<Event> = vec![KeyUnassigned {
                        key_id: held.clone(),
                    }
                    .into()];
                    events.extend(supersede(
                        s,
                        SupersedeReason::KeyReassigned {
                            from: held.clone(),
                            to: k.clone(),
                        },
                    ));
                    events
                }
                None => vec![],
            };
            events.push(KeyAssigned { key_id: k.clone() }.into());
            // A new key holds no password yet: it is given the one the engine holds now,
            // or its user could not sign in with it until the next rotation, days away.
            if let Some(rotation_id) = s.current_password {
                events.push(
                    KeyWriteQueued {
                        key_write_id: write,
                        rotation_id,
                        key_id: k,
                    }
                    .into(),
                );
            }
            Ok(events)
        }
        (_, UserCommand::UnassignKey) => Ok(match &s.key_id {
            None => vec![],
            Some(k) => {
                let mut events: Vec<Event> = vec![KeyUnassigned { key_id: k.clone() }.into()];
                events.extend(supersede(
                    s,
                    SupersedeReason::KeyUnassigned { key_id: k.clone() },
                ));
                events
            }
        }),
        (Status::Candidate, UserCommand::Import(_)) if !s.in_sync_group => Err(
            Rejection::Conflict("the user is no longer in the sync group".into()),
        ),
        (Status::Candidate, UserCommand::Import(sso)) => Ok(vec![UserImported { sso }.into()]),
        (_, UserCommand::Import(_)) => Ok(vec![]),
        (_, UserCommand::SetSsoOverride(sso)) if sso == s.sso_override => Ok(vec![]),
        (_, UserCommand::SetSsoOverride(sso)) => Ok(vec![UserSsoOverrideSet { sso }.into()]),
        (Status::Deactivated, UserCommand::Activate) => Ok(vec![UserReactivated {}.into()]),
        (Status::Active, UserCommand::Activate) => Ok(vec![]),
        (Status::Active, UserCommand::Deactivate) => {
            Ok(vec![UserDeactivated { reason: None }.into()])
        }
        (Status::Deactivated, UserCommand::Deactivate) => Ok(vec![]),
        (Status::Candidate, _) => Err(Rejection::Conflict(
            "a candidate must be imported first".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{given, UserStream};
    use super::*;

    fn discovered() -> Event {
        UserDiscovered {
            user_id: UserId(uuid::Uuid::from_u128(4)),
            domain_id: DomainId(uuid::Uuid::from_u128(1)),
            external_id: "x".into(),
            attributes: UserAttributes::default(),
        }
        .into()
    }

    fn imported() -> Event {
        UserImported {
            sso: SsoSettings::default(),
        }
        .into()
    }

    fn key(k: &str) -> KeyId {
        KeyId(k.into())
    }

    fn w(n: u128) -> KeyWriteId {
        KeyWriteId(uuid::Uuid::from_u128(n))
    }

    fn queued(n: u128, k: &str) -> Event {
        KeyWriteQueued {
            key_write_id: w(n),
            rotation_id: RotationId(uuid::Uuid::from_u128(n)),
            key_id: key(k),
        }
        .into()
    }

    fn assign(k: &str) -> UserCommand {
        UserCommand::AssignKey {
            key: key(k),
            write: w(99),
        }
    }

    fn assigned(k: &str) -> Event {
        KeyAssigned { key_id: key(k) }.into()
    }

    fn rotated(n: u128) -> Event {
        RotationSucceeded {
            rotation_id: RotationId(uuid::Uuid::from_u128(n)),
        }
        .into()
    }

    #[test]
    fn only_deactivated_users_are_activated() {
        given::<UserStream>(&[discovered()])
            .when(UserCommand::Activate)
            .then_conflict();
        let active = given::<UserStream>(&[discovered(), imported()]);
        active.when(UserCommand::Activate).then_nothing();
        active
            .when(UserCommand::Deactivate)
            .then([UserDeactivated { reason: None }.into()]);
        given::<UserStream>(&[
            discovered(),
            imported(),
            UserDeactivated { reason: None }.into(),
        ])
        .when(UserCommand::Activate)
        .then([UserReactivated {}.into()]);
        given::<UserStream>(&[])
            .when(UserCommand::Activate)
            .then_reject(Rejection::NotFound("user"));
    }

    #[test]
    fn leaving_a_removed_domain_ends_sign_in_and_gives_the_key_back() {
        given::<UserStream>(&[discovered(), imported(), assigned("K1")])
            .when(UserCommand::LeaveRemovedDomain)
            .then([
                UserDeactivated { reason: None }.into(),
                KeyUnassigned { key_id: key("K1") }.into(),
            ]);
        let deactivated = [
            discovered(),
            imported(),
            UserDeactivated { reason: None }.into(),
        ];
        given::<UserStream>(&deactivated)
            .when(UserCommand::LeaveRemovedDomain)
            .then_nothing();
        given::<UserStream>(&[discovered()])
            .when(UserCommand::LeaveRemovedDomain)
            .then_nothing();
        given::<UserStream>(&[])
            .when(UserCommand::LeaveRemovedDomain)
            .then_reject(Rejection::NotFound("user"));
    }

    #[test]
    fn only_candidates_still_in_the_sync_group_are_imported() {
        let sso = SsoSettings {
            enabled: true,
            method: SsoMethod::Passwordless,
        };
        given::<UserStream>(&[discovered()])
            .when(UserCommand::Import(sso))
            .then([UserImported { sso }.into()]);
        given::<UserStream>(&[discovered(), UserImported { sso }.into()])
            .when(UserCommand::Import(sso))
            .then_nothing();
        let left = MemberLeftSyncGroup {
            reason: LeaveReason::LeftGroup,
        };
        given::<UserStream>(&[discovered(), left.into()])
            .when(UserCommand::Import(sso))
            .then_conflict();
    }

    #[test]
    fn a_key_is_assigned_replaced_and_unassigned() {
        given::<UserStream>(&[discovered()])
            .when(assign("K1"))
            .then_conflict();
        let active = given::<UserStream>(&[discovered(), imported()]);
        for look_alike in ["", " ", "K1 ", "K1\u{200b}", "Ｋ1", &"K".repeat(129)] {
            active.when(assign(look_alike)).then_invalid("key_id");
        }
        active.when(assign("K1")).then([assigned("K1")]);
        active.when(UserCommand::UnassignKey).then_nothing();
        let holding = given::<UserStream>(&[discovered(), imported(), assigned("K1")]);
        holding.when(assign("K1")).then_nothing();
        holding
            .when(assign("K2"))
            .then([KeyUnassigned { key_id: key("K1") }.into(), assigned("K2")]);
        holding
            .when(UserCommand::UnassignKey)
            .then([KeyUnassigned { key_id: key("K1") }.into()]);
    }

    #[test]
    fn a_removed_domains_users_get_nothing_new_and_one_key_serves_one_live_user() {
        let s = [discovered(), imported()]
            .iter()
            .fold(UserState::default(), evolve);
        let removed = Outside {
            domain_removed: true,
            ..Outside::default()
        };
        for c in [assign("K"), UserCommand::Activate] {
            assert!(matches!(
                decide_with(&s, c, &removed),
                Err(Rejection::Conflict(m)) if m.contains("domain was removed")
            ));
        }
        // What lets go of a user stays possible: nothing looks after them any more.
        assert!(decide_with(&s, UserCommand::Deactivate, &removed).is_ok());
        let held = Outside {
            key_held_by: Some(UserId(uuid::Uuid::from_u128(5))),
            ..Outside::default()
        };
        assert!(matches!(
            decide_with(&s, assign("K"), &held),
            Err(Rejection::Conflict(m)) if m.contains("unassign it there first")
        ));
        assert_eq!(
            decide_with(&s, assign("K"), &Outside::default()),
            decide(&s, assign("K"))
        );
        assert!(decide(&s, assign("K")).is_ok());
    }

    #[test]
    fn a_key_assigned_after_a_rotation_is_given_the_current_password() {
        let write_of = |n, k: &str| -> Event {
            KeyWriteQueued {
                key_write_id: w(99),
                rotation_id: RotationId(uuid::Uuid::from_u128(n)),
                key_id: key(k),
            }
            .into()
        };
        // The key was taken away after two rotations: a new one gets the second's password.
        let past = [
            discovered(),
            imported(),
            assigned("K1"),
            rotated(1),
            queued(1, "K1"),
            rotated(2),
            KeyUnassigned { key_id: key("K1") }.into(),
        ];
        given::<UserStream>(&past)
            .when(assign("K2"))
            .then([assigned("K2"), write_of(2, "K2")]);
        // Replaced while a write is owed: the old key's is superseded, the new key's queued.
        let holding = [
            discovered(),
            imported(),
            assigned("K1"),
            rotated(1),
            queued(1, "K1"),
        ];
        given::<UserStream>(&holding).when(assign("K2")).then([
            KeyUnassigned { key_id: key("K1") }.into(),
            KeyWriteSuperseded {
                key_write_id: w(1),
                reason: SupersedeReason::KeyReassigned {
                    from: key("K1"),
                    to: key("K2"),
                },
            }
            .into(),
            assigned("K2"),
            write_of(1, "K2"),
        ]);
        // The same key again changes nothing.
        given::<UserStream>(&holding)
            .when(assign("K1"))
            .then_nothing();
    }

    #[test]
    fn taking_a_key_away_supersedes_every_write_it_was_still_owed() {
        let past = [
            discovered(),
            imported(),
            assigned("K1"),
            queued(1, "K1"),
            KeyWriteConfirmed { key_write_id: w(1) }.into(),
            queued(2, "K1"),
            KeyWriteDelivered { key_write_id: w(2) }.into(),
            queued(3, "K1"),
        ];
        let user = given::<UserStream>(&past);
        assert_eq!(user.state().undelivered(), vec![w(2), w(3)]);
        let superseded = |n, reason: &SupersedeReason| -> Event {
            KeyWriteSuperseded {
                key_write_id: w(n),
                reason: reason.clone(),
            }
            .into()
        };
        let gone = SupersedeReason::KeyUnassigned { key_id: key("K1") };
        user.when(UserCommand::UnassignKey).then([
            KeyUnassigned { key_id: key("K1") }.into(),
            superseded(2, &gone),
            superseded(3, &gone),
        ]);
        let moved = SupersedeReason::KeyReassigned {
            from: key("K1"),
            to: key("K2"),
        };
        user.when(assign("K2")).then([
            KeyUnassigned { key_id: key("K1") }.into(),
            superseded(2, &moved),
            superseded(3, &moved),
            assigned("K2"),
        ]);
    }

    #[test]
    fn an_approved_removal_applies_only_to_a_user_still_out_and_ends_their_owed_writes() {
        let left = MemberLeftSyncGroup {
            reason: LeaveReason::DeletedInEntra,
        };
        let out = [
            discovered(),
            imported(),
            assigned("K1"),
            queued(1, "K1"),
            KeyWriteDelivered { key_write_id: w(1) }.into(),
            left.clone().into(),
        ];
        let apply = |behavior| UserCommand::ApplyHeldRemoval {
            behavior,
            reason: LeaveReason::DeletedInEntra,
        };
        let user = given::<UserStream>(&out);
        user.when(apply(RemovalBehavior::Delete)).then([
            UserDeleted {
                reason: Some(LeaveReason::DeletedInEntra),
            }
            .into(),
            KeyWriteSuperseded {
                key_write_id: w(1),
                reason: SupersedeReason::UserDeleted {},
            }
            .into(),
        ]);
        user.when(apply(RemovalBehavior::Deactivate))
            .then([UserDeactivated {
                reason: Some(LeaveReason::DeletedInEntra),
            }
            .into()]);
        // Back in the group meanwhile, or removed already: nothing.
        let mut back = out.to_vec();
        back.push(MemberRejoinedSyncGroup {}.into());
        given::<UserStream>(&back)
            .when(apply(RemovalBehavior::Delete))
            .then_nothing();
        let mut gone = out.to_vec();
        gone.push(UserDeleted { reason: None }.into());
        given::<UserStream>(&gone)
            .when(apply(RemovalBehavior::Delete))
            .then_nothing();
        // Kept once: approving again (an approval finished after a crash) keeps no twice.
        user.when(apply(RemovalBehavior::Keep)).then([UserKept {
            reason: LeaveReason::DeletedInEntra,
        }
        .into()]);
        let mut kept = out.to_vec();
        kept.push(
            UserKept {
                reason: LeaveReason::DeletedInEntra,
            }
            .into(),
        );
        given::<UserStream>(&kept)
            .when(apply(RemovalBehavior::Keep))
            .then_nothing();
    }

    #[test]
    fn a_write_is_delivered_only_to_an_agent_of_the_key_the_user_still_holds() {
        let deliver = |keys: &[&str]| UserCommand::DeliverWrite {
            write: w(1),
            keys: keys.iter().map(|k| key(k)).collect(),
            seen_deliveries: 0,
        };
        let owed =
            given::<UserStream>(&[discovered(), imported(), assigned("K1"), queued(1, "K1")]);
        owed.when(deliver(&["K1", "K9"]))
            .then([KeyWriteDelivered { key_write_id: w(1) }.into()]);
        // Another key's agent learns nothing, not even that the write exists.
        owed.when(deliver(&["K2"]))
            .then_reject(Rejection::NotFound("key write"));
        // Delivered and not acknowledged: handed out again after its lease, to a caller
        // who saw that delivery; one who did not (it raced the first) gets nothing.
        let delivered = given::<UserStream>(&[
            discovered(),
            imported(),
            assigned("K1"),
            queued(1, "K1"),
            KeyWriteDelivered { key_write_id: w(1) }.into(),
        ]);
        delivered
            .when(UserCommand::DeliverWrite {
                write: w(1),
                keys: vec![key("K1")],
                seen_deliveries: 1,
            })
            .then_ok();
        delivered.when(deliver(&["K1"])).then_conflict();
        for after in [
            KeyUnassigned { key_id: key("K1") }.into(),
            KeyWriteConfirmed { key_write_id: w(1) }.into(),
            UserDeleted { reason: None }.into(),
        ] {
            given::<UserStream>(&[
                discovered(),
                imported(),
                assigned("K1"),
                queued(1, "K1"),
                after,
            ])
            .when(deliver(&["K1"]))
            .then_reject(Rejection::NotFound("key write"));
        }
    }

    #[test]
    fn a_late_written_of_a_superseded_write_owes_the_key_the_current_password_again() {
        let ack = |n, outcome| UserCommand::AcknowledgeWrite {
            write: w(n),
            keys: vec![key("K1")],
            outcome,
            delivery: None,
            rewrite: w(98),
        };
        // W1 queued (and handed out, when `delivered`); R2 supersedes it and queues W2.
        let superseded = |delivered: bool| -> Vec<Event> {
            let handed = KeyWriteDelivered { key_write_id: w(1) }.into();
            [
                discovered(),
                imported(),
                assigned("K1"),
                rotated(1),
                queued(1, "K1"),
            ]
            .into_iter()
            .chain(delivered.then_some(handed))
            .chain([
                rotated(2),
                KeyWriteSuperseded {
                    key_write_id: w(1),
                    reason: SupersedeReason::NewerRotation {
                        rotation_id: RotationId(uuid::Uuid::from_u128(2)),
                    },
                }
                .into(),
                queued(2, "K1"),
            ])
            .collect()
        };
        // Then W1's agent writes the older password after all, and says so.
        let mut past = superseded(true);
        // W2 not handed out yet: it writes the current password after, nothing more owed.
        let late = || -> Event { KeyWriteWrittenLate { key_write_id: w(1) }.into() };
        given::<UserStream>(&past)
            .when(ack(1, WriteOutcome::Written))
            .then([late()]);
        past.push(KeyWriteDelivered { key_write_id: w(2) }.into());
        past.push(KeyWriteConfirmed { key_write_id: w(2) }.into());
        let rewrite = KeyWriteQueued {
            key_write_id: w(98),
            rotation_id: RotationId(uuid::Uuid::from_u128(2)),
            key_id: key("K1"),
        };
        given::<UserStream>(&past)
            .when(ack(1, WriteOutcome::Written))
            .then([late(), rewrite.clone().into()]);
        // Answered once: a repeat of the same answer owes nothing more.
        let mut answered = past.clone();
        answered.push(late());
        answered.push(rewrite.into());
        answered.push(
            KeyWriteDelivered {
                key_write_id: w(98),
            }
            .into(),
        );
        answered.push(
            KeyWriteConfirmed {
                key_write_id: w(98),
            }
            .into(),
        );
        given::<UserStream>(&answered)
            .when(ack(1, WriteOutcome::Written))
            .then_nothing();
        // A failure of a superseded write changes nothing on the key: still refused.
        given::<UserStream>(&past)
            .when(ack(1, WriteOutcome::Failed("no key".into())))
            .then_conflict();
        // The key went to another user meanwhile: nothing is owed to it for this one.
        let mut gone = past.clone();
        gone.push(KeyUnassigned { key_id: key("K1") }.into());
        given::<UserStream>(&gone)
            .when(ack(1, WriteOutcome::Written))
            .then([late()]);
        // The user's current password, written late onto a key taken from them: whoever
        // holds it now may have that password, so it must be replaced.
        let current = [
            discovered(),
            imported(),
            assigned("K1"),
            rotated(1),
            queued(1, "K1"),
            KeyWriteDelivered { key_write_id: w(1) }.into(),
            KeyUnassigned { key_id: key("K1") }.into(),
            KeyWriteSuperseded {
                key_write_id: w(1),
                reason: SupersedeReason::KeyUnassigned { key_id: key("K1") },
            }
            .into(),
        ];
        let exposed = RotationRequested {
            reason: RotationReason::Exposed,
        };
        given::<UserStream>(&current)
            .when(ack(1, WriteOutcome::Written))
            .then([late(), exposed.clone().into()]);
        // The same password sent again since (a reassert after an unknown answer) is still
        // the password the late write put on the key.
        let mut reasserted = current[..6].to_vec();
        reasserted.extend([
            RotationStarted {
                rotation_id: RotationId(uuid::Uuid::from_u128(3)),
                reason: RotationReason::Reassert,
                sealed_password: crate::types::SealedSecret {
                    key_id: crate::ids::DataKeyId(uuid::Uuid::from_u128(5)),
                    nonce: [0; 24],
                    ciphertext: vec![1],
                },
            }
            .into(),
            rotated(3),
        ]);
        reasserted.extend(current[6..].iter().cloned());
        given::<UserStream>(&reasserted)
            .when(ack(1, WriteOutcome::Written))
            .then([late(), exposed.into()]);
        // Deleted meanwhile: the password was shredded with its user, and Entra ID no
        // longer signs them in.
        let mut deleted = current.to_vec();
        deleted.push(UserDeleted { reason: None }.into());
        given::<UserStream>(&deleted)
            .when(ack(1, WriteOutcome::Written))
            .then([late()]);
        // The key's new holder is owed their own password again, once: not while a write
        // of it waits to be handed out.
        let holder = [discovered(), imported(), rotated(7), assigned("K1")];
        let rewrite_key = UserCommand::RewriteKey {
            key: key("K1"),
            write: w(97),
        };
        given::<UserStream>(&holder)
            .when(rewrite_key.clone())
            .then([KeyWriteQueued {
                key_write_id: w(97),
                rotation_id: RotationId(uuid::Uuid::from_u128(7)),
                key_id: key("K1"),
            }
            .into()]);
        let mut waiting = holder.to_vec();
        waiting.push(queued(7, "K1"));
        given::<UserStream>(&waiting)
            .when(rewrite_key.clone())
            .then_nothing();
        given::<UserStream>(&[discovered(), imported(), rotated(7), assigned("K2")])
            .when(rewrite_key)
            .then_nothing();
        // Never handed out: "written" is not believed.
        let never = superseded(false);
        given::<UserStream>(&never)
            .when(ack(1, WriteOutcome::Written))
            .then_conflict();
    }

    #[test]
    fn a_key_is_written_again_only_when_it_holds_no_owed_write() {
        let again = || UserCommand::WriteKeyAgain { write: w(7) };
        let failed = [
            discovered(),
            imported(),
            assigned("K1"),
            rotated(1),
            queued(1, "K1"),
            KeyWriteDelivered { key_write_id: w(1) }.into(),
            KeyWriteFailed {
                key_write_id: w(1),
                detail: "no key".into(),
            }
            .into(),
        ];
        // The current password again, under a fresh id, to the key the user holds.
        given::<UserStream>(&failed)
            .when(again())
            .then([KeyWriteQueued {
                key_write_id: w(7),
                rotation_id: RotationId(uuid::Uuid::from_u128(1)),
                key_id: key("K1"),
            }
            .into()]);
        // A write still owed (queued or handed out) writes it anyway.
        given::<UserStream>(&failed[..5])
            .when(again())
            .then_conflict();
        given::<UserStream>(&failed[..6])
            .when(again())
            .then_conflict();
        // No key, no password yet, no user.
        let mut keyless = failed.to_vec();
        keyless.push(KeyUnassigned { key_id: key("K1") }.into());
        given::<UserStream>(&keyless).when(again()).then_conflict();
        given::<UserStream>(&failed[..3])
            .when(again())
            .then_conflict();
        given::<UserStream>(&[discovered()])
            .when(again())
            .then_conflict();
        let mut deleted = failed.to_vec();
        deleted.push(UserDeleted { reason: None }.into());
        given::<UserStream>(&deleted)
            .when(again())
            .then_reject(Rejection::NotFound("user"));
    }

    #[test]
    fn a_write_is_acknowledged_once() {
        let ack = |outcome| UserCommand::AcknowledgeWrite {
            write: w(1),
            keys: vec![key("K1")],
            outcome,
            delivery: None,
            rewrite: w(98),
        };
        let delivered = [
            discovered(),
            imported(),
            assigned("K1"),
            queued(1, "K1"),
            KeyWriteDelivered { key_write_id: w(1) }.into(),
        ];
        given::<UserStream>(&delivered)
            .when(ack(WriteOutcome::Written))
            .then([KeyWriteConfirmed { key_write_id: w(1) }.into()]);
        given::<UserStream>(&delivered)
            .when(ack(WriteOutcome::Failed("no key".into())))
            .then([KeyWriteFailed {
                key_write_id: w(1),
                detail: "no key".into(),
            }
            .into()]);
        // Answered again (the reply was lost): the same answer is no error and changes
        // nothing; the other answer is refused.
        let mut confirmed = delivered.to_vec();
        confirmed.push(KeyWriteConfirmed { key_write_id: w(1) }.into());
        given::<UserStream>(&confirmed)
            .when(ack(WriteOutcome::Written))
            .then_nothing();
        given::<UserStream>(&confirmed)
            .when(ack(WriteOutcome::Failed("no key".into())))
            .then_conflict();
        let mut failed = delivered.to_vec();
        failed.push(
            KeyWriteFailed {
                key_write_id: w(1),
                detail: "no key".into(),
            }
            .into(),
        );
        given::<UserStream>(&failed)
            .when(ack(WriteOutcome::Failed("no key".into())))
            .then_nothing();
        given::<UserStream>(&failed)
            .when(ack(WriteOutcome::Written))
            .then_conflict();
        given::<UserStream>(&delivered)
            .when(ack(WriteOutcome::Failed("x".repeat(2001))))
            .then_invalid("detail");
        given::<UserStream>(&delivered)
            .when(ack(WriteOutcome::Failed("reader\u{1b}[2J".into())))
            .then_invalid("detail");
        // An answer names its delivery: once the write was handed out again, the earlier
        // delivery's answer is stale and the latest one's counts.
        let mut again = delivered.to_vec();
        again.push(KeyWriteDelivered { key_write_id: w(1) }.into());
        let answer = |delivery| UserCommand::AcknowledgeWrite {
            write: w(1),
            keys: vec![key("K1")],
            outcome: WriteOutcome::Failed("no key".into()),
            delivery: Some(delivery),
            rewrite: w(98),
        };
        given::<UserStream>(&again).when(answer(1)).then_conflict();
        given::<UserStream>(&again).when(answer(3)).then_conflict();
        given::<UserStream>(&again)
            .when(UserCommand::AcknowledgeWrite {
                write: w(1),
                keys: vec![key("K1")],
                outcome: WriteOutcome::Written,
                delivery: Some(1),
                rewrite: w(98),
            })
            .then([KeyWriteConfirmed { key_write_id: w(1) }.into()]);
        given::<UserStream>(&again)
            .when(answer(2))
            .then([KeyWriteFailed {
                key_write_id: w(1),
                detail: "no key".into(),
            }
            .into()]);
        given::<UserStream>(&delivered)
            .when(answer(1))
            .then([KeyWriteFailed {
                key_write_id: w(1),
                detail: "no key".into(),
            }
            .into()]);
        // Never handed out: no agent had the password, so nothing can have been written.
        given::<UserStream>(&delivered[..4])
            .when(ack(WriteOutcome::Written))
            .then_conflict();
        // The key is no longer the user's, or the user is gone.
        for after in [
            KeyUnassigned { key_id: key("K1") }.into(),
            UserDeleted { reason: None }.into(),
        ] {
            let mut gone = delivered.to_vec();
            gone.push(after);
            given::<UserStream>(&gone)
                .when(ack(WriteOutcome::Written))
                .then_conflict();
        }
    }

    #[test]
    fn a_reveal_is_recorded_with_its_reason_and_invites_go_to_active_users() {
        let reveal = |reason: &str| UserCommand::RecordReveal {
            rotation: RotationId(uuid::Uuid::from_u128(7)),
            candidate: None,
            reason: reason.into(),
        };
        let active = given::<UserStream>(&[discovered(), imported()]);
        active
            .when(reveal("  locked out  "))
            .then([PasswordRevealed {
                rotation_id: RotationId(uuid::Uuid::from_u128(7)),
                reason: "locked out".into(),
            }
            .into()]);
        // The unconfirmed candidate shown beside the current password is on record too.
        active
            .when(UserCommand::RecordReveal {
                rotation: RotationId(uuid::Uuid::from_u128(7)),
                candidate: Some(RotationId(uuid::Uuid::from_u128(8))),
                reason: "locked out".into(),
            })
            .then([
                PasswordRevealed {
                    rotation_id: RotationId(uuid::Uuid::from_u128(7)),
                    reason: "locked out".into(),
                }
                .into(),
                PasswordRevealed {
                    rotation_id: RotationId(uuid::Uuid::from_u128(8)),
                    reason: "locked out".into(),
                }
                .into(),
            ]);
        active.when(reveal("   ")).then_invalid("reason");
        active
            .when(reveal("ok\u{202e}gnp.exe"))
            .then_invalid("reason");
        active.when(reveal("one\u{7}bell")).then_invalid("reason");
        given::<UserStream>(&[
            discovered(),
            imported(),
            UserDeleted { reason: None }.into(),
        ])
        .when(reveal("why"))
        .then_reject(Rejection::NotFound("user"));
        let invite = || UserCommand::RecordInvite {
            to: "a@contoso.com".into(),
            via: "outbox".into(),
            link: None,
        };
        active.when(invite()).then([InviteSent {
            to: "a@contoso.com".into(),
            via: "outbox".into(),
            link: None,
        }
        .into()]);
        given::<UserStream>(&[discovered()])
            .when(invite())
            .then_conflict();
    }
}
