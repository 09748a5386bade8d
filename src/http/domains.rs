//! `/v1/domains`: Entra tenants (admin; auditors read). The client secret is sealed the
//! moment it arrives and no response ever contains it.

use super::auth::Principal;
use super::error::{from_json, ApiError, ApiJson, ApiQuery, IdPath};
use super::{page, AppState, Consistency};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use idledger_domain::decide::domain::{decide, evolve, DomainCommand, DomainState};
use idledger_domain::{DomainId, DomainSettings, RemovalBehavior, Role, SsoSettings, StreamId};
use idledger_projections::{DomainView, Domains};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::secrets::Secret;

/// Distinguishes an absent field from an explicit `null` (which clears an optional setting).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Settings fields shared by create and update.
#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    #[serde(default, deserialize_with = "present")]
    auto_password_change_days: Option<Option<u16>>,
    removal_behavior: Option<RemovalBehavior>,
    sync_group: Option<String>,
    #[serde(default, deserialize_with = "present")]
    sync_group_id: Option<Option<String>>,
    rotation_group: Option<String>,
    #[serde(default, deserialize_with = "present")]
    rotation_group_id: Option<Option<String>>,
    auto_import: Option<bool>,
    sync_interval_minutes: Option<u32>,
    graph_url: Option<String>,
    authority_url: Option<String>,
    deletion_threshold: Option<u32>,
    password_length: Option<u16>,
    rotate_after_reveal_hours: Option<u32>,
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
        if let Some(v) = self.sync_group_id {
            s.sync_group.object_id = v;
        }
        if let Some(v) = self.rotation_group {
            s.rotation_group.display_name = v;
        }
        if let Some(v) = self.rotation_group_id {
            s.rotation_group.object_id = v;
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDomainHead {
    domain: String,
    tenant_id: Option<String>,
    client_id: Option<String>,
    client_secret: Option<Secret>,
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
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    tenant_id: String,
    client_id: String,
    client_secret: Secret,
}

/// A domain as the API shows it, with its latest sync run (its error, with Graph's
/// code, stays visible until a later run succeeds).
pub fn domain_json(domains: &Domains, d: &DomainView) -> Value {
    let last_run = d.last_run.and_then(|r| domains.run(r));
    let s = &d.settings;
    json!({
        "id": d.id,
        "domain": d.name,
        "removed": d.removed,
        "auto_password_change_days": s.auto_password_change_days,
        "removal_behavior": s.removal_behavior,
        "sync_group": s.sync_group.display_name,
        "sync_group_id": s.sync_group.object_id.clone().or(d.sync_group_id.clone()),
        "rotation_group": s.rotation_group.display_name,
        "rotation_group_id": s.rotation_group.object_id.clone().or(d.rotation_group_id.clone()),
        "auto_import": s.auto_import,
        "sync_interval_minutes": s.sync_interval_minutes,
        "graph_url": s.graph_url,
        "authority_url": s.authority_url,
        "deletion_threshold": s.deletion_threshold,
        "password_length": s.password_length,
        "rotate_after_reveal_hours": s.rotate_after_reveal_hours,
        "max_concurrent_rotations": s.max_concurrent_rotations,
        "sso_defaults": d.sso_defaults,
        "credentials": d.credentials.as_ref().map(|c| json!({
            "tenant_id": c.tenant_id, "client_id": c.client_id, "secret_set": c.secret_set, "updated_at": c.updated_at,
        })),
        "quarantined_run": d.quarantined_run,
        "sync_active": d.credentials.is_some() && !d.removed,
        "last_sync": last_run.map(|r| json!({
            "run_id": r.run_id,
            "status": r.status,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "error": r.error,
            "graph_code": r.graph_code,
        })),
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "version": d.version,
    })
}

fn found(s: &AppState, id: DomainId) -> Result<Value, ApiError> {
    let p = s.projector.read();
    p.domains
        .get(id)
        .map(|d| domain_json(&p.domains, d))
        .ok_or_else(|| ApiError::NotFound("domain".into()))
}

async fn respond(
    s: &AppState,
    id: DomainId,
    position: u64,
    status: StatusCode,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.reach(Some(position)).await?;
    let mut body = found(s, id)?;
    body["position"] = json!(position);
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
        client_secret: s.keyring.seal(stream, &c.client_secret)?,
    })
}

/// Adds a domain, with its credentials when all three are given.
pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<serde_json::Map<String, Value>>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
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
    if s.projector.read().domains.by_name(&body.domain).is_some() {
        return Err(ApiError::Conflict(format!(
            "domain {} exists already",
            body.domain
        )));
    }
    let register = DomainCommand::Register {
        domain_id: id,
        name: body.domain,
        settings: body.settings.apply(DomainSettings::default()),
    };
    let set = credentials
        .map(|c| seal_credentials(&s, &stream, c))
        .transpose()?;
    // Both events in one atomic append: a domain never exists half-configured.
    let position = s
        .command(&stream, &who.actor(), evolve, |st| {
            let mut events = decide(st, register.clone())?;
            if let Some(set) = &set {
                let registered = events.iter().fold(st.clone(), evolve);
                events.extend(decide(&registered, set.clone())?);
            }
            Ok(events)
        })
        .await?;
    respond(&s, id, position, StatusCode::CREATED).await
}

/// `GET /v1/domains` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainsQuery {
    limit: Option<usize>,
    after: Option<uuid::Uuid>,
    min_position: Option<u64>,
}

/// Lists domains (removed ones included, flagged) in id order, paged.
pub async fn list(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<DomainsQuery>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
    s.reach(q.min_position).await?;
    let p = s.projector.read();
    let mut all = p.domains.all();
    all.sort_by_key(|d| d.id);
    let domains = all
        .into_iter()
        .filter(|d| q.after.is_none_or(|a| d.id.0 > a));
    let (items, next) = super::page_of(domains, q.limit, |d| d.id)?;
    Ok(page(
        items
            .into_iter()
            .map(|d| domain_json(&p.domains, d))
            .collect(),
        next,
    ))
}

/// One domain.
pub async fn get_one(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiQuery(q): ApiQuery<Consistency>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin, Role::Auditor])?;
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
) -> Result<(StatusCode, Json<Value>), ApiError> {
    who.require(&[Role::Admin])?;
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
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    let secret: Option<Secret> = body
        .remove("client_secret")
        .map(|v| from_json(json!({ "client_secret": v })).map(|h: SecretOnly| h.client_secret))
        .transpose()?;
    let patch: SettingsPatch = from_json(Value::Object(body))?;
    let id = DomainId(id);
    if s.projector.read().domains.get(id).is_none() {
        return Err(ApiError::NotFound("domain".into()));
    }
    // Sealed once, before deciding: a retried decision reuses the same sealed secret.
    let sealed = secret
        .map(|sec| s.keyring.seal(&StreamId::domain(id), &sec))
        .transpose()?;
    let answer = run(&s, &who, id, |st| {
        let settings = patch.clone().apply(st.settings.clone());
        match &sealed {
            None => DomainCommand::ChangeSettings(settings),
            Some(client_secret) => DomainCommand::ChangeSettingsWithSecret {
                settings,
                client_secret: client_secret.clone(),
            },
        }
    })
    .await?;
    s.sync.supervise();
    Ok(answer)
}

/// The secret of a settings change, read apart from the settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretOnly {
    client_secret: Secret,
}

/// Removes a domain (its history stays).
pub async fn remove(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
    let answer = run(&s, &who, DomainId(id), |_| DomainCommand::Remove).await?;
    s.sync.supervise();
    Ok(answer)
}

/// Saves credentials (the secret is sealed at once).
pub async fn put_credentials(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    who.require(&[Role::Admin])?;
    let id = DomainId(id);
    if s.projector.read().domains.get(id).is_none() {
        return Err(ApiError::NotFound("domain".into()));
    }
    // Sealed once, before deciding: a retried decision reuses the same sealed secret.
    let set = seal_credentials(&s, &StreamId::domain(id), body)?;
    run(&s, &who, id, |_| set.clone()).await
}

/// Removes credentials: sync and rotation for the domain stop.
pub async fn remove_credentials(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<impl IntoResponse, ApiError> {
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
) -> Result<impl IntoResponse, ApiError> {
    run(&s, &who, DomainId(id), |_| {
        DomainCommand::SetSsoDefaults(sso)
    })
    .await
}
