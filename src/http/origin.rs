//! The public origin: where users' browsers reach idledger. Invites link there, and its
//! host is the WebAuthn relying-party id, so a passkey made for it works only there.

use std::net::SocketAddr;

/// A checked public origin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl {
    /// `scheme://host[:port]`, no path, no trailing slash: the origin browsers report.
    pub origin: String,
    /// The host alone: the WebAuthn relying-party id.
    pub host: String,
    /// Served over HTTPS.
    pub https: bool,
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `text` with anything between `://` and its last `@` replaced by `***`.
fn without_userinfo(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    // The last `@` anywhere: a password holding `/`, `?` or `#` would end an authority
    // read by the rules early, with the password before it.
    match rest.rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => text.to_owned(),
    }
}

impl PublicUrl {
    /// Parses and checks a configured origin: `https://`, or `http://` only for a loopback
    /// host (browsers treat only those as secure contexts); no path, query or fragment; a
    /// named host (WebAuthn ids are domains, not IP addresses) unless loopback.
    pub fn parse(raw: &str) -> Result<PublicUrl, String> {
        // Messages quote the setting without the user information it may wrongly carry.
        let text = &without_userinfo(raw);
        let url = reqwest::Url::parse(raw.trim()).map_err(|e| format!("{text:?}: {e}"))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme {other:?}: use https")),
        };
        let host = url
            .host_str()
            .ok_or_else(|| format!("{text:?} has no host"))?
            .to_ascii_lowercase();
        if !https && !is_loopback_host(&host) {
            return Err(format!(
                "{text:?}: plain http only for localhost; browsers allow passkeys only on https"
            ));
        }
        if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
            return Err(format!(
                "{text:?}: use a host name (WebAuthn relying-party ids are domains), e.g. localhost"
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{text:?}: only an origin, without a path"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{text:?}: no user name or password in the URL"));
        }
        let origin = url.origin().ascii_serialization();
        Ok(PublicUrl {
            origin,
            host,
            https,
        })
    }

    /// The default for a server listening on `addr`: `http://localhost:<port>` when the
    /// address is loopback, nothing otherwise (the origin must then be configured).
    pub fn loopback_default(addr: SocketAddr, https: bool) -> Option<PublicUrl> {
        addr.ip().is_loopback().then(|| PublicUrl {
            origin: format!(
                "{}://localhost:{}",
                if https { "https" } else { "http" },
                addr.port()
            ),
            host: "localhost".into(),
            https,
        })
    }

    /// An absolute URL of `path` (which starts with `/`) on this origin.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.origin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let ok = PublicUrl::parse("https://IdP.Contoso.com").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.origin, "https://idp.contoso.com");
        assert_eq!(ok.host, "idp.contoso.com");
        let local = PublicUrl::parse("http://localhost:8080/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(local.origin, "http://localhost:8080");
        for bad in [
            "http://idp.contoso.com",
            "https://10.0.0.1",
            "http://127.0.0.1:8080",
            "https://idp.contoso.com/path",
            "https://idp.contoso.com/?q",
            "ftp://idp.contoso.com",
            "https://u:p@idp.contoso.com",
            "not a url",
        ] {
            assert!(PublicUrl::parse(bad).is_err(), "{bad}");
        }
        // A password wrongly put in the setting is not repeated in any refusal.
        for bad in [
            "https://admin:Hunter2@idp.contoso.com",
            "http://admin:Hunter2@idp.contoso.com/x",
            "https://admin:Hunter2@",
            "https://admin:Hunter2#x@idp.contoso.com",
            "https://admin:Hun/ter2@idp.contoso.com",
            "ftp://admin:Hunter2@10.0.0.1/",
        ] {
            let e = PublicUrl::parse(bad).unwrap_err();
            assert!(!e.contains("Hunter2"), "{e}");
        }
    }
}
