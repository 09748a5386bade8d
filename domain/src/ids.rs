//! Identifiers: typed UUID newtypes and stream names.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Wraps an existing UUID.
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            /// The inner UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A domain (one Entra tenant connection) managed by idledger.
    DomainId
);
uuid_id!(
    /// A user known to the engine. A user deleted and later rediscovered gets a new id.
    UserId
);
uuid_id!(
    /// An API token.
    TokenId
);
uuid_id!(
    /// One password rotation attempt (its events share this id).
    RotationId
);
uuid_id!(
    /// One delivery of a password to a hardware key.
    KeyWriteId
);
uuid_id!(
    /// One sync run of a domain.
    SyncRunId
);
uuid_id!(
    /// A data key in the engine's key store (see ENGINE.md §5).
    DataKeyId
);
uuid_id!(
    /// One enrolment link (an invite's): events name it, never its secret.
    LinkId
);
uuid_id!(
    /// A web app (OpenID Connect relying party) registered with the provider.
    AppId
);

/// The serial of a hardware key. Free text chosen by the key's vendor.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Debug)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of a stream, given by its name's prefix.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum StreamKind {
    /// `domain-{id}`: settings, credentials, sync runs.
    Domain,
    /// `user-{id}`: membership, status, rotations, key writes.
    User,
    /// `tokens`: API tokens.
    Tokens,
    /// `provider`: the OpenID Connect provider's apps and signing keys.
    Provider,
    /// Anything else (benchmarks and tests); accepts no catalogue rules.
    Other,
}

/// The name of a stream: `domain-{id}`, `user-{id}` or `tokens`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(String);

/// Why a stream name was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid stream name {0:?}: 1 to 200 bytes of [A-Za-z0-9_.:-], not starting with '$'")]
pub struct InvalidStreamName(pub String);

impl StreamId {
    /// The `$all` pseudo-stream name, never a real stream.
    pub const ALL: &'static str = "$all";

    /// Validates a stream name (length, characters; `$` is reserved for system streams).
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidStreamName> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= 200
            && !name.starts_with('$')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(Self(name))
        } else {
            Err(InvalidStreamName(name))
        }
    }

    /// The stream of a domain.
    pub fn domain(id: DomainId) -> Self {
        Self(format!("domain-{id}"))
    }

    /// The stream of a user.
    pub fn user(id: UserId) -> Self {
        Self(format!("user-{id}"))
    }

    /// The stream of API tokens.
    pub fn tokens() -> Self {
        Self("tokens".to_owned())
    }

    /// The stream of the OpenID Connect provider's apps and keys.
    pub fn provider() -> Self {
        Self("provider".to_owned())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The kind, from the prefix.
    pub fn kind(&self) -> StreamKind {
        if self.0 == "tokens" {
            StreamKind::Tokens
        } else if self.0 == "provider" {
            StreamKind::Provider
        } else if self.domain_id().is_some() {
            StreamKind::Domain
        } else if self.user_id().is_some() {
            StreamKind::User
        } else {
            StreamKind::Other
        }
    }

    /// The domain id of a `domain-{id}` stream.
    pub fn domain_id(&self) -> Option<DomainId> {
        self.0.strip_prefix("domain-")?.parse().ok()
    }

    /// The user id of a `user-{id}` stream.
    pub fn user_id(&self) -> Option<UserId> {
        self.0.strip_prefix("user-")?.parse().ok()
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.0)
    }
}

impl FromStr for StreamId {
    type Err = InvalidStreamName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_kinds_follow_prefixes() {
        let d = DomainId(Uuid::from_u128(1));
        let u = UserId(Uuid::from_u128(2));
        assert_eq!(StreamId::domain(d).kind(), StreamKind::Domain);
        assert_eq!(StreamId::domain(d).domain_id(), Some(d));
        assert_eq!(StreamId::user(u).kind(), StreamKind::User);
        assert_eq!(StreamId::user(u).user_id(), Some(u));
        assert_eq!(StreamId::tokens().kind(), StreamKind::Tokens);
        assert_eq!(StreamId::new("bench-7").unwrap().kind(), StreamKind::Other);
        assert_eq!(
            StreamId::new("user-notauuid").unwrap().kind(),
            StreamKind::Other
        );
    }

    #[test]
    fn stream_names_are_validated() {
        assert!(StreamId::new("").is_err());
        assert!(StreamId::new("$all").is_err());
        assert!(StreamId::new("a b").is_err());
        assert!(StreamId::new("x".repeat(201)).is_err());
        assert!(StreamId::new("ok-name_1.2:3").is_ok());
    }
}
