//! A model test of enrolment (`domain::decide::signin`): invites are sent (each voiding the
//! one before), time passes, the user opens a link and begins, does the Entra step, and
//! finishes with a passkey or an authenticator app; answers are lost (the browser tries
//! again with the same credential or code), decisions are lost before they are appended
//! (a crash), requests arrive late (decided, then appended after newer steps, as a slow
//! request or a browser's second tab does), and admins deactivate and reactivate the user,
//! turn SSO off and on and change the method. Every decision folds the log from scratch,
//! as a restarted server does, and that state must equal the one folded step by step.
//!
//! A late request's append expects the version its decision folded, as
//! `store::decide_and_append` does: when the stream has not moved it is appended as
//! decided; when it has, the append is refused and the same command (with the time it was
//! sent) is decided again on what is recorded now.
//!
//! After every step: a decision is accepted exactly when the model says (the link is the
//! newest, unexpired at the request's time and unused, the user may sign in, the step suits
//! their method, the Entra step was done where the method needs it); a refused or crashed
//! decision records nothing; a link completes at most once and only while it was open; no
//! credential is registered twice; and a completed enrolment leaves the user a way to sign
//! in with their method. Three broken rule sets and an append that ignores the version
//! must each be caught.

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

/// The rules a model run follows: the decisions, and whether a late append is held to
/// the version its decision folded.
#[derive(Clone, Copy)]
struct Rules {
    decide: Decide,
    checks_version: bool,
}

const TODAY: Rules = Rules {
    decide: signin::decide,
    checks_version: true,
};

/// What the runs of the real rules went through, so that a model which never reaches an
/// enrolment cannot pass as one that checks them: enrolments finished with a passkey and
/// with an authenticator app, retries of a credential whose answer was lost, late
/// requests decided again because the stream had moved, and late requests appended as
/// decided.
static SEEN: [std::sync::atomic::AtomicU32; 5] =
    [const { std::sync::atomic::AtomicU32::new(0) }; 5];

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
    /// Decided, and held: its append (and so its answer) arrives at a later
    /// [`Step::Land`], after whatever steps came between.
    Late,
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
    /// whose answer was lost (or is late).
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
    /// One of the held (late) requests arrives at the log.
    Land {
        pick: usize,
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
        2 => Just(Fate::Late),
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
        3 => (0usize..4).prop_map(|pick| Step::Land { pick }),
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

/// What the browser asked through link `n`, with what it claimed (the Entra step done)
/// when it sent the request: a late request carries its claim and its time unchanged.
#[derive(Clone, Debug)]
enum Request {
    Begin {
        n: usize,
        step: EnrolmentStep,
        entra: bool,
    },
    Passkey {
        n: usize,
        credential: String,
        hardware: bool,
        entra: bool,
    },
    Totp {
        n: usize,
        code_step: u64,
        entra: bool,
    },
}

impl Request {
    fn command(&self, at: DateTime<Utc>) -> SignInCommand {
        match self.clone() {
            Request::Begin { n, step, entra } => SignInCommand::StartEnrolment {
                link_id: link_id(n),
                step,
                entra_done: entra,
                at,
            },
            Request::Passkey {
                n,
                credential,
                hardware,
                entra,
            } => SignInCommand::RegisterPasskey {
                enrolment: Some((link_id(n), entra)),
                passkey: PasskeyRegistered {
                    credential_id: credential,
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
                at,
            },
            Request::Totp {
                n,
                code_step,
                entra,
            } => SignInCommand::EnrolTotp {
                enrolment: Some((link_id(n), entra)),
                sealed_seed: sealed(),
                step: code_step,
                at,
            },
        }
    }

    /// Whether the model accepts this request, decided on what is recorded now, for a
    /// request sent at `at`.
    fn expected(&self, m: &Model, at: DateTime<Utc>) -> bool {
        match *self {
            Request::Begin { n, step, entra } => {
                let suits = match (m.method, step) {
                    (SsoMethod::Passwordless, EnrolmentStep::Passkey) => true,
                    (SsoMethod::Passwordless, _) => false,
                    (SsoMethod::PasswordAndSecondFactor, EnrolmentStep::Passkey) => entra,
                    (SsoMethod::PasswordAndSecondFactor, _) => true,
                };
                m.open(n, at) && m.may_sign_in() && suits
            }
            Request::Passkey {
                n,
                ref credential,
                entra,
                ..
            } => {
                !m.passkeys.contains(credential)
                    && m.may_sign_in()
                    && m.open(n, at)
                    && m.passkeys.len() < MAX_PASSKEYS
                    && (m.method == SsoMethod::Passwordless || entra)
            }
            Request::Totp {
                n,
                code_step,
                entra,
            } => {
                // A code of a step already used is refused, unless it replaces the app
                // (its first code may fall in the old one's step).
                let fresh = m.totp || m.totp_step.is_none_or(|u| code_step > u);
                m.may_sign_in()
                    && m.method == SsoMethod::PasswordAndSecondFactor
                    && fresh
                    && entra
                    && m.open(n, at)
            }
        }
    }
}

/// A request decided and not yet appended.
#[derive(Debug)]
struct Held {
    request: Request,
    /// When it was sent (the `at` of its command).
    at: DateTime<Utc>,
    /// The log's length its decision folded: the version its append expects.
    version: usize,
    events: Vec<Event>,
}

/// What the model knows, independently of the engine's state.
struct Model {
    rules: Rules,
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
    /// The newest authenticator code step recorded.
    totp_step: Option<u64>,
    /// Requests decided and on their way to the log.
    held: Vec<Held>,
}

impl Model {
    fn new(rules: Rules, method: SsoMethod, counting: bool) -> Model {
        let mut m = Model {
            rules,
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
            held: Vec::new(),
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

    /// Whether link `n` is open for a request sent at `at`: the newest, unused, and not
    /// expired by then.
    fn open(&self, n: usize, at: DateTime<Utc>) -> bool {
        self.sent.len() == n + 1 && !self.used && at < self.sent[n].1
    }

    fn may_sign_in(&self) -> bool {
        !self.deactivated && self.sso_on
    }

    /// Decides `request` (sent now) on the folded state, checks the outcome against the
    /// model, and appends per `fate`. Answers whether it was appended.
    fn decide(&mut self, request: Request, fate: Fate) -> Result<bool, String> {
        let at = self.now;
        let version = self.stream.log.len();
        let Some(events) = self.decide_checked(&request, at)? else {
            return Ok(false);
        };
        match fate {
            Fate::Crashed => Ok(false),
            Fate::Late => {
                self.held.push(Held {
                    request,
                    at,
                    version,
                    events,
                });
                Ok(false)
            }
            Fate::Answered | Fate::Lost => self.accept(&request, events, version).map(|()| true),
        }
    }

    /// Decides `request`, sent at `at`, on what is recorded now; fails when the decision
    /// is not the model's. Answers the events of an accepted one.
    fn decide_checked(
        &self,
        request: &Request,
        at: DateTime<Utc>,
    ) -> Result<Option<Vec<Event>>, String> {
        let expected = request.expected(self, at);
        let command = request.command(at);
        let decided = (self.rules.decide)(&self.folded(), command.clone());
        if decided.is_ok() != expected {
            return Err(format!(
                "model expects {}, decided {decided:?} for {command:?}",
                if expected { "acceptance" } else { "refusal" }
            ));
        }
        Ok(decided.ok())
    }

    /// Appends the `events` decided for `request` on the log's first `version` records,
    /// checks they are what such a decision records, and takes the model's side of them.
    fn accept(
        &mut self,
        request: &Request,
        events: Vec<Event>,
        version: usize,
    ) -> Result<(), String> {
        match *request {
            Request::Begin { n, .. } => {
                let started_before = self.stream.log[..version]
                    .iter()
                    .any(|e| matches!(e, Event::EnrolmentStarted(s) if s.link_id == link_id(n)));
                let kinds: Vec<&str> = events.iter().map(Event::kind).collect();
                let want: &[&str] = if started_before {
                    &[]
                } else {
                    &["EnrolmentStarted"]
                };
                if kinds != want {
                    return Err(format!("a beginning recorded {kinds:?}"));
                }
                self.append(events);
            }
            Request::Passkey {
                n, ref credential, ..
            } => {
                self.finished(&events, n)?;
                self.append(events);
                self.passkeys.insert(credential.clone());
                seen(self, 0);
            }
            Request::Totp { n, code_step, .. } => {
                self.finished(&events, n)?;
                self.append(events);
                self.totp = true;
                // The newest step counts: a late app's older code does not make a newer
                // one usable again.
                self.totp_step = self.totp_step.max(Some(code_step));
                seen(self, 1);
            }
        }
        Ok(())
    }

    /// A held request arrives: appended as decided if the stream has not moved since its
    /// decision; otherwise refused by the version check and decided again now (with the
    /// time it was sent), as `store::decide_and_append` does.
    fn land(&mut self, pick: usize) -> Result<(), String> {
        if self.held.is_empty() {
            return Ok(());
        }
        let held = self.held.remove(pick % self.held.len());
        if self.stream.log.len() == held.version || !self.rules.checks_version {
            if self.stream.log.len() == held.version {
                seen(self, 4);
            }
            return self.accept(&held.request, held.events, held.version);
        }
        seen(self, 3);
        let version = self.stream.log.len();
        match self.decide_checked(&held.request, held.at)? {
            Some(events) => self.accept(&held.request, events, version),
            None => Ok(()),
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

    /// Runs one step, then checks what must hold after every step, whatever the step did
    /// (nothing included).
    fn run(&mut self, step: &Step) -> Result<(), String> {
        self.step(step)?;
        self.check()
    }

    fn step(&mut self, step: &Step) -> Result<(), String> {
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
                self.decide(Request::Begin { n, step, entra }, fate)?;
            }
            Step::Entra { n } => {
                // The page begins the Entra step (recorded like any beginning) and Entra
                // sends the browser back signed in: from then on, this flow has done it.
                if n >= self.sent.len() {
                    return Ok(());
                }
                let begin = Request::Begin {
                    n,
                    step: EnrolmentStep::Entra,
                    entra: false,
                };
                if self.decide(begin, Fate::Answered)? {
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
                if again && self.passkeys.contains(&credential) {
                    seen(self, 2);
                }
                self.last_credential = Some(credential.clone());
                let entra = self.entra_done.contains(&link_id(n));
                let request = Request::Passkey {
                    n,
                    credential,
                    hardware,
                    entra,
                };
                self.decide(request, fate)?;
            }
            Step::Totp { n, fate } => {
                if n >= self.sent.len() {
                    return Ok(());
                }
                let code_step = (self.now.timestamp() / 30) as u64;
                let entra = self.entra_done.contains(&link_id(n));
                self.decide(
                    Request::Totp {
                        n,
                        code_step,
                        entra,
                    },
                    fate,
                )?;
            }
            Step::Land { pick } => self.land(pick)?,
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
        Ok(())
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
        // The engine's state agrees with the model's on what is registered.
        let s = &self.stream.running.signin;
        if s.passkeys.keys().cloned().collect::<BTreeSet<_>>() != self.passkeys
            || s.totp != self.totp
        {
            return Err(format!(
                "the engine holds passkeys {:?} and an app {}, the model {:?} and {}",
                s.passkeys.keys().collect::<Vec<_>>(),
                s.totp,
                self.passkeys,
                self.totp
            ));
        }
        // Whoever finished enrolling has what their method asks for (until an admin
        // changes the method: then the next invite enrols them again).
        if !completed.is_empty() {
            let usable = !s.passkeys.is_empty() || s.totp;
            if !usable {
                return Err("enrolled with nothing to sign in with".into());
            }
        }
        Ok(())
    }
}

fn run_model(
    rules: Rules,
    cases: u32,
    counting: bool,
) -> Result<(), TestError<(SsoMethod, Vec<Step>)>> {
    common::runner(cases).run(
        &(method(), proptest::collection::vec(step(), 1..80)),
        |(method, steps)| {
            let mut m = Model::new(rules, method, counting);
            common::each_step(&steps, |s| m.run(s))
        },
    )
}

#[test]
fn enrolment_holds_under_lost_answers_crashes_late_requests_expiry_and_admin_changes() {
    if let Err(e) = run_model(TODAY, 2000, true) {
        panic!("{e}");
    }
    let seen = SEEN
        .each_ref()
        .map(|n| n.load(std::sync::atomic::Ordering::Relaxed));
    // Late requests that land on an unmoved stream are the rarer kind (about 75 in a run).
    let least = [50, 50, 50, 50, 20];
    assert!(
        seen.iter().zip(least).all(|(n, least)| *n >= least),
        "too few enrolments, retries or late requests reached: {seen:?}, want {least:?}"
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
    let broken = |decide: Decide| Rules {
        decide,
        checks_version: true,
    };
    for (name, rules) in [
        ("links never expire", broken(links_never_expire)),
        (
            "the Entra step is taken on trust",
            broken(trusts_the_entra_claim),
        ),
        ("status and SSO ignored", broken(ignores_status)),
        // Only late requests tell this one: a decision appended after the stream moved.
        (
            "a late decision appended without the version check",
            Rules {
                decide: signin::decide,
                checks_version: false,
            },
        ),
    ] {
        assert!(
            run_model(rules, 2048, false).is_err(),
            "the model did not catch: {name}"
        );
    }
}
