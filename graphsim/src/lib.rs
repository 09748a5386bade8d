//! graphsim: a faithful-enough Microsoft Graph v1.0 and identity platform for idledger's
//! tests and demo. Same paths, JSON shapes, paging, delta semantics, permission checks,
//! errors and throttling as the real service (see `../shared/graph/GRAPH.md`), plus a
//! loopback-only control API under `/_sim`.
#![forbid(unsafe_code)]

pub mod control;
pub mod graph;
pub mod id_token;
pub mod jwt;
pub mod signin;
pub mod state;
pub mod tenant;
pub mod tls;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use state::LoggedRequest;
pub use state::Sim;
use std::net::SocketAddr;

pub use state::{Fault, SimConfig};
pub use tenant::{Directory, TenantFile};

/// The router: Graph and token routes behind the request log and faults, `/_sim` behind
/// the loopback check.
pub fn router(sim: Sim) -> Router {
    let graph = Router::new()
        .route("/v1.0/groups", get(graph::list_groups))
        .route("/v1.0/groups/delta", get(graph::groups_delta))
        // OData function-call syntax, as Microsoft's generated SDKs send it.
        .route("/v1.0/groups/delta()", get(graph::groups_delta))
        .route("/v1.0/groups/{id}/members", get(graph::group_members))
        .route(
            "/v1.0/groups/{id}/members/microsoft.graph.user",
            get(graph::group_members),
        )
        .route("/v1.0/users", get(graph::list_users))
        .route("/v1.0/users/delta", get(graph::users_delta))
        .route("/v1.0/users/delta()", get(graph::users_delta))
        .route(
            "/v1.0/users/{id}",
            get(graph::get_user).patch(graph::patch_user),
        )
        .route("/v1.0/domains", get(graph::list_domains))
        .route("/{tenant}/oauth2/v2.0/token", post(graph::token))
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            get(signin::authorize_page).post(signin::authorize_submit),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(signin::jwks))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(graph::openid_configuration),
        )
        .layer(middleware::from_fn_with_state(sim.clone(), log_and_faults));
    let control = Router::new()
        .route("/_sim/users", post(control::create_user))
        .route(
            "/_sim/users/{id}",
            axum::routing::patch(control::patch_user).delete(control::delete_user),
        )
        .route("/_sim/users/{id}/password", get(control::password))
        .route(
            "/_sim/users/{id}/repeat-delete",
            post(control::repeat_delete),
        )
        .route("/_sim/users/{id}/stale-read", post(control::stale_read))
        .route(
            "/_sim/users/{id}/repeat-disable",
            post(control::repeat_disable),
        )
        .route(
            "/_sim/users/{id}/repeat-enable",
            post(control::repeat_enable),
        )
        .route("/_sim/users/{id}/unseen-read", post(control::unseen_read))
        .route(
            "/_sim/domains/{name}",
            axum::routing::put(control::put_domain),
        )
        .route("/_sim/password-log", get(control::password_log))
        .route("/_sim/link-host", axum::routing::put(control::link_host))
        .route(
            "/_sim/token-lifetime",
            axum::routing::put(control::token_lifetime),
        )
        .route("/_sim/groups", post(control::create_group))
        .route(
            "/_sim/groups/{group}",
            axum::routing::delete(control::delete_group),
        )
        .route(
            "/_sim/groups/{group}/members/{user}",
            post(control::add_member).delete(control::remove_member),
        )
        .route(
            "/_sim/groups/{group}/members/{user}/repeat-add",
            post(control::repeat_add),
        )
        .route(
            "/_sim/groups/{group}/members/{user}/repeat-remove",
            post(control::repeat_remove),
        )
        .route(
            "/_sim/groups/{group}/members/{user}/unseen-read",
            post(control::unseen_member),
        )
        .route(
            "/_sim/groups/{group}/members/{user}/unseen-delta",
            post(control::unseen_in_delta).delete(control::unseen_in_delta),
        )
        .route(
            "/_sim/faults",
            post(control::add_fault).delete(control::clear_faults),
        )
        .route("/_sim/delta/expire", post(control::expire_delta))
        .route(
            "/_sim/delta/order",
            axum::routing::put(control::delta_order),
        )
        .route("/_sim/requests", get(control::requests))
        .route("/_sim/stats", get(control::stats))
        .route(
            "/_sim/apps/{client_id}",
            axum::routing::patch(control::patch_app),
        )
        .layer(middleware::from_fn(loopback_only));
    graph
        .merge(control)
        .fallback(graph::unknown_segment)
        .method_not_allowed_fallback(graph::method_not_allowed)
        .with_state(sim)
}

/// Refuses `/_sim` to anyone not on loopback.
async fn loopback_only(req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match peer {
        Some(ip) if ip.is_loopback() => next.run(req).await,
        _ => (
            StatusCode::FORBIDDEN,
            "the control API answers loopback only",
        )
            .into_response(),
    }
}

/// Logs the request, applies a matching fault, and stamps `request-id` on the answer.
async fn log_and_faults(State(sim): State<Sim>, mut req: Request, next: Next) -> Response {
    // The host the request was sent to, kept before `link-host` rewrites it (a token's
    // audience is checked against it); set here whatever the client sent.
    match req.headers().get(axum::http::header::HOST).cloned() {
        Some(served) => req.headers_mut().insert(graph::SERVED_HOST, served),
        None => req.headers_mut().remove(graph::SERVED_HOST),
    };
    if let Some(host) = sim.lock().link_host.clone() {
        if let Ok(v) = HeaderValue::from_str(&host) {
            req.headers_mut().insert(axum::http::header::HOST, v);
        }
    }
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let headers = req
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str() != "authorization")
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let client_request_id = req.headers().get("client-request-id").cloned();
    let fault = {
        let mut inner = sim.lock();
        inner.log_request(LoggedRequest {
            method: method.clone(),
            path: path.clone(),
            query: req.uri().query().unwrap_or("").to_owned(),
            headers,
            time: chrono::Utc::now().to_rfc3339(),
        });
        inner.take_fault(&method, &path)
    };
    let patch = method == "PATCH" && path.starts_with("/v1.0/users/");
    if patch {
        sim.patches.enter();
        if !sim.config.patch_latency.is_zero() {
            tokio::time::sleep(sim.config.patch_latency).await;
        }
    }
    // Leaves the gauge however the request ends (answered, or dropped with the client).
    struct Leave<'a>(Option<&'a state::PatchGauge>);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            if let Some(g) = self.0 {
                g.leave();
            }
        }
    }
    let _leave = Leave(patch.then_some(&*sim.patches));
    let mut response = match fault {
        None => next.run(req).await,
        Some(f) if f.complete_after_disconnect => {
            // The rest runs on its own task: when the caller hangs up, this handler's
            // future is dropped, but the task goes on and acts, as Graph would.
            let task = tokio::spawn(apply_fault(f, req, next));
            match task.await {
                Ok(r) => r,
                Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            }
        }
        Some(f) => apply_fault(f, req, next).await,
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        h.insert("request-id", v);
    }
    if let Some(v) = client_request_id {
        h.insert("client-request-id", v);
    }
    response
}

/// Serves a request under a fault: hold it, then cut it, refuse it, or serve it.
async fn apply_fault(f: Fault, req: Request, next: Next) -> Response {
    if let Some(ms) = f.delay_ms {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    if f.drop_connection || f.drop_after_apply {
        if f.drop_after_apply {
            // Graph acts; only the answer is lost.
            let _ = next.run(req).await;
        }
        // An answer whose body fails mid-stream: the client sees the connection cut.
        let failing = futures_util::stream::once(async {
            Err::<axum::body::Bytes, std::io::Error>(std::io::Error::other("dropped by a fault"))
        });
        return Response::new(axum::body::Body::from_stream(failing));
    }
    if f.cut_after_headers {
        let (mut parts, body) = next.run(req).await.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        let half = bytes.slice(..bytes.len() / 2);
        let chunks = futures_util::StreamExt::chain(
            futures_util::stream::iter([Ok(half)]),
            futures_util::stream::once(async {
                // Long enough for the head and the first half to be on the wire.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                Err(std::io::Error::other("cut by a fault"))
            }),
        );
        return Response::from_parts(parts, axum::body::Body::from_stream(chunks));
    }
    if let Some(pad) = f.pad_bytes {
        let (parts, body) = next.run(req).await.into_parts();
        let Ok(mut bytes) = axum::body::to_bytes(body, usize::MAX).await.map(Vec::from) else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        bytes.resize(bytes.len() + pad, b' ');
        let mut parts = parts;
        parts.headers.remove(axum::http::header::CONTENT_LENGTH);
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    if f.next_link_to_self || f.next_link_to_self_renamed {
        let mut own = format!("{}{}", graph::base_url(req.headers()), req.uri());
        if f.next_link_to_self_renamed {
            static RENAMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = RENAMED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            own = format!("{own}#again-{n}");
        }
        return next_link_to(next.run(req).await, own).await;
    }
    match f.status.and_then(|s| StatusCode::from_u16(s).ok()) {
        None => next.run(req).await,
        Some(status) => fault_response(status, f.retry_after),
    }
}

/// `answer` with its `@odata.nextLink` set to `link`.
async fn next_link_to(answer: Response, link: String) -> Response {
    let (parts, body) = answer.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    v["@odata.nextLink"] = serde_json::Value::String(link);
    if let Some(o) = v.as_object_mut() {
        o.remove("@odata.deltaLink");
    }
    let mut parts = parts;
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(v.to_string()))
}

fn fault_response(status: StatusCode, retry_after: Option<f64>) -> Response {
    let code = match status.as_u16() {
        429 => "TooManyRequests",
        503 => "serviceNotAvailable",
        504 => "gatewayTimeout",
        401 => "InvalidAuthenticationToken",
        403 => "Authorization_RequestDenied",
        400 => "Request_BadRequest",
        _ => "generalException",
    };
    // A throttled answer's inner code is the status in digits, as Graph sends it.
    let inner = (status.as_u16() == 429).then_some("429");
    let mut r = graph::graph_error_with_inner_code(status, code, "Injected by graphsim.", inner);
    if let Some(s) = retry_after {
        if let Ok(v) = HeaderValue::from_str(&format!("{s}")) {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

/// Serves `sim` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sim: Sim,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(sim).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Starts a simulator on a free loopback port in the current runtime; returns its base URL
/// and a handle to its state. Used by tests and `idledger demo`.
pub async fn spawn(dir: Directory, config: SimConfig) -> std::io::Result<(String, Sim)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let sim = Sim::new(dir, config);
    let serving = sim.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(listener, serving, std::future::pending()).await {
            tracing::error!(error = %e, "graphsim stopped");
        }
    });
    Ok((url, sim))
}

/// Serves `sim` over HTTPS with `tls` on `listener` until `shutdown` resolves.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    sim: Sim,
    tls: std::sync::Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let stopping = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopping.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    });
    listener.set_nonblocking(true)?;
    let tls = tls::recording_hellos(&tls, sim.hellos.clone());
    axum_server::tls_rustls::from_tcp_rustls(
        listener,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )?
    .handle(handle)
    .serve(
        router(sim)
            .layer(axum::middleware::map_request(https_request))
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

/// Marks a request as having come over HTTPS, so the links graphsim writes say https.
async fn https_request(mut request: axum::extract::Request) -> axum::extract::Request {
    request.headers_mut().insert(
        "x-forwarded-proto",
        axum::http::HeaderValue::from_static("https"),
    );
    request
}

/// [`spawn`] over HTTPS: the base URL is `https://localhost:<port>`, so the client sends
/// SNI and checks the name as it would for Graph; `tls` carries the certificate (see
/// [`tls::TestCa`]).
pub async fn spawn_tls(
    dir: Directory,
    config: SimConfig,
    tls: std::sync::Arc<rustls::ServerConfig>,
) -> std::io::Result<(String, Sim)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("https://localhost:{}", listener.local_addr()?.port());
    let sim = Sim::new(dir, config);
    let serving = sim.clone();
    tokio::spawn(async move {
        if let Err(e) = serve_tls(listener, serving, tls, std::future::pending()).await {
            tracing::error!(error = %e, "graphsim stopped");
        }
    });
    Ok((url, sim))
}

/// Loads a tenant file.
pub fn load_tenant(path: &std::path::Path) -> Result<Directory, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_tenant(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Parses a tenant file's text.
pub fn parse_tenant(text: &str) -> Result<Directory, String> {
    let file: TenantFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
    Ok(Directory::from_file(file))
}
