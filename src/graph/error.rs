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
    /// An answer that does not have Graph's shape.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// Graph's answer pointed somewhere other than the configured Graph host (a next or
    /// delta link); it was not followed, so the token went nowhere else.
    #[error(
        "Graph sent a link to {0}, which is not the configured Graph host; it was not followed"
    )]
    ForeignLink(String),
}

impl GraphError {
    /// Graph's error code, or the token error's AADSTS code, when there is one.
    pub fn code(&self) -> Option<String> {
        match self {
            GraphError::Api { code, .. } => Some(code.clone()),
            GraphError::Token { aadsts, .. } => Some(format!("AADSTS{aadsts}")),
            GraphError::DeltaExpired => Some("syncStateNotFound".into()),
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

    /// A definite refusal (4xx other than throttling): retrying the same request cannot help.
    pub fn is_definite(&self) -> bool {
        matches!(self.status(), Some(s) if (400..500).contains(&s) && s != 429 && s != 408)
    }
}
