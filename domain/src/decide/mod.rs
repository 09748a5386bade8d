//! Pure decisions: `evolve` folds a stream's events into the little state a decision needs,
//! `decide` turns a command into events or a [`Rejection`]. The caller appends the events
//! with the stream's version as the expected version, so a concurrent change makes the
//! append fail instead of deciding on stale state.

use crate::events::*;
use crate::ids::*;
use crate::types::*;
use crate::Event;

/// Whether `text`, written by a person and shown to others (a timeline, an export), holds
/// no control character and no bidirectional override that would make it read otherwise.
pub fn plain_text(text: &str) -> bool {
    text.chars().all(plain_char)
}

/// Not a control character, a bidirectional embedding, override or isolate, nor an
/// invisible character (zero-width space, word joiner, soft hyphen, byte-order mark): any
/// of them can make a name read as another one on a page. What scripts need stays: the
/// zero-width joiners (U+200C, U+200D) and the direction marks of right-to-left names
/// (U+200E, U+200F, U+061C).
pub fn plain_char(c: char) -> bool {
    !(c.is_control()
        || matches!(
            c,
            '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{200b}'
                | '\u{2060}'..='\u{2064}'
                | '\u{feff}'
                | '\u{00ad}'
                | '\u{180e}'
        ))
}

/// A hardware key's serial: 1 to 128 printable ASCII characters, no spaces. One key serves
/// one user, compared as written: a serial padded or holding an invisible character would
/// be a second key that looks like the first.
pub fn key_id_ok(key: &str) -> bool {
    (1..=128).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

pub mod domain;
pub mod provider;
pub mod refresh;
pub mod signin;
#[cfg(test)]
mod spec;
pub mod tokens;
pub mod user;

/// A command refused by the domain rules (not an infrastructure failure).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The subject does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The subject exists already.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// The domain was removed.
    #[error("the domain was removed")]
    DomainRemoved,
    /// The command is not allowed in the subject's current state.
    #[error("{0}")]
    Conflict(String),
    /// Refused for now, after too many attempts; nothing recorded.
    #[error("{0}")]
    Throttled(String),
    /// A field is out of range or malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// The field, as the API names it.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> Rejection {
    Rejection::Invalid {
        field,
        message: message.into(),
    }
}

/// Checks domain settings against their documented ranges.
pub fn validate_settings(s: &DomainSettings) -> Result<(), Rejection> {
    if let Some(d) = s.auto_password_change_days {
        if !(1..=365).contains(&d) {
            return Err(invalid("auto_password_change_days", "must be 1 to 365"));
        }
    }
    if !(1..=1440).contains(&s.sync_interval_minutes) {
        return Err(invalid("sync_interval_minutes", "must be 1 to 1440"));
    }
    if !(16..=256).contains(&s.password_length) {
        return Err(invalid("password_length", "must be 16 to 256"));
    }
    if !(1..=64).contains(&s.max_concurrent_rotations) {
        return Err(invalid("max_concurrent_rotations", "must be 1 to 64"));
    }
    if s.rotate_after_reveal_hours > 8760 {
        return Err(invalid(
            "rotate_after_reveal_hours",
            "must be 0 to 8760 (a year)",
        ));
    }
    if s.deletion_threshold == 0 {
        return Err(invalid("deletion_threshold", "must be at least 1"));
    }
    for (field, id_field, g) in [
        ("sync_group", "sync_group_id", &s.sync_group),
        ("rotation_group", "rotation_group_id", &s.rotation_group),
    ] {
        // An object id goes into Graph's paths and is compared with the ids Graph sends:
        // a GUID as Graph writes it (lower case, hyphenated), nothing else.
        if let Some(id) = &g.object_id {
            let canonical = uuid::Uuid::parse_str(id).map(|u| u.hyphenated().to_string());
            if canonical.as_deref() != Ok(id.as_str()) {
                return Err(invalid(
                    id_field,
                    "an object id: a GUID in lower case, hyphenated",
                ));
            }
        }
        if g.display_name.trim().is_empty() || g.display_name.len() > 256 {
            return Err(invalid(field, "a display name of 1 to 256 characters"));
        }
        // It reaches Graph's filters, errors and log lines.
        if !plain_text(&g.display_name) {
            return Err(invalid(
                field,
                "no control or bidirectional-override characters",
            ));
        }
    }
    for (field, url) in [
        ("graph_url", &s.graph_url),
        ("authority_url", &s.authority_url),
    ] {
        check_service_url(url).map_err(|m| invalid(field, m))?;
    }
    Ok(())
}

/// A URL the client secret or Graph tokens are sent to: `https://`, or `http://` to a
/// loopback host only (graphsim in tests and the demo); no user info, a plain host,
/// at most 512 characters.
pub fn check_service_url(url: &str) -> Result<(), &'static str> {
    const WHAT: &str = "an https:// URL (http:// only to a loopback host), with no user info";
    if url.len() > 512 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(WHAT);
    }
    let (secure, rest) = match url.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => return Err(WHAT),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(WHAT);
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or(WHAT)?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if port.is_some_and(|p| p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit())) {
        return Err(WHAT);
    }
    let plain = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
    if !plain {
        return Err(WHAT);
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    if secure || loopback {
        Ok(())
    } else {
        Err(WHAT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_are_https_or_loopback_http() {
        for ok in [
            "https://graph.microsoft.com",
            "https://login.microsoftonline.us/",
            "https://graph.example:8443/v1",
            "http://127.0.0.1:8090",
            "http://localhost:1234/x",
            "http://[::1]:80",
        ] {
            assert_eq!(check_service_url(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://attacker.example",
            "http://10.0.0.1",
            "ftp://graph.microsoft.com",
            "https://user:pw@graph.microsoft.com",
            "https://127.0.0.1@attacker.example",
            "http://127.0.0.1.attacker.example",
            "https://",
            "https://graph.microsoft.com:port",
            "https://graph microsoft.com",
            "graph.microsoft.com",
        ] {
            assert!(check_service_url(bad).is_err(), "{bad}");
        }
    }
}
