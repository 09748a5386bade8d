//! The pages' frames. Every value that comes from a request or the log goes through
//! [`esc`]; the tables are filled by `console.js` with `textContent`, never as HTML.

use super::{signed_in, Segment, Viewer};
pub(crate) use crate::http::esc;
use crate::http::AppState;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{Html, IntoResponse, Response};

const NAV: [(&str, &str, &str); 5] = [
    ("domains", "/console/domains", "Domains"),
    ("users", "/console/users", "Users"),
    ("rotations", "/console/rotations", "Rotations"),
    ("apps", "/console/apps", "Apps"),
    ("audit", "/console/audit", "Audit"),
];

/// The frame of every signed-in page: `page` names the script's part, `id` the object the
/// page is about (a domain's or user's id, checked to be a UUID by the route's caller).
fn layout(
    viewer: &Viewer,
    title: &str,
    section: &str,
    page: &str,
    id: &str,
    main: &str,
) -> Response {
    let nav: String = NAV
        .iter()
        .map(|(key, href, label)| {
            let current = if *key == section {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<a href=\"{href}\"{current}>{label}</a>")
        })
        .collect();
    let role = viewer.role.as_str();
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{csrf}">
<title>{title} · idledger</title>
<link rel="stylesheet" href="/console/assets/console.css">
<script src="/console/assets/console.js" defer></script>
</head>
<body data-page="{page}" data-role="{role}" data-id="{id}">
<header class="top">
  <span class="brand">idledger</span>
  <nav aria-label="Sections">{nav}</nav>
  <span class="who">Signed in as <strong>{role}</strong></span>
  <form method="post" action="/console/sign-out" class="sign-out">
    <input type="hidden" name="csrf" value="{csrf}">
    <button type="submit">Sign out</button>
  </form>
</header>
<main>
<h1>{title}</h1>
<div id="flash" role="status" aria-live="polite"></div>
{main}
</main>
</body>
</html>"#,
        csrf = esc(&viewer.csrf),
        title = esc(title),
        page = esc(page),
        id = esc(id),
    ))
    .into_response()
}

/// A page of the signed-out console: `main` under the product's name.
fn signed_out(main: &str) -> Html<String> {
    Html(format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign in · idledger</title>
<link rel="stylesheet" href="/console/assets/console.css">
</head>
<body class="sign-in">
<main>
<h1>idledger</h1>
{main}
</main>
</body>
</html>"#
    ))
}

/// A form that came without this session's CSRF token (another site's, or a page older
/// than the session): nothing was done, and the admin is told what to do.
pub(super) fn stale_form() -> Html<String> {
    signed_out(
        r#"<p class="error" role="alert">This form did not come from your current console page, so nothing was done.</p>
<p><a href="/">Back to the console</a>: reload the page and try again.</p>"#,
    )
}

/// The sign-in page; `pre` ties the form to this browser.
pub(super) fn sign_in(pre: &str, error: Option<&str>) -> Html<String> {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    signed_out(&format!(
        r#"<p>Sign in with an admin or auditor API token. It is sent once; the console keeps a
session cookie, never the token.</p>
{error}
<form method="post" action="/console/sign-in">
  <input type="hidden" name="pre" value="{pre}">
  <label for="token">API token</label>
  <input id="token" name="token" type="password" autocomplete="off" required>
  <button type="submit">Sign in</button>
</form>"#,
        pre = esc(pre),
    ))
}

/// The page of a one-time sign-in link: opening it signs nothing in (a link is a GET any
/// site can make a browser send); the button does, from this page only.
pub(super) fn sign_in_link(ticket: &str, pre: &str) -> Html<String> {
    signed_out(&format!(
        r#"<p>This one-time link signs this browser in to the console. Use it only if you asked for
it (the demo prints one).</p>
<form method="post" action="/console/sign-in/{ticket}">
  <input type="hidden" name="pre" value="{pre}">
  <button type="submit" id="open-console">Open the console</button>
</form>"#,
        ticket = esc(ticket),
        pre = esc(pre),
    ))
}

/// The route's id, when it is a UUID (anything else is not a page).
fn uuid_of(id: &str) -> Option<String> {
    uuid::Uuid::parse_str(id).ok().map(|u| u.to_string())
}

fn not_found(viewer: &Viewer) -> Response {
    let mut r = layout(
        viewer,
        "Not found",
        "",
        "none",
        "",
        "<p class=\"empty\">There is no such page. <a href=\"/console/domains\">Back to domains</a>.</p>",
    );
    *r.status_mut() = axum::http::StatusCode::NOT_FOUND;
    r
}

/// The settings an admin chooses for a domain, in the seed's labels: the same fields when
/// a domain is added and when its settings are changed. *Deactivate* is checked as the
/// API's own default is: a user who leaves the sync group must not keep signing in
/// because a form was accepted as it came.
const DOMAIN_SETTINGS: &str = r#"
  <label for="d-days">Auto Password Change (days)</label>
  <input id="d-days" name="auto_password_change_days" type="number" min="1" max="365" placeholder="off">
  <fieldset class="wide">
    <legend>Behavior when removing a user from a sync group</legend>
    <label><input type="radio" name="removal_behavior" value="keep"> Keep
      <small>The user stays in idledger as they are.</small></label>
    <label><input type="radio" name="removal_behavior" value="deactivate" checked> Deactivate
      <small>The user stays but is deactivated: SSO off, PC unlock with the key kept; only an admin reactivates.</small></label>
    <label><input type="radio" name="removal_behavior" value="delete"> Delete
      <small>The user is deleted, and their sealed secrets with them.</small></label>
  </fieldset>
  <label for="d-sync">Sync group</label>
  <input id="d-sync" name="sync_group" value="Hideez Users Sync" required>
  <label for="d-rot">Rotation group</label>
  <input id="d-rot" name="rotation_group" value="Hideez Key Auto Password Change" required>"#;

fn add_domain() -> String {
    format!(
        r#"
<section class="card" aria-labelledby="add-title">
<h2 id="add-title">Add domain settings</h2>
<form id="add-domain" method="post" class="grid">
  <label for="d-domain">Domain</label>
  <input id="d-domain" name="domain" required placeholder="contoso.onmicrosoft.com">
  <label for="d-client">Application ID</label>
  <input id="d-client" name="client_id" required>
  <label for="d-secret">Client Secret</label>
  <input id="d-secret" name="client_secret" type="password" autocomplete="off" required>
  <label for="d-tenant">Tenant ID</label>
  <input id="d-tenant" name="tenant_id" required>{DOMAIN_SETTINGS}
  <details class="wide"><summary>Endpoints (national clouds, or the simulator)</summary>
    <div class="grid">
      <label for="d-graph">Graph URL</label>
      <input id="d-graph" name="graph_url" placeholder="https://graph.microsoft.com">
      <label for="d-auth">Authority URL</label>
      <input id="d-auth" name="authority_url" placeholder="https://login.microsoftonline.com">
    </div>
  </details>
  <div class="actions wide">
    <button type="button" id="test-connection">Test connection</button>
    <button type="submit" class="primary">Save</button>
  </div>
</form>
<div id="check-report" aria-live="polite"></div>
</section>"#
    )
}

pub(super) async fn domains(State(s): State<AppState>, headers: HeaderMap) -> Response {
    signed_in(&s, &headers, |v| {
        let add = if v.admin() {
            add_domain()
        } else {
            String::new()
        };
        let main = format!(
            r#"<section class="card" aria-labelledby="list-title">
<h2 id="list-title">Settings → Parameters</h2>
<table id="domains"><thead><tr><th>Domain</th><th>Tenant</th><th>Credentials</th><th>Last sync</th><th>Next sync</th><th>Error</th></tr></thead><tbody></tbody></table>
</section>{add}"#
        );
        layout(v, "Domains", "domains", "domains", "", &main)
    })
}

fn domain_admin() -> String {
    format!(
        r#"
<section class="card" aria-labelledby="sync-title">
<h2 id="sync-title">Sync</h2>
<div class="actions">
  <button type="button" id="sync-now" class="primary">Run sync now</button>
  <button type="button" id="sync-dry">Dry run</button>
  <a id="import-link" class="button" href="">Import from Entra ID</a>
</div>
<div id="live-run" aria-live="polite"></div>
<div id="dry-report"></div>
</section>
<section class="card" aria-labelledby="sso-title">
<h2 id="sso-title">Default Single Sign-On Settings</h2>
<p id="sso-defaults-note">Given to users as they are imported from now on; a user already imported keeps theirs (change it on the user's page).</p>
<form id="sso-defaults" method="post" class="grid">
  <label for="sso-enabled">SSO</label>
  <select id="sso-enabled" name="enabled"><option value="true">On</option><option value="false">Off</option></select>
  <label for="sso-method">Login method</label>
  <select id="sso-method" name="method"><option value="passwordless">Passwordless (Hideez Key, passkey)</option><option value="password_and_second_factor">Entra ID password and a second factor</option></select>
  <div class="actions wide"><button type="submit">Save SSO defaults</button></div>
</form>
</section>
<section class="card" aria-labelledby="settings-title">
<h2 id="settings-title">Domain settings</h2>
<form id="domain-settings" method="post" class="grid">{DOMAIN_SETTINGS}
  <label for="d-interval">Sync every (minutes)</label>
  <input id="d-interval" name="sync_interval_minutes" type="number" min="1" max="1440" required>
  <div class="actions wide"><button type="submit">Save settings</button></div>
</form>
</section>
<section class="card" aria-labelledby="cred-title">
<h2 id="cred-title">Credentials</h2>
<p>The client secret is never shown again after saving.</p>
<form id="replace-secret" method="post" class="grid">
  <label for="cred-tenant" data-new-credentials hidden>Tenant ID</label>
  <input id="cred-tenant" name="tenant_id" autocomplete="off" data-new-credentials hidden disabled>
  <label for="cred-client" data-new-credentials hidden>Application ID</label>
  <input id="cred-client" name="client_id" autocomplete="off" data-new-credentials hidden disabled>
  <label for="new-secret" id="new-secret-label">Replace secret</label>
  <input id="new-secret" name="client_secret" type="password" autocomplete="off" required>
  <div class="actions wide"><button type="button" id="test-credentials">Test connection</button>
    <button type="submit" id="save-credentials">Save new secret</button></div>
</form>
<div id="check-report" aria-live="polite"></div>
<div class="actions"><button type="button" id="remove-credentials" class="danger">Remove credentials</button></div>
</section>"#
    )
}

pub(super) async fn domain(
    State(s): State<AppState>,
    headers: HeaderMap,
    Segment(id): Segment,
) -> Response {
    signed_in(&s, &headers, |v| {
        let Some(id) = uuid_of(&id) else {
            return not_found(v);
        };
        let admin = if v.admin() {
            domain_admin()
        } else {
            String::new()
        };
        let main = format!(
            r#"<section class="card"><dl id="domain-facts" class="facts"></dl></section>{admin}
<section class="card" aria-labelledby="runs-title">
<h2 id="runs-title">Runs</h2>
<div id="quarantine"></div>
<table id="runs"><thead><tr><th>Started</th><th>Kind</th><th>Status</th><th>Added</th><th>Changed</th><th>Left</th><th>Imported</th><th>Error</th></tr></thead><tbody></tbody></table>
<div id="run-detail" aria-live="polite"></div>
</section>
<section class="card" aria-labelledby="cert-title">
<h2 id="cert-title">Workstation Passwordless Logon certificate</h2>
<p>Workstation agents trust this certificate. Download it for the Workstation Passwordless Logon Settings.</p>
<p class="actions"><a id="cert-pem" href="/v1/domains/{id}/workstation-certificate?format=pem" download>Download PEM</a>
<a id="cert-der" href="/v1/domains/{id}/workstation-certificate?format=der" download>Download DER</a>{replace}</p>
<table id="certificates"><thead><tr><th>Fingerprint (SHA-256)</th><th>Status</th><th>Valid from</th><th>Valid until</th><th>Retired</th></tr></thead><tbody></tbody></table>
</section>"#,
            replace = if v.admin() {
                r#" <button type="button" id="replace-certificate">Replace certificate</button>"#
            } else {
                ""
            }
        );
        layout(v, "Domain", "domains", "domain", &id, &main)
    })
}

pub(super) async fn import(
    State(s): State<AppState>,
    headers: HeaderMap,
    Segment(id): Segment,
) -> Response {
    signed_in(&s, &headers, |v| {
        let Some(id) = uuid_of(&id) else {
            return not_found(v);
        };
        let actions = if v.admin() {
            r#"<div class="actions"><button type="button" id="import-selected" class="primary">Import selected</button>
<button type="button" id="import-all">Import all</button>
<span id="selected-count" role="status"></span>
<button type="button" id="clear-selection" hidden>Clear selection</button></div>"#
        } else {
            ""
        };
        let main = format!(
            r#"<section class="card">
<p id="sso-note"></p>
<form id="candidate-search" method="post" class="search" role="search">
  <label for="cq">Search candidates</label>
  <input id="cq" name="q" type="search" placeholder="name or principal name">
  <button type="submit">Search</button>
</form>
{actions}
<table id="candidates"><thead><tr><th><span class="sr">Select</span></th><th>Name</th><th>Principal name</th><th>Mail</th></tr></thead><tbody></tbody></table>
<div class="pager"><button type="button" id="candidates-first" aria-label="First page of candidates" hidden>First page</button>
<button type="button" id="candidates-more" aria-label="Next page of candidates" hidden>Next page</button></div>
</section>"#
        );
        layout(v, "Import from Entra ID", "users", "import", &id, &main)
    })
}

pub(super) async fn users(State(s): State<AppState>, headers: HeaderMap) -> Response {
    signed_in(&s, &headers, |v| {
        let main = r#"<section class="card">
<form id="user-search" method="post" class="search" role="search">
  <label for="uq">Search</label>
  <input id="uq" name="q" type="search" placeholder="name or principal name">
  <label for="udomain">Domain</label>
  <select id="udomain" name="domain"><option value="">All domains</option></select>
  <label for="ustatus">Status</label>
  <select id="ustatus" name="status"><option value="">Any status</option><option>candidate</option><option>active</option><option>deactivated</option><option>deleted</option></select>
  <label for="uat">As of</label>
  <input id="uat" name="at" type="datetime-local" step="1">
  <button type="submit">Filter</button>
</form>
<p id="import-links" class="note"></p>
<table id="users"><thead><tr><th>Name</th><th>Principal name</th><th>Status</th><th>Key</th><th>SSO</th><th>Rotation due</th></tr></thead><tbody></tbody></table>
<div class="pager"><button type="button" id="users-first" aria-label="First page of users" hidden>First page</button>
<button type="button" id="users-more" aria-label="Next page of users" hidden>Next page</button></div>
</section>"#;
        layout(v, "Users", "users", "users", "", main)
    })
}

const USER_ADMIN: &str = r#"
<section class="card" aria-labelledby="act-title">
<h2 id="act-title">Actions</h2>
<div class="actions">
  <button type="button" id="activate">Activate</button>
  <button type="button" id="deactivate">Deactivate</button>
  <button type="button" id="rotate" class="primary">Rotate now</button>
  <button type="button" id="invite">Send invite</button>
  <button type="button" id="unlock-sign-in">Lift sign-in locks</button>
</div>
<form id="assign-key" method="post" class="grid">
  <label for="key-id">Hardware key</label>
  <input id="key-id" name="key_id" required placeholder="key id">
  <div class="actions wide"><button type="submit">Assign key</button>
  <button type="button" id="unassign-key">Take key away</button>
  <button type="button" id="rewrite-key">Write the key again</button></div>
</form>
<form id="sso-override" method="post" class="grid">
  <label for="ov">SSO override</label>
  <select id="ov" name="override"><option value="">Domain default</option><option value="on-passwordless">On, passwordless</option><option value="on-password_and_second_factor">On, password and second factor</option><option value="off">Off</option></select>
  <div class="actions wide"><button type="submit">Save override</button></div>
</form>
<form id="reveal" method="post" class="grid">
  <label for="reason">Reason for revealing the password</label>
  <input id="reason" name="reason" required minlength="3" placeholder="who asked, and why">
  <div class="actions wide"><button type="submit" class="danger">Reveal password</button></div>
</form>
<div id="revealed"></div>
</section>"#;

pub(super) async fn user(
    State(s): State<AppState>,
    headers: HeaderMap,
    Segment(id): Segment,
) -> Response {
    signed_in(&s, &headers, |v| {
        let Some(id) = uuid_of(&id) else {
            return not_found(v);
        };
        let admin = if v.admin() { USER_ADMIN } else { "" };
        let main = format!(
            r#"<section class="card">
<form id="as-of" method="post" class="search">
  <label for="at">As of</label>
  <input id="at" name="at" type="datetime-local" step="1">
  <button type="submit">Show</button>
  <button type="button" id="now">Now</button>
</form>
<dl id="user-facts" class="facts"></dl>
</section>{admin}
<section class="card" aria-labelledby="hist-title">
<h2 id="hist-title">Password history</h2>
<table id="history"><thead><tr><th>Started</th><th>Outcome</th><th>Finished</th><th>Retries</th><th>Reason</th></tr></thead><tbody></tbody></table>
</section>
<section class="card" aria-labelledby="tl-title">
<h2 id="tl-title">Timeline</h2>
<table id="timeline"><thead><tr><th>When</th><th>What</th><th>By</th><th>Why</th></tr></thead><tbody></tbody></table>
</section>"#
        );
        layout(v, "User", "users", "user", &id, &main)
    })
}

pub(super) async fn rotations(State(s): State<AppState>, headers: HeaderMap) -> Response {
    signed_in(&s, &headers, |v| {
        let main = r#"<section class="card">
<form id="upcoming-form" method="post" class="search">
  <label for="within">Next days</label>
  <input id="within" name="within_days" type="number" min="1" max="3650" value="30">
  <button type="submit">Show</button>
</form>
<table id="upcoming"><thead><tr><th>User</th><th>Due</th><th>Why</th></tr></thead><tbody></tbody></table>
</section>
<section class="card" aria-labelledby="recent-title">
<h2 id="recent-title">Recent outcomes</h2>
<form id="recent-form" method="post" class="search">
  <label for="recent-outcome">Outcome</label>
  <select id="recent-outcome" name="outcome"><option value="">All</option><option value="failed">Refused by Graph</option><option value="unknown">Unknown, tried again</option><option value="pending">In flight</option><option value="succeeded">Succeeded</option></select>
  <button type="submit">Show</button>
</form>
<table id="recent"><thead><tr><th>User</th><th>Started</th><th>Outcome</th><th>Graph's answer</th><th>Finished</th></tr></thead><tbody></tbody></table>
</section>"#;
        layout(v, "Rotations", "rotations", "rotations", "", main)
    })
}

pub(super) async fn audit(State(s): State<AppState>, headers: HeaderMap) -> Response {
    signed_in(&s, &headers, |v| {
        let main = r#"<section class="card" aria-labelledby="head-title">
<h2 id="head-title">The log</h2>
<dl id="log-facts" class="facts"></dl>
<div class="actions"><button type="button" id="verify-chain">Verify chain</button></div>
<div id="verify-result" aria-live="polite"></div>
</section>
<section class="card" aria-labelledby="exp-title">
<h2 id="exp-title">Exports</h2>
<form id="export-form" method="post" class="grid">
  <label for="kind">Kind</label>
  <select id="kind" name="kind"><option value="password-changes">Password changes</option><option value="events">Events</option><option value="users">Users</option><option value="sign-ins">Sign-ins</option></select>
  <label for="format">Format</label>
  <select id="format" name="format"><option value="csv">CSV</option><option value="jsonl">JSON Lines</option></select>
  <label for="from">From</label>
  <input id="from" name="from" type="datetime-local" step="1">
  <label for="to">To</label>
  <input id="to" name="to" type="datetime-local" step="1">
  <div class="actions wide"><button type="submit">Download export</button>
  <button type="button" id="download-manifest">Download manifest</button></div>
  <p id="export-pin" class="wide" hidden></p>
</form>
</section>
<section class="card" aria-labelledby="ver-title">
<h2 id="ver-title">Verify an export</h2>
<p>Drop an export and its manifest here, or choose them: the server runs the manifest's query
again on the log and compares every row.</p>
<form id="verify-export" method="post" class="grid drop">
  <label for="export-file">Export file</label>
  <input id="export-file" name="file" type="file" accept=".csv,.jsonl">
  <label for="manifest-file">Manifest</label>
  <input id="manifest-file" name="manifest" type="file" accept=".json">
  <div class="actions wide"><button type="submit">Verify export</button></div>
</form>
<div id="export-result" aria-live="polite"></div>
</section>
<section class="card" aria-labelledby="feed-title">
<h2 id="feed-title">Live event feed</h2>
<table id="feed"><thead><tr><th>Position</th><th>When</th><th>Stream</th><th>Kind</th></tr></thead><tbody></tbody></table>
</section>"#;
        layout(v, "Audit", "audit", "audit", "", main)
    })
}

/// The admin's forms on the Apps page: change an app (shown by a row's Edit), register one.
const ADD_APP: &str = r#"
<section class="card" id="edit-app-card" aria-labelledby="edit-app-title" hidden>
<h2 id="edit-app-title">Edit app</h2>
<form id="edit-app" method="post" class="grid">
  <label for="e-name">Name</label>
  <input id="e-name" name="name" required maxlength="200">
  <label for="e-redirects">Redirect URIs</label>
  <textarea id="e-redirects" name="redirect_uris" required rows="2"></textarea>
  <label for="e-logout">Sign-out redirect URIs</label>
  <textarea id="e-logout" name="post_logout_redirect_uris" rows="2"></textarea>
  <label for="e-alg">ID token signature</label>
  <select id="e-alg" name="id_token_signed_response_alg"><option value="ES256">ES256</option><option value="RS256">RS256 (for libraries that verify RSA only)</option></select>
  <fieldset class="wide" id="e-domains">
    <legend>Users of these domains may sign in</legend>
  </fieldset>
  <div class="actions wide"><button type="submit" class="primary">Save changes</button>
  <button type="button" id="cancel-edit-app">Cancel</button></div>
</form>
</section>
<section class="card" aria-labelledby="add-app-title">
<h2 id="add-app-title">Register an app</h2>
<p>Users of the chosen domains sign in to the app through idledger (OpenID Connect); no
consent screen: an app registered here is approved by you.</p>
<form id="add-app" method="post" class="grid">
  <label for="a-name">Name</label>
  <input id="a-name" name="name" required maxlength="200" placeholder="Payroll">
  <label for="a-redirects">Redirect URIs</label>
  <textarea id="a-redirects" name="redirect_uris" required rows="2" placeholder="https://payroll.contoso.com/oidc/callback (one per line)"></textarea>
  <label for="a-logout">Sign-out redirect URIs</label>
  <textarea id="a-logout" name="post_logout_redirect_uris" rows="2" placeholder="optional, one per line"></textarea>
  <fieldset class="wide">
    <legend>Type</legend>
    <label><input type="radio" name="type" value="confidential" checked> Confidential
      <small>A server-side app: it gets a client secret, shown once.</small></label>
    <label><input type="radio" name="type" value="public"> Public
      <small>A single-page or native app: no secret, PKCE required.</small></label>
  </fieldset>
  <label for="a-alg">ID token signature</label>
  <select id="a-alg" name="id_token_signed_response_alg"><option value="ES256">ES256 (recommended)</option><option value="RS256">RS256 (for libraries that verify RSA only)</option></select>
  <fieldset class="wide" id="a-domains">
    <legend>Users of these domains may sign in</legend>
  </fieldset>
  <div class="actions wide"><button type="submit" class="primary">Register app</button></div>
</form>
<div id="app-secret" aria-live="polite"></div>
</section>"#;

pub(super) async fn apps(State(s): State<AppState>, headers: HeaderMap) -> Response {
    signed_in(&s, &headers, |v| {
        let (add, rotate) = if v.admin() {
            (
                ADD_APP,
                r#"<form id="rotate-key" method="post" class="search">
  <label for="k-alg">Algorithm</label>
  <select id="k-alg" name="alg"><option>ES256</option><option>RS256</option></select>
  <button type="submit">Rotate signing key</button>
</form>"#,
            )
        } else {
            ("", "")
        };
        let main = format!(
            r#"<section class="card" aria-labelledby="apps-title">
<h2 id="apps-title">Web apps (OpenID Connect)</h2>
<p>Issuer and discovery: <a id="discovery" href="/.well-known/openid-configuration">/.well-known/openid-configuration</a></p>
<table id="apps"><thead><tr><th>Name</th><th>Client ID</th><th>Type</th><th>Redirect URIs</th><th>Domains</th><th>Status</th><th><span class="sr">Actions</span></th></tr></thead><tbody></tbody></table>
</section>{add}
<section class="card" aria-labelledby="keys-title">
<h2 id="keys-title">Signing keys</h2>
<p>A retired key stays published until every token it signed has expired.</p>
{rotate}
<table id="signing-keys"><thead><tr><th>Key ID</th><th>Algorithm</th><th>Status</th><th>Added</th><th>Signs from</th><th>Published until</th></tr></thead><tbody></tbody></table>
</section>"#
        );
        layout(v, "Apps", "apps", "apps", "", &main)
    })
}

#[cfg(test)]
mod tests {
    /// A form sent before the page's script took it over (Enter pressed while the page
    /// loads, or a script that failed) goes as the browser's own request: with `GET`, its
    /// fields (a client secret among them) would land in the address bar, the history and
    /// every proxy's log. Every form of the console posts, so a stray one is refused and
    /// leaves nothing anywhere.
    #[test]
    fn every_form_posts_so_nothing_typed_lands_in_a_url() {
        let source = include_str!("pages.rs");
        let forms: Vec<&str> = source
            .lines()
            .filter(|l| l.contains("<form") && !l.contains("l.contains"))
            .collect();
        assert!(forms.len() >= 17, "{forms:?}");
        for form in forms {
            assert!(form.contains(r#"method="post""#), "{form}");
        }
    }
}
