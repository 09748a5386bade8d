//! HTTPS for `serve`: the certificate and key from PEM files (TLS 1.2 and 1.3 only, `h2`
//! and `http/1.1` by ALPN), reloaded when the files change or on SIGHUP, and the plain
//! listener that does nothing but redirect to HTTPS.
//!
//! A reload swaps the configuration new handshakes use; connections already open keep
//! theirs, so nothing is dropped. A reload that fails (a key that does not match, a file
//! half written) keeps the certificate in use and is tried again when the files change.

use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The server certificate chain and its key, as files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM: the leaf certificate first, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the leaf's private key.
    pub key: PathBuf,
}

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file held no usable PEM block.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was missing or malformed.
        reason: String,
    },
    /// rustls refused the pair (the key does not belong to the certificate, say).
    #[error("TLS certificate and key: {0}")]
    Refused(#[from] rustls::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

impl TlsFiles {
    /// The server configuration these files make now.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let pem = |path: &Path, reason: String| TlsError::Pem {
            path: path.to_owned(),
            reason,
        };
        let certs = CertificateDer::pem_slice_iter(&read(&self.cert)?)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(&self.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem(&self.cert, "no CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&read(&self.key)?)
            .map_err(|e| pem(&self.key, format!("no private key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// What identifies the files' current contents without reading them: a rename onto
    /// the path (as certbot and Kubernetes do) changes the inode, an edit the time or size.
    fn stamp(&self) -> FilesSeen {
        FilesSeen(self.stamp_now())
    }

    fn stamp_now(&self) -> Option<[(SystemTime, u64, u64); 2]> {
        let one = |path: &Path| {
            let m = std::fs::metadata(path).ok()?;
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            Some((m.modified().ok()?, m.len(), inode))
        };
        Some([one(&self.cert)?, one(&self.key)?])
    }

    /// The configuration the files make now, and what the files looked like just before
    /// they were read (for [`TlsFiles::keep_loaded`]: a change made after, even while the
    /// server is still starting, is then picked up).
    pub fn load_seen(&self) -> Result<(Arc<rustls::ServerConfig>, FilesSeen), TlsError> {
        let seen = self.stamp();
        Ok((self.load()?, seen))
    }

    /// Keeps `serving` up to date with the files, last seen as `seen`: looks every
    /// `every`, and at once on a `hangup` (see [`hangups`]). Runs until the process ends.
    pub fn keep_loaded(
        self,
        serving: RustlsConfig,
        every: Duration,
        seen: FilesSeen,
        mut hangup: tokio::sync::mpsc::Receiver<()>,
    ) {
        let mut seen = seen;
        tokio::spawn(async move {
            loop {
                let forced = tokio::select! {
                    _ = tokio::time::sleep(every) => false,
                    Some(()) = hangup.recv() => true,
                };
                let now = self.stamp();
                if !forced && now == seen {
                    continue;
                }
                // Remembered even when the load fails: a bad pair is not retried (and
                // logged) every look, only when the files change again.
                seen = now;
                match self.load() {
                    Ok(config) => {
                        serving.reload_from_config(config);
                        tracing::info!(cert = %self.cert.display(), "TLS certificate loaded again");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use")
                    }
                }
            }
        });
    }
}

/// What the certificate files looked like at a moment (time, size and inode of each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilesSeen(Option<[(SystemTime, u64, u64); 2]>);

/// SIGHUPs as a channel (none off Unix), caught from the moment this returns: SIGHUP
/// means "reload" to operators (a renewal's hook, `systemctl reload`), and its default
/// action would end the server, with TLS or without, even while it starts.
pub fn hangups() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut s) => {
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        // A reload already asked for covers this one too.
                        if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                            tx.try_send(())
                        {
                            return;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "SIGHUP cannot be caught"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// The plain listener's only answer: 308 to the same path and query at `public_origin`
/// (the `https://` public URL, which `serve` with TLS always has). Nothing else is served
/// in the clear, and the Host header is never read: a forged one sends no one (and no cache
/// in between) anywhere but to this server.
pub fn redirect_router(public_origin: String) -> axum::Router {
    axum::Router::new().fallback(move |uri: Uri| {
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        std::future::ready(moved(format!("{public_origin}{path}")))
    })
}

fn moved(target: String) -> Response {
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, target)],
        "use HTTPS\n",
    )
        .into_response()
}
