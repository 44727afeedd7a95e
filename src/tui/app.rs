//! The TUI's state and how it changes: `App::update` takes a `Msg` (an answer from the
//! node, a key, a clock tick) and returns the `Effect` the event loop must carry out.
//! Nothing here does I/O, so tests drive it with plain values.

use std::collections::{BTreeMap, VecDeque};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use raftshare_raft::admin::{ConfigChange, ConfigReport, Event, PendingReport, StatusReport, Transfer};
use raftshare_raft::FileRecord;

/// Events kept for the Activity view.
const KEEP_EVENTS: usize = 1000;

/// The four views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Files,
    Nodes,
    Activity,
    Config,
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Files, Tab::Nodes, Tab::Activity, Tab::Config];

    pub fn title(self) -> &'static str {
        match self {
            Tab::Files => "Files",
            Tab::Nodes => "Nodes",
            Tab::Activity => "Activity",
            Tab::Config => "Config",
        }
    }

    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// What the Files view is sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Path,
    Size,
    Modified,
    By,
}

impl SortKey {
    pub fn label(self) -> &'static str {
        match self {
            SortKey::Path => "path",
            SortKey::Size => "size",
            SortKey::Modified => "modified",
            SortKey::By => "node",
        }
    }

    fn next(self) -> SortKey {
        match self {
            SortKey::Path => SortKey::Size,
            SortKey::Size => SortKey::Modified,
            SortKey::Modified => SortKey::By,
            SortKey::By => SortKey::Path,
        }
    }
}

/// Where a file stands on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// Here, as committed.
    Synced,
    /// A local change (`deleted`: a local delete) waits for a quorum to commit it.
    WaitingForQuorum { deleted: bool },
    /// Committed, being downloaded.
    Downloading { from: String, done: u64, total: u64 },
    /// Committed, not here yet, download not started.
    NotHereYet { from: String },
}

/// One line of the Files view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    pub path: String,
    pub size: u64,
    /// When and by whom it was last changed (None for a local change not committed yet).
    pub modified_at_ms: Option<i64>,
    pub by: String,
    pub state: FileState,
    pub conflict: bool,
}

/// Whether `path` is a conflict copy (`name.conflict-<node>-<index>.ext`).
pub fn is_conflict_copy(path: &str) -> bool {
    path.rsplit('/').next().unwrap_or(path).contains(".conflict-")
}

/// The settings the Config view shows, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Name,
    SharedDir,
    Listen,
    Allow,
    Ignore,
}

impl Field {
    pub const ALL: [Field; 5] = [Field::Name, Field::SharedDir, Field::Listen, Field::Allow, Field::Ignore];

    pub fn label(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::SharedDir => "shared folder",
            Field::Listen => "listen address",
            Field::Allow => "allowed subnets",
            Field::Ignore => "ignore patterns",
        }
    }

    /// The `restart_needed` key of the field.
    pub fn key(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::SharedDir => "shared_dir",
            Field::Listen => "listen",
            Field::Allow => "allow",
            Field::Ignore => "ignore",
        }
    }

    /// What the setting does and when a change takes effect.
    pub fn help(self) -> &'static str {
        match self {
            Field::Name => "shown to people on every node; a change is applied at once",
            Field::SharedDir => "the folder kept identical; a change takes effect after a restart",
            Field::Listen => "ip:port the node listens on; a change takes effect after a restart",
            Field::Allow => "subnets that may connect (CIDR, comma-separated; empty: this machine's); after a restart",
            Field::Ignore => {
                "gitignore patterns, comma-separated (\\, for a comma in one; .raftshareignore, synced to every node); applied at once"
            }
        }
    }

    /// The value as the editor shows it.
    pub fn value(self, c: &ConfigReport) -> String {
        match self {
            Field::Name => c.name.clone(),
            Field::SharedDir => c.shared_dir.clone(),
            Field::Listen => c.listen.clone(),
            Field::Allow => c.allow.join(", "),
            // A comma inside a pattern is shown escaped, so saving it again keeps it whole.
            Field::Ignore => c.ignore.iter().map(|p| p.replace(',', "\\,")).collect::<Vec<_>>().join(", "),
        }
    }

    fn change(self, text: &str) -> ConfigChange {
        let list = || split_list(text);
        let mut change = ConfigChange::default();
        match self {
            Field::Name => change.name = Some(text.trim().to_string()),
            Field::SharedDir => change.shared_dir = Some(text.trim().to_string()),
            Field::Listen => change.listen = Some(text.trim().to_string()),
            Field::Allow => change.allow = Some(list()),
            Field::Ignore => change.ignore = Some(list()),
        }
        change
    }
}

/// The items of a comma-separated list as the editor shows it (`\,` is a comma inside
/// an item), trimmed, empty ones left out.
fn split_list(text: &str) -> Vec<String> {
    let (mut items, mut current) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next_if_eq(&',').is_some() => current.push(','),
            ',' => items.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    items.push(current);
    items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

/// A line for people under the view: the outcome of the last action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub ok: bool,
    pub text: String,
}

/// Everything that changes the state.
#[derive(Debug, Clone)]
pub enum Msg {
    /// The wall clock, for ages, rates and ETAs.
    Tick(i64),
    Status(Box<StatusReport>),
    Files(Vec<FileRecord>),
    Pending(PendingReport),
    Transfers(Vec<Transfer>),
    /// New events (`reset`: the node restarted, the old feed is over).
    Events {
        events: Vec<Event>,
        reset: bool,
    },
    Config(Box<ConfigReport>),
    /// The answer to a config change: the saved settings and what happened, or why not.
    Saved(Result<(Box<ConfigReport>, String), String>),
    /// The node does not answer (why).
    LinkDown(String),
    Key(KeyEvent),
}

/// What the event loop must do after an update.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    None,
    Quit,
    Save(ConfigChange),
}

/// The TUI's whole state.
#[derive(Debug, Clone)]
pub struct App {
    pub tab: Tab,
    pub now_ms: i64,
    /// Why the node does not answer, while it does not.
    pub link_error: Option<String>,
    pub status: Option<StatusReport>,
    pub files: Vec<FileRecord>,
    pub pending: PendingReport,
    pub transfers: Vec<Transfer>,
    /// Newest last.
    pub events: VecDeque<Event>,
    pub sort: SortKey,
    pub descending: bool,
    pub filter: String,
    /// Keys go to the filter.
    pub filtering: bool,
    pub file_sel: usize,
    pub node_sel: usize,
    pub event_scroll: usize,
    pub config: Option<ConfigReport>,
    pub field_sel: usize,
    /// The edit buffer while a setting is being edited.
    pub editing: Option<String>,
    pub saving: bool,
    pub notice: Option<Notice>,
    /// First time each transfer was seen and how far it was then: (ms, bytes), for the rate.
    pub transfer_seen: BTreeMap<String, (i64, u64)>,
    /// A line for newcomers under the Files view (the demo: where to drop files).
    pub hint: Option<String>,
}

impl App {
    /// An empty state at `now_ms`, before the node answered.
    pub fn new(now_ms: i64) -> App {
        App {
            tab: Tab::Files,
            now_ms,
            link_error: None,
            status: None,
            files: vec![],
            pending: PendingReport::default(),
            transfers: vec![],
            events: VecDeque::new(),
            sort: SortKey::Path,
            descending: false,
            filter: String::new(),
            filtering: false,
            file_sel: 0,
            node_sel: 0,
            event_scroll: 0,
            config: None,
            field_sel: 0,
            editing: None,
            saving: false,
            notice: None,
            transfer_seen: BTreeMap::new(),
            hint: None,
        }
    }

    /// Apply one message.
    pub fn update(&mut self, msg: Msg) -> Effect {
        match msg {
            Msg::Tick(now) => self.now_ms = now,
            Msg::Status(status) => {
                self.link_error = None;
                self.status = Some(*status);
                self.node_sel = self.node_sel.min(self.members_len().saturating_sub(1));
            }
            Msg::Files(files) => {
                self.files = files;
                self.clamp_file_sel();
            }
            Msg::Pending(pending) => {
                self.pending = pending;
                self.clamp_file_sel();
            }
            Msg::Transfers(transfers) => {
                let now = self.now_ms;
                self.transfer_seen.retain(|path, _| transfers.iter().any(|t| &t.path == path));
                for t in &transfers {
                    self.transfer_seen.entry(t.path.clone()).or_insert((now, t.done_bytes));
                }
                self.transfers = transfers;
            }
            Msg::Events { events, reset } => {
                if reset {
                    self.events.clear();
                }
                self.events.extend(events);
                while self.events.len() > KEEP_EVENTS {
                    self.events.pop_front();
                }
            }
            Msg::Config(config) => self.config = Some(*config),
            Msg::Saved(result) => {
                self.saving = false;
                match result {
                    Ok((config, message)) => {
                        self.config = Some(*config);
                        self.editing = None;
                        self.notice = Some(Notice { ok: true, text: message });
                    }
                    Err(why) => self.notice = Some(Notice { ok: false, text: why }),
                }
            }
            Msg::LinkDown(why) => self.link_error = Some(why),
            Msg::Key(key) => return self.key(key),
        }
        Effect::None
    }

    fn key(&mut self, key: KeyEvent) -> Effect {
        if key.kind == KeyEventKind::Release {
            return Effect::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('q')) {
            return Effect::Quit;
        }
        if self.filtering {
            self.filter_key(key, ctrl);
            return Effect::None;
        }
        if self.editing.is_some() {
            return self.edit_key(key, ctrl);
        }
        match key.code {
            KeyCode::Char('q') => return Effect::Quit,
            KeyCode::Esc => {
                self.filter.clear();
                self.notice = None;
                self.clamp_file_sel();
            }
            KeyCode::Tab | KeyCode::Right => self.tab = Tab::ALL[(self.tab.index() + 1) % Tab::ALL.len()],
            KeyCode::BackTab | KeyCode::Left => {
                self.tab = Tab::ALL[(self.tab.index() + Tab::ALL.len() - 1) % Tab::ALL.len()]
            }
            KeyCode::Char(c @ '1'..='4') => self.tab = Tab::ALL[c as usize - '1' as usize],
            KeyCode::Char('f') => self.tab = Tab::Files,
            KeyCode::Char('n') => self.tab = Tab::Nodes,
            KeyCode::Char('a') => self.tab = Tab::Activity,
            KeyCode::Char('c') => self.tab = Tab::Config,
            KeyCode::Up | KeyCode::Char('k') => self.move_sel(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_sel(1),
            KeyCode::PageUp => self.move_sel(-10),
            KeyCode::PageDown => self.move_sel(10),
            KeyCode::Home | KeyCode::Char('g') => self.move_sel(-1_000_000),
            KeyCode::End | KeyCode::Char('G') => self.move_sel(1_000_000),
            KeyCode::Char('/') if self.tab == Tab::Files => self.filtering = true,
            KeyCode::Char('s') if self.tab == Tab::Files => {
                self.sort = self.sort.next();
                self.descending = matches!(self.sort, SortKey::Size | SortKey::Modified);
            }
            KeyCode::Char('r') if self.tab == Tab::Files => self.descending = !self.descending,
            KeyCode::Enter | KeyCode::Char('e') if self.tab == Tab::Config => {
                if let Some(config) = &self.config {
                    let field = Field::ALL[self.field_sel];
                    self.editing = Some(field.value(config));
                    self.notice = None;
                }
            }
            _ => {}
        }
        Effect::None
    }

    fn filter_key(&mut self, key: KeyEvent, ctrl: bool) {
        match key.code {
            KeyCode::Enter => self.filtering = false,
            KeyCode::Esc => {
                self.filtering = false;
                self.filter.clear();
            }
            KeyCode::Backspace => {
                self.filter.pop();
            }
            KeyCode::Char('u') if ctrl => self.filter.clear(),
            KeyCode::Char(c) if !ctrl => self.filter.push(c),
            KeyCode::Up => self.move_sel(-1),
            KeyCode::Down => self.move_sel(1),
            _ => {}
        }
        self.clamp_file_sel();
    }

    fn edit_key(&mut self, key: KeyEvent, ctrl: bool) -> Effect {
        let Some(buffer) = self.editing.as_mut() else { return Effect::None };
        match key.code {
            KeyCode::Esc => {
                self.editing = None;
                self.notice = Some(Notice { ok: true, text: "not changed".into() });
            }
            KeyCode::Enter if !self.saving => {
                let field = Field::ALL[self.field_sel];
                let change = field.change(buffer);
                self.saving = true;
                self.notice = Some(Notice { ok: true, text: format!("saving {}…", field.label()) });
                return Effect::Save(change);
            }
            KeyCode::Backspace => {
                buffer.pop();
            }
            KeyCode::Char('u') if ctrl => buffer.clear(),
            KeyCode::Char('w') if ctrl => {
                let trimmed = buffer.trim_end().len();
                let cut = buffer[..trimmed].rfind([' ', ',', '/']).map(|i| i + 1).unwrap_or(0);
                buffer.truncate(cut);
            }
            KeyCode::Char(c) if !ctrl => buffer.push(c),
            _ => {}
        }
        Effect::None
    }

    fn move_sel(&mut self, by: i64) {
        let len = match self.tab {
            Tab::Files => self.file_rows().len(),
            Tab::Nodes => self.members_len(),
            Tab::Activity => self.events.len(),
            Tab::Config => Field::ALL.len(),
        };
        let sel = match self.tab {
            Tab::Files => &mut self.file_sel,
            Tab::Nodes => &mut self.node_sel,
            Tab::Activity => &mut self.event_scroll,
            Tab::Config => &mut self.field_sel,
        };
        let max = len.saturating_sub(1) as i64;
        *sel = (*sel as i64 + by).clamp(0, max) as usize;
    }

    fn clamp_file_sel(&mut self) {
        self.file_sel = self.file_sel.min(self.file_rows().len().saturating_sub(1));
    }

    fn members_len(&self) -> usize {
        self.status.as_ref().map(|s| s.members.len()).unwrap_or(0)
    }

    /// The name of this node as the cluster knows it (a rename shows at once).
    pub fn node_name(&self) -> Option<String> {
        let s = self.status.as_ref()?;
        Some(s.members.iter().find(|m| m.id == s.node_id).map(|m| m.name.clone()).unwrap_or_else(|| s.name.clone()))
    }

    /// The Files view's lines: committed files and local changes not committed yet,
    /// filtered and sorted as chosen.
    pub fn file_rows(&self) -> Vec<FileRow> {
        let mut rows: BTreeMap<&str, FileRow> = BTreeMap::new();
        let missing: std::collections::BTreeSet<&str> = self.pending.missing.iter().map(String::as_str).collect();
        for f in self.files.iter().filter(|f| !f.deleted) {
            let state = if let Some(t) = self.transfers.iter().find(|t| t.path == f.path) {
                FileState::Downloading { from: t.from.clone(), done: t.done_bytes, total: t.total_bytes }
            } else if missing.contains(f.path.as_str()) {
                FileState::NotHereYet { from: f.origin_name.clone() }
            } else {
                FileState::Synced
            };
            rows.insert(
                &f.path,
                FileRow {
                    path: f.path.clone(),
                    size: f.size,
                    modified_at_ms: Some(f.modified_at_ms),
                    by: f.origin_name.clone(),
                    state,
                    conflict: is_conflict_copy(&f.path),
                },
            );
        }
        let me = self.node_name().unwrap_or_default();
        for p in &self.pending.outbox {
            let state = FileState::WaitingForQuorum { deleted: p.deleted };
            match rows.get_mut(p.path.as_str()) {
                Some(row) => row.state = state,
                None => {
                    rows.insert(
                        &p.path,
                        FileRow {
                            path: p.path.clone(),
                            size: 0,
                            modified_at_ms: None,
                            by: me.clone(),
                            state,
                            conflict: is_conflict_copy(&p.path),
                        },
                    );
                }
            }
        }
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<FileRow> = rows
            .into_values()
            .filter(|r| {
                needle.is_empty() || r.path.to_lowercase().contains(&needle) || r.by.to_lowercase().contains(&needle)
            })
            .collect();
        rows.sort_by(|a, b| {
            let order = match self.sort {
                SortKey::Path => a.path.cmp(&b.path),
                SortKey::Size => a.size.cmp(&b.size),
                SortKey::Modified => a.modified_at_ms.unwrap_or(i64::MAX).cmp(&b.modified_at_ms.unwrap_or(i64::MAX)),
                SortKey::By => a.by.cmp(&b.by),
            }
            .then_with(|| a.path.cmp(&b.path));
            if self.descending {
                order.reverse()
            } else {
                order
            }
        });
        rows
    }

    /// How many committed files are conflict copies.
    pub fn conflict_count(&self) -> usize {
        self.files.iter().filter(|f| !f.deleted && is_conflict_copy(&f.path)).count()
    }

    /// Bytes per second of a running transfer, since it was first seen (or started).
    pub fn rate(&self, t: &Transfer) -> Option<f64> {
        let (since_ms, base) = match self.transfer_seen.get(&t.path) {
            Some((seen, done)) if *seen > t.started_ms && *done > 0 => (*seen, *done),
            _ => (t.started_ms, 0),
        };
        let secs = (self.now_ms - since_ms) as f64 / 1000.0;
        let moved = t.done_bytes.saturating_sub(base) as f64;
        (secs > 0.2 && moved > 0.0).then(|| moved / secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ignore_pattern_with_a_comma_survives_being_edited_and_saved_again() {
        let report = ConfigReport {
            node_id: 1,
            name: "a".into(),
            shared_dir: "/s".into(),
            listen: "0.0.0.0:7070".into(),
            advertise: "10.0.0.1:7070".into(),
            allow: vec![],
            ignore: vec!["a,b.txt".into(), "*.log".into()],
            config_path: "/d/config.toml".into(),
            restart_needed: vec![],
        };
        let shown = Field::Ignore.value(&report);
        assert_eq!(shown, "a\\,b.txt, *.log");
        assert_eq!(Field::Ignore.change(&shown).ignore, Some(report.ignore.clone()));
        // A plain comma still separates; empty items are left out.
        assert_eq!(split_list(" x , ,y,"), ["x", "y"]);
        assert_eq!(Field::Allow.change("10.0.0.0/8, 192.168.1.0/24").allow.unwrap().len(), 2);
    }
}
