//! [`Floor`]: what the database is known to have held, recorded in a small file beside
//! sled's own (`state-floor` in the database folder), so that a damaged database is
//! refused instead of started from an older state.
//!
//! sled takes a cut, emptied or scribbled file for a torn tail and recovers what precedes
//! it without a word. For Raft that is not a smaller loss but a broken promise: a vote
//! forgotten lets the node vote twice in a term, committed entries forgotten let it elect
//! a leader that lacks them. The floor holds the facts sled must at least hold — the last
//! vote, how far the Raft log reaches, how far the file table is applied — and the store
//! compares them at open.
//!
//! The floor only ever records what sled has already flushed, so a crash (even a power
//! cut) never leaves it ahead of the database: only damage does. It is written with a
//! temp file, fsync and rename, so it is whole or the previous one (which is lower).
//! This module does the reading, comparing and writing; the store decides when.

use std::cmp::Ordering;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use raftshare_raft::{LogId, Vote};

/// The floor's file, in the database folder (so it moves with the database).
pub(crate) const FLOOR_FILE: &str = "state-floor";

const HEADER: &str = "# raftshare: what this database held at its last flush. A database found behind it at\n\
                      # start was damaged and is refused. Written by raftshare; do not edit.\n";

/// The facts about a database that only grow while it works: what the floor records
/// and what the store reads from sled to compare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The last saved vote.
    pub(crate) vote: Option<Vote>,
    /// The Raft log reaches at least this index (an entry, or the last purged one). Only
    /// applied entries count: they are committed, so no truncation takes them back.
    pub(crate) log_end: Option<u64>,
    /// The file table is applied up to this index.
    pub(crate) applied: Option<u64>,
}

impl Facts {
    /// The facts of a database whose vote, log end and last applied entry are these.
    pub(crate) fn of(vote: Option<Vote>, log_end: Option<u64>, applied: Option<LogId>) -> Facts {
        let applied = applied.map(|log_id| log_id.index);
        // Entries past the last applied one may still be truncated by a new leader.
        let log_end = log_end.zip(applied).map(|(end, applied)| end.min(applied));
        Facts { vote, log_end, applied }
    }

    /// The larger of each fact.
    fn max(self, other: Facts) -> Facts {
        let vote = match (self.vote, other.vote) {
            (Some(a), Some(b)) if vote_at_least(&a, &b) => Some(a),
            (a, b) => b.or(a),
        };
        Facts { vote, log_end: self.log_end.max(other.log_end), applied: self.applied.max(other.applied) }
    }

    /// What the database whose facts are `self` lacks of `floor`, in words; `None` when it
    /// holds at least as much.
    pub(crate) fn shortfall(&self, floor: &Facts) -> Option<String> {
        let mut missing = Vec::new();
        match (&self.vote, &floor.vote) {
            (None, Some(saved)) => {
                missing.push(format!("its vote is gone, but the vote of term {} was saved", term(saved)))
            }
            (Some(held), Some(saved)) if !vote_at_least(held, saved) => {
                missing.push(format!("its vote is {held}, but {saved} was saved"))
            }
            _ => {}
        }
        match (self.log_end, floor.log_end) {
            (None, Some(saved)) => missing.push(format!("its Raft log is empty, but it reached entry {saved}")),
            (Some(end), Some(saved)) if end < saved => {
                missing.push(format!("its Raft log ends at entry {end}, but it reached entry {saved}"))
            }
            _ => {}
        }
        match (self.applied, floor.applied) {
            (None, Some(saved)) => missing.push(format!("its file table is empty, but entry {saved} was applied")),
            (Some(at), Some(saved)) if at < saved => {
                missing.push(format!("its file table is at entry {at}, but entry {saved} was applied"))
            }
            _ => {}
        }
        (!missing.is_empty()).then(|| missing.join("; "))
    }

    fn to_text(self) -> String {
        let mut text = HEADER.to_string();
        if let Some(vote) = self.vote {
            let committed = if vote.committed { "committed" } else { "uncommitted" };
            text += &format!("vote = {} {} {committed}\n", vote.leader_id.term, vote.leader_id.node_id);
        }
        if let Some(end) = self.log_end {
            text += &format!("log_end = {end}\n");
        }
        if let Some(applied) = self.applied {
            text += &format!("applied = {applied}\n");
        }
        text
    }

    fn from_text(text: &str) -> Result<Facts, String> {
        let mut facts = Facts::default();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let bad = || format!("a line it cannot read: {line:?}");
            let (name, value) = line.split_once(" = ").ok_or_else(bad)?;
            let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
            match name {
                "vote" => {
                    let words: Vec<&str> = value.split(' ').collect();
                    let [term, node, committed] = words[..] else { return Err(bad()) };
                    let committed = match committed {
                        "committed" => true,
                        "uncommitted" => false,
                        _ => return Err(bad()),
                    };
                    let mut vote = Vote::new(number(term)?, number(node)?);
                    vote.committed = committed;
                    facts.vote = Some(vote);
                }
                "log_end" => facts.log_end = Some(number(value)?),
                "applied" => facts.applied = Some(number(value)?),
                // Written by a newer raftshare: what this one does not know, it cannot check.
                _ => {}
            }
        }
        Ok(facts)
    }
}

/// Whether `held` is the vote `saved` or one that came after it (a vote only moves on).
fn vote_at_least(held: &Vote, saved: &Vote) -> bool {
    matches!(held.partial_cmp(saved), Some(Ordering::Greater | Ordering::Equal))
}

fn term(vote: &Vote) -> u64 {
    vote.leader_id.term
}

/// The floor of one database: the facts last recorded, and where.
pub(crate) struct Floor {
    path: PathBuf,
    recorded: Mutex<Facts>,
}

impl Floor {
    /// The floor of the database in the folder `db`, as recorded there; `None` when no
    /// floor was ever recorded (a new database, or one from before floors).
    pub(crate) fn read(db: &Path) -> Result<(Floor, Option<Facts>), String> {
        let path = db.join(FLOOR_FILE);
        let saved = match fs::read(&path) {
            Ok(bytes) => {
                let unreadable = |why: String| format!("its state record {} does not read back: {why}", path.display());
                let text = String::from_utf8(bytes).map_err(|_| unreadable("not text".into()))?;
                Some(Facts::from_text(&text).map_err(unreadable)?)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read its state record {}: {e}", path.display())),
        };
        Ok((Floor { path, recorded: Mutex::new(saved.unwrap_or_default()) }, saved))
    }

    /// Raises the floor to `flushed` (facts read before a completed sled flush) where it
    /// is higher; writes the file only when something changed. Blocking: one fsync.
    pub(crate) fn raise(&self, flushed: Facts) -> io::Result<()> {
        let mut recorded = self.recorded.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let raised = recorded.max(flushed);
        if raised == *recorded && self.path.exists() {
            return Ok(());
        }
        write_durably(&self.path, raised.to_text().as_bytes())?;
        *recorded = raised;
        Ok(())
    }

    /// The floor's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new file, whole.
///
/// The folder is not fsynced after the rename: a rename lost in a power cut leaves the
/// previous floor, which is lower and so still safe; a second fsync every second would
/// buy only a fresher floor after a power cut, for a journal commit each time.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = path.with_extension("new");
    let mut file = fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn vote(term: u64, node: u64, committed: bool) -> Vote {
        let mut vote = Vote::new(term, node);
        vote.committed = committed;
        vote
    }

    fn facts(vote: Option<Vote>, log_end: Option<u64>, applied: Option<u64>) -> Facts {
        Facts { vote, log_end, applied }
    }

    #[test]
    fn facts_read_back_as_written() {
        for f in [
            Facts::default(),
            facts(Some(vote(3, 17, true)), Some(40), Some(41)),
            facts(Some(vote(1, 2, false)), None, Some(0)),
        ] {
            assert_eq!(Facts::from_text(&f.to_text()), Ok(f));
        }
    }

    #[test]
    fn unreadable_text_is_an_error_and_unknown_facts_are_ignored() {
        for text in ["vote = 3", "vote = a b committed", "log_end = -1", "applied=3", "vote = 1 2 maybe"] {
            assert!(Facts::from_text(text).is_err(), "{text:?} read back");
        }
        assert_eq!(Facts::from_text("later = 7\napplied = 2\n"), Ok(facts(None, None, Some(2))));
    }

    #[test]
    fn the_log_end_counts_only_applied_entries() {
        let applied = Some(LogId::new(CommittedLeaderId::new(1, 1), 5));
        assert_eq!(Facts::of(None, Some(9), applied), facts(None, Some(5), Some(5)));
        assert_eq!(Facts::of(None, Some(3), applied), facts(None, Some(3), Some(5)));
        assert_eq!(Facts::of(None, Some(3), None), facts(None, None, None));
    }

    #[test]
    fn a_database_at_or_past_its_floor_lacks_nothing() {
        let floor = facts(Some(vote(3, 1, false)), Some(10), Some(10));
        for held in [
            floor,
            facts(Some(vote(3, 1, true)), Some(10), Some(10)),
            facts(Some(vote(4, 2, false)), Some(12), Some(11)),
        ] {
            assert_eq!(held.shortfall(&floor), None, "{held:?}");
        }
        assert_eq!(floor.shortfall(&Facts::default()), None);
    }

    #[test]
    fn a_database_behind_its_floor_says_what_it_lacks() {
        let floor = facts(Some(vote(3, 1, true)), Some(40), Some(40));
        let cases = [
            (Facts::default(), vec!["vote is gone", "term 3", "log is empty", "entry 40", "file table is empty"]),
            (facts(Some(vote(2, 1, true)), Some(40), Some(40)), vec!["its vote is", "was saved"]),
            (facts(Some(vote(3, 1, false)), Some(40), Some(40)), vec!["its vote is"]),
            (facts(Some(vote(3, 1, true)), Some(12), Some(40)), vec!["log ends at entry 12, but it reached entry 40"]),
            (facts(Some(vote(3, 1, true)), Some(40), Some(39)), vec!["file table is at entry 39"]),
        ];
        for (held, words) in cases {
            let said = held.shortfall(&floor).unwrap_or_else(|| panic!("{held:?} lacks nothing"));
            for word in words {
                assert!(said.contains(word), "{said:?} does not say {word:?}");
            }
        }
    }

    #[test]
    fn the_floor_only_rises_and_writes_only_on_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let (floor, saved) = Floor::read(dir.path()).unwrap();
        assert_eq!(saved, None);
        floor.raise(facts(Some(vote(2, 1, true)), Some(5), Some(5))).unwrap();
        floor.raise(facts(Some(vote(1, 1, true)), Some(3), Some(7))).unwrap();
        let (_, saved) = Floor::read(dir.path()).unwrap();
        assert_eq!(saved, Some(facts(Some(vote(2, 1, true)), Some(5), Some(7))));

        fs::remove_file(dir.path().join(FLOOR_FILE)).unwrap();
        floor.raise(facts(None, Some(1), None)).unwrap();
        assert!(floor.path().exists(), "a floor file removed is written again");
        assert!(!dir.path().join("state-floor.new").exists(), "the temp file is renamed");
    }

    #[test]
    fn a_damaged_floor_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FLOOR_FILE), b"\xff\xfe garbage").unwrap();
        let err = Floor::read(dir.path()).err().unwrap();
        assert!(err.contains("state record") && err.contains("does not read back"), "{err}");
    }
}
