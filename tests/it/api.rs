//! The HTTP API: the real server on a loopback port, a real HTTP client.

use crate::support::{spawn_app, App};
use idledger_domain::{DomainId, StreamId};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_the_token_and_the_role() {
    let app = spawn_app().await;
    let auditor = app.token("auditor", &[]).await;
    let agent = app.token("agent", &["KEY-1"]).await;
    let d = app.domain("matrix.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let u = app.user(&d).await;
    let creds = json!({"tenant_id": uuid::Uuid::new_v4(), "client_id": uuid::Uuid::new_v4(), "client_secret": "x"});
    // (method, path, body, auditor may)
    let routes: Vec<(Method, String, Option<Value>, bool)> = vec![
        (Method::GET, "/v1/tokens".into(), None, false),
        (
            Method::POST,
            "/v1/tokens".into(),
            Some(json!({"role": "auditor"})),
            false,
        ),
        (Method::GET, "/v1/domains".into(), None, true),
        (Method::GET, format!("/v1/domains/{d}"), None, true),
        (
            Method::PATCH,
            format!("/v1/domains/{d}"),
            Some(json!({"auto_import": true})),
            false,
        ),
        (
            Method::PUT,
            format!("/v1/domains/{d}/credentials"),
            Some(creds),
            false,
        ),
        (
            Method::PUT,
            format!("/v1/domains/{d}/sso-defaults"),
            Some(json!({"enabled": true, "method": "passwordless"})),
            false,
        ),
        (
            Method::DELETE,
            format!("/v1/domains/{d}/credentials"),
            None,
            false,
        ),
        (Method::GET, "/v1/users".into(), None, true),
        (Method::GET, format!("/v1/users/{u}"), None, true),
        (Method::GET, format!("/v1/users/{u}/events"), None, true),
        (
            Method::PATCH,
            format!("/v1/users/{u}"),
            Some(
                json!({"sso_override": {"enabled": true, "method": "password_and_second_factor"}}),
            ),
            false,
        ),
        (
            Method::POST,
            format!("/v1/users/{u}/deactivate"),
            None,
            false,
        ),
        (Method::POST, format!("/v1/users/{u}/activate"), None, false),
        (Method::GET, "/v1/events".into(), None, true),
        (Method::DELETE, format!("/v1/domains/{d}"), None, false),
    ];
    for (method, path, body, auditor_may) in routes {
        let (s, _) = app.call(None, method.clone(), &path, body.clone()).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        let (s, _) = app
            .call(Some("idl_not-a-token"), method.clone(), &path, body.clone())
            .await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{method} {path} with a bad token"
        );
        let (s, _) = app
            .call(Some(&agent), method.clone(), &path, body.clone())
            .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} as agent");
        let (s, b) = app
            .call(Some(&auditor), method.clone(), &path, body.clone())
            .await;
        if auditor_may {
            assert!(s.is_success(), "{method} {path} as auditor: {s} {b}");
        } else {
            assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path} as auditor");
        }
        let (s, b) = app
            .call(Some(&app.admin), method.clone(), &path, body.clone())
            .await;
        assert!(s.is_success(), "{method} {path} as admin: {s} {b}");
    }
    for open in ["/healthz", "/metrics"] {
        let (s, _) = app.call(None, Method::GET, open, None).await;
        assert_eq!(s, StatusCode::OK, "{open}");
    }
}

/// Every file under `dir`, read whole.
fn all_bytes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_secret_never_leaves_sealed() {
    let app = spawn_app().await;
    let first = "Very-Secret-Value-1-xq9";
    let second = "Other-Secret-Value-2-zk7";
    let (s, created) = app
        .call(
            Some(&app.admin),
            Method::POST,
            "/v1/domains",
            Some(json!({"domain": "sealed.onmicrosoft.com", "tenant_id": uuid::Uuid::new_v4(), "client_id": uuid::Uuid::new_v4(), "client_secret": first})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["credentials"]["secret_set"], true);
    let id = created["id"].as_str().unwrap();
    let (_, put) = app
        .call(
            Some(&app.admin),
            Method::PUT,
            &format!("/v1/domains/{id}/credentials"),
            Some(json!({"tenant_id": uuid::Uuid::new_v4(), "client_id": uuid::Uuid::new_v4(), "client_secret": second})),
        )
        .await;
    let mut seen = vec![created.to_string(), put.to_string()];
    for path in [
        "/v1/domains".to_owned(),
        format!("/v1/domains/{id}"),
        "/v1/events?limit=100".to_owned(),
    ] {
        seen.push(
            app.call(Some(&app.admin), Method::GET, &path, None)
                .await
                .1
                .to_string(),
        );
    }
    seen.push(
        reqwest::get(format!("{}/metrics", app.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    for text in &seen {
        assert!(
            !text.contains(first) && !text.contains(second),
            "a secret leaked: {text}"
        );
    }
    let events = app
        .call(Some(&app.admin), Method::GET, "/v1/events?limit=100", None)
        .await
        .1;
    let sealed: Vec<_> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "DomainCredentialsSet")
        .collect();
    assert_eq!(sealed.len(), 2);
    assert!(sealed
        .iter()
        .all(|e| e["payload"]["client_secret"] == "sealed"));
    // The engine can still open it: the secret is sealed, not lost.
    let creds = {
        let p = app.state.engine.projector.read();
        p.domains
            .get(DomainId(id.parse().unwrap()))
            .unwrap()
            .credentials
            .clone()
            .unwrap()
    };
    let stream = StreamId::domain(DomainId(id.parse().unwrap()));
    assert_eq!(
        app.state
            .engine
            .keyring
            .unseal(&stream, &creds.client_secret)
            .unwrap()
            .expose(),
        second
    );
    app.state.engine.log.flush().await.unwrap();
    for (path, bytes) in all_bytes(app.dir.path()) {
        for secret in [first, second] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{secret} in {}",
                path.display()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let app = spawn_app().await;
    let d = app.domain("input.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let head = app.head();
    let keystore = || std::fs::read(app.dir.path().join("keystore")).unwrap();
    let keys = keystore();
    let raw = |method: Method, path: &str, ctype: &str, body: Vec<u8>| {
        // A fresh connection each time: the server closes one whose oversized body it
        // did not read, and a pooled client would reuse it.
        let req = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
            .request(method, format!("{}{path}", app.url))
            .bearer_auth(&app.admin)
            .header("content-type", ctype)
            .body(body);
        async move {
            let r = req.send().await.unwrap();
            let s = r.status();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let json_ct = "application/json";
    // (method, path, content type, body, status, what the message must name)
    type Case<'a> = (Method, String, &'a str, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            b"{".to_vec(),
            400,
            "",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            br#"{"domain":"a.com","bogus":1}"#.to_vec(),
            422,
            "bogus",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            br#"{"domain":5}"#.to_vec(),
            422,
            "domain",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            br#"{"domain":"b.com","removal_behavior":"explode"}"#.to_vec(),
            422,
            "removal_behavior",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            br#"{"domain":"c.com","auto_password_change_days":0}"#.to_vec(),
            422,
            "auto_password_change_days",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            br#"{"domain":"e.com","tenant_id":"x","client_id":"11111111-2222-4333-8444-555555555555","client_secret":"s"}"#.to_vec(),
            422,
            "tenant_id",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            br#"{"domain":"not a domain"}"#.to_vec(),
            422,
            "domain",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            br#"{"domain":"d.com","tenant_id":"x"}"#.to_vec(),
            422,
            "client_secret",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            "text/plain",
            br#"{"domain":"e.com"}"#.to_vec(),
            415,
            "",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            vec![b' '; 2 << 20],
            413,
            "",
        ),
        (
            Method::PATCH,
            format!("/v1/domains/{d}"),
            json_ct,
            br#"{"sync_interval_minutes":"often"}"#.to_vec(),
            422,
            "sync_interval_minutes",
        ),
        (
            Method::PUT,
            format!("/v1/domains/{d}/credentials"),
            json_ct,
            br#"{"tenant_id":"nope","client_id":"x","client_secret":"s"}"#.to_vec(),
            422,
            "tenant_id",
        ),
        (
            Method::PUT,
            format!("/v1/domains/{d}/sso-defaults"),
            json_ct,
            br#"{"enabled":true}"#.to_vec(),
            422,
            "method",
        ),
        (
            Method::GET,
            "/v1/domains/not-a-uuid".into(),
            json_ct,
            vec![],
            400,
            "UUID",
        ),
        (
            Method::GET,
            format!("/v1/domains/{}", uuid::Uuid::new_v4()),
            json_ct,
            vec![],
            404,
            "",
        ),
        (
            Method::GET,
            "/v1/users?limit=abc".into(),
            json_ct,
            vec![],
            400,
            "limit",
        ),
        (
            Method::GET,
            "/v1/users?status=nope".into(),
            json_ct,
            vec![],
            400,
            "status",
        ),
        (
            Method::GET,
            "/v1/users?colour=red".into(),
            json_ct,
            vec![],
            400,
            "colour",
        ),
        // A route that takes no query or no body refuses one: `dry_run` where the route
        // has no such thing would otherwise be ignored and the real thing done.
        (
            Method::POST,
            format!("/v1/domains/{d}/sync"),
            json_ct,
            br#"{"dry_run":true}"#.to_vec(),
            400,
            "no request body",
        ),
        (
            Method::DELETE,
            format!("/v1/domains/{d}?dry_run=true"),
            json_ct,
            vec![],
            400,
            "no query",
        ),
        (
            Method::GET,
            format!("/v1/apps/{}?min_position=1", uuid::Uuid::new_v4()),
            json_ct,
            vec![],
            400,
            "no query",
        ),
        (
            Method::GET,
            "/v1/events?limit=100001".into(),
            json_ct,
            vec![],
            400,
            "limit",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            json_ct,
            br#"{"role":"agent"}"#.to_vec(),
            422,
            "key_ids",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            json_ct,
            br#"{"role":"root"}"#.to_vec(),
            422,
            "role",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            json_ct,
            br#"{"role":"auditor","name":"desk\u0007\u001b[31m"}"#.to_vec(),
            400,
            "name",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            json_ct,
            format!(r#"{{"role":"auditor","name":"{}"}}"#, "n".repeat(201)).into_bytes(),
            400,
            "name",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            json_ct,
            br#"{"role":"agent","key_ids":["K\u202eevil"]}"#.to_vec(),
            400,
            "key_ids",
        ),
        (
            Method::PUT,
            format!("/v1/users/{}/key", uuid::Uuid::new_v4()),
            json_ct,
            br#"{"key_id":"HZ-1\nHZ-2"}"#.to_vec(),
            400,
            "key_id",
        ),
        (
            Method::PUT,
            format!("/v1/users/{}/key", uuid::Uuid::new_v4()),
            json_ct,
            format!(r#"{{"key_id":"{}"}}"#, "K".repeat(129)).into_bytes(),
            400,
            "key_id",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            json_ct,
            br#"{"role":"agent","key_ids":["K1 "]}"#.to_vec(),
            422,
            "key_ids",
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            json_ct,
            "{\"role\":\"agent\",\"key_ids\":[\"K\u{200b}1\"]}".into(),
            400,
            "key_ids",
        ),
        // Parsers disagree on which of two equal keys counts.
        (
            Method::POST,
            "/v1/tokens".into(),
            json_ct,
            br#"{"role":"agent","key_ids":["K1"],"role":"admin"}"#.to_vec(),
            422,
            "twice",
        ),
        // Refused before the new domain's stream gets a data key (checked below).
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            br#"{"domain":"padded.example","tenant_id":"6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b","client_id":"11111111-2222-4333-8444-555555555555","client_secret":" padded"}"#.to_vec(),
            422,
            "client_secret",
        ),
        // A struct read from an array by position would skip the unknown-field check.
        (
            Method::POST,
            "/v1/tokens".into(),
            json_ct,
            br#"["auditor","array-form",[]]"#.to_vec(),
            422,
            "object",
        ),
        (
            Method::POST,
            "/v1/domains".into(),
            json_ct,
            br#"{"domain":"-a-.example"}"#.to_vec(),
            422,
            "domain",
        ),
        (
            Method::PUT,
            format!("/v1/domains/{d}/credentials"),
            json_ct,
            br#"{"tenant_id":"6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b","client_id":"11111111-2222-4333-8444-555555555555","client_secret":""}"#.to_vec(),
            422,
            "client_secret",
        ),
        (
            Method::GET,
            format!("/v1/domains/{d}/sync-runs/%ff"),
            json_ct,
            vec![],
            400,
            "",
        ),
        (
            Method::DELETE,
            "/v1/tokens/123".into(),
            json_ct,
            vec![],
            400,
            "",
        ),
        (
            Method::GET,
            "/v1/nothing-here".into(),
            json_ct,
            vec![],
            404,
            "",
        ),
    ];
    let mut cases = cases;
    // A method the route does not take: 405 in the same envelope, naming what it takes.
    for (method, path) in [
        (Method::PUT, "/v1/tokens"),
        (Method::DELETE, "/v1/users"),
        (Method::POST, &format!("/v1/domains/{d}/sync-runs") as &str),
    ] {
        cases.push((
            method,
            path.to_owned(),
            json_ct,
            b"{}".to_vec(),
            405,
            "Allow",
        ));
    }
    for (method, path, ctype, body, want, mention) in cases {
        let (s, b) = raw(method.clone(), &path, ctype, body).await;
        assert_eq!(s.as_u16(), want, "{method} {path}: {b}");
        let message = b["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no error body: {b}"));
        assert!(b["error"]["code"].is_string());
        assert!(
            message.contains(mention),
            "{method} {path}: {message:?} should name {mention:?}"
        );
    }
    // Two types: a proxy and the server could read one body two ways.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/tokens", app.url))
        .bearer_auth(&app.admin)
        .header("content-type", json_ct)
        .header("content-type", "text/plain")
        .body(r#"{"role":"auditor"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = reqwest::Client::new()
        .put(format!("{}/v1/tokens", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    let mut allowed: Vec<&str> = r.headers()["allow"].to_str().unwrap().split(',').collect();
    allowed.sort_unstable();
    assert_eq!(allowed, ["GET", "HEAD", "POST"]);
    assert_eq!(app.head(), head, "refused input appended nothing");
    assert!(keystore() == keys, "refused input made no data key");
}

/// Over HTTP/2 a body needs neither a length nor Transfer-Encoding: a streamed one sent
/// to a route that takes none is refused all the same, and the real thing is not done.
#[tokio::test]
async fn a_body_streamed_over_http2_where_none_is_taken_is_refused() {
    use http_body_util::BodyExt as _;
    let app = spawn_app().await;
    let d = app.domain("h2.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let head = app.head();
    let tcp = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut h2, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let mut send = |body: http_body_util::StreamBody<_>| {
        let req = hyper::Request::post(format!("{}/v1/domains/{d}/sync", app.url))
            .header("authorization", format!("Bearer {}", app.admin))
            .body(body)
            .unwrap();
        let answer = h2.send_request(req);
        async move {
            let r = answer.await.unwrap();
            let status = r.status();
            let body = r.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    let frames = |chunks: Vec<&'static [u8]>| {
        http_body_util::StreamBody::new(futures_util::stream::iter(chunks.into_iter().map(|c| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from_static(
                c,
            )))
        })))
    };
    let (status, body) = send(frames(vec![b"{\"dry_run\"", b":true}"])).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no request body"), "{body}");
    assert_eq!(app.head(), head, "the refused request did nothing");
    // The stream closed by an empty frame carried no body: the route itself answers.
    let (status, body) = send(frames(vec![b""])).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no credentials"), "{body}");
}

/// Every cursor a page hands out leads to the next page; one that names nothing is
/// refused rather than starting over (a client would go round in circles).
#[tokio::test]
async fn signing_keys_apps_and_user_events_page_by_their_cursors() {
    let app = spawn_app().await;
    let get = |path: String| {
        let app = &app;
        async move { app.call(Some(&app.admin), Method::GET, &path, None).await }
    };
    for _ in 0..3 {
        let (s, body) = app
            .call(
                Some(&app.admin),
                Method::POST,
                "/v1/provider/signing-keys",
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let kids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, all) = get("/v1/provider/signing-keys?limit=1000".into()).await;
    let all = kids(&all);
    assert!(all.len() >= 3, "{all:?}");
    let mut paged = Vec::new();
    let mut path = "/v1/provider/signing-keys?limit=2".to_owned();
    loop {
        let (s, page) = get(path.clone()).await;
        assert_eq!(s, StatusCode::OK, "{path}: {page}");
        paged.extend(kids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/provider/signing-keys?limit=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    let domain = app.domain("certs.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for path in [
        "/v1/provider/signing-keys?after=no-such-key".to_owned(),
        format!("/v1/domains/{domain}/workstation-certificates?after=no-such-certificate"),
        format!("/v1/apps?after={}", uuid::Uuid::now_v7()),
        format!("/v1/users/{}/events?limit=0", uuid::Uuid::now_v7()),
        format!("/v1/users/{}/events?limit=10001", uuid::Uuid::now_v7()),
    ] {
        let (s, body) = get(path.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
    }
}

/// One name, one domain, however many admins register it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_registered_by_many_at_once_exists_once() {
    let app = spawn_app().await;
    let tries = (0..8).map(|_| {
        app.call(
            Some(&app.admin),
            Method::POST,
            "/v1/domains",
            Some(json!({"domain": "race.onmicrosoft.com"})),
        )
    });
    let mut created = 0;
    for (s, body) in futures_util::future::join_all(tries).await {
        match s {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("exists already"),
                "{body}"
            ),
            s => panic!("{s}: {body}"),
        }
    }
    assert_eq!(created, 1);
    let (_, domains) = app
        .call(Some(&app.admin), Method::GET, "/v1/domains", None)
        .await;
    let named = domains["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["domain"] == "race.onmicrosoft.com")
        .count();
    assert_eq!(named, 1, "{domains}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_position_reads_your_writes_and_commands_answer_positions() {
    let app = spawn_app().await;
    let created = app.domain("ryw.onmicrosoft.com").await;
    let p = created["position"].as_u64().unwrap();
    assert_eq!(p, app.head());
    let id = created["id"].as_str().unwrap();
    let (s, patched) = app
        .call(
            Some(&app.admin),
            Method::PATCH,
            &format!("/v1/domains/{id}"),
            Some(json!({"auto_password_change_days": 7})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let p2 = patched["position"].as_u64().unwrap();
    assert!(p2 > p);
    let (_, got) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/domains/{id}?min_position={p2}"),
            None,
        )
        .await;
    assert_eq!(got["auto_password_change_days"], 7);
    // The same change again is a no-op that still answers a position.
    let (_, same) = app
        .call(
            Some(&app.admin),
            Method::PATCH,
            &format!("/v1/domains/{id}"),
            Some(json!({"auto_password_change_days": 7})),
        )
        .await;
    assert_eq!(same["position"].as_u64(), Some(p2));
    // Clearing an optional setting with null.
    let (_, cleared) = app
        .call(
            Some(&app.admin),
            Method::PATCH,
            &format!("/v1/domains/{id}"),
            Some(json!({"auto_password_change_days": null})),
        )
        .await;
    assert!(cleared["auto_password_change_days"].is_null());
    let (s, _) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/domains?min_position={}", app.head() + 1000),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_shown_once_and_revocation_takes_effect() {
    let app = spawn_app().await;
    let (s, created) = app
        .call(
            Some(&app.admin),
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "auditor", "name": "audit team"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let text = created["token"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    let (s, _) = app
        .call(Some(&text), Method::GET, "/v1/domains", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, listed) = app
        .call(Some(&app.admin), Method::GET, "/v1/tokens", None)
        .await;
    assert!(
        !listed.to_string().contains(&text),
        "the list never shows token text"
    );
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
    assert!(listed["next"].is_null());
    let (s, revoked) = app
        .call(
            Some(&app.admin),
            Method::DELETE,
            &format!("/v1/tokens/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    app.state
        .engine
        .projector
        .wait_for(
            revoked["position"].as_u64().unwrap(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let (s, _) = app
        .call(Some(&text), Method::GET, "/v1/domains", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Users: filters and paging.
    let d = app.domain("users.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..5 {
        app.user(&d).await;
    }
    let (_, first) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users?domain={d}&limit=2"),
            None,
        )
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let after = first["next"].as_str().unwrap();
    let (_, rest) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users?domain={d}&limit=10&after={after}"),
            None,
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 3);
    assert!(rest["next"].is_null());
    let (_, active) = app
        .call(
            Some(&app.admin),
            Method::GET,
            "/v1/users?status=active&q=megan",
            None,
        )
        .await;
    assert_eq!(active["items"].as_array().unwrap().len(), 5);
}

/// Reads SSE frames until `count` event ids were seen; returns them.
async fn read_sse(app: &App, query: &str, last_event_id: Option<u64>, count: usize) -> Vec<u64> {
    let mut req = app
        .http
        .get(format!("{}/v1/events/stream{query}", app.url))
        .bearer_auth(&app.admin);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let mut resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut buf = String::new();
    let mut ids = Vec::new();
    while ids.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("SSE stalled")
            .unwrap()
            .expect("SSE ended");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id:")) {
                ids.push(id.trim().parse().unwrap());
                let data = frame.lines().find_map(|l| l.strip_prefix("data:")).unwrap();
                let env: Value = serde_json::from_str(data.trim()).unwrap();
                assert_eq!(env["position"].as_u64(), ids.last().copied());
            }
        }
    }
    ids.truncate(count);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_is_history_then_live_across_a_reconnect() {
    let app = spawn_app().await;
    for i in 0..20 {
        app.domain(&format!("d{i}.onmicrosoft.com")).await;
    }
    // Appends keep coming while the stream is read.
    let url = app.url.clone();
    let admin = app.admin.clone();
    let writer = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for i in 0..60 {
            let r = http
                .post(format!("{url}/v1/domains"))
                .bearer_auth(&admin)
                .json(&json!({"domain": format!("live{i}.onmicrosoft.com")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }
    });
    let first = read_sse(&app, "?from_position=1", None, 40).await;
    assert_eq!(first, (1..=40).collect::<Vec<u64>>());
    // Reconnect where we stopped, once by query and once by Last-Event-ID.
    let second = read_sse(&app, "?from_position=41", None, 20).await;
    assert_eq!(second, (41..=60).collect::<Vec<u64>>());
    let third = read_sse(&app, "", Some(60), 21).await;
    assert_eq!(third, (61..=81).collect::<Vec<u64>>());
    writer.await.unwrap();
    let (s, _) = app.call(None, Method::GET, "/v1/events/stream", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_answers_equal_what_was_read_live_then() {
    let app = spawn_app().await;
    let d = app.domain("history.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let u = app.user(&d).await;
    let (_, live_before) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users/{u}"),
            None,
        )
        .await;
    let (_, list_before) = app
        .call(Some(&app.admin), Method::GET, "/v1/users", None)
        .await;
    let position = app.head();
    // A moment that lies between the two states, in the log's own clock.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let moment = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (s, _) = app
        .call(
            Some(&app.admin),
            Method::POST,
            &format!("/v1/users/{u}/deactivate"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    app.user(&d).await;
    let (_, live_after) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users/{u}"),
            None,
        )
        .await;
    assert_eq!(live_after["status"], "deactivated");
    let (_, at_position) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users/{u}?at_position={position}"),
            None,
        )
        .await;
    assert_eq!(at_position, live_before);
    let encoded = urlencoding_free(&moment);
    let (_, at_time) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users/{u}?at={encoded}"),
            None,
        )
        .await;
    assert_eq!(at_time, live_before);
    let (_, list_then) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users?at={encoded}"),
            None,
        )
        .await;
    assert_eq!(list_then, list_before);
    // Later points are folded on from the states just kept: the answers are the live ones.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    for point in [
        format!("at={}", urlencoding_free(&now)),
        format!("at_position={}", app.head()),
    ] {
        let (s, later) = app
            .call(
                Some(&app.admin),
                Method::GET,
                &format!("/v1/users/{u}?{point}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{point}");
        assert_eq!(later, live_after, "{point}");
    }
    let (s, _) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users/{u}?at=yesterday"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app
        .call(
            Some(&app.admin),
            Method::GET,
            &format!("/v1/users/{u}?at_position=1"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "the user did not exist yet");
    // A point not reached yet has no state to replay: its answer would change later.
    for point in [
        format!("at_position={}", app.head() + 1),
        format!("at_position={}", u64::MAX),
        "at=2999-01-01T00%3A00%3A00Z".to_owned(),
    ] {
        for path in [
            format!("/v1/users/{u}?{point}"),
            format!("/v1/users?{point}"),
        ] {
            let (s, body) = app.call(Some(&app.admin), Method::GET, &path, None).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{path}: {body}");
        }
    }
}

/// RFC 3339 in a query string: `+` and `:` must be escaped.
fn urlencoding_free(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_verify_and_replay_work_over_the_wire() {
    let app = spawn_app().await;
    let auditor = app.token("auditor", &[]).await;
    for i in 0..30 {
        app.domain(&format!("wire{i}.onmicrosoft.com")).await;
    }
    let d = app.domain("people.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..5 {
        app.user(&d).await;
    }
    // What verify would say on the data dir, computed on the served log itself.
    let mut local = idledger_replay::Verifier::new();
    app.state.engine.log.records(1)(&mut |pos, bytes| {
        local.push(pos, bytes);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let local = local.finish().summary_json();
    let run = |args: Vec<String>| {
        let token = auditor.clone();
        tokio::task::spawn_blocking(move || {
            let out = crate::support::idledger()
                .args(&args)
                .env("IDLEDGER_TOKEN", token)
                .output()
                .unwrap();
            (
                out.status.code(),
                String::from_utf8(out.stdout).unwrap(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (code, stdout, stderr) = run(vec!["verify".into(), "--server".into(), app.url.clone()])
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    let remote: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(remote, local);
    assert_eq!(remote["head_position"].as_u64(), Some(app.head()));

    let (code, stdout, _) = run(vec![
        "log".into(),
        "--server".into(),
        app.url.clone(),
        "--from-position".into(),
        "3".into(),
        "--limit".into(),
        "4".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|l| l["position"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![3, 4, 5, 6]
    );
    let direct = app.state.engine.log.read_all(3, 4).unwrap();
    assert_eq!(
        lines,
        direct.iter().map(|e| e.to_json()).collect::<Vec<_>>()
    );

    let until = app.head() - 3;
    let (code, stdout, _) = run(vec![
        "replay".into(),
        "--server".into(),
        app.url.clone(),
        "--until-position".into(),
        until.to_string(),
    ])
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    let remote: Value = serde_json::from_str(&stdout).unwrap();
    let folded = idledger_replay::fold(
        idledger::store::envelopes(&*app.state.engine.log, 1),
        idledger_replay::Until::Position(until),
        |_| {},
    )
    .unwrap();
    assert_eq!(remote, serde_json::to_value(&folded).unwrap());

    // Without a token, or with one the server refuses, nothing is checked: exit 2 and a
    // line saying so, never a history found broken.
    for token in [None, Some("idl_not-a-token")] {
        let out = tokio::task::spawn_blocking({
            let url = app.url.clone();
            move || {
                let mut cmd = crate::support::idledger();
                cmd.args(["verify", "--server", &url]);
                match token {
                    Some(t) => cmd.env("IDLEDGER_TOKEN", t),
                    None => cmd.env_remove("IDLEDGER_TOKEN"),
                };
                cmd.output().unwrap()
            }
        })
        .await
        .unwrap();
        let line: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(2), "{line}");
        assert_eq!(
            (&line["ok"], &line["checked"]),
            (&json!(false), &json!(false))
        );
        let said = line["error"].as_str().unwrap();
        assert!(
            said.contains(if token.is_some() {
                "401"
            } else {
                "IDLEDGER_TOKEN"
            }),
            "{said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_with_its_roles() {
    let app = spawn_app().await;
    let auditor = app.token("auditor", &[]).await;
    let (s, doc) = app.call(None, Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    // Path parameters say what the route takes: every export kind, a number of records.
    let schema_of = |path: &str| paths[path]["get"]["parameters"][0]["schema"].clone();
    assert_eq!(
        schema_of("/v1/audit/exports/{kind}")["enum"],
        json!(["password-changes", "events", "users", "sign-ins"])
    );
    assert_eq!(schema_of("/v1/log/sth/{tree_size}")["type"], "integer");
    let mut operations = 0;
    for (path, methods) in paths {
        let concrete = path.replace("{id}", &uuid::Uuid::new_v4().to_string());
        for (method, op) in methods.as_object().unwrap() {
            operations += 1;
            let m: Method = method.to_uppercase().parse().unwrap();
            let roles = op["description"].as_str().unwrap();
            let send = |token: Option<String>| {
                let mut req = app
                    .http
                    .request(m.clone(), format!("{}{concrete}", app.url));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                if m != Method::GET && m != Method::DELETE {
                    req = req.json(&json!({}));
                }
                async move { req.send().await.unwrap() }
            };
            // Served: not the fallback's 404 and not 405.
            let r = send(Some(app.admin.clone())).await;
            let status = r.status();
            if status == StatusCode::NOT_FOUND {
                let body: Value = r.json().await.unwrap();
                assert_ne!(
                    body["error"]["message"], "route not found",
                    "{method} {path} is documented but not served"
                );
            }
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            // The documented roles are the enforced ones.
            let as_auditor = send(Some(auditor.clone())).await.status();
            let anonymous = send(None).await.status();
            if roles.contains("none") {
                assert_ne!(anonymous, StatusCode::UNAUTHORIZED, "{method} {path}");
            } else {
                assert_eq!(anonymous, StatusCode::UNAUTHORIZED, "{method} {path}");
                assert_eq!(
                    as_auditor == StatusCode::FORBIDDEN,
                    !roles.contains("auditor"),
                    "{method} {path}: {roles}"
                );
            }
        }
    }
    assert_eq!(operations, idledger::http::operations().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let log_path = dir.path().join("serve.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = crate::support::idledger()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "json",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("IDLEDGER_LOG", "debug")
        .stderr(log_file)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    while !http
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = std::fs::read_to_string(dir.path().join("data/admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let secrets = [
        "Log-Secret-One-8f3k",
        "Log-Secret-Two-2m9q",
        "Log-Secret-Three-7x1z",
    ];
    let post = |body: Value| {
        let req = http
            .post(format!("{url}/v1/domains"))
            .bearer_auth(&token)
            .json(&body);
        async move { req.send().await.unwrap().status() }
    };
    let tid = uuid::Uuid::new_v4().to_string();
    assert_eq!(post(json!({"domain": "logs.onmicrosoft.com", "tenant_id": tid, "client_id": tid, "client_secret": secrets[0]})).await, StatusCode::CREATED);
    // Refused requests carrying secrets are logged too.
    assert_eq!(post(json!({"domain": "bad name", "tenant_id": tid, "client_id": tid, "client_secret": secrets[1]})).await, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(post(json!({"domain": "x.com", "tenant_id": "nope", "client_id": tid, "client_secret": secrets[2]})).await, StatusCode::UNPROCESSABLE_ENTITY);
    // SIGTERM: graceful shutdown writes its last lines.
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    child.wait().unwrap();
    let logs = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        logs.contains("admin.token"),
        "the bootstrap token's path is logged: {logs}"
    );
    assert!(logs.contains("stopped; the log is flushed"), "{logs}");
    assert!(
        !logs.contains(&token),
        "the bootstrap token reached the log"
    );
    for s in secrets {
        assert!(!logs.contains(s), "{s} reached the log");
    }
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_while_stopped_and_a_wrong_master_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = crate::support::idledger()
        .args([
            "token", "create", "--role", "agent", "--key-id", "KEY-7", "--name", "desk 7",
        ])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = created["token"].as_str().unwrap().to_owned();
    // The server starts on that data dir; the agent token is live, so no bootstrap token.
    let (state, bootstrap) = idledger::server::start_with(
        &data,
        &idledger::server::Config {
            allow_master_key_in_data_dir: true,
            ..idledger::server::Config::default()
        },
        idledger::sync::SyncConfig::default(),
        idledger::rotation::RotationConfig::default(),
    )
    .await
    .unwrap();
    assert!(bootstrap.is_none());
    let keys = {
        let p = state.engine.projector.read();
        let t = p
            .tokens
            .by_hash(&idledger::http::token_hash(&agent))
            .expect("the printed token is the one stored");
        t.key_ids.clone()
    };
    assert_eq!(keys, vec![idledger_domain::KeyId("KEY-7".into())]);
    // A key store made under one master key refuses another, clearly: a first serve
    // creates master.key and the key store, a second with another key must not start.
    let keyed = dir.path().join("keyed");
    let port = crate::support::free_port();
    let mut first = crate::support::idledger()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(&keyed)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::process::Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    first.wait().unwrap();
    let other = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let out = crate::support::idledger()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&keyed)
        .env("IDLEDGER_MASTER_KEY", other)
        .output()
        .unwrap();
    let out = (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(out.0, Some(2), "{}", out.1);
    assert!(out.1.contains("the master key does not match"), "{}", out.1);
}

/// Revoking a token ends what it has open: an event stream ends within two seconds and
/// carries nothing appended after the revocation; a streamed export is cut off with an
/// error, never ended as if complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_token_ends_its_open_streams() {
    let app = spawn_app().await;
    let (s, issued) = app
        .call(
            Some(&app.admin),
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "auditor", "name": "to be revoked"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{issued}");
    let (token, token_id) = (
        issued["token"].as_str().unwrap().to_owned(),
        issued["id"].as_str().unwrap().to_owned(),
    );
    let mut stream = app
        .http
        .get(format!("{}/v1/events/stream", app.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    app.domain("before.onmicrosoft.com").await;
    let (s, revoked) = app
        .call(
            Some(&app.admin),
            Method::DELETE,
            &format!("/v1/tokens/{token_id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{revoked}");
    let revoked_at = revoked["position"].as_u64().unwrap();
    for i in 0..5 {
        app.domain(&format!("after{i}.onmicrosoft.com")).await;
    }
    let started = std::time::Instant::now();
    let mut text = String::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            Ok(_) => break, // ended (cleanly or not)
            Err(_) => panic!("the stream is still open after its token was revoked"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let ids: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id:"))
        .map(|id| id.trim().parse().unwrap())
        .collect();
    assert!(!ids.is_empty());
    assert!(
        ids.iter().all(|p| *p < revoked_at),
        "sent after the revocation at {revoked_at}: {ids:?}"
    );

    // A streamed export with a token revoked while it runs is cut off with an error.
    let (exporter, exporter_id) = app.token_and_id("auditor", &[]).await;
    // Enough events that the export is far from done when the token goes.
    crate::support::fill_log(&*app.state.engine.log, 1000).await;
    let mut export = app
        .http
        .get(format!("{}/v1/audit/exports/events?format=jsonl", app.url))
        .bearer_auth(&exporter)
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), StatusCode::OK);
    let first = export.chunk().await.unwrap();
    assert!(first.is_some());
    app.revoke(&exporter_id).await;
    assert_eq!(how_it_ends(export).await, "aborted");

    // So is a backup download: a cut file fails its check, it never passes as whole.
    let (backer, backer_id) = app.token_and_id("auditor", &[]).await;
    let mut backup = app
        .http
        .get(format!("{}/v1/backup", app.url))
        .bearer_auth(&backer)
        .send()
        .await
        .unwrap();
    assert_eq!(backup.status(), StatusCode::OK);
    assert!(backup.chunk().await.unwrap().is_some());
    app.revoke(&backer_id).await;
    assert_eq!(how_it_ends(backup).await, "aborted");
}

/// Reads the rest of a streamed body: `complete` or `aborted` (within seconds, or the
/// test fails).
async fn how_it_ends(mut body: reqwest::Response) -> &'static str {
    loop {
        match tokio::time::timeout(Duration::from_secs(3), body.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return "complete",
            Ok(Err(_)) => return "aborted",
            Err(_) => panic!("the body goes on after its token was revoked"),
        }
    }
}

/// An export sent to be checked takes a while to arrive and to check: a token revoked
/// meanwhile gets no report (it may carry a row of the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_of_an_upload_answers_no_token_revoked_while_it_arrived() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::support::spawn_app().await;
    let (auditor, auditor_id) = app.token_and_id("auditor", &[]).await;
    let file = app
        .admin_get("/v1/audit/exports/events?format=jsonl&at_position=2")
        .await
        .bytes()
        .await
        .unwrap();
    let (_, manifest) = app
        .call(
            Some(&auditor),
            Method::GET,
            "/v1/audit/exports/events/manifest?format=jsonl&at_position=2",
            None,
        )
        .await;
    let mut body = serde_json::to_vec(&manifest).unwrap();
    body.push(b'\n');
    body.extend_from_slice(&file);
    let upload = |token: String, body: Vec<u8>, revoke: bool| {
        let app = &app;
        let auditor_id = auditor_id.clone();
        async move {
            let mut conn = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
                .await
                .unwrap();
            let head = format!(
                "POST /v1/audit/verify-export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            let half = body.len() / 2;
            conn.write_all(&body[..half]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            if revoke {
                let s = app.revoke(&auditor_id).await;
                assert!(s.is_success(), "{s}");
            }
            conn.write_all(&body[half..]).await.unwrap();
            let mut answer = Vec::new();
            conn.read_to_end(&mut answer).await.unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let checked = upload(auditor.clone(), body.clone(), false).await;
    assert!(checked.starts_with("HTTP/1.1 200"), "{checked}");
    assert!(checked.contains("\"ok\":true"), "{checked}");
    let refused = upload(auditor, body, true).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
}

/// A client that stops reading a long response (here an event stream replaying a big
/// log) is cut off once it has taken nothing for `write_stall_timeout_secs`: its stream
/// slot comes back, and nothing it holds outlives its token for longer than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_its_stream_slot_freed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::support::spawn_app_tuned(Default::default(), |c| {
        c.max_event_streams = 1;
        c.write_stall_timeout_secs = 1;
    })
    .await;
    crate::support::fill_log(&*app.state.engine.log, 2000).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket
        .connect(app.url.trim_start_matches("http://").parse().unwrap())
        .await
        .unwrap();
    let request = format!(
        "GET /v1/events/stream?from_position=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        app.admin
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 1024];
    let n = stalled.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // It reads no more. Its stream holds the only slot ...
    let stream = || {
        app.http
            .get(format!("{}/v1/events/stream", app.url))
            .bearer_auth(&app.admin)
            .send()
    };
    assert_eq!(
        stream().await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // ... until the stall timeout cuts the connection.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = stream().await.unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled stream keeps its slot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_bounded_and_hostile_resume_points_refused() {
    let app = spawn_app().await;
    let (s, body) = app
        .call_with(
            &app.admin,
            "/v1/events/stream",
            &[("Last-Event-ID", "18446744073709551615")],
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    // Past the head by query (a stream saying nothing, holding a slot), and a header
    // that is no text (read as none, the whole log from 1): refused too.
    let past = format!("/v1/events/stream?from_position={}", app.head() + 5);
    let (s, body) = app.call_with(&app.admin, &past, &[]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    let r = app
        .http
        .get(format!("{}/v1/events/stream", app.url))
        .bearer_auth(&app.admin)
        .header(
            "Last-Event-ID",
            reqwest::header::HeaderValue::from_bytes(b"41\x80").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let mut open = Vec::new();
    for _ in 0..8 {
        let r = app
            .http
            .get(format!("{}/v1/events/stream", app.url))
            .bearer_auth(&app.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    let busy = app
        .http
        .get(format!("{}/v1/events/stream", app.url))
        .bearer_auth(&app.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(busy.headers().contains_key("retry-after"));
    // A closed stream gives its place back.
    drop(open.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = app
            .http
            .get(format!("{}/v1/events/stream", app.url))
            .bearer_auth(&app.admin)
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The master key is kept apart from the data it protects unless explicitly allowed, and
/// the data dir is its owner's alone: 0700 directories, 0600 files.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_lives_apart_and_the_data_dir_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = crate::support::free_port();
    let serve = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_idledger"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env_remove("IDLEDGER_MASTER_KEY")
            .env_remove("IDLEDGER_ALLOW_MASTER_KEY_IN_DATA_DIR");
        cmd
    };
    let out = serve(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--master-key-file"), "{err}");
    let inside = data.join("master.key");
    let out = serve(&["--master-key-file", inside.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("inside the data dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!inside.exists());

    // Outside the data dir it is created (0600), and serve runs.
    let key_file = dir.path().join("secrets").join("idledger.key");
    std::fs::create_dir_all(key_file.parent().unwrap()).unwrap();
    let mut child = serve(&["--master-key-file", key_file.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !reqwest::get(format!("{url}/readyz"))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(std::time::Instant::now() < deadline, "serve did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/domains"))
        .bearer_auth(token.trim())
        .json(&json!({"domain": "private.onmicrosoft.com", "tenant_id": "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b",
                      "client_id": "11111111-2222-4333-8444-555555555555", "client_secret": "s3cret-for-the-keystore"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    child.kill().unwrap();
    child.wait().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key_file), 0o600);
    // A key file others may read is refused, and what it holds is not shown.
    let key_text = std::fs::read_to_string(&key_file).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = serve(&["--master-key-file", key_file.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("chmod 600"), "{err}");
    assert!(!err.contains(key_text.trim()), "{err}");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!data.join("master.key").exists());
    let mut stack = vec![data.clone()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{}", path.display());
                files += 1;
            }
        }
    }
    assert!(files >= 3, "keystore, store files, admin.token");
}

/// Reads of the whole log (and event pages beyond 1,000) run on threads a request's timeout
/// cannot stop: two at a time, the rest answered 503 (and served again once a place is
/// free); an uploaded manifest
/// that names a position past the head is refused before it sizes anything.
#[tokio::test]
async fn whole_log_reads_are_bounded_and_a_manifest_past_the_head_is_refused() {
    let app = spawn_app().await;
    let d = app.domain("bounded.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let u = app.user(&d).await;
    let path = format!("/v1/users/{u}?at_position={}", app.head());
    let taken = app
        .state
        .whole_log_reads
        .clone()
        .try_acquire_many_owned(idledger::http::WHOLE_LOG_READS as u32)
        .unwrap();
    // One user as of a past point reads their stream, not the log: it answers meanwhile.
    let (s, b) = app.call(Some(&app.admin), Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::OK, "{path}: {b}");
    for busy in [
        "/v1/users?at_position=1",
        "/v1/audit/exports/users/manifest",
        "/v1/events?limit=5000",
    ] {
        let (s, b) = app.call(Some(&app.admin), Method::GET, busy, None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{busy}: {b}");
        assert_eq!(b["error"]["code"], "busy", "{b}");
    }
    // An upload to check is refused before its body is taken in (a gigabyte, announced,
    // of which only the head is ever sent); so is one announced larger than any upload may
    // be, whatever else is going on.
    for (length, status) in [("1000000000", "503"), ("4000000000", "413")] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut upload = tokio::net::TcpStream::connect(app.url.trim_start_matches("http://"))
            .await
            .unwrap();
        let request = format!(
            "POST /v1/audit/verify-export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {length}\r\n\r\n{{}}\n",
            app.admin
        );
        upload.write_all(request.as_bytes()).await.unwrap();
        let mut answer = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), upload.read(&mut answer))
            .await
            .expect("answered before the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
    }
    // A page the size of any collection's needs no place.
    let (s, b) = app
        .call(Some(&app.admin), Method::GET, "/v1/events?limit=1000", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    drop(taken);
    let (s, b) = app
        .call(Some(&app.admin), Method::GET, "/v1/events?limit=5000", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app.call(Some(&app.admin), Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(app.state.whole_log_reads.available_permits(), 2);

    let (s, mut manifest) = app
        .call(
            Some(&app.admin),
            Method::GET,
            "/v1/audit/exports/users/manifest",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{manifest}");
    manifest["log_position"] = json!(u64::MAX);
    let answer = app.verify_upload(&app.admin, &manifest, b"").await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let report: Value = answer.json().await.unwrap();
    assert!(
        report["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("past this log's head")),
        "{report}"
    );
}

/// API answers carry people's details and sometimes secrets: no cache keeps them, no
/// browser sniffs them, and an export downloads as a file.
#[tokio::test]
async fn api_answers_are_never_stored_and_exports_download() {
    let app = spawn_app().await;
    app.domain("cache.onmicrosoft.com").await;
    for path in ["/v1/domains", "/v1/tokens", "/v1/nothing-here"] {
        let r = app.admin_get(path).await;
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
    let r = app.admin_get("/v1/audit/exports/users").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"idledger-users.csv\""
    );
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = app
        .admin_get("/v1/audit/exports/users/manifest?format=jsonl")
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-disposition"],
        "attachment; filename=\"idledger-users.jsonl.manifest.json\""
    );
}

/// Streamed exports and backups hold a blocking thread each while their clients read:
/// bounded, the rest answered 503 with Retry-After, and a place is free again when its
/// stream ends.
#[tokio::test]
async fn streamed_exports_and_backups_are_bounded() {
    let app = spawn_app().await;
    app.domain("streams.onmicrosoft.com").await;
    let taken = app
        .state
        .log_streams
        .clone()
        .try_acquire_many_owned(idledger::http::LOG_STREAMS as u32)
        .unwrap();
    for path in ["/v1/audit/exports/users", "/v1/backup"] {
        let r = app.admin_get(path).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(r.headers()["retry-after"], "5");
    }
    drop(taken);
    for path in ["/v1/audit/exports/users", "/v1/backup"] {
        let r = app.admin_get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        r.bytes().await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while app.state.log_streams.available_permits() != idledger::http::LOG_STREAMS {
        assert!(std::time::Instant::now() < deadline, "a place was kept");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client secret typed as a number (or any non-string) is refused without being quoted
/// back: serde's own message would put it into the 422, and so into proxies' and clients'
/// logs. Nothing is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_of_the_wrong_type_is_refused_without_being_repeated() {
    let app = spawn_app().await;
    let d = app.domain("typed.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let head = app.head();
    let tid = uuid::Uuid::new_v4().to_string();
    let secret = 83920174591u64;
    let cases = [
        (
            Method::POST,
            "/v1/domains".to_owned(),
            json!({"domain": "n.onmicrosoft.com", "tenant_id": tid, "client_id": tid, "client_secret": secret}),
        ),
        (
            Method::PUT,
            format!("/v1/domains/{d}/credentials"),
            json!({"tenant_id": tid, "client_id": tid, "client_secret": secret}),
        ),
        (
            Method::PATCH,
            format!("/v1/domains/{d}"),
            json!({"auto_import": true, "client_secret": secret}),
        ),
        (
            Method::POST,
            "/v1/domains/check".to_owned(),
            json!({"tenant_id": tid, "client_id": tid, "client_secret": secret}),
        ),
        (
            Method::PUT,
            format!("/v1/domains/{d}/credentials"),
            json!({"tenant_id": tid, "client_id": tid, "client_secret": [secret, true, 1.5]}),
        ),
    ];
    for (method, path, body) in cases {
        let (s, answer) = app
            .call(Some(&app.admin), method.clone(), &path, Some(body))
            .await;
        assert_eq!(
            s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{method} {path}: {answer}"
        );
        let text = answer.to_string();
        assert!(text.contains("client_secret"), "{method} {path}: {text}");
        assert!(
            !text.contains("8392017"),
            "{method} {path} quoted the secret: {text}"
        );
    }
    assert_eq!(app.head(), head, "nothing was recorded");
}

/// `PATCH /v1/users/{id}` with `{}` says nothing, so it changes nothing; `null` clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_user_patch_keeps_the_override_and_null_clears_it() {
    let app = spawn_app().await;
    let d = app.domain("patch.onmicrosoft.com").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let u = app.user(&d).await;
    let path = format!("/v1/users/{u}");
    let set = json!({"sso_override": {"enabled": true, "method": "password_and_second_factor"}});
    let (s, body) = app
        .call(Some(&app.admin), Method::PATCH, &path, Some(set))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let head = app.head();
    let (s, body) = app
        .call(Some(&app.admin), Method::PATCH, &path, Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("sso_override"), "{body}");
    assert_eq!(app.head(), head, "nothing was recorded");
    let (_, user) = app.call(Some(&app.admin), Method::GET, &path, None).await;
    assert_eq!(
        user["sso_override"]["method"], "password_and_second_factor",
        "{user}"
    );
    let (s, user) = app
        .call(
            Some(&app.admin),
            Method::PATCH,
            &path,
            Some(json!({"sso_override": null})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{user}");
    assert_eq!(user["sso_override"], Value::Null, "{user}");
}
