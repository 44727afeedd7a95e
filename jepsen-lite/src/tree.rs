//! A shared folder seen from outside, as a user's script sees it: every regular file
//! except the node's metadata folder `.raftshare/`, with its size and BLAKE3.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

/// The metadata folder at the top of a shared folder (temp files live there).
pub const META_DIR: &str = ".raftshare";

/// One file as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub size: u64,
    pub hash: String,
}

/// BLAKE3 hex, as `raftshare ls --json` prints hashes.
pub fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Every regular file under `root` (relative `/`-separated path → size and hash). Files
/// and folders that vanish while it looks are skipped; symlinks are not followed.
pub fn tree_of(root: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(root) else { continue };
            let rel = rel.to_string_lossy().replace('\\', "/");
            if rel == META_DIR {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                if let Ok(bytes) = fs::read(&path) {
                    out.insert(rel, Seen { size: bytes.len() as u64, hash: hash_hex(&bytes) });
                }
            }
        }
    }
    out
}

/// `tree_of` without sizes: path → hash.
pub fn hashes_of(root: &Path) -> BTreeMap<String, String> {
    tree_of(root).into_iter().map(|(p, s)| (p, s.hash)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_folder_is_not_shared_content() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(".raftshare/tmp")).unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        fs::write(dir.path().join(".raftshare/tmp/x.part"), b"half").unwrap();
        fs::write(dir.path().join("a/b/c.txt"), b"c").unwrap();
        fs::write(dir.path().join("top.txt"), b"top").unwrap();
        let tree = tree_of(dir.path());
        assert_eq!(tree.keys().collect::<Vec<_>>(), ["a/b/c.txt", "top.txt"]);
        assert_eq!(tree["top.txt"], Seen { size: 3, hash: hash_hex(b"top") });
    }
}
