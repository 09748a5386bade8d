//! Sign-in for users against the real server and graphsim on loopback: enrolment links
//! (404, 410 used/expired/replaced, changing nothing), Entra ID credentials through
//! graphsim's sign-in form plus an authenticator code, the rules (code reuse, lockout,
//! deactivation, SSO off, method), and in a real headless Chromium with a virtual
//! authenticator: a passkey enrolled from an invite and used to sign in.

use crate::support::authenticator::SoftKey;
use crate::support::{world, Browser, World, APP};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use idledger_domain::events::{EnrolmentCompleted, InviteSent};
use idledger_domain::{EnrolmentLink, LinkId, UserId};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// A browser-like HTTP client: follows nothing, keeps cookies by hand.
pub(crate) struct Visitor {
    http: reqwest::Client,
    cookies: std::collections::BTreeMap<String, String>,
    /// Every `Set-Cookie` received, as sent (with its attributes).
    set_cookies: Vec<String>,
}

impl Visitor {
    pub(crate) fn new() -> Visitor {
        Visitor {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookies: Default::default(),
            set_cookies: Vec::new(),
        }
    }

    /// Whether the server gave this browser any cookie.
    pub(crate) fn holds_cookies(&self) -> bool {
        !self.cookies.is_empty()
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> (StatusCode, String, Option<String>) {
        let resp = req
            .header(COOKIE, self.cookie_header())
            .send()
            .await
            .unwrap();
        for c in resp.headers().get_all(SET_COOKIE) {
            let text = c.to_str().unwrap();
            self.set_cookies.push(text.to_owned());
            let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
            let (k, v) = pair.split_once('=').unwrap();
            if attrs.contains("Max-Age=0") {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), v.to_owned());
            }
        }
        let status = resp.status();
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        (status, resp.text().await.unwrap(), location)
    }

    pub(crate) async fn get(&mut self, url: &str) -> (StatusCode, String, Option<String>) {
        let req = self.http.get(url);
        self.send(req).await
    }

    pub(crate) async fn post_json(
        &mut self,
        url: &str,
        csrf: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let req = self.http.post(url).header("x-csrf-token", csrf).json(&body);
        let (s, text, _) = self.send(req).await;
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub(crate) async fn post_form(
        &mut self,
        url: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, String, Option<String>) {
        let req = self.http.post(url).form(form);
        self.send(req).await
    }
}

/// The `content` of `<meta name="csrf-token">`, or a hidden `csrf` field's value.
pub(crate) fn csrf_of(html: &str) -> String {
    value_after(html, "name=\"csrf-token\" content=\"")
        .or_else(|| value_after(html, FORM_CSRF))
        .unwrap_or_else(|| panic!("no CSRF token in {html}"))
}

const FORM_CSRF: &str = "name=\"csrf\" value=\"";

/// A form's hidden `csrf` field on `/me`: the session's token (the page's meta tag holds
/// its flow's).
pub(crate) fn session_csrf_of(html: &str) -> String {
    value_after(html, FORM_CSRF).unwrap_or_else(|| panic!("no form CSRF token in {html}"))
}

/// The quoted text after `marker`.
fn value_after(html: &str, marker: &str) -> Option<String> {
    let rest = &html[html.find(marker)? + marker.len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// The newest enrolment link in the outbox for `upn`.
pub(crate) fn outbox_link(w: &World, upn: &str) -> String {
    let dir = w.app.dir.path().join("outbox");
    let tag = upn.replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '@',
        "_",
    );
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains(&tag))
        .collect();
    files.sort();
    let mail = std::fs::read_to_string(files.last().expect("an invite in the outbox")).unwrap();
    // Undo quoted-printable soft line breaks, should the mailer have used them.
    let mail = mail.replace("=\r\n", "").replace("=\n", "");
    let start = mail
        .find("/enrol/")
        .expect("an enrolment link in the invite");
    let begin = mail[..start].rfind("http").unwrap();
    let end = mail[start..]
        .find(|c: char| c.is_whitespace())
        .map_or(mail.len(), |e| start + e);
    mail[begin..end].to_owned()
}

/// A synced world with users 1 (passwordless) and 2 (password and second factor) imported,
/// SSO on for both, and the server's Entra callback registered on the app in graphsim.
pub(crate) async fn signin_world() -> (World, String, String) {
    signin_world_in(world(json!({})).await).await
}

/// [`signin_world`] on a server whose configuration `tune` changed.
pub(crate) async fn signin_world_tuned(
    tune: impl FnOnce(&mut idledger::server::Config),
) -> (World, String, String) {
    let app = crate::support::spawn_app_tuned(idledger::sync::SyncConfig::default(), tune).await;
    signin_world_in(
        crate::support::world_in(app, crate::support::sim().await, None, json!({})).await,
    )
    .await
}

pub(crate) async fn signin_world_in(w: World) -> (World, String, String) {
    w.sync().await;
    w.import_all().await;
    w.sim(
        Method::PATCH,
        &format!("/_sim/apps/{APP}"),
        Some(json!({"redirectUris": [format!("{}/signin/entra/callback", w.app.public)]})),
    )
    .await;
    let mut ids = Vec::new();
    for (n, method) in [(1, "passwordless"), (2, "password_and_second_factor")] {
        let id = w.user(n).await.unwrap()["id"].as_str().unwrap().to_owned();
        let (s, b) = w
            .admin(
                Method::PATCH,
                &format!("/v1/users/{id}"),
                Some(json!({"sso_override": {"enabled": true, "method": method}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        ids.push(id);
    }
    let alex = ids.pop().unwrap();
    let adele = ids.pop().unwrap();
    (w, adele, alex)
}

pub(crate) async fn invite(w: &World, user: &str) -> Value {
    let (s, b) = w
        .admin(Method::POST, &format!("/v1/users/{user}/invite"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

fn totp_code(secret_base32: &str, at: i64) -> String {
    let seed = base32_decode(secret_base32);
    format!(
        "{:06}",
        idledger_domain::totp::code(&seed, idledger_domain::totp::step_at(at))
    )
}

fn base32_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut buffer, mut bits, mut out) = (0u32, 0u32, Vec::new());
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

/// Signs in to graphsim's Entra form at `authorize` as `upn`; answers the callback URL.
async fn entra_form(v: &mut Visitor, authorize: &str, upn: &str, password: &str) -> String {
    let (s, page, _) = v.get(authorize).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let mut form: Vec<(String, String)> = Vec::new();
    let mut rest = page.as_str();
    while let Some(i) = rest.find("<input type=\"hidden\" name=\"") {
        rest = &rest[i + 27..];
        let name = &rest[..rest.find('"').unwrap()];
        let vi = rest.find("value=\"").unwrap() + 7;
        let value = &rest[vi..vi + rest[vi..].find('"').unwrap()];
        form.push((name.to_owned(), value.replace("&amp;", "&")));
    }
    form.push(("username".into(), upn.into()));
    form.push(("password".into(), password.into()));
    let pairs: Vec<(&str, &str)> = form.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let (s, body, location) = v.post_form(authorize, &pairs).await;
    assert_eq!(s, StatusCode::FOUND, "graphsim refused the sign-in: {body}");
    location.unwrap()
}

const ALEX: &str = "alex.wilber@contoso.onmicrosoft.com";
const ALEX_PASSWORD: &str = "Start-Key-2026-02!";

/// Alex enrols: Entra ID through graphsim's form, then an authenticator app. Answers the
/// visitor (signed in) and the authenticator secret.
pub(crate) async fn enrol_alex(w: &World, alex: &str) -> (Visitor, String) {
    let (v, secret, _) = enrol_alex_with_code(w, alex).await;
    (v, secret)
}

/// [`enrol_alex`], and the TOTP code the enrolment used.
async fn enrol_alex_with_code(w: &World, alex: &str) -> (Visitor, String, String) {
    invite(w, alex).await;
    let link = outbox_link(w, ALEX);
    assert!(link.starts_with(&w.app.public), "{link}");
    let mut v = Visitor::new();
    let (s, page, _) = v.get(&link).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(page.contains("<h1>Alex Wilber</h1>"), "{page}");
    // Who the user is: name, principal name, domain.
    assert!(
        page.contains(&format!(
            "<p class=\"who\">{ALEX} · contoso.onmicrosoft.com</p>"
        )),
        "{page}"
    );
    // The controls by the names SIGNIN.md gives them.
    for name in [
        ">Sign in with Entra ID</button>",
        ">Register a passkey</button>",
        ">Set up an authenticator code</button>",
    ] {
        assert!(page.contains(name), "{name} missing: {page}");
    }
    let csrf = csrf_of(&page);
    // A body the page would never send is refused in the pages' error shape.
    let (s, b) = v
        .post_json(&format!("{link}/totp"), &csrf, json!({"kode": 1}))
        .await;
    assert!(s.is_client_error(), "{b}");
    assert!(b["error"].is_string(), "{b}");
    // The second factor waits for the Entra step.
    let (s, b) = v
        .post_json(&format!("{link}/totp"), &csrf, json!({"code": "123456"}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // An app set up first and confirmed before the Entra step is refused, and keeps its
    // seed: once Entra has answered, the same app's code confirms it.
    let (s, setup) = v
        .post_json(&format!("{link}/totp/options"), &csrf, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{setup}");
    let secret = setup["secret"].as_str().unwrap().to_owned();
    assert!(setup["qr_svg"].as_str().unwrap().starts_with("<?xml"));
    let (s, b) = v
        .post_json(
            &format!("{link}/totp"),
            &csrf,
            json!({"code": totp_code(&secret, chrono::Utc::now().timestamp())}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("Entra ID first"),
        "{b}"
    );
    let (s, b) = v
        .post_json(&format!("{link}/entra"), &csrf, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let authorize = b["redirect"].as_str().unwrap().to_owned();
    assert!(authorize.starts_with(&w.sim), "{authorize}");
    let callback = entra_form(&mut v, &authorize, ALEX, ALEX_PASSWORD).await;
    let (s, _, back) = v.get(&callback).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(back.unwrap(), link.trim_start_matches(&w.app.public));
    let (_, page, _) = v.get(&link).await;
    assert!(page.contains("Step 1 done"), "{page}");
    // The code that enrols, kept: the same code typed again later is refused as used,
    // whatever 30-second step the clock has reached by then.
    let enrolled_with = totp_code(&secret, chrono::Utc::now().timestamp());
    let (s, b) = v
        .post_json(
            &format!("{link}/totp"),
            &csrf,
            json!({"code": enrolled_with}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["next"], "/me");
    (v, secret, enrolled_with)
}

/// Entra step of a sign-in for `upn`; lands on the second-factor page.
async fn entra_sign_in(w: &World, v: &mut Visitor, upn: &str, password: &str) -> String {
    let (_, page, _) = v.get(&format!("{}/signin", w.app.public)).await;
    let csrf = csrf_of(&page);
    let (s, b) = v
        .post_json(
            &format!("{}/signin/entra", w.app.public),
            &csrf,
            json!({"username": upn}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let callback = entra_form(v, b["redirect"].as_str().unwrap(), upn, password).await;
    let (s, _, next) = v.get(&callback).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(next.as_deref(), Some("/signin/second-factor"));
    let (s, page, _) = v
        .get(&format!("{}/signin/second-factor", w.app.public))
        .await;
    assert_eq!(s, StatusCode::OK);
    page
}

async fn type_code(w: &World, v: &mut Visitor, page: &str, code: &str) -> (StatusCode, String) {
    let csrf = csrf_of(page);
    let (s, body, location) = v
        .post_form(
            &format!("{}/signin/totp", w.app.public),
            &[("csrf", &csrf), ("code", code)],
        )
        .await;
    (s, location.unwrap_or(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_credentials_and_an_authenticator_code_enrol_and_sign_in_with_every_rule() {
    let (w, _, alex) = signin_world().await;
    let (mut v, secret, enrolled_with) = enrol_alex_with_code(&w, &alex).await;
    let (s, me, _) = v.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        me.contains("<h1>Alex Wilber</h1>") && me.contains("Recent sign-ins"),
        "{me}"
    );
    assert!(
        me.contains("<th>Time</th><th>Method</th><th>App</th><th>Result</th>"),
        "{me}"
    );
    assert!(me.contains(">Sign out</button>"), "{me}");
    assert!(me.contains("fed, otp"), "{me}");
    // A form that did not come from this page changes nothing, and the page that says so
    // is still a signed-in one: "Sign out" and the way back.
    let (s, page, _) = v
        .post_form(
            &format!("{}/me/passkeys/nope/rename", w.app.public),
            &[("csrf", "stale"), ("name", "x")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        page.contains(">Sign out</button>") && page.contains("href=\"/me\""),
        "{page}"
    );
    // The link is used up: 410, and nothing to register on the page.
    let link = outbox_link(&w, ALEX);
    let (s, page, _) = v.get(&link).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(
        page.contains("was used already") && page.contains("/me"),
        "{page}"
    );
    assert!(!page.contains("data-webauthn"));
    // A signed-in page: it carries "Sign out" (SIGNIN.md), and the button works.
    assert!(page.contains(">Sign out</button>"), "{page}");
    let csrf = session_csrf_of(&page);
    let (s, _, location) = v
        .post_form(&format!("{}/signout", w.app.public), &[("csrf", &csrf)])
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/signin"));
    let (s, _, _) = v.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(
        s,
        StatusCode::SEE_OTHER,
        "still signed in after signing out"
    );
    let (_, page, _) = v.get(&link).await;
    assert!(!page.contains(">Sign out</button>"), "{page}");
    // Signed in again below, through Entra.

    // Signing in again: Entra, then codes. The enrolment's code is used; so is each one
    // accepted; a wrong one is refused.
    let mut v = Visitor::new();
    let page = entra_sign_in(&w, &mut v, ALEX, ALEX_PASSWORD).await;
    let (s, text) = type_code(&w, &mut v, &page, &enrolled_with).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(text.contains("used already"), "{text}");
    let (s, text) = type_code(&w, &mut v, &page, "000000").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        text.contains("not right") || text.contains("used already"),
        "{text}"
    );
    let next = totp_code(&secret, chrono::Utc::now().timestamp() + 30);
    let (s, to) = type_code(&w, &mut v, &page, &next).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/me"));
    let (s, _, _) = v.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::OK);

    // A passwordless user cannot take the password way.
    refused_after_entra(&w, ADELE, ADELE_PASSWORD).await;

    // SSO turned off for Alex ends the session at once.
    let (s, b) = w
        .admin(
            Method::PATCH,
            &format!("/v1/users/{alex}"),
            Some(
                json!({"sso_override": {"enabled": false, "method": "password_and_second_factor"}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, to) = v.get(&format!("{}/me", w.app.public)).await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/signin")));
    let (s, b) = w
        .admin(
            Method::PATCH,
            &format!("/v1/users/{alex}"),
            Some(
                json!({"sso_override": {"enabled": true, "method": "password_and_second_factor"}}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Five wrong codes in five minutes (one above, four here; the code used again above
    // was no guess) lock the method, with the message saying so; the right code is
    // refused while it lasts.
    let mut v = Visitor::new();
    let page = entra_sign_in(&w, &mut v, ALEX, ALEX_PASSWORD).await;
    for n in 0..4 {
        let (s, text) = type_code(&w, &mut v, &page, "000001").await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(
            text.contains("locked for at least 15 minutes"),
            n == 3,
            "{text}"
        );
    }
    let good = totp_code(&secret, chrono::Utc::now().timestamp() + 30);
    for _ in 0..2 {
        // Recorded once, then refused without a record while the minute lasts.
        let (s, text) = type_code(&w, &mut v, &page, &good).await;
        assert!(
            s == StatusCode::UNAUTHORIZED || s == StatusCode::TOO_MANY_REQUESTS,
            "{s}"
        );
        assert!(text.contains("locked"), "{text}");
    }
    // An admin lifts the lock: the code is judged again at once (it signs in, or is the
    // step signed in with above), no longer refused as locked.
    let (_, u) = w
        .admin(Method::GET, &format!("/v1/users/{alex}"), None)
        .await;
    assert_eq!(u["sign_in_locks"][0]["factor"], "totp", "{u}");
    let unlock = format!("/v1/users/{alex}/sign-in/unlock");
    let (s, u) = w.admin(Method::POST, &unlock, None).await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["sign_in_locks"], json!([]), "{u}");
    let (s, text) = type_code(&w, &mut v, &page, &good).await;
    assert!(!text.contains("locked"), "{s}: {text}");
    assert!(
        s == StatusCode::SEE_OTHER || text.contains("used already"),
        "{s}: {text}"
    );

    // Every attempt is on the user's stream.
    let (s, events) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{alex}/events?limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{events}");
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "InviteSent",
        "EnrolmentStarted",
        "TotpEnrolled",
        "EnrolmentCompleted",
        "SignInSucceeded",
        "SignInFailed",
        "SignInLocked",
        "SignInUnlocked",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    // No secret of sign-in is in any event's JSON.
    let text = events.to_string();
    assert!(!text.contains(&secret) && !text.contains(ALEX_PASSWORD));

    // A deactivated user cannot sign in.
    let (s, _) = w
        .admin(Method::POST, &format!("/v1/users/{alex}/deactivate"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let before = w.kinds(&alex).await.len();
    refused_after_entra(&w, ALEX, ALEX_PASSWORD).await;
    let events = w.events(&alex).await;
    assert_eq!(events.len(), before + 1, "{:?}", &events[before..]);
    assert!(
        events[before].to_string().contains("not_active"),
        "{}",
        events[before]
    );
}

const ADELE: &str = "adele.vance@contoso.onmicrosoft.com";
const ADELE_PASSWORD: &str = "Start-Key-2026-01!";

/// Starts the Entra step for a typed name in a fresh browser: the tenant's authorize URL.
async fn start_entra_for(w: &World, v: &mut Visitor, name: &str) -> reqwest::Url {
    let (_, page, _) = v.get(&format!("{}/signin", w.app.public)).await;
    let (s, b) = v
        .post_json(
            &format!("{}/signin/entra", w.app.public),
            &csrf_of(&page),
            json!({"username": name}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    reqwest::Url::parse(b["redirect"].as_str().unwrap()).unwrap()
}

/// Allan types Alex's name and signs in at Entra as himself, the nonce of the authorize
/// URL his browser follows replaced by `nonce` when given; answers the callback's status
/// and page.
async fn allan_signs_in_for_alex(w: &World, nonce: Option<&str>) -> (StatusCode, String) {
    allan_signs_in_typing(w, ALEX, nonce).await
}

/// Allan types `typed` on the sign-in page and signs in at Entra ID as himself.
async fn allan_signs_in_typing(
    w: &World,
    typed: &str,
    nonce: Option<&str>,
) -> (StatusCode, String) {
    let mut v = Visitor::new();
    let mut authorize = start_entra_for(w, &mut v, typed).await;
    if let Some(nonce) = nonce {
        let pairs: Vec<(String, String)> = authorize
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        authorize.query_pairs_mut().clear().extend_pairs(
            pairs
                .iter()
                .map(|(k, v)| (k.as_str(), if k == "nonce" { nonce } else { v.as_str() })),
        );
    }
    let callback = entra_form(
        &mut v,
        authorize.as_str(),
        "allan.deyoung@contoso.onmicrosoft.com",
        "Start-Key-2026-03!",
    )
    .await;
    let (s, page, _) = v.get(&callback).await;
    (s, page)
}

/// `upn` may not sign in with Entra ID: the sign-in page sends them to the tenant like
/// anyone, and the refusal comes once Entra has answered.
async fn refused_after_entra(w: &World, upn: &str, password: &str) {
    let mut v = Visitor::new();
    let authorize = start_entra_for(w, &mut v, upn).await;
    let callback = entra_form(&mut v, authorize.as_str(), upn, password).await;
    let (s, page, _) = v.get(&callback).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{page}");
    assert!(page.contains("cannot sign in with Entra ID here"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entra_step_tells_no_one_who_has_an_account_and_forged_answers_lock_no_one() {
    let (w, adele, alex) = signin_world().await;
    let (_, secret) = enrol_alex(&w, &alex).await;
    let adele_before = w.kinds(&adele).await.len();

    // Someone who may sign in this way, someone who may not, a name no one has, and a name
    // in a domain not connected: the same answer, to the same tenant, asking the same.
    let mut shapes = Vec::new();
    for name in [
        ALEX,
        ADELE,
        "nobody@contoso.onmicrosoft.com",
        "someone@elsewhere.example",
    ] {
        let mut v = Visitor::new();
        let url = start_entra_for(&w, &mut v, name).await;
        let mut keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
        keys.sort();
        let hint = url
            .query_pairs()
            .find(|(k, _)| k == "login_hint")
            .map(|(_, v)| v.into_owned());
        assert_eq!(hint.as_deref(), Some(name));
        shapes.push((url.origin(), url.path().to_owned(), keys));
    }
    assert!(shapes.windows(2).all(|p| p[0] == p[1]), "{shapes:?}");

    // Adele proves who she is and is refused in the words anyone gets; her history has
    // the attempt and why (she signs in passwordless), once however often she tries.
    refused_after_entra(&w, ADELE, ADELE_PASSWORD).await;
    refused_after_entra(&w, ADELE, ADELE_PASSWORD).await;
    let events = w.events(&adele).await;
    let attempts: Vec<&Value> = events[adele_before..].iter().collect();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["kind"], "SignInFailed", "{attempts:?}");
    assert!(
        attempts[0].to_string().contains("method_not_allowed"),
        "{attempts:?}"
    );

    // Made-up error answers for Alex (anyone can start his sign-in and forge the callback)
    // are shown, not counted: six of them lock nothing and record nothing.
    for _ in 0..6 {
        let mut v = Visitor::new();
        let url = start_entra_for(&w, &mut v, ALEX).await;
        let state = url
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned();
        let mut callback =
            reqwest::Url::parse(&format!("{}/signin/entra/callback", w.app.public)).unwrap();
        callback
            .query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("error_description", "made up")
            .append_pair("state", &state);
        let (s, page, _) = v.get(callback.as_str()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{page}");
        assert!(page.contains("did not confirm"), "{page}");
    }
    assert!(!w.kinds(&alex).await.contains(&"SignInFailed".to_owned()));
    let mut v = Visitor::new();
    let page = entra_sign_in(&w, &mut v, ALEX, ALEX_PASSWORD).await;
    let code = totp_code(&secret, chrono::Utc::now().timestamp() + 30);
    let (s, to) = type_code(&w, &mut v, &page, &code).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/me"));

    // Entra's own word is recorded: Alex's name typed, Allan signed in at the tenant. But
    // any colleague can do that, so it locks no one, and a burst is recorded once.
    // Nor does the refusal tell him that Alex has an account: a name no one has gets the
    // same page.
    // Allan's own history has the attempt, the same whatever name he typed: a record that
    // differed would tell him whether Alex may sign in this way.
    let allan = w
        .users("")
        .await
        .into_iter()
        .find(|u| u["user_principal_name"] == "allan.deyoung@contoso.onmicrosoft.com")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let allan_before = w.kinds(&allan).await.len();
    let before = w.kinds(&alex).await.len();
    let (s, first) = allan_signs_in_for_alex(&w, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{first}");
    assert_eq!(w.kinds(&allan).await[allan_before..], ["SignInFailed"]);
    let (s, nobody) = allan_signs_in_typing(&w, "nobody@contoso.onmicrosoft.com", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{nobody}");
    assert_eq!(first, nobody);
    for _ in 0..5 {
        let (s, page) = allan_signs_in_for_alex(&w, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{page}");
        assert_eq!(page, nobody);
    }
    // A burst is recorded once on his stream too.
    assert_eq!(w.kinds(&allan).await.len(), allan_before + 1);
    let kinds = w.kinds(&alex).await;
    assert_eq!(
        kinds[before..],
        ["SignInFailed".to_owned()],
        "recorded once, no SignInLocked: {kinds:?}"
    );

    // Nor when the colleague spoils the nonce of the authorize URL their own browser
    // follows (so the ID token fails before its `oid` is compared): Alex still signs in.
    for _ in 0..6 {
        let (s, page) = allan_signs_in_for_alex(&w, Some("spoilt")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{page}");
    }
    let kinds = w.kinds(&alex).await;
    assert!(!kinds.contains(&"SignInLocked".to_owned()), "{kinds:?}");
    let page = entra_sign_in(&w, &mut Visitor::new(), ALEX, ALEX_PASSWORD).await;
    assert!(page.contains("Now your second factor"), "{page}");
}

/// Records an invite to Alex whose link is `secret`, expiring `expires_in` from now (past
/// when negative), as an earlier build or a long-ago invite would have; answers its link id.
async fn record_alex_invite(
    w: &World,
    alex: &str,
    secret: &str,
    expires_in: chrono::Duration,
) -> LinkId {
    let link = EnrolmentLink {
        link_id: LinkId(uuid::Uuid::now_v7()),
        token_hash: idledger::http::token_hash(secret),
        expires_at: chrono::Utc::now() + expires_in,
    };
    let link_id = link.link_id;
    crate::support::append(
        &*w.app.state.engine.log,
        UserId(alex.parse().unwrap()),
        idledger::store::ExpectedVersion::Any,
        vec![InviteSent {
            to: ALEX.into(),
            via: "outbox".into(),
            link: Some(link),
        }
        .into()],
    )
    .await;
    w.app.state.engine.settle().await.unwrap();
    link_id
}

#[tokio::test]
async fn enrolment_links_that_do_not_work_say_why_and_change_nothing() {
    let (w, adele, alex) = signin_world().await;
    let mut v = Visitor::new();
    // Never existed: 404.
    let (s, page, _) = v
        .get(&format!("{}/enrol/not-a-link-at-all", w.app.public))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(page.contains("does not exist"));
    // Not text, or an answer no Entra sends: a page that says so, not plain text.
    for path in ["/enrol/%FF", "/signin/entra/callback?state=a&state=b"] {
        let (s, page, _) = v.get(&format!("{}{path}", w.app.public)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}");
        assert!(page.contains("role=\"alert\""), "{path}: {page}");
    }
    // Replaced by a newer invite: 410, and the newer one works.
    invite(&w, &adele).await;
    let first = outbox_link(&w, "adele.vance@contoso.onmicrosoft.com");
    tokio::time::sleep(Duration::from_millis(5)).await;
    invite(&w, &adele).await;
    let second = outbox_link(&w, "adele.vance@contoso.onmicrosoft.com");
    assert_ne!(first, second);
    let head = w.head().await;
    let (s, page, _) = v.get(&first).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(page.contains("newer invite replaced"), "{page}");
    let (s, page, _) = v.get(&second).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("Register a passkey") && !page.contains("Entra"),
        "{page}"
    );
    let second_csrf = csrf_of(&page);
    // A ceremony on the replaced link is refused too.
    let (s, b) = v
        .post_json(
            &format!("{first}/passkey/options"),
            &csrf_of(&page),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::GONE, "{b}");
    // Opening pages and refused requests appended nothing.
    assert_eq!(w.head().await, head);

    // Expired and used links, recorded as an earlier build or a finished enrolment would.
    let alex_id = UserId(alex.parse().unwrap());
    let expired = "expired-link-secret";
    record_alex_invite(&w, &alex, expired, -chrono::Duration::minutes(1)).await;
    let used = "used-link-secret";
    let link_id = record_alex_invite(&w, &alex, used, chrono::Duration::hours(1)).await;
    let head = w.head().await;
    let (s, page, _) = v.get(&format!("{}/enrol/{expired}", w.app.public)).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(page.contains("newer invite replaced"), "{page}");
    assert_eq!(w.head().await, head, "opening a replaced, expired link");
    crate::support::append(
        &*w.app.state.engine.log,
        alex_id,
        idledger::store::ExpectedVersion::Any,
        vec![EnrolmentCompleted {
            link_id,
            method: idledger_domain::SsoMethod::PasswordAndSecondFactor,
        }
        .into()],
    )
    .await;
    w.app.state.engine.settle().await.unwrap();
    let head = w.head().await;
    let (s, page, _) = v.get(&format!("{}/enrol/{used}", w.app.public)).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(page.contains("was used already"), "{page}");
    // A ceremony begun on it is refused alike, and records nothing.
    let (s, b) = v
        .post_json(
            &format!("{}/enrol/{used}/passkey/options", w.app.public),
            &second_csrf,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::GONE, "{b}");
    assert_eq!(w.head().await, head, "opening a used link");

    // An expired link as the newest one.
    let latest = "latest-expired-secret";
    record_alex_invite(&w, &alex, latest, -chrono::Duration::seconds(1)).await;
    let head = w.head().await;
    let (s, page, _) = v.get(&format!("{}/enrol/{latest}", w.app.public)).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(page.contains("has expired"), "{page}");
    let (s, b) = v
        .post_json(
            &format!("{}/enrol/{latest}/passkey/options", w.app.public),
            &second_csrf,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::GONE, "{b}");
    assert_eq!(w.head().await, head, "opening an expired link");

    // A deactivated user's link leads to no enrolment.
    let (s, _) = w
        .admin(Method::POST, &format!("/v1/users/{adele}/deactivate"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, page, _) = v.get(&second).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(page.contains("not available"), "{page}");
    assert!(!page.contains("data-webauthn"));

    // Deleted by the removal behaviour: the link says the account is gone, not that a
    // newer invite (which the user will never get) replaced it.
    let (s, b) = w
        .admin(
            Method::PATCH,
            &format!("/v1/domains/{}", w.domain),
            Some(json!({"removal_behavior": "delete"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    w.leave(1).await;
    w.sync().await;
    let (_, user) = w
        .admin(Method::GET, &format!("/v1/users/{adele}"), None)
        .await;
    assert_eq!(user["status"], "deleted", "{user}");
    let (s, page, _) = v.get(&second).await;
    assert_eq!(s, StatusCode::GONE);
    assert!(page.contains("no longer has an account"), "{page}");
    assert!(!page.contains("newer invite"), "{page}");
    let (s, b) = v
        .post_json(
            &format!("{second}/passkey/options"),
            &second_csrf,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::GONE, "{b}");
}

/// The CSRF token of `/me`'s buttons is bound to the flow cookie, set for ten minutes at
/// the first sign-in page: every visit to `/me` sets it for as long as a session lives, so
/// the buttons work while the session does, not only for ten minutes after signing in.
#[tokio::test]
async fn a_new_authenticator_app_from_an_invite_replaces_the_old_one_and_its_sessions() {
    let (w, _, alex) = signin_world().await;
    let (mut old, old_secret) = enrol_alex(&w, &alex).await;
    let me = format!("{}/me", w.app.public);
    // From a session (which a thief may hold), no second app beside the first.
    let (_, page, _) = old.get(&me).await;
    let csrf = csrf_of(&page);
    let (s, setup) = old
        .post_json(&format!("{me}/totp/options"), &csrf, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{setup}");
    let code = totp_code(
        setup["secret"].as_str().unwrap(),
        chrono::Utc::now().timestamp() + 30,
    );
    let (s, b) = old
        .post_json(&format!("{me}/totp"), &csrf, json!({"code": code}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("remove it first"),
        "{b}"
    );
    assert_eq!(old.get(&me).await.0, StatusCode::OK);

    // A lost phone: a new invite sets up a new app, and the old one's browser is out.
    let (mut new, new_secret) = enrol_alex(&w, &alex).await;
    assert_ne!(new_secret, old_secret);
    let (s, _, to) = old.get(&me).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(to.as_deref(), Some("/signin"));
    assert_eq!(new.get(&me).await.0, StatusCode::OK);
    let kinds = w.kinds(&alex).await;
    assert!(kinds.iter().any(|k| k == "TotpRemoved"), "{kinds:?}");
}

/// The authenticator app is removed from the user's page (`/me/totp/remove`), but not
/// while it is the last second factor of a user who signs in with a password and a second
/// factor: with a passkey beside it, it goes, the other browsers signed in go with it, and
/// its codes sign no one in afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authenticator_app_is_removed_from_me_unless_it_is_the_last_second_factor() {
    let (w, _, alex) = signin_world().await;
    let (mut v, secret) = enrol_alex(&w, &alex).await;
    let me = format!("{}/me", w.app.public);
    let remove = format!("{me}/totp/remove");
    let (_, page, _) = v.get(&me).await;
    assert!(page.contains("action=\"/me/totp/remove\""), "{page}");
    let session_csrf = session_csrf_of(&page);
    let flow_csrf = csrf_of(&page);

    // The only second factor: refused, saying why, and nothing recorded.
    let before = w.kinds(&alex).await;
    let (s, page, _) = v.post_form(&remove, &[("csrf", &session_csrf)]).await;
    assert_eq!(s, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("last second factor"), "{page}");
    assert_eq!(w.kinds(&alex).await, before);
    // Nor without the session's CSRF token.
    let (s, _, _) = v.post_form(&remove, &[("csrf", "forged")]).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(w.kinds(&alex).await, before);

    // A passkey beside it; and another browser signed in with a code.
    let (s, options) = v
        .post_json(&format!("{me}/passkeys/options"), &flow_csrf, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{options}");
    let credential = SoftKey::new().register(&options, &w.app.public);
    let (s, b) = v
        .post_json(
            &format!("{me}/passkeys"),
            &flow_csrf,
            json!({"credential": credential}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let mut other = Visitor::new();
    let page = entra_sign_in(&w, &mut other, ALEX, ALEX_PASSWORD).await;
    let next = totp_code(&secret, chrono::Utc::now().timestamp() + 30);
    let (s, to) = type_code(&w, &mut other, &page, &next).await;
    assert_eq!((s, to.as_str()), (StatusCode::SEE_OTHER, "/me"));

    // Now it goes: recorded, gone from the page, and the other browser is out.
    let before = w.kinds(&alex).await;
    let (s, page, _) = v.post_form(&remove, &[("csrf", &session_csrf)]).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(
        page.contains("The authenticator app was removed."),
        "{page}"
    );
    assert!(!page.contains("action=\"/me/totp/remove\""), "{page}");
    assert_eq!(w.kinds(&alex).await[before.len()..], ["TotpRemoved"]);
    assert_eq!(v.get(&me).await.0, StatusCode::OK);
    let (s, _, to) = other.get(&me).await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/signin")));

    // After Entra, only the passkey is offered; a code of the removed app signs no one in.
    let mut v = Visitor::new();
    let page = entra_sign_in(&w, &mut v, ALEX, ALEX_PASSWORD).await;
    assert!(
        page.contains("Use a passkey") && !page.contains("action=\"/signin/totp\""),
        "{page}"
    );
    let code = totp_code(&secret, chrono::Utc::now().timestamp() + 30);
    let (s, text) = type_code(&w, &mut v, &page, &code).await;
    assert_ne!(s, StatusCode::SEE_OTHER, "{text}");
    assert!(s.is_client_error(), "{s}: {text}");
    let (s, _, _) = v.get(&me).await;
    assert_eq!(
        s,
        StatusCode::SEE_OTHER,
        "signed in by a removed app's code"
    );
}

#[tokio::test]
async fn the_me_page_renews_the_cookie_its_buttons_need() {
    let (w, _, alex) = signin_world().await;
    let (v, _) = enrol_alex(&w, &alex).await;
    let resp = reqwest::Client::new()
        .get(format!("{}/me", w.app.public))
        .header(COOKIE, v.cookie_header())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let flow = v.cookies.get("idl_flow").expect("a flow cookie");
    let renewed = resp
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|c| c.to_str().ok())
        .find(|c| c.starts_with("idl_flow="))
        .map(str::to_owned);
    let renewed = renewed.expect("/me renews the flow cookie");
    assert!(
        renewed.starts_with(&format!("idl_flow={flow};")) && renewed.contains("Max-Age=43200"),
        "{renewed}"
    );
}

/// Reads a cookie's attributes off a sign-in answer.
#[tokio::test]
async fn sign_in_cookies_are_http_only_and_lax() {
    let (w, _, _) = signin_world().await;
    let resp = reqwest::get(format!("{}/signin", w.app.public))
        .await
        .unwrap();
    let cookie = resp.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let csp = resp.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    // Requests without the flow's CSRF token are refused.
    let (s, _) = Visitor::new()
        .post_json(
            &format!("{}/signin/passkey/options", w.app.public),
            "nope",
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// Behind an https origin (TLS at a proxy, say) the sign-in cookies are `__Host-` named
/// and `Secure`, as well as HttpOnly and SameSite=Lax: the flow's from the first page, the
/// user's session from the moment enrolment signs them in. A cookie under the plain name
/// is no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_cookies_are_secure_when_the_public_origin_is_https() {
    let (w, adele, _) = signin_world_tuned(|c| {
        c.public_url = Some("https://idledger.example".into());
    })
    .await;
    assert_eq!(w.app.public, "https://idledger.example");
    let upn = "adele.vance@contoso.onmicrosoft.com";
    invite(&w, &adele).await;
    // The link names the public origin; this test reaches the server directly.
    let link = outbox_link(&w, upn).replace(&w.app.public, &w.app.url);
    let mut v = Visitor::new();
    let (s, page, _) = v.get(&link).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let csrf = csrf_of(&page);
    let (_, options) = v
        .post_json(&format!("{link}/passkey/options"), &csrf, json!({}))
        .await;
    let mut key = SoftKey::new();
    let credential = key.register(&options, &w.app.public);
    let (s, b) = v
        .post_json(
            &format!("{link}/passkey"),
            &csrf,
            json!({"credential": credential, "name": "key"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for name in ["__Host-idl_flow=", "__Host-idl_user="] {
        let set = v
            .set_cookies
            .iter()
            .find(|c| c.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} among {:?}", v.set_cookies));
        for attribute in ["; Secure", "; HttpOnly", "; SameSite=Lax", "; Path=/"] {
            assert!(set.contains(attribute), "{attribute} missing: {set}");
        }
    }
    assert!(
        !v.set_cookies
            .iter()
            .any(|c| c.starts_with("idl_flow=") || c.starts_with("idl_user=")),
        "{:?}",
        v.set_cookies
    );
    let (s, _, _) = v.get(&format!("{}/me", w.app.url)).await;
    assert_eq!(s, StatusCode::OK);
    let session = &v.cookies["__Host-idl_user"];
    let me_with = async |cookie: String| {
        v.http
            .get(format!("{}/me", w.app.url))
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(
        me_with(format!("__Host-idl_user={session}")).await,
        StatusCode::OK
    );
    assert_eq!(
        me_with(format!("idl_user={session}")).await,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_enrols_a_passkey_from_an_invite_and_signs_in_with_it_in_chromium() {
    let (w, adele, alex) = signin_world().await;
    invite(&w, &adele).await;
    let link = outbox_link(&w, "adele.vance@contoso.onmicrosoft.com");
    let b = Browser::start().await;
    let key = b.add_authenticator("usb").await;

    b.goto(&link).await;
    b.wait_text("h1", "Adele Vance").await;
    // Who she is: her principal name and her domain beside her name.
    let who = b.wait_text("p.who", ADELE).await;
    assert_eq!(
        who.split(" · ").map(str::trim).collect::<Vec<_>>(),
        [ADELE, "contoso.onmicrosoft.com"],
        "{who}"
    );
    b.fill("#passkey-name", "Hideez Key").await;
    b.click("button[data-webauthn=register]").await;
    b.wait_text("h1", "Adele Vance").await;
    b.wait_text("main", "Recent sign-ins").await;
    assert!(b.url().await.ends_with("/me"));
    let page = b.wait_text("main", "Hideez Key").await;
    assert!(page.contains("Security key"), "{page}");
    assert!(page.contains("hwk, mfa"), "{page}");
    assert_eq!(b.authenticator_credentials(&key).await.len(), 1);
    b.screenshot("signin-me").await;

    // Sign out; sign in again with the passkey, naming no one.
    b.click("form[action='/signout'] button").await;
    b.wait_text("h1", "Sign in").await;
    b.click("button[data-webauthn=signin]").await;
    b.wait_text("h1", "Adele Vance").await;
    let page = b.wait_text("main", "Success").await;
    assert!(page.matches("Success").count() >= 2, "{page}");

    // The used link now says so, with a way to the user's page.
    b.goto(&link).await;
    b.wait_text("[role=alert]", "was used already").await;
    assert!(b.present("a[href='/me']").await);

    // A passkey of another user: Adele's credential (her key pair, her credential id), on
    // an authenticator that holds it as Alex's. Signing in with it is refused on the page,
    // signs no one in, and is on record on the stream of the credential's holder only.
    b.click("form[action='/signout'] button").await;
    b.wait_text("h1", "Sign in").await;
    let adeles = b.authenticator_credentials(&key).await.remove(0);
    b.remove_authenticator(&key).await;
    let copy = b.add_authenticator("usb").await;
    let alex_handle = B64.encode(uuid::Uuid::parse_str(&alex).unwrap().as_bytes());
    b.add_credential(&copy, &adeles, &alex_handle).await;
    let (adele_before, alex_before) = (w.kinds(&adele).await, w.kinds(&alex).await);
    b.click("button[data-webauthn=signin]").await;
    b.wait_text("[role=alert]", "could not be verified").await;
    assert!(b.url().await.ends_with("/signin"));
    assert_eq!(
        b.authenticator_credentials(&copy).await.len(),
        1,
        "the authenticator answered with the copy"
    );
    b.goto(&format!("{}/me", w.app.public)).await;
    b.wait_text("h1", "Sign in").await;
    let adele_after = w.events(&adele).await;
    let new: Vec<&Value> = adele_after[adele_before.len()..].iter().collect();
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["kind"], "SignInFailed", "{new:?}");
    assert!(new[0].to_string().contains("unknown_credential"), "{new:?}");
    assert_eq!(w.kinds(&alex).await, alex_before);
    // Her own passkey back, as her authenticator held it, for what follows.
    b.remove_authenticator(&copy).await;
    let key = b.add_authenticator("usb").await;
    let handle = adeles["userHandle"].as_str().unwrap().to_owned();
    b.add_credential(&key, &adeles, &handle).await;

    // An admin deactivates her: the open session ends, and the passkey no longer signs in.
    let (s, _) = w
        .admin(Method::POST, &format!("/v1/users/{adele}/deactivate"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    b.goto(&format!("{}/me", w.app.public)).await;
    b.wait_text("h1", "Sign in").await;
    b.click("button[data-webauthn=signin]").await;
    b.wait_text("[role=alert]", "cannot sign in here").await;

    // A link past its time (recorded as an invite sent long ago would be) says so.
    let expired = "an-expired-link-secret";
    record_alex_invite(&w, &alex, expired, -chrono::Duration::minutes(1)).await;
    b.goto(&format!("{}/enrol/{expired}", w.app.public)).await;
    b.wait_text("[role=alert]", "has expired").await;
    assert!(!b.present("button[data-redirect]").await);

    // Alex enrols Entra ID plus an authenticator code in the browser.
    b.remove_authenticator(&key).await;
    invite(&w, &alex).await;
    let link = outbox_link(&w, ALEX);
    b.goto(&link).await;
    b.wait_text("h1", "Alex Wilber").await;
    b.click("button[data-redirect]").await;
    b.wait_text("h1", "Sign in").await;
    b.fill("#password", ALEX_PASSWORD).await;
    b.click("button[type=submit]").await;
    b.wait_text("main", "Step 1 done").await;
    b.click("button[data-totp-setup]").await;
    let secret = b.wait_text("#totp-secret", "").await;
    let mut secret = secret.trim().to_owned();
    for _ in 0..50 {
        if !secret.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        secret = b.css("#totp-secret").await.text().await.unwrap();
    }
    let enrolled_at = chrono::Utc::now().timestamp();
    let enrolled_code = totp_code(&secret, enrolled_at);
    b.fill("#totp-code", &enrolled_code).await;
    b.click("form[data-totp-confirm] button").await;
    b.wait_text("h1", "Alex Wilber").await;
    b.wait_text("main", "fed, otp").await;
    b.screenshot("signin-totp").await;

    // An app sends Alex's browser to idledger: Entra ID, then the code form, whose answer
    // leads back to the app (another origin, which the page's policy must let it reach).
    let callback = crate::oidc::callback_server().await;
    let (s, app) = w
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({
                "name": "Payroll",
                "redirect_uris": [callback],
                "type": "confidential",
                "domain_ids": [w.domain],
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{app}");
    b.click("form[action='/signout'] button").await;
    b.wait_text("h1", "Sign in").await;
    b.goto(&format!(
        "{}/authorize?response_type=code&scope=openid&state=s1&client_id={}&redirect_uri={}",
        w.app.public,
        app["client_id"].as_str().unwrap(),
        urlencoding::encode(&callback)
    ))
    .await;
    b.wait_text("h1", "Sign in").await;
    b.fill("#username", ALEX).await;
    b.click("form[data-entra-start] button").await;
    b.fill("#password", ALEX_PASSWORD).await;
    b.click("button[type=submit]").await;
    b.wait_text("main", "Now your second factor").await;
    // The enrolment's code again: spent. A code of no step near now: not right. Each is
    // said on the page, whose form takes the next try.
    b.fill("#code", &enrolled_code).await;
    b.click("form[action='/signin/totp'] button").await;
    let mut said = String::new();
    for _ in 0..200 {
        if b.present("[role=alert]").await {
            said = b.css("[role=alert]").await.text().await.unwrap_or_default();
        }
        if said.contains("used already") || said.contains("not right") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // (On a slow machine the enrolment's step may have left the window of one step.)
    let left_the_window = chrono::Utc::now().timestamp() / 30 - enrolled_at / 30 > 1;
    assert!(
        said.contains("used already") || (left_the_window && said.contains("not right")),
        "{said}"
    );
    let now = chrono::Utc::now().timestamp();
    let near: Vec<String> = (-2..=2)
        .map(|step| totp_code(&secret, now + 30 * step))
        .collect();
    let wrong = (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .find(|c| !near.contains(c))
        .unwrap();
    b.fill("#code", &wrong).await;
    b.click("form[action='/signin/totp'] button").await;
    b.wait_text("[role=alert]", "not right").await;
    // The next step's code.
    b.fill(
        "#code",
        &totp_code(&secret, chrono::Utc::now().timestamp() + 30),
    )
    .await;
    b.click("form[action='/signin/totp'] button").await;
    b.wait_text("h1", "Payroll: signed in").await;
    let landed = b.url().await;
    assert!(landed.starts_with(&callback), "{landed}");
    assert!(
        landed.contains("code=") && landed.contains("state=s1"),
        "{landed}"
    );
    // The sign-in is on record as one for the app, and the user's page says so.
    let (_, events) = w
        .admin(Method::GET, &format!("/v1/users/{alex}/events"), None)
        .await;
    let last = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "SignInSucceeded")
        .unwrap();
    assert_eq!(last["payload"]["app"], "Payroll", "{last}");
    b.goto(&format!("{}/me", w.app.public)).await;
    b.wait_text("main", "Payroll").await;
}

#[tokio::test]
async fn a_domain_has_a_workstation_certificate_to_download_and_replace() {
    let w = world(json!({})).await;
    let path = format!("/v1/domains/{}/workstation-certificate", w.domain);
    let get = |format: &'static str| {
        let url = format!("{}{path}?format={format}", w.app.url);
        let token = w.app.admin.clone();
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status(), r.bytes().await.unwrap().to_vec())
        }
    };
    let (s, pem) = get("pem").await;
    assert_eq!(s, StatusCode::OK);
    let pem = String::from_utf8(pem).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"), "{pem}");
    let (s, der) = get("der").await;
    assert_eq!(s, StatusCode::OK);
    use rustls::pki_types::pem::PemObject;
    let parsed = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    assert_eq!(parsed.as_ref(), der.as_slice());
    let (s, _) = get("p12").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Auditors read but do not replace; an admin's replacement retires the first.
    let (s, t) = w
        .admin(
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "auditor", "name": "audit"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let auditor = t["token"].as_str().unwrap();
    let (s, _) = w.app.call(Some(auditor), Method::POST, &path, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, body) = w.admin(Method::POST, &path, None).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (_, der2) = get("der").await;
    assert_ne!(der, der2);
    let (s, list) = w.admin(Method::GET, &format!("{path}s"), None).await;
    assert_eq!(s, StatusCode::OK);
    let statuses: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["current", "retired"]);
    assert_eq!(list["items"][0]["id"], body["id"]);

    // The key is in no answer and no event's JSON: only sealed.
    let (_, events) = w.admin(Method::GET, "/v1/events?limit=1000", None).await;
    let issued: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "WorkstationCertificateIssued")
        .collect();
    assert_eq!(issued.len(), 2);
    for e in issued {
        assert_eq!(e["payload"]["sealed_private_key"], "sealed", "{e}");
    }
    // A removed domain has none to download or list.
    let (s, b) = w
        .admin(Method::DELETE, &format!("/v1/domains/{}", w.domain), None)
        .await;
    assert!(s.is_success(), "{s}: {b}");
    for path in ["workstation-certificate", "workstation-certificates"] {
        let (s, _) = w
            .admin(
                Method::GET,
                &format!("/v1/domains/{}/{path}", w.domain),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
}

/// Enrols `upn` (passwordless, invited) with `key` over HTTP; answers the signed-in visitor.
/// A synced passkey (backup eligible, like a phone's used by QR code, which the browser
/// calls cross-platform all the same) is bound to no hardware: it is no "Security key",
/// and its sign-ins never claim `hwk`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_passkey_never_claims_hardware() {
    let (w, adele, _) = signin_world().await;
    let mut key = SoftKey::new();
    key.synced = true;
    let upn = "adele.vance@contoso.onmicrosoft.com";
    enrol_with_key(&w, &adele, upn, &mut key).await;
    let handle = key.user_handle.clone();
    let mut v = Visitor::new();
    let (s, b) = passkey_sign_in_with(&w, &mut v, &mut key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, page, _) = v.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(page.contains("swk, mfa"), "{page}");
    assert!(
        !page.contains("hwk") && !page.contains("Security key"),
        "{page}"
    );
}

pub(crate) async fn enrol_with_key(w: &World, user: &str, upn: &str, key: &mut SoftKey) -> Visitor {
    invite(w, user).await;
    let link = outbox_link(w, upn);
    let mut v = Visitor::new();
    let (s, page, _) = v.get(&link).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let csrf = csrf_of(&page);
    let (s, options) = v
        .post_json(&format!("{link}/passkey/options"), &csrf, json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{options}");
    assert_eq!(
        options["authenticatorSelection"]["userVerification"],
        "required"
    );
    let credential = key.register(&options, &w.app.public);
    let (s, b) = v
        .post_json(
            &format!("{link}/passkey"),
            &csrf,
            json!({"credential": credential, "name": format!("{upn} key")}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    v
}

/// Two tabs of one browser share its flow: each press of "Register a passkey" issues a
/// challenge of its own, and the first tab's answer still counts after the second asked
/// (its authenticator has made the credential by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_made_in_one_tab_registers_after_another_tab_asked() {
    let (w, adele, _) = signin_world().await;
    invite(&w, &adele).await;
    let link = outbox_link(&w, "adele.vance@contoso.onmicrosoft.com");
    let mut v = Visitor::new();
    let (_, page, _) = v.get(&link).await;
    let csrf = csrf_of(&page);
    let mut options = Vec::new();
    for _ in 0..2 {
        let (s, o) = v
            .post_json(&format!("{link}/passkey/options"), &csrf, json!({}))
            .await;
        assert_eq!(s, StatusCode::OK, "{o}");
        options.push(o);
    }
    assert_ne!(options[0]["challenge"], options[1]["challenge"]);
    let mut key = SoftKey::new();
    let credential = key.register(&options[0], &w.app.public);
    let body = json!({"credential": credential, "name": "first tab"});
    let (s, b) = v
        .post_json(&format!("{link}/passkey"), &csrf, body.clone())
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Each challenge answers once.
    let (s, b) = v.post_json(&format!("{link}/passkey"), &csrf, body).await;
    assert!(s.is_client_error(), "{b}");
}

/// A discoverable sign-in with `key`, sending `handle`; answers the status and body.
async fn passkey_sign_in(
    w: &World,
    key: &mut SoftKey,
    handle: Option<&[u8]>,
) -> (StatusCode, Value) {
    passkey_sign_in_with(w, &mut Visitor::new(), key, handle).await
}

/// [`passkey_sign_in`] in the browser `v` (its flow, and any request waiting in it).
pub(crate) async fn passkey_sign_in_with(
    w: &World,
    v: &mut Visitor,
    key: &mut SoftKey,
    handle: Option<&[u8]>,
) -> (StatusCode, Value) {
    let (_, page, _) = v.get(&format!("{}/signin", w.app.public)).await;
    let csrf = csrf_of(&page);
    let (s, options) = v
        .post_json(
            &format!("{}/signin/passkey/options", w.app.public),
            &csrf,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{options}");
    assert_eq!(
        options["allowCredentials"],
        json!([]),
        "discoverable: no user named"
    );
    let credential = key.assert(&options, &w.app.public, handle);
    v.post_json(
        &format!("{}/signin/passkey", w.app.public),
        &csrf,
        json!({"credential": credential}),
    )
    .await
}

/// Bianca, with passwordless sign-in turned on for her alone: a second user beside Adele.
async fn bianca_passwordless(w: &World) -> String {
    let bianca = w.user(4).await.unwrap()["id"].as_str().unwrap().to_owned();
    let (s, _) = w
        .admin(
            Method::PATCH,
            &format!("/v1/users/{bianca}"),
            Some(json!({"sso_override": {"enabled": true, "method": "passwordless"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    bianca
}

/// Two users registering one credential id at the same moment: one of them gets it, the
/// other a 409. WebAuthn §7.1 step 22 holds across users however close the two requests
/// come, not only against the registrations the projections had folded already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_id_registered_by_two_users_at_once_goes_to_one() {
    let (w, adele, _) = signin_world().await;
    let bianca = bianca_passwordless(&w).await;
    let adele_upn = "adele.vance@contoso.onmicrosoft.com";
    let bianca_upn = "bianca.pispisa@contoso.onmicrosoft.com";
    let mut adele_v = enrol_with_key(&w, &adele, adele_upn, &mut SoftKey::new()).await;
    let mut bianca_v = enrol_with_key(&w, &bianca, bianca_upn, &mut SoftKey::new()).await;
    let url = format!("{}/me/passkeys", w.app.public);
    for round in 0..4 {
        let mut forms = Vec::new();
        for v in [&mut adele_v, &mut bianca_v] {
            let (_, me, _) = v.get(&format!("{}/me", w.app.public)).await;
            let csrf = csrf_of(&me);
            let (s, options) = v
                .post_json(&format!("{url}/options"), &csrf, json!({}))
                .await;
            assert_eq!(s, StatusCode::OK, "{options}");
            forms.push((csrf, options));
        }
        let shared = uuid::Uuid::new_v4().as_bytes().to_vec();
        let a = SoftKey::forging(&shared).register(&forms[0].1, &w.app.public);
        let b = SoftKey::forging(&shared).register(&forms[1].1, &w.app.public);
        let ((sa, ba), (sb, bb)) = tokio::join!(
            adele_v.post_json(&url, &forms[0].0, json!({"credential": a})),
            bianca_v.post_json(&url, &forms[1].0, json!({"credential": b})),
        );
        let mut got = [sa, sb];
        got.sort();
        assert_eq!(
            got,
            [StatusCode::OK, StatusCode::CONFLICT],
            "round {round}: {ba} {bb}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkeys_belong_to_one_user_and_keep_their_rules() {
    let (w, adele, alex) = signin_world().await;
    let bianca = bianca_passwordless(&w).await;
    let mut adele_key = SoftKey::new();
    let mut bianca_key = SoftKey::new();
    let mut adele_v = enrol_with_key(
        &w,
        &adele,
        "adele.vance@contoso.onmicrosoft.com",
        &mut adele_key,
    )
    .await;
    let mut bianca_v = enrol_with_key(
        &w,
        &bianca,
        "bianca.pispisa@contoso.onmicrosoft.com",
        &mut bianca_key,
    )
    .await;

    // Bianca cannot take Adele's credential id for a key of her own.
    let (_, me, _) = bianca_v.get(&format!("{}/me", w.app.public)).await;
    let flow_csrf = csrf_of(&me);
    // The page's token is its session's: once Bianca signs out and in again in the same
    // browser (the same flow cookie), the old page's token opens nothing.
    let (s, _, _) = bianca_v
        .post_form(
            &format!("{}/signout", w.app.public),
            &[("csrf", flow_csrf.as_str())],
        )
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let handle = bianca_key.user_handle.clone();
    let (s, b) = passkey_sign_in_with(&w, &mut bianca_v, &mut bianca_key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = bianca_v
        .post_json(
            &format!("{}/me/passkeys/options", w.app.public),
            &flow_csrf,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, me, _) = bianca_v.get(&format!("{}/me", w.app.public)).await;
    let flow_csrf = csrf_of(&me);
    let (s, options) = bianca_v
        .post_json(
            &format!("{}/me/passkeys/options", w.app.public),
            &flow_csrf,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{options}");
    let forged = SoftKey::forging(&adele_key.credential).register(&options, &w.app.public);
    let (s, b) = bianca_v
        .post_json(
            &format!("{}/me/passkeys", w.app.public),
            &flow_csrf,
            json!({"credential": forged}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");

    // Adele signs in with her key, naming no one.
    let handle = adele_key.user_handle.clone();
    let (s, b) = passkey_sign_in(&w, &mut adele_key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Her credential id signed by another key; Bianca's key with Adele's handle; no
    // handle at all; an authenticator whose counter went back: all refused.
    let mut forger = SoftKey::forging(&adele_key.credential);
    let (s, b) = passkey_sign_in(&w, &mut forger, Some(&handle)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, b) = passkey_sign_in(&w, &mut bianca_key, Some(&handle)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    // (Refused alike; a second failure on her stream within the minute is not recorded.)
    let (s, b) = passkey_sign_in(&w, &mut adele_key, None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{b}");
    assert!(
        b["error"]
            .as_str()
            .unwrap()
            .contains("could not be verified"),
        "{b}"
    );
    adele_key.counter = 0;
    let (s, b) = passkey_sign_in(&w, &mut adele_key, Some(&handle)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert!(b["error"].as_str().unwrap().contains("copied"), "{b}");
    adele_key.counter = 100;
    let (s, b) = passkey_sign_in(&w, &mut adele_key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Her page: rename; the last passkey of a passwordless user stays.
    let (_, me, _) = adele_v.get(&format!("{}/me", w.app.public)).await;
    let session_csrf = session_csrf_of(&me);
    let id = B64.encode(&adele_key.credential);
    let (s, page, _) = adele_v
        .post_form(
            &format!("{}/me/passkeys/{id}/rename", w.app.public),
            &[("csrf", &session_csrf), ("name", "Office key")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert!(
        page.contains("Office key") && page.contains("renamed"),
        "{page}"
    );
    let (s, page, _) = adele_v
        .post_form(
            &format!("{}/me/passkeys/{id}/remove", w.app.public),
            &[("csrf", &session_csrf)],
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("last way to sign in"), "{page}");
    // Without the session's CSRF token nothing changes.
    let (s, _, _) = adele_v
        .post_form(
            &format!("{}/me/passkeys/{id}/remove", w.app.public),
            &[("csrf", "forged")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Alex (Entra ID and a second factor) adds a passkey on his page and signs in with it
    // after Entra; Adele's passkey is no second factor of his.
    let (mut alex_v, _) = enrol_alex(&w, &alex).await;
    let (_, me, _) = alex_v.get(&format!("{}/me", w.app.public)).await;
    let flow_csrf = csrf_of(&me);
    let (s, options) = alex_v
        .post_json(
            &format!("{}/me/passkeys/options", w.app.public),
            &flow_csrf,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{options}");
    let mut alex_key = SoftKey::new();
    let credential = alex_key.register(&options, &w.app.public);
    let (s, b) = alex_v
        .post_json(
            &format!("{}/me/passkeys", w.app.public),
            &flow_csrf,
            json!({"credential": credential}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for (key, want) in [
        (&mut adele_key, StatusCode::UNAUTHORIZED),
        (&mut alex_key, StatusCode::OK),
    ] {
        let mut v = Visitor::new();
        let page = entra_sign_in(&w, &mut v, ALEX, ALEX_PASSWORD).await;
        assert!(page.contains("Use a passkey"), "{page}");
        let csrf = csrf_of(&page);
        let (s, options) = v
            .post_json(
                &format!("{}/signin/second-passkey/options", w.app.public),
                &csrf,
                json!({}),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{options}");
        assert_eq!(options["allowCredentials"].as_array().unwrap().len(), 1);
        let credential = key.assert(&options, &w.app.public, None);
        let (s, b) = v
            .post_json(
                &format!("{}/signin/second-passkey", w.app.public),
                &csrf,
                json!({"credential": credential}),
            )
            .await;
        assert_eq!(s, want, "{b}");
    }
    let (_, events) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{alex}/events?limit=1000"),
            None,
        )
        .await;
    let last = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|e| e["kind"] == "SignInSucceeded")
        .unwrap();
    assert_eq!(last["payload"]["amr"], json!(["fed", "hwk"]));

    // The sign-ins export lists them with the manifest the other exports have.
    let (s, csv) = w
        .admin(Method::GET, "/v1/audit/exports/sign-ins?format=csv", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let csv = csv.as_str().unwrap().to_owned();
    assert!(
        csv.starts_with("position,recorded_at,domain,user_id,user_principal_name,step"),
        "{csv}"
    );
    for want in [
        "enrolment completed",
        "success",
        "failure",
        "counter_went_back",
        "fed hwk",
    ] {
        assert!(csv.contains(want), "{want} missing:\n{csv}");
    }
    // The same from the command line, with its manifest, which `verify-export` holds to the
    // server's log.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("sign-ins.csv");
    let run = |args: &[&str]| {
        let o = crate::support::idledger()
            .args(args)
            .args(["--server", &w.app.url])
            .env("IDLEDGER_TOKEN", &w.app.admin)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.code(), report)
    };
    let (code, report) = run(&[
        "export",
        "--kind",
        "sign-ins",
        "--format",
        "csv",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{report}");
    let exported = std::fs::read_to_string(&out).unwrap();
    assert!(exported.contains("fed hwk"), "{exported}");
    let (code, report) = run(&["verify-export", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{report}");
    // One row taken out: the manifest no longer holds.
    let cut: String = exported
        .lines()
        .filter(|l| !l.contains("counter_went_back"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&out, cut).unwrap();
    let (code, report) = run(&["verify-export", out.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{report}");
}

/// An admin's request: method, path, body.
type AdminCall = (Method, String, Option<Value>);

/// Taking sign-in away ends a user's sessions for good: given back before the session is
/// used again (deactivated then activated, SSO off then on), it does not come back to life.
#[tokio::test]
async fn a_session_ended_by_a_withdrawal_stays_ended_when_sign_in_comes_back() {
    let (w, adele, _) = signin_world().await;
    let me = format!("{}/me", w.app.public);
    let withdrawals: [(&str, [AdminCall; 2]); 2] = [
        (
            "deactivated, activated",
            [
                (Method::POST, format!("/v1/users/{adele}/deactivate"), None),
                (Method::POST, format!("/v1/users/{adele}/activate"), None),
            ],
        ),
        (
            "SSO off, on",
            [
                (
                    Method::PATCH,
                    format!("/v1/users/{adele}"),
                    Some(json!({"sso_override": {"enabled": false, "method": "passwordless"}})),
                ),
                (
                    Method::PATCH,
                    format!("/v1/users/{adele}"),
                    Some(json!({"sso_override": {"enabled": true, "method": "passwordless"}})),
                ),
            ],
        ),
    ];
    let mut key = SoftKey::new();
    let mut v = enrol_with_key(&w, &adele, ADELE, &mut key).await;
    for (what, steps) in withdrawals {
        let (s, _, _) = v.get(&me).await;
        assert_eq!(s, StatusCode::OK, "{what}: signed in before");
        for (method, path, body) in steps {
            let (s, b) = w.admin(method, &path, body).await;
            assert_eq!(s, StatusCode::OK, "{what}: {path}: {b}");
        }
        // Signing in again works, before the old session is seen again.
        let mut stale = std::mem::replace(&mut v, Visitor::new());
        let handle = key.user_handle.clone();
        let (s, b) = passkey_sign_in_with(&w, &mut v, &mut key, Some(&handle)).await;
        assert_eq!(s, StatusCode::OK, "{what}: {b}");
        let (s, _, to) = stale.get(&me).await;
        assert_eq!(
            (s, to.as_deref()),
            (StatusCode::SEE_OTHER, Some("/signin")),
            "{what}: the session outlived it"
        );
        // The old cookie ends only itself: the session opened since still stands.
        let (s, _, _) = v.get(&me).await;
        assert_eq!(
            s,
            StatusCode::OK,
            "{what}: the new session was ended by the old one"
        );
    }
}

/// Signing in again from a browser ends the session it held: a copy of the old cookie
/// (from a shared machine, a stolen backup) opens nothing once it is replaced.
#[tokio::test]
async fn a_sign_in_ends_the_session_the_browser_held() {
    let (w, adele, _) = signin_world().await;
    let me = format!("{}/me", w.app.public);
    let mut key = SoftKey::new();
    let signed_in = enrol_with_key(&w, &adele, ADELE, &mut key).await;
    let old = signed_in.cookies["idl_user"].clone();
    let mut copy = Visitor::new();
    copy.cookies.insert("idl_user".into(), old.clone());
    let (s, _, _) = copy.get(&me).await;
    assert_eq!(s, StatusCode::OK, "the copy stands while the session does");
    // The browser signs in again (as when an app asks for a fresh sign-in), sending the
    // session it holds along (from the ceremony on: `/signin` itself sends a browser with
    // a live session to its page, which is why `passkey_sign_in_with` does not serve here).
    let mut v = Visitor::new();
    let (_, page, _) = v.get(&format!("{}/signin", w.app.public)).await;
    let csrf = csrf_of(&page);
    let (s, options) = v
        .post_json(
            &format!("{}/signin/passkey/options", w.app.public),
            &csrf,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{options}");
    v.cookies.insert("idl_user".into(), old);
    let handle = key.user_handle.clone();
    let credential = key.assert(&options, &w.app.public, Some(&handle));
    let (s, b) = v
        .post_json(
            &format!("{}/signin/passkey", w.app.public),
            &csrf,
            json!({"credential": credential}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _, to) = copy.get(&me).await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/signin")));
    let (s, _, _) = v.get(&me).await;
    assert_eq!(s, StatusCode::OK);
}

/// A removed domain's users are out from the removal on, before their own streams say so
/// (that lands user by user after it): a passkey signs no one in, and nothing is recorded.
#[tokio::test]
async fn nobody_signs_in_once_their_domain_is_removed() {
    use idledger_domain::events::DomainRemoved;
    use idledger_domain::{Actor, DomainId, Event, StreamId};
    let (w, adele, _) = signin_world().await;
    let mut key = SoftKey::new();
    enrol_with_key(&w, &adele, ADELE, &mut key).await;
    // The removal alone, as it stands before the users leave.
    let domain = DomainId(w.domain.parse().unwrap());
    let position = w
        .app
        .state
        .command(
            &StreamId::domain(domain),
            &Actor::System,
            |s: (), _: &Event| s,
            |_| Ok(vec![DomainRemoved {}.into()]),
        )
        .await
        .unwrap();
    w.app.state.reach(Some(position)).await.unwrap();
    let before = w.kinds(&adele).await;
    let handle = key.user_handle.clone();
    let (s, b) = passkey_sign_in(&w, &mut key, Some(&handle)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(w.kinds(&adele).await, before, "nothing recorded");
}

/// Adding or removing a way to sign in wants a recent sign-in: a session left open (or a
/// stolen cookie) cannot add its holder's passkey nor take the user's away. The page then
/// offers "Sign in again", which asks even though a session is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_sign_in_methods_wants_a_recent_sign_in() {
    let (w, adele, _) = signin_world_tuned(|c| c.signin_reauth_secs = 1).await;
    let mut key = SoftKey::new();
    let mut v = enrol_with_key(&w, &adele, "adele.vance@contoso.onmicrosoft.com", &mut key).await;
    let me_url = format!("{}/me", w.app.public);
    let (_, page, _) = v.get(&me_url).await;
    assert!(page.contains("Add a passkey"), "{page}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    // Later: no controls, but the offer to sign in again; scripted and form requests are
    // refused and change nothing.
    let (_, page, _) = v.get(&me_url).await;
    assert!(
        page.contains("Sign in again") && !page.contains("Add a passkey"),
        "{page}"
    );
    assert!(!page.contains("/remove\""), "{page}");
    let csrf = csrf_of(&page);
    let session_csrf = session_csrf_of(&page);
    let (s, b) = v
        .post_json(
            &format!("{}/me/passkeys/options", w.app.public),
            &csrf,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert!(
        b["error"].as_str().unwrap().contains("sign in again"),
        "{b}"
    );
    let id = B64.encode(&key.credential);
    let (s, page, _) = v
        .post_form(
            &format!("{}/me/passkeys/{id}/remove", w.app.public),
            &[("csrf", &session_csrf)],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("sign in again"), "{page}");
    assert!(!w.kinds(&adele).await.contains(&"PasskeyRemoved".to_owned()));
    // Renaming stays open: it neither adds nor takes away a way in.
    let (s, page, _) = v
        .post_form(
            &format!("{}/me/passkeys/{id}/rename", w.app.public),
            &[("csrf", &session_csrf), ("name", "Desk key")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");

    // Sign in again: the sign-in page asks although a session is open, and afterwards the
    // controls are back.
    let (s, _, to) = v
        .post_form(
            &format!("{}/me/sign-in-again", w.app.public),
            &[("csrf", &session_csrf)],
        )
        .await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/signin")));
    let (s, page, to) = v.get(&format!("{}/signin", w.app.public)).await;
    assert_eq!(s, StatusCode::OK, "sent on to {to:?}");
    assert!(page.contains("Sign in with a passkey"), "{page}");
    let handle = key.user_handle.clone();
    let (s, b) = passkey_sign_in_with(&w, &mut v, &mut key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, page, _) = v.get(&me_url).await;
    assert!(page.contains("Add a passkey"), "{page}");
    let (s, b) = v
        .post_json(
            &format!("{}/me/passkeys/options", w.app.public),
            &csrf_of(&page),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // A forged "sign in again" does nothing.
    let (s, _, _) = v
        .post_form(
            &format!("{}/me/sign-in-again", w.app.public),
            &[("csrf", "forged")],
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

/// An enrolment page begins only what the user's method allows, in its order: a
/// passwordless user gets no authenticator secret and no Entra step, a user of a password
/// and a second factor no passkey options before the Entra step (the security key would
/// keep a credential the enrolment then refuses). Refused, nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolment_begins_only_what_the_users_method_allows() {
    let (w, adele, alex) = signin_world().await;
    for (user, upn, refused) in [
        (
            &adele,
            "adele.vance@contoso.onmicrosoft.com",
            &["totp/options", "entra"][..],
        ),
        (&alex, ALEX, &["passkey/options"][..]),
    ] {
        invite(&w, user).await;
        let link = outbox_link(&w, upn);
        let mut v = Visitor::new();
        let (_, page, _) = v.get(&link).await;
        let csrf = csrf_of(&page);
        for step in refused {
            let (s, b) = v
                .post_json(&format!("{link}/{step}"), &csrf, json!({}))
                .await;
            assert_eq!(s, StatusCode::CONFLICT, "{upn} {step}: {b}");
            assert!(b["error"].is_string(), "{b}");
        }
        let recorded = w.kinds(user).await;
        assert!(
            !recorded.iter().any(|k| k == "EnrolmentStarted"),
            "{upn}: {recorded:?}"
        );
    }
}
