//! Compliance exports over any sequence of envelopes: the rows of a kind within a time
//! range and filters, in CSV or JSON Lines, and what a manifest needs to prove the file
//! complete and unaltered.
//!
//! The same [`Exporter`] makes an export and checks one: `verify-export` feeds it the log
//! up to the manifest's `log_position` and compares its rows with the file's. Rows are a
//! pure function of the log prefix and the query, so the two always agree on an
//! untouched file.

use chrono::{DateTime, SecondsFormat, Utc};
use idledger_domain::{DomainId, Envelope, Event, Hash, KeyWriteId, RotationId, UserId};
use idledger_projections::Projections;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::io::BufRead;
use std::ops::ControlFlow;

/// What an export lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ExportKind {
    /// Every step of every password change: rotations, key writes, reveals.
    PasswordChanges,
    /// Every event, with its payload as JSON (sealed secrets as `"sealed"`).
    Events,
    /// The state of every user at the end of the range.
    Users,
    /// Every sign-in attempt: success or failure with its reason, lockouts, enrolments.
    SignIns,
}

impl ExportKind {
    /// Every kind, in the order documents and forms list them.
    pub const ALL: [ExportKind; 4] = [
        ExportKind::PasswordChanges,
        ExportKind::Events,
        ExportKind::Users,
        ExportKind::SignIns,
    ];

    /// Parses `password-changes`, `events`, `users` or `sign-ins`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The kind's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExportKind::PasswordChanges => "password-changes",
            ExportKind::Events => "events",
            ExportKind::Users => "users",
            ExportKind::SignIns => "sign-ins",
        }
    }

    /// The columns, in order.
    pub fn columns(&self) -> &'static [&'static str] {
        match self {
            ExportKind::PasswordChanges => &[
                "position",
                "recorded_at",
                "domain",
                "user_id",
                "user_principal_name",
                "rotation_id",
                "step",
                "reason",
                "graph_code",
                "actor",
                "event_hash",
            ],
            ExportKind::Events => &[
                "position",
                "recorded_at",
                "stream",
                "version",
                "kind",
                "actor",
                "correlation_id",
                "payload",
                "event_hash",
            ],
            ExportKind::Users => &[
                "user_id",
                "domain",
                "external_id",
                "user_principal_name",
                "display_name",
                "status",
                "in_sync_group",
                "in_rotation_group",
                "key_id",
                "last_rotation_at",
                "needs_attention",
                "last_position",
            ],
            ExportKind::SignIns => &[
                "position",
                "recorded_at",
                "domain",
                "user_id",
                "user_principal_name",
                "step",
                "method",
                "amr",
                "factor",
                "app",
                "result",
                "reason",
                "actor",
                "event_hash",
            ],
        }
    }
}

/// File format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per line, the columns as keys.
    Jsonl,
}

impl ExportFormat {
    /// Parses `csv` or `jsonl`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "csv" => Some(ExportFormat::Csv),
            "jsonl" => Some(ExportFormat::Jsonl),
            _ => None,
        }
    }
}

/// Which rows: a time range (both ends inclusive) and optional filters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportQuery {
    /// What is exported.
    pub kind: ExportKind,
    /// Events recorded at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Events recorded at or before this time (for `users`: the state at this time).
    pub to: Option<DateTime<Utc>>,
    /// Only this domain.
    pub domain: Option<DomainId>,
    /// Only this user.
    pub user: Option<UserId>,
}

/// What an export covered, for its manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSummary {
    /// Data rows written.
    pub rows: u64,
    /// Position of the first row's event (`None` without rows or for `users`).
    pub first_position: Option<u64>,
    /// Position of the last row's event.
    pub last_position: Option<u64>,
    /// The last log position the export read (everything up to `to`).
    pub log_position: u64,
    /// The chain hash of the record at `log_position`.
    pub chain_hash: Hash,
}

/// What a password-change row needs to know from earlier events.
#[derive(Default)]
struct Context {
    users: FxHashMap<UserId, (DomainId, String)>,
    reasons: FxHashMap<RotationId, &'static str>,
    writes: FxHashMap<KeyWriteId, RotationId>,
}

/// Times as `to_rfc3339_opts(SecondsFormat::Micros, true)` writes them, without its
/// allocation: rows of one day share the date part, kept between rows.
#[derive(Default)]
struct TimeText {
    day: Option<i64>,
    date: Vec<u8>,
}

/// 1970-01-01 and 10000-01-01 in seconds: four-digit years, where the fast path applies.
const FAST_TIMES: std::ops::Range<i64> = 0..253_402_300_800;

impl TimeText {
    fn write(&mut self, t: DateTime<Utc>, out: &mut Vec<u8>) {
        let secs = t.timestamp();
        let nanos = t.timestamp_subsec_nanos();
        if nanos >= 1_000_000_000 || !FAST_TIMES.contains(&secs) {
            // A leap second or a year without four digits: chrono's own words.
            out.extend_from_slice(time(t).as_bytes());
            return;
        }
        let day = secs.div_euclid(86_400);
        if self.day != Some(day) {
            self.date = t.format("%Y-%m-%dT").to_string().into_bytes();
            self.day = Some(day);
        }
        out.extend_from_slice(&self.date);
        let s = secs.rem_euclid(86_400) as u32;
        let micros = nanos / 1000;
        let digits = |n: u32, width: u32, out: &mut Vec<u8>| {
            for k in (0..width).rev() {
                out.push(b'0' + (n / 10u32.pow(k) % 10) as u8);
            }
        };
        digits(s / 3600, 2, out);
        out.push(b':');
        digits(s / 60 % 60, 2, out);
        out.push(b':');
        digits(s % 60, 2, out);
        out.push(b'.');
        digits(micros, 6, out);
        out.push(b'Z');
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// One row's fields, written end to end into one buffer that lives as long as the
/// exporter: a row costs no allocation.
#[derive(Default)]
struct Row {
    text: Vec<u8>,
    ends: Vec<usize>,
    /// Bit i set: field i is free text, which CSV may have to quote. Numbers, ids, times
    /// and hashes never need it, so they are not scanned.
    free_text: u64,
    times: TimeText,
}

impl Row {
    fn start(&mut self) -> &mut Self {
        self.text.clear();
        self.ends.clear();
        self.free_text = 0;
        self
    }

    fn done(&mut self) -> &mut Self {
        self.ends.push(self.text.len());
        self
    }

    fn str(&mut self, s: &str) -> &mut Self {
        self.free_text |= 1 << self.ends.len();
        self.text.extend_from_slice(s.as_bytes());
        self.done()
    }

    fn num(&mut self, n: u64) -> &mut Self {
        self.text
            .extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.done()
    }

    fn uuid(&mut self, u: Option<&uuid::Uuid>) -> &mut Self {
        if let Some(u) = u {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            self.text
                .extend_from_slice(u.hyphenated().encode_lower(&mut buf).as_bytes());
        }
        self.done()
    }

    fn time(&mut self, t: Option<DateTime<Utc>>) -> &mut Self {
        if let Some(t) = t {
            self.times.write(t, &mut self.text);
        }
        self.done()
    }

    fn hash(&mut self, h: &Hash) -> &mut Self {
        let mut buf = [0u8; 64];
        if hex::encode_to_slice(h.0, &mut buf).is_ok() {
            self.text.extend_from_slice(&buf);
        }
        self.done()
    }

    fn display(&mut self, d: impl std::fmt::Display) -> &mut Self {
        use std::io::Write as _;
        self.free_text |= 1 << self.ends.len();
        let _ = write!(self.text, "{d}");
        self.done()
    }

    fn field(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }
}

/// Makes the rows of one query from envelopes fed in log order.
pub struct Exporter {
    query: ExportQuery,
    format: ExportFormat,
    context: Context,
    /// Only for `users`: the projections folded up to `to`.
    state: Option<Projections>,
    summary: ExportSummary,
    row: Row,
    /// JSON Lines keys in the order they are written (sorted, as a JSON object map
    /// writes them): indexes into the columns.
    json_order: Vec<usize>,
}

/// Appends one RFC 4180 record: a field is quoted when it holds a comma, quote or line
/// break, with quotes doubled. (The `csv` crate reads exports back; writing by hand avoids
/// a writer per row.)
fn csv_record<S: AsRef<[u8]>>(values: impl IntoIterator<Item = S>, out: &mut Vec<u8>) {
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        csv_field(v.as_ref(), out);
    }
    out.push(b'\n');
}

/// Appends one CSV field of free text, quoted if it must be. Text that a spreadsheet
/// would run as a formula (it begins with `=`, `+`, `-`, `@`, a tab or a carriage return:
/// OWASP's list) gets a leading `'`, so a display name like `=HYPERLINK(…)` stays text.
fn csv_field(v: &[u8], out: &mut Vec<u8>) {
    let formula = matches!(v.first(), Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r'));
    let guarded;
    let v = if formula {
        guarded = [&b"'"[..], v].concat();
        &guarded[..]
    } else {
        v
    };
    if v.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for &b in v {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(v);
    }
}

impl Exporter {
    /// An exporter of `query` in `format`.
    pub fn new(query: ExportQuery, format: ExportFormat) -> Self {
        let state = (query.kind == ExportKind::Users).then(Projections::new);
        let columns = query.kind.columns();
        let mut json_order: Vec<usize> = (0..columns.len()).collect();
        json_order.sort_by_key(|&i| columns[i]);
        Exporter {
            query,
            format,
            context: Context::default(),
            state,
            summary: ExportSummary {
                rows: 0,
                first_position: None,
                last_position: None,
                log_position: 0,
                chain_hash: Hash::ZERO,
            },
            row: Row::default(),
            json_order,
        }
    }

    /// The file's first bytes (the CSV header; nothing for JSON Lines).
    pub fn header(&mut self) -> Vec<u8> {
        match self.format {
            ExportFormat::Csv => {
                let mut out = Vec::new();
                csv_record(self.query.kind.columns(), &mut out);
                out
            }
            ExportFormat::Jsonl => Vec::new(),
        }
    }

    /// Appends the row held in `self.row` to `out`.
    fn emit(&mut self, out: &mut Vec<u8>) {
        let row = &self.row;
        match self.format {
            ExportFormat::Csv => {
                for i in 0..row.ends.len() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if row.free_text & (1 << i) != 0 {
                        csv_field(row.field(i), out);
                    } else {
                        out.extend_from_slice(row.field(i));
                    }
                }
                out.push(b'\n');
            }
            ExportFormat::Jsonl => {
                let columns = self.query.kind.columns();
                out.push(b'{');
                for (n, &i) in self.json_order.iter().enumerate() {
                    if n > 0 {
                        out.push(b',');
                    }
                    out.push(b'"');
                    out.extend_from_slice(columns[i].as_bytes());
                    out.extend_from_slice(b"\":");
                    // Fields are built from strings, so this never replaces anything.
                    let value = String::from_utf8_lossy(row.field(i));
                    let _ = serde_json::to_writer(&mut *out, &*value);
                }
                out.extend_from_slice(b"}\n");
            }
        }
        self.summary.rows += 1;
    }

    /// Feeds one envelope; appends its row (if any) to `out`. Breaks once past `to`:
    /// the export covers the log up to the envelope before.
    pub fn push(&mut self, env: &Envelope, out: &mut Vec<u8>) -> ControlFlow<()> {
        if self.query.to.is_some_and(|t| env.recorded_at > t) {
            return ControlFlow::Break(());
        }
        self.summary.log_position = env.position;
        self.summary.chain_hash = env.hash;
        if let Some(p) = &mut self.state {
            p.apply(env);
            return ControlFlow::Continue(());
        }
        let user = env.stream.user_id();
        self.remember(user, env);
        let in_range = self.query.from.is_none_or(|f| env.recorded_at >= f);
        let wanted = in_range
            && self.query.user.is_none_or(|u| Some(u) == user)
            && self.query.domain.is_none_or(|d| {
                env.stream.domain_id() == Some(d)
                    || user
                        .and_then(|u| self.context.users.get(&u))
                        .is_some_and(|x| x.0 == d)
            });
        if !wanted {
            return ControlFlow::Continue(());
        }
        let written = match self.query.kind {
            ExportKind::Events => {
                self.row
                    .start()
                    .num(env.position)
                    .time(Some(env.recorded_at))
                    .str(env.stream.as_str())
                    .num(env.version)
                    .str(env.event.kind())
                    .display(&env.actor)
                    .uuid(env.correlation_id.as_ref())
                    .str(&env.event.payload_json().to_string())
                    .hash(&env.hash);
                true
            }
            ExportKind::PasswordChanges => match (user, step(&self.context, env)) {
                (Some(user), Some((step, rotation, code))) => {
                    let known = self.context.users.get(&user);
                    let reason = match &env.event {
                        Event::RotationRequested(e) => reason_name(e.reason),
                        _ => rotation
                            .and_then(|r| self.context.reasons.get(&r))
                            .copied()
                            .unwrap_or_default(),
                    };
                    self.row
                        .start()
                        .num(env.position)
                        .time(Some(env.recorded_at))
                        .uuid(known.map(|(d, _)| &d.0))
                        .uuid(Some(&user.0))
                        .str(known.map_or("", |(_, upn)| upn))
                        .uuid(rotation.as_ref().map(|r| &r.0))
                        .str(step)
                        .str(reason)
                        .str(code.unwrap_or_default())
                        .display(&env.actor)
                        .hash(&env.hash);
                    true
                }
                _ => false,
            },
            ExportKind::SignIns => match (user, sign_in_row(env)) {
                (Some(user), Some(r)) => {
                    let known = self.context.users.get(&user);
                    self.row
                        .start()
                        .num(env.position)
                        .time(Some(env.recorded_at))
                        .uuid(known.map(|(d, _)| &d.0))
                        .uuid(Some(&user.0))
                        .str(known.map_or("", |(_, upn)| upn))
                        .str(r.step)
                        .str(r.method)
                        .str(&r.amr)
                        .str(r.factor)
                        .str(&r.app_id.map_or_else(|| r.app.to_owned(), |a| a.to_string()))
                        .str(r.result)
                        .str(&r.reason)
                        .display(&env.actor)
                        .hash(&env.hash);
                    true
                }
                _ => false,
            },
            ExportKind::Users => false,
        };
        if written {
            self.summary.first_position.get_or_insert(env.position);
            self.summary.last_position = Some(env.position);
            self.emit(out);
        }
        ControlFlow::Continue(())
    }

    /// Keeps what later rows need: users' domains and names, rotations' reasons, writes'
    /// rotations.
    fn remember(&mut self, user: Option<UserId>, env: &Envelope) {
        // Rotations' reasons and writes' rotations grow with the whole history: only the
        // password-change rows read them.
        let passwords = self.query.kind == ExportKind::PasswordChanges;
        let c = &mut self.context;
        match (&env.event, user) {
            (Event::UserDiscovered(e), Some(u)) => {
                c.users
                    .insert(u, (e.domain_id, e.attributes.user_principal_name.clone()));
            }
            (Event::UserAttributesChanged(e), Some(u)) => {
                if let Some(x) = c.users.get_mut(&u) {
                    x.1.clone_from(&e.attributes.user_principal_name);
                }
            }
            (Event::RotationStarted(e), _) if passwords => {
                c.reasons.insert(e.rotation_id, reason_name(e.reason));
            }
            (Event::KeyWriteQueued(e), _) if passwords => {
                c.writes.insert(e.key_write_id, e.rotation_id);
            }
            _ => {}
        }
    }

    /// Ends the export, handing each remaining row (only `users` has any: the state
    /// reached) to `each`.
    pub fn finish(mut self, mut each: impl FnMut(&[u8])) -> ExportSummary {
        if let Some(p) = self.state.take() {
            let mut out = Vec::new();
            let (user, domain) = (self.query.user, self.query.domain);
            for u in p
                .users
                .iter_after(None)
                .filter(|u| user.is_none_or(|x| x == u.id))
                .filter(|u| domain.is_none_or(|d| d == u.domain_id))
            {
                self.row
                    .start()
                    .uuid(Some(&u.id.0))
                    .uuid(Some(&u.domain_id.0))
                    .str(&u.external_id)
                    .str(&u.attributes.user_principal_name)
                    .str(&u.attributes.display_name)
                    .str(u.status.as_str())
                    .display(u.in_sync_group)
                    .display(u.in_rotation_group)
                    .str(u.key_id.as_ref().map_or("", |k| k.0.as_str()))
                    .time(u.last_rotation_at)
                    .display(u.needs_attention)
                    .num(u.last_position);
                out.clear();
                self.emit(&mut out);
                each(&out);
            }
        }
        self.summary
    }
}

/// One row of the sign-ins export.
struct SignInRow<'e> {
    step: &'static str,
    method: &'static str,
    amr: String,
    factor: &'static str,
    app: &'e str,
    result: &'static str,
    reason: String,
    /// The app a token row is about (its id: names may change).
    app_id: Option<idledger_domain::AppId>,
}

fn method_name(m: idledger_domain::SsoMethod) -> &'static str {
    match m {
        idledger_domain::SsoMethod::Passwordless => "passwordless",
        idledger_domain::SsoMethod::PasswordAndSecondFactor => "password_and_second_factor",
    }
}

/// The sign-in step of an event, if it is one.
fn sign_in_row(env: &Envelope) -> Option<SignInRow<'_>> {
    let blank = |step| SignInRow {
        step,
        method: "",
        amr: String::new(),
        factor: "",
        app: "",
        result: "",
        reason: String::new(),
        app_id: None,
    };
    Some(match &env.event {
        Event::InviteSent(e) if e.link.is_some() => blank("invited"),
        Event::EnrolmentStarted(_) => blank("enrolment started"),
        Event::EnrolmentCompleted(e) => SignInRow {
            method: method_name(e.method),
            ..blank("enrolment completed")
        },
        Event::PasskeyRegistered(_) => SignInRow {
            factor: "passkey",
            ..blank("method added")
        },
        Event::PasskeyRemoved(_) => SignInRow {
            factor: "passkey",
            ..blank("method removed")
        },
        Event::TotpEnrolled(_) => SignInRow {
            factor: "totp",
            ..blank("method added")
        },
        Event::TotpRemoved(_) => SignInRow {
            factor: "totp",
            ..blank("method removed")
        },
        Event::SignInSucceeded(e) => SignInRow {
            method: method_name(e.method),
            amr: e.amr.join(" "),
            factor: if e.passkey.is_some() {
                "passkey"
            } else if e.totp_step.is_some() {
                "totp"
            } else {
                "entra"
            },
            app: e.app.as_deref().unwrap_or(""),
            result: "success",
            ..blank("sign-in")
        },
        Event::SignInFailed(e) => SignInRow {
            factor: e.factor.as_str(),
            app: e.app.as_deref().unwrap_or(""),
            result: "failure",
            reason: e.reason.code().to_owned(),
            ..blank("sign-in")
        },
        Event::AppTokensIssued(e) => SignInRow {
            result: "tokens issued",
            reason: format!("{} (sid {})", e.grant, e.sid),
            app: "",
            app_id: Some(e.app_id),
            ..blank("app tokens")
        },
        Event::AppTokenRefused(e) => SignInRow {
            result: "refused",
            reason: e.reason.clone(),
            app_id: Some(e.app_id),
            ..blank("app tokens")
        },
        Event::AppTokensRevoked(e) => SignInRow {
            result: "revoked",
            reason: "the app revoked its refresh token".into(),
            app_id: Some(e.app_id),
            ..blank("app tokens")
        },
        Event::SignInLocked(e) => SignInRow {
            factor: e.factor.as_str(),
            result: "locked",
            reason: format!("until {}", time(e.until)),
            ..blank("locked")
        },
        Event::SignInUnlocked(e) => SignInRow {
            result: "unlocked",
            reason: e
                .factors
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            ..blank("unlocked")
        },
        _ => return None,
    })
}

/// The password-change step of an event: its name, rotation and Graph code.
fn step<'e>(
    context: &Context,
    env: &'e Envelope,
) -> Option<(&'static str, Option<RotationId>, Option<&'e str>)> {
    let write = |id: &KeyWriteId| context.writes.get(id).copied();
    Some(match &env.event {
        Event::RotationStarted(e) => ("started", Some(e.rotation_id), None),
        Event::RotationRequested(_) => ("requested", None, None),
        Event::RotationRetried(e) => ("retried", Some(e.rotation_id), None),
        Event::RotationInterrupted(e) => ("interrupted", Some(e.rotation_id), None),
        Event::RotationSucceeded(e) => ("succeeded", Some(e.rotation_id), None),
        Event::RotationFailed(e) => ("failed", Some(e.rotation_id), e.graph_code.as_deref()),
        Event::KeyWriteQueued(e) => ("key write queued", Some(e.rotation_id), None),
        Event::KeyWriteDelivered(e) => ("key write delivered", write(&e.key_write_id), None),
        Event::KeyWriteConfirmed(e) => ("key write confirmed", write(&e.key_write_id), None),
        Event::KeyWriteFailed(e) => ("key write failed", write(&e.key_write_id), None),
        Event::KeyWriteSuperseded(e) => ("key write superseded", write(&e.key_write_id), None),
        Event::KeyWriteWrittenLate(e) => ("key write written late", write(&e.key_write_id), None),
        Event::PasswordRevealed(e) => ("revealed", Some(e.rotation_id), None),
        _ => return None,
    })
}

fn reason_name(r: idledger_domain::RotationReason) -> &'static str {
    use idledger_domain::RotationReason as R;
    match r {
        R::Initial => "initial",
        R::Scheduled => "scheduled",
        R::Manual => "manual",
        R::AfterReveal => "after_reveal",
        R::Reassert => "reassert",
        R::Exposed => "exposed",
    }
}

/// Counts the rows in part of an export file (no header).
/// Counts the rows of the rest of an export as it streams past: a file may be any size,
/// and only the count is wanted. A CSV row ends at a line break outside quotes; blank
/// lines are no rows (as the `csv` crate reads them).
struct RowCounter {
    format: ExportFormat,
    quoted: bool,
    line_has_text: bool,
    rows: usize,
}

impl RowCounter {
    fn new(format: ExportFormat) -> Self {
        RowCounter {
            format,
            quoted: false,
            line_has_text: false,
            rows: 0,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match b {
                b'"' if self.format == ExportFormat::Csv => {
                    self.quoted = !self.quoted;
                    self.line_has_text = true;
                }
                b'\n' if !self.quoted => {
                    self.rows += usize::from(self.line_has_text);
                    self.line_has_text = false;
                }
                b'\r' if !self.quoted => {}
                _ => self.line_has_text = true,
            }
        }
    }

    fn finish(self) -> usize {
        self.rows + usize::from(self.line_has_text)
    }
}

/// Where an export file differs from the rows the log gives (1-based data rows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum RowMismatch {
    /// The CSV header is not the kind's columns.
    Header,
    /// Row `row` of the file is not the log's row `row`.
    Differs {
        /// Its number among the data rows, from 1 (the header is not counted).
        row: usize,
    },
    /// The file ends before the log's rows do.
    Missing {
        /// The first row missing.
        row: usize,
        /// How many are missing.
        count: usize,
    },
    /// The file has rows the log does not.
    Extra {
        /// The first extra row.
        row: usize,
        /// How many are extra.
        count: usize,
    },
}

/// Compares an export file, read as it goes, with the rows the log gives, one row at a
/// time: memory stays flat however long the file. The rows the log gives are exactly the
/// bytes an export writes, so comparing bytes row by row compares the rows, and the first
/// row whose bytes differ is the first row that differs.
pub struct RowComparer<R> {
    file: R,
    format: ExportFormat,
    read: Vec<u8>,
    rows: usize,
    header_differs: bool,
    mismatch: Option<RowMismatch>,
}

impl<R: BufRead> RowComparer<R> {
    /// Compares `file` (an export in `format`) with the rows to come.
    pub fn new(file: R, format: ExportFormat) -> Self {
        RowComparer {
            file,
            format,
            read: Vec::new(),
            rows: 0,
            header_differs: false,
            mismatch: None,
        }
    }

    /// Compares the file's header (its first line) with `expected` (empty: no header).
    pub fn header(&mut self, expected: &[u8]) -> std::io::Result<()> {
        if expected.is_empty() {
            return Ok(());
        }
        // A header holds no quoted line breaks: it ends at the first one. Read no more
        // than the expected header and one byte: a file without a line break is not read
        // into memory whole.
        self.read.clear();
        std::io::Read::take(
            std::io::Read::by_ref(&mut self.file),
            expected.len() as u64 + 1,
        )
        .read_until(b'\n', &mut self.read)?;
        self.header_differs = self.read != expected;
        Ok(())
    }

    /// Compares the file's next row with the log's next row, `expected`, in the reader's
    /// buffer (no copy).
    pub fn row(&mut self, expected: &[u8]) -> std::io::Result<()> {
        self.rows += 1;
        if self.mismatch.is_some() {
            return Ok(());
        }
        let mut want = expected;
        while !want.is_empty() {
            let have = self.file.fill_buf()?;
            if have.is_empty() {
                self.mismatch = Some(if want.len() == expected.len() {
                    RowMismatch::Missing {
                        row: self.rows,
                        count: 0,
                    }
                } else {
                    RowMismatch::Differs { row: self.rows }
                });
                return Ok(());
            }
            let n = have.len().min(want.len());
            let same = have[..n] == want[..n];
            self.file.consume(n);
            if !same {
                self.mismatch = Some(RowMismatch::Differs { row: self.rows });
                return Ok(());
            }
            want = &want[n..];
        }
        Ok(())
    }

    /// What differs, after the log's last row: the header, then the first row that
    /// differs, the rows missing or the rows extra. Reads the file to its end either way,
    /// and hands it back.
    pub fn finish(mut self) -> std::io::Result<(Vec<RowMismatch>, R)> {
        let mut rest = RowCounter::new(self.format);
        let mut any_rest = false;
        loop {
            let chunk = self.file.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            any_rest = true;
            rest.feed(chunk);
            let n = chunk.len();
            self.file.consume(n);
        }
        let rows = match self.mismatch {
            Some(RowMismatch::Missing { row, .. }) => Some(RowMismatch::Missing {
                row,
                count: self.rows + 1 - row,
            }),
            Some(m) => Some(m),
            None if !any_rest => None,
            None => Some(RowMismatch::Extra {
                row: self.rows + 1,
                count: rest.finish().max(1),
            }),
        };
        let found = self
            .header_differs
            .then_some(RowMismatch::Header)
            .into_iter()
            .chain(rows)
            .collect();
        Ok((found, self.file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(file: &str, log: &[&str]) -> Vec<RowMismatch> {
        let mut c = RowComparer::new(file.as_bytes(), ExportFormat::Jsonl);
        for r in log {
            c.row(r.as_bytes()).unwrap();
        }
        c.finish().unwrap().0
    }

    #[test]
    fn the_first_difference_missing_and_extra_rows_are_named() {
        let log = ["a\n", "b\n", "c\n"];
        assert_eq!(compare("a\nb\nc\n", &log), vec![]);
        assert_eq!(
            compare("a\nx\nc\n", &log),
            vec![RowMismatch::Differs { row: 2 }]
        );
        assert_eq!(
            compare("a\nbb\nc\n", &log),
            vec![RowMismatch::Differs { row: 2 }]
        );
        assert_eq!(
            compare("a\nb\n", &log),
            vec![RowMismatch::Missing { row: 3, count: 1 }]
        );
        assert_eq!(
            compare("a\n", &log),
            vec![RowMismatch::Missing { row: 2, count: 2 }]
        );
        assert_eq!(
            compare("a\nb\nc\nd\ne\n", &log),
            vec![RowMismatch::Extra { row: 4, count: 2 }]
        );
    }

    #[test]
    fn a_changed_csv_header_is_named_and_rows_still_compared() {
        let mut c = RowComparer::new(&b"h1,hX\nx,y\n"[..], ExportFormat::Csv);
        c.header(b"h1,h2\n").unwrap();
        c.row(b"x,y\n").unwrap();
        assert_eq!(c.finish().unwrap().0, vec![RowMismatch::Header]);
    }

    #[test]
    fn extra_csv_rows_are_counted_as_records_not_lines() {
        let mut c = RowComparer::new(&b"h\nx\n\"a\nb\"\nc\n"[..], ExportFormat::Csv);
        c.header(b"h\n").unwrap();
        c.row(b"x\n").unwrap();
        assert_eq!(
            c.finish().unwrap().0,
            vec![RowMismatch::Extra { row: 2, count: 2 }]
        );
    }

    #[test]
    fn times_are_written_as_chrono_writes_them() {
        let mut t = TimeText::default();
        let mut check = |secs: i64, nanos: u32| {
            let at = DateTime::<Utc>::from_timestamp(secs, nanos).unwrap();
            let mut out = Vec::new();
            t.write(at, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), time(at), "{secs} {nanos}");
        };
        for (secs, nanos) in [
            (0, 0),
            (86_399, 999_999_999),
            (1_795_000_000, 123_456_789),
            (253_402_300_799, 1_000),
            (253_402_300_800, 0),
            (-1, 5),
            (-62_135_596_800, 0),
        ] {
            check(secs, nanos);
        }
    }

    proptest::proptest! {
        #[test]
        fn any_time_is_written_as_chrono_writes_it(
            times in proptest::collection::vec((-100_000_000_000i64..300_000_000_000, 0u32..1_000_000_000), 1..20)
        ) {
            let mut t = TimeText::default();
            for (secs, nanos) in times {
                let at = DateTime::<Utc>::from_timestamp(secs, nanos).unwrap();
                let mut out = Vec::new();
                t.write(at, &mut out);
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), time(at));
            }
        }
    }

    #[test]
    fn text_a_spreadsheet_would_run_is_written_as_text() {
        let values = [
            "=HYPERLINK(\"http://x\",\"y\")",
            "+1",
            "-2",
            "@SUM(A1)",
            "\tx",
            // A carriage return first: some spreadsheets drop it and run what follows.
            "\r=1+1",
            "ok=1",
        ];
        let mut out = Vec::new();
        csv_record(values, &mut out);
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(&out[..]);
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!(
            rec.iter().collect::<Vec<_>>(),
            [
                "'=HYPERLINK(\"http://x\",\"y\")",
                "'+1",
                "'-2",
                "'@SUM(A1)",
                "'\tx",
                "'\r=1+1",
                "ok=1"
            ]
        );
    }

    #[test]
    fn written_csv_reads_back_field_for_field() {
        let values = ["plain", "a,b", "say \"hi\"", "two\nlines", ""];
        let mut out = b"h1,h2,h3,h4,h5\n".to_vec();
        csv_record(values, &mut out);
        let mut r = csv::Reader::from_reader(&out[..]);
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!(rec.iter().collect::<Vec<_>>(), values);
    }
}
