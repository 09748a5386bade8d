//! OpenID Connect sign-in against a running simulator, as a browser and a relying party
//! would drive it: authorize page, form post, code, token, and the ID token checked against
//! the published JWKS.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use graphsim::id_token::{IdTokenClaims, JwkSet};
use graphsim::SimConfig;
use reqwest::{StatusCode, Url};
use serde_json::Value;
use sha2::{Digest, Sha256};

const TENANT: &str = "11111111-2222-4333-8444-555555555555";
const CLIENT: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const OTHER_CLIENT: &str = "aaaaaaaa-0000-4000-8000-000000000002";
const SECRET: &str = "s3cr3t+/:=&x";
const REDIRECT: &str = "http://127.0.0.1:9/auth/callback";
const ALICE: &str = "0a000000-0000-4000-8000-00000000000a";
const VERIFIER: &str = "a-verifier-of-enough-length-0123456789-abcdefghijklmnop";

fn tenant_json() -> String {
    serde_json::json!({
        "tenantId": TENANT,
        "domains": [{"id": "contoso.example", "isDefault": true, "isInitial": true}],
        "applications": [
            {"clientId": CLIENT, "displayName": "idledger <console>", "secret": SECRET,
             "permissions": [], "redirectUris": [REDIRECT]},
            {"clientId": OTHER_CLIENT, "displayName": "Other", "secret": "other-secret",
             "permissions": []}
        ],
        "users": [
            {"id": ALICE, "userPrincipalName": "Alice@contoso.example", "displayName": "Alice Example",
             "mail": "alice@contoso.example", "password": "Alice-Pass-1!"},
            {"id": "0b000000-0000-4000-8000-00000000000b", "userPrincipalName": "bob@contoso.example",
             "displayName": "Bob", "password": "Bob-Pass-1!", "accountEnabled": false}
        ],
        "groups": []
    })
    .to_string()
}

struct World {
    url: String,
    http: reqwest::Client,
}

async fn world() -> World {
    let dir = graphsim::parse_tenant(&tenant_json()).expect("tenant");
    let (url, _sim) = graphsim::spawn(dir, SimConfig::default())
        .await
        .expect("spawn");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    World { url, http }
}

fn challenge(verifier: &str) -> String {
    B64.encode(Sha256::digest(verifier.as_bytes()))
}

/// A valid authorization request's parameters.
fn request(scope: &str) -> Vec<(&'static str, String)> {
    vec![
        ("client_id", CLIENT.into()),
        ("response_type", "code".into()),
        ("redirect_uri", REDIRECT.into()),
        ("scope", scope.into()),
        ("state", "st&te=1".into()),
        ("nonce", "n0nce".into()),
        ("code_challenge", challenge(VERIFIER)),
        ("code_challenge_method", "S256".into()),
        ("login_hint", "alice@contoso.example".into()),
    ]
}

fn with(
    mut req: Vec<(&'static str, String)>,
    key: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    req.retain(|(k, _)| *k != key);
    req.push((key, value.to_owned()));
    req
}

/// Undoes the page's HTML escaping.
fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The hidden inputs of a page, as a browser would submit them.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('"')?;
            let value = rest.split_once("value=\"")?.1.split_once('"')?.0;
            Some((name.to_owned(), unescape(value)))
        })
        .collect()
}

impl World {
    fn authorize_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/authorize", self.url)
    }

    async fn get_authorize(&self, req: &[(&str, String)]) -> reqwest::Response {
        self.http
            .get(self.authorize_url(TENANT))
            .query(req)
            .send()
            .await
            .expect("authorize")
    }

    /// Opens the sign-in page and submits it with these credentials.
    async fn sign_in(
        &self,
        req: &[(&str, String)],
        user: &str,
        password: &str,
    ) -> reqwest::Response {
        let page = self.get_authorize(req).await;
        assert_eq!(page.status(), StatusCode::OK);
        let html = page.text().await.expect("page");
        assert!(html.contains("<form method=\"post\""), "{html}");
        let mut form = hidden_fields(&html);
        form.push(("username".into(), user.into()));
        form.push(("password".into(), password.into()));
        self.http
            .post(self.authorize_url(TENANT))
            .form(&form)
            .send()
            .await
            .expect("submit")
    }

    /// Signs Alice in and returns the code from the redirect.
    async fn code(&self, scope: &str) -> String {
        let r = self
            .sign_in(&request(scope), "ALICE@contoso.example", "Alice-Pass-1!")
            .await;
        assert_eq!(r.status(), StatusCode::FOUND);
        let location = Url::parse(location(&r).expect("location")).expect("url");
        assert_eq!(
            location.as_str().split('?').next(),
            Some(REDIRECT),
            "back to the registered redirect URI"
        );
        let q: Vec<(String, String)> = location.query_pairs().into_owned().collect();
        assert!(q.contains(&("state".into(), "st&te=1".into())), "{q:?}");
        q.into_iter()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v)
            .expect("code")
    }

    async fn redeem(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}/{TENANT}/oauth2/v2.0/token", self.url))
            .form(form)
            .send()
            .await
            .expect("token");
        (r.status(), r.json().await.expect("json"))
    }
}

fn location(r: &reqwest::Response) -> Option<&str> {
    r.headers().get("location").and_then(|v| v.to_str().ok())
}

fn redemption(code: &str) -> Vec<(&str, &str)> {
    vec![
        ("grant_type", "authorization_code"),
        ("client_id", CLIENT),
        ("client_secret", SECRET),
        ("code", code),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ]
}

fn aadsts(body: &Value) -> u64 {
    body["error_codes"][0].as_u64().unwrap_or(0)
}

/// Checks the ID token's RS256 signature against the published JWKS; returns its claims.
async fn verified_claims(w: &World, id_token: &str) -> IdTokenClaims {
    let config: Value = w
        .http
        .get(format!(
            "{}/{TENANT}/v2.0/.well-known/openid-configuration",
            w.url
        ))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    let jwks: JwkSet = w
        .http
        .get(config["jwks_uri"].as_str().expect("jwks_uri"))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("jwks json");
    let mut parts = id_token.split('.');
    let (header, payload, sig) = (
        parts.next().expect("header"),
        parts.next().expect("payload"),
        parts.next().expect("signature"),
    );
    let header: Value = serde_json::from_slice(&B64.decode(header).expect("b64")).expect("json");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["typ"], "JWT");
    let jwk = jwks
        .keys
        .iter()
        .find(|k| header["kid"] == k.kid.as_str())
        .expect("the kid is in the JWKS");
    assert_eq!(
        (jwk.kty.as_str(), jwk.use_.as_str(), jwk.alg.as_str()),
        ("RSA", "sig", "RS256")
    );
    let n = B64.decode(&jwk.n).expect("n");
    let e = B64.decode(&jwk.e).expect("e");
    assert_eq!(e, [1, 0, 1]);
    ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            format!(
                "{header_b64}.{payload}",
                header_b64 = id_token.split('.').next().unwrap_or_default()
            )
            .as_bytes(),
            &B64.decode(sig).expect("sig"),
        )
        .expect("the signature verifies against the JWKS");
    // A flipped payload does not.
    let mut tampered = B64.decode(payload).expect("b64");
    tampered[3] ^= 1;
    assert!(ring::signature::RsaPublicKeyComponents { n: &n, e: &e }
        .verify(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            format!(
                "{}.{}",
                id_token.split('.').next().unwrap_or_default(),
                B64.encode(tampered)
            )
            .as_bytes(),
            &B64.decode(sig).expect("sig"),
        )
        .is_err());
    serde_json::from_slice(&B64.decode(payload).expect("b64")).expect("claims")
}

#[tokio::test]
async fn discovery_advertises_the_sign_in_endpoints() {
    let w = world().await;
    let c: Value = w
        .http
        .get(format!(
            "{}/contoso.example/v2.0/.well-known/openid-configuration",
            w.url
        ))
        .send()
        .await
        .expect("discovery")
        .json()
        .await
        .expect("json");
    assert_eq!(c["issuer"], format!("{}/{TENANT}/v2.0", w.url));
    assert_eq!(
        c["jwks_uri"],
        format!("{}/contoso.example/discovery/v2.0/keys", w.url)
    );
    assert_eq!(
        c["authorization_endpoint"],
        format!("{}/contoso.example/oauth2/v2.0/authorize", w.url)
    );
    assert_eq!(
        c["token_endpoint"],
        format!("{}/contoso.example/oauth2/v2.0/token", w.url)
    );
    assert_eq!(
        c["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    assert_eq!(
        c["subject_types_supported"],
        serde_json::json!(["pairwise"])
    );
    assert!(c["token_endpoint_auth_methods_supported"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m == "client_secret_basic")));
    assert!(
        c.get("code_challenge_methods_supported").is_none(),
        "Entra does not list it"
    );
    let keys = w
        .http
        .get(format!("{}/nope.example/discovery/v2.0/keys", w.url))
        .send()
        .await
        .expect("keys");
    assert_eq!(keys.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn happy_path_gives_a_verifiable_id_token() {
    let w = world().await;
    let page = w
        .get_authorize(&request("openid profile email offline_access"))
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/html")));
    let html = page.text().await.expect("html");
    assert!(
        html.contains(">Username</label>") && html.contains(">Password</label>"),
        "{html}"
    );
    assert!(html.contains("name=\"username\"") && html.contains("value=\"alice@contoso.example\""));
    assert!(html.contains("name=\"password\" type=\"password\""));
    assert!(html.contains("<button type=\"submit\">Sign in</button>"));
    // The app's name is echoed escaped.
    assert!(html.contains("idledger &lt;console&gt;") && !html.contains("<console>"));
    assert!(!html.contains("<script"));

    let code = w.code("openid profile email offline_access").await;
    let before = chrono::Utc::now().timestamp();
    let (status, body) = w.redeem(&redemption(&code)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    assert_eq!(
        body["scope"], "openid profile email",
        "no refresh token, so no offline_access"
    );
    assert!(body["access_token"]
        .as_str()
        .is_some_and(|t| t.split('.').count() == 3));
    let claims = verified_claims(&w, body["id_token"].as_str().expect("id_token")).await;
    assert_eq!(claims.aud, CLIENT);
    assert_eq!(claims.iss, format!("{}/{TENANT}/v2.0", w.url));
    assert_eq!(claims.tid, TENANT);
    assert_eq!(claims.oid.as_deref(), Some(ALICE));
    assert_eq!(
        claims.preferred_username.as_deref(),
        Some("Alice@contoso.example")
    );
    assert_eq!(claims.name.as_deref(), Some("Alice Example"));
    assert_eq!(claims.email.as_deref(), Some("alice@contoso.example"));
    assert_eq!(claims.nonce.as_deref(), Some("n0nce"));
    assert_eq!(claims.ver, "2.0");
    assert!(
        claims.iat >= before - 5 && claims.nbf == claims.iat && claims.exp == claims.iat + 3600
    );
    assert_eq!(claims.sub.len(), 43);
    assert_ne!(claims.sub, ALICE);

    // Same user, same app: same pairwise sub; without profile and email, no such claims.
    let code = w.code("openid").await;
    let (status, body) = w.redeem(&redemption(&code)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let plain = verified_claims(&w, body["id_token"].as_str().expect("id_token")).await;
    assert_eq!(plain.sub, claims.sub);
    assert_eq!(
        (plain.oid, plain.email, plain.name, plain.preferred_username),
        (None, None, None, None)
    );
}

#[tokio::test]
async fn basic_client_authentication_works() {
    let w = world().await;
    let code = w.code("openid profile").await;
    let creds = format!(
        "{}:{}",
        urlencoding::encode(CLIENT),
        urlencoding::encode(SECRET)
    );
    let r = w
        .http
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", w.url))
        .header("authorization", format!("Basic {}", STANDARD.encode(creds)))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    assert!(body["id_token"].is_string());

    // A wrong secret through Basic is refused with the scheme named.
    let code = w.code("openid").await;
    let creds = format!("{}:{}", urlencoding::encode(CLIENT), "wrong");
    let r = w
        .http
        .post(format!("{}/{TENANT}/oauth2/v2.0/token", w.url))
        .header("authorization", format!("Basic {}", STANDARD.encode(creds)))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("www-authenticate").is_some());
}

#[tokio::test]
async fn codes_are_single_use_and_bound_to_the_request() {
    let w = world().await;
    let code = w.code("openid").await;
    assert_eq!(w.redeem(&redemption(&code)).await.0, StatusCode::OK);
    let (status, body) = w.redeem(&redemption(&code)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(aadsts(&body), 54005);

    // A wrong verifier fails, and burns the code.
    let code = w.code("openid").await;
    let mut form = redemption(&code);
    form.retain(|(k, _)| *k != "code_verifier");
    form.push((
        "code_verifier",
        "another-verifier-of-enough-length-0123456789-abcdefg",
    ));
    let (status, body) = w.redeem(&form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(aadsts(&body), 501481);
    let (status, body) = w.redeem(&redemption(&code)).await;
    assert_eq!((status, aadsts(&body)), (StatusCode::BAD_REQUEST, 54005));

    // A missing verifier fails the same way.
    let code = w.code("openid").await;
    let mut form = redemption(&code);
    form.retain(|(k, _)| *k != "code_verifier");
    let (status, body) = w.redeem(&form).await;
    assert_eq!((status, aadsts(&body)), (StatusCode::BAD_REQUEST, 501481));

    // Another redirect URI than the authorize request's.
    let code = w.code("openid").await;
    let mut form = redemption(&code);
    form.retain(|(k, _)| *k != "redirect_uri");
    form.push(("redirect_uri", "http://127.0.0.1:9/auth/callback/"));
    let (status, body) = w.redeem(&form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert_eq!(aadsts(&body), 500112);

    // A code nobody issued.
    let (status, body) = w.redeem(&redemption("not-a-code")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Another app cannot redeem it.
    let code = w.code("openid").await;
    let (status, body) = w
        .redeem(&[
            ("grant_type", "authorization_code"),
            ("client_id", OTHER_CLIENT),
            ("client_secret", "other-secret"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", VERIFIER),
        ])
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn client_secrets_are_checked() {
    let w = world().await;
    let code = w.code("openid").await;
    let mut form = redemption(&code);
    form.retain(|(k, _)| *k != "client_secret");
    form.push(("client_secret", "wrong"));
    let (status, body) = w.redeem(&form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    assert_eq!(aadsts(&body), 7000215);
    assert!(body["error_description"]
        .as_str()
        .is_some_and(|d| d.starts_with("AADSTS7000215:")));

    form.retain(|(k, _)| *k != "client_secret");
    let (status, body) = w.redeem(&form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    assert_eq!(aadsts(&body), 7000218);

    // The code survived both (the client never authenticated), and still works.
    let (status, _) = w.redeem(&redemption(&code)).await;
    assert_eq!(status, StatusCode::OK);

    // Client credentials are as before.
    let (status, body) = w
        .redeem(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", SECRET),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("id_token").is_none());
}

#[tokio::test]
async fn untrusted_requests_get_a_page_never_a_redirect() {
    let w = world().await;
    for (req, code) in [
        (
            with(
                request("openid"),
                "client_id",
                "ffffffff-0000-4000-8000-000000000009",
            ),
            "AADSTS700016",
        ),
        (
            with(request("openid"), "redirect_uri", "https://evil.example/cb"),
            "AADSTS50011",
        ),
        // Exact match: a trailing slash is another URI.
        (
            with(
                request("openid"),
                "redirect_uri",
                "http://127.0.0.1:9/auth/callback/",
            ),
            "AADSTS50011",
        ),
        // An app with no redirect URI at all.
        (
            with(request("openid"), "client_id", OTHER_CLIENT),
            "AADSTS50011",
        ),
    ] {
        let r = w.get_authorize(&req).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert!(location(&r).is_none());
        let html = r.text().await.expect("html");
        assert!(html.contains(code), "{code}: {html}");
        assert!(html.contains("role=\"alert\""));
        assert!(!html.contains("<script"));
    }
    // The evil URI is echoed escaped.
    let r = w
        .get_authorize(&with(
            request("openid"),
            "redirect_uri",
            "https://e.example/<b>\"",
        ))
        .await;
    let html = r.text().await.expect("html");
    assert!(html.contains("https://e.example/&lt;b&gt;&quot;") && !html.contains("<b>"));

    let r = w
        .http
        .get(w.authorize_url("unknown.example"))
        .query(&request("openid"))
        .send()
        .await
        .expect("authorize");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(location(&r).is_none());
    assert!(r.text().await.expect("html").contains("AADSTS90002"));

    // The same on the form's POST, even with good credentials.
    let mut form: Vec<(&str, String)> =
        with(request("openid"), "redirect_uri", "https://evil.example/cb");
    form.push(("username", "alice@contoso.example".into()));
    form.push(("password", "Alice-Pass-1!".into()));
    let r = w
        .http
        .post(w.authorize_url(TENANT))
        .form(&form)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(location(&r).is_none());
}

#[tokio::test]
async fn other_request_errors_go_back_to_the_app() {
    let w = world().await;
    for (req, error) in [
        (
            with(request("openid"), "response_type", "token"),
            "unsupported_response_type",
        ),
        (
            with(request("openid"), "response_type", "id_token"),
            "unsupported_response_type",
        ),
        (request("profile email"), "invalid_scope"),
        (
            with(request("openid"), "code_challenge_method", "plain"),
            "invalid_request",
        ),
        (
            with(request("openid"), "code_challenge", "short"),
            "invalid_request",
        ),
        (
            request("openid")
                .into_iter()
                .filter(|(k, _)| *k != "code_challenge")
                .collect(),
            "invalid_request",
        ),
        (
            request("openid")
                .into_iter()
                .filter(|(k, _)| *k != "code_challenge_method")
                .collect(),
            "invalid_request",
        ),
        (with(request("openid"), "prompt", "none"), "login_required"),
    ] {
        let r = w.get_authorize(&req).await;
        assert_eq!(r.status(), StatusCode::FOUND, "{error}");
        let to = Url::parse(location(&r).expect("location")).expect("url");
        assert!(to.as_str().starts_with(REDIRECT));
        let q: Vec<(String, String)> = to.query_pairs().into_owned().collect();
        assert!(q.contains(&("error".into(), error.into())), "{q:?}");
        assert!(q.contains(&("state".into(), "st&te=1".into())), "{q:?}");
        assert!(q
            .iter()
            .any(|(k, v)| k == "error_description" && v.starts_with("AADSTS")));
        assert!(!q.iter().any(|(k, _)| k == "code"));
    }
}

#[tokio::test]
async fn bad_credentials_show_the_form_again() {
    let w = world().await;
    for (user, password, code) in [
        ("alice@contoso.example", "Wrong-Pass-1!", "AADSTS50126"),
        ("nobody@contoso.example", "Alice-Pass-1!", "AADSTS50126"),
        ("bob@contoso.example", "Bob-Pass-1!", "AADSTS50057"),
    ] {
        let r = w.sign_in(&request("openid"), user, password).await;
        assert_eq!(r.status(), StatusCode::OK, "{user}");
        assert!(location(&r).is_none());
        let html = r.text().await.expect("html");
        let alert = html
            .split("role=\"alert\">")
            .nth(1)
            .and_then(|a| a.split("</div>").next())
            .expect("an alert");
        assert!(alert.contains(code), "{alert}");
        if code == "AADSTS50126" {
            assert!(alert.contains("Your account or password is incorrect."));
        }
        // The form comes back with the user name, never the password, and can be retried.
        assert!(html.contains(&format!("value=\"{user}\"")));
        assert!(!html.contains(password));
        assert!(hidden_fields(&html)
            .iter()
            .any(|(k, _)| k == "code_challenge"));
    }
}

#[tokio::test]
async fn the_control_api_registers_redirect_uris() {
    let w = world().await;
    let other = "https://idledger.example/signin-oidc";
    let r = w
        .get_authorize(&with(request("openid"), "redirect_uri", other))
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = w
        .http
        .patch(format!("{}/_sim/apps/{CLIENT}", w.url))
        .json(&serde_json::json!({"redirectUris": [REDIRECT, other]}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = w
        .get_authorize(&with(request("openid"), "redirect_uri", other))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    // The secret is untouched by a redirect-only patch.
    let code = w.code("openid").await;
    assert_eq!(w.redeem(&redemption(&code)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn response_modes_fragment_and_form_post() {
    let w = world().await;
    let r = w
        .sign_in(
            &with(request("openid"), "response_mode", "fragment"),
            "alice@contoso.example",
            "Alice-Pass-1!",
        )
        .await;
    assert_eq!(r.status(), StatusCode::FOUND);
    let to = location(&r).expect("location");
    assert!(to.starts_with(&format!("{REDIRECT}#code=")), "{to}");

    let r = w
        .sign_in(
            &with(request("openid"), "response_mode", "form_post"),
            "alice@contoso.example",
            "Alice-Pass-1!",
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.expect("html");
    assert!(html.contains(&format!("action=\"{REDIRECT}\"")));
    let fields = hidden_fields(&html);
    let code = fields
        .iter()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.clone())
        .expect("code");
    assert!(fields.contains(&("state".into(), "st&te=1".into())));
    assert_eq!(w.redeem(&redemption(&code)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn faults_reach_the_sign_in_routes() {
    let w = world().await;
    let r = w
        .http
        .post(format!("{}/_sim/faults", w.url))
        .json(&serde_json::json!({"path_prefix": format!("/{TENANT}/oauth2/v2.0/token"), "status": 503, "count": 1}))
        .send()
        .await
        .expect("fault");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let code = w.code("openid").await;
    assert_eq!(
        w.redeem(&redemption(&code)).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The fault answered instead of the endpoint: the code was never presented.
    assert_eq!(w.redeem(&redemption(&code)).await.0, StatusCode::OK);
    let log: Value = w
        .http
        .get(format!("{}/_sim/requests", w.url))
        .send()
        .await
        .expect("log")
        .json()
        .await
        .expect("json");
    assert!(log.as_array().is_some_and(|l| l
        .iter()
        .any(|r| r["path"] == format!("/{TENANT}/oauth2/v2.0/authorize"))));
}
