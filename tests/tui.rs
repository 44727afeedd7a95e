//! Render tests of the TUI on ratatui's `TestBackend`: for each view, at 80×24 and at a
//! large size, the text a person reads (file names, node names, online/offline, the
//! modifying node, progress), and the keys that change it.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use raftshare::tui::app::{App, Effect, FileState, Msg, SortKey, Tab};
use raftshare::tui::render;
use raftshare_raft::admin::{
    ConfigChange, ConfigReport, Event, EventKind, MemberStatus, PendingChange, PendingReport, StatusReport, Transfer,
};
use raftshare_raft::{Digest, FileRecord};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

/// 2026-11-25 12:00:00 UTC.
const NOW: i64 = 1_795_608_000_000;
const SIZES: [(u16, u16); 2] = [(80, 24), (160, 48)];

fn screen(app: &App, width: u16, height: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| render(app, frame)).unwrap();
    let buffer = terminal.backend().buffer();
    (0..height).map(|y| (0..width).map(|x| buffer[(x, y)].symbol()).collect::<String>()).collect::<Vec<_>>().join("\n")
}

/// The screen line that contains `needle` (panics with the screen if none does).
fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?} in:\n{screen}"))
}

fn key(code: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn ctrl(c: char) -> Msg {
    Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        assert_eq!(app.update(key(KeyCode::Char(c))), Effect::None);
    }
}

fn file(path: &str, size: u64, by: &str, ago_s: i64) -> FileRecord {
    FileRecord {
        path: path.into(),
        size,
        hash: Digest::of(path.as_bytes()),
        blocks: vec![],
        mtime: 0,
        version: 3,
        origin: 2,
        origin_name: by.into(),
        modified_at_ms: NOW - ago_s * 1000,
        deleted: false,
    }
}

fn member(id: u64, name: &str, online: bool, voter: bool, matched: Option<u64>, seen: Option<u64>) -> MemberStatus {
    MemberStatus {
        id,
        name: name.into(),
        addr: format!("127.0.0.1:{}", 40000 + id),
        voter,
        online,
        matched_index: matched,
        last_seen_ms: seen,
        identity: String::new(),
    }
}

fn status() -> StatusReport {
    StatusReport {
        node_id: 11,
        name: "desk".into(),
        addr: "127.0.0.1:40011".into(),
        cluster_id: "c0ffee".into(),
        role: "leader".into(),
        leader_id: Some(11),
        leader_addr: Some("127.0.0.1:40011".into()),
        term: 7,
        last_log_index: Some(42),
        committed_index: Some(41),
        applied_index: Some(40),
        first_log_index: Some(1),
        snapshot_index: None,
        db_size_bytes: 1 << 20,
        log_size_bytes: 0,
        pending_outbox: 1,
        pending_downloads: 2,
        bytes_sent: 0,
        bytes_received: 0,
        folder_problem: None,
        unreadable: vec![],
        cannot_hold: vec![],
        members: vec![
            member(11, "desk", true, true, Some(42), Some(0)),
            member(22, "laptop", true, true, Some(42), Some(300)),
            member(33, "nas", false, true, Some(30), Some(65_000)),
            member(44, "tablet", true, false, Some(41), Some(900)),
        ],
    }
}

fn config() -> ConfigReport {
    ConfigReport {
        node_id: 11,
        name: "desk".into(),
        shared_dir: "/home/me/Shared".into(),
        listen: "0.0.0.0:7070".into(),
        advertise: "192.168.1.10:7070".into(),
        allow: vec![],
        ignore: vec!["*.tmp".into(), "build/".into()],
        config_path: "/home/me/.local/share/raftshare/config.toml".into(),
        restart_needed: vec![],
    }
}

/// A node with files in every state, members, events and a running download.
fn app() -> App {
    let mut app = App::new(NOW);
    app.update(Msg::Status(Box::new(status())));
    app.update(Msg::Files(vec![
        file("docs/report.txt", 2048, "laptop", 90),
        file("docs/report.conflict-nas-17.txt", 2100, "nas", 30),
        file("photos/big.iso", 8 << 20, "nas", 5),
        file("music/later.ogg", 5000, "laptop", 4000),
        FileRecord { deleted: true, ..file("gone.txt", 1, "desk", 10) },
    ]));
    app.update(Msg::Pending(PendingReport {
        outbox: vec![PendingChange { path: "draft.md".into(), deleted: false, queued_at_ms: NOW - 1000 }],
        missing: vec!["photos/big.iso".into(), "music/later.ogg".into()],
    }));
    app.update(Msg::Transfers(vec![Transfer {
        path: "photos/big.iso".into(),
        from: "nas".into(),
        total_bytes: 8 << 20,
        done_bytes: 4 << 20,
        started_ms: NOW - 4000,
    }]));
    app.update(Msg::Events {
        events: vec![
            Event { seq: 1, at_ms: NOW - 60_000, kind: EventKind::NodeOnline { id: 22, name: "laptop".into() } },
            Event {
                seq: 2,
                at_ms: NOW - 50_000,
                kind: EventKind::Received {
                    path: "docs/report.txt".into(),
                    from: "laptop".into(),
                    size: 2048,
                    fetched: 2048,
                },
            },
            Event {
                seq: 3,
                at_ms: NOW - 30_000,
                kind: EventKind::Conflict {
                    path: "docs/report.txt".into(),
                    kept_as: "docs/report.conflict-nas-17.txt".into(),
                    by: "nas".into(),
                },
            },
            Event { seq: 4, at_ms: NOW - 10_000, kind: EventKind::NodeOffline { id: 33, name: "nas".into() } },
            Event {
                seq: 5,
                at_ms: NOW - 5_000,
                kind: EventKind::Deleted { path: "gone.txt".into(), by: "laptop".into() },
            },
        ],
        reset: true,
    });
    app.update(Msg::Config(Box::new(config())));
    app
}

#[test]
fn files_view_shows_each_file_its_size_age_modifier_and_state() {
    let app = app();
    assert_eq!(app.tab, Tab::Files);
    for (w, h) in SIZES {
        let s = screen(&app, w, h);
        assert!(s.contains("1 conflict"), "{s}");
        let report = line_with(&s, "docs/report.txt");
        assert!(report.contains("laptop") && report.contains("2.0 KiB") && report.contains("1 min ago"), "{report}");
        assert!(report.contains("synced"), "{report}");
        let conflict = line_with(&s, "conflict-nas-17");
        assert!(conflict.contains("⚠ conflict copy") && conflict.contains("nas"), "{conflict}");
        let draft = line_with(&s, "draft.md");
        assert!(draft.contains("waiting for quorum") && draft.contains("desk"), "{draft}");
        let big = line_with(&s, "photos/big.iso");
        assert!(big.contains("nas") && big.contains("50%"), "{big}");
        let later = line_with(&s, "music/later.ogg");
        assert!(later.contains("not here yet (laptop)") && later.contains("1 h ago"), "{later}");
        assert!(!s.contains("gone.txt"), "a deleted file is not listed:\n{s}");
        // The help line, on the last row.
        let help = s.lines().last().unwrap();
        assert!(help.contains("q quit") && help.contains("/ filter") && help.contains("s sort"), "{help}");
    }
    let large = screen(&app, 160, 48);
    assert!(line_with(&large, "photos/big.iso").contains("↓ from nas 50% (4.0 MiB of 8.0 MiB)"), "{large}");
    let small = screen(&app, 80, 24);
    assert!(line_with(&small, "photos/big.iso").contains("↓ nas 50%"), "{small}");
    // The summary line says who this node is and how the cluster is.
    let summary = small.lines().nth(1).unwrap();
    assert!(summary.contains("desk leader") && summary.contains("3/4 online"), "{summary}");
}

#[test]
fn files_filter_as_you_type_and_sort() {
    let mut app = app();
    app.update(key(KeyCode::Char('/')));
    typed(&mut app, "REP");
    let s = screen(&app, 80, 24);
    assert!(s.contains("filter: REP"), "{s}");
    assert!(s.contains("docs/report.txt") && s.contains("conflict-nas-17"), "{s}");
    assert!(!s.contains("big.iso") && !s.contains("draft.md"), "{s}");
    // The filter matches the modifying node too; Backspace edits it.
    for _ in 0..3 {
        app.update(key(KeyCode::Backspace));
    }
    typed(&mut app, "nas");
    let paths: Vec<String> = app.file_rows().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["docs/report.conflict-nas-17.txt", "photos/big.iso"]);
    app.update(key(KeyCode::Enter));
    assert!(!app.filtering);
    // `q` typed into the filter is text; outside it, it quits.
    app.update(key(KeyCode::Esc));
    assert_eq!(app.file_rows().len(), 5, "Esc clears the filter");
    app.update(key(KeyCode::Char('s')));
    assert_eq!(app.sort, SortKey::Size);
    let by_size: Vec<u64> = app.file_rows().iter().map(|r| r.size).collect();
    assert_eq!(by_size[0], 8 << 20, "largest first: {by_size:?}");
    assert!(screen(&app, 80, 24).contains("by size ↓"));
    app.update(key(KeyCode::Char('r')));
    assert_eq!(app.file_rows()[0].size, 0, "reversed: the uncommitted draft (no size yet) first");
    app.update(key(KeyCode::Char('s')));
    assert_eq!(app.file_rows()[0].path, "draft.md", "by modified, newest first: the local change");
    app.update(key(KeyCode::Char('s')));
    assert_eq!(app.sort, SortKey::By);
    let states: Vec<FileState> = app.file_rows().into_iter().map(|r| r.state).collect();
    assert!(states.contains(&FileState::WaitingForQuorum { deleted: false }));
}

#[test]
fn nodes_view_shows_every_member_with_role_liveness_and_progress() {
    let mut app = app();
    app.update(key(KeyCode::Char('2')));
    assert_eq!(app.tab, Tab::Nodes);
    for (w, h) in SIZES {
        let s = screen(&app, w, h);
        assert!(s.contains("term 7 · commit 41 · applied 40 · last log 42"), "{s}");
        let desk = line_with(&s, "desk *");
        assert!(desk.contains("11") && desk.contains("leader") && desk.contains("online"), "{desk}");
        let laptop = line_with(&s, "laptop ");
        assert!(laptop.contains("127.0.0.1:40022") && laptop.contains("follower") && laptop.contains("online"));
        assert!(laptop.contains("now"), "{laptop}");
        let nas = line_with(&s, "nas ");
        assert!(nas.contains("offline") && nas.contains("1 min ago") && nas.contains("30 (-12)"), "{nas}");
        let tablet = line_with(&s, "tablet");
        assert!(tablet.contains("learner") && tablet.contains("online") && tablet.contains("41"), "{tablet}");
        assert!(s.contains("MATCHED"), "every column fits:\n{s}");
    }
}

#[test]
fn activity_view_shows_the_feed_and_a_progress_bar_per_transfer() {
    let mut app = app();
    app.update(key(KeyCode::Char('3')));
    // Two seconds later, 2 MiB more arrived: 1 MiB/s, 2 MiB to go.
    app.update(Msg::Tick(NOW + 2000));
    app.update(Msg::Transfers(vec![Transfer {
        path: "photos/big.iso".into(),
        from: "nas".into(),
        total_bytes: 8 << 20,
        done_bytes: 6 << 20,
        started_ms: NOW - 4000,
    }]));
    for (w, h) in SIZES {
        let s = screen(&app, w, h);
        let transfer = line_with(&s, "photos/big.iso from nas");
        assert!(
            transfer.contains("6.0 MiB of 8.0 MiB") && transfer.contains("1.0 MiB/s") && transfer.contains("ETA 2 s")
        );
        assert!(line_with(&s, "75%").contains('█'), "a bar:\n{s}");
        assert!(s.contains("received docs/report.txt from laptop"), "{s}");
        assert!(
            s.contains("conflict on docs/report.txt: nas's version kept as docs/report.conflict-nas-17.txt") || w < 100
        );
        assert!(s.contains("nas (33) is offline") && s.contains("laptop (22) is online"), "{s}");
        assert!(s.contains("deleted gone.txt (by laptop)"), "{s}");
        // Newest first.
        assert!(s.find("deleted gone.txt").unwrap() < s.find("is offline").unwrap());
    }
}

#[test]
fn config_view_edits_a_setting_with_keys_and_says_what_needs_a_restart() {
    let mut app = app();
    app.update(key(KeyCode::Char('4')));
    for (w, h) in SIZES {
        let s = screen(&app, w, h);
        assert!(line_with(&s, "name").contains("desk"), "{s}");
        assert!(line_with(&s, "shared folder").contains("/home/me/Shared"));
        assert!(line_with(&s, "listen address").contains("0.0.0.0:7070"));
        assert!(line_with(&s, "allowed subnets").contains("this machine's subnets"));
        assert!(line_with(&s, "ignore patterns").contains("*.tmp, build/"));
        assert!(s.contains("Enter edit"), "{s}");
    }
    // Rename: Enter, clear, type, Enter.
    app.update(key(KeyCode::Enter));
    assert!(screen(&app, 80, 24).contains("Enter save"));
    app.update(ctrl('u'));
    typed(&mut app, "study q");
    let effect = app.update(key(KeyCode::Enter));
    assert_eq!(effect, Effect::Save(ConfigChange { name: Some("study q".into()), ..Default::default() }));
    assert!(screen(&app, 80, 24).contains("saving name"));
    let saved = ConfigReport { name: "study q".into(), ..config() };
    app.update(Msg::Saved(Ok((Box::new(saved), "name is now \"study q\" on every node".into()))));
    let s = screen(&app, 80, 24);
    assert!(line_with(&s, "▶ name").contains("study q") && s.contains("on every node"), "{s}");
    // A refused value: the reason shows, the editor stays open.
    app.update(key(KeyCode::Down));
    app.update(key(KeyCode::Down));
    app.update(key(KeyCode::Enter));
    app.update(ctrl('u'));
    typed(&mut app, "nowhere");
    assert_eq!(
        app.update(key(KeyCode::Enter)),
        Effect::Save(ConfigChange { listen: Some("nowhere".into()), ..Default::default() })
    );
    app.update(Msg::Saved(Err("\"nowhere\" is not an address to listen on: give ip:port".into())));
    let s = screen(&app, 80, 24);
    assert!(s.contains("not an address to listen on") && s.contains("nowhere▏"), "{s}");
    app.update(key(KeyCode::Esc));
    // A saved change that waits for a restart says so.
    let pending = ConfigReport { listen: "0.0.0.0:7171".into(), restart_needed: vec!["listen".into()], ..config() };
    app.update(Msg::Saved(Ok((Box::new(pending), "restart the node for listen to take effect".into()))));
    for (w, h) in SIZES {
        let s = screen(&app, w, h);
        assert!(line_with(&s, "listen address").contains("restart needed"), "{s}");
        assert!(s.contains("Restart the node"), "{s}");
    }
    // Lists are edited comma-separated.
    app.update(key(KeyCode::Down));
    app.update(key(KeyCode::Down));
    app.update(key(KeyCode::Enter));
    typed(&mut app, ", *.bak");
    let effect = app.update(key(KeyCode::Enter));
    let want = vec!["*.tmp".to_string(), "build/".into(), "*.bak".into()];
    assert_eq!(effect, Effect::Save(ConfigChange { ignore: Some(want), ..Default::default() }));
}

#[test]
fn q_quits_tabs_cycle_and_a_silent_node_is_reported() {
    let mut app = app();
    app.update(key(KeyCode::Tab));
    assert_eq!(app.tab, Tab::Nodes);
    app.update(key(KeyCode::BackTab));
    app.update(key(KeyCode::BackTab));
    assert_eq!(app.tab, Tab::Config);
    app.update(Msg::LinkDown("cannot talk to the raftshare node at 127.0.0.1:7070".into()));
    let s = screen(&app, 80, 24);
    assert!(s.contains("node not answering") && s.contains("retrying"), "{s}");
    assert_eq!(app.update(key(KeyCode::Char('q'))), Effect::Quit);
    assert_eq!(app.update(ctrl('c')), Effect::Quit);
    // Before the node answered: no panic, a clear line.
    let s = screen(&App::new(NOW), 80, 24);
    assert!(s.contains("connecting to the node") && s.contains("No files yet"), "{s}");
}
