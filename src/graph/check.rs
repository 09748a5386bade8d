//! The "test connection" an admin runs before saving a domain (`idledger graph check`):
//! a token, the permissions granted, each read the product needs, both groups.

use super::{GraphClient, GraphError, GraphSettings, GraphTrust, RetryPolicy, USER_SELECT};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;
use utoipa::ToSchema;

/// The application permissions of the Entra ID setup guide.
pub const REQUIRED_PERMISSIONS: &[&str] = &[
    "User.Read.All",
    "Group.Read.All",
    "Domain.Read.All",
    "User.ReadWrite.All",
    "User-PasswordProfile.ReadWrite.All",
];

/// What a token cannot show, so no check here can tell.
const NOTES: &[&str] = &[
    "password resets also need the app to hold the User Administrator directory role (Privileged Authentication Administrator for admins' passwords): Entra ID > Roles and administrators",
];

// The report's structs list their fields in alphabetical order: it was first written as
// JSON maps, whose keys serialize sorted, and scripts compare `graph check`'s output.

/// What `idledger graph check` and `POST /v1/domains/check` report: with a token, every
/// check; without one, why not.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ConnectionReport {
    /// A token was had: the permissions, reads and groups.
    Checked(Box<Checked>),
    /// No token: nothing else could be checked.
    NoToken(NoToken),
}

impl ConnectionReport {
    /// Nothing is missing.
    pub fn ok(&self) -> bool {
        match self {
            ConnectionReport::Checked(c) => c.ok,
            ConnectionReport::NoToken(n) => n.ok,
        }
    }
}

/// The report once a token was had.
#[derive(Debug, Serialize, ToSchema)]
pub struct Checked {
    /// The required permissions not granted.
    pub missing_permissions: Vec<&'static str>,
    /// What the checks cannot see and the admin must see to.
    pub notes: Vec<&'static str>,
    /// Nothing is missing: every permission, read and group.
    pub ok: bool,
    /// Each required application permission (see the setup guide).
    pub permissions: BTreeMap<&'static str, Grant>,
    /// Each read the product needs, tried for real.
    pub reads: Reads,
    /// The rotation group, by its display name.
    pub rotation_group: GroupReport,
    /// How long the check took.
    pub seconds: f64,
    /// The sync group, by its display name.
    pub sync_group: GroupReport,
    /// The token was had.
    pub token: Fine,
}

/// The report when no token could be had.
#[derive(Debug, Serialize, ToSchema)]
pub struct NoToken {
    /// Always false.
    pub ok: bool,
    /// How long the check took (absent when no request could be made at all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Why.
    pub token: TokenRefused,
}

/// Why no token was had.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenRefused {
    /// Entra ID's error code, or what went wrong.
    pub error: String,
    /// The whole message, when Entra ID answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A check that passed: `"ok"`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Fine {
    /// Passed.
    Ok,
}

/// Whether a permission is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Grant {
    /// Granted (admin consent given).
    Granted,
    /// Not granted.
    Missing,
}

/// The reads the product needs.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reads {
    /// The organisation's domains.
    pub domains: ReadOutcome,
    /// Groups, by name.
    pub groups: ReadOutcome,
    /// Users, by delta query.
    pub users: ReadOutcome,
}

/// How a read went: `"ok"`, or Graph's error.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ReadOutcome {
    /// It worked.
    Ok(Fine),
    /// It did not.
    Failed {
        /// Graph's error code, or what went wrong.
        error: String,
    },
}

impl ReadOutcome {
    fn of(r: &Result<(), GraphError>) -> ReadOutcome {
        match r {
            Ok(()) => ReadOutcome::Ok(Fine::Ok),
            Err(e) => ReadOutcome::Failed { error: code(e) },
        }
    }

    fn is_ok(&self) -> bool {
        matches!(self, ReadOutcome::Ok(_))
    }
}

/// A group found by its display name, or why not.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct GroupReport {
    /// Why the group cannot be used: Graph's error code, `not found` or `ambiguous`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its object id, when one group has the name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Every group with the name, when several have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Its user members.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<usize>,
    /// The display name looked for.
    pub name: String,
}

fn code(e: &GraphError) -> String {
    e.code().unwrap_or_else(|| e.to_string())
}

/// Resolves a group by name and counts its user members.
async fn group_report(client: &GraphClient, name: &str) -> GroupReport {
    let report = GroupReport {
        name: name.to_owned(),
        ..GroupReport::default()
    };
    match client.find_groups(name).await {
        Ok(groups) if groups.len() == 1 => {
            let id = Some(groups[0].id.clone());
            match client.group_members(&groups[0].id, "id").await {
                Ok(members) => GroupReport {
                    id,
                    members: Some(members.len()),
                    ..report
                },
                Err(e) => GroupReport {
                    id,
                    error: Some(code(&e)),
                    ..report
                },
            }
        }
        Ok(groups) if groups.is_empty() => GroupReport {
            error: Some("not found".into()),
            ..report
        },
        Ok(groups) => GroupReport {
            error: Some("ambiguous".into()),
            ids: Some(groups.into_iter().map(|g| g.id).collect()),
            ..report
        },
        Err(e) => GroupReport {
            error: Some(code(&e)),
            ..report
        },
    }
}

impl GroupReport {
    fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Checks a connection; answers the report (`ok` when nothing is missing).
pub async fn check(
    settings: GraphSettings,
    trust: &GraphTrust,
    sync_group: &str,
    rotation_group: &str,
) -> ConnectionReport {
    let started = Instant::now();
    let client = match GraphClient::new(settings, RetryPolicy::default(), trust) {
        Ok(c) => c,
        Err(e) => {
            return ConnectionReport::NoToken(NoToken {
                ok: false,
                seconds: None,
                token: TokenRefused {
                    error: e.to_string(),
                    message: None,
                },
            })
        }
    };
    let roles = match client.granted_roles().await {
        Ok(r) => r,
        Err(e) => {
            return ConnectionReport::NoToken(NoToken {
                ok: false,
                seconds: Some(started.elapsed().as_secs_f64()),
                token: TokenRefused {
                    error: code(&e),
                    message: Some(e.to_string()),
                },
            });
        }
    };
    let mut permissions = BTreeMap::new();
    let mut missing = Vec::new();
    for p in REQUIRED_PERMISSIONS {
        let granted = roles.iter().any(|r| r == p);
        permissions.insert(
            *p,
            if granted {
                Grant::Granted
            } else {
                Grant::Missing
            },
        );
        if !granted {
            missing.push(*p);
        }
    }
    let reads = Reads {
        groups: ReadOutcome::of(&client.find_groups(sync_group).await.map(|_| ())),
        users: ReadOutcome::of(&client.users_delta_latest(USER_SELECT).await.map(|_| ())),
        domains: ReadOutcome::of(&client.domains().await.map(|_| ())),
    };
    let reads_ok = reads.domains.is_ok() && reads.groups.is_ok() && reads.users.is_ok();
    let sync_group = group_report(&client, sync_group).await;
    let rotation_group = group_report(&client, rotation_group).await;
    let ok = missing.is_empty() && reads_ok && sync_group.is_ok() && rotation_group.is_ok();
    ConnectionReport::Checked(Box::new(Checked {
        missing_permissions: missing,
        notes: NOTES.to_vec(),
        ok,
        permissions,
        reads,
        rotation_group,
        seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        sync_group,
        token: Fine::Ok,
    }))
}
