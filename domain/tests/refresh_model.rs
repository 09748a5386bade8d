//! A model test of refresh-token families (`domain::decide::refresh`): apps exchange codes
//! and refresh, answers are lost (the app keeps presenting its old token), decisions are
//! lost before they are appended (a crash), tokens are replayed by whoever copied them, the
//! user is deactivated, reactivated or loses SSO, removes a passkey or an authenticator app,
//! has their sign-in method changed, apps revoke their tokens (RFC 7009), and time passes. Every decision folds the
//! log from scratch, as a restarted server does, and must equal the state folded step by
//! step.
//!
//! After every step: a refresh is accepted only for the family's newest token, by its own
//! app, while the user may sign in, within the idle limit, for a family no spent token, no
//! loss of sign-in, no removed method and no change of method ever touched; such a refresh is never refused; and any spent token,
//! however old, ends its family; a revocation ends a family only for its own app with a
//! token this server issued it, and a revoked family refreshes nothing more. The same model
//! runs four broken rule sets, which must be caught, so the model is known to have teeth.

mod common;

use chrono::{DateTime, Duration, TimeZone, Utc};
use idledger_domain::decide::refresh::{
    Presented, RefreshRequest, RevokeRequest, MAX_FAMILIES, MAX_FAMILIES_PER_APP, REFRESH_IDLE,
};
use idledger_domain::decide::signin::{self, SignInCommand};
use idledger_domain::decide::user::UserState;
use idledger_domain::decide::Rejection;
use idledger_domain::events::*;
use idledger_domain::*;
use proptest::prelude::*;
use proptest::test_runner::TestError;

type Decide = fn(&UserState, SignInCommand) -> Result<Vec<Event>, Rejection>;

/// Which token a refresh presents.
#[derive(Clone, Copy, Debug)]
enum Which {
    /// The one the app holds (old, when an answer was lost).
    Held,
    /// One spent this many rotations before the newest (a copy someone kept).
    Spent(usize),
    /// The newest issued (a late answer that did arrive after all).
    Newest,
    /// The app's own token, presented by the other app.
    OtherApp,
    /// Nothing ever issued, naming the current generation.
    MadeUp,
    /// Nothing ever issued, naming an earlier generation (a forger who read the family's
    /// id in the log): without this server's tag it must end nothing.
    MadeUpEarlier,
}

#[derive(Clone, Debug)]
enum Step {
    /// A code exchange with `offline_access`; its answer may be lost.
    Exchange {
        app: u8,
        lost: bool,
    },
    /// A refresh of family `pick`; the answer may be lost, or the decision never appended.
    Refresh {
        pick: usize,
        which: Which,
        lost: bool,
        crash: bool,
    },
    /// The app revokes the token of family `pick` it names (RFC 7009); the decision may
    /// never be appended.
    Revoke {
        pick: usize,
        which: Which,
        crash: bool,
    },
    Deactivate,
    Reactivate,
    SsoOff,
    SsoOn,
    /// The user removes a passkey (or the authenticator app): a lost device must not keep
    /// refreshing, and which family began with it is not recorded.
    RemoveMethod {
        totp: bool,
    },
    /// An admin sets the user's method.
    SetMethod(SsoMethod),
    /// Time passes (minutes).
    Wait(i64),
}

fn step() -> impl Strategy<Value = Step> {
    let which = prop_oneof![
        4 => Just(Which::Held),
        2 => (0usize..40).prop_map(Which::Spent),
        2 => Just(Which::Newest),
        1 => Just(Which::OtherApp),
        1 => Just(Which::MadeUp),
        1 => Just(Which::MadeUpEarlier),
    ];
    prop_oneof![
        3 => (0u8..2, proptest::bool::weighted(0.2)).prop_map(|(app, lost)| Step::Exchange { app, lost }),
        10 => (0usize..8, which.clone(), proptest::bool::weighted(0.2), proptest::bool::weighted(0.1))
            .prop_map(|(pick, which, lost, crash)| Step::Refresh { pick, which, lost, crash }),
        2 => (0usize..8, which, proptest::bool::weighted(0.1))
            .prop_map(|(pick, which, crash)| Step::Revoke { pick, which, crash }),
        1 => Just(Step::Deactivate),
        1 => Just(Step::Reactivate),
        1 => Just(Step::SsoOff),
        1 => Just(Step::SsoOn),
        1 => proptest::bool::ANY.prop_map(|totp| Step::RemoveMethod { totp }),
        1 => prop_oneof![
            Just(SsoMethod::Passwordless),
            Just(SsoMethod::PasswordAndSecondFactor)
        ]
        .prop_map(Step::SetMethod),
        2 => prop_oneof![1i64..120, 1_000i64..20_000, 40_000i64..50_000].prop_map(Step::Wait),
    ]
}

const DOMAIN: DomainId = DomainId(uuid::Uuid::from_u128(0xd0));

fn app(n: u8) -> AppId {
    AppId(uuid::Uuid::from_u128(0xa0 + n as u128))
}

fn hash(n: u64) -> Hash {
    let mut h = [0u8; 32];
    h[..8].copy_from_slice(&n.to_le_bytes());
    Hash(h)
}

fn grant(at: DateTime<Utc>, method: SsoMethod) -> TokenGrant {
    TokenGrant {
        scope: vec!["openid".into(), "offline_access".into()],
        nonce: Some("n".into()),
        auth_time: at,
        amr: vec!["hwk".into()],
        method,
    }
}

/// What the model knows of a family, independently of the engine's state.
struct Family {
    id: uuid::Uuid,
    app: AppId,
    /// Every token issued in it, oldest first.
    issued: Vec<Hash>,
    /// The token the app holds.
    held: Hash,
    last_used: DateTime<Utc>,
    /// The method of the sign-in it began with.
    method: SsoMethod,
    /// The user lost sign-in (deactivated, SSO off), removed a method or had their method
    /// changed from this family's while it existed.
    lost_sign_in: bool,
    /// A spent token of it was presented.
    replayed: bool,
}

struct Model {
    decide: Decide,
    stream: common::UserLog,
    now: DateTime<Utc>,
    families: Vec<Family>,
    next_token: u64,
}

impl Model {
    fn new(decide: Decide) -> Model {
        let mut m = Model {
            decide,
            stream: common::UserLog::default(),
            now: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            families: Vec::new(),
            next_token: 1,
        };
        m.append(common::imported_user(DOMAIN, SsoMethod::Passwordless));
        m
    }

    fn append(&mut self, events: Vec<Event>) {
        self.stream.append(events);
    }

    fn folded(&self) -> UserState {
        self.stream.folded()
    }

    fn allowed(&self) -> bool {
        self.method().is_some()
    }

    /// The method the user signs in with now, if they may.
    fn method(&self) -> Option<SsoMethod> {
        let s = &self.stream.running;
        signin::sign_in_allowed(s.status, s.imported_sso, s.sso_override)
            .ok()
            .map(|sso| sso.method)
    }

    /// Families begun with another method than the one in force are lost.
    fn lose_other_methods(&mut self) {
        if let Some(m) = self.method() {
            for f in &mut self.families {
                if f.method != m {
                    f.lost_sign_in = true;
                }
            }
        }
    }

    fn token(&mut self) -> Hash {
        self.next_token += 1;
        hash(self.next_token)
    }

    fn lose_sign_in(&mut self, e: Event) {
        self.append(vec![e]);
        if !self.allowed() {
            for f in &mut self.families {
                f.lost_sign_in = true;
            }
        }
    }

    /// The token `which` names in family `i`: what is presented, the generation it names,
    /// and the app presenting it; `None` when there is no such token.
    fn present(&self, i: usize, which: Which) -> Option<(Hash, u64, AppId)> {
        let f = &self.families[i];
        // The generation a token names is its place in the family.
        let generation_of = |h: &Hash| f.issued.iter().position(|x| x == h);
        let newest_generation = f.issued.len() as u64 - 1;
        let other = if f.app == app(0) { app(1) } else { app(0) };
        Some(match which {
            // None when the exchange's answer was lost: the app holds nothing.
            Which::Held => (f.held, generation_of(&f.held)? as u64, f.app),
            Which::Newest => (*f.issued.last()?, newest_generation, f.app),
            Which::Spent(back) => {
                let k = f.issued.len().checked_sub(back + 2)?;
                (f.issued[k], k as u64, f.app)
            }
            Which::OtherApp => (f.held, generation_of(&f.held)? as u64, other),
            Which::MadeUp => (hash(u64::MAX), newest_generation, f.app),
            Which::MadeUpEarlier => (hash(u64::MAX), newest_generation.checked_sub(1)?, f.app),
        })
    }

    /// The family was ended on the record: a spent token replayed, or the app revoked it.
    fn ended(&self, family: uuid::Uuid) -> bool {
        self.stream.log.iter().any(|e| match e {
            Event::AppTokenRefused(r) => r.revoked_family == Some(family),
            Event::AppTokensRevoked(r) => r.family == family,
            _ => false,
        })
    }

    fn run(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Exchange { app: a, lost } => {
                // Below the caps, so that no family ends by eviction (a test of its own).
                let of_app = self.families.iter().filter(|f| f.app == app(a)).count();
                if of_app >= MAX_FAMILIES_PER_APP - 1 || self.families.len() >= MAX_FAMILIES - 1 {
                    return Ok(());
                }
                let (family, token) =
                    (uuid::Uuid::from_u128(self.next_token as u128), self.token());
                let method = self.method().unwrap_or(SsoMethod::Passwordless);
                let issued = AppTokensIssued {
                    app_id: app(a),
                    grant: "authorization_code".into(),
                    sid: "sid".into(),
                    refresh: Some(RefreshIssued {
                        family,
                        token_hash: token,
                        grant: Some(grant(self.now, method)),
                    }),
                    at: self.now,
                };
                let command = SignInCommand::IssueAppTokens {
                    issued,
                    app_domains: vec![DOMAIN],
                    method,
                };
                if let Ok(events) = (self.decide)(&self.folded(), command) {
                    self.append(events);
                    // Lost answer: the app never holds a token of the family.
                    self.families.push(Family {
                        id: family,
                        app: app(a),
                        issued: vec![token],
                        method,
                        held: if lost { hash(0) } else { token },
                        last_used: self.now,
                        lost_sign_in: false,
                        replayed: false,
                    });
                }
            }
            Step::Refresh {
                pick,
                which,
                lost,
                crash,
            } => {
                if self.families.is_empty() {
                    return Ok(());
                }
                let i = pick % self.families.len();
                let next = self.token();
                let Some((presented, generation, by)) = self.present(i, which) else {
                    return Ok(());
                };
                let f = &self.families[i];
                let newest_generation = f.issued.len() as u64 - 1;
                let newest = presented == *f.issued.last().unwrap();
                let earlier = generation < newest_generation;
                // Only what this server issued carries its tag.
                let issued_here = !matches!(which, Which::MadeUp | Which::MadeUpEarlier);
                let request = RefreshRequest {
                    app_id: by,
                    family: f.id,
                    generation,
                    issued_here,
                    presented,
                    next,
                    app_domains: vec![DOMAIN],
                    scope: None,
                    at: self.now,
                };
                let decided =
                    (self.decide)(&self.folded(), SignInCommand::RefreshAppTokens(request));
                let accepted = matches!(decided.as_deref(), Ok([Event::AppTokensIssued(_)]));
                let idle = self.now - f.last_used >= REFRESH_IDLE;
                let revoked = self.ended(f.id);
                if accepted {
                    if !newest {
                        return Err(format!("a token not the newest was accepted ({which:?})"));
                    }
                    if by != f.app {
                        return Err("another app's token was accepted".into());
                    }
                    if !self.allowed() || f.lost_sign_in {
                        return Err("accepted for a user who lost sign-in since".into());
                    }
                    if idle {
                        return Err("accepted after the idle limit".into());
                    }
                    if f.replayed || revoked {
                        return Err("accepted for a family that was replayed or revoked".into());
                    }
                }
                let live = by == f.app
                    && newest
                    && self.allowed()
                    && !f.lost_sign_in
                    && !idle
                    && !f.replayed
                    && !revoked;
                if live && !accepted {
                    return Err(format!(
                        "a live family's newest token was refused: {decided:?}"
                    ));
                }
                // A made-up token is answered as unknown, with nothing recorded.
                if !issued_here && decided.is_ok() {
                    return Err(format!("a made-up token was acted on: {decided:?}"));
                }
                // An earlier generation's token, presented by its app to a family still
                // held, ends it, however many rotations ago it was spent.
                if earlier && issued_here && by == f.app && !revoked && !f.replayed && !idle {
                    let ends = matches!(
                        decided.as_deref(),
                        Ok([Event::AppTokenRefused(r)]) if r.revoked_family == Some(f.id)
                    );
                    if !ends {
                        return Err(format!(
                            "a replayed token did not end its family: {decided:?}"
                        ));
                    }
                }
                if let Ok(events) = decided {
                    if crash {
                        // Decided, never appended: nothing happened.
                        return Ok(());
                    }
                    self.append(events);
                    let now = self.now;
                    let f = &mut self.families[i];
                    if earlier && issued_here && by == f.app {
                        f.replayed = true;
                    }
                    if accepted {
                        f.issued.push(next);
                        f.last_used = now;
                        if !lost {
                            f.held = next;
                        }
                    }
                }
            }
            Step::Revoke { pick, which, crash } => {
                if self.families.is_empty() {
                    return Ok(());
                }
                let i = pick % self.families.len();
                let Some((presented, generation, by)) = self.present(i, which) else {
                    return Ok(());
                };
                let f = &self.families[i];
                let issued_here = !matches!(which, Which::MadeUp | Which::MadeUpEarlier);
                let held = self.folded().refresh.by_id.contains_key(&f.id);
                let request = RevokeRequest {
                    app_id: by,
                    token: Presented::Refresh {
                        family: f.id,
                        generation,
                        presented,
                        issued_here,
                    },
                    at: self.now,
                };
                let decided =
                    (self.decide)(&self.folded(), SignInCommand::RevokeAppTokens(request));
                let Ok(events) = decided else {
                    return Err(format!("a revocation was refused: {decided:?}"));
                };
                let ends = matches!(
                    events.as_slice(),
                    [Event::AppTokensRevoked(r)] if r.family == f.id && r.app_id == f.app
                );
                let owns_a_live_family = by == f.app && issued_here && held;
                if owns_a_live_family && !ends {
                    return Err(format!("the app's revocation ended nothing: {events:?}"));
                }
                if !owns_a_live_family && !events.is_empty() {
                    return Err(format!("a revocation by {which:?} acted: {events:?}"));
                }
                if !crash {
                    self.append(events);
                }
            }
            Step::Deactivate => {
                let s = &self.stream.running;
                if s.status == signin_status_active() {
                    self.lose_sign_in(UserDeactivated { reason: None }.into());
                }
            }
            Step::Reactivate => {
                if self.stream.running.status != signin_status_active() {
                    self.append(vec![UserReactivated {}.into()]);
                }
            }
            Step::SsoOff => self.lose_sign_in(
                UserSsoOverrideSet {
                    sso: Some(SsoSettings {
                        enabled: false,
                        method: SsoMethod::Passwordless,
                    }),
                }
                .into(),
            ),
            Step::SsoOn => {
                self.append(vec![UserSsoOverrideSet { sso: None }.into()]);
                self.lose_other_methods();
            }
            Step::RemoveMethod { totp } => {
                self.append(vec![if totp {
                    TotpRemoved {}.into()
                } else {
                    PasskeyRemoved {
                        credential_id: "c".into(),
                    }
                    .into()
                }]);
                for f in &mut self.families {
                    f.lost_sign_in = true;
                }
            }
            Step::SetMethod(method) => {
                self.lose_sign_in(
                    UserSsoOverrideSet {
                        sso: Some(SsoSettings {
                            enabled: true,
                            method,
                        }),
                    }
                    .into(),
                );
                self.lose_other_methods();
            }
            Step::Wait(minutes) => self.now += Duration::minutes(minutes),
        }
        if self.folded() != self.stream.running {
            return Err("the state folded from the log differs from the running state".into());
        }
        if self.stream.running.refresh.by_id.len() > MAX_FAMILIES {
            return Err("more families than the bound".into());
        }
        Ok(())
    }
}

fn signin_status_active() -> idledger_domain::decide::user::Status {
    idledger_domain::decide::user::Status::Active
}

fn run_model(decide: Decide, cases: u32) -> Result<(), TestError<Vec<Step>>> {
    common::runner(cases).run(&proptest::collection::vec(step(), 1..120), |steps| {
        let mut m = Model::new(decide);
        common::each_step(&steps, |s| m.run(s))
    })
}

#[test]
fn refresh_families_hold_under_lost_answers_crashes_replays_and_status_changes() {
    if let Err(e) = run_model(signin::decide, 2000) {
        panic!("{e}");
    }
}

/// Rules that accept a spent token as if it were the newest (no replay detection).
fn no_replay_detection(s: &UserState, c: SignInCommand) -> Result<Vec<Event>, Rejection> {
    if let SignInCommand::RefreshAppTokens(mut r) = c.clone() {
        if let Some(f) = s.refresh.by_id.get(&r.family) {
            if r.generation < f.generation {
                r.presented = f.current;
                r.generation = f.generation;
                return signin::decide(s, SignInCommand::RefreshAppTokens(r));
            }
        }
    }
    signin::decide(s, c)
}

/// Rules under which a family closed by deactivation or SSO off comes back with the user.
fn revives_closed_families(s: &UserState, c: SignInCommand) -> Result<Vec<Event>, Rejection> {
    let mut s = s.clone();
    for f in s.refresh.by_id.values_mut() {
        f.closed = false;
    }
    signin::decide(&s, c)
}

/// Rules that keep everyone safe by refreshing nothing.
fn refuses_every_refresh(s: &UserState, c: SignInCommand) -> Result<Vec<Event>, Rejection> {
    match c {
        SignInCommand::RefreshAppTokens(_) => Err(Rejection::NotFound("refresh token")),
        c => signin::decide(s, c),
    }
}

/// Rules under which any app may revoke any family it names.
fn anyone_revokes(s: &UserState, c: SignInCommand) -> Result<Vec<Event>, Rejection> {
    match c {
        SignInCommand::RevokeAppTokens(mut r) => {
            if let Presented::Refresh { family, .. } = r.token {
                if let Some(f) = s.refresh.by_id.get(&family) {
                    r.app_id = f.app;
                    r.token = Presented::Refresh {
                        family,
                        generation: f.generation,
                        presented: f.current,
                        issued_here: true,
                    };
                }
            }
            signin::decide(s, SignInCommand::RevokeAppTokens(r))
        }
        c => signin::decide(s, c),
    }
}

#[test]
fn the_model_catches_broken_rules() {
    for (name, broken) in [
        ("no replay detection", no_replay_detection as Decide),
        ("closed families revive", revives_closed_families as Decide),
        ("nothing refreshes", refuses_every_refresh as Decide),
        ("anyone revokes", anyone_revokes as Decide),
    ] {
        assert!(
            run_model(broken, 2048).is_err(),
            "the model did not catch: {name}"
        );
    }
}

fn begun(n: u64, a: u8, at: DateTime<Utc>) -> Event {
    AppTokensIssued {
        app_id: app(a),
        grant: "authorization_code".into(),
        sid: "sid".into(),
        refresh: Some(RefreshIssued {
            family: uuid::Uuid::from_u128(n as u128),
            token_hash: hash(n),
            grant: Some(grant(at, SsoMethod::Passwordless)),
        }),
        at,
    }
    .into()
}

#[test]
fn families_stay_bounded_per_app_and_in_all() {
    let mut m = Model::new(signin::decide);
    let at = m.now;
    // App 1 holds two families; app 0 then begins more than its share.
    m.append(vec![begun(1, 1, at), begun(2, 1, at)]);
    for n in 0..(MAX_FAMILIES_PER_APP as u64 + 5) {
        m.append(vec![begun(
            100 + n,
            0,
            at + Duration::seconds(1 + n as i64),
        )]);
    }
    let families = &m.stream.running.refresh.by_id;
    let of = |a: u8| families.values().filter(|f| f.app == app(a)).count();
    assert_eq!(of(0), MAX_FAMILIES_PER_APP);
    // App 0's least recently used went, and app 1 lost nothing to it.
    assert!(!families.contains_key(&uuid::Uuid::from_u128(100)));
    assert_eq!(of(1), 2);
    // Over all apps, the least recently used of any app goes.
    for n in 0..MAX_FAMILIES as u64 {
        let a = 2 + (n % 10) as u8;
        m.append(vec![begun(
            1_000 + n,
            a,
            at + Duration::minutes(1 + n as i64),
        )]);
    }
    let families = &m.stream.running.refresh.by_id;
    assert_eq!(families.len(), MAX_FAMILIES);
    assert!(!families.contains_key(&uuid::Uuid::from_u128(1)));
}

#[test]
fn a_token_spent_any_number_of_rotations_ago_ends_its_family() {
    let mut m = Model::new(signin::decide);
    let at = m.now;
    let family = uuid::Uuid::from_u128(7);
    m.append(vec![begun(7, 0, at)]);
    let refresh_as = |m: &Model, issued_here, generation, presented, next, minutes: i64| {
        signin::decide(
            &m.folded(),
            SignInCommand::RefreshAppTokens(RefreshRequest {
                app_id: app(0),
                family,
                generation,
                issued_here,
                presented,
                next,
                app_domains: vec![DOMAIN],
                scope: None,
                at: at + Duration::minutes(minutes),
            }),
        )
    };
    let refresh = |m: &Model, generation: u64, presented: Hash, next: Hash, minutes: i64| {
        refresh_as(m, true, generation, presented, next, minutes)
    };
    let mut current = hash(7);
    for n in 0..500u64 {
        let next = hash(10_000 + n);
        let decided = refresh(&m, n, current, next, 1 + n as i64).unwrap();
        assert!(matches!(decided.as_slice(), [Event::AppTokensIssued(_)]));
        m.append(decided);
        current = next;
    }
    // The state of a family refreshed 500 times is what it was after one.
    assert_eq!(m.stream.running.refresh.by_id[&family].generation, 500);
    // A token of an earlier generation without this server's tag (made up from the ids
    // the log shows): unknown, nothing recorded, the family lives on.
    assert_eq!(
        refresh_as(&m, false, 3, hash(12_345), hash(97), 599),
        Err(Rejection::NotFound("refresh token"))
    );
    // The first token, 500 rotations later: the family ends, on the record.
    let replayed = refresh(&m, 0, hash(7), hash(99), 600).unwrap();
    assert!(
        matches!(replayed.as_slice(), [Event::AppTokenRefused(r)] if r.revoked_family == Some(family)),
        "{replayed:?}"
    );
    m.append(replayed);
    assert_eq!(
        refresh(&m, 500, current, hash(98), 601),
        Err(Rejection::NotFound("refresh token"))
    );
}

#[test]
fn a_grant_presented_without_the_apps_credentials_is_recorded_only_while_it_holds_a_family() {
    let mut m = Model::new(signin::decide);
    let at = m.now;
    let family = uuid::Uuid::from_u128(7);
    m.append(vec![begun(7, 0, at)]);
    let refused = |a: u8, minutes: i64| AppTokenRefused {
        app_id: app(a),
        reason: "invalid_client: a grant was presented for this app without its credentials".into(),
        revoked_family: None,
        at: at + Duration::minutes(minutes),
    };
    let token = |presented: Hash, issued_here: bool| Presented::Refresh {
        family,
        generation: 0,
        presented,
        issued_here,
    };
    let decide = |m: &Model, a: u8, minutes: i64, t: Presented| {
        signin::decide(
            &m.folded(),
            SignInCommand::RefuseGrantWithoutClient {
                refused: refused(a, minutes),
                token: Some(t),
            },
        )
    };
    // Another app's family, or a token not of the family: nothing recorded.
    for (a, t) in [
        (1, token(hash(7), true)),
        (0, token(hash(8), false)),
        (0, Presented::Access { grant: [0; 16] }),
    ] {
        assert_eq!(
            decide(&m, a, 1, t),
            Err(Rejection::NotFound("refresh token"))
        );
    }
    // Its app's live token: recorded, then not again within the minute.
    let recorded = decide(&m, 0, 1, token(hash(7), true)).unwrap();
    assert!(matches!(recorded.as_slice(), [Event::AppTokenRefused(_)]));
    m.append(recorded);
    assert!(matches!(
        decide(&m, 0, 1, token(hash(7), true)),
        Err(Rejection::Throttled(_))
    ));
    // An access token of the grant holds it too (by the digest it names).
    let grant = idledger_domain::decide::refresh::grant_digest(family);
    assert!(decide(&m, 0, 3, Presented::Access { grant }).is_ok());
    // Revoked by its app: an old copy is nobody's news any more.
    m.append(vec![AppTokensRevoked {
        app_id: app(0),
        family,
        at: at + Duration::minutes(4),
    }
    .into()]);
    assert_eq!(
        decide(&m, 0, 5, token(hash(7), true)),
        Err(Rejection::NotFound("refresh token"))
    );
}
