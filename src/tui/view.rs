//! Drawing the state: `render(&App, &mut Frame)` and one function per view. Pure: the
//! same `App` always draws the same screen, which is what the render tests read.

use raftshare_raft::admin::Transfer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Gauge, List, ListItem, Paragraph, Row, Table, TableState, Tabs, Wrap};
use ratatui::Frame;

use super::app::{App, Field, FileState, Tab};
use crate::cli::render::{human_bytes, plural, render_event};

/// Draw the whole screen: the tab bar and summary, the current view, the help line.
pub fn render(app: &App, frame: &mut Frame) {
    let [top, summary, body, help] =
        Layout::vertical([Constraint::Length(1), Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)])
            .areas(frame.area());
    render_tabs(app, frame, top);
    render_summary(app, frame, summary);
    match app.tab {
        Tab::Files => render_files(app, frame, body),
        Tab::Nodes => render_nodes(app, frame, body),
        Tab::Activity => render_activity(app, frame, body),
        Tab::Config => render_config(app, frame, body),
    }
    render_help(app, frame, help);
}

fn render_tabs(app: &App, frame: &mut Frame, area: Rect) {
    let [brand, tabs] = Layout::horizontal([Constraint::Length(11), Constraint::Min(10)]).areas(area);
    frame.render_widget(Paragraph::new(" raftshare".bold().cyan()), brand);
    let titles = Tab::ALL.iter().enumerate().map(|(i, t)| format!("{} {}", i + 1, t.title()));
    let selected = Tab::ALL.iter().position(|t| *t == app.tab).unwrap_or(0);
    let tabs_widget = Tabs::new(titles)
        .select(selected)
        .highlight_style(Style::new().bold().reversed())
        .divider("│")
        .padding(" ", " ");
    frame.render_widget(tabs_widget, tabs);
}

fn render_summary(app: &App, frame: &mut Frame, area: Rect) {
    let line = if let Some(why) = &app.link_error {
        Line::from(vec![" node not answering (retrying): ".red().bold(), Span::raw(why.clone())])
    } else if let Some(s) = &app.status {
        let online = s.members.iter().filter(|m| m.online).count();
        let mut spans = vec![
            Span::raw(" "),
            Span::styled(app.node_name().unwrap_or_default(), Style::new().bold()),
            Span::raw(format!(" {} · term {} · ", s.role, s.term)),
            Span::raw(format!("{}/{} online · ", online, s.members.len())),
            Span::raw(plural(app.files.iter().filter(|f| !f.deleted).count(), "file")),
        ];
        let conflicts = app.conflict_count();
        if conflicts > 0 {
            spans.push(Span::raw(" · "));
            spans.push(Span::styled(plural(conflicts, "conflict"), Style::new().yellow().bold()));
        }
        if s.pending_outbox > 0 {
            spans.push(Span::raw(format!(" · {} waiting to commit", s.pending_outbox)));
        }
        if s.pending_downloads > 0 {
            spans.push(Span::raw(format!(" · {} to download", s.pending_downloads)));
        }
        if !s.cannot_hold.is_empty() {
            spans.push(Span::raw(" · "));
            let not_here =
                format!("{} this disk cannot hold: {}", plural(s.cannot_hold.len(), "path"), s.cannot_hold.join("; "));
            spans.push(Span::styled(not_here, Style::new().yellow()));
        }
        if !s.unreadable.is_empty() {
            spans.push(Span::raw(" · "));
            let unreadable = format!(
                "{} unreadable (nothing deleted there): {}",
                plural(s.unreadable.len(), "path"),
                s.unreadable.join("; ")
            );
            spans.push(Span::styled(unreadable, Style::new().yellow()));
        }
        if let Some(problem) = &s.folder_problem {
            spans.push(Span::raw(" · "));
            spans.push(Span::styled(format!("folder not synced: {problem}"), Style::new().red()));
        }
        Line::from(spans)
    } else {
        Line::from(" connecting to the node…".dim())
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn render_help(app: &App, frame: &mut Frame, area: Rect) {
    let keys: &[(&str, &str)] = if app.filtering {
        &[("type", "filter"), ("Enter", "keep"), ("Esc", "clear"), ("↑↓", "move")]
    } else if app.editing.is_some() {
        &[("Enter", "save"), ("Esc", "cancel"), ("Ctrl-U", "clear"), ("Backspace", "delete")]
    } else {
        match app.tab {
            Tab::Files => {
                &[("q", "quit"), ("Tab/1-4", "view"), ("/", "filter"), ("s", "sort"), ("r", "reverse"), ("↑↓", "move")]
            }
            Tab::Config => &[("q", "quit"), ("Tab/1-4", "view"), ("↑↓", "setting"), ("Enter", "edit")],
            _ => &[("q", "quit"), ("Tab/1-4", "view"), ("↑↓", "move")],
        }
    };
    let mut spans = vec![];
    for (key, what) in keys {
        spans.push(Span::styled(format!(" {key}"), Style::new().bold().cyan()));
        spans.push(Span::raw(format!(" {what} ")));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// "now", "12 s ago", "5 min ago", "3 h ago", "2 d ago".
pub fn age(now_ms: i64, at_ms: i64) -> String {
    let secs = (now_ms - at_ms).max(0) / 1000;
    match secs {
        0..=1 => "now".into(),
        2..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

/// `text` cut to `width` characters by dropping its start (a path's end names the file).
pub fn ellipsize_left(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width || width == 0 {
        return text.to_string();
    }
    let keep: String = text.chars().skip(count - (width - 1)).collect();
    format!("…{keep}")
}

fn percent(done: u64, total: u64) -> u64 {
    (done.min(total) * 100).checked_div(total).unwrap_or(100)
}

fn render_files(app: &App, frame: &mut Frame, area: Rect) {
    let rows = app.file_rows();
    let mut title = vec![Span::raw(format!(" Files ({})", rows.len()))];
    let conflicts = app.conflict_count();
    if conflicts > 0 {
        title.push(Span::raw(" · "));
        title.push(Span::styled(plural(conflicts, "conflict"), Style::new().yellow().bold()));
    }
    title.push(Span::raw(format!(" · by {} {} ", app.sort.label(), if app.descending { "↓" } else { "↑" })));
    if app.filtering || !app.filter.is_empty() {
        title.push(Span::styled(
            format!("· filter: {}{} ", app.filter, if app.filtering { "▏" } else { "" }),
            Style::new().bold(),
        ));
    }
    let mut block = Block::bordered().title(Line::from(title));
    if let Some(hint) = &app.hint {
        block = block.title_bottom(Line::from(format!(" {hint} ")).bold());
    }
    if rows.is_empty() {
        let text = if app.filter.is_empty() {
            "No files yet: drop a file into the shared folder and it appears here, and on every node."
        } else {
            "No file matches the filter (Esc clears it)."
        };
        frame.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }).block(block), area);
        return;
    }
    let wide = area.width >= 110;
    let fixed: u16 = if wide { 10 + 11 + 16 + 40 } else { 9 + 10 + 10 + 21 };
    let path_width = area.width.saturating_sub(2 + 4 + fixed) as usize;
    let lines = rows.iter().map(|r| {
        let (state, style) = match &r.state {
            FileState::Synced if r.conflict => ("⚠ conflict copy".to_string(), Style::new().yellow()),
            FileState::Synced => ("synced".to_string(), Style::new().green()),
            FileState::WaitingForQuorum { deleted: false } => ("waiting for quorum".to_string(), Style::new().yellow()),
            FileState::WaitingForQuorum { deleted: true } => ("delete: no quorum".to_string(), Style::new().yellow()),
            FileState::Downloading { from, done, total } => {
                let text = if wide {
                    format!(
                        "↓ from {from} {}% ({} of {})",
                        percent(*done, *total),
                        human_bytes(*done),
                        human_bytes(*total)
                    )
                } else {
                    format!("↓ {from} {}%", percent(*done, *total))
                };
                (text, Style::new().cyan())
            }
            FileState::NotHereYet { from } => (format!("not here yet ({from})"), Style::new().cyan()),
        };
        let shown = ellipsize_left(&r.path, path_width);
        let path = if r.conflict { Span::styled(shown, Style::new().yellow()) } else { Span::raw(shown) };
        Row::new(vec![
            Cell::from(path),
            Cell::from(
                Line::from(if r.modified_at_ms.is_some() { human_bytes(r.size) } else { "-".into() }).right_aligned(),
            ),
            Cell::from(r.modified_at_ms.map(|at| age(app.now_ms, at)).unwrap_or_else(|| "-".into())),
            Cell::from(r.by.clone()),
            Cell::from(Span::styled(state, style)),
        ])
    });
    let widths = if wide {
        [
            Constraint::Min(20),
            Constraint::Length(10),
            Constraint::Length(11),
            Constraint::Length(16),
            Constraint::Length(40),
        ]
    } else {
        [
            Constraint::Min(16),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(21),
        ]
    };
    let header = Row::new(["PATH", "SIZE", "MODIFIED", "BY", "STATE"]).style(Style::new().bold().underlined());
    let table = Table::new(lines, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(Some(app.file_sel));
    frame.render_stateful_widget(table, area, &mut state);
}

fn render_nodes(app: &App, frame: &mut Frame, area: Rect) {
    let block = Block::bordered().title(" Nodes ");
    let Some(s) = &app.status else {
        frame.render_widget(Paragraph::new("waiting for the node…").block(block), area);
        return;
    };
    let [head, table_area] = Layout::vertical([Constraint::Length(4), Constraint::Min(3)]).areas(area);
    let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let leader = match s.leader_id {
        Some(id) => s.members.iter().find(|m| m.id == id).map(|m| m.name.clone()).unwrap_or_else(|| id.to_string()),
        None => "none".into(),
    };
    let this = vec![
        Line::from(vec![
            Span::raw("this node "),
            Span::styled(app.node_name().unwrap_or_default(), Style::new().bold()),
            Span::raw(format!(" ({}) {} · leader {leader}", s.node_id, s.role)),
        ]),
        Line::from(format!(
            "term {} · commit {} · applied {} · last log {}",
            s.term,
            opt(s.committed_index),
            opt(s.applied_index),
            opt(s.last_log_index)
        )),
    ];
    frame.render_widget(Paragraph::new(this).block(Block::bordered().title(" This node ")), head);
    let last = s.last_log_index.unwrap_or(0);
    let rows = s.members.iter().map(|m| {
        let role = if Some(m.id) == s.leader_id {
            "leader"
        } else if m.id == s.node_id && s.role == "candidate" {
            "candidate"
        } else if m.voter {
            "follower"
        } else {
            "learner"
        };
        let (state, style) =
            if m.online { ("online", Style::new().green()) } else { ("offline", Style::new().red().bold()) };
        let seen = match m.last_seen_ms {
            _ if m.id == s.node_id => "-".to_string(),
            Some(ms) => age(ms as i64, 0),
            None => "never".to_string(),
        };
        let matched = match m.matched_index {
            Some(i) if i < last => format!("{i} (-{})", last - i),
            Some(i) => i.to_string(),
            None => "-".into(),
        };
        let name = if m.id == s.node_id { format!("{} *", m.name) } else { m.name.clone() };
        Row::new(vec![
            Cell::from(name),
            Cell::from(m.id.to_string()),
            Cell::from(m.addr.clone()),
            Cell::from(role),
            Cell::from(Span::styled(state, style)),
            Cell::from(seen),
            Cell::from(matched),
        ])
    });
    let wide = area.width >= 110;
    let widths = if wide {
        [
            Constraint::Min(16),
            Constraint::Length(17),
            Constraint::Length(22),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Length(12),
        ]
    } else {
        [
            Constraint::Min(8),
            Constraint::Length(16),
            Constraint::Length(15),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(8),
        ]
    };
    let header =
        Row::new(["NAME", "ID", "ADDRESS", "ROLE", "STATE", "SEEN", "MATCHED"]).style(Style::new().bold().underlined());
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .block(Block::bordered().title(format!(" Nodes ({}) ", s.members.len())))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(Some(app.node_sel));
    frame.render_stateful_widget(table, table_area, &mut state);
}

/// One transfer for people: `path from node  1.2 MiB of 4.0 MiB  850.0 KiB/s  ETA 3 s`.
pub fn transfer_line(app: &App, t: &Transfer) -> String {
    let rate = app.rate(t);
    let speed = rate.map(|r| format!("{}/s", human_bytes(r as u64))).unwrap_or_else(|| "-".into());
    let eta = match rate {
        Some(r) if r > 0.0 => {
            format!("ETA {} s", ((t.total_bytes.saturating_sub(t.done_bytes)) as f64 / r).ceil() as u64)
        }
        _ => "ETA -".into(),
    };
    format!(
        "{} from {}  {} of {}  {speed}  {eta}",
        t.path,
        t.from,
        human_bytes(t.done_bytes),
        human_bytes(t.total_bytes)
    )
}

fn render_activity(app: &App, frame: &mut Frame, area: Rect) {
    let shown = app.transfers.len().min(((area.height.saturating_sub(8)) / 2) as usize).min(6);
    let transfers_height = if app.transfers.is_empty() { 0 } else { shown as u16 * 2 + 2 };
    let [transfers_area, events_area] =
        Layout::vertical([Constraint::Length(transfers_height), Constraint::Min(3)]).areas(area);
    if transfers_height > 0 {
        let block = Block::bordered().title(format!(" Downloading ({}) ", app.transfers.len()));
        let inner = block.inner(transfers_area);
        frame.render_widget(block, transfers_area);
        let slots = Layout::vertical(vec![Constraint::Length(1); shown * 2]).split(inner);
        for (i, t) in app.transfers.iter().take(shown).enumerate() {
            frame.render_widget(Paragraph::new(transfer_line(app, t)), slots[i * 2]);
            let ratio =
                if t.total_bytes == 0 { 1.0 } else { (t.done_bytes.min(t.total_bytes)) as f64 / t.total_bytes as f64 };
            let gauge = Gauge::default()
                .gauge_style(Style::new().fg(Color::Cyan))
                .ratio(ratio)
                .label(format!("{}%", percent(t.done_bytes, t.total_bytes)));
            frame.render_widget(gauge, slots[i * 2 + 1]);
        }
    }
    let items: Vec<ListItem> = app
        .events
        .iter()
        .rev()
        .skip(app.event_scroll)
        .take(events_area.height as usize)
        .map(|e| ListItem::new(render_event(e)))
        .collect();
    let title = format!(" Activity ({} events, newest first) ", app.events.len());
    if items.is_empty() {
        let text = "Nothing happened yet: files sent, received, deleted, conflicts and nodes going online or offline show here.";
        frame.render_widget(
            Paragraph::new(text).wrap(Wrap { trim: true }).block(Block::bordered().title(title)),
            events_area,
        );
    } else {
        frame.render_widget(List::new(items).block(Block::bordered().title(title)), events_area);
    }
}

fn render_config(app: &App, frame: &mut Frame, area: Rect) {
    let block = Block::bordered().title(" Config ");
    let Some(config) = &app.config else {
        frame.render_widget(Paragraph::new("waiting for the node…").block(block), area);
        return;
    };
    let mut lines =
        vec![Line::from(format!("node {} · saved in {}", config.node_id, config.config_path).dim()), Line::raw("")];
    for (i, field) in Field::ALL.iter().enumerate() {
        let selected = i == app.field_sel;
        let marker = if selected { "▶ " } else { "  " };
        let mut spans = vec![Span::raw(marker), Span::styled(format!("{:<16}", field.label()), Style::new().bold())];
        match (&app.editing, selected) {
            (Some(buffer), true) => {
                spans.push(Span::styled(format!("{buffer}▏"), Style::new().reversed()));
            }
            _ => {
                let value = field.value(config);
                let value = if value.is_empty() {
                    match field {
                        Field::Allow => "(this machine's subnets and loopback)".to_string(),
                        Field::Ignore => "(none)".to_string(),
                        _ => value,
                    }
                } else {
                    value
                };
                spans.push(Span::raw(value));
            }
        }
        if config.restart_needed.iter().any(|k| k == field.key()) {
            spans.push(Span::styled("  restart needed", Style::new().yellow().bold()));
        }
        lines.push(Line::from(spans));
        if selected {
            lines.push(Line::from(format!("  {:<16}{}", "", field.help()).dim()));
        }
    }
    lines.push(Line::raw(""));
    if !config.restart_needed.is_empty() {
        lines.push(Line::from(
            format!(
                "Saved, not in effect yet: {}. Restart the node (stop `raftshare run`, start it again) to apply.",
                config.restart_needed.join(", ")
            )
            .yellow(),
        ));
    }
    if let Some(notice) = &app.notice {
        let style = if notice.ok { Style::new().green() } else { Style::new().red().bold() };
        lines.push(Line::from(Span::styled(notice.text.clone(), style)));
    }
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }).block(block), area);
}
