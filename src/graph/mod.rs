//! The Microsoft Graph client: client-credentials tokens, typed reads and the password
//! update, retries as Graph asks for them. Every base URL is a setting, so the same code
//! talks to the public cloud, a national cloud, or graphsim.

pub mod check;
mod client;
mod error;
mod types;

pub(crate) use client::MAX_RECORDED_ERROR;
pub use client::{
    AuthorizeRequest, GraphClient, GraphSettings, GraphTrust, OpenIdKeys, PasswordNotSet,
    RetryPolicy, Secret,
};
pub use error::{GraphError, TlsProblem};
pub use types::*;
