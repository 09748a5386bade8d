//! Sync over the API: runs, their outcomes, approval of quarantined removals, candidates,
//! import, and invites.

use super::auth::Principal;
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::users::user_json;
use super::{page, AppState, Consistency};
use crate::store::{append_correlated, ExpectedVersion};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use idledger_domain::events::InviteSent;
use idledger_domain::{DomainId, Role, StreamId, SyncRunId, SyncTrigger, UserId};
use idledger_projections::{Projections, SyncRunView, UserStatus};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::RwLockReadGuard;

/// A run as the API shows it; `users` only in the detail view.
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
        v["users"] = r
            .users
            .iter()
            .map(|(id, o)| json!({"user_id": id, "outcome": o.outcome, "action": o.action}))
            .collect();
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

/// A domain's runs, newest first.
pub async fn list(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<Consistency>,
) -> Result<impl IntoResponse, ApiError> {
    let p = read_domain(&s, &who, DomainId(id), q.min_position).await?;
    Ok(page(
        p.domains
            .runs_of(DomainId(id))
            .map(|r| run_json(r, false))
            .collect(),
        None,
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

/// Candidates of a domain: members of the sync group not yet imported.
pub async fn candidates(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<Consistency>,
) -> Result<impl IntoResponse, ApiError> {
    let p = read_domain(&s, &who, DomainId(id), q.min_position).await?;
    Ok(page(
        p.users
            .of_domain(DomainId(id))
            .filter(|u| u.status == UserStatus::Candidate && u.in_sync_group)
            .map(user_json)
            .collect(),
        None,
    ))
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
    let sent = InviteSent {
        to: invite.to.clone(),
        via: s.mailer.via().into(),
    };
    let actor = who.actor();
    let stream = StreamId::user(user);
    let position = append_correlated(
        &*s.log,
        stream,
        ExpectedVersion::Any,
        &actor,
        None,
        vec![sent.into()],
    );
    let position = position.await?;
    Ok(Json(json!({
        "user_id": user,
        "to": invite.to,
        "via": s.mailer.via(),
        "position": position,
    })))
}
