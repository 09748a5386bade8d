//! Domains: settings, credentials (sealed), SSO defaults, group ids, delta link, sync runs.

use chrono::{DateTime, Utc};
use idledger_domain::events::Recheck;
use idledger_domain::sync::SyncOutcome;
use idledger_domain::{
    DomainId, DomainSettings, Envelope, Event, RemovalBehavior, SealedSecret, SsoSettings,
    SyncCounters, SyncRunId, SyncTrigger, UserId,
};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::BTreeMap;

/// What a run (or the approval of its held removals) did to a user besides the facts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RunAction {
    /// Imported (auto import).
    Imported,
    /// The removal behaviour `keep`.
    Kept,
    /// Deactivated by the removal behaviour.
    Deactivated,
    /// Deleted by the removal behaviour.
    Deleted,
}

/// How one run affected one user.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
pub struct RunUserOutcome {
    /// What Entra ID said.
    pub outcome: Option<SyncOutcome>,
    /// What the engine did about it.
    pub action: Option<RunAction>,
}

impl RunUserOutcome {
    /// Adds this user to `c` (or takes them out), as the run's final counters count them.
    fn tally(&self, c: &mut SyncCounters, add: bool) {
        let field = match self.outcome {
            Some(SyncOutcome::Added) => Some(&mut c.added),
            Some(SyncOutcome::Changed | SyncOutcome::Rejoined) => Some(&mut c.changed),
            Some(SyncOutcome::Left) => Some(&mut c.left),
            Some(SyncOutcome::Deleted) => Some(&mut c.deleted),
            None => None,
        };
        let action = match self.action {
            Some(RunAction::Imported) => Some(&mut c.imported),
            Some(RunAction::Deactivated | RunAction::Deleted) => Some(&mut c.removed),
            Some(RunAction::Kept) | None => None,
        };
        for n in [field, action].into_iter().flatten() {
            *n = if add {
                n.saturating_add(1)
            } else {
                n.saturating_sub(1)
            };
        }
    }
}

fn rank(o: Option<SyncOutcome>) -> u8 {
    match o {
        None => 0,
        Some(SyncOutcome::Changed) => 1,
        Some(SyncOutcome::Rejoined) => 2,
        Some(SyncOutcome::Left) => 3,
        Some(SyncOutcome::Deleted) => 4,
        Some(SyncOutcome::Added) => 5,
    }
}

/// A domain's Graph credentials; the secret stays sealed and is never serialized.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CredentialsView {
    /// Entra tenant id.
    pub tenant_id: String,
    /// App registration's client id.
    pub client_id: String,
    /// Always true while credentials exist (the API's `secret_set`).
    pub secret_set: bool,
    /// When they were saved.
    pub updated_at: DateTime<Utc>,
    /// The domain stream's version that saved them.
    #[serde(skip)]
    pub version: u64,
    /// The sealed client secret.
    #[serde(skip)]
    pub client_secret: SealedSecret,
    /// The Graph and authority URLs in force when they were saved: the only ones the
    /// secret may go to.
    #[serde(skip)]
    pub saved_for: (String, String),
}

/// One domain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DomainView {
    /// The domain.
    pub id: DomainId,
    /// The tenant's domain name.
    pub name: String,
    /// The settings in force.
    pub settings: DomainSettings,
    /// Credentials, if saved.
    pub credentials: Option<CredentialsView>,
    /// When credentials were last removed (cleared when new ones are saved).
    pub credentials_removed_at: Option<DateTime<Utc>>,
    /// SSO defaults applied at import.
    pub sso_defaults: SsoSettings,
    /// Removed (history kept).
    pub removed: bool,
    /// Resolved object id of the sync group.
    pub sync_group_id: Option<String>,
    /// Resolved object id of the rotation group.
    pub rotation_group_id: Option<String>,
    /// The sync group the recorded users were last synced as members of: unlike
    /// `sync_group_id`, kept when the settings name another group, so the next run knows
    /// that its removals come from the move.
    #[serde(skip)]
    pub users_sync_group_id: Option<String>,
    /// The tenant the domain's users were synced from (kept when credentials go).
    #[serde(skip)]
    pub users_tenant: Option<String>,
    /// The `groups/delta` and `users/delta` links the next run starts from.
    #[serde(skip)]
    pub delta_links: Option<(String, String)>,
    /// Changes the next incremental round asks about again (see [`Recheck`]).
    #[serde(skip)]
    pub recheck: Vec<Recheck>,
    /// The latest run that was not a dry run.
    pub last_run: Option<SyncRunId>,
    /// Every quarantined run waiting for approval, or approved with removals not all
    /// carried out yet, oldest first: a later run holds only its own removals, so an
    /// earlier one's stay to be approved.
    pub quarantined_runs: Vec<SyncRunId>,
    /// Registered.
    pub created_at: DateTime<Utc>,
    /// Last event.
    pub updated_at: DateTime<Utc>,
    /// Version of the domain's stream.
    pub version: u64,
    /// Workstation passwordless logon certificates, newest last; all but the one in force
    /// are retired.
    pub workstation_certificates: Vec<WorkstationCertificateView>,
    /// The tenant's federated domains (lower case, sorted), as the last sync saw them.
    pub federated_domains: Vec<String>,
    /// When the last full round (not a dry run) completed.
    pub last_full_at: Option<DateTime<Utc>>,
}

/// A workstation passwordless logon certificate of a domain.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkstationCertificateView {
    /// SHA-256 fingerprint (hex).
    pub id: String,
    /// The certificate, DER.
    #[serde(skip)]
    pub der: Vec<u8>,
    /// Valid from.
    pub not_before: DateTime<Utc>,
    /// Valid until.
    pub not_after: DateTime<Utc>,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// When a newer one replaced it.
    pub retired_at: Option<DateTime<Utc>>,
}

impl DomainView {
    /// The credentials, when they were saved for the URLs in force. A move of the URLs
    /// comes with the secret (the domain's `decide` refuses one without), but the two
    /// events may be folded under separate locks: in between, the old secret is not to
    /// be paired with the new URLs.
    pub fn credentials_in_force(&self) -> Option<&CredentialsView> {
        self.credentials.as_ref().filter(|c| {
            c.saved_for.0 == self.settings.graph_url && c.saved_for.1 == self.settings.authority_url
        })
    }

    /// The next run reads everything: there is no delta link to go on from, or the last
    /// full round is `every` old at `now`. Incremental rounds miss what Graph never
    /// reports as a change (a member whose user was not yet readable when the change
    /// came); a full round now and then brings everything back in step.
    pub fn full_round_due(&self, now: DateTime<Utc>, every: chrono::Duration) -> bool {
        self.delta_links.is_none() || self.last_full_at.is_none_or(|t| now - t >= every)
    }

    /// The quarantined run waiting longest for approval.
    pub fn quarantined_run(&self) -> Option<SyncRunId> {
        self.quarantined_runs.first().copied()
    }

    /// The workstation certificate in force.
    pub fn workstation_certificate(&self) -> Option<&WorkstationCertificateView> {
        self.workstation_certificates
            .iter()
            .rev()
            .find(|c| c.retired_at.is_none())
    }
}

/// Where a sync run stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SyncRunStatus {
    /// Started, not finished.
    Running,
    /// Finished.
    Succeeded,
    /// It failed; `error` says why.
    Failed,
    /// Held by the deletion guard.
    Quarantined,
}

/// One sync run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncRunView {
    /// The run this event belongs to (also the correlation id of its events).
    pub run_id: SyncRunId,
    /// The domain it synced.
    pub domain_id: DomainId,
    /// Why it ran.
    pub trigger: SyncTrigger,
    /// Nothing but the run's own record was written.
    pub dry_run: bool,
    /// Full round.
    pub full: bool,
    /// Where it stands.
    pub status: SyncRunStatus,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// What it saw and did, counted.
    pub counters: SyncCounters,
    /// Error text.
    pub error: Option<String>,
    /// Graph's error code.
    pub graph_code: Option<String>,
    /// Removals held back by the deletion guard.
    pub held_removals: Vec<UserId>,
    /// The mildest removal behaviour in force from the run's start to its quarantine:
    /// approval does no more than it (nor than the one in force then), whatever the
    /// setting became meanwhile.
    pub held_under: Option<RemovalBehavior>,
    /// The deletion guard held its removals back.
    pub held: bool,
    /// Approved after quarantine.
    pub approved: bool,
    /// Every removal the approval applies was carried out.
    pub removals_applied: bool,
    /// Users the run affected (unchanged ones are not listed), in id order.
    pub users: BTreeMap<UserId, RunUserOutcome>,
}

/// All domains and their sync runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Domains {
    #[serde(serialize_with = "crate::users::sorted_values")]
    by_id: FxHashMap<DomainId, DomainView>,
    #[serde(skip)]
    runs: FxHashMap<SyncRunId, SyncRunView>,
    #[serde(skip)]
    runs_of: FxHashMap<DomainId, Vec<SyncRunId>>,
}

impl Domains {
    /// A domain by id (removed ones included).
    pub fn get(&self, id: DomainId) -> Option<&DomainView> {
        self.by_id.get(&id)
    }

    /// All domains, removed ones included, by creation.
    pub fn all(&self) -> Vec<&DomainView> {
        let mut v: Vec<_> = self.by_id.values().collect();
        v.sort_by_key(|d| (d.created_at, d.id));
        v
    }

    /// A live domain with this name.
    pub fn by_name(&self, name: &str) -> Option<&DomainView> {
        self.by_id
            .values()
            .find(|d| !d.removed && d.name.eq_ignore_ascii_case(name))
    }

    /// A live domain other than `except` connected to `tenant`, or holding its users.
    pub fn by_tenant(&self, tenant: &str, except: Option<DomainId>) -> Option<&DomainView> {
        self.by_id.values().find(|d| {
            !d.removed
                && Some(d.id) != except
                && d.credentials
                    .as_ref()
                    .map(|c| c.tenant_id.as_str())
                    .into_iter()
                    .chain(d.users_tenant.as_deref())
                    .any(|t| idledger_domain::decide::domain::same_tenant(t, tenant))
        })
    }

    /// A sync run by id.
    pub fn run(&self, id: SyncRunId) -> Option<&SyncRunView> {
        self.runs.get(&id)
    }

    /// Every run of every domain, in no order.
    pub fn runs(&self) -> impl Iterator<Item = &SyncRunView> + '_ {
        self.runs.values()
    }

    /// A domain's runs, newest first.
    pub fn runs_of(&self, domain: DomainId) -> impl Iterator<Item = &SyncRunView> + '_ {
        self.runs_of
            .get(&domain)
            .into_iter()
            .flat_map(|v| v.iter().rev())
            .filter_map(|id| self.runs.get(id))
    }

    /// Notes a user event appended by a run (its correlation id is the run's id), before
    /// `users` takes it in.
    pub(crate) fn note_run_user_event(
        &mut self,
        run: SyncRunId,
        user: UserId,
        event: &Event,
        users: &crate::Users,
    ) {
        let Some(r) = self.runs.get_mut(&run) else {
            return;
        };
        let (outcome, action) = match event {
            Event::UserDiscovered(_) => (Some(SyncOutcome::Added), None),
            Event::UserAttributesChanged(_)
            | Event::RotationGroupJoined(_)
            | Event::RotationGroupLeft(_) => (Some(SyncOutcome::Changed), None),
            Event::MemberRejoinedSyncGroup(_) => (Some(SyncOutcome::Rejoined), None),
            // Out already, for another reason now: no news, as the run counts it.
            Event::MemberLeftSyncGroup(_) if !users.get(user).is_some_and(|u| u.in_sync_group) => {
                (None, None)
            }
            Event::MemberLeftSyncGroup(e) => (
                Some(match e.reason {
                    idledger_domain::LeaveReason::LeftGroup => SyncOutcome::Left,
                    _ => SyncOutcome::Deleted,
                }),
                None,
            ),
            Event::UserImported(_) => (None, Some(RunAction::Imported)),
            Event::UserKept(_) => (None, Some(RunAction::Kept)),
            Event::UserDeactivated(_) => (None, Some(RunAction::Deactivated)),
            Event::UserDeleted(_) => (None, Some(RunAction::Deleted)),
            _ => return,
        };
        let entry = r.users.entry(user).or_insert(RunUserOutcome {
            outcome: None,
            action: None,
        });
        let before = *entry;
        if rank(outcome) > rank(entry.outcome) {
            entry.outcome = outcome;
        }
        if action.is_some() {
            entry.action = action;
        }
        // A running run counts what it has appended so far (a first sync of a large
        // tenant runs for minutes); its final counters replace these when it completes. A
        // run that fails keeps the counts of what it did append.
        if r.status == SyncRunStatus::Running {
            before.tally(&mut r.counters, false);
            entry.tally(&mut r.counters, true);
        }
    }

    pub(crate) fn apply(&mut self, id: DomainId, env: &Envelope) {
        let at = env.recorded_at;
        if let Event::DomainRegistered(e) = &env.event {
            self.by_id.insert(
                id,
                DomainView {
                    id,
                    name: e.name.clone(),
                    settings: e.settings.clone(),
                    credentials: None,
                    credentials_removed_at: None,
                    sso_defaults: SsoSettings::default(),
                    removed: false,
                    sync_group_id: None,
                    rotation_group_id: None,
                    users_sync_group_id: None,
                    users_tenant: None,
                    delta_links: None,
                    recheck: Vec::new(),
                    last_run: None,
                    quarantined_runs: Vec::new(),
                    created_at: at,
                    updated_at: at,
                    version: env.version,
                    workstation_certificates: Vec::new(),
                    federated_domains: Vec::new(),
                    last_full_at: None,
                },
            );
            return;
        }
        let Some(d) = self.by_id.get_mut(&id) else {
            return;
        };
        d.updated_at = at;
        d.version = env.version;
        match &env.event {
            Event::DomainSettingsChanged(e) => {
                if e.settings.sync_group != d.settings.sync_group
                    || e.settings.rotation_group != d.settings.rotation_group
                    || e.settings.graph_url != d.settings.graph_url
                {
                    // Other groups, or another Graph: the old delta links track the
                    // wrong objects.
                    d.delta_links = None;
                    d.recheck.clear();
                    d.sync_group_id = None;
                    d.rotation_group_id = None;
                }
                d.settings = e.settings.clone();
            }
            Event::DomainCredentialsSet(e) => {
                d.credentials_removed_at = None;
                d.credentials = Some(CredentialsView {
                    tenant_id: e.tenant_id.clone(),
                    client_id: e.client_id.clone(),
                    secret_set: true,
                    updated_at: at,
                    version: env.version,
                    client_secret: e.client_secret.clone(),
                    saved_for: (
                        d.settings.graph_url.clone(),
                        d.settings.authority_url.clone(),
                    ),
                })
            }
            Event::DomainCredentialsRemoved(_) => {
                d.credentials = None;
                d.credentials_removed_at = Some(at);
            }
            Event::SsoDefaultsChanged(e) => d.sso_defaults = e.sso,
            Event::WorkstationCertificateIssued(e) => {
                d.workstation_certificates.push(WorkstationCertificateView {
                    id: e.certificate_id.clone(),
                    der: e.certificate_der.clone(),
                    not_before: e.not_before,
                    not_after: e.not_after,
                    issued_at: at,
                    retired_at: None,
                })
            }
            Event::WorkstationCertificateRetired(e) => {
                if let Some(c) = d
                    .workstation_certificates
                    .iter_mut()
                    .find(|c| c.id == e.certificate_id)
                {
                    c.retired_at = Some(at);
                }
            }
            Event::DomainRemoved(_) => {
                d.removed = true;
                d.credentials = None;
                // Its users were let go with it: no removal of theirs waits any more.
                d.quarantined_runs.clear();
            }
            Event::SyncGroupsResolved(e) => {
                d.sync_group_id = Some(e.sync_group_id.clone());
                d.rotation_group_id = Some(e.rotation_group_id.clone());
                d.users_sync_group_id = Some(e.sync_group_id.clone());
                if let Some(c) = &d.credentials {
                    d.users_tenant = Some(c.tenant_id.clone());
                }
            }
            Event::FederatedDomainsSeen(e) => d.federated_domains = e.names.clone(),
            Event::DeltaCheckpointed(e) => {
                d.delta_links = Some((e.groups_delta_link.clone(), e.users_delta_link.clone()));
                d.recheck = e.recheck.clone();
            }
            Event::SyncRunStarted(e) => {
                // A dry run changes nothing: the last sync shown stays the last real one
                // (a dry run's success must not hide a real run's failure).
                if !e.dry_run {
                    d.last_run = Some(e.run_id);
                }
                self.runs.insert(
                    e.run_id,
                    SyncRunView {
                        run_id: e.run_id,
                        domain_id: id,
                        trigger: e.trigger,
                        dry_run: e.dry_run,
                        full: e.full,
                        status: SyncRunStatus::Running,
                        started_at: at,
                        finished_at: None,
                        counters: SyncCounters::default(),
                        error: None,
                        graph_code: None,
                        held_removals: Vec::new(),
                        held_under: Some(d.settings.removal_behavior),
                        held: false,
                        approved: false,
                        removals_applied: false,
                        users: BTreeMap::new(),
                    },
                );
                self.runs_of.entry(id).or_default().push(e.run_id);
            }
            Event::SyncRunCompleted(e) => {
                if let Some(r) = self.runs.get_mut(&e.run_id) {
                    r.counters = e.counters;
                    if let Some(full) = e.full {
                        r.full = full;
                    }
                    if r.full && !r.dry_run {
                        d.last_full_at = Some(at);
                    }
                    r.finished_at = Some(at);
                    if r.status == SyncRunStatus::Running {
                        r.status = if r.held {
                            SyncRunStatus::Quarantined
                        } else {
                            SyncRunStatus::Succeeded
                        };
                    }
                }
            }
            Event::SyncRunFailed(e) => {
                if let Some(r) = self.runs.get_mut(&e.run_id) {
                    r.status = SyncRunStatus::Failed;
                    r.error = Some(e.error.clone());
                    r.graph_code = e.graph_code.clone();
                    r.finished_at = Some(at);
                    if let Some(full) = e.full {
                        r.full = full;
                    }
                }
            }
            Event::SyncQuarantined(e) => {
                let finished = self.runs.get(&e.run_id).is_some_and(|r| r.removals_applied);
                if !finished && !d.quarantined_runs.contains(&e.run_id) {
                    d.quarantined_runs.push(e.run_id);
                }
                if let Some(r) = self.runs.get_mut(&e.run_id) {
                    // Its list is on record before its leavers: `quarantined` only once it
                    // ends (a run that dies held is `failed`, its removals still listed).
                    r.held = true;
                    // The milder of what the run planned under (the setting at its start)
                    // and the one in force as it is held.
                    let now = d.settings.removal_behavior;
                    r.held_under = Some(r.held_under.map_or(now, |at_start| at_start.milder(now)));
                    // A run's removals come in parts (one event each); in id order, so
                    // the API can page them.
                    r.held_removals.extend(e.held_removals.iter().copied());
                    r.held_removals.sort_unstable();
                    r.held_removals.dedup();
                }
            }
            // Listed until its removals are all carried out: one an error or a crash cut
            // short shows, to be approved again.
            Event::SyncQuarantineApproved(e) => {
                if let Some(r) = self.runs.get_mut(&e.run_id) {
                    r.approved = true;
                }
            }
            Event::SyncQuarantineApplied(e) => {
                d.quarantined_runs.retain(|r| *r != e.run_id);
                if let Some(r) = self.runs.get_mut(&e.run_id) {
                    r.removals_applied = true;
                }
            }
            _ => {}
        }
    }
}
