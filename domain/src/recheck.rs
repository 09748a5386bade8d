//! Changes Graph named that its own member lists or reads by id contradicted, carried from
//! one sync round to the next ([`Recheck`]).
//!
//! Within a moment Graph cannot tell a list that has not caught up with a change
//! (replication) from an old change named again (GRAPH.md §3). The round records what the
//! list or read says, and the next rounds ask again — for [`RECHECK_FOR`], while the delta
//! links move on — so a real change lands a round late instead of a day late (the full
//! round), and a repeated one never lands. Rounds come in order: whatever a later round
//! names about the same user is newer than a carried claim, and replaces it.

use crate::events::{GraphClaim, Recheck};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashSet;

/// How long a contradicted change is asked about again: replication behind a change
/// settles in seconds to minutes; an old change named again never agrees, and costs a
/// member list read per round until then.
pub const RECHECK_FOR: Duration = Duration::hours(1);

/// Claims carried at most (the newest kept): beyond, the full round settles the rest.
pub const MAX_RECHECK: usize = 1_000;

/// Who a round itself named, by Entra object id.
#[derive(Clone, Debug, Default)]
pub struct Named<'a> {
    /// Named by a change of the sync group's membership.
    pub sync: HashSet<&'a str>,
    /// Named by a change of the rotation group's membership.
    pub rotation: HashSet<&'a str>,
    /// Shown by `users/delta` (created, changed or restored).
    pub shown: HashSet<&'a str>,
    /// Named as removed by `users/delta`.
    pub removed: HashSet<&'a str>,
    /// Shown by `users/delta` with their `accountEnabled` (an updated user is named with
    /// only what changed: one shown for a new name says nothing of a disable).
    pub enabled: HashSet<&'a str>,
}

/// The carried claims an incremental round asks about again: not older than
/// [`RECHECK_FOR`], about a user the engine records (`recorded`) — or a new member a read
/// missed, whom it does not yet — and not replaced by what this round names: a membership
/// change of the same group, or a user shown (and not named removed) after a carried
/// deletion, since a restore is newer.
pub fn to_ask<'r>(
    carried: &'r [Recheck],
    now: DateTime<Utc>,
    named: &Named,
    recorded: impl Fn(&str) -> bool,
) -> Vec<&'r Recheck> {
    carried
        .iter()
        .filter(|r| now - r.since < RECHECK_FOR)
        .filter(|r| recorded(&r.external_id) || r.claim == GraphClaim::SyncMember(true))
        .filter(|r| {
            let id = r.external_id.as_str();
            match r.claim {
                GraphClaim::SyncMember(_) => !named.sync.contains(id),
                GraphClaim::RotationMember(_) => !named.rotation.contains(id),
                GraphClaim::Deleted => !named.shown.contains(id) || named.removed.contains(id),
                GraphClaim::Disabled | GraphClaim::Enabled => !named.enabled.contains(id),
            }
        })
        .collect()
}

/// Users whose carried deletion a full round must read by id: its fresh links will never
/// name the deletion again.
pub fn unsettled_deletions(carried: &[Recheck], now: DateTime<Utc>) -> HashSet<&str> {
    carried
        .iter()
        .filter(|r| r.claim == GraphClaim::Deleted && now - r.since < RECHECK_FOR)
        .map(|r| r.external_id.as_str())
        .collect()
}

/// What the next rounds ask about: this round's contradictions, once each, dated when a
/// round first found them (a claim asked again keeps its date, so it ends in time); the
/// newest [`MAX_RECHECK`].
pub fn to_carry<'a>(
    contradicted: impl IntoIterator<Item = (&'a str, GraphClaim)>,
    asked: &[&Recheck],
    now: DateTime<Utc>,
) -> Vec<Recheck> {
    let mut next: Vec<Recheck> = Vec::new();
    let mut seen: HashSet<(&str, GraphClaim)> = HashSet::new();
    for (id, claim) in contradicted {
        if !seen.insert((id, claim)) {
            continue;
        }
        let since = asked
            .iter()
            .find(|r| r.external_id == id && r.claim == claim)
            .map_or(now, |r| r.since);
        next.push(Recheck {
            external_id: id.to_owned(),
            claim,
            since,
        });
    }
    next.sort_by_key(|r| std::cmp::Reverse(r.since));
    next.truncate(MAX_RECHECK);
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minutes: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap() + Duration::minutes(minutes)
    }

    fn claim(id: &str, claim: GraphClaim, since: i64) -> Recheck {
        Recheck {
            external_id: id.to_owned(),
            claim,
            since: at(since),
        }
    }

    fn ids(asked: &[&Recheck]) -> Vec<String> {
        asked.iter().map(|r| r.external_id.clone()).collect()
    }

    #[test]
    fn a_claim_is_asked_until_it_is_an_hour_old() {
        let carried = [
            claim("young", GraphClaim::Deleted, 1),
            claim("old", GraphClaim::Deleted, 0),
        ];
        let asked = to_ask(&carried, at(60), &Named::default(), |_| true);
        assert_eq!(ids(&asked), ["young"]);
        assert_eq!(
            unsettled_deletions(&carried, at(60)),
            HashSet::from(["young"])
        );
    }

    #[test]
    fn a_change_the_round_names_replaces_a_carried_claim_of_its_kind() {
        let carried = [
            claim("s", GraphClaim::SyncMember(false), 0),
            claim("r", GraphClaim::RotationMember(true), 0),
            claim("restored", GraphClaim::Deleted, 0),
            claim("again", GraphClaim::Deleted, 0),
            claim("other-kind", GraphClaim::SyncMember(true), 0),
            claim("disabled-named", GraphClaim::Disabled, 0),
            claim("disabled-renamed", GraphClaim::Disabled, 0),
            claim("disabled-unnamed", GraphClaim::Disabled, 0),
            claim("enabled-named", GraphClaim::Enabled, 0),
            claim("enabled-renamed", GraphClaim::Enabled, 0),
        ];
        let named = Named {
            sync: HashSet::from(["s", "disabled-unnamed"]),
            rotation: HashSet::from(["r", "other-kind"]),
            shown: HashSet::from([
                "restored",
                "again",
                "disabled-named",
                "disabled-renamed",
                "enabled-named",
                "enabled-renamed",
            ]),
            removed: HashSet::from(["again"]),
            enabled: HashSet::from(["disabled-named", "enabled-named"]),
        };
        let asked = to_ask(&carried, at(5), &named, |_| true);
        // Shown and named removed in one round: the read by id decides, as for any
        // removal; a rotation change says nothing of the sync group, nor a membership
        // change or a new name of whether the user is enabled.
        assert_eq!(
            ids(&asked),
            [
                "again",
                "other-kind",
                "disabled-renamed",
                "disabled-unnamed",
                "enabled-renamed"
            ]
        );
    }

    #[test]
    fn only_a_missed_new_member_may_be_someone_the_engine_does_not_record() {
        let carried = [
            claim("new", GraphClaim::SyncMember(true), 0),
            claim("stranger", GraphClaim::SyncMember(false), 0),
            claim("ghost", GraphClaim::Deleted, 0),
        ];
        let asked = to_ask(&carried, at(5), &Named::default(), |_| false);
        assert_eq!(ids(&asked), ["new"]);
    }

    #[test]
    fn a_claim_found_again_keeps_its_first_date_and_each_is_carried_once() {
        let first = claim("a", GraphClaim::Deleted, 0);
        let next = to_carry(
            [
                ("a", GraphClaim::Deleted),
                ("a", GraphClaim::Deleted),
                ("a", GraphClaim::SyncMember(false)),
            ],
            &[&first],
            at(30),
        );
        assert_eq!(
            next,
            [
                claim("a", GraphClaim::SyncMember(false), 30),
                claim("a", GraphClaim::Deleted, 0),
            ]
        );
    }

    #[test]
    fn beyond_the_cap_the_newest_are_carried() {
        let asked: Vec<Recheck> = (0..MAX_RECHECK)
            .map(|i| claim(&format!("old{i}"), GraphClaim::Deleted, 0))
            .collect();
        let asked: Vec<&Recheck> = asked.iter().collect();
        let ids: Vec<String> = (0..MAX_RECHECK).map(|i| format!("old{i}")).collect();
        let next = to_carry(
            ids.iter()
                .map(|id| (id.as_str(), GraphClaim::Deleted))
                .chain([("fresh", GraphClaim::Deleted)]),
            &asked,
            at(10),
        );
        assert_eq!(next.len(), MAX_RECHECK);
        assert_eq!(next[0].external_id, "fresh");
    }
}
