//! Rotation over the API: manual rotation, password history, the upcoming schedule,
//! break-glass reveal, and the agents' key writes. A password leaves the engine only in
//! the answers of `reveal` and `GET /v1/agent/key-writes`, each time after the event that
//! records it is durable.

use super::auth::Principal;
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::{page, page_of, AppState};
use crate::rotation::{ManualStart, RotationError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::decide::user::{decide, evolve, UserCommand, WriteOutcome};
use idledger_domain::{KeyWriteId, Role, RotationId, StreamId, UserId};
use idledger_projections::UserStatus;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

impl From<RotationError> for ApiError {
    fn from(e: RotationError) -> Self {
        match e {
            RotationError::Rejected(r) => r.into(),
            RotationError::NoCredentials(m) => ApiError::Conflict(m),
            RotationError::Append(a) => a.into(),
            RotationError::NotReached(n) => ApiError::Timeout(n.to_string()),
            RotationError::Stopping => ApiError::Unavailable(e.to_string()),
            RotationError::Secrets(_) => ApiError::Internal(e.to_string()),
        }
    }
}

/// The command path for a user's stream, with `correlation` (a rotation's id) on the events.
async fn decide_for(
    s: &AppState,
    user: UserId,
    who: &Principal,
    correlation: Option<uuid::Uuid>,
    command: UserCommand,
) -> Result<u64, crate::store::CommandError> {
    crate::store::decide_and_append(
        &*s.log,
        &StreamId::user(user),
        &who.actor(),
        correlation,
        evolve,
        |st| decide(st, command.clone()),
    )
    .await
}

/// `POST /v1/users/{id}/rotate` answer: the rotation started, or when it will run.
#[derive(Serialize)]
pub struct RotateAccepted {
    /// The rotation started now; `null` when deferred.
    rotation_id: Option<RotationId>,
    /// When a deferred rotation is expected to start (after an uncertainty window, or
    /// once an earlier rotation's outcome is settled); `null` when started now.
    deferred_until: Option<DateTime<Utc>>,
    /// Position of the event recording it.
    position: u64,
}

/// Starts a rotation now (202 with its id), or, when the rules do not allow a new
/// password yet, records the request (202 with `deferred_until`).
pub async fn rotate(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    let answer = match s.rotation.start_manual(UserId(id), who.actor()).await? {
        ManualStart::Started {
            rotation_id,
            position,
        } => RotateAccepted {
            rotation_id: Some(rotation_id),
            deferred_until: None,
            position,
        },
        ManualStart::Deferred { until, position } => RotateAccepted {
            rotation_id: None,
            deferred_until: Some(until),
            position,
        },
    };
    s.reach(Some(answer.position)).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)))
}

/// `GET /v1/users/{id}/password-history` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    limit: Option<usize>,
    after: Option<uuid::Uuid>,
    min_position: Option<u64>,
}

/// Every rotation of the user, oldest first, paged: times, reason, outcome, Graph's code,
/// actor, key-write state. Never a password.
pub async fn history(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    s.reach(q.min_position).await?;
    let p = s.projector.read();
    let user = UserId(id);
    let u = p
        .users
        .get(user)
        .ok_or_else(|| ApiError::NotFound("user".into()))?;
    // Rotation ids are UUIDv7: oldest first is ascending id order.
    let rotations = p
        .rotations
        .of_user(user)
        .filter(|r| q.after.is_none_or(|a| r.rotation_id.0 > a));
    let (rotations, next) = page_of(rotations, q.limit, |r| r.rotation_id)?;
    let items: Vec<Value> = rotations
        .into_iter()
        .map(|r| {
            json!({
                "rotation_id": r.rotation_id,
                "reason": r.reason,
                "actor": r.actor,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "outcome": r.outcome,
                "retries": r.retries,
                "graph_code": r.graph_code,
                "error": r.error,
                "current": u.current_rotation == Some(r.rotation_id),
                "key_write_id": r.key_write_id,
                "key_write_state": r.key_write_state,
                "reveals": r.reveals,
            })
        })
        .collect();
    Ok(page(items, next))
}

/// `POST /v1/users/{id}/password/reveal` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealBody {
    reason: String,
}

/// Break-glass: records the reveal with its reason, then answers the current password
/// (and, when the last rotation's outcome is unknown, that rotation's candidate too).
pub async fn reveal(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(b): ApiJson<RevealBody>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    // Bad input is refused before anything is looked at.
    idledger_domain::decide::user::reveal_reason(&b.reason)?;
    let user = UserId(id);
    let stream = StreamId::user(user);
    let (current, candidate) = {
        let p = s.projector.read();
        let u = p
            .users
            .get(user)
            .filter(|u| u.status != UserStatus::Deleted)
            .ok_or_else(|| ApiError::NotFound("user".into()))?;
        let current = u
            .current_rotation
            .and_then(|r| p.rotations.get(r))
            .map(|r| (r.rotation_id, r.sealed_password.clone()));
        // The open rotation's password once an attempt of it may have reached Graph.
        let candidate = u
            .password
            .unconfirmed_candidate()
            .and_then(|r| p.rotations.get(r))
            .map(|r| (r.rotation_id, r.sealed_password.clone()));
        (current, candidate)
    };
    let Some((revealed, _)) = current.as_ref().or(candidate.as_ref()) else {
        return Err(ApiError::Conflict(
            "the engine holds no password of this user yet".into(),
        ));
    };
    let revealed = *revealed;
    let open = |c: Option<(RotationId, idledger_domain::SealedSecret)>| {
        c.map(|(id, sealed)| s.keyring.unseal(&stream, &sealed).map(|p| (id, p)))
            .transpose()
    };
    let password = open(current)?;
    let candidate = open(candidate)?;
    // Recorded (durably) before the password leaves in the answer.
    let command = UserCommand::RecordReveal {
        rotation: revealed,
        reason: b.reason,
    };
    let position = decide_for(&s, user, &who, Some(revealed.0), command).await?;
    Ok(Json(json!({
        "user_id": user,
        "rotation_id": password.as_ref().map(|(id, _)| *id),
        "password": password.as_ref().map(|(_, p)| p.expose()),
        "unconfirmed_candidate": candidate.as_ref().map(|(id, p)| json!({"rotation_id": id, "password": p.expose()})),
        "position": position,
    })))
}

/// `GET /v1/rotations/upcoming` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpcomingQuery {
    within_days: Option<u32>,
    limit: Option<usize>,
    /// How many of the soonest were sent already (the list is computed afresh).
    after: Option<usize>,
    min_position: Option<u64>,
}

/// Who rotates when, within `within_days` (default 7), soonest first.
pub async fn upcoming(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<UpcomingQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    let days = q.within_days.unwrap_or(7);
    if days > 3650 {
        return Err(ApiError::BadRequest("within_days: 0 to 3650".into()));
    }
    s.reach(q.min_position).await?;
    let now = Utc::now();
    let until = now + chrono::Duration::days(i64::from(days));
    let p = s.projector.read();
    let mut items: Vec<(chrono::DateTime<Utc>, Value)> = p
        .users
        .iter_after(None)
        .filter_map(|u| {
            let (at, reason) = s.rotation.next_due(&p, u, now)?;
            (at <= until).then(|| {
                (
                    at,
                    json!({
                        "user_id": u.id,
                        "domain_id": u.domain_id,
                        "user_principal_name": u.attributes.user_principal_name,
                        "due_at": at,
                        "reason": reason,
                    }),
                )
            })
        })
        .collect();
    items.sort_by(|(a, x), (b, y)| {
        a.cmp(b)
            .then_with(|| x["user_id"].to_string().cmp(&y["user_id"].to_string()))
    });
    let skip = q.after.unwrap_or(0);
    let (items, next) = page_of(
        items.into_iter().map(|(_, v)| v).enumerate().skip(skip),
        q.limit,
        |(i, _)| i + 1,
    )?;
    Ok(page(items.into_iter().map(|(_, v)| v).collect(), next))
}

/// The agent's pending key writes, oldest first, with the passwords. Each delivery is
/// recorded before the answer leaves.
pub async fn key_writes(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<AgentQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Agent])?;
    let lease = chrono::Duration::from_std(s.agent_lease).unwrap_or(chrono::Duration::MAX);
    let (writes, more) = {
        let p = s.projector.read();
        let deliverable = p
            .deliverable_writes(&who.key_ids, Utc::now(), lease)
            .filter_map(|w| {
                let u = p.users.get(w.user_id)?;
                let r = p.rotations.get(w.rotation_id)?;
                Some((
                    w.id,
                    w.user_id,
                    w.key_id.clone(),
                    w.rotation_id,
                    u.attributes.user_principal_name.clone(),
                    u.attributes.display_name.clone(),
                    r.sealed_password.clone(),
                ))
            });
        // The rest come on the next call: what is delivered now is leased meanwhile.
        page_of(deliverable, q.limit, |w| w.0)?
    };
    let mut items = Vec::with_capacity(writes.len());
    for (id, user, key, rotation, upn, name, sealed) in writes {
        let password = s.keyring.unseal(&StreamId::user(user), &sealed)?;
        let deliver = UserCommand::DeliverWrite {
            write: id,
            keys: who.key_ids.clone(),
        };
        // Recorded before the password leaves; a write no longer owed (the key moved on
        // meanwhile) is left out.
        match decide_for(&s, user, &who, Some(rotation.0), deliver).await {
            Ok(_) => {}
            Err(crate::store::CommandError::Rejected(_)) => continue,
            Err(e) => return Err(e.into()),
        }
        items.push(json!({
            "id": id,
            "key_id": key,
            "user_principal_name": upn,
            "display_name": name,
            "password": password.expose(),
            "rotation_id": rotation,
        }));
    }
    Ok(page(items, more))
}

/// `GET /v1/agent/key-writes` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    limit: Option<usize>,
}

/// `POST /v1/agent/key-writes/{id}/ack` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    result: AckResult,
    #[serde(default)]
    detail: String,
}

/// What the agent did with a write.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AckResult {
    /// The key holds the password.
    Written,
    /// The key could not be written.
    Failed,
}

/// Records the agent's acknowledgement of one of its writes.
pub async fn ack(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(b): ApiJson<AckBody>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Agent])?;
    let id = KeyWriteId(id);
    let user = s
        .projector
        .read()
        .key_writes
        .get(id)
        .filter(|w| who.key_ids.contains(&w.key_id))
        .map(|w| (w.user_id, w.rotation_id));
    // Another key's write is not found: an agent learns nothing of other keys.
    let (user, rotation) = user.ok_or_else(|| ApiError::NotFound("key write".into()))?;
    let outcome = match b.result {
        AckResult::Written => WriteOutcome::Written,
        AckResult::Failed => WriteOutcome::Failed(b.detail),
    };
    let command = UserCommand::AcknowledgeWrite {
        write: id,
        keys: who.key_ids.clone(),
        outcome,
    };
    let position = decide_for(&s, user, &who, Some(rotation.0), command).await?;
    Ok(Json(json!({"id": id, "position": position})))
}
