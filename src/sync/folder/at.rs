//! System calls relative to an opened folder (`openat`, `mkdirat`, `unlinkat`,
//! `renameat2`), never following a link where the caller says so: what the shared folder
//! and its metadata folder are written through, so that a link planted on the way leads
//! nowhere outside.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub(super) fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Open the folder `name` relative to `dir` (read-only, close-on-exec); if `no_follow`,
/// a link there is refused (`ELOOP`) rather than followed.
pub(super) fn open_dir(dir: RawFd, name: &CStr, no_follow: bool) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | if no_follow { libc::O_NOFOLLOW } else { 0 };
    // SAFETY: a NUL-terminated name that outlives the call.
    let fd = unsafe { libc::openat(dir, name.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open the folder `name` in `dir` without following a link, and check it belongs to
/// this process's user. If missing and `create`, it is made (mode 0700); if a link is
/// there and `replace_link`, the link itself is removed and a folder made instead.
pub(super) fn open_own_dir(dir: RawFd, name: &str, create: bool, replace_link: bool) -> io::Result<OwnedFd> {
    let c_name = cstring(Path::new(name))?;
    // O_NOFOLLOW with O_DIRECTORY refuses a link with ENOTDIR (or ELOOP): tell it from a file.
    let is_link = || {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a NUL-terminated name, relative to a descriptor the caller holds; `st`
        // is read only when the call filled it.
        let found = unsafe { libc::fstatat(dir, c_name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
        found == 0 && (unsafe { st.assume_init() }.st_mode & libc::S_IFMT) == libc::S_IFLNK
    };
    let opened = match open_dir(dir, &c_name, true) {
        Err(e) if create && e.kind() == io::ErrorKind::NotFound => make_dir_at(dir, &c_name),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) && is_link() => {
            if !replace_link {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{name} is a symbolic link: raftshare keeps its metadata only in a real folder; remove the link"
                    ),
                ));
            }
            // SAFETY: a NUL-terminated name, relative to a descriptor the caller holds;
            // unlinkat removes a link itself, never what it points to.
            if unsafe { libc::unlinkat(dir, c_name.as_ptr(), 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
            make_dir_at(dir, &c_name)
        }
        other => other,
    };
    let opened = opened.map_err(|e| match e.raw_os_error() {
        Some(libc::ENOTDIR) => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is not a folder: move it away so raftshare can make its metadata folder"),
        ),
        _ => e,
    })?;
    let st = fstat(&opened)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if st.st_uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{name} belongs to user {}, not to user {me} who runs this node: another user could plant links \
                 in it; move it away (the node makes a new one)",
                st.st_uid
            ),
        ));
    }
    Ok(opened)
}

pub(super) fn make_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name, relative to a descriptor the caller holds.
    if unsafe { libc::mkdirat(dir, name.as_ptr(), 0o700) } != 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::AlreadyExists {
            return Err(e);
        }
    }
    open_dir(dir, name, true)
}

pub(super) fn fstat(fd: &OwnedFd) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: an open descriptor; `st` is read only when the call filled it.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it wrote the whole struct.
    Ok(unsafe { st.assume_init() })
}

/// Create `name` in `dir` for reading and writing (mode 0600), never through a link and
/// never over anything there: whatever is at that name first is removed if `fresh` (a
/// link itself, not what it points to).
pub(super) fn create_at(dir: RawFd, name: &str, fresh: bool) -> io::Result<File> {
    let c_name = cstring(Path::new(name))?;
    if fresh {
        // SAFETY: a NUL-terminated name, relative to a descriptor the caller holds.
        if unsafe { libc::unlinkat(dir, c_name.as_ptr(), 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::NotFound {
                return Err(io::Error::new(e.kind(), format!("cannot clear the way for the temp file {name}: {e}")));
            }
        }
    }
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated name that outlives the call.
    let fd = unsafe { libc::openat(dir, c_name.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The regular file `name` in `dir`, opened for reading and writing without following a
/// link; `None` if there is none (or something else is there).
pub(super) fn open_regular_at(dir: RawFd, name: &str) -> io::Result<Option<File>> {
    let c_name = cstring(Path::new(name))?;
    let flags = libc::O_RDWR | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    // SAFETY: a NUL-terminated name that outlives the call.
    let fd = unsafe { libc::openat(dir, c_name.as_ptr(), flags) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT | libc::ELOOP | libc::EISDIR | libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let regular = (fstat(&fd)?.st_mode & libc::S_IFMT) == libc::S_IFREG;
    Ok(regular.then(|| File::from(fd)))
}

/// Remove every entry of the open folder `dir` that is not a folder, by name relative to
/// it: a link is removed itself, never followed, and nothing outside is reached.
pub(super) fn empty_dir(dir: &OwnedFd) -> io::Result<()> {
    // SAFETY: dup of a descriptor we hold; fdopendir takes ownership of the copy.
    let copy = unsafe { libc::dup(dir.as_raw_fd()) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is an open folder descriptor that nothing else owns.
    let stream = unsafe { libc::fdopendir(copy) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so `copy` is still ours to close.
        unsafe { libc::close(copy) };
        return Err(e);
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: a stream fdopendir returned, not closed yet.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returned an entry whose name is NUL-terminated; it is copied
        // before the next readdir.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_owned();
        if name.as_bytes() != b"." && name.as_bytes() != b".." {
            names.push(name);
        }
    }
    // SAFETY: closes the stream (and `copy`) once.
    unsafe { libc::closedir(stream) };
    for name in names {
        // SAFETY: a NUL-terminated name, relative to a descriptor we hold; a folder
        // fails with EISDIR and is left as it is.
        unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
    }
    Ok(())
}

/// Rename `from` (relative to `from_dir`) to `to` (relative to `to_dir`). If `no_replace`,
/// only if nothing is at `to` (else `AlreadyExists`, both left as they are): a file a
/// user saved there a moment ago is never replaced unseen.
pub(super) fn rename_at(from_dir: RawFd, from: &CStr, to_dir: RawFd, to: &CStr, no_replace: bool) -> io::Result<()> {
    let flags = if no_replace { libc::RENAME_NOREPLACE } else { 0 };
    // SAFETY: NUL-terminated names that outlive the call, relative to descriptors the
    // caller holds (or AT_FDCWD).
    if unsafe { libc::renameat2(from_dir, from.as_ptr(), to_dir, to.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        return Err(e);
    }
    // A filesystem (or kernel) without renameat2's flags: a hard link does not replace
    // either; without hard links, a look just before a plain rename.
    let plain = || {
        // SAFETY: as above.
        match unsafe { libc::renameat(from_dir, from.as_ptr(), to_dir, to.as_ptr()) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    };
    if !no_replace {
        return plain();
    }
    // SAFETY: as above.
    if unsafe { libc::linkat(from_dir, from.as_ptr(), to_dir, to.as_ptr(), 0) } == 0 {
        // SAFETY: as above.
        return match unsafe { libc::unlinkat(from_dir, from.as_ptr(), 0) } {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        };
    }
    let linked = io::Error::last_os_error();
    if linked.kind() == io::ErrorKind::AlreadyExists {
        return Err(linked);
    }
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: as above; `st` is written by the call before it is read (it is not read).
    match unsafe { libc::fstatat(to_dir, to.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) } {
        0 => Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{to:?} exists"))),
        _ if io::Error::last_os_error().kind() == io::ErrorKind::NotFound => plain(),
        _ => Err(io::Error::last_os_error()),
    }
}
