//! Where an export's rows go and where a checked export is read from: a file written,
//! hashed and synced on its own threads; a file read and hashed on its own thread; any
//! writer with its hash. Rows are made on other threads while these work the disk.

use idledger_replay::export::RowComparer;
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read, Write};
use std::path::Path;

/// Where an export's bytes go: a file, a response body, or a comparison with a file.
pub trait RowSink {
    /// The file's first bytes (the CSV header), once, before any row. Most sinks take
    /// them like a row.
    fn header(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.row(bytes)
    }
    /// One row, with its line end.
    fn row(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

/// Bytes written somewhere, and their SHA-256 for the manifest.
pub struct HashedWriter<W> {
    /// Where the bytes go.
    pub inner: W,
    sha: Sha256,
}

impl<W: Write> HashedWriter<W> {
    /// Writes to `inner`.
    pub fn new(inner: W) -> Self {
        HashedWriter {
            inner,
            sha: Sha256::new(),
        }
    }

    /// The SHA-256 of everything written, and the writer.
    pub fn finish(self) -> (Vec<u8>, W) {
        (self.sha.finalize().to_vec(), self.inner)
    }
}

impl<W: Write> RowSink for HashedWriter<W> {
    fn row(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sha.update(bytes);
        self.inner.write_all(bytes)
    }
}

impl<R: BufRead> RowSink for RowComparer<R> {
    fn header(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        RowComparer::header(self, bytes)
    }

    fn row(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        RowComparer::row(self, bytes)
    }
}

/// An export file written on its own thread: rows gather in large buffers that a writer
/// thread hashes, writes and syncs as they come, so the disk works while rows are made
/// and little is left to sync at the end.
pub struct FileSink {
    buf: Vec<u8>,
    full: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: Option<std::thread::JoinHandle<std::io::Result<Vec<u8>>>>,
}

/// Bytes per buffer handed to the writer.
const FILE_BUFFER: usize = 1 << 20;
/// Bytes written between syncs.
const SYNC_EVERY: u64 = 16 << 20;

impl FileSink {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::create(path)?;
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(6);
        // Syncs run beside the writes (a sync waits for the disk, and writes must not wait
        // for it): the syncer makes durable what was written before each nudge.
        let syncing = file.try_clone()?;
        let (nudge_tx, nudge_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let syncer = std::thread::Builder::new()
            .name("export-sync".into())
            .spawn(move || {
                for () in nudge_rx {
                    syncing.sync_data()?;
                }
                Ok::<_, std::io::Error>(())
            })?;
        let writer = std::thread::Builder::new()
            .name("export-writer".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                let mut unsynced = 0u64;
                for mut buf in full_rx {
                    sha.update(&buf);
                    file.write_all(&buf)?;
                    unsynced += buf.len() as u64;
                    if unsynced >= SYNC_EVERY {
                        // Busy syncing: the next nudge will cover these bytes too.
                        let _ = nudge_tx.try_send(());
                        unsynced = 0;
                    }
                    buf.clear();
                    let _ = empty_tx.try_send(buf);
                }
                drop(nudge_tx);
                syncer
                    .join()
                    .map_err(|_| std::io::Error::other("the export syncer failed"))??;
                file.sync_all()?;
                Ok(sha.finalize().to_vec())
            })?;
        Ok(FileSink {
            buf: Vec::with_capacity(FILE_BUFFER),
            full: Some(full_tx),
            empty: empty_rx,
            writer: Some(writer),
        })
    }

    fn hand_over(&mut self) -> std::io::Result<()> {
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(FILE_BUFFER));
        let buf = std::mem::replace(&mut self.buf, next);
        let sent = self.full.as_ref().is_some_and(|f| f.send(buf).is_ok());
        if sent {
            Ok(())
        } else {
            // The writer stopped: its error says why.
            self.finish().map(|_| ())
        }
    }

    /// Writes what is left, syncs the file and answers the SHA-256 of all it holds.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        if !self.buf.is_empty() {
            if let Some(f) = &self.full {
                let _ = f.send(std::mem::take(&mut self.buf));
            }
        }
        self.full = None;
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(done)) => done,
            Some(Err(_)) => Err(std::io::Error::other("the export writer failed")),
            None => Err(std::io::Error::other("the export writer has stopped")),
        }
    }
}

impl RowSink for FileSink {
    fn row(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= FILE_BUFFER {
            self.hand_over()?;
        }
        Ok(())
    }
}

/// A file read and hashed on its own thread, in large chunks, while rows are compared.
pub struct FileSource {
    chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    spent: std::sync::mpsc::SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl FileSource {
    /// Opens `path` and starts reading it.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let (chunk_tx, chunk_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(4);
        let (spent_tx, spent_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(6);
        let reader = std::thread::Builder::new()
            .name("export-reader".into())
            .spawn(move || {
                let mut sha = Sha256::new();
                loop {
                    let mut buf = spent_rx.try_recv().unwrap_or_default();
                    buf.clear();
                    let read = (&mut file).take(FILE_BUFFER as u64).read_to_end(&mut buf);
                    let end = !matches!(read, Ok(n) if n > 0);
                    sha.update(&buf);
                    if chunk_tx.send(read.map(|_| buf)).is_err() || end {
                        return sha.finalize().to_vec();
                    }
                }
            })?;
        Ok(FileSource {
            chunks: chunk_rx,
            spent: spent_tx,
            chunk: Vec::new(),
            at: 0,
            reader: Some(reader),
        })
    }

    /// Reads to the end; the SHA-256 of the whole file.
    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        let mut rest = Vec::new();
        self.read_to_end(&mut rest)?;
        drop(self.chunks);
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .ok_or_else(|| std::io::Error::other("the export reader failed"))
    }
}

impl Read for FileSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let have = self.fill_buf()?;
        let n = have.len().min(buf.len());
        buf[..n].copy_from_slice(&have[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for FileSource {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.at == self.chunk.len() {
            // A closed channel is the end (the reader stops after the last chunk).
            if let Ok(next) = self.chunks.recv() {
                let spent = std::mem::replace(&mut self.chunk, next?);
                let _ = self.spent.try_send(spent);
                self.at = 0;
            }
        }
        Ok(&self.chunk[self.at..])
    }

    fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.chunk.len());
    }
}
