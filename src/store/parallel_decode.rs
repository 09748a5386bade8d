//! Reading and decoding a log on every core, in order.
//!
//! A full scan is bound by decoding, while folding, verifying and exporting must stay in
//! log order. So one thread reads the records and deals batches of them round-robin to
//! workers; the consumer takes the results back in the same round-robin order, which is
//! log order. (Workers that each scan their own position ranges of the store were tried:
//! no faster on a cold store, and slower on a warm one, where sled's iterators contend.)
//!
//! The end is explicit: after the last batch comes `End` (or the error that stopped the
//! reading), so a thread that dies (a panic inside sled on a damaged file, say) shows up as
//! an error, never as a log that merely seems shorter.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

/// Records per batch: large enough to amortise channel hand-offs.
const BATCH: u64 = 2048;
/// Batches queued per worker.
const DEPTH: usize = 4;

/// Reads records: calls its argument with each `(position, bytes)` in log order until the
/// argument breaks or the records end.
pub type Reader<E> =
    Box<dyn FnOnce(&mut dyn FnMut(u64, &[u8]) -> ControlFlow<()>) -> Result<(), E> + Send>;

/// A worker's answer for one batch.
enum Out<T, E> {
    Batch(VecDeque<T>),
    /// The batch's results before the failure, then the failure.
    Failed(VecDeque<T>, E),
    End,
}

/// Records copied into one buffer, for the stream reader to deal out: one allocation
/// per batch, not per record.
#[derive(Default)]
struct Batch {
    positions: Vec<u64>,
    ends: Vec<usize>,
    bytes: Vec<u8>,
}

impl Batch {
    fn with_room() -> Self {
        Batch {
            positions: Vec::with_capacity(BATCH as usize),
            ends: Vec::with_capacity(BATCH as usize),
            bytes: Vec::new(),
        }
    }

    fn push(&mut self, position: u64, bytes: &[u8]) {
        self.positions.push(position);
        self.bytes.extend_from_slice(bytes);
        self.ends.push(self.bytes.len());
    }

    fn records(&self) -> impl Iterator<Item = (u64, &[u8])> {
        (0..self.positions.len()).map(|i| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            (self.positions[i], &self.bytes[start..self.ends[i]])
        })
    }

    fn clear(&mut self) {
        self.positions.clear();
        self.ends.clear();
        self.bytes.clear();
    }
}

enum In<E> {
    Batch(Batch),
    Failed(E),
    End,
}

/// The results of `work` over every record, in log order; `Err` once if reading failed or a
/// thread was lost, then the end.
///
/// Buffers go round: result queues back from the consumer to their worker, and the stream
/// reader's batches back from the workers. A scan reuses a handful of buffers instead of
/// asking the allocator for fresh megabytes (and the kernel for zeroed pages) per batch.
pub struct ParallelMap<T, E> {
    outputs: Vec<Receiver<Out<T, E>>>,
    returns: Vec<SyncSender<VecDeque<T>>>,
    next: usize,
    current: VecDeque<T>,
    current_from: usize,
    failure: Option<E>,
    done: bool,
    lost: fn(&'static str) -> E,
    /// The stream reader's thread, joined on drop.
    scanner: Option<std::thread::JoinHandle<()>>,
}

/// How long a dropped map waits for its reader to stop.
const READER_LET_GO: std::time::Duration = std::time::Duration::from_secs(5);

impl<T, E> Drop for ParallelMap<T, E> {
    /// Waits for the stream reader to let go of what it reads from: a consumer that stops
    /// early may open the same store at once (sled allows one opening of a store at a
    /// time, even in one process). With the results gone the workers stop at their next
    /// hand-off, and then the reader at its next: a store's reader within a batch, but
    /// a server's only once its page has come, so the wait is bounded and the reader
    /// then left to finish on its own.
    fn drop(&mut self) {
        self.outputs.clear();
        self.returns.clear();
        if let Some(scanner) = self.scanner.take() {
            let started = std::time::Instant::now();
            while !scanner.is_finished() && started.elapsed() < READER_LET_GO {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            if scanner.is_finished() {
                let _ = scanner.join();
            }
        }
    }
}

/// Runs `read` on its own thread and `work` over every record on `workers` threads.
/// `lost` makes the error for a thread that stopped without saying why. Dropping the
/// result stops the threads at their next hand-off, and returns once `read` has.
pub fn parallel_map<T, E>(
    read: Reader<E>,
    work: impl Fn(u64, &[u8]) -> T + Send + Sync + 'static,
    workers: usize,
    lost: fn(&'static str) -> E,
) -> ParallelMap<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    let work = Arc::new(work);
    let workers = workers.max(1);
    let mut outputs = Vec::new();
    let mut returns = Vec::new();
    let mut inputs = Vec::new();
    let (spare_tx, spare_rx) = sync_channel::<Batch>(workers * (DEPTH + 1) + 1);
    for _ in 0..workers {
        let (out_tx, out_rx) = sync_channel::<Out<T, E>>(DEPTH);
        let (back_tx, back_rx) = sync_channel::<VecDeque<T>>(DEPTH + 2);
        let work = work.clone();
        let (in_tx, in_rx) = sync_channel::<In<E>>(DEPTH);
        inputs.push(in_tx);
        let spare_tx = spare_tx.clone();
        let job = move || stream_worker(in_rx, &*work, out_tx, back_rx, spare_tx);
        if std::thread::Builder::new()
            .name("decode".into())
            .spawn(job)
            .is_err()
        {
            // Fewer workers rather than none: the batches go round-robin over those started.
            inputs.truncate(outputs.len());
            break;
        }
        outputs.push(out_rx);
        returns.push(back_tx);
    }
    let spawned = std::thread::Builder::new()
        .name("scan".into())
        .spawn(move || deal(read, inputs, spare_rx, lost));
    let done = outputs.is_empty() || spawned.is_err();
    ParallelMap {
        scanner: spawned.ok(),
        outputs,
        returns,
        next: 0,
        current: VecDeque::new(),
        current_from: 0,
        failure: None,
        done,
        lost,
    }
}

/// A worker: maps the batches the reader deals it.
fn stream_worker<T, E>(
    input: Receiver<In<E>>,
    work: &(dyn Fn(u64, &[u8]) -> T + Send + Sync),
    out: SyncSender<Out<T, E>>,
    back: Receiver<VecDeque<T>>,
    spare: SyncSender<Batch>,
) {
    for msg in input {
        let (msg, last) = match msg {
            In::Batch(mut b) => {
                let mut items = back
                    .try_recv()
                    .unwrap_or_else(|_| VecDeque::with_capacity(b.positions.len()));
                items.extend(b.records().map(|(p, r)| work(p, r)));
                b.clear();
                let _ = spare.try_send(b);
                (Out::Batch(items), false)
            }
            In::Failed(e) => (Out::Failed(VecDeque::new(), e), true),
            In::End => (Out::End, true),
        };
        if out.send(msg).is_err() || last {
            return;
        }
    }
}

/// The stream reader: deals batches round-robin, then the end or the error.
fn deal<E>(
    read: Reader<E>,
    inputs: Vec<SyncSender<In<E>>>,
    spare: Receiver<Batch>,
    lost: fn(&'static str) -> E,
) {
    let n = inputs.len();
    let mut i = 0usize;
    let send = |msg: In<E>, i: &mut usize| {
        let ok = n > 0 && inputs[*i % n].send(msg).is_ok();
        *i += 1;
        ok
    };
    let mut batch = Batch::with_room();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        read(&mut |pos, bytes| {
            batch.push(pos, bytes);
            if batch.positions.len() as u64 == BATCH {
                let next = spare.try_recv().unwrap_or_else(|_| Batch::with_room());
                if !send(In::Batch(std::mem::replace(&mut batch, next)), &mut i) {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })
    }));
    if !batch.positions.is_empty() && !send(In::Batch(batch), &mut i) {
        return;
    }
    let last = match outcome {
        Ok(Ok(())) => In::End,
        Ok(Err(e)) => In::Failed(e),
        Err(_) => In::Failed(lost("reading the records failed")),
    };
    send(last, &mut i);
}

impl<T, E> Iterator for ParallelMap<T, E> {
    type Item = Result<T, E>;

    fn next(&mut self) -> Option<Result<T, E>> {
        loop {
            if let Some(t) = self.current.pop_front() {
                return Some(Ok(t));
            }
            if let Some(e) = self.failure.take() {
                return Some(Err(e));
            }
            if self.done {
                return None;
            }
            // Batch k comes from worker k % n.
            let from = self.next;
            let msg = self.outputs[from].recv();
            self.next = (from + 1) % self.outputs.len();
            let items = match msg {
                Ok(Out::Batch(items)) => items,
                Ok(Out::Failed(items, e)) => {
                    self.failure = Some(e);
                    self.done = true;
                    items
                }
                Ok(Out::End) => {
                    self.done = true;
                    continue;
                }
                Err(_) => {
                    self.done = true;
                    return Some(Err((self.lost)("a decoding thread stopped")));
                }
            };
            let spent = std::mem::replace(&mut self.current, items);
            let _ = self.returns[self.current_from].try_send(spent);
            self.current_from = from;
        }
    }
}

/// Worker threads worth starting on this machine.
pub fn decoder_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(1, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_numbers(
        from: u64,
        through: u64,
        fail_at: Option<u64>,
        f: &mut dyn FnMut(u64, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), String> {
        for p in from..=through {
            if Some(p) == fail_at {
                return Err(format!("unreadable at {p}"));
            }
            if f(p, &p.to_le_bytes()).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn numbers(n: u64, fail_at: Option<u64>) -> Reader<String> {
        Box::new(move |f| read_numbers(1, n, fail_at, f))
    }

    fn lost(what: &'static str) -> String {
        what.to_owned()
    }

    fn decode(p: u64, b: &[u8]) -> (u64, u64) {
        (p, u64::from_le_bytes(b.try_into().unwrap()))
    }

    #[test]
    fn results_come_back_in_log_order() {
        for n in [0, 1, 2047, 2048, 2049, 10_000] {
            let got: Vec<_> = parallel_map(numbers(n, None), decode, 3, lost)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(got, (1..=n).map(|p| (p, p)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_read_error_comes_after_every_record_before_it() {
        let got: Vec<_> = parallel_map(numbers(10_000, Some(5_000)), decode, 2, lost).collect();
        assert_eq!(got.len(), 5_000);
        assert!(got[..4_999].iter().all(Result::is_ok));
        assert_eq!(got[4_999], Err("unreadable at 5000".to_owned()));
    }

    #[test]
    fn a_reader_that_panics_is_an_error_not_an_early_end() {
        let stream: Reader<String> = Box::new(|f| {
            for p in 1..=3000u64 {
                let _ = f(p, &p.to_le_bytes());
            }
            panic!("sled could not read a page");
        });
        let got: Vec<_> = parallel_map(stream, decode, 2, lost).collect();
        assert_eq!(got.len(), 3001);
        assert_eq!(got[3000], Err("reading the records failed".to_owned()));
    }

    #[test]
    fn dropping_the_consumer_early_stops_the_reader() {
        let mut it = parallel_map(numbers(u64::MAX - 1, None), decode, 2, lost);
        assert_eq!(it.next(), Some(Ok((1, 1))));
        drop(it);
    }

    /// What a reader holds (a store's lock, say) is let go by the time the map is
    /// dropped: whoever stopped early may open the same store again at once. A reader
    /// that does not stop (a server's page on its way) is waited for a while only.
    #[test]
    fn a_dropped_map_has_let_go_of_its_reader() {
        struct Held(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Held {
            fn drop(&mut self) {
                // Letting go takes a while (sled flushes when a store is dropped).
                std::thread::sleep(std::time::Duration::from_millis(50));
                self.0.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        for _ in 0..5 {
            let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let held = Held(open.clone());
            let read: Reader<String> = Box::new(move |f| {
                let _held = &held;
                read_numbers(1, 100_000, None, f)
            });
            let mut it = parallel_map(read, decode, 2, lost);
            assert_eq!(it.next(), Some(Ok((1, 1))));
            drop(it);
            assert!(!open.load(std::sync::atomic::Ordering::SeqCst));
        }
        let stuck: Reader<String> = Box::new(|f| {
            // A whole batch goes out; then the reader waits on something else.
            read_numbers(1, BATCH, None, f)?;
            std::thread::sleep(std::time::Duration::from_secs(30));
            Ok(())
        });
        let mut it = parallel_map(stuck, decode, 2, lost);
        assert_eq!(it.next(), Some(Ok((1, 1))));
        let started = std::time::Instant::now();
        drop(it);
        assert!(started.elapsed() < READER_LET_GO + std::time::Duration::from_secs(2));
    }
}
