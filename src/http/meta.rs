//! `/healthz` and `/metrics` (no token).

use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use utoipa::ToSchema;

/// `GET /healthz`: the process answers; the log's head and the projector's position.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when it answers.
    status: &'static str,
    /// `device` or `process`: how far an acknowledged append has gone.
    durability: &'static str,
    /// The last committed position.
    head_position: u64,
    /// The position the projections have reached.
    projector_position: u64,
}

/// Liveness with the log head and projector position.
pub async fn healthz(State(s): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        durability: s.engine.log.durability().as_str(),
        head_position: s.engine.log.head().position,
        projector_position: s.engine.projector.position(),
    })
}

/// Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    let head = s.engine.log.head().position;
    let projected = s.engine.projector.position();
    let stats = s.engine.log.stats();
    let _ = writeln!(
        out,
        "# HELP idledger_http_requests_total HTTP requests by route and status."
    );
    let _ = writeln!(out, "# TYPE idledger_http_requests_total counter");
    for ((route, status), n) in s
        .metrics
        .requests
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
    {
        let _ = writeln!(
            out,
            "idledger_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
        );
    }
    let flushes = stats.flushes.load(Ordering::Relaxed);
    let micros = stats.commit_micros.load(Ordering::Relaxed);
    let _ = writeln!(
        out,
        "# HELP idledger_append_commit_seconds Time of group commits (encode, write, flush)."
    );
    let _ = writeln!(out, "# TYPE idledger_append_commit_seconds summary");
    let _ = writeln!(
        out,
        "idledger_append_commit_seconds_sum {}",
        micros as f64 / 1e6
    );
    let _ = writeln!(out, "idledger_append_commit_seconds_count {flushes}");
    let _ = writeln!(out, "# TYPE idledger_appended_events_total counter");
    let _ = writeln!(
        out,
        "idledger_appended_events_total {}",
        stats.events.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP idledger_durability How far an acknowledged append has gone (device: fdatasync; process: sled's flush only)."
    );
    let _ = writeln!(out, "# TYPE idledger_durability gauge");
    let _ = writeln!(
        out,
        "idledger_durability{{level=\"{}\"}} 1",
        s.engine.log.durability().as_str()
    );
    let _ = writeln!(out, "# TYPE idledger_log_head_position gauge");
    let _ = writeln!(out, "idledger_log_head_position {head}");
    let _ = writeln!(out, "# TYPE idledger_projector_position gauge");
    let _ = writeln!(out, "idledger_projector_position {projected}");
    let _ = writeln!(out, "# TYPE idledger_projector_lag gauge");
    let _ = writeln!(
        out,
        "idledger_projector_lag {}",
        head.saturating_sub(projected)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// The OpenAPI document, built from the same table as the router.
pub async fn openapi() -> impl IntoResponse {
    axum::Json(super::openapi::document())
}
