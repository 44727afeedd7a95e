//! The shared folder on disk: its marker, the metadata folder, and the only ways the
//! program writes into it (install a verified temp file by rename, remove a file).
//!
//! Every path that comes from the file table is validated again here before it is
//! joined to the folder, so nothing a peer sends can reach outside it.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use raftshare_raft::{Digest, BLOCK_SIZE};
use raftshare_storage::table::{validate_path, META_DIR};

use crate::sync::disk;

mod at;

use at::{create_at, cstring, empty_dir, open_dir, open_own_dir, open_regular_at, rename_at};

/// The marker's file name inside the metadata folder.
const MARKER: &str = "folder";
/// The metadata folder's temp folder and trash.
const TMP: &str = "tmp";
const TRASH: &str = "trash";

/// One node's shared folder.
#[derive(Debug, Clone)]
pub struct Folder {
    root: PathBuf,
    /// The temp folder and the trash, opened (without following links) once and kept
    /// until the next marker check opens them again (`prepare`): each download and each
    /// trash move would otherwise open the shared folder, the metadata folder and the
    /// subfolder anew (a burst's receivers spent a third longer on it).
    opened: Arc<Mutex<[Option<Arc<OwnedFd>>; 2]>>,
}

impl Folder {
    /// The folder at `root` (not checked).
    pub fn new(root: impl Into<PathBuf>) -> Folder {
        Folder { root: root.into(), opened: Arc::default() }
    }

    /// The metadata folder's `tmp` or `trash`, as opened last (see `opened`).
    fn sub(&self, name: &'static str) -> io::Result<Arc<OwnedFd>> {
        let slot = usize::from(name == TRASH);
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = &opened[slot] {
            return Ok(fd.clone());
        }
        let fd = Arc::new(self.open_meta_sub(name, true)?);
        opened[slot] = Some(fd.clone());
        Ok(fd)
    }

    /// Forget the opened subfolders: the next use opens them again (one was removed, or
    /// the folder moved).
    fn forget_opened(&self) {
        *self.opened.lock().unwrap_or_else(|p| p.into_inner()) = [None, None];
    }

    /// `op` on the opened subfolder `name`; if it fails, once more on the subfolder
    /// opened anew (the kept one may have been removed since).
    fn in_sub<T>(&self, name: &'static str, op: impl Fn(&OwnedFd) -> io::Result<T>) -> io::Result<T> {
        match op(&*self.sub(name)?) {
            Ok(done) => Ok(done),
            Err(_) => {
                self.forget_opened();
                op(&*self.sub(name)?)
            }
        }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The metadata folder inside the shared folder (never synced).
    pub fn meta_dir(&self) -> PathBuf {
        self.root.join(META_DIR)
    }

    /// Where partial downloads live (same filesystem, so the final rename is atomic).
    pub fn tmp_dir(&self) -> PathBuf {
        self.meta_dir().join(TMP)
    }

    /// Where replaced and deleted files wait a little, so their blocks can be reused.
    pub fn trash_dir(&self) -> PathBuf {
        self.meta_dir().join(TRASH)
    }

    /// The absolute path of a table path, refusing any path the table rules reject and
    /// any path that goes through a symbolic link on this disk (a link to a folder
    /// elsewhere must never let a read, write or delete reach outside the shared folder).
    pub fn path_of(&self, rel: &str) -> io::Result<PathBuf> {
        validate_path(rel).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{rel:?}: {e}")))?;
        let mut at = self.root.clone();
        let mut parts = rel.split('/').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                break; // the last component: its own type is the caller's business
            }
            at.push(part);
            match fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{rel:?} goes through the symbolic link {}: links are not followed", at.display()),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => break, // nothing deeper exists yet
                Err(e) => return Err(e),
            }
        }
        Ok(self.root.join(rel))
    }

    /// Whether the marker is there: the folder is the one this node synced before (in a
    /// metadata folder that is a real folder of this user, not a link).
    pub fn has_marker(&self) -> bool {
        let Ok(meta) = self.open_meta(false) else { return false };
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        let name = c"folder";
        debug_assert_eq!(name.to_bytes(), MARKER.as_bytes());
        // SAFETY: a NUL-terminated name, relative to a descriptor we hold; `st` is read
        // only when the call filled it.
        let found =
            unsafe { libc::fstatat(meta.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        found == 0 && (unsafe { st.assume_init() }.st_mode & libc::S_IFMT) == libc::S_IFREG
    }

    /// Create the folder, the metadata folder and the marker (for a folder never synced).
    pub fn create_marker(&self, cluster_id: &str) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        let meta = self.open_meta(true)?;
        let marker = create_at(meta.as_raw_fd(), MARKER, true)?;
        (&marker).write_all(format!("raftshare folder of cluster {cluster_id}\n").as_bytes())?;
        marker.sync_all()?;
        File::from(meta).sync_all()?;
        sync_dir(&self.root)
    }

    /// Make the metadata sub-folders (partial downloads in `tmp` are kept: they resume).
    /// A link where one of them belongs is removed and a folder made in its place: the
    /// temp files and the trash never lead outside the shared folder.
    pub fn prepare(&self) -> io::Result<()> {
        let tmp = Arc::new(self.open_meta_sub(TMP, true)?);
        let trash = Arc::new(self.open_meta_sub(TRASH, true)?);
        *self.opened.lock().unwrap_or_else(|p| p.into_inner()) = [Some(tmp), Some(trash)];
        Ok(())
    }

    /// Remove every file in the trash.
    pub fn empty_trash(&self) -> io::Result<()> {
        empty_dir(&self.open_meta_sub(TRASH, false)?)
    }

    /// Remove every temp file (call only when no download or copy is in progress).
    pub fn empty_tmp(&self) -> io::Result<()> {
        empty_dir(&self.open_meta_sub(TMP, false)?)
    }

    /// The metadata folder, opened without following a link and checked to belong to
    /// this node's user (made, mode 0700, if `create` and missing). Anything else there
    /// is refused: a link could lead the temp files and the trash anywhere, and a folder
    /// of another user could hold links planted by them.
    fn open_meta(&self, create: bool) -> io::Result<OwnedFd> {
        let root = open_dir(libc::AT_FDCWD, &cstring(&self.root)?, false)?;
        let meta = open_own_dir(root.as_raw_fd(), META_DIR, create, false)?;
        Ok(meta)
    }

    /// The folder `name` of the metadata folder, opened like [`Folder::open_meta`]; a link
    /// there is replaced by a folder if `create` (and refused otherwise).
    fn open_meta_sub(&self, name: &str, create: bool) -> io::Result<OwnedFd> {
        let meta = self.open_meta(create)?;
        open_own_dir(meta.as_raw_fd(), name, create, create)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.meta_dir().join(name).display())))
    }

    /// Open the temp file at `temp` (a path [`Folder::temp_for`] gave) for reading and
    /// writing, through the metadata folder opened without following links. `resume`
    /// keeps a regular file already there; anything else at that name (a link planted
    /// there, say) is removed, never followed, and a new file is made (`O_EXCL`).
    pub fn open_temp(&self, temp: &Path, resume: bool) -> io::Result<File> {
        let name = temp
            .strip_prefix(self.tmp_dir())
            .ok()
            .and_then(Path::to_str)
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a temp file", temp.display()))
            })?;
        self.in_sub(TMP, |tmp| {
            if resume {
                if let Some(file) = open_regular_at(tmp.as_raw_fd(), name)? {
                    return Ok(file);
                }
            }
            create_at(tmp.as_raw_fd(), name, true)
        })
    }

    /// Copy the file at `from` into a new temp file at `temp` (see [`Folder::open_temp`]).
    pub fn copy_to_temp(&self, from: &Path, temp: &Path) -> io::Result<u64> {
        let mut source = File::open(from)?;
        let mut out = self.open_temp(temp, false)?;
        io::copy(&mut source, &mut out)
    }

    /// The temp file a download of content `hash` is written to (kept across restarts,
    /// so a broken transfer resumes from the blocks already there).
    ///
    /// `copy` > 0: another file of the same content in one batch (each needs a temp file
    /// of its own to rename into place).
    pub fn temp_for(&self, hash: &Digest, size: u64, copy: usize) -> PathBuf {
        // Named by size too: a record claiming a known hash with another size must not
        // resize the real download's temp file under it.
        match copy {
            0 => self.tmp_dir().join(format!("{}-{size}.part", hash.to_hex())),
            n => self.tmp_dir().join(format!("{}-{size}.{n}.part", hash.to_hex())),
        }
    }

    /// Move a verified, synced temp file to `rel`: parent folders are created, the rename
    /// is atomic and the folder is synced. Nothing at `rel` is replaced (the caller moves
    /// an old file to the trash first): a file someone made there since the caller
    /// looked fails the install with `AlreadyExists`, and is left as it is.
    pub fn install(&self, temp: &Path, rel: &str) -> io::Result<()> {
        sync_dir(&self.place(temp, rel)?)
    }

    /// [`Folder::install`] without the folder sync: returns the folder the rename is in,
    /// for a batch of installs made durable together ([`sync_all`]).
    pub fn place(&self, temp: &Path, rel: &str) -> io::Result<PathBuf> {
        let target = self.path_of(rel)?;
        let (dir, name) = self.open_parent(rel, true)?;
        match temp.strip_prefix(self.tmp_dir()).ok().and_then(Path::to_str) {
            // A temp file of ours: through the temp folder opened without following links.
            Some(in_tmp) if !in_tmp.contains('/') => {
                let from = cstring(Path::new(in_tmp))?;
                self.in_sub(TMP, |tmp| rename_at(tmp.as_raw_fd(), &from, dir.as_raw_fd(), &name, true))?;
            }
            _ => rename_at(libc::AT_FDCWD, &cstring(temp)?, dir.as_raw_fd(), &name, true)?,
        }
        Ok(target.parent().unwrap_or(&self.root).to_path_buf())
    }

    /// The folder holding `rel`, opened one component at a time from the shared folder
    /// without following links (`O_NOFOLLOW`), with `rel`'s last component: a write made
    /// relative to it stays in the shared folder even if a folder on the way is swapped
    /// for a link after [`Folder::path_of`] looked. Missing folders are made if `create`.
    fn open_parent(&self, rel: &str, create: bool) -> io::Result<(OwnedFd, CString)> {
        validate_path(rel).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{rel:?}: {e}")))?;
        let mut parts: Vec<&str> = rel.split('/').collect();
        let name = parts.pop().unwrap_or_default();
        let mut dir = open_dir(libc::AT_FDCWD, &cstring(&self.root)?, false)?;
        let mut at = self.root.clone();
        for part in parts {
            at.push(part);
            let c_part = cstring(Path::new(part))?;
            let opened = match open_dir(dir.as_raw_fd(), &c_part, true) {
                Err(e) if create && e.kind() == io::ErrorKind::NotFound => {
                    // SAFETY: a NUL-terminated name, relative to a descriptor we hold.
                    if unsafe { libc::mkdirat(dir.as_raw_fd(), c_part.as_ptr(), 0o777) } != 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::AlreadyExists {
                            return Err(e);
                        }
                    }
                    open_dir(dir.as_raw_fd(), &c_part, true)
                }
                other => other,
            };
            dir = opened.map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) => io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} is in the way of a synced folder (links are not followed)", at.display()),
                ),
                _ => e,
            })?;
        }
        Ok((dir, cstring(Path::new(name))?))
    }

    /// Move the file at `rel` to the trash under its content hash. Returns where it went
    /// and the folder it left: that folder's sync ([`sync_all`]) makes the removal
    /// durable, then [`Folder::prune_empty`] removes it if this emptied it.
    pub fn trash(&self, rel: &str, hash: &Digest) -> io::Result<(PathBuf, PathBuf)> {
        let path = self.path_of(rel)?;
        let dest = self.trash_dir().join(hash.to_hex());
        let (dir, name) = self.open_parent(rel, false)?;
        // Into the trash opened without following links: a trash that is a link would
        // carry the user's files out of the shared folder.
        let to = cstring(Path::new(&hash.to_hex()))?;
        self.in_sub(TRASH, |trash| rename_at(dir.as_raw_fd(), &name, trash.as_raw_fd(), &to, false))?;
        Ok((dest, path.parent().unwrap_or(&self.root).to_path_buf()))
    }

    /// [`Folder::trash`] the file at `rel` that the caller found stamped `seen`. If what
    /// was moved is stamped otherwise, someone saved over it between the look and the
    /// move: it is put back (or, if the path was taken again meanwhile, kept beside it as
    /// `<name>.kept-<ms>`), and `Ok(None)` says nothing was trashed.
    pub fn trash_seen(&self, rel: &str, hash: &Digest, seen: &disk::Stamp) -> io::Result<Option<(PathBuf, PathBuf)>> {
        let (dest, left) = self.trash(rel, hash)?;
        if disk::stamp(&dest)?.as_ref() == Some(seen) {
            return Ok(Some((dest, left)));
        }
        let from = cstring(&dest)?;
        let back = self.open_parent(rel, false).and_then(|(dir, name)| {
            rename_at(libc::AT_FDCWD, &from, dir.as_raw_fd(), &name, true).or_else(|e| {
                let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let mut kept = name.into_bytes();
                kept.extend_from_slice(format!(".kept-{}", ms.as_millis()).as_bytes());
                let kept = CString::new(kept).map_err(|_| e)?;
                rename_at(libc::AT_FDCWD, &from, dir.as_raw_fd(), &kept, true)
            })
        });
        back.map_err(|e| io::Error::other(format!("a file saved during its delete is in {}: {e}", dest.display())))?;
        Ok(None)
    }

    /// Remove empty folders from `dir` up to (not including) the shared folder.
    pub fn prune_empty(&self, dir: &Path) {
        let Some(mut rel) = dir.strip_prefix(&self.root).ok().and_then(Path::to_str).map(str::to_owned) else {
            return;
        };
        while !rel.is_empty() {
            let Ok((parent, name)) = self.open_parent(&rel, false) else { break };
            // SAFETY: a NUL-terminated name, relative to a descriptor we hold.
            if unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) } != 0 {
                break;
            }
            rel.truncate(rel.rfind('/').unwrap_or(0));
        }
    }

    /// Read block `index` of `path` if it hashes to `want` (a file changed since is never
    /// served as the old content).
    pub fn read_block(path: &Path, index: u32, want: &Digest) -> io::Result<Option<Vec<u8>>> {
        Ok(Folder::read_block_as_is(path, index)?.and_then(|(bytes, _)| (Digest::of(&bytes) == *want).then_some(bytes)))
    }

    /// Read block `index` of `path` as it is, with the file's stamp (`None`: no such
    /// regular file). Three calls for a small file: open, fstat, read.
    pub fn read_block_as_is(path: &Path, index: u32) -> io::Result<Option<(Vec<u8>, disk::Stamp)>> {
        use std::os::unix::fs::OpenOptionsExt;
        // A link is not followed (its target may be outside the folder), and a FIFO
        // does not hold up the open: both are then no regular file.
        let opened = File::options().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
        let file = match opened {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(None);
        }
        // Sized by what the file holds there: a block of a small file is small.
        let offset = index as u64 * BLOCK_SIZE;
        let len = meta.len().saturating_sub(offset).min(BLOCK_SIZE) as usize;
        let mut buf = vec![0u8; len];
        let n = read_at_full(&file, &mut buf, offset)?;
        buf.truncate(n);
        // A large block may be served on its stamp alone: stamped once read, so a change
        // made while it was read shows. A small one is always hashed.
        let stamp = if n >= STAMPED_AFTER_READ { disk::stamp_of(&file.metadata()?) } else { disk::stamp_of(&meta) };
        Ok(Some((buf, stamp)))
    }
}

/// A block at least this large has its stamp taken after it is read (see
/// [`Folder::read_block_as_is`]); no larger than the smallest block served on its stamp.
pub(crate) const STAMPED_AFTER_READ: usize = 64 << 10;

/// Ask the kernel to start writing `len` bytes of `file` from `offset` to disk, without
/// waiting: a large download then reaches the disk while it arrives, and the sync that
/// makes it durable has little left to do. Only a hint: its failure changes nothing.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Read from `offset` until `buf` is full or the file ends.
pub fn read_at_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// fsync a folder, so a rename or an unlink in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Beyond this many paths, one `syncfs` beats an fsync each.
const SYNCFS_FROM: usize = 3;

/// Make `paths` (files and folders, all on one filesystem) durable: an fsync each when
/// they are few; otherwise one `syncfs` of their filesystem, so a batch of received files
/// costs one journal commit instead of one per file (each fsync on ext4 waits for its
/// own commit, and they queue behind each other).
pub fn sync_all<P: AsRef<Path>>(paths: &[P]) -> io::Result<()> {
    let Some(first) = paths.first() else { return Ok(()) };
    if paths.len() < SYNCFS_FROM {
        return paths.iter().try_for_each(|p| File::open(p)?.sync_all());
    }
    let anchor = File::open(first)?;
    // SAFETY: syncfs takes an open descriptor (held by `anchor` for the call) and has no
    // other preconditions.
    if unsafe { libc::syncfs(anchor.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The whole-file BLAKE3 of a file, read sequentially.
pub fn hash_whole(path: &Path) -> io::Result<Digest> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    disk::with_block_buffer(|buf| -> io::Result<()> {
        loop {
            let n = disk::read_full(&mut file, buf)?;
            hasher.update(&buf[..n]);
            if n < buf.len() {
                return Ok(());
            }
        }
    })?;
    Ok(Digest(*hasher.finalize().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_from_the_table_cannot_leave_the_folder() {
        let folder = Folder::new("/srv/shared");
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", ".raftshare/tmp/x", "a\0b", ""] {
            assert!(folder.path_of(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(folder.path_of("a/b.txt").unwrap(), PathBuf::from("/srv/shared/a/b.txt"));
    }

    #[test]
    fn install_creates_parents_and_trash_prunes_them() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path());
        folder.create_marker("c").unwrap();
        folder.prepare().unwrap();
        assert!(folder.has_marker());
        let temp = folder.temp_for(&Digest::of(b"x"), 1, 0);
        fs::write(&temp, b"x").unwrap();
        folder.install(&temp, "a/b/c.txt").unwrap();
        assert_eq!(fs::read(dir.path().join("a/b/c.txt")).unwrap(), b"x");
        let (_, left) = folder.trash("a/b/c.txt", &Digest::of(b"x")).unwrap();
        sync_all(&[&left]).unwrap();
        folder.prune_empty(&left);
        assert!(!dir.path().join("a").exists(), "emptied folders are removed");
        assert!(dir.path().exists());
        let trashed = folder.trash_dir().join(Digest::of(b"x").to_hex());
        assert_eq!(Folder::read_block(&trashed, 0, &Digest::of(b"x")).unwrap(), Some(b"x".to_vec()));
        assert_eq!(Folder::read_block(&trashed, 0, &Digest::of(b"y")).unwrap(), None, "a wrong hash is never served");
    }

    #[test]
    fn install_never_replaces_a_file_made_since_the_caller_looked() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path());
        folder.prepare().unwrap();
        fs::write(dir.path().join("a.txt"), b"saved by a user").unwrap();
        let temp = folder.temp_for(&Digest::of(b"x"), 1, 0);
        fs::write(&temp, b"x").unwrap();
        let err = folder.install(&temp, "a.txt").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        assert_eq!(fs::read(dir.path().join("a.txt")).unwrap(), b"saved by a user");
        assert_eq!(fs::read(&temp).unwrap(), b"x", "the download is kept for another try");
        // The same rename to a free path works.
        folder.install(&temp, "b.txt").unwrap();
        assert_eq!(fs::read(dir.path().join("b.txt")).unwrap(), b"x");
        assert!(!temp.exists());
    }

    #[test]
    fn a_file_saved_over_the_one_looked_at_is_put_back_not_trashed() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::new(dir.path());
        folder.prepare().unwrap();
        let abs = dir.path().join("a.txt");
        fs::write(&abs, b"old").unwrap();
        let seen = disk::stamp(&abs).unwrap().unwrap();
        // Saved over (another size) after the look.
        fs::write(&abs, b"a newer edit").unwrap();
        assert_eq!(folder.trash_seen("a.txt", &Digest::of(b"old"), &seen).unwrap(), None);
        assert_eq!(fs::read(&abs).unwrap(), b"a newer edit");
        assert!(!folder.trash_dir().join(Digest::of(b"old").to_hex()).exists());
        // As looked at: trashed.
        let seen = disk::stamp(&abs).unwrap().unwrap();
        let (trashed, left) = folder.trash_seen("a.txt", &Digest::of(b"new"), &seen).unwrap().unwrap();
        assert_eq!(fs::read(trashed).unwrap(), b"a newer edit");
        assert_eq!(left, dir.path());
        assert!(!abs.exists());
    }

    #[test]
    fn writes_go_through_folders_opened_without_following_links() {
        let (dir, outside, folder) = with_a_link_out();
        fs::write(outside.path().join("x"), b"not ours").unwrap();
        // What a folder swapped for a link after `path_of` looked would meet.
        let err = folder.open_parent("evil/x", false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        let err = folder.open_parent("evil/deeper/x", true).unwrap_err();
        assert!(err.to_string().contains("links are not followed"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1, "nothing made outside");
        assert_eq!(fs::read(outside.path().join("x")).unwrap(), b"not ours");
        // Missing folders are made on the way, inside.
        let (_, name) = folder.open_parent("a/b/c.txt", true).unwrap();
        assert_eq!(name.as_bytes(), b"c.txt");
        assert!(dir.path().join("a/b").is_dir());
        assert!(folder.open_parent("../x", true).is_err());
    }

    /// A prepared shared folder whose `evil` is a link to a folder outside it.
    fn with_a_link_out() -> (tempfile::TempDir, tempfile::TempDir, Folder) {
        let (dir, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let folder = Folder::new(dir.path());
        folder.prepare().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        (dir, outside, folder)
    }

    #[test]
    fn install_refuses_a_symlinked_parent() {
        let (_dir, outside, folder) = with_a_link_out();
        let temp = folder.temp_for(&Digest::of(b"x"), 1, 0);
        fs::write(&temp, b"x").unwrap();
        assert!(folder.install(&temp, "evil/file").is_err());
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none(), "nothing written outside");
    }

    #[test]
    fn links_in_the_metadata_folder_lead_nowhere_outside() {
        let (dir, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let folder = Folder::new(dir.path());
        folder.create_marker("c").unwrap();
        folder.prepare().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"not ours").unwrap();
        // A link where a temp file goes, and a trash that is a link to a folder outside.
        let temp = folder.temp_for(&Digest::of(b"x"), 1, 0);
        std::os::unix::fs::symlink(&victim, &temp).unwrap();
        fs::remove_dir(folder.trash_dir()).unwrap();
        std::os::unix::fs::symlink(outside.path(), folder.trash_dir()).unwrap();
        assert!(folder.empty_trash().is_err(), "a trash that is a link is not emptied");
        for resume in [true, false] {
            let mut file = folder.open_temp(&temp, resume).unwrap();
            file.write_all(b"x").unwrap();
        }
        assert!(fs::symlink_metadata(&temp).unwrap().is_file(), "the link was replaced by a temp file");
        folder.prepare().unwrap();
        assert!(fs::symlink_metadata(folder.trash_dir()).unwrap().is_dir(), "the trash is a folder again");
        std::os::unix::fs::symlink(&victim, folder.tmp_dir().join("planted")).unwrap();
        folder.empty_tmp().unwrap();
        folder.empty_trash().unwrap();
        assert!(fs::read_dir(folder.tmp_dir()).unwrap().next().is_none(), "links removed themselves");
        assert_eq!(fs::read(&victim).unwrap(), b"not ours");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1, "nothing made or removed outside");
        assert!(folder.open_temp(&dir.path().join("elsewhere"), false).is_err(), "only temp files");
    }

    #[test]
    fn a_metadata_folder_that_is_a_link_is_refused() {
        let (dir, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let folder = Folder::new(dir.path());
        fs::write(outside.path().join(MARKER), b"raftshare folder of cluster c\n").unwrap();
        std::os::unix::fs::symlink(outside.path(), folder.meta_dir()).unwrap();
        assert!(!folder.has_marker(), "a marker through a link does not count");
        let err = folder.create_marker("c").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = folder.prepare().unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1, "nothing made outside");
    }

    #[test]
    fn only_a_regular_file_gives_a_block() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        fs::write(&secret, b"secret").unwrap();
        fs::write(dir.path().join("file"), b"abc").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("link")).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a plain syscall on a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let (bytes, stamp) = Folder::read_block_as_is(&dir.path().join("file"), 0).unwrap().unwrap();
        assert_eq!((bytes.as_slice(), stamp.size), (&b"abc"[..], 3));
        assert_eq!(Folder::read_block_as_is(&dir.path().join("file"), 1).unwrap().unwrap().0, b"", "past the end");
        // Not followed, not waited on (a FIFO with no writer would block a plain open).
        for name in ["link", "sub", "fifo", "missing"] {
            assert!(Folder::read_block_as_is(&dir.path().join(name), 0).unwrap().is_none(), "{name}");
        }
    }
}
