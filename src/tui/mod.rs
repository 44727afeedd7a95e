//! `raftshare tui`: a terminal view of the running node — Files, Nodes, Activity and
//! Config — as a client of its admin service.
//!
//! Built as pure state plus drawing (`app`: `App` updated by `Msg`s; `view`:
//! `render(&App, &mut Frame)`), so tests render it on ratatui's `TestBackend`; this file
//! is the I/O around them: the terminal, the keyboard thread, and the tasks that follow
//! the node. One task long-polls `Events`; another asks `Status` every few seconds and
//! `Ls`/`Pending` only when something changed (an event, an applied entry), `Transfers`
//! while downloads run. ratatui redraws only the cells that changed: no flicker.

pub mod app;
pub mod view;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossterm::event::{self, Event as TermEvent};
use raftshare_raft::admin::{AdminRequest, AdminResponse, EventKind};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio_util::sync::CancellationToken;

pub use app::{App, Effect, Msg};
pub use view::render;

use crate::client::NodeClient;
use crate::clock::now_ms;
use crate::config::DataDir;

/// How long one `Events` long poll may wait.
const EVENT_WAIT_MS: u64 = 25_000;
/// `Status` is asked this often when nothing happens (liveness, matched indexes).
const STATUS_EVERY: Duration = Duration::from_secs(2);
/// And this often while downloads run (progress bars).
const TRANSFERS_EVERY: Duration = Duration::from_millis(500);

/// Whether a TUI can be shown here (stdout and stdin are terminals).
pub fn on_terminal() -> bool {
    std::io::stdout().is_terminal() && std::io::stdin().is_terminal()
}

/// The connection to the node, made again when it breaks (the node restarted).
struct Link {
    data_dir: DataDir,
    client: Mutex<Option<Arc<NodeClient>>>,
    /// Bumped at every new connection, so the event follower knows the feed restarted.
    generation: std::sync::atomic::AtomicU64,
}

impl Link {
    async fn call(&self, req: AdminRequest, long: bool) -> Result<(AdminResponse, u64)> {
        let client = {
            let mut slot = self.client.lock().await;
            match slot.as_ref() {
                Some(client) => client.clone(),
                None => {
                    let client = Arc::new(NodeClient::connect(&self.data_dir).await?);
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    *slot = Some(client.clone());
                    client
                }
            }
        };
        let generation = self.generation.load(Ordering::SeqCst);
        let answer = if long { client.query_long(req).await } else { client.query(req).await };
        match answer {
            Ok(resp) => Ok((resp, generation)),
            Err(e) => {
                let mut slot = self.client.lock().await;
                if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client)) {
                    *slot = None;
                }
                Err(e)
            }
        }
    }
}

fn short_error(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

/// `raftshare tui`: attach to the node of `data_dir` until `q`; `hint` is shown under
/// the Files view.
pub async fn attach(data_dir: &DataDir, hint: Option<String>) -> Result<()> {
    if !on_terminal() {
        bail!("`raftshare tui` needs a terminal; for scripts use `raftshare status --json`, `ls --json` and `events --follow --json`");
    }
    // Fail with the client's clear message before taking the screen.
    let first = NodeClient::connect(data_dir).await?;
    first.query(AdminRequest::Status).await?;
    drop(first);
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let result = run_loop(&mut terminal, data_dir.clone(), hint).await;
    ratatui::restore();
    result
}

async fn run_loop(terminal: &mut ratatui::DefaultTerminal, data_dir: DataDir, hint: Option<String>) -> Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let stop = CancellationToken::new();
    let link = Arc::new(Link { data_dir, client: Mutex::new(None), generation: 0.into() });
    let kick = Arc::new(Notify::new());

    let keys_done = Arc::new(AtomicBool::new(false));
    let keyboard = {
        let tx = tx.clone();
        let done = keys_done.clone();
        std::thread::spawn(move || read_keys(tx, done))
    };
    let tasks = [
        tokio::spawn(follow_events(link.clone(), tx.clone(), kick.clone(), stop.clone())),
        tokio::spawn(refresh(link.clone(), tx.clone(), kick.clone(), stop.clone())),
        tokio::spawn(load_config(link.clone(), tx.clone())),
    ];

    let mut app = App::new(now_ms());
    app.hint = hint;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        // Every message may change what is shown; ratatui writes only the cells that differ.
        if let Err(e) = terminal.draw(|frame| render(&app, frame)) {
            break Err(anyhow::Error::from(e).context("cannot draw on the terminal"));
        }
        let msg = tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => msg,
                None => break Ok(()),
            },
            _ = tick.tick() => Msg::Tick(now_ms()),
        };
        match app.update(msg) {
            Effect::None => {}
            Effect::Quit => break Ok(()),
            Effect::Save(change) => {
                let (link, tx, kick) = (link.clone(), tx.clone(), kick.clone());
                tokio::spawn(async move {
                    let result = match link.call(AdminRequest::SetConfig(change), true).await {
                        Ok((AdminResponse::ConfigSaved { report, message }, _)) => Ok((report, message)),
                        Ok(_) => Err("the node gave an unexpected answer".to_string()),
                        Err(e) => Err(short_error(&e)),
                    };
                    let _ = tx.send(Msg::Saved(result));
                    kick.notify_one();
                });
            }
        }
    };
    stop.cancel();
    keys_done.store(true, Ordering::SeqCst);
    for task in tasks {
        task.abort();
    }
    let _ = tokio::task::spawn_blocking(move || keyboard.join()).await;
    outcome
}

/// The keyboard, on its own thread (crossterm's reads block): keys and resizes to the loop.
fn read_keys(tx: mpsc::UnboundedSender<Msg>, done: Arc<AtomicBool>) {
    while !done.load(Ordering::SeqCst) {
        match event::poll(Duration::from_millis(100)) {
            Ok(true) => match event::read() {
                Ok(TermEvent::Key(key)) => {
                    if tx.send(Msg::Key(key)).is_err() {
                        return;
                    }
                }
                Ok(TermEvent::Resize(..)) => {
                    if tx.send(Msg::Tick(now_ms())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            },
            Ok(false) => {}
            Err(_) => return,
        }
    }
}

/// Follow the node's events with a long poll; wake the refresher when files or nodes changed.
async fn follow_events(link: Arc<Link>, tx: mpsc::UnboundedSender<Msg>, kick: Arc<Notify>, stop: CancellationToken) {
    let mut after: Option<u64> = None;
    let mut generation = 0;
    let mut reset = false;
    loop {
        let req = AdminRequest::Events { after, wait_ms: if after.is_some() { EVENT_WAIT_MS } else { 0 } };
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = link.call(req, true) => answer,
        };
        match answer {
            Ok((AdminResponse::Events(events), g)) => {
                if g != generation {
                    generation = g;
                    reset = true;
                    if after.is_some() {
                        // A new connection may be a restarted node whose seqs begin again.
                        after = None;
                        continue;
                    }
                }
                let reset = std::mem::take(&mut reset);
                let changes = events.iter().any(|e| !matches!(e.kind, EventKind::Folder { .. }));
                after = events.last().map(|e| e.seq).or(after).or(Some(0));
                if (!events.is_empty() || reset) && tx.send(Msg::Events { events, reset }).is_err() {
                    return;
                }
                if changes {
                    kick.notify_one();
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Msg::LinkDown(short_error(&e)));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Ask `Status` regularly, and the file table, the pending list and the transfers only
/// when they can have changed.
async fn refresh(link: Arc<Link>, tx: mpsc::UnboundedSender<Msg>, kick: Arc<Notify>, stop: CancellationToken) {
    let mut seen: Option<(Option<u64>, u64, u64)> = None;
    let mut kicked = true;
    let mut had_transfers = false;
    loop {
        let mut downloading = false;
        match link.call(AdminRequest::Status, false).await {
            Ok((AdminResponse::Status(status), _)) => {
                let key = (status.applied_index, status.pending_outbox, status.pending_downloads);
                let files_changed = kicked || seen != Some(key);
                seen = Some(key);
                downloading = status.pending_downloads > 0;
                let _ = tx.send(Msg::Status(status));
                if files_changed {
                    if let Ok((AdminResponse::Files(files), _)) = link.call(AdminRequest::Ls, false).await {
                        let _ = tx.send(Msg::Files(files));
                    }
                    if let Ok((AdminResponse::Pending(pending), _)) = link.call(AdminRequest::Pending, false).await {
                        let _ = tx.send(Msg::Pending(pending));
                    }
                }
                if downloading || had_transfers || files_changed {
                    if let Ok((AdminResponse::Transfers(transfers), _)) =
                        link.call(AdminRequest::Transfers, false).await
                    {
                        had_transfers = !transfers.is_empty();
                        downloading |= had_transfers;
                        let _ = tx.send(Msg::Transfers(transfers));
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Msg::LinkDown(short_error(&e)));
                seen = None;
            }
        }
        let wait = if downloading { TRANSFERS_EVERY } else { STATUS_EVERY };
        kicked = tokio::select! {
            _ = stop.cancelled() => return,
            _ = kick.notified() => true,
            _ = tokio::time::sleep(wait) => false,
        };
        if kicked {
            // Events come in bursts: let the burst end before asking.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn load_config(link: Arc<Link>, tx: mpsc::UnboundedSender<Msg>) {
    for _ in 0..30 {
        match link.call(AdminRequest::GetConfig, false).await {
            Ok((AdminResponse::Config(config), _)) => {
                let _ = tx.send(Msg::Config(config));
                return;
            }
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// `raftshare run` on a terminal: the node in this process, the TUI over it; quitting the
/// TUI stops the node as SIGTERM would (its logs go to `DATA_DIR/node.log`).
pub async fn run_node_with_tui(data_dir: DataDir, fault_hook: bool) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Once tokio handles SIGTERM, a SIGTERM sent before the node listens for it is not fatal.
    let mut term = signal(SignalKind::terminate())?;
    let mut node = tokio::spawn(crate::node::run(data_dir.clone(), fault_hook));
    let ready = async {
        loop {
            if let Ok(client) = NodeClient::connect(&data_dir).await {
                if client.query(AdminRequest::Status).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        ended = &mut node => return ended.context("the node stopped unexpectedly")?,
        _ = ready => {}
    }
    let tui = tokio::select! {
        result = attach(&data_dir, None) => result,
        ended = &mut node => {
            ratatui::restore();
            return ended.context("the node stopped unexpectedly")?;
        }
        _ = term.recv() => Ok(()),
    };
    ratatui::restore();
    // The node stops on SIGTERM: send it until the node has seen it.
    loop {
        // SAFETY: kill(2) on our own pid has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGTERM);
        }
        tokio::select! {
            ended = &mut node => {
                ended.context("the node task failed")??;
                break;
            }
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }
    tui
}
