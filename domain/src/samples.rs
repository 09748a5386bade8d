//! Deterministic sample events of every kind, built from a few seed values.
//!
//! Used by the golden-encoding test (fixed seeds) and by property tests (random seeds), so
//! that one function covers the whole catalogue and a new kind cannot be forgotten: the
//! golden test fails when [`sample_event`] does not cover every entry of [`Event::KINDS`].

use crate::events::*;
use crate::ids::*;
use crate::types::*;
use uuid::Uuid;

/// Seed values a sample is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleSeed {
    /// Used for ids and counters.
    pub number: u64,
    /// Used for names and messages.
    pub text: String,
    /// Used for flags.
    pub flag: bool,
    /// Used for opaque bytes (ciphertext, filler).
    pub bytes: Vec<u8>,
}

impl SampleSeed {
    /// The seed of the golden fixtures.
    pub fn golden() -> Self {
        SampleSeed {
            number: 0x0123_4567_89ab_cdef,
            text: "Ada Lovelace".to_owned(),
            flag: true,
            bytes: vec![0xde, 0xad, 0xbe, 0xef],
        }
    }

    /// The uuid this seed gives for `salt` (samples use fixed salts per field).
    pub fn uuid(&self, salt: u128) -> Uuid {
        Uuid::from_u128((u128::from(self.number) << 16) ^ salt)
    }

    fn sealed(&self) -> SealedSecret {
        SealedSecret {
            key_id: DataKeyId(self.uuid(7)),
            nonce: [self.number as u8; 24],
            ciphertext: self.bytes.clone(),
        }
    }

    fn attributes(&self) -> UserAttributes {
        UserAttributes {
            user_principal_name: format!("{}@contoso.onmicrosoft.com", self.number),
            display_name: self.text.clone(),
            mail: self.flag.then(|| format!("{}@contoso.com", self.number)),
            given_name: Some(self.text.clone()),
            surname: None,
            account_enabled: self.flag,
        }
    }

    fn settings(&self) -> DomainSettings {
        DomainSettings {
            auto_password_change_days: self.flag.then_some((self.number % 365) as u16 + 1),
            removal_behavior: RemovalBehavior::Delete,
            sync_group: GroupRef::named(&self.text),
            rotation_group: GroupRef {
                display_name: DEFAULT_ROTATION_GROUP.to_owned(),
                object_id: Some(self.uuid(9).to_string()),
            },
            ..DomainSettings::default()
        }
    }

    fn sso(&self) -> SsoSettings {
        SsoSettings {
            enabled: self.flag,
            method: if self.flag {
                SsoMethod::PasswordAndSecondFactor
            } else {
                SsoMethod::Passwordless
            },
        }
    }
}

/// The sample of the `index`-th kind of [`Event::KINDS`], or `None` past the end.
pub fn sample_event(index: usize, s: &SampleSeed) -> Option<Event> {
    let rotation_id = RotationId(s.uuid(1));
    let key_write_id = KeyWriteId(s.uuid(2));
    let run_id = SyncRunId(s.uuid(3));
    let key_id = KeyId(format!("KEY-{}", s.number % 10_000));
    let text = s.text.clone();
    let reason = [
        LeaveReason::LeftGroup,
        LeaveReason::DeletedInEntra,
        LeaveReason::DisabledInEntra,
    ][(s.number % 3) as usize];
    let e: Event = match Event::KINDS.get(index)? {
        &"DomainRegistered" => DomainRegistered {
            domain_id: DomainId(s.uuid(4)),
            name: format!("{}.onmicrosoft.com", s.number),
            settings: s.settings(),
        }
        .into(),
        &"DomainSettingsChanged" => DomainSettingsChanged {
            settings: s.settings(),
        }
        .into(),
        &"DomainCredentialsSet" => DomainCredentialsSet {
            tenant_id: s.uuid(5).to_string(),
            client_id: s.uuid(6).to_string(),
            client_secret: s.sealed(),
        }
        .into(),
        &"DomainCredentialsRemoved" => DomainCredentialsRemoved {}.into(),
        &"SsoDefaultsChanged" => SsoDefaultsChanged { sso: s.sso() }.into(),
        &"DomainRemoved" => DomainRemoved {}.into(),
        &"SyncGroupsResolved" => SyncGroupsResolved {
            sync_group_id: s.uuid(10).to_string(),
            rotation_group_id: s.uuid(11).to_string(),
        }
        .into(),
        &"SyncRunStarted" => SyncRunStarted {
            run_id,
            trigger: if s.flag {
                SyncTrigger::Manual
            } else {
                SyncTrigger::Scheduled
            },
            dry_run: !s.flag,
            full: s.flag,
        }
        .into(),
        &"SyncRunCompleted" => SyncRunCompleted {
            run_id,
            counters: SyncCounters {
                added: s.number as u32,
                changed: 2,
                left: 3,
                deleted: 4,
                imported: 5,
                removed: 6,
                unchanged: 7,
            },
            full: s.flag.then_some(s.number.is_multiple_of(2)),
        }
        .into(),
        &"SyncRunFailed" => SyncRunFailed {
            run_id,
            error: text,
            graph_code: s.flag.then(|| "Authorization_RequestDenied".to_owned()),
            full: s.flag.then_some(s.number.is_multiple_of(3)),
        }
        .into(),
        &"SyncQuarantined" => SyncQuarantined {
            run_id,
            held_removals: vec![UserId(s.uuid(12)), UserId(s.uuid(13))],
            domain_users: s.number as u32,
        }
        .into(),
        &"SyncQuarantineApproved" => SyncQuarantineApproved { run_id }.into(),
        &"SyncQuarantineApplied" => SyncQuarantineApplied { run_id }.into(),
        &"DeltaCheckpointed" => DeltaCheckpointed {
            run_id,
            groups_delta_link: format!(
                "https://graph.example/v1.0/groups/delta?$deltatoken={}",
                s.number
            ),
            users_delta_link: format!(
                "https://graph.example/v1.0/users/delta?$deltatoken={}",
                s.number
            ),
            recheck: vec![
                Recheck {
                    external_id: s.uuid(14).to_string(),
                    claim: GraphClaim::SyncMember(false),
                    since: at(s.number),
                },
                Recheck {
                    external_id: s.uuid(15).to_string(),
                    claim: GraphClaim::Deleted,
                    since: at(s.number),
                },
                Recheck {
                    external_id: s.uuid(16).to_string(),
                    claim: GraphClaim::Disabled,
                    since: at(s.number),
                },
            ],
        }
        .into(),
        &"UserDiscovered" => UserDiscovered {
            user_id: UserId(s.uuid(14)),
            domain_id: DomainId(s.uuid(4)),
            external_id: s.uuid(15).to_string(),
            attributes: s.attributes(),
        }
        .into(),
        &"UserAttributesChanged" => UserAttributesChanged {
            attributes: s.attributes(),
        }
        .into(),
        &"UserImported" => UserImported { sso: s.sso() }.into(),
        &"MemberLeftSyncGroup" => MemberLeftSyncGroup { reason }.into(),
        &"MemberRejoinedSyncGroup" => MemberRejoinedSyncGroup {}.into(),
        &"UserKept" => UserKept { reason }.into(),
        &"UserDeactivated" => UserDeactivated {
            reason: s.flag.then_some(reason),
        }
        .into(),
        &"UserDeleted" => UserDeleted {
            reason: s.flag.then_some(reason),
        }
        .into(),
        &"UserReactivated" => UserReactivated {}.into(),
        &"RotationGroupJoined" => RotationGroupJoined {}.into(),
        &"RotationGroupLeft" => RotationGroupLeft {}.into(),
        &"UserSsoOverrideSet" => UserSsoOverrideSet {
            sso: s.flag.then(|| s.sso()),
        }
        .into(),
        &"KeyAssigned" => KeyAssigned { key_id }.into(),
        &"KeyUnassigned" => KeyUnassigned { key_id }.into(),
        &"InviteSent" => InviteSent {
            to: format!("{}@contoso.com", s.number),
            via: "outbox".to_owned(),
            link: s.flag.then(|| EnrolmentLink {
                link_id: LinkId(s.uuid(18)),
                token_hash: Hash([s.number as u8; 32]),
                expires_at: at(s.number),
            }),
        }
        .into(),
        &"RotationStarted" => RotationStarted {
            rotation_id,
            // `% 5 == 4` leaves the golden seed's reason (and its bytes) as they were.
            reason: if s.number % 5 == 4 {
                RotationReason::Reassert
            } else {
                [
                    RotationReason::Initial,
                    RotationReason::Scheduled,
                    RotationReason::Manual,
                    RotationReason::AfterReveal,
                ][(s.number % 4) as usize]
            },
            sealed_password: s.sealed(),
        }
        .into(),
        &"RotationRetried" => RotationRetried {
            rotation_id,
            attempt: s.number as u32,
            error: text,
        }
        .into(),
        &"RotationSucceeded" => RotationSucceeded { rotation_id }.into(),
        &"RotationFailed" => RotationFailed {
            rotation_id,
            retryable: s.flag,
            graph_code: Some("Request_BadRequest".to_owned()),
            error: text,
        }
        .into(),
        &"KeyWriteQueued" => KeyWriteQueued {
            key_write_id,
            rotation_id,
            key_id,
        }
        .into(),
        &"KeyWriteDelivered" => KeyWriteDelivered { key_write_id }.into(),
        &"KeyWriteConfirmed" => KeyWriteConfirmed { key_write_id }.into(),
        &"KeyWriteWrittenLate" => KeyWriteWrittenLate { key_write_id }.into(),
        &"KeyWriteFailed" => KeyWriteFailed {
            key_write_id,
            detail: text,
        }
        .into(),
        &"KeyWriteSuperseded" => KeyWriteSuperseded {
            key_write_id,
            reason: match s.number % 3 {
                0 => SupersedeReason::NewerRotation {
                    rotation_id: RotationId(s.uuid(16)),
                },
                1 => SupersedeReason::KeyUnassigned {
                    key_id: key_id.clone(),
                },
                _ => SupersedeReason::KeyReassigned {
                    from: key_id.clone(),
                    to: KeyId(format!("{}-next", key_id.0)),
                },
            },
        }
        .into(),
        &"PasswordRevealed" => PasswordRevealed {
            rotation_id,
            reason: text,
        }
        .into(),
        &"TokenIssued" => TokenIssued {
            token_id: TokenId(s.uuid(17)),
            role: [Role::Admin, Role::Auditor, Role::Agent][(s.number % 3) as usize],
            name: text,
            key_ids: vec![key_id],
            token_hash: Hash([s.number as u8; 32]),
        }
        .into(),
        &"TokenRevoked" => TokenRevoked {
            token_id: TokenId(s.uuid(17)),
        }
        .into(),
        &"RotationInterrupted" => RotationInterrupted { rotation_id }.into(),
        &"RotationRequested" => RotationRequested {
            reason: [RotationReason::Manual, RotationReason::Scheduled][(s.number % 2) as usize],
        }
        .into(),
        &"EnrolmentStarted" => EnrolmentStarted {
            link_id: LinkId(s.uuid(18)),
        }
        .into(),
        &"EnrolmentCompleted" => EnrolmentCompleted {
            link_id: LinkId(s.uuid(18)),
            method: s.sso().method,
        }
        .into(),
        &"PasskeyRegistered" => PasskeyRegistered {
            credential_id: format!("cred-{}", s.number),
            name: text,
            sealed_public_key: s.sealed(),
            algorithm: [-7, -8, -257][(s.number % 3) as usize],
            attachment: s.flag.then_some(Attachment::CrossPlatform),
            sign_count: s.number as u32,
        }
        .into(),
        &"PasskeyRenamed" => PasskeyRenamed {
            credential_id: format!("cred-{}", s.number),
            name: text,
        }
        .into(),
        &"PasskeyRemoved" => PasskeyRemoved {
            credential_id: format!("cred-{}", s.number),
        }
        .into(),
        &"TotpEnrolled" => TotpEnrolled {
            sealed_seed: s.sealed(),
            step: s.number,
        }
        .into(),
        &"TotpRemoved" => TotpRemoved {}.into(),
        &"SignInSucceeded" => SignInSucceeded {
            method: s.sso().method,
            amr: vec!["hwk".into(), "mfa".into()],
            app: s.flag.then(|| text.clone()),
            passkey: s
                .flag
                .then(|| (format!("cred-{}", s.number), s.number as u32)),
            totp_step: (!s.flag).then_some(s.number),
            at: at(s.number),
        }
        .into(),
        &"SignInFailed" => SignInFailed {
            factor: [Factor::Passkey, Factor::Entra, Factor::Totp][(s.number % 3) as usize],
            reason: if s.flag {
                SignInFailure::BadCredential(text)
            } else {
                SignInFailure::ReusedCode
            },
            app: None,
            at: at(s.number),
        }
        .into(),
        &"SignInUnlocked" => SignInUnlocked {
            factors: vec![Factor::Totp, Factor::Passkey],
        }
        .into(),
        &"SignInLocked" => SignInLocked {
            factor: Factor::Totp,
            until: at(s.number),
        }
        .into(),
        &"WorkstationCertificateIssued" => WorkstationCertificateIssued {
            certificate_id: hex::encode([s.number as u8; 32]),
            certificate_der: vec![0x30, 0x82, s.number as u8],
            sealed_private_key: s.sealed(),
            not_before: at(s.number),
            not_after: at(s.number + 86_400),
        }
        .into(),
        &"WorkstationCertificateRetired" => WorkstationCertificateRetired {
            certificate_id: hex::encode([s.number as u8; 32]),
        }
        .into(),
        &"AppRegistered" => AppRegistered {
            app_id: AppId(s.uuid(19)),
            client_id: s.uuid(20).to_string(),
            name: text,
            redirect_uris: vec![format!("https://app{}.contoso.com/cb", s.number)],
            post_logout_redirect_uris: vec![],
            client_type: if s.flag {
                ClientType::Confidential
            } else {
                ClientType::Public
            },
            domain_ids: vec![DomainId(s.uuid(4))],
            id_token_alg: "ES256".into(),
            secret_hash: s.flag.then_some(Hash([s.number as u8; 32])),
        }
        .into(),
        &"AppChanged" => AppChanged {
            app_id: AppId(s.uuid(19)),
            name: text,
            redirect_uris: vec![format!("https://app{}.contoso.com/cb", s.number)],
            post_logout_redirect_uris: vec![format!("https://app{}.contoso.com/", s.number)],
            domain_ids: vec![DomainId(s.uuid(4))],
            id_token_alg: s.flag.then(|| "RS256".into()),
        }
        .into(),
        &"AppSecretRotated" => AppSecretRotated {
            app_id: AppId(s.uuid(19)),
            secret_hash: Hash([s.number as u8; 32]),
        }
        .into(),
        &"AppRemoved" => AppRemoved {
            app_id: AppId(s.uuid(19)),
        }
        .into(),
        &"SigningKeyAdded" => SigningKeyAdded {
            kid: format!("k{}", s.number),
            alg: "ES256".into(),
            public_jwk: text,
            sealed_private_key: s.sealed(),
        }
        .into(),
        &"SigningKeyRetired" => SigningKeyRetired {
            kid: format!("k{}", s.number),
            verify_until: at(s.number),
        }
        .into(),
        &"SigningKeyHandover" => SigningKeyHandover {
            from: s.flag.then(|| format!("k{}", s.number)),
            to: text,
            at: at(s.number),
        }
        .into(),
        &"AppTokensIssued" => AppTokensIssued {
            app_id: AppId(s.uuid(19)),
            grant: "authorization_code".into(),
            sid: s.uuid(21).to_string(),
            refresh: s.flag.then(|| RefreshIssued {
                family: s.uuid(22),
                token_hash: Hash([s.number as u8; 32]),
                grant: Some(TokenGrant {
                    scope: vec!["openid".into(), "offline_access".into()],
                    nonce: Some(format!("n{}", s.number)),
                    auth_time: at(s.number),
                    amr: vec!["hwk".into()],
                    method: SsoMethod::Passwordless,
                }),
            }),
            at: at(s.number),
        }
        .into(),
        &"AppTokenRefused" => AppTokenRefused {
            app_id: AppId(s.uuid(19)),
            reason: text,
            revoked_family: s.flag.then(|| s.uuid(22)),
            at: at(s.number),
        }
        .into(),
        &"AppTokensRevoked" => AppTokensRevoked {
            app_id: AppId(s.uuid(19)),
            family: s.uuid(22),
            at: at(s.number),
        }
        .into(),
        &"FederatedDomainsSeen" => FederatedDomainsSeen {
            names: vec![format!("{}.example", s.number), text],
        }
        .into(),
        other => panic!("sample_event does not cover kind {other}"),
    };
    Some(e)
}

/// A time for samples: whole seconds, so every format round-trips it exactly.
fn at(number: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_700_000_000 + (number % 1_000_000) as i64, 0)
        .unwrap_or_default()
}
