//! The rules of the replicated file table, as pure functions: which paths are valid,
//! what a conflict copy is called, and what one committed `Change` does to the table.
//!
//! Every node runs these rules in `apply`, so they must give the same answer
//! everywhere: no I/O, no clock, no randomness, nothing that depends on the platform or
//! the Rust version (e.g. only ASCII character classes). The table itself is anything
//! that implements [`TableView`]; the sled state machine implements it over its tree, the
//! tests over a `BTreeMap`.

use std::collections::BTreeMap;
use std::convert::Infallible;

use raftshare_raft::{Change, Digest, FileOp, FileRecord, KeyRotation, NodeId, OpOutcome, BLOCK_SIZE};

/// The folder, at the top of the shared directory, where a node keeps its own metadata.
pub const META_DIR: &str = ".raftshare";

/// Longest valid path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// Longest valid path component, in bytes (the common file-system limit).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Longest node name kept in a conflict name, in bytes (after sanitizing).
const MAX_NAME_IN_CONFLICT: usize = 64;

/// Why a path cannot be in the shared folder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is the empty string.
    #[error("the path is empty")]
    Empty,
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("the path is {len} bytes long, more than the limit of {MAX_PATH_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The path starts with `/`.
    #[error("the path is absolute (starts with `/`); paths are relative to the shared folder")]
    Absolute,
    /// The path contains a NUL byte.
    #[error("the path contains a NUL byte")]
    Nul,
    /// The path contains a backslash.
    #[error("the path contains a backslash; use `/` to separate folders")]
    Backslash,
    /// A component is empty (a trailing `/` or `//`).
    #[error("the path has an empty component (a trailing `/` or a `//`)")]
    EmptyComponent,
    /// A component is `.`.
    #[error("the path has a `.` component")]
    CurrentDir,
    /// A component is `..`.
    #[error("the path has a `..` component, which could leave the shared folder")]
    ParentDir,
    /// A component is longer than [`MAX_COMPONENT_LEN`].
    #[error("the path component `{component}` is {len} bytes long, more than the limit of {MAX_COMPONENT_LEN}")]
    ComponentTooLong {
        /// The first 32 characters of that component.
        component: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The path is inside the metadata folder.
    #[error("the path is inside `{META_DIR}`, the folder where raftshare keeps its own data")]
    Metadata,
}

/// Checks that `path` may be in the shared folder: relative, `/`-separated, no `..`, `.`
/// or empty component, no NUL or backslash, components of at most 255 bytes, at most 4096
/// bytes in all, and nothing inside [`META_DIR`]. (UTF-8 is guaranteed by `&str`.)
pub fn validate_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { len: path.len() });
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\0') {
        return Err(PathError::Nul);
    }
    // A backslash is a separator on Windows: `a\..\..\x` must not sneak past the `..` check.
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathError::EmptyComponent),
            "." => return Err(PathError::CurrentDir),
            ".." => return Err(PathError::ParentDir),
            c if c.len() > MAX_COMPONENT_LEN => {
                return Err(PathError::ComponentTooLong { component: c.chars().take(32).collect(), len: c.len() })
            }
            _ => {}
        }
    }
    if path.split('/').next() == Some(META_DIR) {
        return Err(PathError::Metadata);
    }
    Ok(())
}

/// The name under which a conflicting copy of `path` is kept:
/// `<stem>.conflict-<node-name>-<index>.<ext>` in the same folder.
///
/// The node name is sanitized so the result is always a valid path when `path` is; if
/// the result would be too long, the stem is shortened, and if even that cannot fit, the
/// copy goes to the top of the shared folder under a name derived from `path`'s hash.
pub fn conflict_name(path: &str, node_name: &str, index: u64) -> String {
    numbered_conflict_name(path, node_name, index, 1)
}

/// [`conflict_name`] with a counter for when that name is taken: `n <= 1` is the plain
/// name, `n >= 2` appends `-<n>` to the tag (`a.conflict-bob-42-2.txt`).
fn numbered_conflict_name(path: &str, node_name: &str, index: u64, n: u64) -> String {
    let node = sanitize_node_name(node_name);
    let tag = if n <= 1 { format!(".conflict-{node}-{index}") } else { format!(".conflict-{node}-{index}-{n}") };
    let (dir, file) = match path.rfind('/') {
        Some(i) => path.split_at(i + 1),
        None => ("", path),
    };
    let (stem, ext) = split_extension(file);

    let fixed_component = tag.len() + ext.len();
    let fixed_path = dir.len() + fixed_component;
    if fixed_component <= MAX_COMPONENT_LEN && fixed_path <= MAX_PATH_LEN {
        let room = (MAX_COMPONENT_LEN - fixed_component).min(MAX_PATH_LEN - fixed_path);
        let stem = truncate_at_char_boundary(stem, room);
        return format!("{dir}{stem}{tag}{ext}");
    }
    // No room in that folder (or an absurdly long extension): a short, deterministic name
    // at the top still keeps the content, which is what matters.
    let digest = Digest::of(path.as_bytes()).to_hex();
    format!("{}-{}", &tag[1..], &digest[..16])
}

/// Whether `path` is a name [`conflict_name`] gives to a copy kept from `node_name`'s
/// edit in entry `index`: the plain name, a numbered one, or the short one at the top.
pub fn is_conflict_copy(path: &str, node_name: &str, index: u64) -> bool {
    let tag = format!("conflict-{}-{index}", sanitize_node_name(node_name));
    let file = path.rsplit('/').next().unwrap_or(path);
    file.match_indices(&tag).any(|(at, _)| {
        let after = &file[at + tag.len()..];
        (at == 0 || file[..at].ends_with('.')) && (after.is_empty() || after.starts_with(['.', '-']))
    })
}

/// Makes a node name safe inside a file name: ASCII letters, digits, `-`, `_` and `.` are
/// kept, anything else becomes `_`; at most 64 bytes; empty becomes `node`.
fn sanitize_node_name(name: &str) -> String {
    // ASCII classes only: Unicode tables change between Rust versions, and every node
    // must derive the very same name.
    let safe: String = name
        .chars()
        .take(MAX_NAME_IN_CONFLICT)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    if safe.is_empty() {
        "node".to_owned()
    } else {
        safe
    }
}

/// Splits a file name into stem and extension (with its dot). A leading dot (`.bashrc`)
/// or a trailing one (`notes.`) does not start an extension.
fn split_extension(file: &str) -> (&str, &str) {
    match file.rfind('.') {
        Some(i) if i > 0 && i + 1 < file.len() => file.split_at(i),
        _ => (file, ""),
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Who made a change and when: what the rules copy into the records they write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// The node whose user made the change.
    pub id: NodeId,
    /// That node's name, used in conflict names.
    pub name: &'a str,
    /// The origin's wall clock, milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl<'a> From<&'a Change> for Origin<'a> {
    fn from(change: &'a Change) -> Self {
        Origin { id: change.origin, name: &change.origin_name, at_ms: change.at_ms }
    }
}

/// The file table as the rules see it: records by path, tombstones included.
pub trait TableView {
    /// What reading or writing the table can fail with (`Infallible` in memory).
    type Error;
    /// The record at `path`, live or tombstone.
    fn get(&self, path: &str) -> Result<Option<FileRecord>, Self::Error>;
    /// Inserts or replaces the record at `record.path`.
    fn put(&mut self, record: FileRecord) -> Result<(), Self::Error>;
    /// Removes every tombstone whose version is at most `upto`; returns how many.
    fn forget_tombstones(&mut self, upto: u64) -> Result<u64, Self::Error>;
}

impl TableView for BTreeMap<String, FileRecord> {
    type Error = Infallible;

    fn get(&self, path: &str) -> Result<Option<FileRecord>, Infallible> {
        Ok(BTreeMap::get(self, path).cloned())
    }

    fn put(&mut self, record: FileRecord) -> Result<(), Infallible> {
        self.insert(record.path.clone(), record);
        Ok(())
    }

    fn forget_tombstones(&mut self, upto: u64) -> Result<u64, Infallible> {
        let before = self.len();
        self.retain(|_, r| !(r.deleted && r.version <= upto));
        Ok((before - self.len()) as u64)
    }
}

/// Applies a whole committed change at log index `index`: its leaf ops in order (batches
/// flattened), each written at `version = index`. Returns one outcome per leaf op.
pub fn apply_change<T: TableView>(table: &mut T, change: &Change, index: u64) -> Result<Vec<OpOutcome>, T::Error> {
    let origin = Origin::from(change);
    change.op.leaves().into_iter().map(|op| apply_op(table, origin, op, index)).collect()
}

/// Applies one leaf op (`Put` or `Delete`) made by `origin`, committed at log index `index`.
///
/// - invalid path, or a `Put` whose block hashes do not match its size: `Rejected`, no effect;
/// - `Put` on an absent path or a tombstone (an edit beats a delete), or whose `base` is
///   the current version: `Written`;
/// - `Put` with another base: `Unchanged` if the content is the same, else the content
///   is kept under [`conflict_name`] and the current record stays: `Conflict`;
/// - `Delete` whose base is the current version: a tombstone, `Deleted`; with a stale
///   base: `DeleteDropped`; of an absent path or a tombstone: `Unchanged`.
pub fn apply_op<T: TableView>(
    table: &mut T,
    origin: Origin<'_>,
    op: &FileOp,
    index: u64,
) -> Result<OpOutcome, T::Error> {
    match op {
        FileOp::Put { path, size, hash, blocks, mtime, base } => {
            if let Err(e) = validate_path(path) {
                return Ok(OpOutcome::Rejected { path: path.clone(), reason: e.to_string() });
            }
            // One hash per block of BLOCK_SIZE bytes: a record that says otherwise could
            // never be assembled, and would have every node retry it (and size temp files
            // by a made-up length) forever.
            if blocks.len() as u64 != size.div_ceil(BLOCK_SIZE) {
                let reason =
                    format!("{size} bytes need {} block hashes, not {}", size.div_ceil(BLOCK_SIZE), blocks.len());
                return Ok(OpOutcome::Rejected { path: path.clone(), reason });
            }
            let record_at = |at: &str| FileRecord {
                path: at.to_owned(),
                size: *size,
                hash: *hash,
                blocks: blocks.clone(),
                mtime: *mtime,
                version: index,
                origin: origin.id,
                origin_name: origin.name.to_owned(),
                modified_at_ms: origin.at_ms,
                deleted: false,
            };
            match table.get(path)? {
                Some(current) if !current.deleted && *base != Some(current.version) => {
                    if current.hash == *hash {
                        return Ok(OpOutcome::Unchanged { path: path.clone() });
                    }
                    let kept_as = free_conflict_name(table, path, origin.name, index)?;
                    table.put(record_at(&kept_as))?;
                    Ok(OpOutcome::Conflict { path: path.clone(), kept_as, version: index })
                }
                // Absent, a tombstone, or derived from the current version.
                _ => {
                    table.put(record_at(path))?;
                    Ok(OpOutcome::Written { path: path.clone(), version: index })
                }
            }
        }
        FileOp::Delete { path, base } => {
            if let Err(e) = validate_path(path) {
                return Ok(OpOutcome::Rejected { path: path.clone(), reason: e.to_string() });
            }
            match table.get(path)? {
                None => Ok(OpOutcome::Unchanged { path: path.clone() }),
                Some(current) if current.deleted => Ok(OpOutcome::Unchanged { path: path.clone() }),
                Some(current) if *base == Some(current.version) => {
                    // The tombstone keeps what was deleted, so a node that was away can tell
                    // "deleted meanwhile" from "a new file of mine".
                    table.put(FileRecord {
                        version: index,
                        origin: origin.id,
                        origin_name: origin.name.to_owned(),
                        modified_at_ms: origin.at_ms,
                        deleted: true,
                        ..current
                    })?;
                    Ok(OpOutcome::Deleted { path: path.clone(), version: index })
                }
                Some(_) => Ok(OpOutcome::DeleteDropped { path: path.clone() }),
            }
        }
        FileOp::RotateKey(rotation) => {
            // Not a change of the file table: the state machine applies it before this.
            Ok(OpOutcome::Rejected {
                path: String::new(),
                reason: format!("key rotation {} inside a batch", rotation.epoch),
            })
        }
        FileOp::ForgetDeleted { upto } => {
            // Only before this entry: a tombstone made in it or later is not known to be
            // applied anywhere (and must stay above the mark).
            let tombstones = table.forget_tombstones((*upto).min(index.saturating_sub(1)))?;
            Ok(OpOutcome::Forgotten { tombstones })
        }
        FileOp::Batch(_) => Ok(OpOutcome::Rejected {
            path: String::new(),
            reason: "a batch is not a leaf op (apply it with apply_change)".to_owned(),
        }),
    }
}

/// Whether a committed key rotation may become the cluster's key, given the epoch of the
/// last one applied (0 for none), who proposed it and which leader wrote its entry. A
/// rotation is made only by the leader's own `rotate-key`, as the whole of its entry, one
/// epoch after the last: anything else (a member's forged proposal, a rotation hidden in
/// a batch, an epoch that skips ahead so the next one would overflow) is refused the same
/// way on every node.
pub fn check_rotation(
    last: u64,
    rotation: &KeyRotation,
    origin: NodeId,
    leader: NodeId,
    whole_entry: bool,
) -> Result<(), String> {
    if !whole_entry {
        return Err(format!("key rotation {} inside a batch: a rotation is an entry of its own", rotation.epoch));
    }
    if origin != leader {
        return Err(format!(
            "key rotation {} was proposed by node {origin}, not by node {leader}, the leader that wrote it",
            rotation.epoch
        ));
    }
    match last.checked_add(1) {
        Some(next) if rotation.epoch == next => Ok(()),
        Some(next) => Err(format!("key rotation {} is not the next one (rotation {next})", rotation.epoch)),
        None => Err(format!("no rotation can follow rotation {last}")),
    }
}

/// The first conflict name for `path` that no live record holds: the plain one, then
/// `-2`, `-3`, … Two stale puts of one path in one entry get distinct names this way.
fn free_conflict_name<T: TableView>(table: &T, path: &str, node_name: &str, index: u64) -> Result<String, T::Error> {
    // Terminates: each name tried is distinct and the table holds finitely many records.
    let mut n = 1;
    loop {
        let name = numbered_conflict_name(path, node_name, index, n);
        debug_assert!(validate_path(&name).is_ok(), "conflict name {name:?} is invalid");
        match table.get(&name)? {
            Some(record) if !record.deleted => n += 1,
            _ => return Ok(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    type Table = BTreeMap<String, FileRecord>;

    const ALICE: Origin<'static> = Origin { id: 1, name: "alice", at_ms: 1_000 };
    const BOB: Origin<'static> = Origin { id: 2, name: "bob", at_ms: 2_000 };

    fn put(path: &str, content: &[u8], base: Option<u64>) -> FileOp {
        FileOp::Put {
            path: path.to_owned(),
            size: content.len() as u64,
            hash: Digest::of(content),
            blocks: vec![Digest::of(content)],
            mtime: 77,
            base,
        }
    }

    fn delete(path: &str, base: Option<u64>) -> FileOp {
        FileOp::Delete { path: path.to_owned(), base }
    }

    fn infallible<T>(result: Result<T, Infallible>) -> T {
        match result {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    fn apply(table: &mut Table, origin: Origin<'_>, op: &FileOp, index: u64) -> OpOutcome {
        infallible(apply_op(table, origin, op, index))
    }

    /// A table holding `a.txt` ("one") written by alice at version 5.
    fn table_with_a() -> Table {
        let mut t = Table::new();
        assert_eq!(
            apply(&mut t, ALICE, &put("a.txt", b"one", None), 5),
            OpOutcome::Written { path: "a.txt".into(), version: 5 }
        );
        t
    }

    fn tombstoned_a() -> Table {
        let mut t = table_with_a();
        apply(&mut t, BOB, &delete("a.txt", Some(5)), 6);
        t
    }

    #[test]
    fn a_rotation_is_taken_only_as_the_leaders_own_next_epoch() {
        let rotation = |epoch| KeyRotation { epoch, sealed: BTreeMap::new() };
        let cases: [(u64, u64, NodeId, NodeId, bool, bool); 9] = [
            // last, epoch, origin, leader, whole entry, taken
            (0, 1, 7, 7, true, true),
            (4, 5, 7, 7, true, true),
            (4, 4, 7, 7, true, false),
            (4, 3, 7, 7, true, false),
            (4, 6, 7, 7, true, false),
            (0, u64::MAX, 7, 7, true, false),
            (u64::MAX, 0, 7, 7, true, false),
            (0, 1, 8, 7, true, false),
            (0, 1, 7, 7, false, false),
        ];
        for (last, epoch, origin, leader, whole, taken) in cases {
            let verdict = check_rotation(last, &rotation(epoch), origin, leader, whole);
            assert_eq!(
                verdict.is_ok(),
                taken,
                "last {last}, epoch {epoch}, origin {origin}, leader {leader}, whole {whole}: {verdict:?}"
            );
        }
    }

    #[test]
    fn validate_path_accepts_ordinary_relative_paths() {
        for ok in [
            "a",
            "a.txt",
            "dir/sub/file.tar.gz",
            ".bashrc",
            "..hidden",
            "...",
            "a..b",
            "a/.raftshare",
            ".raftshare-not-meta/x",
            "x/.raftshare/y",
            "name with spaces/ünïcödé/日本語.txt",
            "C:",
        ] {
            assert_eq!(validate_path(ok), Ok(()), "{ok:?}");
        }
        let longest_component = "c".repeat(MAX_COMPONENT_LEN);
        assert_eq!(validate_path(&longest_component), Ok(()));
        let longest_path = vec!["d".repeat(200); 30].join("/");
        let longest_path = &longest_path[..MAX_PATH_LEN];
        assert!(!longest_path.ends_with('/'));
        assert_eq!(validate_path(longest_path), Ok(()));
    }

    #[test]
    fn validate_path_rejects_each_rule() {
        let too_long = "d/".repeat(MAX_PATH_LEN / 2) + "f";
        let long_component = "c".repeat(MAX_COMPONENT_LEN + 1);
        let cases: Vec<(&str, PathError)> = vec![
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("/", PathError::Absolute),
            ("a\0b", PathError::Nul),
            ("a\\b", PathError::Backslash),
            ("a\\..\\..\\x", PathError::Backslash),
            ("a/", PathError::EmptyComponent),
            ("a//b", PathError::EmptyComponent),
            (".", PathError::CurrentDir),
            ("a/./b", PathError::CurrentDir),
            ("..", PathError::ParentDir),
            ("../x", PathError::ParentDir),
            ("a/../../x", PathError::ParentDir),
            ("a/..", PathError::ParentDir),
            (".raftshare", PathError::Metadata),
            (".raftshare/outbox", PathError::Metadata),
            (&too_long, PathError::TooLong { len: too_long.len() }),
        ];
        for (path, want) in cases {
            assert_eq!(validate_path(path), Err(want), "{path:?}");
        }
        assert!(matches!(
            validate_path(&format!("a/{long_component}/b")),
            Err(PathError::ComponentTooLong { len, .. }) if len == MAX_COMPONENT_LEN + 1
        ));
    }

    #[test]
    fn path_errors_say_what_is_wrong() {
        assert_eq!(
            validate_path("a/../b").unwrap_err().to_string(),
            "the path has a `..` component, which could leave the shared folder"
        );
        assert!(validate_path(".raftshare/x").unwrap_err().to_string().contains(".raftshare"));
    }

    #[test]
    fn a_conflict_copy_is_recognised_by_its_node_and_entry() {
        let long = "x".repeat(300);
        for (path, node, index) in
            [("a/report.txt", "bob", 42), ("Makefile", "my laptop/2", 7), (long.as_str(), "bob", 3)]
        {
            for n in [1, 2] {
                let copy = numbered_conflict_name(path, node, index, n);
                assert!(is_conflict_copy(&copy, node, index), "{copy:?} of {path:?}");
                assert!(!is_conflict_copy(&copy, node, index + 1), "{copy:?} is not of entry {}", index + 1);
                assert!(!is_conflict_copy(&copy, "carol", index), "{copy:?} is not carol's");
            }
        }
        assert!(!is_conflict_copy("a/report.txt", "bob", 42), "a plain file");
        assert!(!is_conflict_copy("a/report.conflict-bob-420.txt", "bob", 42), "another entry's copy");
        assert!(!is_conflict_copy("a/myconflict-bob-42.txt", "bob", 42), "the tag must start a part of the name");
    }

    #[test]
    fn conflict_names_follow_the_pattern() {
        let cases = [
            ("a/report.txt", "bob", 42, "a/report.conflict-bob-42.txt"),
            ("Makefile", "bob", 42, "Makefile.conflict-bob-42"),
            (".bashrc", "bob", 42, ".bashrc.conflict-bob-42"),
            ("a.tar.gz", "bob", 42, "a.tar.conflict-bob-42.gz"),
            ("notes.", "bob", 1, "notes..conflict-bob-1"),
            ("x/y/.config.toml", "bob", 7, "x/y/.config.conflict-bob-7.toml"),
            ("a.d/file", "bob", 7, "a.d/file.conflict-bob-7"),
            ("f.txt", "", 3, "f.conflict-node-3.txt"),
            ("f.txt", "my laptop/2", 3, "f.conflict-my_laptop_2-3.txt"),
            ("f.txt", "a\\b\0c\td", 3, "f.conflict-a_b_c_d-3.txt"),
            ("f.txt", "Jörg", 3, "f.conflict-J_rg-3.txt"),
            ("f.txt", "node-1_x.lan", 3, "f.conflict-node-1_x.lan-3.txt"),
        ];
        for (path, node, index, want) in cases {
            assert_eq!(conflict_name(path, node, index), want, "{path:?} {node:?}");
            assert_eq!(validate_path(want), Ok(()));
        }
        assert_eq!(numbered_conflict_name("a/report.txt", "bob", 42, 2), "a/report.conflict-bob-42-2.txt");
    }

    #[test]
    fn conflict_names_stay_within_limits() {
        // A component at the limit: the stem is shortened, the tag and extension kept.
        let path = format!("dir/{}.txt", "s".repeat(MAX_COMPONENT_LEN - 4));
        let name = conflict_name(&path, "bob", 42);
        assert_eq!(validate_path(&name), Ok(()));
        assert!(name.ends_with(".conflict-bob-42.txt") && name.starts_with("dir/sss"), "{name}");
        assert_eq!(name.len() - "dir/".len(), MAX_COMPONENT_LEN);

        // Multi-byte characters are never cut in half.
        let path = "é".repeat(125) + ".txt";
        assert_eq!(validate_path(&path), Ok(()));
        let name = conflict_name(&path, "bob", 42);
        assert_eq!(validate_path(&name), Ok(()));

        // A path at the total limit: still in the same folder, shorter stem.
        let dir = format!("{}/", "d".repeat(200)).repeat(20);
        let path = format!("{dir}{}", "f".repeat(MAX_PATH_LEN - dir.len()));
        assert_eq!(validate_path(&path), Ok(()));
        assert_eq!(path.len(), MAX_PATH_LEN);
        let name = conflict_name(&path, "bob", 42);
        assert_eq!(validate_path(&name), Ok(()));
        assert!(name.starts_with(&dir), "{name}");

        // No room in the folder at all: a deterministic name at the top.
        let dir = format!("{}/", "d".repeat(254)).repeat(16) + &"e".repeat(14) + "/";
        let path = format!("{dir}f");
        assert_eq!((validate_path(&path), path.len()), (Ok(()), MAX_PATH_LEN));
        let name = conflict_name(&path, "bob", 42);
        assert_eq!(validate_path(&name), Ok(()));
        assert!(name.starts_with("conflict-bob-42-") && !name.contains('/'), "{name}");
        assert_eq!(name, conflict_name(&path, "bob", 42));

        // A very long node name is cut, not allowed to push the name past the limits.
        let name = conflict_name("f.txt", &"n".repeat(1000), 42);
        assert_eq!(name, format!("f.conflict-{}-42.txt", "n".repeat(MAX_NAME_IN_CONFLICT)));
    }

    #[test]
    fn put_on_absent_path_is_written_whatever_the_base() {
        for base in [None, Some(3), Some(99)] {
            let mut t = Table::new();
            assert_eq!(
                apply(&mut t, ALICE, &put("new.txt", b"x", base), 9),
                OpOutcome::Written { path: "new.txt".into(), version: 9 }
            );
            let r = &t["new.txt"];
            assert_eq!((r.version, r.deleted, r.hash), (9, false, Digest::of(b"x")));
        }
    }

    #[test]
    fn written_records_keep_origin_and_metadata() {
        let t = table_with_a();
        let content = b"one";
        assert_eq!(
            t["a.txt"],
            FileRecord {
                path: "a.txt".into(),
                size: 3,
                hash: Digest::of(content),
                blocks: vec![Digest::of(content)],
                mtime: 77,
                version: 5,
                origin: 1,
                origin_name: "alice".into(),
                modified_at_ms: 1_000,
                deleted: false,
            }
        );
    }

    #[test]
    fn put_on_tombstone_is_written_whatever_the_base() {
        for base in [None, Some(5), Some(6), Some(1)] {
            let mut t = tombstoned_a();
            assert_eq!(
                apply(&mut t, ALICE, &put("a.txt", b"back", base), 8),
                OpOutcome::Written { path: "a.txt".into(), version: 8 }
            );
            assert!(!t["a.txt"].deleted);
            assert_eq!(t["a.txt"].hash, Digest::of(b"back"));
        }
    }

    #[test]
    fn put_with_current_base_is_written() {
        let mut t = table_with_a();
        assert_eq!(
            apply(&mut t, BOB, &put("a.txt", b"two", Some(5)), 7),
            OpOutcome::Written { path: "a.txt".into(), version: 7 }
        );
        let r = &t["a.txt"];
        assert_eq!((r.version, r.origin, r.origin_name.as_str()), (7, 2, "bob"));
        assert_eq!(r.modified_at_ms, 2_000);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn put_with_current_base_and_same_content_is_still_written() {
        let mut t = table_with_a();
        assert_eq!(
            apply(&mut t, BOB, &put("a.txt", b"one", Some(5)), 7),
            OpOutcome::Written { path: "a.txt".into(), version: 7 }
        );
    }

    #[test]
    fn stale_put_with_same_content_is_unchanged() {
        for base in [None, Some(4), Some(6)] {
            let mut t = table_with_a();
            let before = t.clone();
            assert_eq!(
                apply(&mut t, BOB, &put("a.txt", b"one", base), 7),
                OpOutcome::Unchanged { path: "a.txt".into() }
            );
            assert_eq!(t, before);
        }
    }

    #[test]
    fn stale_put_with_other_content_is_kept_as_a_conflict_copy() {
        for base in [None, Some(4), Some(6)] {
            let mut t = table_with_a();
            let before = t["a.txt"].clone();
            assert_eq!(
                apply(&mut t, BOB, &put("a.txt", b"two", base), 7),
                OpOutcome::Conflict { path: "a.txt".into(), kept_as: "a.conflict-bob-7.txt".into(), version: 7 }
            );
            assert_eq!(t["a.txt"], before, "the current record stays");
            let copy = &t["a.conflict-bob-7.txt"];
            assert_eq!((copy.version, copy.origin, copy.hash), (7, 2, Digest::of(b"two")));
            assert!(!copy.deleted);
        }
    }

    #[test]
    fn taken_conflict_names_get_a_counter() {
        let mut t = table_with_a();
        let change = Change {
            origin: 2,
            origin_name: "bob".into(),
            at_ms: 2_000,
            op: FileOp::Batch(vec![put("a.txt", b"two", None), put("a.txt", b"three", Some(1))]),
            seqs: vec![],
        };
        let outcomes = infallible(apply_change(&mut t, &change, 7));
        assert_eq!(
            outcomes,
            [
                OpOutcome::Conflict { path: "a.txt".into(), kept_as: "a.conflict-bob-7.txt".into(), version: 7 },
                OpOutcome::Conflict { path: "a.txt".into(), kept_as: "a.conflict-bob-7-2.txt".into(), version: 7 },
            ]
        );
        assert_eq!(t["a.conflict-bob-7-2.txt"].hash, Digest::of(b"three"));

        // A tombstone does not hold a name: the copy takes its place.
        let mut t = table_with_a();
        apply(&mut t, BOB, &put("a.conflict-bob-7.txt", b"z", None), 6);
        apply(&mut t, BOB, &delete("a.conflict-bob-7.txt", Some(6)), 6);
        assert_eq!(
            apply(&mut t, BOB, &put("a.txt", b"two", None), 7),
            OpOutcome::Conflict { path: "a.txt".into(), kept_as: "a.conflict-bob-7.txt".into(), version: 7 }
        );
    }

    #[test]
    fn a_put_whose_blocks_do_not_match_its_size_is_rejected() {
        let mut t = Table::new();
        let lying = |size: u64, blocks: usize| FileOp::Put {
            path: format!("x-{size}-{blocks}.bin"),
            size,
            hash: Digest::of(b"x"),
            blocks: vec![Digest::of(b"x"); blocks],
            mtime: 0,
            base: None,
        };
        for (size, blocks) in [(5 << 30, 1), (u64::MAX, 1), (12, 0), (0, 3), (BLOCK_SIZE + 1, 1)] {
            let outcome = apply(&mut t, ALICE, &lying(size, blocks), 1);
            assert!(
                matches!(&outcome, OpOutcome::Rejected { reason, .. } if reason.contains("block hashes")),
                "{outcome:?}"
            );
        }
        assert!(t.is_empty());
        for (size, blocks) in [(0, 0), (1, 1), (BLOCK_SIZE, 1), (BLOCK_SIZE + 1, 2)] {
            assert!(matches!(apply(&mut t, ALICE, &lying(size, blocks), 2), OpOutcome::Written { .. }));
        }
    }

    #[test]
    fn delete_with_current_base_leaves_a_tombstone() {
        let mut t = table_with_a();
        assert_eq!(
            apply(&mut t, BOB, &delete("a.txt", Some(5)), 6),
            OpOutcome::Deleted { path: "a.txt".into(), version: 6 }
        );
        let r = &t["a.txt"];
        assert!(r.deleted);
        assert_eq!((r.version, r.origin, r.origin_name.as_str(), r.modified_at_ms), (6, 2, "bob", 2_000));
        // What was deleted is kept.
        assert_eq!((r.hash, r.size, r.mtime), (Digest::of(b"one"), 3, 77));
        assert_eq!(r.blocks, vec![Digest::of(b"one")]);
    }

    #[test]
    fn stale_delete_is_dropped() {
        for base in [None, Some(4), Some(6)] {
            let mut t = table_with_a();
            let before = t.clone();
            assert_eq!(
                apply(&mut t, BOB, &delete("a.txt", base), 7),
                OpOutcome::DeleteDropped { path: "a.txt".into() }
            );
            assert_eq!(t, before);
        }
    }

    #[test]
    fn delete_of_absent_path_or_tombstone_is_unchanged() {
        let mut t = Table::new();
        assert_eq!(apply(&mut t, BOB, &delete("nope", None), 3), OpOutcome::Unchanged { path: "nope".into() });
        assert!(t.is_empty());
        for base in [None, Some(5), Some(6)] {
            let mut t = tombstoned_a();
            let before = t.clone();
            assert_eq!(apply(&mut t, ALICE, &delete("a.txt", base), 7), OpOutcome::Unchanged { path: "a.txt".into() });
            assert_eq!(t, before);
        }
    }

    #[test]
    fn invalid_paths_are_rejected_without_effect() {
        for op in [
            put("../escape", b"x", None),
            put(".raftshare/index", b"x", None),
            put("", b"x", None),
            delete("a.txt/", Some(5)),
            delete("/a.txt", Some(5)),
        ] {
            let mut t = table_with_a();
            let before = t.clone();
            let outcome = apply(&mut t, BOB, &op, 9);
            assert!(matches!(outcome, OpOutcome::Rejected { .. }), "{op:?} gave {outcome:?}");
            assert_eq!(t, before);
        }
        let mut t = Table::new();
        assert_eq!(
            apply(&mut t, BOB, &put("a/../b", b"x", None), 1),
            OpOutcome::Rejected { path: "a/../b".into(), reason: PathError::ParentDir.to_string() }
        );
    }

    #[test]
    fn forget_deleted_drops_only_tombstones_up_to_the_mark() {
        let mut t = Table::new();
        apply(&mut t, BOB, &put("old.txt", b"o", None), 1);
        apply(&mut t, BOB, &put("live.txt", b"l", None), 2);
        apply(&mut t, BOB, &put("late.txt", b"x", None), 3);
        apply(&mut t, BOB, &delete("old.txt", Some(1)), 4);
        apply(&mut t, BOB, &delete("late.txt", Some(3)), 6);
        assert_eq!(apply(&mut t, BOB, &FileOp::ForgetDeleted { upto: 5 }, 7), OpOutcome::Forgotten { tombstones: 1 });
        assert!(!t.contains_key("old.txt"), "a tombstone at or before the mark is gone");
        assert!(t["late.txt"].deleted, "a later tombstone stays");
        assert!(!t["live.txt"].deleted);
        // A mark beyond the entry itself is capped at the entry's index.
        assert_eq!(apply(&mut t, BOB, &FileOp::ForgetDeleted { upto: 99 }, 5), OpOutcome::Forgotten { tombstones: 0 });
        // After forgetting, a put on the path is a new file.
        assert_eq!(
            apply(&mut t, BOB, &put("old.txt", b"new", Some(1)), 8),
            OpOutcome::Written { path: "old.txt".into(), version: 8 }
        );
    }

    #[test]
    fn a_batch_is_not_a_leaf() {
        let mut t = Table::new();
        let outcome = apply(&mut t, BOB, &FileOp::Batch(vec![put("x", b"x", None)]), 1);
        assert!(matches!(outcome, OpOutcome::Rejected { .. }));
        assert!(t.is_empty());
    }

    #[test]
    fn apply_change_flattens_batches_in_order_at_one_version() {
        let mut t = table_with_a();
        let change = Change {
            origin: 2,
            origin_name: "bob".into(),
            at_ms: 2_000,
            op: FileOp::Batch(vec![
                put("b.txt", b"b", None),
                FileOp::Batch(vec![delete("a.txt", Some(5)), put("a.txt", b"again", None)]),
                put("../bad", b"x", None),
                delete("b.txt", Some(9)),
            ]),
            seqs: vec![],
        };
        let outcomes = infallible(apply_change(&mut t, &change, 9));
        assert_eq!(
            outcomes,
            [
                OpOutcome::Written { path: "b.txt".into(), version: 9 },
                OpOutcome::Deleted { path: "a.txt".into(), version: 9 },
                OpOutcome::Written { path: "a.txt".into(), version: 9 },
                OpOutcome::Rejected { path: "../bad".into(), reason: PathError::ParentDir.to_string() },
                OpOutcome::Deleted { path: "b.txt".into(), version: 9 },
            ]
        );
        assert!(t.values().all(|r| r.version == 9));
        assert!(t["b.txt"].deleted && !t["a.txt"].deleted);
    }

    fn component() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_.-]{1,12}",
            Just("..".to_owned()),
            Just(".".to_owned()),
            Just(".raftshare".to_owned()),
            Just(String::new()),
            "[^/\\\\\0]{1,8}",
            "x{250,260}",
        ]
    }

    fn any_path() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(component(), 1..6).prop_map(|c| c.join("/")),
            prop::collection::vec("[a-z]{200,255}", 14..18).prop_map(|c| c.join("/")),
            any::<String>(),
        ]
    }

    fn valid_path() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec("[a-zA-Z0-9_. -]{1,12}", 1..6).prop_map(|c| c.join("/")),
            prop::collection::vec("[a-z.]{200,255}", 14..18).prop_map(|c| c.join("/")),
            "[^/\\\\\0]{1,40}",
        ]
        .prop_filter("valid", |p| validate_path(p).is_ok())
    }

    fn small_path() -> impl Strategy<Value = String> {
        prop_oneof![Just("a.txt"), Just("b"), Just("d/c.md"), Just("a.conflict-n1-3.txt")].prop_map(str::to_owned)
    }

    fn leaf_op() -> impl Strategy<Value = FileOp> {
        let base = prop::option::of(0u64..12);
        prop_oneof![
            (small_path(), 0u8..3, base.clone()).prop_map(|(p, c, b)| put(&p, &[c], b)),
            (small_path(), base).prop_map(|(p, b)| delete(&p, b)),
            Just(put("../x", b"x", None)),
        ]
    }

    fn change() -> impl Strategy<Value = Change> {
        (0u64..3, prop::collection::vec(leaf_op(), 1..4)).prop_map(|(origin, mut ops)| Change {
            origin,
            origin_name: format!("n{origin}"),
            at_ms: origin as i64,
            op: if ops.len() == 1 { ops.remove(0) } else { FileOp::Batch(ops) },
            seqs: vec![],
        })
    }

    proptest! {
        #[test]
        fn never_accepts_a_parent_component(path in any_path()) {
            if path.split('/').any(|c| c == "..") {
                prop_assert!(validate_path(&path).is_err());
            }
        }

        #[test]
        fn accepted_paths_keep_every_rule(path in any_path()) {
            if validate_path(&path).is_ok() {
                prop_assert!(!path.is_empty() && path.len() <= MAX_PATH_LEN);
                prop_assert!(!path.contains('\0') && !path.contains('\\'));
                prop_assert!(path.split('/').next() != Some(META_DIR));
                for c in path.split('/') {
                    prop_assert!(!c.is_empty() && c != "." && c != ".." && c.len() <= MAX_COMPONENT_LEN);
                }
            }
        }

        #[test]
        fn conflict_names_are_valid_and_new(
            path in valid_path(),
            node in any::<String>(),
            index in any::<u64>(),
            n in 1u64..5,
        ) {
            let name = numbered_conflict_name(&path, &node, index, n);
            prop_assert_eq!(validate_path(&name), Ok(()), "{:?} from {:?}", name, path);
            prop_assert_ne!(&name, &path);
        }

        #[test]
        fn applying_is_deterministic(changes in prop::collection::vec(change(), 0..20)) {
            let (mut a, mut b) = (Table::new(), Table::new());
            for (i, change) in changes.iter().enumerate() {
                let out_a = infallible(apply_change(&mut a, change, i as u64 + 1));
                let out_b = infallible(apply_change(&mut b, change, i as u64 + 1));
                prop_assert_eq!(out_a, out_b);
            }
            prop_assert_eq!(a, b);
        }

        #[test]
        fn every_leaf_gets_one_outcome_and_the_table_stays_valid(
            changes in prop::collection::vec(change(), 0..20),
        ) {
            let mut t = Table::new();
            for (i, change) in changes.iter().enumerate() {
                let index = i as u64 + 1;
                let outcomes = infallible(apply_change(&mut t, change, index));
                prop_assert_eq!(outcomes.len(), change.op.leaves().len());
                for r in t.values() {
                    prop_assert!(validate_path(&r.path).is_ok());
                    prop_assert!(r.version <= index);
                }
            }
        }
    }
}
