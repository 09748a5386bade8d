//! `/v1/apps`: the web apps (OpenID Connect relying parties) users sign in to, and
//! `/v1/provider/signing-keys`. Admins register and change apps; a confidential app's
//! client secret is in the answer that makes it and nowhere else (only its hash is
//! recorded).

use super::auth::{new_token_text, token_hash, Principal};
use super::error::{ApiError, ApiJson, ApiQuery, IdPath};
use super::{page, page_of, AppState, Page};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use idledger_domain::decide::provider::{decide, evolve, AppChange, AppSettings, ProviderCommand};
use idledger_domain::events::AppRegistered;
use idledger_domain::{AppId, ClientType, DomainId, StreamId};
use idledger_projections::AppView;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/apps` body.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    /// A name for admins (1 to 200 characters).
    name: String,
    /// Redirect URIs, matched exactly: https, or http on localhost.
    redirect_uris: Vec<String>,
    /// Where RP-initiated logout may return to (same rules).
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    /// `confidential` (a secret, shown once) or `public` (PKCE S256 required).
    #[serde(rename = "type")]
    client_type: ClientType,
    /// Users of these domains may sign in (at least one).
    domain_ids: Vec<uuid::Uuid>,
    /// `ES256` (the default) or `RS256`, for apps whose library verifies RSA only.
    #[serde(default)]
    id_token_signed_response_alg: Option<SigningAlg>,
}

/// The algorithms the provider signs ID tokens with: each has its own signing key.
#[derive(Serialize, Deserialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256: every key set has one.
    #[default]
    Es256,
    /// RSA PKCS#1 v1.5 with SHA-256, for libraries that verify nothing else.
    Rs256,
}

impl SigningAlg {
    /// The JOSE name, as the log records it.
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::Es256 => "ES256",
            SigningAlg::Rs256 => "RS256",
        }
    }

    /// The algorithm the log names, which the provider's decisions keep to these two; any
    /// other is a log this build cannot serve.
    fn recorded(name: &str) -> Result<SigningAlg, ApiError> {
        match name {
            "ES256" => Ok(SigningAlg::Es256),
            "RS256" => Ok(SigningAlg::Rs256),
            other => Err(ApiError::Internal(format!(
                "the log names algorithm {other:?}"
            ))),
        }
    }
}

/// `PATCH /v1/apps/{id}` body: what is given replaces what is there.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppPatch {
    name: Option<String>,
    redirect_uris: Option<Vec<String>>,
    post_logout_redirect_uris: Option<Vec<String>>,
    domain_ids: Option<Vec<uuid::Uuid>>,
    /// `ES256` or `RS256`: for a relying party whose library checks ID tokens with one
    /// algorithm only. The provider makes a key for it before the next token, if none.
    id_token_signed_response_alg: Option<SigningAlg>,
}

/// An app as the API shows it (never its secret, but once at registration).
#[derive(Serialize, ToSchema)]
pub struct App {
    id: uuid::Uuid,
    client_id: String,
    /// Only in the answer that makes it (registration, secret rotation).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<String>,
    name: String,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    #[serde(rename = "type")]
    client_type: ClientType,
    domain_ids: Vec<uuid::Uuid>,
    id_token_signed_response_alg: SigningAlg,
    removed: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The position of the record this answer follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
}

impl App {
    fn of(a: &AppView) -> Result<App, ApiError> {
        Ok(App {
            id: a.id.0,
            client_id: a.client_id.clone(),
            client_secret: None,
            name: a.name.clone(),
            redirect_uris: a.redirect_uris.clone(),
            post_logout_redirect_uris: a.post_logout_redirect_uris.clone(),
            client_type: a.client_type,
            domain_ids: a.domain_ids.iter().map(|d| d.0).collect(),
            id_token_signed_response_alg: SigningAlg::recorded(&a.id_token_alg)?,
            removed: a.removed,
            created_at: a.created_at,
            updated_at: a.updated_at,
            position: None,
        })
    }
}

/// A client secret: 32 random bytes, base64url without padding (every client library's
/// Basic authentication takes it as it is).
fn new_secret() -> String {
    let token = new_token_text();
    // Only the prefix: the random text after it may itself begin with those letters.
    token.strip_prefix("idl_").unwrap_or(&token).to_owned()
}

fn known_domains(s: &AppState, ids: &[uuid::Uuid]) -> Result<Vec<DomainId>, ApiError> {
    let p = s.engine.projector.read();
    ids.iter()
        .map(|id| {
            p.domains
                .get(DomainId(*id))
                .filter(|d| !d.removed)
                .map(|_| DomainId(*id))
                .ok_or_else(|| ApiError::Unprocessable(format!("domain_ids: no domain {id}")))
        })
        .collect()
}

async fn answer(
    s: &AppState,
    id: AppId,
    position: u64,
    secret: Option<String>,
) -> Result<App, ApiError> {
    s.reach(Some(position)).await?;
    let p = s.engine.projector.read();
    let mut app = App::of(
        p.provider
            .app(id)
            .ok_or_else(|| ApiError::NotFound("app".into()))?,
    )?;
    app.client_secret = secret;
    app.position = Some(position);
    Ok(app)
}

/// Registers an app; a confidential one's secret is in this answer only.
pub async fn create(
    State(s): State<AppState>,
    who: Principal,
    ApiJson(body): ApiJson<NewApp>,
) -> Result<(StatusCode, Json<App>), ApiError> {
    let alg = body.id_token_signed_response_alg.unwrap_or_default();
    let domain_ids = known_domains(&s, &body.domain_ids)?;
    let client_type = body.client_type;
    let secret = match client_type {
        ClientType::Confidential => Some(new_secret()),
        ClientType::Public => None,
    };
    let app_id = AppId(uuid::Uuid::now_v7());
    let registered = AppRegistered {
        app_id,
        client_id: uuid::Uuid::new_v4().to_string(),
        name: body.name.trim().to_owned(),
        redirect_uris: body.redirect_uris,
        post_logout_redirect_uris: body.post_logout_redirect_uris,
        client_type,
        domain_ids,
        id_token_alg: alg.as_str().to_owned(),
        secret_hash: secret.as_deref().map(token_hash),
    };
    // The app's keys are published before it asks for a token (its library may fetch the
    // JWKS once, at start), and made before the app is registered: should making them fail,
    // no app exists whose one-time secret the admin never saw.
    // A bad request makes nothing, keys included: checked first.
    idledger_domain::decide::provider::check_registration(&registered)?;
    crate::provider::ensure_signing_keys(
        &s.engine,
        &who.actor(),
        &[SigningAlg::Es256.as_str(), alg.as_str()],
        s.oidc.overlap(),
    )
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let command = ProviderCommand::Register(registered);
    let position = s
        .command(&StreamId::provider(), &who.actor(), evolve, |st| {
            decide(st, command.clone())
        })
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(answer(&s, app_id, position, secret).await?),
    ))
}

/// `?limit=&after=`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AppsQuery {
    /// At most this many (1 to 1000, default 100).
    limit: Option<usize>,
    /// The `next` of the previous page.
    after: Option<uuid::Uuid>,
    /// `false`: only apps in service; `true`: only removed ones (both when left out).
    removed: Option<bool>,
}

/// Every app, removed ones too, oldest first.
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<AppsQuery>,
) -> Result<Json<Page<App>>, ApiError> {
    let p = s.engine.projector.read();
    let apps = p.provider.apps();
    let start = match q.after {
        None => 0,
        Some(a) => after_position(apps.iter().position(|x| x.id.0 == a), "app")?,
    };
    let apps = apps
        .into_iter()
        .skip(start)
        .filter(|a| q.removed.is_none_or(|r| a.removed == r));
    let (items, next) = page_of(apps, q.limit, |a| a.id)?;
    let items = items.into_iter().map(App::of).collect::<Result<_, _>>()?;
    Ok(page(items, next))
}

/// One app.
pub async fn get_one(State(s): State<AppState>, IdPath(id): IdPath) -> Result<Json<App>, ApiError> {
    let p = s.engine.projector.read();
    let app = p
        .provider
        .app(AppId(id))
        .ok_or_else(|| ApiError::NotFound("app".into()))?;
    Ok(Json(App::of(app)?))
}

/// Changes an app's name, redirect URIs, domains or ID token algorithm.
pub async fn patch(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<AppPatch>,
) -> Result<Json<App>, ApiError> {
    if body.name.is_none()
        && body.redirect_uris.is_none()
        && body.post_logout_redirect_uris.is_none()
        && body.domain_ids.is_none()
        && body.id_token_signed_response_alg.is_none()
    {
        return Err(ApiError::Unprocessable(
            "an empty patch says nothing: name, redirect_uris, post_logout_redirect_uris, domain_ids or id_token_signed_response_alg".into(),
        ));
    }
    let app_id = AppId(id);
    let patch = AppChange {
        app_id,
        name: body.name.map(|n| n.trim().to_owned()),
        redirect_uris: body.redirect_uris,
        post_logout_redirect_uris: body.post_logout_redirect_uris,
        domain_ids: match &body.domain_ids {
            Some(ids) => Some(known_domains(&s, ids)?),
            None => None,
        },
        // Only when asked: a patch of something else must not put back the algorithm it
        // read before another admin changed it (`None` leaves it as the log has it).
        id_token_alg: body
            .id_token_signed_response_alg
            .map(|a| a.as_str().to_owned()),
    };
    // A bad request makes nothing, keys included: checked first, over the app as the
    // projections have it (the command checks again over the app as the log has it).
    {
        let p = s.engine.projector.read();
        let now = p
            .provider
            .app(app_id)
            .filter(|a| !a.removed)
            .ok_or_else(|| ApiError::NotFound("app".into()))?;
        idledger_domain::decide::provider::check_change(&patch.over(&AppSettings {
            name: now.name.clone(),
            redirect_uris: now.redirect_uris.clone(),
            post_logout_redirect_uris: now.post_logout_redirect_uris.clone(),
            domain_ids: now.domain_ids.clone(),
        }))?;
    }
    // The algorithm's key is published before the app is told to expect it: the first
    // token it gets after this answer verifies against the JWKS it may fetch now. (A key
    // that exists already is left as it is.)
    if let Some(alg) = patch.id_token_alg.as_deref() {
        crate::provider::ensure_signing_keys(&s.engine, &who.actor(), &[alg], s.oidc.overlap())
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    let command = ProviderCommand::Change(patch);
    let position = s
        .command(&StreamId::provider(), &who.actor(), evolve, |st| {
            decide(st, command.clone())
        })
        .await?;
    Ok(Json(answer(&s, app_id, position, None).await?))
}

/// Removes an app: no sign-in or token for it any more.
pub async fn remove(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<App>, ApiError> {
    let position = s
        .command(&StreamId::provider(), &who.actor(), evolve, |st| {
            decide(st, ProviderCommand::Remove(AppId(id)))
        })
        .await?;
    Ok(Json(answer(&s, AppId(id), position, None).await?))
}

/// Gives a confidential app a new secret (in this answer only); the old one stops.
pub async fn rotate_secret(
    State(s): State<AppState>,
    who: Principal,
    IdPath(id): IdPath,
) -> Result<Json<App>, ApiError> {
    let secret = new_secret();
    let command = ProviderCommand::RotateSecret {
        app_id: AppId(id),
        secret_hash: token_hash(&secret),
    };
    let position = s
        .command(&StreamId::provider(), &who.actor(), evolve, |st| {
            decide(st, command.clone())
        })
        .await?;
    Ok(Json(answer(&s, AppId(id), position, Some(secret)).await?))
}

/// A signing key of the provider (public part).
#[derive(Serialize, ToSchema)]
pub struct SigningKey {
    kid: String,
    alg: SigningAlg,
    status: SigningKeyStatus,
    added_at: DateTime<Utc>,
    /// When it began, or begins, to sign.
    signs_from: DateTime<Utc>,
    /// A retired key is published (tokens it signed verify) until then.
    verify_until: Option<DateTime<Utc>>,
}

/// Where a signing key stands.
#[derive(Serialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum SigningKeyStatus {
    /// Published; signs from `signs_from`.
    Next,
    /// May sign.
    Current,
    /// Signs no more; published until `verify_until`.
    Retired,
}

impl SigningKey {
    fn of(k: &idledger_projections::SigningKeyView, now: DateTime<Utc>) -> Result<Self, ApiError> {
        // The projection names the status in these three words (`SigningKeyView::status`).
        let status = match k.status(now) {
            "next" => SigningKeyStatus::Next,
            "current" => SigningKeyStatus::Current,
            "retired" => SigningKeyStatus::Retired,
            other => return Err(ApiError::Internal(format!("signing key status {other:?}"))),
        };
        Ok(SigningKey {
            kid: k.kid.clone(),
            alg: SigningAlg::recorded(&k.alg)?,
            status,
            added_at: k.added_at,
            signs_from: k.signs_from,
            verify_until: k.verify_until,
        })
    }
}

/// `?limit=&after=` of the keys list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct KeysQuery {
    /// At most this many (1 to 1000, default 100), newest first.
    limit: Option<usize>,
    /// The `next` of the previous page (a key id).
    after: Option<String>,
}

/// Where the page after cursor `found` (an item's index) starts. A cursor that names
/// nothing is refused: starting over would send a client round in circles.
fn after_position(found: Option<usize>, what: &str) -> Result<usize, ApiError> {
    found
        .map(|i| i + 1)
        .ok_or_else(|| ApiError::BadRequest(format!("after: no such {what}")))
}

/// The provider's signing keys, newest first.
pub async fn keys(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<KeysQuery>,
) -> Result<Json<Page<SigningKey>>, ApiError> {
    let p = s.engine.projector.read();
    let now = Utc::now();
    let start = match &q.after {
        None => 0,
        Some(kid) => after_position(
            p.provider.keys.iter().rev().position(|k| &k.kid == kid),
            "key",
        )?,
    };
    let keys = p.provider.keys.iter().rev().skip(start);
    let (keys, next) = page_of(keys, q.limit, |k| k.kid.clone())?;
    let items = keys
        .into_iter()
        .map(|k| SigningKey::of(k, now))
        .collect::<Result<_, _>>()?;
    Ok(page(items, next))
}

/// `?alg=` of a key rotation.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyQuery {
    /// `ES256` (the default) or `RS256`.
    alg: Option<SigningAlg>,
}

/// Puts a new signing key in force for an algorithm; the previous one stays published
/// while tokens it signed may be live.
pub async fn rotate_key(
    State(s): State<AppState>,
    who: Principal,
    ApiQuery(q): ApiQuery<RotateKeyQuery>,
) -> Result<(StatusCode, Json<SigningKey>), ApiError> {
    let alg = q.alg.unwrap_or_default().as_str();
    // At once: an admin who asks may be replacing a key they fear is compromised.
    let overlap = s.oidc.overlap();
    let kid = crate::provider::add_signing_key(&s.engine, &who.actor(), alg, overlap, None)
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let p = s.engine.projector.read();
    let k = p
        .provider
        .keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| ApiError::Internal("the new key is not in the projection".into()))?;
    Ok((StatusCode::CREATED, Json(SigningKey::of(k, Utc::now())?)))
}
