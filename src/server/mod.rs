//! The engine as a server: start-up (log, keys, projections, a bootstrap token, the
//! sync workers and the rotation scheduler), the HTTP API on a listener, and a graceful
//! shutdown with a final flush. No command-line parsing: `cli::serve` hands in a
//! [`Config`].

mod config;
mod tls;
mod tokens;

pub use config::{Config, Flags, LogFormat};
pub use tls::{redirect_router, FilesSeen, TlsError, TlsFiles};
pub use tokens::issue_token;

use crate::engine::Engine;
use crate::error::Error;
use crate::http::{self, AppState};
use crate::notary::Notary;
use crate::projector::Projector;
use crate::rotation::{RotationConfig, RotationService};
use crate::secrets::keystore::KeyFile;
use crate::secrets::{write_private, KeyStorage, Keyring, MasterKey};
use crate::store::{EventLog, SledEventLog};
use crate::sync::{SyncConfig, SyncService};
use idledger_domain::{Actor, Role, StreamId};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Opens everything `serve` needs and starts the sync workers. On a log with no live
/// token, writes a bootstrap admin token to `<data-dir>/admin.token` (0600) and returns
/// that path.
pub async fn start_with(
    data_dir: &Path,
    config: &Config,
    sync: SyncConfig,
    rotation: RotationConfig,
) -> Result<(AppState, Option<PathBuf>), Error> {
    let request_timeout = Duration::from_secs(config.request_timeout_secs);
    let mailer = crate::invite::Mailer::new(config.smtp.as_ref(), data_dir)
        .map_err(|e| Error::Other(e.to_string()))?;
    let secrets = |e: crate::secrets::SecretsError| Error::Other(e.to_string());
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::Other(format!("{}: {e}", data_dir.display())))?;
    crate::metrics::set_enabled(config.metrics);
    let (master, created) = MasterKey::load(
        data_dir,
        config.master_key_file.as_deref(),
        config.allow_master_key_in_data_dir,
    )
    .map_err(secrets)?;
    // The tree's files are derived: ones that no longer give the root the log key signed
    // are made again from the records, rather than taken for another history.
    let kept = crate::notary::latest_kept_root(data_dir);
    let log = SledEventLog::open_expecting_root(data_dir, config.durability, kept)?;
    log.snapshots().set_capacity(config.snapshot_streams);
    private_dir(data_dir)?;
    if let Some(path) = created {
        tracing::warn!(path = %path.display(), "created a new master key: back it up apart from the data dir, without it no sealed secret can be read");
    }
    let keys = Arc::new(KeyFile::open(data_dir).map_err(secrets)?);
    let moved = move_legacy_keys(&log, &*keys)?;
    if moved > 0 {
        tracing::warn!(
            count = moved,
            "moved the wrapped data keys an earlier build kept in sled to the key store file; \
             copies may stay in the free space of sled's file until it is reused: to erase \
             them now, back the data dir up offline and restore it into a new one"
        );
    }
    let keyring = Keyring::open(master, keys.clone()).map_err(secrets)?;
    let projector = Projector::start(log.clone());
    projector
        .wait_for(log.head().position, Duration::from_secs(600))
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    let deleted: Vec<StreamId> = projector
        .read()
        .users
        .deleted()
        .map(StreamId::user)
        .collect();
    let shredded = crate::secrets::shred_all(&*keys, deleted).map_err(secrets)?;
    if shredded > 0 {
        tracing::warn!(
            users = shredded,
            "shredded the keys of deleted users that the key store still held"
        );
    }
    let mut bootstrap = None;
    if projector.read().tokens.none_live() {
        let (_, text, position) = issue_token(
            &*log,
            Actor::System,
            Role::Admin,
            "bootstrap".into(),
            vec![],
        )
        .await?;
        let path = data_dir.join("admin.token");
        let _ = std::fs::remove_file(&path);
        write_private(&path, format!("{text}\n").as_bytes())
            .map_err(|e| Error::Other(e.to_string()))?;
        projector
            .wait_for(position, Duration::from_secs(10))
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        tracing::info!(path = %path.display(), "no API token was live: wrote a bootstrap admin token");
        bootstrap = Some(path);
    }
    let tree = log
        .tree()
        .ok_or_else(|| Error::Other("the log keeps no Merkle tree".into()))?;
    let notary = Notary::start(
        data_dir,
        tree,
        &keyring,
        Duration::from_millis(config.sth_interval_ms),
    )
    .map_err(|e| Error::Other(e.to_string()))?;
    let keyring = Arc::new(keyring);
    let engine = Engine {
        log,
        projector,
        keyring,
    };
    let sync = SyncService::start(engine.clone(), sync);
    sync.close_interrupted_runs()
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    sync.finish_approvals();
    sync.supervise();
    let rotation = RotationService::start(engine.clone(), sync.clone(), rotation);
    let state = AppState {
        engine,
        data_dir: Arc::from(data_dir),
        data_dir_probe: Arc::new(http::DataDirProbe::new(data_dir)),
        request_timeout,
        sync,
        mailer: Arc::new(mailer),
        rotation,
        agent_lease: Duration::from_secs(config.agent_lease_secs),
        event_streams: http::StreamSlots::new(config.max_event_streams),
        notary,
        https: config.tls_cert.is_some(),
        sessions: Arc::new(http::Sessions::new(Duration::from_secs(
            config.console_idle_minutes * 60,
        ))),
        public_url: config
            .public_url
            .as_deref()
            .map(http::PublicUrl::parse)
            .transpose()
            .map_err(|e| Error::Other(format!("public_url: {e}")))?,
        invite_ttl: chrono::Duration::hours(i64::from(config.invite_ttl_hours)),
        signin_idle: Duration::from_secs(config.signin_idle_minutes * 60),
        signin_reauth: Duration::from_secs(config.signin_reauth_secs),
        oidc: config.oidc(),
        key_assignments: Arc::default(),
        domain_names: Arc::default(),
        whole_log_reads: Arc::new(tokio::sync::Semaphore::new(http::WHOLE_LOG_READS)),
        log_streams: Arc::new(tokio::sync::Semaphore::new(http::LOG_STREAMS)),
        past: Arc::default(),
    };
    crate::provider::keep_rotating(state.engine.clone(), state.oidc);
    http::past::keep_forgetting(state.past.clone());
    Ok((state, bootstrap))
}

/// The data dir and everything in it readable by its owner only: 0700 directories, 0600
/// files. (`serve` also sets its umask, so what it makes later is private too.)
fn private_dir(dir: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path, m: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(m))
                .map_err(|e| Error::Other(format!("{}: {e}", path.display())))
        };
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            mode(&d, 0o700)?;
            for entry in std::fs::read_dir(&d)? {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if kind.is_file() {
                    mode(&entry.path(), 0o600)?;
                }
            }
        }
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing requests in flight");
}

fn no_public_url(addr: std::net::SocketAddr) -> Error {
    Error::Other(format!(
        "public_url: set it (flag --public-url, IDLEDGER_PUBLIC_URL or the file) to the https origin users reach {addr} at: invites and passkeys need it"
    ))
}

/// Serves `data_dir` as `config` says until `shutdown` resolves; then finishes the
/// requests in flight and flushes the log.
pub async fn run(
    data_dir: &Path,
    config: &Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    // Whatever this process creates is its user's alone.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let hangups = tls::hangups();
    // The certificate is read before anything starts, so a bad one stops `serve` at once.
    let tls = match config.tls_files() {
        None => None,
        Some(files) => {
            let (loaded, seen) = files.load_seen().map_err(|e| Error::Other(e.to_string()))?;
            Some((
                files,
                seen,
                axum_server::tls_rustls::RustlsConfig::from_config(loaded),
            ))
        }
    };
    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|e| Error::Other(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener.local_addr()?;
    // Where users reach this server is known now: without it `serve` stops before it
    // opens (or makes) anything, not after folding a large log.
    let public_known = config.public_url.is_some()
        || http::PublicUrl::loopback_default(addr, tls.is_some()).is_some();
    if !public_known {
        return Err(no_public_url(addr));
    }
    // While the log opens and the projections catch up (minutes, on a large log), the port
    // already answers: `/readyz` and everything else 503, so an orchestrator waits.
    let limits = connection_limits(config);
    // The switch first: the start-up listener's connections are recorded (or not) too.
    crate::metrics::set_enabled(config.metrics);
    let starting = Starting::serve(&listener, limits, tls.as_ref().map(|(_, _, c)| c.clone()))?;
    let started = start_with(data_dir, config, config.sync()?, config.rotation()).await;
    starting.stop().await;
    let (mut state, _) = started?;
    if state.public_url.is_none() {
        state.public_url = http::PublicUrl::loopback_default(addr, tls.is_some());
    }
    let Some(public) = &state.public_url else {
        return Err(no_public_url(addr));
    };
    tracing::info!(public_url = %public.origin, "users sign in here");
    // Allowed (a container's port mapped to the host's localhost is a real setup), but
    // anyone beyond loopback who reaches this listener speaks plain HTTP to it.
    if !public.https && tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            public_url = %public.origin,
            %addr,
            "plain http beyond loopback: sessions and tokens cross the network in the clear and cookies are not Secure; serve with --tls-cert and --tls-key, or behind an HTTPS proxy with an https public_url"
        );
    }
    let rotation = config.rotation();
    tracing::info!(
        %addr,
        scheme = if tls.is_some() { "https" } else { "http" },
        data_dir = %data_dir.display(),
        durability = config.durability.as_str(),
        graph_timeout_secs = config.graph_timeout_secs,
        rotation_uncertainty_secs = rotation.uncertainty.as_secs_f64(),
        "serving"
    );
    let log = state.engine.log.clone();
    let notary = state.notary.clone();
    let public_https = (state.public_url.as_ref())
        .filter(|p| p.https)
        .map(|p| p.origin.clone());
    match tls {
        None => {
            let mut hangups = hangups;
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    tracing::info!("SIGHUP: no TLS certificate to reload");
                }
            });
            http::serve(listener, crate::console::app(state), limits, None, shutdown).await?
        }
        Some((files, seen, serving)) => {
            files.keep_loaded(
                serving.clone(),
                Duration::from_secs(config.tls_reload_secs),
                seen,
                hangups,
            );
            let redirect = match &config.redirect_listen {
                None => None,
                Some(at) => {
                    let origin = public_https.clone().ok_or_else(|| {
                        Error::Other("redirect_listen: the public URL is not https://".into())
                    })?;
                    let plain = std::net::TcpListener::bind(at)
                        .map_err(|e| Error::Other(format!("cannot listen on {at}: {e}")))?;
                    tracing::info!(addr = %plain.local_addr()?, "redirecting plain HTTP to HTTPS");
                    let router = redirect_router(origin);
                    Some(tokio::spawn(http::serve(
                        plain,
                        router,
                        limits,
                        None,
                        std::future::pending(),
                    )))
                }
            };
            let app = crate::console::app(state);
            http::serve(listener, app, limits, Some(serving), shutdown).await?;
            if let Some(r) = redirect {
                r.abort();
            }
        }
    }
    // The services still running (sync, rotation) append no more from here.
    log.close().await;
    log.flush().await?;
    // The last appends get a head too: an auditor's next visit finds them signed.
    tokio::task::spawn_blocking(move || notary.sign_now())
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .map_err(|e| Error::Other(e.to_string()))?;
    tracing::info!("stopped; the log is flushed and its tree signed");
    Ok(())
}

/// File descriptors kept free of connections: the log, exports, backups, Graph calls.
const RESERVED_DESCRIPTORS: u64 = 256;

/// The configured limits, with `max_connections` lowered so that every listener at its
/// cap at once (the main one, and the redirect one if configured) fits the process's file
/// descriptor limit. The soft limit is raised to the hard one first (as Go's runtime does):
/// distributions start services with a soft 1024 for old `select` users.
fn connection_limits(config: &Config) -> http::Limits {
    let listeners = 1 + u64::from(config.redirect_listen.is_some());
    let mut limits = config.limits();
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
        let mut fds = getrlimit(Resource::Nofile);
        if fds.current < fds.maximum {
            let raised = Rlimit {
                current: fds.maximum,
                maximum: fds.maximum,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                fds = raised;
            }
        }
        if let Some(soft) = fds.current {
            let fit = (soft.saturating_sub(RESERVED_DESCRIPTORS) / listeners).max(16);
            if (limits.max_connections as u64) > fit {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    file_descriptors = soft,
                    lowered_to = fit,
                    "max_connections does not fit the file descriptor limit"
                );
                limits.max_connections = fit as usize;
            }
        }
    }
    limits
}

/// The router of the starting phase: `/healthz` says the process lives (a liveness probe
/// must not kill a long start), everything else is 503 with `Retry-After`.
fn starting_router() -> axum::Router {
    use axum::http::{header, StatusCode};
    let not_yet = || async {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            axum::Json(STARTING),
        )
    };
    axum::Router::new()
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(STARTING) }),
        )
        .fallback(not_yet)
}

/// What every request gets while `serve` starts.
#[derive(serde::Serialize, Clone, Copy)]
struct StartingAnswer {
    status: &'static str,
    detail: &'static str,
}

const STARTING: StartingAnswer = StartingAnswer {
    status: "starting",
    detail: "the log is opening and the projections are catching up",
};

/// The port's answers while `serve` starts.
struct Starting {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Starting {
    /// Serves [`starting_router`] on a clone of `listener` (over TLS with `tls`).
    fn serve(
        listener: &std::net::TcpListener,
        limits: http::Limits,
        tls: Option<axum_server::tls_rustls::RustlsConfig>,
    ) -> Result<Starting, Error> {
        let early = listener.try_clone()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(http::serve(early, starting_router(), limits, tls, shutdown));
        Ok(Starting { stop, task })
    }

    /// Stops taking connections and finishes the open ones; what arrives meanwhile waits
    /// in the port's queue for the real server.
    ///
    /// A slow client would hold a graceful shutdown up to the header-read timeout, so
    /// after a short grace the task is aborted: it only ever answered 503, nothing is lost
    /// by cutting its connections.
    async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(Duration::from_secs(2), &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the starting listener failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "the starting listener panicked"),
            Err(_) => {
                task.abort();
                tracing::info!("the starting listener's open connections were cut");
            }
        }
    }
}

/// Moves the wrapped data keys an earlier build kept in sled's `keys` tree to the key store
/// file, then drops the tree; answers how many there were. After a crash between the two,
/// the key store (holding `master-check`, so written by the move or since) is the truth,
/// shreds since included: the tree is only dropped, never copied again.
fn move_legacy_keys(log: &SledEventLog, keys: &dyn KeyStorage) -> Result<usize, Error> {
    let secrets = |e: crate::secrets::SecretsError| Error::Other(e.to_string());
    let legacy = log.legacy_keys()?;
    if legacy.is_empty() {
        return Ok(0);
    }
    if keys.get(b"master-check").map_err(secrets)?.is_none() {
        let entries: Vec<(&[u8], &[u8])> = legacy
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        keys.put_all(&entries).map_err(secrets)?;
    }
    log.drop_legacy_keys()?;
    Ok(legacy.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn legacy_keys_move_once_and_a_crash_after_the_move_only_drops_them() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let log = SledEventLog::open(dir.path()).expect("opens");
        let keys = KeyFile::open(dir.path()).expect("opens");
        log.plant_legacy_keys(&[(b"master-check", b"c"), (b"dk:1", b"one")]);
        assert_eq!(move_legacy_keys(&log, &keys).expect("moved"), 2);
        assert_eq!(keys.get(b"dk:1").expect("reads"), Some(b"one".to_vec()));
        assert!(log.legacy_keys().expect("reads").is_empty());
        // The tree still there after the move (a crash before the drop), and user 1
        // shredded since: dropped, and nothing comes back.
        keys.remove_all(&[b"dk:1"]).expect("shredded");
        log.plant_legacy_keys(&[(b"master-check", b"c"), (b"dk:1", b"one")]);
        assert_eq!(move_legacy_keys(&log, &keys).expect("dropped"), 2);
        assert_eq!(keys.get(b"dk:1").expect("reads"), None);
        assert!(log.legacy_keys().expect("reads").is_empty());
        assert_eq!(move_legacy_keys(&log, &keys).expect("nothing"), 0);
    }
}
