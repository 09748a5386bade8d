//! Users' names folded to lower case in one buffer, for searches.
//!
//! A search looks at every user. Read off the views, that is two strings behind each of
//! 200,000 boxed views (a few cache misses apiece), folded anew for every search; here it
//! is one buffer of a few MB read front to back with a vectorised substring search.

use idledger_domain::UserId;
use memchr::memmem;
use rustc_hash::FxHashMap;

/// Each user's principal name and display name, folded as [`str::to_lowercase`] folds
/// them, side by side in one buffer.
///
/// **Invariant:** entries tile the buffer in order (each starts where the one before
/// ends), so where a match lies tells whose names it is in, without separators a name
/// could contain.
#[derive(Clone, Debug, Default)]
pub struct NameIndex {
    text: Vec<u8>,
    entries: Vec<Entry>,
    /// The entry holding each user's current names.
    slot: FxHashMap<UserId, usize>,
    /// Bytes of the buffer held by entries whose user was renamed since.
    replaced: usize,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// `None` once the user's names changed and a newer entry holds them.
    user: Option<UserId>,
    start: usize,
    /// Where the display name starts (the principal name is before it).
    display: usize,
    end: usize,
}

/// The buffer is rewritten without replaced entries once they hold more than half of it
/// and at least this much (so a small index is not rewritten on every rename).
const REWRITE_AFTER: usize = 1 << 16;

impl NameIndex {
    /// Records `user`'s names (replacing the ones recorded before, if they differ).
    pub fn set(&mut self, user: UserId, principal: &str, display: &str) {
        let principal = principal.to_lowercase();
        let display = display.to_lowercase();
        if let Some(&i) = self.slot.get(&user) {
            let e = self.entries[i];
            if self.text[e.start..e.display] == *principal.as_bytes()
                && self.text[e.display..e.end] == *display.as_bytes()
            {
                return;
            }
            self.entries[i].user = None;
            self.replaced += e.end - e.start;
        }
        let start = self.text.len();
        self.text.extend_from_slice(principal.as_bytes());
        let middle = self.text.len();
        self.text.extend_from_slice(display.as_bytes());
        self.slot.insert(user, self.entries.len());
        self.entries.push(Entry {
            user: Some(user),
            start,
            display: middle,
            end: self.text.len(),
        });
        if self.replaced > REWRITE_AFTER && self.replaced * 2 > self.text.len() {
            self.rewrite();
        }
    }

    /// Drops replaced entries.
    fn rewrite(&mut self) {
        let mut text = Vec::with_capacity(self.text.len() - self.replaced);
        let mut entries = Vec::with_capacity(self.slot.len());
        for e in &self.entries {
            let Some(user) = e.user else { continue };
            let start = text.len();
            text.extend_from_slice(&self.text[e.start..e.end]);
            self.slot.insert(user, entries.len());
            entries.push(Entry {
                user: Some(user),
                start,
                display: start + (e.display - e.start),
                end: text.len(),
            });
        }
        self.text = text;
        self.entries = entries;
        self.replaced = 0;
    }

    /// The users whose principal name or display name, lower-cased, contains `needle`
    /// (itself lower case): each once, in the order their names were last recorded.
    pub fn matching<'a>(&'a self, needle: &'a str) -> impl Iterator<Item = UserId> + 'a {
        Matches {
            index: self,
            finder: memmem::Finder::new(needle.as_bytes()),
            at: 0,
            entry: 0,
        }
    }
}

struct Matches<'a> {
    index: &'a NameIndex,
    finder: memmem::Finder<'a>,
    /// Where the search goes on in the buffer.
    at: usize,
    /// The first entry that may hold the next match.
    entry: usize,
}

impl Iterator for Matches<'_> {
    type Item = UserId;

    fn next(&mut self) -> Option<UserId> {
        let NameIndex { text, entries, .. } = self.index;
        let len = self.finder.needle().len();
        loop {
            let e = *entries.get(self.entry)?;
            if len == 0 {
                // In every name (memmem would report it at every byte).
                self.entry += 1;
                match e.user {
                    Some(user) => return Some(user),
                    None => continue,
                }
            }
            let from = self.at.max(e.start);
            let hit = from + self.finder.find(text.get(from..)?)?;
            if hit >= e.end {
                // Skip to the entry holding the hit (entries tile the buffer).
                self.entry += entries[self.entry..].partition_point(|x| x.end <= hit);
                self.at = hit;
                continue;
            }
            let in_one_name = hit + len <= e.display || (hit >= e.display && hit + len <= e.end);
            match e.user {
                Some(user) if in_one_name => {
                    self.entry += 1;
                    self.at = e.end;
                    return Some(user);
                }
                // A replaced entry: its user is found, if at all, in a later one.
                None => {
                    self.entry += 1;
                    self.at = e.end;
                }
                // Across the two names: look on from the next byte.
                Some(_) => self.at = hit + 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> UserId {
        UserId(uuid::Uuid::from_u128(u128::from(n)))
    }

    /// What a search means, read off the names themselves.
    fn naive(names: &[(u8, String, String)], needle: &str) -> Vec<UserId> {
        let mut current: Vec<(u8, &str, &str)> = Vec::new();
        for (n, p, d) in names {
            current.retain(|(m, ..)| m != n);
            current.push((*n, p, d));
        }
        let mut found: Vec<UserId> = current
            .into_iter()
            .filter(|(_, p, d)| {
                p.to_lowercase().contains(needle) || d.to_lowercase().contains(needle)
            })
            .map(|(n, ..)| id(n))
            .collect();
        found.sort();
        found
    }

    fn found(index: &NameIndex, needle: &str) -> Vec<UserId> {
        let mut found: Vec<UserId> = index.matching(needle).collect();
        let all = found.len();
        found.sort();
        found.dedup();
        assert_eq!(found.len(), all, "a user found twice for {needle:?}");
        found
    }

    #[test]
    fn a_match_across_the_two_names_is_no_match() {
        let mut index = NameIndex::default();
        index.set(id(1), "ada@contoso.com", "Ada Lovelace");
        index.set(id(2), "bob@contoso.com", "Bob");
        assert_eq!(found(&index, "comada"), vec![]);
        assert_eq!(found(&index, "ebob"), vec![], "across two users");
        assert_eq!(found(&index, "com"), vec![id(1), id(2)]);
        assert_eq!(found(&index, "ada l"), vec![id(1)]);
        assert_eq!(found(&index, ""), vec![id(1), id(2)]);
        index.set(id(1), "ada@fabrikam.com", "Ada Lovelace");
        assert_eq!(
            found(&index, "contoso"),
            vec![id(2)],
            "the old name is gone"
        );
    }

    proptest! {
        /// Names from a small alphabet (so needles often match, across names too) with
        /// case and non-ASCII letters that fold to other lengths; renames enough to
        /// rewrite the buffer.
        #[test]
        fn finds_what_a_scan_of_the_current_names_finds(
            names in proptest::collection::vec(
                (0u8..40, "[abAB@İẞé]{0,6}", "[abAB İẞé]{0,6}"), 0..400),
            needles in proptest::collection::vec("[ab@ i̇ßé]{0,3}", 1..8),
        ) {
            let mut index = NameIndex::default();
            for (n, p, d) in &names {
                index.set(id(*n), p, d);
            }
            for needle in needles {
                let needle = needle.to_lowercase();
                prop_assert_eq!(found(&index, &needle), naive(&names, &needle), "{:?}", needle);
            }
        }
    }

    #[test]
    fn renames_rewrite_the_buffer_without_losing_anyone() {
        let mut index = NameIndex::default();
        let mut names = Vec::new();
        for round in 0..200u32 {
            for n in 0..50u8 {
                let p = format!("user{n}.{round}@contoso.com");
                let d = format!("User {n} ({round}) {}", "x".repeat(20));
                index.set(id(n), &p, &d);
                names.push((n, p, d));
            }
        }
        assert!(
            index.text.len() < 2 * REWRITE_AFTER + 10_000,
            "{}",
            index.text.len()
        );
        assert_eq!(found(&index, ".199@"), naive(&names, ".199@"));
        assert_eq!(found(&index, ".198@"), vec![]);
        assert_eq!(found(&index, "user7."), vec![id(7)]);
    }
}
