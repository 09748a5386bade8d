//! idledger as an OpenID Connect provider, against a relying party built on the
//! `openidconnect` crate: discovery, the code flow with PKCE for a user who signed in with
//! a passkey (a software authenticator over HTTP), ID token validation against the JWKS,
//! userinfo, refresh with rotation, RP-initiated logout, and what must be refused.

use crate::signin::{
    csrf_of, enrol_alex, enrol_with_key, passkey_sign_in_with, session_csrf_of, signin_world,
    signin_world_in, Visitor,
};
use crate::support::authenticator::SoftKey;
use crate::support::World;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreUserInfoClaims,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl,
    RefreshToken, Scope, TokenResponse,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const REDIRECT: &str = "http://localhost:9/callback";
const LOGGED_OUT: &str = "http://localhost:9/bye";

fn rp_http() -> openidconnect::reqwest::Client {
    openidconnect::reqwest::ClientBuilder::new()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn register_app(w: &World, kind: &str) -> Value {
    let (s, app) = w
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({
                "name": "Payroll",
                "redirect_uris": [REDIRECT],
                "post_logout_redirect_uris": [LOGGED_OUT],
                "type": kind,
                "domain_ids": [w.domain],
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{app}");
    app
}

/// A single-page app (a public client) answered at `redirect`.
async fn register_spa(w: &World, redirect: &str) -> Value {
    let (s, app) = w
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({
                "name": "Payroll SPA",
                "redirect_uris": [redirect],
                "type": "public",
                "domain_ids": [w.domain],
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{app}");
    app
}

/// Follows an authorization URL in `v` (a browser with or without a session) to the
/// redirect it ends at; answers that URL's query as pairs.
async fn authorize(
    v: &mut Visitor,
    url: &str,
) -> (StatusCode, Option<String>, Vec<(String, String)>) {
    let (s, body, location) = v.get(url).await;
    let query = location
        .as_deref()
        .and_then(|l| l.split_once('?'))
        .map(|(_, q)| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), urlencoding::decode(v).unwrap().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    let _ = body;
    (s, location, query)
}

/// A client as discovery makes it: authorization and token endpoints set, userinfo maybe.
type RelyingParty = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The library's client for an app, from the provider's discovery document (which must
/// satisfy the library), answering at `redirect`.
async fn relying_party(
    w: &World,
    http: &openidconnect::reqwest::Client,
    (client_id, secret): (&str, &str),
    redirect: &str,
) -> RelyingParty {
    let metadata =
        CoreProviderMetadata::discover_async(IssuerUrl::new(w.app.public.clone()).unwrap(), http)
            .await
            .unwrap();
    CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(client_id.to_owned()),
        Some(ClientSecret::new(secret.to_owned())),
    )
    .set_redirect_uri(RedirectUrl::new(redirect.into()).unwrap())
}

/// Adele enrolled with a passkey and signed in in `browser`, and a confidential app.
struct SignedInWithApp {
    key: SoftKey,
    browser: Visitor,
    app: Value,
    client_id: String,
    secret: String,
}

async fn signed_in_with_app(w: &World, adele: &str) -> SignedInWithApp {
    let mut key = SoftKey::new();
    let browser = enrol_with_key(w, adele, "adele.vance@contoso.onmicrosoft.com", &mut key).await;
    let app = register_app(w, "confidential").await;
    SignedInWithApp {
        key,
        browser,
        client_id: app["client_id"].as_str().unwrap().to_owned(),
        secret: app["client_secret"].as_str().unwrap().to_owned(),
        app,
    }
}

/// A confidential app's code exchange (Basic authentication, no PKCE) at `token_url`.
fn exchange(
    raw: &reqwest::Client,
    token_url: &str,
    (client_id, secret): (&str, &str),
    code: &str,
) -> reqwest::RequestBuilder {
    raw.post(token_url)
        .basic_auth(client_id, Some(secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
        ])
}

/// A confidential app's refresh (Basic authentication) at `token_url`.
fn refresh_with(
    raw: &reqwest::Client,
    token_url: &str,
    (client_id, secret): (&str, &str),
    token: &str,
) -> reqwest::RequestBuilder {
    raw.post(token_url)
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
}

/// [`refresh_with`] asking for `scope` (RFC 6749 §6).
fn refresh_for_scope(
    raw: &reqwest::Client,
    token_url: &str,
    (client_id, secret): (&str, &str),
    token: &str,
    scope: &str,
) -> reqwest::RequestBuilder {
    raw.post(token_url)
        .basic_auth(client_id, Some(secret))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", token),
            ("scope", scope),
        ])
}

/// A code for `scope` (URL-encoded) and `state`, from a browser signed in at `public`.
async fn code_for(
    browser: &mut Visitor,
    public: &str,
    client_id: &str,
    scope: &str,
    state: &str,
) -> String {
    let (s, _, q) = authorize(
        browser,
        &format!(
            "{public}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code&scope={scope}&state={state}"
        ),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        get(&q, "iss"),
        Some(public),
        "RFC 9207: the answer names its issuer"
    );
    get(&q, "code").unwrap().to_owned()
}

fn get<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relying_party_signs_a_passkey_user_in_and_every_rule_holds() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut key,
        mut browser,
        app,
        client_id,
        secret,
    } = signed_in_with_app(&w, &adele).await;
    assert!(!secret.contains('=') && secret.len() >= 43, "{secret}");
    // The secret is in that answer only.
    let (_, again) = w
        .admin(
            Method::GET,
            &format!("/v1/apps/{}", app["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(again.get("client_secret").is_none(), "{again}");

    // Discovery through the library: the document must satisfy it.
    let http = rp_http();
    let client = relying_party(&w, &http, (&client_id, &secret), REDIRECT).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .add_scope(Scope::new("offline_access".into()))
        .set_pkce_challenge(challenge)
        .url();
    // Adele's browser has her session: straight back with a code and the state.
    let (s, _, q) = authorize(&mut browser, url.as_str()).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(get(&q, "state"), Some(csrf.secret().as_str()));
    let code = get(&q, "code").unwrap().to_owned();
    let tokens = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let verify = client
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EcdsaP256Sha256]);
    let id_token = tokens.id_token().unwrap();
    let claims = id_token.claims(&verify, &nonce).unwrap();
    assert_eq!(claims.subject().as_str(), adele);
    assert_eq!(
        claims.preferred_username().unwrap().as_str(),
        "adele.vance@contoso.onmicrosoft.com"
    );
    let amr: Vec<String> = claims
        .auth_method_refs()
        .unwrap()
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(amr, ["hwk", "mfa"]);
    assert_eq!(claims.auth_context_ref().unwrap().as_str(), "passwordless");
    assert!(claims.auth_time().is_some());
    // userinfo with the access token.
    let info: CoreUserInfoClaims = client
        .user_info(tokens.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(info.subject().as_str(), adele);
    // RFC 9068: the access token says what it is, so that neither kind passes for the
    // other; an ID token does not open userinfo.
    let access = tokens.access_token().secret();
    assert_eq!(header_of(access)["typ"], "at+jwt");
    assert_eq!(header_of(&id_token.to_string())["typ"], "JWT");
    assert_eq!(claims_of(access)["client_id"], json!(client_id));
    let raw = reqwest::Client::new();
    let refused = raw
        .get(format!("{}/userinfo", w.app.public))
        .bearer_auth(id_token.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    // Refresh rotates; the old refresh token again revokes the family.
    let first = tokens.refresh_token().unwrap().clone();
    let second = client
        .exchange_refresh_token(&first)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    let second = second.refresh_token().unwrap().clone();
    assert_ne!(first.secret(), second.secret());
    let replay = client
        .exchange_refresh_token(&first)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(
        format!("{replay:?}").contains("invalid_grant"),
        "{replay:?}"
    );
    let family_gone = client
        .exchange_refresh_token(&second)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(
        format!("{family_gone:?}").contains("invalid_grant"),
        "{family_gone:?}"
    );

    // The code is spent: a second exchange is refused.
    let (_, verifier2) = PkceCodeChallenge::new_random_sha256();
    let reused = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(verifier2)
        .request_async(&http)
        .await;
    assert!(
        format!("{reused:?}").contains("invalid_grant"),
        "{reused:?}"
    );

    // Token endpoint refusals as RFC 6749 names them.
    let token_url = format!("{}/token", w.app.public);
    let raw = reqwest::Client::new();
    let r = raw
        .post(&token_url)
        .basic_auth(&client_id, Some("wrong"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", "x"),
            ("redirect_uri", REDIRECT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");

    // A fresh code, exchanged with the wrong verifier, then with the wrong redirect URI.
    for (verifier, redirect) in [
        ("wrong-verifier-wrong-verifier-wrong-verifier", REDIRECT),
        ("", "http://localhost:9/other"),
    ] {
        let (challenge, good) = PkceCodeChallenge::new_random_sha256();
        let (url, _, _) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .url();
        let (_, _, q) = authorize(&mut browser, url.as_str()).await;
        let code = get(&q, "code").unwrap();
        let verifier = if verifier.is_empty() {
            good.secret().as_str()
        } else {
            verifier
        };
        let r = raw
            .post(&token_url)
            .basic_auth(&client_id, Some(&secret))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    }

    // Unknown client and unregistered redirect URI: a 400 page, never a redirect.
    for bad in [
        format!("{}/authorize?client_id=nobody&redirect_uri={REDIRECT}&response_type=code&scope=openid", w.app.public),
        format!("{}/authorize?client_id={client_id}&redirect_uri=https://evil.example/cb&response_type=code&scope=openid", w.app.public),
    ] {
        let (s, location, _) = authorize(&mut browser, &bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert!(location.is_none());
    }

    // A browser without a session goes through /signin and comes back with a code.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge)
        .url();
    let mut stranger = Visitor::new();
    let (s, location, _) = authorize(&mut stranger, url.as_str()).await;
    assert_eq!(
        (s, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/signin"))
    );
    let handle = key.user_handle.clone();
    let (s, b) = passkey_sign_in_with(&w, &mut stranger, &mut key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["next"], "/authorize/resume");
    let (s, _, q) = authorize(&mut stranger, &format!("{}/authorize/resume", w.app.public)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(get(&q, "state"), Some(csrf.secret().as_str()));
    let tokens = client
        .exchange_code(AuthorizationCode::new(get(&q, "code").unwrap().into()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    tokens.id_token().unwrap().claims(&verify, &nonce).unwrap();

    // prompt=none without a session: login_required at the app.
    let mut nobody = Visitor::new();
    let (_, _, q) = authorize(
        &mut nobody,
        &format!("{}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&prompt=none&state=s1", w.app.public),
    )
    .await;
    assert_eq!(get(&q, "error"), Some("login_required"));
    assert_eq!(get(&q, "state"), Some("s1"));

    // A retired key: the JWKS keeps it while its tokens may live, so the earlier ID token
    // still verifies after a rotation.
    let (s, _) = w
        .admin(Method::POST, "/v1/provider/signing-keys", None)
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let jwks: Value = raw
        .get(format!("{}/jwks.json", w.app.public))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    let rotated = relying_party(&w, &http, (&client_id, &secret), REDIRECT).await;
    let verify_rotated = rotated
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EcdsaP256Sha256]);
    tokens
        .id_token()
        .unwrap()
        .claims(&verify_rotated, &nonce)
        .unwrap();

    // A hint from this app naming another app: refused, and nothing ends.
    let hint = tokens.id_token().unwrap().to_string();
    let (s, location, _) = authorize(
        &mut stranger,
        &format!(
            "{}/end_session?id_token_hint={hint}&client_id=another-app&post_logout_redirect_uri={}",
            w.app.public,
            urlencoding::encode(LOGGED_OUT)
        ),
    )
    .await;
    assert_eq!((s, location), (StatusCode::BAD_REQUEST, None));
    let (s, _, _) = stranger.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::OK, "still signed in");

    // RP-initiated logout back to the registered URI, with the state; the session ends.
    // Sent as a form from the app's page (RP-Initiated Logout 1.0 §2 lets an app POST
    // it): the browser keeps its `Lax` session cookie back on a cross-site POST, so the
    // answer is the same request as a GET, which carries it; nothing is cleared before.
    let end = format!("{}/end_session", w.app.public);
    let cross_site = |form: Vec<(&'static str, String)>| {
        let end = end.clone();
        async move {
            let r = rp_http().post(&end).form(&form).send().await.unwrap();
            let location = r
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned());
            (r.status(), r.headers().contains_key("set-cookie"), location)
        }
    };
    let (s, sets_cookie, location) = cross_site(vec![
        ("id_token_hint", hint.clone()),
        ("post_logout_redirect_uri", LOGGED_OUT.into()),
        ("state", "bye".into()),
    ])
    .await;
    assert_eq!((s, sets_cookie), (StatusCode::SEE_OTHER, false));
    let again = location.unwrap();
    assert!(again.starts_with("/end_session?id_token_hint="), "{again}");
    // A confirmation posted from elsewhere (no session with it) clears nothing either.
    let (s, sets_cookie, _) = cross_site(vec![("csrf", "x".into())]).await;
    assert_eq!((s, sets_cookie), (StatusCode::OK, false));
    let (s, _, _) = stranger.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::OK, "still signed in");
    // Nor does the hint sent by anyone but the browser holding its session (an app's
    // server, a script that read the token): that browser's user stays signed in.
    let elsewhere = rp_http()
        .get(format!("{}{again}", w.app.public))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::SEE_OTHER);
    let (s, _, _) = stranger.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::OK, "signed out by another's request");
    let (s, location, q) = authorize(&mut stranger, &format!("{}{again}", w.app.public)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(location.unwrap().starts_with(LOGGED_OUT));
    assert_eq!(get(&q, "state"), Some("bye"));
    let (s, _, to) = stranger.get(&format!("{}/me", w.app.public)).await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/signin")));

    // Deactivated mid-session: refresh refused, userinfo refused, and on the record.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, _, _) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("offline_access".into()))
        .set_pkce_challenge(challenge)
        .url();
    let (_, _, q) = authorize(&mut browser, url.as_str()).await;
    let tokens = client
        .exchange_code(AuthorizationCode::new(get(&q, "code").unwrap().into()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let (s, _) = w
        .admin(Method::POST, &format!("/v1/users/{adele}/deactivate"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let refused = client
        .exchange_refresh_token(&RefreshToken::new(
            tokens.refresh_token().unwrap().secret().clone(),
        ))
        .unwrap()
        .request_async(&http)
        .await;
    assert!(
        format!("{refused:?}").contains("invalid_grant"),
        "{refused:?}"
    );
    let info: Result<CoreUserInfoClaims, _> = client
        .user_info(tokens.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await;
    assert!(info.is_err());
    let (_, events) = w
        .admin(
            Method::GET,
            &format!("/v1/users/{adele}/events?limit=1000"),
            None,
        )
        .await;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"AppTokensIssued") && kinds.contains(&"AppTokenRefused"),
        "{kinds:?}"
    );

    // The sign-ins export names the app in its token rows.
    let (s, csv) = w
        .admin(Method::GET, "/v1/audit/exports/sign-ins?format=csv", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let csv = csv.as_str().unwrap();
    let app_id = app["id"].as_str().unwrap();
    assert!(
        csv.lines()
            .any(|l| l.contains("tokens issued") && l.contains(app_id)),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l.contains(",refused,") && l.contains(app_id)),
        "{csv}"
    );
}

/// A relying party's callback on loopback: answers 200 to whatever it is sent, so the
/// browser settles there and the test reads the code from its address.
pub(crate) async fn callback_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route(
            "/callback",
            axum::routing::get(|| async { axum::response::Html("<h1>Payroll: signed in</h1>") })
                // An answer in `response_mode=form_post`: shows what it was sent.
                .post(
                    |axum::Form(fields): axum::Form<Vec<(String, String)>>| async move {
                        let shown: String = fields
                            .iter()
                            .filter(|(k, v)| {
                                k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                                    && !v.contains(['<', '>', '&', '"'])
                            })
                            .map(|(k, v)| format!("<p id=\"{k}\">{v}</p>"))
                            .collect();
                        axum::response::Html(format!("<h1>Payroll: posted</h1>{shown}"))
                    },
                ),
        )
        .route(
            "/bye",
            axum::routing::get(|| async { axum::response::Html("<h1>Payroll: signed out</h1>") }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://localhost:{port}/callback")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_registered_in_the_console_signs_a_passkey_user_in_through_chromium() {
    let (w, adele, _) = signin_world().await;
    let callback = callback_server().await;
    let b = crate::support::Browser::start().await;

    // An admin registers the app on the console's Apps page (ES256, the default).
    b.sign_in(&w.app.public, &w.app.admin).await;
    b.goto(&format!("{}/console/apps", w.app.public)).await;
    b.wait_text("#apps", "No apps yet").await;
    b.fill("#a-name", "Payroll").await;
    b.fill("#a-redirects", &callback).await;
    assert!(b.present("#a-domains input[type=checkbox]:checked").await);
    b.click("#add-app button[type=submit]").await;
    b.wait_text("#app-secret", "never shown again").await;
    let client_id = b.css("#new-client-id").await.text().await.unwrap();
    let secret = b.css("#new-client-secret").await.text().await.unwrap();
    b.wait_text("#apps", "Payroll").await;
    let keys = b.wait_text("#signing-keys", "ES256").await;
    assert!(!keys.contains("RS256"), "{keys}");
    // Copied, the secret is hidden again (and kept out of the screenshot).
    b.click("#hide-secret").await;
    assert!(
        !b.present("#new-client-secret").await,
        "the secret stays shown"
    );
    // The app's library verifies RSA only, and it has a page to land on after signing
    // out: the admin edits the app. Only what changed is sent; the RS256 key is published
    // before the answer.
    b.click("#apps button[data-edit]").await;
    let shown = b.css("#e-redirects").await.prop("value").await.unwrap();
    assert_eq!(shown.as_deref(), Some(callback.as_str()));
    let bye = callback.replace("/callback", "/bye");
    b.fill("#e-logout", &bye).await;
    b.css("#e-alg option[value=RS256]")
        .await
        .click()
        .await
        .unwrap();
    b.click("#edit-app button[type=submit]").await;
    b.wait_text("#flash", "Saved “Payroll”").await;
    let keys = b.wait_text("#signing-keys", "RS256").await;
    assert!(keys.contains("ES256"), "{keys}");
    let (_, apps) = w.admin(Method::GET, "/v1/apps", None).await;
    let app = &apps["items"][0];
    assert_eq!(app["id_token_signed_response_alg"], "RS256", "{app}");
    assert_eq!(app["post_logout_redirect_uris"], json!([bye]), "{app}");
    assert_eq!(app["redirect_uris"], json!([callback]), "{app}");
    let (_, events) = w.admin(Method::GET, "/v1/events?limit=1000", None).await;
    let changes: Vec<&Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "AppChanged")
        .collect();
    assert_eq!(changes.len(), 1, "{changes:?}");
    b.client
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .unwrap();
    b.screenshot("console-apps").await;
    // The page's secret is the one the API answered with: it opens the token endpoint.
    assert!(secret.len() >= 43, "{secret}");

    // Adele enrols a passkey from her invite, then signs out.
    let authenticator = b.add_authenticator("usb").await;
    crate::signin::invite(&w, &adele).await;
    b.goto(&crate::signin::outbox_link(
        &w,
        "adele.vance@contoso.onmicrosoft.com",
    ))
    .await;
    b.wait_text("h1", "Adele Vance").await;
    b.fill("#passkey-name", "Hideez Key").await;
    b.click("button[data-webauthn=register]").await;
    b.wait_text("main", "Recent sign-ins").await;
    b.click("form[action='/signout'] button").await;
    b.wait_text("h1", "Sign in").await;

    // The relying party sends her browser to idledger; she signs in with the passkey and
    // lands back at the app with a code.
    let http = rp_http();
    let client = relying_party(&w, &http, (client_id.trim(), secret.trim()), &callback).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    b.goto(url.as_str()).await;
    b.wait_text("h1", "Sign in").await;
    b.click("button[data-webauthn=signin]").await;
    b.wait_text("h1", "Payroll: signed in").await;
    let landed = b.url().await;
    assert!(landed.starts_with(&callback), "{landed}");
    let query: Vec<(String, String)> = landed
        .split_once('?')
        .unwrap()
        .1
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), urlencoding::decode(v).unwrap().into_owned()))
        .collect();
    assert_eq!(get(&query, "state"), Some(csrf.secret().as_str()));
    let tokens = client
        .exchange_code(AuthorizationCode::new(get(&query, "code").unwrap().into()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let verify = client
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256]);
    let claims = tokens.id_token().unwrap().claims(&verify, &nonce).unwrap();
    assert_eq!(claims.subject().as_str(), adele);
    assert_eq!(
        claims.preferred_username().unwrap().as_str(),
        "adele.vance@contoso.onmicrosoft.com"
    );
    let amr: Vec<String> = claims
        .auth_method_refs()
        .unwrap()
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(amr, ["hwk", "mfa"]);
    let info: CoreUserInfoClaims = client
        .user_info(tokens.access_token().clone(), None)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap();
    assert_eq!(info.subject().as_str(), adele);
    assert_eq!(b.authenticator_credentials(&authenticator).await.len(), 1);

    // A single-page app (a public client) does the exchange from its own page, across
    // origins: the token endpoint and userinfo let its origin read their answers.
    let spa = register_spa(&w, &callback).await;
    let spa_id = spa["client_id"].as_str().unwrap();
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    b.goto(&format!(
        "{}/authorize?client_id={spa_id}&redirect_uri={}&response_type=code&scope=openid%20profile&code_challenge={}&code_challenge_method=S256",
        w.app.public,
        urlencoding::encode(&callback),
        challenge.as_str()
    ))
    .await;
    b.wait_text("h1", "Payroll: signed in").await;
    let landed = b.url().await;
    let code = landed
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let exchange_in_page = r#"
        const [token, userinfo, form, done] = arguments;
        (async () => {
            const t = await fetch(token, { method: "POST", body: new URLSearchParams(form) });
            const tokens = await t.json();
            const u = await fetch(userinfo, {
                headers: { Authorization: "Bearer " + tokens.access_token },
            });
            done({ token: t.status, userinfo: u.status, sub: (await u.json()).sub });
        })().catch((e) => done({ error: String(e) }));
    "#;
    let args = |code: &str| {
        vec![
            json!(format!("{}/token", w.app.public)),
            json!(format!("{}/userinfo", w.app.public)),
            json!({
                "grant_type": "authorization_code",
                "code": urlencoding::decode(code).unwrap(),
                "redirect_uri": &callback,
                "client_id": spa_id,
                "code_verifier": verifier.secret(),
            }),
        ]
    };
    let answered = b
        .client
        .execute_async(exchange_in_page, args(code))
        .await
        .unwrap();
    assert_eq!(
        answered,
        json!({"token": 200, "userinfo": 200, "sub": adele}),
        "the app's page could not read the answers"
    );
    // The same app asking for its answer by form (as ASP.NET Core's handler does): the
    // browser posts the code, the state and the issuer to the redirect URI, and the code
    // is as good as one in the query.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    b.goto(&format!(
        "{}/authorize?client_id={spa_id}&redirect_uri={}&response_type=code&scope=openid&code_challenge={}&code_challenge_method=S256&response_mode=form_post&state=posted",
        w.app.public,
        urlencoding::encode(&callback),
        challenge.as_str()
    ))
    .await;
    b.wait_text("h1", "Payroll: posted").await;
    assert_eq!(b.url().await, callback, "the code stays out of the address");
    assert_eq!(b.css("#state").await.text().await.unwrap(), "posted");
    assert_eq!(b.css("#iss").await.text().await.unwrap(), w.app.public);
    let posted = b.css("#code").await.text().await.unwrap();
    let mut form = args(&posted);
    form[2]["code_verifier"] = json!(verifier.secret());
    let answered = b
        .client
        .execute_async(exchange_in_page, form)
        .await
        .unwrap();
    assert_eq!(
        answered,
        json!({"token": 200, "userinfo": 200, "sub": adele}),
        "the posted code"
    );
    // The same script from an origin no app registered reads nothing (same server, other
    // host name: another origin to the browser).
    b.goto(&callback.replace("localhost", "127.0.0.1")).await;
    b.wait_text("h1", "Payroll: signed in").await;
    let foreign = b
        .client
        .execute_async(exchange_in_page, args("any"))
        .await
        .unwrap();
    assert!(
        foreign["error"]
            .as_str()
            .is_some_and(|e| e.contains("fetch")),
        "{foreign}"
    );

    // The app asks to sign her out without an ID token: she confirms, and the browser
    // really goes back to the app (the form's redirect leaves the site; the page's policy
    // must let it).
    b.goto(&format!(
        "{}/end_session?client_id={}&post_logout_redirect_uri={}&state=bye",
        w.app.public,
        client_id.trim(),
        urlencoding::encode(&bye)
    ))
    .await;
    b.wait_text("h1", "Sign out of idledger?").await;
    b.click("form[action='/end_session'] button").await;
    b.wait_text("h1", "Payroll: signed out").await;
    assert_eq!(b.url().await, format!("{bye}?state=bye"));

    // The console shows the app's secret once only: a reload shows the list, no secret.
    b.goto(&format!("{}/console/apps", w.app.public)).await;
    b.wait_text("#apps", "Payroll").await;
    let page = b.css("main").await.text().await.unwrap();
    assert!(!page.contains(secret.trim()), "the secret shows again");

    // An auditor sees the apps and keys, and no control that changes them.
    let auditor = w.app.token("auditor", &[]).await;
    b.click("form.sign-out button").await;
    b.css("#token").await;
    b.sign_in(&w.app.public, &auditor).await;
    b.goto(&format!("{}/console/apps", w.app.public)).await;
    b.wait_text("#apps", "Payroll").await;
    b.wait_text("#signing-keys", "RS256").await;
    for control in ["#add-app", "#rotate-key", "[data-remove]", "[data-secret]"] {
        assert!(!b.present(control).await, "an auditor sees {control}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_expire_keys_rotate_on_schedule_and_a_retired_key_stops_verifying_after_its_overlap()
{
    // Everything short: codes live 1 s, tokens 3 s, keys are replaced every 5 s.
    let (w, adele, _) = crate::signin::signin_world_tuned(|c| {
        c.oidc_code_ttl_secs = 1;
        c.oidc_token_ttl_secs = 3;
        c.oidc_clock_skew_secs = 0;
        c.signing_key_rotation_days = 5.0 / 86_400.0;
    })
    .await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let first_kid = {
        let (_, keys) = w
            .admin(Method::GET, "/v1/provider/signing-keys", None)
            .await;
        keys["items"][0]["kid"].as_str().unwrap().to_owned()
    };
    let http = rp_http();
    let discover = || relying_party(&w, &http, (&client_id, &secret), REDIRECT);
    let client = discover().await;
    let code_for = async |browser: &mut Visitor| {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, _, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .url();
        let (_, _, q) = authorize(browser, url.as_str()).await;
        (get(&q, "code").unwrap().to_owned(), verifier, nonce)
    };

    // A code not exchanged within its life is refused, and the refusal is on record.
    let (code, verifier, _) = code_for(&mut browser).await;
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let late = reqwest::Client::new()
        .post(format!("{}/token", w.app.public))
        .basic_auth(&client_id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.secret().as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(late.status(), StatusCode::BAD_REQUEST);
    let body: Value = late.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{body}"
    );

    // In time, it works; its ID token carries the first key's id.
    let (code, verifier, nonce) = code_for(&mut browser).await;
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let id_token = tokens.id_token().unwrap().clone();
    let issued = chrono::Utc::now();
    let allowed = vec![CoreJwsSigningAlgorithm::EcdsaP256Sha256];
    id_token
        .claims(
            &client.id_token_verifier().set_allowed_algs(allowed.clone()),
            &nonce,
        )
        .unwrap();
    assert!(id_token.to_string().contains('.'));

    // The schedule replaces the key without anyone asking: its successor is published a
    // quarter of the rotation (here 1.25 s) before it signs, and the old one signs until
    // then and is published for its tokens' life after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut staged_seen = false;
    let jwks = async || -> Value {
        let keys = reqwest::get(format!("{}/jwks.json", w.app.public)).await;
        keys.unwrap().json().await.unwrap()
    };
    let retired_until = loop {
        let (_, keys) = w
            .admin(Method::GET, "/v1/provider/signing-keys", None)
            .await;
        if let Some(next) = keys["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] != first_kid.as_str() && k["alg"] == "ES256")
        {
            let time = |k: &str| {
                chrono::DateTime::parse_from_rfc3339(next[k].as_str().unwrap())
                    .unwrap()
                    .with_timezone(&chrono::Utc)
            };
            let ahead = time("signs_from") - time("added_at");
            assert!(
                (1000..=1300).contains(&ahead.num_milliseconds()),
                "published {ahead} ahead: {next}"
            );
            // Still ahead of its time: published, and the first key signs meanwhile.
            let jwks = jwks().await;
            if chrono::Utc::now() < time("signs_from") && next["status"] == "next" {
                staged_seen = true;
                let published = |kid: &Value| {
                    jwks["keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["kid"] == *kid)
                };
                assert!(
                    published(&next["kid"]) && published(&json!(first_kid)),
                    "{jwks}"
                );
            }
        }
        let old = keys["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == first_kid.as_str())
            .unwrap()
            .clone();
        if old["status"] == "retired" {
            break chrono::DateTime::parse_from_rfc3339(old["verify_until"].as_str().unwrap())
                .unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled rotation: {keys}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    // Seen in the window on most runs; a loaded machine may poll past it (the
    // projection's test holds what JWKS publishes when).
    eprintln!("successor seen published ahead of its time: {staged_seen}");
    let (_, events) = w.admin(Method::GET, "/v1/events?limit=1000", None).await;
    for kind in ["SigningKeyRetired", "SigningKeyHandover"] {
        assert!(
            events["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["kind"] == kind && e["actor"].to_string().contains("system")),
            "the schedule's rotation is an event by the system: {kind}"
        );
    }

    // After the overlap, the JWKS no longer has the key, and a relying party that fetches it
    // anew cannot verify the token even at a moment when it had not expired.
    let wait = (retired_until.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + std::time::Duration::from_millis(200)).await;
    let jwks = jwks().await;
    assert!(
        !jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == first_kid.as_str()),
        "{jwks}"
    );
    let fresh = discover().await;
    let at_issue = move || issued;
    // The control: with the JWKS fetched before the rotation, the same check passes.
    id_token
        .claims(
            &client
                .id_token_verifier()
                .set_allowed_algs(allowed.clone())
                .set_time_fn(at_issue),
            &nonce,
        )
        .unwrap();
    let refused = id_token.claims(
        &fresh
            .id_token_verifier()
            .set_allowed_algs(allowed)
            .set_time_fn(at_issue),
        &nonce,
    );
    assert!(
        refused.is_err(),
        "a token of a key past its overlap verified"
    );
    // As a sign-out's hint, though, an ID token of a retired key still names its app and
    // session (RP-Initiated Logout 1.0 §2): the browser is sent back where the app asked.
    let (s, _, to) = browser
        .get(&format!(
            "{}/end_session?id_token_hint={}&post_logout_redirect_uri={}&state=bye",
            w.app.public,
            id_token,
            urlencoding::encode(LOGGED_OUT)
        ))
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER, "sent to {to:?}");
    assert!(to.unwrap().starts_with(LOGGED_OUT));
}

/// The header of a JWT.
fn header_of(jwt: &str) -> Value {
    jwt_part(jwt, 0)
}

/// The claims of a JWT, read without checking its signature (the library-based tests do
/// that); enough to see what a token carries.
fn claims_of(jwt: &str) -> Value {
    jwt_part(jwt, 1)
}

fn jwt_part(jwt: &str, n: usize) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(n).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Refresh families live in the log: a server restored from a backup of the one that
/// issued them (a restart, or a standby taking over) refreshes their tokens with the same
/// grant, and still knows a spent token when it comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_families_outlive_the_server_that_issued_them() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let http = rp_http();
    let client = relying_party(&w, &http, (&client_id, &secret), REDIRECT).await;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, _, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("offline_access".into()))
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("payroll.admin".into()))
        .set_pkce_challenge(challenge)
        .url();
    let (_, _, q) = authorize(&mut browser, url.as_str()).await;
    let tokens = client
        .exchange_code(AuthorizationCode::new(get(&q, "code").unwrap().into()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let first_id_token = claims_of(&tokens.id_token().unwrap().to_string());
    assert_eq!(first_id_token["nonce"], nonce.secret().as_str());
    // Only known scopes are granted, once each.
    assert_eq!(
        tokens
            .scopes()
            .map(|s| s.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        Some(vec![
            "openid".into(),
            "profile".into(),
            "offline_access".into()
        ])
    );
    // A nonce longer than 255 characters is refused at /authorize (it would be recorded
    // with every refresh).
    let (long, _) = PkceCodeChallenge::new_random_sha256();
    let (url, _, _) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            || Nonce::new("n".repeat(256)),
        )
        .set_pkce_challenge(long)
        .url();
    let (_, _, q) = authorize(&mut browser, url.as_str()).await;
    assert_eq!(get(&q, "error"), Some("invalid_request"), "{q:?}");
    let first = tokens.refresh_token().unwrap().clone();
    let second = client
        .exchange_refresh_token(&first)
        .unwrap()
        .request_async(&http)
        .await
        .unwrap()
        .refresh_token()
        .unwrap()
        .clone();

    // A backup taken now, restored and served with the same master key.
    let dir = tempfile::tempdir().unwrap();
    let (file, restored) = (dir.path().join("b.backup"), dir.path().join("restored"));
    let (ok, _, err) = crate::backup::run_with_token(
        &w.app.admin,
        &[
            "backup",
            "--server",
            &w.app.url,
            "--out",
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = crate::backup::restore(&file, &restored, &[]);
    assert!(ok, "{err}");
    std::fs::copy(
        w.app.dir.path().join("master.key"),
        restored.join("master.key"),
    )
    .unwrap();
    std::fs::write(restored.join("admin.token"), &w.app.admin).unwrap();
    let serve = crate::support::Serve::start(&restored, None).await;
    let refresh = |token: String| {
        let (http, url) = (serve.http.clone(), format!("{}/token", serve.url));
        let (id, secret) = (client_id.clone(), secret.clone());
        async move {
            let r = http
                .post(url)
                .basic_auth(id, Some(secret))
                .form(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", token.as_str()),
                ])
                .send()
                .await
                .unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };

    // The family's current token refreshes there, and the tokens carry the same grant.
    let (s, third) = refresh(second.secret().clone()).await;
    assert_eq!(s, StatusCode::OK, "{third}");
    let claims = claims_of(third["id_token"].as_str().unwrap());
    assert_eq!(claims["sub"], adele.as_str());
    // The sign-in's nonce was the first ID token's; a refresh is no sign-in (Core §12.2).
    assert!(claims.get("nonce").is_none(), "{claims}");
    assert_eq!(claims["auth_time"], first_id_token["auth_time"]);
    assert_eq!(claims["amr"], first_id_token["amr"]);
    assert_eq!(
        claims["preferred_username"],
        first_id_token["preferred_username"]
    );
    let scope = third["scope"].as_str().unwrap();
    assert!(
        scope.contains("profile") && scope.contains("offline_access"),
        "{scope}"
    );
    let third = third["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(third, *second.secret());

    // A token spent before the backup is known there as spent: the family ends.
    let (s, reused) = refresh(first.secret().clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{reused}");
    assert_eq!(reused["error"], "invalid_grant");
    let (s, gone) = refresh(third).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{gone}");
    assert_eq!(gone["error"], "invalid_grant");
    // Made-up tokens, of a real user's shape or not, are unknown and change nothing.
    for junk in ["", "x", &"A".repeat(96), &"A".repeat(5000)] {
        let (s, answer) = refresh(junk.to_owned()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{answer}");
    }
}

/// `prompt=login` and `max_age` with a live session, and sign-out requests that do not
/// prove they are the user's: the user is asked each time, never stranded or overruled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_session_signs_in_again_when_asked_and_is_asked_before_a_sign_out() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut key,
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let http = rp_http();
    let client = relying_party(&w, &http, (&client_id, &secret), REDIRECT).await;
    let verify = client
        .id_token_verifier()
        .set_allowed_algs(vec![CoreJwsSigningAlgorithm::EcdsaP256Sha256]);
    let request = |extra: &str| {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, _, nonce) = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge)
            .url();
        (format!("{url}&{extra}"), verifier, nonce)
    };

    // prompt=none with anything else is a contradiction: invalid_request, at the app.
    let (url, _, _) = request("prompt=none%20login");
    let (s, _, q) = authorize(&mut browser, &url).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(get(&q, "error"), Some("invalid_request"), "{q:?}");

    // The request as a form (OIDC Core §3.1.2.1: POST too) is answered with the same
    // request as a GET, which the signed-in browser follows to a code.
    let (url, _, _) = request("");
    let pairs: Vec<(String, String)> = url
        .split_once('?')
        .unwrap()
        .1
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), urlencoding::decode(v).unwrap().into_owned()))
        .collect();
    let form: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (s, _, location) = browser
        .post_form(&format!("{}/authorize", w.app.public), &form)
        .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let again = location.unwrap();
    assert!(again.starts_with("/authorize?"), "{again}");
    let (s, location, q) = authorize(&mut browser, &format!("{}{again}", w.app.public)).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(location.unwrap().starts_with(REDIRECT));
    assert!(get(&q, "code").is_some(), "{q:?}");

    // prompt=login: to the sign-in page, which asks (not "/me"), then back with a code
    // whose auth_time is the new sign-in.
    let (url, verifier, nonce) = request("prompt=login");
    let asked_at = chrono::Utc::now().timestamp();
    let (s, location, _) = authorize(&mut browser, &url).await;
    assert_eq!(
        (s, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/signin"))
    );
    let (s, page, to) = browser.get(&format!("{}/signin", w.app.public)).await;
    assert_eq!(s, StatusCode::OK, "sent on to {to:?}");
    assert!(page.contains("Sign in with a passkey"), "{page}");
    // Still signed in while asked to sign in again: the page offers "Sign out" too.
    assert!(page.contains(">Sign out</button>"), "{page}");
    let handle = key.user_handle.clone();
    let (s, b) = passkey_sign_in_with(&w, &mut browser, &mut key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["next"], "/authorize/resume");
    let (_, _, q) = authorize(&mut browser, &format!("{}/authorize/resume", w.app.public)).await;
    let tokens = client
        .exchange_code(AuthorizationCode::new(get(&q, "code").unwrap().into()))
        .unwrap()
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap();
    let claims = tokens.id_token().unwrap().claims(&verify, &nonce).unwrap();
    assert!(claims.auth_time().unwrap().timestamp() >= asked_at);
    // Without such a request waiting, a signed-in browser goes on to its page.
    let (s, _, to) = browser.get(&format!("{}/signin", w.app.public)).await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/me")));

    // An age beyond the calendar asks for nothing more than a session.
    for age in ["9000000000000", "9000000000000000000"] {
        let (url, _, _) = request(&format!("max_age={age}"));
        let (s, _, q) = authorize(&mut browser, &url).await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        assert!(get(&q, "code").is_some(), "max_age={age}: {q:?}");
    }

    // A sign-out with a hint this provider did not issue sends the browser nowhere
    // (RP-Initiated Logout 1.0 §4), signed in or not.
    let made_up = format!(
        "{}/end_session?id_token_hint=eyJhbGciOiJFUzI1NiIsImtpZCI6IngifQ.e30.c2ln&client_id={client_id}&post_logout_redirect_uri={}&state=bye",
        w.app.public,
        urlencoding::encode(LOGGED_OUT)
    );
    let stranger_asks = rp_http().get(&made_up).send().await.unwrap();
    assert_eq!(stranger_asks.status(), StatusCode::OK);
    assert!(stranger_asks.headers().get("location").is_none());
    let (s, page, _) = browser.get(&made_up).await;
    assert_eq!(s, StatusCode::OK);
    assert!(page.contains("Sign out of idledger?"), "{page}");
    assert!(!page.contains("post_logout_redirect_uri"), "{page}");
    let (s, _, _) = browser.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::OK, "still signed in");

    // A sign-out with no ID token (any site can send the browser here) asks first.
    let logout = format!(
        "{}/end_session?client_id={client_id}&post_logout_redirect_uri={}&state=bye",
        w.app.public,
        urlencoding::encode(LOGGED_OUT)
    );
    let (s, page, _) = browser.get(&logout).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        page.contains("Sign out of idledger?") && page.contains("Payroll asks"),
        "{page}"
    );
    let (s, _, _) = browser.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::OK, "still signed in");
    let end = format!("{}/end_session", w.app.public);
    let carried = [
        ("client_id", client_id.as_str()),
        ("post_logout_redirect_uri", LOGGED_OUT),
        ("state", "bye"),
    ];
    let mut forged = carried.to_vec();
    forged.push(("csrf", "not-the-token"));
    let (s, refused, _) = browser.post_form(&end, &forged).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        refused.contains("role=\"alert\"") && refused.contains("Nothing was done"),
        "{refused}"
    );
    let (s, _, _) = browser.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::OK, "a forged confirmation ends nothing");
    let csrf = csrf_of(&page);
    let mut confirmed = carried.to_vec();
    confirmed.push(("csrf", csrf.as_str()));
    let (s, _, location) = browser.post_form(&end, &confirmed).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(
        location.as_deref(),
        Some(format!("{LOGGED_OUT}?state=bye").as_str())
    );
    let (s, _, to) = browser.get(&format!("{}/me", w.app.public)).await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/signin")));
}

/// An app signing its user out revokes its refresh token (RFC 7009): the family ends, on
/// the record, and the access tokens of that grant with it; only the app's own token of
/// this server's ends anything, and every other token is answered as the RFC says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_revokes_its_refresh_token_and_the_access_tokens_of_its_grant_end() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let public = &w.app.public;
    let (token_url, revoke_url) = (format!("{public}/token"), format!("{public}/revoke"));
    let discovery: Value = reqwest::get(format!("{public}/.well-known/openid-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["revocation_endpoint"], json!(revoke_url));
    let mut signed_in = Vec::new();
    for (state, scope) in [
        ("r0", "openid%20offline_access"),
        ("r1", "openid%20offline_access"),
        ("r2", "openid"),
    ] {
        let code = code_for(&mut browser, public, &client_id, scope, state).await;
        let r = exchange(&raw, &token_url, (&client_id, &secret), &code)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        signed_in.push(r.json::<Value>().await.unwrap());
    }
    let (kept, ended, plain) = (&signed_in[0], &signed_in[1], &signed_in[2]);
    let revoke = |token: &str, secret: &str| {
        raw.post(&revoke_url)
            .basic_auth(&client_id, Some(secret))
            .form(&[("token", token)])
            .send()
    };
    let (refresh_token, access) = (
        ended["refresh_token"].as_str().unwrap(),
        ended["access_token"].as_str().unwrap(),
    );
    let userinfo = format!("{public}/userinfo");
    let reads = |access: &str| raw.get(&userinfo).bearer_auth(access).send();
    let refreshes =
        |token: &str| refresh_with(&raw, &token_url, (&client_id, &secret), token).send();
    // Without the app's secret: nothing is revoked.
    let r = revoke(access, "not-the-secret").await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(reads(access).await.unwrap().status(), StatusCode::OK);
    // The access token first (as oidc-client-ts revokes): its grant ends, refresh token
    // and all. Then the refresh token (gone already), the access token again, a made-up
    // token: 200 each time.
    for token in [access, refresh_token, access, "not-a-token-of-ours"] {
        let r = revoke(token, &secret).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{token}");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    let r = refreshes(refresh_token).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_grant");
    assert_eq!(
        reads(access).await.unwrap().status(),
        StatusCode::UNAUTHORIZED,
        "the access token of a revoked grant"
    );
    // A grant without a refresh token: its access token is not revoked one by one.
    let r = revoke(plain["access_token"].as_str().unwrap(), &secret)
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "unsupported_token_type"
    );
    // The other sign-in's grant lives on.
    assert_eq!(
        reads(kept["access_token"].as_str().unwrap())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let kept_refresh = kept["refresh_token"].as_str().unwrap();
    // Refresh tokens presented without the app's secret: the revoked one is nobody's
    // news, the live one is in her history (recorded after the answer).
    for token in [refresh_token, kept_refresh] {
        let r = raw
            .post(&token_url)
            .basic_auth(&client_id, Some("not-the-secret"))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = refreshes(kept_refresh).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "not spent by the refusal");
    let count = |story: &Value, kind: &str, reason: &str| {
        story["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["kind"] == kind
                    && e["payload"]["reason"]
                        .as_str()
                        .is_none_or(|r| r.starts_with(reason))
            })
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let story = loop {
        let (_, story) = w
            .admin(
                Method::GET,
                &format!("/v1/users/{adele}/timeline?order=newest&limit=100"),
                None,
            )
            .await;
        if count(&story, "AppTokenRefused", "invalid_client") > 0
            || std::time::Instant::now() > deadline
        {
            break story;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        count(&story, "AppTokenRefused", "invalid_client"),
        1,
        "{story}"
    );
    assert_eq!(count(&story, "AppTokensRevoked", ""), 1, "{story}");
}

/// Many codes of one user exchanged at once: their appends race on the user's stream, and
/// every one still gets its tokens (a race must not spend a code).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_of_one_user_exchanged_at_once_all_get_their_tokens() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let mut codes = Vec::new();
    for n in 0..16 {
        let (scope, state) = ("openid%20offline_access", format!("s{n}"));
        let code = code_for(&mut browser, &w.app.public, &client_id, scope, &state).await;
        codes.push(code);
    }
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let exchanges = codes
        .iter()
        .map(|code| exchange(&raw, &token_url, (&client_id, &secret), code).send());
    for answer in futures_util::future::join_all(exchanges).await {
        let answer = answer.unwrap();
        let status = answer.status();
        let body: Value = answer.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body["refresh_token"].is_string(), "{body}");
    }
}

/// Requests no app would send, answered where the spec says: to the app when it named
/// itself and a registered address (once each), else the 400 page; and nothing of them
/// is kept in memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_are_answered_without_being_kept() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let base = format!(
        "{}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid",
        w.app.public
    );
    let discovery: Value =
        reqwest::get(format!("{}/.well-known/openid-configuration", w.app.public))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    // Every field by the name Discovery 1.0 §3 and RP-Initiated Logout §2.1 give it: a
    // misspelled optional one reads as absent to a client library, not as an error.
    let public = &w.app.public;
    assert_eq!(discovery["issuer"], json!(public));
    for (field, path) in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("userinfo_endpoint", "/userinfo"),
        ("jwks_uri", "/jwks.json"),
        ("end_session_endpoint", "/end_session"),
    ] {
        assert_eq!(
            discovery[field],
            json!(format!("{public}{path}")),
            "{field}"
        );
    }
    for (field, values) in [
        ("response_types_supported", json!(["code"])),
        ("response_modes_supported", json!(["query", "form_post"])),
        (
            "grant_types_supported",
            json!(["authorization_code", "refresh_token"]),
        ),
        ("subject_types_supported", json!(["public"])),
        ("code_challenge_methods_supported", json!(["S256"])),
        (
            "token_endpoint_auth_methods_supported",
            json!(["client_secret_basic", "client_secret_post", "none"]),
        ),
        ("prompt_values_supported", json!(["none", "login"])),
    ] {
        assert_eq!(discovery[field], values, "{field}");
    }
    let holds = |field: &str, wanted: &[&str]| {
        let listed = discovery[field].as_array().unwrap();
        for w in wanted {
            assert!(listed.contains(&json!(w)), "{field} lacks {w}: {listed:?}");
        }
    };
    holds("id_token_signing_alg_values_supported", &["ES256", "RS256"]);
    holds(
        "scopes_supported",
        &["openid", "profile", "email", "offline_access"],
    );
    holds(
        "claims_supported",
        &[
            "sub",
            "name",
            "preferred_username",
            "email",
            "amr",
            "acr",
            "auth_time",
            "sid",
        ],
    );
    // The endpoints found there answer.
    let jwks = reqwest::get(discovery["jwks_uri"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(jwks.status(), StatusCode::OK);
    let logout = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(discovery["end_session_endpoint"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_ne!(logout.status(), StatusCode::NOT_FOUND);
    assert_eq!(discovery["request_uri_parameter_supported"], false);
    assert_eq!(discovery["request_parameter_supported"], false);
    assert_eq!(
        discovery["authorization_response_iss_parameter_supported"],
        true
    );
    let cases = [
        // A state that would wait in memory for a sign-in (a fresh browser: not signed in).
        (
            format!("&state={}", "s".repeat(2049)),
            "invalid_request",
            None,
        ),
        (
            "&max_age=abc&state=x1".to_owned(),
            "invalid_request",
            Some("x1"),
        ),
        (
            "&scope=openid&state=x2".to_owned(),
            "invalid_request",
            Some("x2"),
        ),
        (
            "&request_uri=https://rp/r&state=x3".to_owned(),
            "request_uri_not_supported",
            Some("x3"),
        ),
        (
            "&request=eyJ.e30.&state=x4".to_owned(),
            "request_not_supported",
            Some("x4"),
        ),
        // A mode it does not offer: told in the query, which every app reads.
        (
            "&response_mode=fragment&state=x5".to_owned(),
            "invalid_request",
            Some("x5"),
        ),
    ];
    for (extra, error, state) in &cases {
        let mut fresh = Visitor::new();
        let (s, location, q) = authorize(&mut fresh, &format!("{base}{extra}")).await;
        assert_eq!(s, StatusCode::SEE_OTHER, "{extra:.40}");
        assert!(location.unwrap().starts_with(REDIRECT));
        assert_eq!(get(&q, "error"), Some(*error), "{extra:.40}");
        assert_eq!(get(&q, "state"), *state);
        assert_eq!(get(&q, "iss"), Some(w.app.public.as_str()), "{extra:.40}");
        assert!(!fresh.holds_cookies(), "no flow was kept: {extra:.40}");
    }
    // An app that asked for its answer by form gets its errors by form too: a page whose
    // form goes to the registered address, and whose policy lets it go there.
    let r = reqwest::Client::new()
        .get(format!(
            "{base}&response_mode=form_post&request=eyJ.e30.&state=x6"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let policy = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        policy.contains("form-action 'self' http://localhost:9"),
        "{policy}"
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    let page = r.text().await.unwrap();
    for field in [
        format!(r#"action="{REDIRECT}""#),
        r#"name="error" value="request_not_supported""#.to_owned(),
        r#"name="state" value="x6""#.to_owned(),
        format!(r#"name="iss" value="{}""#, w.app.public),
    ] {
        assert!(page.contains(&field), "{field}: {page}");
    }
    // A response type left out is a missing parameter; one given that is not `code` is
    // unsupported (RFC 6749 §4.1.2.1).
    for (response_type, error) in [
        ("", "invalid_request"),
        ("&response_type=token", "unsupported_response_type"),
    ] {
        let url = format!(
            "{}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&scope=openid&state=rt{response_type}",
            w.app.public
        );
        let (s, _, q) = authorize(&mut Visitor::new(), &url).await;
        assert_eq!(s, StatusCode::SEE_OTHER, "{response_type}");
        assert_eq!(get(&q, "error"), Some(error), "{response_type}");
        assert_eq!(get(&q, "state"), Some("rt"));
    }
    // Who to answer is unclear: the page, never a redirect.
    let (s, location, _) = authorize(
        &mut Visitor::new(),
        &format!("{base}&client_id={client_id}&max_age=abc"),
    )
    .await;
    assert_eq!((s, location), (StatusCode::BAD_REQUEST, None));

    // The token endpoint takes one way of authenticating, and schemes in any case.
    let (_, _, q) = authorize(&mut browser, &format!("{base}&state=t")).await;
    let code = get(&q, "code").unwrap().to_owned();
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    // Her code presented without the app's secret, twice: refused, and in her history
    // once (anyone holding it could repeat it); the code is not spent by it.
    for _ in 0..2 {
        let r = raw
            .post(&token_url)
            .basic_auth(&client_id, Some("not-the-secret"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code.as_str()),
                ("redirect_uri", REDIRECT),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Recorded after the answer (a live code is answered as fast as a dead one).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, story) = w
            .admin(
                Method::GET,
                &format!("/v1/users/{adele}/timeline?order=newest&limit=50"),
                None,
            )
            .await;
        let told = story["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["kind"] == "AppTokenRefused"
                    && e["payload"]["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("invalid_client"))
            })
            .count();
        if told == 1 {
            break;
        }
        assert!(told == 0 && std::time::Instant::now() < deadline, "{story}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"))
    };
    let form = |secret: Option<&str>| {
        let mut f = vec![
            ("grant_type", "authorization_code".to_owned()),
            ("code", code.clone()),
            ("redirect_uri", REDIRECT.to_owned()),
        ];
        if let Some(s) = secret {
            f.push(("client_secret", s.to_owned()));
        }
        f
    };
    let r = raw
        .post(&token_url)
        .header("authorization", format!("Basic {basic}"))
        .form(&form(Some(&secret)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "two ways at once");
    let r = raw
        .post(&token_url)
        .header("authorization", format!("basic {basic}"))
        .form(&form(None))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
}

/// A code presented twice at the same moment: one exchange wins, and the refusal of the
/// other ends the family the winner began (RFC 6749 §4.1.2), whichever lands first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_used_twice_at_once_revokes_what_it_gave() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    for n in 0..4 {
        let (scope, state) = ("openid%20offline_access", format!("r{n}"));
        let code = code_for(&mut browser, &w.app.public, &client_id, scope, &state).await;
        let once = || exchange(&raw, &token_url, (&client_id, &secret), &code).send();
        let (a, b) = tokio::join!(once(), once());
        let mut refresh = Vec::new();
        for answer in [a, b] {
            let answer = answer.unwrap();
            if answer.status() == StatusCode::OK {
                let body: Value = answer.json().await.unwrap();
                refresh.push(body["refresh_token"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(refresh.len(), 1, "one exchange wins");
        let r = refresh_with(&raw, &token_url, (&client_id, &secret), &refresh[0])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "the family ended");
    }
}

/// A code replayed after its life, with other codes exchanged meanwhile, still ends the
/// family its first use began: spent codes are remembered for minutes, not for the
/// code's own 60 s (here 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_replayed_after_its_life_still_ends_what_it_gave() {
    let (w, adele, _) = crate::signin::signin_world_tuned(|c| c.oidc_code_ttl_secs = 1).await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let scope = "openid%20offline_access";
    let mut code_of =
        async |state: &str| code_for(&mut browser, &w.app.public, &client_id, scope, state).await;
    let first_code = code_of("first").await;
    let first: Value = exchange(&raw, &token_url, (&client_id, &secret), &first_code)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh = first["refresh_token"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    // Another exchange after the first code's life (the moment spent codes are swept).
    let second = code_of("second").await;
    let r = exchange(&raw, &token_url, (&client_id, &secret), &second)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let replay = exchange(&raw, &token_url, (&client_id, &secret), &first_code)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    let body: Value = replay.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let refreshed = refresh_with(&raw, &token_url, (&client_id, &secret), &refresh)
        .send()
        .await
        .unwrap();
    let status = refreshed.status();
    let body: Value = refreshed.json().await.unwrap();
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the family lives on: {body}"
    );
    assert_eq!(body["error"], "invalid_grant", "{body}");

    // Replayed again and again: refused each time, recorded once (the first replay ended
    // what the code gave), so nobody can grow Adele's stream at will.
    let refusals = || async {
        let (_, events) = w
            .admin(
                Method::GET,
                &format!("/v1/users/{adele}/events?limit=1000"),
                None,
            )
            .await;
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "AppTokenRefused")
            .count()
    };
    let before = refusals().await;
    for _ in 0..5 {
        let replay = exchange(&raw, &token_url, (&client_id, &secret), &first_code)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(refusals().await, before);
}

/// A passkey removed (a lost laptop) ends what apps were given before: refreshes, and the
/// access tokens too, at userinfo; tokens issued after it live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_passkey_ends_the_apps_tokens_issued_before() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        key,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let userinfo = format!("{}/userinfo", w.app.public);
    let info = async |access: &Value| {
        raw.get(&userinfo)
            .bearer_auth(access.as_str().unwrap())
            .send()
            .await
            .unwrap()
            .status()
    };
    let code = code_for(
        &mut browser,
        &w.app.public,
        &client_id,
        "openid%20offline_access",
        "before",
    )
    .await;
    let r = exchange(&raw, &token_url, (&client_id, &secret), &code)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let before: Value = r.json().await.unwrap();
    assert_eq!(info(&before["access_token"]).await, StatusCode::OK);

    // A second passkey on her page, then the first one removed.
    let me = format!("{}/me", w.app.public);
    let (_, page, _) = browser.get(&me).await;
    let (s, options) = browser
        .post_json(
            &format!("{me}/passkeys/options"),
            &csrf_of(&page),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{options}");
    let mut second = SoftKey::new();
    let credential = second.register(&options, &w.app.public);
    let (s, b) = browser
        .post_json(
            &format!("{me}/passkeys"),
            &csrf_of(&page),
            json!({"credential": credential}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, page, _) = browser.get(&me).await;
    let session_csrf = session_csrf_of(&page);
    use base64::Engine;
    let lost = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&key.credential);
    let (s, page, _) = browser
        .post_form(
            &format!("{me}/passkeys/{lost}/remove"),
            &[("csrf", &session_csrf)],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{page}");

    assert_eq!(
        info(&before["access_token"]).await,
        StatusCode::UNAUTHORIZED
    );
    let refreshed = refresh_with(
        &raw,
        &token_url,
        (&client_id, &secret),
        before["refresh_token"].as_str().unwrap(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(refreshed.status(), StatusCode::BAD_REQUEST);
    // Her session here stands (she removed it herself), and what it gives now works.
    let code = code_for(&mut browser, &w.app.public, &client_id, "openid", "after").await;
    let after: Value = exchange(&raw, &token_url, (&client_id, &secret), &code)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info(&after["access_token"]).await, StatusCode::OK);
}

/// A reused code or refresh token revokes what was issued from it (RFC 6749 §4.1.2,
/// §10.4): the access tokens too, at userinfo, with or without a refresh family; the
/// tokens of another exchange live on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_code_or_refresh_token_revokes_the_access_tokens_it_gave() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let userinfo = format!("{}/userinfo", w.app.public);
    let mut code_of = async |scope: &str, state: &str| {
        code_for(&mut browser, &w.app.public, &client_id, scope, state).await
    };
    let tokens = async |code: &str| -> Value {
        let r = exchange(&raw, &token_url, (&client_id, &secret), code)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    };
    let info = async |access: &Value| {
        raw.get(&userinfo)
            .bearer_auth(access.as_str().unwrap())
            .send()
            .await
            .unwrap()
            .status()
    };
    // Without offline_access: no family, and still the code's access token ends.
    let code = code_of("openid%20profile", "plain").await;
    let plain = tokens(&code).await;
    let other = tokens(&code_of("openid%20profile", "other").await).await;
    assert_eq!(info(&plain["access_token"]).await, StatusCode::OK);
    let replay = exchange(&raw, &token_url, (&client_id, &secret), &code)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
    assert_eq!(info(&plain["access_token"]).await, StatusCode::UNAUTHORIZED);
    assert_eq!(info(&other["access_token"]).await, StatusCode::OK);

    // With a family: a refresh token used twice ends every access token of the family.
    let first = tokens(&code_of("openid%20offline_access", "family").await).await;
    let refresh = async |token: &Value| {
        let token = token.as_str().unwrap();
        refresh_with(&raw, &token_url, (&client_id, &secret), token)
            .send()
            .await
            .unwrap()
    };
    let second: Value = refresh(&first["refresh_token"]).await.json().await.unwrap();
    assert_eq!(info(&second["access_token"]).await, StatusCode::OK);
    // No access token names the family: anyone who saw one could otherwise make up a
    // refresh token of an earlier generation and end the family as a replay.
    let family = {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(first["refresh_token"].as_str().unwrap())
            .unwrap();
        uuid::Uuid::from_slice(&bytes[16..32]).unwrap()
    };
    for t in [&first, &second] {
        let claims = claims_of(t["access_token"].as_str().unwrap()).to_string();
        for form in [family.to_string(), family.simple().to_string()] {
            assert!(!claims.contains(&form), "{claims} names the family {form}");
        }
    }
    let reused = refresh(&first["refresh_token"]).await;
    assert_eq!(reused.status(), StatusCode::BAD_REQUEST);
    for access in [&first["access_token"], &second["access_token"]] {
        assert_eq!(info(access).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(info(&other["access_token"]).await, StatusCode::OK);
}

/// Cross-origin reads (CORS): the token endpoint and userinfo answer the origins of live
/// apps' redirect URIs only, never with credentials; discovery and keys answer anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_registered_origins_may_read_the_token_endpoint_across_origins() {
    let (w, _, _) = signin_world().await;
    let spa = register_spa(&w, "https://spa.contoso.com/callback").await;
    let raw = reqwest::Client::new();
    let preflight = async |path: &str, origin: &str| {
        raw.request(Method::OPTIONS, format!("{}{path}", w.app.public))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .unwrap()
    };
    let allowed = |r: &reqwest::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    for path in ["/token", "/userinfo"] {
        let ok = preflight(path, "https://spa.contoso.com").await;
        assert_eq!(ok.status(), StatusCode::NO_CONTENT, "{path}");
        let origin = allowed(&ok);
        assert_eq!(origin.as_deref(), Some("https://spa.contoso.com"), "{path}");
        let other = preflight(path, "https://evil.example").await;
        assert_eq!(other.status(), StatusCode::FORBIDDEN, "{path}");
        assert_eq!(allowed(&other), None, "{path}");
    }
    // An answer itself carries the header for the registered origin only, never with
    // credentials, and says that it varies by origin.
    let token = async |origin: &str| {
        raw.post(format!("{}/token", w.app.public))
            .header("origin", origin)
            .form(&[("grant_type", "authorization_code"), ("code", "x")])
            .send()
            .await
            .unwrap()
    };
    let ok = token("https://spa.contoso.com").await;
    assert_eq!(allowed(&ok).as_deref(), Some("https://spa.contoso.com"));
    assert!(ok.headers()["vary"].to_str().unwrap().contains("origin"));
    let credentials = ok.headers().get("access-control-allow-credentials");
    assert!(credentials.is_none());
    assert_eq!(allowed(&token("https://evil.example").await), None);
    for public in ["/.well-known/openid-configuration", "/jwks.json"] {
        let answer = raw
            .get(format!("{}{public}", w.app.public))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(allowed(&answer).as_deref(), Some("*"), "{public}");
    }
    // A removed app's origin is closed with it.
    let (s, _) = w
        .admin(
            Method::DELETE,
            &format!("/v1/apps/{}", spa["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(s.is_success(), "{s}");
    let closed = preflight("/token", "https://spa.contoso.com").await;
    assert_eq!(closed.status(), StatusCode::FORBIDDEN);
}

/// Details clients trip over, as the specs put them: a parameter sent empty is one not
/// sent (RFC 6749 §3.1), a short PKCE verifier is refused (RFC 7636 §4.1), `prompt=
/// select_account` signs in again, a refreshed ID token carries no nonce (OIDC Core
/// §12.2), userinfo without credentials names no error (RFC 6750 §3.1), and an app's
/// tokens read nothing once the app is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_parameters_short_verifiers_refreshes_and_userinfo_follow_the_specs() {
    use base64::Engine;
    use sha2::Digest;
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        app,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let public = w.app.public.clone();
    let token_url = format!("{public}/token");
    let raw = reqwest::Client::new();
    let base = format!(
        "{public}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code"
    );

    // Empty max_age, code_challenge(_method) and prompt ask for nothing.
    let (s, _, q) = authorize(
        &mut browser,
        &format!("{base}&scope=openid%20offline_access&state=e1&nonce=n1&max_age=&code_challenge=&code_challenge_method=&prompt="),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let code = get(&q, "code")
        .unwrap_or_else(|| panic!("{q:?}"))
        .to_owned();
    // A method without its challenge lost the challenge on the way: no code without the
    // PKCE it asked for (a confidential client may do without PKCE, not ask and lack it).
    let (_, _, lost) = authorize(
        &mut browser,
        &format!("{base}&scope=openid&state=e2&code_challenge_method=S256"),
    )
    .await;
    assert_eq!(get(&lost, "error"), Some("invalid_request"), "{lost:?}");
    assert!(get(&lost, "code").is_none(), "{lost:?}");
    // No grant_type: the request is incomplete, and the code is not spent by it.
    let r = raw
        .post(&token_url)
        .basic_auth(&client_id, Some(&secret))
        .form(&[("code", code.as_str()), ("redirect_uri", REDIRECT)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");
    // An empty client_secret beside Basic authentication is no second method.
    let r = raw
        .post(&token_url)
        .basic_auth(&client_id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("client_secret", ""),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    assert_eq!(
        claims_of(tokens["id_token"].as_str().unwrap())["nonce"],
        "n1"
    );
    // A refresh may not widen the grant (RFC 6749 §6); refused, the token is not spent.
    let refresh_asking = |scope: &'static str| {
        let token = tokens["refresh_token"].as_str().unwrap();
        refresh_for_scope(&raw, &token_url, (&client_id, &secret), token, scope).send()
    };
    let r = refresh_asking("openid email").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "invalid_scope", "{refused}");
    assert!(
        refused["error_description"]
            .as_str()
            .unwrap()
            .contains("email"),
        "{refused}"
    );
    // A scope no scope-token could be (RFC 6749 §3.3) is not echoed: an error description
    // holds printable ASCII but `"` and `\` only (§5.2).
    let r = refresh_asking("openid \"e\u{e9}\u{202e}").await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "invalid_scope", "{refused}");
    let description = refused["error_description"].as_str().unwrap();
    assert!(
        description
            .bytes()
            .all(|b| matches!(b, 0x20 | 0x21 | 0x23..=0x5B | 0x5D..=0x7E)),
        "{refused}"
    );
    let r = refresh_with(
        &raw,
        &token_url,
        (&client_id, &secret),
        tokens["refresh_token"].as_str().unwrap(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let refreshed: Value = r.json().await.unwrap();
    let claims = claims_of(refreshed["id_token"].as_str().unwrap());
    assert!(claims.get("nonce").is_none(), "{claims}");

    // Userinfo: no credentials is a challenge without an error; the app's token reads
    // until the app is removed.
    let userinfo = format!("{public}/userinfo");
    let r = raw.get(&userinfo).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let access = refreshed["access_token"].as_str().unwrap();
    let r = raw.get(&userinfo).bearer_auth(access).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // Moved to serve another domain only, then back.
    let (s, other) = w
        .admin(
            Method::POST,
            "/v1/domains",
            Some(json!({"domain": "fabrikam.com"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{other}");
    let app_path = format!("/v1/apps/{}", app["id"].as_str().unwrap());
    // A patch that says nothing records nothing.
    let head = w.head().await;
    let (s, body) = w.admin(Method::PATCH, &app_path, Some(json!({}))).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(w.head().await, head);
    // Nor does one with an algorithm the provider does not offer, or with a bad address
    // beside a good algorithm: no key is made for a change that is refused.
    for bad in [
        json!({"id_token_signed_response_alg": "HS256"}),
        json!({"id_token_signed_response_alg": "RS256", "redirect_uris": ["http://evil.example/cb"]}),
    ] {
        let (s, body) = w.admin(Method::PATCH, &app_path, Some(bad.clone())).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(w.head().await, head, "{bad}");
    }
    for (domains, status) in [
        (json!([other["id"]]), StatusCode::UNAUTHORIZED),
        (json!([w.domain]), StatusCode::OK),
    ] {
        let (s, body) = w
            .admin(
                Method::PATCH,
                &app_path,
                Some(json!({ "domain_ids": domains })),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let r = raw.get(&userinfo).bearer_auth(access).send().await.unwrap();
        assert_eq!(r.status(), status, "serving {domains}");
    }
    // Two admins change two settings at once: each keeps theirs.
    for round in 0..10 {
        let name = json!(format!("Payroll {round}"));
        let uris = json!([format!("https://payroll.contoso.com/bye/{round}")]);
        let (renamed, moved) = tokio::join!(
            w.admin(Method::PATCH, &app_path, Some(json!({ "name": name }))),
            w.admin(
                Method::PATCH,
                &app_path,
                Some(json!({ "post_logout_redirect_uris": uris }))
            ),
        );
        assert_eq!((renamed.0, moved.0), (StatusCode::OK, StatusCode::OK));
        let (_, now) = w.admin(Method::GET, &app_path, None).await;
        assert_eq!(
            (&now["name"], &now["post_logout_redirect_uris"]),
            (&name, &uris),
            "round {round}"
        );
    }
    let (s, body) = w
        .admin(
            Method::DELETE,
            &format!("/v1/apps/{}", app["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!(s.is_success(), "{body}");
    let r = raw.get(&userinfo).bearer_auth(access).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Listed as removed, and left out of the apps in service.
    for (removed, listed) in [("false", false), ("true", true)] {
        let (_, list) = w
            .admin(Method::GET, &format!("/v1/apps?removed={removed}"), None)
            .await;
        let found = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == app["id"]);
        assert_eq!(found, listed, "removed={removed}: {list}");
    }

    // A public app whose verifier is too short to stand up to a guess offline.
    let spa = register_spa(&w, REDIRECT).await;
    let spa_id = spa["client_id"].as_str().unwrap();
    let short = "too-short";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(short.as_bytes()));
    let (s, _, q) = authorize(
        &mut browser,
        &format!("{public}/authorize?client_id={spa_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&code_challenge={challenge}&code_challenge_method=S256"),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let code = get(&q, "code").unwrap_or_else(|| panic!("{q:?}"));
    let r = raw
        .post(&token_url)
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("client_id", spa_id),
            ("client_secret", ""),
            ("code_verifier", short),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "invalid_grant", "{refused}");
    assert!(
        refused["error_description"]
            .as_str()
            .unwrap()
            .contains("code_verifier"),
        "{refused}"
    );
    // The same with the public client named in the header, with no password: that is
    // `none` too, so the refusal is the verifier's, not the client's.
    let (_, _, q) = authorize(
        &mut browser,
        &format!("{public}/authorize?client_id={spa_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&code_challenge={challenge}&code_challenge_method=S256"),
    )
    .await;
    let code = get(&q, "code").unwrap_or_else(|| panic!("{q:?}"));
    let r = raw
        .post(&token_url)
        .basic_auth(spa_id, Some(""))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", short),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let refused: Value = r.json().await.unwrap();
    assert_eq!(refused["error"], "invalid_grant", "{refused}");

    // Choosing an account is signing in again.
    let (challenge, _) = PkceCodeChallenge::new_random_sha256();
    let (s, location, _) = authorize(
        &mut browser,
        &format!(
            "{public}/authorize?client_id={spa_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&code_challenge={}&code_challenge_method=S256&prompt=select_account",
            challenge.as_str()
        ),
    )
    .await;
    assert_eq!(
        (s, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/signin"))
    );
}

/// A code stands for a sign-in that is still on. Signed out, or deactivated and given back
/// her account, while the code waited: its exchange is refused, and no refresh family
/// begins that nothing which ended the sign-in would reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_whose_sign_in_ended_while_it_waited_begins_nothing() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut key,
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let scope = "openid%20offline_access";
    let refused = |code: String| {
        let request = exchange(&raw, &token_url, (&client_id, &secret), &code);
        async move {
            let r = request.send().await.unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["error"], "invalid_grant", "{body}");
            assert!(body["refresh_token"].is_null(), "{body}");
        }
    };

    // Deactivated and reactivated while the code waited.
    let code = code_for(&mut browser, &w.app.public, &client_id, scope, "s1").await;
    for step in ["deactivate", "activate"] {
        let (s, body) = w
            .admin(Method::POST, &format!("/v1/users/{adele}/{step}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    refused(code).await;

    // Signed in again; signed out while the code waited.
    let handle = key.user_handle.clone();
    let (s, body) = passkey_sign_in_with(&w, &mut browser, &mut key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let code = code_for(&mut browser, &w.app.public, &client_id, scope, "s2").await;
    let (_, me, _) = browser.get(&format!("{}/me", w.app.public)).await;
    // The sign-out form's own token (the page's is its sign-in flow's).
    let form = &me[me.find("action=\"/signout\"").unwrap()..];
    let csrf = csrf_of(form);
    let (s, _, to) = browser
        .post_form(&format!("{}/signout", w.app.public), &[("csrf", &csrf)])
        .await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/signin")));
    refused(code).await;

    // A code of a sign-in that is on still works.
    /// Signs in with `key` in `browser`, and exchanges a code of that sign-in: its access token.
    async fn tokens(
        w: &World,
        browser: &mut Visitor,
        key: &mut SoftKey,
        (client_id, secret): (&str, &str),
        state: &str,
    ) -> String {
        let handle = key.user_handle.clone();
        let (s, body) = passkey_sign_in_with(w, browser, key, Some(&handle)).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let scope = "openid%20offline_access";
        let code = code_for(browser, &w.app.public, client_id, scope, state).await;
        let token_url = format!("{}/token", w.app.public);
        let r = exchange(
            &reqwest::Client::new(),
            &token_url,
            (client_id, secret),
            &code,
        )
        .send()
        .await
        .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_owned()
    }
    let client = (client_id.as_str(), secret.as_str());
    let access = tokens(&w, &mut browser, &mut key, client, "s3").await;
    let userinfo = |access: String| {
        let request = raw
            .get(format!("{}/userinfo", w.app.public))
            .bearer_auth(access);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(userinfo(access.clone()).await, StatusCode::OK);

    // Her access token does not come back to life with her account.
    for step in ["deactivate", "activate"] {
        let (s, body) = w
            .admin(Method::POST, &format!("/v1/users/{adele}/{step}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    assert_eq!(userinfo(access).await, StatusCode::UNAUTHORIZED);
    // Tokens of a sign-in after it work.
    let access = tokens(&w, &mut browser, &mut key, client, "s4").await;
    assert_eq!(userinfo(access).await, StatusCode::OK);
}

/// A family's id and generations are in the log, which auditors read: a token of an
/// earlier generation made up from them (not a copy of one issued) ends nothing, while a
/// copy of one really issued still ends its family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_generation_made_up_from_the_log_ends_no_family() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let client = (client_id.as_str(), secret.as_str());
    let code = code_for(
        &mut browser,
        &w.app.public,
        &client_id,
        "openid%20offline_access",
        "s",
    )
    .await;
    let first: Value = exchange(&raw, &token_url, client, &code)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = first["refresh_token"].as_str().unwrap().to_owned();
    let refreshed = |token: String| {
        let request = refresh_with(&raw, &token_url, client, &token);
        async move {
            let r = request.send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, body) = refreshed(first.clone()).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let second = body["refresh_token"].as_str().unwrap().to_owned();

    // Generation 0 of the same user and family, with any other bytes after.
    let mut forged = b64.decode(&first).unwrap();
    for b in &mut forged[40..] {
        *b ^= 0x5a;
    }
    let (s, body) = refreshed(b64.encode(&forged)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    // The family lives on.
    let (s, body) = refreshed(second).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let third = body["refresh_token"].as_str().unwrap().to_owned();
    // A copy of a token really issued (the first) ends it.
    let (s, _) = refreshed(first).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, body) = refreshed(third).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");

    // Tokens naming users made up by the asker: unknown, and no key is made for them.
    let keystore = w.app.dir.path().join("keystore");
    let size = std::fs::metadata(&keystore).unwrap().len();
    for n in 0..10u128 {
        let mut made_up = forged.clone();
        made_up[..16].copy_from_slice(uuid::Uuid::from_u128(0xbad0 + n).as_bytes());
        let (s, body) = refreshed(b64.encode(&made_up)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(std::fs::metadata(&keystore).unwrap().len(), size);
}

/// A domain's removal lands before each of its users' streams is told (user by user,
/// after it): a refresh in between is a revoked grant (`invalid_grant`), not a server that
/// may answer later (`temporarily_unavailable`), and a code waiting then begins nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_domains_users_get_invalid_grant_before_their_own_streams_know() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let client = (client_id.as_str(), secret.as_str());
    let scope = "openid%20offline_access";
    let code = code_for(&mut browser, &w.app.public, &client_id, scope, "s1").await;
    let tokens: Value = exchange(&raw, &token_url, client, &code)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let waiting = code_for(&mut browser, &w.app.public, &client_id, scope, "s2").await;
    // The removal's first record only, as a removal cut short leaves it.
    let domain = idledger_domain::DomainId(w.domain.parse().unwrap());
    let state = &w.app.state;
    let at = idledger::store::append_correlated(
        &*state.engine.log,
        idledger_domain::StreamId::domain(domain),
        idledger::store::ExpectedVersion::Any,
        &idledger_domain::Actor::System,
        None,
        vec![idledger_domain::events::DomainRemoved {}.into()],
    )
    .await
    .unwrap();
    state
        .engine
        .projector
        .wait_for(at, std::time::Duration::from_secs(5))
        .await
        .unwrap();
    for request in [
        refresh_with(&raw, &token_url, client, &refresh),
        exchange(&raw, &token_url, client, &waiting),
    ] {
        let r = request.send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "invalid_grant", "{body}");
    }
}

/// A redirect URI taken off an app's registration (its address lost to someone else, say)
/// gets nothing more: a code issued to it before is refused at the token endpoint, and a
/// request that waited for a sign-in meanwhile ends on the provider's own page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_uri_taken_off_the_registration_gets_nothing_more() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut key,
        mut browser,
        app,
        client_id,
        secret,
    } = signed_in_with_app(&w, &adele).await;
    let scope = "openid";
    let code = code_for(&mut browser, &w.app.public, &client_id, scope, "s1").await;
    // A request that must wait for a new sign-in.
    let waiting = format!(
        "{}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code&scope={scope}&state=s2&prompt=login",
        w.app.public
    );
    let (s, location, _) = authorize(&mut browser, &waiting).await;
    assert_eq!(
        (s, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/signin"))
    );

    let (s, body) = w
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", app["id"].as_str().unwrap()),
            Some(json!({"redirect_uris": ["http://localhost:9/elsewhere"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let r = exchange(
        &reqwest::Client::new(),
        &format!("{}/token", w.app.public),
        (&client_id, &secret),
        &code,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(body["access_token"].is_null(), "{body}");

    let handle = key.user_handle.clone();
    let (s, b) = passkey_sign_in_with(&w, &mut browser, &mut key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, page, location) = browser
        .get(&format!("{}/authorize/resume", w.app.public))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "sent to {location:?}");
    assert!(location.is_none(), "{location:?}");
    assert!(page.contains("no longer registered"), "{page}");
}

/// A request with an `id_token_hint` (OIDC Core §3.1.2.1), silent (`prompt=none`) or not,
/// answers for the user the hint names only: another user signed in in that browser gets
/// `login_required`, and a hint that is no ID token of this provider `invalid_request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_request_is_answered_only_for_the_user_its_hint_names() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let code = code_for(&mut browser, &w.app.public, &client_id, "openid", "s").await;
    let tokens: Value = exchange(
        &reqwest::Client::new(),
        &format!("{}/token", w.app.public),
        (&client_id, &secret),
        &code,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let hint = tokens["id_token"].as_str().unwrap().to_owned();
    let silent = |hint: &str| {
        format!(
            "{}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&state=q&prompt=none&id_token_hint={hint}",
            w.app.public
        )
    };
    let (_, _, q) = authorize(&mut browser, &silent(&hint)).await;
    assert!(get(&q, "code").is_some(), "{q:?}");
    let (_, _, q) = authorize(&mut browser, &silent("not.a.token")).await;
    assert_eq!(get(&q, "error"), Some("invalid_request"), "{q:?}");

    let other = w.user(3).await.unwrap();
    let (s, body) = w
        .admin(
            Method::PATCH,
            &format!("/v1/users/{}", other["id"].as_str().unwrap()),
            Some(json!({"sso_override": {"enabled": true, "method": "passwordless"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let mut key = SoftKey::new();
    let mut elsewhere = enrol_with_key(
        &w,
        other["id"].as_str().unwrap(),
        other["user_principal_name"].as_str().unwrap(),
        &mut key,
    )
    .await;
    let (_, _, q) = authorize(&mut elsewhere, &silent(&hint)).await;
    assert_eq!(get(&q, "error"), Some("login_required"), "{q:?}");
    assert!(get(&q, "code").is_none(), "{q:?}");
    // Not silent, the hint holds all the same: no code for someone else, and a hint that
    // is no ID token of ours is refused.
    let (_, _, q) = authorize(&mut elsewhere, &silent(&hint).replace("&prompt=none", "")).await;
    assert_eq!(get(&q, "error"), Some("login_required"), "{q:?}");
    assert!(get(&q, "code").is_none(), "{q:?}");
    let (_, _, q) = authorize(
        &mut browser,
        &silent("not.a.token").replace("&prompt=none", ""),
    )
    .await;
    assert_eq!(get(&q, "error"), Some("invalid_request"), "{q:?}");
    let (_, _, q) = authorize(&mut browser, &silent(&hint).replace("&prompt=none", "")).await;
    assert!(get(&q, "code").is_some(), "{q:?}");
}

/// A code whose first exchange was refused (another redirect_uri, a wrong verifier) gave
/// nothing: it is spent (RFC 9700 §4.5.3), but a later use is not recorded as a reuse
/// that ends a family, since none began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_refused_once_is_spent_and_its_next_use_is_no_replay() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let scope = "openid%20offline_access";
    let code = code_for(&mut browser, &w.app.public, &client_id, scope, "s").await;
    let wrong = raw
        .post(&token_url)
        .basic_auth(&client_id, Some(&secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", "https://elsewhere.example/cb"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::BAD_REQUEST);
    let right = exchange(&raw, &token_url, (&client_id, &secret), &code)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::BAD_REQUEST);
    let body: Value = right.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    let refusals: Vec<String> = w
        .events(&adele)
        .await
        .iter()
        .filter(|e| e["kind"] == "AppTokenRefused")
        .map(|e| e.to_string())
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:#?}");
    assert!(refusals[0].contains("redirect_uri"), "{refusals:#?}");
    assert!(!refusals[0].contains("reused"), "{refusals:#?}");
}

/// The flow cookie lives as long as its flow: each page of a flow (the sign-in page, an
/// app's request waiting for a sign-in) sets it again, so a request stored in a flow
/// begun minutes before is not lost with a cookie that expired at its first age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_request_waiting_in_a_flow_renews_its_cookie() {
    let (w, _adele, _) = signin_world().await;
    let app = register_app(&w, "confidential").await;
    let client_id = app["client_id"].as_str().unwrap();
    let http = rp_http();
    let flow_cookie = |r: &reqwest::Response| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .find(|c| c.starts_with("idl_flow="))
    };
    let first = http
        .get(format!("{}/signin", w.app.public))
        .send()
        .await
        .unwrap();
    let set = flow_cookie(&first).expect("a new flow sets its cookie");
    assert!(set.contains("Max-Age=600"), "{set}");
    let pair = set.split(';').next().unwrap().to_owned();
    let authorize = format!(
        "{}/authorize?response_type=code&client_id={client_id}&redirect_uri={}&scope=openid&state=s",
        w.app.public,
        urlencoding::encode(REDIRECT)
    );
    for url in [authorize, format!("{}/signin", w.app.public)] {
        let again = http.get(&url).header("cookie", &pair).send().await.unwrap();
        assert!(
            again.status().is_success() || again.status().is_redirection(),
            "{url}: {}",
            again.status()
        );
        let renewed = flow_cookie(&again).unwrap_or_else(|| panic!("{url}: not renewed"));
        assert!(
            renewed.starts_with(&pair) && renewed.contains("Max-Age=600"),
            "{renewed}"
        );
    }
}

/// An app answers only the users of the domains it is open to, and each refusal is on the
/// user's record: at `/authorize` for a signed-in user of another domain, and at the token
/// endpoint for a code whose app was closed to the user's domain after it was issued. A
/// public client gets no code without PKCE, nor with a method other than S256.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_serves_only_its_domains_and_records_each_refusal() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        app,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let (s, other) = w
        .admin(
            Method::POST,
            "/v1/domains",
            Some(json!({"domain": "fabrikam.example"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{other}");
    let refusals = async || {
        let (_, events) = w
            .admin(Method::GET, &format!("/v1/users/{adele}/events"), None)
            .await;
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "AppTokenRefused")
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
    };

    // A code, then the app is closed to Adele's domain: the code buys nothing.
    let code = code_for(&mut browser, &w.app.public, &client_id, "openid", "s1").await;
    let (s, body) = w
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{}", app["id"].as_str().unwrap()),
            Some(json!({"domain_ids": [other["id"]]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let r = exchange(
        &reqwest::Client::new(),
        &format!("{}/token", w.app.public),
        (&client_id, &secret),
        &code,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");
    assert!(body.get("id_token").is_none(), "{body}");
    assert_eq!(refusals().await.len(), 1);

    // Asked again while signed in: refused back to the app, with its state, and recorded.
    let (s, _, q) = authorize(
        &mut browser,
        &format!(
            "{}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&state=s2",
            w.app.public
        ),
    )
    .await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(get(&q, "error"), Some("access_denied"), "{q:?}");
    assert_eq!(get(&q, "state"), Some("s2"), "{q:?}");
    assert!(get(&q, "code").is_none(), "{q:?}");
    let recorded = refusals().await;
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    assert!(recorded[1].contains("access_denied"), "{recorded:?}");
    // Asked again and again (any site can send the browser here): refused each time,
    // recorded once a minute.
    for state in ["s3", "s4", "s5"] {
        let (_, _, q) = authorize(
            &mut browser,
            &format!(
                "{}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&state={state}",
                w.app.public
            ),
        )
        .await;
        assert_eq!(get(&q, "error"), Some("access_denied"), "{q:?}");
    }
    assert_eq!(refusals().await.len(), 2);

    // A public client: S256 or nothing.
    let spa = register_spa(&w, REDIRECT).await;
    let spa_id = spa["client_id"].as_str().unwrap();
    let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
    for pkce in [
        String::new(),
        format!("&code_challenge={challenge}&code_challenge_method=plain"),
        format!("&code_challenge={challenge}"),
    ] {
        let (_, _, q) = authorize(
            &mut browser,
            &format!(
                "{}/authorize?client_id={spa_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&state=p{pkce}",
                w.app.public
            ),
        )
        .await;
        assert_eq!(get(&q, "error"), Some("invalid_request"), "{pkce}: {q:?}");
        assert!(get(&q, "code").is_none(), "{pkce}: {q:?}");
    }
    let (_, _, q) = authorize(
        &mut browser,
        &format!(
            "{}/authorize?client_id={spa_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&state=p&code_challenge={challenge}&code_challenge_method=S256",
            w.app.public
        ),
    )
    .await;
    assert!(get(&q, "code").is_some(), "{q:?}");
}

/// A sign-in with Entra ID and an authenticator code is told to apps as it was
/// (SIGNIN.md's claims): `amr` `["fed", "otp"]`, `acr` the method's name, the user's name,
/// mail and session id; and a user with no mail has no `email` claim (never the UPN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_and_code_sign_in_is_told_to_apps_as_it_was() {
    let (w, _, alex) = signin_world().await;
    let (mut v, _) = enrol_alex(&w, &alex).await;
    let app = register_app(&w, "confidential").await;
    let client = (
        app["client_id"].as_str().unwrap(),
        app["client_secret"].as_str().unwrap(),
    );
    let token_url = format!("{}/token", w.app.public);
    let raw = reqwest::Client::new();
    let id_token = async |v: &mut Visitor, state: &str| {
        let code = code_for(
            v,
            &w.app.public,
            client.0,
            "openid%20profile%20email",
            state,
        )
        .await;
        let tokens: Value = exchange(&raw, &token_url, client, &code)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        claims_of(tokens["id_token"].as_str().unwrap())
    };
    let (_, user) = w
        .admin(Method::GET, &format!("/v1/users/{alex}"), None)
        .await;
    let claims = id_token(&mut v, "s1").await;
    assert_eq!(claims["sub"], alex.as_str(), "{claims}");
    assert_eq!(claims["amr"], json!(["fed", "otp"]), "{claims}");
    assert_eq!(claims["acr"], "password_and_second_factor", "{claims}");
    assert_eq!(claims["name"], "Alex Wilber", "{claims}");
    assert_eq!(claims["preferred_username"], user["user_principal_name"]);
    assert!(user["mail"].is_string(), "{user}");
    assert_eq!(claims["email"], user["mail"], "{claims}");
    assert!(claims["sid"].as_str().is_some_and(|s| !s.is_empty()));

    // Entra ID takes Alex's mail away; the next sync brings it here.
    w.sim(
        Method::PATCH,
        &format!("/_sim/users/{}", crate::support::ext(2)),
        Some(json!({"mail": null})),
    )
    .await;
    w.sync().await;
    let (_, user) = w
        .admin(Method::GET, &format!("/v1/users/{alex}"), None)
        .await;
    assert!(user["mail"].is_null(), "{user}");
    let claims = id_token(&mut v, "s2").await;
    assert!(claims.get("email").is_none(), "{claims}");
    assert_eq!(claims["preferred_username"], user["user_principal_name"]);
}

/// Tokens with a refresh token (`offline_access`) for the browser signed in with `s`.
async fn offline_tokens(w: &World, s: &mut SignedInWithApp) -> Value {
    let scope = "openid%20offline_access";
    let code = code_for(&mut s.browser, &w.app.public, &s.client_id, scope, "s").await;
    let token_url = format!("{}/token", w.app.public);
    exchange(
        &reqwest::Client::new(),
        &token_url,
        (&s.client_id, &s.secret),
        &code,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap()
}

/// `s`'s app refreshing with `token`: the status and the `error` code.
async fn refresh_answer(w: &World, s: &SignedInWithApp, token: &str) -> (StatusCode, Value) {
    let token_url = format!("{}/token", w.app.public);
    let r = refresh_with(
        &reqwest::Client::new(),
        &token_url,
        (&s.client_id, &s.secret),
        token,
    )
    .send()
    .await
    .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    (status, body["error"].clone())
}

/// SSO turned off for a signed-in user ends what they hold at once: their session here,
/// their apps' refresh tokens and access tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_turned_off_ends_the_session_and_the_apps_tokens() {
    let (w, adele, _) = signin_world().await;
    let mut app = signed_in_with_app(&w, &adele).await;
    let tokens = offline_tokens(&w, &mut app).await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let userinfo = async || {
        reqwest::Client::new()
            .get(format!("{}/userinfo", w.app.public))
            .bearer_auth(&access)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(userinfo().await, StatusCode::OK);
    let sso = async |enabled: bool| {
        let (s, body) = w
            .admin(
                Method::PATCH,
                &format!("/v1/users/{adele}"),
                Some(json!({"sso_override": {"enabled": enabled, "method": "passwordless"}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{body}");
    };
    let refused = (StatusCode::BAD_REQUEST, json!("invalid_grant"));

    sso(false).await;
    assert_eq!(refresh_answer(&w, &app, &refresh).await, refused);
    assert_eq!(userinfo().await, StatusCode::UNAUTHORIZED);
    let (s, _, to) = app.browser.get(&format!("{}/me", w.app.public)).await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/signin")));
    // Turned on again: nothing ended comes back.
    sso(true).await;
    assert_eq!(refresh_answer(&w, &app, &refresh).await, refused);
    assert_eq!(userinfo().await, StatusCode::UNAUTHORIZED);
}

/// A user Entra ID's sync group lost, in a domain whose removal behaviour is *delete*: the
/// deletion ends their session and their apps' tokens, and their passkey signs no one in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_keeps_no_session_and_no_token() {
    let (w, adele, _) =
        signin_world_in(crate::support::world(json!({"removal_behavior": "delete"})).await).await;
    let mut app = signed_in_with_app(&w, &adele).await;
    let tokens = offline_tokens(&w, &mut app).await;
    let refresh = tokens["refresh_token"].as_str().unwrap().to_owned();

    w.leave(1).await;
    let run = w.sync().await;
    assert_eq!(run["counters"]["left"], 1, "{run}");
    assert!(w.user(1).await.is_none(), "Adele is not deleted: {run}");
    assert_eq!(
        refresh_answer(&w, &app, &refresh).await,
        (StatusCode::BAD_REQUEST, json!("invalid_grant"))
    );
    let (s, _, to) = app.browser.get(&format!("{}/me", w.app.public)).await;
    assert_eq!((s, to.as_deref()), (StatusCode::SEE_OTHER, Some("/signin")));
    let handle = app.key.user_handle.clone();
    let (s, b) = passkey_sign_in_with(&w, &mut Visitor::new(), &mut app.key, Some(&handle)).await;
    assert!(s.is_client_error(), "{s}: {b}");
}

/// Sign-ins and the apps' tokens move their counters (which the dashboard and alerts read):
/// a passkey sign-in, a code exchanged, a code reused and refused. The counters are the
/// process's, shared with tests running beside this one: each must have moved at least by
/// this test's share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_and_app_tokens_are_counted() {
    use crate::metrics::Scrape;
    let (w, adele, _) = signin_world().await;
    let sign_ins = [
        ("method", "passwordless"),
        ("app", "none"),
        ("outcome", "succeeded"),
    ];
    let before = Scrape::at(&w.app.url).await;
    let SignedInWithApp {
        mut browser,
        mut key,
        app,
        client_id,
        secret,
    } = signed_in_with_app(&w, &adele).await;
    // A browser without a session signs in for the app: counted under the app's id.
    let app_id = app["id"].as_str().unwrap().to_owned();
    let for_app = [("app", app_id.as_str()), ("outcome", "succeeded")];
    let mut stranger = Visitor::new();
    let (s, location, _) = authorize(
        &mut stranger,
        &format!(
            "{}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&state=s",
            w.app.public
        ),
    )
    .await;
    assert_eq!(
        (s, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/signin"))
    );
    let handle = key.user_handle.clone();
    let (s, b) = passkey_sign_in_with(&w, &mut stranger, &mut key, Some(&handle)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let client = (client_id.as_str(), secret.as_str());
    let code = code_for(&mut browser, &w.app.public, &client_id, "openid", "s").await;
    for _ in 0..2 {
        exchange(&raw, &token_url, client, &code)
            .send()
            .await
            .unwrap();
    }
    let moved = |after: &Scrape, name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let after = Scrape::at(&w.app.url).await;
        let counted = [
            moved(&after, "idledger_sign_ins_total", &sign_ins),
            moved(&after, "idledger_sign_ins_total", &for_app),
            moved(
                &after,
                "idledger_oidc_tokens_total",
                &[("outcome", "issued")],
            ),
            moved(
                &after,
                "idledger_oidc_tokens_total",
                &[("outcome", "refused")],
            ),
        ];
        if counted.iter().all(|c| *c >= 1.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sign-ins, tokens issued, tokens refused moved by {counted:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A confidential app authenticates at `/token` with the form's fields
/// (`client_secret_post`) as well as with Basic; an unknown client is 401
/// `invalid_client`; a rotated secret replaces the old one at once and is an event with its
/// admin; and a sign-out naming an address the app did not register ends on idledger's
/// own page, never there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_unknown_clients_rotated_secrets_and_unregistered_logouts() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        app,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let raw = reqwest::Client::new();
    let token_url = format!("{}/token", w.app.public);
    let posted = |code: String, secret: String| {
        raw.post(&token_url).form(&[
            ("grant_type", "authorization_code".to_owned()),
            ("code", code),
            ("redirect_uri", REDIRECT.to_owned()),
            ("client_id", client_id.clone()),
            ("client_secret", secret),
        ])
    };
    let code = code_for(&mut browser, &w.app.public, &client_id, "openid", "s").await;
    let r = posted(code, secret.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    let id_token = tokens["id_token"].as_str().unwrap().to_owned();

    let code = code_for(&mut browser, &w.app.public, &client_id, "openid", "s").await;
    let r = exchange(&raw, &token_url, ("no-such-client", &secret), &code)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client", "{body}");

    let head = w.head().await;
    let app_id = app["id"].as_str().unwrap();
    let (s, rotated) = w
        .admin(Method::POST, &format!("/v1/apps/{app_id}/secret"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{rotated}");
    let new_secret = rotated["client_secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    let failures = |scrape: &crate::metrics::Scrape| {
        scrape.value(
            "idledger_oidc_client_auth_failures_total",
            &[("app", app_id)],
        )
    };
    let before = crate::metrics::Scrape::at(&w.app.url).await;
    let code = code_for(&mut browser, &w.app.public, &client_id, "openid", "s").await;
    let r = posted(code, secret.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the old secret");
    // A guessed secret shows under the app it named.
    let after = crate::metrics::Scrape::at(&w.app.url).await;
    assert_eq!(failures(&after) - failures(&before), 1.0);
    let code = code_for(&mut browser, &w.app.public, &client_id, "openid", "s").await;
    let r = exchange(&raw, &token_url, (&client_id, &new_secret), &code)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the new secret");
    let rotation = w.first_event_after(head, "AppSecretRotated").await;
    assert!(
        rotation["actor"].as_str().unwrap().starts_with("admin:"),
        "{rotation}"
    );
    assert!(!rotation.to_string().contains(&new_secret), "{rotation}");

    // Every registration, change, removal and signing-key change is an event by the
    // admin who made it; a signing key's private half only sealed.
    let head = w.head().await;
    let (s, other) = w
        .admin(
            Method::POST,
            "/v1/apps",
            Some(json!({
                "name": "Expenses",
                "redirect_uris": [REDIRECT],
                "type": "confidential",
                "domain_ids": [w.domain],
            })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{other}");
    let other_secret = other["client_secret"].as_str().unwrap().to_owned();
    let other_id = other["id"].as_str().unwrap();
    let (s, body) = w
        .admin(
            Method::PATCH,
            &format!("/v1/apps/{other_id}"),
            Some(json!({"name": "Expenses (EU)"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (s, body) = w
        .admin(Method::DELETE, &format!("/v1/apps/{other_id}"), None)
        .await;
    assert!(s.is_success(), "{body}");
    let (s, body) = w
        .admin(Method::POST, "/v1/provider/signing-keys", None)
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    for kind in [
        "AppRegistered",
        "AppChanged",
        "AppRemoved",
        "SigningKeyAdded",
    ] {
        let event = w.first_event_after(head, kind).await;
        assert!(
            event["actor"].as_str().unwrap().starts_with("admin:"),
            "{event}"
        );
        assert!(!event.to_string().contains(&other_secret), "{event}");
    }
    let added = w.first_event_after(head, "SigningKeyAdded").await;
    assert_eq!(added["payload"]["sealed_private_key"], "sealed", "{added}");

    // Signed out with a good hint, towards an address the app never registered.
    let (s, location, _) = authorize(
        &mut browser,
        &format!(
            "{}/end_session?id_token_hint={id_token}&post_logout_redirect_uri={}&state=x",
            w.app.public,
            urlencoding::encode("https://attacker.example/phish")
        ),
    )
    .await;
    assert_eq!(location, None, "sent nowhere");
    assert_eq!(s, StatusCode::OK);
    let (s, page, _) = browser.get(&format!("{}/me", w.app.public)).await;
    assert_eq!(s, StatusCode::SEE_OTHER, "signed out: {page}");
}

/// The ID token's `sub` of a code exchanged by `app` (`scope` URL-encoded), and whether a
/// refresh token came with it.
async fn sub_and_refresh(
    w: &World,
    browser: &mut Visitor,
    (client_id, secret): (&str, &str),
    scope: &str,
) -> (String, bool) {
    let code = code_for(browser, &w.app.public, client_id, scope, "s").await;
    let token_url = format!("{}/token", w.app.public);
    let r = exchange(
        &reqwest::Client::new(),
        &token_url,
        (client_id, secret),
        &code,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let tokens: Value = r.json().await.unwrap();
    let claims = claims_of(tokens["id_token"].as_str().unwrap());
    (
        claims["sub"].as_str().unwrap().to_owned(),
        tokens.get("refresh_token").is_some(),
    )
}

/// A code works only for the app it was issued to; `sub` is the same for every app; a
/// refresh token comes only with `offline_access`, and a refresh may ask for less; a
/// session older than `max_age` signs in again, and `prompt=none` with it gets
/// `login_required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_keep_to_their_app_one_sub_for_every_app_and_max_age_asks_again() {
    let (w, adele, _) = signin_world().await;
    let SignedInWithApp {
        mut browser,
        client_id,
        secret,
        ..
    } = signed_in_with_app(&w, &adele).await;
    let other = register_app(&w, "confidential").await;
    let other = (
        other["client_id"].as_str().unwrap(),
        other["client_secret"].as_str().unwrap(),
    );
    let token_url = format!("{}/token", w.app.public);

    let code = code_for(&mut browser, &w.app.public, &client_id, "openid", "s").await;
    let r = exchange(&reqwest::Client::new(), &token_url, other, &code)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_grant", "{body}");

    let ours = (client_id.as_str(), secret.as_str());
    let (sub, refresh) = sub_and_refresh(&w, &mut browser, ours, "openid%20profile").await;
    assert!(!refresh, "no offline_access, no refresh token");
    let (other_sub, refresh) =
        sub_and_refresh(&w, &mut browser, other, "openid%20offline_access").await;
    assert!(refresh, "offline_access asked for");
    assert_eq!(sub, other_sub, "one sub per user, whichever app asks");
    assert_eq!(sub, adele, "the user's id");

    // A refresh asking for less gets tokens for less (RFC 6749 §6); the refresh token it
    // gets keeps the whole grant, so the next refresh without a scope gets all of it.
    let raw = reqwest::Client::new();
    let code = code_for(
        &mut browser,
        &w.app.public,
        &client_id,
        "openid%20profile%20offline_access",
        "s",
    )
    .await;
    let tokens: Value = exchange(&raw, &token_url, ours, &code)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = tokens["refresh_token"].as_str().unwrap();
    let r = refresh_for_scope(&raw, &token_url, ours, token, "openid")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let narrow: Value = r.json().await.unwrap();
    assert_eq!(narrow["scope"], "openid", "{narrow}");
    for token in ["id_token", "access_token"] {
        let claims = claims_of(narrow[token].as_str().unwrap());
        assert!(claims.get("name").is_none(), "{token}: {claims}");
    }
    assert_eq!(
        claims_of(narrow["access_token"].as_str().unwrap())["scope"],
        "openid"
    );
    let r = refresh_with(
        &raw,
        &token_url,
        ours,
        narrow["refresh_token"].as_str().unwrap(),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let whole: Value = r.json().await.unwrap();
    assert_eq!(whole["scope"], "openid profile offline_access", "{whole}");
    assert!(claims_of(whole["id_token"].as_str().unwrap())["name"].is_string());
    // Narrowed to no `openid`: no ID token, and userinfo reads nothing with its token.
    let token = whole["refresh_token"].as_str().unwrap();
    let r = refresh_for_scope(&raw, &token_url, ours, token, "offline_access")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let bare: Value = r.json().await.unwrap();
    assert!(bare.get("id_token").is_none(), "{bare}");
    assert!(bare["refresh_token"].is_string(), "{bare}");
    let r = raw
        .get(format!("{}/userinfo", w.app.public))
        .bearer_auth(bare["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.contains("insufficient_scope"), "{challenge}");
    let r = raw
        .get(format!("{}/userinfo", w.app.public))
        .bearer_auth(whole["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "the whole grant's token still reads"
    );

    // The session is a second old or more: max_age=0 (and a negative age, read as 0)
    // asks for a new sign-in, a generous one does not.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let asked = |extra: &str| {
        format!(
            "{}/authorize?client_id={client_id}&redirect_uri={REDIRECT}&response_type=code&scope=openid&state=a&{extra}",
            w.app.public
        )
    };
    for age in ["0", "-5"] {
        let (s, location, _) = authorize(&mut browser, &asked(&format!("max_age={age}"))).await;
        assert_eq!(
            (s, location.as_deref()),
            (StatusCode::SEE_OTHER, Some("/signin")),
            "max_age={age}"
        );
        let (s, _, q) =
            authorize(&mut browser, &asked(&format!("max_age={age}&prompt=none"))).await;
        assert_eq!(s, StatusCode::SEE_OTHER);
        assert_eq!(
            get(&q, "error"),
            Some("login_required"),
            "max_age={age}: {q:?}"
        );
    }
    let (s, _, q) = authorize(&mut browser, &asked("max_age=3600")).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert!(get(&q, "code").is_some(), "{q:?}");
}
