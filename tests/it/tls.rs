//! HTTPS on both sides: the Graph client's real TLS path (graphsim over HTTPS with a test
//! CA, the CA bundle, named certificate errors, a CONNECT proxy) and `serve` over TLS
//! (versions, ALPN, HSTS, the redirect listener, certificate reloads).

use crate::support::{
    client_trusting, domain_body, idledger, tls_sim, tls_sim_with, tls_world, world_in, Serve, APP,
    SECRET, TENANT,
};
use graphsim::tls::{Issued, TestCa};
use idledger::graph::TlsProblem;
use idledger::graph::{GraphClient, GraphError, GraphSettings, GraphTrust, RetryPolicy, Secret};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

/// Sync, a rotation and `graph check`, all over HTTPS to graphsim with its CA trusted.
#[tokio::test]
async fn sync_rotation_and_graph_check_take_the_tls_path() {
    let w = tls_world(json!({"auto_import": true})).await;
    assert!(w.sim.starts_with("https://localhost:"), "{}", w.sim);
    let run = w.sync().await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(w.user(3).await.is_some());

    let id = w.assign_key(3, "K-0003").await;
    w.rotate(&id).await;
    let h = w.rotations_settled(&id, 1).await;
    assert_eq!(h[0]["outcome"], "succeeded", "{h:?}");
    assert_eq!(
        w.reveal(&id).await["password"].as_str().unwrap(),
        w.sim_password(3).await
    );
    // Every handshake named the host (SNI: Graph's front ends route by it) and offered
    // HTTP/1.1 by ALPN.
    let stats = w.sim_get("/_sim/stats").await;
    let hellos = stats["tls_hellos"].as_array().unwrap();
    assert!(hellos.len() >= 2, "{stats}");
    for hello in hellos {
        assert_eq!(hello["server_name"], "localhost", "{hello}");
        let alpn = hello["alpn"].as_array().unwrap();
        assert!(alpn.contains(&json!("http/1.1")), "{hello}");
    }

    // `graph check` with the bundle passes; without it the token request fails, named.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, w.sim_ca.as_deref().unwrap()).unwrap();
    // graphsim runs on this test's runtime: the command is awaited, not waited for.
    let check = |bundle: Option<&Path>| {
        let mut cmd = idledger();
        cmd.args(["graph", "check", "--tenant-id", TENANT, "--client-id", APP])
            .args(["--graph-url", &w.sim, "--authority-url", &w.sim])
            .env("IDLEDGER_CLIENT_SECRET", SECRET)
            .env_remove("IDLEDGER_GRAPH_CA_BUNDLE");
        if let Some(b) = bundle {
            cmd.arg("--graph-ca-bundle").arg(b);
        }
        async move {
            let out = tokio::process::Command::from(cmd).output().await.unwrap();
            let report: Value = serde_json::from_slice(&out.stdout).unwrap();
            (out.status.code(), report)
        }
    };
    let (code, report) = check(Some(&ca)).await;
    assert_eq!((code, &report["ok"]), (Some(0), &json!(true)), "{report}");
    let (code, report) = check(None).await;
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(report["token"]["error"], "TlsUnknownIssuer", "{report}");
    assert!(
        report["token"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown issuer"),
        "{report}"
    );
}

/// A CA the client does not know fails the run with the problem named, in the run and in
/// the domain's `last_sync`; nothing is imported.
#[tokio::test]
async fn an_unknown_issuer_fails_the_sync_naming_it() {
    let (sim, _) = tls_sim().await;
    let other = TestCa::new("some other CA").unwrap();
    let sync = idledger::sync::SyncConfig {
        trust: GraphTrust::with_pem_bundle(other.cert_pem().as_bytes()).unwrap(),
        ..idledger::sync::SyncConfig::default()
    };
    let w = world_in(
        crate::support::spawn_app_with(sync).await,
        sim,
        None,
        json!({"auto_import": true}),
    )
    .await;
    let run = w.sync_domain(&w.domain).await;
    assert_eq!(run["status"], "failed", "{run}");
    let (_, domain) = w
        .admin(Method::GET, &format!("/v1/domains/{}", w.domain), None)
        .await;
    let text = domain["last_sync"].to_string();
    assert!(text.contains("TlsUnknownIssuer"), "{text}");
    assert!(text.contains("unknown issuer"), "{text}");
    assert_eq!(w.users("").await, Vec::<Value>::new());
}

fn settings(url: &str) -> GraphSettings {
    GraphSettings {
        authority_url: url.to_owned(),
        graph_url: url.to_owned(),
        tenant_id: TENANT.to_owned(),
        client_id: APP.to_owned(),
        client_secret: Secret::new(SECRET.to_owned()),
    }
}

/// An expired certificate and one for another host are named as such, at the first
/// attempt (a setting does not heal on retry).
#[tokio::test]
async fn expired_and_wrong_host_certificates_are_named() {
    let ca = TestCa::new("idledger test CA").unwrap();
    let trust = GraphTrust::with_pem_bundle(ca.cert_pem().as_bytes()).unwrap();
    let year = Duration::from_secs(365 * 86_400);
    let now = std::time::SystemTime::now();
    let cases = [
        (
            ca.issue_valid(&["localhost"], now - 2 * year, now - year)
                .unwrap(),
            TlsProblem::Expired,
        ),
        (
            ca.issue(&["graph.example.net"]).unwrap(),
            TlsProblem::WrongHost,
        ),
        (
            TestCa::new("unknown")
                .unwrap()
                .issue(&["localhost"])
                .unwrap(),
            TlsProblem::UnknownIssuer,
        ),
    ];
    for (leaf, want) in cases {
        let url = tls_sim_with(&leaf).await;
        let client = GraphClient::new(settings(&url), RetryPolicy::default(), &trust).unwrap();
        let started = Instant::now();
        match client.access_token().await {
            Err(GraphError::Tls { host, problem }) => {
                assert_eq!((host.as_str(), &problem), ("localhost", &want));
            }
            Err(other) => panic!("{want:?}: {other}"),
            Ok(_) => panic!("{want:?}: a token"),
        }
        // RetryPolicy::default() backs off 200 ms and more between attempts: none here.
        assert!(started.elapsed() < Duration::from_millis(150));
    }
}

/// An HTTPS proxy written here: answers CONNECT, pipes bytes, records each target.
async fn connect_proxy() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut words = text.split_whitespace();
                let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                };
                record.lock().unwrap().push(target.to_owned());
                let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (url, seen)
}

/// Creates the contoso domain on `serve`, syncs it and answers the finished run.
async fn sync_through(serve: &Serve, sim: &str) -> Value {
    let d = serve
        .call(
            Method::POST,
            "/v1/domains",
            Some(domain_body(
                "contoso.onmicrosoft.com",
                sim,
                SECRET,
                &json!({}),
            )),
        )
        .await;
    let id = d["id"].as_str().unwrap();
    let started = serve
        .call(Method::POST, &format!("/v1/domains/{id}/sync"), None)
        .await;
    let run = started["run_id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = serve
            .call(
                Method::GET,
                &format!("/v1/domains/{id}/sync-runs/{run}"),
                None,
            )
            .await;
        if r["status"] != "running" {
            return r;
        }
        assert!(Instant::now() < deadline, "{r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `HTTPS_PROXY` carries the sync through a CONNECT tunnel (the CA bundle still checks
/// graphsim's certificate end to end); `NO_PROXY` takes the host out of it.
#[tokio::test]
async fn a_sync_goes_through_an_https_proxy() {
    let (sim, ca) = tls_sim().await;
    let (proxy, seen) = connect_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    std::fs::write(&bundle, &ca).unwrap();
    let port = sim.rsplit(':').next().unwrap().to_owned();
    let bundle_env = bundle.to_str().unwrap();

    let data = dir.path().join("proxied");
    let serve = Serve::start_with(
        &data,
        None,
        &[
            ("HTTPS_PROXY", proxy.as_str()),
            ("NO_PROXY", ""),
            ("IDLEDGER_GRAPH_CA_BUNDLE", bundle_env),
        ],
    )
    .await;
    let run = sync_through(&serve, &sim).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    let tunnels = seen.lock().unwrap().clone();
    assert!(!tunnels.is_empty());
    assert!(
        tunnels.iter().all(|t| *t == format!("localhost:{port}")),
        "{tunnels:?}"
    );
    drop(serve);

    let data = dir.path().join("direct");
    let before = seen.lock().unwrap().len();
    let serve = Serve::start_with(
        &data,
        None,
        &[
            ("HTTPS_PROXY", proxy.as_str()),
            ("NO_PROXY", "localhost"),
            ("IDLEDGER_GRAPH_CA_BUNDLE", bundle_env),
        ],
    )
    .await;
    let run = sync_through(&serve, &sim).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(seen.lock().unwrap().len(), before);
}

// ---- serve over TLS -------------------------------------------------------------------

/// Writes a certificate and key as an operator's tooling does: new files renamed onto
/// the old ones.
fn install(dir: &Path, pair: &Issued) {
    for (name, text) in [("cert.pem", &pair.cert_pem), ("key.pem", &pair.key_pem)] {
        let tmp = dir.join(format!("{name}.new"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// `serve --tls-cert --tls-key` as a child, killed when dropped.
struct TlsServe {
    child: std::process::Child,
    port: u16,
    redirect_port: u16,
}

impl Drop for TlsServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TlsServe {
    async fn start(dir: &Path, ca: &TestCa, reload_secs: &str) -> TlsServe {
        Self::start_with(dir, ca, reload_secs, &[]).await
    }

    async fn start_with(
        dir: &Path,
        ca: &TestCa,
        reload_secs: &str,
        env: &[(&str, &str)],
    ) -> TlsServe {
        let serve = Self::spawn(dir, reload_secs, env);
        let http = client_trusting(&ca.cert_pem());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http
            .get(serve.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(Instant::now() < deadline, "serve did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        serve
    }

    /// `serve` with TLS, not waited for.
    fn spawn(dir: &Path, reload_secs: &str, env: &[(&str, &str)]) -> TlsServe {
        let (port, redirect_port) = (crate::support::free_port(), crate::support::free_port());
        let child = idledger()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--redirect-listen", &format!("127.0.0.1:{redirect_port}")])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--tls-cert")
            .arg(dir.join("cert.pem"))
            .arg("--tls-key")
            .arg(dir.join("key.pem"))
            .env("IDLEDGER_TLS_RELOAD_SECS", reload_secs)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        TlsServe {
            child,
            port,
            redirect_port,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Whether a new connection trusting only `ca` gets `/healthz`.
    async fn trusted_by(&self, ca: &TestCa) -> bool {
        client_trusting(&ca.cert_pem())
            .get(self.url("/healthz"))
            .send()
            .await
            .is_ok()
    }
}

fn client_config(ca: &TestCa, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(port: u16, ca: &TestCa, alpn: &[&[u8]]) -> TlsStream {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(client_config(ca, alpn))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// One HTTP/1.1 GET on an open connection; the status line.
async fn get_on(stream: &mut TlsStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "the connection closed: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text.lines().next().unwrap().to_owned();
            }
        }
    }
}

/// A ClientHello as a TLS 1.2 client would send it (ECDHE-ECDSA with AES-GCM, P-256 or
/// X25519, SNI), with `version` as the highest version offered; built byte by byte, since
/// no TLS library here would offer TLS 1.1.
fn client_hello(version: [u8; 2]) -> Vec<u8> {
    fn extension(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut e = kind.to_be_bytes().to_vec();
        e.extend((data.len() as u16).to_be_bytes());
        e.extend(data);
        e
    }
    let name = b"localhost";
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    let mut extensions = extension(0x0000, &sni);
    extensions.extend(extension(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]));
    extensions.extend(extension(0x000b, &[1, 0]));
    extensions.extend(extension(0x000d, &[0, 4, 0x04, 0x03, 0x08, 0x04]));
    let mut body = version.to_vec();
    body.extend([0x42; 32]);
    body.push(0); // no session id
    body.extend([0, 4, 0xc0, 0x2b, 0xc0, 0x2f]);
    body.extend([1, 0]); // null compression
    body.extend((extensions.len() as u16).to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01, 0, (body.len() >> 8) as u8, body.len() as u8];
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// The first record `serve` answers a ClientHello with (read until it closes or 5 bytes
/// of header and the record are in).
async fn first_record(port: u16, hello: &[u8]) -> Vec<u8> {
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    raw.write_all(hello).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        got.extend_from_slice(&buf[..n]);
        let whole =
            got.len() >= 5 && got.len() >= 5 + u16::from_be_bytes([got[3], got[4]]) as usize;
        if n == 0 || whole {
            return got;
        }
    }
}

#[tokio::test]
async fn serve_speaks_tls_12_and_13_with_alpn_hsts_and_a_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("serve's CA").unwrap();
    install(dir.path(), &ca.issue(&["localhost"]).unwrap());
    let serve = TlsServe::start(dir.path(), &ca, "3600").await;

    let r = client_trusting(&ca.cert_pem())
        .get(serve.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    // Over TLS the console's cookies are Secure.
    let page = client_trusting(&ca.cert_pem())
        .get(serve.url("/"))
        .send()
        .await
        .unwrap();
    let cookie = page.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    for (min, max) in [
        (
            reqwest::tls::Version::TLS_1_2,
            reqwest::tls::Version::TLS_1_2,
        ),
        (
            reqwest::tls::Version::TLS_1_3,
            reqwest::tls::Version::TLS_1_3,
        ),
    ] {
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap())
            .min_tls_version(min)
            .max_tls_version(max)
            .build()
            .unwrap();
        let r = client.get(serve.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{max:?}");
    }

    // The same hello gets a ServerHello as TLS 1.2, and a protocol_version alert (70)
    // as TLS 1.1.
    let answer = first_record(serve.port, &client_hello([3, 3])).await;
    assert_eq!((answer[0], answer[5]), (0x16, 0x02), "{answer:02x?}");
    let answer = first_record(serve.port, &client_hello([3, 2])).await;
    assert_eq!(answer, [0x15, 3, 3, 0, 2, 2, 70], "{answer:02x?}");

    // ALPN: h2 when offered, http/1.1 otherwise.
    let h2 = tls_connect(serve.port, &ca, &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h1 = tls_connect(serve.port, &ca, &[b"http/1.1"]).await;
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get_on(&mut h1, "/healthz").await, "HTTP/1.1 200 OK");

    // The plain listener only redirects, keeping path and query, to the public origin
    // whatever Host the request names: a forged one sends no one elsewhere.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = format!("http://localhost:{}/v1/users?limit=5", serve.redirect_port);
    for host in [None, Some("evil.example")] {
        let mut request = plain.get(&url);
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()["location"],
            format!("https://localhost:{}/v1/users?limit=5", serve.port).as_str(),
            "Host {host:?}"
        );
    }
}

/// Whether the peer closes `stream` within `wait` (whatever it sends first).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// `serve` over TLS whose header-read timeout (and HTTP/2 ping) is one second.
async fn serve_cutting_at_one_second() -> (tempfile::TempDir, TestCa, TlsServe) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("serve's CA").unwrap();
    install(dir.path(), &ca.issue(&["localhost"]).unwrap());
    let serve = TlsServe::start_with(
        dir.path(),
        &ca,
        "3600",
        &[("IDLEDGER_HEADER_READ_TIMEOUT_SECS", "1")],
    )
    .await;
    (dir, ca, serve)
}

/// One HTTP/2 frame off `stream`: its type, flags and payload.
async fn h2_frame<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (u8, u8, Vec<u8>) {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], payload)
}

/// An HTTP/2 client served once and then silent (it answers no ping) is cut: the header
/// timeout guards HTTP/1.1's wait for the next request, pings guard HTTP/2's.
#[tokio::test]
async fn an_http2_client_gone_silent_after_a_request_is_cut() {
    let (_dir, ca, serve) = serve_cutting_at_one_second().await;
    let mut h2 = tls_connect(serve.port, &ca, &[b"h2"]).await;
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // The server's settings, acknowledged.
    loop {
        let (kind, flags, _) = h2_frame(&mut h2).await;
        if kind == 4 && flags & 1 == 0 {
            break;
        }
    }
    h2.write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        .await
        .unwrap();
    // GET /healthz on stream 1 (HPACK: GET, https, :path and :authority literals).
    let mut block = vec![0x82, 0x87, 0x44, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    h2.write_all(&frame).await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let (kind, flags, _) = h2_frame(&mut h2).await;
            if (kind == 0 || kind == 1) && flags & 1 == 1 {
                break;
            }
        }
    })
    .await;
    assert!(served.is_ok(), "the request was not answered");
    assert!(
        closed_within(&mut h2, Duration::from_secs(5)).await,
        "a silent HTTP/2 client kept its connection"
    );
}

/// Over TLS too a connection that completes its handshake and then sends nothing, or
/// half a request, is cut at the header-read timeout, with either protocol; so is a
/// silent client of the redirect listener.
#[tokio::test]
async fn silent_tls_connections_are_cut_at_the_header_timeout() {
    let (_dir, ca, serve) = serve_cutting_at_one_second().await;
    let mut h1 = tls_connect(serve.port, &ca, &[b"http/1.1"]).await;
    let mut h2 = tls_connect(serve.port, &ca, &[b"h2"]).await;
    let mut half = tls_connect(serve.port, &ca, &[b"http/1.1"]).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", serve.redirect_port))
        .await
        .unwrap();
    let wait = Duration::from_secs(4);
    assert!(closed_within(&mut h1, wait).await, "silent HTTP/1.1");
    assert!(closed_within(&mut h2, wait).await, "silent h2");
    assert!(closed_within(&mut half, wait).await, "half a request");
    assert!(
        closed_within(&mut plain, wait).await,
        "silent redirect client"
    );
    // A client that asks in time is served as before.
    let mut prompt = tls_connect(serve.port, &ca, &[b"http/1.1"]).await;
    assert_eq!(get_on(&mut prompt, "/healthz").await, "HTTP/1.1 200 OK");
}

/// A new certificate in the files is served to new connections without a restart, once
/// the files change (looked at every second here); an open connection keeps working.
#[tokio::test]
async fn a_certificate_swap_is_picked_up_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        TestCa::new("old CA").unwrap(),
        TestCa::new("new CA").unwrap(),
    );
    install(dir.path(), &old.issue(&["localhost"]).unwrap());
    let serve = TlsServe::start(dir.path(), &old, "1").await;
    let mut open = tls_connect(serve.port, &old, &[b"http/1.1"]).await;
    assert_eq!(get_on(&mut open, "/healthz").await, "HTTP/1.1 200 OK");
    assert!(!serve.trusted_by(&new).await);

    install(dir.path(), &new.issue(&["localhost"]).unwrap());
    let deadline = Instant::now() + Duration::from_secs(15);
    while !serve.trusted_by(&new).await {
        assert!(
            Instant::now() < deadline,
            "the new certificate was not loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!serve.trusted_by(&old).await);
    assert_eq!(get_on(&mut open, "/healthz").await, "HTTP/1.1 200 OK");

    // A key that does not match the certificate is not loaded: the new pair stays.
    let stray = new.issue(&["localhost"]).unwrap();
    std::fs::write(dir.path().join("key.pem"), &stray.key_pem).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(serve.trusted_by(&new).await);
}

/// With a long look interval, SIGHUP loads the files at once.
/// SIGHUP means "reload" (a certificate renewal's hook, `systemctl reload`): it never
/// ends the server, with TLS or without, nor before TLS's reloader has started.
#[tokio::test]
async fn sighup_never_ends_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(&dir.path().join("data"), None).await;
    let pid = rustix::process::Pid::from_raw(serve.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "SIGHUP ended plain serve"
    );
    assert_eq!(serve.get("/healthz").await.status(), StatusCode::OK);

    // With TLS, a SIGHUP the moment the port answers (the server may still be starting).
    let tls_dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("serve's CA").unwrap();
    install(tls_dir.path(), &ca.issue(&["localhost"]).unwrap());
    let mut tls = TlsServe::spawn(tls_dir.path(), "3600", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", tls.port)).is_err() {
        assert!(Instant::now() < deadline, "serve did not listen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = rustix::process::Pid::from_raw(tls.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ended = tls.child.try_wait().unwrap();
    assert!(
        ended.is_none(),
        "SIGHUP ended starting TLS serve: {ended:?}"
    );
    assert!(tls.trusted_by(&ca).await);
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        TestCa::new("old CA").unwrap(),
        TestCa::new("new CA").unwrap(),
    );
    install(dir.path(), &old.issue(&["localhost"]).unwrap());
    let serve = TlsServe::start(dir.path(), &old, "86400").await;
    install(dir.path(), &new.issue(&["localhost"]).unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(serve.trusted_by(&old).await, "reloaded before SIGHUP");
    let pid = rustix::process::Pid::from_raw(serve.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !serve.trusted_by(&new).await {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
