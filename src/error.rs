//! The binary's error: what start-up or a command reports when it cannot go on. A problem
//! a command finds (a broken chain, a differing export row) is a report and an exit code,
//! not this; a rule the domain refuses is a `Rejection`, not this.

/// Start-up or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// An append failed.
    #[error(transparent)]
    Append(#[from] crate::store::AppendError),
    /// The master key or the key store failed.
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
    /// Reading or writing a file failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}
