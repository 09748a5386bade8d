//! The OpenAPI document against the server: a sample call of every operation, each answer
//! validated against the JSON Schema the document gives for its status. The document's
//! objects are closed for the check (no undocumented field passes), so a field added to a
//! response type without its schema, or a schema that says something else, fails here.
//! An answer whose schema leaves an object's fields undescribed fails too, unless it is
//! one of the few [`FREE_FORM`] names with its reason.

use crate::support::{world, World};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The places in answers' schemas allowed to leave an object's fields undescribed, and
/// why. A place is a schema's name and the path to the object within it (`.field`, `[]`
/// for an array's items, `{}` for a map's values), or an operation's status when the
/// answer itself is such an object.
const FREE_FORM: &[(&str, &str)] = &[
    (
        "EnvelopeView.payload",
        "an event's own fields: one shape per kind and schema version (the envelope's `kind` and `schema`), the catalogue in domain/src/events.rs",
    ),
    (
        "TimelineEntry.payload",
        "an event's own fields, as in EnvelopeView.payload",
    ),
    (
        "ProblemDetail",
        "a chain failure's detail is `idledger verify`'s summary, shaped by idledger-replay (`Chain::summary_json`, a JSON value there)",
    ),
    (
        "Document.paths{}{}",
        "an OpenAPI operation object: the OpenAPI 3.1 meta-schema describes it",
    ),
    (
        "DocumentComponents.schemas{}",
        "a JSON Schema: the OpenAPI 3.1 meta-schema describes it",
    ),
    (
        "DocumentComponents.securitySchemes{}",
        "an OpenAPI security scheme: the OpenAPI 3.1 meta-schema describes it",
    ),
];

/// The document, and which of its operations a call has been checked against.
struct Conformance {
    doc: Value,
    /// `components.schemas`, closed: `allOf`s of objects merged, and no property allowed
    /// beyond those described.
    closed: Value,
    checked: BTreeSet<(String, String)>,
}

impl Conformance {
    async fn of(w: &World) -> Conformance {
        let (s, doc) = w
            .app
            .call(None, Method::GET, "/v1/openapi.json", None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(doc["openapi"], "3.1.0");
        let schemas = doc["components"]["schemas"].as_object().unwrap().clone();
        let mut closed = Map::new();
        for (name, schema) in &schemas {
            closed.insert(name.clone(), close(schema, &schemas));
        }
        Conformance {
            doc,
            closed: Value::Object(closed),
            checked: BTreeSet::new(),
        }
    }

    fn operation(&self, method: &Method, template: &str) -> &Value {
        let operation = &self.doc["paths"][template][method.as_str().to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {template} is not in the document"
        );
        operation
    }

    /// The errors of `value` against `schema` (closed).
    fn errors(&self, schema: &Value, value: &Value) -> Vec<String> {
        let schemas = self.doc["components"]["schemas"].as_object().unwrap();
        let mut root = close(schema, schemas);
        root["components"] = json!({"schemas": self.closed});
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema does not compile: {e}: {schema}"));
        validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect()
    }

    /// Checks a request body the server took against the documented request schema.
    fn check_request(&self, method: &Method, template: &str, body: &Value) {
        let operation = self.operation(method, template);
        let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template} reads a body the document does not describe"
        );
        let errors = self.errors(schema, body);
        assert!(
            errors.is_empty(),
            "{method} {template} took a body off its schema:\n{}\nbody: {body}",
            errors.join("\n")
        );
    }

    /// Checks `body`, answered with `status` to `method template`, against its schema.
    fn check(&mut self, method: &Method, template: &str, status: StatusCode, body: &Value) {
        let operation = self.operation(method, template);
        // The status itself when documented (`/readyz`'s 503), else its class's range.
        let documented = if operation["responses"][status.as_str()].is_object() {
            status.as_str().to_owned()
        } else {
            format!("{}XX", status.as_u16() / 100)
        };
        let schema = &operation["responses"][&documented]["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template}: no JSON schema for {status}: {operation}"
        );
        let errors = self.errors(schema, body);
        assert!(
            errors.is_empty(),
            "{method} {template} answered {status} off its schema:\n{}\nbody: {body}\nschema: {schema}",
            errors.join("\n")
        );
        self.checked
            .insert((method.as_str().to_owned(), template.to_owned()));
    }

    /// Checks that a non-JSON answer has a media type the document names.
    fn check_media(&mut self, method: &Method, template: &str, content_type: &str) {
        let operation = &self.doc["paths"][template][method.as_str().to_lowercase()];
        let content = operation["responses"]["200"]["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {template}: no 200 answer"));
        assert!(
            content.keys().any(|m| content_type.starts_with(m.as_str())),
            "{method} {template} answered {content_type}, documented {:?}",
            content.keys().collect::<Vec<_>>()
        );
        self.checked
            .insert((method.as_str().to_owned(), template.to_owned()));
    }

    /// The places in the answers' schemas (every status) that leave an object's fields
    /// undescribed.
    fn free_forms(&self) -> BTreeSet<String> {
        let schemas = self.doc["components"]["schemas"].as_object().unwrap();
        let (mut walked, mut found) = (BTreeSet::new(), BTreeSet::new());
        for (path, methods) in self.doc["paths"].as_object().unwrap() {
            for (method, op) in methods.as_object().unwrap() {
                for (status, answer) in op["responses"].as_object().unwrap() {
                    if let Some(schema) = answer["content"]["application/json"].get("schema") {
                        let at = format!("{} {path} {status}", method.to_uppercase());
                        free_forms(schema, &at, schemas, &mut walked, &mut found);
                    }
                }
            }
        }
        found
    }

    /// Every operation the document lists, and whether each has request and answer schemas.
    fn operations(&self) -> Vec<(String, String, bool, bool)> {
        let mut all = Vec::new();
        for (path, methods) in self.doc["paths"].as_object().unwrap() {
            for (method, op) in methods.as_object().unwrap() {
                let has_body = op.get("requestBody").is_some();
                let answers = op["responses"].as_object().unwrap();
                let has_answer = answers
                    .iter()
                    .filter(|(status, _)| status.starts_with('2'))
                    .all(|(_, a)| {
                        a["content"]
                            .as_object()
                            .is_some_and(|c| c.values().all(|m| m["schema"].is_object()))
                    });
                all.push((method.to_uppercase(), path.clone(), has_body, has_answer));
            }
        }
        all
    }
}

/// Where `schema` (found at `at`) leaves an object's fields undescribed: `{}` or `true`, an
/// object with neither `properties` nor a schema for `additionalProperties`, or a schema
/// with nothing but words. Each named schema is walked once, its places named from it.
fn free_forms(
    schema: &Value,
    at: &str,
    schemas: &Map<String, Value>,
    walked: &mut BTreeSet<String>,
    found: &mut BTreeSet<String>,
) {
    let o = match schema {
        Value::Bool(true) => {
            found.insert(at.to_owned());
            return;
        }
        Value::Object(o) => o,
        _ => return,
    };
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        if walked.insert(name.to_owned()) {
            free_forms(&schemas[name], name, schemas, walked, found);
        }
        return;
    }
    let mut described = false;
    for k in ["allOf", "oneOf", "anyOf"] {
        for part in o.get(k).and_then(Value::as_array).into_iter().flatten() {
            described = true;
            free_forms(part, at, schemas, walked, found);
        }
    }
    if let Some(properties) = o.get("properties").and_then(Value::as_object) {
        described = true;
        for (name, p) in properties {
            free_forms(p, &format!("{at}.{name}"), schemas, walked, found);
        }
    }
    if let Some(items) = o.get("items") {
        described = true;
        free_forms(items, &format!("{at}[]"), schemas, walked, found);
    }
    if let Some(values @ Value::Object(_)) = o.get("additionalProperties") {
        described = true;
        free_forms(values, &format!("{at}{{}}"), schemas, walked, found);
    }
    described |= o.contains_key("enum") || o.contains_key("const");
    // A type other than an object (a string, a number, null …) says what the value is.
    let object_or_any = match o.get("type") {
        None => true,
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
        Some(_) => false,
    };
    if !described && object_or_any {
        found.insert(at.to_owned());
    }
}

/// `schema` with every object closed (`additionalProperties: false`) and every `allOf` of
/// objects merged into one object first, so closing does not refuse the other parts'
/// fields. Free-form objects (no `properties`) stay open.
fn close(schema: &Value, schemas: &Map<String, Value>) -> Value {
    match schema {
        Value::Object(o) => {
            if let Some(Value::Array(parts)) = o.get("allOf") {
                let resolved: Vec<Value> = parts
                    .iter()
                    .map(|p| match p["$ref"].as_str() {
                        Some(r) => schemas[r.trim_start_matches("#/components/schemas/")].clone(),
                        None => p.clone(),
                    })
                    .collect();
                if resolved.iter().all(|p| p["properties"].is_object()) {
                    let mut properties = Map::new();
                    let mut required = Vec::new();
                    for p in &resolved {
                        properties.extend(p["properties"].as_object().unwrap().clone());
                        if let Some(r) = p["required"].as_array() {
                            required.extend(r.iter().cloned());
                        }
                    }
                    let merged =
                        json!({"type": "object", "properties": properties, "required": required});
                    return close(&merged, schemas);
                }
            }
            let mut out: Map<String, Value> = o
                .iter()
                .map(|(k, v)| (k.clone(), close(v, schemas)))
                .collect();
            if o.get("properties").is_some_and(Value::is_object) {
                out.insert("additionalProperties".into(), Value::Bool(false));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| close(v, schemas)).collect()),
        other => other.clone(),
    }
}

impl World {
    async fn checked(
        &self,
        c: &mut Conformance,
        token: &str,
        method: Method,
        template: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, answer) = self
            .app
            .call(Some(token), method.clone(), path, body.clone())
            .await;
        if let (true, Some(body)) = (status.is_success(), &body) {
            c.check_request(&method, template, body);
        }
        c.check(&method, template, status, &answer);
        (status, answer)
    }

    async fn media(&self, c: &mut Conformance, token: &str, template: &str, path: &str) {
        let r = self
            .app
            .http
            .get(format!("{}{path}", self.app.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
        c.check_media(&Method::GET, template, &content_type);
    }

    async fn run_done(&self, domain: &str, run: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, r) = self
                .admin(
                    Method::GET,
                    &format!("/v1/domains/{domain}/sync-runs/{run}"),
                    None,
                )
                .await;
            if r["status"] != "running" {
                return r;
            }
            assert!(Instant::now() < deadline, "{r}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_its_schema_says() {
    let w = world(json!({"auto_password_change_days": 30, "deletion_threshold": 3})).await;
    let mut c = Conformance::of(&w).await;
    let admin = w.app.admin.clone();
    let d = w.domain.clone();
    let a = admin.as_str();
    let ok = StatusCode::OK;

    // The open routes.
    let (s, health) = w.app.call(None, Method::GET, "/healthz", None).await;
    c.check(&Method::GET, "/healthz", s, &health);
    let (s, ready) = w.app.call(None, Method::GET, "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "{ready}");
    c.check(&Method::GET, "/readyz", s, &ready);
    w.media(&mut c, a, "/metrics", "/metrics").await;
    w.media(&mut c, a, "/v1/backup", "/v1/backup").await;
    // The document answers as its own schema says.
    let doc = c.doc.clone();
    c.check(&Method::GET, "/v1/openapi.json", StatusCode::OK, &doc);

    // Tokens.
    let (s, t) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"role": "auditor", "name": "schema"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let auditor = t["token"].as_str().unwrap().to_owned();
    let (_, t) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"role": "agent", "key_ids": ["K-0002"]})),
        )
        .await;
    let agent = t["token"].as_str().unwrap().to_owned();
    let (_, spare) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"role": "auditor"})),
        )
        .await;
    w.checked(&mut c, a, Method::GET, "/v1/tokens", "/v1/tokens", None)
        .await;
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::DELETE,
            "/v1/tokens/{id}",
            &format!("/v1/tokens/{}", spare["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, ok);
    let r = auditor.as_str();

    // A second domain, taken through every change.
    let (s, other) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/domains",
            "/v1/domains",
            Some(json!({"domain": "fabrikam.onmicrosoft.com", "auto_import": false})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{other}");
    let o = other["id"].as_str().unwrap().to_owned();
    let (s, report) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/domains/check",
            "/v1/domains/check",
            Some(json!({"tenant_id": crate::support::TENANT, "client_id": crate::support::APP,
                        "client_secret": crate::support::SECRET, "graph_url": w.sim, "authority_url": w.sim})),
        )
        .await;
    assert_eq!(
        (s, &report["ok"]),
        (StatusCode::OK, &json!(true)),
        "{report}"
    );
    let one = "/v1/domains/{id}";
    w.checked(&mut c, r, Method::GET, "/v1/domains", "/v1/domains", None)
        .await;
    w.checked(
        &mut c,
        r,
        Method::GET,
        one,
        &format!("/v1/domains/{d}"),
        None,
    )
    .await;
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::PATCH,
            one,
            &format!("/v1/domains/{o}"),
            Some(json!({"auto_import": true, "removal_behavior": "deactivate"})),
        )
        .await;
    assert_eq!(s, ok);
    let creds = json!({"tenant_id": uuid::Uuid::new_v4(), "client_id": uuid::Uuid::new_v4(), "client_secret": "x"});
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::PUT,
            "/v1/domains/{id}/credentials",
            &format!("/v1/domains/{o}/credentials"),
            Some(creds),
        )
        .await;
    assert_eq!(s, ok);
    w.checked(
        &mut c,
        a,
        Method::DELETE,
        "/v1/domains/{id}/credentials",
        &format!("/v1/domains/{o}/credentials"),
        None,
    )
    .await;
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::PUT,
            "/v1/domains/{id}/sso-defaults",
            &format!("/v1/domains/{d}/sso-defaults"),
            Some(json!({"enabled": true, "method": "passwordless"})),
        )
        .await;
    assert_eq!(s, ok);
    // Apps of the OpenID Connect provider, and its signing keys. A bad registration makes
    // nothing, not even the signing keys a good one would have brought.
    let head = w.head().await;
    let (s, refused) = w
        .admin(
            Method::POST,
            "/v1/apps",
            Some(
                json!({"name": "Pay\u{202e}roll", "redirect_uris": ["https://payroll.contoso.com/cb"],
                        "type": "confidential", "domain_ids": [d]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(w.head().await, head, "nothing recorded");
    let (s, app) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/apps",
            "/v1/apps",
            Some(
                json!({"name": "Payroll", "redirect_uris": ["https://payroll.contoso.com/cb"],
                        "type": "confidential", "domain_ids": [d]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{app}");
    let app_id = app["id"].as_str().unwrap().to_owned();
    let one_app = "/v1/apps/{id}";
    let app_path = format!("/v1/apps/{app_id}");
    for (m, template, path, body, want) in [
        (
            Method::GET,
            "/v1/apps",
            "/v1/apps?limit=10".to_owned(),
            None,
            ok,
        ),
        (Method::GET, one_app, app_path.clone(), None, ok),
        (
            Method::PATCH,
            one_app,
            app_path.clone(),
            Some(json!({"name": "Payroll (EU)"})),
            ok,
        ),
        (
            Method::POST,
            "/v1/apps/{id}/secret",
            format!("{app_path}/secret"),
            None,
            ok,
        ),
        (
            Method::GET,
            "/v1/provider/signing-keys",
            "/v1/provider/signing-keys".to_owned(),
            None,
            ok,
        ),
        (
            Method::POST,
            "/v1/provider/signing-keys",
            "/v1/provider/signing-keys".to_owned(),
            None,
            StatusCode::CREATED,
        ),
        (Method::DELETE, one_app, app_path.clone(), None, ok),
    ] {
        let who = if m == Method::GET { r } else { a };
        let (s, body) = w.checked(&mut c, who, m, template, &path, body).await;
        assert_eq!(s, want, "{path}: {body}");
    }
    // The algorithm is one of the enum's; another is refused as a bad query.
    let keys = "/v1/provider/signing-keys";
    for (alg, want) in [
        ("RS256", StatusCode::CREATED),
        ("HS256", StatusCode::BAD_REQUEST),
    ] {
        let path = format!("{keys}?alg={alg}");
        let (s, body) = w.checked(&mut c, a, Method::POST, keys, &path, None).await;
        assert_eq!(s, want, "{path}: {body}");
    }
    // The workstation logon certificate: in force from registration, replaced, listed.
    let cert = "/v1/domains/{id}/workstation-certificate";
    w.media(
        &mut c,
        r,
        cert,
        &format!("/v1/domains/{d}/workstation-certificate?format=pem"),
    )
    .await;
    w.media(
        &mut c,
        r,
        cert,
        &format!("/v1/domains/{d}/workstation-certificate?format=der"),
    )
    .await;
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            cert,
            &format!("/v1/domains/{d}/workstation-certificate"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, certs) = w
        .checked(
            &mut c,
            r,
            Method::GET,
            "/v1/domains/{id}/workstation-certificates",
            &format!("/v1/domains/{d}/workstation-certificates?limit=1"),
            None,
        )
        .await;
    assert_eq!(s, ok);
    assert_eq!(certs["items"][0]["status"], "current");
    assert!(certs["next"].is_string(), "{certs}");
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::DELETE,
            one,
            &format!("/v1/domains/{o}"),
            None,
        )
        .await;
    assert_eq!(s, ok);

    // Sync: a dry run, a run, candidates, imports.
    let sync = "/v1/domains/{id}/sync";
    let (s, dry) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            sync,
            &format!("/v1/domains/{d}/sync?dry_run=true"),
            None,
        )
        .await;
    assert_eq!(s, ok, "{dry}");
    assert!(!dry["changes"].as_array().unwrap().is_empty(), "{dry}");
    let (s, changes) = w
        .checked(
            &mut c,
            a,
            Method::GET,
            "/v1/domains/{id}/sync-runs/{run}/changes",
            &format!(
                "/v1/domains/{d}/sync-runs/{}/changes?limit=1",
                dry["run_id"].as_str().unwrap()
            ),
            None,
        )
        .await;
    assert_eq!(s, ok, "{changes}");
    assert_eq!(changes["items"].as_array().unwrap().len(), 1, "{changes}");
    let (s, started) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            sync,
            &format!("/v1/domains/{d}/sync"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let run = started["run_id"].as_str().unwrap().to_owned();
    w.run_done(&d, &run).await;
    let (_, runs) = w
        .checked(
            &mut c,
            r,
            Method::GET,
            "/v1/domains/{id}/sync-runs",
            &format!("/v1/domains/{d}/sync-runs"),
            None,
        )
        .await;
    assert!(!runs["items"].as_array().unwrap().is_empty());
    let (_, detail) = w
        .checked(
            &mut c,
            r,
            Method::GET,
            "/v1/domains/{id}/sync-runs/{run}",
            &format!("/v1/domains/{d}/sync-runs/{run}"),
            None,
        )
        .await;
    assert!(!detail["users"].as_array().unwrap().is_empty(), "{detail}");
    w.checked(
        &mut c,
        r,
        Method::GET,
        "/v1/domains/{id}/sync-runs/{run}/outcomes",
        &format!("/v1/domains/{d}/sync-runs/{run}/outcomes?limit=5"),
        None,
    )
    .await;
    w.checked(
        &mut c,
        r,
        Method::GET,
        "/v1/domains/{id}/sync-runs/{run}/held-removals",
        &format!("/v1/domains/{d}/sync-runs/{run}/held-removals?limit=5"),
        None,
    )
    .await;
    let (_, candidates) = w
        .checked(
            &mut c,
            r,
            Method::GET,
            "/v1/domains/{id}/candidates",
            &format!("/v1/domains/{d}/candidates?limit=3"),
            None,
        )
        .await;
    let first = candidates["items"][0]["id"].as_str().unwrap().to_owned();
    let import = "/v1/domains/{id}/import";
    w.checked(
        &mut c,
        a,
        Method::POST,
        import,
        &format!("/v1/domains/{d}/import"),
        Some(json!({"user_ids": [first]})),
    )
    .await;
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            import,
            &format!("/v1/domains/{d}/import"),
            Some(json!({"all": true})),
        )
        .await;
    assert_eq!(s, ok);

    // Users.
    let u = w.user(2).await.unwrap()["id"].as_str().unwrap().to_owned();
    let user = "/v1/users/{id}";
    let (_, users) = w
        .checked(
            &mut c,
            r,
            Method::GET,
            "/v1/users",
            "/v1/users?limit=50",
            None,
        )
        .await;
    assert!(users["items"].as_array().unwrap().len() > 20);
    w.checked(
        &mut c,
        r,
        Method::GET,
        user,
        &format!("/v1/users/{u}"),
        None,
    )
    .await;
    w.checked(
        &mut c,
        r,
        Method::GET,
        user,
        &format!("/v1/users/{u}?at_position=3"),
        None,
    )
    .await;
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::PATCH,
            user,
            &format!("/v1/users/{u}"),
            Some(
                json!({"sso_override": {"enabled": true, "method": "password_and_second_factor"}}),
            ),
        )
        .await;
    assert_eq!(s, ok);
    w.checked(
        &mut c,
        r,
        Method::GET,
        "/v1/users/{id}/events",
        &format!("/v1/users/{u}/events"),
        None,
    )
    .await;
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/users/{id}/deactivate",
            &format!("/v1/users/{u}/deactivate"),
            None,
        )
        .await;
    assert_eq!(s, ok);
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/users/{id}/activate",
            &format!("/v1/users/{u}/activate"),
            None,
        )
        .await;
    assert_eq!(s, ok);
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/users/{id}/invite",
            &format!("/v1/users/{u}/invite"),
            None,
        )
        .await;
    assert_eq!(s, ok);

    // Rotation and the agent's key writes.
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::PUT,
            "/v1/users/{id}/key",
            &format!("/v1/users/{u}/key"),
            Some(json!({"key_id": "K-0002"})),
        )
        .await;
    assert_eq!(s, ok);
    let history = "/v1/users/{id}/password-history";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, h) = w
            .checked(
                &mut c,
                r,
                Method::GET,
                history,
                &format!("/v1/users/{u}/password-history"),
                None,
            )
            .await;
        if let Some(done) = h["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["outcome"] == "succeeded")
        {
            let rotation = done["rotation_id"].as_str().unwrap();
            w.checked(
                &mut c,
                r,
                Method::GET,
                "/v1/users/{id}/password-history/{rotation}",
                &format!("/v1/users/{u}/password-history/{rotation}"),
                None,
            )
            .await;
            break;
        }
        assert!(Instant::now() < deadline, "{h}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/users/{id}/rotate",
            &format!("/v1/users/{u}/rotate"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, revealed) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/users/{id}/password/reveal",
            &format!("/v1/users/{u}/password/reveal"),
            Some(json!({"reason": "schema check"})),
        )
        .await;
    assert_eq!(s, ok, "{revealed}");
    w.checked(
        &mut c,
        r,
        Method::GET,
        "/v1/rotations/upcoming",
        "/v1/rotations/upcoming?within_days=60",
        None,
    )
    .await;
    w.checked(
        &mut c,
        r,
        Method::GET,
        "/v1/rotations/recent",
        "/v1/rotations/recent?outcome=succeeded&limit=5",
        None,
    )
    .await;
    // The manual rotation above supersedes the first write when it queues its own: ask
    // until a write is there (a fetch delivers it, so the answer that has it is kept).
    let deadline = Instant::now() + Duration::from_secs(20);
    let writes = loop {
        let (_, writes) = w
            .checked(
                &mut c,
                &agent,
                Method::GET,
                "/v1/agent/key-writes",
                "/v1/agent/key-writes",
                None,
            )
            .await;
        if !writes["items"].as_array().unwrap().is_empty() {
            break writes;
        }
        assert!(Instant::now() < deadline, "no key write for the agent");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let write = writes["items"][0]["id"].as_str().unwrap().to_owned();
    let (s, _) = w
        .checked(
            &mut c,
            &agent,
            Method::POST,
            "/v1/agent/key-writes/{id}/ack",
            &format!("/v1/agent/key-writes/{write}/ack"),
            Some(json!({"result": "written"})),
        )
        .await;
    assert_eq!(s, ok);
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/users/{id}/sign-in/unlock",
            &format!("/v1/users/{u}/sign-in/unlock"),
            None,
        )
        .await;
    assert_eq!(s, ok);
    // 409 when the manual rotation's write came after the one acknowledged.
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/users/{id}/key/rewrite",
            &format!("/v1/users/{u}/key/rewrite"),
            None,
        )
        .await;
    assert!(s == ok || s == StatusCode::CONFLICT, "{s}");
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::DELETE,
            "/v1/users/{id}/key",
            &format!("/v1/users/{u}/key"),
            None,
        )
        .await;
    assert_eq!(s, ok);

    // Audit.
    w.checked(
        &mut c,
        r,
        Method::GET,
        "/v1/users/{id}/timeline",
        &format!("/v1/users/{u}/timeline"),
        None,
    )
    .await;
    let export = "/v1/audit/exports/{kind}";
    w.media(&mut c, r, export, "/v1/audit/exports/password-changes")
        .await;
    w.media(&mut c, r, export, "/v1/audit/exports/events?format=jsonl")
        .await;
    for kind in ["password-changes", "events", "users"] {
        w.checked(
            &mut c,
            r,
            Method::GET,
            "/v1/audit/exports/{kind}/manifest",
            &format!("/v1/audit/exports/{kind}/manifest"),
            None,
        )
        .await;
    }
    // An export uploaded for verification: its manifest line, then the file.
    let get = |path: &str| {
        let req = w
            .app
            .http
            .get(format!("{}{path}", w.app.url))
            .bearer_auth(r);
        async move { req.send().await.unwrap().bytes().await.unwrap() }
    };
    let manifest: Value =
        serde_json::from_slice(&get("/v1/audit/exports/users/manifest").await).unwrap();
    let file = get("/v1/audit/exports/users").await;
    let answer = w.app.verify_upload(r, &manifest, &file).await;
    let status = answer.status();
    let report: Value = answer.json().await.unwrap();
    assert_eq!(
        (status, &report["ok"]),
        (StatusCode::OK, &json!(true)),
        "{report}"
    );
    c.check(&Method::POST, "/v1/audit/verify-export", status, &report);
    let bad = w
        .app
        .http
        .post(format!("{}/v1/audit/verify-export", w.app.url))
        .bearer_auth(r)
        .body("not a manifest\nrow")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    w.checked(
        &mut c,
        r,
        Method::GET,
        "/v1/events",
        "/v1/events?limit=500",
        None,
    )
    .await;

    // Provable history: the key and the checkpoint as text, the rest as JSON.
    w.media(&mut c, r, "/v1/log/public-key", "/v1/log/public-key")
        .await;
    w.media(&mut c, r, "/v1/log/sth", "/v1/log/sth").await;
    let (s, sth) = w
        .checked(
            &mut c,
            r,
            Method::GET,
            "/v1/log/sth",
            "/v1/log/sth?format=json",
            None,
        )
        .await;
    assert_eq!(s, ok, "{sth}");
    let size = sth["tree_size"].as_u64().unwrap();
    for (template, path) in [
        (
            "/v1/log/sth/{tree_size}",
            format!("/v1/log/sth/{size}?format=json"),
        ),
        ("/v1/log/sths", "/v1/log/sths?limit=2".to_owned()),
        (
            "/v1/log/proof/inclusion",
            format!("/v1/log/proof/inclusion?position=1&tree_size={size}"),
        ),
        (
            "/v1/log/proof/consistency",
            format!("/v1/log/proof/consistency?from=1&to={size}"),
        ),
    ] {
        let (s, answer) = w
            .checked(&mut c, r, Method::GET, template, &path, None)
            .await;
        assert_eq!(s, ok, "{path}: {answer}");
    }
    let stream = w
        .app
        .http
        .get(format!("{}/v1/events/stream", w.app.url))
        .bearer_auth(r)
        .send()
        .await
        .unwrap();
    let content_type = stream.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    c.check_media(&Method::GET, "/v1/events/stream", &content_type);
    drop(stream);

    // A quarantined run, approved.
    for n in 3..=7 {
        w.leave(n).await;
    }
    let (_, started) = w
        .admin(Method::POST, &format!("/v1/domains/{d}/sync"), None)
        .await;
    let run = started["run_id"].as_str().unwrap().to_owned();
    let held = w.run_done(&d, &run).await;
    assert_eq!(held["status"], "quarantined", "{held}");
    let (s, approved) = w
        .checked(
            &mut c,
            a,
            Method::POST,
            "/v1/domains/{id}/sync-runs/{run}/approve",
            &format!("/v1/domains/{d}/sync-runs/{run}/approve"),
            None,
        )
        .await;
    assert_eq!(s, ok, "{approved}");
    assert!(approved["position"].is_u64());

    // Refusals answer the error body.
    let (s, _) = w
        .checked(
            &mut c,
            a,
            Method::GET,
            "/v1/users",
            "/v1/users?status=nope",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = w
        .checked(
            &mut c,
            r,
            Method::GET,
            user,
            &format!("/v1/users/{}", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The check can fail: an undocumented field, a value off its enum, a missing field.
    let answer = |m: &str, p: &str| {
        c.doc["paths"][p][m]["responses"]["200"]["content"]["application/json"]["schema"].clone()
    };
    let mut extra = health.clone();
    extra["surprise"] = json!(1);
    assert!(!c.errors(&answer("get", "/healthz"), &extra).is_empty());
    let mut off = users.clone();
    off["items"][0]["status"] = json!("Active");
    assert!(!c.errors(&answer("get", "/v1/users"), &off).is_empty());
    let mut missing = detail.clone();
    missing.as_object_mut().unwrap().remove("counters");
    assert!(!c
        .errors(&answer("get", "/v1/domains/{id}/sync-runs/{run}"), &missing)
        .is_empty());
    let mut nested = detail.clone();
    nested["users"][0]["sneaky"] = json!(true);
    assert!(!c
        .errors(&answer("get", "/v1/domains/{id}/sync-runs/{run}"), &nested)
        .is_empty());

    // Every error answer, refusal or failure, is documented with the one error body, whose
    // schema takes what `ApiError` sends (a 5XX is not provoked here: the same type
    // answers it).
    for (path, methods) in c.doc["paths"].as_object().unwrap() {
        for (method, op) in methods.as_object().unwrap() {
            for class in ["4XX", "5XX"] {
                let schema = &op["responses"][class]["content"]["application/json"]["schema"];
                assert_eq!(
                    schema["$ref"], "#/components/schemas/ErrorBody",
                    "{method} {path} {class}"
                );
            }
            for p in op["parameters"].as_array().unwrap() {
                assert!(p["schema"].is_object(), "{method} {path}: {p}");
            }
        }
    }
    let failed = json!({"error": {"code": "internal", "message": "internal error"}});
    let five = &c.doc["paths"]["/healthz"]["get"]["responses"]["5XX"]["content"]
        ["application/json"]["schema"];
    assert!(c.errors(five, &failed).is_empty());
    assert!(!c.errors(five, &json!({"error": "internal"})).is_empty());

    // No answer leaves its fields undescribed but the few allowed, each with its reason;
    // and the check sees one.
    let found = c.free_forms();
    let allowed: BTreeSet<String> = FREE_FORM.iter().map(|(at, _)| (*at).to_owned()).collect();
    let unexplained: Vec<_> = found.difference(&allowed).collect();
    assert!(
        unexplained.is_empty(),
        "answers' schemas without their fields: {unexplained:?}"
    );
    let stale: Vec<_> = allowed.difference(&found).collect();
    assert!(
        stale.is_empty(),
        "allowed but no longer free-form: {stale:?}"
    );
    let mut sneaky = BTreeSet::new();
    free_forms(
        &json!({"type": "object", "properties": {"x": {"type": "object"}, "y": {}}}),
        "Sample",
        &Map::new(),
        &mut BTreeSet::new(),
        &mut sneaky,
    );
    assert_eq!(
        sneaky,
        BTreeSet::from(["Sample.x".to_owned(), "Sample.y".to_owned()])
    );

    // Every operation was called and checked; every one has its schemas.
    let all = c.operations();
    let unchecked: Vec<_> = all
        .iter()
        .filter(|(m, p, _, _)| !c.checked.contains(&(m.clone(), p.clone())))
        .collect();
    assert!(unchecked.is_empty(), "not called: {unchecked:?}");
    let without: Vec<_> = all.iter().filter(|(_, _, _, answer)| !answer).collect();
    assert!(without.is_empty(), "answers without a schema: {without:?}");
    let bodies = all.iter().filter(|(_, _, body, _)| *body).count();
    println!(
        "schema coverage: {} operations, {} with answer schemas, {} with request bodies (each with its schema); {} places allowed free-form",
        all.len(),
        all.iter().filter(|(_, _, _, answer)| *answer).count(),
        bodies,
        FREE_FORM.len()
    );
}
