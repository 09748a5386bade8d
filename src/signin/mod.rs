//! Sign-in for users: the enrolment an invite leads to (`/enrol/<secret>`), signing in
//! (`/signin`: a discoverable passkey, or Entra ID credentials plus a second factor), and
//! the user's own page (`/me`).
//!
//! The cryptography is checked here (WebAuthn in [`webauthn`], Entra's ID token in
//! [`entra`], authenticator codes by `domain::totp`); every rule about who may enrol or
//! sign in, and every event, is decided by `domain::decide::signin` through the one
//! command path. Sessions and in-progress flows live in memory ([`sessions`]).

mod authorization;
pub mod entra;
pub mod oidc;
mod pages;
pub mod sessions;
pub mod webauthn;

use crate::http::session::{cookie, same_secret};
use crate::http::{token_hash, AppState};
use crate::secrets::Secret;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use idledger_domain::decide::signin::{
    self as rules, EnrolmentStep, PasskeyProof, Proof, SignInCommand,
};
use idledger_domain::decide::user::evolve;
use idledger_domain::events::PasskeyRegistered;
use idledger_domain::{Actor, AppId, DomainId, Event, SignInFailure, SsoMethod, StreamId, UserId};
use serde::{Deserialize, Serialize};
use sessions::{Ceremony, EntraPending, Store, UserSession};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a tenant's signing keys are kept before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(600);

/// What every sign-in handler reaches.
#[derive(Clone)]
pub struct Ctx {
    app: AppState,
    store: Arc<Store>,
    keys: Arc<Mutex<HashMap<DomainId, (Instant, crate::graph::OpenIdKeys)>>>,
    provider: Arc<oidc::ProviderState>,
    /// Held from a passkey registration's check that no one holds its credential id to
    /// its append: the check reads the projections, and two users' registrations append to
    /// two streams, so nothing else stops both from passing it. It holds the position of
    /// the last registration appended, which the next one's check must see.
    registering: Arc<tokio::sync::Mutex<u64>>,
}

/// The sign-in pages and their requests, served beside the API and the console.
pub fn routes(app: AppState) -> Router {
    let ctx = Ctx {
        store: Arc::new(Store::new(app.signin_idle)),
        keys: Arc::default(),
        provider: Arc::default(),
        registering: Arc::default(),
        app,
    };
    oidc::routes(Router::new(), &ctx)
        .route("/enrol/{token}", get(enrol_page))
        .route(
            "/enrol/{token}/passkey/options",
            post(enrol_passkey_options),
        )
        .route("/enrol/{token}/passkey", post(enrol_passkey))
        .route("/enrol/{token}/totp/options", post(enrol_totp_options))
        .route("/enrol/{token}/totp", post(enrol_totp))
        .route("/enrol/{token}/entra", post(enrol_entra))
        .route("/signin", get(signin_page))
        .route("/signin/passkey/options", post(signin_passkey_options))
        .route("/signin/passkey", post(signin_passkey))
        .route("/signin/entra", post(signin_entra))
        .route("/signin/entra/callback", get(entra_callback))
        .route("/signin/second-factor", get(second_factor_page))
        .route("/signin/totp", post(signin_totp))
        .route(
            "/signin/second-passkey/options",
            post(second_passkey_options),
        )
        .route("/signin/second-passkey", post(second_passkey))
        .route("/signin/assets/{file}", get(pages::asset))
        .route("/me", get(me_page))
        .route("/me/passkeys/options", post(me_passkey_options))
        .route("/me/passkeys", post(me_add_passkey))
        .route("/me/passkeys/{id}/rename", post(me_rename_passkey))
        .route("/me/passkeys/{id}/remove", post(me_remove_passkey))
        .route("/me/totp/options", post(me_totp_options))
        .route("/me/totp", post(me_totp))
        .route("/me/totp/remove", post(me_remove_totp))
        .route("/me/sign-in-again", post(me_sign_in_again))
        .route("/signout", post(sign_out))
        .layer(axum::middleware::map_response(pages::headers))
        .with_state(ctx)
}

// ---- errors -------------------------------------------------------------------------------

/// A refusal of a sign-in request: its status and a message for the person (no secret, no
/// key material), as JSON for the pages' script.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    message: String,
}

#[derive(Serialize)]
struct RefusalBody<'a> {
    error: &'a str,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(RefusalBody {
                error: &self.message,
            }),
        )
            .into_response()
    }
}

/// A page script's JSON body; one that does not read is refused in the pages' own error
/// shape (`{"error"}`, which their scripts show), not in axum's plain text.
struct PageJson<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for PageJson<T> {
    type Rejection = Refusal;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Refusal> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| PageJson(v))
            .map_err(|e| {
                refuse(
                    e.status(),
                    "The page sent something this server could not read. Reload the page and try again.",
                )
            })
    }
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Refusal {
        status,
        message: message.into(),
    }
}

fn expired_flow() -> Refusal {
    refuse(
        StatusCode::FORBIDDEN,
        "This page expired or was opened in another browser. Reload the page and try again.",
    )
}

impl From<crate::http::ApiError> for Refusal {
    fn from(e: crate::http::ApiError) -> Refusal {
        use crate::http::ApiError as A;
        let status = match &e {
            A::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            A::NotFound(_) => StatusCode::NOT_FOUND,
            A::Conflict(_) => StatusCode::CONFLICT,
            A::Unprocessable(_) | A::BadRequest(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let message = match &e {
            A::Conflict(m) | A::Unprocessable(m) | A::BadRequest(m) | A::TooManyRequests(m) => {
                m.clone()
            }
            A::NotFound(what) => format!("{what} not found"),
            _ => "idledger could not record this just now. Try again in a moment.".into(),
        };
        if status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(error = %e, "a sign-in request could not be recorded");
        }
        refuse(status, message)
    }
}

// ---- cookies --------------------------------------------------------------------------------

fn https(ctx: &Ctx) -> bool {
    ctx.app.secure_cookies()
}

/// The flow cookie: SameSite=Lax so it comes back with Entra's top-level redirect.
fn flow_cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-idl_flow"
    } else {
        "idl_flow"
    }
}

/// The user session cookie: SameSite=Lax (SIGNIN.md: apps on other sites send users to
/// `/authorize` with a top-level GET, which a Strict cookie would not follow).
fn user_cookie_name(https: bool) -> &'static str {
    if https {
        "__Host-idl_user"
    } else {
        "idl_user"
    }
}

fn set_cookie(ctx: &Ctx, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if https(ctx) {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or(HeaderValue::from_static("idl_flow=; Max-Age=0"))
}

/// The flow of this browser (a new one when it has none): its cookie and its CSRF token.
fn flow_of(ctx: &Ctx, headers: &HeaderMap) -> (String, String) {
    let flow = match cookie(headers, flow_cookie_name(https(ctx))) {
        Some(c) => c.to_owned(),
        None => ctx.store.new_flow(),
    };
    let csrf = ctx.store.csrf_of(&flow);
    (flow, csrf)
}

/// Sets the flow cookie, new or not: the flow lives `FLOW_TTL` after it was last used on
/// the server, and the browser must keep the cookie as long (an app's request waiting in
/// a flow begun minutes ago would be lost with a cookie that expired at its first age).
/// With a session open, as long as `/me` sets it: its page's ceremonies use the flow.
fn with_flow_cookie(
    ctx: &Ctx,
    headers: &HeaderMap,
    mut response: Response,
    flow: &str,
) -> Response {
    let session_open =
        cookie(headers, user_cookie_name(https(ctx))).is_some_and(|c| ctx.store.find(c).is_some());
    let age = if session_open {
        sessions::SESSION_MAX
    } else {
        sessions::FLOW_TTL
    };
    let v = set_cookie(ctx, flow_cookie_name(https(ctx)), flow, Some(age.as_secs()));
    response.headers_mut().append(header::SET_COOKIE, v);
    response
}

/// The flow cookie of a request whose CSRF token (header `X-CSRF-Token` or form field)
/// matches its flow's.
fn checked_flow(ctx: &Ctx, headers: &HeaderMap, csrf: Option<&str>) -> Result<String, Refusal> {
    let flow = cookie(headers, flow_cookie_name(https(ctx))).ok_or_else(expired_flow)?;
    let sent = csrf
        .or_else(|| headers.get("x-csrf-token").and_then(|v| v.to_str().ok()))
        .ok_or_else(expired_flow)?;
    if same_secret(&ctx.store.csrf_of(flow), sent) {
        Ok(flow.to_owned())
    } else {
        Err(expired_flow())
    }
}

/// A path segment as text; one that is not (a `%FF` in a link) is answered with a page
/// that says so, not with axum's plain text.
struct Segment(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(s)| Segment(s))
            .map_err(|_| {
                pages::problem(
                    StatusCode::BAD_REQUEST,
                    "This link is malformed",
                    "Check that the whole link was copied, or ask for a new one.",
                )
            })
    }
}

// ---- who and what -----------------------------------------------------------------------

/// A user as pages show them.
struct Person {
    domain_id: DomainId,
    display_name: String,
    upn: String,
    domain: String,
    /// The SSO settings in force, or why the user may not sign in.
    allowed: Result<idledger_domain::SsoSettings, SignInFailure>,
    /// Sessions opened before this log position have ended (see `UserView`).
    sign_in_withdrawn_position: u64,
}

/// The user's domain is removed: its users are out from the removal on, before each one's
/// own stream says so (that lands user by user, after it).
fn in_removed_domain(
    p: &idledger_projections::Projections,
    u: &idledger_projections::UserView,
) -> bool {
    p.domains.get(u.domain_id).is_none_or(|d| d.removed)
}

fn domain_removed(ctx: &Ctx, user: UserId) -> bool {
    let p = ctx.app.engine.projector.read();
    p.users.get(user).is_some_and(|u| in_removed_domain(&p, u))
}

fn person(ctx: &Ctx, user: UserId) -> Option<Person> {
    let p = ctx.app.engine.projector.read();
    let u = p.users.get(user)?;
    let domain = p.domains.get(u.domain_id);
    Some(Person {
        domain_id: u.domain_id,
        display_name: u.attributes.display_name.clone(),
        upn: u.attributes.user_principal_name.clone(),
        domain: domain.map(|d| d.name.clone()).unwrap_or_default(),
        allowed: if in_removed_domain(&p, u) {
            Err(SignInFailure::NotActive)
        } else {
            rules::sign_in_allowed(u.status.decided(), u.imported_sso, u.sso_override)
        },
        sign_in_withdrawn_position: u.sign_in_withdrawn_position,
    })
}

/// The signed-in user of a request, while they may still sign in; a session of a user who
/// may not (deactivated, deleted, SSO turned off), or whose sign-in was taken away or its
/// terms changed since it opened (even if given back since), ends here.
fn signed_in(ctx: &Ctx, headers: &HeaderMap) -> Option<(String, UserSession)> {
    let c = cookie(headers, user_cookie_name(https(ctx)))?;
    let s = ctx.store.find(c)?;
    if sign_in_stands(ctx, s.user, s.method, s.opened_position) {
        return Some((c.to_owned(), s));
    }
    if person(ctx, s.user).is_some_and(|p| p.allowed.is_ok()) {
        // Only this one: a session opened since, by the method in force, still stands
        // (an old cookie replayed must not sign the user out of it).
        ctx.store.close(c);
    } else {
        ctx.store.close_all_of(s.user);
    }
    None
}

/// Whether a sign-in by `method`, opened at log position `opened_position`, still stands:
/// the user may sign in, by that method (a changed method ends it), and nothing took
/// their sign-in away since it opened (even if it was given back since).
fn sign_in_stands(ctx: &Ctx, user: UserId, method: SsoMethod, opened_position: u64) -> bool {
    matches!(
        person(ctx, user),
        Some(Person {
            allowed: Ok(sso),
            sign_in_withdrawn_position: withdrawn,
            ..
        }) if sso.method == method && withdrawn <= opened_position
    )
}

fn rp(ctx: &Ctx) -> Result<webauthn::RelyingParty, Refusal> {
    let public = ctx.app.public_url.as_ref().ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is not set up on this server yet (no public URL). Ask your administrator.",
        )
    })?;
    Ok(webauthn::RelyingParty {
        id: public.host.clone(),
        origin: public.origin.clone(),
        name: "idledger".into(),
    })
}

/// The user handle passkeys carry: the user's id, 16 random bytes (never a name).
fn user_handle(user: UserId) -> Vec<u8> {
    user.0.as_bytes().to_vec()
}

/// A decision for no app (sign-ins for an app go through [`sign_in`]).
async fn decide(ctx: &Ctx, user: UserId, command: SignInCommand) -> Result<Vec<Event>, Refusal> {
    decide_at(ctx, user, None, command)
        .await
        .map(|(events, _)| events)
}

/// Events decided and appended, and the log position of the last of them.
type Decided = (Vec<Event>, u64);

/// [`decide`], and the log position of the appended events.
/// `app`: the app the sign-in was for, if it is one; sign-ins are counted by it.
async fn decide_at(
    ctx: &Ctx,
    user: UserId,
    app: Option<AppId>,
    command: SignInCommand,
) -> Result<Decided, Refusal> {
    // Nothing is enrolled or signed in for a removed domain's users.
    if domain_removed(ctx, user) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            SignInFailure::NotActive.message(),
        ));
    }
    let stream = StreamId::user(user);
    let decided = Arc::new(Mutex::new(Vec::new()));
    let seen = decided.clone();
    let position = ctx
        .app
        .command(&stream, &Actor::User(user), evolve, move |st| {
            let events = rules::decide(st, command.clone())?;
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = events.clone();
            Ok(events)
        })
        .await?;
    let events = std::mem::take(&mut *decided.lock().unwrap_or_else(|e| e.into_inner()));
    crate::metrics::sign_ins(&events, app);
    // Pages read the projections right after: let them catch up with this append (not
    // with everyone else's appends since).
    ctx.app.reach(Some(position)).await.ok();
    Ok((events, position))
}

/// Where a finished ceremony sends the browser.
#[derive(Serialize)]
struct Next {
    next: String,
}

/// Opens a session for the sign-in recorded in `events` (its last `SignInSucceeded`);
/// answers the session cookie's header. The session the browser held until now ends: a
/// copy of its cookie must not outlive the sign-in that replaced it.
fn open_session(
    ctx: &Ctx,
    headers: &HeaderMap,
    user: UserId,
    (events, position): &Decided,
) -> Option<HeaderValue> {
    let ok = events.iter().rev().find_map(|e| match e {
        Event::SignInSucceeded(s) => Some(s),
        _ => None,
    })?;
    if let Some(old) = cookie(headers, user_cookie_name(https(ctx))) {
        ctx.store.close(old);
    }
    // Every event that could end it comes after the sign-in's own record; not the head,
    // which may hold a withdrawal appended since, which must end it.
    let opened_at = *position;
    let cookie = ctx
        .store
        .open(user, ok.method, ok.amr.clone(), ok.at, opened_at);
    Some(set_cookie(ctx, user_cookie_name(https(ctx)), &cookie, None))
}

/// Where a browser goes once signed in: back to an app's authorization request that was
/// waiting for it, or to the user's page. The flow's other state ends here.
fn after_sign_in(ctx: &Ctx, flow: &str) -> String {
    let waiting = ctx
        .store
        .with_stored_flow(flow, |f| {
            f.clear_challenges();
            f.entra = None;
            f.entra_user = None;
            f.totp_seed = None;
            f.enrolment = None;
            f.authorize.is_some()
        })
        .unwrap_or(false);
    if waiting {
        "/authorize/resume".into()
    } else {
        ctx.store.end_flow(flow);
        "/me".into()
    }
}

/// Why the sign-in decided in `events` failed: a lock it set says more than the failure
/// that set it.
fn failure_of(events: &[Event]) -> Option<SignInFailure> {
    if events.iter().any(|e| matches!(e, Event::SignInLocked(_))) {
        return Some(SignInFailure::Locked);
    }
    events.iter().find_map(|e| match e {
        Event::SignInFailed(f) => Some(f.reason.clone()),
        _ => None,
    })
}

/// The answer to a sign-in decided in `events`: a session and the way to `/me`, or the
/// failure's message.
fn signed_in_or_refused(
    ctx: &Ctx,
    headers: &HeaderMap,
    flow: &str,
    user: UserId,
    decided: &Decided,
) -> Response {
    if let Some(cookie) = open_session(ctx, headers, user, decided) {
        let next = after_sign_in(ctx, flow);
        let mut r = Json(Next { next }).into_response();
        r.headers_mut().append(header::SET_COOKIE, cookie);
        return r;
    }
    let reason = failure_of(&decided.0);
    let status = match reason {
        Some(SignInFailure::Locked) => StatusCode::TOO_MANY_REQUESTS,
        Some(
            SignInFailure::NotActive | SignInFailure::SsoOff | SignInFailure::MethodNotAllowed,
        ) => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let message = reason.map_or("The sign-in did not succeed. Try again.", |r| r.message());
    refuse(status, message).into_response()
}

// ---- enrolment ------------------------------------------------------------------------------

/// What an enrolment link leads to.
enum LinkLookup {
    /// No such link.
    Unknown,
    /// It was used, expired or replaced.
    Gone(rules::LinkGone),
    /// It works: the user and the link.
    Open(UserId, idledger_domain::LinkId),
}

fn look_up_link(ctx: &Ctx, token: &str) -> LinkLookup {
    let p = ctx.app.engine.projector.read();
    let Some((user, link)) = p.signins.link(&token_hash(token)) else {
        return LinkLookup::Unknown;
    };
    if p.users
        .get(user)
        .is_none_or(|u| u.status == idledger_projections::UserStatus::Deleted)
    {
        return LinkLookup::Gone(rules::LinkGone::AccountGone);
    }
    let latest = p.signins.get(user).and_then(|v| v.decided.link.clone());
    match rules::link_status(latest.as_ref(), link, chrono::Utc::now()) {
        Ok(()) => LinkLookup::Open(user, link),
        Err(gone) => LinkLookup::Gone(gone),
    }
}

/// [`look_up_link`], once more after the projections reach the log's head when the link
/// is unknown: its hash was appended before the mail left, so it may only be unprojected.
async fn find_link(ctx: &Ctx, token: &str) -> LinkLookup {
    match look_up_link(ctx, token) {
        LinkLookup::Unknown => {
            let engine = &ctx.app.engine;
            let _ = engine
                .projector
                .wait_for(engine.log.head().position, Duration::from_secs(2))
                .await;
            look_up_link(ctx, token)
        }
        found => found,
    }
}

async fn enrol_page(
    State(ctx): State<Ctx>,
    Segment(token): Segment,
    headers: HeaderMap,
) -> Response {
    let me = signed_in(&ctx, &headers).map(|(_, session)| session.csrf);
    let me = me.as_deref();
    let (user, link) = match find_link(&ctx, &token).await {
        LinkLookup::Unknown => return pages::link_unknown(me),
        LinkLookup::Gone(why) => return pages::link_gone(why, me),
        LinkLookup::Open(u, l) => (u, l),
    };
    let Some(who) = person(&ctx, user) else {
        return pages::link_unknown(me);
    };
    let sso = match who.allowed {
        Ok(sso) => sso,
        Err(why) => return pages::cannot_enrol(&who.display_name, why, me),
    };
    let (flow, csrf) = flow_of(&ctx, &headers);
    // Holding a working link is what stores a flow here.
    let entra_done = ctx.store.with_flow(&flow, |f| {
        f.enrolment = Some((token.clone(), user, link));
        f.entra_done_for(user)
    });
    let page = pages::enrol(&pages::EnrolView {
        token: &token,
        csrf: &csrf,
        display_name: &who.display_name,
        upn: &who.upn,
        domain: &who.domain,
        method: sso.method,
        entra_done,
        session_csrf: me,
    });
    with_flow_cookie(&ctx, &headers, page, &flow)
}

/// The enrolment a request may act on: the link of its path, opened in this browser
/// (the flow), still working.
fn enrolment(
    ctx: &Ctx,
    headers: &HeaderMap,
    token: &str,
    csrf: Option<&str>,
) -> Result<(String, UserId, idledger_domain::LinkId, bool), Refusal> {
    let flow = checked_flow(ctx, headers, csrf)?;
    let (user, link) = match look_up_link(ctx, token) {
        LinkLookup::Open(u, l) => (u, l),
        LinkLookup::Gone(why) => return Err(refuse(StatusCode::GONE, why.to_string())),
        LinkLookup::Unknown => {
            return Err(refuse(StatusCode::NOT_FOUND, "No such enrolment link."))
        }
    };
    let (opened, entra) = ctx
        .store
        .with_stored_flow(&flow, |f| {
            (
                f.enrolment
                    .as_ref()
                    .is_some_and(|(t, u, l)| same_secret(t, token) && *u == user && *l == link),
                f.entra_done_for(user),
            )
        })
        .unwrap_or((false, false));
    if !opened {
        return Err(expired_flow());
    }
    Ok((flow, user, link, entra))
}

/// Options for `navigator.credentials.create()`.
async fn enrol_passkey_options(
    State(ctx): State<Ctx>,
    Segment(token): Segment,
    headers: HeaderMap,
) -> Result<Json<webauthn::CreationOptions>, Refusal> {
    let (flow, user, link, entra) = enrolment(&ctx, &headers, &token, None)?;
    // What can fail without recording anything fails first.
    rp(&ctx)?;
    start_enrolment(&ctx, user, link, EnrolmentStep::Passkey, entra).await?;
    creation_options(&ctx, &flow, user)
}

/// Records that the enrolment began (once), when the user's method allows `step` now.
async fn start_enrolment(
    ctx: &Ctx,
    user: UserId,
    link: idledger_domain::LinkId,
    step: EnrolmentStep,
    entra_done: bool,
) -> Result<(), Refusal> {
    decide(
        ctx,
        user,
        SignInCommand::StartEnrolment {
            link_id: link,
            step,
            entra_done,
            at: chrono::Utc::now(),
        },
    )
    .await
    .map(drop)
}

fn creation_options(
    ctx: &Ctx,
    flow: &str,
    user: UserId,
) -> Result<Json<webauthn::CreationOptions>, Refusal> {
    let rp = rp(ctx)?;
    let who = person(ctx, user).ok_or_else(|| refuse(StatusCode::NOT_FOUND, "No such user."))?;
    let exclude: Vec<Vec<u8>> = {
        let p = ctx.app.engine.projector.read();
        p.signins
            .get(user)
            .map(|v| {
                v.passkeys
                    .iter()
                    .filter_map(|k| B64.decode(&k.credential_id).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let challenge = webauthn::new_challenge();
    ctx.store
        .with_flow(flow, |f| f.issue_challenge(Ceremony::Register, challenge));
    Ok(Json(webauthn::creation_options(
        &rp,
        &challenge,
        &user_handle(user),
        &who.upn,
        &who.display_name,
        &exclude,
        true,
    )))
}

/// A new passkey as the page posts it.
#[derive(Deserialize)]
struct NewPasskey {
    credential: webauthn::RegistrationResponse,
    #[serde(default)]
    name: Option<String>,
}

/// Verifies a registration and seals its public key for the user's stream.
fn registered(
    ctx: &Ctx,
    flow: &str,
    user: UserId,
    body: &NewPasskey,
) -> Result<(PasskeyRegistered, bool), Refusal> {
    let rp = rp(ctx)?;
    let challenge = ctx
        .store
        .with_stored_flow(flow, |f| {
            f.take_challenge(
                Ceremony::Register,
                body.credential.answered_challenge().as_deref(),
            )
        })
        .flatten()
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "The passkey request expired. Press the button again.",
            )
        })?;
    let new = webauthn::verify_registration(&rp, &challenge, &body.credential)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    // A credential id names one passkey of one user (WebAuthn §7.1 step 22): one held by
    // anyone, this user included, is refused.
    let held = {
        let p = ctx.app.engine.projector.read();
        p.signins.credential_holder(&B64.encode(&new.id)).is_some()
    };
    if held {
        return Err(refuse(
            StatusCode::CONFLICT,
            "This passkey is registered already. Use another authenticator.",
        ));
    }
    let sealed = ctx
        .app
        .engine
        .keyring
        .seal(
            &StreamId::user(user),
            &Secret::new(B64.encode(&new.public_key)),
        )
        .map_err(|e| {
            tracing::warn!(error = %e, "a passkey could not be sealed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "idledger could not store the passkey just now. Try again.",
            )
        })?;
    let name = body
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| match new.hardware_attachment() {
            Some(webauthn::Attachment::CrossPlatform) => "Security key".into(),
            _ => "Passkey".into(),
        });
    Ok((
        PasskeyRegistered {
            credential_id: B64.encode(&new.id),
            name,
            sealed_public_key: sealed,
            algorithm: new.algorithm,
            attachment: new.hardware_attachment().map(|a| match a {
                webauthn::Attachment::Platform => idledger_domain::Attachment::Platform,
                webauthn::Attachment::CrossPlatform => idledger_domain::Attachment::CrossPlatform,
            }),
            sign_count: new.sign_count,
        },
        new.user_verified,
    ))
}

/// The turn to register a passkey, once the projections hold the last registration
/// appended before it (folded already, unless the projector lagged past its wait). The
/// turn's holder puts its own append's position in it.
async fn registering(ctx: &Ctx) -> Result<tokio::sync::OwnedMutexGuard<u64>, Refusal> {
    let turn = ctx.registering.clone().lock_owned().await;
    ctx.app.reach(Some(*turn)).await.map_err(|_| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "idledger could not store the passkey just now. Try again.",
        )
    })?;
    Ok(turn)
}

async fn enrol_passkey(
    State(ctx): State<Ctx>,
    Segment(token): Segment,
    headers: HeaderMap,
    PageJson(body): PageJson<NewPasskey>,
) -> Result<Response, Refusal> {
    let (flow, user, link, entra) = enrolment(&ctx, &headers, &token, None)?;
    let mut turn = registering(&ctx).await?;
    let (passkey, user_verified) = registered(&ctx, &flow, user, &body)?;
    let decided = decide_at(
        &ctx,
        user,
        None,
        SignInCommand::RegisterPasskey {
            enrolment: Some((link, entra)),
            passkey,
            user_verified,
            at: chrono::Utc::now(),
        },
    )
    .await?;
    *turn = decided.1;
    drop(turn);
    Ok(signed_in_or_refused(&ctx, &headers, &flow, user, &decided))
}

/// A new authenticator seed, shown once.
#[derive(Serialize)]
struct TotpSetup {
    /// The seed in base32, for typing into an app.
    secret: String,
    /// The `otpauth://` URI.
    uri: String,
    /// The URI as a QR code (an SVG document).
    qr_svg: String,
}

fn totp_setup(ctx: &Ctx, flow: &str, user: UserId) -> Result<Json<TotpSetup>, Refusal> {
    use rand::RngCore;
    let who = person(ctx, user).ok_or_else(|| refuse(StatusCode::NOT_FOUND, "No such user."))?;
    let mut seed = vec![0u8; idledger_domain::totp::SEED_LEN];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let uri =
        idledger_domain::totp::otpauth_uri(&seed, &format!("idledger {}", who.domain), &who.upn);
    let qr_svg = qrcode::QrCode::new(uri.as_bytes())
        .map(|q| {
            q.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default();
    let secret = idledger_domain::totp::base32(&seed);
    ctx.store.with_flow(flow, |f| f.totp_seed = Some(seed));
    Ok(Json(TotpSetup {
        secret,
        uri,
        qr_svg,
    }))
}

async fn enrol_totp_options(
    State(ctx): State<Ctx>,
    Segment(token): Segment,
    headers: HeaderMap,
) -> Result<Json<TotpSetup>, Refusal> {
    let (flow, user, link, entra) = enrolment(&ctx, &headers, &token, None)?;
    start_enrolment(&ctx, user, link, EnrolmentStep::Totp, entra).await?;
    totp_setup(&ctx, &flow, user)
}

/// A typed authenticator code.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypedCode {
    code: String,
}

/// Checks the confirmation code against the seed being set up; seals the seed.
fn confirmed_seed(
    ctx: &Ctx,
    flow: &str,
    user: UserId,
    code: &str,
) -> Result<(idledger_domain::SealedSecret, u64), Refusal> {
    let seed = ctx
        .store
        .with_stored_flow(flow, |f| f.totp_seed.clone())
        .flatten()
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "Set up the authenticator code again: the secret shown expired.",
            )
        })?;
    let step = idledger_domain::totp::verify(&seed, code, chrono::Utc::now().timestamp(), None)
        .map_err(|e| {
            refuse(
                StatusCode::BAD_REQUEST,
                format!("{e}. Type the code your app shows now."),
            )
        })?;
    let sealed = ctx
        .app
        .engine
        .keyring
        .seal(&StreamId::user(user), &Secret::new(B64.encode(&seed)))
        .map_err(|e| {
            tracing::warn!(error = %e, "an authenticator seed could not be sealed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "idledger could not store it just now. Try again.",
            )
        })?;
    Ok((sealed, step))
}

/// The seed set up is the user's app's now: shown once, confirmed once. (Kept until the
/// enrolment is recorded: a refusal, an expired Entra step say, leaves the app the user
/// just added good for another try.)
fn seed_taken(ctx: &Ctx, flow: &str) {
    ctx.store.with_stored_flow(flow, |f| f.totp_seed = None);
}

async fn enrol_totp(
    State(ctx): State<Ctx>,
    Segment(token): Segment,
    headers: HeaderMap,
    PageJson(body): PageJson<TypedCode>,
) -> Result<Response, Refusal> {
    let (flow, user, link, entra) = enrolment(&ctx, &headers, &token, None)?;
    let (sealed_seed, step) = confirmed_seed(&ctx, &flow, user, &body.code)?;
    let decided = decide_at(
        &ctx,
        user,
        None,
        SignInCommand::EnrolTotp {
            enrolment: Some((link, entra)),
            sealed_seed,
            step,
            at: chrono::Utc::now(),
        },
    )
    .await?;
    seed_taken(&ctx, &flow);
    // A replaced authenticator app (a lost phone) signs out every browser that may have
    // used it; the enrolment's own sign-in opens after.
    if decided.0.iter().any(|e| matches!(e, Event::TotpRemoved(_))) {
        ctx.store.close_all_of(user);
    }
    Ok(signed_in_or_refused(&ctx, &headers, &flow, user, &decided))
}

/// Where the page's script sends the browser.
#[derive(Serialize)]
struct Redirection {
    redirect: String,
}

async fn enrol_entra(
    State(ctx): State<Ctx>,
    Segment(token): Segment,
    headers: HeaderMap,
) -> Result<Json<Redirection>, Refusal> {
    let (flow, user, link, entra) = enrolment(&ctx, &headers, &token, None)?;
    // The Entra request is made first (no connection, a lock: refused unrecorded); it
    // waits in the flow, and is handed out only once the enrolment's start is recorded.
    let redirect = start_entra(&ctx, &flow, user)?;
    start_enrolment(&ctx, user, link, EnrolmentStep::Entra, entra).await?;
    Ok(Json(redirect))
}

// ---- Entra ID -----------------------------------------------------------------------------

fn callback_url(ctx: &Ctx) -> Result<String, Refusal> {
    let public = ctx.app.public_url.as_ref().ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is not set up on this server yet.",
        )
    })?;
    Ok(public.join("/signin/entra/callback"))
}

fn graph_client(ctx: &Ctx, domain: DomainId) -> Result<Arc<crate::graph::GraphClient>, Refusal> {
    ctx.app.sync.client(domain).map(|(c, _)| c).ok_or_else(|| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Your organisation's Entra ID connection is not set up. Ask your administrator.",
        )
    })
}

/// The Entra step of `user` is locked after repeated failures.
fn entra_locked(ctx: &Ctx, user: UserId) -> bool {
    let p = ctx.app.engine.projector.read();
    p.signins.get(user).is_some_and(|v| {
        rules::locked(
            &v.decided,
            idledger_domain::Factor::Entra,
            chrono::Utc::now(),
        )
    })
}

/// Sends an enrolling user's browser to their tenant.
fn start_entra(ctx: &Ctx, flow: &str, user: UserId) -> Result<Redirection, Refusal> {
    let who = person(ctx, user).ok_or_else(|| refuse(StatusCode::NOT_FOUND, "No such user."))?;
    who.allowed
        .map_err(|f| refuse(StatusCode::FORBIDDEN, f.message()))?;
    if entra_locked(ctx, user) {
        return Err(refuse(
            StatusCode::TOO_MANY_REQUESTS,
            SignInFailure::Locked.message(),
        ));
    }
    let client = graph_client(ctx, who.domain_id)?;
    to_tenant(ctx, flow, &client, who.domain_id, Some(user), &who.upn)
}

/// Sends the browser to a tenant, remembering state, nonce and PKCE verifier.
fn to_tenant(
    ctx: &Ctx,
    flow: &str,
    client: &crate::graph::GraphClient,
    domain: DomainId,
    user: Option<UserId>,
    login_hint: &str,
) -> Result<Redirection, Refusal> {
    let (verifier, challenge) = entra::pkce();
    let pending = EntraPending {
        state: sessions::random_text(),
        nonce: sessions::random_text(),
        verifier,
        user,
        domain,
    };
    let redirect_uri = callback_url(ctx)?;
    let url = client
        .authorize_url(&crate::graph::AuthorizeRequest {
            redirect_uri: &redirect_uri,
            state: &pending.state,
            nonce: &pending.nonce,
            code_challenge: &challenge,
            login_hint: Some(login_hint),
        })
        .map_err(|e| {
            tracing::warn!(domain = %domain, error = %e, "no sign-in through this tenant");
            refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "Your organisation's Entra ID connection is not usable now. Ask your administrator.",
        )
        })?;
    ctx.store.with_flow(flow, |f| f.entra = Some(pending));
    Ok(Redirection { redirect: url })
}

/// The name typed on the sign-in page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Username {
    username: String,
}

/// The answer for an unknown name, one that may not sign in this way, and one in a domain
/// without an Entra connection alike.
fn cannot_use_entra() -> Refusal {
    refuse(
        StatusCode::BAD_REQUEST,
        "That account cannot sign in with Entra ID here. Check the name, or use a passkey.",
    )
}

/// Starts the Entra step of a sign-in for a typed name.
///
/// The answer must not tell who has an account: every name of a connected domain goes to
/// that tenant, and one that cannot sign in this way is refused only after Entra answers,
/// where the refusal looks like any other. A lock is reported there too, to the user who
/// proved who they are.
async fn signin_entra(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    PageJson(body): PageJson<Username>,
) -> Result<Json<Redirection>, Refusal> {
    let flow = checked_flow(&ctx, &headers, None)?;
    let name = body.username.trim();
    if name.is_empty() || name.len() > 256 {
        return Err(cannot_use_entra());
    }
    let eligible = {
        let p = ctx.app.engine.projector.read();
        let found = p
            .users
            .by_principal_name(name)
            .find(|u| u.status == idledger_projections::UserStatus::Active)
            .map(|u| u.id);
        found
    }
    .and_then(|user| Some((user, person(&ctx, user)?)))
    .filter(|(_, who)| {
        matches!(who.allowed, Ok(sso) if sso.method == SsoMethod::PasswordAndSecondFactor)
    });
    if let Some((user, who)) = eligible {
        if let Ok(client) = graph_client(&ctx, who.domain_id) {
            // The typed name as the hint, not the stored one: its spelling would tell.
            return to_tenant(&ctx, &flow, &client, who.domain_id, Some(user), name).map(Json);
        }
    }
    let domain = tenant_of_name(&ctx, name).ok_or_else(cannot_use_entra)?;
    let client = graph_client(&ctx, domain).map_err(|_| cannot_use_entra())?;
    to_tenant(&ctx, &flow, &client, domain, None, name).map(Json)
}

/// The connected domain a typed name belongs to: the one named by its suffix, or the only
/// one there is.
fn tenant_of_name(ctx: &Ctx, name: &str) -> Option<DomainId> {
    let p = ctx.app.engine.projector.read();
    let suffix = name.rsplit_once('@').map(|(_, s)| s);
    if let Some(d) = suffix.and_then(|s| p.domains.by_name(s)) {
        return Some(d.id);
    }
    let mut connected = p
        .domains
        .all()
        .into_iter()
        .filter(|d| !d.removed && d.credentials.is_some());
    match (connected.next(), connected.next()) {
        (Some(only), None) => Some(only.id),
        _ => None,
    }
}

/// Entra's answer (RFC 6749 §4.1.2).
#[derive(Deserialize)]
struct Callback {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

async fn entra_callback(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    answer: Result<Query<Callback>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // A repeated or malformed parameter is no answer Entra sends: a page, not plain text.
    let Ok(Query(answer)) = answer else {
        return pages::problem(
            StatusCode::BAD_REQUEST,
            "This sign-in could not be read",
            "Its answer from Entra ID was malformed. Start again from the sign-in page.",
        );
    };
    let Some(flow) = cookie(&headers, flow_cookie_name(https(&ctx))).map(str::to_owned) else {
        return pages::problem(
            StatusCode::BAD_REQUEST,
            "This sign-in expired",
            "Start again from the sign-in page.",
        );
    };
    // The pending request is taken (a callback is answered once), but only by the answer
    // that carries its state: a forged callback cannot cancel a sign-in under way.
    let pending = ctx
        .store
        .with_stored_flow(&flow, |f| {
            let matches = f.entra.as_ref().is_some_and(|p| {
                answer
                    .state
                    .as_deref()
                    .is_some_and(|s| same_secret(s, &p.state))
            });
            if matches {
                f.entra.take()
            } else {
                None
            }
        })
        .flatten();
    let Some(pending) = pending else {
        return pages::problem(
            StatusCode::BAD_REQUEST,
            "This sign-in expired",
            "The answer from Entra ID does not belong to a sign-in of this browser. Start again from the sign-in page.",
        );
    };
    let verdict = match (&answer.error, &answer.code) {
        // Entra's words are short codes and a sentence; what else arrives is cut, so a
        // forged answer cannot put much into a log line.
        (Some(e), _) => Err(EntraStepFailure::Unproven(SignInFailure::EntraRefused(
            format!(
                "{}: {}",
                e.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(64)
                    .collect::<String>(),
                answer
                    .error_description
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect::<String>()
            ),
        ))),
        (None, Some(code)) => check_entra(&ctx, &pending, code).await,
        (None, None) => Err(EntraStepFailure::Unproven(SignInFailure::EntraRefused(
            "no code in the answer".into(),
        ))),
    };
    let failed = |message: &str| {
        pages::problem(StatusCode::UNAUTHORIZED, "Entra ID sign-in failed", message)
    };
    let Some(user) = pending.user else {
        // A name no one may sign in with this way: refused only now, in words that fit
        // any name.
        return match verdict {
            Ok(oid) | Err(EntraStepFailure::SomeoneElse(oid)) => {
                record_for_signer(&ctx, pending.domain, &oid, &flow).await;
                failed(&cannot_use_entra().message)
            }
            Err(EntraStepFailure::Unproven(f) | EntraStepFailure::Proven(f)) => failed(f.message()),
        };
    };
    match verdict {
        Ok(_) if entra_locked(&ctx, user) => pages::problem(
            StatusCode::TOO_MANY_REQUESTS,
            "Entra ID sign-in locked",
            SignInFailure::Locked.message(),
        ),
        Ok(_) => {
            let enrolling = ctx.store.with_flow(&flow, |f| {
                f.entra_user = Some((user, Instant::now()));
                f.enrolment
                    .as_ref()
                    .filter(|(_, u, _)| *u == user)
                    .map(|(t, _, _)| t.clone())
            });
            let next = match enrolling {
                Some(token) => Redirect::to(&format!("/enrol/{token}")).into_response(),
                None => Redirect::to("/signin/second-factor").into_response(),
            };
            // The Entra step may have taken minutes: the cookie lives on with the flow.
            with_flow_cookie(&ctx, &headers, next, &flow)
        }
        Err(EntraStepFailure::Unproven(failure)) => {
            let why = match &failure {
                SignInFailure::EntraRefused(what) => what.as_str(),
                other => other.code(),
            };
            tracing::info!(%user, why, "Entra step ended without a token");
            failed(failure.message())
        }
        Err(EntraStepFailure::SomeoneElse(oid)) => {
            // Recorded as the mismatch it is on the stream of the name typed, and on the
            // signer's as when the name was no one's; told in the words a name no one
            // has gets: "someone else" would tell any colleague that the typed name is a
            // user who may sign in this way.
            record_mismatch(&ctx, user, &flow).await;
            record_for_signer(&ctx, pending.domain, &oid, &flow).await;
            failed(&cannot_use_entra().message)
        }
        Err(EntraStepFailure::Proven(failure)) => {
            let message = failure.message().to_owned();
            let recorded = sign_in(&ctx, user, &flow, Proof::EntraFailed(failure)).await;
            let message = match &recorded {
                Ok((events, _)) if events.iter().any(|e| e.kind() == "SignInLocked") => {
                    SignInFailure::Locked.message().to_owned()
                }
                _ => message,
            };
            failed(&message)
        }
    }
}

/// The Entra step proved `oid` signed in, and not as the user the flow was for (none, or
/// another): the refusal goes into the signer's own history, the same whatever name was
/// typed (a record that differed would tell a colleague whether a typed name is a user
/// who may sign in this way). Nothing when the signer is no user of the domain.
async fn record_for_signer(ctx: &Ctx, domain: DomainId, oid: &str, flow: &str) {
    let signer = {
        let p = ctx.app.engine.projector.read();
        let id = |oid: &str| p.users.by_external(domain, oid).map(|u| u.id);
        id(oid).or_else(|| id(&oid.to_ascii_lowercase()))
    };
    if let Some(signer) = signer {
        record_mismatch(ctx, signer, flow).await;
    }
}

/// Records on `user`'s stream that the Entra step signed in someone other than the user
/// the flow was for.
async fn record_mismatch(ctx: &Ctx, user: UserId, flow: &str) {
    let recorded = sign_in(
        ctx,
        user,
        flow,
        Proof::EntraFailed(SignInFailure::EntraUserMismatch),
    )
    .await;
    // Throttled: one like it was recorded a moment ago.
    if let Err(e) = recorded {
        if e.status != StatusCode::TOO_MANY_REQUESTS {
            tracing::warn!(%user, error = %e.message, "an Entra refusal could not be recorded");
        }
    }
}

/// Why the Entra step signed no one in.
enum EntraStepFailure {
    /// Nothing from Entra in hand: an error answer, a code it would not redeem, no
    /// connection. Anyone who starts a sign-in can cause these with a made-up callback, so
    /// they are shown but neither recorded on the user's stream nor counted towards a lock.
    Unproven(SignInFailure),
    /// Entra issued an ID token and it does not sign this user in: recorded (and counted
    /// towards the lock where the failure is a guess, see `counts_towards_lock`).
    Proven(SignInFailure),
    /// Entra signed in `oid`, not the user whose name was typed.
    SomeoneElse(String),
}

/// Redeems the code and validates the ID token; the token's `oid` must be the user's (when
/// the typed name was someone's). Answers the `oid` Entra signed in.
async fn check_entra(
    ctx: &Ctx,
    pending: &EntraPending,
    code: &str,
) -> Result<String, EntraStepFailure> {
    let unproven = |what: String| EntraStepFailure::Unproven(SignInFailure::EntraRefused(what));
    let domain = pending.domain;
    let external_id = match pending.user {
        Some(user) => {
            let p = ctx.app.engine.projector.read();
            let u = p
                .users
                .get(user)
                .ok_or(EntraStepFailure::Unproven(SignInFailure::NotActive))?;
            Some(u.external_id.clone())
        }
        None => None,
    };
    let client = graph_client(ctx, domain).map_err(|r| unproven(r.message))?;
    let redirect_uri = callback_url(ctx).map_err(|r| unproven(r.message))?;
    let id_token = client
        .redeem_code(code, &redirect_uri, &pending.verifier)
        .await
        .map_err(|e| unproven(e.to_string()))?;
    let keys = tenant_keys(ctx, domain, &client, false)
        .await
        .map_err(EntraStepFailure::Unproven)?;
    let now = chrono::Utc::now().timestamp();
    let check = |keys: &crate::graph::OpenIdKeys| {
        entra::validate(
            id_token.expose(),
            &keys.jwks,
            &keys.issuer,
            client.client_id(),
            &pending.nonce,
            now,
        )
    };
    let claims = match check(&keys) {
        // Keys roll over: one fresh look before giving up on an unknown key.
        Err(entra::IdTokenError::UnknownKey) => check(
            &tenant_keys(ctx, domain, &client, true)
                .await
                .map_err(EntraStepFailure::Unproven)?,
        ),
        other => other,
    }
    .map_err(|e| EntraStepFailure::Proven(SignInFailure::EntraRefused(e.to_string())))?;
    match external_id {
        Some(id) if !claims.oid.eq_ignore_ascii_case(&id) => {
            Err(EntraStepFailure::SomeoneElse(claims.oid))
        }
        _ => Ok(claims.oid),
    }
}

async fn tenant_keys(
    ctx: &Ctx,
    domain: DomainId,
    client: &crate::graph::GraphClient,
    fresh: bool,
) -> Result<crate::graph::OpenIdKeys, SignInFailure> {
    if !fresh {
        let cached = ctx.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, k)) = cached.get(&domain) {
            if at.elapsed() < KEYS_TTL {
                return Ok(k.clone());
            }
        }
    }
    let keys = client
        .openid_keys()
        .await
        .map_err(|e| SignInFailure::EntraRefused(e.to_string()))?;
    ctx.keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(domain, (Instant::now(), keys.clone()));
    Ok(keys)
}

// ---- signing in -----------------------------------------------------------------------------

/// This browser's flow asks for a sign-in newer than `session`'s: an app's request
/// (`prompt=login`, `max_age`) or the user's "Sign in again" on `/me`. The sign-in page
/// asks then instead of sending the user on, or the request would wait for ever.
fn asks_for_fresh_sign_in(ctx: &Ctx, headers: &HeaderMap, session: &UserSession) -> bool {
    cookie(headers, flow_cookie_name(https(ctx)))
        .and_then(|flow| {
            ctx.store.with_stored_flow(flow, |f| {
                let app = f.authorize.as_ref().and_then(|r| r.fresh_after);
                app.max(f.fresh_sign_in_after)
                    .is_some_and(|t| session.auth_time < t)
            })
        })
        .unwrap_or(false)
}

async fn signin_page(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let mut session_csrf = None;
    if let Some((_, session)) = signed_in(&ctx, &headers) {
        if !asks_for_fresh_sign_in(&ctx, &headers, &session) {
            return Redirect::to("/me").into_response();
        }
        session_csrf = Some(session.csrf);
    }
    let (flow, csrf) = flow_of(&ctx, &headers);
    let page = pages::signin(&csrf, session_csrf.as_deref());
    with_flow_cookie(&ctx, &headers, page, &flow)
}

async fn signin_passkey_options(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
) -> Result<Json<webauthn::RequestOptions>, Refusal> {
    let flow = checked_flow(&ctx, &headers, None)?;
    request_options(&ctx, &flow, Ceremony::SignIn, &[])
}

fn request_options(
    ctx: &Ctx,
    flow: &str,
    ceremony: Ceremony,
    allow: &[Vec<u8>],
) -> Result<Json<webauthn::RequestOptions>, Refusal> {
    let rp = rp(ctx)?;
    let challenge = webauthn::new_challenge();
    ctx.store
        .with_flow(flow, |f| f.issue_challenge(ceremony, challenge));
    Ok(Json(webauthn::request_options(&rp, &challenge, allow)))
}

/// A passkey's assertion as the page posts it.
#[derive(Deserialize)]
struct Assertion {
    credential: webauthn::AssertionResponse,
}

/// Verifies an assertion against the passkey `user` holds under its credential id.
fn verify_passkey(
    ctx: &Ctx,
    flow: &str,
    ceremony: Ceremony,
    user: UserId,
    credential: &webauthn::AssertionResponse,
) -> Result<(String, Result<PasskeyProof, SignInFailure>), Refusal> {
    let rp = rp(ctx)?;
    let raw_id = credential
        .credential_id()
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    let id = B64.encode(&raw_id);
    let challenge = ctx
        .store
        .with_stored_flow(flow, |f| {
            f.take_challenge(ceremony, credential.answered_challenge().as_deref())
        })
        .flatten()
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "The passkey request expired. Press the button again.",
            )
        })?;
    let held = {
        let p = ctx.app.engine.projector.read();
        p.signins
            .passkey(user, &id)
            .map(|k| (k.sealed_public_key.clone(), k.sign_count))
    };
    let Some((sealed, stored_count)) = held else {
        return Ok((id, Err(SignInFailure::UnknownCredential)));
    };
    // The user handle must name the same user; a discoverable sign-in (which named no
    // one) must carry it.
    match credential.user_handle() {
        Ok(Some(handle)) if handle != user_handle(user) => {
            return Ok((id, Err(SignInFailure::UnknownCredential)));
        }
        Ok(None) if ceremony == Ceremony::SignIn => {
            return Ok((id, Err(SignInFailure::UnknownCredential)));
        }
        Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, e.to_string())),
        _ => {}
    }
    let public_key = ctx
        .app
        .engine
        .keyring
        .unseal(&StreamId::user(user), &sealed)
        .ok()
        .and_then(|s| B64.decode(s.expose()).ok())
        .ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                SignInFailure::UnknownCredential.message(),
            )
        })?;
    let verdict = match webauthn::verify_assertion(
        &rp,
        &challenge,
        &raw_id,
        &public_key,
        stored_count,
        credential,
    ) {
        Ok(v) => Ok(PasskeyProof {
            sign_count: v.sign_count,
            user_verified: v.user_verified,
        }),
        Err(webauthn::WebauthnError::CounterWentBack { .. }) => Err(SignInFailure::CounterWentBack),
        Err(e) => Err(SignInFailure::BadCredential(e.to_string())),
    };
    Ok((id, verdict))
}

async fn signin_passkey(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    PageJson(body): PageJson<Assertion>,
) -> Result<Response, Refusal> {
    let flow = checked_flow(&ctx, &headers, None)?;
    let raw_id = body
        .credential
        .credential_id()
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, e.to_string()))?;
    let holder = {
        let p = ctx.app.engine.projector.read();
        p.signins.credential_holder(&B64.encode(&raw_id))
    };
    // A passkey nobody holds (removed, or its user deleted) names no stream to record on.
    let Some(user) = holder else {
        // Its challenge is spent; another tab's stays.
        let answered = body.credential.answered_challenge();
        ctx.store.with_stored_flow(&flow, |f| {
            f.take_challenge(Ceremony::SignIn, answered.as_deref())
        });
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "This passkey is not registered here (it may have been removed). Use another, or ask your administrator for an invite.",
        ));
    };
    let (credential_id, verified) =
        verify_passkey(&ctx, &flow, Ceremony::SignIn, user, &body.credential)?;
    let decided = sign_in(
        &ctx,
        user,
        &flow,
        Proof::Passkey {
            credential_id,
            verified,
        },
    )
    .await?;
    Ok(signed_in_or_refused(&ctx, &headers, &flow, user, &decided))
}

/// The user whose Entra step this browser just passed.
fn entra_user(ctx: &Ctx, flow: &str) -> Option<UserId> {
    ctx.store
        .with_stored_flow(flow, |f| {
            f.entra_user
                .filter(|(u, _)| f.entra_done_for(*u))
                .map(|(u, _)| u)
        })
        .flatten()
}

async fn second_factor_page(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    let Some(flow) = cookie(&headers, flow_cookie_name(https(&ctx))).map(str::to_owned) else {
        return Redirect::to("/signin").into_response();
    };
    let csrf = ctx.store.csrf_of(&flow);
    let Some(user) = entra_user(&ctx, &flow) else {
        return Redirect::to("/signin").into_response();
    };
    let Some(who) = person(&ctx, user) else {
        return Redirect::to("/signin").into_response();
    };
    let (passkeys, totp) = {
        let p = ctx.app.engine.projector.read();
        p.signins
            .get(user)
            .map(|v| (!v.passkeys.is_empty(), v.totp_seed.is_some()))
            .unwrap_or((false, false))
    };
    let origin = waiting_app_origin(&ctx, &flow);
    let me = signed_in(&ctx, &headers).map(|(_, session)| session.csrf);
    let page = pages::second_factor(
        &csrf,
        &who.display_name,
        passkeys,
        totp,
        None,
        origin.as_deref(),
        me.as_deref(),
    );
    with_flow_cookie(&ctx, &headers, page, &flow)
}

/// Decides a sign-in of `user` by `proof` in `flow`, for the app whose authorization
/// request waits in it, if one does.
async fn sign_in(ctx: &Ctx, user: UserId, flow: &str, proof: Proof) -> Result<Decided, Refusal> {
    let waiting = waiting_app(ctx, flow);
    decide_at(
        ctx,
        user,
        waiting.as_ref().map(|a| a.id),
        SignInCommand::SignIn {
            proof,
            app: waiting.map(|a| a.name),
            at: chrono::Utc::now(),
        },
    )
    .await
}

/// The app whose authorization request waits for this flow's sign-in (`None`: the user's
/// own page).
fn waiting_app(ctx: &Ctx, flow: &str) -> Option<WaitingApp> {
    let id = ctx
        .store
        .with_stored_flow(flow, |f| f.authorize.as_ref().map(|a| a.app_id()))
        .flatten()?;
    let p = ctx.app.engine.projector.read();
    p.provider.app(id).map(|a| WaitingApp {
        id,
        name: a.name.clone(),
    })
}

/// An app a sign-in is for: its name goes into the sign-in's events (for people), its id
/// into the metrics' labels (bounded, not free text).
struct WaitingApp {
    id: AppId,
    name: String,
}

/// The origin of the app whose authorization request waits for this flow's sign-in.
fn waiting_app_origin(ctx: &Ctx, flow: &str) -> Option<String> {
    ctx.store
        .with_stored_flow(flow, |f| f.authorize.as_ref().and_then(|a| a.app_origin()))
        .flatten()
}

/// The authenticator-code form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeForm {
    code: String,
    csrf: String,
}

async fn signin_totp(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    form: Result<Form<CodeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return pages::problem(
            StatusCode::BAD_REQUEST,
            "The form was incomplete",
            "Go back and type the code again.",
        );
    };
    let flow = match checked_flow(&ctx, &headers, Some(&form.csrf)) {
        Ok(f) => f,
        Err(_) => return Redirect::to("/signin").into_response(),
    };
    let Some(user) = entra_user(&ctx, &flow) else {
        return Redirect::to("/signin").into_response();
    };
    let sealed = {
        let p = ctx.app.engine.projector.read();
        p.signins.get(user).and_then(|v| v.totp_seed.clone())
    };
    // A seed that cannot be opened refuses the sign-in: never a check against no key.
    let seed = match sealed {
        None => Vec::new(),
        Some(sealed) => match ctx
            .app
            .engine
            .keyring
            .unseal(&StreamId::user(user), &sealed)
            .ok()
            .and_then(|s| B64.decode(s.expose()).ok())
        {
            Some(seed) => seed,
            None => {
                tracing::warn!(%user, "an authenticator seed could not be unsealed");
                return pages::problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in unavailable",
                    "idledger cannot check authenticator codes just now. Try again later, or use a passkey.",
                );
            }
        },
    };
    let decided = sign_in(
        &ctx,
        user,
        &flow,
        Proof::EntraThenTotp {
            code: form.code,
            seed,
        },
    )
    .await;
    let decided = match decided {
        Ok(d) => d,
        Err(r) => return pages::problem(r.status, "Sign-in failed", &r.message),
    };
    if let Some(cookie) = open_session(&ctx, &headers, user, &decided) {
        let next = after_sign_in(&ctx, &flow);
        let mut r = Redirect::to(&next).into_response();
        r.headers_mut().append(header::SET_COOKIE, cookie);
        return r;
    }
    let reason = failure_of(&decided.0);
    let message = reason
        .as_ref()
        .map_or("The sign-in did not succeed.", |r| r.message());
    let (passkeys, totp) = {
        let p = ctx.app.engine.projector.read();
        p.signins
            .get(user)
            .map(|v| (!v.passkeys.is_empty(), v.totp_seed.is_some()))
            .unwrap_or((false, false))
    };
    let name = person(&ctx, user)
        .map(|p| p.display_name)
        .unwrap_or_default();
    let csrf = ctx.store.csrf_of(&flow);
    let origin = waiting_app_origin(&ctx, &flow);
    let me = signed_in(&ctx, &headers).map(|(_, session)| session.csrf);
    let mut page = pages::second_factor(
        &csrf,
        &name,
        passkeys,
        totp,
        Some(message),
        origin.as_deref(),
        me.as_deref(),
    );
    *page.status_mut() = StatusCode::UNAUTHORIZED;
    page
}

async fn second_passkey_options(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
) -> Result<Json<webauthn::RequestOptions>, Refusal> {
    let flow = checked_flow(&ctx, &headers, None)?;
    let user = entra_user(&ctx, &flow).ok_or_else(expired_flow)?;
    let allow: Vec<Vec<u8>> = {
        let p = ctx.app.engine.projector.read();
        p.signins
            .get(user)
            .map(|v| {
                v.passkeys
                    .iter()
                    .filter_map(|k| B64.decode(&k.credential_id).ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    request_options(&ctx, &flow, Ceremony::SecondFactor, &allow)
}

async fn second_passkey(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    PageJson(body): PageJson<Assertion>,
) -> Result<Response, Refusal> {
    let flow = checked_flow(&ctx, &headers, None)?;
    let user = entra_user(&ctx, &flow).ok_or_else(expired_flow)?;
    let (credential_id, verified) =
        verify_passkey(&ctx, &flow, Ceremony::SecondFactor, user, &body.credential)?;
    let decided = sign_in(
        &ctx,
        user,
        &flow,
        Proof::EntraThenPasskey {
            credential_id,
            verified,
        },
    )
    .await?;
    Ok(signed_in_or_refused(&ctx, &headers, &flow, user, &decided))
}

// ---- the user's own page --------------------------------------------------------------------

async fn me_page(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    me(&ctx, &headers, None)
}

fn me(ctx: &Ctx, headers: &HeaderMap, notice: Option<(bool, &str)>) -> Response {
    let Some((_, session)) = signed_in(ctx, headers) else {
        return Redirect::to("/signin").into_response();
    };
    let Some(who) = person(ctx, session.user) else {
        return Redirect::to("/signin").into_response();
    };
    let view = {
        let p = ctx.app.engine.projector.read();
        p.signins.get(session.user).cloned().unwrap_or_default()
    };
    let method = who.allowed.map(|s| s.method).unwrap_or(session.method);
    // The flow cookie holds the state of the page's ceremonies (a passkey's challenge, a
    // new authenticator's seed), set for as long as the session lives: it gives no
    // authority of its own; the session's CSRF token does.
    let (flow, _) = flow_of(ctx, headers);
    let page = pages::me(&pages::MeView {
        session_csrf: &session.csrf,
        may_change_methods: recent_enough(ctx, &session),
        display_name: &who.display_name,
        upn: &who.upn,
        domain: &who.domain,
        method,
        view: &view,
        notice,
    });
    with_flow_cookie(ctx, headers, page, &flow)
}

/// Whether the session's sign-in is recent enough to add or remove a sign-in method:
/// whoever holds an open session (a browser left unlocked, a stolen cookie) must not make
/// a method of their own, nor take the user's away, without proving again who they are.
fn recent_enough(ctx: &Ctx, session: &UserSession) -> bool {
    let age = chrono::Utc::now().signed_duration_since(session.auth_time);
    // A sign-in dated ahead of the clock (it stepped back) is not taken for a recent one.
    age.to_std().is_ok_and(|age| age <= ctx.app.signin_reauth)
}

const SIGN_IN_AGAIN: &str =
    "To add or remove a way to sign in, sign in again first (Sign in again, on your page).";

/// "Sign in again" on `/me`: the sign-in page asks even though a session is open, and
/// the new session may change the user's methods.
async fn me_sign_in_again(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    form: Result<Form<MeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some((_, session)) = signed_in(&ctx, &headers) else {
        return Redirect::to("/signin").into_response();
    };
    match form {
        Ok(Form(f)) if same_secret(&f.csrf, &session.csrf) => {}
        _ => return pages::stale_form(&session.csrf),
    }
    let (flow, _) = flow_of(&ctx, &headers);
    let now = chrono::Utc::now();
    ctx.store
        .with_flow(&flow, |f| f.fresh_sign_in_after = Some(now));
    with_flow_cookie(
        &ctx,
        &headers,
        Redirect::to("/signin").into_response(),
        &flow,
    )
}

/// The signed-in user of a scripted request from `/me` that adds a sign-in method, and
/// its flow; refused (403) when the sign-in is not [`recent_enough`]. The CSRF token is
/// the session's: one bound only to the flow would outlive a sign-out and serve the next
/// user of the browser.
fn me_user(ctx: &Ctx, headers: &HeaderMap) -> Result<(String, UserId), Refusal> {
    let (_, session) = signed_in(ctx, headers).ok_or_else(|| {
        refuse(
            StatusCode::UNAUTHORIZED,
            "Your session ended. Sign in again.",
        )
    })?;
    let sent = headers.get("x-csrf-token").and_then(|v| v.to_str().ok());
    if !sent.is_some_and(|t| same_secret(&session.csrf, t)) {
        return Err(expired_flow());
    }
    if !recent_enough(ctx, &session) {
        return Err(refuse(StatusCode::FORBIDDEN, SIGN_IN_AGAIN));
    }
    let flow = cookie(headers, flow_cookie_name(https(ctx))).ok_or_else(expired_flow)?;
    Ok((flow.to_owned(), session.user))
}

async fn me_passkey_options(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
) -> Result<Json<webauthn::CreationOptions>, Refusal> {
    let (flow, user) = me_user(&ctx, &headers)?;
    creation_options(&ctx, &flow, user)
}

async fn me_add_passkey(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    PageJson(body): PageJson<NewPasskey>,
) -> Result<Json<Next>, Refusal> {
    let (flow, user) = me_user(&ctx, &headers)?;
    let mut turn = registering(&ctx).await?;
    let (passkey, user_verified) = registered(&ctx, &flow, user, &body)?;
    let (_, position) = decide_at(
        &ctx,
        user,
        None,
        SignInCommand::RegisterPasskey {
            enrolment: None,
            passkey,
            user_verified,
            at: chrono::Utc::now(),
        },
    )
    .await?;
    *turn = position;
    Ok(Json(Next { next: "/me".into() }))
}

async fn me_totp_options(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
) -> Result<Json<TotpSetup>, Refusal> {
    let (flow, user) = me_user(&ctx, &headers)?;
    totp_setup(&ctx, &flow, user)
}

async fn me_totp(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    PageJson(body): PageJson<TypedCode>,
) -> Result<Json<Next>, Refusal> {
    let (flow, user) = me_user(&ctx, &headers)?;
    let (sealed_seed, step) = confirmed_seed(&ctx, &flow, user, &body.code)?;
    decide(
        &ctx,
        user,
        SignInCommand::EnrolTotp {
            enrolment: None,
            sealed_seed,
            step,
            at: chrono::Utc::now(),
        },
    )
    .await?;
    seed_taken(&ctx, &flow);
    Ok(Json(Next { next: "/me".into() }))
}

/// A form on `/me` with the session's CSRF token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeForm {
    csrf: String,
    #[serde(default)]
    name: Option<String>,
}

/// Runs a `/me` form's command; answers the page again with what happened.
async fn me_form(
    ctx: &Ctx,
    headers: &HeaderMap,
    form: Result<Form<MeForm>, axum::extract::rejection::FormRejection>,
    command: impl FnOnce(&MeForm) -> SignInCommand,
    done: &str,
) -> Response {
    let Some((cookie_value, session)) = signed_in(ctx, headers) else {
        return Redirect::to("/signin").into_response();
    };
    let form = match form {
        Ok(Form(f)) if same_secret(&f.csrf, &session.csrf) => f,
        _ => {
            return pages::stale_form(&session.csrf);
        }
    };
    let command = command(&form);
    let removes = matches!(
        command,
        SignInCommand::RemovePasskey { .. } | SignInCommand::RemoveTotp
    );
    if removes && !recent_enough(ctx, &session) {
        let mut page = me(ctx, headers, Some((false, SIGN_IN_AGAIN)));
        *page.status_mut() = StatusCode::FORBIDDEN;
        return page;
    }
    match decide(ctx, session.user, command).await {
        Ok(events) => {
            // A removed method signs out every other browser that may have used it.
            if events
                .iter()
                .any(|e| matches!(e, Event::PasskeyRemoved(_) | Event::TotpRemoved(_)))
            {
                ctx.store.close_others_of(session.user, &cookie_value);
            }
            me(ctx, headers, Some((true, done)))
        }
        Err(r) => {
            let mut page = me(ctx, headers, Some((false, &r.message)));
            *page.status_mut() = r.status;
            page
        }
    }
}

async fn me_rename_passkey(
    State(ctx): State<Ctx>,
    Segment(id): Segment,
    headers: HeaderMap,
    form: Result<Form<MeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    me_form(
        &ctx,
        &headers,
        form,
        |f| SignInCommand::RenamePasskey {
            credential_id: id,
            name: f.name.clone().unwrap_or_default(),
        },
        "The passkey was renamed.",
    )
    .await
}

async fn me_remove_passkey(
    State(ctx): State<Ctx>,
    Segment(id): Segment,
    headers: HeaderMap,
    form: Result<Form<MeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    me_form(
        &ctx,
        &headers,
        form,
        |_| SignInCommand::RemovePasskey { credential_id: id },
        "The passkey was removed.",
    )
    .await
}

async fn me_remove_totp(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    form: Result<Form<MeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    me_form(
        &ctx,
        &headers,
        form,
        |_| SignInCommand::RemoveTotp,
        "The authenticator app was removed.",
    )
    .await
}

/// The sign-out form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignOut {
    csrf: String,
}

async fn sign_out(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    form: Result<Form<SignOut>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Some((cookie_value, session)) = signed_in(&ctx, &headers) else {
        return Redirect::to("/signin").into_response();
    };
    match form {
        Ok(Form(f)) if same_secret(&f.csrf, &session.csrf) => {
            ctx.store.close(&cookie_value);
            let mut r = Redirect::to("/signin").into_response();
            r.headers_mut().append(
                header::SET_COOKIE,
                set_cookie(&ctx, user_cookie_name(https(&ctx)), "", Some(0)),
            );
            r
        }
        _ => pages::stale_form(&session.csrf),
    }
}
