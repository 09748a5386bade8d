//! `/v1/users`: every user the engine knows (admin; auditors read).

use super::auth::Principal;
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::{page, AppState, Page};
use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::decide::user::{decide_with, evolve, Outside, UserCommand};
use idledger_domain::envelope::EnvelopeView;
use idledger_domain::{DomainId, KeyId, KeyWriteId, KeyWriteState, SsoSettings, StreamId, UserId};
use idledger_projections::{Projections, UserStatus, UserView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A user as the API shows it: Entra ID's attributes, where they stand, their key and SSO
/// settings. Never a password.
#[derive(Serialize, ToSchema)]
pub struct User {
    /// The engine's id.
    id: uuid::Uuid,
    /// Their domain.
    domain_id: uuid::Uuid,
    /// Entra ID's object id.
    external_id: String,
    /// `userPrincipalName`.
    user_principal_name: String,
    /// `displayName`.
    display_name: String,
    /// `mail`.
    mail: Option<String>,
    /// `givenName`.
    given_name: Option<String>,
    /// `surname`.
    surname: Option<String>,
    /// `accountEnabled`.
    account_enabled: bool,
    /// Where they stand.
    status: UserStatus,
    /// In the sync group now.
    in_sync_group: bool,
    /// In the rotation group now.
    in_rotation_group: bool,
    /// The SSO settings in force (off unless active).
    sso: SsoSettings,
    /// An admin's override of the domain's defaults.
    sso_override: Option<SsoSettings>,
    /// PC unlock with the key.
    pc_unlock: bool,
    /// The assigned hardware key.
    #[schema(value_type = Option<String>)]
    key_id: Option<KeyId>,
    /// When a rotation last succeeded.
    last_rotation_at: Option<DateTime<Utc>>,
    /// A rotation's outcome is unknown (its candidate is kept and tried again).
    needs_attention: bool,
    /// When the last invite went out.
    invited_at: Option<DateTime<Utc>>,
    /// First seen.
    discovered_at: DateTime<Utc>,
    /// When the user was imported.
    imported_at: Option<DateTime<Utc>>,
    /// Last changed.
    updated_at: DateTime<Utc>,
    /// Version of the user's stream.
    version: u64,
    /// When the next rotation is expected to start (schedule or request); `null` when
    /// none is, and in answers about a past point.
    next_rotation_at: Option<DateTime<Utc>>,
    /// The last key write for the key the user holds: a `failed` one means the key
    /// holds another password than Entra ID (`POST /v1/users/{id}/key/rewrite`).
    key_write: Option<KeyWriteStatus>,
    /// Sign-in factors locked now after failed guesses, and until when (`POST
    /// /v1/users/{id}/sign-in/unlock` lifts them); empty in answers about a past point.
    sign_in_locks: Vec<SignInLock>,
    /// After a change: the position of its last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
}

/// A sign-in factor locked after failed guesses.
#[derive(Serialize, ToSchema)]
pub struct SignInLock {
    /// `passkey`, `entra` or `totp`.
    factor: &'static str,
    until: DateTime<Utc>,
}

/// Where the latest write to a user's key stands.
#[derive(Serialize, ToSchema)]
pub struct KeyWriteStatus {
    /// The key write.
    id: uuid::Uuid,
    state: KeyWriteState,
    queued_at: DateTime<Utc>,
    /// When the agent answered.
    acknowledged_at: Option<DateTime<Utc>>,
    /// The agent's explanation of a failure.
    detail: Option<String>,
}

impl User {
    /// `u` as it stands now, with its next rotation.
    fn live(s: &AppState, p: &Projections, u: &UserView) -> Self {
        let now = Utc::now();
        let sign_in_locks = p
            .signins
            .get(u.id)
            .map(|v| {
                v.decided
                    .locked_until
                    .iter()
                    .filter(|(_, until)| now < **until)
                    .map(|(factor, until)| SignInLock {
                        factor: factor.as_str(),
                        until: *until,
                    })
                    .collect()
            })
            .unwrap_or_default();
        User {
            next_rotation_at: s.rotation.next_due(p, u, now).map(|(at, _)| at),
            sign_in_locks,
            ..User::as_in(p, u)
        }
    }

    /// `u` in the state `p` holds (now or in the past), without a schedule.
    fn as_in(p: &Projections, u: &UserView) -> Self {
        let key_write = u.key_id.as_ref().and_then(|key| {
            p.key_writes
                .of_user(u.id)
                .filter(|w| w.key_id == *key)
                .last()
                .map(|w| KeyWriteStatus {
                    id: w.id.0,
                    state: w.state,
                    queued_at: w.queued_at,
                    acknowledged_at: w.acknowledged_at,
                    detail: w.detail.clone(),
                })
        });
        User {
            key_write,
            ..User::from(u)
        }
    }
}

impl From<&UserView> for User {
    fn from(u: &UserView) -> Self {
        let a = &u.attributes;
        User {
            id: u.id.0,
            domain_id: u.domain_id.0,
            external_id: u.external_id.clone(),
            user_principal_name: a.user_principal_name.clone(),
            display_name: a.display_name.clone(),
            mail: a.mail.clone(),
            given_name: a.given_name.clone(),
            surname: a.surname.clone(),
            account_enabled: a.account_enabled,
            status: u.status,
            in_sync_group: u.in_sync_group,
            in_rotation_group: u.in_rotation_group,
            sso: u.effective_sso(),
            sso_override: u.sso_override,
            pc_unlock: u.pc_unlock,
            key_id: u.key_id.clone(),
            last_rotation_at: u.last_rotation_at,
            needs_attention: u.needs_attention,
            invited_at: u.invited_at,
            discovered_at: u.discovered_at,
            imported_at: u.imported_at,
            updated_at: u.updated_at,
            version: u.version,
            next_rotation_at: None,
            key_write: None,
            sign_in_locks: Vec::new(),
            position: None,
        }
    }
}

/// A status to list users of.
#[derive(Deserialize, Clone, Copy, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    /// Not imported.
    Candidate,
    /// Imported.
    Active,
    /// SSO off; PC unlock kept.
    Deactivated,
    /// Gone; their data key is shredded.
    Deleted,
}

impl StatusFilter {
    fn status(self) -> UserStatus {
        match self {
            StatusFilter::Candidate => UserStatus::Candidate,
            StatusFilter::Active => UserStatus::Active,
            StatusFilter::Deactivated => UserStatus::Deactivated,
            StatusFilter::Deleted => UserStatus::Deleted,
        }
    }
}

/// `GET /v1/users` filters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    /// Only this domain's.
    domain: Option<uuid::Uuid>,
    /// Only users in this status.
    #[param(inline)]
    status: Option<StatusFilter>,
    /// Part of the principal name or display name, any case.
    q: Option<String>,
    /// Deleted users too.
    #[serde(default)]
    include_deleted: bool,
    /// At most this many (1 to 1000, default 100).
    limit: Option<usize>,
    /// The `next` of the page before.
    after: Option<uuid::Uuid>,
    /// Wait (briefly) until the projections include this position.
    min_position: Option<u64>,
    /// Answer as of this time (a replay of the log).
    at: Option<chrono::DateTime<chrono::Utc>>,
    /// Answer as of this position (a replay of the log).
    at_position: Option<u64>,
}

/// Lists users, in id order, with cursor paging.
pub async fn list(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<Json<Page<User>>, ApiError> {
    s.reach(q.min_position).await?;
    let status = q.status.map(StatusFilter::status);
    let needle = q.q.as_deref().map(str::to_lowercase);
    let view = s.projections_at(&who, q.at, q.at_position).await?;
    let p: &Projections = &view;
    let keep = |u: &idledger_projections::UserView| {
        q.domain.is_none_or(|d| u.domain_id == DomainId(d))
            && status.is_none_or(|st| u.status == st)
            && (q.include_deleted
                || status == Some(UserStatus::Deleted)
                || u.status != UserStatus::Deleted)
    };
    let after = q.after.map(UserId);
    let (items, next) = if let Some(needle) = &needle {
        // A search may match few users anywhere: one pass over the name index beats the
        // id-order walk to the end (see `Users::search`).
        let limit = super::page_limit(q.limit)?;
        super::page_of(
            p.users.search(after, limit + 1, needle, keep).into_iter(),
            Some(limit),
            |u| u.id,
        )?
    } else {
        super::page_of(
            p.users.iter_after(after).filter(|u| keep(u)),
            q.limit,
            |u| u.id,
        )?
    };
    let items = items
        .into_iter()
        .map(|u| {
            if view.is_past() {
                User::as_in(p, u)
            } else {
                User::live(&s, p, u)
            }
        })
        .collect();
    Ok(page(items, next))
}

/// `GET /v1/users/{id}` parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OneQuery {
    /// Wait (briefly) until the projections include this position.
    min_position: Option<u64>,
    /// Answer as of this time (a replay of the log).
    at: Option<chrono::DateTime<chrono::Utc>>,
    /// Answer as of this position (a replay of the log).
    at_position: Option<u64>,
}

/// One user.
pub async fn get_one(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<OneQuery>,
) -> Result<Json<User>, ApiError> {
    s.reach(q.min_position).await?;
    let p = s.user_at(&who, UserId(id), q.at, q.at_position).await?;
    let answer = p.users.get(UserId(id)).map(|u| {
        Json(if p.is_past() {
            User::as_in(&p, u)
        } else {
            User::live(&s, &p, u)
        })
    });
    answer.ok_or_else(|| ApiError::NotFound("user".into()))
}

/// `GET /v1/users/{id}/events` parameters.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// From this stream version (the `next` of the page before).
    from_version: Option<u64>,
    /// At most this many (1 to 10000, default 1000).
    limit: Option<usize>,
    /// Wait (briefly) until the projections include this position.
    min_position: Option<u64>,
}

/// The user's own events, as `idledger log` shows them.
pub async fn events(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Json<Page<EnvelopeView>>, ApiError> {
    let limit = q.limit.unwrap_or(1000);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest("limit: 1 to 10000".into()));
    }
    s.reach(q.min_position).await?;
    let stream = StreamId::user(UserId(id));
    let version = s.engine.log.stream_version(&stream);
    if version == 0 {
        return Err(ApiError::NotFound("user".into()));
    }
    // Past the next version to come the cursor names nothing a page gave out.
    if q.from_version
        .is_some_and(|v| v > version.saturating_add(1))
    {
        return Err(ApiError::BadRequest(format!(
            "from_version: the user's events end at version {version}"
        )));
    }
    let from = q.from_version.unwrap_or(1).max(1);
    let envs = s.engine.log.read_stream(&stream, from, limit + 1)?;
    let next = (envs.len() > limit).then(|| envs[limit].version.to_string());
    Ok(page(
        envs.iter().take(limit).map(|e| e.view()).collect(),
        next,
    ))
}

/// `PATCH /v1/users/{id}` body: the per-user SSO override (`null` clears it).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// The override; null falls back to the settings applied at import.
    #[schema(value_type = Option<SsoSettings>, required = true)]
    #[serde(default, deserialize_with = "crate::json_fields::present")]
    sso_override: Option<Option<SsoSettings>>,
}

async fn run(
    s: &AppState,
    who: &Principal,
    id: uuid::Uuid,
    c: UserCommand,
) -> Result<Json<User>, ApiError> {
    run_with(s, who, id, c, None).await
}

/// [`run`], for a command whose decision needs to know who else holds `key`.
async fn run_with(
    s: &AppState,
    who: &Principal,
    id: uuid::Uuid,
    c: UserCommand,
    key: Option<&KeyId>,
) -> Result<Json<User>, ApiError> {
    let user = UserId(id);
    let outside = {
        let p = s.engine.projector.read();
        Outside {
            domain_removed: p
                .users
                .get(user)
                .and_then(|u| p.domains.get(u.domain_id))
                .is_some_and(|d| d.removed),
            key_held_by: key.and_then(|key| {
                p.users
                    .key_holders(key)
                    .find(|u| u.id != user && u.status != UserStatus::Deleted)
                    .map(|u| u.id)
            }),
        }
    };
    let position = s
        .command(&StreamId::user(user), &who.actor(), evolve, |st| {
            decide_with(st, c.clone(), &outside)
        })
        .await?;
    s.reach(Some(position)).await?;
    let p = s.engine.projector.read();
    let mut body = p
        .users
        .get(user)
        .map(|u| User::live(s, &p, u))
        .ok_or_else(|| ApiError::NotFound("user".into()))?;
    body.position = Some(position);
    Ok(Json(body))
}

/// Sets or clears the SSO override.
pub async fn patch(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(b): ApiJson<UserPatch>,
) -> Result<Json<User>, ApiError> {
    // An empty patch says nothing: it must not read as "clear the override".
    let sso = b.sso_override.ok_or_else(|| {
        ApiError::Unprocessable("sso_override: required (null clears the override)".into())
    })?;
    run(&s, &who, id, UserCommand::SetSsoOverride(sso)).await
}

/// Reactivates a deactivated user.
pub async fn activate(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<User>, ApiError> {
    run(&s, &who, id, UserCommand::Activate).await
}

/// Deactivates an active user.
pub async fn deactivate(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<User>, ApiError> {
    run(&s, &who, id, UserCommand::Deactivate).await
}

/// `PUT /v1/users/{id}/key` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyBody {
    /// The hardware key's serial (1 to 128 characters; one live user per key).
    key_id: String,
}

/// Assigns a hardware key (one key serves one live user).
pub async fn put_key(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(b): ApiJson<KeyBody>,
) -> Result<Json<User>, ApiError> {
    // An empty id stays the domain rule's 422; hostile text is refused here.
    super::error::free_text("key_id", &b.key_id, 0, 128)?;
    let key = KeyId(b.key_id);
    // Assignments are checked and appended one at a time, so two admins cannot give one key
    // to two users.
    s.clone()
        .in_turn(&s.key_assignments, move |s| async move {
            let write = KeyWriteId(uuid::Uuid::now_v7());
            let c = UserCommand::AssignKey {
                key: key.clone(),
                write,
            };
            run_with(&s, &who, id, c, Some(&key)).await
        })
        .await
}

/// Queues the user's current password for their key again: after the agent could not
/// write it, or the key was reset.
pub async fn write_key_again(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<User>, ApiError> {
    let write = KeyWriteId(uuid::Uuid::now_v7());
    run(&s, &who, id, UserCommand::WriteKeyAgain { write }).await
}

/// Lifts the user's sign-in locks.
pub async fn unlock_sign_in(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<User>, ApiError> {
    run(&s, &who, id, UserCommand::UnlockSignIn { at: Utc::now() }).await
}

/// Takes the user's hardware key away.
pub async fn delete_key(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<User>, ApiError> {
    run(&s, &who, id, UserCommand::UnassignKey).await
}
