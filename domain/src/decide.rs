//! Pure decisions: `evolve` folds a stream's events into the little state a decision needs,
//! `decide` turns a command into events or a [`Rejection`]. The caller appends the events
//! with the stream's version as the expected version, so a concurrent change makes the
//! append fail instead of deciding on stale state.

use crate::events::*;
use crate::ids::*;
use crate::types::*;
use crate::Event;

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
    /// A field is out of range or malformed.
    #[error("{field}: {message}")]
    Invalid {
        /// The field.
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
    if s.deletion_threshold == 0 {
        return Err(invalid("deletion_threshold", "must be at least 1"));
    }
    for (field, g) in [
        ("sync_group", &s.sync_group),
        ("rotation_group", &s.rotation_group),
    ] {
        if g.display_name.trim().is_empty() || g.display_name.len() > 256 {
            return Err(invalid(field, "a display name of 1 to 256 characters"));
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

/// Decisions on a domain stream.
pub mod domain {
    use super::*;

    /// What decisions about a domain need to know.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct DomainState {
        /// Registered.
        pub registered: bool,
        /// Removed.
        pub removed: bool,
        /// Current settings.
        pub settings: DomainSettings,
        /// Credentials saved.
        pub has_credentials: bool,
        /// The saved tenant and client ids.
        pub app: Option<(String, String)>,
        /// SSO defaults.
        pub sso: SsoSettings,
    }

    /// Folds one event of the domain's stream.
    pub fn evolve(mut s: DomainState, e: &Event) -> DomainState {
        match e {
            Event::DomainRegistered(e) => {
                s.registered = true;
                s.settings = e.settings.clone();
            }
            Event::DomainSettingsChanged(e) => s.settings = e.settings.clone(),
            Event::DomainCredentialsSet(e) => {
                s.has_credentials = true;
                s.app = Some((e.tenant_id.clone(), e.client_id.clone()));
            }
            Event::DomainCredentialsRemoved(_) => {
                s.has_credentials = false;
                s.app = None;
            }
            Event::SsoDefaultsChanged(e) => s.sso = e.sso,
            Event::DomainRemoved(_) => {
                s.removed = true;
                s.has_credentials = false;
            }
            _ => {}
        }
        s
    }

    /// A command on a domain.
    #[derive(Clone, Debug, PartialEq)]
    pub enum DomainCommand {
        /// Add a domain.
        Register {
            /// New id.
            domain_id: DomainId,
            /// Tenant domain name.
            name: String,
            /// Settings.
            settings: DomainSettings,
        },
        /// Replace the settings. Moving `graph_url` or `authority_url` of a domain with
        /// credentials needs [`DomainCommand::ChangeSettingsWithSecret`].
        ChangeSettings(DomainSettings),
        /// Replace the settings and save the client secret again, given in the same
        /// request: how Graph or authority URLs of a domain with credentials change.
        ChangeSettingsWithSecret {
            /// The new settings.
            settings: DomainSettings,
            /// The client secret, sealed.
            client_secret: SealedSecret,
        },
        /// Save credentials (the secret already sealed).
        SetCredentials {
            /// Tenant id.
            tenant_id: String,
            /// Client id.
            client_id: String,
            /// Sealed client secret.
            client_secret: SealedSecret,
        },
        /// Remove credentials: sync and rotation stop.
        RemoveCredentials,
        /// Set the SSO defaults.
        SetSsoDefaults(SsoSettings),
        /// Remove the domain.
        Remove,
    }

    fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 253
            && name.contains('.')
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
    }

    fn guid_like(s: &str) -> bool {
        uuid::Uuid::parse_str(s).is_ok()
    }

    /// Decides a command. An empty list means nothing to change (idempotent repeat).
    pub fn decide(s: &DomainState, c: DomainCommand) -> Result<Vec<Event>, Rejection> {
        if let DomainCommand::Register {
            domain_id,
            name,
            settings,
        } = c
        {
            if s.registered {
                return Err(Rejection::AlreadyExists("domain"));
            }
            if !valid_name(&name) {
                return Err(invalid(
                    "domain",
                    "a DNS name such as contoso.onmicrosoft.com",
                ));
            }
            validate_settings(&settings)?;
            return Ok(vec![DomainRegistered {
                domain_id,
                name: name.to_ascii_lowercase(),
                settings,
            }
            .into()]);
        }
        if !s.registered {
            return Err(Rejection::NotFound("domain"));
        }
        if s.removed {
            return Err(Rejection::DomainRemoved);
        }
        Ok(match c {
            DomainCommand::Register { .. } => unreachable!("handled above"),
            DomainCommand::ChangeSettings(settings) => {
                validate_settings(&settings)?;
                let moved = settings.graph_url != s.settings.graph_url
                    || settings.authority_url != s.settings.authority_url;
                if moved && s.has_credentials {
                    // Otherwise the saved secret would go wherever an admin points it: a
                    // saved secret is sent nowhere but where it was saved for.
                    return Err(invalid(
                        "client_secret",
                        "changing graph_url or authority_url of a domain with credentials needs the client secret in the same request",
                    ));
                }
                if settings == s.settings {
                    vec![]
                } else {
                    vec![DomainSettingsChanged { settings }.into()]
                }
            }
            DomainCommand::ChangeSettingsWithSecret {
                settings,
                client_secret,
            } => {
                validate_settings(&settings)?;
                let Some((tenant_id, client_id)) = s.app.clone() else {
                    return Err(invalid(
                        "client_secret",
                        "the domain has no credentials to go with it; save tenant_id, client_id and client_secret first",
                    ));
                };
                let mut events: Vec<Event> = Vec::new();
                if settings != s.settings {
                    events.push(DomainSettingsChanged { settings }.into());
                }
                events.push(
                    DomainCredentialsSet {
                        tenant_id,
                        client_id,
                        client_secret,
                    }
                    .into(),
                );
                events
            }
            DomainCommand::SetCredentials {
                tenant_id,
                client_id,
                client_secret,
            } => {
                if !guid_like(&tenant_id) {
                    return Err(invalid("tenant_id", "a GUID"));
                }
                if !guid_like(&client_id) {
                    return Err(invalid("client_id", "a GUID"));
                }
                vec![DomainCredentialsSet {
                    tenant_id,
                    client_id,
                    client_secret,
                }
                .into()]
            }
            DomainCommand::RemoveCredentials if s.has_credentials => {
                vec![DomainCredentialsRemoved {}.into()]
            }
            DomainCommand::RemoveCredentials => vec![],
            DomainCommand::SetSsoDefaults(sso) if sso == s.sso => vec![],
            DomainCommand::SetSsoDefaults(sso) => vec![SsoDefaultsChanged { sso }.into()],
            DomainCommand::Remove => vec![DomainRemoved {}.into()],
        })
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
}

/// Decisions on the `tokens` stream.
pub mod tokens {
    use super::*;
    use std::collections::BTreeMap;

    /// Tokens by id: live (`true`) or revoked.
    #[derive(Clone, Debug, Default, PartialEq)]
    pub struct TokensState {
        /// Every token ever issued.
        pub tokens: BTreeMap<TokenId, bool>,
    }

    /// Folds one event of the tokens stream.
    pub fn evolve(mut s: TokensState, e: &Event) -> TokensState {
        match e {
            Event::TokenIssued(e) => {
                s.tokens.insert(e.token_id, true);
            }
            Event::TokenRevoked(e) => {
                s.tokens.insert(e.token_id, false);
            }
            _ => {}
        }
        s
    }

    /// A command on tokens.
    #[derive(Clone, Debug, PartialEq)]
    pub enum TokenCommand {
        /// Issue a token whose secret hashes to `token_hash`.
        Issue(TokenIssued),
        /// Revoke a token.
        Revoke(TokenId),
    }

    /// Decides a command.
    pub fn decide(s: &TokensState, c: TokenCommand) -> Result<Vec<Event>, Rejection> {
        match c {
            TokenCommand::Issue(t) => {
                if s.tokens.contains_key(&t.token_id) {
                    return Err(Rejection::AlreadyExists("token"));
                }
                if t.name.chars().count() > 200 {
                    return Err(invalid("name", "at most 200 characters"));
                }
                match (t.role, t.key_ids.is_empty()) {
                    (Role::Agent, true) => {
                        return Err(invalid(
                            "key_ids",
                            "an agent token needs at least one key id",
                        ))
                    }
                    (Role::Admin | Role::Auditor, false) => {
                        return Err(invalid("key_ids", "only agent tokens are bound to keys"))
                    }
                    _ => {}
                }
                if t.key_ids.iter().any(|k| k.0.is_empty() || k.0.len() > 128) {
                    return Err(invalid("key_ids", "each key id is 1 to 128 characters"));
                }
                Ok(vec![t.into()])
            }
            TokenCommand::Revoke(id) => match s.tokens.get(&id) {
                None => Err(Rejection::NotFound("token")),
                Some(false) => Ok(vec![]),
                Some(true) => Ok(vec![TokenRevoked { token_id: id }.into()]),
            },
        }
    }
}

/// Decisions an admin makes on a user's stream.
pub mod user {
    use super::*;

    /// Where a user stands, for decisions.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub enum Status {
        /// No such user.
        #[default]
        Unknown,
        /// Not imported.
        Candidate,
        /// Imported.
        Active,
        /// Deactivated.
        Deactivated,
        /// Deleted.
        Deleted,
    }

    impl Status {
        /// The status name used in the API.
        pub fn as_str(&self) -> &'static str {
            match self {
                Status::Unknown => "unknown",
                Status::Candidate => "candidate",
                Status::Active => "active",
                Status::Deactivated => "deactivated",
                Status::Deleted => "deleted",
            }
        }
    }

    /// What decisions about a user need to know.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    pub struct UserState {
        /// Status.
        pub status: Status,
        /// The SSO override.
        pub sso_override: Option<SsoSettings>,
        /// In scope of the sync group (a member, enabled, existing).
        pub in_sync_group: bool,
        /// The assigned hardware key.
        pub key_id: Option<KeyId>,
        /// Every key write of the user: its key and where it stands.
        pub writes: std::collections::BTreeMap<KeyWriteId, (KeyId, KeyWriteState)>,
    }

    impl UserState {
        /// Writes still owed to the key (queued, or delivered and unacknowledged).
        pub fn undelivered(&self) -> Vec<KeyWriteId> {
            self.writes
                .iter()
                .filter(|(_, (_, st))| {
                    matches!(st, KeyWriteState::Queued | KeyWriteState::Delivered)
                })
                .map(|(id, _)| *id)
                .collect()
        }
    }

    /// Folds one event of the user's stream.
    pub fn evolve(mut s: UserState, e: &Event) -> UserState {
        match e {
            Event::KeyWriteQueued(e) => {
                s.writes
                    .insert(e.key_write_id, (e.key_id.clone(), KeyWriteState::Queued));
            }
            Event::KeyWriteDelivered(e) => {
                set_write(&mut s, e.key_write_id, KeyWriteState::Delivered)
            }
            Event::KeyWriteConfirmed(e) => {
                set_write(&mut s, e.key_write_id, KeyWriteState::Confirmed)
            }
            Event::KeyWriteFailed(e) => set_write(&mut s, e.key_write_id, KeyWriteState::Failed),
            Event::KeyWriteSuperseded(e) => {
                set_write(&mut s, e.key_write_id, KeyWriteState::Superseded)
            }
            Event::UserDiscovered(_) => {
                s.status = Status::Candidate;
                s.in_sync_group = true;
            }
            Event::MemberLeftSyncGroup(_) => s.in_sync_group = false,
            Event::KeyAssigned(e) => s.key_id = Some(e.key_id.clone()),
            Event::KeyUnassigned(_) => s.key_id = None,
            Event::MemberRejoinedSyncGroup(_) => s.in_sync_group = true,
            Event::UserImported(_) | Event::UserReactivated(_) => s.status = Status::Active,
            Event::UserDeactivated(_) => s.status = Status::Deactivated,
            Event::UserDeleted(_) => s.status = Status::Deleted,
            Event::UserSsoOverrideSet(e) => s.sso_override = e.sso,
            _ => {}
        }
        s
    }

    /// An admin's command on a user.
    #[derive(Clone, Debug, PartialEq)]
    pub enum UserCommand {
        /// Set (or clear with `None`) the per-user SSO override.
        SetSsoOverride(Option<SsoSettings>),
        /// Bring a deactivated user back.
        Activate,
        /// Deactivate an active user.
        Deactivate,
        /// Import a candidate with these SSO settings (the domain's defaults).
        Import(SsoSettings),
        /// Assign a hardware key (replacing the one assigned, if any).
        AssignKey(KeyId),
        /// Take the hardware key away.
        UnassignKey,
        /// Hand write `write` to an agent serving `keys` (its password leaves the engine).
        DeliverWrite {
            /// The write.
            write: KeyWriteId,
            /// The agent's keys.
            keys: Vec<KeyId>,
        },
        /// Record an agent's answer about write `write`.
        AcknowledgeWrite {
            /// The write.
            write: KeyWriteId,
            /// The agent's keys.
            keys: Vec<KeyId>,
            /// What it did.
            outcome: WriteOutcome,
        },
        /// Record a break-glass reveal of rotation `rotation`'s password, with its reason.
        RecordReveal {
            /// The rotation whose password is shown.
            rotation: RotationId,
            /// Why, in the admin's words.
            reason: String,
        },
        /// Record an invite sent to `to` by `via`.
        RecordInvite {
            /// The address.
            to: String,
            /// The mailer (`smtp`, `outbox`).
            via: String,
        },
    }

    fn set_write(s: &mut UserState, id: KeyWriteId, state: KeyWriteState) {
        if let Some(w) = s.writes.get_mut(&id) {
            w.1 = state;
        }
    }

    /// Every write the user's key was still owed ends with the key: a password reaches
    /// only the key of the user it belongs to, and only while they hold it.
    fn supersede(s: &UserState, reason: SupersedeReason) -> impl Iterator<Item = Event> {
        s.undelivered().into_iter().map(move |w| {
            KeyWriteSuperseded {
                key_write_id: w,
                reason: reason.clone(),
            }
            .into()
        })
    }

    /// The reason of a break-glass reveal, trimmed: 1 to 1000 characters.
    pub fn reveal_reason(reason: &str) -> Result<String, Rejection> {
        let reason = reason.trim();
        if reason.is_empty() || reason.chars().count() > 1000 {
            return Err(invalid("reason", "say why, in 1 to 1000 characters"));
        }
        Ok(reason.to_owned())
    }

    /// What a workstation agent did with a write.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum WriteOutcome {
        /// The key holds the password.
        Written,
        /// The key could not be written; the agent says why.
        Failed(String),
    }

    /// An agent serving `keys` asks for or answers about write `write`.
    fn agents_write<'s>(
        s: &'s UserState,
        write: KeyWriteId,
        keys: &[KeyId],
    ) -> Result<&'s (KeyId, KeyWriteState), Rejection> {
        // Another key's write is not found: an agent learns nothing of other keys.
        s.writes
            .get(&write)
            .filter(|(k, _)| keys.contains(k))
            .ok_or(Rejection::NotFound("key write"))
    }

    /// Decides a command.
    pub fn decide(s: &UserState, c: UserCommand) -> Result<Vec<Event>, Rejection> {
        match (s.status, c) {
            (_, UserCommand::DeliverWrite { write, keys }) => {
                let (key, state) = agents_write(s, write, &keys)?;
                if !matches!(state, KeyWriteState::Queued | KeyWriteState::Delivered)
                    || s.key_id.as_ref() != Some(key)
                    || s.status == Status::Deleted
                {
                    // Not owed any more, or the key is no longer the user's.
                    return Err(Rejection::NotFound("key write"));
                }
                Ok(vec![KeyWriteDelivered {
                    key_write_id: write,
                }
                .into()])
            }
            (
                _,
                UserCommand::AcknowledgeWrite {
                    write,
                    keys,
                    outcome,
                },
            ) => {
                let (_, state) = agents_write(s, write, &keys)?;
                if !matches!(state, KeyWriteState::Queued | KeyWriteState::Delivered) {
                    return Err(Rejection::Conflict(format!(
                        "the key write is {} already",
                        state.as_str()
                    )));
                }
                Ok(vec![match outcome {
                    WriteOutcome::Written => KeyWriteConfirmed {
                        key_write_id: write,
                    }
                    .into(),
                    WriteOutcome::Failed(detail) => {
                        if detail.chars().count() > 2000 {
                            return Err(invalid("detail", "at most 2000 characters"));
                        }
                        KeyWriteFailed {
                            key_write_id: write,
                            detail,
                        }
                        .into()
                    }
                }])
            }
            (Status::Unknown | Status::Deleted, UserCommand::RecordReveal { .. }) => {
                Err(Rejection::NotFound("user"))
            }
            (_, UserCommand::RecordReveal { rotation, reason }) => Ok(vec![PasswordRevealed {
                rotation_id: rotation,
                reason: reveal_reason(&reason)?,
            }
            .into()]),
            (Status::Active, UserCommand::RecordInvite { to, via }) => {
                Ok(vec![InviteSent { to, via }.into()])
            }
            (Status::Unknown | Status::Deleted, UserCommand::RecordInvite { .. }) => {
                Err(Rejection::NotFound("user"))
            }
            (status, UserCommand::RecordInvite { .. }) => Err(Rejection::Conflict(format!(
                "only active users are invited; this one is {}",
                status.as_str()
            ))),
            (Status::Unknown, _) => Err(Rejection::NotFound("user")),
            (Status::Deleted, _) => Err(Rejection::Conflict("the user was deleted".into())),
            (_, UserCommand::AssignKey(k)) if k.0.is_empty() || k.0.len() > 128 => {
                Err(invalid("key_id", "a key id is 1 to 128 characters"))
            }
            (Status::Candidate, UserCommand::AssignKey(_)) => Err(Rejection::Conflict(
                "a candidate must be imported first".into(),
            )),
            (_, UserCommand::AssignKey(k)) => Ok(match &s.key_id {
                Some(current) if *current == k => vec![],
                Some(current) => {
                    let mut events: Vec<Event> = vec![KeyUnassigned {
                        key_id: current.clone(),
                    }
                    .into()];
                    events.extend(supersede(
                        s,
                        SupersedeReason::KeyReassigned {
                            from: current.clone(),
                            to: k.clone(),
                        },
                    ));
                    events.push(KeyAssigned { key_id: k }.into());
                    events
                }
                None => vec![KeyAssigned { key_id: k }.into()],
            }),
            (_, UserCommand::UnassignKey) => Ok(match &s.key_id {
                None => vec![],
                Some(k) => {
                    let mut events: Vec<Event> = vec![KeyUnassigned { key_id: k.clone() }.into()];
                    events.extend(supersede(
                        s,
                        SupersedeReason::KeyUnassigned { key_id: k.clone() },
                    ));
                    events
                }
            }),
            (Status::Candidate, UserCommand::Import(_)) if !s.in_sync_group => Err(
                Rejection::Conflict("the user is no longer in the sync group".into()),
            ),
            (Status::Candidate, UserCommand::Import(sso)) => Ok(vec![UserImported { sso }.into()]),
            (_, UserCommand::Import(_)) => Ok(vec![]),
            (_, UserCommand::SetSsoOverride(sso)) if sso == s.sso_override => Ok(vec![]),
            (_, UserCommand::SetSsoOverride(sso)) => Ok(vec![UserSsoOverrideSet { sso }.into()]),
            (Status::Deactivated, UserCommand::Activate) => Ok(vec![UserReactivated {}.into()]),
            (Status::Active, UserCommand::Activate) => Ok(vec![]),
            (Status::Active, UserCommand::Deactivate) => {
                Ok(vec![UserDeactivated { reason: None }.into()])
            }
            (Status::Deactivated, UserCommand::Deactivate) => Ok(vec![]),
            (Status::Candidate, _) => Err(Rejection::Conflict(
                "a candidate must be imported first".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// given(past events).when(command).then(result), for one aggregate.
    fn given<S: Default>(evolve: fn(S, &Event) -> S, past: &[Event]) -> S {
        past.iter().fold(S::default(), evolve)
    }

    fn discovered() -> Event {
        UserDiscovered {
            user_id: UserId(uuid::Uuid::from_u128(4)),
            domain_id: DomainId(uuid::Uuid::from_u128(1)),
            external_id: "x".into(),
            attributes: UserAttributes::default(),
        }
        .into()
    }

    fn registered() -> Event {
        DomainRegistered {
            domain_id: DomainId(uuid::Uuid::from_u128(1)),
            name: "contoso.onmicrosoft.com".into(),
            settings: DomainSettings::default(),
        }
        .into()
    }

    fn sealed() -> SealedSecret {
        SealedSecret {
            key_id: DataKeyId(uuid::Uuid::from_u128(9)),
            nonce: [0; 24],
            ciphertext: vec![1, 2, 3],
        }
    }

    #[test]
    fn a_domain_is_registered_once_with_valid_settings() {
        use domain::*;
        let register = |name: &str, settings| DomainCommand::Register {
            domain_id: DomainId(uuid::Uuid::from_u128(1)),
            name: name.into(),
            settings,
        };
        let s = given(evolve, &[]);
        assert_eq!(
            decide(
                &s,
                register("Contoso.onmicrosoft.com", DomainSettings::default())
            )
            .unwrap()
            .len(),
            1
        );
        assert!(matches!(
            decide(&s, register("not a name", DomainSettings::default())),
            Err(Rejection::Invalid {
                field: "domain",
                ..
            })
        ));
        let bad = DomainSettings {
            auto_password_change_days: Some(366),
            ..DomainSettings::default()
        };
        assert!(matches!(
            decide(&s, register("contoso.com", bad)),
            Err(Rejection::Invalid {
                field: "auto_password_change_days",
                ..
            })
        ));
        let s = given(evolve, &[registered()]);
        assert_eq!(
            decide(&s, register("contoso.com", DomainSettings::default())),
            Err(Rejection::AlreadyExists("domain"))
        );
    }

    #[test]
    fn domain_changes_are_idempotent_and_stop_after_removal() {
        use domain::*;
        let s = given(evolve, &[registered()]);
        assert_eq!(
            decide(&s, DomainCommand::ChangeSettings(DomainSettings::default())),
            Ok(vec![])
        );
        assert_eq!(decide(&s, DomainCommand::RemoveCredentials), Ok(vec![]));
        let creds = DomainCommand::SetCredentials {
            tenant_id: uuid::Uuid::from_u128(5).to_string(),
            client_id: uuid::Uuid::from_u128(6).to_string(),
            client_secret: sealed(),
        };
        let set = decide(&s, creds.clone()).unwrap();
        let s = given(evolve, &[registered(), set[0].clone()]);
        assert_eq!(
            decide(&s, DomainCommand::RemoveCredentials),
            Ok(vec![DomainCredentialsRemoved {}.into()])
        );
        let bad_tenant = DomainCommand::SetCredentials {
            tenant_id: "contoso".into(),
            client_id: uuid::Uuid::from_u128(6).to_string(),
            client_secret: sealed(),
        };
        assert!(matches!(
            decide(&s, bad_tenant),
            Err(Rejection::Invalid {
                field: "tenant_id",
                ..
            })
        ));
        let s = given(evolve, &[registered(), DomainRemoved {}.into()]);
        assert_eq!(decide(&s, creds), Err(Rejection::DomainRemoved));
        assert_eq!(
            decide(&given(evolve, &[]), DomainCommand::Remove),
            Err(Rejection::NotFound("domain"))
        );
    }

    #[test]
    fn tokens_need_keys_exactly_when_they_are_agents() {
        use tokens::*;
        let issue = |role, keys: Vec<&str>| {
            TokenCommand::Issue(TokenIssued {
                token_id: TokenId(uuid::Uuid::from_u128(3)),
                role,
                name: "t".into(),
                key_ids: keys.into_iter().map(|k| KeyId(k.into())).collect(),
                token_hash: Hash([1; 32]),
            })
        };
        let s = given(evolve, &[]);
        assert!(decide(&s, issue(Role::Agent, vec!["K1"])).is_ok());
        assert!(decide(&s, issue(Role::Agent, vec![])).is_err());
        assert!(decide(&s, issue(Role::Admin, vec!["K1"])).is_err());
        let issued = decide(&s, issue(Role::Admin, vec![])).unwrap();
        let s = given(evolve, &issued);
        let id = TokenId(uuid::Uuid::from_u128(3));
        assert_eq!(decide(&s, TokenCommand::Revoke(id)).unwrap().len(), 1);
        let s = given(
            evolve,
            &[issued[0].clone(), TokenRevoked { token_id: id }.into()],
        );
        assert_eq!(decide(&s, TokenCommand::Revoke(id)), Ok(vec![]));
        assert_eq!(
            decide(&s, TokenCommand::Revoke(TokenId(uuid::Uuid::nil()))),
            Err(Rejection::NotFound("token"))
        );
    }

    #[test]
    fn only_deactivated_users_are_activated() {
        use user::*;
        let discovered = discovered();
        let imported: Event = UserImported {
            sso: SsoSettings::default(),
        }
        .into();
        let candidate = given(evolve, std::slice::from_ref(&discovered));
        assert!(matches!(
            decide(&candidate, UserCommand::Activate),
            Err(Rejection::Conflict(_))
        ));
        let active = given(evolve, &[discovered.clone(), imported.clone()]);
        assert_eq!(decide(&active, UserCommand::Activate), Ok(vec![]));
        assert_eq!(
            decide(&active, UserCommand::Deactivate),
            Ok(vec![UserDeactivated { reason: None }.into()])
        );
        let off = given(
            evolve,
            &[
                discovered,
                imported,
                UserDeactivated { reason: None }.into(),
            ],
        );
        assert_eq!(
            decide(&off, UserCommand::Activate),
            Ok(vec![UserReactivated {}.into()])
        );
        assert_eq!(
            decide(&given(evolve, &[]), UserCommand::Activate),
            Err(Rejection::NotFound("user"))
        );
    }

    #[test]
    fn only_candidates_in_the_sync_group_are_imported() {
        use user::*;
        let discovered = discovered();
        let sso = SsoSettings {
            enabled: true,
            method: SsoMethod::Passwordless,
        };
        let candidate = given(evolve, std::slice::from_ref(&discovered));
        assert_eq!(
            decide(&candidate, UserCommand::Import(sso)),
            Ok(vec![UserImported { sso }.into()])
        );
        let imported = given(evolve, &[discovered.clone(), UserImported { sso }.into()]);
        assert_eq!(decide(&imported, UserCommand::Import(sso)), Ok(vec![]));
        let gone = given(
            evolve,
            &[
                discovered,
                MemberLeftSyncGroup {
                    reason: LeaveReason::LeftGroup,
                }
                .into(),
            ],
        );
        assert!(matches!(
            decide(&gone, UserCommand::Import(sso)),
            Err(Rejection::Conflict(_))
        ));
    }

    #[test]
    fn a_key_is_assigned_replaced_and_unassigned() {
        use user::*;
        let discovered = discovered();
        let key = |k: &str| KeyId(k.into());
        let candidate = given(evolve, std::slice::from_ref(&discovered));
        assert!(matches!(
            decide(&candidate, UserCommand::AssignKey(key("K1"))),
            Err(Rejection::Conflict(_))
        ));
        let imported: Event = UserImported {
            sso: SsoSettings::default(),
        }
        .into();
        let active = given(evolve, &[discovered.clone(), imported.clone()]);
        assert!(matches!(
            decide(&active, UserCommand::AssignKey(key(""))),
            Err(Rejection::Invalid {
                field: "key_id",
                ..
            })
        ));
        assert_eq!(
            decide(&active, UserCommand::AssignKey(key("K1"))),
            Ok(vec![KeyAssigned { key_id: key("K1") }.into()])
        );
        assert_eq!(decide(&active, UserCommand::UnassignKey), Ok(vec![]));
        let with_key = given(
            evolve,
            &[
                discovered,
                imported,
                KeyAssigned { key_id: key("K1") }.into(),
            ],
        );
        assert_eq!(
            decide(&with_key, UserCommand::AssignKey(key("K1"))),
            Ok(vec![])
        );
        assert_eq!(
            decide(&with_key, UserCommand::AssignKey(key("K2"))),
            Ok(vec![
                KeyUnassigned { key_id: key("K1") }.into(),
                KeyAssigned { key_id: key("K2") }.into()
            ])
        );
        assert_eq!(
            decide(&with_key, UserCommand::UnassignKey),
            Ok(vec![KeyUnassigned { key_id: key("K1") }.into()])
        );
    }

    #[test]
    fn taking_a_key_away_supersedes_every_write_it_was_still_owed() {
        use user::*;
        let key = |k: &str| KeyId(k.into());
        let w = |n: u128| KeyWriteId(uuid::Uuid::from_u128(n));
        let queued = |n: u128| -> Event {
            KeyWriteQueued {
                key_write_id: w(n),
                rotation_id: RotationId(uuid::Uuid::from_u128(n)),
                key_id: key("K1"),
            }
            .into()
        };
        let past = [
            discovered(),
            UserImported {
                sso: SsoSettings::default(),
            }
            .into(),
            KeyAssigned { key_id: key("K1") }.into(),
            queued(1),
            KeyWriteConfirmed { key_write_id: w(1) }.into(),
            queued(2),
            KeyWriteDelivered { key_write_id: w(2) }.into(),
            queued(3),
        ];
        let s = given(evolve, &past);
        assert_eq!(s.undelivered(), vec![w(2), w(3)]);
        let superseded = |n, reason: &SupersedeReason| -> Event {
            KeyWriteSuperseded {
                key_write_id: w(n),
                reason: reason.clone(),
            }
            .into()
        };
        let gone = SupersedeReason::KeyUnassigned { key_id: key("K1") };
        assert_eq!(
            decide(&s, UserCommand::UnassignKey),
            Ok(vec![
                KeyUnassigned { key_id: key("K1") }.into(),
                superseded(2, &gone),
                superseded(3, &gone),
            ])
        );
        let moved = SupersedeReason::KeyReassigned {
            from: key("K1"),
            to: key("K2"),
        };
        assert_eq!(
            decide(&s, UserCommand::AssignKey(key("K2"))),
            Ok(vec![
                KeyUnassigned { key_id: key("K1") }.into(),
                superseded(2, &moved),
                superseded(3, &moved),
                KeyAssigned { key_id: key("K2") }.into(),
            ])
        );
    }
}
