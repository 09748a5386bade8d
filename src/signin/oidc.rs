//! idledger as the OpenID Connect provider of registered web apps (OIDC Core 1.0,
//! Discovery 1.0, RFC 6749, RFC 7636): discovery, JWKS, `/authorize` (code flow with PKCE,
//! reading the user's sign-in session, or sending the browser through `/signin` and back),
//! `/token` (authorization code and refresh token grants), `/userinfo`, and RP-initiated
//! logout at `/end_session`.
//!
//! Codes live in memory for 60 s and are single-use (a restart asks for a new sign-in, the
//! safe direction). Refresh tokens are rotated on use and a reused one revokes its whole
//! family; families are folded from the user's stream (`domain::decide::refresh`), so they
//! outlive restarts and restores. Every token issued and every refusal that names a user is
//! an event on that user's stream, decided by `domain::decide::signin` (only active users
//! with SSO on, of one of the app's domains). The protocol's own rooms — SAML or
//! WS-Federation later — would sit beside this file on the same sessions.

use super::authorization::{csp_can_name, origin_of, AuthRequest, ResponseMode};
use super::{https, refuse, sessions, sign_in_stands, signed_in, Ctx, Refusal};
use crate::http::session::same_secret;
use crate::provider::{verify, TokenType};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use idledger_domain::decide::refresh::{Presented, RefreshRequest, RevokeRequest};
use idledger_domain::decide::signin::SignInCommand;
use idledger_domain::events::{AppTokenRefused, AppTokensIssued, RefreshIssued, TokenGrant};
use idledger_domain::{AppId, ClientType, Event, SsoMethod, StreamId, UserId};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Codes kept at most.
const MOST: usize = 100_000;
/// How long a spent code is remembered, so that its replay revokes what it gave.
const SPENT_REMEMBERED: Duration = Duration::from_secs(600);
/// The scopes the provider knows, in the order a grant lists them.
const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// The longest `nonce` taken (it is recorded with every refresh of the tokens it goes in).
const MAX_NONCE: usize = 255;
/// The longest `state` taken: it waits in memory while the user signs in, for anyone who
/// sends a browser here (an app's own state is an id or a short signed blob).
const MAX_STATE: usize = 2048;
/// Codes one user holds at once: one user's script cannot fill the map for everyone.
const CODES_PER_USER: usize = 32;

/// The provider's routes, added to the sign-in router (they share its sessions).
pub fn routes(router: Router<Ctx>, ctx: &Ctx) -> Router<Ctx> {
    // What an app's script in the browser calls (a single-page app, a public client) is
    // open to it across origins; the pages a browser is sent to are not.
    let called_by_scripts = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks.json", get(jwks))
        .route("/token", axum::routing::post(token))
        .route("/revoke", axum::routing::post(revoke))
        .route("/userinfo", get(userinfo).post(userinfo))
        .layer(axum::middleware::from_fn_with_state(ctx.clone(), cors));
    router
        .merge(called_by_scripts)
        .route("/authorize", get(authorize).post(authorize_by_form))
        .route("/authorize/resume", get(resume))
        .route("/end_session", get(end_session).post(confirm_end_session))
}

/// Cross-origin access (Fetch standard, CORS) to the endpoints apps' scripts call:
/// discovery and keys for anyone (they are public), the token endpoint and userinfo for
/// the origins of registered redirect URIs only — the sites the provider already sends
/// codes to. No credentials mode: these endpoints take no cookies, and a browser's session
/// here must never ride along.
async fn cors(
    State(ctx): State<Ctx>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::{HeaderValue, Method};
    let Some(origin) = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return next.run(request).await;
    };
    let public = matches!(
        request.uri().path(),
        "/.well-known/openid-configuration" | "/jwks.json"
    );
    let allowed = public || {
        let p = ctx.app.engine.projector.read();
        p.provider.apps().iter().filter(|a| !a.removed).any(|a| {
            a.redirect_uris
                .iter()
                .any(|u| origin_of(u).as_deref() == Some(origin.as_str()))
        })
    };
    let allow_origin = match (public, HeaderValue::from_str(&origin)) {
        (true, _) => HeaderValue::from_static("*"),
        (false, Ok(origin)) if allowed => origin,
        _ => {
            if request.method() == Method::OPTIONS {
                return (
                    StatusCode::FORBIDDEN,
                    "this origin is not the origin of a registered redirect URI\n",
                )
                    .into_response();
            }
            // The request itself is answered as to anyone; the browser keeps the answer
            // from the page.
            return next.run(request).await;
        }
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        let mut r = next.run(request).await;
        // A refused bearer token says why in this header; the app's script may read it.
        r.headers_mut().insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("www-authenticate"),
        );
        r
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    h.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

struct CodeGrant {
    request: AuthRequest,
    user: UserId,
    session: Granted,
    created: Instant,
}

/// What a sign-in session gives the tokens made from it.
#[derive(Clone)]
struct Granted {
    sid: String,
    auth_time: DateTime<Utc>,
    amr: Vec<String>,
    method: SsoMethod,
    /// The session's: a code outlives no session (see `exchange_code`).
    opened_position: u64,
}

/// A code exchanged already, and what it gave (or is giving).
#[derive(Clone)]
struct Spent {
    at: Instant,
    user: UserId,
    app: AppId,
    /// The grant the code began: its access tokens' `grant_id`, and the refresh family's
    /// id when `offline_access` was granted.
    grant: uuid::Uuid,
    /// Held while the first exchange issues its tokens: a second use waits for it, so its
    /// refusal lands after the family it ends, never before it begins.
    issuing: Arc<tokio::sync::Mutex<()>>,
    /// A replay was recorded (and so ended what the code gave): later ones are refused
    /// unrecorded, so replaying a leaked code cannot grow the user's stream at will.
    replay_recorded: bool,
}

/// Codes exchanged already, in the order they were: forgetting the expired and the oldest
/// takes from the front, so an exchange costs the same with 10 or 100,000 remembered.
#[derive(Default)]
struct SpentCodes {
    by_code: HashMap<[u8; 32], Spent>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl SpentCodes {
    /// The spent code's grant, the first time it is replayed; `None` after (or when the
    /// code was never spent).
    fn first_replay(&mut self, code: &[u8; 32]) -> Option<Spent> {
        let spent = self.by_code.get_mut(code)?;
        if spent.replay_recorded {
            return None;
        }
        spent.replay_recorded = true;
        Some(spent.clone())
    }

    /// The code's exchange was refused and recorded, having given nothing: a later use
    /// ends no family and is refused unrecorded, as a recorded replay's are.
    fn refused(&mut self, code: &[u8; 32]) {
        if let Some(spent) = self.by_code.get_mut(code) {
            spent.replay_recorded = true;
        }
    }

    /// The replay [`Self::first_replay`] handed out could not be recorded: the next one
    /// is a first again.
    fn replay_unrecorded(&mut self, code: &[u8; 32]) {
        if let Some(spent) = self.by_code.get_mut(code) {
            spent.replay_recorded = false;
        }
    }

    /// Remembers `code` (fresh from the codes in flight, so not here yet) for `remember`,
    /// keeping at most `most`.
    fn insert(&mut self, code: [u8; 32], spent: Spent, remember: Duration, most: usize) {
        while let Some(oldest) = self.order.front() {
            let expired = self
                .by_code
                .get(oldest)
                .is_none_or(|x| x.at.elapsed() >= remember);
            if !expired && self.order.len() < most {
                break;
            }
            // Expired, or full of live ones: the oldest goes, never the newest.
            if let Some(k) = self.order.pop_front() {
                self.by_code.remove(&k);
            }
        }
        self.order.push_back(code);
        self.by_code.insert(code, spent);
    }
}

/// Codes in flight and the signer's cache (refresh families live in the log).
#[derive(Default)]
pub struct ProviderState {
    codes: Mutex<HashMap<[u8; 32], CodeGrant>>,
    /// Codes already exchanged (for ten minutes): a second use names its user and app.
    spent: Mutex<SpentCodes>,
    signer: crate::provider::Signer,
}

fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// What a refresh token names before its secret part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct RefreshName {
    user: UserId,
    family: uuid::Uuid,
    generation: u64,
}

/// Bytes of a refresh token: user, family, generation, 128 random bits, then 128 bits of
/// the user's tag of all that.
const REFRESH_BYTES: usize = 16 + 16 + 8 + 16 + 16;
/// Where a refresh token's tag begins.
const REFRESH_TAGGED: usize = REFRESH_BYTES - 16;

/// A refresh token. Naming the user lets the token endpoint go straight to the stream that
/// decides it, with no index of every token ever issued (the app learns nothing it did not
/// know: the ID token's `sub` is the user); naming the generation lets that stream tell a
/// copy of any earlier token, however old, from a token it never issued. The tag is what
/// tells them apart: a family's id and generations are in the log, which auditors read,
/// and an earlier generation's token made up from them must end nothing.
///
/// `Ok(None)` when `key` is [`TagKey::Existing`] and the user has no key.
fn new_refresh_token(ctx: &Ctx, name: RefreshName, key: TagKey) -> Result<Option<String>, Refusal> {
    let mut bytes = [0u8; REFRESH_BYTES];
    bytes[..16].copy_from_slice(name.user.0.as_bytes());
    bytes[16..32].copy_from_slice(name.family.as_bytes());
    bytes[32..40].copy_from_slice(&name.generation.to_be_bytes());
    rand::rngs::OsRng.fill_bytes(&mut bytes[40..REFRESH_TAGGED]);
    let (keyring, stream) = (&ctx.app.engine.keyring, StreamId::user(name.user));
    let tag = match key {
        TagKey::MakeIfMissing => keyring
            .tag(&stream, &bytes[..REFRESH_TAGGED])
            .map(Some)
            .map_err(|e| {
                tracing::warn!(error = %e, "a refresh token could not be tagged");
                refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the key store is unavailable",
                )
            })?,
        TagKey::Existing => keyring.tag_existing(&stream, &bytes[..REFRESH_TAGGED]),
    };
    Ok(tag.map(|tag| {
        bytes[REFRESH_TAGGED..].copy_from_slice(&tag[..16]);
        B64.encode(bytes)
    }))
}

/// Whether tagging a refresh token may make the user's data key.
#[derive(Clone, Copy)]
enum TagKey {
    /// A code exchange, for a user the stream has just let sign in.
    MakeIfMissing,
    /// A refresh, which anyone holding a client id may ask for naming any user: a user
    /// without a key has no refresh token, and none is made for the asking.
    Existing,
}

/// What a refresh token names, if it has the shape of one, and whether its tag verifies
/// (this server issued it).
fn refresh_token_names(ctx: &Ctx, token: &str) -> Option<(RefreshName, bool)> {
    if token.len() != REFRESH_BYTES * 4 / 3 {
        return None;
    }
    let bytes = B64.decode(token).ok()?;
    let user = uuid::Uuid::from_slice(bytes.get(..16)?).ok()?;
    let family = uuid::Uuid::from_slice(bytes.get(16..32)?).ok()?;
    let generation = u64::from_be_bytes(bytes.get(32..40)?.try_into().ok()?);
    let issued_here = ctx.app.engine.keyring.tag_verifies(
        &StreamId::user(UserId(user)),
        bytes.get(..REFRESH_TAGGED)?,
        bytes.get(REFRESH_TAGGED..)?,
    );
    let name = RefreshName {
        user: UserId(user),
        family,
        generation,
    };
    Some((name, issued_here))
}

fn issuer(ctx: &Ctx) -> Result<String, Refusal> {
    ctx.app
        .public_url
        .as_ref()
        .map(|p| p.origin.clone())
        .ok_or_else(|| {
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server's public_url is not set",
            )
        })
}

// ---- discovery ------------------------------------------------------------------------------

/// How clients authenticate at the token and revocation endpoints.
const TOKEN_AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "none"];

/// The discovery document (OpenID Connect Discovery 1.0 §3).
#[derive(Serialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: String,
    jwks_uri: String,
    end_session_endpoint: String,
    revocation_endpoint: String,
    revocation_endpoint_auth_methods_supported: [&'static str; 3],
    scopes_supported: [&'static str; 4],
    response_types_supported: [&'static str; 1],
    response_modes_supported: [&'static str; 2],
    grant_types_supported: [&'static str; 2],
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: [&'static str; 2],
    token_endpoint_auth_methods_supported: [&'static str; 3],
    code_challenge_methods_supported: [&'static str; 1],
    claims_supported: [&'static str; 14],
    prompt_values_supported: [&'static str; 2],
    /// Left out, these would mean `request_uri` is supported (Discovery 1.0 §3).
    request_parameter_supported: bool,
    request_uri_parameter_supported: bool,
    /// RFC 9207: answers at the redirect URI carry `iss`.
    authorization_response_iss_parameter_supported: bool,
}

async fn discovery(State(ctx): State<Ctx>) -> Result<Json<Discovery>, Refusal> {
    let iss = issuer(&ctx)?;
    Ok(Json(Discovery {
        authorization_endpoint: format!("{iss}/authorize"),
        token_endpoint: format!("{iss}/token"),
        userinfo_endpoint: format!("{iss}/userinfo"),
        jwks_uri: format!("{iss}/jwks.json"),
        end_session_endpoint: format!("{iss}/end_session"),
        revocation_endpoint: format!("{iss}/revoke"),
        revocation_endpoint_auth_methods_supported: TOKEN_AUTH_METHODS,
        issuer: iss,
        scopes_supported: SCOPES,
        response_types_supported: ["code"],
        response_modes_supported: ["query", "form_post"],
        grant_types_supported: ["authorization_code", "refresh_token"],
        subject_types_supported: ["public"],
        id_token_signing_alg_values_supported: crate::provider::ALGS,
        token_endpoint_auth_methods_supported: TOKEN_AUTH_METHODS,
        code_challenge_methods_supported: ["S256"],
        claims_supported: [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "acr",
            "amr",
            "sid",
            "name",
            "preferred_username",
            "email",
            "azp",
        ],
        prompt_values_supported: ["none", "login"],
        request_parameter_supported: false,
        request_uri_parameter_supported: false,
        authorization_response_iss_parameter_supported: true,
    }))
}

#[derive(Serialize)]
struct JwkSet {
    keys: Vec<crate::provider::Jwk>,
}

async fn jwks(State(ctx): State<Ctx>) -> Json<JwkSet> {
    let p = ctx.app.engine.projector.read();
    Json(JwkSet {
        keys: p
            .provider
            .published_keys(Utc::now())
            .filter_map(|k| serde_json::from_str(&k.public_jwk).ok())
            .collect(),
    })
}

// ---- authorization ----------------------------------------------------------------------------

/// A parameter sent without a value is one not sent (RFC 6749 §3.1, §3.2): form builders
/// and client libraries send `x=` for what they leave empty.
fn omitted_if_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.filter(|v| !v.is_empty()))
}

/// `max_age`, a number of seconds, or nothing when sent empty.
fn max_age_param<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    omitted_if_empty(d)?
        .map(|v| v.parse().map_err(serde::de::Error::custom))
        .transpose()
}

/// `/authorize`'s query (OIDC Core §3.1.2.1).
#[derive(Deserialize)]
struct AuthorizeQuery {
    #[serde(default, deserialize_with = "omitted_if_empty")]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    redirect_uri: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    response_type: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    scope: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    state: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    nonce: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    code_challenge: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    code_challenge_method: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    prompt: Option<String>,
    #[serde(default, deserialize_with = "max_age_param")]
    max_age: Option<i64>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    response_mode: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    request: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    request_uri: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    id_token_hint: Option<String>,
}

/// The two parameters that say where an error may be sent, from a query that did not
/// read as a whole (a repeated parameter, a `max_age` that is no number): each must appear
/// once.
fn client_and_redirect(uri: &Uri) -> Option<(String, String, Option<String>)> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).ok()?;
    let once = |key: &str| {
        let mut values = pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v);
        match (values.next(), values.next()) {
            (Some(v), None) => Some(v.clone()),
            _ => None,
        }
    };
    Some((once("client_id")?, once("redirect_uri")?, once("state")))
}

/// The 400 page of a request that names no app or a redirect URI not registered for it:
/// never redirected (it could be anyone's address).
fn bad_client(message: &str) -> Response {
    super::pages::problem(
        StatusCode::BAD_REQUEST,
        "This sign-in request is not valid",
        message,
    )
}

fn base64url_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// RFC 7636 §4.1: 43 to 128 unreserved characters. A shorter one could be guessed from its
/// challenge offline: refused rather than taken as a weaker proof.
fn verifier_ok(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// An error sent back to the app (RFC 6749 §4.1.2.1).
fn to_app(
    ctx: &Ctx,
    back: (&str, ResponseMode),
    state: Option<&str>,
    error: &str,
    description: &str,
) -> Response {
    answer_app(
        ctx,
        back,
        &[("error", error), ("error_description", description)],
        state,
    )
}

/// Every answer at the redirect URI names its issuer (RFC 9207): an app that talks to
/// several providers can then tell whose answer it holds, which defeats mix-up attacks.
/// `back` is the redirect URI (registered: checked by the caller) and how to reach it.
fn answer_app(
    ctx: &Ctx,
    (redirect_uri, mode): (&str, ResponseMode),
    params: &[(&str, &str)],
    state: Option<&str>,
) -> Response {
    let iss = issuer(ctx).ok();
    let all = params
        .iter()
        .copied()
        .chain(state.map(|s| ("state", s)))
        .chain(iss.as_deref().map(|i| ("iss", i)));
    if mode == ResponseMode::FormPost {
        let fields: Vec<(&str, &str)> = all.collect();
        return super::pages::form_post(redirect_uri, origin_of(redirect_uri).as_deref(), &fields);
    }
    let mut url = String::from(redirect_uri);
    let mut sep = if redirect_uri.contains('?') { '&' } else { '?' };
    for (name, value) in all {
        url.push(sep);
        url.push_str(name);
        url.push('=');
        url.push_str(&urlencoding::encode(value));
        sep = '&';
    }
    Redirect::to(&url).into_response()
}

/// The app `client_id` and its registered `redirect_uri`; else what the 400 page says.
fn registered(
    ctx: &Ctx,
    client_id: Option<&str>,
    redirect_uri: Option<&str>,
) -> Result<(idledger_projections::AppView, String), &'static str> {
    let Some(app) = client_id.and_then(|c| {
        ctx.app
            .engine
            .projector
            .read()
            .provider
            .by_client_id(c)
            .cloned()
    }) else {
        return Err("No app is registered with this client_id.");
    };
    match redirect_uri.filter(|r| app.redirect_uris.iter().any(|u| u == r)) {
        Some(r) => {
            let r = r.to_owned();
            Ok((app, r))
        }
        None => Err("The redirect_uri is not registered for this app."),
    }
}

/// The longest authorization request taken by form: it goes on as a URL.
const MAX_AUTHORIZE_FORM: usize = 8 << 10;

/// An authorization request sent as a form (OIDC Core §3.1.2.1 requires POST too). It is
/// answered with the same request as a GET: the browser then carries its `Lax` session
/// cookie, which a cross-site POST leaves behind, and one handler checks every request.
async fn authorize_by_form(
    form: Result<axum::Form<Vec<(String, String)>>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(pairs)) = form else {
        return bad_client("The request's parameters could not be read.");
    };
    let query = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    if query.len() > MAX_AUTHORIZE_FORM {
        return bad_client("The request is too long.");
    }
    Redirect::to(&format!("/authorize?{query}")).into_response()
}

async fn authorize(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    uri: Uri,
    query: Result<Query<AuthorizeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        // Unreadable as a whole: an error goes back to the app when it names itself and a
        // registered address once each (OIDC Core §3.1.2.6), else the page.
        let Some((client_id, redirect_uri, state)) = client_and_redirect(&uri) else {
            return bad_client("The request's parameters could not be read.");
        };
        return match registered(&ctx, Some(&client_id), Some(&redirect_uri)) {
            // The mode could not be read either: the query, which every app takes.
            Ok((_, redirect_uri)) => to_app(
                &ctx,
                (&redirect_uri, ResponseMode::Query),
                state.as_deref().filter(|s| s.len() <= MAX_STATE),
                "invalid_request",
                "a parameter is repeated or malformed",
            ),
            Err(why) => bad_client(why),
        };
    };
    let (app, redirect_uri) =
        match registered(&ctx, q.client_id.as_deref(), q.redirect_uri.as_deref()) {
            Ok(found) => found,
            Err(why) => return bad_client(why),
        };
    let response_mode = match q.response_mode.as_deref() {
        None | Some("query") => ResponseMode::Query,
        // The answer page's policy must name where its form goes, or the browser stops it.
        Some("form_post") if csp_can_name(&redirect_uri) => ResponseMode::FormPost,
        Some("form_post") => {
            return to_app(
                &ctx,
                (&redirect_uri, ResponseMode::Query),
                q.state.as_deref().filter(|s| s.len() <= MAX_STATE),
                "invalid_request",
                "response_mode=form_post needs a redirect_uri with a host name or IPv4 address",
            )
        }
        Some(_) => {
            return to_app(
                &ctx,
                (&redirect_uri, ResponseMode::Query),
                q.state.as_deref().filter(|s| s.len() <= MAX_STATE),
                "invalid_request",
                "response_mode: query or form_post",
            )
        }
    };
    let back = (redirect_uri.as_str(), response_mode);
    if q.state.as_ref().is_some_and(|s| s.len() > MAX_STATE) {
        return to_app(
            &ctx,
            back,
            None,
            "invalid_request",
            "the state is longer than 2048 characters",
        );
    }
    let state = q.state.as_deref();
    let fail = |error: &str, description: &str| to_app(&ctx, back, state, error, description);
    // Request objects are not supported, and discovery says so; ignoring one would act on
    // parameters the app did not mean (OIDC Core §6).
    if q.request.is_some() {
        return fail("request_not_supported", "request objects are not supported");
    }
    if q.request_uri.is_some() {
        return fail("request_uri_not_supported", "request_uri is not supported");
    }
    match q.response_type.as_deref() {
        Some("code") => {}
        None => return fail("invalid_request", "response_type is required"),
        Some(_) => return fail("unsupported_response_type", "only response_type=code"),
    }
    // Scopes it does not know are ignored (OIDC Core §3.1.2.1): the grant, recorded with
    // the tokens, holds the known ones once each.
    let asked: Vec<&str> = q.scope.as_deref().unwrap_or("").split(' ').collect();
    let scope: Vec<String> = SCOPES
        .iter()
        .filter(|s| asked.contains(s))
        .map(|s| (*s).to_owned())
        .collect();
    if !scope.iter().any(|s| s == "openid") {
        return fail("invalid_scope", "the openid scope is required");
    }
    if q.nonce.as_ref().is_some_and(|n| n.len() > MAX_NONCE) {
        return fail("invalid_request", "the nonce is longer than 255 characters");
    }
    match (
        q.code_challenge.as_deref(),
        q.code_challenge_method.as_deref(),
    ) {
        (Some(c), Some("S256")) if c.len() == 43 && c.bytes().all(base64url_byte) => {}
        (Some(_), _) => return fail("invalid_request", "code_challenge_method must be S256"),
        (None, _) if app.client_type == ClientType::Public => {
            return fail(
                "invalid_request",
                "PKCE with S256 is required for public clients",
            )
        }
        // A method without a challenge is a request that meant PKCE and lost it on the
        // way: granting a code without it would drop the protection it asked for.
        (None, Some(_)) => {
            return fail(
                "invalid_request",
                "code_challenge_method without a code_challenge",
            )
        }
        (None, None) => {}
    }
    let now = Utc::now();
    let prompt: Vec<&str> = q
        .prompt
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|p| !p.is_empty())
        .collect();
    let none = prompt.contains(&"none");
    if none && prompt.len() > 1 {
        // OIDC Core §3.1.2.1: `none` asks for no interaction; with anything else it is a
        // contradiction, not a choice to make for the app.
        return fail(
            "invalid_request",
            "prompt=none cannot be combined with another value",
        );
    }
    // A request naming whom the app signed in (OIDC Core §3.1.2.1) is answered for that
    // user only (see `continue_with`): another one signed in here meanwhile, or by this
    // request, is `login_required`, not a code for someone else.
    let hinted = match q.id_token_hint.as_deref() {
        None => None,
        Some(hint) => {
            let sub = crate::provider::verify_hint(&ctx.app.engine, hint)
                .and_then(|claims| claims["sub"].as_str()?.parse::<uuid::Uuid>().ok());
            let Some(sub) = sub else {
                return fail(
                    "invalid_request",
                    "id_token_hint is not an ID token of this provider",
                );
            };
            Some(UserId(sub))
        }
    };
    // A browser holds one session: choosing an account is signing in again, where the
    // passkey chooser (or the Entra step) is the choice. Consent needs no page: an app is
    // registered by an admin for their users, which is the consent.
    let fresh_after = if prompt.contains(&"login") || prompt.contains(&"select_account") {
        Some(now)
    } else {
        // An age beyond the calendar asks for nothing: any sign-in is recent enough.
        q.max_age.map(|a| {
            chrono::Duration::try_seconds(a.max(0))
                .and_then(|age| now.checked_sub_signed(age))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        })
    };
    let request = AuthRequest {
        app: app.id,
        redirect_uri: redirect_uri.clone(),
        state: q.state.clone(),
        nonce: q.nonce.clone(),
        code_challenge: q.code_challenge.clone(),
        scope,
        fresh_after,
        hinted,
        response_mode,
    };
    match continue_with(&ctx, &headers, &request).await {
        Some(answer) => answer,
        None if none => fail("login_required", "the user is not signed in"),
        None => {
            // Sign in first, then come back: the request waits in this browser's flow.
            let (flow, _) = super::flow_of(&ctx, &headers);
            ctx.store.with_flow(&flow, |f| f.authorize = Some(request));
            super::with_flow_cookie(
                &ctx,
                &headers,
                Redirect::to("/signin").into_response(),
                &flow,
            )
        }
    }
}

/// Whether a request's app is still there and still registers its redirect URI: an admin
/// may take either away while the request waits for a sign-in, and then nothing may go to
/// that address, not even an error.
fn still_registered(ctx: &Ctx, request: &AuthRequest) -> bool {
    ctx.app
        .engine
        .projector
        .read()
        .provider
        .app(request.app)
        .is_some_and(|a| !a.removed && a.redirect_uris.contains(&request.redirect_uri))
}

/// The page of a request whose app or redirect URI was taken away while it waited.
fn no_longer_registered() -> Response {
    bad_client("This app, or the redirect_uri of this request, is no longer registered.")
}

/// Answers an authorization request with a code when the browser's session satisfies it;
/// `None` when the user must sign in (again).
async fn continue_with(ctx: &Ctx, headers: &HeaderMap, request: &AuthRequest) -> Option<Response> {
    let (_, session) = signed_in(ctx, headers)?;
    if request.fresh_after.is_some_and(|t| session.auth_time < t) {
        return None;
    }
    if !still_registered(ctx, request) {
        return Some(no_longer_registered());
    }
    if request.hinted.is_some_and(|h| h != session.user) {
        return Some(to_app(
            ctx,
            request.back(),
            request.state.as_deref(),
            "login_required",
            "the user id_token_hint names is not the one signed in",
        ));
    }
    let app = ctx
        .app
        .engine
        .projector
        .read()
        .provider
        .app(request.app)
        .cloned()?;
    let state = request.state.as_deref();
    let domain = ctx
        .app
        .engine
        .projector
        .read()
        .users
        .get(session.user)
        .map(|u| u.domain_id);
    if !domain.is_some_and(|d| app.domain_ids.contains(&d)) {
        // A refusal of a signed-in user is part of their history (who tried which app);
        // the answer is the same whether or not it could be recorded.
        record_refusal(
            ctx,
            session.user,
            app.id,
            "access_denied: this app is not open to the user's domain",
            None,
        )
        .await;
        return Some(to_app(
            ctx,
            request.back(),
            state,
            "access_denied",
            "this app is not open to the signed-in user",
        ));
    }
    let code = sessions::random_text();
    {
        let mut codes = ctx.provider.codes.lock().unwrap_or_else(|e| e.into_inner());
        codes.retain(|_, c| c.created.elapsed() < ctx.app.oidc.code_ttl);
        // One user's codes past their share: the oldest goes (a user with many tabs loses
        // an old one; a script cannot fill the map for everyone).
        let mine: Vec<(&[u8; 32], &Instant)> = codes
            .iter()
            .filter(|(_, c)| c.user == session.user)
            .map(|(k, c)| (k, &c.created))
            .collect();
        if mine.len() >= CODES_PER_USER {
            if let Some(oldest) = mine.iter().min_by_key(|(_, at)| **at).map(|(k, _)| **k) {
                codes.remove(&oldest);
            }
        }
        if codes.len() >= MOST {
            return Some(to_app(
                ctx,
                request.back(),
                state,
                "temporarily_unavailable",
                "too many sign-ins at once; try again",
            ));
        }
        codes.insert(
            hash(&code),
            CodeGrant {
                request: request.clone(),
                user: session.user,
                session: Granted {
                    sid: session.sid.clone(),
                    auth_time: session.auth_time,
                    amr: session.amr.clone(),
                    method: session.method,
                    opened_position: session.opened_position,
                },
                created: Instant::now(),
            },
        );
    }
    Some(answer_app(ctx, request.back(), &[("code", &code)], state))
}

/// After signing in: the request that was waiting in this browser's flow.
async fn resume(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let flow = crate::http::session::cookie(&headers, super::flow_cookie_name(https(&ctx)))
        .map(str::to_owned);
    let request = flow
        .as_deref()
        .and_then(|f| ctx.store.with_stored_flow(f, |f| f.authorize.take()))
        .flatten();
    let Some(request) = request else {
        return Redirect::to("/me").into_response();
    };
    match continue_with(&ctx, &headers, &request).await {
        Some(answer) => answer,
        None if !still_registered(&ctx, &request) => no_longer_registered(),
        None => to_app(
            &ctx,
            request.back(),
            request.state.as_deref(),
            "login_required",
            "the sign-in did not complete",
        ),
    }
}

// ---- tokens -------------------------------------------------------------------------------------

/// The token endpoint's form (RFC 6749 §4.1.3, §6).
#[derive(Deserialize, Default)]
struct TokenForm {
    #[serde(default, deserialize_with = "omitted_if_empty")]
    grant_type: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    code: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    redirect_uri: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    code_verifier: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    refresh_token: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    client_secret: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    scope: Option<String>,
}

/// RFC 6749 §5.1.
#[derive(Serialize)]
struct TokenAnswer {
    access_token: String,
    token_type: &'static str,
    expires_in: i64,
    /// Left out of a refresh narrowed to scopes without `openid` (OIDC Core §12.2 lets a
    /// refresh answer carry none).
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    scope: String,
}

/// RFC 6749 §5.2.
#[derive(Serialize)]
struct TokenError {
    error: &'static str,
    error_description: String,
}

/// A refused token request, answered as RFC 6749 §5.2 says.
struct TokenFail(Box<Response>);

fn boxed(r: Response) -> TokenFail {
    TokenFail(Box::new(r))
}

impl IntoResponse for TokenFail {
    fn into_response(self) -> Response {
        *self.0
    }
}

fn token_error(
    status: StatusCode,
    error: &'static str,
    description: impl Into<String>,
) -> Response {
    let mut r = (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(TokenError {
            error,
            error_description: description.into(),
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"idledger\""),
        );
    }
    r
}

/// The app a token request authenticates as (RFC 6749 §2.3.1: Basic with URL-encoded
/// parts, or the form's fields; a public app names itself and has no secret).
/// A client that did not authenticate, and the registered app it named, if any.
struct ClientRefused {
    answer: TokenFail,
    app: Option<AppId>,
}

fn client(
    ctx: &Ctx,
    headers: &HeaderMap,
    form: &TokenForm,
) -> Result<idledger_projections::AppView, ClientRefused> {
    // Counted by the app it named (a guessed secret shows there), else as no app.
    let refused = |app: Option<AppId>| {
        crate::metrics::client_authentication_failed(app);
        ClientRefused {
            answer: TokenFail(Box::new(token_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            ))),
            app,
        }
    };
    let invalid = || refused(None);
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::http::credentials(v, "Basic"))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|t| {
            let (id, secret) = t.split_once(':')?;
            // Both were form-urlencoded (RFC 6749 §2.3.1): `+` is a space.
            let decode = |s: &str| {
                urlencoding::decode(&s.replace('+', " "))
                    .ok()
                    .map(|d| d.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    // One way of authenticating per request (RFC 6749 §2.3): a secret in the form as well
    // as in the header is refused, not silently ignored.
    if basic.is_some() && form.client_secret.is_some() {
        return Err(invalid());
    }
    let (id, secret) = match (basic, &form.client_id) {
        (Some((id, secret)), None) => (id, Some(secret)),
        (Some((id, secret)), Some(form_id)) if *form_id == id => (id, Some(secret)),
        (Some(_), Some(_)) => return Err(invalid()),
        (None, Some(id)) => (id.clone(), form.client_secret.clone()),
        (None, None) => return Err(invalid()),
    };
    let app = ctx
        .app
        .engine
        .projector
        .read()
        .provider
        .by_client_id(&id)
        .cloned()
        .ok_or_else(invalid)?;
    match (app.client_type, secret, app.secret_hash) {
        (ClientType::Public, None, _) => Ok(app),
        // A public client naming itself in the header with no password (Go's x/oauth2
        // does, set to send the header) authenticates no more than `none` does.
        (ClientType::Public, Some(s), _) if s.is_empty() => Ok(app),
        (ClientType::Confidential, Some(secret), Some(h)) => {
            let sent = crate::http::token_hash(&secret);
            if same_secret(&hex::encode(sent.0), &hex::encode(h.0)) {
                Ok(app)
            } else {
                Err(refused(Some(app.id)))
            }
        }
        _ => Err(refused(Some(app.id))),
    }
}

async fn token(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return unreadable_form();
    };
    let app = match client(&ctx, &headers, &form) {
        Ok(a) => a,
        Err(ClientRefused { answer, app }) => {
            if let Some(app) = app {
                record_grant_without_client(&ctx, app, &form).await;
            }
            return answer.into_response();
        }
    };
    match form.grant_type.as_deref() {
        Some("authorization_code") => exchange_code(&ctx, &app, &form).await,
        Some("refresh_token") => refresh(&ctx, &app, &form).await,
        None => token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is missing",
        ),
        Some(_) => token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "authorization_code or refresh_token",
        ),
    }
}

/// A user's code or refresh token presented for `app` by a caller who could not
/// authenticate as it: a grant in the wrong hands, or an app misconfigured. The user the
/// grant names has it in their history (at most once a minute per app: anyone holding the
/// grant can repeat it). Nothing is spent or revoked: the app itself may still present it.
async fn record_grant_without_client(ctx: &Ctx, app: AppId, form: &TokenForm) {
    let (user, token) = match form.grant_type.as_deref() {
        Some("authorization_code") => {
            let codes = ctx.provider.codes.lock().unwrap_or_else(|e| e.into_inner());
            let live = form.code.as_deref().and_then(|code| {
                codes
                    .get(&hash(code))
                    .filter(|g| g.request.app == app && g.created.elapsed() < ctx.app.oidc.code_ttl)
            });
            match live {
                Some(g) => (g.user, None),
                None => return,
            }
        }
        // The user's state tells whether the token still holds a family of the app: one
        // spent or revoked long ago is no one's news.
        Some("refresh_token") => match form
            .refresh_token
            .as_deref()
            .and_then(|t| Some((t, refresh_token_names(ctx, t)?)))
        {
            Some((t, (name, issued_here))) => (
                name.user,
                Some(Presented::Refresh {
                    family: name.family,
                    generation: name.generation,
                    presented: idledger_domain::Hash(hash(t)),
                    issued_here,
                }),
            ),
            None => return,
        },
        _ => return,
    };
    let refused = AppTokenRefused {
        app_id: app,
        reason: "invalid_client: a grant was presented for this app without its credentials".into(),
        revoked_family: None,
        at: Utc::now(),
    };
    // Recorded after the answer: a live grant is answered as fast as a dead one.
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let command = || SignInCommand::RefuseGrantWithoutClient {
            refused: refused.clone(),
            token: token.clone(),
        };
        if let Err(e) = decide_with_tries(&ctx, user, command).await {
            if e.status.is_server_error() {
                tracing::warn!(%user, error = %e.message, "a token refusal could not be recorded");
            }
        }
    });
}

/// RFC 7009's form: the token and, for `client_secret_post` or `none`, the client. A
/// `token_type_hint` is only a hint (§2.1) and goes unread: every token is looked up for
/// what it is.
#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default, deserialize_with = "omitted_if_empty")]
    token: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    client_id: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    client_secret: Option<String>,
}

/// Token revocation (RFC 7009), for an app signing its user out: a refresh token of the
/// app ends its family, and the access tokens of that grant with it (`/userinfo` refuses
/// them). An access token alone is not revoked (it lives minutes; its refresh token is
/// what to revoke): `unsupported_token_type`, as §2.2.1 says. A token that is no app's
/// live one is answered 200, as §2.2 says, and changes nothing.
async fn revoke(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    form: Result<Form<RevokeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return unreadable_form();
    };
    let credentials = TokenForm {
        client_id: form.client_id.clone(),
        client_secret: form.client_secret.clone(),
        ..TokenForm::default()
    };
    let app = match client(&ctx, &headers, &credentials) {
        Ok(a) => a,
        Err(ClientRefused { answer, .. }) => return answer.into_response(),
    };
    let Some(token) = form.token.as_deref() else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "token is missing",
        );
    };
    let done = || (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response();
    let now = Utc::now();
    let (user, presented) = if let Some((name, issued_here)) = refresh_token_names(&ctx, token) {
        let presented = Presented::Refresh {
            family: name.family,
            generation: name.generation,
            presented: idledger_domain::Hash(hash(token)),
            issued_here,
        };
        (name.user, presented)
    } else {
        // An access token of this app's: its grant, by the digest it names.
        let Some(claims) = verify(&ctx.app.engine, token.trim(), TokenType::Access, now) else {
            return done();
        };
        let user = claims["sub"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(UserId);
        let grant = claims["grant_id"]
            .as_str()
            .and_then(|g| B64.decode(g).ok())
            .and_then(|g| <[u8; 16]>::try_from(g).ok());
        let ours = claims["client_id"].as_str() == Some(app.client_id.as_str());
        match (user, grant) {
            (Some(user), Some(grant)) if ours => (user, Presented::Access { grant }),
            _ => return done(),
        }
    };
    let access_grant = match presented {
        Presented::Access { grant } => Some(grant),
        Presented::Refresh { .. } => None,
    };
    let request = RevokeRequest {
        app_id: app.id,
        token: presented,
        at: now,
    };
    let command = || SignInCommand::RevokeAppTokens(request.clone());
    let decided = decide_with_tries(&ctx, user, command).await;
    let nothing_to_end = matches!(&decided, Ok((events, _)) if events.is_empty());
    let unrevocable = match access_grant {
        Some(grant) if nothing_to_end => !grant_revoked(&ctx, user, grant).await,
        _ => false,
    };
    if unrevocable {
        // A grant with no refresh family (no `offline_access`): its access tokens live
        // minutes and are not revoked one by one (§2.2.1).
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_token_type",
            "this access token's grant has no refresh token to revoke; it expires soon",
        );
    }
    match decided {
        // Revoked, or nothing of this app's to revoke (a user or family gone).
        Ok(_) => done(),
        Err(r) if r.status.is_client_error() => done(),
        // Not recorded: the client is told to try again (§2.2.1 lets it).
        Err(r) => unavailable(r.message).into_response(),
    }
}

/// The access token's grant was revoked already (its refresh token revoked first, say),
/// as far as the projections tell once they hold what the log held when asked.
async fn grant_revoked(ctx: &Ctx, user: UserId, grant: [u8; 16]) -> bool {
    let head = ctx.app.engine.log.head().position;
    let waited = ctx
        .app
        .engine
        .projector
        .wait_for(head, std::time::Duration::from_secs(2))
        .await;
    if waited.is_err() {
        return false;
    }
    let p = ctx.app.engine.projector.read();
    p.users.get(user).is_some_and(|u| {
        u.revoked_grants
            .iter()
            .any(|(revoked, _)| idledger_domain::decide::refresh::grant_digest(*revoked) == grant)
    })
}

/// A token or revocation request whose form does not read (RFC 6749 §5.2).
fn unreadable_form() -> Response {
    token_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the form could not be read",
    )
}

fn invalid_grant(description: &str) -> Response {
    token_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

/// Records a refusal on the user's stream, with a few tries as an issue has (the refusal
/// stands either way); whether it was recorded, since a revocation it carries holds only
/// once it is.
async fn record_refusal(
    ctx: &Ctx,
    user: UserId,
    app: AppId,
    reason: &str,
    family: Option<uuid::Uuid>,
) -> bool {
    let refused = AppTokenRefused {
        app_id: app,
        reason: reason.to_owned(),
        revoked_family: family,
        at: Utc::now(),
    };
    let command = || SignInCommand::RefuseAppToken(refused.clone());
    match decide_with_tries(ctx, user, command).await {
        Ok(_) => true,
        // One like it was recorded a moment ago (an authorization refusal, which any site
        // can cause): the trail has it.
        Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => false,
        Err(e) => {
            tracing::warn!(%user, error = %e.message, "a token refusal could not be recorded");
            false
        }
    }
}

/// [`super::decide_at`], asked again on a conflict up to three times, each on fresh state.
/// Commands on the user's stream take turns (`store::turns`), but writers that do not
/// (sync, rotation) can still make one a 409, and what the token endpoint decides (a
/// spent code's tokens, a family's end) cannot be asked for again by the app.
async fn decide_with_tries(
    ctx: &Ctx,
    user: UserId,
    command: impl Fn() -> SignInCommand,
) -> Result<super::Decided, Refusal> {
    let mut tries = 0;
    loop {
        match super::decide_at(ctx, user, None, command()).await {
            Err(r) if r.status == StatusCode::CONFLICT && tries < 3 => tries += 1,
            decided => return decided,
        }
    }
}

async fn exchange_code(
    ctx: &Ctx,
    app: &idledger_projections::AppView,
    form: &TokenForm,
) -> Response {
    let (Some(code), Some(_)) = (form.code.as_deref(), form.redirect_uri.as_deref()) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code and redirect_uri are required",
        );
    };
    let key = hash(code);
    // Taken at once, and marked spent in the same step: a code is exchanged once, and a
    // second use, however close behind, is seen as one.
    let issuing = Arc::new(tokio::sync::Mutex::new(()));
    let _issuing = issuing.clone().try_lock_owned().ok();
    let (grant, reused) = {
        // Both held at once (codes first, the only order either is taken in): a second
        // use that finds the code gone also finds it spent.
        let mut codes = ctx.provider.codes.lock().unwrap_or_else(|e| e.into_inner());
        let grant = codes.remove(&key);
        let mut spent = ctx.provider.spent.lock().unwrap_or_else(|e| e.into_inner());
        match grant {
            Some(grant) => {
                // Remembered well past the code's life: a replay minutes later (a code
                // leaked from a log, a history) still ends what the code gave.
                let remember = ctx.app.oidc.code_ttl.max(SPENT_REMEMBERED);
                let grant_id = uuid::Uuid::new_v4();
                let family = grant
                    .request
                    .scope
                    .iter()
                    .any(|s| s == "offline_access")
                    .then_some(grant_id);
                spent.insert(
                    key,
                    Spent {
                        at: Instant::now(),
                        user: grant.user,
                        app: grant.request.app,
                        grant: grant_id,
                        issuing,
                        replay_recorded: false,
                    },
                    remember,
                    MOST,
                );
                (Some((grant, grant_id, family)), None)
            }
            None => (None, spent.first_replay(&key)),
        }
    };
    let Some((grant, grant_id, family)) = grant else {
        if let Some(spent) = reused {
            // A code used twice: the tokens it gave are revoked (RFC 6749 §4.1.2); the
            // refusal's record ends the family, once the first use has begun it, and
            // userinfo refuses the access tokens that name the grant.
            drop(spent.issuing.lock().await);
            let recorded = record_refusal(
                ctx,
                spent.user,
                spent.app,
                "invalid_grant: authorization code reused",
                Some(spent.grant),
            )
            .await;
            if !recorded {
                // Nothing is revoked until it is recorded: the next replay tries again.
                let mut spent = ctx.provider.spent.lock().unwrap_or_else(|e| e.into_inner());
                spent.replay_unrecorded(&key);
            }
        }
        return invalid_grant("the code is unknown, expired or used already");
    };
    let expired = grant.created.elapsed() >= ctx.app.oidc.code_ttl;
    let reason = if expired {
        Some("the code expired")
    } else if grant.request.app != app.id {
        Some("the code was issued to another client")
    } else if form.redirect_uri.as_deref() != Some(grant.request.redirect_uri.as_str()) {
        Some("redirect_uri differs from the authorization request's")
    } else if !app.redirect_uris.contains(&grant.request.redirect_uri) {
        // Taken off the registration after the code was issued (a hijacked address).
        Some("the redirect_uri is no longer registered for this client")
    } else {
        pkce_problem(
            app.client_type,
            grant.request.code_challenge.as_deref(),
            form.code_verifier.as_deref(),
        )
    };
    // A code stands for a sign-in that is still on: one signed out, ended by a removed
    // method, or taken away (even if given back since) while the code waited must not
    // begin a new refresh family, which nothing that ended it would reach (RFC 6749
    // §10.5: a code is bound to its authorization).
    let session = &grant.session;
    let reason = reason.or_else(|| {
        let stands = ctx.store.sid_open(&session.sid)
            && sign_in_stands(ctx, grant.user, session.method, session.opened_position);
        (!stands).then_some("the sign-in the code was issued in has ended")
    });
    if let Some(reason) = reason {
        let recorded = record_refusal(
            ctx,
            grant.user,
            app.id,
            &format!("invalid_grant: {reason}"),
            None,
        )
        .await;
        if recorded {
            ctx.provider
                .spent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .refused(&key);
        }
        return invalid_grant(reason);
    }
    let carried = TokenGrant {
        scope: grant.request.scope.clone(),
        nonce: grant.request.nonce.clone(),
        auth_time: grant.session.auth_time,
        amr: grant.session.amr.clone(),
        method: grant.session.method,
    };
    let refresh = match family {
        Some(family) => {
            let first = RefreshName {
                user: grant.user,
                family,
                generation: 0,
            };
            match new_refresh_token(ctx, first, TagKey::MakeIfMissing) {
                Ok(Some(token)) => Some((family, token)),
                Ok(None) | Err(_) => {
                    return unavailable("the key store is unavailable").into_response()
                }
            }
        }
        None => None,
    };
    let (user, sid) = (grant.user, &grant.session.sid);
    match issue(ctx, app, user, sid, &carried, grant_id, refresh).await {
        Ok((r, _)) => r,
        Err(r) => r.into_response(),
    }
}

/// ID token and access token claims (OIDC Core §2, §5.1).
#[derive(Serialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    azp: String,
    exp: i64,
    iat: i64,
    auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    acr: &'static str,
    amr: Vec<String>,
    sid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    /// Access tokens only: what they grant.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// Access tokens only: the app they were issued to (RFC 9068 §2.2).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    /// Access tokens only: unique id.
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    /// Access tokens only: the code exchange (and refresh family) they came from, which a
    /// reused code or refresh token revokes — as [`grant_ref`], never the id itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    grant_id: Option<String>,
    /// Access tokens only: the log position of the record of their issue. Taking the
    /// user's sign-in away after it (deactivation, an SSO override) ends them for good,
    /// even once it is given back.
    #[serde(skip_serializing_if = "Option::is_none")]
    log_position: Option<u64>,
}

/// What an access token says of its grant: a one-way reference. The family id itself is
/// what a refresh token names besides the public `sub`; were it in access tokens, anyone
/// who saw one (a resource server, a log) could make up a refresh token of an earlier
/// generation, and presenting that ends the family as a replay.
fn grant_ref(grant: uuid::Uuid) -> String {
    B64.encode(idledger_domain::decide::refresh::grant_digest(grant))
}

fn acr_of(m: SsoMethod) -> &'static str {
    match m {
        SsoMethod::Passwordless => "passwordless",
        SsoMethod::PasswordAndSecondFactor => "password_and_second_factor",
    }
}

fn unavailable(message: impl Into<String>) -> TokenFail {
    boxed(token_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        message,
    ))
}

/// The signing keys the app's tokens need, made and recorded on the first request (access
/// tokens are ES256; ID tokens use the app's algorithm). Done before a refresh token is
/// spent, so that a missing key cannot cost the app its family.
async fn signing_keys_ready(
    ctx: &Ctx,
    app: &idledger_projections::AppView,
) -> Result<(), TokenFail> {
    crate::provider::ensure_signing_keys(
        &ctx.app.engine,
        &idledger_domain::Actor::System,
        &["ES256", app.id_token_alg.as_str()],
        ctx.app.oidc.overlap(),
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "no signing key could be made");
        unavailable("no signing key")
    })
}

/// Records the tokens of a code exchange on the user's stream (the rules decide whether
/// they may be had, and a refresh token begins its family there), then answers them.
async fn issue(
    ctx: &Ctx,
    app: &idledger_projections::AppView,
    user: UserId,
    sid: &str,
    carried: &TokenGrant,
    grant_id: uuid::Uuid,
    refresh: Option<(uuid::Uuid, String)>,
) -> Result<(Response, Option<uuid::Uuid>), TokenFail> {
    issuer(ctx).map_err(|r| unavailable(r.message))?;
    signing_keys_ready(ctx, app).await?;
    let issued = AppTokensIssued {
        app_id: app.id,
        grant: "authorization_code".into(),
        sid: sid.to_owned(),
        refresh: refresh.as_ref().map(|(family, token)| RefreshIssued {
            family: *family,
            token_hash: idledger_domain::Hash(hash(token)),
            grant: Some(carried.clone()),
        }),
        at: Utc::now(),
    };
    // The code is spent already: the app cannot ask again.
    let command = || SignInCommand::IssueAppTokens {
        issued: issued.clone(),
        app_domains: app.domain_ids.clone(),
        method: carried.method,
    };
    let decided = decide_with_tries(ctx, user, command).await;
    let position = match decided {
        Ok((_, position)) => position,
        Err(r) if r.status == StatusCode::CONFLICT => {
            record_refusal(
                ctx,
                user,
                app.id,
                &format!("invalid_grant: {}", r.message),
                None,
            )
            .await;
            return Err(boxed(invalid_grant(&r.message)));
        }
        Err(r) => return Err(unavailable(r.message)),
    };
    let family = refresh.as_ref().map(|(f, _)| *f);
    let refresh_token = refresh.map(|(_, t)| t);
    let issued = Issued { grant_id, position };
    let answer = answer_tokens(ctx, app, user, sid, carried, issued, refresh_token)?;
    Ok((answer, family))
}

/// Where an issue of tokens is recorded: the grant they belong to, and the log position.
#[derive(Clone, Copy)]
struct Issued {
    grant_id: uuid::Uuid,
    position: u64,
}

/// Signs the ID and access tokens of a recorded issue and answers them (RFC 6749 §5.1).
fn answer_tokens(
    ctx: &Ctx,
    app: &idledger_projections::AppView,
    user: UserId,
    sid: &str,
    carried: &TokenGrant,
    issued: Issued,
    refresh_token: Option<String>,
) -> Result<Response, TokenFail> {
    let iss = issuer(ctx).map_err(|r| unavailable(r.message))?;
    let (name, upn, mail) = {
        let p = ctx.app.engine.projector.read();
        p.users
            .get(user)
            .map(|u| {
                (
                    u.attributes.display_name.clone(),
                    u.attributes.user_principal_name.clone(),
                    u.attributes.mail.clone(),
                )
            })
            .unwrap_or_default()
    };
    let now = Utc::now().timestamp();
    let ttl = ctx.app.oidc.token_ttl.as_secs() as i64;
    let scope = &carried.scope;
    let profile = scope.iter().any(|s| s == "profile");
    let email = scope.iter().any(|s| s == "email");
    let claims = |nonce: Option<String>, access: bool| Claims {
        iss: iss.clone(),
        sub: user.to_string(),
        aud: app.client_id.clone(),
        azp: app.client_id.clone(),
        exp: now + ttl,
        iat: now,
        auth_time: carried.auth_time.timestamp(),
        nonce,
        acr: acr_of(carried.method),
        amr: carried.amr.clone(),
        sid: sid.to_owned(),
        name: profile.then(|| name.clone()),
        preferred_username: profile.then(|| upn.clone()),
        email: if email { mail.clone() } else { None },
        scope: access.then(|| scope.join(" ")),
        client_id: access.then(|| app.client_id.clone()),
        jti: access.then(|| uuid::Uuid::new_v4().to_string()),
        grant_id: access.then(|| grant_ref(issued.grant_id)),
        log_position: access.then_some(issued.position),
    };
    let sign = |alg: &str, typ, c: &Claims| {
        ctx.provider
            .signer
            .sign(&ctx.app.engine, alg, typ, c)
            .map_err(|e| {
                tracing::warn!(error = %e, "a token could not be signed");
                unavailable("signing failed")
            })
    };
    let id_token = if scope.iter().any(|s| s == "openid") {
        Some(sign(
            &app.id_token_alg,
            TokenType::Id,
            &claims(carried.nonce.clone(), false),
        )?)
    } else {
        None
    };
    let access_token = sign("ES256", TokenType::Access, &claims(None, true))?;
    let body = TokenAnswer {
        access_token,
        token_type: "Bearer",
        expires_in: ttl,
        id_token,
        refresh_token,
        scope: scope.join(" "),
    };
    Ok((
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response())
}

/// The refresh token grant (RFC 6749 §6): the user's stream decides whether the token is
/// its family's current one; the answer carries the next.
async fn refresh(ctx: &Ctx, app: &idledger_projections::AppView, form: &TokenForm) -> Response {
    let Some(token) = form.refresh_token.as_deref() else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is missing",
        );
    };
    const UNKNOWN: &str = "the refresh token is unknown, revoked or another client's";
    let Some((name, issued_here)) = refresh_token_names(ctx, token) else {
        return invalid_grant(UNKNOWN);
    };
    let Some(generation) = name.generation.checked_add(1) else {
        return invalid_grant(UNKNOWN);
    };
    // Whatever can fail before the token is spent, fails first: once the next token is
    // recorded, the presented one is spent, and a retry with it would end the family.
    if let Err(r) = issuer(ctx) {
        return unavailable(r.message).into_response();
    }
    if let Err(r) = signing_keys_ready(ctx, app).await {
        return r.into_response();
    }
    let next = match new_refresh_token(ctx, RefreshName { generation, ..name }, TagKey::Existing) {
        Ok(Some(next)) => next,
        Ok(None) => return invalid_grant(UNKNOWN),
        Err(r) => return unavailable(r.message).into_response(),
    };
    let request = RefreshRequest {
        app_id: app.id,
        family: name.family,
        generation: name.generation,
        issued_here,
        presented: idledger_domain::Hash(hash(token)),
        next: idledger_domain::Hash(hash(&next)),
        app_domains: app.domain_ids.clone(),
        scope: form.scope.as_ref().map(|asked| {
            asked
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        at: Utc::now(),
    };
    // Refreshes on one user's stream can race (an attacker replaying a copy as fast as
    // they can, say): the decision — the family's end, most of all — must be recorded.
    let command = || SignInCommand::RefreshAppTokens(request.clone());
    let (events, position) = match decide_with_tries(ctx, name.user, command).await {
        Ok(decided) => decided,
        Err(r) if r.status == StatusCode::NOT_FOUND => return invalid_grant(UNKNOWN),
        Err(r) if r.status == StatusCode::BAD_REQUEST => {
            return token_error(StatusCode::BAD_REQUEST, "invalid_scope", &r.message)
        }
        // The user's domain is removed (their own stream not yet told): a revoked grant
        // (RFC 6749 §5.2), not a server that may answer later.
        Err(r) if r.status == StatusCode::FORBIDDEN => return invalid_grant(&r.message),
        Err(r) => return unavailable(r.message).into_response(),
    };
    match events.first() {
        Some(Event::AppTokensIssued(AppTokensIssued {
            sid,
            refresh:
                Some(RefreshIssued {
                    grant: Some(carried),
                    ..
                }),
            ..
        })) => match answer_tokens(
            ctx,
            app,
            name.user,
            sid,
            // A refreshed ID token carries no nonce (OIDC Core §12.2): the app checks
            // a nonce against a sign-in it started, and a refresh is none. A narrower
            // scope asked for narrows these tokens only (RFC 6749 §6): the next refresh
            // token keeps the whole grant, as recorded.
            &TokenGrant {
                nonce: None,
                scope: match request.scope.as_deref() {
                    Some(asked) if !asked.is_empty() => carried
                        .scope
                        .iter()
                        .filter(|granted| asked.contains(granted))
                        .cloned()
                        .collect(),
                    _ => carried.scope.clone(),
                },
                ..carried.clone()
            },
            Issued {
                grant_id: name.family,
                position,
            },
            Some(next),
        ) {
            Ok(answer) => answer,
            // The presented token is spent already: a retry would look like a replay.
            Err(_) => invalid_grant("the tokens could not be signed; sign in again"),
        },
        Some(Event::AppTokenRefused(refused)) => invalid_grant(
            refused
                .reason
                .strip_prefix("invalid_grant: ")
                .unwrap_or(&refused.reason),
        ),
        _ => invalid_grant(UNKNOWN),
    }
}

// ---- userinfo and logout -------------------------------------------------------------------

/// The claims about the user an access token grants (OIDC Core §5.3).
#[derive(Serialize)]
struct UserInfo {
    sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    preferred_username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
}

async fn userinfo(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let unauthorized = |why: &str| {
        let mut r = (
            StatusCode::UNAUTHORIZED,
            Json(TokenError {
                error: "invalid_token",
                error_description: why.to_owned(),
            }),
        )
            .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        r
    };
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::http::credentials(v, "Bearer"))
    else {
        // No credentials at all: only the scheme, no error (RFC 6750 §3.1).
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response();
    };
    let now = Utc::now();
    let Some(claims) = verify(&ctx.app.engine, token.trim(), TokenType::Access, now) else {
        return unauthorized("the access token does not verify");
    };
    let fresh = claims["exp"].as_i64().is_some_and(|e| now.timestamp() < e);
    let scope = claims["scope"].as_str().unwrap_or("").to_owned();
    let ours = claims["iss"].as_str() == ctx.app.public_url.as_ref().map(|p| p.origin.as_str());
    if !fresh || !ours || scope.is_empty() {
        return unauthorized("the access token is expired or not an access token");
    }
    // Userinfo is OpenID Connect's: a token narrowed to scopes without `openid` (by a
    // refresh) reads nothing here (RFC 6750 §3.1).
    if !scope.split(' ').any(|s| s == "openid") {
        let mut r = (
            StatusCode::FORBIDDEN,
            Json(TokenError {
                error: "insufficient_scope",
                error_description: "the access token was not issued for openid".into(),
            }),
        )
            .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(
                "Bearer error=\"insufficient_scope\", scope=\"openid\"",
            ),
        );
        return r;
    }
    let Some(user) = claims["sub"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .map(UserId)
    else {
        return unauthorized("the access token names no user");
    };
    let person = super::person(&ctx, user);
    if person.as_ref().is_none_or(|p| p.allowed.is_err()) {
        return unauthorized("the user may no longer sign in");
    }
    // The app must still be registered for the user's domain: removing it, or taking the
    // domain from it, ends what its tokens may read, as it ends its refreshes.
    let app_serves = claims["client_id"].as_str().is_some_and(|c| {
        let p = ctx.app.engine.projector.read();
        p.provider.by_client_id(c).is_some_and(|a| {
            !a.removed
                && person
                    .as_ref()
                    .is_some_and(|u| a.domain_ids.contains(&u.domain_id))
        })
    });
    if !app_serves {
        return unauthorized("the app is no longer registered for this user");
    }
    let p = ctx.app.engine.projector.read();
    let Some(u) = p.users.get(user) else {
        return unauthorized("no such user");
    };
    let revoked = claims["grant_id"].as_str().is_some_and(|r| {
        u.revoked_grants
            .iter()
            .any(|(grant, _)| grant_ref(*grant) == r)
    });
    if revoked {
        return unauthorized(
            "the access token was revoked: its code or refresh token was used twice",
        );
    }
    // Issued before the user's sign-in was last taken away (deactivated, an SSO override):
    // giving it back revives no token of before. (A token without its position is older
    // than this rule: refused once anything was ever taken away.)
    let issued_position = claims["log_position"].as_u64().unwrap_or(0);
    if issued_position < u.sign_in_withdrawn_position {
        return unauthorized("the user's sign-in was taken away after this token was issued");
    }
    if issued_position < u.app_tokens_withdrawn_position {
        return unauthorized(
            "a passkey or authenticator app was removed after this token was issued",
        );
    }
    let has = |s: &str| scope.split(' ').any(|x| x == s);
    Json(UserInfo {
        sub: user.to_string(),
        name: has("profile").then(|| u.attributes.display_name.clone()),
        preferred_username: has("profile").then(|| u.attributes.user_principal_name.clone()),
        email: if has("email") {
            u.attributes.mail.clone()
        } else {
            None
        },
    })
    .into_response()
}

/// RP-initiated logout's query (OpenID Connect RP-Initiated Logout 1.0 §2).
#[derive(Deserialize)]
struct EndSession {
    #[serde(default, deserialize_with = "omitted_if_empty")]
    id_token_hint: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    post_logout_redirect_uri: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    state: Option<String>,
    #[serde(default, deserialize_with = "omitted_if_empty")]
    client_id: Option<String>,
}

impl EndSession {
    /// `/end_session?…` with this request's parameters.
    fn as_query(&self) -> String {
        let pairs: Vec<String> = [
            ("id_token_hint", &self.id_token_hint),
            ("post_logout_redirect_uri", &self.post_logout_redirect_uri),
            ("state", &self.state),
            ("client_id", &self.client_id),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", urlencoding::encode(v.as_deref()?))))
        .collect();
        format!("/end_session?{}", pairs.join("&"))
    }
}

/// Ends sessions at an app's request. The browser's own session ends at once when the ID
/// token the app holds (`id_token_hint`) came from it; otherwise the user is asked first
/// (RP-Initiated Logout 1.0 §2 requires it): any site can send a browser here, and must
/// not be able to sign its user out. A session of another browser never ends here.
async fn end_session(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    query: Result<Query<EndSession>, axum::extract::rejection::QueryRejection>,
) -> Response {
    asked_to_end_session(&ctx, &headers, query.map(|Query(q)| q).ok())
}

/// An app's sign-out request, by query or (RP-Initiated Logout 1.0 §2 allows both) form.
fn asked_to_end_session(ctx: &Ctx, headers: &HeaderMap, q: Option<EndSession>) -> Response {
    let hint = q
        .as_ref()
        .and_then(|q| q.id_token_hint.as_deref())
        .and_then(|t| crate::provider::verify_hint(&ctx.app.engine, t));
    let hinted_sid = hint.as_ref().and_then(|c| c["sid"].as_str());
    let hinted_app = hint
        .as_ref()
        .and_then(|c| c["aud"].as_str().map(str::to_owned));
    let named_app = q.as_ref().and_then(|q| q.client_id.clone());
    // Both given, they must agree (RP-Initiated Logout 1.0 §2): else one app's token
    // would send the browser on to another app's address.
    if hinted_app.is_some() && named_app.is_some() && hinted_app != named_app {
        return super::pages::problem(
            StatusCode::BAD_REQUEST,
            "Sign-out not understood",
            "The app named is not the one this sign-in was for. Start again from the app you were using.",
        );
    }
    let own = signed_in(ctx, headers);
    // Only the session this browser holds ends on a hint: anyone holding the ID token (an
    // app's server, a script that read it) could otherwise sign its user out on every
    // device, and the spec wants the user asked about any other session.
    if let (Some(sid), Some((_, session))) = (hinted_sid, &own) {
        if session.sid == sid {
            ctx.store.close_sid(sid);
        }
    }
    // A hint this provider did not issue fails the request's validation, and then the
    // browser is sent nowhere (RP-Initiated Logout 1.0 §4): whoever made it up named the
    // app, and its address, that the user would land on.
    let forged_hint = q.as_ref().is_some_and(|q| q.id_token_hint.is_some()) && hint.is_none();
    let target = if forged_hint {
        LogoutTarget {
            client_id: None,
            post_logout_redirect_uri: None,
            state: None,
        }
    } else {
        LogoutTarget {
            client_id: hinted_app.or(named_app),
            post_logout_redirect_uri: q.as_ref().and_then(|q| q.post_logout_redirect_uri.clone()),
            state: q.as_ref().and_then(|q| q.state.clone()),
        }
    };
    match own {
        Some((_, session)) if hinted_sid != Some(session.sid.as_str()) => {
            let app = target.app(ctx).map(|a| a.name);
            let back_to = target.registered(ctx).and_then(|uri| origin_of(&uri));
            super::pages::confirm_sign_out(
                &session.csrf,
                app.as_deref(),
                &target.fields(),
                back_to.as_deref(),
            )
        }
        _ => signed_out(ctx, &target),
    }
}

/// Where to send the browser once signed out, as the app asked.
struct LogoutTarget {
    client_id: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

impl LogoutTarget {
    fn app(&self, ctx: &Ctx) -> Option<idledger_projections::AppView> {
        let client_id = self.client_id.as_deref()?;
        let p = ctx.app.engine.projector.read();
        p.provider.by_client_id(client_id).cloned()
    }

    /// The post-logout address asked for, when it is registered for the app.
    fn registered(&self, ctx: &Ctx) -> Option<String> {
        let uri = self.post_logout_redirect_uri.as_ref()?;
        self.app(ctx)
            .filter(|app| app.post_logout_redirect_uris.contains(uri))
            .map(|_| uri.clone())
    }

    /// The hidden fields of the confirmation form, which carry the request on.
    fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("client_id", &self.client_id),
            ("post_logout_redirect_uri", &self.post_logout_redirect_uri),
            ("state", &self.state),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v.as_deref()?)))
        .collect()
    }
}

/// A form posted to the end-session endpoint: the user's confirmation (with the
/// session's `csrf`), or an app's sign-out request sent by POST (without).
#[derive(Deserialize)]
struct PostedLogout {
    csrf: Option<String>,
    #[serde(flatten)]
    request: EndSession,
}

async fn confirm_end_session(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    form: Result<Form<PostedLogout>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return super::pages::problem(
            StatusCode::BAD_REQUEST,
            "Sign-out not understood",
            "Start again from the app you were using.",
        );
    };
    let own = signed_in(&ctx, &headers);
    let Some(csrf) = form.csrf else {
        if own.is_some() {
            return asked_to_end_session(&ctx, &headers, Some(form.request));
        }
        // Posted from another site: the browser kept its `Lax` session cookie back, so
        // whether this is the signed-in user's own session cannot be told here. The
        // same request as a GET, which carries the cookie, asks the user when it must.
        return Redirect::to(&form.request.as_query()).into_response();
    };
    let target = LogoutTarget {
        client_id: form.request.client_id,
        post_logout_redirect_uri: form.request.post_logout_redirect_uri,
        state: form.request.state,
    };
    let Some((cookie, session)) = own else {
        // No session came with the confirmation: nothing to end, and no cookie is cleared
        // on the word of a form another site may have posted.
        return signed_out_leaving_cookies(&ctx, &target);
    };
    if !same_secret(&csrf, &session.csrf) {
        return super::pages::stale_form(&session.csrf);
    }
    ctx.store.close(&cookie);
    signed_out(&ctx, &target)
}

/// The browser is signed out: back to the app when it named a registered address, else a
/// page that says so. The session cookie is cleared either way.
fn signed_out(ctx: &Ctx, target: &LogoutTarget) -> Response {
    let mut response = signed_out_leaving_cookies(ctx, target);
    let clear = super::set_cookie(ctx, super::user_cookie_name(https(ctx)), "", Some(0));
    response.headers_mut().append(header::SET_COOKIE, clear);
    response
}

/// Where a sign-out ends: back to the app when it named a registered address, else a page
/// that says the browser is signed out.
fn signed_out_leaving_cookies(ctx: &Ctx, target: &LogoutTarget) -> Response {
    match target.registered(ctx) {
        Some(uri) => {
            let mut url = uri;
            if let Some(s) = target.state.as_deref() {
                url.push_str(if url.contains('?') { "&" } else { "?" });
                url.push_str(&format!("state={}", urlencoding::encode(s)));
            }
            Redirect::to(&url).into_response()
        }
        None => super::pages::signed_out(),
    }
}

/// Why a code's PKCE does not hold, if it does not: the verifier must hash to the
/// challenge of the authorization request (RFC 7636), and a public client must have sent
/// one. `/authorize` asks a public client for S256 already; a code without one is refused
/// here too, so no path (a request that waited in a flow, a registration changed one day)
/// gives a public client tokens without PKCE.
fn pkce_problem(
    client_type: ClientType,
    challenge: Option<&str>,
    verifier: Option<&str>,
) -> Option<&'static str> {
    match (challenge, verifier) {
        (Some(_), Some(verifier)) if !verifier_ok(verifier) => {
            Some("the code_verifier is not 43 to 128 unreserved characters")
        }
        (Some(challenge), Some(verifier)) => {
            let computed = B64.encode(Sha256::digest(verifier.as_bytes()));
            (!same_secret(&computed, challenge)).then_some("the code_verifier does not match")
        }
        (Some(_), None) => Some("code_verifier is missing"),
        (None, Some(_)) => Some("no code_challenge was sent with the authorization request"),
        (None, None) if client_type == ClientType::Public => {
            Some("a public client's code needs PKCE (code_challenge with S256)")
        }
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7636's example: verifier `dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk`, challenge
    /// `E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM`.
    #[test]
    fn a_code_holds_its_pkce_and_a_public_clients_needs_one() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        for kind in [ClientType::Public, ClientType::Confidential] {
            assert_eq!(pkce_problem(kind, Some(challenge), Some(verifier)), None);
            assert!(
                pkce_problem(kind, Some(challenge), Some(&verifier.replace('d', "e"))).is_some()
            );
            assert!(pkce_problem(kind, Some(challenge), None).is_some());
            assert!(pkce_problem(kind, None, Some(verifier)).is_some());
        }
        assert!(pkce_problem(ClientType::Public, None, None).is_some());
        assert_eq!(pkce_problem(ClientType::Confidential, None, None), None);
    }

    fn spent(at: Instant) -> Spent {
        Spent {
            at,
            user: UserId(uuid::Uuid::nil()),
            app: AppId(uuid::Uuid::nil()),
            grant: uuid::Uuid::nil(),
            issuing: Arc::default(),
            replay_recorded: false,
        }
    }

    /// A replay is recorded once; one that could not be recorded leaves the next replay
    /// to record it (and so end what the code gave).
    #[test]
    fn a_replay_not_recorded_is_recorded_by_the_next() {
        let mut codes = SpentCodes::default();
        codes.insert([7; 32], spent(Instant::now()), Duration::from_secs(600), 10);
        assert!(codes.first_replay(&[7; 32]).is_some());
        assert!(codes.first_replay(&[7; 32]).is_none());
        codes.replay_unrecorded(&[7; 32]);
        assert!(codes.first_replay(&[7; 32]).is_some());
        assert!(codes.first_replay(&[7; 32]).is_none());
        assert!(codes.first_replay(&[8; 32]).is_none(), "never spent");
    }

    /// Full, the oldest is forgotten first; expired ones go whenever one is added.
    #[test]
    fn spent_codes_forget_the_expired_and_then_the_oldest() {
        let remember = Duration::from_secs(600);
        let mut codes = SpentCodes::default();
        for i in 0..3u8 {
            codes.insert([i; 32], spent(Instant::now()), remember, 3);
        }
        codes.insert([3; 32], spent(Instant::now()), remember, 3);
        assert!(!codes.by_code.contains_key(&[0; 32]));
        assert!((1..4u8).all(|i| codes.by_code.contains_key(&[i; 32])));

        let mut codes = SpentCodes::default();
        let long_ago = Instant::now() - Duration::from_secs(601);
        codes.insert([0; 32], spent(long_ago), remember, 100);
        codes.insert([1; 32], spent(long_ago), remember, 100);
        codes.insert([2; 32], spent(Instant::now()), remember, 100);
        assert!(!codes.by_code.contains_key(&[0; 32]) && !codes.by_code.contains_key(&[1; 32]));
        assert!(codes.by_code.contains_key(&[2; 32]));
        assert_eq!((codes.by_code.len(), codes.order.len()), (1, 1));
    }

    /// A spent code's replay is answered with its grant once: the first replay ends what
    /// it gave, and later ones have nothing more to end.
    #[test]
    fn a_spent_code_is_replayed_once() {
        let mut codes = SpentCodes::default();
        codes.insert([7; 32], spent(Instant::now()), Duration::from_secs(600), 10);
        assert!(codes.first_replay(&[7; 32]).is_some());
        assert!(codes.first_replay(&[7; 32]).is_none());
        assert!(codes.first_replay(&[8; 32]).is_none());
    }
}
