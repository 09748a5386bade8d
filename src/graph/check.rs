//! The "test connection" an admin runs before saving a domain (`idledger graph check`):
//! a token, the permissions granted, each read the product needs, both groups.

use super::{GraphClient, GraphError, GraphSettings, GraphTrust, RetryPolicy, USER_SELECT};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// The application permissions of the Entra ID setup guide.
pub const REQUIRED_PERMISSIONS: &[&str] = &[
    "User.Read.All",
    "Group.Read.All",
    "Domain.Read.All",
    "User.ReadWrite.All",
    "User-PasswordProfile.ReadWrite.All",
];

fn outcome(r: &Result<(), GraphError>) -> Value {
    match r {
        Ok(()) => json!("ok"),
        Err(e) => json!({"error": e.code().unwrap_or_else(|| e.to_string())}),
    }
}

/// Resolves a group by name and counts its user members.
async fn group_report(client: &GraphClient, name: &str) -> (Value, bool) {
    match client.find_groups(name).await {
        Ok(groups) if groups.len() == 1 => match client.group_members(&groups[0].id, "id").await {
            Ok(members) => (
                json!({"name": name, "id": groups[0].id, "members": members.len()}),
                true,
            ),
            Err(e) => (
                json!({"name": name, "id": groups[0].id, "error": e.code().unwrap_or_else(|| e.to_string())}),
                false,
            ),
        },
        Ok(groups) if groups.is_empty() => (json!({"name": name, "error": "not found"}), false),
        Ok(groups) => (
            json!({"name": name, "error": "ambiguous", "ids": groups.iter().map(|g| g.id.clone()).collect::<Vec<_>>()}),
            false,
        ),
        Err(e) => (
            json!({"name": name, "error": e.code().unwrap_or_else(|| e.to_string())}),
            false,
        ),
    }
}

/// Checks a connection; answers the report (`"ok": true` when nothing is missing).
pub async fn check(
    settings: GraphSettings,
    trust: &GraphTrust,
    sync_group: &str,
    rotation_group: &str,
) -> Value {
    let started = Instant::now();
    let client = match GraphClient::new(settings, RetryPolicy::default(), trust) {
        Ok(c) => c,
        Err(e) => return json!({"token": {"error": e.to_string()}, "ok": false}),
    };
    let roles = match client.granted_roles().await {
        Ok(r) => r,
        Err(e) => {
            return json!({
                "token": {"error": e.code().unwrap_or_else(|| e.to_string()), "message": e.to_string()},
                "ok": false,
                "seconds": started.elapsed().as_secs_f64(),
            });
        }
    };
    let mut permissions = Map::new();
    let mut missing = Vec::new();
    for p in REQUIRED_PERMISSIONS {
        let granted = roles.iter().any(|r| r == p);
        permissions.insert(
            (*p).to_owned(),
            json!(if granted { "granted" } else { "missing" }),
        );
        if !granted {
            missing.push(*p);
        }
    }
    // Each read the product needs, tried for real.
    let reads = json!({
        "groups": outcome(&client.find_groups(sync_group).await.map(|_| ())),
        "users": outcome(&client.users_delta_latest(USER_SELECT).await.map(|_| ())),
        "domains": outcome(&client.domains().await.map(|_| ())),
    });
    let reads_ok = reads
        .as_object()
        .is_some_and(|m| m.values().all(|v| v == "ok"));
    let (sync_group, sync_ok) = group_report(&client, sync_group).await;
    let (rotation_group, rotation_ok) = group_report(&client, rotation_group).await;
    let ok = missing.is_empty() && reads_ok && sync_ok && rotation_ok;
    json!({
        "token": "ok",
        "permissions": permissions,
        "missing_permissions": missing,
        "reads": reads,
        "sync_group": sync_group,
        "rotation_group": rotation_group,
        // What a token cannot show, so no check here can tell.
        "notes": [
            "password resets also need the app to hold the User Administrator directory role (Privileged Authentication Administrator for admins' passwords): Entra ID > Roles and administrators",
        ],
        "ok": ok,
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    })
}
