//! The control API under `/_sim`: loopback only, no token. Tests and the demo change the
//! directory, inject faults, expire delta tokens and read what was asked.

use crate::graph::{graph_error, user_json};
use crate::state::{Change, Fault, Sim};
use crate::tenant::UserEntry;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

/// `POST /_sim/users` body: a Graph user object, optionally with `password` and `adminRoles`.
/// Properties the simulator does not model (`jobTitle`, `@odata.type` …) are ignored, as a
/// Graph user object may carry any of them.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewUser {
    #[serde(default)]
    id: Option<String>,
    user_principal_name: String,
    display_name: String,
    #[serde(default)]
    mail: Option<String>,
    #[serde(default)]
    given_name: Option<String>,
    #[serde(default)]
    surname: Option<String>,
    #[serde(default = "yes")]
    account_enabled: bool,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    admin_roles: Vec<String>,
}

fn yes() -> bool {
    true
}

pub async fn create_user(State(sim): State<Sim>, Json(u): Json<NewUser>) -> Response {
    let user = UserEntry {
        id: u.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        user_principal_name: u.user_principal_name,
        display_name: u.display_name,
        mail: u.mail,
        given_name: u.given_name,
        surname: u.surname,
        account_enabled: u.account_enabled,
        password: u.password,
        admin_roles: u.admin_roles,
    };
    let body = user_json(&user, &[], false);
    sim.lock().put_user(user);
    (StatusCode::CREATED, Json(body)).into_response()
}

/// `PATCH /_sim/users/{id}` body: any of the user's attributes.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPatch {
    user_principal_name: Option<String>,
    display_name: Option<String>,
    /// `null` clears it; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    mail: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    given_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    surname: Option<Option<String>>,
    account_enabled: Option<bool>,
    password: Option<String>,
    admin_roles: Option<Vec<String>>,
}

/// A field that is there, `null` included (serde reads a `null` `Option<Option<_>>` as
/// absent otherwise).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Changes a user's attributes (a change delta rounds will report).
pub async fn patch_user(
    State(sim): State<Sim>,
    Path(id): Path<String>,
    Json(p): Json<UserPatch>,
) -> Response {
    let mut inner = sim.lock();
    let Some(mut u) = inner.dir.users.get(&id).cloned() else {
        return graph_error(
            StatusCode::NOT_FOUND,
            "Request_ResourceNotFound",
            "no such user",
        );
    };
    if let Some(v) = p.user_principal_name {
        u.user_principal_name = v;
    }
    if let Some(v) = p.display_name {
        u.display_name = v;
    }
    if let Some(v) = p.mail {
        u.mail = v;
    }
    if let Some(v) = p.given_name {
        u.given_name = v;
    }
    if let Some(v) = p.surname {
        u.surname = v;
    }
    if let Some(v) = p.account_enabled {
        u.account_enabled = v;
    }
    if let Some(v) = p.password {
        u.password = Some(v);
    }
    if let Some(v) = p.admin_roles {
        u.admin_roles = v;
    }
    let body = user_json(&u, &[], false);
    inner.put_user(u);
    Json(body).into_response()
}

/// Deletes a user (and their memberships).
pub async fn delete_user(State(sim): State<Sim>, Path(id): Path<String>) -> StatusCode {
    if sim.lock().delete_user(&id) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// The user's current password and how often Graph changed it.
pub async fn password(State(sim): State<Sim>, Path(id): Path<String>) -> Response {
    let inner = sim.lock();
    match inner.dir.users.get(&id) {
        Some(u) => Json(json!({
            "password": u.password,
            "changes": inner.dir.password_changes.get(&id).copied().unwrap_or(0),
        }))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /_sim/password-log` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordLogQuery {
    /// Only this user's changes.
    user: Option<String>,
    /// Only changes after this sequence number.
    after: Option<u64>,
}

/// Every password Graph set, oldest first (optionally one user's, after a sequence number).
pub async fn password_log(
    State(sim): State<Sim>,
    axum::extract::Query(q): axum::extract::Query<PasswordLogQuery>,
) -> Response {
    let inner = sim.lock();
    let items: Vec<_> = inner
        .password_log
        .iter()
        .filter(|p| q.after.is_none_or(|a| p.seq > a))
        .filter(|p| q.user.as_deref().is_none_or(|u| p.user == u))
        .collect();
    Json(json!(items)).into_response()
}

/// `PUT /_sim/link-host` body: the host links in answers name (`null`: the one asked).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkHost {
    host: Option<String>,
}

/// Makes answers link to another host, as a hostile or broken Graph would.
pub async fn link_host(State(sim): State<Sim>, Json(l): Json<LinkHost>) -> StatusCode {
    sim.lock().link_host = l.host;
    StatusCode::NO_CONTENT
}

/// `PUT /_sim/delta/order` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaOrder {
    unordered: bool,
}

/// Makes later delta rounds name each change on its own, newest first (see
/// [`crate::state::Inner::unordered_delta`]).
pub async fn delta_order(State(sim): State<Sim>, Json(o): Json<DeltaOrder>) -> StatusCode {
    sim.lock().unordered_delta = o.unordered;
    StatusCode::NO_CONTENT
}

/// `PUT /_sim/token-lifetime` body: the `expires_in` token answers claim (`null`: the truth).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLifetime {
    expires_in: Option<u64>,
}

/// Makes token answers claim another lifetime, as a hostile endpoint might.
pub async fn token_lifetime(State(sim): State<Sim>, Json(t): Json<TokenLifetime>) -> StatusCode {
    sim.lock().claimed_expires_in = t.expires_in;
    StatusCode::NO_CONTENT
}

pub async fn add_member(
    State(sim): State<Sim>,
    Path((group, user)): Path<(String, String)>,
) -> StatusCode {
    if sim.lock().set_member(&group, &user, true) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

pub async fn remove_member(
    State(sim): State<Sim>,
    Path((group, user)): Path<(String, String)>,
) -> StatusCode {
    if sim.lock().set_member(&group, &user, false) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// `POST /_sim/groups/{group}/members/{user}/repeat-add`: the next delta round names the
/// user as added again without anything changing (GRAPH.md §3: a change can come back in a
/// later round), even a user since deleted. 404 for a group never known.
pub async fn repeat_add(
    State(sim): State<Sim>,
    Path((group, user)): Path<(String, String)>,
) -> StatusCode {
    repeat_member_change(&sim, group, user, true)
}

/// `POST /_sim/groups/{group}/members/{user}/repeat-remove`: the next delta round names
/// the user as removed again, though they may have come back since.
pub async fn repeat_remove(
    State(sim): State<Sim>,
    Path((group, user)): Path<(String, String)>,
) -> StatusCode {
    repeat_member_change(&sim, group, user, false)
}

/// `POST /_sim/users/{id}/repeat-delete`: the next delta round names the user's deletion
/// again, though they may have been restored since (it is named as a delete only when
/// rounds are unordered: ordered rounds show each user's state now). 404 for a user never
/// known.
pub async fn repeat_delete(State(sim): State<Sim>, Path(id): Path<String>) -> StatusCode {
    let mut inner = sim.lock();
    let known = inner.dir.users.contains_key(&id)
        || inner
            .changes
            .iter()
            .any(|(_, c)| matches!(c, Change::UserDeleted(u) if *u == id));
    if !known {
        return StatusCode::NOT_FOUND;
    }
    inner.record(Change::UserDeleted(id));
    StatusCode::NO_CONTENT
}

/// `POST /_sim/users/{id}/repeat-disable`: the next delta round names the user as
/// disabled (`accountEnabled: false`) again, after whatever it says of them now, though
/// they may have been enabled since. 404 for a user not in the directory.
pub async fn repeat_disable(State(sim): State<Sim>, Path(id): Path<String>) -> StatusCode {
    let mut inner = sim.lock();
    if !inner.dir.users.contains_key(&id) {
        return StatusCode::NOT_FOUND;
    }
    inner.record(Change::UserEnabledRepeated { id, enabled: false });
    StatusCode::NO_CONTENT
}

/// `POST /_sim/users/{id}/repeat-enable`: the next `users/delta` round names the user
/// enabled again, an old change (after they were disabled since) as Graph may name one.
pub async fn repeat_enable(State(sim): State<Sim>, Path(id): Path<String>) -> StatusCode {
    let mut inner = sim.lock();
    if !inner.dir.users.contains_key(&id) {
        return StatusCode::NOT_FOUND;
    }
    inner.record(Change::UserEnabledRepeated { id, enabled: true });
    StatusCode::NO_CONTENT
}

/// `POST /_sim/users/{id}/stale-read`: the next read of the user by id (a `users/delta`
/// round filtered by id) still shows the user as they are now, whatever happens to them
/// before it (deleted, disabled), as a replica that has not caught up would. 404 for a
/// user not in the directory.
pub async fn stale_read(State(sim): State<Sim>, Path(id): Path<String>) -> StatusCode {
    let mut inner = sim.lock();
    let Some(user) = inner.dir.users.get(&id).cloned() else {
        return StatusCode::NOT_FOUND;
    };
    inner.stale_reads.insert(id, user);
    StatusCode::NO_CONTENT
}

/// `POST /_sim/users/{id}/unseen-read`: the next read of the user by id misses them, as a
/// replica that has not caught up with their creation or restore would.
pub async fn unseen_read(State(sim): State<Sim>, Path(id): Path<String>) -> StatusCode {
    sim.lock().unseen_reads.insert(id);
    StatusCode::NO_CONTENT
}

/// `POST /_sim/groups/{group}/members/{user}/unseen-read`: the next read of the group's
/// member list misses the user, as a replica behind their addition would.
pub async fn unseen_member(
    State(sim): State<Sim>,
    Path((group, user)): Path<(String, String)>,
) -> StatusCode {
    sim.lock().unseen_members.insert((group, user));
    StatusCode::NO_CONTENT
}

/// `POST /_sim/groups/{group}/members/{user}/unseen-delta`: full rounds of `groups/delta`
/// leave the member out (the member list still names them) until `DELETE` of the same path.
pub async fn unseen_in_delta(
    State(sim): State<Sim>,
    method: axum::http::Method,
    Path((group, user)): Path<(String, String)>,
) -> StatusCode {
    let mut inner = sim.lock();
    if method == axum::http::Method::DELETE {
        inner.unseen_in_delta.remove(&(group, user));
    } else {
        inner.unseen_in_delta.insert((group, user));
    }
    StatusCode::NO_CONTENT
}

fn repeat_member_change(sim: &Sim, group: String, user: String, added: bool) -> StatusCode {
    let mut inner = sim.lock();
    let known = inner.dir.groups.contains_key(&group)
        || inner.changes.iter().any(|(_, c)| {
            matches!(c, Change::Member { group: g, user: u, .. } if *g == group && *u == user)
        });
    if !known {
        return StatusCode::NOT_FOUND;
    }
    inner.record(Change::Member { group, user, added });
    StatusCode::NO_CONTENT
}

/// `POST /_sim/groups` body: a new, empty group. Display names are not unique in Entra
/// (any user may be allowed to create security groups), so a namesake is accepted.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewGroup {
    id: String,
    display_name: String,
}

/// `POST /_sim/groups`: creates a group; 409 if the id is taken.
pub async fn create_group(State(sim): State<Sim>, Json(g): Json<NewGroup>) -> StatusCode {
    if sim.lock().create_group(g.id, g.display_name) {
        StatusCode::CREATED
    } else {
        StatusCode::CONFLICT
    }
}

/// `DELETE /_sim/groups/{group}`: soft-deletes a group.
pub async fn delete_group(State(sim): State<Sim>, Path(group): Path<String>) -> StatusCode {
    if sim.lock().delete_group(&group) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

/// Queues a fault.
pub async fn add_fault(State(sim): State<Sim>, Json(f): Json<Fault>) -> StatusCode {
    sim.lock().faults.push(f);
    StatusCode::NO_CONTENT
}

/// Clears every fault.
pub async fn clear_faults(State(sim): State<Sim>) -> StatusCode {
    sim.lock().faults.clear();
    StatusCode::NO_CONTENT
}

/// Expires every delta token issued so far.
pub async fn expire_delta(State(sim): State<Sim>) -> StatusCode {
    sim.lock().epoch += 1;
    StatusCode::NO_CONTENT
}

/// The requests received, oldest first.
pub async fn requests(State(sim): State<Sim>) -> Response {
    let inner = sim.lock();
    Json(json!(inner.requests.iter().collect::<Vec<_>>())).into_response()
}

/// `PATCH /_sim/apps/{client_id}` body: a new `secret`, `permissions`, `directoryRoles`
/// and/or `redirectUris` (replacing the registered list).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppPatch {
    secret: Option<String>,
    permissions: Option<Vec<String>>,
    #[serde(rename = "directoryRoles")]
    directory_roles: Option<Vec<String>>,
    #[serde(rename = "redirectUris")]
    redirect_uris: Option<Vec<String>>,
}

/// Rotates an app's secret, changes its permissions (tokens already issued keep theirs) or
/// its redirect URIs (codes already issued keep theirs).
pub async fn patch_app(
    State(sim): State<Sim>,
    Path(client_id): Path<String>,
    Json(p): Json<AppPatch>,
) -> StatusCode {
    let mut inner = sim.lock();
    let Some(app) = inner.dir.apps.get_mut(&client_id) else {
        return StatusCode::NOT_FOUND;
    };
    if let Some(s) = p.secret {
        app.secret = s;
    }
    if let Some(p) = p.permissions {
        app.permissions = p;
    }
    if let Some(r) = p.directory_roles {
        app.directory_roles = r;
    }
    if let Some(r) = p.redirect_uris {
        app.redirect_uris = r;
    }
    StatusCode::NO_CONTENT
}

/// Counters: the most user `PATCH` requests served at once, and password changes made.
pub async fn stats(State(sim): State<Sim>) -> Response {
    let changes: u32 = sim.lock().dir.password_changes.values().sum();
    Json(json!({
        "max_concurrent_patches": sim.patches.max(),
        "password_changes": changes,
        "tls_hellos": sim.hellos.seen(),
    }))
    .into_response()
}

/// `PUT /_sim/domains/{name}` body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainPut {
    authentication_type: String,
}

/// Adds a verified domain to the tenant, or changes how its users authenticate
/// (`Managed`, or `Federated`: their passwords live with the federation's provider).
pub async fn put_domain(
    State(sim): State<Sim>,
    Path(name): Path<String>,
    Json(d): Json<DomainPut>,
) -> Response {
    if !matches!(d.authentication_type.as_str(), "Managed" | "Federated") {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "Request_BadRequest",
            "authenticationType is Managed or Federated.",
        );
    }
    let mut inner = sim.lock();
    match inner
        .dir
        .domains
        .iter_mut()
        .find(|e| e.id.eq_ignore_ascii_case(&name))
    {
        Some(e) => e.authentication_type = d.authentication_type,
        None => inner.dir.domains.push(crate::tenant::DomainEntry {
            id: name,
            authentication_type: d.authentication_type,
            is_default: false,
            is_initial: false,
        }),
    }
    StatusCode::NO_CONTENT.into_response()
}
