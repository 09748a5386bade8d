//! Sync over the API: runs, their outcomes, approval of quarantined removals, candidates,
//! import, and invites.

use super::auth::Principal;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, IdPath};
use super::users::User;
use super::{page, page_of, AppState, Consistency, Page};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::decide::user::{decide_with, evolve, Outside, UserCommand};
use idledger_domain::sync::SyncOutcome;
use idledger_domain::{DomainId, StreamId, SyncCounters, SyncRunId, SyncTrigger, UserId};
use idledger_projections::{Projections, RunAction, SyncRunStatus, SyncRunView, UserStatus};
use serde::{Deserialize, Serialize};
use std::sync::RwLockReadGuard;
use utoipa::{IntoParams, ToSchema};

/// How one run affected one user.
#[derive(Serialize, ToSchema)]
pub struct RunOutcome {
    user_id: uuid::Uuid,
    /// The user's names now (none for a user the engine no longer knows).
    user_principal_name: Option<String>,
    display_name: Option<String>,
    /// What Entra ID said (none: the run only acted, e.g. an approved removal).
    outcome: Option<SyncOutcome>,
    /// What the engine did about it beside recording the facts.
    action: Option<RunAction>,
}

/// A sync run as the API lists it.
#[derive(Serialize, ToSchema)]
pub struct SyncRun {
    run_id: uuid::Uuid,
    domain_id: uuid::Uuid,
    trigger: SyncTrigger,
    /// Nothing was written but the run's own record.
    dry_run: bool,
    /// A full round (no delta token, or Graph expired it) rather than a delta.
    full: bool,
    status: SyncRunStatus,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    counters: SyncCounters,
    /// Why it failed.
    error: Option<String>,
    /// Graph's error code, when Graph's refusal failed it.
    graph_code: Option<String>,
    /// Users whose removal the deletion guard held back, waiting for approval: the first
    /// 100 in id order; all of them page from `.../held-removals`.
    held_removals: Vec<uuid::Uuid>,
    /// How many removals were held back.
    held_removals_total: usize,
    approved: bool,
    /// Every removal the approval applies was carried out (false while one is owed:
    /// approving again finishes it).
    removals_applied: bool,
}

/// Held removals a run lists in itself; a mass removal may hold back a whole tenant.
const HELD_SHOWN: usize = 100;

impl From<&SyncRunView> for SyncRun {
    fn from(r: &SyncRunView) -> Self {
        SyncRun {
            run_id: r.run_id.0,
            domain_id: r.domain_id.0,
            trigger: r.trigger,
            dry_run: r.dry_run,
            full: r.full,
            status: r.status,
            started_at: r.started_at,
            finished_at: r.finished_at,
            counters: r.counters,
            error: r.error.clone(),
            graph_code: r.graph_code.clone(),
            held_removals: r
                .held_removals
                .iter()
                .take(HELD_SHOWN)
                .map(|u| u.0)
                .collect(),
            held_removals_total: r.held_removals.len(),
            approved: r.approved,
            removals_applied: r.removals_applied,
        }
    }
}

/// One run with the first page of its per-user outcomes; `users_next` pages on at
/// `.../outcomes`.
#[derive(Serialize, ToSchema)]
pub struct SyncRunDetail {
    #[serde(flatten)]
    run: SyncRun,
    users: Vec<RunOutcome>,
    /// Pass as `after` to `.../outcomes` for the rest; null when this is all.
    users_next: Option<String>,
    /// After an approval: the position of its last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
}

impl SyncRunDetail {
    fn of(p: &Projections, r: &SyncRunView) -> Result<Self, ApiError> {
        let (users, users_next) = outcomes(p, r, None, None)?;
        Ok(SyncRunDetail {
            run: SyncRun::from(r),
            users,
            users_next,
            position: None,
        })
    }
}

/// A run's per-user outcomes in user id order after `after`.
fn outcomes(
    p: &Projections,
    r: &SyncRunView,
    after: Option<UserId>,
    limit: Option<usize>,
) -> Result<(Vec<RunOutcome>, Option<String>), ApiError> {
    use std::ops::Bound::{Excluded, Unbounded};
    let lower = after.map_or(Unbounded, Excluded);
    let (items, next) = page_of(r.users.range((lower, Unbounded)), limit, |(id, _)| **id)?;
    Ok((
        items
            .into_iter()
            .map(|(id, o)| {
                let u = p.users.get(*id);
                RunOutcome {
                    user_id: id.0,
                    user_principal_name: u.map(|u| u.attributes.user_principal_name.clone()),
                    display_name: u.map(|u| u.attributes.display_name.clone()),
                    outcome: o.outcome,
                    action: o.action,
                }
            })
            .collect(),
        next,
    ))
}

/// The read path of a domain's collections: `min_position`, and a read of projections
/// that hold the domain.
async fn read_domain(
    s: &AppState,
    id: DomainId,
    min_position: Option<u64>,
) -> Result<RwLockReadGuard<'_, Projections>, ApiError> {
    s.reach(min_position).await?;
    let p = s.engine.projector.read();
    if p.domains.get(id).is_none() {
        return Err(ApiError::NotFound("domain".into()));
    }
    Ok(p)
}

/// `POST /v1/domains/{id}/sync` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SyncQuery {
    /// Answer the changes a run would make and write none of them.
    #[serde(default)]
    dry_run: bool,
    /// A dry run's changes on the answer's first page, 1 to 1000 (100); the rest are read
    /// from `GET /v1/domains/{id}/sync-runs/{run}/changes`.
    limit: Option<usize>,
}

/// A run accepted: it goes on in the background.
#[derive(Serialize, ToSchema)]
pub struct RunStarted {
    run_id: uuid::Uuid,
    /// The position of the run's start; `min_position` for a read that sees it.
    position: u64,
}

/// One user's change in a dry run.
#[derive(Serialize, ToSchema)]
pub struct PlannedChange {
    user_id: uuid::Uuid,
    /// Entra ID's object id.
    external_id: String,
    user_principal_name: String,
    outcome: Option<SyncOutcome>,
    /// Kinds of the events a run would append for the user.
    events: Vec<String>,
    /// The deletion guard would hold it back.
    held: bool,
}

impl From<&crate::sync::PlannedChange> for PlannedChange {
    fn from(c: &crate::sync::PlannedChange) -> Self {
        PlannedChange {
            user_id: c.user_id.0,
            external_id: c.external_id.clone(),
            user_principal_name: c.user_principal_name.clone(),
            outcome: c.outcome,
            events: c.events.iter().map(|&e| e.to_owned()).collect(),
            held: c.held,
        }
    }
}

/// A page of a dry run's changes, in user id order, after the user `after`.
fn changes_page(
    changes: &[crate::sync::PlannedChange],
    after: Option<uuid::Uuid>,
    limit: Option<usize>,
) -> Result<(Vec<PlannedChange>, Option<String>), ApiError> {
    let from = match after {
        None => 0,
        Some(a) => match changes.binary_search_by_key(&a, |c| c.user_id.0) {
            Ok(i) => i + 1,
            Err(_) => {
                return Err(ApiError::BadRequest(format!(
                    "after: {a} is no change of this dry run"
                )))
            }
        },
    };
    let (items, next) = page_of(changes[from..].iter(), limit, |c| c.user_id)?;
    Ok((items.into_iter().map(PlannedChange::from).collect(), next))
}

/// What a run would do.
#[derive(Serialize, ToSchema)]
pub struct DryRunReport {
    run_id: uuid::Uuid,
    /// Always true.
    dry_run: bool,
    full: bool,
    counters: SyncCounters,
    /// The deletion guard would trip.
    quarantined: bool,
    /// The first page of the changes, in user id order.
    changes: Vec<PlannedChange>,
    /// How many changes there are in all.
    changes_total: usize,
    /// Pass as `after` to `GET /v1/domains/{id}/sync-runs/{run}/changes` for the next
    /// page; null on the last.
    next: Option<String>,
    /// The position of the dry run's record.
    position: u64,
}

/// Starts a run: 202 with its id; a dry run answers 200 with the changes it would make.
pub async fn start(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<SyncQuery>,
) -> Result<Response, ApiError> {
    // A bad request changes nothing: checked before a run is recorded.
    let limit = q.limit.map(|l| super::page_limit(Some(l))).transpose()?;
    let accepted = s
        .sync
        .start_run(
            DomainId(id),
            SyncTrigger::Manual,
            q.dry_run,
            Some(&who.actor()),
        )
        .await?;
    if !q.dry_run {
        // Read-your-writes: the run is visible to the caller's next GET.
        s.reach(Some(accepted.position)).await?;
        let started = RunStarted {
            run_id: accepted.run_id.0,
            position: accepted.position,
        };
        return Ok((StatusCode::ACCEPTED, Json(started)).into_response());
    }
    let done = accepted
        .done
        .ok_or_else(|| ApiError::Internal("a dry run joined another run".into()))?;
    let report = done
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    // The report waited on Graph: it goes only to a caller still live.
    who.live(&s)?;
    let (changes, next) = changes_page(&report.changes, None, limit)?;
    Ok(Json(DryRunReport {
        run_id: report.run_id.0,
        dry_run: true,
        full: report.full,
        counters: report.counters,
        quarantined: report.quarantined,
        changes,
        changes_total: report.changes.len(),
        next,
        position: report.position,
    })
    .into_response())
}

/// `GET /v1/domains/{id}/sync-runs` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    /// Page size, 1 to 1000 (100).
    limit: Option<usize>,
    /// The cursor `next` of the previous page.
    after: Option<uuid::Uuid>,
    /// Wait (bounded) until the projections include this position.
    min_position: Option<u64>,
}

/// A domain's runs, newest first, paged.
pub async fn list(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<Json<Page<SyncRun>>, ApiError> {
    let p = read_domain(&s, DomainId(id), q.min_position).await?;
    // Run ids are UUIDv7: newest first is descending id order.
    let runs = p
        .domains
        .runs_of(DomainId(id))
        .skip_while(|r| q.after.is_some_and(|a| r.run_id.0 >= a));
    let (items, next) = page_of(runs, q.limit, |r| r.run_id)?;
    Ok(page(items.into_iter().map(SyncRun::from).collect(), next))
}

fn run_path(raw: (String, String)) -> Result<(DomainId, SyncRunId), ApiError> {
    let parse = |name: &str, v: &str| {
        uuid::Uuid::parse_str(v)
            .map_err(|_| ApiError::BadRequest(format!("{name}: {v:?} is not a UUID")))
    };
    Ok((
        DomainId(parse("id", &raw.0)?),
        SyncRunId(parse("run", &raw.1)?),
    ))
}

/// Run `run` of `domain` (another domain's run is not found).
fn run_of(p: &Projections, domain: DomainId, run: SyncRunId) -> Result<&SyncRunView, ApiError> {
    p.domains
        .run(run)
        .filter(|r| r.domain_id == domain)
        .ok_or_else(|| ApiError::NotFound("sync run".into()))
}

/// One run with its per-user outcomes.
pub async fn get_one(
    State(s): State<AppState>,
    ApiPath(raw): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<Consistency>,
) -> Result<Json<SyncRunDetail>, ApiError> {
    let (domain, run) = run_path(raw)?;
    let p = read_domain(&s, domain, q.min_position).await?;
    let r = run_of(&p, domain, run)?;
    Ok(Json(SyncRunDetail::of(&p, r)?))
}

/// `GET /v1/domains/{id}/sync-runs/{run}/outcomes` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OutcomesQuery {
    /// Page size, 1 to 1000 (100).
    limit: Option<usize>,
    /// The cursor `next` (or `users_next`) of the previous page.
    after: Option<uuid::Uuid>,
    /// Wait (bounded) until the projections include this position.
    min_position: Option<u64>,
}

/// A run's per-user outcomes, paged.
pub async fn run_outcomes(
    State(s): State<AppState>,
    ApiPath(raw): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<OutcomesQuery>,
) -> Result<Json<Page<RunOutcome>>, ApiError> {
    let (domain, run) = run_path(raw)?;
    let p = read_domain(&s, domain, q.min_position).await?;
    let r = run_of(&p, domain, run)?;
    let (items, next) = outcomes(&p, r, q.after.map(UserId), q.limit)?;
    Ok(page(items, next))
}

/// One removal a quarantined run held back: whom an approval would remove.
#[derive(Serialize, ToSchema)]
pub struct HeldRemoval {
    user_id: uuid::Uuid,
    user_principal_name: Option<String>,
    display_name: Option<String>,
}

/// A quarantined run's held removals, in user id order, paged.
pub async fn held_removals(
    State(s): State<AppState>,
    ApiPath(raw): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<OutcomesQuery>,
) -> Result<Json<Page<HeldRemoval>>, ApiError> {
    let (domain, run) = run_path(raw)?;
    let p = read_domain(&s, domain, q.min_position).await?;
    let r = run_of(&p, domain, run)?;
    let from = match q.after.map(UserId) {
        None => 0,
        Some(a) => r.held_removals.partition_point(|u| *u <= a),
    };
    let (items, next) = page_of(r.held_removals[from..].iter(), q.limit, |u| **u)?;
    Ok(page(
        items
            .into_iter()
            .map(|u| {
                let known = p.users.get(*u);
                HeldRemoval {
                    user_id: u.0,
                    user_principal_name: known.map(|v| v.attributes.user_principal_name.clone()),
                    display_name: known.map(|v| v.attributes.display_name.clone()),
                }
            })
            .collect(),
        next,
    ))
}

/// `GET /v1/domains/{id}/sync-runs/{run}/changes` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// Page size, 1 to 1000 (100).
    limit: Option<usize>,
    /// The cursor `next` of the previous page (or of the dry run's answer).
    after: Option<uuid::Uuid>,
}

/// A dry run's changes, paged: kept for the newest dry runs until the server restarts.
pub async fn dry_run_changes(
    State(s): State<AppState>,
    ApiPath(raw): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<ChangesQuery>,
) -> Result<Json<Page<PlannedChange>>, ApiError> {
    let (domain, run) = run_path(raw)?;
    let changes = s
        .sync
        .dry_run_changes(domain, run)
        .ok_or_else(|| ApiError::NotFound("dry run".into()))?;
    let (items, next) = changes_page(&changes, q.after, q.limit)?;
    Ok(page(items, next))
}

/// Applies the removals a quarantined run held back.
pub async fn approve(
    State(s): State<AppState>,
    who: Principal,
    ApiPath(raw): ApiPath<(String, String)>,
) -> Result<Json<SyncRunDetail>, ApiError> {
    let (domain, run) = run_path(raw)?;
    let position = s.sync.approve(domain, run, &who.actor()).await?;
    s.reach(Some(position)).await?;
    let p = s.engine.projector.read();
    let r = p
        .domains
        .run(run)
        .ok_or_else(|| ApiError::NotFound("sync run".into()))?;
    let mut detail = SyncRunDetail::of(&p, r)?;
    detail.position = Some(position);
    Ok(Json(detail))
}

/// `GET /v1/domains/{id}/candidates` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CandidatesQuery {
    /// Page size, 1 to 1000 (100).
    limit: Option<usize>,
    /// The cursor `next` of the previous page.
    after: Option<uuid::Uuid>,
    /// Part of the principal name or display name, any case.
    q: Option<String>,
    /// Wait (bounded) until the projections include this position.
    min_position: Option<u64>,
}

/// Candidates of a domain: members of the sync group not yet imported, in id order,
/// paged and searchable.
pub async fn candidates(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<CandidatesQuery>,
) -> Result<Json<Page<User>>, ApiError> {
    let domain = DomainId(id);
    let p = read_domain(&s, domain, q.min_position).await?;
    let needle = q.q.as_deref().map(str::to_lowercase);
    let keep = |u: &idledger_projections::UserView| {
        u.domain_id == domain && u.status == UserStatus::Candidate && u.in_sync_group
    };
    let after = q.after.map(UserId);
    let (items, next) = if let Some(needle) = &needle {
        let limit = super::page_limit(q.limit)?;
        page_of(
            p.users.search(after, limit + 1, needle, keep).into_iter(),
            Some(limit),
            |u| u.id,
        )?
    } else {
        page_of(
            p.users.iter_after(after).filter(|u| keep(u)),
            q.limit,
            |u| u.id,
        )?
    };
    Ok(page(items.into_iter().map(User::from).collect(), next))
}

/// `POST /v1/domains/{id}/import` body: `{"user_ids":[…]}` or `{"all":true}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// These candidates.
    user_ids: Option<Vec<uuid::Uuid>>,
    /// Every candidate of the domain.
    #[serde(default)]
    all: bool,
}

/// What an import did.
#[derive(Serialize, ToSchema)]
pub struct Imported {
    /// How many users it imported.
    imported: usize,
    /// The position of its last event.
    position: u64,
}

/// Imports candidates with the domain's SSO defaults.
pub async fn import(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<ImportBody>,
) -> Result<Json<Imported>, ApiError> {
    let ids = match (body.user_ids, body.all) {
        (Some(ids), false) if !ids.is_empty() => Some(ids.into_iter().map(UserId).collect()),
        (None, true) => None,
        _ => {
            return Err(ApiError::Unprocessable(
                "give a non-empty user_ids or all: true, not both".into(),
            ))
        }
    };
    let (imported, position) = s.sync.import(DomainId(id), ids, &who.actor()).await?;
    // An import is followed by reads of the users it made: answer once they can see them.
    s.reach(Some(position)).await?;
    Ok(Json(Imported { imported, position }))
}

/// An invite sent and recorded.
#[derive(Serialize, ToSchema)]
pub struct InviteSent {
    user_id: uuid::Uuid,
    /// The address it went to.
    to: String,
    /// The mailer that carried it.
    via: String,
    /// The invite's enrolment link (never its secret).
    link_id: uuid::Uuid,
    /// When the link stops working.
    expires_at: chrono::DateTime<chrono::Utc>,
    /// The position of the invite's record.
    position: u64,
}

/// Sends an invite with a new enrolment link to an active user. The link is recorded
/// (its hash only) before the mail leaves, so every link a user can hold is known; an
/// earlier link stops working at once.
pub async fn invite(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<InviteSent>, ApiError> {
    let user = UserId(id);
    let public = s.public_url.clone().ok_or_else(|| {
        ApiError::Conflict(
            "the server's public_url is not set: invites have nowhere to link".into(),
        )
    })?;
    let secret = crate::http::new_token_text();
    let link = idledger_domain::EnrolmentLink {
        link_id: idledger_domain::LinkId(uuid::Uuid::now_v7()),
        token_hash: crate::http::token_hash(&secret),
        expires_at: chrono::Utc::now() + s.invite_ttl,
    };
    let (invite, outside) = {
        let p = s.engine.projector.read();
        let u = p
            .users
            .get(user)
            .filter(|u| u.status != UserStatus::Deleted)
            .ok_or_else(|| ApiError::NotFound("user".into()))?;
        if u.status != UserStatus::Active {
            return Err(ApiError::Conflict(format!(
                "only active users are invited; this one is {}",
                u.status.as_str()
            )));
        }
        let Some(d) = p.domains.get(u.domain_id) else {
            return Err(ApiError::NotFound("domain".into()));
        };
        let domain = d.name.clone();
        let a = &u.attributes;
        let invite = crate::invite::Invite {
            to: a
                .mail
                .clone()
                .unwrap_or_else(|| a.user_principal_name.clone()),
            display_name: a.display_name.clone(),
            user_principal_name: a.user_principal_name.clone(),
            domain,
            link: public.join(&format!("/enrol/{secret}")),
            expires_at: link.expires_at,
        };
        let outside = Outside {
            domain_removed: d.removed,
            ..Outside::default()
        };
        (invite, outside)
    };
    crate::invite::check_address(&invite.to).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let record = UserCommand::RecordInvite {
        to: invite.to.clone(),
        via: s.mailer.via().into(),
        link: Some(link.clone()),
    };
    let position = s
        .command(&StreamId::user(user), &who.actor(), evolve, |st| {
            decide_with(st, record.clone(), &outside)
        })
        .await?;
    s.mailer.send(&invite).await.map_err(|e| match e {
        crate::invite::InviteError::Address(m) => ApiError::Unprocessable(m),
        crate::invite::InviteError::Delivery(m) => ApiError::BadGateway(format!(
            "{m} (the new link is recorded and the earlier one void: send the invite again)"
        )),
    })?;
    Ok(Json(InviteSent {
        user_id: user.0,
        to: invite.to,
        via: s.mailer.via().into(),
        link_id: link.link_id.0,
        expires_at: link.expires_at,
        position,
    }))
}
