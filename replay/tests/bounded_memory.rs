//! Checking an export holds little in memory however long the file is: a file is whatever
//! an auditor (or an attacker) hands over. (Alone in its binary: it reads the process's
//! peak memory, one test at a time.)

use idledger_replay::export::{RowComparer, RowMismatch};
use idledger_replay::ExportFormat;
use std::io::BufRead;

/// Held by each test: the peak is the process's, so measurements must not overlap.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The most memory this process has held since `reset_peak`, in KiB (Linux: the peak
/// resident set, which writing 5 to `clear_refs` resets to the current one).
fn reset_peak() -> usize {
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    status_kib("VmRSS:")
}

/// `left` bytes of rows, made up as they are read.
struct Rows {
    left: usize,
    chunk: Vec<u8>,
}

impl std::io::Read for Rows {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.fill_buf()?.len().min(buf.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Rows {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        Ok(&self.chunk[..self.chunk.len().min(self.left)])
    }
    fn consume(&mut self, n: usize) {
        self.left -= n;
    }
}

#[test]
fn extra_rows_are_counted_as_they_stream_past_not_read_into_memory() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    for format in [ExportFormat::Jsonl, ExportFormat::Csv] {
        let file = Rows {
            left: 64 << 20,
            chunk: b"row\n".repeat(2048),
        };
        let mut c = RowComparer::new(file, format);
        c.row(b"row\n").unwrap();
        let before = reset_peak();
        let (found, _) = c.finish().unwrap();
        let grew = status_kib("VmHWM:").saturating_sub(before);
        assert!(grew < 8 << 10, "{format:?}: {grew} KiB more held at once");
        assert_eq!(
            found,
            vec![RowMismatch::Extra {
                row: 2,
                count: (16 << 20) - 1
            }]
        );
    }
}

#[test]
fn a_header_without_a_line_break_is_not_read_into_memory() {
    let _alone = ALONE.lock().unwrap_or_else(|e| e.into_inner());
    let file = Rows {
        left: 64 << 20,
        chunk: vec![b'x'; 8192],
    };
    let mut c = RowComparer::new(file, ExportFormat::Csv);
    let before = reset_peak();
    c.header(b"h1,h2\n").unwrap();
    let (found, _) = c.finish().unwrap();
    let grew = status_kib("VmHWM:").saturating_sub(before);
    assert!(grew < 8 << 10, "{grew} KiB more held at once");
    assert_eq!(found[0], RowMismatch::Header);
}
