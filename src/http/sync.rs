//! Sync over the API: runs, their outcomes, approval of quarantined removals, candidates,
//! import, and invites.

use super::auth::Principal;
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::users::user_json;
use super::{page, page_of, AppState, Consistency};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use idledger_domain::decide::user::{decide, evolve, UserCommand};
use idledger_domain::{DomainId, Role, StreamId, SyncRunId, SyncTrigger, UserId};
use idledger_projections::{Projections, SyncRunView, UserStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::RwLockReadGuard;

/// A run's per-user outcomes in user id order after `after`: `{"user_id","outcome","action"}`.
fn outcomes(
    r: &SyncRunView,
    after: Option<UserId>,
    limit: Option<usize>,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    use std::ops::Bound::{Excluded, Unbounded};
    let lower = after.map_or(Unbounded, Excluded);
    let (items, next) = page_of(r.users.range((lower, Unbounded)), limit, |(id, _)| **id)?;
    Ok((
        items
            .into_iter()
            .map(|(id, o)| json!({"user_id": id, "outcome": o.outcome, "action": o.action}))
            .collect(),
        next,
    ))
}

/// A run as the API shows it; in the detail view with the first page of its per-user
/// outcomes (`users`, and `users_next` to page on at `.../outcomes`).
pub fn run_json(r: &SyncRunView, with_users: bool) -> Value {
    let mut v = json!({
        "run_id": r.run_id,
        "domain_id": r.domain_id,
        "trigger": r.trigger,
        "dry_run": r.dry_run,
        "full": r.full,
        "status": r.status,
        "started_at": r.started_at,
        "finished_at": r.finished_at,
        "counters": r.counters,
        "error": r.error,
        "graph_code": r.graph_code,
        "held_removals": r.held_removals,
        "approved": r.approved,
    });
    if with_users {
        if let Ok((users, next)) = outcomes(r, None, None) {
            v["users"] = users.into();
            v["users_next"] = next.into();
        }
    }
    v
}

/// The read path of a domain's collections: the reader's role, `min_position`, and a
/// read of projections that hold the domain.
async fn read_domain<'a>(
    s: &'a AppState,
    who: &Principal,
    id: DomainId,
    min_position: Option<u64>,
) -> Result<RwLockReadGuard<'a, Projections>, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    s.reach(min_position).await?;
    let p = s.projector.read();
    if p.domains.get(id).is_none() {
        return Err(ApiError::NotFound("domain".into()));
    }
    Ok(p)
}

/// `POST /v1/domains/{id}/sync` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Starts a run: 202 with its id; a dry run answers 200 with the changes it would make.
pub async fn start(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<SyncQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    let accepted = s
        .sync
        .start_run(DomainId(id), SyncTrigger::Manual, q.dry_run)
        .await?;
    if !q.dry_run {
        // Read-your-writes: the run is visible to the caller's next GET.
        s.reach(Some(accepted.position)).await?;
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"run_id": accepted.run_id, "position": accepted.position})),
        ));
    }
    let report = accepted
        .done
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok((
        StatusCode::OK,
        Json(json!({
            "run_id": report.run_id,
            "dry_run": true,
            "full": report.full,
            "counters": report.counters,
            "quarantined": report.quarantined,
            "changes": report.changes,
            "position": report.position,
        })),
    ))
}

/// `GET /v1/domains/{id}/sync-runs` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    limit: Option<usize>,
    after: Option<uuid::Uuid>,
    min_position: Option<u64>,
}

/// A domain's runs, newest first, paged.
pub async fn list(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<RunsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let p = read_domain(&s, &who, DomainId(id), q.min_position).await?;
    // Run ids are UUIDv7: newest first is descending id order.
    let runs = p
        .domains
        .runs_of(DomainId(id))
        .skip_while(|r| q.after.is_some_and(|a| r.run_id.0 >= a));
    let (items, next) = page_of(runs, q.limit, |r| r.run_id)?;
    Ok(page(
        items.into_iter().map(|r| run_json(r, false)).collect(),
        next,
    ))
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

/// One run with its per-user outcomes.
pub async fn get_one(
    State(s): State<AppState>,
    who: Principal,
    Path(raw): Path<(String, String)>,
    ApiQuery(q): ApiQuery<Consistency>,
) -> Result<impl IntoResponse, ApiError> {
    let (domain, run) = run_path(raw)?;
    let p = read_domain(&s, &who, domain, q.min_position).await?;
    p.domains
        .run(run)
        .filter(|r| r.domain_id == domain)
        .map(|r| Json(run_json(r, true)))
        .ok_or_else(|| ApiError::NotFound("sync run".into()))
}

/// `GET /v1/domains/{id}/sync-runs/{run}/outcomes` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutcomesQuery {
    limit: Option<usize>,
    after: Option<uuid::Uuid>,
    min_position: Option<u64>,
}

/// A run's per-user outcomes, paged.
pub async fn run_outcomes(
    State(s): State<AppState>,
    who: Principal,
    Path(raw): Path<(String, String)>,
    ApiQuery(q): ApiQuery<OutcomesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let (domain, run) = run_path(raw)?;
    let p = read_domain(&s, &who, domain, q.min_position).await?;
    let r = p
        .domains
        .run(run)
        .filter(|r| r.domain_id == domain)
        .ok_or_else(|| ApiError::NotFound("sync run".into()))?;
    let (items, next) = outcomes(r, q.after.map(UserId), q.limit)?;
    Ok(page(items, next))
}

/// Applies the removals a quarantined run held back.
pub async fn approve(
    State(s): State<AppState>,
    who: Principal,
    Path(raw): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    let (domain, run) = run_path(raw)?;
    let position = s.sync.approve(domain, run, &who.actor()).await?;
    s.reach(Some(position)).await?;
    let p = s.projector.read();
    let mut body = p
        .domains
        .run(run)
        .map(|r| run_json(r, true))
        .ok_or_else(|| ApiError::NotFound("sync run".into()))?;
    body["position"] = json!(position);
    Ok(Json(body))
}

/// `GET /v1/domains/{id}/candidates` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CandidatesQuery {
    limit: Option<usize>,
    after: Option<uuid::Uuid>,
    /// Part of the principal name or display name, any case.
    q: Option<String>,
    min_position: Option<u64>,
}

/// Candidates of a domain: members of the sync group not yet imported, in id order,
/// paged and searchable.
pub async fn candidates(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<CandidatesQuery>,
) -> Result<impl IntoResponse, ApiError> {
    let domain = DomainId(id);
    let p = read_domain(&s, &who, domain, q.min_position).await?;
    let needle = q.q.as_deref().map(str::to_lowercase);
    let candidates = p.users.iter_after(q.after.map(UserId)).filter(|u| {
        u.domain_id == domain
            && u.status == UserStatus::Candidate
            && u.in_sync_group
            && needle
                .as_deref()
                .is_none_or(|n| super::users::matches(u, n))
    });
    let (items, next) = page_of(candidates, q.limit, |u| u.id)?;
    Ok(page(items.into_iter().map(user_json).collect(), next))
}

/// `POST /v1/domains/{id}/import` body: `{"user_ids":[…]}` or `{"all":true}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    user_ids: Option<Vec<uuid::Uuid>>,
    #[serde(default)]
    all: bool,
}

/// Imports candidates with the domain's SSO defaults.
pub async fn import(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<ImportBody>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
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
    Ok(Json(json!({"imported": imported, "position": position})))
}

/// Sends an invite to an active user and records it.
pub async fn invite(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    let user = UserId(id);
    let invite = {
        let p = s.projector.read();
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
        let domain = p
            .domains
            .get(u.domain_id)
            .map(|d| d.name.clone())
            .unwrap_or_default();
        let a = &u.attributes;
        crate::invite::Invite {
            to: a
                .mail
                .clone()
                .unwrap_or_else(|| a.user_principal_name.clone()),
            display_name: a.display_name.clone(),
            user_principal_name: a.user_principal_name.clone(),
            domain,
        }
    };
    s.mailer.send(&invite).await.map_err(|e| match e {
        crate::invite::InviteError::Address(m) => ApiError::Unprocessable(m),
        crate::invite::InviteError::Delivery(m) => ApiError::BadGateway(m),
    })?;
    let record = UserCommand::RecordInvite {
        to: invite.to.clone(),
        via: s.mailer.via().into(),
    };
    let position = s
        .command(&StreamId::user(user), &who.actor(), evolve, |st| {
            decide(st, record.clone())
        })
        .await?;
    Ok(Json(json!({
        "user_id": user,
        "to": invite.to,
        "via": s.mailer.via(),
        "position": position,
    })))
}
