//! Decisions on the OpenID Connect provider's stream: apps (relying parties) and the
//! keys that sign their tokens.

use super::*;
use std::collections::BTreeMap;

/// An app as decisions need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppFacts {
    /// Its `client_id`.
    pub client_id: String,
    /// Confidential or public.
    pub client_type: ClientType,
    /// Removed.
    pub removed: bool,
    /// What a change leaves as it is unless it names it (see [`AppChange`]).
    pub settings: AppSettings,
}

/// An app's settings an admin changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AppSettings {
    /// Its name.
    pub name: String,
    /// Redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Post-logout redirect URIs.
    pub post_logout_redirect_uris: Vec<String>,
    /// Domains whose users may sign in.
    pub domain_ids: Vec<DomainId>,
}

/// A change of some of an app's settings: what it does not name stays as the log has it
/// when the change is decided, so two admins changing two things both keep theirs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppChange {
    /// The app.
    pub app_id: AppId,
    /// A new name.
    pub name: Option<String>,
    /// New redirect URIs.
    pub redirect_uris: Option<Vec<String>>,
    /// New post-logout redirect URIs.
    pub post_logout_redirect_uris: Option<Vec<String>>,
    /// New domains.
    pub domain_ids: Option<Vec<DomainId>>,
    /// A new algorithm for its ID tokens.
    pub id_token_alg: Option<String>,
}

impl AppChange {
    /// A patch of `app_id` that changes nothing yet.
    pub fn of(app_id: AppId) -> Self {
        AppChange {
            app_id,
            name: None,
            redirect_uris: None,
            post_logout_redirect_uris: None,
            domain_ids: None,
            id_token_alg: None,
        }
    }

    /// The change this patch makes to an app whose settings are `now`.
    pub fn over(&self, now: &AppSettings) -> AppChanged {
        AppChanged {
            app_id: self.app_id,
            name: self.name.clone().unwrap_or_else(|| now.name.clone()),
            redirect_uris: self
                .redirect_uris
                .clone()
                .unwrap_or_else(|| now.redirect_uris.clone()),
            post_logout_redirect_uris: self
                .post_logout_redirect_uris
                .clone()
                .unwrap_or_else(|| now.post_logout_redirect_uris.clone()),
            domain_ids: self
                .domain_ids
                .clone()
                .unwrap_or_else(|| now.domain_ids.clone()),
            id_token_alg: self.id_token_alg.clone(),
        }
    }
}

/// What provider decisions know.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProviderState {
    /// Every app ever registered.
    pub apps: BTreeMap<AppId, AppFacts>,
    /// The signing key in force for each algorithm (`ES256`, `RS256`): its `kid`.
    pub signing_keys: BTreeMap<String, String>,
    /// Every key ever added.
    pub keys: std::collections::BTreeSet<String>,
    /// Per algorithm, the key that signs until a staged key takes over, and when.
    pub handing_over: BTreeMap<String, (String, chrono::DateTime<chrono::Utc>)>,
}

/// Folds one event of the provider's stream.
pub fn evolve(mut s: ProviderState, e: &Event) -> ProviderState {
    match e {
        Event::AppRegistered(e) => {
            s.apps.insert(
                e.app_id,
                AppFacts {
                    client_id: e.client_id.clone(),
                    client_type: e.client_type,
                    removed: false,
                    settings: AppSettings {
                        name: e.name.clone(),
                        redirect_uris: e.redirect_uris.clone(),
                        post_logout_redirect_uris: e.post_logout_redirect_uris.clone(),
                        domain_ids: e.domain_ids.clone(),
                    },
                },
            );
        }
        Event::AppChanged(e) => {
            if let Some(a) = s.apps.get_mut(&e.app_id) {
                a.settings = AppSettings {
                    name: e.name.clone(),
                    redirect_uris: e.redirect_uris.clone(),
                    post_logout_redirect_uris: e.post_logout_redirect_uris.clone(),
                    domain_ids: e.domain_ids.clone(),
                };
            }
        }
        Event::AppRemoved(e) => {
            if let Some(a) = s.apps.get_mut(&e.app_id) {
                a.removed = true;
            }
        }
        Event::SigningKeyAdded(e) => {
            s.keys.insert(e.kid.clone());
            s.signing_keys.insert(e.alg.clone(), e.kid.clone());
        }
        Event::SigningKeyRetired(e) => {
            s.signing_keys.retain(|_, kid| *kid != e.kid);
            // Retired at once (its staged successor's handover comes after, in the
            // append that stages one): nothing is handed over from it any more.
            s.handing_over.retain(|_, (from, _)| *from != e.kid);
        }
        Event::SigningKeyHandover(e) => {
            let alg = s
                .signing_keys
                .iter()
                .find(|(_, kid)| **kid == e.to)
                .map(|(alg, _)| alg.clone());
            match (alg, &e.from) {
                (Some(alg), Some(from)) => {
                    s.handing_over.insert(alg, (from.clone(), e.at));
                }
                (Some(alg), None) => {
                    s.handing_over.remove(&alg);
                }
                _ => {}
            }
        }
        _ => {}
    }
    s
}

/// A command on the provider.
#[derive(Clone, Debug, PartialEq)]
pub enum ProviderCommand {
    /// Register an app.
    Register(AppRegistered),
    /// Change some of an app's settings.
    Change(AppChange),
    /// Give a confidential app a new secret (its hash).
    RotateSecret {
        /// The app.
        app_id: AppId,
        /// SHA-256 of the new secret.
        secret_hash: Hash,
    },
    /// Remove an app.
    Remove(AppId),
    /// Put a new signing key in force for its algorithm, at once or from `signs_from`; the
    /// one in force for that algorithm signs until then and verifies until `verify_until`.
    AddSigningKey {
        /// The key.
        key: SigningKeyAdded,
        /// Tokens the retired key signed stay verifiable until then.
        verify_until: chrono::DateTime<chrono::Utc>,
        /// When the new key takes over signing (`None`: at once, as after a compromise).
        signs_from: Option<chrono::DateTime<chrono::Utc>>,
        /// When this is decided.
        at: chrono::DateTime<chrono::Utc>,
    },
}

/// Whether `uri` may be a redirect URI: absolute, `https`, or `http` on a loopback host
/// (RFC 8252 §7.3), no fragment (RFC 6749 §3.1.2), no whitespace, at most 2,000 bytes.
pub fn redirect_uri_ok(uri: &str) -> bool {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return false;
    };
    let host_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..host_end];
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    let scheme_ok = scheme == "https" || (scheme == "http" && loopback);
    scheme_ok
        && !host.is_empty()
        && !authority.contains('@')
        && !uri.contains('#')
        && !uri.chars().any(|c| c.is_whitespace())
        && super::plain_text(uri)
        && uri.len() <= 2000
}

fn check_app(
    name: &str,
    redirect_uris: &[String],
    post_logout: &[String],
    domain_ids: &[DomainId],
) -> Result<(), Rejection> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(invalid("name", "1 to 200 characters"));
    }
    // Shown to users on the sign-in pages: no character that could make it read as
    // another app's name.
    if !super::plain_text(name) {
        return Err(invalid(
            "name",
            "no control or bidirectional-override characters",
        ));
    }
    if redirect_uris.is_empty() || redirect_uris.len() > 20 {
        return Err(invalid("redirect_uris", "1 to 20 URIs"));
    }
    if let Some(bad) = redirect_uris.iter().find(|u| !redirect_uri_ok(u)) {
        return Err(invalid(
            "redirect_uris",
            format!("{bad:?}: an absolute https URI (http only on localhost), without a fragment"),
        ));
    }
    if post_logout.len() > 20 {
        return Err(invalid("post_logout_redirect_uris", "at most 20 URIs"));
    }
    if let Some(bad) = post_logout.iter().find(|u| !redirect_uri_ok(u)) {
        return Err(invalid(
            "post_logout_redirect_uris",
            format!("{bad:?}: an absolute https URI (http only on localhost), without a fragment"),
        ));
    }
    if domain_ids.is_empty() || domain_ids.len() > 100 {
        return Err(invalid(
            "domain_ids",
            "1 to 100 domains whose users may sign in",
        ));
    }
    Ok(())
}

/// Whether `change` may be made, as far as it alone tells: the caller can check before it
/// makes a signing key for the algorithm it names.
pub fn check_change(change: &AppChanged) -> Result<(), Rejection> {
    check_app(
        &change.name,
        &change.redirect_uris,
        &change.post_logout_redirect_uris,
        &change.domain_ids,
    )?;
    check_alg(change.id_token_alg.as_deref())
}

/// The ID tokens' algorithms on offer (discovery lists both).
fn check_alg(alg: Option<&str>) -> Result<(), Rejection> {
    match alg {
        None | Some("ES256" | "RS256") => Ok(()),
        Some(_) => Err(invalid("id_token_signed_response_alg", "ES256 or RS256")),
    }
}

fn live(s: &ProviderState, app: AppId) -> Result<&AppFacts, Rejection> {
    s.apps
        .get(&app)
        .filter(|a| !a.removed)
        .ok_or(Rejection::NotFound("app"))
}

/// Whether `app` may be registered, as far as it alone tells (names, addresses, algorithm,
/// secret): the caller can check before it makes anything for the app.
pub fn check_registration(app: &AppRegistered) -> Result<(), Rejection> {
    check_app(
        &app.name,
        &app.redirect_uris,
        &app.post_logout_redirect_uris,
        &app.domain_ids,
    )?;
    check_alg(Some(&app.id_token_alg))?;
    if (app.client_type == ClientType::Confidential) != app.secret_hash.is_some() {
        return Err(invalid(
            "type",
            "a confidential app has a secret, a public one none",
        ));
    }
    Ok(())
}

/// Decides a command.
pub fn decide(s: &ProviderState, c: ProviderCommand) -> Result<Vec<Event>, Rejection> {
    match c {
        ProviderCommand::Register(app) => {
            if s.apps.contains_key(&app.app_id)
                || s.apps.values().any(|a| a.client_id == app.client_id)
            {
                return Err(Rejection::AlreadyExists("app"));
            }
            check_registration(&app)?;
            Ok(vec![app.into()])
        }
        ProviderCommand::Change(patch) => {
            let change = patch.over(&live(s, patch.app_id)?.settings);
            check_change(&change)?;
            Ok(vec![change.into()])
        }
        ProviderCommand::RotateSecret {
            app_id,
            secret_hash,
        } => {
            if live(s, app_id)?.client_type != ClientType::Confidential {
                return Err(Rejection::Conflict("a public app has no secret".into()));
            }
            Ok(vec![AppSecretRotated {
                app_id,
                secret_hash,
            }
            .into()])
        }
        ProviderCommand::Remove(app_id) => {
            live(s, app_id)?;
            Ok(vec![AppRemoved { app_id }.into()])
        }
        ProviderCommand::AddSigningKey {
            key,
            verify_until,
            signs_from,
            at: now,
        } => {
            if s.keys.contains(&key.kid) {
                return Err(Rejection::AlreadyExists("signing key"));
            }
            if !matches!(key.alg.as_str(), "ES256" | "RS256") {
                return Err(invalid("alg", "ES256 or RS256"));
            }
            if signs_from.is_some_and(|t| t > verify_until) {
                // The retired key would leave the JWKS while it still signs.
                return Err(invalid(
                    "verify_until",
                    "not before the new key takes over signing",
                ));
            }
            let current = s.signing_keys.get(&key.alg);
            let mut events: Vec<Event> = Vec::new();
            if let Some(current) = current {
                events.push(
                    SigningKeyRetired {
                        kid: current.clone(),
                        verify_until,
                    }
                    .into(),
                );
            }
            // At once, while a staged key waits for its moment: the key still signing until
            // then stops too, or a key replaced for fear of its compromise would verify
            // tokens until the handover's overlap ends.
            if let Some((from, until)) = s.handing_over.get(&key.alg) {
                if signs_from.is_none() && now < *until && current != Some(from) {
                    events.push(
                        SigningKeyRetired {
                            kid: from.clone(),
                            verify_until,
                        }
                        .into(),
                    );
                }
            }
            let to = key.kid.clone();
            events.push(key.into());
            if let Some(at) = signs_from {
                events.push(
                    SigningKeyHandover {
                        from: current.cloned(),
                        to,
                        at,
                    }
                    .into(),
                );
            }
            Ok(events)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris() {
        for ok in [
            "https://app.contoso.com/cb",
            "https://app.contoso.com:8443/oidc/callback?x=1",
            "http://localhost:3000/cb",
            "http://127.0.0.1/cb",
            "http://[::1]:8080/cb",
        ] {
            assert!(redirect_uri_ok(ok), "{ok}");
        }
        for bad in [
            "http://app.contoso.com/cb",
            "https://app.contoso.com/cb#frag",
            "app.contoso.com/cb",
            "https:///cb",
            "javascript://alert(1)",
            "https://user@evil.com/cb",
            "https://app.contoso.com/c b",
            "http://localhost.evil.com/cb",
            "https://app.contoso.com/\u{202e}bc",
        ] {
            assert!(!redirect_uri_ok(bad), "{bad}");
        }
    }

    fn app(n: u128, client_type: ClientType) -> AppRegistered {
        AppRegistered {
            app_id: AppId(uuid::Uuid::from_u128(n)),
            client_id: format!("client-{n}"),
            name: "Payroll".into(),
            redirect_uris: vec!["https://payroll.contoso.com/cb".into()],
            post_logout_redirect_uris: vec![],
            client_type,
            domain_ids: vec![DomainId(uuid::Uuid::from_u128(1))],
            id_token_alg: "ES256".into(),
            secret_hash: (client_type == ClientType::Confidential).then_some(Hash([1; 32])),
        }
    }

    #[test]
    fn two_changes_of_different_settings_keep_both() {
        let registered = app(1, ClientType::Confidential);
        let s = evolve(ProviderState::default(), &registered.clone().into());
        let id = registered.app_id;
        // Both asked for against the app as registered; the second is decided after the
        // first landed, and names only its own setting.
        let renamed = AppChange {
            name: Some("Payroll (EU)".into()),
            ..AppChange::of(id)
        };
        let moved = AppChange {
            redirect_uris: Some(vec!["https://payroll.contoso.eu/cb".into()]),
            ..AppChange::of(id)
        };
        let s = decide(&s, ProviderCommand::Change(renamed))
            .unwrap_or_default()
            .iter()
            .fold(s, evolve);
        let events = decide(&s, ProviderCommand::Change(moved)).unwrap_or_default();
        let [Event::AppChanged(change)] = &events[..] else {
            panic!("{events:?}");
        };
        assert_eq!(change.name, "Payroll (EU)");
        assert_eq!(change.redirect_uris, ["https://payroll.contoso.eu/cb"]);
        assert_eq!(change.domain_ids, registered.domain_ids);
        assert_eq!(change.id_token_alg, None, "the algorithm only when named");
        // What the merge makes is checked: a patch cannot leave an app without domains.
        let emptied = AppChange {
            domain_ids: Some(vec![]),
            ..AppChange::of(id)
        };
        assert!(matches!(
            decide(&s, ProviderCommand::Change(emptied)),
            Err(Rejection::Invalid {
                field: "domain_ids",
                ..
            })
        ));
        let unknown = AppChange {
            name: Some("x".into()),
            ..AppChange::of(AppId(uuid::Uuid::from_u128(9)))
        };
        assert!(matches!(
            decide(&s, ProviderCommand::Change(unknown)),
            Err(Rejection::NotFound("app"))
        ));
    }

    #[test]
    fn apps_are_checked_and_secrets_rotate_only_for_confidential_ones() {
        let s = ProviderState::default();
        let events = decide(
            &s,
            ProviderCommand::Register(app(1, ClientType::Confidential)),
        )
        .unwrap_or_default();
        assert_eq!(events.len(), 1);
        let s = events.iter().fold(s, evolve);
        assert!(matches!(
            decide(&s, ProviderCommand::Register(app(1, ClientType::Public))),
            Err(Rejection::AlreadyExists("app"))
        ));
        let mut no_domain = app(2, ClientType::Public);
        no_domain.domain_ids.clear();
        assert!(matches!(
            decide(&s, ProviderCommand::Register(no_domain)),
            Err(Rejection::Invalid {
                field: "domain_ids",
                ..
            })
        ));
        let mut spoofing = app(5, ClientType::Public);
        spoofing.name = "Pay\u{202e}llor".into();
        assert!(matches!(
            decide(&s, ProviderCommand::Register(spoofing)),
            Err(Rejection::Invalid { field: "name", .. })
        ));
        let mut public_with_secret = app(3, ClientType::Public);
        public_with_secret.secret_hash = Some(Hash([2; 32]));
        assert!(decide(&s, ProviderCommand::Register(public_with_secret)).is_err());
        let s = decide(&s, ProviderCommand::Register(app(4, ClientType::Public)))
            .unwrap_or_default()
            .iter()
            .fold(s, evolve);
        let rotate = |n| ProviderCommand::RotateSecret {
            app_id: AppId(uuid::Uuid::from_u128(n)),
            secret_hash: Hash([9; 32]),
        };
        assert!(decide(&s, rotate(1)).is_ok());
        assert!(matches!(decide(&s, rotate(4)), Err(Rejection::Conflict(_))));
        let s = decide(&s, ProviderCommand::Remove(AppId(uuid::Uuid::from_u128(1))))
            .unwrap_or_default()
            .iter()
            .fold(s, evolve);
        assert!(matches!(
            decide(&s, rotate(1)),
            Err(Rejection::NotFound("app"))
        ));
    }

    #[test]
    fn a_new_signing_key_retires_the_one_in_force() {
        let key = |kid: &str, alg: &str| SigningKeyAdded {
            kid: kid.into(),
            alg: alg.into(),
            public_jwk: "{}".into(),
            sealed_private_key: SealedSecret {
                key_id: DataKeyId(uuid::Uuid::from_u128(9)),
                nonce: [0; 24],
                ciphertext: vec![1],
            },
        };
        let until = chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap_or_default();
        let add_alg = |kid: &str, alg: &str| ProviderCommand::AddSigningKey {
            key: key(kid, alg),
            verify_until: until,
            signs_from: None,
            at: until - chrono::Duration::days(1),
        };
        let add = |kid: &str| add_alg(kid, "ES256");
        let s = ProviderState::default();
        let first = decide(&s, add("k1")).unwrap_or_default();
        assert_eq!(first.len(), 1);
        let s = first.iter().fold(s, evolve);
        let second = decide(&s, add("k2")).unwrap_or_default();
        assert_eq!(
            second.iter().map(Event::kind).collect::<Vec<_>>(),
            ["SigningKeyRetired", "SigningKeyAdded"]
        );
        let s = second.iter().fold(s, evolve);
        assert_eq!(s.signing_keys.get("ES256").map(String::as_str), Some("k2"));
        assert!(decide(&s, add("k1")).is_err());
        // Each algorithm has its own key in force: an RS256 key retires no ES256 key.
        let rsa = decide(&s, add_alg("r1", "RS256")).unwrap_or_default();
        assert_eq!(
            rsa.iter().map(Event::kind).collect::<Vec<_>>(),
            ["SigningKeyAdded"]
        );
        let s = rsa.iter().fold(s, evolve);
        assert_eq!(s.signing_keys.len(), 2);
        assert!(matches!(
            decide(&s, add_alg("h1", "HS256")),
            Err(Rejection::Invalid { field: "alg", .. })
        ));
        // Published ahead: the key in force hands over at `signs_from`, and stays
        // published past it.
        let at = until - chrono::Duration::hours(1);
        let ahead = |kid: &str, signs_from| ProviderCommand::AddSigningKey {
            key: key(kid, "ES256"),
            verify_until: until,
            signs_from: Some(signs_from),
            at: until - chrono::Duration::days(1),
        };
        let staged = decide(&s, ahead("k3", at)).unwrap_or_default();
        assert_eq!(
            staged.last(),
            Some(&Event::from(SigningKeyHandover {
                from: Some("k2".into()),
                to: "k3".into(),
                at,
            }))
        );
        assert!(matches!(
            decide(&s, ahead("k3", until + chrono::Duration::seconds(1))),
            Err(Rejection::Invalid {
                field: "verify_until",
                ..
            })
        ));
        // Replaced at once before the handover (a compromise): the key still signing is
        // retired too, not left published until the handover's overlap ends. After the
        // handover it has stopped already, and nothing more is said of it.
        let s = staged.iter().fold(s, evolve);
        let kinds_and_kids = |events: Vec<Event>| {
            events
                .iter()
                .map(|e| match e {
                    Event::SigningKeyRetired(r) => format!("retired {}", r.kid),
                    Event::SigningKeyAdded(a) => format!("added {}", a.kid),
                    other => other.kind().to_owned(),
                })
                .collect::<Vec<_>>()
        };
        let now = |at| ProviderCommand::AddSigningKey {
            key: key("k4", "ES256"),
            verify_until: until,
            signs_from: None,
            at,
        };
        let before = at - chrono::Duration::minutes(1);
        let emergency = decide(&s, now(before)).unwrap_or_default();
        assert_eq!(
            kinds_and_kids(emergency.clone()),
            ["retired k3", "retired k2", "added k4"]
        );
        // Once retired, the key handing over is not retired again by a later rotation.
        let after = emergency.iter().fold(s.clone(), evolve);
        let again = ProviderCommand::AddSigningKey {
            key: key("k5", "ES256"),
            verify_until: until,
            signs_from: None,
            at: before,
        };
        assert_eq!(
            kinds_and_kids(decide(&after, again).unwrap_or_default()),
            ["retired k4", "added k5"]
        );
        assert_eq!(
            kinds_and_kids(decide(&s, now(at)).unwrap_or_default()),
            ["retired k3", "added k4"]
        );
    }
}
