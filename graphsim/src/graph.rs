//! Graph v1.0 routes and the identity platform's token endpoint, as Graph shapes them.

use crate::jwt::{self, Claims};
use crate::state::{Change, DeltaCursor, Sim};
use crate::tenant::UserEntry;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

type Params = Query<HashMap<String, String>>;

/// A refusal, rendered as Graph's error body.
#[derive(Debug)]
pub struct GraphFail {
    status: StatusCode,
    code: &'static str,
    message: String,
    location: Option<String>,
}

impl GraphFail {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        GraphFail {
            status,
            code,
            message: message.into(),
            location: None,
        }
    }
}

impl IntoResponse for GraphFail {
    fn into_response(self) -> Response {
        let mut r = graph_error(self.status, self.code, &self.message);
        if let Some(v) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            r.headers_mut().insert("location", v);
        }
        r
    }
}

/// Graph's error body: `{"error":{"code","message","innerError":{…}}}`.
pub fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    graph_error_with_inner_code(status, code, message, None)
}

/// [`graph_error`] whose `innerError` carries a `code` too (a throttled request's is the
/// status in digits, `"429"`).
pub fn graph_error_with_inner_code(
    status: StatusCode,
    code: &str,
    message: &str,
    inner_code: Option<&str>,
) -> Response {
    let mut inner = json!({
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "request-id": uuid::Uuid::new_v4().to_string(),
    });
    if let Some(c) = inner_code {
        inner["code"] = json!(c);
    }
    let body = json!({"error": {"code": code, "message": message, "innerError": inner}});
    (status, Json(body)).into_response()
}

/// Any path Graph does not serve: Graph's error body naming the first unknown segment,
/// never an empty answer.
pub async fn unknown_segment(uri: axum::http::Uri) -> Response {
    let segment = uri
        .path()
        .trim_start_matches('/')
        .trim_start_matches("v1.0/")
        .split('/')
        .next()
        .unwrap_or("");
    graph_error(
        StatusCode::BAD_REQUEST,
        "BadRequest",
        &format!("Resource not found for the segment '{segment}'."),
    )
}

/// A method the path does not take: an error body as Graph's others are (axum's own 405
/// has none, and a client reading Graph's errors would have nothing to show).
pub async fn method_not_allowed(method: axum::http::Method) -> Response {
    graph_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "Request_BadRequest",
        &format!("Specified HTTP method '{method}' is not allowed for the request uri."),
    )
}

pub(crate) fn token_error(
    status: StatusCode,
    error: &str,
    aadsts: u32,
    description: &str,
) -> Response {
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%SZ").to_string();
    let body = json!({
        "error": error,
        "error_description": format!("AADSTS{aadsts}: {description}"),
        "error_codes": [aadsts],
        "timestamp": now,
        "trace_id": uuid::Uuid::new_v4().to_string(),
        "correlation_id": uuid::Uuid::new_v4().to_string(),
    });
    (status, Json(body)).into_response()
}

pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    // `serve_tls` sets the header on every request, as a TLS-terminating front would.
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

fn not_found(id: &str) -> Response {
    GraphFail::new(
        StatusCode::NOT_FOUND,
        "Request_ResourceNotFound",
        format!("Resource '{id}' does not exist or one of its queried reference-property objects are not present."),
    )
    .into_response()
}

fn bad_query(message: &str) -> GraphFail {
    GraphFail::new(StatusCode::BAD_REQUEST, "Request_UnsupportedQuery", message)
}

/// The header in which the request log keeps the host a request was sent to.
pub(crate) const SERVED_HOST: &str = "x-graphsim-served-host";

/// Checks the bearer token and that it carries one of `any_of` (application permissions).
fn authorize(sim: &Sim, headers: &HeaderMap, any_of: &[&str]) -> Result<Claims, GraphFail> {
    let unauthorized =
        |m: &str| GraphFail::new(StatusCode::UNAUTHORIZED, "InvalidAuthenticationToken", m);
    let token = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("Access token is empty."))?;
    let claims = jwt::verify(token, &sim.token_key[..])
        .ok_or_else(|| unauthorized("Access token validation failure. Invalid signature."))?;
    if claims.exp <= chrono::Utc::now().timestamp() {
        return Err(unauthorized(
            "Lifetime validation failed, the token is expired.",
        ));
    }
    if claims.tid != sim.lock().dir.tenant_id {
        return Err(unauthorized(
            "Access token validation failure. Invalid audience.",
        ));
    }
    // Graph takes only tokens issued for itself (`aud` its service root): here, the root
    // the request came to. A token asked for another resource is refused, as Graph does.
    let host = headers.get(SERVED_HOST).and_then(|h| h.to_str().ok());
    let audience = claims
        .aud
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    if let (Some(host), Some(audience)) = (host, audience) {
        if !audience.eq_ignore_ascii_case(host) {
            return Err(unauthorized(
                "Access token validation failure. Invalid audience.",
            ));
        }
    }
    if !claims.roles.iter().any(|r| any_of.contains(&r.as_str())) {
        return Err(GraphFail::new(
            StatusCode::FORBIDDEN,
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        ));
    }
    Ok(claims)
}

const READ_GROUPS: &[&str] = &[
    "Group.Read.All",
    "Group.ReadWrite.All",
    "GroupMember.Read.All",
    "Directory.Read.All",
];
const READ_USERS: &[&str] = &["User.Read.All", "User.ReadWrite.All", "Directory.Read.All"];
const WRITE_PASSWORDS: &[&str] = &[
    "User-PasswordProfile.ReadWrite.All",
    "Directory.ReadWrite.All",
];
const WRITE_USERS: &[&str] = &["User.ReadWrite.All", "Directory.ReadWrite.All"];
const READ_DOMAINS: &[&str] = &["Domain.Read.All", "Directory.Read.All"];
/// Directory roles that may reset an administrator's password.
const PRIVILEGED_ROLES: &[&str] = &[
    "Global Administrator",
    "Privileged Authentication Administrator",
];

/// Directory roles with which an app resets a non-admin user's password. App-only, the
/// permission alone is not enough: Microsoft's `passwordProfile` reference asks for "at
/// least the User Administrator Microsoft Entra role" as well.
const RESET_ROLES: &[&str] = &[
    "User Administrator",
    "Helpdesk Administrator",
    "Password Administrator",
    "Authentication Administrator",
    "Privileged Authentication Administrator",
    "Global Administrator",
];

/// One `field eq 'value'` term of a `$filter`.
fn parse_filter(filter: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for term in filter.split(" or ") {
        let (field, value) = term
            .trim()
            .split_once(" eq ")
            .ok_or_else(|| format!("Unsupported filter clause '{term}'."))?;
        let v = value.trim();
        let inner = v
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .ok_or_else(|| format!("Invalid filter literal {v}."))?;
        out.push((field.trim().to_owned(), inner.replace("''", "'")));
    }
    Ok(out)
}

/// A user's `$select` as a list of the properties' own names (empty when absent): Graph
/// takes names in any case and answers with its own, and refuses a property the user type
/// does not have (a client's typo would otherwise pass here and fail at Microsoft). The
/// simulator knows the properties it models.
fn select_of(params: &HashMap<String, String>) -> Result<Vec<String>, GraphFail> {
    let Some(select) = params.get("$select") else {
        return Ok(Vec::new());
    };
    select
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| {
            std::iter::once("id")
                .chain(USER_FIELDS.iter().copied())
                .find(|known| known.eq_ignore_ascii_case(f))
                .map(str::to_owned)
                .ok_or_else(|| {
                    GraphFail::new(
                        StatusCode::BAD_REQUEST,
                        "Request_BadRequest",
                        format!(
                            "Could not find a property named '{f}' on type 'Microsoft.DirectoryServices.User'."
                        ),
                    )
                })
        })
        .collect()
}

/// The user properties the simulator models.
const USER_FIELDS: &[&str] = &[
    "userPrincipalName",
    "displayName",
    "mail",
    "givenName",
    "surname",
    "accountEnabled",
];

const DEFAULT_USER_FIELDS: &[&str] = &[
    "userPrincipalName",
    "displayName",
    "mail",
    "givenName",
    "surname",
];

/// A user as Graph shows it, limited to `select` (Graph's defaults when empty).
pub fn user_json(u: &UserEntry, select: &[String], typed: bool) -> Value {
    let mut m = Map::new();
    if typed {
        m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
    }
    m.insert("id".into(), json!(u.id));
    let wanted: Vec<&str> = if select.is_empty() {
        DEFAULT_USER_FIELDS.to_vec()
    } else {
        select.iter().map(String::as_str).collect()
    };
    for f in wanted {
        let v = match f {
            "userPrincipalName" => json!(u.user_principal_name),
            "displayName" => json!(u.display_name),
            "mail" => json!(u.mail),
            "givenName" => json!(u.given_name),
            "surname" => json!(u.surname),
            "accountEnabled" => json!(u.account_enabled),
            _ => continue,
        };
        m.insert(f.to_owned(), v);
    }
    Value::Object(m)
}

fn page_params(
    params: &HashMap<String, String>,
    default: usize,
) -> Result<(usize, usize), GraphFail> {
    let top = match params.get("$top") {
        None => default,
        Some(t) => match t.parse::<usize>() {
            Ok(n) if (1..=999).contains(&n) => n,
            _ => {
                return Err(bad_query(
                    "Invalid page size specified: '$top' must be between 1 and 999.",
                ))
            }
        },
    };
    let offset = match params.get("$skiptoken") {
        None => 0,
        Some(t) => DeltaCursor::decode(t)
            .map(|c| c.offset)
            .ok_or_else(|| bad_query("Invalid $skiptoken."))?,
    };
    Ok((top, offset))
}

fn next_link(base: &str, path: &str, params: &HashMap<String, String>, offset: usize) -> String {
    let token = DeltaCursor {
        from: 0,
        upto: 0,
        full: true,
        offset,
        filter: String::new(),
        select: String::new(),
        issued: 0,
        epoch: 0,
    }
    .encode();
    let mut q: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "$skiptoken")
        .map(|(k, v)| format!("{k}={}", urlencoding::encode(v)))
        .collect();
    q.sort();
    q.push(format!("$skiptoken={token}"));
    format!("{base}{path}?{}", q.join("&"))
}

/// `GET /v1.0/groups?$filter=displayName eq '…'`.
pub async fn list_groups(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(params): Params,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, READ_GROUPS) {
        return r.into_response();
    }
    let filter = match params.get("$filter").map(|f| parse_filter(f)).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(m) => return bad_query(&m).into_response(),
    };
    let inner = sim.lock();
    let value: Vec<Value> = inner
        .dir
        .groups
        .values()
        .filter(|g| {
            filter.is_empty()
                || filter.iter().any(|(f, v)| match f.as_str() {
                    "displayName" => &g.display_name == v,
                    "id" => &g.id == v,
                    _ => false,
                })
        })
        .map(|g| json!({"id": g.id, "displayName": g.display_name, "securityEnabled": true}))
        .collect();
    let base = base_url(&headers);
    Json(json!({"@odata.context": format!("{base}/v1.0/$metadata#groups"), "value": value}))
        .into_response()
}

/// `GET /v1.0/groups/{id}/members[/microsoft.graph.user]`.
pub async fn group_members(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
    uri: axum::http::Uri,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, READ_GROUPS) {
        return r.into_response();
    }
    let (top, offset) = match page_params(&params, sim.config.page_size) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let select = match select_of(&params) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let mut inner = sim.lock();
    let state = &mut *inner;
    let Some(group) = state.dir.groups.get(&id) else {
        return not_found(&id);
    };
    let value: Vec<Value> = group
        .members
        .iter()
        .skip(offset)
        .take(top)
        .filter(|m| !state.unseen_members.remove(&(id.clone(), (*m).clone())))
        .filter_map(|m| state.dir.users.get(m))
        .map(|u| user_json(u, &select, true))
        .collect();
    let base = base_url(&headers);
    let mut body = json!({"@odata.context": format!("{base}/v1.0/$metadata#directoryObjects"), "value": value});
    if offset + top < group.members.len() {
        body["@odata.nextLink"] = json!(next_link(&base, uri.path(), &params, offset + top));
    }
    Json(body).into_response()
}

/// `GET /v1.0/users`.
pub async fn list_users(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(params): Params,
    uri: axum::http::Uri,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, READ_USERS) {
        return r.into_response();
    }
    let (top, offset) = match page_params(&params, sim.config.page_size) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let select = match select_of(&params) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let inner = sim.lock();
    let value: Vec<Value> = inner
        .dir
        .users
        .values()
        .skip(offset)
        .take(top)
        .map(|u| user_json(u, &select, false))
        .collect();
    let base = base_url(&headers);
    let mut body =
        json!({"@odata.context": format!("{base}/v1.0/$metadata#users"), "value": value});
    if offset + top < inner.dir.users.len() {
        body["@odata.nextLink"] = json!(next_link(&base, uri.path(), &params, offset + top));
    }
    Json(body).into_response()
}

/// `GET /v1.0/users/{id}`.
pub async fn get_user(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Params,
) -> Response {
    if let Err(r) = authorize(&sim, &headers, READ_USERS) {
        return r.into_response();
    }
    let select = match select_of(&params) {
        Ok(s) => s,
        Err(r) => return r.into_response(),
    };
    let inner = sim.lock();
    match inner.dir.users.get(&id) {
        Some(u) => {
            let mut v = user_json(u, &select, false);
            v["@odata.context"] = json!(format!(
                "{}/v1.0/$metadata#users/$entity",
                base_url(&headers)
            ));
            Json(v).into_response()
        }
        None => not_found(&id),
    }
}

/// Entra ID's complexity rules for cloud users, and a tiny banned list.
pub fn password_problem(p: &str) -> Option<&'static str> {
    const SYMBOLS: &str = "@#$%^&*-_!+=[]{}|\\:',.?/`~\"();<> ";
    let len = p.chars().count();
    if !(8..=256).contains(&len) {
        return Some("length");
    }
    if !p
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || SYMBOLS.contains(c))
    {
        return Some("characters");
    }
    let classes = [
        p.chars().any(|c| c.is_ascii_lowercase()),
        p.chars().any(|c| c.is_ascii_uppercase()),
        p.chars().any(|c| c.is_ascii_digit()),
        p.chars().any(|c| SYMBOLS.contains(c)),
    ];
    if classes.iter().filter(|c| **c).count() < 3 {
        return Some("classes");
    }
    let lower = p.to_ascii_lowercase();
    if ["password", "contoso", "welcome", "123456"]
        .iter()
        .any(|b| lower.contains(b))
    {
        return Some("banned");
    }
    None
}

/// `PATCH /v1.0/users/{id}`: attributes, or `passwordProfile`.
pub async fn patch_user(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "Unable to read JSON request payload.",
        );
    };
    let password = body
        .get("passwordProfile")
        .map(|p| p.get("password").and_then(Value::as_str).map(str::to_owned));
    let others = body.keys().any(|k| k != "passwordProfile");
    let needed = if password.is_some() && !others {
        WRITE_PASSWORDS
    } else {
        WRITE_USERS
    };
    let claims = match authorize(&sim, &headers, needed) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let mut inner = sim.lock();
    let Some(user) = inner.dir.users.get(&id).cloned() else {
        return not_found(&id);
    };
    if let Some(password) = password {
        let Some(password) = password else {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "Invalid value specified for property 'password' of resource 'User'.",
            );
        };
        {
            // An admin's password needs a privileged role; anyone's needs a reset role.
            let roles = if user.admin_roles.is_empty() {
                RESET_ROLES
            } else {
                PRIVILEGED_ROLES
            };
            let allowed = inner.dir.apps.get(&claims.appid).is_some_and(|a| {
                a.directory_roles
                    .iter()
                    .any(|r| roles.contains(&r.as_str()))
            });
            if !allowed {
                return graph_error(
                    StatusCode::FORBIDDEN,
                    "Authorization_RequestDenied",
                    "Insufficient privileges to complete the operation.",
                );
            }
        }
        // A federated domain's users sign in at the federation's provider, which keeps
        // their passwords: Entra ID has none to set.
        let federated = user
            .user_principal_name
            .rsplit_once('@')
            .is_some_and(|(_, domain)| {
                inner.dir.domains.iter().any(|d| {
                    d.id.eq_ignore_ascii_case(domain) && d.authentication_type == "Federated"
                })
            });
        if federated {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "The password of a user of a federated domain cannot be set in Azure Active Directory.",
            );
        }
        if password_problem(&password).is_some() {
            return graph_error(
                StatusCode::BAD_REQUEST,
                "Request_BadRequest",
                "The specified password does not comply with password complexity requirements. Please provide a different password.",
            );
        }
        inner.log_password(&id, &password);
        if let Some(u) = inner.dir.users.get_mut(&id) {
            u.password = Some(password);
        }
        *inner.dir.password_changes.entry(id.clone()).or_default() += 1;
    }
    if others {
        let mut u = user;
        if let Some(v) = body.get("displayName").and_then(Value::as_str) {
            u.display_name = v.to_owned();
        }
        if let Some(v) = body.get("accountEnabled").and_then(Value::as_bool) {
            u.account_enabled = v;
        }
        if let Some(current) = inner.dir.users.get(&id) {
            u.password = current.password.clone();
        }
        inner.put_user(u);
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /v1.0/domains`.
pub async fn list_domains(State(sim): State<Sim>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&sim, &headers, READ_DOMAINS) {
        return r.into_response();
    }
    let inner = sim.lock();
    let value: Vec<Value> = inner
        .dir
        .domains
        .iter()
        .map(|d| {
            json!({
                "id": d.id, "authenticationType": d.authentication_type, "isDefault": d.is_default,
                "isInitial": d.is_initial, "isRoot": true, "isVerified": true,
                "supportedServices": ["Email", "OfficeCommunicationsOnline"],
            })
        })
        .collect();
    Json(json!({"@odata.context": format!("{}/v1.0/$metadata#domains", base_url(&headers)), "value": value})).into_response()
}

/// Which delta round a request asks for; `Err` is the answer to send.
fn delta_cursor(
    sim: &Sim,
    params: &HashMap<String, String>,
    headers: &HeaderMap,
    path: &str,
) -> Result<DeltaCursor, GraphFail> {
    for refused in ["$top", "$orderby", "$expand"] {
        if params.contains_key(refused) {
            return Err(bad_query(&format!(
                "The query parameter '{refused}' is not supported with delta."
            )));
        }
    }
    let inner = sim.lock();
    let now = chrono::Utc::now().timestamp();
    // Graph documents `$deltaToken=latest` with a capital T; links it hands out use `$deltatoken`.
    let latest = params
        .get("$deltaToken")
        .or(params.get("$deltatoken"))
        .is_some_and(|t| t == "latest");
    let token = params
        .get("$deltatoken")
        .or(params.get("$skiptoken"))
        .or(params.get("$deltaToken"));
    let Some(token) = token else {
        let filter = params.get("$filter").cloned().unwrap_or_default();
        if !filter.is_empty() {
            match parse_filter(&filter) {
                Ok(terms) if terms.len() > 50 => {
                    return Err(bad_query("Too many ids in the filter: at most 50."))
                }
                Ok(terms) if terms.iter().any(|(f, _)| f != "id") => {
                    return Err(bad_query("Delta supports $filter on id only."))
                }
                Ok(_) => {}
                Err(m) => return Err(bad_query(&m)),
            }
        }
        return Ok(DeltaCursor {
            from: 0,
            upto: inner.seq,
            full: true,
            offset: 0,
            filter,
            select: params.get("$select").cloned().unwrap_or_default(),
            issued: now,
            epoch: inner.epoch,
        });
    };
    if latest {
        return Ok(DeltaCursor {
            from: inner.seq,
            upto: inner.seq,
            full: false,
            offset: usize::MAX,
            filter: params.get("$filter").cloned().unwrap_or_default(),
            select: params.get("$select").cloned().unwrap_or_default(),
            issued: now,
            epoch: inner.epoch,
        });
    }
    let Some(c) = DeltaCursor::decode(token) else {
        return Err(bad_query("Invalid delta token."));
    };
    let expired =
        c.epoch < inner.epoch || now - c.issued > sim.config.delta_token_ttl.as_secs() as i64;
    if expired {
        let mut fail = GraphFail::new(
            StatusCode::GONE,
            "syncStateNotFound",
            "The sync state generation is expired or invalid. Please start a new round.",
        );
        fail.location = Some(format!("{}{path}", base_url(headers)));
        return Err(fail);
    }
    if params.contains_key("$deltatoken") {
        // A new round: changes since the last one.
        return Ok(DeltaCursor {
            from: c.upto,
            upto: inner.seq,
            full: false,
            offset: 0,
            issued: now,
            ..c
        });
    }
    Ok(c)
}

fn filter_ids(filter: &str) -> Option<Vec<String>> {
    if filter.is_empty() {
        return None;
    }
    parse_filter(filter)
        .ok()
        .map(|t| t.into_iter().map(|(_, v)| v).collect())
}

/// One page of a delta round of `total` entries; `render(start, end)` gives the entries of
/// the page, so a full round of a large directory renders only what it sends.
fn delta_page(
    sim: &Sim,
    headers: &HeaderMap,
    path: &str,
    cursor: DeltaCursor,
    total: usize,
    context: &str,
    render: impl FnOnce(usize, usize) -> Vec<Value>,
) -> Response {
    let base = base_url(headers);
    let page = sim.config.page_size;
    let start = cursor.offset.min(total);
    let end = (start + page).min(total);
    let mut body = json!({"@odata.context": format!("{base}/v1.0/$metadata#{context}"), "value": render(start, end)});
    if end < total {
        let next = DeltaCursor {
            offset: end,
            ..cursor
        };
        body["@odata.nextLink"] = json!(format!("{base}{path}?$skiptoken={}", next.encode()));
    } else {
        let next = DeltaCursor {
            from: cursor.upto,
            offset: 0,
            full: false,
            ..cursor
        };
        body["@odata.deltaLink"] = json!(format!("{base}{path}?$deltatoken={}", next.encode()));
    }
    Json(body).into_response()
}

/// The start of every delta request: the permission, the round's cursor, its id filter,
/// and whether it is a `$deltaToken=latest` round (no entries, only a delta link).
fn delta_round(
    sim: &Sim,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
    path: &str,
    permissions: &[&str],
) -> Result<(DeltaCursor, Option<Vec<String>>, bool), GraphFail> {
    authorize(sim, headers, permissions)?;
    let cursor = delta_cursor(sim, params, headers, path)?;
    let ids = filter_ids(&cursor.filter);
    let latest = cursor.offset == usize::MAX;
    let cursor = DeltaCursor {
        offset: if latest { 0 } else { cursor.offset },
        ..cursor
    };
    Ok((cursor, ids, latest))
}

/// `GET /v1.0/groups/delta`: membership changes of the filtered groups.
pub async fn groups_delta(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(params): Params,
    uri: axum::http::Uri,
) -> Response {
    let (cursor, ids, latest) = match delta_round(&sim, &headers, &params, uri.path(), READ_GROUPS)
    {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let wanted = |g: &str| ids.as_ref().is_none_or(|ids| ids.iter().any(|i| i == g));
    let inner = sim.lock();
    if cursor.full {
        // One entry per member (a group with none has one empty entry); only the page's
        // slice is rendered, so a 100,000-member group costs a walk per page, not a copy.
        let groups: Vec<_> = inner
            .dir
            .groups
            .values()
            .filter(|g| wanted(&g.id))
            .collect();
        let listed: usize = groups.iter().map(|g| g.members.len().max(1)).sum();
        // Soft-deleted groups come back as removed, even in a first round.
        let removed: Vec<&String> = inner
            .dir
            .deleted_groups
            .keys()
            .filter(|g| wanted(g))
            .collect();
        return delta_page(
            &sim,
            &headers,
            uri.path(),
            cursor,
            listed + removed.len(),
            "groups",
            |start, end| {
                let tail = removed_groups(&removed, listed, start, end);
                let end = end.min(listed);
                let start = start.min(end);
                let entries: Vec<(String, Option<(String, bool)>)> = groups
                    .iter()
                    .flat_map(|g| {
                        let empty = g.members.is_empty().then_some((g.id.as_str(), None));
                        empty
                            .into_iter()
                            .chain(g.members.iter().map(|m| (g.id.as_str(), Some(m.as_str()))))
                    })
                    .skip(start)
                    .take(end - start)
                    .filter(|(g, m)| {
                        m.is_none_or(|m| {
                            !inner
                                .unseen_in_delta
                                .contains(&((*g).to_owned(), m.to_owned()))
                        })
                    })
                    .map(|(g, m)| (g.to_owned(), m.map(|m| (m.to_owned(), false))))
                    .collect();
                let mut page = group_objects(&entries);
                page.extend(tail);
                page
            },
        );
    }
    // One entry per member change; a group spanning pages comes back with another slice.
    let mut entries: Vec<(String, Option<(String, bool)>)> = Vec::new();
    let mut removed: Vec<String> = Vec::new();
    if !latest && inner.unordered_delta {
        let window = inner
            .changes
            .iter()
            .rev()
            .filter(|(seq, _)| *seq > cursor.from && *seq <= cursor.upto);
        for (_, change) in window {
            match change {
                Change::Member { group, user, added } if wanted(group) => {
                    entries.push((group.clone(), Some((user.clone(), !added))));
                }
                Change::GroupDeleted(group) if wanted(group) => removed.push(group.clone()),
                _ => {}
            }
        }
    } else if !latest {
        let mut net: BTreeMap<(String, String), bool> = BTreeMap::new();
        for (seq, change) in &inner.changes {
            if *seq <= cursor.from || *seq > cursor.upto {
                continue;
            }
            match change {
                Change::Member { group, user, added } if wanted(group) => {
                    net.insert((group.clone(), user.clone()), *added);
                }
                Change::GroupDeleted(group) if wanted(group) => removed.push(group.clone()),
                _ => {}
            }
        }
        entries.extend(
            net.into_iter()
                .map(|((g, u), added)| (g, Some((u, !added)))),
        );
    }
    drop(inner);
    let listed = entries.len();
    let removed: Vec<&String> = removed.iter().collect();
    delta_page(
        &sim,
        &headers,
        uri.path(),
        cursor,
        listed + removed.len(),
        "groups",
        |start, end| {
            let mut page = group_objects(&entries[start.min(listed)..end.min(listed)]);
            page.extend(removed_groups(&removed, listed, start, end));
            page
        },
    )
}

/// Folds consecutive member entries of one group into Graph's group object with
/// `members@delta` (a group with no members has none).
/// The deleted groups among entries `start..end` of a round whose first `listed` entries
/// are members.
fn removed_groups(removed: &[&String], listed: usize, start: usize, end: usize) -> Vec<Value> {
    let from = start.saturating_sub(listed).min(removed.len());
    let to = end.saturating_sub(listed).min(removed.len());
    removed[from..to]
        .iter()
        .map(|g| json!({"@odata.type": "#microsoft.graph.group", "id": g, "@removed": {"reason": "changed"}}))
        .collect()
}

fn group_objects(entries: &[(String, Option<(String, bool)>)]) -> Vec<Value> {
    let mut groups: Vec<Value> = Vec::new();
    for (g, member) in entries {
        if groups.last().is_none_or(|last| last["id"] != g.as_str()) {
            groups.push(json!({"@odata.type": "#microsoft.graph.group", "id": g}));
        }
        let (Some((u, removed)), Some(last)) = (member, groups.last_mut()) else {
            continue;
        };
        let mut m = json!({"@odata.type": "#microsoft.graph.user", "id": u});
        if *removed {
            m["@removed"] = json!({"reason": "deleted"});
        }
        if last.get("members@delta").is_none() {
            last["members@delta"] = json!([]);
        }
        if let Some(list) = last["members@delta"].as_array_mut() {
            list.push(m);
        }
    }
    groups
}

/// `GET /v1.0/users/delta`: users created, changed or deleted.
pub async fn users_delta(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Query(params): Params,
    uri: axum::http::Uri,
) -> Response {
    // A round's first request names the selection (in Graph's own names from here); its
    // links carry it in the cursor.
    let mut params = params;
    match select_of(&params) {
        Err(e) => return e.into_response(),
        Ok(select) if !select.is_empty() => {
            params.insert("$select".into(), select.join(","));
        }
        Ok(_) => {}
    }
    let (cursor, ids, latest) = match delta_round(&sim, &headers, &params, uri.path(), READ_USERS) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let wanted = |u: &str| ids.as_ref().is_none_or(|ids| ids.iter().any(|i| i == u));
    let select: Vec<String> = cursor
        .select
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let mut inner = sim.lock();
    if cursor.full {
        // Reads by id a replica serves: a user it holds as they were (deleted or changed
        // since), once; a user it has not seen yet, missed once.
        let state = &mut *inner;
        let (stale, unseen): (Vec<UserEntry>, Vec<String>) = match &ids {
            Some(ids) => (
                ids.iter()
                    .filter_map(|id| state.stale_reads.remove(id))
                    .collect(),
                ids.iter()
                    .filter(|id| state.unseen_reads.remove(*id))
                    .cloned()
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let users: Vec<_> = inner
            .dir
            .users
            .values()
            .filter(|u| {
                wanted(&u.id) && !unseen.contains(&u.id) && !stale.iter().any(|s| s.id == u.id)
            })
            .chain(&stale)
            .collect();
        return delta_page(
            &sim,
            &headers,
            uri.path(),
            cursor,
            users.len(),
            "users",
            |start, end| {
                users[start..end]
                    .iter()
                    .map(|u| user_json(u, &select, false))
                    .collect()
            },
        );
    }
    let mut entries: Vec<Value> = Vec::new();
    if !latest && inner.unordered_delta {
        let window = inner
            .changes
            .iter()
            .rev()
            .filter(|(seq, _)| *seq > cursor.from && *seq <= cursor.upto);
        for (_, change) in window {
            let (id, props) = match change {
                Change::User { id, changed } if wanted(id) => (id, changed.as_deref()),
                Change::UserDeleted(id) if wanted(id) => (id, None),
                _ => continue,
            };
            // A delete is named as the delete it was, even of a user since restored:
            // the entry is that change on its own.
            let user = match change {
                Change::UserDeleted(_) => None,
                _ => inner.dir.users.get(id),
            };
            entries.push(match user {
                Some(u) => match props {
                    None => user_json(u, &select, false),
                    Some(p) => {
                        let changed = selected_of(p.iter().copied(), &select);
                        if changed.is_empty() {
                            json!({"id": id})
                        } else {
                            user_json(u, &changed, false)
                        }
                    }
                },
                None => json!({"id": id, "@removed": {"reason": "changed"}}),
            });
        }
    } else if !latest {
        // Per user, the selected properties that changed in the window (`None`: all of
        // them, for a user created in it): Graph names an updated user with only those.
        let mut touched: BTreeMap<String, Option<BTreeSet<&str>>> = BTreeMap::new();
        for (seq, change) in &inner.changes {
            if *seq <= cursor.from || *seq > cursor.upto {
                continue;
            }
            match change {
                Change::User { id, changed } if wanted(id) => {
                    let props = touched
                        .entry(id.clone())
                        .or_insert_with(|| Some(BTreeSet::new()));
                    match (props.as_mut(), changed) {
                        (Some(p), Some(c)) => p.extend(c.iter().copied()),
                        _ => *props = None,
                    }
                }
                Change::UserDeleted(id) if wanted(id) => {
                    touched.insert(id.clone(), None);
                }
                _ => {}
            }
        }
        entries = touched
            .into_iter()
            .map(|(id, props)| match inner.dir.users.get(&id) {
                Some(u) => match props {
                    None => user_json(u, &select, false),
                    Some(p) => {
                        let changed = selected_of(p.into_iter(), &select);
                        // An empty selection would mean the default properties.
                        if changed.is_empty() {
                            json!({"id": id})
                        } else {
                            user_json(u, &changed, false)
                        }
                    }
                },
                None => json!({"id": id, "@removed": {"reason": "changed"}}),
            })
            .collect();
    }
    if !latest {
        // Named again as they once were, after whatever the round says of them now.
        for (seq, change) in &inner.changes {
            if let Change::UserEnabledRepeated { id, enabled } = change {
                if *seq > cursor.from && *seq <= cursor.upto && wanted(id) {
                    entries.push(json!({"id": id, "accountEnabled": enabled}));
                }
            }
        }
    }
    drop(inner);
    delta_page(
        &sim,
        &headers,
        uri.path(),
        cursor,
        entries.len(),
        "users",
        |start, end| entries[start..end].to_vec(),
    )
}

/// Which of the changed properties `p` the round's `$select` tracks.
fn selected_of<'a>(p: impl Iterator<Item = &'a str>, select: &[String]) -> Vec<String> {
    p.filter(|f| {
        select.iter().any(|s| s == f) || select.is_empty() && DEFAULT_USER_FIELDS.contains(f)
    })
    .map(str::to_owned)
    .collect()
}

/// Whether `tenant` (in a path) names this directory: its id or one of its domains.
pub(crate) fn known_tenant(dir: &crate::tenant::Directory, tenant: &str) -> bool {
    tenant.eq_ignore_ascii_case(&dir.tenant_id)
        || dir
            .domains
            .iter()
            .any(|d| d.id.eq_ignore_ascii_case(tenant))
}

/// `POST /{tenant}/oauth2/v2.0/token`: client credentials, and the authorization code of a
/// user's sign-in (see [`crate::signin`]).
pub async fn token(
    State(sim): State<Sim>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let mut inner = sim.lock();
    if !known_tenant(&inner.dir, &tenant) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!("Tenant '{tenant}' not found."),
        );
    }
    if form.get("grant_type").map(String::as_str) == Some("authorization_code") {
        return crate::signin::redeem_code(&sim, &mut inner, &headers, &form);
    }
    let dir = &inner.dir;
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let client_id = form.get("client_id").cloned().unwrap_or_default();
    let Some(app) = dir.apps.get(&client_id) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!("Application with identifier '{client_id}' was not found in the directory."),
        );
    };
    if form.get("client_secret") != Some(&app.secret) {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            "Invalid client secret provided.",
        );
    }
    let scope = form.get("scope").cloned().unwrap_or_default();
    let Some(aud) = scope
        .strip_suffix("/.default")
        .filter(|a| a.starts_with("http"))
    else {
        return token_error(StatusCode::BAD_REQUEST, "invalid_scope", 70011, &format!("The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."));
    };
    let now = chrono::Utc::now().timestamp();
    let ttl = sim.config.access_token_ttl.as_secs() as i64;
    let claims = Claims {
        aud: aud.to_owned(),
        iss: format!("https://sts.windows.net/{}/", dir.tenant_id),
        tid: dir.tenant_id.clone(),
        appid: app.client_id.clone(),
        roles: app.permissions.clone(),
        iat: now,
        nbf: now,
        exp: now + ttl,
    };
    let token = jwt::sign(&claims, &sim.token_key[..]);
    // A hostile or broken token endpoint may claim any lifetime (`PUT /_sim/token-lifetime`).
    let expires_in = inner.claimed_expires_in.map_or(json!(ttl), |n| json!(n));
    Json(json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token})).into_response()
}

/// The OpenID Provider metadata Entra publishes, as far as the simulator serves it.
#[derive(Serialize)]
struct OpenIdConfiguration {
    token_endpoint: String,
    token_endpoint_auth_methods_supported: [&'static str; 3],
    jwks_uri: String,
    response_modes_supported: [&'static str; 3],
    subject_types_supported: [&'static str; 1],
    id_token_signing_alg_values_supported: [&'static str; 1],
    response_types_supported: [&'static str; 4],
    scopes_supported: [&'static str; 4],
    issuer: String,
    request_uri_parameter_supported: bool,
    authorization_endpoint: String,
    claims_supported: &'static [&'static str],
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`. The lists are Entra's own (the
/// simulator issues only what the authorization code flow and client credentials need).
pub async fn openid_configuration(
    State(sim): State<Sim>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
) -> Response {
    let base = base_url(&headers);
    let tid = sim.lock().dir.tenant_id.clone();
    Json(OpenIdConfiguration {
        token_endpoint: format!("{base}/{tenant}/oauth2/v2.0/token"),
        token_endpoint_auth_methods_supported: [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        jwks_uri: format!("{base}/{tenant}/discovery/v2.0/keys"),
        response_modes_supported: ["query", "fragment", "form_post"],
        subject_types_supported: ["pairwise"],
        id_token_signing_alg_values_supported: ["RS256"],
        response_types_supported: ["code", "id_token", "code id_token", "id_token token"],
        scopes_supported: ["openid", "profile", "email", "offline_access"],
        // The tenant's GUID whatever name the request used, as Entra's.
        issuer: format!("{base}/{tid}/v2.0"),
        request_uri_parameter_supported: false,
        authorization_endpoint: format!("{base}/{tenant}/oauth2/v2.0/authorize"),
        claims_supported: &[
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "nonce",
            "preferred_username",
            "name",
            "tid",
            "ver",
            "email",
            "oid",
        ],
    })
    .into_response()
}
