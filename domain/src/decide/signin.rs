//! Enrolment and sign-in decisions on a user's stream: whether an enrolment link still
//! works, which methods a user may register and remove, and whether a sign-in attempt
//! succeeds — status, SSO settings, method, lockout, code reuse and counters are all
//! decided here, after the IO layer has checked the cryptography.

use super::user::{Status, UserState};
use super::*;
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;

/// Failures of one factor within [`FAILURE_WINDOW`] that lock it.
pub const FAILURES_TO_LOCK: usize = 5;
/// The window failures are counted in (5 minutes).
pub const FAILURE_WINDOW: Duration = Duration::minutes(5);
/// How long a factor's first lock lasts (15 minutes); each further lock before the user
/// signs in again lasts twice the one before, up to [`MAX_LOCK_FOR`].
pub const LOCK_FOR: Duration = Duration::minutes(15);
/// The longest lock (a day): guessing goes on at five tries a day, and the user whose
/// factor someone keeps locking is not shut out for longer than that after it stops.
pub const MAX_LOCK_FOR: Duration = Duration::hours(24);

/// How long a lock lasts after `earlier` locks of the factor since the user last signed
/// in: a guesser who waits each lock out gets ever fewer tries (about 40 in the first
/// day, then 5 a day, where a fixed lock would give 480 a day).
pub fn lock_for(earlier: u32) -> Duration {
    // 2^7 × 15 minutes is past a day already.
    (LOCK_FOR * 2i32.pow(earlier.min(7))).min(MAX_LOCK_FOR)
}
/// Passkeys one user may hold.
pub const MAX_PASSKEYS: usize = 10;

/// The latest enrolment link of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// The link.
    pub link_id: LinkId,
    /// It stops working then.
    pub expires_at: DateTime<Utc>,
    /// The user began enrolling with it.
    pub started: bool,
    /// Enrolment finished with it.
    pub used: bool,
}

/// A registered passkey, as decisions need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasskeyState {
    /// Signature counter last seen.
    pub sign_count: u32,
    /// Platform or security key, as registered.
    pub attachment: Option<Attachment>,
}

/// What sign-in decisions know of a user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignInState {
    /// The latest enrolment link (earlier ones are replaced).
    pub link: Option<LinkState>,
    /// Enrolment completed at least once.
    pub enrolled: bool,
    /// Passkeys by credential id (base64url).
    pub passkeys: BTreeMap<String, PasskeyState>,
    /// An authenticator app is set up.
    pub totp: bool,
    /// The newest authenticator-code step used.
    pub totp_last_step: Option<u64>,
    /// Recent failures per factor (at most [`FAILURES_TO_LOCK`] each).
    pub failures: BTreeMap<Factor, Vec<DateTime<Utc>>>,
    /// Locked factors and until when.
    pub locked_until: BTreeMap<Factor, DateTime<Utc>>,
    /// Locks of each factor since the user last signed in (see [`lock_for`]).
    pub locks: BTreeMap<Factor, u32>,
    /// When a failure that counts toward no lock (an attempt on a locked factor, a passkey
    /// that did not verify, a refusal for who the user is) was last recorded: one a minute
    /// is enough for the audit trail; more would let anyone grow a user's stream at will.
    pub uncounted_recorded_at: BTreeMap<Factor, DateTime<Utc>>,
}

/// Failures that count toward no lock are recorded at most this often, per factor.
pub const UNCOUNTED_RECORD_EVERY: Duration = Duration::minutes(1);

/// Whether `factor` is locked at `now`.
pub fn locked(s: &SignInState, factor: Factor, now: DateTime<Utc>) -> bool {
    s.locked_until.get(&factor).is_some_and(|u| now < *u)
}

/// Whether a failure is a guess the lock exists to stop. A refusal for who the user is (not
/// what they presented) is none, and neither is a passkey that did not verify: signatures
/// cannot be guessed, and anyone who knows a credential id could otherwise lock its owner
/// out with made-up assertions. Nor is an Entra sign-in of someone else: any account of
/// the tenant can type a colleague's name and sign in at Entra as itself. Nor an ID token
/// that does not validate: the password was checked (and guesses throttled) at Entra, and
/// whoever starts a sign-in holds its authorize URL and can spoil its nonce, so counting
/// it would let any colleague lock a user out. Nor a code used already: it matched, so it
/// was typed twice, not guessed. A passkey whose counter went back did sign, and counts.
pub fn counts_towards_lock(reason: &SignInFailure) -> bool {
    !matches!(
        reason,
        SignInFailure::Locked
            | SignInFailure::NotActive
            | SignInFailure::SsoOff
            | SignInFailure::MethodNotAllowed
            | SignInFailure::NotEnrolled
            | SignInFailure::ReusedCode
            | SignInFailure::BadCredential(_)
            | SignInFailure::UnknownCredential
            | SignInFailure::EntraUserMismatch
            | SignInFailure::EntraRefused(_)
    )
}

/// Folds the sign-in events of a user's stream.
pub fn evolve(s: &mut SignInState, e: &Event) {
    match e {
        Event::InviteSent(e) => {
            if let Some(link) = &e.link {
                s.link = Some(LinkState {
                    link_id: link.link_id,
                    expires_at: link.expires_at,
                    started: false,
                    used: false,
                });
            }
        }
        Event::EnrolmentStarted(e) => {
            if let Some(l) = s.link.as_mut().filter(|l| l.link_id == e.link_id) {
                l.started = true;
            }
        }
        Event::EnrolmentCompleted(e) => {
            s.enrolled = true;
            if let Some(l) = s.link.as_mut().filter(|l| l.link_id == e.link_id) {
                l.used = true;
            }
        }
        Event::PasskeyRegistered(e) => {
            s.passkeys.insert(
                e.credential_id.clone(),
                PasskeyState {
                    sign_count: e.sign_count,
                    attachment: e.attachment,
                },
            );
        }
        Event::PasskeyRemoved(e) => {
            s.passkeys.remove(&e.credential_id);
        }
        Event::TotpEnrolled(e) => {
            s.totp = true;
            s.totp_last_step = s.totp_last_step.max(Some(e.step));
        }
        Event::TotpRemoved(_) => s.totp = false,
        Event::SignInSucceeded(e) => {
            // The user proved who they are: whoever guessed before starts again at the
            // shortest lock.
            s.locks.clear();
            if let Some((id, count)) = &e.passkey {
                if let Some(p) = s.passkeys.get_mut(id) {
                    p.sign_count = *count;
                }
            }
            if e.totp_step.is_some() {
                s.totp_last_step = s.totp_last_step.max(e.totp_step);
            }
        }
        Event::SignInFailed(e) if !counts_towards_lock(&e.reason) => {
            s.uncounted_recorded_at.insert(e.factor, e.at);
        }
        Event::SignInFailed(e) if counts_towards_lock(&e.reason) => {
            let list = s.failures.entry(e.factor).or_default();
            list.push(e.at);
            if list.len() > FAILURES_TO_LOCK {
                list.remove(0);
            }
        }
        Event::SignInLocked(e) => {
            s.locked_until.insert(e.factor, e.until);
            s.failures.remove(&e.factor);
            *s.locks.entry(e.factor).or_default() += 1;
        }
        Event::SignInUnlocked(_) => {
            s.locked_until.clear();
            s.failures.clear();
            s.locks.clear();
        }
        _ => {}
    }
}

/// Why an enrolment link does not work (the page says which).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkGone {
    /// Enrolment finished with it.
    #[error("this enrolment link was used already")]
    Used,
    /// Past its expiry.
    #[error("this enrolment link has expired")]
    Expired,
    /// A newer invite replaced it.
    #[error("a newer invite replaced this enrolment link")]
    Replaced,
    /// Its user was deleted: no invite will follow. Told apart from [`LinkGone::Replaced`]
    /// by whoever can see the user's status, since deletion forgets the user's links.
    #[error("this enrolment link belongs to an account that no longer exists")]
    AccountGone,
}

/// Whether `link_id` (known to belong to a user whose latest link is `latest`) still
/// works at `now`.
pub fn link_status(
    latest: Option<&LinkState>,
    link_id: LinkId,
    now: DateTime<Utc>,
) -> Result<(), LinkGone> {
    match latest {
        Some(l) if l.link_id == link_id => {
            if l.used {
                Err(LinkGone::Used)
            } else if now >= l.expires_at {
                Err(LinkGone::Expired)
            } else {
                Ok(())
            }
        }
        _ => Err(LinkGone::Replaced),
    }
}

/// The SSO settings in force for a user who may sign in, or why they may not: only active
/// users with SSO on sign in (the override wins over the settings applied at import).
pub fn sign_in_allowed(
    status: Status,
    imported: Option<SsoSettings>,
    sso_override: Option<SsoSettings>,
) -> Result<SsoSettings, SignInFailure> {
    if status != Status::Active {
        return Err(SignInFailure::NotActive);
    }
    let sso = sso_override.or(imported).unwrap_or_default();
    if !sso.enabled {
        return Err(SignInFailure::SsoOff);
    }
    Ok(sso)
}

fn allowed(s: &UserState) -> Result<SsoSettings, SignInFailure> {
    sign_in_allowed(s.status, s.imported_sso, s.sso_override)
}

/// What the IO layer verified of a passkey's assertion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasskeyProof {
    /// The authenticator's new signature counter.
    pub sign_count: u32,
    /// The authenticator verified the user (PIN, biometrics).
    pub user_verified: bool,
}

/// A sign-in attempt with its evidence.
#[derive(Clone, PartialEq)]
pub enum Proof {
    /// Passwordless: a passkey alone.
    Passkey {
        /// The credential used (base64url).
        credential_id: String,
        /// The verified assertion, or why it did not verify.
        verified: Result<PasskeyProof, SignInFailure>,
    },
    /// Entra ID credentials (checked, and matched to this user), then a passkey.
    EntraThenPasskey {
        /// The credential used (base64url).
        credential_id: String,
        /// The verified assertion, or why it did not verify.
        verified: Result<PasskeyProof, SignInFailure>,
    },
    /// Entra ID credentials (checked, and matched to this user), then a typed code.
    EntraThenTotp {
        /// What the user typed.
        code: String,
        /// The user's seed, unsealed for this check only.
        seed: Vec<u8>,
    },
    /// The Entra ID step failed for this user.
    EntraFailed(SignInFailure),
}

/// Names the proof, never the code or the seed it carries.
impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::Passkey {
                credential_id,
                verified,
            } => f
                .debug_struct("Passkey")
                .field("credential_id", credential_id)
                .field("verified", verified)
                .finish(),
            Proof::EntraThenPasskey {
                credential_id,
                verified,
            } => f
                .debug_struct("EntraThenPasskey")
                .field("credential_id", credential_id)
                .field("verified", verified)
                .finish(),
            Proof::EntraThenTotp { .. } => {
                f.write_str("EntraThenTotp { code: <typed>, seed: <sealed> }")
            }
            Proof::EntraFailed(reason) => f.debug_tuple("EntraFailed").field(reason).finish(),
        }
    }
}

impl Proof {
    fn factor(&self) -> Factor {
        match self {
            Proof::Passkey { .. } | Proof::EntraThenPasskey { .. } => Factor::Passkey,
            Proof::EntraThenTotp { .. } => Factor::Totp,
            Proof::EntraFailed(_) => Factor::Entra,
        }
    }

    fn method(&self) -> SsoMethod {
        match self {
            Proof::Passkey { .. } => SsoMethod::Passwordless,
            _ => SsoMethod::PasswordAndSecondFactor,
        }
    }
}

/// A command about a user's enrolment and sign-in.
#[derive(Clone, Debug, PartialEq)]
pub enum SignInCommand {
    /// The user opened enrolment link `link_id` and began.
    StartEnrolment {
        /// The link.
        link_id: LinkId,
        /// The ceremony the page asks to begin.
        step: EnrolmentStep,
        /// The Entra step was done in this browser.
        entra_done: bool,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Register a passkey, during enrolment (`enrolment` names the link and whether the
    /// Entra step was done in this browser) or from the user's own page.
    RegisterPasskey {
        /// The enrolment link, when enrolling.
        enrolment: Option<(LinkId, bool)>,
        /// The credential.
        passkey: PasskeyRegistered,
        /// The ceremony verified the user.
        user_verified: bool,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Set up an authenticator app, confirmed with a code the IO layer checked.
    EnrolTotp {
        /// The enrolment link and whether the Entra step was done, when enrolling.
        enrolment: Option<(LinkId, bool)>,
        /// The sealed seed.
        sealed_seed: SealedSecret,
        /// The confirmation code's step.
        step: u64,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Rename a passkey.
    RenamePasskey {
        /// The credential (base64url).
        credential_id: String,
        /// The new name.
        name: String,
    },
    /// Remove a passkey (not the last one the method needs).
    RemovePasskey {
        /// The credential (base64url).
        credential_id: String,
    },
    /// Remove the authenticator app (not when it is the last second factor).
    RemoveTotp,
    /// Record tokens issued to an app, if the user may still use it: active, SSO on with
    /// the method the sign-in used, of one of the app's domains.
    IssueAppTokens {
        /// The tokens' record.
        issued: AppTokensIssued,
        /// Domains whose users may use the app.
        app_domains: Vec<DomainId>,
        /// The method of the sign-in the tokens stand for: a method changed since (even
        /// a moment ago, before the projections show it) ends that sign-in.
        method: SsoMethod,
    },
    /// Spend a refresh token and record the next one (see [`super::refresh`]).
    RefreshAppTokens(super::refresh::RefreshRequest),
    /// Record a refused token request.
    RefuseAppToken(AppTokenRefused),
    /// An app revokes one of its tokens.
    RevokeAppTokens(super::refresh::RevokeRequest),
    /// A user's grant was presented for an app without the app's credentials: recorded
    /// only when `token` (a refresh or access token; none for a code, checked by the
    /// caller) belongs to a live family of that app.
    RefuseGrantWithoutClient {
        /// The refusal to record.
        refused: AppTokenRefused,
        /// The token presented.
        token: Option<super::refresh::Presented>,
    },
    /// Decide a sign-in attempt.
    SignIn {
        /// The evidence.
        proof: Proof,
        /// The app signed in to (`None`: the user's own page).
        app: Option<String>,
        /// Now.
        at: DateTime<Utc>,
    },
}

/// What an enrolment page asks to begin: the options of one method's ceremony.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EnrolmentStep {
    /// A passkey or security key.
    Passkey,
    /// An authenticator app.
    Totp,
    /// Signing in with Entra ID (the password step).
    Entra,
}

/// Whether a user of `method` may begin `step` now: refused up front what the enrolment
/// would refuse at its end, so nothing is recorded for it and no credential is left on an
/// authenticator (a security key's few slots) for a registration that cannot complete.
/// An authenticator app may be set up before the Entra step: its seed is kept in the
/// browser's flow and confirmed after, and leaves nothing behind if never confirmed.
fn step_allowed(method: SsoMethod, step: EnrolmentStep, entra_done: bool) -> Result<(), Rejection> {
    use EnrolmentStep::*;
    match (method, step) {
        (SsoMethod::Passwordless, Passkey) | (SsoMethod::PasswordAndSecondFactor, Entra | Totp) => {
            Ok(())
        }
        (SsoMethod::PasswordAndSecondFactor, Passkey) if entra_done => Ok(()),
        (SsoMethod::PasswordAndSecondFactor, Passkey) => Err(Rejection::Conflict(
            "sign in with Entra ID first: your account uses a password and a second factor".into(),
        )),
        (SsoMethod::Passwordless, Totp) => Err(Rejection::Conflict(
            "authenticator codes go with Entra ID sign-in; your account is passwordless".into(),
        )),
        (SsoMethod::Passwordless, Entra) => Err(Rejection::Conflict(
            "your account signs in without a password: use a passkey or security key".into(),
        )),
    }
}

/// A passkey's name: 1 to 64 characters, trimmed.
pub fn passkey_name(name: &str) -> Result<String, Rejection> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(invalid("name", "a passkey's name is 1 to 64 characters"));
    }
    Ok(name.to_owned())
}

fn amr_of(attachment: Option<Attachment>, user_verified: bool) -> Vec<String> {
    let mut amr = vec![match attachment {
        Some(Attachment::CrossPlatform) => "hwk".to_owned(),
        _ => "swk".to_owned(),
    }];
    if user_verified {
        amr.push("mfa".into());
    }
    amr
}

/// An open link of this user, or the rejection that says why not.
fn open_link(s: &UserState, link_id: LinkId, at: DateTime<Utc>) -> Result<(), Rejection> {
    allowed(s).map_err(|f| Rejection::Conflict(f.message().into()))?;
    link_status(s.signin.link.as_ref(), link_id, at).map_err(|g| Rejection::Conflict(g.to_string()))
}

/// The events that end an enrolment with `method`, which also sign the user in.
fn complete(
    s: &UserState,
    link_id: LinkId,
    method: SsoMethod,
    amr: Vec<String>,
    at: DateTime<Utc>,
) -> Vec<Event> {
    let mut events = Vec::new();
    if !s.signin.link.as_ref().is_some_and(|l| l.started) {
        events.push(EnrolmentStarted { link_id }.into());
    }
    events.push(EnrolmentCompleted { link_id, method }.into());
    events.push(
        SignInSucceeded {
            method,
            amr,
            app: None,
            passkey: None,
            totp_step: None,
            at,
        }
        .into(),
    );
    events
}

/// Decides a command.
pub fn decide(s: &UserState, c: SignInCommand) -> Result<Vec<Event>, Rejection> {
    if matches!(s.status, Status::Unknown) {
        return Err(Rejection::NotFound("user"));
    }
    match c {
        SignInCommand::StartEnrolment {
            link_id,
            step,
            entra_done,
            at,
        } => {
            open_link(s, link_id, at)?;
            let sso = allowed(s).map_err(|f| Rejection::Conflict(f.message().into()))?;
            step_allowed(sso.method, step, entra_done)?;
            Ok(if s.signin.link.as_ref().is_some_and(|l| l.started) {
                vec![]
            } else {
                vec![EnrolmentStarted { link_id }.into()]
            })
        }
        SignInCommand::RegisterPasskey {
            enrolment,
            passkey,
            user_verified,
            at,
        } => {
            let sso = allowed(s).map_err(|f| Rejection::Conflict(f.message().into()))?;
            if let Some((link_id, _)) = enrolment {
                open_link(s, link_id, at)?;
            }
            if s.signin.passkeys.contains_key(&passkey.credential_id) {
                return Err(Rejection::AlreadyExists("passkey"));
            }
            if s.signin.passkeys.len() >= MAX_PASSKEYS {
                return Err(Rejection::Conflict(format!(
                    "a user holds at most {MAX_PASSKEYS} passkeys; remove one first"
                )));
            }
            let passkey = PasskeyRegistered {
                name: passkey_name(&passkey.name)?,
                ..passkey
            };
            let amr = amr_of(passkey.attachment, user_verified);
            let mut events: Vec<Event> = vec![passkey.into()];
            match enrolment {
                Some((link_id, _)) if sso.method == SsoMethod::Passwordless => {
                    events.extend(complete(s, link_id, sso.method, amr, at));
                }
                Some((link_id, true)) => {
                    let amr = std::iter::once("fed".to_owned())
                        .chain(amr.into_iter().take(1))
                        .collect();
                    events.extend(complete(s, link_id, sso.method, amr, at));
                }
                Some((_, false)) => return Err(Rejection::Conflict(
                    "sign in with Entra ID first: your account uses a password and a second factor"
                        .into(),
                )),
                None => {}
            }
            Ok(events)
        }
        SignInCommand::EnrolTotp {
            enrolment,
            sealed_seed,
            step,
            at,
        } => {
            let sso = allowed(s).map_err(|f| Rejection::Conflict(f.message().into()))?;
            if sso.method != SsoMethod::PasswordAndSecondFactor {
                return Err(Rejection::Conflict(
                    "authenticator codes go with Entra ID sign-in; your account is passwordless"
                        .into(),
                ));
            }
            // Codes used are the old app's when it is being replaced: the new one's first
            // code may fall in the same time step.
            let replacing = s.signin.totp && enrolment.is_some();
            if !replacing && s.signin.totp_last_step.is_some_and(|u| step <= u) {
                return Err(Rejection::Conflict(
                    "that code was used already; wait for the next one".into(),
                ));
            }
            // A second app is never added beside the first: from a session (which a thief
            // may hold) the first is removed on its own, as a choice; through an invite (a
            // lost phone) the new one replaces it, and the old one's sessions and refresh
            // tokens end as on any removal.
            let replaced = match (s.signin.totp, enrolment) {
                (false, _) => None,
                (true, Some(_)) => Some(TotpRemoved {}.into()),
                (true, None) => {
                    return Err(Rejection::Conflict(
                        "an authenticator app is set up already: remove it first (with a passkey added, if it is your only second factor), or ask your administrator for a new invite".into(),
                    ))
                }
            };
            let mut events: Vec<Event> = replaced
                .into_iter()
                .chain([TotpEnrolled { sealed_seed, step }.into()])
                .collect();
            match enrolment {
                Some((link_id, true)) => {
                    open_link(s, link_id, at)?;
                    events.extend(complete(
                        s,
                        link_id,
                        sso.method,
                        vec!["fed".into(), "otp".into()],
                        at,
                    ));
                }
                Some((_, false)) => return Err(Rejection::Conflict(
                    "sign in with Entra ID first: your account uses a password and a second factor"
                        .into(),
                )),
                None => {}
            }
            Ok(events)
        }
        SignInCommand::RenamePasskey {
            credential_id,
            name,
        } => {
            if !s.signin.passkeys.contains_key(&credential_id) {
                return Err(Rejection::NotFound("passkey"));
            }
            Ok(vec![PasskeyRenamed {
                credential_id,
                name: passkey_name(&name)?,
            }
            .into()])
        }
        SignInCommand::RemovePasskey { credential_id } => {
            if !s.signin.passkeys.contains_key(&credential_id) {
                return Err(Rejection::NotFound("passkey"));
            }
            let sso = s.sso_override.or(s.imported_sso).unwrap_or_default();
            let left = s.signin.passkeys.len() - 1;
            let needed = match sso.method {
                SsoMethod::Passwordless => left == 0,
                SsoMethod::PasswordAndSecondFactor => left == 0 && !s.signin.totp,
            };
            if needed && sso.enabled {
                return Err(Rejection::Conflict(
                    "this is your last way to sign in: add another before removing it".into(),
                ));
            }
            Ok(vec![PasskeyRemoved { credential_id }.into()])
        }
        SignInCommand::RemoveTotp => {
            if !s.signin.totp {
                return Err(Rejection::NotFound("authenticator app"));
            }
            let sso = s.sso_override.or(s.imported_sso).unwrap_or_default();
            if sso.enabled
                && sso.method == SsoMethod::PasswordAndSecondFactor
                && s.signin.passkeys.is_empty()
            {
                return Err(Rejection::Conflict(
                    "this is your last second factor: add a passkey before removing it".into(),
                ));
            }
            Ok(vec![TotpRemoved {}.into()])
        }
        SignInCommand::IssueAppTokens {
            issued,
            app_domains,
            method,
        } => {
            let sso = allowed(s).map_err(|f| Rejection::Conflict(f.message().into()))?;
            if sso.method != method {
                return Err(Rejection::Conflict(
                    "your sign-in method has changed since you signed in: sign in again".into(),
                ));
            }
            if !s.domain.is_some_and(|d| app_domains.contains(&d)) {
                return Err(Rejection::Conflict(
                    "this app is not open to users of your domain".into(),
                ));
            }
            Ok(vec![issued.into()])
        }
        SignInCommand::RefreshAppTokens(r) => {
            let allowed = allowed(s).map(|_| ()).map_err(|f| f.message().to_owned());
            super::refresh::decide(s, r, allowed)
        }
        SignInCommand::RevokeAppTokens(r) => Ok(super::refresh::revoke(s, r)),
        SignInCommand::RefuseAppToken(refused) => refuse_app_token(s, refused),
        SignInCommand::RefuseGrantWithoutClient { refused, token } => {
            // A token that holds nothing of the app's (spent long ago, revoked, made up,
            // another app's) is nobody's news: recorded, it would let anyone holding an
            // old copy write to the user's stream for ever.
            if token.is_some_and(|t| s.refresh.holding(refused.app_id, &t).is_none()) {
                return Err(Rejection::NotFound("refresh token"));
            }
            refuse_app_token(s, refused)
        }
        SignInCommand::SignIn { proof, app, at } => {
            let factor = proof.factor();
            let events = sign_in(s, proof, app, at);
            let recently = s
                .signin
                .uncounted_recorded_at
                .get(&factor)
                .is_some_and(|t| at - *t < UNCOUNTED_RECORD_EVERY);
            match events.first() {
                // Refused for a reason that locks nothing, and one was recorded a moment
                // ago: nothing new to record, the same answer.
                Some(Event::SignInFailed(f)) if recently && !counts_towards_lock(&f.reason) => {
                    Err(Rejection::Throttled(f.reason.message().into()))
                }
                _ => Ok(events),
            }
        }
    }
}

/// Records a refusal, at most once a minute per app for those anyone can cause.
fn refuse_app_token(s: &UserState, refused: AppTokenRefused) -> Result<Vec<Event>, Rejection> {
    let recently = super::refresh::throttled_refusal(&refused.reason).is_some_and(|code| {
        s.refresh
            .throttled_refused_at
            .get(&(refused.app_id, code))
            .is_some_and(|t| refused.at - *t < UNCOUNTED_RECORD_EVERY)
    });
    if recently {
        return Err(Rejection::Throttled(
            "this app's request was refused a moment ago".into(),
        ));
    }
    Ok(vec![refused.into()])
}

/// A sign-in attempt always yields events: success, or the failure (and a lock when it
/// is one failure too many) — so every attempt is in the audit trail.
fn sign_in(s: &UserState, proof: Proof, app: Option<String>, at: DateTime<Utc>) -> Vec<Event> {
    let factor = proof.factor();
    let fail = |reason: SignInFailure| -> Vec<Event> {
        let mut events: Vec<Event> = vec![SignInFailed {
            factor,
            reason: reason.clone(),
            app: app.clone(),
            at,
        }
        .into()];
        let counts = counts_towards_lock(&reason);
        let recent = s.signin.failures.get(&factor).map_or(0, |l| {
            l.iter().filter(|t| at - **t < FAILURE_WINDOW).count()
        });
        if counts && recent + 1 >= FAILURES_TO_LOCK {
            events.push(
                SignInLocked {
                    factor,
                    until: at + lock_for(s.signin.locks.get(&factor).copied().unwrap_or(0)),
                }
                .into(),
            );
        }
        events
    };
    let sso = match allowed(s) {
        Ok(sso) => sso,
        Err(f) => return fail(f),
    };
    if sso.method != proof.method() {
        return fail(SignInFailure::MethodNotAllowed);
    }
    if locked(&s.signin, factor, at) {
        return fail(SignInFailure::Locked);
    }
    let mut ok = SignInSucceeded {
        method: sso.method,
        amr: Vec::new(),
        app: app.clone(),
        passkey: None,
        totp_step: None,
        at,
    };
    match proof {
        Proof::EntraFailed(reason) => return fail(reason),
        Proof::Passkey {
            credential_id,
            verified,
        }
        | Proof::EntraThenPasskey {
            credential_id,
            verified,
        } => {
            let Some(held) = s.signin.passkeys.get(&credential_id) else {
                return fail(SignInFailure::UnknownCredential);
            };
            let proof = match verified {
                Ok(p) => p,
                Err(f) => return fail(f),
            };
            // Synced passkeys keep 0; otherwise the counter must move forward, or two
            // authenticators hold one key.
            if (held.sign_count != 0 || proof.sign_count != 0)
                && proof.sign_count <= held.sign_count
            {
                return fail(SignInFailure::CounterWentBack);
            }
            let amr = amr_of(held.attachment, proof.user_verified);
            ok.amr = match sso.method {
                SsoMethod::Passwordless => amr,
                SsoMethod::PasswordAndSecondFactor => std::iter::once("fed".to_owned())
                    .chain(amr.into_iter().take(1))
                    .collect(),
            };
            ok.passkey = Some((credential_id, proof.sign_count));
        }
        Proof::EntraThenTotp { code, seed } => {
            // No usable seed is no authenticator app, never a key anyone could compute
            // codes for.
            if !s.signin.totp || seed.len() < 16 {
                return fail(SignInFailure::NotEnrolled);
            }
            match crate::totp::verify(&seed, &code, at.timestamp(), s.signin.totp_last_step) {
                Ok(step) => {
                    ok.amr = vec!["fed".into(), "otp".into()];
                    ok.totp_step = Some(step);
                }
                Err(crate::totp::CodeRefused::Reused) => return fail(SignInFailure::ReusedCode),
                Err(_) => return fail(SignInFailure::WrongCode),
            }
        }
    }
    vec![ok.into()]
}

#[cfg(test)]
mod tests {
    use super::super::spec::{given, Stream, Then};
    use super::super::user::evolve as fold;
    use super::*;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
    }

    fn user(method: SsoMethod) -> UserState {
        let mut s = UserState::default();
        for e in [
            UserDiscovered {
                user_id: UserId(uuid::Uuid::from_u128(4)),
                domain_id: DomainId(uuid::Uuid::from_u128(1)),
                external_id: "x".into(),
                attributes: UserAttributes::default(),
            }
            .into(),
            UserImported {
                sso: SsoSettings {
                    enabled: true,
                    method,
                },
            }
            .into(),
        ] {
            s = fold(s, &e);
        }
        s
    }

    fn apply(mut s: UserState, events: &[Event]) -> UserState {
        for e in events {
            s = fold(s, e);
        }
        s
    }

    fn link(n: u128, expires_at: DateTime<Utc>) -> Event {
        InviteSent {
            to: "a@contoso.com".into(),
            via: "outbox".into(),
            link: Some(EnrolmentLink {
                link_id: LinkId(uuid::Uuid::from_u128(n)),
                token_hash: Hash([n as u8; 32]),
                expires_at,
            }),
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

    fn passkey(id: &str, attachment: Attachment) -> PasskeyRegistered {
        PasskeyRegistered {
            credential_id: id.into(),
            name: " Laptop ".into(),
            sealed_public_key: sealed(),
            algorithm: -7,
            attachment: Some(attachment),
            sign_count: 1,
        }
    }

    fn lid(n: u128) -> LinkId {
        LinkId(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn enrolling_a_security_key_completes_enrolment_and_signs_in() {
        let s = apply(
            user(SsoMethod::Passwordless),
            &[link(1, t0() + Duration::hours(72))],
        );
        let events = decide(
            &s,
            SignInCommand::RegisterPasskey {
                enrolment: Some((lid(1), false)),
                passkey: passkey("c1", Attachment::CrossPlatform),
                user_verified: true,
                at: t0(),
            },
        )
        .unwrap_or_default();
        let kinds: Vec<_> = events.iter().map(Event::kind).collect();
        assert_eq!(
            kinds,
            [
                "PasskeyRegistered",
                "EnrolmentStarted",
                "EnrolmentCompleted",
                "SignInSucceeded"
            ]
        );
        let Event::SignInSucceeded(ok) = &events[3] else {
            unreachable!()
        };
        assert_eq!(ok.amr, ["hwk", "mfa"]);
        let Event::PasskeyRegistered(p) = &events[0] else {
            unreachable!()
        };
        assert_eq!(p.name, "Laptop");
        // The link is used up now.
        let s = apply(s, &events);
        assert_eq!(
            link_status(s.signin.link.as_ref(), lid(1), t0()),
            Err(LinkGone::Used)
        );
    }

    #[test]
    fn password_mode_enrolment_needs_the_entra_step() {
        let s = apply(
            user(SsoMethod::PasswordAndSecondFactor),
            &[link(1, t0() + Duration::hours(72))],
        );
        let totp = |entra| SignInCommand::EnrolTotp {
            enrolment: Some((lid(1), entra)),
            sealed_seed: sealed(),
            step: 7,
            at: t0(),
        };
        assert!(matches!(
            decide(&s, totp(false)),
            Err(Rejection::Conflict(_))
        ));
        let events = decide(&s, totp(true)).unwrap_or_default();
        let Some(Event::SignInSucceeded(ok)) = events.last() else {
            unreachable!()
        };
        assert_eq!(ok.amr, ["fed", "otp"]);
        // A second app replaces the first only through an invite (a lost phone), and
        // ends what the first opened; from a session it is refused.
        let enrolled = apply(
            s.clone(),
            &[TotpEnrolled {
                sealed_seed: sealed(),
                step: 3,
            }
            .into()],
        );
        let events = decide(&enrolled, totp(true)).unwrap_or_default();
        assert!(matches!(
            events[..2],
            [Event::TotpRemoved(_), Event::TotpEnrolled(_)]
        ));
        let from_session = SignInCommand::EnrolTotp {
            enrolment: None,
            sealed_seed: sealed(),
            step: 7,
            at: t0(),
        };
        assert!(matches!(
            decide(&enrolled, from_session),
            Err(Rejection::Conflict(_))
        ));
        // Passwordless users have no authenticator codes.
        let s = apply(
            user(SsoMethod::Passwordless),
            &[link(1, t0() + Duration::hours(1))],
        );
        assert!(decide(&s, totp(true)).is_err());
    }

    #[test]
    fn no_enrolment_when_sso_is_off_or_the_user_is_not_active() {
        let s = apply(
            user(SsoMethod::Passwordless),
            &[
                link(1, t0() + Duration::hours(72)),
                UserSsoOverrideSet {
                    sso: Some(SsoSettings {
                        enabled: false,
                        method: SsoMethod::Passwordless,
                    }),
                }
                .into(),
            ],
        );
        let start = SignInCommand::StartEnrolment {
            link_id: lid(1),
            step: EnrolmentStep::Passkey,
            entra_done: false,
            at: t0(),
        };
        assert!(matches!(
            decide(&s, start.clone()),
            Err(Rejection::Conflict(_))
        ));
        let s = apply(
            user(SsoMethod::Passwordless),
            &[
                link(1, t0() + Duration::hours(72)),
                UserDeactivated { reason: None }.into(),
            ],
        );
        assert!(matches!(decide(&s, start), Err(Rejection::Conflict(_))));
    }

    #[test]
    fn an_enrolment_begins_only_the_steps_its_method_allows_in_order() {
        use EnrolmentStep::*;
        let start = |step, entra_done| SignInCommand::StartEnrolment {
            link_id: lid(1),
            step,
            entra_done,
            at: t0(),
        };
        let with = |method| apply(user(method), &[link(1, t0() + Duration::hours(72))]);
        let passwordless = with(SsoMethod::Passwordless);
        assert!(decide(&passwordless, start(Passkey, false)).is_ok());
        assert!(decide(&passwordless, start(Totp, true)).is_err());
        assert!(decide(&passwordless, start(Entra, false)).is_err());
        let password = with(SsoMethod::PasswordAndSecondFactor);
        assert!(decide(&password, start(Entra, false)).is_ok());
        assert!(decide(&password, start(Totp, false)).is_ok());
        assert!(matches!(
            decide(&password, start(Passkey, false)),
            Err(Rejection::Conflict(m)) if m.contains("Entra ID first")
        ));
        assert!(decide(&password, start(Passkey, true)).is_ok());
    }

    /// Tokens stand for a sign-in by one method: once the user's method has changed (on
    /// record, though the projections may not show it yet), none are issued for it.
    #[test]
    fn no_tokens_for_a_sign_in_by_a_method_changed_since() {
        let s = signed_up(SsoMethod::Passwordless);
        let issue = |s: &UserState, method| {
            decide(
                s,
                SignInCommand::IssueAppTokens {
                    issued: AppTokensIssued {
                        app_id: AppId(uuid::Uuid::from_u128(9)),
                        grant: "authorization_code".into(),
                        sid: "sid".into(),
                        refresh: None,
                        at: t0(),
                    },
                    app_domains: vec![DomainId(uuid::Uuid::from_u128(1))],
                    method,
                },
            )
        };
        assert!(issue(&s, SsoMethod::Passwordless).is_ok());
        let changed = apply(
            s,
            &[UserSsoOverrideSet {
                sso: Some(SsoSettings {
                    enabled: true,
                    method: SsoMethod::PasswordAndSecondFactor,
                }),
            }
            .into()],
        );
        assert!(matches!(
            issue(&changed, SsoMethod::Passwordless),
            Err(Rejection::Conflict(m)) if m.contains("method has changed")
        ));
        assert!(issue(&changed, SsoMethod::PasswordAndSecondFactor).is_ok());
    }

    fn signed_up(method: SsoMethod) -> UserState {
        let mut s = apply(user(method), &[passkey("c1", Attachment::Platform).into()]);
        if method == SsoMethod::PasswordAndSecondFactor {
            s = apply(
                s,
                &[TotpEnrolled {
                    sealed_seed: sealed(),
                    step: 1,
                }
                .into()],
            );
        }
        s
    }

    fn by_passkey(count: u32) -> Proof {
        Proof::Passkey {
            credential_id: "c1".into(),
            verified: Ok(PasskeyProof {
                sign_count: count,
                user_verified: true,
            }),
        }
    }

    fn attempt(s: &UserState, proof: Proof, at: DateTime<Utc>) -> Vec<Event> {
        decide(
            s,
            SignInCommand::SignIn {
                proof,
                app: None,
                at,
            },
        )
        .unwrap_or_default()
    }

    fn failure(events: &[Event]) -> Option<SignInFailure> {
        events.iter().find_map(|e| match e {
            Event::SignInFailed(f) => Some(f.reason.clone()),
            _ => None,
        })
    }

    #[test]
    fn passkey_sign_in_and_its_rules() {
        let s = signed_up(SsoMethod::Passwordless);
        let ok = attempt(&s, by_passkey(2), t0());
        let Some(Event::SignInSucceeded(e)) = ok.first() else {
            unreachable!("{ok:?}")
        };
        assert_eq!(e.amr, ["swk", "mfa"]);
        let s2 = apply(s.clone(), &ok);
        // The same counter again: a copied authenticator.
        assert_eq!(
            failure(&attempt(&s2, by_passkey(2), t0())),
            Some(SignInFailure::CounterWentBack)
        );
        // Someone else's (or a removed) credential.
        let other = Proof::Passkey {
            credential_id: "c9".into(),
            verified: Ok(PasskeyProof {
                sign_count: 5,
                user_verified: true,
            }),
        };
        assert_eq!(
            failure(&attempt(&s, other, t0())),
            Some(SignInFailure::UnknownCredential)
        );
        // Deactivated, or SSO turned off: refused, whatever the proof.
        let off = apply(s.clone(), &[UserDeactivated { reason: None }.into()]);
        assert_eq!(
            failure(&attempt(&off, by_passkey(3), t0())),
            Some(SignInFailure::NotActive)
        );
        let off = apply(
            s.clone(),
            &[UserSsoOverrideSet {
                sso: Some(SsoSettings {
                    enabled: false,
                    method: SsoMethod::Passwordless,
                }),
            }
            .into()],
        );
        assert_eq!(
            failure(&attempt(&off, by_passkey(3), t0())),
            Some(SignInFailure::SsoOff)
        );
        // A passwordless user cannot use the password way.
        let pw = Proof::EntraThenTotp {
            code: "123456".into(),
            seed: vec![1; 20],
        };
        assert_eq!(
            failure(&attempt(&s, pw, t0())),
            Some(SignInFailure::MethodNotAllowed)
        );
    }

    #[test]
    fn totp_codes_are_used_once() {
        let s = signed_up(SsoMethod::PasswordAndSecondFactor);
        let seed = vec![3u8; 20];
        let now = t0();
        let code = format!(
            "{:06}",
            crate::totp::code(&seed, crate::totp::step_at(now.timestamp()))
        );
        let proof = || Proof::EntraThenTotp {
            code: code.clone(),
            seed: seed.clone(),
        };
        let ok = attempt(&s, proof(), now);
        let Some(Event::SignInSucceeded(e)) = ok.first() else {
            unreachable!("{ok:?}")
        };
        assert_eq!(e.amr, ["fed", "otp"]);
        let s = apply(s, &ok);
        assert_eq!(
            failure(&attempt(&s, proof(), now + Duration::seconds(5))),
            Some(SignInFailure::ReusedCode)
        );
    }

    /// A code typed twice (a double submit, an autofill retry) is no guess: it matched.
    #[test]
    fn a_code_used_again_counts_towards_no_lock() {
        let s = signed_up(SsoMethod::PasswordAndSecondFactor);
        let seed = vec![3u8; 20];
        let now = t0();
        let code_at = |t: chrono::DateTime<chrono::Utc>| {
            format!(
                "{:06}",
                crate::totp::code(&seed, crate::totp::step_at(t.timestamp()))
            )
        };
        let proof = |code: String| Proof::EntraThenTotp {
            code,
            seed: seed.clone(),
        };
        let ok = attempt(&s, proof(code_at(now)), now);
        let mut s = apply(s, &ok);
        for n in 1..=8 {
            let again = attempt(&s, proof(code_at(now)), now + Duration::seconds(n));
            // Recorded once a minute (see `decide`), then only answered.
            if n == 1 {
                assert_eq!(failure(&again), Some(SignInFailure::ReusedCode));
            }
            assert!(
                !again.iter().any(|e| matches!(e, Event::SignInLocked(_))),
                "{again:?}"
            );
            s = apply(s, &again);
        }
        let later = now + Duration::seconds(31);
        let next = attempt(&s, proof(code_at(later)), later);
        assert!(
            matches!(next.first(), Some(Event::SignInSucceeded(_))),
            "{next:?}"
        );
    }

    #[test]
    fn a_proof_prints_no_code_and_no_seed() {
        let shown = format!(
            "{:?}",
            SignInCommand::SignIn {
                proof: Proof::EntraThenTotp {
                    code: "493817".into(),
                    seed: b"SEEDSEEDSEEDSEEDSEED".to_vec(),
                },
                app: None,
                at: t0(),
            }
        );
        assert!(
            !shown.contains("493817") && !shown.contains("83, 69, 69, 68"),
            "{shown}"
        );
    }

    #[test]
    fn removing_the_last_method_is_refused() {
        let s = signed_up(SsoMethod::Passwordless);
        assert!(matches!(
            decide(
                &s,
                SignInCommand::RemovePasskey {
                    credential_id: "c1".into()
                }
            ),
            Err(Rejection::Conflict(_))
        ));
        let s = apply(s, &[passkey("c2", Attachment::CrossPlatform).into()]);
        assert!(decide(
            &s,
            SignInCommand::RemovePasskey {
                credential_id: "c1".into()
            }
        )
        .is_ok());
    }

    /// A user's stream under sign-in commands, for `given(…).when(…).then(…)`.
    struct SignInStream;

    impl Stream for SignInStream {
        type State = UserState;
        type Command = SignInCommand;
        fn evolve(state: UserState, event: &Event) -> UserState {
            fold(state, event)
        }
        fn decide(state: &UserState, command: SignInCommand) -> Result<Vec<Event>, Rejection> {
            decide(state, command)
        }
    }

    /// The records of a user signed up with `method` (as [`signed_up`] folds them): a
    /// passkey `c1` that signed last at 1, and for a password user an authenticator app.
    fn signed_up_events(method: SsoMethod) -> Vec<Event> {
        let mut events = vec![
            UserDiscovered {
                user_id: UserId(uuid::Uuid::from_u128(4)),
                domain_id: DomainId(uuid::Uuid::from_u128(1)),
                external_id: "x".into(),
                attributes: UserAttributes::default(),
            }
            .into(),
            UserImported {
                sso: SsoSettings {
                    enabled: true,
                    method,
                },
            }
            .into(),
            passkey("c1", Attachment::Platform).into(),
        ];
        if method == SsoMethod::PasswordAndSecondFactor {
            events.push(
                TotpEnrolled {
                    sealed_seed: sealed(),
                    step: 1,
                }
                .into(),
            );
        }
        events
    }

    /// A counted failure of the passkey at `at` (a copy of it whose counter went back).
    fn passkey_failed(at: DateTime<Utc>) -> Event {
        SignInFailed {
            factor: Factor::Passkey,
            reason: SignInFailure::CounterWentBack,
            app: None,
            at,
        }
        .into()
    }

    /// A passwordless user whose passkey failed at each of `ago` before `at`; `at`, the
    /// fifth attempt, fails too (its counter went back).
    fn fifth_failure(ago: [Duration; 4], at: DateTime<Utc>) -> Then {
        let mut past = signed_up_events(SsoMethod::Passwordless);
        past.extend(ago.iter().map(|d| passkey_failed(at - *d)));
        given::<SignInStream>(&past).when(SignInCommand::SignIn {
            proof: by_passkey(1),
            app: None,
            at,
        })
    }

    fn failed_only(at: DateTime<Utc>) -> Vec<Event> {
        vec![passkey_failed(at)]
    }

    fn failed_and_locked(at: DateTime<Utc>) -> Vec<Event> {
        vec![
            passkey_failed(at),
            SignInLocked {
                factor: Factor::Passkey,
                until: at + LOCK_FOR,
            }
            .into(),
        ]
    }

    /// Five failures within five minutes lock the factor for fifteen minutes.
    #[test]
    fn five_failures_within_five_minutes_lock() {
        let at = t0() + Duration::hours(1);
        let m = Duration::minutes;
        fifth_failure([m(4), m(3), m(2), m(1)], at).then(failed_and_locked(at));
        // The oldest a moment inside the window still counts.
        let just_inside = FAILURE_WINDOW - Duration::seconds(1);
        fifth_failure([just_inside; 4], at).then(failed_and_locked(at));
    }

    /// Five failures spread over more than five minutes lock nothing: only those of the
    /// last five minutes count.
    #[test]
    fn five_failures_spread_over_more_than_five_minutes_do_not_lock() {
        let at = t0() + Duration::hours(1);
        let m = Duration::minutes;
        // Two minutes apart: eight minutes from the first to the fifth, three in any window.
        fifth_failure([m(8), m(6), m(4), m(2)], at).then(failed_only(at));
        // Four in a burst long ago, then one more.
        fifth_failure([m(30), m(30), m(30), m(30)], at).then(failed_only(at));
    }

    /// The edge: four failures exactly five minutes before (the first moment they are out
    /// of the window) and a new one lock nothing, where a second later they would have.
    #[test]
    fn failures_just_outside_the_window_do_not_count() {
        let at = t0() + Duration::hours(1);
        fifth_failure([FAILURE_WINDOW; 4], at).then(failed_only(at));
        let s = Duration::seconds;
        let out = FAILURE_WINDOW;
        fifth_failure([out + s(3), out + s(2), out + s(1), out], at).then(failed_only(at));
    }

    /// The authenticator app is removed on request, unless it is the last second factor of
    /// a user who signs in with a password and a second factor.
    #[test]
    fn the_authenticator_app_is_removed_unless_it_is_the_last_second_factor() {
        let password = signed_up_events(SsoMethod::PasswordAndSecondFactor);
        // With the passkey beside it: removed.
        given::<SignInStream>(&password)
            .when(SignInCommand::RemoveTotp)
            .then([Event::from(TotpRemoved {})]);
        // The passkey removed first: the app is the last second factor, and stays.
        let mut alone = password.clone();
        alone.push(
            PasskeyRemoved {
                credential_id: "c1".into(),
            }
            .into(),
        );
        given::<SignInStream>(&alone)
            .when(SignInCommand::RemoveTotp)
            .then_reject(Rejection::Conflict(
                "this is your last second factor: add a passkey before removing it".into(),
            ));
        // Once removed, there is none to remove, and its codes sign no one in.
        let mut removed = password.clone();
        removed.push(TotpRemoved {}.into());
        given::<SignInStream>(&removed)
            .when(SignInCommand::RemoveTotp)
            .then_reject(Rejection::NotFound("authenticator app"));
        let s = given::<SignInStream>(&removed).state().clone();
        let proof = Proof::EntraThenTotp {
            code: "123456".into(),
            seed: vec![3; 20],
        };
        assert_eq!(
            failure(&attempt(&s, proof, t0())),
            Some(SignInFailure::NotEnrolled)
        );
        // Where the method no longer needs it (SSO off, or passwordless now), the last
        // one goes too.
        for sso in [
            SsoSettings {
                enabled: false,
                method: SsoMethod::PasswordAndSecondFactor,
            },
            SsoSettings {
                enabled: true,
                method: SsoMethod::Passwordless,
            },
        ] {
            let mut changed = alone.clone();
            changed.push(UserSsoOverrideSet { sso: Some(sso) }.into());
            given::<SignInStream>(&changed)
                .when(SignInCommand::RemoveTotp)
                .then([Event::from(TotpRemoved {})]);
        }
    }

    fn bad_passkey() -> Proof {
        Proof::Passkey {
            credential_id: "c1".into(),
            verified: Err(SignInFailure::BadCredential("signature".into())),
        }
    }

    #[test]
    fn five_failures_in_five_minutes_lock_for_fifteen() {
        let mut s = signed_up(SsoMethod::Passwordless);
        let mut at = t0();
        // The passkey signs at 100; a copy of it that signs at 1 fails each time, and counts.
        let signed = attempt(&s, by_passkey(100), at);
        s = apply(s, &signed);
        for i in 0..FAILURES_TO_LOCK {
            let events = attempt(&s, by_passkey(1), at);
            assert_eq!(failure(&events), Some(SignInFailure::CounterWentBack));
            assert_eq!(
                events.iter().any(|e| e.kind() == "SignInLocked"),
                i + 1 == FAILURES_TO_LOCK
            );
            s = apply(s, &events);
            at += Duration::seconds(30);
        }
        // Locked: even the right passkey is refused, with the reason.
        assert_eq!(
            failure(&attempt(&s, by_passkey(109), at)),
            Some(SignInFailure::Locked)
        );
        // Attempts while locked are recorded once a minute, refused without a record between.
        let events = attempt(&s, by_passkey(109), at);
        let s = apply(s, &events);
        assert!(matches!(
            decide(
                &s,
                SignInCommand::SignIn {
                    proof: by_passkey(110),
                    app: None,
                    at: at + Duration::seconds(10),
                }
            ),
            Err(Rejection::Throttled(_))
        ));
        assert_eq!(
            failure(&attempt(&s, by_passkey(110), at + Duration::seconds(61))),
            Some(SignInFailure::Locked)
        );
        // Fifteen minutes after the lock, it works again.
        let later = at - Duration::seconds(30) + LOCK_FOR;
        assert!(failure(&attempt(&s, by_passkey(109), later)).is_none());
    }

    /// Each lock of a factor before the user signs in again lasts twice the one before,
    /// up to a day; a sign-in starts again at fifteen minutes.
    #[test]
    fn locks_grow_until_the_user_signs_in() {
        let mut s = signed_up(SsoMethod::Passwordless);
        let mut at = t0();
        let signed = attempt(&s, by_passkey(100), at);
        s = apply(s, &signed);
        let lock_out = |s: &mut UserState, at: &mut DateTime<Utc>| -> Duration {
            for _ in 0..FAILURES_TO_LOCK {
                let events = attempt(s, by_passkey(1), *at);
                *s = apply(s.clone(), &events);
                if let Some(Event::SignInLocked(l)) = events.last() {
                    let lasts = l.until - *at;
                    *at = l.until;
                    return lasts;
                }
                *at += Duration::seconds(1);
            }
            unreachable!("five counted failures lock")
        };
        let minutes: Vec<i64> = (0..9)
            .map(|_| lock_out(&mut s, &mut at).num_minutes())
            .collect();
        assert_eq!(minutes, [15, 30, 60, 120, 240, 480, 960, 1440, 1440]);
        // Signed in once the lock is over: the next lock is the shortest again.
        let signed = attempt(&s, by_passkey(200), at);
        s = apply(s, &signed);
        assert_eq!(lock_out(&mut s, &mut at), LOCK_FOR);
        assert_eq!(lock_out(&mut s, &mut at), LOCK_FOR * 2);

        // An admin lifts the locks while one lasts: the right passkey works at once, and
        // the next lock is the shortest again.
        let unlock = |s: &UserState, at| {
            super::super::user::decide(s, super::super::user::UserCommand::UnlockSignIn { at })
                .unwrap()
        };
        let locked_at = at - Duration::minutes(1);
        assert_eq!(
            failure(&attempt(&s, by_passkey(300), locked_at)),
            Some(SignInFailure::Locked)
        );
        let lifted = unlock(&s, locked_at);
        assert_eq!(
            lifted,
            [Event::from(SignInUnlocked {
                factors: vec![Factor::Passkey]
            })]
        );
        let s2 = apply(s.clone(), &lifted);
        assert!(failure(&attempt(&s2, by_passkey(300), locked_at)).is_none());
        let mut s2 = s2;
        let mut t = locked_at;
        assert_eq!(lock_out(&mut s2, &mut t), LOCK_FOR);
        // Nothing locked and nothing to forget: nothing recorded.
        let fresh = signed_up(SsoMethod::Passwordless);
        assert!(unlock(&fresh, at).is_empty());
    }

    /// Whoever knows a credential id can present made-up assertions for it: each is
    /// recorded, none counts, and the owner's passkey still works.
    #[test]
    fn passkeys_that_do_not_verify_are_recorded_but_lock_no_one() {
        let mut s = signed_up(SsoMethod::Passwordless);
        let at = t0();
        let mut recorded = 0;
        for i in 0..3 * FAILURES_TO_LOCK {
            let proof = if i % 2 == 0 {
                bad_passkey()
            } else {
                Proof::Passkey {
                    credential_id: "c1".into(),
                    verified: Err(SignInFailure::UnknownCredential),
                }
            };
            // A minute apart, each is recorded.
            let at = at + UNCOUNTED_RECORD_EVERY * i as i32;
            let events = attempt(&s, proof, at);
            assert_eq!(events.len(), 1, "{events:?}");
            assert_eq!(events[0].kind(), "SignInFailed");
            s = apply(s, &events);
            recorded += 1;
        }
        assert_eq!(recorded, 3 * FAILURES_TO_LOCK);
        let later = at + UNCOUNTED_RECORD_EVERY * (3 * FAILURES_TO_LOCK) as i32;
        assert!(failure(&attempt(&s, by_passkey(2), later)).is_none());
    }

    /// Anyone who knows a credential id can present made-up assertions as fast as they
    /// like: one a minute reaches the user's stream, the rest are refused alike unrecorded,
    /// and the owner's passkey still works in between.
    #[test]
    fn failures_that_lock_nothing_are_recorded_once_a_minute() {
        let mut s = signed_up(SsoMethod::Passwordless);
        let at = t0();
        let first = attempt(&s, bad_passkey(), at);
        s = apply(s, &first);
        for i in 1..1000 {
            let refused = decide(
                &s,
                SignInCommand::SignIn {
                    proof: bad_passkey(),
                    app: None,
                    at: at + Duration::milliseconds(i * 50),
                },
            );
            assert!(
                matches!(&refused, Err(Rejection::Throttled(m)) if m == SignInFailure::UnknownCredential.message()),
                "{refused:?}"
            );
        }
        assert!(failure(&attempt(&s, by_passkey(2), at + Duration::seconds(5))).is_none());
        assert_eq!(
            failure(&attempt(&s, bad_passkey(), at + UNCOUNTED_RECORD_EVERY)),
            Some(SignInFailure::BadCredential("signature".into()))
        );
    }

    /// Any site can send a signed-in browser to an app's `/authorize` it is not open to:
    /// those refusals are recorded once a minute per app, not once per request; a token
    /// endpoint's refusals always are.
    #[test]
    fn authorization_refusals_are_recorded_once_a_minute_per_app() {
        let s = signed_up(SsoMethod::Passwordless);
        let refuse = |s: &UserState, app: u128, reason: &str, at| {
            decide(
                s,
                SignInCommand::RefuseAppToken(crate::events::AppTokenRefused {
                    app_id: AppId(uuid::Uuid::from_u128(app)),
                    reason: reason.into(),
                    revoked_family: None,
                    at,
                }),
            )
        };
        let denied = "access_denied: this app is not open to the user's domain";
        let first = refuse(&s, 1, denied, t0()).unwrap();
        let s = apply(s, &first);
        let soon = t0() + Duration::seconds(30);
        assert!(matches!(
            refuse(&s, 1, denied, soon),
            Err(Rejection::Throttled(_))
        ));
        assert!(refuse(&s, 2, denied, soon).is_ok(), "another app's");
        assert!(refuse(&s, 1, "invalid_grant: the code expired", soon).is_ok());
        assert!(refuse(&s, 1, denied, t0() + UNCOUNTED_RECORD_EVERY).is_ok());
    }

    /// Any account of the tenant can type a colleague's name and sign in at Entra as
    /// itself: recorded on the colleague's stream, it must not lock them out.
    #[test]
    fn a_colleagues_entra_sign_in_locks_no_one() {
        let mut s = signed_up(SsoMethod::PasswordAndSecondFactor);
        for i in 0..3 * FAILURES_TO_LOCK {
            let at = t0() + UNCOUNTED_RECORD_EVERY * i as i32;
            let events = attempt(&s, Proof::EntraFailed(SignInFailure::EntraUserMismatch), at);
            let kinds: Vec<_> = events.iter().map(Event::kind).collect();
            assert_eq!(kinds, ["SignInFailed"]);
            s = apply(s, &events);
        }
        assert!(!locked(&s.signin, Factor::Entra, t0() + Duration::hours(1)));
    }

    /// One step of the enrolment-link model.
    #[derive(Clone, Debug)]
    enum Step {
        /// An admin sends an invite (a new link), valid for `hours`.
        Invite { hours: i64 },
        /// Time passes.
        Wait { minutes: i64 },
        /// The user presents link number `n` (of those sent so far) and finishes.
        Enrol { n: usize },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1i64..100).prop_map(|hours| Step::Invite { hours }),
            (1i64..3000).prop_map(|minutes| Step::Wait { minutes }),
            (0usize..6).prop_map(|n| Step::Enrol { n }),
        ]
    }

    proptest! {
        /// The enrolment link's state machine against a plain model: a link works only
        /// while it is the newest, unexpired and unused; it works at most once; and a
        /// refusal changes nothing.
        #[test]
        fn enrolment_links(steps in proptest::collection::vec(step(), 1..40)) {
            let mut s = user(SsoMethod::Passwordless);
            let mut now = t0();
            // Model: every link sent, with its expiry; which one was used.
            let mut sent: Vec<(LinkId, DateTime<Utc>)> = Vec::new();
            let mut used: Option<LinkId> = None;
            let mut creds = 0u32;
            for st in steps {
                match st {
                    Step::Invite { hours } => {
                        let n = sent.len() as u128 + 1;
                        let e = link(n, now + Duration::hours(hours));
                        sent.push((lid(n), now + Duration::hours(hours)));
                        used = None;
                        s = apply(s, &[e]);
                    }
                    Step::Wait { minutes } => now += Duration::minutes(minutes),
                    Step::Enrol { n } => {
                        let Some(&(id, expires)) = sent.get(n) else { continue };
                        let newest = sent.last().map(|l| l.0) == Some(id);
                        let expected = if !newest {
                            Err(LinkGone::Replaced)
                        } else if used == Some(id) {
                            Err(LinkGone::Used)
                        } else if now >= expires {
                            Err(LinkGone::Expired)
                        } else {
                            Ok(())
                        };
                        prop_assert_eq!(link_status(s.signin.link.as_ref(), id, now), expected);
                        creds += 1;
                        let r = decide(&s, SignInCommand::RegisterPasskey {
                            enrolment: Some((id, false)),
                            passkey: passkey(&format!("k{creds}"), Attachment::Platform),
                            user_verified: true,
                            at: now,
                        });
                        match (expected, r) {
                            (Ok(()), Ok(events)) => {
                                prop_assert!(events.iter().any(|e| e.kind() == "EnrolmentCompleted"));
                                used = Some(id);
                                s = apply(s, &events);
                            }
                            (Err(_), Err(Rejection::Conflict(_))) => {}
                            // Passkey limit reached: refused, and the link stays as it was.
                            (Ok(()), Err(Rejection::Conflict(_))) => {
                                prop_assert!(s.signin.passkeys.len() >= MAX_PASSKEYS);
                            }
                            (e, r) => prop_assert!(false, "model {e:?}, decided {r:?}"),
                        }
                    }
                }
            }
        }
    }
}
