//! The sign-in pages, rendered on the server. Every value from a request or the log goes
//! through `esc`; `signin.js` runs the WebAuthn ceremonies and the authenticator-code
//! setup, and finds its buttons by `data-` attributes, never by injected HTML.

use crate::http::esc;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use idledger_domain::decide::signin::LinkGone;
use idledger_domain::{Attachment, SignInFailure, SsoMethod};
use idledger_projections::SignInView;

/// Security headers of every sign-in answer. Like the console's, plus `data:` images for
/// the QR code of an authenticator app.
pub async fn headers(response: Response) -> Response {
    crate::http::web::security_headers(response, CSP)
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("assets/signin.css");
const JS: &str = include_str!("assets/signin.js");

/// The embedded assets.
pub async fn asset(
    axum::extract::Path(file): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    match file.as_str() {
        "signin.css" => crate::http::web::asset(CSS, "text/css; charset=utf-8", &headers),
        "signin.js" => crate::http::web::asset(JS, "text/javascript; charset=utf-8", &headers),
        _ => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

fn page(status: StatusCode, title: &str, csrf: &str, main: &str) -> Response {
    (
        status,
        Html(format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}">
<title>{title} · idledger</title>
<link rel="stylesheet" href="/signin/assets/signin.css">
<script src="/signin/assets/signin.js" defer></script>
</head>
<body>
<main>
{main}
<div id="error" role="alert" hidden></div>
</main>
</body>
</html>
"#,
            title = esc(title),
            csrf = esc(csrf),
        )),
    )
        .into_response()
}

/// A page that explains a problem and what to do next.
pub fn problem(status: StatusCode, title: &str, message: &str) -> Response {
    problem_of(status, title, message, None)
}

/// [`problem`], with the sign-out bar and the way back to `/me` for a signed-in user.
fn problem_of(
    status: StatusCode,
    title: &str,
    message: &str,
    session_csrf: Option<&str>,
) -> Response {
    page(
        status,
        title,
        "",
        &format!(
            "{}<h1>{}</h1>\n<p role=\"alert\">{}</p>\n{}",
            sign_out_bar(session_csrf),
            esc(title),
            esc(message),
            match session_csrf {
                Some(_) => to_me(true),
                None => "<p><a href=\"/signin\">Go to sign-in</a></p>",
            }
        ),
    )
}

/// A form that came without the session's CSRF token (another site's, or a page older
/// than the session): nothing was done. Only signed-in users post these forms, so the
/// page is a signed-in one (`session_csrf`: the session's token).
pub fn stale_form(session_csrf: &str) -> Response {
    problem_of(
        StatusCode::FORBIDDEN,
        "Nothing was done",
        "This form did not come from your current idledger page. Reload the page and try again.",
        Some(session_csrf),
    )
}

/// Asks a signed-in user whether to sign out, for a sign-out request that did not come
/// with proof it was the user's own (an ID token of this very session).
pub fn confirm_sign_out(
    csrf: &str,
    app: Option<&str>,
    carried: &[(&str, &str)],
    back_to: Option<&str>,
) -> Response {
    let asker = match app {
        Some(name) => format!("{} asks to sign you out.", esc(name)),
        None => "A site asks to sign you out.".to_owned(),
    };
    let hidden = hidden_inputs(carried);
    let mut response = page(
        StatusCode::OK,
        "Sign out?",
        csrf,
        &format!(
            r#"<h1>Sign out of idledger?</h1>
<p>{asker} Signing out ends your session here, for every app you opened with it.</p>
<form method="post" action="/end_session"><input type="hidden" name="csrf" value="{csrf}">{hidden}<button type="submit">Sign out</button></form>
<p><a href="/me">Stay signed in</a></p>"#,
            csrf = esc(csrf),
        ),
    );
    // The answer to the form sends the browser back to the app: its origin (a registered
    // post-logout address's, checked by the caller) is a place this form may lead.
    leads_to(&mut response, back_to);
    response
}

/// `fields` as a form's hidden inputs.
fn hidden_inputs(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                r#"<input type="hidden" name="{}" value="{}">"#,
                esc(k),
                esc(v)
            )
        })
        .collect()
}

/// An authorization answer in `response_mode=form_post`: a form of `fields` the page's
/// script posts to the app's registered `action` at once (a button does without script).
/// Its origin is the one place the form may lead besides this site.
pub fn form_post(action: &str, origin: Option<&str>, fields: &[(&str, &str)]) -> Response {
    let hidden = hidden_inputs(fields);
    let mut response = page(
        StatusCode::OK,
        "Back to the app",
        "",
        &format!(
            r#"<h1>Back to the app</h1>
<form method="post" action="{}" data-post-at-once>{hidden}<p role="status">Taking you back to the app.</p>
<button type="submit">Continue</button></form>"#,
            esc(action)
        ),
    );
    leads_to(&mut response, origin);
    response
}

/// Lets the page's forms lead to `origin` (a registered address's, checked by the caller)
/// besides this site. Browsers check every hop of a form's redirects against
/// `form-action`, so a form whose answer sends the browser on to an app needs the app's
/// origin in it, or the browser stops on the way.
fn leads_to(response: &mut Response, origin: Option<&str>) {
    let widened =
        origin.map(|o| CSP.replace("form-action 'self'", &format!("form-action 'self' {o}")));
    if let Some(policy) = widened.and_then(|p| HeaderValue::from_str(&p).ok()) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, policy);
    }
}

/// The end of a sign-out no app asked to come back from.
pub fn signed_out() -> Response {
    page(
        StatusCode::OK,
        "Signed out",
        "",
        r#"<h1>Signed out</h1>
<p role="status">You are signed out of idledger.</p>
<p><a href="/signin">Sign in again</a></p>"#,
    )
}

/// The bar of every page a signed-in user is shown: the "Sign out" button SIGNIN.md
/// promises, posting the session's CSRF token.
fn sign_out_bar(session_csrf: Option<&str>) -> String {
    match session_csrf {
        Some(csrf) => format!(
            r#"<header class="top"><span class="brand">idledger</span>
<form method="post" action="/signout" class="sign-out"><input type="hidden" name="csrf" value="{}"><button type="submit">Sign out</button></form></header>"#,
            esc(csrf)
        ),
        None => String::new(),
    }
}

/// For a signed-in user: the way to their page.
fn to_me(signed_in: bool) -> &'static str {
    if signed_in {
        "<p><a href=\"/me\">Go to your page</a></p>"
    } else {
        ""
    }
}

/// 404: a link that never existed.
/// `session_csrf`: the visitor's session's token, when they are signed in.
pub fn link_unknown(session_csrf: Option<&str>) -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Enrolment link not found",
        "",
        &format!(
            "{}<h1>Enrolment link not found</h1>\n<p role=\"alert\">This enrolment link does not exist. Check that you opened the whole link from your invite, or ask your administrator for a new invite.</p>\n{}",
            sign_out_bar(session_csrf),
            to_me(session_csrf.is_some())
        ),
    )
}

/// 410: used, expired or replaced; nothing can be registered here.
pub fn link_gone(why: LinkGone, session_csrf: Option<&str>) -> Response {
    let (title, text) = match why {
        LinkGone::Used => (
            "Enrolment link already used",
            "This enrolment link was used already: enrolment is done. Sign in instead, or ask your administrator for a new invite.",
        ),
        LinkGone::Expired => (
            "Enrolment link expired",
            "This enrolment link has expired. Ask your administrator for a new invite.",
        ),
        LinkGone::Replaced => (
            "Enrolment link replaced",
            "A newer invite replaced this enrolment link. Open the newest invite you received.",
        ),
        LinkGone::AccountGone => (
            "Enrolment link no longer works",
            "This enrolment link no longer has an account to enrol: the account was removed. Ask your administrator if you think this is wrong.",
        ),
    };
    page(
        StatusCode::GONE,
        title,
        "",
        &format!(
            "{}<h1>{title}</h1>\n<p role=\"alert\">{text}</p>\n<p><a href=\"/signin\">Go to sign-in</a></p>\n{}",
            sign_out_bar(session_csrf),
            to_me(session_csrf.is_some())
        ),
    )
}

/// 403: the user may not enrol (not active, or SSO off). `session_csrf`: the visitor's
/// session's token, when they are signed in (as someone who may sign in).
pub fn cannot_enrol(
    display_name: &str,
    why: SignInFailure,
    session_csrf: Option<&str>,
) -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Enrolment not available",
        "",
        &format!(
            "{}<h1>{}</h1>\n<p role=\"alert\">Enrolment is not available for your account: {}</p>\n{}",
            sign_out_bar(session_csrf),
            esc(display_name),
            esc(why.message()),
            to_me(session_csrf.is_some())
        ),
    )
}

/// What the enrolment page shows.
pub struct EnrolView<'a> {
    pub token: &'a str,
    pub csrf: &'a str,
    pub display_name: &'a str,
    pub upn: &'a str,
    pub domain: &'a str,
    pub method: SsoMethod,
    pub entra_done: bool,
    /// The visitor's session's CSRF token, when they are signed in.
    pub session_csrf: Option<&'a str>,
}

fn passkey_name_field() -> &'static str {
    r#"<p><label for="passkey-name">Name this passkey</label>
<input id="passkey-name" name="name" maxlength="64" placeholder="e.g. Work laptop, Hideez Key"></p>"#
}

fn totp_setup(base: &str, disabled: &str) -> String {
    format!(
        r#"<section aria-labelledby="totp-h">
<h2 id="totp-h">Authenticator app</h2>
<button type="button" data-totp-setup="{base}/totp/options"{disabled}>Set up an authenticator code</button>
<div id="totp-setup" hidden>
<p>Scan this code with your authenticator app, or type the secret into it.</p>
<img id="totp-qr" alt="QR code of the authenticator secret">
<p>Secret: <code id="totp-secret"></code></p>
<form data-totp-confirm="{base}/totp">
<label for="totp-code">Confirmation code</label>
<input id="totp-code" name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{{6}}" maxlength="6" required>
<button type="submit">Confirm code</button>
</form>
</div>
</section>"#
    )
}

/// The enrolment page: who the user is, and only the methods their settings allow.
pub fn enrol(v: &EnrolView<'_>) -> Response {
    let base = format!("/enrol/{}", esc(v.token));
    let who = format!(
        "<h1>{}</h1>\n<p class=\"who\">{} · {}</p>",
        esc(v.display_name),
        esc(v.upn),
        esc(v.domain)
    );
    let body = match v.method {
        SsoMethod::Passwordless => format!(
            r#"<p>Your account signs in without a password. Register a passkey: this device's own (fingerprint, face, PIN) or a security key such as the Hideez Key.</p>
<section aria-labelledby="passkey-h">
<h2 id="passkey-h">Passkey</h2>
{field}
<button type="button" data-webauthn="register" data-options="{base}/passkey/options" data-finish="{base}/passkey">Register a passkey</button>
</section>"#,
            field = passkey_name_field()
        ),
        SsoMethod::PasswordAndSecondFactor => {
            let (step1, disabled) = if v.entra_done {
                (
                    "<p class=\"done\" role=\"status\">Step 1 done: Entra ID confirmed your account.</p>".to_owned(),
                    "",
                )
            } else {
                (
                    format!(
                        r#"<button type="button" data-redirect="{base}/entra">Sign in with Entra ID</button>"#
                    ),
                    " disabled",
                )
            };
            format!(
                r#"<p>Your account signs in with your Entra ID password and a second factor.</p>
<section aria-labelledby="step1-h">
<h2 id="step1-h">Step 1: your Entra ID sign-in</h2>
{step1}
</section>
<section aria-labelledby="step2-h">
<h2 id="step2-h">Step 2: a second factor</h2>
<p>Choose one: a passkey or security key, or an authenticator app.</p>
{field}
<button type="button" data-webauthn="register" data-options="{base}/passkey/options" data-finish="{base}/passkey"{disabled}>Register a passkey</button>
{totp}
</section>"#,
                field = passkey_name_field(),
                totp = totp_setup(&base, disabled),
            )
        }
    };
    page(
        StatusCode::OK,
        &format!("Enrol {}", v.display_name),
        v.csrf,
        &format!("{}{who}\n{body}", sign_out_bar(v.session_csrf)),
    )
}

/// `/signin`: a discoverable passkey, or Entra ID for password-and-second-factor users.
/// Shown to a signed-in user when a fresh sign-in is asked for (`session_csrf`).
pub fn signin(csrf: &str, session_csrf: Option<&str>) -> Response {
    page(
        StatusCode::OK,
        "Sign in",
        csrf,
        &(sign_out_bar(session_csrf)
            + r#"<h1>Sign in</h1>
<section aria-labelledby="pk-h">
<h2 id="pk-h">Passwordless</h2>
<button type="button" data-webauthn="signin" data-options="/signin/passkey/options" data-finish="/signin/passkey">Sign in with a passkey</button>
</section>
<section aria-labelledby="entra-h">
<h2 id="entra-h">Password and a second factor</h2>
<form data-entra-start="/signin/entra">
<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" placeholder="name@contoso.com" required>
<button type="submit">Sign in with Entra ID</button>
</form>
</section>"#),
    )
}

/// The second step after Entra ID: a typed code or a passkey. `app_origin` is the origin
/// of the app waiting for this sign-in, where the code form's answer leads;
/// `session_csrf`, the token of a session already open in this browser (signing in again).
pub fn second_factor(
    csrf: &str,
    display_name: &str,
    passkeys: bool,
    totp: bool,
    error: Option<&str>,
    app_origin: Option<&str>,
    session_csrf: Option<&str>,
) -> Response {
    let mut main = format!(
        "{}<h1>{}</h1>\n<p>Entra ID confirmed your password. Now your second factor.</p>\n",
        sign_out_bar(session_csrf),
        esc(display_name)
    );
    if let Some(e) = error {
        main.push_str(&format!("<p role=\"alert\">{}</p>\n", esc(e)));
    }
    if totp {
        main.push_str(&format!(
            r#"<form method="post" action="/signin/totp">
<input type="hidden" name="csrf" value="{}">
<label for="code">Authenticator code</label>
<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" maxlength="6" required>
<button type="submit">Verify code</button>
</form>
"#,
            esc(csrf)
        ));
    }
    if passkeys {
        main.push_str(r#"<button type="button" data-webauthn="second" data-options="/signin/second-passkey/options" data-finish="/signin/second-passkey">Use a passkey</button>
"#);
    }
    if !passkeys && !totp {
        main.push_str(
            "<p role=\"alert\">You have no second factor yet. Open your invite to enrol.</p>",
        );
    }
    let mut response = page(StatusCode::OK, "Second factor", csrf, &main);
    leads_to(&mut response, app_origin);
    response
}

/// What `/me` shows.
pub struct MeView<'a> {
    /// The session's CSRF token: of the page's forms and of its scripted requests.
    pub session_csrf: &'a str,
    /// The sign-in is recent enough to add or remove methods; else the page offers to
    /// sign in again instead.
    pub may_change_methods: bool,
    pub display_name: &'a str,
    pub upn: &'a str,
    pub domain: &'a str,
    pub method: SsoMethod,
    pub view: &'a SignInView,
    /// A result to show: success or not, and the text.
    pub notice: Option<(bool, &'a str)>,
}

fn method_name(m: SsoMethod) -> &'static str {
    match m {
        SsoMethod::Passwordless => "Passwordless",
        SsoMethod::PasswordAndSecondFactor => "Password and second factor",
    }
}

/// The user's own page: methods, recent sign-ins, sign-out.
pub fn me(v: &MeView<'_>) -> Response {
    let csrf = esc(v.session_csrf);
    let notice = match v.notice {
        Some((true, text)) => format!("<p role=\"status\">{}</p>", esc(text)),
        Some((false, text)) => format!("<p role=\"alert\">{}</p>", esc(text)),
        None => String::new(),
    };
    let passkeys: String = v
        .view
        .passkeys
        .iter()
        .map(|p| {
            let id = esc(&p.credential_id);
            let kind = match p.attachment {
                Some(Attachment::CrossPlatform) => "Security key",
                _ => "Passkey",
            };
            format!(
                r#"<tr><td>{name}</td><td>{kind}</td><td>{added}</td><td>{used}</td>
<td><form method="post" action="/me/passkeys/{id}/rename" class="inline"><input type="hidden" name="csrf" value="{csrf}"><label>New name <input name="name" maxlength="64" required></label><button type="submit">Rename</button></form>
{remove}</td></tr>"#,
                remove = if v.may_change_methods {
                    format!(r#"<form method="post" action="/me/passkeys/{id}/remove" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Remove {}</button></form>"#, esc(&p.name))
                } else {
                    String::new()
                },
                name = esc(&p.name),
                added = p.registered_at.format("%Y-%m-%d %H:%M"),
                used = p
                    .last_used_at
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_else(|| "never".into()),
            )
        })
        .collect();
    let change = v.may_change_methods;
    let totp = match (v.method, &v.view.totp_enrolled_at) {
        (_, Some(at)) => format!(
            "<p>Authenticator app set up {}.</p>\n{}",
            at.format("%Y-%m-%d %H:%M"),
            if change {
                format!(
                    r#"<form method="post" action="/me/totp/remove"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Remove the authenticator app</button></form>"#
                )
            } else {
                String::new()
            }
        ),
        (SsoMethod::PasswordAndSecondFactor, None) if change => totp_setup("/me", ""),
        (_, None) => String::new(),
    };
    // Adding and removing methods wants a recent sign-in: after a while the page offers
    // to sign in again instead of the controls.
    let add_or_again = if change {
        format!(
            r#"{field}
<button type="button" data-webauthn="register" data-options="/me/passkeys/options" data-finish="/me/passkeys">Add a passkey</button>"#,
            field = passkey_name_field()
        )
    } else {
        format!(
            r#"<p id="sign-in-again-why">To add or remove a way to sign in, sign in again first.</p>
<form method="post" action="/me/sign-in-again" aria-describedby="sign-in-again-why"><input type="hidden" name="csrf" value="{csrf}"><button type="submit">Sign in again</button></form>"#
        )
    };
    let recent: String = v
        .view
        .recent
        .iter()
        .map(|r| {
            let method = match (&r.method, r.factor) {
                (Some(m), _) => format!("{} ({})", method_name(*m), r.amr.join(", ")),
                (None, Some(f)) => f.as_str().to_owned(),
                (None, None) => String::new(),
            };
            let result = match r.failure {
                None => "Success".to_owned(),
                Some(code) => format!("Failed: {}", code.replace('_', " ")),
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                r.at.format("%Y-%m-%d %H:%M:%S UTC"),
                esc(&method),
                esc(r.app.as_deref().unwrap_or("idledger")),
                esc(&result)
            )
        })
        .collect();
    let main = format!(
        r#"{bar}
<h1>{name}</h1>
<p class="who">{upn} · {domain} · {method}</p>
{notice}
<section aria-labelledby="methods-h">
<h2 id="methods-h">Your passkeys</h2>
<table><thead><tr><th>Name</th><th>Kind</th><th>Added</th><th>Last used</th><th></th></tr></thead>
<tbody>{passkeys}</tbody></table>
{add_or_again}
{totp}
</section>
<section aria-labelledby="recent-h">
<h2 id="recent-h">Recent sign-ins</h2>
<table><thead><tr><th>Time</th><th>Method</th><th>App</th><th>Result</th></tr></thead>
<tbody>{recent}</tbody></table>
</section>"#,
        bar = sign_out_bar(Some(v.session_csrf)),
        name = esc(v.display_name),
        upn = esc(v.upn),
        domain = esc(v.domain),
        method = method_name(v.method),
    );
    page(StatusCode::OK, v.display_name, v.session_csrf, &main)
}
