//! A model test of enrolment (`domain::decide::signin`): invites are sent (each voiding the
//! one before), time passes, the user opens a link and begins, does the Entra step, and
//! finishes with a passkey or an authenticator app; answers are lost (the browser tries
//! again with the same credential or code), decisions are lost before they are appended
//! (a crash), and admins deactivate and reactivate the user, turn SSO off and on and change
//! the method. Every decision folds the log from scratch, as a restarted server does, and
//! that state must equal the one folded step by step.
//!
//! After every step: a decision is accepted exactly when the model says (the link is the
//! newest, unexpired and unused, the user may sign in, the step suits their method, the
//! Entra step was done where the method needs it); a refused or crashed decision records
//! nothing; a link completes at most once and only while it was open; no credential is
//! registered twice; and a completed enrolment leaves the user a way to sign in with their
//! method. The same model runs three broken rule sets, which must be caught.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use idledger_domain::decide::signin::{self, EnrolmentStep, SignInCommand, MAX_PASSKEYS};
use idledger_domain::decide::user::{Status, UserState};
use idledger_domain::decide::Rejection;
use idledger_domain::events::*;
use idledger_domain::*;
use proptest::prelude::*;
use proptest::test_runner::TestError;
use std::collections::BTreeSet;

type Decide = fn(&UserState, SignInCommand) -> Result<Vec<Event>, Rejection>;

/// What the runs of the real rules went through, so that a model which never reaches an
/// enrolment cannot pass as one that checks them: enrolments finished with a passkey and
/// with an authenticator app, and retries of a credential whose answer was lost.
static SEEN: [std::sync::atomic::AtomicU32; 3] =
    [const { std::sync::atomic::AtomicU32::new(0) }; 3];

fn seen(m: &Model, what: usize) {
    if m.counting {
        SEEN[what].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How a decision's answer fares on its way back.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Appended and answered.
    Answered,
    /// Appended, the answer lost: the browser believes nothing happened.
    Lost,
    /// Decided but never appended: the server crashed first.
    Crashed,
}

#[derive(Clone, Debug)]
enum Step {
    /// An admin sends an invite (a new link), valid for `hours`.
    Invite {
        hours: i64,
    },
    /// Time passes (minutes).
    Wait(i64),
    /// The user opens link `n` (of those sent) and begins a ceremony.
    Begin {
        n: usize,
        step: EnrolmentStep,
        fate: Fate,
    },
    /// The user completes the Entra step for link `n` in this browser.
    Entra {
        n: usize,
    },
    /// The user registers a passkey through link `n`: a new one, or again the last one
    /// whose answer was lost.
    Passkey {
        n: usize,
        again: bool,
        hardware: bool,
        fate: Fate,
    },
    /// The user confirms an authenticator app through link `n` with the code of now.
    Totp {
        n: usize,
        fate: Fate,
    },
    Deactivate,
    Reactivate,
    SsoOff,
    SsoOn,
    /// An admin sets the user's method.
    SetMethod(SsoMethod),
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Answered),
        2 => Just(Fate::Lost),
        2 => Just(Fate::Crashed),
    ]
}

fn ceremony() -> impl Strategy<Value = EnrolmentStep> {
    prop_oneof![
        Just(EnrolmentStep::Passkey),
        Just(EnrolmentStep::Totp),
        Just(EnrolmentStep::Entra),
    ]
}

fn method() -> impl Strategy<Value = SsoMethod> {
    prop_oneof![
        Just(SsoMethod::Passwordless),
        Just(SsoMethod::PasswordAndSecondFactor),
    ]
}

/// Which link a step uses: mostly the newest (where enrolments happen), sometimes any.
fn pick() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(NEWEST), 1 => 0usize..4]
}

/// The newest link sent, whichever it is.
const NEWEST: usize = usize::MAX;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1i64..100).prop_map(|hours| Step::Invite { hours }),
        3 => prop_oneof![(1i64..30), (60i64..6000)].prop_map(Step::Wait),
        4 => (pick(), ceremony(), fate()).prop_map(|(n, step, fate)| Step::Begin { n, step, fate }),
        3 => pick().prop_map(|n| Step::Entra { n }),
        5 => (pick(), any::<bool>(), any::<bool>(), fate())
            .prop_map(|(n, again, hardware, fate)| Step::Passkey { n, again, hardware, fate }),
        4 => (pick(), fate()).prop_map(|(n, fate)| Step::Totp { n, fate }),
        1 => Just(Step::Deactivate),
        1 => Just(Step::Reactivate),
        1 => Just(Step::SsoOff),
        1 => Just(Step::SsoOn),
        1 => method().prop_map(Step::SetMethod),
    ]
}

fn link_id(n: usize) -> LinkId {
    LinkId(uuid::Uuid::from_u128(0x1000 + n as u128))
}

fn sealed() -> SealedSecret {
    SealedSecret {
        key_id: DataKeyId(uuid::Uuid::from_u128(9)),
        nonce: [0; 24],
        ciphertext: vec![1, 2, 3],
    }
}

/// What the model knows, independently of the engine's state.
struct Model {
    decide: Decide,
    /// Counted in [`SEEN`] (the real rules' runs only).
    counting: bool,
    stream: common::UserLog,
    now: DateTime<Utc>,
    /// Every link sent, with its expiry.
    sent: Vec<(LinkId, DateTime<Utc>)>,
    /// The newest link was used to finish enrolment.
    used: bool,
    /// Links the Entra step was done for in this browser.
    entra_done: BTreeSet<LinkId>,
    /// Whether the user is deactivated, has SSO on, and their method.
    deactivated: bool,
    sso_on: bool,
    method: SsoMethod,
    /// Credentials recorded, and the last one the browser tried.
    passkeys: BTreeSet<String>,
    last_credential: Option<String>,
    next_credential: u32,
    totp: bool,
    /// The last authenticator code step recorded.
    totp_step: Option<u64>,
}

impl Model {
    fn new(decide: Decide, method: SsoMethod, counting: bool) -> Model {
        let mut m = Model {
            decide,
            counting,
            stream: common::UserLog::default(),
            now: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            sent: Vec::new(),
            used: false,
            entra_done: BTreeSet::new(),
            deactivated: false,
            sso_on: true,
            method,
            passkeys: BTreeSet::new(),
            last_credential: None,
            next_credential: 0,
            totp: false,
            totp_step: None,
        };
        m.append(common::imported_user(
            DomainId(uuid::Uuid::from_u128(0xd0)),
            method,
        ));
        m
    }

    fn append(&mut self, events: Vec<Event>) {
        self.stream.append(events);
    }

    fn folded(&self) -> UserState {
        self.stream.folded()
    }

    fn set_sso(&mut self) {
        let sso = SsoSettings {
            enabled: self.sso_on,
            method: self.method,
        };
        self.append(vec![UserSsoOverrideSet { sso: Some(sso) }.into()]);
    }

    /// Whether link `n` is open now: the newest, unexpired, unused.
    fn open(&self, n: usize) -> bool {
        self.sent.len() == n + 1 && !self.used && self.now < self.sent[n].1
    }

    fn may_sign_in(&self) -> bool {
        !self.deactivated && self.sso_on
    }

    /// Decides `command` on the folded state; appends per `fate`. Checks the outcome
    /// against `expected` and that nothing is recorded unless it was accepted and appended.
    fn decide(
        &mut self,
        command: SignInCommand,
        fate: Fate,
        expected: bool,
    ) -> Result<Option<Vec<Event>>, String> {
        let before = self.stream.log.len();
        let decided = (self.decide)(&self.folded(), command.clone());
        if decided.is_ok() != expected {
            return Err(format!(
                "model expects {}, decided {decided:?} for {command:?}",
                if expected { "acceptance" } else { "refusal" }
            ));
        }
        let Ok(events) = decided else {
            return Ok(None);
        };
        match fate {
            Fate::Crashed => Ok(None),
            Fate::Answered | Fate::Lost => {
                self.append(events.clone());
                debug_assert!(self.stream.log.len() >= before);
                Ok(Some(events))
            }
        }
    }

    /// The model's side of an enrolment that finished through link `n`.
    fn finished(&mut self, events: &[Event], n: usize) -> Result<(), String> {
        let completed: Vec<&EnrolmentCompleted> = events
            .iter()
            .filter_map(|e| match e {
                Event::EnrolmentCompleted(c) => Some(c),
                _ => None,
            })
            .collect();
        match completed.as_slice() {
            [c] if c.link_id == link_id(n) && c.method == self.method => {
                self.used = true;
                Ok(())
            }
            other => Err(format!("an accepted enrolment completed {other:?}")),
        }
    }

    fn run(&mut self, step: &Step) -> Result<(), String> {
        let logged = self.stream.log.len();
        let newest = self.sent.len().saturating_sub(1);
        let step = &match step.clone() {
            Step::Begin {
                n: NEWEST,
                step,
                fate,
            } => Step::Begin {
                n: newest,
                step,
                fate,
            },
            Step::Entra { n: NEWEST } => Step::Entra { n: newest },
            Step::Passkey {
                n: NEWEST,
                again,
                hardware,
                fate,
            } => Step::Passkey {
                n: newest,
                again,
                hardware,
                fate,
            },
            Step::Totp { n: NEWEST, fate } => Step::Totp { n: newest, fate },
            other => other,
        };
        match *step {
            Step::Invite { hours } => {
                let n = self.sent.len();
                let expires_at = self.now + Duration::hours(hours);
                self.append(vec![InviteSent {
                    to: "u@contoso.com".into(),
                    via: "outbox".into(),
                    link: Some(EnrolmentLink {
                        link_id: link_id(n),
                        token_hash: Hash([n as u8; 32]),
                        expires_at,
                    }),
                }
                .into()]);
                self.sent.push((link_id(n), expires_at));
                self.used = false;
            }
            Step::Wait(minutes) => self.now += Duration::minutes(minutes),
            Step::Begin { n, step, fate } => {
                if n >= self.sent.len() {
                    return Ok(());
                }
                let entra = self.entra_done.contains(&link_id(n));
                let suits = match (self.method, step) {
                    (SsoMethod::Passwordless, EnrolmentStep::Passkey) => true,
                    (SsoMethod::Passwordless, _) => false,
                    (SsoMethod::PasswordAndSecondFactor, EnrolmentStep::Passkey) => entra,
                    (SsoMethod::PasswordAndSecondFactor, _) => true,
                };
                let expected = self.open(n) && self.may_sign_in() && suits;
                let command = SignInCommand::StartEnrolment {
                    link_id: link_id(n),
                    step,
                    entra_done: entra,
                    at: self.now,
                };
                if let Some(events) = self.decide(command, fate, expected)? {
                    let started_before = self.stream.log[..logged].iter().any(
                        |e| matches!(e, Event::EnrolmentStarted(s) if s.link_id == link_id(n)),
                    );
                    let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
                    let want: &[&str] = if started_before {
                        &[]
                    } else {
                        &["EnrolmentStarted"]
                    };
                    if kinds != want {
                        return Err(format!("a beginning recorded {kinds:?}"));
                    }
                }
            }
            Step::Entra { n } => {
                // The page begins the Entra step (recorded like any beginning) and Entra
                // sends the browser back signed in: from then on, this flow has done it.
                if n >= self.sent.len() {
                    return Ok(());
                }
                let expected = self.open(n)
                    && self.may_sign_in()
                    && self.method == SsoMethod::PasswordAndSecondFactor;
                let command = SignInCommand::StartEnrolment {
                    link_id: link_id(n),
                    step: EnrolmentStep::Entra,
                    entra_done: false,
                    at: self.now,
                };
                if self.decide(command, Fate::Answered, expected)?.is_some() {
                    self.entra_done.insert(link_id(n));
                }
            }
            Step::Passkey {
                n,
                again,
                hardware,
                fate,
            } => {
                if n >= self.sent.len() {
                    return Ok(());
                }
                let credential = match (&self.last_credential, again) {
                    (Some(c), true) => c.clone(),
                    _ => {
                        self.next_credential += 1;
                        format!("cred-{}", self.next_credential)
                    }
                };
                let entra = self.entra_done.contains(&link_id(n));
                let expected = !self.passkeys.contains(&credential)
                    && self.may_sign_in()
                    && self.open(n)
                    && self.passkeys.len() < MAX_PASSKEYS
                    && (self.method == SsoMethod::Passwordless || entra);
                let command = SignInCommand::RegisterPasskey {
                    enrolment: Some((link_id(n), entra)),
                    passkey: PasskeyRegistered {
                        credential_id: credential.clone(),
                        name: "Key".into(),
                        sealed_public_key: sealed(),
                        algorithm: -7,
                        attachment: Some(if hardware {
                            Attachment::CrossPlatform
                        } else {
                            Attachment::Platform
                        }),
                        sign_count: 0,
                    },
                    user_verified: true,
                    at: self.now,
                };
                if again && self.passkeys.contains(&credential) {
                    seen(self, 2);
                }
                self.last_credential = Some(credential.clone());
                if let Some(events) = self.decide(command, fate, expected)? {
                    self.passkeys.insert(credential);
                    self.finished(&events, n)?;
                    seen(self, 0);
                }
            }
            Step::Totp { n, fate } => {
                if n >= self.sent.len() {
                    return Ok(());
                }
                let code_step = (self.now.timestamp() / 30) as u64;
                let entra = self.entra_done.contains(&link_id(n));
                // A code of a step already used is refused, unless it replaces the app
                // (its first code may fall in the old one's step).
                let fresh = self.totp || self.totp_step.is_none_or(|u| code_step > u);
                let expected = self.may_sign_in()
                    && self.method == SsoMethod::PasswordAndSecondFactor
                    && fresh
                    && entra
                    && self.open(n);
                let command = SignInCommand::EnrolTotp {
                    enrolment: Some((link_id(n), entra)),
                    sealed_seed: sealed(),
                    step: code_step,
                    at: self.now,
                };
                if let Some(events) = self.decide(command, fate, expected)? {
                    self.totp = true;
                    self.totp_step = Some(code_step);
                    self.finished(&events, n)?;
                    seen(self, 1);
                }
            }
            Step::Deactivate => {
                if !self.deactivated {
                    self.append(vec![UserDeactivated { reason: None }.into()]);
                    self.deactivated = true;
                }
            }
            Step::Reactivate => {
                if self.deactivated {
                    self.append(vec![UserReactivated {}.into()]);
                    self.deactivated = false;
                }
            }
            Step::SsoOff => {
                self.sso_on = false;
                self.set_sso();
            }
            Step::SsoOn => {
                self.sso_on = true;
                self.set_sso();
            }
            Step::SetMethod(method) => {
                self.method = method;
                self.set_sso();
            }
        }
        self.check()
    }

    /// What must hold of the log and the state after every step.
    fn check(&self) -> Result<(), String> {
        if self.folded() != self.stream.running {
            return Err("the state folded from the log differs from the running state".into());
        }
        let mut completed = BTreeSet::new();
        let mut started = BTreeSet::new();
        let mut credentials = BTreeSet::new();
        for e in &self.stream.log {
            match e {
                Event::EnrolmentCompleted(c) if !completed.insert(c.link_id) => {
                    return Err(format!("link {:?} completed twice", c.link_id));
                }
                Event::EnrolmentStarted(s) if !started.insert(s.link_id) => {
                    return Err(format!("link {:?} began twice", s.link_id));
                }
                Event::PasskeyRegistered(p) if !credentials.insert(p.credential_id.clone()) => {
                    return Err(format!("{} registered twice", p.credential_id));
                }
                _ => {}
            }
        }
        if !completed.is_subset(&started) {
            return Err("a link completed without beginning".into());
        }
        // Whoever finished enrolling has what their method asks for (until an admin
        // changes the method: then the next invite enrols them again).
        if !completed.is_empty() {
            let s = &self.stream.running.signin;
            let usable = !s.passkeys.is_empty() || s.totp;
            if !usable {
                return Err("enrolled with nothing to sign in with".into());
            }
        }
        Ok(())
    }
}

fn run_model(
    decide: Decide,
    cases: u32,
    counting: bool,
) -> Result<(), TestError<(SsoMethod, Vec<Step>)>> {
    common::runner(cases).run(
        &(method(), proptest::collection::vec(step(), 1..80)),
        |(method, steps)| {
            let mut m = Model::new(decide, method, counting);
            common::each_step(&steps, |s| m.run(s))
        },
    )
}

#[test]
fn enrolment_holds_under_lost_answers_crashes_expiry_and_admin_changes() {
    if let Err(e) = run_model(signin::decide, 2000, true) {
        panic!("{e}");
    }
    let seen = SEEN
        .each_ref()
        .map(|n| n.load(std::sync::atomic::Ordering::Relaxed));
    assert!(
        seen.iter().all(|n| *n >= 50),
        "too few enrolments reached: {seen:?}"
    );
}

/// The `at` of an enrolment command, moved to a moment no link has expired by.
fn at_epoch(c: SignInCommand) -> SignInCommand {
    let epoch = Utc.with_ymd_and_hms(2000, 1, 1, 0, 0, 0).unwrap();
    match c {
        SignInCommand::StartEnrolment {
            link_id,
            step,
            entra_done,
            ..
        } => SignInCommand::StartEnrolment {
            link_id,
            step,
            entra_done,
            at: epoch,
        },
        SignInCommand::RegisterPasskey {
            enrolment,
            passkey,
            user_verified,
            ..
        } => SignInCommand::RegisterPasskey {
            enrolment,
            passkey,
            user_verified,
            at: epoch,
        },
        SignInCommand::EnrolTotp {
            enrolment,
            sealed_seed,
            step,
            ..
        } => SignInCommand::EnrolTotp {
            enrolment,
            sealed_seed,
            step,
            at: epoch,
        },
        c => c,
    }
}

/// Rules under which a link never expires.
fn links_never_expire(s: &UserState, c: SignInCommand) -> Result<Vec<Event>, Rejection> {
    signin::decide(s, at_epoch(c))
}

/// Rules that take the browser's word that the Entra step was done.
fn trusts_the_entra_claim(s: &UserState, c: SignInCommand) -> Result<Vec<Event>, Rejection> {
    let c = match c {
        SignInCommand::RegisterPasskey {
            enrolment: Some((link, _)),
            passkey,
            user_verified,
            at,
        } => SignInCommand::RegisterPasskey {
            enrolment: Some((link, true)),
            passkey,
            user_verified,
            at,
        },
        SignInCommand::EnrolTotp {
            enrolment: Some((link, _)),
            sealed_seed,
            step,
            at,
        } => SignInCommand::EnrolTotp {
            enrolment: Some((link, true)),
            sealed_seed,
            step,
            at,
        },
        c => c,
    };
    signin::decide(s, c)
}

/// Rules that let a deactivated user (or one with SSO off) enrol.
fn ignores_status(s: &UserState, c: SignInCommand) -> Result<Vec<Event>, Rejection> {
    let mut s = s.clone();
    s.status = Status::Active;
    if let Some(sso) = s.sso_override.as_mut() {
        sso.enabled = true;
    }
    signin::decide(&s, c)
}

#[test]
fn the_model_catches_broken_rules() {
    for (name, broken) in [
        ("links never expire", links_never_expire as Decide),
        (
            "the Entra step is taken on trust",
            trusts_the_entra_claim as Decide,
        ),
        ("status and SSO ignored", ignores_status as Decide),
    ] {
        assert!(
            run_model(broken, 2048, false).is_err(),
            "the model did not catch: {name}"
        );
    }
}
