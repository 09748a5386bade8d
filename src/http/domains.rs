//! `/v1/domains`: Entra tenants (admin; auditors read). The client secret is sealed the
//! moment it arrives and no response ever contains it.

use super::auth::Principal;
use super::error::{from_json, ApiError, ApiJson, ApiQuery, IdPath};
use super::schema::{reference, Components};
use super::{page, AppState, Consistency, Page};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use idledger_domain::decide::domain::{
    client_secret_ok, decide, evolve, DomainCommand, DomainState,
};
use idledger_domain::decide::user::{self, UserCommand};
use idledger_domain::{
    DataKeyId, DomainId, DomainSettings, RemovalBehavior, SealedSecret, SsoSettings, StreamId,
    UserId,
};
use idledger_projections::{DomainView, Domains};
use idledger_projections::{SyncRunStatus, UserStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, ToSchema};

use crate::json_fields::present;
use crate::secrets::Secret;

/// Settings fields shared by create and update; an absent field is left as it is, and
/// `null` clears the optional ones.
#[derive(Deserialize, Default, Clone, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// Rotate passwords every this many days (1 to 365); null turns rotation off.
    #[serde(default, deserialize_with = "present")]
    auto_password_change_days: Option<Option<u16>>,
    /// What happens to users who leave the sync group.
    removal_behavior: Option<RemovalBehavior>,
    /// The sync group's display name.
    sync_group: Option<String>,
    /// The sync group's object id (wins over the name); null: by name.
    #[serde(default, deserialize_with = "present")]
    sync_group_id: Option<Option<String>>,
    /// The rotation group's display name.
    rotation_group: Option<String>,
    /// The rotation group's object id; null: by name.
    #[serde(default, deserialize_with = "present")]
    rotation_group_id: Option<Option<String>>,
    /// Import candidates on every run.
    auto_import: Option<bool>,
    /// Minutes between scheduled runs (1 to 1440).
    sync_interval_minutes: Option<u32>,
    /// Graph's service root: https (http to loopback only). Needs `client_secret` in the
    /// same request once credentials are saved.
    graph_url: Option<String>,
    /// The identity platform's authority: https (http to loopback only). Needs
    /// `client_secret` in the same request once credentials are saved.
    authority_url: Option<String>,
    /// The deletion guard's threshold.
    deletion_threshold: Option<u32>,
    /// Generated passwords' length (16 to 256).
    password_length: Option<u16>,
    /// Hours after a reveal before the next rotation (0 to 8760).
    rotate_after_reveal_hours: Option<u32>,
    /// Rotations at once (1 to 64).
    max_concurrent_rotations: Option<u32>,
}

impl SettingsPatch {
    fn apply(self, mut s: DomainSettings) -> DomainSettings {
        if let Some(v) = self.auto_password_change_days {
            s.auto_password_change_days = v;
        }
        if let Some(v) = self.removal_behavior {
            s.removal_behavior = v;
        }
        if let Some(v) = self.sync_group {
            s.sync_group.display_name = v;
        }
        // Graph writes object ids in lower case; an admin may paste them in any.
        if let Some(v) = self.sync_group_id {
            s.sync_group.object_id = v.map(|id| id.trim().to_ascii_lowercase());
        }
        if let Some(v) = self.rotation_group {
            s.rotation_group.display_name = v;
        }
        if let Some(v) = self.rotation_group_id {
            s.rotation_group.object_id = v.map(|id| id.trim().to_ascii_lowercase());
        }
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { s.$f = v; } )* };
        }
        set!(
            auto_import,
            sync_interval_minutes,
            graph_url,
            authority_url,
            deletion_threshold,
            password_length,
            rotate_after_reveal_hours,
            max_concurrent_rotations
        );
        s
    }
}

/// `POST /v1/domains` body: the domain name, optional credentials, and settings. Read in
/// two parts rather than with `#[serde(flatten)]`, which loses the path of a failing field.
pub struct NewDomain {
    domain: String,
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
    settings: SettingsPatch,
}

/// The identity part of [`NewDomain`].
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewDomainHead {
    /// The tenant's domain name, e.g. `contoso.onmicrosoft.com`.
    domain: String,
    /// Entra tenant id (with `client_id` and `client_secret`, or none of the three).
    tenant_id: Option<String>,
    /// The app registration's client id.
    client_id: Option<String>,
    /// The app's client secret: sealed at once, never shown again.
    #[schema(value_type = Option<String>, format = Password)]
    client_secret: Option<Secret>,
}

/// The schema of `POST /v1/domains`'s body: the identity fields and the settings.
pub fn new_domain_schema(c: &mut Components) -> RefOr<Schema> {
    let head = reference::<NewDomainHead>(c);
    let settings = reference::<SettingsPatch>(c);
    all_of(&[head, settings])
}

/// The schema of `PATCH /v1/domains/{id}`'s body: settings and, to move where the secret
/// goes, the secret itself.
pub fn settings_change_schema(c: &mut Components) -> RefOr<Schema> {
    let settings = reference::<SettingsPatch>(c);
    let secret = reference::<SecretOnly>(c);
    all_of(&[settings, secret])
}

fn all_of(parts: &[RefOr<Schema>]) -> RefOr<Schema> {
    let mut all = utoipa::openapi::schema::AllOf::new();
    all.items.extend(parts.iter().cloned());
    RefOr::T(Schema::AllOf(all))
}

impl NewDomain {
    fn from_body(mut body: serde_json::Map<String, Value>) -> Result<Self, ApiError> {
        let mut head = serde_json::Map::new();
        for k in ["domain", "tenant_id", "client_id", "client_secret"] {
            if let Some(v) = body.remove(k) {
                head.insert(k.to_owned(), v);
            }
        }
        let head: NewDomainHead = from_json(Value::Object(head))?;
        Ok(NewDomain {
            domain: head.domain,
            tenant_id: head.tenant_id,
            client_id: head.client_id,
            client_secret: head.client_secret,
            settings: from_json(Value::Object(body))?,
        })
    }
}

/// `PUT /v1/domains/{id}/credentials` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Entra tenant id (a GUID).
    tenant_id: String,
    /// The app registration's client id (a GUID).
    client_id: String,
    /// The app's client secret: sealed at once, never shown again.
    #[schema(value_type = String, format = Password)]
    client_secret: Secret,
}

/// A domain as the API shows it, with its latest sync run (its error, with Graph's code,
/// stays visible until a later run succeeds). Never its client secret.
#[derive(Serialize, ToSchema)]
pub struct Domain {
    /// The domain's id.
    id: uuid::Uuid,
    /// The tenant's domain name.
    domain: String,
    /// Removed (its history stays).
    removed: bool,
    /// Rotate passwords every this many days; null: no rotation.
    auto_password_change_days: Option<u16>,
    /// What happens to users who leave the sync group.
    removal_behavior: RemovalBehavior,
    /// The sync group's display name.
    sync_group: String,
    /// Its object id: configured, or as last resolved.
    sync_group_id: Option<String>,
    /// The rotation group's display name.
    rotation_group: String,
    /// Its object id: configured, or as last resolved.
    rotation_group_id: Option<String>,
    /// Candidates are imported on every run.
    auto_import: bool,
    /// Minutes between scheduled runs.
    sync_interval_minutes: u32,
    /// Graph's service root.
    graph_url: String,
    /// The identity platform's authority.
    authority_url: String,
    /// The deletion guard's threshold.
    deletion_threshold: u32,
    /// Generated passwords' length.
    password_length: u16,
    /// Hours after a reveal before the next rotation.
    rotate_after_reveal_hours: u32,
    /// Rotations at once.
    max_concurrent_rotations: u32,
    /// SSO settings applied at import.
    sso_defaults: SsoSettings,
    /// The saved credentials, never the secret.
    credentials: Option<DomainCredentials>,
    /// A quarantined run waiting for approval (the oldest of `quarantined_runs`).
    quarantined_run: Option<uuid::Uuid>,
    /// Every quarantined run waiting for approval, or approved with removals not all
    /// carried out yet (`removals_applied` false: approving again finishes them), oldest
    /// first.
    quarantined_runs: Vec<uuid::Uuid>,
    /// A sync worker runs (credentials saved, domain not removed).
    sync_active: bool,
    /// When the worker means to start its next scheduled run (null while one runs, or
    /// when no worker runs).
    next_sync_at: Option<DateTime<Utc>>,
    /// The latest run that was not a dry run.
    last_sync: Option<LastSync>,
    /// Registered.
    created_at: DateTime<Utc>,
    /// Last changed.
    updated_at: DateTime<Utc>,
    /// Version of the domain's stream.
    version: u64,
    /// After a change: the position of its last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
}

/// A domain's saved credentials: which app, not its secret.
#[derive(Serialize, ToSchema)]
pub struct DomainCredentials {
    /// Entra tenant id.
    tenant_id: String,
    /// The app registration's client id.
    client_id: String,
    /// A secret is saved (it is never shown).
    secret_set: bool,
    /// When they were saved.
    updated_at: DateTime<Utc>,
}

/// A domain's latest sync run (not a dry run), in brief.
#[derive(Serialize, ToSchema)]
pub struct LastSync {
    /// The run this event belongs to (also the correlation id of its events).
    run_id: uuid::Uuid,
    /// Where it stands.
    status: SyncRunStatus,
    /// When it started.
    started_at: DateTime<Utc>,
    /// Ended.
    finished_at: Option<DateTime<Utc>>,
    /// What went wrong.
    error: Option<String>,
    /// Graph's error code.
    graph_code: Option<String>,
}

impl Domain {
    /// `d` as the API shows it.
    pub fn of(domains: &Domains, d: &DomainView, next_sync_at: Option<DateTime<Utc>>) -> Domain {
        let last_run = d.last_run.and_then(|r| domains.run(r));
        let s = &d.settings;
        Domain {
            id: d.id.0,
            domain: d.name.clone(),
            removed: d.removed,
            auto_password_change_days: s.auto_password_change_days,
            removal_behavior: s.removal_behavior,
            sync_group: s.sync_group.display_name.clone(),
            sync_group_id: s.sync_group.object_id.clone().or(d.sync_group_id.clone()),
            rotation_group: s.rotation_group.display_name.clone(),
            rotation_group_id: s
                .rotation_group
                .object_id
                .clone()
                .or(d.rotation_group_id.clone()),
            auto_import: s.auto_import,
            sync_interval_minutes: s.sync_interval_minutes,
            graph_url: s.graph_url.clone(),
            authority_url: s.authority_url.clone(),
            deletion_threshold: s.deletion_threshold,
            password_length: s.password_length,
            rotate_after_reveal_hours: s.rotate_after_reveal_hours,
            max_concurrent_rotations: s.max_concurrent_rotations,
            sso_defaults: d.sso_defaults,
            credentials: d.credentials.as_ref().map(|c| DomainCredentials {
                tenant_id: c.tenant_id.clone(),
                client_id: c.client_id.clone(),
                secret_set: c.secret_set,
                updated_at: c.updated_at,
            }),
            quarantined_run: d.quarantined_run().map(|r| r.0),
            quarantined_runs: d.quarantined_runs.iter().map(|r| r.0).collect(),
            sync_active: d.credentials.is_some() && !d.removed,
            next_sync_at,
            last_sync: last_run.map(|r| LastSync {
                run_id: r.run_id.0,
                status: r.status,
                started_at: r.started_at,
                finished_at: r.finished_at,
                error: r.error.clone(),
                graph_code: r.graph_code.clone(),
            }),
            created_at: d.created_at,
            updated_at: d.updated_at,
            version: d.version,
            position: None,
        }
    }
}

fn found(s: &AppState, id: DomainId) -> Result<Domain, ApiError> {
    let p = s.engine.projector.read();
    p.domains
        .get(id)
        .map(|d| Domain::of(&p.domains, d, s.sync.next_scheduled(d.id)))
        .ok_or_else(|| ApiError::NotFound("domain".into()))
}

async fn respond(
    s: &AppState,
    id: DomainId,
    position: u64,
    status: StatusCode,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    s.reach(Some(position)).await?;
    let mut body = found(s, id)?;
    body.position = Some(position);
    Ok((status, Json(body)))
}

fn seal_credentials(
    s: &AppState,
    stream: &StreamId,
    c: Credentials,
) -> Result<DomainCommand, ApiError> {
    Ok(DomainCommand::SetCredentials {
        tenant_id: c.tenant_id,
        client_id: c.client_id,
        client_secret: seal_client_secret(s, stream, &c.client_secret)?,
    })
}

/// Seals a client secret for the domain's stream, once its shape is checked.
fn seal_client_secret(
    s: &AppState,
    stream: &StreamId,
    secret: &Secret,
) -> Result<SealedSecret, ApiError> {
    client_secret_ok(secret.expose())?;
    Ok(s.engine.keyring.seal(stream, secret)?)
}

/// Adds a domain, with its credentials when all three are given.
pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<serde_json::Map<String, Value>>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    let body = NewDomain::from_body(body)?;
    let id = DomainId(uuid::Uuid::now_v7());
    let stream = StreamId::domain(id);
    let credentials = match (body.tenant_id, body.client_id, body.client_secret) {
        (None, None, None) => None,
        (Some(tenant_id), Some(client_id), Some(client_secret)) => Some(Credentials {
            tenant_id,
            client_id,
            client_secret,
        }),
        _ => {
            return Err(ApiError::Unprocessable(
                "tenant_id, client_id and client_secret come together or not at all".into(),
            ))
        }
    };
    let register = DomainCommand::Register {
        domain_id: id,
        name: body.domain.clone(),
        settings: body.settings.apply(DomainSettings::default()),
    };
    // Refused input changes nothing, and sealing writes the new stream's data key: the
    // decisions are taken first with a stand-in for what sealing makes.
    let registered = decide(&DomainState::default(), register.clone())?
        .iter()
        .fold(DomainState::default(), evolve);
    if let Some(c) = &credentials {
        client_secret_ok(c.client_secret.expose())?;
        let stand_in = SealedSecret {
            key_id: DataKeyId(uuid::Uuid::nil()),
            nonce: [0; 24],
            ciphertext: Vec::new(),
        };
        decide(
            &registered,
            DomainCommand::SetCredentials {
                tenant_id: c.tenant_id.clone(),
                client_id: c.client_id.clone(),
                client_secret: stand_in,
            },
        )?;
    }
    // One name, one domain: the check spans domains' streams, so registrations take turns.
    s.clone()
        .in_turn(&s.domain_names, move |s| async move {
            if s.engine
                .projector
                .read()
                .domains
                .by_name(&body.domain)
                .is_some()
            {
                return Err(ApiError::Conflict(format!(
                    "domain {} exists already",
                    body.domain
                )));
            }
            if let Some(c) = &credentials {
                tenant_free(&s, &c.tenant_id, None)?;
            }
            let certificate = super::workstation::issue_command(&s, &stream, &body.domain)?;
            let set = credentials
                .map(|c| seal_credentials(&s, &stream, c))
                .transpose()?;
            // All in one atomic append: a domain never exists half-configured, and has its
            // workstation logon certificate from the start.
            let position = s
                .command(&stream, &who.actor(), evolve, |st| {
                    let mut events = decide(st, register.clone())?;
                    let mut then = events.iter().fold(st.clone(), evolve);
                    for next in set.iter().chain([&certificate]) {
                        let more = decide(&then, next.clone())?;
                        then = more.iter().fold(then, evolve);
                        events.extend(more);
                    }
                    Ok(events)
                })
                .await?;
            respond(&s, id, position, StatusCode::CREATED).await
        })
        .await
}

/// `GET /v1/domains` query.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DomainsQuery {
    /// At most this many (1 to 1000, default 100).
    limit: Option<usize>,
    /// The `next` of the page before.
    after: Option<uuid::Uuid>,
    /// `false`: only domains in service; `true`: only removed ones (both when left out).
    removed: Option<bool>,
    /// Wait (briefly) until the projections include this position.
    min_position: Option<u64>,
}

/// Lists domains (removed ones included, flagged) in id order, paged.
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<DomainsQuery>,
) -> Result<Json<Page<Domain>>, ApiError> {
    s.reach(q.min_position).await?;
    let p = s.engine.projector.read();
    let mut all = p.domains.all();
    all.sort_by_key(|d| d.id);
    let domains = all
        .into_iter()
        .filter(|d| q.after.is_none_or(|a| d.id.0 > a))
        .filter(|d| q.removed.is_none_or(|r| d.removed == r));
    let (items, next) = super::page_of(domains, q.limit, |d| d.id)?;
    Ok(page(
        items
            .into_iter()
            .map(|d| Domain::of(&p.domains, d, s.sync.next_scheduled(d.id)))
            .collect(),
        next,
    ))
}

/// One domain.
pub async fn get_one(
    State(s): State<AppState>,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<Consistency>,
) -> Result<Json<Domain>, ApiError> {
    s.reach(q.min_position).await?;
    Ok(Json(found(&s, DomainId(id))?))
}

/// The admin path of every change to an existing domain: decide `command` on the
/// domain's current state, append, answer the domain with the position.
async fn run(
    s: &AppState,
    who: &Principal,
    id: DomainId,
    command: impl Fn(&DomainState) -> DomainCommand,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    let position = s
        .command(&StreamId::domain(id), &who.actor(), evolve, |st| {
            decide(st, command(st))
        })
        .await?;
    respond(s, id, position, StatusCode::OK).await
}

/// Changes settings. Moving `graph_url` or `authority_url` of a domain with credentials
/// needs `client_secret` in the same body (saved again, sealed); without it, 422.
pub async fn patch(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(mut body): ApiJson<serde_json::Map<String, Value>>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    let secret: Option<Secret> = body
        .remove("client_secret")
        .map(|v| {
            let only = serde_json::Map::from_iter([("client_secret".to_owned(), v)]);
            from_json(Value::Object(only)).map(|h: SecretOnly| h.client_secret)
        })
        .transpose()?;
    let patch: SettingsPatch = from_json(Value::Object(body))?;
    let id = DomainId(id);
    // The app the secret was sent for: the one saved as the request arrives.
    let for_app = match s.engine.projector.read().domains.get(id) {
        None => return Err(ApiError::NotFound("domain".into())),
        Some(d) => d
            .credentials
            .as_ref()
            .map(|c| (c.tenant_id.clone(), c.client_id.clone())),
    };
    // Sealed once, before deciding: a retried decision reuses the same sealed secret.
    let sealed = secret
        .map(|sec| seal_client_secret(&s, &StreamId::domain(id), &sec))
        .transpose()?;
    let answer = run(&s, &who, id, |st| {
        let settings = patch.clone().apply(st.settings.clone());
        match &sealed {
            None => DomainCommand::ChangeSettings(settings),
            Some(client_secret) => DomainCommand::ChangeSettingsWithSecret {
                settings,
                client_secret: client_secret.clone(),
                for_app: for_app.clone(),
            },
        }
    })
    .await?;
    s.sync.supervise();
    Ok(answer)
}

/// The secret of a settings change, read apart from the settings.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SecretOnly {
    /// The client secret again: needed to move `graph_url` or `authority_url`.
    #[schema(value_type = Option<String>, format = Password)]
    client_secret: Secret,
}

/// Removes a domain (its history stays). Its users leave with it: they stop signing in
/// and give their keys back, since nothing looks after them any more.
pub async fn remove(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    let domain = DomainId(id);
    // The removal is recorded first: from then on sync and rotation stop, and nothing
    // brings the domain's users back (import, activation, keys and invites are refused).
    // Asked again, it is no error: the users' part is done again, finishing whatever a
    // failure cut short.
    let mut position = s
        .command(&StreamId::domain(domain), &who.actor(), evolve, |st| {
            if st.removed {
                Ok(vec![])
            } else {
                decide(st, DomainCommand::Remove)
            }
        })
        .await?;
    s.reach(Some(position)).await?;
    s.sync.supervise();
    // A run (cancelled just now), an import or an approval still going finishes first.
    s.sync.quiesce(domain).await;
    // Twice: a command that passed its check just before the removal landed (an
    // activation, a key, an invite) may land after the first pass listed the users.
    for _ in 0..2 {
        position = position.max(users_leave(&s, &who, domain).await?);
    }
    respond(&s, domain, position, StatusCode::OK).await
}

/// `UserCommand::LeaveRemovedDomain` for each of the removed `domain`'s users it would
/// change (active, or holding a key); answers the position of the last.
async fn users_leave(s: &AppState, who: &Principal, domain: DomainId) -> Result<u64, ApiError> {
    let users: Vec<UserId> = s
        .engine
        .projector
        .read()
        .users
        .of_domain(domain)
        .filter(|u| {
            u.status == UserStatus::Active
                || (u.status == UserStatus::Deactivated && u.key_id.is_some())
        })
        .map(|u| u.id)
        .collect();
    let actor = who.actor();
    let positions: Vec<u64> = stream::iter(users)
        .map(|user| {
            let actor = &actor;
            async move {
                s.command(&StreamId::user(user), actor, user::evolve, |st| {
                    user::decide(st, UserCommand::LeaveRemovedDomain)
                })
                .await
            }
        })
        .buffer_unordered(64)
        .try_collect()
        .await?;
    let last = positions.into_iter().max().unwrap_or(0);
    s.reach(Some(last)).await?;
    Ok(last)
}

/// Saves credentials (the secret is sealed at once).
pub async fn put_credentials(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    let id = DomainId(id);
    if s.engine.projector.read().domains.get(id).is_none() {
        return Err(ApiError::NotFound("domain".into()));
    }
    // Sealed once, before deciding: a retried decision reuses the same sealed secret. A
    // tenant taken is refused before sealing makes anything (and checked again in turn).
    let tenant = body.tenant_id.clone();
    tenant_free(&s, &tenant, Some(id))?;
    let set = seal_credentials(&s, &StreamId::domain(id), body)?;
    // One tenant, one domain: the check spans domains' streams, so saves take turns with
    // registrations.
    let answer = s
        .clone()
        .in_turn(&s.domain_names, move |s| async move {
            tenant_free(&s, &tenant, Some(id))?;
            run(&s, &who, id, |_| set.clone()).await
        })
        .await?;
    // A replaced secret is used from now on, not from the supervisor's next tick.
    s.sync.supervise();
    Ok(answer)
}

/// Refuses a tenant another live domain is connected to or holds the users of: two
/// domains of one tenant would each keep a record of the same people, and rotate the same
/// accounts' passwords behind each other's backs.
fn tenant_free(s: &AppState, tenant: &str, except: Option<DomainId>) -> Result<(), ApiError> {
    match s.engine.projector.read().domains.by_tenant(tenant, except) {
        Some(d) => Err(ApiError::Conflict(format!(
            "tenant {tenant} is connected as domain {} already",
            d.name
        ))),
        None => Ok(()),
    }
}

/// Removes credentials: sync and rotation for the domain stop.
pub async fn remove_credentials(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    let answer = run(&s, &who, DomainId(id), |_| DomainCommand::RemoveCredentials).await?;
    // The projections include the removal (respond waited for it): stop the worker now.
    s.sync.supervise();
    Ok(answer)
}

/// Sets the SSO defaults applied at import.
pub async fn put_sso_defaults(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(sso): ApiJson<SsoSettings>,
) -> Result<(StatusCode, Json<Domain>), ApiError> {
    run(&s, &who, DomainId(id), |_| {
        DomainCommand::SetSsoDefaults(sso)
    })
    .await
}

/// `POST /v1/domains/check` body: the connection a domain would be saved with.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionCheck {
    /// Entra tenant id (a GUID, as saving requires).
    tenant_id: String,
    /// The app registration's client id (a GUID).
    client_id: String,
    /// Its client secret: used for this check only, never kept.
    #[schema(value_type = String, format = Password)]
    client_secret: Secret,
    /// Graph's service root (default the public cloud's).
    graph_url: Option<String>,
    /// The identity platform's authority (default the public cloud's).
    authority_url: Option<String>,
    /// The sync group's display name.
    sync_group: Option<String>,
    /// The rotation group's display name.
    rotation_group: Option<String>,
}

/// What `idledger graph check` reports: the token, each permission granted or missing,
/// the reads the product needs, both groups found or not, and `ok`.
pub use crate::graph::check::ConnectionReport;

/// Tests a connection before it is saved (the console's **Test connection**): the same
/// check as `idledger graph check`, with the server's Graph trust. Nothing is recorded.
pub async fn check_connection(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<ConnectionCheck>,
) -> Result<Json<ConnectionReport>, ApiError> {
    let url = |field: &str, given: Option<String>, default: &str| {
        let url = given
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| default.to_owned());
        idledger_domain::decide::check_service_url(&url)
            .map(|()| url)
            .map_err(|m| ApiError::Unprocessable(format!("{field}: {m}")))
    };
    // The ids become part of the token URL's path: as when saving, GUIDs only (nothing
    // that could walk the path elsewhere on the authority's host).
    let guid = |field: &str, v: &str| {
        uuid::Uuid::parse_str(v)
            .map(|u| u.to_string())
            .map_err(|_| ApiError::Unprocessable(format!("{field}: a GUID")))
    };
    let (tenant_id, client_id) = (
        guid("tenant_id", &body.tenant_id)?,
        guid("client_id", &body.client_id)?,
    );
    client_secret_ok(body.client_secret.expose())?;
    let settings = crate::graph::GraphSettings {
        graph_url: url(
            "graph_url",
            body.graph_url,
            idledger_domain::DEFAULT_GRAPH_URL,
        )?,
        authority_url: url(
            "authority_url",
            body.authority_url,
            idledger_domain::DEFAULT_AUTHORITY_URL,
        )?,
        tenant_id,
        client_id,
        client_secret: body.client_secret,
    };
    let group = |g: Option<String>, default: &str| g.unwrap_or_else(|| default.to_owned());
    let report = crate::graph::check::check(
        settings,
        s.sync.graph_trust(),
        &group(body.sync_group, idledger_domain::DEFAULT_SYNC_GROUP),
        &group(body.rotation_group, idledger_domain::DEFAULT_ROTATION_GROUP),
    )
    .await;
    Ok(Json(report))
}
