//! One sync run of one domain: resolve the groups, read Entra ID (a full round or the
//! changes since the stored delta links), plan each user with [`idledger_domain::sync`],
//! hold back removals when the deletion guard trips, and append.
//!
//! Facts are appended per user stream, concurrently (the log's group commit turns them
//! into few flushes); the run's own record and the new delta links go to the domain
//! stream last, so a run that dies half-way is re-read from the old links next time and
//! its appended facts are not appended twice (plans compare with what is recorded).

use super::SyncError;
use crate::engine::Engine;
use crate::graph::{
    clipped, GraphClient, GraphError, GraphUser, MemberChange, UserChange, MAX_ATTRIBUTE_CHARS,
    USER_SELECT,
};
use crate::store::{AppendError, ExpectedVersion};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use idledger_domain::events::*;
use idledger_domain::recheck;
use idledger_domain::sync::{
    guard_trips, plan_user, Discovery, Known, Observed, SyncOutcome, SyncPolicy, UserPlan,
};
use idledger_domain::{
    Actor, DomainId, Event, LeaveReason, StreamId, SyncCounters, SyncRunId, UserAttributes, UserId,
};
use idledger_projections::{DomainView, Projections, UserStatus, UserView};
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Appends in flight at once: enough to fill the log's group commits.
const APPEND_CONCURRENCY: usize = 256;
/// Federated domains a run records at most: a tenant has up to 5,000 domains, and the
/// event must stay well inside one record.
const MAX_FEDERATED_DOMAINS: usize = 2_000;
/// Held removals per `SyncQuarantined` event (16 bytes each: a quarter of a record).
const MAX_HELD_PER_EVENT: usize = 16_384;
/// Ids per filtered `users/delta` request (Graph's limit).
const IDS_PER_REQUEST: usize = 50;
/// Filtered `users/delta` requests in flight at once.
const READ_CONCURRENCY: usize = 8;

/// One user's change, as a run reports it.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedChange {
    /// The engine's id (a new one for added users).
    pub user_id: UserId,
    /// Entra object id.
    pub external_id: String,
    /// `userPrincipalName`.
    pub user_principal_name: String,
    /// What Entra ID said.
    pub outcome: Option<SyncOutcome>,
    /// Kinds of the events the run appends (or would append) for the user.
    pub events: Vec<&'static str>,
    /// Held back by the deletion guard.
    pub held: bool,
}

/// What a run did (or, dry, would do).
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The run this event belongs to (also the correlation id of its events).
    pub run_id: SyncRunId,
    /// A full round.
    pub full: bool,
    /// What it saw and did, counted.
    pub counters: SyncCounters,
    /// The deletion guard tripped.
    pub quarantined: bool,
    /// Per-user changes, in user id order (shared with the dry runs the service keeps).
    pub changes: Arc<[PlannedChange]>,
    /// Position of the run's last event.
    pub position: u64,
}

/// A user the engine knows, as a run sees it.
struct KnownUser {
    id: UserId,
    version: u64,
    known: Known,
}

fn known_of(p: &Projections, u: &UserView) -> KnownUser {
    KnownUser {
        id: u.id,
        version: u.version,
        known: Known {
            status: u.status.decided(),
            attributes: u.attributes.clone(),
            in_scope: u.in_sync_group,
            left_reason: u.left_reason,
            in_rotation_group: u.in_rotation_group,
            owed_writes: (p.key_writes.of_user(u.id))
                .filter(|w| w.is_pending())
                .map(|w| w.id)
                .collect(),
        },
    }
}

/// Graph's user as recorded attributes. A property the entry leaves out keeps what was
/// recorded: Graph names an updated user in a delta round with only what changed. Texts
/// are kept within Entra's own limits, without control characters, so a hostile or broken
/// answer cannot make a user's record unwritable.
fn attributes_of(u: GraphUser, before: Option<&UserAttributes>) -> UserAttributes {
    let text = |v: String| clipped(&v, MAX_ATTRIBUTE_CHARS);
    let optional = |v: Option<Option<String>>, kept: Option<&Option<String>>| match v {
        Some(v) => v.map(text),
        None => kept.cloned().flatten(),
    };
    UserAttributes {
        user_principal_name: u
            .user_principal_name
            .map(text)
            .or_else(|| before.map(|b| b.user_principal_name.clone()))
            .unwrap_or_default(),
        display_name: u
            .display_name
            .map(text)
            .or_else(|| before.map(|b| b.display_name.clone()))
            .unwrap_or_default(),
        mail: optional(u.mail, before.map(|b| &b.mail)),
        given_name: optional(u.given_name, before.map(|b| &b.given_name)),
        surname: optional(u.surname, before.map(|b| &b.surname)),
        // Never let in on a missing word: a user first seen without it (every read asks
        // for it) is taken as disabled, out of scope until Graph says otherwise.
        account_enabled: u
            .account_enabled
            .or(before.map(|b| b.account_enabled))
            .unwrap_or(false),
    }
}

/// The users both added to and removed from a group in one round's changes.
fn contradicted(changes: &[MemberChange]) -> Vec<String> {
    let mut seen: HashMap<&str, bool> = HashMap::new();
    let mut both = Vec::new();
    for c in changes {
        if seen.insert(&c.user_id, c.removed) == Some(!c.removed) {
            both.push(c.user_id.clone());
        }
    }
    both
}

/// One user's plan, waiting to be appended.
struct Pending {
    /// Entra object id.
    ext: String,
    /// The user's id and stream version, when known.
    known: Option<(UserId, u64)>,
    plan: UserPlan,
}

/// Where the next incremental round starts: the delta links, and the changes it asks
/// about again.
struct Checkpoint {
    links: (String, String),
    recheck: Vec<Recheck>,
}

/// What a full round saw, and what its reads disagreed on (asked again, as a carried
/// claim, by the next rounds).
struct FullRound {
    observed: HashMap<String, Observed>,
    links: (String, String),
    disputed: Vec<(String, GraphClaim)>,
}

/// The resolved groups and where the rounds start.
struct Groups {
    sync: String,
    rotation: String,
    changed: bool,
    /// The sync group is not the one the recorded users came from.
    sync_moved: bool,
}

impl Groups {
    fn resolved(&self) -> Event {
        SyncGroupsResolved {
            sync_group_id: self.sync.clone(),
            rotation_group_id: self.rotation.clone(),
        }
        .into()
    }
}

/// A run in progress.
pub struct SyncRun<'a> {
    engine: &'a Engine,
    client: &'a GraphClient,
    domain: DomainView,
    run_id: SyncRunId,
    dry_run: bool,
    known: HashMap<String, KnownUser>,
    /// A full round was decided when the run started (no delta link, or one is due).
    full: bool,
    /// Set once the run reads a full round, planned or switched to: what a failure
    /// records of it.
    read_full: Arc<std::sync::atomic::AtomicBool>,
    /// Entra ids of the domain's users the engine deleted, disabled or deleted in Entra
    /// (not for leaving the group), and knows no newer user of: one enabled again (or
    /// restored) in Entra comes back as a new user.
    gone: HashSet<String>,
    /// Entra ids of users the engine deleted for leaving the sync group, and knows no
    /// newer user of.
    left_group: HashSet<String>,
}

impl<'a> SyncRun<'a> {
    /// Prepares a run over the engine's current state of `domain`.
    pub async fn new(
        engine: &'a Engine,
        client: &'a GraphClient,
        domain: DomainId,
        run_id: SyncRunId,
        dry_run: bool,
        full: bool,
        read_full: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<SyncRun<'a>, SyncError> {
        engine.settle().await?;
        let p = engine.projector.read();
        let domain = p
            .domains
            .get(domain)
            .cloned()
            .ok_or(idledger_domain::decide::Rejection::NotFound("domain"))?;
        // One walk over the domain's users (the projections are locked meanwhile); the
        // map is sized once, not doubled its way up to 100,000.
        let (deleted, live): (Vec<&UserView>, Vec<&UserView>) = p
            .users
            .of_domain(domain.id)
            .partition(|u| u.status == UserStatus::Deleted);
        let mut known = HashMap::with_capacity(live.len());
        known.extend(
            live.into_iter()
                .map(|u| (u.external_id.clone(), known_of(&p, u))),
        );
        // Only those who left without leaving the group: one who left it comes back
        // through a member change, and needs no look at the group's members.
        let (mut left_group, mut gone) = (HashSet::new(), HashSet::new());
        for u in deleted {
            if !known.contains_key(&u.external_id) {
                let into = match u.left_reason {
                    Some(LeaveReason::LeftGroup) => &mut left_group,
                    _ => &mut gone,
                };
                into.insert(u.external_id.clone());
            }
        }
        Ok(SyncRun {
            engine,
            client,
            domain,
            run_id,
            dry_run,
            known,
            full,
            read_full,
            gone,
            left_group,
        })
    }

    /// What to plan with, read when planning, not when the run started: a run spends
    /// most of its time reading Graph (throttled, a whole tenant), and an admin's change
    /// meanwhile was answered as saved. Removals take the milder behaviour of the two,
    /// and the guard the stricter threshold, as an approval does: a run never removes
    /// harder than the setting the admin last saw in force when it began, nor than the
    /// one saved since.
    fn policy(&self) -> (SyncPolicy, u32) {
        let p = self.engine.projector.read();
        let start = &self.domain;
        let now = p.domains.get(start.id).unwrap_or(start);
        (
            SyncPolicy {
                removal_behavior: start
                    .settings
                    .removal_behavior
                    .milder(now.settings.removal_behavior),
                auto_import: now.settings.auto_import,
                sso_defaults: now.sso_defaults,
            },
            start
                .settings
                .deletion_threshold
                .min(now.settings.deletion_threshold),
        )
    }

    /// The group to sync: the configured object id, else the group of that name. Names are
    /// not unique, and any tenant user may be allowed to create groups: once a group was
    /// found (`recorded`, until the settings name another), a namesake neither makes every
    /// run fail as ambiguous (nobody who left would ever be removed) nor, should the group
    /// be renamed or deleted, takes its place (its members imported) without an admin's
    /// word.
    async fn resolve(
        &self,
        which: &str,
        configured: &Option<String>,
        recorded: &Option<String>,
        name: &str,
    ) -> Result<String, SyncError> {
        if let Some(id) = configured {
            return Ok(id.clone());
        }
        let found = self.client.find_groups(name).await?;
        if let Some(recorded) = recorded {
            if found.iter().any(|g| &g.id == recorded) {
                return Ok(recorded.clone());
            }
            if !found.is_empty() {
                return Err(SyncError::Tenant(format!(
                    "the {which} group '{name}' in domain {} is no longer the group synced so far ({recorded}): it was renamed or deleted, and another group has the name now; configure the object id of the group to sync",
                    self.domain.name
                )));
            }
        }
        match found.len() {
            1 => Ok(found[0].id.clone()),
            0 => Err(SyncError::Tenant(format!(
                "the {which} group '{name}' was not found in domain {}",
                self.domain.name
            ))),
            n => Err(SyncError::Tenant(format!(
                "the {which} group '{name}' is ambiguous in domain {}: {n} groups have that name; configure its object id",
                self.domain.name
            ))),
        }
    }

    async fn groups(&self) -> Result<Groups, SyncError> {
        let s = &self.domain.settings;
        let sync = self
            .resolve(
                "sync",
                &s.sync_group.object_id,
                &self.domain.sync_group_id,
                &s.sync_group.display_name,
            )
            .await?;
        let rotation = self
            .resolve(
                "rotation",
                &s.rotation_group.object_id,
                &self.domain.rotation_group_id,
                &s.rotation_group.display_name,
            )
            .await?;
        let sync_moved = self
            .domain
            .users_sync_group_id
            .as_deref()
            .is_some_and(|before| before != sync);
        let changed = self.domain.sync_group_id.as_deref() != Some(sync.as_str())
            || self.domain.rotation_group_id.as_deref() != Some(rotation.as_str());
        Ok(Groups {
            sync,
            rotation,
            changed,
            sync_moved,
        })
    }

    /// Current attributes of `ids` (absent: the user does not exist), 50 per request.
    async fn read_users(&self, ids: Vec<String>) -> Result<HashMap<String, GraphUser>, SyncError> {
        let chunks: Vec<Vec<String>> = ids.chunks(IDS_PER_REQUEST).map(<[_]>::to_vec).collect();
        let rounds: Vec<_> = stream::iter(chunks)
            .map(|chunk| async move {
                self.client
                    .users_delta(USER_SELECT, Some(&chunk), None)
                    .await
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut out = HashMap::new();
        for round in rounds {
            for c in round.changes {
                if let UserChange::Upsert(u) = c {
                    out.insert(u.id.clone(), u);
                }
            }
        }
        Ok(out)
    }

    /// A full round: every member of both groups, every member's attributes, and a check
    /// of each recorded member who is no longer in the group (left, or deleted?). Also
    /// what its reads disagreed on, for the next rounds to ask again.
    async fn observe_full(&self, g: &Groups) -> Result<FullRound, SyncError> {
        // The users link first: changes after it show up in the next run, never lost.
        let users_link = self.client.users_delta_latest(USER_SELECT).await?;
        let round = self
            .client
            .groups_delta(&[g.sync.clone(), g.rotation.clone()], None)
            .await?;
        self.groups_still_exist(g, &round)?;
        // A configured object id that names no group must not read as an empty group
        // (every user would leave): the round lists every group it covers.
        for (which, id) in [("sync", &g.sync), ("rotation", &g.rotation)] {
            if !round.changes.contains_key(id) {
                return Err(SyncError::Tenant(format!(
                    "the {which} group {id} was not found in domain {}",
                    self.domain.name
                )));
            }
        }
        let members_of = |group: &str| -> HashSet<String> {
            let mut set = HashSet::new();
            for c in round.changes.get(group).into_iter().flatten() {
                if c.removed {
                    set.remove(&c.user_id);
                } else {
                    set.insert(c.user_id.clone());
                }
            }
            set
        };
        let mut members = members_of(&g.sync);
        let rotation = members_of(&g.rotation);
        let mut attrs: HashMap<String, GraphUser> = self
            .client
            .group_members(&g.sync, USER_SELECT)
            .await?
            .into_iter()
            .map(|u| (u.id.clone(), u))
            .collect();
        // Where the member list and the round disagree, either may be the replica behind:
        // what is recorded stands, and the next rounds ask the list again (a recorded
        // member the round left out, taken for gone, would lose their access on one read,
        // and with *delete* their keys).
        let mut disputed: Vec<(String, GraphClaim)> = Vec::new();
        let mut listed_only: HashSet<String> = HashSet::new();
        for id in attrs.keys().filter(|id| !members.contains(*id)) {
            let member = self.known.get(id).is_some_and(|k| k.known.is_member());
            if member {
                listed_only.insert(id.clone());
            }
            disputed.push((id.clone(), GraphClaim::SyncMember(!member)));
        }
        members.extend(listed_only.iter().cloned());
        // Members the member list missed (it changed between the reads), recorded members
        // who left, and users out of scope whose deletion a read contradicted (no entry
        // of this round's `latest` link will name it again): read them, absent means
        // deleted.
        let deletion_unsettled =
            recheck::unsettled_deletions(&self.domain.recheck, chrono::Utc::now());
        let gone: HashSet<String> = self
            .known
            .iter()
            .filter(|(ext, k)| {
                (k.known.in_scope || deletion_unsettled.contains(ext.as_str()))
                    && !members.contains(*ext)
            })
            .map(|(ext, _)| ext.clone())
            .collect();
        let missing: Vec<String> = members
            .iter()
            .filter(|m| !attrs.contains_key(*m))
            .cloned()
            .chain(gone.iter().cloned())
            .collect();
        let mut read_back = self.read_users(missing).await?;
        let mut observed = HashMap::new();
        for m in &members {
            let user = attrs.remove(m).or_else(|| read_back.remove(m));
            let known = self.known.get(m);
            let before = known.map(|k| &k.known.attributes);
            // A recorded member the round names but neither read found is kept as
            // recorded, and the deletion asked about again: the round or the reads may
            // be the ones behind.
            let kept = user.is_none() && known.is_some_and(|k| k.known.is_member());
            if kept {
                disputed.push((m.clone(), GraphClaim::Deleted));
            }
            let exists = user.is_some() || kept;
            // A member the round left out: its word on the rotation group is no better.
            let in_rotation_group = match known.filter(|_| listed_only.contains(m)) {
                Some(k) => k.known.in_rotation_group,
                None => rotation.contains(m),
            };
            observed.insert(
                m.clone(),
                Observed {
                    exists,
                    member: exists,
                    attributes: user.map(|u| attributes_of(u, before)),
                    in_rotation_group,
                },
            );
        }
        for (ext, k) in &self.known {
            if members.contains(ext) {
                continue;
            }
            let seen = if gone.contains(ext) {
                let user = read_back.remove(ext);
                Observed {
                    exists: user.is_some(),
                    member: false,
                    attributes: user.map(|u| attributes_of(u, Some(&k.known.attributes))),
                    in_rotation_group: rotation.contains(ext),
                }
            } else {
                // Out of scope before and not read now: as recorded, except that a
                // disabled member is no longer a member.
                Observed {
                    exists: k.known.left_reason != Some(LeaveReason::DeletedInEntra),
                    member: false,
                    attributes: None,
                    in_rotation_group: rotation.contains(ext),
                }
            };
            observed.insert(ext.clone(), seen);
        }
        Ok(FullRound {
            observed,
            links: (round.delta_link, users_link),
            disputed,
        })
    }

    /// A deleted sync or rotation group stops the run before anything is recorded: read
    /// as "no members", every user would leave it (and with *delete*, lose their keys),
    /// though the group can be restored for 30 days.
    fn groups_still_exist(
        &self,
        g: &Groups,
        round: &crate::graph::GroupsDelta,
    ) -> Result<(), SyncError> {
        for (which, id) in [("sync", &g.sync), ("rotation", &g.rotation)] {
            if round.removed_groups.contains(id) {
                return Err(SyncError::Tenant(format!(
                    "the {which} group {id} of domain {} was deleted in Entra ID; restore it \
                     or choose another group",
                    self.domain.name
                )));
            }
        }
        Ok(())
    }

    /// An incremental round: only what changed since the stored links, and what earlier
    /// rounds could not settle (`unsettled`).
    async fn observe_changes(
        &self,
        g: &Groups,
        links: &(String, String),
        unsettled: &[Recheck],
    ) -> Result<(HashMap<String, Observed>, Checkpoint), SyncError> {
        let now = chrono::Utc::now();
        let groups = self
            .client
            .groups_delta(&[g.sync.clone(), g.rotation.clone()], Some(&links.0))
            .await?;
        self.groups_still_exist(g, &groups)?;
        let users = self
            .client
            .users_delta(USER_SELECT, None, Some(&links.1))
            .await?;
        let mut observed: HashMap<String, Observed> = HashMap::new();
        let mut rotation_unknown: HashSet<String> = HashSet::new();
        // Users who came back without a member change (see `gone`): whether they are
        // still in the sync group is asked below.
        let mut membership_unknown: HashSet<String> = HashSet::new();
        let base = |ext: &str, rotation_unknown: &mut HashSet<String>| match self.known.get(ext) {
            Some(k) => Observed {
                // Deleted in Entra stays deleted until Graph shows the user again (a
                // restore names them in `users/delta`): a change repeated from an earlier
                // round (GRAPH.md §3) does not bring them back.
                exists: k.known.left_reason != Some(LeaveReason::DeletedInEntra),
                member: k.known.is_member(),
                attributes: None,
                in_rotation_group: k.known.in_rotation_group,
            },
            None => {
                rotation_unknown.insert(ext.to_owned());
                Observed {
                    exists: true,
                    member: false,
                    attributes: None,
                    in_rotation_group: false,
                }
            }
        };
        // Graph promises no order within a round and may name a change twice (GRAPH.md
        // §3): a user both added to and removed from a group in one round is asked about,
        // not decided by whichever entry came last.
        let sync_changes = groups.changes.get(&g.sync).map_or(&[][..], Vec::as_slice);
        for c in sync_changes {
            let o = observed
                .entry(c.user_id.clone())
                .or_insert_with(|| base(&c.user_id, &mut rotation_unknown));
            o.member = !c.removed;
        }
        membership_unknown.extend(contradicted(sync_changes));
        // A change that would undo what is recorded may be an old one Graph names again
        // (GRAPH.md §3), older than what happened since: a member who came back would be
        // taken out (with *delete*, their keys shredded), one who left let back in. So may
        // the add of a user never recorded: one who came and went between two rounds
        // would become a user (imported, with *auto import*) for good, were the repeat
        // believed. The member list decides; where it disagrees with the change (a repeat,
        // or a list that has not caught up yet), the change is carried to the next rounds,
        // which ask again (`recheck`).
        let mut sync_flips: Vec<(String, bool)> = sync_changes
            .iter()
            .filter(|c| match self.known.get(&c.user_id) {
                Some(k) => k.known.is_member() == c.removed,
                None => !c.removed,
            })
            .map(|c| (c.user_id.clone(), !c.removed))
            .collect();
        // What earlier rounds could not settle is asked again, as if Graph named it now,
        // unless this round names something newer about the user.
        let mut named = recheck::Named::default();
        named
            .sync
            .extend(sync_changes.iter().map(|c| c.user_id.as_str()));
        let rotation_changes = groups
            .changes
            .get(&g.rotation)
            .map_or(&[][..], Vec::as_slice);
        named
            .rotation
            .extend(rotation_changes.iter().map(|c| c.user_id.as_str()));
        for c in &users.changes {
            match c {
                UserChange::Upsert(u) => {
                    if u.account_enabled.is_some() {
                        named.enabled.insert(u.id.as_str());
                    }
                    named.shown.insert(u.id.as_str())
                }
                UserChange::Removed { id, .. } => named.removed.insert(id.as_str()),
            };
        }
        let carried = recheck::to_ask(unsettled, now, &named, |id| {
            self.known.contains_key(id) || self.left_group.contains(id)
        });
        let mut rotation_flips: Vec<(String, bool)> = Vec::new();
        // Ids named as removed in this round, or whose removal is carried (see below).
        let mut removed: HashSet<String> = HashSet::new();
        // Ids whose turn to disabled, or back to enabled, is carried (see below).
        let mut carried_disables: HashSet<String> = HashSet::new();
        let mut carried_enables: HashSet<String> = HashSet::new();
        for r in &carried {
            let id = &r.external_id;
            observed
                .entry(id.clone())
                .or_insert_with(|| base(id, &mut rotation_unknown));
            match r.claim {
                GraphClaim::SyncMember(m) => sync_flips.push((id.clone(), m)),
                GraphClaim::RotationMember(m) => rotation_flips.push((id.clone(), m)),
                GraphClaim::Deleted => {
                    removed.insert(id.clone());
                }
                GraphClaim::Disabled => {
                    carried_disables.insert(id.clone());
                }
                GraphClaim::Enabled => {
                    carried_enables.insert(id.clone());
                }
            }
        }
        membership_unknown.extend(sync_flips.iter().map(|(id, _)| id.clone()));
        for c in rotation_changes {
            rotation_unknown.remove(&c.user_id);
            if let Some(o) = observed.get_mut(&c.user_id) {
                o.in_rotation_group = !c.removed;
            } else if self.known.contains_key(&c.user_id) {
                let mut o = base(&c.user_id, &mut rotation_unknown);
                o.in_rotation_group = !c.removed;
                observed.insert(c.user_id.clone(), o);
            }
        }
        rotation_unknown.extend(contradicted(rotation_changes));
        // The same for the rotation group: a repeated add would rotate the password of
        // someone taken out of rotation (a break-glass account), a repeated removal stop it.
        rotation_flips.extend(
            rotation_changes
                .iter()
                .filter(|c| {
                    self.known
                        .get(&c.user_id)
                        .is_some_and(|k| k.known.in_rotation_group == c.removed)
                })
                .map(|c| (c.user_id.clone(), !c.removed)),
        );
        rotation_unknown.extend(rotation_flips.iter().map(|(id, _)| id.clone()));
        // Users this round showed: a removal of theirs it also named is a delete and a
        // restore, not a read that has not caught up.
        let mut shown: HashSet<String> = HashSet::new();
        for c in users.changes {
            match c {
                UserChange::Upsert(u) => {
                    let recorded = self.known.get(&u.id).map(|k| &k.known.attributes);
                    if recorded.is_none() && !observed.contains_key(&u.id) {
                        // Deleted here while disabled (or deleted in Entra), and now
                        // enabled (or restored) there: a member all along, maybe.
                        if self.gone.contains(&u.id) && u.account_enabled == Some(true) {
                            membership_unknown.insert(u.id.clone());
                        } else {
                            continue; // not a member: the tenant's other users are not ours
                        }
                    }
                    let id = u.id.clone();
                    let o = observed
                        .entry(id.clone())
                        .or_insert_with(|| base(&id, &mut rotation_unknown));
                    // A user named twice in a round: the later entry (maybe only some
                    // properties) adds to the earlier one, not to what was recorded.
                    o.attributes = Some(attributes_of(u, o.attributes.as_ref().or(recorded)));
                    if !o.exists {
                        // Taken for deleted (earlier, or by an entry of this round), now
                        // shown again: restored, with whatever memberships Entra restored.
                        membership_unknown.insert(id.clone());
                    }
                    // Graph shows the user: they exist, whatever an earlier round said.
                    o.exists = true;
                    shown.insert(id);
                }
                UserChange::Removed { id, .. } => {
                    removed.insert(id.clone());
                    if self.known.contains_key(&id) || observed.contains_key(&id) {
                        let o = observed
                            .entry(id.clone())
                            .or_insert_with(|| base(&id, &mut rotation_unknown));
                        o.exists = false;
                        o.member = false;
                    }
                }
            }
        }
        // A turn to disabled is read back by id before it is believed, as a removal is: a
        // change named again after the opposite one (GRAPH.md §3) reads the same, and a
        // wrong "disabled" costs a member their access (with *delete*, their keys). A turn
        // back to enabled too: an old "enabled" named again would bring a user disabled
        // in Entra back into scope (a candidate, imported active). A read that disagrees,
        // or misses them, keeps them as recorded, and the claim is asked again in the
        // next rounds: a real one lands a round late.
        let turning: Vec<String> = observed
            .iter()
            .filter(|(id, o)| {
                let Some(k) = self.known.get(*id) else {
                    return false;
                };
                let to = !k.known.attributes.account_enabled;
                let carried = if to {
                    &carried_enables
                } else {
                    &carried_disables
                };
                o.exists
                    && !removed.contains(*id)
                    && (carried.contains(*id)
                        || o.attributes
                            .as_ref()
                            .is_some_and(|a| a.account_enabled == to))
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut unconfirmed_turns: Vec<(String, GraphClaim)> = Vec::new();
        if !turning.is_empty() {
            let mut read_back = self.read_users(turning.clone()).await?;
            for id in turning {
                let (Some(o), Some(k)) = (observed.get_mut(&id), self.known.get(&id)) else {
                    continue;
                };
                let was = k.known.attributes.account_enabled;
                let before = o.attributes.clone().unwrap_or(k.known.attributes.clone());
                let read = read_back.remove(&id);
                let confirmed = read
                    .as_ref()
                    .is_some_and(|u| u.account_enabled == Some(!was));
                let mut now = match read {
                    Some(u) => attributes_of(u, Some(&before)),
                    None => before,
                };
                if !confirmed {
                    now.account_enabled = was;
                    let claim = if was {
                        GraphClaim::Disabled
                    } else {
                        GraphClaim::Enabled
                    };
                    unconfirmed_turns.push((id, claim));
                }
                o.attributes = Some(now);
            }
        }
        // A removal is read back by id before it is believed: a user deleted and restored
        // in one round is named both ways in no promised order, and a deletion can be
        // named again in a later round, after a restore (GRAPH.md §3); whichever came last
        // would decide, and a wrong "deleted" costs a member (with *delete*) their keys.
        // Shown means there, with whatever memberships Entra restored.
        let removed: Vec<String> = removed
            .into_iter()
            .filter(|id| observed.contains_key(id))
            .collect();
        // Removals a read by id contradicted, with no entry of this round showing the user.
        let mut unconfirmed_removals: Vec<String> = Vec::new();
        if !removed.is_empty() {
            let mut read_back = self.read_users(removed.clone()).await?;
            for id in removed {
                let Some(o) = observed.get_mut(&id) else {
                    continue;
                };
                match read_back.remove(&id) {
                    Some(u) => {
                        let recorded = self.known.get(&id).map(|k| &k.known.attributes);
                        o.attributes = Some(attributes_of(u, o.attributes.as_ref().or(recorded)));
                        o.exists = true;
                        if !shown.contains(&id) {
                            unconfirmed_removals.push(id.clone());
                        }
                        membership_unknown.insert(id);
                    }
                    None => {
                        o.exists = false;
                        o.member = false;
                    }
                }
            }
        }
        membership_unknown.retain(|ext| observed.get(ext).is_some_and(|o| o.exists));
        if !membership_unknown.is_empty() {
            let members: HashSet<String> = self
                .client
                .members_among(&g.sync, &membership_unknown)
                .await?;
            for ext in membership_unknown {
                if let Some(o) = observed.get_mut(&ext) {
                    o.member = members.contains(&ext);
                }
            }
        }
        // New members: all their attributes (a delta entry may carry only some), and
        // whether they are already in the rotation group.
        let need: Vec<String> = observed
            .iter()
            .filter(|(ext, o)| o.member && o.exists && !self.known.contains_key(*ext))
            .map(|(ext, _)| ext.clone())
            .collect();
        // Known users back in the group: a full round since they left read only members,
        // so what changed of them meanwhile (disabled, renamed) is in no link; what is
        // recorded may be stale. Read afresh (a read a replica misses keeps the record).
        let rejoined: Vec<String> = observed
            .iter()
            .filter(|(ext, o)| {
                o.member && o.exists && self.known.get(*ext).is_some_and(|k| !k.known.is_member())
            })
            .map(|(ext, _)| ext.clone())
            .collect();
        let mut read_back = self
            .read_users(need.iter().chain(&rejoined).cloned().collect())
            .await?;
        for ext in rejoined {
            if let (Some(o), Some(u)) = (observed.get_mut(&ext), read_back.remove(&ext)) {
                o.attributes = Some(attributes_of(u, None));
            }
        }
        // New members a read by id missed (a replica that has not seen them yet): not
        // imported now, asked about again.
        let mut unread_members: Vec<String> = Vec::new();
        for ext in need {
            if let Some(o) = observed.get_mut(&ext) {
                match read_back.remove(&ext) {
                    Some(u) => o.attributes = Some(attributes_of(u, None)),
                    None => {
                        o.exists = false;
                        unread_members.push(ext);
                    }
                }
            }
        }
        // A known user outside the sync group keeps what is recorded of them, and it is
        // taken as it stands when they rejoin: a flip of theirs is asked of the list too.
        let flipped = |ext: &String| rotation_flips.iter().any(|(id, _)| id == ext);
        rotation_unknown.retain(|ext| {
            observed
                .get(ext)
                .is_some_and(|o| o.exists && (o.member || flipped(ext)))
        });
        if !rotation_unknown.is_empty() {
            let rotation: HashSet<String> = self
                .client
                .members_among(&g.rotation, &rotation_unknown)
                .await?;
            for ext in rotation_unknown {
                if let Some(o) = observed.get_mut(&ext) {
                    o.in_rotation_group = rotation.contains(&ext);
                }
            }
        }
        // What the lists and reads contradicted is recorded as they say, and asked again in
        // the next rounds: the links move on (an old change named again would otherwise
        // hold them, and every round would read a growing window, until the full round).
        let contradicted = sync_flips
            .iter()
            .filter(|(id, member)| {
                observed
                    .get(id)
                    .is_some_and(|o| o.exists && o.member != *member)
            })
            .map(|(id, member)| (id.as_str(), GraphClaim::SyncMember(*member)))
            .chain(
                rotation_flips
                    .iter()
                    .filter(|(id, member)| {
                        observed
                            .get(id)
                            .is_some_and(|o| o.exists && o.in_rotation_group != *member)
                    })
                    .map(|(id, member)| (id.as_str(), GraphClaim::RotationMember(*member))),
            )
            .chain(
                unconfirmed_removals
                    .iter()
                    .map(|id| (id.as_str(), GraphClaim::Deleted)),
            )
            .chain(
                unread_members
                    .iter()
                    .map(|id| (id.as_str(), GraphClaim::SyncMember(true))),
            )
            .chain(
                unconfirmed_turns
                    .iter()
                    .map(|(id, claim)| (id.as_str(), *claim)),
            );
        let next = recheck::to_carry(contradicted, &carried, now);
        if !next.is_empty() {
            tracing::info!(domain = %self.domain.name, contradicted = next.len(), "changes Graph named disagree with its member lists or reads: asked again in the next rounds");
        }
        Ok((
            observed,
            Checkpoint {
                links: (groups.delta_link, users.delta_link),
                recheck: next,
            },
        ))
    }

    /// The tenant's federated domains, lower case and sorted; `None` when Graph did not
    /// say, and then rotation keeps what it knew (the run goes on: users are what it is
    /// for). Names that are no domain name are dropped: they could match no user.
    async fn federated_domains(&self) -> Option<Vec<String>> {
        let domains = match self.client.domains().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(domain = %self.domain.name, error = %e, "the tenant's domains could not be read; federated domains as last seen");
                return None;
            }
        };
        let mut names: Vec<String> = domains
            .into_iter()
            .filter(|d| {
                d.authentication_type
                    .as_deref()
                    .is_some_and(|t| t.eq_ignore_ascii_case("Federated"))
            })
            .map(|d| d.id.to_ascii_lowercase())
            .filter(|n| {
                (1..=253).contains(&n.len())
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names.truncate(MAX_FEDERATED_DOMAINS);
        Some(names)
    }

    /// Runs to the end. The run's `SyncRunStarted` is already appended.
    pub async fn execute(self) -> Result<RunReport, SyncError> {
        let groups = self.groups().await?;
        // A stored link this client would not follow (saved before links were checked)
        // starts over with a full round instead of failing every run.
        let links = match &self.domain.delta_links {
            Some((g, u)) if !groups.changed && !self.full => {
                let usable = self.client.is_graph_link(g) && self.client.is_graph_link(u);
                if !usable {
                    tracing::warn!(domain = %self.domain.name, "stored delta links lead off the Graph host: full round");
                }
                usable.then(|| (g.clone(), u.clone()))
            }
            _ => None,
        };
        // A full round reads every list and every member: it settles all there is.
        let full_round = async || -> Result<_, SyncError> {
            self.read_full
                .store(true, std::sync::atomic::Ordering::Release);
            let round = self.observe_full(&groups).await?;
            let disputed = round.disputed.iter().map(|(id, c)| (id.as_str(), *c));
            let settled = Checkpoint {
                links: round.links,
                recheck: recheck::to_carry(disputed, &[], chrono::Utc::now()),
            };
            Ok((round.observed, settled, true))
        };
        let (observed, checkpoint, full) = match &links {
            Some(l) => match self.observe_changes(&groups, l, &self.domain.recheck).await {
                Ok((o, c)) => (o, c, false),
                Err(SyncError::Graph(GraphError::DeltaExpired)) => {
                    tracing::info!(domain = %self.domain.name, "delta token expired: full round and reconcile");
                    full_round().await?
                }
                Err(e) => return Err(e),
            },
            None => full_round().await?,
        };
        // Settings saved while the run read Graph are in the projections it plans from.
        self.engine.settle().await?;
        let (policy, deletion_threshold) = self.policy();
        let domain_id = self.domain.id;
        let mut plans: Vec<Pending> = Vec::new();
        let mut counters = SyncCounters::default();
        for (ext, seen) in observed {
            let k = self.known.get(&ext);
            let plan = plan_user(&policy, k.map(|k| &k.known), &seen, || Discovery {
                user_id: UserId(uuid::Uuid::now_v7()),
                domain_id,
                external_id: ext.clone(),
            });
            match plan.outcome {
                Some(SyncOutcome::Added) => counters.added += 1,
                Some(SyncOutcome::Changed | SyncOutcome::Rejoined) => counters.changed += 1,
                Some(SyncOutcome::Left) => counters.left += 1,
                Some(SyncOutcome::Deleted) => counters.deleted += 1,
                None if plan.is_empty() => counters.unchanged += 1,
                None => {}
            }
            if plan.imports() {
                counters.imported += 1;
            }
            if !plan.is_empty() {
                // A Vec's first push reserves 4 events (4 x 216 bytes); most plans hold 1.
                let mut plan = plan;
                plan.events.shrink_to_fit();
                plan.removal.shrink_to_fit();
                plans.push(Pending {
                    ext,
                    known: k.map(|k| (k.id, k.version)),
                    plan,
                });
            }
        }
        plans.sort_by(|a, b| a.ext.cmp(&b.ext));
        let removals = plans.iter().filter(|p| p.plan.is_destructive()).count();
        let quarantined = guard_trips(
            removals,
            self.waiting_removals(&plans),
            self.known.len(),
            deletion_threshold,
            groups.sync_moved,
        );
        let mut held = Vec::new();
        // Only a dry run answers with its changes; a real run's would be a second copy of
        // every plan (100,000 of them in a first sync) held while the plans are appended.
        let mut changes = Vec::with_capacity(if self.dry_run { plans.len() } else { 0 });
        for Pending {
            ext,
            known: k,
            plan,
        } in &plans
        {
            let hold = quarantined && plan.is_destructive();
            let user_id = match (k, plan.events.first()) {
                (Some((id, _)), _) => *id,
                (None, Some(Event::UserDiscovered(d))) => d.user_id,
                _ => continue,
            };
            if hold {
                held.push(user_id);
            } else if plan.is_destructive() {
                counters.removed += 1;
            }
            if !self.dry_run {
                continue;
            }
            let upn = plan
                .events
                .iter()
                .find_map(|e| match e {
                    Event::UserDiscovered(d) => Some(d.attributes.user_principal_name.clone()),
                    Event::UserAttributesChanged(c) => {
                        Some(c.attributes.user_principal_name.clone())
                    }
                    _ => None,
                })
                .or_else(|| {
                    self.known
                        .get(ext)
                        .map(|k| k.known.attributes.user_principal_name.clone())
                })
                .unwrap_or_default();
            changes.push(PlannedChange {
                user_id,
                external_id: ext.clone(),
                user_principal_name: upn,
                outcome: plan.outcome,
                events: plan
                    .events
                    .iter()
                    .chain(plan.removal.iter().filter(|_| !hold))
                    .map(Event::kind)
                    .collect(),
                held: hold,
            });
        }
        held.sort_unstable();
        let actor = Actor::Sync(domain_id);
        // The groups (and so the tenant the users come from) on record before any user
        // is: a run cut short after its users landed still keeps their tenant to this
        // domain. Not when the sync group moved: that stays unrecorded until the run
        // ends, so that a run dying before its held list keeps the next one held too.
        let resolved_early = !self.dry_run && groups.changed && !groups.sync_moved;
        if resolved_early {
            crate::store::append_correlated(
                &*self.engine.log,
                StreamId::domain(domain_id),
                ExpectedVersion::Any,
                &actor,
                Some(self.run_id.0),
                vec![groups.resolved()],
            )
            .await?;
        }
        if quarantined && !self.dry_run {
            // On record before any user is: a leaver's `MemberLeftSyncGroup` takes them out
            // of every later run's plan, so if this run dies after it, this list is all
            // that still says their removal waits for an admin.
            self.record_held(&held).await?;
        }
        if !self.dry_run {
            crate::crash::point("sync_before_users");
            // What was held is what the appends held: an admin's change meanwhile (an
            // import) may make a removal of a plan that had none, and it is held too.
            let planned_held = std::mem::take(&mut held);
            let applied: Vec<Option<UserId>> = stream::iter(plans)
                .map(
                    |Pending {
                         ext,
                         known: k,
                         plan,
                     }| self.apply_user(ext, k, plan, quarantined),
                )
                .buffer_unordered(APPEND_CONCURRENCY)
                .try_collect()
                .await?;
            held = applied.into_iter().flatten().collect();
            held.sort_unstable();
            if quarantined {
                crate::crash::point("sync_held_before_end");
                // Only what the list on record lacks goes into the run's last append.
                held.retain(|u| planned_held.binary_search(u).is_err());
            }
        }
        let federated = if self.dry_run {
            None
        } else {
            self.federated_domains().await
        };
        let mut domain_events: Vec<Event> = Vec::new();
        if !self.dry_run {
            if let Some(names) = federated.filter(|n| *n != self.domain.federated_domains) {
                domain_events.push(FederatedDomainsSeen { names }.into());
            }
            if groups.changed && !resolved_early {
                domain_events.push(groups.resolved());
            }
            if quarantined && !held.is_empty() {
                domain_events.extend(self.quarantined_parts(&held));
            }
            domain_events.push(
                DeltaCheckpointed {
                    run_id: self.run_id,
                    groups_delta_link: checkpoint.links.0,
                    users_delta_link: checkpoint.links.1,
                    recheck: checkpoint.recheck,
                }
                .into(),
            );
        }
        domain_events.push(
            SyncRunCompleted {
                run_id: self.run_id,
                counters,
                full: Some(full),
            }
            .into(),
        );
        let position = crate::store::append_correlated(
            &*self.engine.log,
            StreamId::domain(domain_id),
            ExpectedVersion::Any,
            &actor,
            Some(self.run_id.0),
            domain_events,
        )
        .await?;
        changes.sort_unstable_by_key(|c| c.user_id);
        Ok(RunReport {
            run_id: self.run_id,
            full,
            counters,
            quarantined,
            changes: changes.into(),
            position,
        })
    }

    /// How many removals earlier runs of the domain hold, unapproved and still owed (the
    /// user still out, not yet removed), other than those the `plans` of this run make
    /// again (a held run cut short before all its leavers were on record plans the rest
    /// again). One whose users came back holds nothing.
    fn waiting_removals(&self, plans: &[Pending]) -> usize {
        let guard = self.engine.projector.read();
        let p = &*guard;
        let Some(d) = p.domains.get(self.domain.id) else {
            return 0;
        };
        let mut waiting: std::collections::HashSet<UserId> = d
            .quarantined_runs
            .iter()
            .filter_map(|r| p.domains.run(*r))
            .filter_map(|r| Some((super::approval_behavior(p, r)?, r)))
            .flat_map(|(behavior, r)| {
                r.held_removals
                    .iter()
                    .copied()
                    .filter(move |u| super::removal_owed(p, *u, behavior).is_some())
            })
            .collect();
        if waiting.is_empty() {
            return 0;
        }
        for plan in plans.iter().filter(|p| p.plan.is_destructive()) {
            if let Some((id, _)) = plan.known {
                waiting.remove(&id);
            }
        }
        waiting.len()
    }

    /// The run's quarantine holding `held`: in parts, since a mass removal's ids (the
    /// guard's very case) would not fit in one record; one empty part marks a run held
    /// with nothing in it yet.
    fn quarantined_parts(&self, held: &[UserId]) -> Vec<Event> {
        let parts: Vec<&[UserId]> = if held.is_empty() {
            vec![&[]]
        } else {
            held.chunks(MAX_HELD_PER_EVENT).collect()
        };
        parts
            .into_iter()
            .map(|part| {
                SyncQuarantined {
                    run_id: self.run_id,
                    held_removals: part.to_vec(),
                    domain_users: self.known.len() as u32,
                }
                .into()
            })
            .collect()
    }

    /// Puts the run's quarantine, holding `held`, on the domain's record.
    async fn record_held(&self, held: &[UserId]) -> Result<(), SyncError> {
        crate::store::append_correlated(
            &*self.engine.log,
            StreamId::domain(self.domain.id),
            ExpectedVersion::Any,
            &Actor::Sync(self.domain.id),
            Some(self.run_id.0),
            self.quarantined_parts(held),
        )
        .await?;
        Ok(())
    }

    /// Appends one user's plan, holding back its removal in a `quarantined` run; on a
    /// concurrent change (an admin acted meanwhile) plans again on the fresh state, with
    /// the same observation. Answers the user when a removal was held back.
    async fn apply_user(
        &self,
        ext: String,
        mut known: Option<(UserId, u64)>,
        mut plan: UserPlan,
        quarantined: bool,
    ) -> Result<Option<UserId>, SyncError> {
        let actor = Actor::Sync(self.domain.id);
        for _ in 0..3 {
            let (user_id, expected) = match (known, plan.events.first()) {
                (Some((id, v)), _) => (id, ExpectedVersion::Exact(v)),
                (None, Some(Event::UserDiscovered(d))) => (d.user_id, ExpectedVersion::NoStream),
                _ => return Ok(None),
            };
            let hold = quarantined && plan.is_destructive();
            let held = hold.then_some(user_id);
            let mut events = plan.events.clone();
            if !hold {
                events.extend(plan.removal.clone());
            }
            if events.is_empty() {
                return Ok(held);
            }
            let deletes = events.iter().any(|e| matches!(e, Event::UserDeleted(_)));
            let stream = StreamId::user(user_id);
            match crate::store::append_correlated(
                &*self.engine.log,
                stream.clone(),
                expected,
                &actor,
                Some(self.run_id.0),
                events,
            )
            .await
            {
                Ok(_) => {
                    if deletes {
                        self.engine.keyring.shred(&stream)?;
                    }
                    return Ok(held);
                }
                Err(AppendError::WrongExpectedVersion { .. }) => {
                    self.engine.settle().await?;
                    let fresh = {
                        let p = self.engine.projector.read();
                        p.users
                            .by_external(self.domain.id, &ext)
                            .map(|u| known_of(&p, u))
                    };
                    let Some(fresh) = fresh else { return Ok(None) };
                    // Replan the same observation against the fresh state: only the
                    // difference still to record.
                    let seen = observation_of(&plan, &fresh.known);
                    plan = plan_user(&self.policy().0, Some(&fresh.known), &seen, || {
                        unreachable_discovery()
                    });
                    known = Some((fresh.id, fresh.version));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(SyncError::Contended(ext))
    }
}

/// A discovery is never needed when replanning a known user.
fn unreachable_discovery() -> Discovery {
    Discovery {
        user_id: UserId(uuid::Uuid::nil()),
        domain_id: DomainId(uuid::Uuid::nil()),
        external_id: String::new(),
    }
}

/// The observation a plan was made from, recovered from its events over `known`.
fn observation_of(plan: &UserPlan, known: &Known) -> Observed {
    let mut seen = Observed {
        exists: true,
        member: known.is_member(),
        attributes: None,
        in_rotation_group: known.in_rotation_group,
    };
    for e in &plan.events {
        match e {
            Event::UserDiscovered(d) => seen.attributes = Some(d.attributes.clone()),
            Event::UserAttributesChanged(c) => seen.attributes = Some(c.attributes.clone()),
            Event::RotationGroupJoined(_) => seen.in_rotation_group = true,
            Event::RotationGroupLeft(_) => seen.in_rotation_group = false,
            Event::MemberRejoinedSyncGroup(_) => seen.member = true,
            Event::MemberLeftSyncGroup(l) => match l.reason {
                LeaveReason::DeletedInEntra => {
                    seen.exists = false;
                    seen.member = false;
                }
                LeaveReason::LeftGroup => seen.member = false,
                LeaveReason::DisabledInEntra => seen.member = true,
            },
            _ => {}
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(v: serde_json::Value) -> GraphUser {
        GraphUser::from_entry(&v).unwrap()
    }

    #[test]
    fn a_property_left_out_keeps_what_is_recorded_and_a_new_user_needs_graphs_word() {
        let id = "c0a80000-0000-4000-8000-000000000001";
        let new = attributes_of(
            entry(serde_json::json!({"id": id, "displayName": "New", "accountEnabled": "yes"})),
            None,
        );
        assert!(
            !new.account_enabled,
            "enabled on a value that is no boolean"
        );
        let enabled = attributes_of(
            entry(serde_json::json!({"id": id, "displayName": "New", "accountEnabled": true})),
            None,
        );
        assert!(enabled.account_enabled);
        let renamed = attributes_of(
            entry(serde_json::json!({"id": id, "displayName": "Renamed"})),
            Some(&enabled),
        );
        assert!(renamed.account_enabled, "kept as recorded");
        assert_eq!(renamed.display_name, "Renamed");
    }
}
