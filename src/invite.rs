//! Invites: the message a user receives, and the mailer that carries it (SMTP when
//! `[smtp]` is configured, otherwise an `.eml` file in `<data-dir>/outbox/`).

use crate::secrets::Secret;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::path::PathBuf;

/// `[smtp]` of the serve configuration.
#[derive(Debug, Deserialize, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Relay host.
    pub host: String,
    /// Port (default 587 with STARTTLS, 465 with implicit TLS, 25 without TLS).
    pub port: Option<u16>,
    /// How the connection to the relay is protected.
    #[serde(default)]
    pub security: SmtpSecurity,
    /// Login, when the relay wants one.
    pub username: Option<String>,
    /// Password of the login.
    pub password: Option<Secret>,
    /// The sender, e.g. `idledger <noreply@contoso.com>`.
    pub from: String,
}

/// `smtp.security`: how the connection to the relay is protected.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP upgraded with STARTTLS (port 587 by default).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465 by default).
    Tls,
    /// In the clear (port 25 by default): only for a relay on loopback.
    None,
}

/// An invite could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum InviteError {
    /// An address or the configuration is unusable.
    #[error("{0}")]
    Address(String),
    /// The relay or the outbox refused it.
    #[error("the invite could not be delivered: {0}")]
    Delivery(String),
}

/// What an invite says.
#[derive(Clone)]
pub struct Invite {
    /// Recipient address.
    pub to: String,
    /// The user's name.
    pub display_name: String,
    /// The account.
    pub user_principal_name: String,
    /// The tenant's domain name.
    pub domain: String,
    /// The single-use enrolment link (the only place its secret is written).
    pub link: String,
    /// When the link stops working.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// The link is a single-use credential: its secret is written to the mail only.
impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("to", &self.to)
            .field("user_principal_name", &self.user_principal_name)
            .field("domain", &self.domain)
            .field("link", &"***")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Carries invites.
pub enum Mailer {
    /// An SMTP relay.
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// The sender.
        from: Mailbox,
    },
    /// `.eml` files in a directory.
    Outbox {
        dir: PathBuf,
        /// The sender.
        from: Mailbox,
    },
}

/// Checks that `to` is a usable address before anything is recorded.
pub fn check_address(to: &str) -> Result<(), InviteError> {
    mailbox(to).map(|_| ())
}

fn mailbox(s: &str) -> Result<Mailbox, InviteError> {
    s.parse()
        .map_err(|e| InviteError::Address(format!("{s:?} is not a mail address: {e}")))
}

impl Mailer {
    /// SMTP with `smtp`, else the outbox under `data_dir`.
    pub fn new(smtp: Option<&SmtpConfig>, data_dir: &std::path::Path) -> Result<Self, InviteError> {
        let Some(c) = smtp else {
            return Ok(Mailer::Outbox {
                dir: data_dir.join("outbox"),
                from: mailbox("idledger <noreply@idledger.invalid>")?,
            });
        };
        let builder = match c.security {
            SmtpSecurity::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host),
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host),
            // In the clear: the enrolment links and the relay's password would cross the
            // network readable, so only a relay on this machine is taken.
            SmtpSecurity::None if on_loopback(&c.host) => Ok(
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
            ),
            SmtpSecurity::None => {
                return Err(InviteError::Address(format!(
                    "smtp.security \"none\" sends invites in the clear: only for a relay on \
                     loopback, not {:?} (use starttls or tls)",
                    c.host
                )))
            }
        }
        .map_err(|e| InviteError::Address(format!("smtp.host {:?}: {e}", c.host)))?;
        let builder = match c.port {
            Some(p) => builder.port(p),
            None => builder,
        };
        let builder = match (&c.username, &c.password) {
            (Some(u), Some(p)) => {
                builder.credentials(Credentials::new(u.clone(), p.expose().to_owned()))
            }
            _ => builder,
        };
        Ok(Mailer::Smtp {
            transport: builder.build(),
            from: mailbox(&c.from)?,
        })
    }

    /// `smtp` or `outbox`, as recorded in `InviteSent`.
    pub fn via(&self) -> &'static str {
        match self {
            Mailer::Smtp { .. } => "smtp",
            Mailer::Outbox { .. } => "outbox",
        }
    }

    /// Sends the invite.
    pub async fn send(&self, invite: &Invite) -> Result<(), InviteError> {
        let from = match self {
            Mailer::Smtp { from, .. } | Mailer::Outbox { from, .. } => from.clone(),
        };
        let message = message(from, invite)?;
        match self {
            Mailer::Smtp { transport, .. } => transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| InviteError::Delivery(e.to_string())),
            Mailer::Outbox { dir, .. } => {
                let name = format!(
                    "{}-{}.eml",
                    chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
                    invite.user_principal_name.replace(
                        |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '@',
                        "_"
                    )
                );
                let bytes = message.formatted();
                let dir = dir.clone();
                // Each message carries an enrolment link: the owner's alone (0700, 0600),
                // whatever the umask of the process that sends it (the demo's, a test's).
                tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::DirBuilderExt;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(&dir)?;
                    // One an earlier build made under a wider umask is narrowed too.
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
                    crate::durable::create_private(&dir.join(name), &bytes)
                })
                .await
                .map_err(|e| InviteError::Delivery(e.to_string()))?
                .map_err(|e| InviteError::Delivery(e.to_string()))
            }
        }
    }
}

/// `localhost` or a loopback address (`127.0.0.1`, `::1`, `[::1]`).
fn on_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The invite's text: who it is for, the enrolment link, and how long it works.
pub fn body(invite: &Invite) -> String {
    format!(
        "Hello {name},\n\n\
         your account {upn} in {domain} now signs in with Hideez.\n\n\
         Open this link to choose your sign-in method and set it up:\n\n\
         {link}\n\n\
         The link works once, until {expires} (UTC). Your administrator may have chosen the\n\
         method for you:\n\
         - Passwordless: a passkey on this device or a security key such as the Hideez Key.\n\
         - Password and a second factor: your Entra ID sign-in, then a passkey or an\n  \
           authenticator app code.\n\n\
         If you did not expect this message, tell your administrator.\n",
        name = invite.display_name,
        upn = invite.user_principal_name,
        domain = invite.domain,
        link = invite.link,
        expires = invite.expires_at.format("%Y-%m-%d %H:%M"),
    )
}

fn message(from: Mailbox, invite: &Invite) -> Result<Message, InviteError> {
    Message::builder()
        .from(from)
        .to(mailbox(&invite.to)?)
        .subject(format!("Sign in to {} with Hideez", invite.domain))
        .header(ContentType::TEXT_PLAIN)
        .body(body(invite))
        .map_err(|e| InviteError::Address(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(host: &str, security: SmtpSecurity) -> SmtpConfig {
        SmtpConfig {
            host: host.into(),
            port: None,
            security,
            username: None,
            password: None,
            from: "idledger <noreply@contoso.com>".into(),
        }
    }

    /// An outbox message carries a live enrolment link: the owner's alone, whatever the
    /// process's umask (a test's or the demo's is usually 022).
    #[tokio::test]
    async fn outbox_messages_are_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let data = tempfile::tempdir().unwrap();
        let mailer = Mailer::new(None, data.path()).unwrap();
        let invite = Invite {
            to: "adele@contoso.com".into(),
            display_name: "Adele Vance".into(),
            user_principal_name: "adele@contoso.com".into(),
            domain: "contoso.com".into(),
            link: "http://localhost:8080/enrol/secret".into(),
            expires_at: chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
        };
        mailer.send(&invite).await.unwrap();
        let outbox = data.path().join("outbox");
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&outbox), 0o700);
        let files: Vec<_> = std::fs::read_dir(&outbox)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(mode(&files[0]), 0o600);
        assert!(std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("/enrol/secret"));
    }

    #[tokio::test]
    async fn a_relay_in_the_clear_is_only_taken_on_loopback() {
        let dir = std::path::Path::new("/nonexistent");
        for host in ["localhost", "127.0.0.1", "::1", "[::1]"] {
            let m = Mailer::new(Some(&smtp(host, SmtpSecurity::None)), dir);
            assert!(m.is_ok_and(|m| m.via() == "smtp"), "{host}");
        }
        for host in ["smtp.example.com", "10.0.0.5", "localhost.example.com"] {
            let err = Mailer::new(Some(&smtp(host, SmtpSecurity::None)), dir)
                .err()
                .unwrap_or_else(|| panic!("{host} taken in the clear"))
                .to_string();
            assert!(err.contains("smtp.security") && err.contains(host), "{err}");
        }
        assert!(Mailer::new(Some(&smtp("smtp.example.com", SmtpSecurity::Starttls)), dir).is_ok());
    }

    /// The configuration's words are the ones the docs give, and another is refused when
    /// the file is read, naming the choices.
    #[test]
    fn smtp_security_reads_its_three_words_and_defaults_to_starttls() {
        let read = |extra: &str| {
            toml::from_str::<SmtpConfig>(&format!("host = \"h\"\nfrom = \"f@h\"\n{extra}"))
        };
        assert_eq!(
            read("").map(|c| c.security).ok(),
            Some(SmtpSecurity::Starttls)
        );
        for (word, security) in [
            ("starttls", SmtpSecurity::Starttls),
            ("tls", SmtpSecurity::Tls),
            ("none", SmtpSecurity::None),
        ] {
            let c = read(&format!("security = \"{word}\""));
            assert_eq!(c.map(|c| c.security).ok(), Some(security), "{word}");
        }
        let err = read("security = \"ssl\"").err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("starttls")),
            "{err:?}"
        );
    }
}
