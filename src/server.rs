//! `idledger serve` and `idledger token create`: configuration, start-up (log, keys,
//! projections, bootstrap token), and graceful shutdown.

use crate::cli::CliError;
use crate::http::{self, new_token_text, token_hash, AppState, Metrics};
use crate::keystore::KeyFile;
use crate::projector::Projector;
use crate::rotation::{RotationConfig, RotationService};
use crate::secrets::{write_private, KeyStorage, Keyring, MasterKey};
use crate::store::{AppendRequest, EventLog, ExpectedVersion, SledEventLog};
use crate::sync::{Engine, SyncConfig, SyncService};
use clap::Args;
use idledger_domain::decide::tokens::{decide, evolve, TokenCommand};
use idledger_domain::events::TokenIssued;
use idledger_domain::{Actor, KeyId, ProposedEvent, Role, StreamId, TokenId};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Options of `idledger serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Data directory.
    #[arg(long, env = "IDLEDGER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<String>,
    /// A TOML configuration file (`listen`, `log_format`, `request_timeout_secs`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// `text` or `json`.
    #[arg(long)]
    pub log_format: Option<String>,
    /// The master key's file, outside the data dir (created, 0600, when missing). Back it
    /// up apart from the data: without it no sealed secret can be read.
    #[arg(long, env = "IDLEDGER_MASTER_KEY_FILE")]
    pub master_key_file: Option<PathBuf>,
    /// Keep the master key at `<data-dir>/master.key`, next to what it protects (demos
    /// and tests; not for production).
    #[arg(long, env = "IDLEDGER_ALLOW_MASTER_KEY_IN_DATA_DIR")]
    pub allow_master_key_in_data_dir: bool,
}

/// Settings: defaults, then the TOML file, then `IDLEDGER_*` variables, then flags.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen address.
    pub listen: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Every route's timeout, in seconds.
    pub request_timeout_secs: u64,
    /// The SMTP relay for invites; without it invites go to `<data-dir>/outbox/`.
    pub smtp: Option<crate::invite::SmtpConfig>,
    /// Seconds between the rotation scheduler's looks for due and unfinished rotations.
    pub rotation_check_secs: u64,
    /// Seconds before the first retry of a rotation whose outcome is unknown (doubling).
    pub rotation_retry_secs: f64,
    /// Timeout of one Graph request, in seconds.
    pub graph_timeout_secs: f64,
    /// Seconds after an attempt with an unknown outcome during which no different password
    /// is sent for that user (default: the Graph timeout plus 60, at least 120). It must
    /// cover every request that may still land, so it is never shorter than the timeout.
    pub rotation_uncertainty_secs: Option<f64>,
    /// `device` (default: acknowledged appends survive power loss) or `process` (sled's
    /// flush only: survives a killed process, not necessarily a lost machine).
    pub durability: crate::store::Durability,
    /// Seconds a key write handed to an agent waits for its acknowledgement before it is
    /// handed out again (the agent may have crashed).
    pub agent_lease_secs: u64,
    /// Most event streams (SSE) open at once; the next is answered 503 with Retry-After.
    pub max_event_streams: usize,
    /// The master key's file (see `--master-key-file`).
    pub master_key_file: Option<PathBuf>,
    /// Allow the master key inside the data dir (see `--allow-master-key-in-data-dir`).
    pub allow_master_key_in_data_dir: bool,
}

impl Config {
    fn graph_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.graph_timeout_secs)
    }

    /// The rotation scheduler's settings.
    pub fn rotation(&self) -> RotationConfig {
        RotationConfig {
            check_every: Duration::from_secs(self.rotation_check_secs.max(1)),
            retry_delay: Duration::from_secs_f64(self.rotation_retry_secs.max(0.0)),
            uncertainty: match self.rotation_uncertainty_secs {
                Some(s) => Duration::from_secs_f64(s),
                None => RotationConfig::default_uncertainty(self.graph_timeout()),
            },
            ..RotationConfig::default()
        }
    }

    /// The sync workers' settings (their Graph clients are the rotations' too).
    pub fn sync(&self) -> SyncConfig {
        let mut c = SyncConfig::default();
        c.retry.request_timeout = self.graph_timeout();
        c
    }

    fn check(&self) -> Result<(), CliError> {
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(CliError::Other(format!(
                "log format {:?}: use text or json",
                self.log_format
            )));
        }
        let seconds = |v: f64| v.is_finite() && v > 0.0 && v <= 86_400.0;
        if !seconds(self.graph_timeout_secs) {
            return Err(CliError::Other(
                "graph_timeout_secs: more than 0, at most 86400".into(),
            ));
        }
        if let Some(w) = self.rotation_uncertainty_secs {
            if !seconds(w) || w < self.graph_timeout_secs {
                return Err(CliError::Other(format!(
                    "rotation_uncertainty_secs: at least the Graph timeout ({} s), at most 86400: a shorter window cannot cover a request that timed out and still lands",
                    self.graph_timeout_secs
                )));
            }
        }
        if !self.rotation_retry_secs.is_finite() || self.rotation_retry_secs < 0.0 {
            return Err(CliError::Other("rotation_retry_secs: 0 or more".into()));
        }
        Ok(())
    }
}

/// `name` from the environment, parsed; `None` when unset.
fn env_setting<T: std::str::FromStr>(name: &str, what: &str) -> Result<Option<T>, CliError> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| CliError::Other(format!("{name} must be {what}"))),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            log_format: "text".into(),
            request_timeout_secs: 30,
            smtp: None,
            rotation_check_secs: 60,
            rotation_retry_secs: 2.0,
            graph_timeout_secs: 30.0,
            rotation_uncertainty_secs: None,
            durability: crate::store::Durability::Device,
            agent_lease_secs: 60,
            max_event_streams: 256,
            master_key_file: None,
            allow_master_key_in_data_dir: false,
        }
    }
}

impl Config {
    /// Builds the configuration of `serve`.
    pub fn load(args: &ServeArgs) -> Result<Self, CliError> {
        let mut c = match &args.config {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))?
            }
        };
        if let Some(v) = env_setting("IDLEDGER_LISTEN", "an address")? {
            c.listen = v;
        }
        if let Some(v) = env_setting("IDLEDGER_LOG_FORMAT", "text or json")? {
            c.log_format = v;
        }
        let secs = "a number of seconds";
        if let Some(v) = env_setting("IDLEDGER_REQUEST_TIMEOUT_SECS", secs)? {
            c.request_timeout_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_ROTATION_CHECK_SECS", secs)? {
            c.rotation_check_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_ROTATION_RETRY_SECS", secs)? {
            c.rotation_retry_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_GRAPH_TIMEOUT_SECS", secs)? {
            c.graph_timeout_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_ROTATION_UNCERTAINTY_SECS", secs)? {
            c.rotation_uncertainty_secs = Some(v);
        }
        if let Some(v) = env_setting("IDLEDGER_AGENT_LEASE_SECS", secs)? {
            c.agent_lease_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_MAX_EVENT_STREAMS", "a number")? {
            c.max_event_streams = v;
        }
        if let Some(v) = env_setting("IDLEDGER_DURABILITY", "device or process")? {
            c.durability = v;
        }
        if let Some(v) = &args.listen {
            c.listen = v.clone();
        }
        if let Some(v) = &args.log_format {
            c.log_format = v.clone();
        }
        if let Some(v) = &args.master_key_file {
            c.master_key_file = Some(v.clone());
        }
        c.allow_master_key_in_data_dir |= args.allow_master_key_in_data_dir;
        c.check()?;
        Ok(c)
    }
}

/// Issues a token on the tokens stream; returns its id and its text (shown once).
pub async fn issue_token(
    log: &SledEventLog,
    actor: Actor,
    role: Role,
    name: String,
    key_ids: Vec<KeyId>,
) -> Result<(TokenId, String, u64), CliError> {
    let text = new_token_text();
    let token_id = TokenId(uuid::Uuid::now_v7());
    let stream = StreamId::tokens();
    let past = log.read_stream(&stream, 1, usize::MAX)?;
    let state = past
        .iter()
        .fold(Default::default(), |s, e| evolve(s, &e.event));
    let issued = TokenIssued {
        token_id,
        role,
        name,
        key_ids,
        token_hash: token_hash(&text),
    };
    let events =
        decide(&state, TokenCommand::Issue(issued)).map_err(|r| CliError::Other(r.to_string()))?;
    let expected = match past.last() {
        None => ExpectedVersion::NoStream,
        Some(e) => ExpectedVersion::Exact(e.version),
    };
    let proposed = events
        .into_iter()
        .map(|e| ProposedEvent::new(uuid::Uuid::now_v7(), actor.clone(), e))
        .collect();
    let done = log
        .append(AppendRequest::new(stream, expected, proposed))
        .await?;
    Ok((token_id, text, done.last_position))
}

/// Opens everything `serve` needs and starts the sync workers. On a log with no live
/// token, writes a bootstrap admin token to `<data-dir>/admin.token` (0600) and returns
/// that path.
pub async fn start_with(
    data_dir: &Path,
    config: &Config,
    sync: SyncConfig,
    rotation: RotationConfig,
) -> Result<(AppState, Option<PathBuf>), CliError> {
    let request_timeout = Duration::from_secs(config.request_timeout_secs);
    let mailer = crate::invite::Mailer::new(config.smtp.as_ref(), data_dir)
        .map_err(|e| CliError::Other(e.to_string()))?;
    let secrets = |e: crate::secrets::SecretsError| CliError::Other(e.to_string());
    std::fs::create_dir_all(data_dir)
        .map_err(|e| CliError::Other(format!("{}: {e}", data_dir.display())))?;
    let (master, created) = MasterKey::load(
        data_dir,
        config.master_key_file.as_deref(),
        config.allow_master_key_in_data_dir,
    )
    .map_err(secrets)?;
    let log = SledEventLog::open_with(data_dir, config.durability)?;
    private_dir(data_dir)?;
    if let Some(path) = created {
        tracing::warn!(path = %path.display(), "created a new master key: back it up apart from the data dir, without it no sealed secret can be read");
    }
    let keys = Arc::new(KeyFile::open(data_dir).map_err(secrets)?);
    let legacy = log.legacy_keys()?;
    if !legacy.is_empty() && keys.get(b"master-check").map_err(secrets)?.is_none() {
        // An earlier build kept wrapped keys in sled: move them to the key store file.
        let entries: Vec<(&[u8], &[u8])> = legacy
            .iter()
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        keys.put_all(&entries).map_err(secrets)?;
        log.drop_legacy_keys()?;
        tracing::info!(
            count = legacy.len(),
            "moved the wrapped data keys from sled to the key store file"
        );
    }
    let keyring = Keyring::open(master, keys).map_err(secrets)?;
    let projector = Projector::start(log.clone());
    projector
        .wait_for(log.head().position, Duration::from_secs(600))
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    let mut bootstrap = None;
    if projector.read().tokens.none_live() {
        let (_, text, position) =
            issue_token(&log, Actor::System, Role::Admin, "bootstrap".into(), vec![]).await?;
        let path = data_dir.join("admin.token");
        let _ = std::fs::remove_file(&path);
        write_private(&path, format!("{text}\n").as_bytes())
            .map_err(|e| CliError::Other(e.to_string()))?;
        projector
            .wait_for(position, Duration::from_secs(10))
            .await
            .map_err(|e| CliError::Other(e.to_string()))?;
        tracing::info!(path = %path.display(), "no API token was live: wrote a bootstrap admin token");
        bootstrap = Some(path);
    }
    let keyring = Arc::new(keyring);
    let sync = SyncService::start(
        Engine {
            log: log.clone(),
            projector: projector.clone(),
            keyring: keyring.clone(),
        },
        sync,
    );
    sync.close_interrupted_runs()
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    sync.supervise();
    let rotation = RotationService::start(
        Engine {
            log: log.clone(),
            projector: projector.clone(),
            keyring: keyring.clone(),
        },
        sync.clone(),
        rotation,
    );
    let state = AppState {
        log,
        projector,
        keyring,
        metrics: Arc::new(Metrics::default()),
        request_timeout,
        sync,
        mailer: Arc::new(mailer),
        rotation,
        agent_lease: Duration::from_secs(config.agent_lease_secs),
        event_streams: http::StreamSlots::new(config.max_event_streams),
    };
    Ok((state, bootstrap))
}

/// The data dir and everything in it readable by its owner only: 0700 directories, 0600
/// files. (`serve` also sets its umask, so what it makes later is private too.)
fn private_dir(dir: &Path) -> Result<(), CliError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path, m: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(m))
                .map_err(|e| CliError::Other(format!("{}: {e}", path.display())))
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

async fn shutdown_signal() {
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

/// Runs `idledger serve`.
pub async fn serve(args: ServeArgs, config: Config) -> Result<ExitCode, CliError> {
    // Whatever this process creates is its user's alone.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let (state, _) = start_with(&args.data_dir, &config, config.sync(), config.rotation()).await?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| CliError::Other(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener.local_addr()?;
    let rotation = config.rotation();
    tracing::info!(
        %addr,
        data_dir = %args.data_dir.display(),
        durability = config.durability.as_str(),
        graph_timeout_secs = config.graph_timeout_secs,
        rotation_uncertainty_secs = rotation.uncertainty.as_secs_f64(),
        "serving"
    );
    let log = state.log.clone();
    http::serve(listener, state, shutdown_signal()).await?;
    log.flush().await?;
    tracing::info!("stopped; the log is flushed");
    Ok(ExitCode::SUCCESS)
}

/// Options of `idledger token create`.
#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// Data directory (the server must be stopped).
    #[arg(long, env = "IDLEDGER_DATA_DIR")]
    pub data_dir: PathBuf,
    /// `admin`, `auditor` or `agent`.
    #[arg(long)]
    pub role: String,
    /// For agents: a key it serves (repeat for several).
    #[arg(long = "key-id")]
    pub key_ids: Vec<String>,
    /// A label.
    #[arg(long, default_value = "")]
    pub name: String,
}

/// Runs `idledger token create`: prints the new token once.
pub async fn token_create(args: TokenCreateArgs) -> Result<ExitCode, CliError> {
    let role = match args.role.as_str() {
        "admin" => Role::Admin,
        "auditor" => Role::Auditor,
        "agent" => Role::Agent,
        other => {
            return Err(CliError::Other(format!(
                "role {other:?}: use admin, auditor or agent"
            )))
        }
    };
    let log = SledEventLog::open(&args.data_dir).map_err(|e| {
        CliError::Other(format!(
            "{e} (is the server running? stop it first, or use POST /v1/tokens)"
        ))
    })?;
    let keys = args.key_ids.into_iter().map(KeyId).collect();
    let (id, text, position) = issue_token(&log, Actor::Operator, role, args.name, keys).await?;
    println!(
        "{}",
        serde_json::json!({"id": id, "token": text, "position": position})
    );
    Ok(ExitCode::SUCCESS)
}
