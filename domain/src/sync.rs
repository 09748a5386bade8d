//! Sync decisions: what one run's view of Entra ID means for one user, the removal
//! behaviour, and the deletion guard.
//!
//! The sync worker gathers facts from Graph ([`Observed`]) and the engine's state of the
//! user ([`Known`]); [`plan_user`] turns them into the events to append. Facts (discovery,
//! attributes, membership) are separate from the removal action, so the deletion guard can
//! hold back removals while every fact still lands.
//!
//! A user is *in scope* while they exist in Entra ID, are a member of the sync group and
//! are enabled. Leaving scope for any of the three reasons is "leaving". A member who is
//! disabled when first seen is recorded as out of scope (never offered as a candidate):
//! when Entra enables them, a delta round names only the user, and only a user the engine
//! knows can be brought in by it.

use crate::decide::user::{removal_for, Status};
use crate::events::*;
use crate::ids::{DomainId, KeyWriteId, UserId};
use crate::types::{LeaveReason, RemovalBehavior, SsoSettings, UserAttributes};
use crate::Event;
use serde::Serialize;

/// What the engine knows of a live (not deleted) user, for sync decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Known {
    /// Candidate, active or deactivated.
    pub status: Status,
    /// Attributes as last recorded.
    pub attributes: UserAttributes,
    /// In scope as last recorded.
    pub in_scope: bool,
    /// Why the user last left scope, while out of it.
    pub left_reason: Option<LeaveReason>,
    /// Member of the rotation group as last recorded.
    pub in_rotation_group: bool,
    /// Key writes still owed to the user's key (queued, or delivered unacknowledged).
    pub owed_writes: Vec<KeyWriteId>,
}

impl Known {
    /// Still a member of the sync group as far as recorded: in scope, or out of scope only
    /// because the account is disabled.
    pub fn is_member(&self) -> bool {
        self.in_scope || self.left_reason == Some(LeaveReason::DisabledInEntra)
    }
}

/// What a run learned from Graph about one user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The user exists in Entra ID.
    pub exists: bool,
    /// Member of the sync group.
    pub member: bool,
    /// Attributes, when this run read them.
    pub attributes: Option<UserAttributes>,
    /// Member of the rotation group.
    pub in_rotation_group: bool,
}

impl Observed {
    /// Exists, is a member and is enabled. `fallback` gives `accountEnabled` when this run
    /// did not read the attributes.
    fn in_scope(&self, fallback: Option<&UserAttributes>) -> bool {
        let enabled = self
            .attributes
            .as_ref()
            .or(fallback)
            .is_some_and(|a| a.account_enabled);
        self.exists && self.member && enabled
    }

    fn leave_reason(&self) -> LeaveReason {
        if !self.exists {
            LeaveReason::DeletedInEntra
        } else if !self.member {
            LeaveReason::LeftGroup
        } else {
            LeaveReason::DisabledInEntra
        }
    }
}

/// How a run affected one user (unchanged users have none).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SyncOutcome {
    /// Seen for the first time: a new candidate.
    Added,
    /// Attributes or rotation-group membership changed.
    Changed,
    /// Back in scope.
    Rejoined,
    /// Left the sync group.
    Left,
    /// Deleted or disabled in Entra ID.
    Deleted,
}

/// The events one run appends for one user.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UserPlan {
    /// Facts: discovery, attributes, membership, auto import.
    pub events: Vec<Event>,
    /// The removal behaviour's action and what follows from it (the deletion guard may
    /// hold them back, all together).
    pub removal: Vec<Event>,
    /// How the user was affected.
    pub outcome: Option<SyncOutcome>,
}

impl UserPlan {
    /// Nothing to append.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.removal.is_empty()
    }

    /// The removal deactivates or deletes (what the deletion guard counts).
    pub fn is_destructive(&self) -> bool {
        matches!(
            self.removal.first(),
            Some(Event::UserDeactivated(_) | Event::UserDeleted(_))
        )
    }

    /// The plan imports the user.
    pub fn imports(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, Event::UserImported(_)))
    }
}

/// Who a newly discovered user is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovery {
    /// The id the engine gives the user.
    pub user_id: UserId,
    /// The domain the user belongs to.
    pub domain_id: DomainId,
    /// The Entra object id.
    pub external_id: String,
}

/// The domain settings a plan depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncPolicy {
    /// What happens to users who leave.
    pub removal_behavior: RemovalBehavior,
    /// Import candidates at once.
    pub auto_import: bool,
    /// SSO settings applied at import.
    pub sso_defaults: SsoSettings,
}

/// What a run does with one user. `known` is `None` for a user the engine does not know
/// (or knows only as deleted: a deleted user who comes back is a new candidate).
pub fn plan_user(
    policy: &SyncPolicy,
    known: Option<&Known>,
    seen: &Observed,
    discovery: impl FnOnce() -> Discovery,
) -> UserPlan {
    let mut plan = UserPlan::default();
    let Some(k) = known else {
        let Some(attributes) = seen.attributes.clone() else {
            return plan;
        };
        if !seen.exists || !seen.member {
            return plan;
        }
        let enabled = attributes.account_enabled;
        let d = discovery();
        plan.events.push(
            UserDiscovered {
                user_id: d.user_id,
                domain_id: d.domain_id,
                external_id: d.external_id,
                attributes,
            }
            .into(),
        );
        if seen.in_rotation_group {
            plan.events.push(RotationGroupJoined {}.into());
        }
        if !enabled {
            plan.events.push(
                MemberLeftSyncGroup {
                    reason: LeaveReason::DisabledInEntra,
                }
                .into(),
            );
            return plan;
        }
        if policy.auto_import {
            plan.events.push(
                UserImported {
                    sso: policy.sso_defaults,
                }
                .into(),
            );
        }
        plan.outcome = Some(SyncOutcome::Added);
        return plan;
    };
    let mut outcome = None;
    if let Some(a) = &seen.attributes {
        if *a != k.attributes {
            plan.events.push(
                UserAttributesChanged {
                    attributes: a.clone(),
                }
                .into(),
            );
            outcome = Some(SyncOutcome::Changed);
        }
    }
    if seen.in_rotation_group != k.in_rotation_group {
        plan.events.push(if seen.in_rotation_group {
            RotationGroupJoined {}.into()
        } else {
            RotationGroupLeft {}.into()
        });
        outcome = Some(SyncOutcome::Changed);
    }
    let now_in = seen.in_scope(Some(&k.attributes));
    match (k.in_scope, now_in) {
        (true, false) => {
            let reason = seen.leave_reason();
            plan.events.push(MemberLeftSyncGroup { reason }.into());
            plan.removal = removal_for(policy.removal_behavior, k.status, reason, &k.owed_writes);
            outcome = Some(match reason {
                LeaveReason::LeftGroup => SyncOutcome::Left,
                _ => SyncOutcome::Deleted,
            });
        }
        (false, true) => {
            // A deactivated user stays deactivated: only an admin brings them back. A
            // candidate comes back as one, imported at once where the domain says so.
            plan.events.push(MemberRejoinedSyncGroup {}.into());
            if k.status == Status::Candidate && policy.auto_import {
                plan.events.push(
                    UserImported {
                        sso: policy.sso_defaults,
                    }
                    .into(),
                );
            }
            outcome = Some(SyncOutcome::Rejoined);
        }
        (false, false) => {
            // Still out, for another reason now (e.g. removed from the group while
            // disabled): record it, so membership stays known. No second removal.
            let reason = seen.leave_reason();
            if k.left_reason != Some(reason) {
                plan.events.push(MemberLeftSyncGroup { reason }.into());
            }
        }
        (true, true) => {}
    }
    plan.outcome = outcome;
    plan
}

/// The deletion guard: a run that would deactivate or delete more than `threshold` users,
/// and more than 10% of the domain's `domain_users`, is quarantined; so is the first run
/// after the sync group moved (`scope_moved`: another group, or the same name found in
/// another tenant) that would remove anyone at all: those users did not leave, an admin's
/// setting changed which people are in scope, and that is theirs to confirm.
///
/// `waiting` counts the other removals earlier runs hold that no admin approved yet: a
/// mass removal does not slip under the guard in parts (a held run cut short, whose rest
/// the next run finds; a group emptied over several runs). A run with no removal of its
/// own is never held.
pub fn guard_trips(
    removals: usize,
    waiting: usize,
    domain_users: usize,
    threshold: u32,
    scope_moved: bool,
) -> bool {
    let total = removals.saturating_add(waiting);
    removals > 0
        && (scope_moved || (total > threshold as usize && total.saturating_mul(10) > domain_users))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SsoMethod;

    fn attrs(enabled: bool) -> UserAttributes {
        UserAttributes {
            user_principal_name: "adele@contoso.com".into(),
            display_name: "Adele Vance".into(),
            mail: None,
            given_name: None,
            surname: None,
            account_enabled: enabled,
        }
    }

    fn policy(removal_behavior: RemovalBehavior) -> SyncPolicy {
        SyncPolicy {
            removal_behavior,
            auto_import: false,
            sso_defaults: SsoSettings {
                enabled: true,
                method: SsoMethod::Passwordless,
            },
        }
    }

    fn active() -> Known {
        Known {
            status: Status::Active,
            attributes: attrs(true),
            in_scope: true,
            left_reason: None,
            in_rotation_group: false,
            owed_writes: vec![],
        }
    }

    fn seen(exists: bool, member: bool, attributes: Option<UserAttributes>) -> Observed {
        Observed {
            exists,
            member,
            attributes,
            in_rotation_group: false,
        }
    }

    fn discovery() -> Discovery {
        Discovery {
            user_id: UserId(uuid::Uuid::from_u128(7)),
            domain_id: DomainId(uuid::Uuid::from_u128(1)),
            external_id: "ext".into(),
        }
    }

    fn kinds(p: &UserPlan) -> Vec<&'static str> {
        p.events
            .iter()
            .chain(&p.removal)
            .map(|e| e.kind())
            .collect()
    }

    #[test]
    fn an_enabled_member_is_discovered_as_a_candidate_and_a_disabled_one_out_of_scope() {
        let p = plan_user(
            &policy(RemovalBehavior::Keep),
            None,
            &seen(true, true, Some(attrs(true))),
            discovery,
        );
        assert_eq!(kinds(&p), ["UserDiscovered"]);
        assert_eq!(p.outcome, Some(SyncOutcome::Added));
        let p = plan_user(
            &policy(RemovalBehavior::Keep),
            None,
            &seen(true, true, Some(attrs(false))),
            discovery,
        );
        assert_eq!(kinds(&p), ["UserDiscovered", "MemberLeftSyncGroup"]);
        assert_eq!(
            p.events[1],
            Event::MemberLeftSyncGroup(MemberLeftSyncGroup {
                reason: LeaveReason::DisabledInEntra
            })
        );
        assert_eq!(p.outcome, None, "not a new candidate");
        // Not a member, or gone: not ours to record.
        for (exists, member) in [(true, false), (false, true)] {
            let p = plan_user(
                &policy(RemovalBehavior::Keep),
                None,
                &seen(exists, member, Some(attrs(true))),
                discovery,
            );
            assert!(p.is_empty());
        }
        // Enabled later, the recorded member comes in; imported where the domain says.
        let disabled = Known {
            status: Status::Candidate,
            attributes: attrs(false),
            in_scope: false,
            left_reason: Some(LeaveReason::DisabledInEntra),
            in_rotation_group: false,
            owed_writes: vec![],
        };
        let enabled = seen(true, disabled.is_member(), Some(attrs(true)));
        let p = plan_user(
            &policy(RemovalBehavior::Keep),
            Some(&disabled),
            &enabled,
            discovery,
        );
        assert_eq!(
            kinds(&p),
            ["UserAttributesChanged", "MemberRejoinedSyncGroup"]
        );
        let auto = SyncPolicy {
            auto_import: true,
            ..policy(RemovalBehavior::Keep)
        };
        let p = plan_user(&auto, Some(&disabled), &enabled, discovery);
        assert_eq!(
            kinds(&p),
            [
                "UserAttributesChanged",
                "MemberRejoinedSyncGroup",
                "UserImported"
            ]
        );
    }

    #[test]
    fn auto_import_imports_with_the_domains_sso_defaults() {
        let pol = SyncPolicy {
            auto_import: true,
            ..policy(RemovalBehavior::Keep)
        };
        let mut s = seen(true, true, Some(attrs(true)));
        s.in_rotation_group = true;
        let p = plan_user(&pol, None, &s, discovery);
        assert_eq!(
            kinds(&p),
            ["UserDiscovered", "RotationGroupJoined", "UserImported"]
        );
        assert_eq!(
            p.events[2],
            Event::UserImported(UserImported {
                sso: pol.sso_defaults
            })
        );
    }

    #[test]
    fn each_removal_behaviour_applies_to_an_active_user_who_leaves() {
        let cases = [
            (RemovalBehavior::Keep, "UserKept", false),
            (RemovalBehavior::Deactivate, "UserDeactivated", true),
            (RemovalBehavior::Delete, "UserDeleted", true),
        ];
        for (behavior, action, destructive) in cases {
            let p = plan_user(
                &policy(behavior),
                Some(&active()),
                &seen(true, false, None),
                discovery,
            );
            assert_eq!(kinds(&p), ["MemberLeftSyncGroup", action]);
            assert_eq!(p.is_destructive(), destructive);
            assert_eq!(p.outcome, Some(SyncOutcome::Left));
        }
    }

    #[test]
    fn deleting_a_user_ends_the_writes_their_key_was_owed_and_nothing_else_does() {
        let owed = [
            KeyWriteId(uuid::Uuid::from_u128(3)),
            KeyWriteId(uuid::Uuid::from_u128(4)),
        ];
        let k = Known {
            owed_writes: owed.to_vec(),
            ..active()
        };
        let p = plan_user(
            &policy(RemovalBehavior::Delete),
            Some(&k),
            &seen(false, false, None),
            discovery,
        );
        assert_eq!(
            kinds(&p),
            [
                "MemberLeftSyncGroup",
                "UserDeleted",
                "KeyWriteSuperseded",
                "KeyWriteSuperseded"
            ]
        );
        assert!(p.is_destructive());
        for (e, id) in p.removal[1..].iter().zip(owed) {
            assert_eq!(
                *e,
                Event::KeyWriteSuperseded(KeyWriteSuperseded {
                    key_write_id: id,
                    reason: SupersedeReason::UserDeleted {},
                })
            );
        }
        // A deactivated user keeps PC unlock: their key is still owed its password.
        for behavior in [RemovalBehavior::Keep, RemovalBehavior::Deactivate] {
            let p = plan_user(
                &policy(behavior),
                Some(&k),
                &seen(false, false, None),
                discovery,
            );
            assert_eq!(p.removal.len(), 1, "{behavior:?}");
        }
    }

    #[test]
    fn deletion_and_disabling_in_entra_are_leaving_with_their_reason() {
        let p = plan_user(
            &policy(RemovalBehavior::Deactivate),
            Some(&active()),
            &seen(false, false, None),
            discovery,
        );
        assert_eq!(
            p.events[0],
            Event::MemberLeftSyncGroup(MemberLeftSyncGroup {
                reason: LeaveReason::DeletedInEntra
            })
        );
        assert_eq!(p.outcome, Some(SyncOutcome::Deleted));
        let p = plan_user(
            &policy(RemovalBehavior::Deactivate),
            Some(&active()),
            &seen(true, true, Some(attrs(false))),
            discovery,
        );
        assert_eq!(
            kinds(&p),
            [
                "UserAttributesChanged",
                "MemberLeftSyncGroup",
                "UserDeactivated"
            ]
        );
        assert_eq!(
            p.removal,
            [Event::UserDeactivated(UserDeactivated {
                reason: Some(LeaveReason::DisabledInEntra)
            })]
        );
    }

    #[test]
    fn a_deactivated_user_who_rejoins_stays_deactivated() {
        let k = Known {
            status: Status::Deactivated,
            in_scope: false,
            left_reason: Some(LeaveReason::LeftGroup),
            ..active()
        };
        let p = plan_user(
            &policy(RemovalBehavior::Deactivate),
            Some(&k),
            &seen(true, true, None),
            discovery,
        );
        assert_eq!(kinds(&p), ["MemberRejoinedSyncGroup"]);
        assert_eq!(p.outcome, Some(SyncOutcome::Rejoined));
    }

    #[test]
    fn candidates_leave_without_a_removal_and_nothing_changes_when_nothing_did() {
        let k = Known {
            status: Status::Candidate,
            ..active()
        };
        let p = plan_user(
            &policy(RemovalBehavior::Delete),
            Some(&k),
            &seen(true, false, None),
            discovery,
        );
        assert_eq!(kinds(&p), ["MemberLeftSyncGroup"]);
        let p = plan_user(
            &policy(RemovalBehavior::Delete),
            Some(&active()),
            &seen(true, true, Some(attrs(true))),
            discovery,
        );
        assert!(p.is_empty());
        assert_eq!(p.outcome, None);
    }

    #[test]
    fn a_member_removed_while_disabled_stays_out_but_its_reason_is_updated() {
        let k = Known {
            status: Status::Deactivated,
            attributes: attrs(false),
            in_scope: false,
            left_reason: Some(LeaveReason::DisabledInEntra),
            in_rotation_group: false,
            owed_writes: vec![],
        };
        assert!(k.is_member());
        let p = plan_user(
            &policy(RemovalBehavior::Deactivate),
            Some(&k),
            &seen(true, false, None),
            discovery,
        );
        assert_eq!(kinds(&p), ["MemberLeftSyncGroup"]);
        assert!(p.removal.is_empty());
    }

    #[test]
    fn the_guard_needs_both_the_threshold_and_ten_percent() {
        assert!(!guard_trips(20, 0, 100, 20, false));
        assert!(guard_trips(21, 0, 100, 20, false));
        assert!(!guard_trips(21, 0, 1000, 20, false));
        assert!(guard_trips(101, 0, 1000, 20, false));
    }

    #[test]
    fn removals_waiting_for_approval_count_but_hold_no_run_alone() {
        // The rest of a held mass removal, small on its own, is held with it.
        assert!(!guard_trips(5, 0, 1000, 20, false));
        assert!(guard_trips(5, 500, 1000, 20, false));
        // A run that removes no one is not held for what waits.
        assert!(!guard_trips(0, 500, 1000, 20, false));
        assert!(!guard_trips(0, 500, 1000, 20, true));
    }

    #[test]
    fn the_milder_behaviour_wins_either_way_round() {
        use RemovalBehavior::*;
        for (a, b, milder) in [
            (Delete, Deactivate, Deactivate),
            (Keep, Delete, Keep),
            (Delete, Delete, Delete),
        ] {
            assert_eq!(a.milder(b), milder);
            assert_eq!(b.milder(a), milder);
        }
    }

    #[test]
    fn after_the_sync_group_moved_any_removal_waits_for_an_admin() {
        assert!(guard_trips(1, 0, 1000, 20, true));
        assert!(!guard_trips(0, 0, 1000, 20, true));
    }
}
