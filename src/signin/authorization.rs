//! An app's authorization request while it waits in a browser's flow for the user to sign
//! in: made and answered by `oidc`, kept by `sessions`.

use chrono::{DateTime, Utc};
use idledger_domain::{AppId, UserId};

/// An app's authorization request, kept in the browser's flow while the user signs in.
#[derive(Clone, Debug)]
pub struct AuthRequest {
    pub(super) app: AppId,
    pub(super) redirect_uri: String,
    pub(super) state: Option<String>,
    pub(super) nonce: Option<String>,
    pub(super) code_challenge: Option<String>,
    pub(super) scope: Vec<String>,
    /// `prompt=login` or `max_age`: a sign-in at or after this time is needed.
    pub(super) fresh_after: Option<DateTime<Utc>>,
    /// The user an `id_token_hint` names: the request is answered for them only.
    pub(super) hinted: Option<UserId>,
    /// How the answer goes back to the app.
    pub(super) response_mode: ResponseMode,
}

/// How an authorization answer reaches the app's redirect URI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResponseMode {
    /// In the query of a redirect (RFC 6749 §4.1.2).
    #[default]
    Query,
    /// In a form the browser posts there (OAuth 2.0 Form Post Response Mode): what ASP.NET
    /// Core's and Microsoft.Identity.Web's handlers ask for by default. The code stays out
    /// of the address bar, the history and the app's access logs.
    FormPost,
}

impl AuthRequest {
    /// The origin the browser is sent back to once signed in.
    pub fn app_origin(&self) -> Option<String> {
        origin_of(&self.redirect_uri)
    }

    /// The app asking.
    pub fn app_id(&self) -> AppId {
        self.app
    }

    /// Where and how its answer goes.
    pub(super) fn back(&self) -> (&str, ResponseMode) {
        (&self.redirect_uri, self.response_mode)
    }
}

/// `scheme://host[:port]` of a registered address, as a CSP source.
pub(super) fn origin_of(uri: &str) -> Option<String> {
    let url = reqwest::Url::parse(uri).ok()?;
    url.has_host()
        .then(|| url.origin().ascii_serialization())
        .filter(|o| o != "null")
}

/// Whether a page's policy can name the origin of `uri` as a place its forms may lead:
/// CSP's sources take a host name or an IPv4 address, not an IPv6 literal nor an app's
/// own scheme without a host.
pub(super) fn csp_can_name(uri: &str) -> bool {
    origin_of(uri).is_some_and(|o| !o.contains('['))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_host_origins_go_in_a_policy() {
        for (uri, named) in [
            ("https://payroll.contoso.com/cb", true),
            ("http://localhost:8080/cb", true),
            ("http://127.0.0.1:8080/cb", true),
            ("http://[::1]:8080/cb", false),
            ("com.contoso.payroll:/cb", false),
        ] {
            assert_eq!(super::csp_can_name(uri), named, "{uri}");
        }
    }
}
