//! The log checked and folded by the auditor's own process: the whole chain verified
//! (every record parsed, hashed and decoded on every core, the order checks here), and
//! the projections at any past point.

use super::source::{decode_at, each_record, records_of, Source};
use crate::error::Error;
use crate::store::parallel_decode::{decoder_threads, parallel_map};
use crate::store::sled_log::open_raw;
use crate::store::StoreError;
use idledger_projections::Projections;
use idledger_replay::verify::{CheckedRecord, HeadRead};
use idledger_replay::{fold, Until, Verifier, VerifyReport};
use std::ops::ControlFlow;

/// Verifies the whole chain of `source`. A log that cannot be opened at all (a running
/// server holds it, a wrong path) or a server feed that stops answering checked nothing
/// beyond where it stopped: an error, not a finding. A data dir's record that cannot be
/// read is a finding (the store is damaged), and so are sled's own panics on unreadable
/// files, caught and reported the same way.
pub fn verify(source: &Source, on_position: impl FnMut(u64)) -> Result<VerifyReport, Error> {
    let records = match records_of(source) {
        Err(Error::Store(StoreError::Damaged(why))) => {
            let mut v = Verifier::new();
            v.unreadable(1, format!("damaged store: {why}"));
            return Ok(v.finish());
        }
        opened => opened?,
    };
    // A data dir's own signed heads are held to its records too (a server's are checked
    // with the auditor's key, by `verify --checkpoint`).
    let heads = match source {
        Source::DataDir(dir) => match crate::notary::kept_heads(dir) {
            Ok(heads) => heads,
            Err(e) => {
                let mut v = Verifier::new();
                v.unreadable(0, e.to_string());
                return Ok(v.finish());
            }
        },
        Source::Server { .. } => Box::new(std::iter::empty()),
    };
    let report = verify_with(Ok(records), |v| v.expect_heads_in_order(heads), on_position);
    if let Source::Server { .. } = source {
        if let Some(first) = report.stopped_reading() {
            return Err(Error::Other(first.reason.clone()));
        }
    }
    Ok(report)
}

/// [`verify`], with the Merkle tree over the records also held to `heads` (signed tree
/// heads, in increasing size, read as the records reach them): a head whose root the
/// records do not give is a problem naming its size.
pub fn verify_against(
    source: &Source,
    heads: Box<dyn Iterator<Item = HeadRead> + Send>,
    on_position: impl FnMut(u64),
) -> VerifyReport {
    verify_with(
        records_of(source),
        |v| v.expect_heads_in_order(heads),
        on_position,
    )
}

/// The chain of `records` verified by a verifier `expect` gave its heads.
fn verify_with(
    records: Result<super::source::Records, Error>,
    expect: impl FnOnce(&mut Verifier),
    mut on_position: impl FnMut(u64),
) -> VerifyReport {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut v = Verifier::new();
        expect(&mut v);
        let read = records.map(|records| {
            parallel_map(records, CheckedRecord::check, decoder_threads(), |what| {
                Error::Other(what.to_owned())
            })
        });
        let failed = match read {
            Ok(checked) => checked
                .map(|r| {
                    r.map(|record| {
                        v.accept(&record);
                        on_position(v.events());
                    })
                })
                .find_map(Result::err),
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            v.unreadable(v.events() + 1, e.to_string());
        }
        v.finish()
    }));
    outcome.unwrap_or_else(|_| {
        let mut v = Verifier::new();
        v.unreadable(0, "the store could not be read".into());
        v.finish()
    })
}

/// The projections of `source`'s log up to `until`.
pub fn replay(
    source: &Source,
    until: Until,
    tick: impl FnMut(&idledger_domain::Envelope),
) -> Result<Projections, Error> {
    match source {
        Source::DataDir(dir) => Ok(fold(open_raw(dir)?.envelopes_parallel()?, until, tick)?),
        Source::Server { .. } => {
            // Folded as the pages arrive: the log is never held whole in memory.
            let mut tick = tick;
            let mut p = Projections::new();
            let mut failed = None;
            each_record(source, 1, |pos, bytes| match decode_at(pos, bytes) {
                Ok(e) if until.is_past(&e) => ControlFlow::Break(()),
                Ok(e) => {
                    tick(&e);
                    p.apply_owned(e);
                    ControlFlow::Continue(())
                }
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            })?;
            match failed {
                Some(e) => Err(e.into()),
                None => Ok(p),
            }
        }
    }
}
