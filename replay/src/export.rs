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
use std::ops::ControlFlow;

/// What an export lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportKind {
    /// Every step of every password change: rotations, key writes, reveals.
    PasswordChanges,
    /// Every event, with its payload as JSON (sealed secrets as `"sealed"`).
    Events,
    /// The state of every user at the end of the range.
    Users,
}

impl ExportKind {
    /// Parses `password-changes`, `events` or `users`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "password-changes" => Some(ExportKind::PasswordChanges),
            "events" => Some(ExportKind::Events),
            "users" => Some(ExportKind::Users),
            _ => None,
        }
    }

    /// The kind's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            ExportKind::PasswordChanges => "password-changes",
            ExportKind::Events => "events",
            ExportKind::Users => "users",
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
        }
    }
}

/// File format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The kind.
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

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Makes the rows of one query from envelopes fed in log order.
pub struct Exporter {
    query: ExportQuery,
    format: ExportFormat,
    context: Context,
    /// Only for `users`: the projections folded up to `to`.
    state: Option<Projections>,
    summary: ExportSummary,
}

/// Appends one RFC 4180 record: a field is quoted when it holds a comma, quote or line
/// break, with quotes doubled. (The `csv` crate reads exports back; writing by hand avoids
/// a writer per row.)
fn csv_record<S: AsRef<str>>(values: &[S], out: &mut Vec<u8>) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let v = v.as_ref();
        if v.contains([',', '"', '\n', '\r']) {
            out.push(b'"');
            out.extend_from_slice(v.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(v.as_bytes());
        }
    }
    out.push(b'\n');
}

impl Exporter {
    /// An exporter of `query` in `format`.
    pub fn new(query: ExportQuery, format: ExportFormat) -> Self {
        let state = (query.kind == ExportKind::Users).then(Projections::new);
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

    fn emit(&mut self, values: &[String], out: &mut Vec<u8>) {
        match self.format {
            ExportFormat::Csv => csv_record(values, out),
            ExportFormat::Jsonl => {
                let mut m = serde_json::Map::with_capacity(values.len());
                for (k, v) in self.query.kind.columns().iter().zip(values) {
                    m.insert((*k).to_owned(), serde_json::Value::String(v.clone()));
                }
                let _ = serde_json::to_writer(&mut *out, &m);
                out.push(b'\n');
            }
        }
        self.summary.rows += 1;
    }

    fn row(&mut self, position: u64, values: &[String], out: &mut Vec<u8>) {
        self.summary.first_position.get_or_insert(position);
        self.summary.last_position = Some(position);
        self.emit(values, out);
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
        match self.query.kind {
            ExportKind::Events => {
                let values = [
                    env.position.to_string(),
                    time(env.recorded_at),
                    env.stream.as_str().to_owned(),
                    env.version.to_string(),
                    env.event.kind().to_owned(),
                    env.actor.to_string(),
                    env.correlation_id
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                    env.event.payload_json().to_string(),
                    env.hash.to_hex(),
                ];
                self.row(env.position, &values, out);
            }
            ExportKind::PasswordChanges => {
                if let (Some(user), Some((step, rotation, code))) = (user, self.step(env)) {
                    let (domain, upn) = self
                        .context
                        .users
                        .get(&user)
                        .map(|(d, u)| (d.0.to_string(), u.clone()))
                        .unwrap_or_default();
                    let reason = rotation
                        .and_then(|r| self.context.reasons.get(&r))
                        .copied()
                        .unwrap_or_default();
                    let values = [
                        env.position.to_string(),
                        time(env.recorded_at),
                        domain,
                        user.0.to_string(),
                        upn,
                        rotation.map(|r| r.0.to_string()).unwrap_or_default(),
                        step.to_owned(),
                        reason.to_owned(),
                        code.unwrap_or_default(),
                        env.actor.to_string(),
                        env.hash.to_hex(),
                    ];
                    self.row(env.position, &values, out);
                }
            }
            ExportKind::Users => {}
        }
        ControlFlow::Continue(())
    }

    /// Keeps what later rows need: users' domains and names, rotations' reasons, writes'
    /// rotations.
    fn remember(&mut self, user: Option<UserId>, env: &Envelope) {
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
            (Event::RotationStarted(e), _) => {
                c.reasons.insert(e.rotation_id, reason_name(e.reason));
            }
            (Event::KeyWriteQueued(e), _) => {
                c.writes.insert(e.key_write_id, e.rotation_id);
            }
            _ => {}
        }
    }

    /// The password-change step of an event: its name, rotation and Graph code.
    fn step(&self, env: &Envelope) -> Option<(&'static str, Option<RotationId>, Option<String>)> {
        let write = |id: &KeyWriteId| self.context.writes.get(id).copied();
        Some(match &env.event {
            Event::RotationStarted(e) => ("started", Some(e.rotation_id), None),
            Event::RotationRetried(e) => ("retried", Some(e.rotation_id), None),
            Event::RotationSucceeded(e) => ("succeeded", Some(e.rotation_id), None),
            Event::RotationFailed(e) => ("failed", Some(e.rotation_id), e.graph_code.clone()),
            Event::KeyWriteQueued(e) => ("key write queued", Some(e.rotation_id), None),
            Event::KeyWriteDelivered(e) => ("key write delivered", write(&e.key_write_id), None),
            Event::KeyWriteConfirmed(e) => ("key write confirmed", write(&e.key_write_id), None),
            Event::KeyWriteFailed(e) => ("key write failed", write(&e.key_write_id), None),
            Event::KeyWriteSuperseded(e) => ("key write superseded", write(&e.key_write_id), None),
            Event::PasswordRevealed(e) => ("revealed", Some(e.rotation_id), None),
            _ => return None,
        })
    }

    /// Ends the export: for `users`, appends the rows of the state reached.
    pub fn finish(mut self, out: &mut Vec<u8>) -> ExportSummary {
        if let Some(p) = self.state.take() {
            let rows: Vec<[String; 12]> = p
                .users
                .iter_after(None)
                .filter(|u| self.query.user.is_none_or(|x| x == u.id))
                .filter(|u| self.query.domain.is_none_or(|d| d == u.domain_id))
                .map(|u| {
                    [
                        u.id.0.to_string(),
                        u.domain_id.0.to_string(),
                        u.external_id.clone(),
                        u.attributes.user_principal_name.clone(),
                        u.attributes.display_name.clone(),
                        u.status.as_str().to_owned(),
                        u.in_sync_group.to_string(),
                        u.in_rotation_group.to_string(),
                        u.key_id.as_ref().map(|k| k.0.clone()).unwrap_or_default(),
                        u.last_rotation_at.map(time).unwrap_or_default(),
                        u.needs_attention.to_string(),
                        u.last_position.to_string(),
                    ]
                })
                .collect();
            for r in rows {
                self.emit(&r, out);
            }
        }
        self.summary
    }
}

fn reason_name(r: idledger_domain::RotationReason) -> &'static str {
    use idledger_domain::RotationReason as R;
    match r {
        R::Initial => "initial",
        R::Scheduled => "scheduled",
        R::Manual => "manual",
        R::AfterReveal => "after_reveal",
    }
}

/// The data rows of an export file, for comparison: CSV records (joined back with a unit
/// separator, so a comma inside a field cannot fake a match) or JSON lines.
pub fn data_rows(format: ExportFormat, bytes: &[u8]) -> Result<Vec<String>, String> {
    match format {
        ExportFormat::Csv => {
            let mut r = csv::ReaderBuilder::new()
                .has_headers(true)
                .flexible(true)
                .from_reader(bytes);
            r.records()
                .map(|rec| {
                    rec.map(|rec| rec.iter().collect::<Vec<_>>().join("\u{1f}"))
                        .map_err(|e| e.to_string())
                })
                .collect()
        }
        ExportFormat::Jsonl => Ok(bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect()),
    }
}

/// Where an export file differs from the rows the log gives (1-based data rows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum RowMismatch {
    /// Row `row` of the file is not the log's row `row`.
    Differs {
        /// The row.
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

/// Compares a file's rows with the log's: the first difference, if any.
pub fn compare_rows(file: &[String], log: &[String]) -> Option<RowMismatch> {
    if let Some(i) = file.iter().zip(log).position(|(a, b)| a != b) {
        return Some(RowMismatch::Differs { row: i + 1 });
    }
    match file.len().cmp(&log.len()) {
        std::cmp::Ordering::Less => Some(RowMismatch::Missing {
            row: file.len() + 1,
            count: log.len() - file.len(),
        }),
        std::cmp::Ordering::Greater => Some(RowMismatch::Extra {
            row: log.len() + 1,
            count: file.len() - log.len(),
        }),
        std::cmp::Ordering::Equal => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_difference_missing_and_extra_rows_are_named() {
        let log = rows(&["a", "b", "c"]);
        assert_eq!(compare_rows(&log, &log), None);
        assert_eq!(
            compare_rows(&rows(&["a", "x", "c"]), &log),
            Some(RowMismatch::Differs { row: 2 })
        );
        assert_eq!(
            compare_rows(&rows(&["a", "b"]), &log),
            Some(RowMismatch::Missing { row: 3, count: 1 })
        );
        assert_eq!(
            compare_rows(&rows(&["a", "b", "c", "d", "e"]), &log),
            Some(RowMismatch::Extra { row: 4, count: 2 })
        );
    }

    #[test]
    fn written_csv_reads_back_field_for_field() {
        let values = ["plain", "a,b", "say \"hi\"", "two\nlines", ""];
        let mut out = b"h1,h2,h3,h4,h5\n".to_vec();
        csv_record(&values, &mut out);
        let mut r = csv::Reader::from_reader(&out[..]);
        let rec = r.records().next().unwrap().unwrap();
        assert_eq!(rec.iter().collect::<Vec<_>>(), values);
    }

    #[test]
    fn csv_rows_keep_fields_apart() {
        let a = data_rows(ExportFormat::Csv, b"h1,h2\n\"x,y\",z\n").unwrap();
        let b = data_rows(ExportFormat::Csv, b"h1,h2\nx,\"y,z\"\n").unwrap();
        assert_ne!(a, b);
    }
}
