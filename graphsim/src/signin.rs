//! OpenID Connect sign-in as Entra's v2.0 endpoints do it: the authorization code flow with
//! PKCE. `GET /{tenant}/oauth2/v2.0/authorize` shows a plain sign-in form, its `POST` checks
//! the user's graphsim password and redirects back with a code, and the token endpoint
//! (`grant_type=authorization_code`, see [`redeem_code`]) trades the code for an RS256 ID
//! token whose key is at `/{tenant}/discovery/v2.0/keys`.
//!
//! The authorization request rides in hidden fields of the form, so nothing is kept per
//! visitor until a code is issued; codes are kept, bounded, in [`AuthCodes`].

use crate::graph::{base_url, known_tenant, token_error};
use crate::id_token::{self, IdTokenClaims, JwkSet};
use crate::jwt::{self, Claims};
use crate::state::{Inner, Sim};
use crate::tenant::UserEntry;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Entra's authorization codes live about ten minutes.
pub const CODE_TTL_SECS: i64 = 600;
/// Codes kept at most; the oldest go first when sign-ins outpace expiry.
const MAX_CODES: usize = 10_000;
/// ID tokens live an hour, as Entra's do.
const ID_TOKEN_TTL_SECS: i64 = 3600;
/// Microsoft Graph's application id: the audience of the access token issued alongside.
const GRAPH_APP_ID: &str = "00000003-0000-0000-c000-000000000000";

// ---------------------------------------------------------------------------------------
// Codes

/// An issued authorization code and everything it was bound to.
#[derive(Clone, Debug)]
struct AuthCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    user_id: String,
    scopes: Vec<String>,
    issued: i64,
    /// Presented once already: Entra burns a code on its first redemption attempt.
    redeemed: bool,
}

/// Authorization codes by value, bounded. Expired and redeemed codes are kept a while
/// longer (until twice the lifetime), so a late or repeated redemption gets Entra's precise
/// error (expired, already redeemed) instead of "unknown code".
#[derive(Debug, Default)]
pub struct AuthCodes {
    codes: HashMap<String, AuthCode>,
}

impl AuthCodes {
    fn insert(&mut self, code: String, entry: AuthCode, now: i64) {
        self.codes.retain(|_, c| now - c.issued < 2 * CODE_TTL_SECS);
        while self.codes.len() >= MAX_CODES {
            let oldest = self
                .codes
                .iter()
                .min_by_key(|(_, c)| c.issued)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.codes.remove(&k),
                None => break,
            };
        }
        self.codes.insert(code, entry);
    }

    /// Takes a code for redemption: burns it (a second presentation fails whatever the
    /// first one's outcome), and says why it cannot be redeemed, if it cannot.
    fn present(&mut self, code: &str, now: i64) -> Result<AuthCode, CodeProblem> {
        let entry = self.codes.get_mut(code).ok_or(CodeProblem::Unknown)?;
        if entry.redeemed {
            return Err(CodeProblem::Redeemed);
        }
        entry.redeemed = true;
        if now - entry.issued >= CODE_TTL_SECS {
            return Err(CodeProblem::Expired);
        }
        Ok(entry.clone())
    }

    /// How many codes are held (for tests of the bound).
    pub fn len(&self) -> usize {
        self.codes.len()
    }

    /// No codes held.
    pub fn is_empty(&self) -> bool {
        self.codes.is_empty()
    }
}

#[derive(Debug, PartialEq)]
enum CodeProblem {
    Unknown,
    Redeemed,
    Expired,
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::Rng::fill(&mut rand::thread_rng(), &mut buf[..]);
    B64.encode(buf)
}

// ---------------------------------------------------------------------------------------
// The authorization request

/// The authorize endpoint's parameters (query on `GET`, form on `POST`), plus the sign-in
/// form's `username` and `password`. All optional: what is missing is refused the way Entra
/// refuses it, not by the extractor. Unknown parameters are ignored, as Entra ignores them.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    client_id: Option<String>,
    response_type: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    response_mode: Option<String>,
    prompt: Option<String>,
    login_hint: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

impl AuthorizeParams {
    /// The authorization request's own parameters, as the form carries them forward.
    fn request_fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("client_id", &self.client_id),
            ("response_type", &self.response_type),
            ("redirect_uri", &self.redirect_uri),
            ("scope", &self.scope),
            ("state", &self.state),
            ("nonce", &self.nonce),
            ("code_challenge", &self.code_challenge),
            ("code_challenge_method", &self.code_challenge_method),
            ("response_mode", &self.response_mode),
            ("prompt", &self.prompt),
            ("login_hint", &self.login_hint),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
        .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum ResponseMode {
    Query,
    Fragment,
    FormPost,
}

/// Where an answer to a valid client and redirect URI goes.
#[derive(Clone, Debug)]
struct ReplyTo {
    redirect_uri: String,
    mode: ResponseMode,
    state: Option<String>,
}

/// An authorization request that passed every check.
#[derive(Debug)]
struct ValidRequest {
    reply: ReplyTo,
    client_id: String,
    app_name: String,
    scopes: Vec<String>,
    nonce: Option<String>,
    code_challenge: String,
    prompt: Option<String>,
}

/// Why an authorization request is refused.
#[derive(Debug)]
enum Refusal {
    /// Shown to the user, never redirected: the redirect URI cannot be trusted (or is
    /// unknown), so sending anything there could leak to an attacker (RFC 6749 §4.1.2.1).
    Page { aadsts: u32, message: String },
    /// Sent back to the (registered) redirect URI as `error` and `error_description`.
    Redirect {
        reply: ReplyTo,
        error: &'static str,
        aadsts: u32,
        description: String,
    },
}

/// Checks an authorization request as Entra does: first what decides whether the redirect
/// URI can be trusted (tenant, app, registered URI: errors shown on a page), then the rest
/// (errors redirected back).
fn validate(inner: &Inner, tenant: &str, p: &AuthorizeParams) -> Result<ValidRequest, Refusal> {
    let on_page = |aadsts, message: String| Refusal::Page { aadsts, message };
    if !known_tenant(&inner.dir, tenant) {
        return Err(on_page(
            90002,
            format!("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
        ));
    }
    let client_id = p.client_id.as_deref().unwrap_or_default();
    if client_id.is_empty() {
        return Err(on_page(
            900144,
            "The request body must contain the following parameter: 'client_id'.".into(),
        ));
    }
    let Some(app) = inner.dir.apps.get(client_id) else {
        return Err(on_page(
            700016,
            format!("Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.", inner.dir.tenant_id),
        ));
    };
    let Some(redirect_uri) = p.redirect_uri.as_deref().filter(|r| !r.is_empty()) else {
        // Entra falls back to a registered URI; the simulator insists, so a client that
        // forgets it finds out here rather than at the token endpoint.
        return Err(on_page(
            900144,
            "The request body must contain the following parameter: 'redirect_uri'.".into(),
        ));
    };
    // Exact string match: Entra compares redirect URIs character for character.
    if !app.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(on_page(
            50011,
            format!("The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal."),
        ));
    }
    let mode = match p.response_mode.as_deref() {
        None | Some("query") => Some(ResponseMode::Query),
        Some("fragment") => Some(ResponseMode::Fragment),
        Some("form_post") => Some(ResponseMode::FormPost),
        Some(_) => None,
    };
    let reply = ReplyTo {
        redirect_uri: redirect_uri.to_owned(),
        mode: mode.unwrap_or(ResponseMode::Query),
        state: p.state.clone(),
    };
    let redirect = |error, aadsts, description: String| Refusal::Redirect {
        reply: reply.clone(),
        error,
        aadsts,
        description,
    };
    if mode.is_none() {
        return Err(redirect(
            "invalid_request",
            70007,
            "The application returned an unsupported value of 'response_mode' when requesting a token.".into(),
        ));
    }
    match p.response_type.as_deref().unwrap_or_default() {
        "code" => {}
        "" => {
            return Err(redirect(
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'response_type'.".into(),
            ))
        }
        other if other.split(' ').any(|t| t == "id_token" || t == "token") => {
            // The implicit and hybrid flows are off for the app, as they are by default.
            return Err(redirect(
                "unsupported_response_type",
                700054,
                format!("response_type '{other}' is not enabled for the application."),
            ));
        }
        other => {
            return Err(redirect(
                "unsupported_response_type",
                70005,
                format!("The application returned an unsupported response type '{other}'."),
            ))
        }
    }
    let scopes: Vec<String> = p
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if !scopes.iter().any(|s| s == "openid") {
        return Err(redirect(
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' is not valid. Sign-in needs the 'openid' scope.".into(),
        ));
    }
    // PKCE, S256 only: stricter than Entra for web apps, as idledger always sends it.
    let Some(challenge) = p.code_challenge.as_deref().filter(|c| !c.is_empty()) else {
        return Err(redirect(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'code_challenge'.".into(),
        ));
    };
    if p.code_challenge_method.as_deref() != Some("S256") {
        return Err(redirect(
            "invalid_request",
            9002313,
            "Invalid request. 'code_challenge_method' must be 'S256'.".into(),
        ));
    }
    // A base64url SHA-256 digest is 43 characters.
    let well_formed = challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(redirect(
            "invalid_request",
            501491,
            "Invalid size of Code_Challenge parameter.".into(),
        ));
    }
    Ok(ValidRequest {
        reply,
        client_id: client_id.to_owned(),
        app_name: app.display_name.clone(),
        scopes,
        nonce: p.nonce.clone(),
        code_challenge: challenge.to_owned(),
        prompt: p.prompt.clone(),
    })
}

// ---------------------------------------------------------------------------------------
// Routes

/// `GET /{tenant}/oauth2/v2.0/authorize`: the sign-in form, or why there is none.
pub async fn authorize_page(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    uri: Uri,
    params: Result<Query<AuthorizeParams>, QueryRejection>,
) -> Response {
    let Ok(Query(p)) = params else {
        return error_page(90004, "The request is not properly formatted.");
    };
    let inner = sim.lock();
    match validate(&inner, &tenant, &p) {
        Err(r) => refusal(r),
        Ok(req) => show_form(&req, &p, uri.path()),
    }
}

/// `POST /{tenant}/oauth2/v2.0/authorize`: checks the credentials the form sent; a code
/// back to the app, or the form again with why.
pub async fn authorize_submit(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    uri: Uri,
    form: Result<Form<AuthorizeParams>, FormRejection>,
) -> Response {
    let Ok(Form(p)) = form else {
        return error_page(90004, "The request is not properly formatted.");
    };
    let mut inner = sim.lock();
    let req = match validate(&inner, &tenant, &p) {
        Err(r) => return refusal(r),
        Ok(req) => req,
    };
    // A POST of the request alone (Entra accepts the request either way) shows the form.
    let (Some(username), Some(password)) = (p.username.as_deref(), p.password.as_deref()) else {
        return show_form(&req, &p, uri.path());
    };
    let wanted = username.trim().to_lowercase();
    let user = inner
        .dir
        .users
        .values()
        .find(|u| u.user_principal_name.to_lowercase() == wanted);
    // One message for an unknown user and a wrong password, so the form does not tell
    // which user names exist.
    let Some(user) = user.filter(|u| u.password.as_deref() == Some(password)) else {
        return form_page(
            &req,
            &p,
            uri.path(),
            Some("Your account or password is incorrect. If you don't remember your password, reset it now. (AADSTS50126)"),
        );
    };
    if !user.account_enabled {
        return form_page(
            &req,
            &p,
            uri.path(),
            Some("Your account has been locked. Contact your support person to unlock it, then try again. (AADSTS50057)"),
        );
    }
    let code = random_b64(32);
    let now = chrono::Utc::now().timestamp();
    let entry = AuthCode {
        client_id: req.client_id.clone(),
        redirect_uri: req.reply.redirect_uri.clone(),
        code_challenge: req.code_challenge.clone(),
        nonce: req.nonce.clone(),
        user_id: user.id.clone(),
        scopes: req.scopes.clone(),
        issued: now,
        redeemed: false,
    };
    inner.auth_codes.insert(code.clone(), entry, now);
    drop(inner);
    let session_state = uuid::Uuid::new_v4().to_string();
    reply(
        &req.reply,
        &[("code", &code), ("session_state", &session_state)],
    )
}

/// `GET /{tenant}/discovery/v2.0/keys`: the ID token signing key.
pub async fn jwks(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    let tid = {
        let inner = sim.lock();
        if !known_tenant(&inner.dir, &tenant) {
            return token_error(
                StatusCode::BAD_REQUEST,
                "invalid_tenant",
                90002,
                &format!("Tenant '{tenant}' not found."),
            );
        }
        inner.dir.tenant_id.clone()
    };
    let Some(key) = id_token::key() else {
        return key_missing();
    };
    let issuer = format!("{}/{tid}/v2.0", base_url(&headers));
    Json(JwkSet {
        keys: vec![key.jwk(&issuer)],
    })
    .into_response()
}

fn key_missing() -> Response {
    token_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        50000,
        "There was an error issuing a token: the signing key did not load.",
    )
}

// ---------------------------------------------------------------------------------------
// The token endpoint's authorization_code grant

/// The token request's parameters this grant reads.
struct CodeRedemption<'a> {
    client_id: Option<&'a str>,
    client_secret: Option<&'a str>,
    code: Option<&'a str>,
    redirect_uri: Option<&'a str>,
    code_verifier: Option<&'a str>,
}

impl<'a> CodeRedemption<'a> {
    fn from_form(form: &'a HashMap<String, String>) -> Self {
        let get = |k: &str| form.get(k).map(String::as_str);
        CodeRedemption {
            client_id: get("client_id"),
            client_secret: get("client_secret"),
            code: get("code"),
            redirect_uri: get("redirect_uri"),
            code_verifier: get("code_verifier"),
        }
    }
}

/// The token answer with an ID token.
#[derive(Serialize)]
struct CodeTokenResponse {
    token_type: &'static str,
    scope: String,
    expires_in: u64,
    ext_expires_in: u64,
    access_token: String,
    id_token: String,
}

/// Client credentials from `Authorization: Basic` (RFC 6749 §2.3.1: each half
/// form-urlencoded before base64). `Ok(None)`: no Basic header; `Err`: unreadable.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ())?;
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = STANDARD.decode(rest.trim()).map_err(|_| ())?;
    let decoded = String::from_utf8(decoded).map_err(|_| ())?;
    let (id, secret) = decoded.split_once(':').ok_or(())?;
    let unform = |s: &str| {
        urlencoding::decode(&s.replace('+', " "))
            .map(|c| c.into_owned())
            .map_err(|_| ())
    };
    Ok(Some((unform(id)?, unform(secret)?)))
}

/// `POST /{tenant}/oauth2/v2.0/token` with `grant_type=authorization_code` (the tenant is
/// already checked): authenticates the client, burns the code, checks what it was bound to,
/// and answers with an access token and an ID token.
pub(crate) fn redeem_code(
    sim: &Sim,
    inner: &mut Inner,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Response {
    let r = CodeRedemption::from_form(form);
    let bad = |error, aadsts, text: &str| token_error(StatusCode::BAD_REQUEST, error, aadsts, text);
    let basic = match basic_credentials(headers) {
        Ok(b) => b,
        Err(()) => return invalid_client(7000215, "Invalid client secret provided.", true),
    };
    let (client_id, secret, used_basic) = match (&basic, r.client_secret) {
        (Some(_), Some(_)) => {
            return bad(
                "invalid_request",
                9002313,
                "Invalid request. Request is malformed or invalid: the client authenticated with more than one method.",
            )
        }
        (Some((id, secret)), None) => {
            if r.client_id.is_some_and(|c| c != id) {
                return bad(
                    "invalid_request",
                    9002313,
                    "Invalid request. Request is malformed or invalid: client_id differs from the client authenticated.",
                );
            }
            (id.as_str(), Some(secret.as_str()), true)
        }
        (None, secret) => (r.client_id.unwrap_or_default(), secret, false),
    };
    if client_id.is_empty() {
        return bad(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    }
    let Some(app) = inner.dir.apps.get(client_id) else {
        return bad(
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        );
    };
    match secret {
        None => {
            return invalid_client(
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                used_basic,
            )
        }
        Some(s) if s != app.secret => {
            return invalid_client(7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app.", used_basic)
        }
        Some(_) => {}
    }
    let client_id = client_id.to_owned();
    let Some(code) = r.code.filter(|c| !c.is_empty()) else {
        return bad(
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'code'.",
        );
    };
    let now = chrono::Utc::now().timestamp();
    let grant = match inner.auth_codes.present(code, now) {
        Ok(g) => g,
        Err(CodeProblem::Unknown) => {
            return bad(
                "invalid_grant",
                9002313,
                "Invalid request. Request is malformed or invalid: the authorization code is not valid.",
            )
        }
        Err(CodeProblem::Redeemed) => {
            return bad(
                "invalid_grant",
                54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            )
        }
        Err(CodeProblem::Expired) => {
            return bad(
                "invalid_grant",
                70008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            )
        }
    };
    if grant.client_id != client_id {
        return bad(
            "invalid_grant",
            70000,
            "The provided authorization code was issued to another client.",
        );
    }
    if r.redirect_uri != Some(grant.redirect_uri.as_str()) {
        return bad(
            "invalid_grant",
            500112,
            &format!(
                "The reply address '{}' does not match the reply address '{}' provided when requesting Authorization code.",
                r.redirect_uri.unwrap_or_default(),
                grant.redirect_uri
            ),
        );
    }
    let verified = r
        .code_verifier
        .is_some_and(|v| B64.encode(Sha256::digest(v.as_bytes())) == grant.code_challenge);
    if !verified {
        return bad(
            "invalid_grant",
            501481,
            "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
        );
    }
    // The user may have been deleted or disabled since signing in.
    let user = match inner.dir.users.get(&grant.user_id) {
        None => {
            return bad(
                "invalid_grant",
                50034,
                "The user account does not exist in the directory.",
            )
        }
        Some(u) if !u.account_enabled => {
            return bad("invalid_grant", 50057, "The user account is disabled.")
        }
        Some(u) => u,
    };
    let Some(key) = id_token::key() else {
        return key_missing();
    };
    let tid = inner.dir.tenant_id.clone();
    let claims = id_token_claims(&base_url(headers), &tid, &client_id, user, &grant, now);
    let Some(id_token) = key.sign(&claims) else {
        return key_missing();
    };
    let ttl = sim.config.access_token_ttl.as_secs();
    let access_token = jwt::sign(
        &Claims {
            aud: GRAPH_APP_ID.into(),
            iss: format!("https://sts.windows.net/{tid}/"),
            tid,
            appid: client_id,
            roles: Vec::new(),
            iat: now,
            nbf: now,
            exp: now + ttl as i64,
        },
        &sim.token_key[..],
    );
    // As for client credentials: a hostile endpoint may claim any lifetime.
    let expires_in = inner.claimed_expires_in.unwrap_or(ttl);
    // No refresh token is issued, so `offline_access` is not granted.
    let scope = grant
        .scopes
        .iter()
        .filter(|s| s.as_str() != "offline_access")
        .cloned()
        .collect::<Vec<_>>()
        .join(" ");
    let mut response = Json(CodeTokenResponse {
        token_type: "Bearer",
        scope,
        expires_in,
        ext_expires_in: expires_in,
        access_token,
        id_token,
    })
    .into_response();
    // Tokens must not be cached (RFC 6749 §5.1).
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn invalid_client(aadsts: u32, text: &str, used_basic: bool) -> Response {
    let mut r = token_error(StatusCode::UNAUTHORIZED, "invalid_client", aadsts, text);
    if used_basic {
        // RFC 6749 §5.2: a client that tried the Authorization header is told the scheme.
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"graphsim\""),
        );
    }
    r
}

fn id_token_claims(
    base: &str,
    tid: &str,
    client_id: &str,
    user: &UserEntry,
    grant: &AuthCode,
    now: i64,
) -> IdTokenClaims {
    let has = |s: &str| grant.scopes.iter().any(|g| g == s);
    // Entra gates these on the scopes (its ID token claims reference): `profile` for the
    // name, username and object id, `email` for the address.
    let profile = has("profile");
    IdTokenClaims {
        aud: client_id.to_owned(),
        iss: format!("{base}/{tid}/v2.0"),
        iat: now,
        nbf: now,
        exp: now + ID_TOKEN_TTL_SECS,
        email: user.mail.clone().filter(|_| has("email")),
        name: profile.then(|| user.display_name.clone()),
        nonce: grant.nonce.clone(),
        oid: profile.then(|| user.id.clone()),
        preferred_username: profile.then(|| user.user_principal_name.clone()),
        sub: id_token::pairwise_sub(tid, &user.id, client_id),
        tid: tid.to_owned(),
        uti: random_b64(16),
        ver: "2.0".into(),
    }
}

// ---------------------------------------------------------------------------------------
// Pages

/// HTML-escapes text for element content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A page of the sign-in service: HTML that is never cached or framed, as Entra's.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body><main>\n{body}\n</main></body></html>\n",
        esc(title)
    );
    let mut r = (status, Html(html)).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
}

fn error_page(aadsts: u32, message: &str) -> Response {
    let body = format!(
        "<h1>Sign in</h1>\n<div role=\"alert\"><p>Sorry, but we're having trouble signing you in.</p>\n<p>AADSTS{aadsts}: {}</p></div>",
        esc(message)
    );
    page(StatusCode::BAD_REQUEST, "Sign in to your account", &body)
}

fn refusal(r: Refusal) -> Response {
    match r {
        Refusal::Page { aadsts, message } => error_page(aadsts, &message),
        Refusal::Redirect {
            reply: to,
            error,
            aadsts,
            description,
        } => {
            let description = format!("AADSTS{aadsts}: {description}");
            reply(
                &to,
                &[("error", error), ("error_description", &description)],
            )
        }
    }
}

fn show_form(req: &ValidRequest, p: &AuthorizeParams, action: &str) -> Response {
    if req.prompt.as_deref() == Some("none") {
        // No sessions in the simulator: a silent sign-in always needs the user.
        return reply(
            &req.reply,
            &[
                ("error", "login_required"),
                (
                    "error_description",
                    "AADSTS50058: A silent sign-in request was sent but no user is signed in.",
                ),
            ],
        );
    }
    form_page(req, p, action, None)
}

/// The sign-in form, posting to `action` (the path it was asked at), with the request
/// carried in hidden fields and `alert` above it.
fn form_page(
    req: &ValidRequest,
    p: &AuthorizeParams,
    action: &str,
    alert: Option<&str>,
) -> Response {
    let alert = alert
        .map(|a| format!("<div role=\"alert\">{}</div>\n", esc(a)))
        .unwrap_or_default();
    let username = p
        .username
        .as_deref()
        .or(p.login_hint.as_deref())
        .unwrap_or_default();
    let hidden: String = p
        .request_fields()
        .into_iter()
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">\n",
                esc(v)
            )
        })
        .collect();
    let body = format!(
        "<h1>Sign in</h1>\n<p>to continue to {app}</p>\n{alert}<form method=\"post\" action=\"{action}\">\n\
         <p><label for=\"username\">Username</label>\n\
         <input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" value=\"{username}\" required></p>\n\
         <p><label for=\"password\">Password</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required></p>\n\
         {hidden}<p><button type=\"submit\">Sign in</button></p>\n</form>",
        app = esc(&req.app_name),
        action = esc(action),
        username = esc(username),
    );
    page(StatusCode::OK, "Sign in to your account", &body)
}

/// Answers the app at its redirect URI in the request's response mode, with `state` added.
fn reply(to: &ReplyTo, params: &[(&str, &str)]) -> Response {
    let mut all: Vec<(&str, &str)> = params.to_vec();
    if let Some(s) = to.state.as_deref() {
        all.push(("state", s));
    }
    if to.mode == ResponseMode::FormPost {
        // Entra's page posts itself with script; without script the button does it.
        let hidden: String = all
            .iter()
            .map(|(k, v)| {
                format!(
                    "<input type=\"hidden\" name=\"{}\" value=\"{}\">\n",
                    esc(k),
                    esc(v)
                )
            })
            .collect();
        let body = format!(
            "<form method=\"post\" action=\"{}\">\n{hidden}<p><button type=\"submit\">Continue</button></p>\n</form>",
            esc(&to.redirect_uri)
        );
        return page(StatusCode::OK, "Working...", &body);
    }
    let encoded = all
        .iter()
        .map(|(k, v)| format!("{}={}", urlencoding::encode(k), urlencoding::encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let separator = match to.mode {
        ResponseMode::Fragment => '#',
        _ if to.redirect_uri.contains('?') => '&',
        _ => '?',
    };
    let location = format!("{}{separator}{encoded}", to.redirect_uri);
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut r = StatusCode::FOUND.into_response();
            r.headers_mut().insert(header::LOCATION, v);
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store, no-cache"),
            );
            r
        }
        // Only a registered URI with characters no header may carry gets here.
        Err(_) => error_page(50011, "The redirect URI is not a valid URL."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(issued: i64) -> AuthCode {
        AuthCode {
            client_id: "c".into(),
            redirect_uri: "r".into(),
            code_challenge: "x".into(),
            nonce: None,
            user_id: "u".into(),
            scopes: vec!["openid".into()],
            issued,
            redeemed: false,
        }
    }

    #[test]
    fn codes_are_single_use_and_expire() {
        let mut codes = AuthCodes::default();
        codes.insert("a".into(), code(1000), 1000);
        codes.insert("b".into(), code(1000), 1000);
        assert!(codes.present("a", 1000 + CODE_TTL_SECS - 1).is_ok());
        assert_eq!(
            codes.present("a", 1001).map(|_| ()),
            Err(CodeProblem::Redeemed)
        );
        assert_eq!(
            codes.present("b", 1000 + CODE_TTL_SECS).map(|_| ()),
            Err(CodeProblem::Expired)
        );
        // Burnt by the expired attempt too.
        assert_eq!(
            codes.present("b", 1001).map(|_| ()),
            Err(CodeProblem::Redeemed)
        );
        assert_eq!(
            codes.present("zz", 1001).map(|_| ()),
            Err(CodeProblem::Unknown)
        );
        // Old entries go on the next insert.
        codes.insert("c".into(), code(5000), 5000);
        assert_eq!(codes.len(), 1);
    }

    #[test]
    fn the_store_is_bounded() {
        let mut codes = AuthCodes::default();
        for i in 0..(MAX_CODES as i64 + 5) {
            codes.insert(format!("k{i}"), code(i / 100), i / 100);
        }
        assert_eq!(codes.len(), MAX_CODES);
        assert!(codes.codes.contains_key(&format!("k{}", MAX_CODES + 4)));
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut h = HeaderMap::new();
        let raw = format!(
            "{}:{}",
            urlencoding::encode("app id"),
            urlencoding::encode("s3:cr+t/=")
        );
        let v = format!("Basic {}", STANDARD.encode(raw));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&v).expect("ascii"),
        );
        assert_eq!(
            basic_credentials(&h),
            Ok(Some(("app id".into(), "s3:cr+t/=".into())))
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&h), Err(()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(basic_credentials(&h), Ok(None));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
