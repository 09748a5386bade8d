//! `/v1/users`: every user the engine knows (admin; auditors read).

use super::auth::Principal;
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::{page, AppState};
use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use idledger_domain::decide::user::{decide, evolve, UserCommand};
use idledger_domain::{DomainId, KeyId, Role, SsoSettings, StreamId, UserId};
use idledger_projections::{Projections, UserStatus, UserView};
use idledger_replay::Until;
use serde::Deserialize;
use serde_json::{json, Value};

/// A user as the API shows it.
pub fn user_json(u: &UserView) -> Value {
    let a = &u.attributes;
    json!({
        "id": u.id,
        "domain_id": u.domain_id,
        "external_id": u.external_id,
        "user_principal_name": a.user_principal_name,
        "display_name": a.display_name,
        "mail": a.mail,
        "given_name": a.given_name,
        "surname": a.surname,
        "account_enabled": a.account_enabled,
        "status": u.status,
        "in_sync_group": u.in_sync_group,
        "in_rotation_group": u.in_rotation_group,
        "sso": u.effective_sso(),
        "sso_override": u.sso_override,
        "pc_unlock": u.pc_unlock,
        "key_id": u.key_id,
        "last_rotation_at": u.last_rotation_at,
        "needs_attention": u.needs_attention,
        "invited_at": u.invited_at,
        "discovered_at": u.discovered_at,
        "imported_at": u.imported_at,
        "updated_at": u.updated_at,
        "version": u.version,
    })
}

/// `GET /v1/users` filters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    domain: Option<uuid::Uuid>,
    status: Option<String>,
    q: Option<String>,
    #[serde(default)]
    include_deleted: bool,
    limit: Option<usize>,
    after: Option<uuid::Uuid>,
    min_position: Option<u64>,
    at: Option<chrono::DateTime<chrono::Utc>>,
    at_position: Option<u64>,
}

/// `at` / `at_position`: which past state to answer from, if any.
fn point_in_time(
    at: Option<chrono::DateTime<chrono::Utc>>,
    at_position: Option<u64>,
) -> Result<Option<Until>, ApiError> {
    match (at, at_position) {
        (Some(_), Some(_)) => Err(ApiError::BadRequest(
            "at, at_position: give one, not both".into(),
        )),
        (Some(t), None) => Ok(Some(Until::Time(t))),
        (None, Some(p)) => Ok(Some(Until::Position(p))),
        (None, None) => Ok(None),
    }
}

fn parse_status(s: &str) -> Result<UserStatus, ApiError> {
    Ok(match s {
        "candidate" => UserStatus::Candidate,
        "active" => UserStatus::Active,
        "deactivated" => UserStatus::Deactivated,
        "deleted" => UserStatus::Deleted,
        other => {
            return Err(ApiError::BadRequest(format!(
                "status: unknown value {other:?}"
            )))
        }
    })
}

/// Lists users, in id order, with cursor paging.
pub async fn list(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    s.reach(q.min_position).await?;
    let status = q.status.as_deref().map(parse_status).transpose()?;
    let needle = q.q.as_deref().map(str::to_lowercase);
    let past = match point_in_time(q.at, q.at_position)? {
        Some(until) => Some(s.replay_until(until).await?),
        None => None,
    };
    let live;
    let p: &Projections = match &past {
        Some(p) => p,
        None => {
            live = s.projector.read();
            &live
        }
    };
    let users = p.users.iter_after(q.after.map(UserId)).filter(|u| {
        q.domain.is_none_or(|d| u.domain_id == DomainId(d))
            && status.is_none_or(|st| u.status == st)
            && (q.include_deleted
                || status == Some(UserStatus::Deleted)
                || u.status != UserStatus::Deleted)
            && needle.as_deref().is_none_or(|n| matches(u, n))
    });
    let (items, next) = super::page_of(users, q.limit, |u| u.id)?;
    Ok(page(items.into_iter().map(user_json).collect(), next))
}

/// The user's principal name or display name holds `needle` (lower case).
pub fn matches(u: &idledger_projections::UserView, needle: &str) -> bool {
    u.attributes
        .user_principal_name
        .to_lowercase()
        .contains(needle)
        || u.attributes.display_name.to_lowercase().contains(needle)
}

/// `GET /v1/users/{id}` parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OneQuery {
    min_position: Option<u64>,
    at: Option<chrono::DateTime<chrono::Utc>>,
    at_position: Option<u64>,
}

/// One user.
pub async fn get_one(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<OneQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    s.reach(q.min_position).await?;
    let found = |p: &Projections| p.users.get(UserId(id)).map(|u| Json(user_json(u)));
    let answer = match point_in_time(q.at, q.at_position)? {
        Some(until) => found(&s.replay_until(until).await?),
        None => found(&s.projector.read()),
    };
    answer.ok_or_else(|| ApiError::NotFound("user".into()))
}

/// `GET /v1/users/{id}/events` parameters.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    from_version: Option<u64>,
    limit: Option<usize>,
    min_position: Option<u64>,
}

/// The user's own events, as `idledger log` shows them.
pub async fn events(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    s.reach(q.min_position).await?;
    let stream = StreamId::user(UserId(id));
    if s.log.stream_version(&stream) == 0 {
        return Err(ApiError::NotFound("user".into()));
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let from = q.from_version.unwrap_or(1).max(1);
    let envs = s.log.read_stream(&stream, from, limit + 1)?;
    let next = (envs.len() > limit).then(|| envs[limit].version.to_string());
    Ok(page(
        envs.iter().take(limit).map(|e| e.to_json()).collect(),
        next,
    ))
}

/// `PATCH /v1/users/{id}` body: the per-user SSO override (`null` clears it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    sso_override: Option<SsoSettings>,
}

async fn run(
    s: &AppState,
    who: &Principal,
    id: uuid::Uuid,
    c: UserCommand,
) -> Result<Json<Value>, ApiError> {
    who.require(&[Role::Admin])?;
    let user = UserId(id);
    let position = s
        .command(&StreamId::user(user), &who.actor(), evolve, |st| {
            decide(st, c.clone())
        })
        .await?;
    s.reach(Some(position)).await?;
    let p = s.projector.read();
    let mut body = p
        .users
        .get(user)
        .map(user_json)
        .ok_or_else(|| ApiError::NotFound("user".into()))?;
    body["position"] = json!(position);
    Ok(Json(body))
}

/// Sets or clears the SSO override.
pub async fn patch(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(b): ApiJson<UserPatch>,
) -> Result<impl IntoResponse, ApiError> {
    run(&s, &who, id, UserCommand::SetSsoOverride(b.sso_override)).await
}

/// Reactivates a deactivated user.
pub async fn activate(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    run(&s, &who, id, UserCommand::Activate).await
}

/// Deactivates an active user.
pub async fn deactivate(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    run(&s, &who, id, UserCommand::Deactivate).await
}

/// `PUT /v1/users/{id}/key` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    key_id: String,
}

/// Assigns a hardware key (one key serves one live user).
pub async fn put_key(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(b): ApiJson<KeyBody>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    // An empty id stays the domain rule's 422; hostile text is refused here.
    super::error::free_text("key_id", &b.key_id, 0, 128)?;
    let holder = {
        let p = s.projector.read();
        let holder = p
            .users
            .iter_after(None)
            .find(|u| {
                u.id.0 != id
                    && u.status != UserStatus::Deleted
                    && u.key_id.as_ref().is_some_and(|k| k.0 == b.key_id)
            })
            .map(|u| u.id);
        holder
    };
    if let Some(other) = holder {
        return Err(ApiError::Conflict(format!(
            "key {} is assigned to user {}; unassign it there first",
            b.key_id, other.0
        )));
    }
    run(&s, &who, id, UserCommand::AssignKey(KeyId(b.key_id))).await
}

/// Takes the user's hardware key away.
pub async fn delete_key(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    run(&s, &who, id, UserCommand::UnassignKey).await
}
