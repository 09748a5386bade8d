//! Graph failures, keeping Graph's own error code.

/// A Graph or token request failed.
#[derive(Debug, thiserror::Error, Clone)]
pub enum GraphError {
    /// The identity platform refused the token request.
    #[error("token request refused ({status}): {error} AADSTS{aadsts}")]
    Token {
        /// HTTP status.
        status: u16,
        /// OAuth error (`invalid_client`, `unauthorized_client` …).
        error: String,
        /// The AADSTS number (7000215: wrong secret, 700016: unknown app, 90002: unknown tenant).
        aadsts: u32,
        /// The identity platform's `Retry-After`, when it throttled (429) or was busy.
        retry_after: Option<std::time::Duration>,
    },
    /// Graph answered with an error.
    #[error("Graph answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Graph's `error.code` (or the inner error's, when more specific).
        code: String,
        /// Graph's message.
        message: String,
        /// Graph's `request-id`, for support.
        request_id: Option<String>,
        /// How long Graph asked the caller to wait (`Retry-After`), when it said.
        retry_after: Option<std::time::Duration>,
    },
    /// The stored delta link expired (410, `syncStateNotFound`, `resyncRequired`): start a full round.
    #[error("the delta token expired; a full round is needed")]
    DeltaExpired,
    /// No answer (connection refused, reset, timed out).
    #[error("no answer from {host}: {reason}")]
    Transport {
        /// The host asked.
        host: String,
        /// What happened.
        reason: String,
    },
    /// The TLS handshake failed: the certificate problem is named, since it is usually a
    /// setting (a TLS-inspecting proxy's CA missing from `graph_ca_bundle`, a wrong URL).
    #[error("TLS with {host} failed: {problem}")]
    Tls {
        /// The host asked.
        host: String,
        /// What was wrong with its certificate or the handshake.
        problem: TlsProblem,
    },
    /// An answer that does not have Graph's shape.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// Graph's answer pointed somewhere other than the configured Graph host (a next or
    /// delta link); it was not followed, so the token went nowhere else.
    #[error(
        "Graph sent a link to {0}, which is not the configured Graph host; it was not followed"
    )]
    ForeignLink(String),
    /// A saved Graph or authority URL that is neither https:// nor http:// to loopback
    /// (saved before that rule, say): no secret and no token is sent to it.
    #[error("{0}: not an https:// URL (http:// only to a loopback host); nothing is sent to it")]
    InsecureUrl(String),
    /// The credentials this client holds were removed or replaced: it sends nothing more
    /// with them (not even a token it still has).
    #[error("the domain's credentials were removed or replaced; nothing more is sent with them")]
    Retired,
}

impl GraphError {
    /// Graph's error code, or the token error's AADSTS code, when there is one.
    pub fn code(&self) -> Option<String> {
        match self {
            GraphError::Api { code, .. } => Some(code.clone()),
            GraphError::Token { aadsts, .. } => Some(format!("AADSTS{aadsts}")),
            GraphError::DeltaExpired => Some("syncStateNotFound".into()),
            GraphError::Tls { problem, .. } => Some(problem.code().into()),
            _ => None,
        }
    }

    /// HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Api { status, .. } | GraphError::Token { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Graph throttled the request (429): it turned it away without acting on it.
    pub fn is_throttled(&self) -> bool {
        self.status() == Some(429)
    }

    /// How long Graph asked to wait before the next request, when it said.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            GraphError::Api { retry_after, .. } | GraphError::Token { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// A definite refusal (4xx other than throttling): retrying the same request cannot help.
    pub fn is_definite(&self) -> bool {
        matches!(self.status(), Some(s) if (400..500).contains(&s) && s != 429 && s != 408)
    }
}

/// What a TLS handshake with Graph or the identity platform found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsProblem {
    /// No trusted root signed the chain: a TLS-inspecting proxy (give its CA as
    /// `graph_ca_bundle`), or a URL that points somewhere else.
    #[error("certificate signed by an unknown issuer (behind a TLS-inspecting proxy, give its CA certificate as graph_ca_bundle)")]
    UnknownIssuer,
    /// The certificate's validity ended.
    #[error("certificate expired")]
    Expired,
    /// The certificate's validity has not begun (or this machine's clock is wrong).
    #[error("certificate not valid yet (is this machine's clock right?)")]
    NotYetValid,
    /// The certificate names other hosts.
    #[error("certificate not valid for this host name")]
    WrongHost,
    /// The issuer revoked the certificate.
    #[error("certificate revoked")]
    Revoked,
    /// Anything else rustls refused, in its words.
    #[error("{0}")]
    Other(String),
}

impl TlsProblem {
    /// A stable code for `last_sync` and `graph check`.
    pub fn code(&self) -> &'static str {
        match self {
            TlsProblem::UnknownIssuer => "TlsUnknownIssuer",
            TlsProblem::Expired => "TlsCertificateExpired",
            TlsProblem::NotYetValid => "TlsCertificateNotYetValid",
            TlsProblem::WrongHost => "TlsCertificateWrongHost",
            TlsProblem::Revoked => "TlsCertificateRevoked",
            TlsProblem::Other(_) => "TlsHandshakeFailed",
        }
    }

    /// The TLS problem behind a request's failure, when there is one. reqwest wraps
    /// rustls's error in `io::Error`s, whose `source()` skips the wrapped error, so each
    /// link of the chain is also looked into.
    pub fn of(err: &(dyn std::error::Error + 'static)) -> Option<TlsProblem> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(r) = e.downcast_ref::<rustls::Error>() {
                return Some(TlsProblem::from_rustls(r));
            }
            // hyper-rustls wraps tokio-rustls's `io::Error` in another one.
            next = match e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
                None => e.source(),
            };
        }
        None
    }

    fn from_rustls(e: &rustls::Error) -> TlsProblem {
        use rustls::CertificateError as C;
        match e {
            rustls::Error::InvalidCertificate(c) => match c {
                C::UnknownIssuer => TlsProblem::UnknownIssuer,
                C::Expired | C::ExpiredContext { .. } => TlsProblem::Expired,
                C::NotValidYet | C::NotValidYetContext { .. } => TlsProblem::NotYetValid,
                C::NotValidForName | C::NotValidForNameContext { .. } => TlsProblem::WrongHost,
                C::Revoked => TlsProblem::Revoked,
                other => TlsProblem::Other(format!("invalid certificate: {other:?}")),
            },
            other => TlsProblem::Other(other.to_string()),
        }
    }
}
