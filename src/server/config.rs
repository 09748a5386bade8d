//! `serve`'s configuration: defaults, then a TOML file, then `IDLEDGER_…` variables, then
//! the command line's flags, checked once before anything starts.

use crate::error::Error;
use crate::graph::GraphTrust;
use crate::rotation::RotationConfig;
use crate::sync::SyncConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How `serve` writes its log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, for collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: use text or json")),
        }
    }
}

/// What the command line may set, over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Flags {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--master-key-file`.
    pub master_key_file: Option<PathBuf>,
    /// `--allow-master-key-in-data-dir` (or its environment variable): set either way.
    pub allow_master_key_in_data_dir: Option<bool>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--redirect-listen`.
    pub redirect_listen: Option<String>,
    /// `--graph-ca-bundle`.
    pub graph_ca_bundle: Option<PathBuf>,
    /// `--public-url`.
    pub public_url: Option<String>,
}

/// Settings: defaults, then the TOML file, then `IDLEDGER_*` variables, then flags.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listen address.
    pub listen: String,
    /// How the log is written.
    pub log_format: LogFormat,
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
    /// Seconds a connection has to send each request's head (and the first request); an
    /// idle keep-alive connection is closed after as long.
    pub header_read_timeout_secs: u64,
    /// Seconds a client may take none of what it is sent (a stalled event stream, export
    /// or backup) before its connection is closed.
    pub write_stall_timeout_secs: u64,
    /// Most connections open at once per listener (lowered to fit the process's file
    /// descriptor limit); at the cap the next waits to be accepted.
    pub max_connections: usize,
    /// Streams whose folded state the command path keeps between commands (0: fold every
    /// stream whole for each command, as before snapshots; for comparisons).
    pub snapshot_streams: usize,
    /// The master key's file (see `--master-key-file`).
    pub master_key_file: Option<PathBuf>,
    /// Allow the master key inside the data dir (see `--allow-master-key-in-data-dir`).
    pub allow_master_key_in_data_dir: bool,
    /// At most this often (milliseconds) a new tree head is signed while the log grows.
    pub sth_interval_ms: u64,
    /// The server certificate chain (PEM): with `tls_key`, `serve` speaks HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// The server certificate's private key (PEM, PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
    /// Seconds between looks at the certificate files; a change is loaded without a
    /// restart (as is SIGHUP), open connections keep theirs.
    pub tls_reload_secs: u64,
    /// A plain HTTP listener that only redirects to HTTPS (needs TLS on).
    pub redirect_listen: Option<String>,
    /// CA certificates (PEM) the Graph client trusts beside the built-in roots, for a
    /// TLS-inspecting proxy; used for Graph, the authority and sign-in endpoints alike.
    pub graph_ca_bundle: Option<PathBuf>,
    /// Minutes a console session lasts without a request.
    pub console_idle_minutes: u64,
    /// The origin users' browsers reach idledger at (`https://idp.contoso.com`): invites
    /// link there and its host is the WebAuthn relying-party id. With a loopback listen
    /// address it defaults to `http://localhost:<port>`; otherwise it must be set.
    pub public_url: Option<String>,
    /// Hours an invite's enrolment link works.
    pub invite_ttl_hours: u32,
    /// Hours after a domain's last full sync round when the next run is a full one again.
    pub sync_full_round_hours: u32,
    /// Minutes a user's sign-in session lasts without a request.
    pub signin_idle_minutes: u64,
    /// Seconds after signing in during which a user may add or remove sign-in methods on
    /// `/me`; later they sign in again first (whoever holds an open session is not
    /// thereby the user).
    pub signin_reauth_secs: u64,
    /// Seconds an OpenID Connect authorization code may be exchanged.
    pub oidc_code_ttl_secs: u64,
    /// Seconds an ID or access token lives.
    pub oidc_token_ttl_secs: u64,
    /// Seconds a relying party's clock may lag: a retired signing key stays published
    /// `oidc_token_ttl_secs + oidc_clock_skew_secs`.
    pub oidc_clock_skew_secs: u64,
    /// Days a signing key is in force before the schedule replaces it (0: only on demand;
    /// fractions allowed).
    pub signing_key_rotation_days: f64,
    /// Record metrics (`/metrics` still answers when off: states only). Off is for
    /// measuring what recording costs.
    pub metrics: bool,
}

impl Config {
    fn graph_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.graph_timeout_secs)
    }

    /// The OpenID Connect provider's lifetimes and key schedule.
    pub fn oidc(&self) -> crate::provider::Timing {
        crate::provider::Timing {
            code_ttl: Duration::from_secs(self.oidc_code_ttl_secs),
            token_ttl: Duration::from_secs(self.oidc_token_ttl_secs),
            clock_skew: Duration::from_secs(self.oidc_clock_skew_secs),
            key_rotation: (self.signing_key_rotation_days > 0.0)
                .then(|| Duration::from_secs_f64(self.signing_key_rotation_days * 86_400.0)),
        }
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

    /// The sync workers' settings (their Graph clients are the rotations' too); reads
    /// `graph_ca_bundle`.
    pub fn sync(&self) -> Result<SyncConfig, Error> {
        let mut c = SyncConfig::default();
        c.retry.request_timeout = self.graph_timeout();
        c.full_round_every = Duration::from_secs(u64::from(self.sync_full_round_hours) * 3600);
        if let Some(path) = &self.graph_ca_bundle {
            c.trust = GraphTrust::with_pem_file(path)
                .map_err(|e| Error::Other(format!("graph_ca_bundle: {e}")))?;
        }
        Ok(c)
    }

    /// What each listener allows its clients, as configured (before the file descriptor
    /// limit is taken into account: see `server::connection_limits`).
    pub fn limits(&self) -> crate::http::Limits {
        crate::http::Limits {
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            write_stall_timeout: Duration::from_secs(self.write_stall_timeout_secs),
            max_connections: self.max_connections,
        }
    }

    /// Where the server's certificate and key are, when HTTPS is on.
    pub fn tls_files(&self) -> Option<super::tls::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(super::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    fn check(&self) -> Result<(), Error> {
        let seconds = |v: f64| v.is_finite() && v > 0.0 && v <= 86_400.0;
        if !seconds(self.graph_timeout_secs) {
            return Err(Error::Other(
                "graph_timeout_secs: more than 0, at most 86400".into(),
            ));
        }
        if let Some(w) = self.rotation_uncertainty_secs {
            if !seconds(w) || w < self.graph_timeout_secs {
                return Err(Error::Other(format!(
                    "rotation_uncertainty_secs: at least the Graph timeout ({} s), at most 86400: a shorter window cannot cover a request that timed out and still lands",
                    self.graph_timeout_secs
                )));
            }
        }
        if !(10..=3_600_000).contains(&self.sth_interval_ms) {
            return Err(Error::Other(
                "sth_interval_ms: 10 to 3600000 milliseconds".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::Other(
                "tls_cert and tls_key: give both (HTTPS) or neither (plain HTTP)".into(),
            ));
        }
        if self.redirect_listen.is_some() && self.tls_cert.is_none() {
            return Err(Error::Other(
                "redirect_listen: redirects to HTTPS, so it needs tls_cert and tls_key".into(),
            ));
        }
        if !(1..=1440).contains(&self.console_idle_minutes) {
            return Err(Error::Other("console_idle_minutes: 1 to 1440".into()));
        }
        if !(1..=1440).contains(&self.signin_idle_minutes) {
            return Err(Error::Other("signin_idle_minutes: 1 to 1440".into()));
        }
        if !(1..=86_400).contains(&self.signin_reauth_secs) {
            return Err(Error::Other("signin_reauth_secs: 1 to 86400".into()));
        }
        if !(1..=8760).contains(&self.sync_full_round_hours) {
            return Err(Error::Other("sync_full_round_hours: 1 to 8760".into()));
        }
        if !(1..=720).contains(&self.invite_ttl_hours) {
            return Err(Error::Other("invite_ttl_hours: 1 to 720".into()));
        }
        if !(1..=600).contains(&self.oidc_code_ttl_secs) {
            return Err(Error::Other("oidc_code_ttl_secs: 1 to 600".into()));
        }
        if !(1..=86_400).contains(&self.oidc_token_ttl_secs) {
            return Err(Error::Other("oidc_token_ttl_secs: 1 to 86400".into()));
        }
        if self.oidc_clock_skew_secs > 3600 {
            return Err(Error::Other("oidc_clock_skew_secs: 0 to 3600".into()));
        }
        let days = self.signing_key_rotation_days;
        if !days.is_finite() || !(0.0..=3650.0).contains(&days) {
            return Err(Error::Other(
                "signing_key_rotation_days: 0 (never) to 3650".into(),
            ));
        }
        if let Some(u) = &self.public_url {
            let public = crate::http::PublicUrl::parse(u)
                .map_err(|e| Error::Other(format!("public_url: {e}")))?;
            // Users reach a server that speaks TLS itself over https: an http origin
            // would be one no browser is at (WebAuthn and cookies are bound to it).
            if self.tls_cert.is_some() && !public.https {
                return Err(Error::Other(
                    "public_url: serve speaks HTTPS (tls_cert), so its public URL is https://"
                        .into(),
                ));
            }
        }
        if !(1..=3600).contains(&self.header_read_timeout_secs) {
            return Err(Error::Other("header_read_timeout_secs: 1 to 3600".into()));
        }
        if !(1..=3600).contains(&self.write_stall_timeout_secs) {
            return Err(Error::Other("write_stall_timeout_secs: 1 to 3600".into()));
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(Error::Other("max_connections: 1 to 1000000".into()));
        }
        if self.snapshot_streams > 10_000_000 {
            return Err(Error::Other("snapshot_streams: 0 to 10000000".into()));
        }
        if !(1..=3600).contains(&self.request_timeout_secs) {
            return Err(Error::Other("request_timeout_secs: 1 to 3600".into()));
        }
        if !(1..=100_000).contains(&self.max_event_streams) {
            return Err(Error::Other("max_event_streams: 1 to 100000".into()));
        }
        // 0 would hand a write out again on every poll: the lease is what bounds that.
        if !(1..=86_400).contains(&self.agent_lease_secs) {
            return Err(Error::Other("agent_lease_secs: 1 to 86400".into()));
        }
        if !(1..=86_400).contains(&self.tls_reload_secs) {
            return Err(Error::Other("tls_reload_secs: 1 to 86400".into()));
        }
        // Doubled up to six times between attempts: a day at most keeps that arithmetic
        // (and the wait) sane.
        if !self.rotation_retry_secs.is_finite()
            || !(0.0..=86_400.0).contains(&self.rotation_retry_secs)
        {
            return Err(Error::Other("rotation_retry_secs: 0 to 86400".into()));
        }
        Ok(())
    }
}

/// `name` from the environment, parsed; `None` when unset.
fn env_setting<T: std::str::FromStr>(name: &str, what: &str) -> Result<Option<T>, Error> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::Other(format!("{name} must be {what}"))),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            log_format: LogFormat::Text,
            request_timeout_secs: 30,
            smtp: None,
            rotation_check_secs: 60,
            rotation_retry_secs: 2.0,
            graph_timeout_secs: 30.0,
            rotation_uncertainty_secs: None,
            durability: crate::store::Durability::Device,
            agent_lease_secs: 60,
            max_event_streams: 256,
            header_read_timeout_secs: 20,
            write_stall_timeout_secs: 60,
            max_connections: 4096,
            snapshot_streams: crate::store::snapshots::DEFAULT_CAPACITY,
            master_key_file: None,
            allow_master_key_in_data_dir: false,
            sth_interval_ms: 1000,
            tls_cert: None,
            tls_key: None,
            tls_reload_secs: 5,
            redirect_listen: None,
            graph_ca_bundle: None,
            console_idle_minutes: 30,
            public_url: None,
            invite_ttl_hours: 72,
            sync_full_round_hours: 24,
            signin_idle_minutes: 30,
            signin_reauth_secs: 600,
            oidc_code_ttl_secs: 60,
            oidc_token_ttl_secs: 900,
            oidc_clock_skew_secs: 300,
            signing_key_rotation_days: 90.0,
            metrics: true,
        }
    }
}

/// A configuration file that does not read: where, and what, but never the text there
/// (toml would quote the line, and serde the value: an SMTP password, say).
fn file_error(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    // serde quotes the value it did not take between backticks or double quotes.
    let mut message = String::new();
    let mut quote = None;
    for c in e.message().chars() {
        match (quote, c) {
            (None, '`' | '"') => {
                quote = Some(c);
                message.push('…');
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c) => message.push(c),
        }
    }
    let place = e.span().map_or(String::new(), |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
        format!(" (line {line}, column {column})")
    });
    Error::Other(format!("{}{place}: {}", path.display(), message.trim()))
}

impl Config {
    /// The configuration of `serve`: defaults, then the TOML file `file`, then the
    /// `IDLEDGER_…` variables, then `flags`.
    pub fn load(file: Option<&Path>, flags: Flags) -> Result<Self, Error> {
        let mut c = match file {
            None => Config::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Other(format!("{}: {e}", path.display())))?;
                toml::from_str(&text).map_err(|e| file_error(path, &text, &e))?
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
        if let Some(v) = env_setting("IDLEDGER_HEADER_READ_TIMEOUT_SECS", secs)? {
            c.header_read_timeout_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_WRITE_STALL_TIMEOUT_SECS", secs)? {
            c.write_stall_timeout_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_MAX_CONNECTIONS", "a number")? {
            c.max_connections = v;
        }
        if let Some(v) = env_setting("IDLEDGER_SNAPSHOT_STREAMS", "a number")? {
            c.snapshot_streams = v;
        }
        if let Some(v) = env_setting("IDLEDGER_STH_INTERVAL_MS", "a number of milliseconds")? {
            c.sth_interval_ms = v;
        }
        if let Some(v) = env_setting("IDLEDGER_DURABILITY", "device or process")? {
            c.durability = v;
        }
        if let Some(v) = env_setting("IDLEDGER_TLS_CERT", "a file")? {
            c.tls_cert = Some(v);
        }
        if let Some(v) = env_setting("IDLEDGER_TLS_KEY", "a file")? {
            c.tls_key = Some(v);
        }
        if let Some(v) = env_setting("IDLEDGER_TLS_RELOAD_SECS", secs)? {
            c.tls_reload_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_REDIRECT_LISTEN", "an address")? {
            c.redirect_listen = Some(v);
        }
        if let Some(v) = env_setting("IDLEDGER_CONSOLE_IDLE_MINUTES", "a number of minutes")? {
            c.console_idle_minutes = v;
        }
        if let Some(v) = env_setting("IDLEDGER_GRAPH_CA_BUNDLE", "a file")? {
            c.graph_ca_bundle = Some(v);
        }
        if let Some(v) = env_setting("IDLEDGER_PUBLIC_URL", "a URL")? {
            c.public_url = Some(v);
        }
        if let Some(v) = env_setting("IDLEDGER_INVITE_TTL_HOURS", "a number of hours")? {
            c.invite_ttl_hours = v;
        }
        if let Some(v) = env_setting("IDLEDGER_SYNC_FULL_ROUND_HOURS", "a number of hours")? {
            c.sync_full_round_hours = v;
        }
        if let Some(v) = env_setting("IDLEDGER_SIGNIN_IDLE_MINUTES", "a number of minutes")? {
            c.signin_idle_minutes = v;
        }
        if let Some(v) = env_setting("IDLEDGER_SIGNIN_REAUTH_SECS", secs)? {
            c.signin_reauth_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_OIDC_CODE_TTL_SECS", secs)? {
            c.oidc_code_ttl_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_OIDC_TOKEN_TTL_SECS", secs)? {
            c.oidc_token_ttl_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_OIDC_CLOCK_SKEW_SECS", secs)? {
            c.oidc_clock_skew_secs = v;
        }
        if let Some(v) = env_setting("IDLEDGER_SIGNING_KEY_ROTATION_DAYS", "a number of days")? {
            c.signing_key_rotation_days = v;
        }
        if let Some(v) = env_setting("IDLEDGER_METRICS", "true or false")? {
            c.metrics = v;
        }
        if let Some(v) = flags.listen {
            c.listen = v;
        }
        if let Some(v) = flags.log_format {
            c.log_format = v;
        }
        if let Some(v) = flags.master_key_file {
            c.master_key_file = Some(v);
        }
        if let Some(v) = flags.allow_master_key_in_data_dir {
            c.allow_master_key_in_data_dir = v;
        }
        if let Some(v) = flags.tls_cert {
            c.tls_cert = Some(v);
        }
        if let Some(v) = flags.tls_key {
            c.tls_key = Some(v);
        }
        if let Some(v) = flags.redirect_listen {
            c.redirect_listen = Some(v);
        }
        if let Some(v) = flags.graph_ca_bundle {
            c.graph_ca_bundle = Some(v);
        }
        if let Some(v) = flags.public_url {
            c.public_url = Some(v);
        }
        c.check()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that does not read names the place, never the value written there.
    #[test]
    fn a_flag_or_the_environment_turns_off_what_the_file_turned_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idledger.toml");
        std::fs::write(&path, "allow_master_key_in_data_dir = true\n").unwrap();
        let with = |v| Flags {
            allow_master_key_in_data_dir: v,
            ..Flags::default()
        };
        let load = |v| Config::load(Some(&path), with(v)).unwrap();
        assert!(load(None).allow_master_key_in_data_dir);
        assert!(!load(Some(false)).allow_master_key_in_data_dir);
        assert!(load(Some(true)).allow_master_key_in_data_dir);
    }

    #[test]
    fn a_bad_file_is_named_without_its_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idledger.toml");
        for (text, secret) in [
            ("[smtp]\npassword = 12345678\n", "12345678"),
            ("[smtp]\npassword = \"pa\\ss-Hunter2\"\n", "Hunter2"),
            ("rotation_retry_secs = \"Hunter2\"\n", "Hunter2"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Config::load(Some(&path), Flags::default())
                .unwrap_err()
                .to_string();
            assert!(!e.contains(secret), "{e}");
            assert!(e.contains("line "), "{e}");
        }
        std::fs::write(&path, "rotation_retry_secs = 1e20\n").unwrap();
        let e = Config::load(Some(&path), Flags::default()).unwrap_err();
        assert!(e.to_string().contains("rotation_retry_secs"), "{e}");
    }

    /// The certificate and its key may come from different places (file, flag,
    /// environment); both or neither is what counts. A server that speaks TLS itself is
    /// reached over https, so an http public URL for it is refused (it would be the origin
    /// of no browser, and the plain listener's redirect would have nowhere fixed to go).
    #[test]
    fn tls_settings_are_checked_once_merged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idledger.toml");
        std::fs::write(&path, "tls_cert = \"/etc/idledger/cert.pem\"\n").unwrap();
        let key = || Flags {
            tls_key: Some("/etc/idledger/key.pem".into()),
            ..Flags::default()
        };
        let c = Config::load(Some(&path), key()).unwrap();
        assert!(c.tls_cert.is_some() && c.tls_key.is_some());
        let e = Config::load(Some(&path), Flags::default()).unwrap_err();
        assert!(e.to_string().starts_with("tls_cert and tls_key"), "{e}");
        for (public, ok) in [
            ("http://localhost:8443", false),
            ("https://idp.contoso.com", true),
        ] {
            let flags = Flags {
                public_url: Some(public.into()),
                ..key()
            };
            let loaded = Config::load(Some(&path), flags);
            assert_eq!(loaded.is_ok(), ok, "{public}: {:?}", loaded.err());
        }
    }

    /// A zero that would answer every request 503, refuse every stream, or hand a key
    /// write out on every poll is refused at start, by name.
    #[test]
    fn settings_that_would_stop_the_service_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idledger.toml");
        for name in [
            "request_timeout_secs",
            "max_event_streams",
            "agent_lease_secs",
        ] {
            std::fs::write(&path, format!("{name} = 0\n")).unwrap();
            let e = Config::load(Some(&path), Flags::default()).unwrap_err();
            assert!(e.to_string().starts_with(name), "{e}");
        }
        std::fs::write(&path, "agent_lease_secs = 1\nmax_event_streams = 1\n").unwrap();
        Config::load(Some(&path), Flags::default()).unwrap();
    }

    /// The defaults the issues promise operators: a changed one would pass every test
    /// that sets its own value, so they are held here.
    #[test]
    fn the_promised_defaults_hold() {
        let c = Config::default();
        assert_eq!(c.durability, crate::store::Durability::Device);
        assert_eq!(c.agent_lease_secs, 60);
        assert_eq!(c.max_event_streams, 256);
        assert_eq!(c.sth_interval_ms, 1000);
        // The window after an unknown outcome: the Graph timeout plus a minute, at least
        // two minutes, so a request that timed out and still lands is inside it.
        let window = |t| RotationConfig::default_uncertainty(Duration::from_secs(t));
        assert_eq!(window(30), Duration::from_secs(120));
        assert_eq!(window(90), Duration::from_secs(150));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idledger.toml");
        std::fs::write(
            &path,
            "graph_timeout_secs = 100\ndurability = \"process\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), Flags::default()).unwrap();
        assert_eq!(c.rotation().uncertainty, Duration::from_secs(160));
        assert_eq!(c.durability, crate::store::Durability::Process);
        std::fs::write(
            &path,
            "graph_timeout_secs = 100\nrotation_uncertainty_secs = 99\n",
        )
        .unwrap();
        let e = Config::load(Some(&path), Flags::default()).unwrap_err();
        assert!(
            e.to_string().starts_with("rotation_uncertainty_secs"),
            "{e}"
        );
        std::fs::write(&path, "durability = \"cache\"\n").unwrap();
        assert!(Config::load(Some(&path), Flags::default()).is_err());
    }
}
