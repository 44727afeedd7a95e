//! Reading the shared folder: which files are there, and their content hashes.
//!
//! Pure reading, no decisions: the `scanner` compares what this finds with the local
//! index. Symlinks are never followed, the metadata folder and ignored names are skipped,
//! and a file is reported only when it is stable (unchanged while it was hashed).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use raftshare_raft::{Digest, BLOCK_SIZE};
use raftshare_storage::table::{validate_path, META_DIR};

/// The name of the ignore file in the shared folder (gitignore syntax).
pub const IGNORE_FILE: &str = ".raftshareignore";

/// Names no one wants synced: editor swap and backup files, OS litter, partial downloads.
const DEFAULT_IGNORES: &[&str] = &[
    "*.swp",
    "*.swo",
    "*.swx",
    "*~",
    ".#*",
    "#*#",
    "4913",
    ".*.kate-swp",
    ".~lock.*#",
    "~$*",
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    "*.part",
    "*.crdownload",
    ".goutputstream-*",
];

/// Size and modification time: what tells a file changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime: i64,
}

/// What a file holds: its hashes, and the stamp it had while hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub stamp: Stamp,
    pub hash: Digest,
    pub blocks: Vec<Digest>,
}

/// The stamp of a regular file, `None` if the path is absent or not a regular file
/// (symlinks are not followed).
pub fn stamp(path: &Path) -> io::Result<Option<Stamp>> {
    Ok(lstat(path)?.as_ref().and_then(file_stamp))
}

/// What is at `path`, not following a link; `Ok(None)` if nothing is.
pub fn lstat(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(Some(meta)),
        // A parent that is a file now (a folder replaced by a file) holds nothing either.
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The stamp of what `meta` describes, if it is a regular file.
pub fn file_stamp(meta: &fs::Metadata) -> Option<Stamp> {
    meta.file_type().is_file().then(|| stamp_of(meta))
}

/// The stamp of an open file's metadata.
pub fn stamp_of(meta: &fs::Metadata) -> Stamp {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0);
    Stamp { size: meta.len(), mtime }
}

/// Hash a file block by block. `Ok(None)` if it is gone, not a regular file, or changed
/// while being read (it is still being written: the caller tries again later).
pub fn hash_file(path: &Path) -> io::Result<Option<Content>> {
    let Some(before) = stamp(path)? else { return Ok(None) };
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut whole = blake3::Hasher::new();
    // Sized by the file, but within reason: a sparse file can claim exabytes.
    let mut blocks = Vec::with_capacity(before.size.div_ceil(BLOCK_SIZE).min(1 << 16) as usize);
    let total = with_block_buffer(|buf| -> io::Result<u64> {
        let mut total = 0u64;
        loop {
            let n = read_full(&mut file, buf)?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            if total == 0 && n < buf.len() {
                // The file is this one short block: its digest is the file's (below).
                blocks.push(Digest::of(chunk));
            } else {
                // The file's hash and the block's on two cores: a large file is hashed
                // in the time of one pass.
                let block = std::thread::scope(|s| {
                    s.spawn(|| {
                        whole.update(chunk);
                    });
                    Digest::of(chunk)
                });
                blocks.push(block);
            }
            total += n as u64;
            if n < buf.len() {
                break;
            }
        }
        Ok(total)
    })?;
    let after = stamp(path)?;
    if after != Some(before) || total != before.size {
        return Ok(None);
    }
    let hash = match blocks.as_slice() {
        [only] if total < BLOCK_SIZE => *only,
        _ => Digest(*whole.finalize().as_bytes()),
    };
    Ok(Some(Content { stamp: before, hash, blocks }))
}

/// Runs `f` with a buffer of one block, reused by this thread: allocating and zeroing
/// 1 MiB for every small file was a measurable share of a burst's CPU.
pub fn with_block_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.resize(BLOCK_SIZE as usize, 0);
            f(&mut buf)
        }
        // Used again inside `f`: a buffer of its own.
        Err(_) => f(&mut vec![0u8; BLOCK_SIZE as usize]),
    })
}

/// Read until `buf` is full or the file ends.
pub fn read_full(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Which relative paths of the shared folder are not synced.
#[derive(Clone)]
pub struct IgnoreRules {
    matcher: Gitignore,
}

impl IgnoreRules {
    /// The default ignores plus the folder's `.raftshareignore`, if any. A broken line in
    /// the ignore file is logged and skipped, never fatal.
    pub fn load(root: &Path) -> IgnoreRules {
        let mut builder = GitignoreBuilder::new(root);
        for pattern in DEFAULT_IGNORES {
            let _ = builder.add_line(None, pattern);
        }
        let file = root.join(IGNORE_FILE);
        if file.exists() {
            if let Some(e) = builder.add(&file) {
                tracing::warn!("some lines of {} are not valid ignore patterns: {e}", file.display());
            }
        }
        let matcher = builder.build().unwrap_or_else(|e| {
            tracing::warn!("ignore rules unusable ({e}); syncing everything but the defaults");
            Gitignore::empty()
        });
        IgnoreRules { matcher }
    }

    /// Whether `rel` (a `/`-separated path inside the folder) is left out of sync.
    pub fn is_ignored(&self, rel: &str, is_dir: bool) -> bool {
        if rel == META_DIR || rel.starts_with(&format!("{META_DIR}/")) {
            return true;
        }
        self.matcher.matched_path_or_any_parents(rel, is_dir).is_ignore()
    }
}

/// What a look could not read, by path relative to the folder (`""`: the folder itself),
/// with why: a folder it could not list, an entry it could not stat. Nothing at or under
/// such a path is taken as deleted: an error is never a delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unreadable(pub BTreeMap<String, String>);

impl Unreadable {
    /// Remember that `rel` could not be read, and why.
    pub fn add(&mut self, rel: impl Into<String>, why: impl std::fmt::Display) {
        self.0.insert(rel.into(), why.to_string());
    }

    /// Whether `rel` is at or under a path that could not be read.
    pub fn covers(&self, rel: &str) -> bool {
        self.0.keys().any(|u| is_at_or_under(rel, u))
    }

    /// Whether nothing was unreadable.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `rel` is `dir` or inside it (`""` holds everything).
pub fn is_at_or_under(rel: &str, dir: &str) -> bool {
    dir.is_empty() || rel == dir || rel.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

/// Every regular file under `start` (a folder inside `root`, or `root` itself) that is
/// synced, handed to `each` as (path relative to `root`, stamp) while the folders are
/// read, in no particular order: a tree of 100,000 files is never held. Paths the file
/// table would reject are skipped. What cannot be read (a folder that cannot be listed,
/// an entry that cannot be stat'ed) is returned, so that the caller takes nothing under
/// it for deleted.
pub fn walk_each(root: &Path, start: &Path, rules: &IgnoreRules, mut each: impl FnMut(String, Stamp)) -> Unreadable {
    let mut unreadable = Unreadable::default();
    let mut stack: Vec<PathBuf> = vec![start.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!("cannot list {}: {e}; nothing in it is taken as deleted", dir.display());
                unreadable.add(relative(root, &dir).unwrap_or_default(), e);
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    // The listing broke off: what it did not list is not known to be gone.
                    unreadable.add(relative(root, &dir).unwrap_or_default(), e);
                    break;
                }
            };
            let path = entry.path();
            let Some(rel) = relative(root, &path) else {
                let shown = path.strip_prefix(root).unwrap_or(&path).to_string_lossy().into_owned();
                unreadable.add(
                    shown,
                    "its name is not valid UTF-8, and raftshare syncs UTF-8 names only: rename it to sync it",
                );
                continue;
            };
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    unreadable.add(rel, e);
                    continue;
                }
            };
            let file_type = meta.file_type();
            if file_type.is_symlink() || rules.is_ignored(&rel, file_type.is_dir()) {
                continue;
            }
            if file_type.is_dir() {
                stack.push(path);
            } else if file_type.is_file() && validate_path(&rel).is_ok() {
                each(rel, stamp_of(&meta));
            }
        }
    }
    unreadable
}

/// `path` relative to `root`, `/`-separated, if it is valid UTF-8 and inside `root`.
pub fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    let joined = parts?.join("/");
    (!joined.is_empty()).then_some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_blake3_of_whole_file_and_of_each_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..(BLOCK_SIZE as usize * 2 + 10)).map(|i| (i % 251) as u8).collect();
        fs::write(&path, &data).unwrap();
        let content = hash_file(&path).unwrap().unwrap();
        assert_eq!(content.hash, Digest::of(&data));
        assert_eq!(content.blocks.len(), 3);
        assert_eq!(content.blocks[2], Digest::of(&data[2 * BLOCK_SIZE as usize..]));
        assert_eq!(content.stamp.size, data.len() as u64);

        // One short block, and exactly one block: the file's hash is the block's.
        for len in [10, BLOCK_SIZE as usize] {
            fs::write(&path, &data[..len]).unwrap();
            let content = hash_file(&path).unwrap().unwrap();
            assert_eq!(content.hash, Digest::of(&data[..len]));
            assert_eq!(content.blocks, [Digest::of(&data[..len])]);
        }

        fs::write(&path, b"").unwrap();
        let empty = hash_file(&path).unwrap().unwrap();
        assert_eq!(empty.hash, Digest::of(b""));
        assert!(empty.blocks.is_empty());
        assert_eq!(hash_file(&dir.path().join("missing")).unwrap(), None);
    }

    #[test]
    fn walk_skips_ignored_metadata_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join(".raftshare/tmp")).unwrap();
        fs::create_dir_all(root.join("build")).unwrap();
        for f in ["a/b/keep.txt", "top.txt", ".raftshare/tmp/x", "a/.notes.txt.swp", "build/out.o", "skip.log"] {
            fs::write(root.join(f), f).unwrap();
        }
        fs::write(root.join(IGNORE_FILE), "build/\n*.log\n").unwrap();
        std::os::unix::fs::symlink(root.join("top.txt"), root.join("link.txt")).unwrap();
        let rules = IgnoreRules::load(root);
        let walk = |start: &Path| {
            let mut paths = Vec::new();
            walk_each(root, start, &rules, |p, _| paths.push(p));
            paths.sort();
            paths
        };
        assert_eq!(walk(root), [IGNORE_FILE, "a/b/keep.txt", "top.txt"]);
        assert_eq!(walk(&root.join("a")), ["a/b/keep.txt"]);
    }

    #[test]
    fn relative_paths_are_slash_separated() {
        let root = Path::new("/x/y");
        assert_eq!(relative(root, Path::new("/x/y/a/b.txt")).as_deref(), Some("a/b.txt"));
        assert_eq!(relative(root, Path::new("/x/y")), None);
        assert_eq!(relative(root, Path::new("/elsewhere")), None);
    }
}
