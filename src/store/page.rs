//! How records sit in the log tree.
//!
//! Format 2 keeps consecutive records together: one sled entry, keyed by the position of
//! its first record, holds a *page* of up to [`MAX_PAGE_RECORDS`] records. Every record is
//! still stored exactly as written; only sled's per-entry work (a node copy, a log
//! reservation, a split every few inserts) is paid per page instead of per record, which
//! is what bounded restores and large group commits. Format 1 stores (one record per
//! entry) are read and written as they are.
//!
//! A page: `n` (u16 BE), then the end offset of each record in the body (n × u32 BE,
//! increasing), then the body. The record at position `key + i` is `body[end(i-1)..end(i)]`.
//! A page is never rewritten in place: a group commit adds whole pages, so a crash leaves
//! whole pages or none (sled's batches are atomic).

use super::StoreError;

/// Most records in one page.
pub const MAX_PAGE_RECORDS: usize = 256;
/// A page stops taking records once its body passes this many bytes. sled writes a node
/// (up to 17 entries) as one item, and an item larger than a quarter of its 512 KiB
/// segment goes to a blob file of its own, which costs a file and an fsync; 17 pages of
/// this size stay inline.
pub const MAX_PAGE_BYTES: usize = 6 << 10;

/// One record per sled entry (format 1) or pages (format 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Single,
    Paged,
}

impl Layout {
    /// The layout of a store format (`meta.format`).
    pub fn of_format(format: u64) -> Option<Layout> {
        match format {
            1 => Some(Layout::Single),
            2 => Some(Layout::Paged),
            _ => None,
        }
    }
}

/// The records under one sled entry, parsed (offsets checked) but not copied.
pub struct Page {
    first: u64,
    value: sled::IVec,
    count: usize,
    /// Where the body starts (0 for a format 1 entry).
    body: usize,
}

fn corrupt(position: u64, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        position,
        reason: reason.into(),
    }
}

impl Page {
    /// The entry stored under `first`.
    pub fn parse(layout: Layout, first: u64, value: sled::IVec) -> Result<Page, StoreError> {
        if layout == Layout::Single {
            return Ok(Page {
                first,
                value,
                count: 1,
                body: 0,
            });
        }
        let bad = |why: &str| corrupt(first, format!("page under position {first}: {why}"));
        let count = match value.get(..2) {
            Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
            None => return Err(bad("shorter than its header")),
        };
        if count == 0 {
            return Err(bad("holds no records"));
        }
        let body = 2 + 4 * count;
        if value.len() < body {
            return Err(bad("shorter than its header"));
        }
        let mut previous = 0usize;
        for i in 0..count {
            let end = read_end(&value, i);
            if end < previous {
                return Err(bad("record offsets go backwards"));
            }
            previous = end;
        }
        if previous != value.len() - body {
            return Err(bad("record offsets do not end where the page does"));
        }
        Ok(Page {
            first,
            value,
            count,
            body,
        })
    }

    pub fn first(&self) -> u64 {
        self.first
    }

    /// Position of the last record.
    pub fn last(&self) -> u64 {
        self.first + self.count as u64 - 1
    }

    /// The record at `position`, if this page holds it.
    pub fn get(&self, position: u64) -> Option<sled::IVec> {
        let i = usize::try_from(position.checked_sub(self.first)?).ok()?;
        if i >= self.count {
            return None;
        }
        if self.body == 0 {
            return Some(self.value.clone());
        }
        let start = if i == 0 {
            0
        } else {
            read_end(&self.value, i - 1)
        };
        let end = read_end(&self.value, i);
        Some(self.value.subslice(self.body + start, end - start))
    }
}

fn read_end(value: &[u8], i: usize) -> usize {
    let at = 2 + 4 * i;
    u32::from_be_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]]) as usize
}

/// Gathers consecutive records into the entries of one sled batch.
pub struct PageWriter {
    layout: Layout,
    /// Finished entries: key position and value.
    done: Vec<(u64, Vec<u8>)>,
    first: u64,
    ends: Vec<u32>,
    body: Vec<u8>,
}

impl PageWriter {
    pub fn new(layout: Layout) -> Self {
        PageWriter {
            layout,
            done: Vec::new(),
            first: 0,
            ends: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds the record at `position`, which must follow the last one added (a gap starts a
    /// new page, so a page never claims a position it does not hold).
    pub fn push(&mut self, position: u64, record: &[u8]) {
        if self.layout == Layout::Single {
            self.done.push((position, record.to_vec()));
            return;
        }
        let follows = !self.ends.is_empty() && position == self.first + self.ends.len() as u64;
        if !follows
            || self.ends.len() == MAX_PAGE_RECORDS
            || self.body.len() + record.len() > MAX_PAGE_BYTES
        {
            self.seal();
            self.first = position;
        }
        self.body.extend_from_slice(record);
        // Records are at most MAX_RECORD_BYTES and a page holds one record past
        // MAX_PAGE_BYTES at most, so an end fits in a u32.
        self.ends.push(self.body.len() as u32);
    }

    fn seal(&mut self) {
        if self.ends.is_empty() {
            return;
        }
        let mut value = Vec::with_capacity(2 + 4 * self.ends.len() + self.body.len());
        value.extend_from_slice(&(self.ends.len() as u16).to_be_bytes());
        for end in self.ends.drain(..) {
            value.extend_from_slice(&end.to_be_bytes());
        }
        value.extend_from_slice(&self.body);
        self.body.clear();
        self.done.push((self.first, value));
    }

    /// The entries, keyed by their first position (big-endian).
    pub fn finish(mut self) -> Vec<(u64, Vec<u8>)> {
        self.seal();
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read_back(layout: Layout, entries: Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for (key, value) in entries {
            let page = Page::parse(layout, key, value.into()).unwrap();
            for p in page.first()..=page.last() {
                out.push((p, page.get(p).unwrap().to_vec()));
            }
            assert!(page.get(page.last() + 1).is_none());
            assert!(page.first() == 0 || page.get(page.first() - 1).is_none());
        }
        out
    }

    proptest! {
        #[test]
        fn what_is_written_is_read_back_under_the_same_positions(
            sizes in prop::collection::vec(0usize..9000, 0..400),
            gap_at in prop::option::of(0usize..400),
            single in any::<bool>(),
        ) {
            let layout = if single { Layout::Single } else { Layout::Paged };
            let mut w = PageWriter::new(layout);
            let mut want = Vec::new();
            let mut position = 7u64;
            for (i, n) in sizes.iter().enumerate() {
                if gap_at == Some(i) {
                    position += 3;
                }
                let record: Vec<u8> = (0..*n).map(|b| (b as u8) ^ (i as u8)).collect();
                w.push(position, &record);
                want.push((position, record));
                position += 1;
            }
            let entries = w.finish();
            for (_, value) in &entries {
                let records = if single { 1 } else { usize::from(u16::from_be_bytes([value[0], value[1]])) };
                prop_assert!(records == 1 || value.len() <= 2 + 4 * records + MAX_PAGE_BYTES);
            }
            prop_assert_eq!(read_back(layout, entries), want);
        }

        #[test]
        fn any_bytes_are_a_page_or_a_refusal(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(page) = Page::parse(Layout::Paged, 1, bytes.into()) {
                for p in page.first()..=page.last() {
                    prop_assert!(page.get(p).is_some());
                }
            }
        }
    }

    #[test]
    fn a_damaged_header_is_refused_with_the_page_position() {
        let mut w = PageWriter::new(Layout::Paged);
        w.push(40, b"abc");
        w.push(41, b"de");
        let (key, mut value) = w.finish().remove(0);
        value[5] = 9; // the first end now lies past the second
        let err = Page::parse(Layout::Paged, key, value.into()).err().unwrap();
        assert!(
            matches!(&err, StoreError::Corrupt { position: 40, .. }),
            "{err:?}"
        );
    }
}
