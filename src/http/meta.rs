//! `/healthz` and `/metrics` (no token).

use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Liveness with the log head and projector position.
pub async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "status": "ok",
        "durability": s.log.durability().as_str(),
        "head_position": s.log.head().position,
        "projector_position": s.projector.position(),
    }))
}

/// Prometheus text format.
pub async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    let head = s.log.head().position;
    let projected = s.projector.position();
    let stats = s.log.stats();
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
        s.log.durability().as_str()
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
    axum::Json(super::openapi_document())
}
