//! Watching the shared folder: OS events (notify) turned into batches of changed paths.
//!
//! A batch closes after a short quiet gap or a maximum age, whichever comes first, so a
//! single save is reported within milliseconds and a burst of thousands of files becomes
//! one batch. The watcher only says *where* to look; the scanner decides what changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::sync::scanner::Scanner;
use crate::sync::state::SyncState;

/// A batch ends after this much silence (every millisecond of quiet is a millisecond
/// added to a single save's latency, measured by the benchmark's `latency`)...
pub const QUIET: Duration = Duration::from_millis(1);
/// ...or when its first event is this old.
pub const MAX_AGE: Duration = Duration::from_millis(200);
/// A file being written is looked at once its writer closes it, or once it was not
/// written for this long (a writer that keeps it open)...
const SETTLE: Duration = Duration::from_secs(2);
/// ...or, written all the while, once it was held this long (a log appended to for
/// ever is still synced now and then).
const HELD_AT_MOST: Duration = Duration::from_secs(60);
/// While the folder cannot be watched (a subfolder the node may not read), it is looked
/// at whole this often instead.
const UNWATCHED_LOOK_EVERY: Duration = Duration::from_secs(10);

/// What the folder told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// These paths (files or folders) may have changed.
    Paths(BTreeSet<PathBuf>),
    /// Events were lost (queue overflow): look at everything.
    Everything,
}

/// Keeps the OS watch alive; dropping it stops the events.
pub struct FolderWatcher {
    _watcher: RecommendedWatcher,
}

enum Raw {
    /// Something changed at these paths, completely (a writer closed a file, a rename,
    /// a delete): look now.
    Paths(Vec<PathBuf>),
    /// These files are being written: look once the writer closes them, or once they
    /// stay unwritten for `SETTLE`.
    Writing(Vec<PathBuf>),
    Rescan,
}

/// Watch `root` recursively; batches come out of the returned receiver. Events under
/// `skip` (the program's own metadata folder, where downloads are assembled) are dropped
/// here, so a large download does not wake the scanner for every block.
pub fn watch(root: &Path, skip: PathBuf) -> Result<(FolderWatcher, mpsc::Receiver<Seen>)> {
    let (raw_tx, raw_rx) = mpsc::unbounded_channel();
    let meta = skip.clone();
    // Links are not followed: a link to a folder elsewhere must not be watched through.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = RecommendedWatcher::new(
        move |res: notify::Result<notify::Event>| {
            let raw = match res {
                // Reads are not changes. Above all, the scanner's own reading of a folder (and
                // the applier's fsync of one) opens it: taking that for a change would walk
                // the folder again and again, forever.
                Ok(event) if is_read(&event.kind) => return,
                Ok(event) if event.need_rescan() => Raw::Rescan,
                Ok(event) => {
                    let paths: Vec<PathBuf> = event.paths.into_iter().filter(|p| !p.starts_with(&skip)).collect();
                    if paths.is_empty() {
                        return;
                    }
                    if being_written(&event.kind) {
                        Raw::Writing(paths)
                    } else {
                        Raw::Paths(paths)
                    }
                }
                Err(e) => {
                    tracing::warn!("folder watch error, rescanning: {e}");
                    Raw::Rescan
                }
            };
            let _ = raw_tx.send(raw);
        },
        config,
    )
    .context("cannot start watching the shared folder")?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {} for changes", root.display()))?;
    // Not even watched: every received file is written there first (three events each,
    // all dropped above; 8% of a receiver's CPU went to reading them in a burst).
    if let Err(e) = watcher.unwatch(&meta) {
        tracing::debug!("still watching {}: {e}", meta.display());
    }
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(batch(raw_rx, tx));
    Ok((FolderWatcher { _watcher: watcher }, rx))
}

/// Whether `kind` only says something was opened or read (a file closed after writing
/// is a change: that is when a save is complete).
fn is_read(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, notify::EventKind::Access(access) if *access != AccessKind::Close(AccessMode::Write))
}

/// Whether `kind` says a file was created or written, and more may come. Everything else
/// that is not a read (a close after writing, a rename, a delete, a change of mode, a
/// new folder) is a complete change.
fn being_written(kind: &notify::EventKind) -> bool {
    use notify::event::{CreateKind, ModifyKind};
    use notify::EventKind;
    matches!(kind, EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any))
}

/// Files being written, and when each was last written.
#[derive(Default)]
struct Writers(std::collections::HashMap<PathBuf, (Instant, Instant)>);

impl Writers {
    /// `path` was written now.
    fn written(&mut self, path: PathBuf) {
        let now = Instant::now();
        self.0.entry(path).and_modify(|(_, last)| *last = now).or_insert((now, now));
    }

    /// The writer of `path` is done (or the path changed otherwise): no longer held.
    fn done(&mut self, path: &Path) {
        self.0.remove(path);
    }

    /// When the next held file is due: `SETTLE` after its last write, or `HELD_AT_MOST`
    /// after its first.
    fn next_due(&self) -> Option<Instant> {
        self.0.values().map(|(first, last)| (*last + SETTLE).min(*first + HELD_AT_MOST)).min()
    }

    /// The held files that are due now, no longer held.
    fn take_due(&mut self, paths: &mut BTreeSet<PathBuf>) {
        let now = Instant::now();
        self.0.retain(|path, (first, last)| {
            let due = now >= *last + SETTLE || now >= *first + HELD_AT_MOST;
            if due {
                paths.insert(path.clone());
            }
            !due
        });
    }
}

/// Coalesce raw events into batches; ends when either side is gone.
///
/// A file being written is held back until its writer closes it (or it stays unwritten
/// for `SETTLE`, for a writer that keeps it open): a slow writer's pauses are longer than
/// the quiet gap, and its half-written file must not be committed as a version. A
/// rename into the folder (an editor's save, the latency benchmark's) is a complete
/// change and is not held.
async fn batch(mut raw: mpsc::UnboundedReceiver<Raw>, out: mpsc::Sender<Seen>) {
    let mut writers = Writers::default();
    loop {
        let first = match writers.next_due() {
            Some(due) => match tokio::time::timeout_at(due, raw.recv()).await {
                Ok(Some(r)) => Some(r),
                Ok(None) => return,
                Err(_) => None,
            },
            None => match raw.recv().await {
                Some(r) => Some(r),
                None => return,
            },
        };
        let started = Instant::now();
        let mut paths = BTreeSet::new();
        let mut everything = false;
        let mut add = |r: Raw, paths: &mut BTreeSet<PathBuf>, writers: &mut Writers| match r {
            Raw::Paths(p) => {
                for path in p {
                    writers.done(&path);
                    paths.insert(path);
                }
            }
            Raw::Writing(p) => p.into_iter().for_each(|path| writers.written(path)),
            Raw::Rescan => everything = true,
        };
        if let Some(first) = first {
            add(first, &mut paths, &mut writers);
            loop {
                let deadline = (Instant::now() + QUIET).min(started + MAX_AGE);
                match tokio::time::timeout_at(deadline, raw.recv()).await {
                    Ok(Some(r)) => add(r, &mut paths, &mut writers),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        writers.take_due(&mut paths);
        if paths.is_empty() && !everything {
            continue;
        }
        let seen = if everything { Seen::Everything } else { Seen::Paths(paths) };
        if out.send(seen).await.is_err() {
            return;
        }
    }
}

/// Watch the folder and feed the scanner until `shutdown`: a full scan first (edits made
/// while the node was stopped), then the watcher's batches; a folder that vanished is
/// watched again once its marker is back.
pub async fn feed_scanner(sync: Arc<SyncState>, shutdown: CancellationToken) {
    let scanner = Arc::new(Scanner::new(sync.clone()));
    let scan_all = |scanner: Arc<Scanner>| async move {
        let _ = tokio::task::spawn_blocking(move || scanner.scan_all()).await;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Why the folder cannot be watched, once said (it says the same every attempt).
    let mut unwatched: Option<String> = None;
    loop {
        if !sync.check_marker() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => continue,
            }
        }
        let (_watcher, mut events) = match watch(sync.folder.root(), sync.folder.meta_dir()) {
            Ok(watched) => {
                if unwatched.take().is_some() {
                    info!("the shared folder is watched for changes again");
                }
                watched
            }
            Err(e) => {
                // A subfolder the node may not read (inotify needs read access) must not
                // stop the sync of the rest: whole looks find the changes meanwhile.
                let why = format!("{e:#}");
                if unwatched.as_deref() != Some(why.as_str()) {
                    warn!("{why}: changes are found by looking at the whole folder every {UNWATCHED_LOOK_EVERY:?} until it can be watched");
                    unwatched = Some(why);
                }
                scan_all(scanner.clone()).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = sync.rescan.notified() => {}
                    _ = tokio::time::sleep(UNWATCHED_LOOK_EVERY) => {}
                }
                continue;
            }
        };
        scan_all(scanner.clone()).await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                seen = events.recv() => match seen {
                    Some(Seen::Paths(paths)) => {
                        let scanner = scanner.clone();
                        let _ = tokio::task::spawn_blocking(move || scanner.scan_paths(&paths)).await;
                    }
                    Some(Seen::Everything) => scan_all(scanner.clone()).await,
                    None => break,
                },
                _ = sync.rescan.notified() => break,
                _ = tick.tick() => {
                    if !sync.check_marker() {
                        break;
                    }
                    let scanner = scanner.clone();
                    let _ = tokio::task::spawn_blocking(move || scanner.scan_rechecks()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next_paths(rx: &mut mpsc::Receiver<Seen>, want: &Path) -> BTreeSet<PathBuf> {
        let mut all = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !all.contains(want) {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Seen::Paths(p))) => all.extend(p),
                Ok(Some(Seen::Everything)) => {}
                _ => panic!("no event for {} within 10 s (saw {all:?})", want.display()),
            }
        }
        all
    }

    #[tokio::test]
    async fn reading_the_folder_or_a_file_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (_w, mut rx) = watch(&root, root.join(".raftshare")).unwrap();
        std::fs::write(root.join("a.txt"), b"x").unwrap();
        next_paths(&mut rx, &root.join("a.txt")).await;
        // What the scanner and the applier do all the time: list the folder, read a file,
        // open the folder to sync it.
        for _ in 0..3 {
            assert_eq!(std::fs::read_dir(&root).unwrap().count(), 1);
            assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), b"x");
            std::fs::File::open(&root).unwrap().sync_all().unwrap();
        }
        std::fs::write(root.join("b.txt"), b"y").unwrap();
        let seen = next_paths(&mut rx, &root.join("b.txt")).await;
        assert!(!seen.contains(&root) && !seen.contains(&root.join("a.txt")), "reads reported as changes: {seen:?}");
    }

    #[tokio::test]
    async fn a_new_file_and_a_burst_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let (_w, mut rx) = watch(&root, root.join(".raftshare")).unwrap();
        let one = root.join("one.txt");
        std::fs::write(&one, b"x").unwrap();
        next_paths(&mut rx, &one).await;

        std::fs::create_dir_all(root.join(".raftshare/tmp")).unwrap();
        std::fs::write(root.join(".raftshare/tmp/x.part"), b"z").unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        for i in 0..50 {
            std::fs::write(root.join(format!("burst-{i}")), b"y").unwrap();
        }
        let seen = next_paths(&mut rx, &root.join("burst-49")).await;
        assert!(seen.contains(&root.join("burst-0")));
        assert!(seen.iter().all(|p| !p.starts_with(root.join(".raftshare"))), "metadata events are dropped");
    }
}
