//! Rotation over the API: manual rotation, password history, the upcoming schedule,
//! break-glass reveal, and the agents' key writes. A password leaves the engine only in
//! the answers of `reveal` and `GET /v1/agent/key-writes`, each time after the event that
//! records it is durable.

use super::auth::Principal;
use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, IdPath};
use super::{page, page_of, AppState, Consistency, Page};
use crate::rotation::{ManualStart, RotationError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::decide::user::{decide, evolve, UserCommand, WriteOutcome};
use idledger_domain::{KeyWriteId, KeyWriteState, RotationId, RotationReason, StreamId, UserId};
use idledger_projections::{Projections, RotationOutcome, RotationView, UserStatus, UserView};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

impl From<RotationError> for ApiError {
    fn from(e: RotationError) -> Self {
        match e {
            RotationError::Rejected(r) => r.into(),
            RotationError::NoCredentials(m) => ApiError::Conflict(m),
            RotationError::Append(a) => a.into(),
            RotationError::NotReached(n) => ApiError::Timeout(n.to_string()),
            RotationError::Stopping | RotationError::Throttled(_) => {
                ApiError::Unavailable(e.to_string())
            }
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
        &*s.engine.log,
        &StreamId::user(user),
        &who.actor(),
        correlation,
        evolve,
        |st| decide(st, command.clone()),
    )
    .await
}

/// `POST /v1/users/{id}/rotate` answer: the rotation started, or when it will run.
#[derive(Serialize, ToSchema)]
pub struct RotateAccepted {
    /// The rotation started now; `null` when deferred.
    #[schema(value_type = Option<uuid::Uuid>)]
    rotation_id: Option<RotationId>,
    /// When a deferred rotation is expected to start (after an uncertainty window, or
    /// once an earlier rotation's outcome is settled); `null` when started now.
    deferred_until: Option<DateTime<Utc>>,
    /// The position of the event recording it.
    position: u64,
}

/// Starts a rotation now (202 with its id), or, when the rules do not allow a new
/// password yet, records the request (202 with `deferred_until`).
pub async fn rotate(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<RotateAccepted>), ApiError> {
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
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Page size, 1 to 1000 (100).
    limit: Option<usize>,
    /// The cursor `next` of the previous page.
    after: Option<uuid::Uuid>,
    /// `oldest` first (the default) or `newest` first.
    order: Option<super::Order>,
    /// Wait (bounded) until the projections include this position.
    min_position: Option<u64>,
    /// The history as it stood at this time (a replay of the log): later rotations left
    /// out, one then in flight as it was.
    at: Option<DateTime<Utc>>,
    /// The history as it stood at this log position.
    at_position: Option<u64>,
}

/// One rotation of a user's password. Never the password.
#[derive(Serialize, ToSchema)]
pub struct PasswordChange {
    rotation_id: uuid::Uuid,
    reason: RotationReason,
    /// Who asked for it (`scheduler:<domain>`, `admin:<token>` …).
    #[schema(value_type = String)]
    actor: idledger_domain::Actor,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: RotationOutcome,
    /// Attempts after the first.
    retries: u32,
    /// Graph's error code of a refusal.
    graph_code: Option<String>,
    error: Option<String>,
    /// Its password is the user's current one.
    current: bool,
    key_write_id: Option<uuid::Uuid>,
    key_write_state: Option<KeyWriteState>,
    /// How often its password was revealed.
    reveals: u32,
}

/// Every rotation of the user, oldest first, paged: times, reason, outcome, Graph's code,
/// actor, key-write state. Never a password.
pub async fn history(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<Page<PasswordChange>>, ApiError> {
    s.reach(q.min_position).await?;
    let user = UserId(id);
    let p = s.user_at(&who, user, q.at, q.at_position).await?;
    let u = known_user(&p, user)?;
    // Oldest first is log order. The cursor is the previous page's last rotation, found
    // in that order: ids (UUIDv7) follow the clock, which may have stepped back between
    // two rotations, so they are no order to page by.
    let mut rotations: Box<dyn Iterator<Item = &RotationView>> = match q.order.unwrap_or_default() {
        super::Order::Oldest => Box::new(p.rotations.of_user(user)),
        super::Order::Newest => Box::new(p.rotations.of_user(user).rev()),
    };
    if let Some(a) = q.after {
        if !rotations.any(|r| r.rotation_id.0 == a) {
            return Err(ApiError::BadRequest(format!(
                "after: {a} is no rotation of this user"
            )));
        }
    }
    let (rotations, next) = page_of(rotations, q.limit, |r| r.rotation_id)?;
    let items = rotations
        .into_iter()
        .map(|r| PasswordChange::of(u, r))
        .collect();
    Ok(page(items, next))
}

/// One rotation of the user (what a console polls after "Rotate now").
pub async fn one_change(
    State(s): State<AppState>,
    ApiPath((id, rotation)): ApiPath<(uuid::Uuid, uuid::Uuid)>,
    ApiQuery(q): ApiQuery<Consistency>,
) -> Result<Json<PasswordChange>, ApiError> {
    s.reach(q.min_position).await?;
    let p = s.engine.projector.read();
    let user = UserId(id);
    let u = known_user(&p, user)?;
    p.rotations
        .get(RotationId(rotation))
        .filter(|r| r.user_id == user)
        .map(|r| Json(PasswordChange::of(u, r)))
        .ok_or_else(|| ApiError::NotFound("rotation".into()))
}

fn known_user(p: &Projections, user: UserId) -> Result<&UserView, ApiError> {
    p.users
        .get(user)
        .ok_or_else(|| ApiError::NotFound("user".into()))
}

impl PasswordChange {
    fn of(u: &UserView, r: &RotationView) -> Self {
        PasswordChange {
            rotation_id: r.rotation_id.0,
            reason: r.reason,
            actor: r.actor.clone(),
            started_at: r.started_at,
            finished_at: r.finished_at,
            outcome: r.outcome,
            retries: r.retries,
            graph_code: r.graph_code.clone(),
            error: r.error.clone(),
            current: u.current_rotation == Some(r.rotation_id),
            key_write_id: r.key_write_id.map(|w| w.0),
            key_write_state: r.key_write_state,
            reveals: r.reveals,
        }
    }
}

/// `POST /v1/users/{id}/password/reveal` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevealBody {
    /// Why the password is needed (recorded; 1 to 1000 characters, no control characters).
    reason: String,
}

/// A password and the rotation that made it.
#[derive(Serialize, ToSchema)]
pub struct RevealedPassword {
    rotation_id: uuid::Uuid,
    password: String,
}

/// The answer of a reveal: the current password and, while a rotation is open (its
/// password may be landing in Entra ID now, or its outcome is unknown), the candidate that
/// may have become current.
#[derive(Serialize, ToSchema)]
pub struct Revealed {
    user_id: uuid::Uuid,
    /// The rotation whose password is current.
    rotation_id: Option<uuid::Uuid>,
    /// The current password.
    password: Option<String>,
    unconfirmed_candidate: Option<RevealedPassword>,
    /// The position of the reveal's record.
    position: u64,
}

/// Why a user's sealed password no key opens: shredded as they were deleted since the
/// projections were read (the deletion is appended before its shred), or a data dir
/// restored from a backup whose key store was read after a shred.
fn key_destroyed(s: &AppState, user: UserId) -> ApiError {
    let deleted = s
        .engine
        .projector
        .read()
        .users
        .get(user)
        .is_none_or(|u| u.status == UserStatus::Deleted);
    match deleted {
        true => ApiError::NotFound("user".into()),
        false => ApiError::Conflict(
            "the user's data key was destroyed: this password can no longer be read; \
             rotate the user to set one the engine holds"
                .into(),
        ),
    }
}

/// Break-glass: records the reveal with its reason, then answers the current password
/// (and, while a rotation is open, that rotation's candidate too).
pub async fn reveal(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(b): ApiJson<RevealBody>,
) -> Result<Json<Revealed>, ApiError> {
    // Bad input is refused before anything is looked at.
    idledger_domain::decide::user::reveal_reason(&b.reason)?;
    // What the log says now, not what the projections had folded: a rotation that just
    // started or succeeded changes which passwords Entra ID may hold.
    s.reach(Some(s.engine.log.head().position)).await?;
    // The access check read projections that may not have folded a revocation yet; they
    // have now. As for agents: no password leaves after its token was revoked.
    who.live(&s)?;
    let user = UserId(id);
    let stream = StreamId::user(user);
    let (current, candidate) = {
        let p = s.engine.projector.read();
        let u = p
            .users
            .get(user)
            .filter(|u| u.status != UserStatus::Deleted)
            .ok_or_else(|| ApiError::NotFound("user".into()))?;
        let current = u
            .current_rotation
            .and_then(|r| p.rotations.get(r))
            .map(|r| (r.rotation_id, r.sealed_password.clone()));
        // The open rotation's password: durable before Graph is asked to set it, so an
        // attempt may be landing at this moment.
        let candidate = u
            .password
            .possible_candidate()
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
    let candidate_id = candidate
        .as_ref()
        .map(|(id, _)| *id)
        .filter(|id| *id != revealed);
    let open = |c: Option<(RotationId, idledger_domain::SealedSecret)>| {
        c.map(|(id, sealed)| s.engine.keyring.unseal(&stream, &sealed).map(|p| (id, p)))
            .transpose()
            .map_err(|e| match e {
                crate::secrets::SecretsError::MissingKey(_) => key_destroyed(&s, user),
                e => ApiError::from(e),
            })
    };
    let password = open(current)?;
    let candidate = open(candidate)?;
    // Recorded (durably) before the password leaves in the answer.
    let command = UserCommand::RecordReveal {
        rotation: revealed,
        candidate: candidate_id,
        reason: b.reason,
    };
    let position = decide_for(&s, user, &who, Some(revealed.0), command).await?;
    // On the device, whatever the log's durability: a reveal a power loss forgot would
    // take its audit record and the rotation after it along.
    crate::store::EventLog::settle(&*s.engine.log).await?;
    who.live(&s)?;
    Ok(Json(Revealed {
        user_id: user.0,
        rotation_id: password.as_ref().map(|(id, _)| id.0),
        password: password.as_ref().map(|(_, p)| p.expose().to_owned()),
        unconfirmed_candidate: candidate.as_ref().map(|(id, p)| RevealedPassword {
            rotation_id: id.0,
            password: p.expose().to_owned(),
        }),
        position,
    }))
}

/// `GET /v1/rotations/upcoming` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UpcomingQuery {
    /// How far ahead, 0 to 3650 days (7).
    within_days: Option<u32>,
    /// Page size, 1 to 1000 (100).
    limit: Option<usize>,
    /// The cursor `next` of the previous page. Later pages compute due times as of the
    /// first page's time, so a due time that follows the clock (overdue, requested) does
    /// not move between pages; a cursor older than a day is refused.
    after: Option<String>,
    /// Wait (bounded) until the projections include this position.
    min_position: Option<u64>,
}

/// A rotation due.
#[derive(Serialize, ToSchema)]
pub struct DueRotation {
    user_id: uuid::Uuid,
    domain_id: uuid::Uuid,
    user_principal_name: String,
    /// When it is expected to start.
    due_at: DateTime<Utc>,
    reason: RotationReason,
}

/// Who rotates when, within `within_days` (default 7), soonest first.
pub async fn upcoming(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<UpcomingQuery>,
) -> Result<Json<Page<DueRotation>>, ApiError> {
    let days = q.within_days.unwrap_or(7);
    if days > 3650 {
        return Err(ApiError::BadRequest("within_days: 0 to 3650".into()));
    }
    let after = q
        .after
        .as_deref()
        .map(|a| UpcomingCursor::parse(a, Utc::now()))
        .transpose()?;
    s.reach(q.min_position).await?;
    // To the microsecond, as the cursor keeps it: every page sees the same due times.
    let now = after.as_ref().map_or_else(
        || {
            let now = Utc::now();
            DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
        },
        |c| c.as_of,
    );
    let until = now + chrono::Duration::days(i64::from(days));
    let p = s.engine.projector.read();
    let mut items: Vec<DueRotation> = p
        .users
        .all()
        .filter_map(|u| {
            let (at, reason) = s.rotation.next_due(&p, u, now)?;
            (at <= until).then(|| DueRotation {
                user_id: u.id.0,
                domain_id: u.domain_id.0,
                user_principal_name: u.attributes.user_principal_name.clone(),
                due_at: at,
                reason,
            })
        })
        .collect();
    items.sort_by_key(|x| (x.due_at, x.user_id));
    let (items, next) = page_of(
        items.into_iter().filter(|x| {
            after
                .as_ref()
                .is_none_or(|c| (x.due_at, x.user_id) > c.place)
        }),
        q.limit,
        |x| UpcomingCursor {
            as_of: now,
            place: (x.due_at, x.user_id),
        },
    )?;
    Ok(page(items, next))
}

/// Where a page of the schedule ended: when the first page was computed, and the last
/// item's place in the order (due time, then user). By place, not by count: a user whose
/// rotation starts or ends between two pages moves the others' indexes, not their places.
struct UpcomingCursor {
    as_of: DateTime<Utc>,
    place: (DateTime<Utc>, uuid::Uuid),
}

impl std::fmt::Display for UpcomingCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (due, user) = self.place;
        write!(
            f,
            "{}.{}.{}",
            self.as_of.timestamp_micros(),
            due.timestamp_micros(),
            user.simple()
        )
    }
}

impl UpcomingCursor {
    /// Reads a cursor this route gave within the last day (`now`).
    fn parse(text: &str, now: DateTime<Utc>) -> Result<Self, ApiError> {
        let bad = || ApiError::BadRequest("after: not a cursor this route gave".into());
        let time = |t: &str| {
            t.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_micros)
                .ok_or_else(bad)
        };
        let mut parts = text.split('.');
        let (Some(as_of), Some(due), Some(user), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let cursor = UpcomingCursor {
            as_of: time(as_of)?,
            place: (time(due)?, user.parse().map_err(|_| bad())?),
        };
        if cursor.as_of > now || now - cursor.as_of > chrono::Duration::days(1) {
            return Err(ApiError::BadRequest(
                "after: the cursor is over a day old (or from the future): start again".into(),
            ));
        }
        Ok(cursor)
    }
}

/// `GET /v1/rotations/recent` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecentQuery {
    /// Page size, 1 to 1000 (100).
    limit: Option<usize>,
    /// The cursor `next` of the previous page.
    after: Option<uuid::Uuid>,
    /// Only rotations that ended so (`failed`: refused by Graph).
    #[param(value_type = Option<RotationOutcome>)]
    outcome: Option<OutcomeFilter>,
    /// Only this domain's.
    domain_id: Option<uuid::Uuid>,
    /// Wait (bounded) until the projections include this position.
    min_position: Option<u64>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OutcomeFilter {
    Pending,
    Succeeded,
    Failed,
    Unknown,
}

impl OutcomeFilter {
    fn admits(self, outcome: RotationOutcome) -> bool {
        matches!(
            (self, outcome),
            (OutcomeFilter::Pending, RotationOutcome::Pending)
                | (OutcomeFilter::Succeeded, RotationOutcome::Succeeded)
                | (OutcomeFilter::Failed, RotationOutcome::Failed)
                | (OutcomeFilter::Unknown, RotationOutcome::Unknown)
        )
    }
}

/// A rotation of anyone's password, with whose it is. Never the password.
#[derive(Serialize, ToSchema)]
pub struct RecentRotation {
    user_id: uuid::Uuid,
    user_principal_name: String,
    domain_id: Option<uuid::Uuid>,
    rotation: PasswordChange,
}

/// Every rotation, the last started first, paged: outcomes, and Graph's refusals with
/// their code and reason. Never a password.
pub async fn recent(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<RecentQuery>,
) -> Result<Json<Page<RecentRotation>>, ApiError> {
    s.reach(q.min_position).await?;
    let p = s.engine.projector.read();
    let before = match q.after {
        None => None,
        Some(a) => Some(
            p.rotations
                .get(RotationId(a))
                .map(|r| r.started_position)
                .ok_or_else(|| ApiError::BadRequest(format!("after: {a} is no rotation")))?,
        ),
    };
    let rotations = p
        .rotations
        .newest_first(before)
        .filter(|r| q.outcome.is_none_or(|o| o.admits(r.outcome)))
        .filter(|r| {
            q.domain_id
                .is_none_or(|d| r.domain_id.map(|x| x.0) == Some(d))
        })
        .filter_map(|r| Some((p.users.get(r.user_id)?, r)));
    let (rotations, next) = page_of(rotations, q.limit, |(_, r)| r.rotation_id)?;
    let items = rotations
        .into_iter()
        .map(|(u, r)| RecentRotation {
            user_id: u.id.0,
            user_principal_name: u.attributes.user_principal_name.clone(),
            domain_id: r.domain_id.map(|d| d.0),
            rotation: PasswordChange::of(u, r),
        })
        .collect();
    Ok(page(items, next))
}

/// The agent's pending key writes, oldest first, with the passwords. Each delivery is
/// recorded before the answer leaves.
pub async fn key_writes(
    State(s): State<AppState>,
    method: axum::http::Method,
    who: Principal,
    ApiQuery(q): ApiQuery<AgentQuery>,
) -> Result<Json<Page<KeyWrite>>, ApiError> {
    // Axum answers HEAD with the GET handler and drops the body: the deliveries would be
    // recorded and the writes leased while no agent ever got the passwords.
    if method == axum::http::Method::HEAD {
        return Err(ApiError::MethodNotAllowed);
    }
    let lease = chrono::Duration::from_std(s.agent_lease).unwrap_or(chrono::Duration::MAX);
    let (writes, mut more) = {
        let p = s.engine.projector.read();
        // A cursor names one of the agent's own writes; any other is unknown to it.
        let after = match q.after {
            None => 0,
            Some(a) => p
                .key_writes
                .get(KeyWriteId(a))
                .filter(|w| who.key_ids.contains(&w.key_id))
                .map(|w| w.queued_position)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("after: {a} is no key write of this agent"))
                })?,
        };
        let deliverable = p
            .deliverable_writes(&who.key_ids, Utc::now(), lease)
            .filter(|w| w.queued_position > after)
            .filter_map(|w| {
                let u = p.users.get(w.user_id)?;
                let r = p.rotations.get(w.rotation_id)?;
                Some((
                    w.id,
                    w.deliveries,
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
    for (id, seen_deliveries, user, key, rotation, upn, name, sealed) in writes {
        // Each delivery is a password leaving: a token revoked while the page is made gets
        // none (what this page recorded is leased, and offered again when the lease ends).
        who.live(&s)?;
        // Unsealed first: a user deleted meanwhile has no data key left (nor a write
        // owed), and a write whose password cannot be had is not recorded as handed out.
        let password = match s.engine.keyring.unseal(&StreamId::user(user), &sealed) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, key_write = %id.0, "a key write's password could not be unsealed; left out");
                continue;
            }
        };
        let deliver = UserCommand::DeliverWrite {
            write: id,
            keys: who.key_ids.clone(),
            seen_deliveries,
        };
        // Recorded before the password leaves; a write no longer owed (the key moved on
        // meanwhile) or handed to a racing request of the agent's is left out.
        match decide_for(&s, user, &who, Some(rotation.0), deliver).await {
            Ok(_) => {}
            Err(crate::store::CommandError::Rejected(_)) => continue,
            // The writes recorded so far still go out (held back, they would wait out
            // their lease for nothing), and the next page starts after the last of them.
            Err(e) if !items.is_empty() => {
                tracing::warn!(error = %e, "a key write's delivery was not recorded; the page ends before it");
                more = items.last().map(|w: &KeyWrite| w.id.to_string());
                break;
            }
            Err(e) => return Err(e.into()),
        }
        items.push(KeyWrite {
            id: id.0,
            key_id: key.0,
            user_principal_name: upn,
            display_name: name,
            password: password.expose().to_owned(),
            rotation_id: rotation.0,
            delivery: seen_deliveries.saturating_add(1),
        });
    }
    // The deliveries on the device before a password leaves, whatever the log's
    // durability (one sync for the page).
    if !items.is_empty() {
        crate::store::EventLog::settle(&*s.engine.log).await?;
    }
    // A revocation confirmed while the last delivery was being recorded ends this answer
    // too: no password leaves after its token was revoked.
    who.live(&s)?;
    Ok(page(items, more))
}

/// `GET /v1/agent/key-writes` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AgentQuery {
    /// Page size, 1 to 1000 (100); the rest come on the next call.
    limit: Option<usize>,
    /// The cursor `next` of the previous page: writes queued after that one.
    after: Option<uuid::Uuid>,
}

/// A password to copy onto a key.
#[derive(Serialize, ToSchema)]
pub struct KeyWrite {
    /// Acknowledge with this id.
    id: uuid::Uuid,
    /// The key to write.
    key_id: String,
    user_principal_name: String,
    display_name: String,
    password: String,
    rotation_id: uuid::Uuid,
    /// Which delivery of the write this is (1 for the first): acknowledge with it, so a
    /// failure reported for an earlier delivery, handed out again since, is refused.
    delivery: u32,
}

/// `POST /v1/agent/key-writes/{id}/ack` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    result: AckResult,
    /// What went wrong, for a failed write.
    #[serde(default)]
    detail: String,
    /// The `delivery` of the write as it was handed out; a failure reported for an
    /// earlier delivery than the latest is refused (409). Without it, any delivery's
    /// answer counts.
    #[serde(default)]
    delivery: Option<u32>,
}

/// An acknowledgement recorded.
#[derive(Serialize, ToSchema)]
pub struct Acknowledged {
    /// The key write.
    id: uuid::Uuid,
    /// The position of its record.
    position: u64,
}

/// What the agent did with a write.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, ToSchema)]
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
) -> Result<Json<Acknowledged>, ApiError> {
    let id = KeyWriteId(id);
    // Whether the write was superseded is read from the projections: caught up first.
    s.reach(Some(s.engine.log.head().position)).await?;
    let user = s
        .engine
        .projector
        .read()
        .key_writes
        .get(id)
        .filter(|w| who.key_ids.contains(&w.key_id))
        .map(|w| {
            let superseded = w.state == KeyWriteState::Superseded;
            (w.user_id, w.rotation_id, w.key_id.clone(), superseded)
        });
    // Another key's write is not found: an agent learns nothing of other keys.
    let (user, rotation, key, superseded) =
        user.ok_or_else(|| ApiError::NotFound("key write".into()))?;
    let landed_late = superseded && b.result == AckResult::Written;
    let outcome = match b.result {
        AckResult::Written => WriteOutcome::Written,
        AckResult::Failed => WriteOutcome::Failed(b.detail),
    };
    let command = UserCommand::AcknowledgeWrite {
        write: id,
        keys: who.key_ids.clone(),
        outcome,
        delivery: b.delivery,
        rewrite: KeyWriteId(uuid::Uuid::new_v4()),
    };
    let mut position = decide_for(&s, user, &who, Some(rotation.0), command).await?;
    if landed_late {
        // The key may have changed hands since the write was superseded: its holder now
        // has another user's password on it, and is owed their own again. Asked again
        // on the agent's retry too (this second append may not have happened), which
        // queues nothing while a write of theirs waits.
        let holder = s
            .engine
            .projector
            .read()
            .users
            .key_holders(&key)
            .find(|u| u.id != user)
            .map(|u| u.id);
        if let Some(holder) = holder {
            let rewrite = UserCommand::RewriteKey {
                key,
                write: KeyWriteId(uuid::Uuid::now_v7()),
            };
            position = decide_for(&s, holder, &who, None, rewrite).await?;
        }
    }
    Ok(Json(Acknowledged { id: id.0, position }))
}
