//! The forget mark and the tombstones a `ForgetDeleted` removes.
//!
//! `m/forgotten_upto` ([`FORGOTTEN_KEY`]) is the highest `upto` of a `ForgetDeleted`
//! applied here: no tombstone is at or below it, so a forget reads (through the entry
//! index) only the versions above the last one. The mark rises only past a range read
//! whole; a snapshot install or a rebuild of the entry index drops it (in
//! `entry_index`), and the next forget reads from 0, with the same outcome.
//!
//! The mark is written with the entry that raised it, by `apply`; this module never
//! writes to the tree.

use super::apply::PendingTable;
use super::entry_index::read_chunk;
use super::{be_u64, StateMachine};
use crate::codec::{entry_start, CodecError, ENTRY_INDEX_KEY, FORGOTTEN_KEY};
use crate::table::TableView;

impl StateMachine {
    /// How many tombstones have a version in `(after, upto]` (reads only the records
    /// written in that range, through the entry index).
    pub fn tombstones_between(&self, after: Option<u64>, upto: u64) -> u64 {
        let start = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        if start > upto {
            return 0;
        }
        let mut count = 0;
        for item in self.tree.range(entry_start(start)..entry_start(upto.saturating_add(1))) {
            let Ok((version, paths)) = item.map_err(CodecError::from).and_then(|(key, value)| read_chunk(&key, &value))
            else {
                continue;
            };
            let tombstones = paths.iter().filter(|p| self.get(p).is_some_and(|r| r.deleted && r.version == version));
            count += tombstones.count() as u64;
        }
        count
    }

    /// The highest `upto` of a `ForgetDeleted` applied here (none since the last snapshot
    /// installed: `None`). No tombstone is at or below it.
    pub fn forgotten_upto(&self) -> Option<u64> {
        read_forgotten(&self.tree)
    }
}

impl PendingTable<'_> {
    /// Forgets the tombstones with a version above the mark and at most `upto` (as
    /// removals among this entry's writes); raises the mark when the whole range was read.
    pub(super) fn forget(&mut self, upto: u64) -> Result<u64, CodecError> {
        let mut forgotten = 0;
        let mark = match self.forgotten {
            Some(mark) => Some(mark),
            None => read_forgotten(self.tree),
        };
        // The mark rises only past what was read whole: an index known to be incomplete,
        // or a chunk or record that will not read, may hide tombstones, and a later forget
        // reads from the old mark again (after the rebuild at the next start).
        let mut whole = !self.damaged_index && self.tree.get(ENTRY_INDEX_KEY)?.is_some();
        // The entry index lists records by version: only those above the last forget's
        // mark and up to `upto` can be tombstones to forget (a table of 100,000 files was
        // read whole at every forget, on every node).
        let start = mark.map_or(0, |m| m.saturating_add(1));
        for item in self.tree.range(entry_start(start)..entry_start(upto.saturating_add(1).max(start))) {
            let (key, value) = item?;
            let (version, paths) = match read_chunk(&key, &value) {
                Ok(chunk) => chunk,
                Err(e) => {
                    // Its tombstones stay; the node goes on (the index is built again at
                    // the next start).
                    tracing::warn!("skipping a damaged chunk of the entry index while forgetting tombstones: {e}");
                    self.damaged_index = true;
                    whole = false;
                    continue;
                }
            };
            for path in paths {
                match self.get(&path) {
                    Ok(Some(record)) if record.deleted && record.version == version && version <= upto => {
                        self.writes.insert(path, None);
                        forgotten += 1;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(
                            "keeping {path:?}, whose record will not read, while forgetting tombstones: {e}"
                        );
                        whole = false;
                    }
                }
            }
        }
        if whole {
            self.forgotten = Some(mark.map_or(upto, |m| m.max(upto)));
        }
        Ok(forgotten)
    }
}

/// The forget mark (see [`FORGOTTEN_KEY`]); a damaged one counts as none: the next forget
/// reads the entry index from the start, which gives the same outcome.
fn read_forgotten(tree: &sled::Tree) -> Option<u64> {
    let read = tree.get(FORGOTTEN_KEY).map_err(CodecError::from).and_then(|bytes| match bytes {
        Some(bytes) => be_u64("the forget mark", &bytes).map(Some),
        None => Ok(None),
    });
    read.unwrap_or_else(|e| {
        tracing::warn!("cannot read how far tombstones were forgotten, looking from the start: {e}");
        None
    })
}
