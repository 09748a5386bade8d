//! Decisions on a domain stream.

use super::*;

/// What decisions about a domain need to know.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DomainState {
    /// A `DomainRegistered` was seen.
    pub registered: bool,
    /// A `DomainRemoved` was seen: nothing changes any more.
    pub removed: bool,
    /// Current settings.
    pub settings: DomainSettings,
    /// Credentials saved.
    pub has_credentials: bool,
    /// The saved tenant and client ids.
    pub app: Option<(String, String)>,
    /// SSO defaults.
    pub sso: SsoSettings,
    /// The workstation logon certificate in force (its fingerprint).
    pub workstation_certificate: Option<String>,
    /// Quarantined sync runs, each with whether its removals were approved.
    pub quarantined_runs: std::collections::BTreeMap<SyncRunId, bool>,
    /// Approved runs whose removals were all carried out.
    pub applied_runs: std::collections::BTreeSet<SyncRunId>,
    /// The tenant the domain's users were last synced from (the latest resolved groups').
    pub users_tenant: Option<String>,
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
        Event::WorkstationCertificateIssued(e) => {
            s.workstation_certificate = Some(e.certificate_id.clone())
        }
        Event::WorkstationCertificateRetired(e)
            if s.workstation_certificate.as_ref() == Some(&e.certificate_id) =>
        {
            s.workstation_certificate = None;
        }
        Event::SyncQuarantined(e) => {
            // A run's list comes in parts; a later part never undoes an approval.
            s.quarantined_runs.entry(e.run_id).or_insert(false);
        }
        Event::SyncQuarantineApplied(e) => {
            s.applied_runs.insert(e.run_id);
        }
        Event::SyncQuarantineApproved(e) => {
            s.quarantined_runs.insert(e.run_id, true);
        }
        Event::DomainRemoved(_) => {
            s.removed = true;
            s.has_credentials = false;
        }
        // The tenant a run just read the groups of: the latest, so a domain that moved
        // tenants before the rule keeps the one its users now come from.
        Event::SyncGroupsResolved(_) if s.app.is_some() => {
            s.users_tenant = s.app.as_ref().map(|(tenant, _)| tenant.clone());
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
        /// The settings in force.
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
        /// The tenant and client ids saved when the admin sent the secret: the secret is
        /// theirs, and is not saved for others that came meanwhile.
        for_app: Option<(String, String)>,
    },
    /// Save credentials (the secret already sealed).
    SetCredentials {
        /// Entra tenant id (a GUID).
        tenant_id: String,
        /// The app registration's client id (a GUID).
        client_id: String,
        /// Sealed client secret.
        client_secret: SealedSecret,
    },
    /// Remove credentials: sync and rotation stop.
    RemoveCredentials,
    /// Set the SSO settings users get at import.
    SetSsoDefaults(SsoSettings),
    /// Remove the domain.
    Remove,
    /// Give the domain a new workstation logon certificate, retiring the one in force.
    IssueWorkstationCertificate(WorkstationCertificateIssued),
    /// Apply the removals a quarantined sync run held back: approved once, by one admin.
    ApproveQuarantine(SyncRunId),
    /// Record that every removal of an approved run was carried out.
    FinishApproval(SyncRunId),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // A top-level label of digits alone makes an address, not a name.
        && name
            .rsplit('.')
            .next()
            .is_some_and(|tld| !tld.bytes().all(|b| b.is_ascii_digit()))
}

/// A GUID in its one canonical spelling (lower case, hyphenated), whatever form Entra's
/// portal or an admin gave it in (braces, `urn:uuid:`, capitals): it is put into token
/// URLs and compared with the issuer of Entra's ID tokens.
fn canonical_guid(s: &str) -> Option<String> {
    uuid::Uuid::parse_str(s)
        .ok()
        .map(|u| u.hyphenated().to_string())
}

/// Whether two tenant ids name one tenant, however each was spelled when saved.
pub fn same_tenant(a: &str, b: &str) -> bool {
    match (canonical_guid(a), canonical_guid(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// The shape of an app registration's client secret, checked before it is sealed: a
/// secret that is empty, padded or holds control characters can never authenticate, and a
/// worker would fail with it for ever.
pub fn client_secret_ok(secret: &str) -> Result<(), Rejection> {
    if secret.is_empty()
        || secret.len() > 1024
        || secret.trim() != secret
        || secret.chars().any(char::is_control)
    {
        return Err(invalid(
            "client_secret",
            "the app registration's secret as Entra shows it: 1 to 1024 characters, no spaces around it, no control characters",
        ));
    }
    Ok(())
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
            for_app,
        } => {
            validate_settings(&settings)?;
            let Some((tenant_id, client_id)) = s.app.clone() else {
                return Err(invalid(
                    "client_secret",
                    "the domain has no credentials to go with it; save tenant_id, client_id and client_secret first",
                ));
            };
            if for_app.as_ref() != Some(&(tenant_id.clone(), client_id.clone())) {
                return Err(Rejection::Conflict(
                    "the domain's credentials changed meanwhile; send the secret of the app now saved".into(),
                ));
            }
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
            let Some(tenant_id) = canonical_guid(&tenant_id) else {
                return Err(invalid("tenant_id", "a GUID"));
            };
            let Some(client_id) = canonical_guid(&client_id) else {
                return Err(invalid("client_id", "a GUID"));
            };
            // The users recorded are that tenant's people: read in another tenant, every
            // one of them would look deleted from Entra.
            if let Some(users_tenant) = &s.users_tenant {
                if !same_tenant(users_tenant, &tenant_id) {
                    return Err(invalid(
                        "tenant_id",
                        "the tenant this domain's users were synced from; add a new domain for another tenant",
                    ));
                }
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
        DomainCommand::IssueWorkstationCertificate(issued) => {
            if issued.certificate_der.is_empty() || issued.not_after <= issued.not_before {
                return Err(invalid(
                    "certificate",
                    "a certificate with a validity period",
                ));
            }
            if s.workstation_certificate.as_ref() == Some(&issued.certificate_id) {
                return Err(Rejection::AlreadyExists("workstation certificate"));
            }
            let mut events: Vec<Event> = Vec::new();
            if let Some(current) = &s.workstation_certificate {
                events.push(
                    WorkstationCertificateRetired {
                        certificate_id: current.clone(),
                    }
                    .into(),
                );
            }
            events.push(issued.into());
            events
        }
        DomainCommand::ApproveQuarantine(run_id) => match s.quarantined_runs.get(&run_id) {
            Some(false) => vec![SyncQuarantineApproved { run_id }.into()],
            Some(true) => return Err(Rejection::Conflict("the run was approved already".into())),
            None => return Err(Rejection::Conflict("the run is not quarantined".into())),
        },
        DomainCommand::FinishApproval(run_id) => {
            let approved = s.quarantined_runs.get(&run_id) == Some(&true);
            if !approved {
                return Err(Rejection::Conflict("the run is not approved".into()));
            }
            if s.applied_runs.contains(&run_id) {
                vec![]
            } else {
                vec![SyncQuarantineApplied { run_id }.into()]
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::spec::{given, DomainStream};
    use super::*;

    fn id() -> DomainId {
        DomainId(uuid::Uuid::from_u128(1))
    }

    fn registered() -> Event {
        DomainRegistered {
            domain_id: id(),
            name: "contoso.onmicrosoft.com".into(),
            settings: DomainSettings::default(),
        }
        .into()
    }

    fn register(name: &str, settings: DomainSettings) -> DomainCommand {
        DomainCommand::Register {
            domain_id: id(),
            name: name.into(),
            settings,
        }
    }

    fn sealed() -> SealedSecret {
        SealedSecret {
            key_id: DataKeyId(uuid::Uuid::from_u128(9)),
            nonce: [0; 24],
            ciphertext: vec![1, 2, 3],
        }
    }

    fn credentials(tenant: &str) -> DomainCommand {
        DomainCommand::SetCredentials {
            tenant_id: tenant.into(),
            client_id: uuid::Uuid::from_u128(6).to_string(),
            client_secret: sealed(),
        }
    }

    #[test]
    fn a_domain_is_registered_once_with_a_valid_name_and_settings() {
        given::<DomainStream>(&[])
            .when(register(
                "Contoso.onmicrosoft.com",
                DomainSettings::default(),
            ))
            .then_ok();
        given::<DomainStream>(&[])
            .when(register("not a name", DomainSettings::default()))
            .then_invalid("domain");
        let too_long = DomainSettings {
            auto_password_change_days: Some(366),
            ..DomainSettings::default()
        };
        given::<DomainStream>(&[])
            .when(register("contoso.com", too_long))
            .then_invalid("auto_password_change_days");
        let reveal_delay_past_a_year = DomainSettings {
            rotate_after_reveal_hours: 8761,
            ..DomainSettings::default()
        };
        given::<DomainStream>(&[])
            .when(register("contoso.com", reveal_delay_past_a_year))
            .then_invalid("rotate_after_reveal_hours");
        let mut terminal_escape = DomainSettings::default();
        terminal_escape.sync_group.display_name = "x\u{1b}[2J".into();
        given::<DomainStream>(&[])
            .when(register("contoso.com", terminal_escape))
            .then_invalid("sync_group");
        given::<DomainStream>(&[registered()])
            .when(register("contoso.com", DomainSettings::default()))
            .then_reject(Rejection::AlreadyExists("domain"));
    }

    #[test]
    fn changes_that_change_nothing_append_nothing() {
        let domain = given::<DomainStream>(&[registered()]);
        domain
            .when(DomainCommand::ChangeSettings(DomainSettings::default()))
            .then_nothing();
        domain.when(DomainCommand::RemoveCredentials).then_nothing();
    }

    #[test]
    fn credentials_are_checked_saved_and_removed() {
        let tenant = uuid::Uuid::from_u128(5).to_string();
        let set = given::<DomainStream>(&[registered()])
            .when(credentials(&tenant))
            .then_ok();
        given::<DomainStream>(&[registered()])
            .when(credentials("contoso"))
            .then_invalid("tenant_id");
        // Any spelling a GUID parses from is saved in the canonical one.
        let braced = format!("{{{}}}", tenant.to_uppercase());
        let saved = given::<DomainStream>(&[registered()])
            .when(credentials(&format!("urn:uuid:{tenant}")))
            .then_ok();
        assert!(matches!(&saved[0], Event::DomainCredentialsSet(c) if c.tenant_id == tenant));
        let saved = given::<DomainStream>(&[registered()])
            .when(credentials(&braced))
            .then_ok();
        assert!(matches!(&saved[0], Event::DomainCredentialsSet(c) if c.tenant_id == tenant));
        given::<DomainStream>(&[registered(), set[0].clone()])
            .when(DomainCommand::RemoveCredentials)
            .then([DomainCredentialsRemoved {}.into()]);
    }

    #[test]
    fn a_secret_sent_with_a_settings_change_is_saved_only_for_the_app_it_was_sent_for() {
        let tenant = uuid::Uuid::from_u128(5).to_string();
        let client = uuid::Uuid::from_u128(6).to_string();
        let set = given::<DomainStream>(&[registered()])
            .when(credentials(&tenant))
            .then_ok();
        let with = |for_app: (String, String)| DomainCommand::ChangeSettingsWithSecret {
            settings: DomainSettings::default(),
            client_secret: sealed(),
            for_app: Some(for_app),
        };
        let saved = given::<DomainStream>(&[registered(), set[0].clone()]);
        saved
            .when(with((tenant.clone(), client.clone())))
            .then([set[0].clone()]);
        // Another admin saved another app's credentials between the send and the decision.
        saved
            .when(with((tenant, uuid::Uuid::from_u128(7).to_string())))
            .then_conflict();
    }

    #[test]
    fn a_client_secret_is_checked_before_it_is_sealed() {
        assert!(client_secret_ok("Abc8Q~xyz.-_").is_ok());
        for bad in [
            "",
            " padded",
            "padded ",
            "nul\u{0}",
            "x".repeat(1025).as_str(),
        ] {
            assert_eq!(
                client_secret_ok(bad).map_err(|r| matches!(
                    r,
                    Rejection::Invalid {
                        field: "client_secret",
                        ..
                    }
                )),
                Err(true),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn domain_names_are_dns_names() {
        assert!(valid_name("contoso.onmicrosoft.com"));
        assert!(valid_name("xn--bcher-kva.example"));
        for bad in [
            "-a-.example",
            "a-.example",
            "123.456",
            "contoso",
            "a..b",
            "a_b.com",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn once_users_were_synced_the_tenant_stays_and_the_rest_may_change() {
        let tenant = uuid::Uuid::from_u128(5).to_string();
        let set = given::<DomainStream>(&[registered()])
            .when(credentials(&tenant))
            .then_ok();
        let resolved: Event = SyncGroupsResolved {
            sync_group_id: "g1".into(),
            rotation_group_id: "g2".into(),
        }
        .into();
        let synced = [registered(), set[0].clone(), resolved];
        let other = uuid::Uuid::from_u128(6).to_string();
        given::<DomainStream>(&synced)
            .when(credentials(&other))
            .then_invalid("tenant_id");
        // Nor after the credentials were removed, and the same tenant in capitals is one.
        let mut removed = synced.to_vec();
        removed.push(DomainCredentialsRemoved {}.into());
        given::<DomainStream>(&removed)
            .when(credentials(&other))
            .then_invalid("tenant_id");
        given::<DomainStream>(&removed)
            .when(credentials(&tenant.to_uppercase()))
            .then_ok();
        // Before any sync, a mistyped tenant is simply replaced.
        given::<DomainStream>(&[registered(), set[0].clone()])
            .when(credentials(&other))
            .then_ok();
    }

    #[test]
    fn a_new_workstation_certificate_retires_the_one_in_force() {
        let cert = |n: u8| WorkstationCertificateIssued {
            certificate_id: hex::encode([n; 32]),
            certificate_der: vec![0x30, n],
            sealed_private_key: SealedSecret {
                key_id: DataKeyId(uuid::Uuid::from_u128(9)),
                nonce: [0; 24],
                ciphertext: vec![n],
            },
            not_before: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default(),
            not_after: chrono::DateTime::from_timestamp(1_900_000_000, 0).unwrap_or_default(),
        };
        let first = given::<DomainStream>(&[registered()])
            .when(DomainCommand::IssueWorkstationCertificate(cert(1)))
            .then_ok();
        assert_eq!(first, vec![Event::from(cert(1))]);
        let both = given::<DomainStream>(&[registered(), first[0].clone()]);
        both.when(DomainCommand::IssueWorkstationCertificate(cert(2)))
            .then([
                WorkstationCertificateRetired {
                    certificate_id: hex::encode([1u8; 32]),
                }
                .into(),
                cert(2).into(),
            ]);
        both.when(DomainCommand::IssueWorkstationCertificate(cert(1)))
            .then_reject(Rejection::AlreadyExists("workstation certificate"));
        let mut backwards = cert(3);
        backwards.not_after = backwards.not_before;
        both.when(DomainCommand::IssueWorkstationCertificate(backwards))
            .then_invalid("certificate");
    }

    #[test]
    fn a_quarantined_run_is_approved_once() {
        let run = SyncRunId(uuid::Uuid::from_u128(7));
        let quarantined: Event = SyncQuarantined {
            run_id: run,
            held_removals: vec![UserId(uuid::Uuid::from_u128(8))],
            domain_users: 10,
        }
        .into();
        given::<DomainStream>(&[registered(), quarantined.clone()])
            .when(DomainCommand::ApproveQuarantine(run))
            .then([SyncQuarantineApproved { run_id: run }.into()]);
        given::<DomainStream>(&[
            registered(),
            quarantined,
            SyncQuarantineApproved { run_id: run }.into(),
        ])
        .when(DomainCommand::ApproveQuarantine(run))
        .then_reject(Rejection::Conflict("the run was approved already".into()));
        given::<DomainStream>(&[registered()])
            .when(DomainCommand::ApproveQuarantine(run))
            .then_reject(Rejection::Conflict("the run is not quarantined".into()));
    }

    #[test]
    fn an_approval_is_finished_once_and_a_later_part_of_the_list_does_not_undo_it() {
        let run = SyncRunId(uuid::Uuid::from_u128(7));
        let part = |n: u128| -> Event {
            SyncQuarantined {
                run_id: run,
                held_removals: vec![UserId(uuid::Uuid::from_u128(n))],
                domain_users: 10,
            }
            .into()
        };
        let approved = [
            registered(),
            part(8),
            SyncQuarantineApproved { run_id: run }.into(),
        ];
        given::<DomainStream>(&[registered(), part(8)])
            .when(DomainCommand::FinishApproval(run))
            .then_reject(Rejection::Conflict("the run is not approved".into()));
        given::<DomainStream>(&approved)
            .when(DomainCommand::FinishApproval(run))
            .then([SyncQuarantineApplied { run_id: run }.into()]);
        let mut finished = approved.to_vec();
        finished.push(SyncQuarantineApplied { run_id: run }.into());
        given::<DomainStream>(&finished)
            .when(DomainCommand::FinishApproval(run))
            .then_nothing();
        let mut more = approved.to_vec();
        more.push(part(9));
        given::<DomainStream>(&more)
            .when(DomainCommand::ApproveQuarantine(run))
            .then_reject(Rejection::Conflict("the run was approved already".into()));
    }

    #[test]
    fn a_removed_domain_takes_no_more_changes() {
        let tenant = uuid::Uuid::from_u128(5).to_string();
        given::<DomainStream>(&[registered(), DomainRemoved {}.into()])
            .when(credentials(&tenant))
            .then_reject(Rejection::DomainRemoved);
        given::<DomainStream>(&[])
            .when(DomainCommand::Remove)
            .then_reject(Rejection::NotFound("domain"));
    }
}
