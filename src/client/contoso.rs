//! The contoso tenant (`fixtures/tenants/contoso.json`, built into the binary) and its
//! demo app registration: what `demo` and the benchmarks run against.

/// The tenant file.
pub const TENANT_FILE: &str = include_str!("../../fixtures/tenants/contoso.json");
/// Its domain name.
pub const DOMAIN: &str = "contoso.onmicrosoft.com";
/// Its tenant id.
pub const TENANT: &str = "6f1a2b3c-4d5e-4f60-8a7b-9c0d1e2f3a4b";
/// The app with every permission the product needs.
pub const CLIENT_ID: &str = "11111111-2222-4333-8444-555555555555";
/// That app's secret.
pub const CLIENT_SECRET: &str = "contoso-demo-secret";
/// The sync group's name.
pub const SYNC_GROUP: &str = "Hideez Users Sync";
/// The rotation group's name.
pub const ROTATION_GROUP: &str = "Hideez Key Auto Password Change";

/// The tenant, parsed.
pub fn directory() -> Result<graphsim::Directory, crate::error::Error> {
    graphsim::parse_tenant(TENANT_FILE).map_err(crate::error::Error::Other)
}

/// The credentials of the demo app, as `PUT /v1/domains/{id}/credentials` takes them.
pub fn credentials() -> serde_json::Value {
    serde_json::json!({"tenant_id": TENANT, "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET})
}
