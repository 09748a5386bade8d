//! The admin console: the pages an administrator (or, read-only, an auditor) works in, at
//! `/` and under `/console/`, on the same origin as the API.
//!
//! The server renders each page's frame (navigation, headings, forms with their labels,
//! tables' heads, and for auditors no command control at all); `assets/console.js` fills
//! the tables from the JSON API and sends every command to the API's own routes, with the
//! session cookie and the session's CSRF token. So the console has no second way to read
//! or write: what a page shows and does is what the API answers and decides. Every asset
//! is embedded in the binary; pages carry a strict Content-Security-Policy (no inline
//! script or style).

mod pages;

use crate::http::session::{cookie, cookie_name, same_secret};
use crate::http::{token_hash, AppState};
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use idledger_domain::{Role, TokenId};
use serde::Deserialize;

/// The API's router with the console's pages and assets.
pub fn app(state: AppState) -> Router {
    let console = Router::new()
        .route("/", get(sign_in_page))
        .route("/console/sign-in", post(sign_in))
        .route(
            "/console/sign-in/{ticket}",
            get(sign_in_link_page).post(sign_in_link),
        )
        .route("/console/sign-out", post(sign_out))
        .route(
            "/console/domains",
            get(pages::domains).post(form_before_script),
        )
        .route(
            "/console/domains/{id}",
            get(pages::domain).post(form_before_script),
        )
        .route(
            "/console/domains/{id}/import",
            get(pages::import).post(form_before_script),
        )
        .route("/console/users", get(pages::users).post(form_before_script))
        .route(
            "/console/users/{id}",
            get(pages::user).post(form_before_script),
        )
        .route(
            "/console/rotations",
            get(pages::rotations).post(form_before_script),
        )
        .route("/console/audit", get(pages::audit).post(form_before_script))
        .route("/console/apps", get(pages::apps).post(form_before_script))
        .route("/console/assets/{file}", get(asset))
        .layer(axum::middleware::map_response(page_headers))
        .with_state(state.clone());
    crate::http::router(state.clone())
        .merge(console)
        .merge(crate::signin::routes(state.clone()))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::refuse_without_projections,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state,
            crate::http::timeout,
        ))
        .layer(axum::middleware::from_fn(crate::http::record_request))
}

/// A page's form sent by the browser itself (Enter pressed before the page's script took
/// the form over, or a script that failed): nothing is read or done, and the browser is
/// sent back to the page, so that no reload or Back offers to send what was typed again.
async fn form_before_script(uri: axum::http::Uri) -> Response {
    Redirect::to(uri.path()).into_response()
}

/// Who is looking at a page.
pub(crate) struct Viewer {
    pub role: Role,
    pub csrf: String,
}

impl Viewer {
    pub fn admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The viewer of a page request: a live session of a live admin or auditor token.
fn viewer(state: &AppState, headers: &HeaderMap) -> Option<Viewer> {
    let session = state
        .sessions
        .find(cookie(headers, cookie_name(state.secure_cookies()))?)?;
    let p = state.engine.projector.read();
    let token = p
        .tokens
        .get(session.token_id)
        .filter(|t| t.revoked_at.is_none())?;
    matches!(token.role, Role::Admin | Role::Auditor).then(|| Viewer {
        role: token.role,
        csrf: session.csrf,
    })
}

/// A page for a signed-in viewer, or the way back to sign-in.
pub(crate) fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    page: impl FnOnce(&Viewer) -> Response,
) -> Response {
    match viewer(state, headers) {
        Some(v) => page(&v),
        None => Redirect::to("/").into_response(),
    }
}

/// Security headers of every console answer: nothing runs but our own script, nothing
/// frames the console, and pages (which name users) are not cached. The console frames
/// only its own origin: the hidden frame an export downloads in.
async fn page_headers(response: Response) -> Response {
    crate::http::web::security_headers(
        response,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-src 'self'; frame-ancestors 'none'; \
         base-uri 'none'",
    )
}

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// A path segment as text, or empty when it is not text (a `%FF`): each console handler
/// answers a segment it does not know with its own page, where axum would answer plain
/// text.
pub(super) struct Segment(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Segment {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Segment(
            Path::<String>::from_request_parts(parts, state)
                .await
                .map(|Path(s)| s)
                .unwrap_or_default(),
        ))
    }
}

/// The embedded assets.
async fn asset(Segment(file): Segment, headers: HeaderMap) -> Response {
    match file.as_str() {
        "console.css" => crate::http::web::asset(CSS, "text/css; charset=utf-8", &headers),
        "console.js" => crate::http::web::asset(JS, "text/javascript; charset=utf-8", &headers),
        _ => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// The cookie that holds a session: HttpOnly, SameSite=Strict, Secure over HTTPS.
fn session_cookie(state: &AppState, value: &str, max_age: Option<u64>) -> HeaderValue {
    let mut c = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Strict",
        cookie_name(state.secure_cookies())
    );
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if state.secure_cookies() {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or(HeaderValue::from_static("idl_session=; Max-Age=0"))
}

/// The double-submit value that ties a sign-in form to the browser that loaded it
/// (`__Host-` over HTTPS, so a sibling subdomain cannot plant one).
fn pre_name(https: bool) -> &'static str {
    if https {
        "__Host-idl_signin"
    } else {
        "idl_signin"
    }
}

async fn sign_in_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if viewer(&state, &headers).is_some() {
        return Redirect::to("/console/domains").into_response();
    }
    sign_in_form(&state, StatusCode::OK, None)
}

fn sign_in_form(state: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let pre = crate::http::new_token_text();
    with_pre(
        state,
        (status, pages::sign_in(&pre, error)).into_response(),
        &pre,
    )
}

/// `response` with the cookie half of the form's double-submit value `pre`.
fn with_pre(state: &AppState, mut response: Response, pre: &str) -> Response {
    // `__Host-` cookies must have Path=/; over plain HTTP the path keeps it off other routes.
    let cookie = if state.secure_cookies() {
        format!(
            "{}={pre}; Path=/; HttpOnly; SameSite=Strict; Secure",
            pre_name(true)
        )
    } else {
        format!(
            "{}={pre}; Path=/console/sign-in; HttpOnly; SameSite=Strict",
            pre_name(false)
        )
    };
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// The sign-in form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    token: String,
    pre: String,
}

/// A session for the token in `token_id`, and the answer that sets its cookie.
/// Opens a session; the one the browser held until now ends, so a copy of its cookie
/// does not outlive the sign-in that replaced it.
fn open_session(state: &AppState, headers: &HeaderMap, token_id: TokenId) -> Response {
    if let Some(old) = cookie(headers, cookie_name(state.secure_cookies())) {
        state.sessions.close(old);
    }
    let value = state.sessions.open(token_id);
    let mut response = Redirect::to("/console/domains").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, session_cookie(state, &value, None));
    response
}

async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignIn>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return sign_in_form(
            &state,
            StatusCode::BAD_REQUEST,
            Some("The form was incomplete."),
        );
    };
    if !pre_matches(&state, &headers, &form.pre) {
        return sign_in_form(
            &state,
            StatusCode::FORBIDDEN,
            Some("This sign-in form expired or came from elsewhere; try again."),
        );
    }
    let token = {
        let p = state.engine.projector.read();
        p.tokens
            .by_hash(&token_hash(form.token.trim()))
            .filter(|t| matches!(t.role, Role::Admin | Role::Auditor))
            .map(|t| t.id)
    };
    match token {
        Some(id) => open_session(&state, &headers, id),
        None => sign_in_form(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("That is not a live admin or auditor token."),
        ),
    }
}

/// Whether the form of a page has come back to the browser that loaded it.
fn pre_matches(state: &AppState, headers: &HeaderMap, pre: &str) -> bool {
    own_origin(state, headers)
        && cookie(headers, pre_name(state.secure_cookies())).is_some_and(|c| same_secret(c, pre))
}

/// Over plain HTTP the form must come from this very origin. Cookies and SameSite ignore
/// ports: a page on another port of localhost could plant the double-submit cookie and
/// post its own token, signing the browser in as someone else (login CSRF). Browsers say
/// where a request comes from in `Sec-Fetch-Site` (`same-site` for another port), and in
/// `Origin` — but that is `null` under the pages' `no-referrer` policy, so it is read
/// only when it names an origin. Under TLS the `__Host-` cookie cannot be planted from
/// plain HTTP, and a proxy may rewrite `Host`: not checked there.
fn own_origin(state: &AppState, headers: &HeaderMap) -> bool {
    if state.secure_cookies() {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return site == "same-origin";
    }
    let origin = match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => return true,
        Some(Ok("null")) => return true,
        Some(Ok(o)) => o,
        Some(Err(_)) => return false,
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    host.is_some_and(|host| origin.strip_prefix("http://") == Some(host))
}

fn ticket_expired(state: &AppState) -> Response {
    sign_in_form(
        state,
        StatusCode::UNAUTHORIZED,
        Some("That sign-in link was used already or expired; sign in with a token."),
    )
}

/// A one-time sign-in link (the demo prints one): a page whose button signs in.
async fn sign_in_link_page(State(state): State<AppState>, Segment(ticket): Segment) -> Response {
    if !state.sessions.ticket_valid(&ticket) {
        return ticket_expired(&state);
    }
    let pre = crate::http::new_token_text();
    with_pre(
        &state,
        pages::sign_in_link(&ticket, &pre).into_response(),
        &pre,
    )
}

/// The form of a sign-in link's page.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInLink {
    pre: String,
}

/// Signs in with a one-time link's ticket, from its own page only.
async fn sign_in_link(
    State(state): State<AppState>,
    Segment(ticket): Segment,
    headers: HeaderMap,
    form: Result<Form<SignInLink>, axum::extract::rejection::FormRejection>,
) -> Response {
    let from_its_page = form.is_ok_and(|Form(f)| pre_matches(&state, &headers, &f.pre));
    if !from_its_page {
        return sign_in_form(
            &state,
            StatusCode::FORBIDDEN,
            Some("This sign-in link's form expired or came from elsewhere; open the link again."),
        );
    }
    match state.sessions.redeem(&ticket) {
        Some(id) => open_session(&state, &headers, id),
        None => ticket_expired(&state),
    }
}

/// The sign-out form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignOut {
    csrf: String,
}

async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<SignOut>, axum::extract::rejection::FormRejection>,
) -> Response {
    let value = cookie(&headers, cookie_name(state.secure_cookies()));
    let session = value.and_then(|v| state.sessions.find(v).map(|s| (v, s)));
    let Some((value, session)) = session else {
        // No session here: nothing to end (and no cookie cleared on another site's say-so).
        return Redirect::to("/").into_response();
    };
    match form {
        Ok(Form(form)) if same_secret(&form.csrf, &session.csrf) => {
            state.sessions.close(value);
            let mut response = Redirect::to("/").into_response();
            response
                .headers_mut()
                .append(header::SET_COOKIE, session_cookie(&state, "", Some(0)));
            response
        }
        _ => (StatusCode::FORBIDDEN, pages::stale_form()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    /// The page hears every kind the live feed sends: the feed names each event by its
    /// kind, and a kind the script does not listen for never reaches it.
    #[test]
    fn the_script_listens_for_every_event_kind() {
        let listened = super::JS
            .split_once("const KINDS = [")
            .and_then(|(_, rest)| rest.split_once("];"))
            .map(|(list, _)| list)
            .expect("console.js holds KINDS");
        for kind in idledger_domain::Event::KINDS {
            assert!(listened.contains(&format!("\"{kind}\"")), "{kind}");
        }
    }
}
