//! The users projection: every user the engine knows, candidates included.

use crate::names::NameIndex;
use chrono::{DateTime, Utc};
use idledger_domain::rotation::{self, PasswordState};
use idledger_domain::{
    DomainId, Envelope, Event, KeyId, LeaveReason, RotationId, SsoSettings, UserAttributes, UserId,
};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::BTreeSet;

/// How long a revoked grant is remembered: longer than an access token can live
/// (`oidc_token_ttl_secs` is at most a day) with its clock skew.
pub const REVOKED_GRANTS_KEPT: chrono::Duration = chrono::Duration::days(2);

/// Where a user stands.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// Seen in the sync group, not imported.
    Candidate,
    /// Imported.
    Active,
    /// SSO off, PC unlock kept; only an admin reactivates.
    Deactivated,
    /// Deleted; data key shredded.
    Deleted,
}

impl UserStatus {
    /// The same status as decisions in `domain` know it.
    pub fn decided(&self) -> idledger_domain::decide::user::Status {
        use idledger_domain::decide::user::Status;
        match self {
            UserStatus::Candidate => Status::Candidate,
            UserStatus::Active => Status::Active,
            UserStatus::Deactivated => Status::Deactivated,
            UserStatus::Deleted => Status::Deleted,
        }
    }

    /// The status name used in the API.
    pub fn as_str(&self) -> &'static str {
        match self {
            UserStatus::Candidate => "candidate",
            UserStatus::Active => "active",
            UserStatus::Deactivated => "deactivated",
            UserStatus::Deleted => "deleted",
        }
    }
}

/// One user's current state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UserView {
    /// Engine id.
    pub id: UserId,
    /// The domain it belongs to.
    pub domain_id: DomainId,
    /// Entra object id.
    pub external_id: String,
    /// Attributes from Entra ID.
    pub attributes: UserAttributes,
    /// Where it stands.
    pub status: UserStatus,
    /// Member of the sync group now.
    pub in_sync_group: bool,
    /// Member of the rotation group now.
    pub in_rotation_group: bool,
    /// Why the user last left, while out of the group.
    pub left_reason: Option<LeaveReason>,
    /// SSO settings applied at import (the domain's defaults then).
    pub imported_sso: Option<SsoSettings>,
    /// An admin's per-user override; wins over the imported settings.
    pub sso_override: Option<SsoSettings>,
    /// PC unlock with the key (kept on deactivation).
    pub pc_unlock: bool,
    /// The assigned hardware key.
    pub key_id: Option<KeyId>,
    /// The rotation whose password is current.
    pub current_rotation: Option<RotationId>,
    /// A rotation in flight.
    pub pending_rotation: Option<RotationId>,
    /// When the last rotation succeeded.
    pub last_rotation_at: Option<DateTime<Utc>>,
    /// A rotation ended with an unknown outcome: an admin should look.
    pub needs_attention: bool,
    /// When the password was last revealed.
    pub last_revealed_at: Option<DateTime<Utc>>,
    /// The rotation protocol's view of the user's passwords; the four fields above are
    /// read off it.
    #[serde(skip)]
    pub password: PasswordState,
    /// The open rotation's unconfirmed candidate was revealed: should it succeed, the
    /// password that becomes current was revealed (at the success, for the schedule).
    #[serde(skip)]
    candidate_revealed: bool,
    /// Grants of apps' tokens revoked lately (a code or refresh token used twice), and
    /// when: an access token naming one (`grant_id`) is refused. Kept longer than any
    /// access token lives.
    #[serde(skip)]
    pub revoked_grants: Vec<(uuid::Uuid, DateTime<Utc>)>,
    /// When the last invite went out.
    pub invited_at: Option<DateTime<Utc>>,
    /// First seen.
    pub discovered_at: DateTime<Utc>,
    /// When the user was imported.
    pub imported_at: Option<DateTime<Utc>>,
    /// Last event.
    pub updated_at: DateTime<Utc>,
    /// Version of the user's stream.
    pub version: u64,
    /// Position of the user's last event.
    pub last_position: u64,
    /// Position of the last event that took sign-in away or changed its terms
    /// (deactivation, deletion, an SSO override): a session opened before it has ended,
    /// even once the user may sign in again.
    pub sign_in_withdrawn_position: u64,
    /// Position of the last passkey or authenticator app removed: it ended every refresh
    /// family of the user's apps (which device a family's sign-in used is not kept), and
    /// the access tokens issued before it go with them.
    #[serde(skip)]
    pub app_tokens_withdrawn_position: u64,
}

impl UserView {
    /// Keeps `grant` as revoked from `at` on: its access tokens are refused. Time is the
    /// log's, so every fold of these records keeps the same; a grant is kept once however
    /// often its end is recorded (each replay of a spent code is).
    pub(crate) fn revoke_grant(&mut self, grant: uuid::Uuid, at: DateTime<Utc>) {
        self.revoked_grants
            .retain(|(_, kept)| at - *kept < REVOKED_GRANTS_KEPT);
        if !self.grant_revoked(grant) {
            self.revoked_grants.push((grant, at));
        }
    }

    /// The tokens of `grant` were revoked (their access tokens are refused).
    pub fn grant_revoked(&self, grant: uuid::Uuid) -> bool {
        self.revoked_grants.iter().any(|(g, _)| *g == grant)
    }

    /// The SSO settings in force: none unless active; the override wins over import.
    pub fn effective_sso(&self) -> SsoSettings {
        match self.status {
            UserStatus::Active => self.sso_override.or(self.imported_sso).unwrap_or_default(),
            _ => SsoSettings {
                enabled: false,
                ..self.sso_override.or(self.imported_sso).unwrap_or_default()
            },
        }
    }
}

/// All users, by id, with indexes of the live ones by (domain, Entra object id) and by
/// principal name.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Users {
    #[serde(serialize_with = "crate::users::sorted_values")]
    by_id: FxHashMap<UserId, Box<UserView>>,
    #[serde(skip)]
    order: BTreeSet<UserId>,
    #[serde(skip)]
    by_external: FxHashMap<(DomainId, String), UserId>,
    /// ASCII-lowercased principal name → the live users with it (one, unless two domains
    /// hold the same name). The sign-in page looks names up here: a scan of every user
    /// per attempt would let anyone without an account hold the projections' read lock.
    #[serde(skip)]
    by_principal: FxHashMap<String, Vec<UserId>>,
    /// Hardware key → the live users it is assigned to (one, as the API keeps it). A key's
    /// assignment is checked here: a scan of every user per assignment would not scale.
    #[serde(skip)]
    by_key: FxHashMap<KeyId, Vec<UserId>>,
    /// Every user's names (deleted users' too), for searches.
    #[serde(skip)]
    names: NameIndex,
}

/// Adds `id` under `name` in the principal name index.
fn index_principal(index: &mut FxHashMap<String, Vec<UserId>>, name: &str, id: UserId) {
    index_under(index, name.to_ascii_lowercase(), id);
}

fn index_under<K: Eq + std::hash::Hash>(index: &mut FxHashMap<K, Vec<UserId>>, key: K, id: UserId) {
    let ids = index.entry(key).or_insert_with(|| Vec::with_capacity(1));
    if !ids.contains(&id) {
        ids.push(id);
    }
}

fn unindex_under<K: Eq + std::hash::Hash>(
    index: &mut FxHashMap<K, Vec<UserId>>,
    key: &K,
    id: UserId,
) {
    if let Some(ids) = index.get_mut(key) {
        ids.retain(|x| *x != id);
        if ids.is_empty() {
            index.remove(key);
        }
    }
}

/// Moves `u` to the principal name `new` in the index (most attribute changes leave the
/// name alone, and a deleted user is in no index: nothing to do).
fn reindex_principal(index: &mut FxHashMap<String, Vec<UserId>>, u: &UserView, new: &str) {
    let old = &u.attributes.user_principal_name;
    if old != new && u.status != UserStatus::Deleted {
        unindex_principal(index, old, u.id);
        index_principal(index, new, u.id);
    }
}

/// Takes `id` from under `name` in the principal name index.
fn unindex_principal(index: &mut FxHashMap<String, Vec<UserId>>, name: &str, id: UserId) {
    unindex_under(index, &name.to_ascii_lowercase(), id);
}

/// A user on [`Users::search`]'s heap, ordered by its id alone (which comes first
/// in the tuple, so this order is never consulted between distinct ids).
struct HeapUser<'a>(&'a UserView);

impl PartialEq for HeapUser<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for HeapUser<'_> {}
impl PartialOrd for HeapUser<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapUser<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

/// Serializes a hash map's values in key order, so JSON output is deterministic.
pub(crate) fn sorted_values<K, V, S>(map: &FxHashMap<K, V>, s: S) -> Result<S::Ok, S::Error>
where
    K: Ord + std::hash::Hash,
    V: Serialize,
    S: serde::Serializer,
{
    let mut v: Vec<(&K, &V)> = map.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    s.collect_seq(v.into_iter().map(|(_, v)| v))
}

impl Users {
    /// Users are boxed in the map: its table, doubled as it grows, holds a pointer a slot
    /// instead of a whole view.
    fn view(&self, id: &UserId) -> Option<&UserView> {
        self.by_id.get(id).map(|u| &**u)
    }

    /// A user by id.
    pub fn get(&self, id: UserId) -> Option<&UserView> {
        self.view(&id)
    }

    /// The live (not deleted) user with this Entra object id in this domain.
    pub fn by_external(&self, domain: DomainId, external_id: &str) -> Option<&UserView> {
        let id = self.by_external.get(&(domain, external_id.to_owned()))?;
        self.view(id)
    }

    /// The live (not deleted) users the hardware key `key` is assigned to.
    pub fn key_holders(&self, key: &KeyId) -> impl Iterator<Item = &UserView> + '_ {
        self.by_key
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.view(id))
    }

    /// The live (not deleted) users whose principal name is `name`, ignoring ASCII case.
    pub fn by_principal_name(&self, name: &str) -> impl Iterator<Item = &UserView> + '_ {
        self.by_principal
            .get(&name.to_ascii_lowercase())
            .into_iter()
            .flatten()
            .filter_map(|id| self.view(id))
    }

    /// Number of users, deleted included.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// No users at all.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Users the log says are deleted (their keys must be shredded).
    pub fn deleted(&self) -> impl Iterator<Item = UserId> + '_ {
        self.by_id
            .values()
            .filter(|u| u.status == UserStatus::Deleted)
            .map(|u| u.id)
    }

    /// Every user, deleted ones included, in no particular order (cheaper than id order
    /// for a pass that sorts or counts anyway).
    pub fn all(&self) -> impl Iterator<Item = &UserView> + '_ {
        self.by_id.values().map(|u| &**u)
    }

    /// Users in id order, starting after `after`.
    pub fn iter_after(&self, after: Option<UserId>) -> impl Iterator<Item = &UserView> + '_ {
        use std::ops::Bound::{Excluded, Unbounded};
        let lower = after.map_or(Unbounded, Excluded);
        self.order
            .range((lower, Unbounded))
            .filter_map(move |id| self.view(id))
    }

    /// The first `n` users in id order after `after` whose principal name or display name
    /// holds `needle` (lower case) and for which `keep` holds. One pass over the name index
    /// in its own order, keeping the `n` smallest ids on a heap: a user is looked up only
    /// when its names match and its id would make the page.
    pub fn search(
        &self,
        after: Option<UserId>,
        n: usize,
        needle: &str,
        mut keep: impl FnMut(&UserView) -> bool,
    ) -> Vec<&UserView> {
        if n == 0 {
            return Vec::new();
        }
        let mut best: std::collections::BinaryHeap<(UserId, HeapUser<'_>)> =
            std::collections::BinaryHeap::with_capacity(n + 1);
        for id in self.names.matching(needle) {
            if after.is_some_and(|a| id <= a)
                || (best.len() == n && best.peek().is_some_and(|(top, _)| id >= *top))
            {
                continue;
            }
            let Some(u) = self.view(&id) else { continue };
            if keep(u) {
                best.push((id, HeapUser(u)));
                if best.len() > n {
                    best.pop();
                }
            }
        }
        let mut found: Vec<&UserView> = best.into_iter().map(|(_, u)| u.0).collect();
        found.sort_by_key(|u| u.id);
        found
    }

    /// How many users each domain has in each status (for metrics: one pass over all).
    pub fn counts(&self) -> std::collections::BTreeMap<(DomainId, &'static str), u64> {
        let mut counts = std::collections::BTreeMap::new();
        for u in self.by_id.values() {
            *counts.entry((u.domain_id, u.status.as_str())).or_default() += 1;
        }
        counts
    }

    /// Users of one domain, in id order.
    pub fn of_domain(&self, domain: DomainId) -> impl Iterator<Item = &UserView> + '_ {
        self.iter_after(None).filter(move |u| u.domain_id == domain)
    }

    /// [`Users::apply`] for the kinds whose payload can be moved in.
    pub(crate) fn apply_owned(&mut self, id: UserId, env: Envelope) {
        match env.event {
            Event::UserAttributesChanged(e) => {
                if let Some(u) = self.by_id.get_mut(&id) {
                    u.updated_at = env.recorded_at;
                    u.version = env.version;
                    u.last_position = env.position;
                    reindex_principal(&mut self.by_principal, u, &e.attributes.user_principal_name);
                    let a = &e.attributes;
                    self.names.set(id, &a.user_principal_name, &a.display_name);
                    u.attributes = e.attributes;
                }
            }
            _ => self.apply(id, &env),
        }
    }

    pub(crate) fn apply(&mut self, id: UserId, env: &Envelope) {
        if let Event::UserDiscovered(e) = &env.event {
            let view = UserView {
                id,
                domain_id: e.domain_id,
                external_id: e.external_id.clone(),
                attributes: e.attributes.clone(),
                status: UserStatus::Candidate,
                in_sync_group: true,
                in_rotation_group: false,
                left_reason: None,
                imported_sso: None,
                sso_override: None,
                pc_unlock: false,
                key_id: None,
                current_rotation: None,
                pending_rotation: None,
                last_rotation_at: None,
                needs_attention: false,
                last_revealed_at: None,
                password: PasswordState::default(),
                candidate_revealed: false,
                revoked_grants: Vec::new(),
                invited_at: None,
                discovered_at: env.recorded_at,
                imported_at: None,
                updated_at: env.recorded_at,
                version: env.version,
                last_position: env.position,
                sign_in_withdrawn_position: 0,
                app_tokens_withdrawn_position: 0,
            };
            self.by_external
                .insert((e.domain_id, e.external_id.clone()), id);
            index_principal(
                &mut self.by_principal,
                &e.attributes.user_principal_name,
                id,
            );
            let a = &e.attributes;
            self.names.set(id, &a.user_principal_name, &a.display_name);
            self.order.insert(id);
            self.by_id.insert(id, Box::new(view));
            return;
        }
        let Some(u) = self.by_id.get_mut(&id) else {
            return;
        };
        u.updated_at = env.recorded_at;
        u.version = env.version;
        u.last_position = env.position;
        match &env.event {
            Event::UserAttributesChanged(e) => {
                reindex_principal(&mut self.by_principal, u, &e.attributes.user_principal_name);
                let a = &e.attributes;
                self.names.set(id, &a.user_principal_name, &a.display_name);
                u.attributes = e.attributes.clone();
            }
            Event::UserImported(e) => {
                u.status = UserStatus::Active;
                u.imported_sso = Some(e.sso);
                u.pc_unlock = true;
                u.imported_at = Some(env.recorded_at);
            }
            Event::MemberLeftSyncGroup(e) => {
                u.in_sync_group = false;
                u.left_reason = Some(e.reason);
            }
            Event::MemberRejoinedSyncGroup(_) => {
                u.in_sync_group = true;
                u.left_reason = None;
            }
            Event::UserDeactivated(_) => {
                u.status = UserStatus::Deactivated;
                u.sign_in_withdrawn_position = env.position;
            }
            Event::UserReactivated(_) => u.status = UserStatus::Active,
            Event::UserDeleted(_) => {
                u.status = UserStatus::Deleted;
                u.sign_in_withdrawn_position = env.position;
                u.pc_unlock = false;
                u.password =
                    rotation::evolve(std::mem::take(&mut u.password), &env.event, env.recorded_at);
                u.pending_rotation = None;
                let key = (u.domain_id, u.external_id.clone());
                if self.by_external.get(&key) == Some(&id) {
                    self.by_external.remove(&key);
                }
                unindex_principal(
                    &mut self.by_principal,
                    &u.attributes.user_principal_name,
                    id,
                );
                if let Some(k) = &u.key_id {
                    unindex_under(&mut self.by_key, k, id);
                }
            }
            Event::PasskeyRemoved(_) | Event::TotpRemoved(_) => {
                u.app_tokens_withdrawn_position = env.position;
            }
            Event::RotationGroupJoined(_) => u.in_rotation_group = true,
            Event::RotationGroupLeft(_) => u.in_rotation_group = false,
            Event::UserSsoOverrideSet(e) => {
                u.sso_override = e.sso;
                u.sign_in_withdrawn_position = env.position;
            }
            Event::KeyAssigned(e) => {
                if let Some(old) = u.key_id.replace(e.key_id.clone()) {
                    unindex_under(&mut self.by_key, &old, id);
                }
                if u.status != UserStatus::Deleted {
                    index_under(&mut self.by_key, e.key_id.clone(), id);
                }
            }
            Event::KeyUnassigned(_) => {
                if let Some(old) = u.key_id.take() {
                    unindex_under(&mut self.by_key, &old, id);
                }
            }
            Event::InviteSent(_) => u.invited_at = Some(env.recorded_at),
            Event::RotationStarted(_)
            | Event::RotationRetried(_)
            | Event::RotationInterrupted(_)
            | Event::RotationSucceeded(_)
            | Event::RotationFailed(_)
            | Event::RotationRequested(_) => {
                let p =
                    rotation::evolve(std::mem::take(&mut u.password), &env.event, env.recorded_at);
                u.current_rotation = p.current;
                u.pending_rotation = p.in_flight();
                u.needs_attention = p.open.as_ref().is_some_and(|o| o.gave_up);
                u.last_rotation_at = p.last_success;
                if let Event::RotationSucceeded(e) = &env.event {
                    if u.candidate_revealed && p.current == Some(e.rotation_id) {
                        u.last_revealed_at = Some(env.recorded_at);
                    }
                }
                u.candidate_revealed &= p.open.is_some();
                u.password = p;
            }
            Event::AppTokenRefused(e) => {
                if let Some(grant) = e.revoked_family {
                    u.revoke_grant(grant, e.at);
                }
            }
            Event::AppTokensRevoked(e) => u.revoke_grant(e.family, e.at),
            Event::PasswordRevealed(e) => {
                u.last_revealed_at = Some(env.recorded_at);
                if u.password
                    .open
                    .as_ref()
                    .is_some_and(|o| o.rotation_id == e.rotation_id)
                {
                    u.candidate_revealed = true;
                }
            }
            _ => {}
        }
    }
}
