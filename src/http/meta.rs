//! `/healthz`, `/readyz` and `/metrics` (no token).

use super::error::ApiError;
use super::AppState;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::ToSchema;

/// `GET /healthz`: the process answers; the log's head and the projector's position.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when it answers.
    status: Alive,
    /// How far an acknowledged append has gone.
    durability: crate::store::Durability,
    /// The last committed position.
    head_position: u64,
    /// The position the projections have reached.
    projector_position: u64,
}

/// What `/healthz` says of the process: that it answers.
#[derive(Serialize, ToSchema, Clone, Copy, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Alive {
    /// It answers.
    Ok,
}

/// Liveness with the log head and projector position.
pub async fn healthz(State(s): State<AppState>) -> axum::Json<Health> {
    axum::Json(Health {
        status: Alive::Ok,
        durability: s.engine.log.durability(),
        head_position: s.engine.log.head().position,
        projector_position: s.engine.projector.position(),
    })
}

/// `GET /readyz`: why the server is not ready, or that it is.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    status: ReadyStatus,
    /// What is wrong, when something is.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    problems: Vec<String>,
}

/// Whether the server takes traffic.
#[derive(Serialize, ToSchema, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadyStatus {
    /// It does (200).
    #[serde(rename = "ready")]
    Ready,
    /// It does not (503): `problems` says why.
    #[serde(rename = "not ready")]
    NotReady,
}

/// What keeps this server from taking traffic: the log closed after a failed write,
/// projections stopped at a record they cannot fold, or a data dir that takes no writes
/// (full, read-only, gone). (Before the projections have
/// caught up at start, `serve` answers `/readyz` from its starting router: 503.)
fn readiness_problems(s: &AppState) -> Vec<String> {
    let mut problems = Vec::new();
    if !s.engine.log.accepting() {
        problems.push("the event log refuses appends after a failed write".into());
    }
    if s.engine.projector.stopped() {
        problems.push(format!(
            "the projections stopped at position {}",
            s.engine.projector.position()
        ));
    }
    if let Err(e) = s.data_dir_probe.check() {
        problems.push(format!("the data dir takes no writes: {e}"));
    }
    problems
}

/// Whether the data dir takes writes, found by writing a file into it: at most once per
/// [`DataDirProbe::FRESH`], however often `/readyz` and `/metrics` (both open to anyone
/// who reaches the port) are asked. The log's commits sync the same file system, so
/// probes must not be a load an outsider controls, nor wait on one another.
pub struct DataDirProbe {
    dir: std::path::PathBuf,
    /// Held only to look and to record, never while a probe writes: a data dir that
    /// hangs (a dying disk, a stalled NFS mount) must not park a thread of every caller.
    state: std::sync::Mutex<ProbeState>,
    writes: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct ProbeState {
    /// When the last probe ended and what it found.
    last: Option<(std::time::Instant, Result<(), String>)>,
    /// The file system's free bytes, as the last probe found them.
    available_bytes: Option<u64>,
    /// When the probe under way started.
    running_since: Option<std::time::Instant>,
}

impl DataDirProbe {
    /// How long a probe's answer stands.
    pub const FRESH: std::time::Duration = std::time::Duration::from_secs(1);

    /// Probes once at once: from then on there is always an answer to give.
    pub fn new(dir: &std::path::Path) -> DataDirProbe {
        let probe = DataDirProbe {
            dir: dir.to_owned(),
            state: std::sync::Mutex::new(ProbeState::default()),
            writes: std::sync::atomic::AtomicU64::new(0),
        };
        let _ = probe.check();
        probe
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProbeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last answer while it is fresh, else a new probe's (blocking: file IO). Asked
    /// while another probe writes, the last answer, until that probe has taken longer
    /// than an answer stands: then the data dir is not taking writes.
    pub fn check(&self) -> Result<(), String> {
        {
            let mut st = self.state();
            if let Some((at, answer)) = &st.last {
                if at.elapsed() < Self::FRESH {
                    return answer.clone();
                }
            }
            if let Some(since) = st.running_since {
                let waited = since.elapsed();
                return match &st.last {
                    Some((_, answer)) if waited < Self::FRESH => answer.clone(),
                    _ if waited < Self::FRESH => Err("the data dir is being checked".into()),
                    _ => Err(format!(
                        "a write to the data dir has not finished in {}s",
                        waited.as_secs()
                    )),
                };
            }
            st.running_since = Some(std::time::Instant::now());
        }
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // One serve per data dir (its lock), and probes of this one never overlap: one
        // name per process does.
        let probe = self.dir.join(format!(".readyz-{}", std::process::id()));
        let answer = std::fs::write(&probe, b"ok")
            .and_then(|()| match std::fs::remove_file(&probe) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                other => other,
            })
            .map_err(|e| e.to_string());
        let available = available_bytes(&self.dir);
        let mut st = self.state();
        st.last = Some((std::time::Instant::now(), answer.clone()));
        // Unknown when the file system no longer says: a stale figure would hide that.
        st.available_bytes = available;
        st.running_since = None;
        answer
    }

    /// The free bytes the last probe found (a probe asks the file system too, so a hung
    /// one parks no caller here either).
    pub fn available_bytes(&self) -> Option<u64> {
        self.state().available_bytes
    }

    /// Files written so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Readiness: 200 when the server can take traffic, 503 with the reasons when not.
pub async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let problems = tokio::task::spawn_blocking(move || readiness_problems(&s))
        .await
        .unwrap_or_else(|e| vec![e.to_string()]);
    let status = if problems.is_empty() {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(Readiness {
            status: if problems.is_empty() {
                ReadyStatus::Ready
            } else {
                ReadyStatus::NotReady
            },
            problems,
        }),
    )
}

/// Free bytes of the file system holding `dir`.
pub(crate) fn available_bytes(dir: &std::path::Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Prometheus text format, or OpenMetrics when `Accept` asks for it.
pub async fn metrics(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let format = crate::metrics::Format::of_accept(
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()),
    );
    let text = tokio::task::spawn_blocking(move || {
        let mut snapshot = crate::metrics::Snapshot {
            head: s.engine.log.head().position,
            projected: s.engine.projector.position(),
            durability: s.engine.log.durability().as_str(),
            ..Default::default()
        };
        snapshot.ready = readiness_problems(&s).is_empty();
        snapshot.available_bytes = s.data_dir_probe.available_bytes();
        let now = chrono::Utc::now();
        let p = s.engine.projector.read();
        // A removed domain's name may be registered again: its users and writes are no
        // longer counted, under that name or any other.
        let name = |d| {
            p.domains
                .get(d)
                .filter(|d| !d.removed)
                .map(|d| d.name.clone())
        };
        snapshot.domains = p
            .domains
            .all()
            .into_iter()
            .filter(|d| !d.removed)
            .map(|d| d.name.clone())
            .collect();
        snapshot.apps = p
            .provider
            .apps()
            .into_iter()
            .filter(|a| !a.removed)
            .map(|a| a.id.0.to_string())
            .collect();
        snapshot.users = p
            .users
            .counts()
            .into_iter()
            .filter_map(|((d, status), n)| Some((name(d)?, status, n)))
            .collect();
        // Every live domain has its series, at zero when nothing waits.
        let mut undelivered: std::collections::BTreeMap<String, (u64, f64)> = snapshot
            .domains
            .iter()
            .map(|d| (d.clone(), (0, 0.0)))
            .collect();
        for w in p.key_writes.pending() {
            let Some(domain) = p.users.get(w.user_id).and_then(|u| name(u.domain_id)) else {
                continue;
            };
            let age = (now - w.queued_at).num_milliseconds().max(0) as f64 / 1e3;
            let e = undelivered.entry(domain).or_default();
            e.0 += 1;
            e.1 = e.1.max(age);
        }
        snapshot.undelivered = undelivered
            .into_iter()
            .map(|(d, (n, age))| (d, n, age))
            .collect();
        drop(p);
        crate::metrics::scrape(&snapshot, format)
    })
    .await
    // An empty 200 would pass for a scrape that found every series gone.
    .map_err(|e| ApiError::Internal(format!("the metrics could not be gathered: {e}")))?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], text))
}

/// The OpenAPI document, built from the same table as the router.
pub async fn openapi() -> axum::Json<super::openapi::Document> {
    axum::Json(super::openapi::document())
}
