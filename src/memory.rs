//! How a node keeps its memory near its working set (glibc's allocator keeps what was
//! freed unless told otherwise).

/// glibc gives threads up to 8 malloc arenas per core, and memory freed in one arena
/// stays there: a node that synced 100,000 files held twice the memory it needed
/// (jepsen-lite bench many). One arena keeps its peak near its working set: the
/// writer's peak above idle was 1,240 B per file with two arenas and 994 B with one,
/// and the sync was no slower (73 -> 67 s); each thread's cache (tcache) still serves
/// most small allocations without the arena's lock. Call it before any other thread
/// exists.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; the caller runs it before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// A batch or an entry of at least this many files is worth a [`give_back_freed`]
/// after it (a trim holds the allocator's locks for a moment: not after every file).
pub const LARGE_BURST: usize = 256;

/// Give memory freed after a burst of work (a batch installed, an entry committed) back
/// to the system: without it the next burst's allocations land elsewhere and the
/// node's footprint only grows while it syncs a large folder.
pub fn give_back_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
