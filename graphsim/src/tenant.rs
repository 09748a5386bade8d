//! The tenant file: users, groups, app registrations and domains, as JSON.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A tenant as loaded from `--tenant FILE`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantFile {
    /// The tenant (directory) id.
    pub tenant_id: String,
    /// Verified domains.
    pub domains: Vec<DomainEntry>,
    /// App registrations that may get tokens.
    pub applications: Vec<Application>,
    /// Every user ever discovered, deleted ones included.
    pub users: Vec<UserEntry>,
    /// Groups with their direct members (user ids).
    pub groups: Vec<GroupEntry>,
}

/// A domain of the tenant (`GET /v1.0/domains`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainEntry {
    /// The domain name.
    pub id: String,
    /// `Managed` or `Federated`.
    #[serde(default = "managed")]
    pub authentication_type: String,
    /// Default domain.
    #[serde(default)]
    pub is_default: bool,
    /// The initial `*.onmicrosoft.com` domain.
    #[serde(default)]
    pub is_initial: bool,
}

fn managed() -> String {
    "Managed".into()
}

/// An app registration with a client secret and granted application permissions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Application {
    /// Client (application) id.
    pub client_id: String,
    pub display_name: String,
    /// The client secret.
    pub secret: String,
    /// Granted application permissions (the token's `roles`).
    pub permissions: Vec<String>,
    /// Directory roles held by the app's service principal.
    #[serde(default)]
    pub directory_roles: Vec<String>,
    /// Redirect URIs registered for sign-in (`redirectUris`); the authorize endpoint
    /// accepts exactly these strings.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
}

/// A user.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserEntry {
    /// Object id.
    pub id: String,
    /// `userPrincipalName`.
    pub user_principal_name: String,
    /// `displayName`.
    pub display_name: String,
    /// `mail`.
    #[serde(default)]
    pub mail: Option<String>,
    /// `givenName`.
    #[serde(default)]
    pub given_name: Option<String>,
    /// `surname`.
    #[serde(default)]
    pub surname: Option<String>,
    /// `accountEnabled`.
    #[serde(default = "yes")]
    pub account_enabled: bool,
    /// The current password (the simulator's secret; never served by Graph routes).
    #[serde(default)]
    pub password: Option<String>,
    /// Admin roles held (a password reset then needs a privileged app).
    #[serde(default)]
    pub admin_roles: Vec<String>,
}

impl UserEntry {
    /// The Graph names of the properties that differ in `after`.
    pub fn changed(&self, after: &UserEntry) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |name, differs| {
            if differs {
                out.push(name);
            }
        };
        check(
            "userPrincipalName",
            self.user_principal_name != after.user_principal_name,
        );
        check("displayName", self.display_name != after.display_name);
        check("mail", self.mail != after.mail);
        check("givenName", self.given_name != after.given_name);
        check("surname", self.surname != after.surname);
        check(
            "accountEnabled",
            self.account_enabled != after.account_enabled,
        );
        out
    }
}

fn yes() -> bool {
    true
}

/// A security group.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupEntry {
    /// Object id.
    pub id: String,
    /// Display name (not unique).
    pub display_name: String,
    /// Direct members (user ids).
    #[serde(default)]
    pub members: Vec<String>,
}

/// The simulator's live copy of the directory.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// Entra tenant id (a GUID).
    pub tenant_id: String,
    pub domains: Vec<DomainEntry>,
    /// Apps by client id.
    pub apps: BTreeMap<String, Application>,
    /// Users by id (ordered, so paging is stable).
    pub users: BTreeMap<String, UserEntry>,
    /// Groups by id.
    pub groups: BTreeMap<String, Group>,
    /// Soft-deleted groups by id (Entra keeps them restorable for 30 days).
    pub deleted_groups: BTreeMap<String, Group>,
    /// Password changes per user id.
    pub password_changes: BTreeMap<String, u32>,
}

/// A group with ordered members.
#[derive(Clone, Debug, Default)]
pub struct Group {
    /// Object id.
    pub id: String,
    pub display_name: String,
    /// Member user ids.
    pub members: BTreeSet<String>,
}

impl Directory {
    /// Builds the directory from a tenant file.
    pub fn from_file(t: TenantFile) -> Self {
        Directory {
            tenant_id: t.tenant_id,
            domains: t.domains,
            apps: t
                .applications
                .into_iter()
                .map(|a| (a.client_id.clone(), a))
                .collect(),
            users: t.users.into_iter().map(|u| (u.id.clone(), u)).collect(),
            groups: t
                .groups
                .into_iter()
                .map(|g| {
                    let group = Group {
                        id: g.id.clone(),
                        display_name: g.display_name,
                        members: g.members.into_iter().collect(),
                    };
                    (g.id, group)
                })
                .collect(),
            deleted_groups: BTreeMap::new(),
            password_changes: BTreeMap::new(),
        }
    }

    /// Adds `n` generated users: all in the group named `sync_group`, every tenth also in
    /// `rotation_group` (groups are created when missing).
    pub fn generate_users(&mut self, n: usize, sync_group: &str, rotation_group: &str) {
        let domain = self
            .domains
            .iter()
            .find(|d| d.is_initial)
            .or(self.domains.first())
            .map_or("generated.onmicrosoft.com".to_owned(), |d| d.id.clone());
        let sync = self.group_id_or_create(sync_group);
        let rotation = self.group_id_or_create(rotation_group);
        for i in 0..n {
            let id = uuid::Uuid::from_u128(0x6e00_0000_0000_4000_8000_0000_0000_0000 | i as u128)
                .to_string();
            self.users.insert(
                id.clone(),
                UserEntry {
                    id: id.clone(),
                    user_principal_name: format!("gen{i:06}@{domain}"),
                    display_name: format!("Generated User {i}"),
                    mail: Some(format!("gen{i:06}@{domain}")),
                    given_name: Some("Generated".into()),
                    surname: Some(format!("User {i}")),
                    account_enabled: true,
                    password: Some(format!("Initial-Pass-{i}!")),
                    admin_roles: Vec::new(),
                },
            );
            if let Some(g) = self.groups.get_mut(&sync) {
                g.members.insert(id.clone());
            }
            if i % 10 == 0 {
                if let Some(g) = self.groups.get_mut(&rotation) {
                    g.members.insert(id);
                }
            }
        }
    }

    fn group_id_or_create(&mut self, name: &str) -> String {
        if let Some(g) = self.groups.values().find(|g| g.display_name == name) {
            return g.id.clone();
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.groups.insert(
            id.clone(),
            Group {
                id: id.clone(),
                display_name: name.to_owned(),
                members: BTreeSet::new(),
            },
        );
        id
    }
}
