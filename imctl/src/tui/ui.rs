//! Drawing: one pure function of an [`App`] onto a ratatui `Frame`.
//!
//! It owns layout and looks, sized for 80×24 first: a tab bar, a status line (the
//! "server unreachable, retrying" banner when polls fail), the tab's body, and a key
//! help line. It must not change the state nor do I/O, so that every view can be
//! checked on a `TestBackend`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Row, Sparkline, Table, TableState, Tabs, Wrap};
use shared::admin::NodeInfo;

use super::app::{App, BlacklistForm, FormField, Link, Tab, TailState};
use crate::client::ErrorKind;
use crate::commands::{cap, load, percentile, rating, roles, status, yes_no};
use crate::output::{clock, duration, message_text, relative};

/// The banner shown while the server does not answer.
pub const UNREACHABLE: &str = "server unreachable, retrying";

/// Draws the whole console.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let [tabs, status, body, help] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_tabs(frame, tabs, app);
    draw_status(frame, status, app);
    match app.tab {
        Tab::Dashboard => draw_dashboard(frame, body, app),
        Tab::Connections => draw_connections(frame, body, app),
        Tab::Blacklist => draw_blacklist(frame, body, app),
        Tab::Tail => draw_tail(frame, body, app),
        Tab::Service => draw_service(frame, body, app),
    }
    frame.render_widget(Paragraph::new(help_line(app)).dark_gray(), help);
}

fn draw_tabs(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let titles = Tab::ALL
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{} {}", i + 1, t.title()));
    let [name, tabs] = Layout::horizontal([Constraint::Length(6), Constraint::Fill(1)]).areas(area);
    frame.render_widget(Span::from("imctl").bold(), name);
    frame.render_widget(
        Tabs::new(titles)
            .select(app.tab.index())
            .highlight_style(Style::new().reversed().bold())
            .divider("│")
            .padding(" ", " "),
        tabs,
    );
}

fn draw_status(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let line = match &app.link {
        Link::Down { kind, error } => {
            let age = app
                .last_ok_ms
                .map(|t| format!(" · data from {}", relative(app.now_ms, t)))
                .unwrap_or_default();
            let head = if *kind == ErrorKind::Unreachable {
                UNREACHABLE.to_owned()
            } else {
                "refused, retrying".to_owned()
            };
            Line::from(vec![
                Span::from(format!(" {head} ")).white().on_red().bold(),
                Span::from(format!(" {error}{age}")).red(),
            ])
        }
        Link::Connecting => Line::from(format!("connecting to {} …", app.server)).yellow(),
        Link::Up => match app.current_flash() {
            Some(f) if f.error => Line::from(f.text.clone()).red().bold(),
            Some(f) => Line::from(f.text.clone()).green().bold(),
            None => {
                let nodes = app.cluster.as_ref().map_or(0, |c| c.nodes.len());
                Line::from(vec![
                    Span::from("● ").green(),
                    Span::from(format!(
                        "{} · {} · updated {}",
                        app.server,
                        plural(nodes, "node", "nodes"),
                        app.last_ok_ms
                            .map_or_else(|| "never".into(), |t| relative(app.now_ms, t))
                    )),
                ])
            }
        },
    };
    frame.render_widget(Paragraph::new(line), area);
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn draw_dashboard(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let [totals, spark, nodes] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(7),
        Constraint::Fill(1),
    ])
    .areas(area);
    let list: &[NodeInfo] = app.cluster.as_ref().map_or(&[], |c| &c.nodes);
    let sum = |f: fn(&NodeInfo) -> i64| list.iter().map(f).sum::<i64>();
    let conns = sum(|n| n.connections as i64);
    let unacked = sum(|n| n.unacked);
    let retransmits = sum(|n| n.retransmits as i64);
    let now = app.rates.back().copied().unwrap_or(0);
    let peak = app.rates.iter().copied().max().unwrap_or(0);
    let stat = |label: &str, value: String| {
        vec![
            Span::from(format!(" {label} ")).dark_gray(),
            Span::from(value).bold(),
        ]
    };
    let mut spans = Vec::new();
    spans.extend(stat("nodes", list.len().to_string()));
    spans.extend(stat(" connections", conns.to_string()));
    spans.extend(stat(" acks pending", unacked.to_string()));
    spans.extend(stat(" retransmits", retransmits.to_string()));
    spans.extend(stat(" msgs/s", now.to_string()));
    frame.render_widget(Paragraph::new(Line::from(spans)), totals);

    let block = Block::bordered().title(format!(" messages/s · now {now} · peak {peak} "));
    let inner = block.inner(spark);
    frame.render_widget(block, spark);
    // Newest on the right: keep the last samples that fit.
    let width = usize::from(inner.width);
    let skip = app.rates.len().saturating_sub(width);
    let data: Vec<u64> = app.rates.iter().skip(skip).copied().collect();
    frame.render_widget(
        Sparkline::default().data(data).max(peak.max(1)).cyan(),
        inner,
    );

    let header = Row::new([
        "NODE", "ROLES", "LISTEN", "UP", "CONNS", "UNACKED", "MSG/S", "RETX",
    ])
    .bold();
    let rows = list.iter().map(|n| {
        Row::new([
            n.node_id.clone(),
            roles(n),
            n.listen.clone(),
            duration(app.now_ms - n.started_at),
            n.connections.to_string(),
            n.unacked.to_string(),
            n.committed_per_s.to_string(),
            n.retransmits.to_string(),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(5),
    ];
    let title = format!(" nodes · connections per node ({}) ", list.len());
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(title)),
        nodes,
    );
}

fn draw_connections(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let v = &app.conns;
    let [search, table] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    let cursor = if v.editing { "▏" } else { "" };
    let search_line = Line::from(vec![
        Span::from(" search uid: ").dark_gray(),
        Span::from(format!("{}{cursor}", v.search)).bold(),
    ]);
    frame.render_widget(Paragraph::new(search_line), search);

    let visible = v.visible();
    let rows = visible.iter().map(|c| {
        Row::new([
            c.uid.clone(),
            c.device.clone(),
            c.platform.as_str().to_owned(),
            c.node.clone(),
            c.remote.clone(),
            relative(app.now_ms, c.connected_at),
        ])
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(21),
        Constraint::Length(9),
    ];
    let more = if v.more { "+, more on the server" } else { "" };
    let title = format!(" connections ({}{more}) ", visible.len());
    let table_widget = Table::new(rows, widths)
        .header(Row::new(["UID", "DEVICE", "PLATFORM", "NODE", "REMOTE", "SINCE"]).bold())
        .block(Block::bordered().title(title))
        .row_highlight_style(Style::new().reversed());
    let mut state =
        TableState::default().with_selected((!visible.is_empty()).then_some(v.selected));
    frame.render_stateful_widget(table_widget, table, &mut state);

    if let Some(uid) = &v.confirm {
        let devices = v.list.iter().filter(|c| &c.uid == uid).count();
        confirm(
            frame,
            area,
            &format!(
                "Kick every device of {uid} ({})?",
                plural(devices, "device", "devices")
            ),
        );
    }
}

fn draw_blacklist(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let v = &app.blacklist;
    let rows = v.entries.iter().map(|e| {
        Row::new([
            e.kind.as_str().to_owned(),
            e.value.clone(),
            e.reason.clone().unwrap_or_else(|| "-".into()),
            e.expires_at
                .map_or_else(|| "never".into(), |t| relative(app.now_ms, t)),
        ])
    });
    let widths = [
        Constraint::Length(4),
        Constraint::Length(24),
        Constraint::Fill(1),
        Constraint::Length(10),
    ];
    let table = Table::new(rows, widths)
        .header(Row::new(["KIND", "VALUE", "REASON", "EXPIRES"]).bold())
        .block(Block::bordered().title(format!(" blacklist ({}) ", v.entries.len())))
        .row_highlight_style(Style::new().reversed());
    let mut state =
        TableState::default().with_selected((!v.entries.is_empty()).then_some(v.selected));
    frame.render_stateful_widget(table, area, &mut state);

    if let Some(form) = &v.form {
        draw_form(frame, area, form);
    } else if let Some((kind, value)) = &v.confirm {
        confirm(
            frame,
            area,
            &format!("Remove {} {value} from the blacklist?", kind.as_str()),
        );
    }
}

fn draw_form(frame: &mut Frame<'_>, area: Rect, form: &BlacklistForm) {
    let popup = centered(area, 60, 9);
    frame.render_widget(Clear, popup);
    let block = Block::bordered().title(" add to the blacklist ").bold();
    let inner = block.inner(popup);
    frame.render_widget(block, popup);
    let field = |f: FormField, label: &str, value: String| {
        let focused = form.field == f;
        let marker = if focused { "›" } else { " " };
        let cursor = if focused && f != FormField::Kind {
            "▏"
        } else {
            ""
        };
        let style = if focused {
            Style::new().add_modifier(Modifier::BOLD).fg(Color::Yellow)
        } else {
            Style::new()
        };
        Line::from(vec![
            Span::from(format!("{marker} {label:<7}")).style(style),
            Span::from(format!("{value}{cursor}")),
        ])
    };
    let kind = match form.kind {
        shared::admin::BlacklistKind::Uid => "[uid]  ip ",
        shared::admin::BlacklistKind::Ip => " uid  [ip]",
    };
    let mut lines = vec![
        field(FormField::Kind, "kind", kind.to_owned()),
        field(FormField::Value, "value", form.value.clone()),
        field(
            FormField::Ttl,
            "ttl",
            if form.ttl.is_empty() && form.field != FormField::Ttl {
                "(until removed)".into()
            } else {
                form.ttl.clone()
            },
        ),
        field(FormField::Reason, "reason", form.reason.clone()),
        Line::from(""),
    ];
    if let Some(e) = &form.error {
        lines.push(Line::from(e.clone()).red());
    } else {
        lines.push(Line::from("uid: a user · ip: 10.1.2.3 or 10.1.0.0/16").dark_gray());
    }
    frame.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}

fn draw_tail(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let t = &app.tail;
    let [head, body] = Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(area);
    let head_line = if let Some(input) = &t.input {
        Line::from(vec![
            Span::from(" conversation: ").dark_gray(),
            Span::from(format!("{input}▏")).bold().yellow(),
        ])
    } else {
        match (&t.conv, &t.state) {
            (None, _) | (_, TailState::Idle) => {
                Line::from(" no conversation: press c and type its id (d:alice~bob, g:team)")
                    .dark_gray()
            }
            (Some(conv), state) => {
                let (text, style) = match state {
                    TailState::Idle | TailState::Connecting => {
                        ("connecting…".to_owned(), Style::new().yellow())
                    }
                    TailState::Live => ("live".to_owned(), Style::new().green()),
                    TailState::Lost(e) => (format!("reconnecting ({e})"), Style::new().yellow()),
                    TailState::Failed(e) => (format!("stopped: {e}"), Style::new().red()),
                };
                Line::from(vec![
                    Span::from(format!(" {conv} ")).bold(),
                    Span::from(text).style(style),
                ])
            }
        }
    };
    frame.render_widget(Paragraph::new(head_line), head);

    let block = Block::bordered().title(format!(" messages ({}) ", t.msgs.len()));
    let inner = block.inner(body);
    frame.render_widget(block, body);
    // The newest messages at the bottom, as many as fit.
    let fit = usize::from(inner.height);
    let lines: Vec<Line<'_>> = t
        .msgs
        .iter()
        .skip(t.msgs.len().saturating_sub(fit))
        .map(|m| {
            Line::from(vec![
                Span::from(format!("#{} ", m.seq)).dark_gray(),
                Span::from(format!("{} ", clock(m.ts))),
                Span::from(m.from.clone()).cyan(),
                Span::from(format!(": {}", message_text(m))),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_service(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let v = &app.service;
    let shops = v.shops();
    // The shops on top, as many rows as they need up to three fifths of the body; the
    // selected shop's agents below.
    let wanted = u16::try_from(shops.len().max(1))
        .unwrap_or(u16::MAX)
        .saturating_add(3);
    let most = (area.height * 3 / 5).max(4);
    let [top, bottom] =
        Layout::vertical([Constraint::Length(wanted.min(most)), Constraint::Fill(1)]).areas(area);

    let rows = shops.iter().map(|s| {
        let f = &s.first_response_ms;
        Row::new([
            s.shop.clone(),
            format!("{}/{}", s.agents_online, s.agents.len()),
            s.agents_available.to_string(),
            s.open.to_string(),
            s.waiting.to_string(),
            cap(s.max_open),
            match f.p50 {
                Some(_) => format!("{}/{}", percentile(f.p50), percentile(f.p90)),
                None => "-".into(),
            },
            match s.rating.avg {
                Some(_) => format!("{} ({})", rating(s.rating.avg), s.rating.count),
                None => "-".into(),
            },
        ])
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(4),
        Constraint::Length(4),
        Constraint::Length(5),
        Constraint::Length(13),
        Constraint::Length(9),
    ];
    let title = match &v.poll {
        Some(p) if p.total > shops.len() => {
            format!(" shops (first {} of {}) ", shops.len(), p.total)
        }
        _ => format!(" shops ({}) ", shops.len()),
    };
    let block = Block::bordered().title(title);
    if v.poll.is_some() && shops.is_empty() {
        let hint = Paragraph::new("no shops yet: `imctl shop agents SHOP UID…` makes one")
            .dark_gray()
            .block(block);
        frame.render_widget(hint, top);
    } else {
        let table = Table::new(rows, widths)
            .header(
                Row::new([
                    "SHOP",
                    "ONLINE",
                    "AVAIL",
                    "OPEN",
                    "WAIT",
                    "CAP",
                    "REPLY p50/p90",
                    "RATING",
                ])
                .bold(),
            )
            .block(block)
            .row_highlight_style(Style::new().reversed());
        let mut state =
            TableState::default().with_selected((!shops.is_empty()).then_some(v.selected));
        frame.render_stateful_widget(table, top, &mut state);
    }

    let Some(shop) = v.current() else {
        frame.render_widget(Block::bordered().title(" agents "), bottom);
        return;
    };
    let rows = shop.agents.iter().map(|a| {
        let style = match status(a) {
            "available" => Style::new().green(),
            "away" => Style::new().yellow(),
            _ => Style::new().dark_gray(),
        };
        Row::new([
            a.uid.clone(),
            yes_no(a.online).to_owned(),
            status(a).to_owned(),
            load(a.open, shop.max_open),
        ])
        .style(style)
    });
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(6),
        Constraint::Length(9),
        Constraint::Length(8),
    ];
    let title = format!(" agents of {} ({}) ", shop.shop, shop.agents.len());
    frame.render_widget(
        Table::new(rows, widths)
            .header(Row::new(["AGENT", "ONLINE", "STATUS", "OPEN/CAP"]).bold())
            .block(Block::bordered().title(title)),
        bottom,
    );
}

/// A y/n question in a box over `area`.
fn confirm(frame: &mut Frame<'_>, area: Rect, question: &str) {
    let popup = centered(area, 60, 5);
    frame.render_widget(Clear, popup);
    let text = vec![
        Line::from(question.to_owned()).bold(),
        Line::from(vec![
            Span::from("y").bold().green(),
            Span::from(" yes   "),
            Span::from("n").bold().red(),
            Span::from(" no"),
        ]),
    ];
    frame.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(Block::bordered().title(" confirm ")),
        popup,
    );
}

/// A `width`×`height` box centred in `area`, clipped to it.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// The keys that work now.
fn help_line(app: &App) -> String {
    let tail = " · Tab/1-5 switch · r refresh · q quit";
    match app.tab {
        Tab::Dashboard => format!("refreshes every second{tail}"),
        Tab::Connections if app.conns.confirm.is_some() => "y kick · n cancel".into(),
        Tab::Connections if app.conns.editing => {
            "type part of a uid · ↑↓ select · Enter/Esc done".into()
        }
        Tab::Connections => format!("↑↓ select · / search · k kick{tail}"),
        Tab::Blacklist if app.blacklist.confirm.is_some() => "y remove · n cancel".into(),
        Tab::Blacklist if app.blacklist.form.is_some() => {
            "Tab/↑↓ field · Space kind · Enter save · Esc cancel".into()
        }
        Tab::Blacklist => format!("↑↓ select · a add · d remove{tail}"),
        Tab::Tail if app.tail.input.is_some() => {
            "type a conversation id · Enter follow · Esc cancel".into()
        }
        Tab::Tail => format!("c conversation · x stop · C clear{tail}"),
        Tab::Service => format!("↑↓ shop · refreshes every second{tail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientError;
    use crate::tui::app::{BlacklistForm, ServicePoll, TailEvent};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use shared::admin::{
        AgentStats, BlacklistEntry, BlacklistKind, ClusterInfo, ConnectionInfo, FirstResponse,
        RatingStats, ShopStats,
    };
    use shared::protocol::Message;
    use shared::token::Platform;

    const NOW: i64 = 1_800_000_000_000;

    /// Draws `app` at `w`×`h` and returns the screen's lines.
    fn screen(app: &App, w: u16, h: u16) -> Vec<String> {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, app)).unwrap();
        let buf = term.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_owned())
                    .collect::<String>()
            })
            .collect()
    }

    fn has(lines: &[String], needle: &str) -> bool {
        lines.iter().any(|l| l.contains(needle))
    }

    fn assert_has(lines: &[String], needle: &str) {
        assert!(
            has(lines, needle),
            "{needle:?} not on screen:\n{}",
            lines.join("\n")
        );
    }

    fn node(id: &str, conns: u64, rate: u64) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            roles: vec!["gateway".into(), "dispatcher".into(), "worker".into()],
            listen: "127.0.0.1:40123".into(),
            version: "0.1.0".into(),
            rpc_version: 2,
            started_at: NOW - 3_723_000,
            connections: conns,
            unacked: 4,
            committed: 1000,
            committed_per_s: rate,
            pushes: 2000,
            retransmits: 9,
        }
    }

    fn live_app() -> App {
        let mut app = App::new("http://127.0.0.1:40123");
        app.now_ms = NOW;
        for rate in [0, 3, 10, 40, 12] {
            app.on_cluster(Ok(ClusterInfo {
                nodes: vec![node("imd-40123", 3, rate)],
            }));
        }
        app
    }

    fn conn(uid: &str, device: &str, ago_ms: i64) -> ConnectionInfo {
        ConnectionInfo {
            uid: uid.into(),
            device: device.into(),
            platform: Platform::Ios,
            node: "imd-40123".into(),
            remote: "127.0.0.1:50001".into(),
            connected_at: NOW - ago_ms,
            unacked: 0,
        }
    }

    #[test]
    fn dashboard_at_80x24() {
        let app = live_app();
        let s = screen(&app, 80, 24);
        assert_has(&s, "1 Dashboard");
        assert_has(&s, "4 Tail");
        assert_has(&s, "http://127.0.0.1:40123 · 1 node · updated just now");
        assert_has(&s, "connections 3");
        assert_has(&s, "acks pending 4");
        assert_has(&s, "retransmits 9");
        assert_has(&s, "msgs/s 12");
        assert_has(&s, "now 12 · peak 40");
        assert_has(&s, "imd-40123");
        assert_has(&s, "1h02m");
        assert_has(&s, "q quit");
        // The sparkline drew bars.
        assert!(s.iter().any(|l| l.contains('█')), "{}", s.join("\n"));
        assert!(s.iter().all(|l| l.chars().count() == 80));
    }

    #[test]
    fn the_unreachable_banner_at_80x24() {
        let mut app = live_app();
        app.now_ms = NOW + 12_000;
        app.on_cluster(Err(ClientError::Unreachable {
            url: app.server.clone(),
            detail: "Connection refused (os error 111)".into(),
        }));
        let s = screen(&app, 80, 24);
        assert!(s[1].contains(UNREACHABLE), "{}", s.join("\n"));
        assert!(s[1].contains("cannot reach imd at"), "{}", s[1]);
        // The last data stays on screen under the banner.
        assert_has(&s, "imd-40123");

        // A refused token is not "unreachable".
        app.on_cluster(Err(ClientError::ClientToken));
        let s = screen(&app, 80, 24);
        assert!(!has(&s, UNREACHABLE));
        assert!(s[1].contains("refused, retrying"), "{}", s[1]);

        // Back up: the banner goes.
        app.on_cluster(Ok(ClusterInfo {
            nodes: vec![node("imd-40123", 0, 0)],
        }));
        let s = screen(&app, 80, 24);
        assert!(!has(&s, "retrying"));
    }

    #[test]
    fn connections_search_and_kick_confirmation() {
        let mut app = live_app();
        app.tab = Tab::Connections;
        app.on_conns(Ok((
            vec![
                conn("alice", "laptop", 180_000),
                conn("alice", "phone", 5_000),
                conn("bob", "tablet", 0),
            ],
            false,
        )));
        let s = screen(&app, 80, 24);
        assert_has(&s, "connections (3)");
        assert_has(&s, "alice");
        assert_has(&s, "laptop");
        assert_has(&s, "3m ago");
        assert_has(&s, "127.0.0.1:50001");
        assert_has(&s, "k kick");

        app.conns.search = "ali".into();
        app.conns.confirm = Some("alice".into());
        let s = screen(&app, 80, 24);
        assert_has(&s, "search uid: ali");
        assert_has(&s, "connections (2)");
        assert!(!has(&s, "tablet"));
        assert_has(&s, "Kick every device of alice (2 devices)?");
        assert_has(&s, "y kick · n cancel");
    }

    #[test]
    fn blacklist_and_its_form() {
        let mut app = live_app();
        app.tab = Tab::Blacklist;
        app.on_blacklist(Ok(vec![
            BlacklistEntry {
                kind: BlacklistKind::Uid,
                value: "mallory".into(),
                reason: Some("spam".into()),
                expires_at: Some(NOW + 3_600_000),
            },
            BlacklistEntry {
                kind: BlacklistKind::Ip,
                value: "10.1.0.0/16".into(),
                reason: None,
                expires_at: None,
            },
        ]));
        let s = screen(&app, 80, 24);
        assert_has(&s, "blacklist (2)");
        assert_has(&s, "mallory");
        assert_has(&s, "in 1h");
        assert_has(&s, "never");

        app.blacklist.form = Some(BlacklistForm {
            kind: BlacklistKind::Ip,
            value: "10.9.0.0/16".into(),
            ttl: "1h".into(),
            reason: "scraper".into(),
            field: FormField::Reason,
            error: Some("ttl \"x\": bad".into()),
        });
        let s = screen(&app, 80, 24);
        assert_has(&s, "add to the blacklist");
        assert_has(&s, "[ip]");
        assert_has(&s, "10.9.0.0/16");
        assert_has(&s, "ttl    1h");
        assert_has(&s, "› reason scraper▏");
        assert_has(&s, "ttl \"x\": bad");
        assert_has(&s, "Enter save");
    }

    #[test]
    fn tail_shows_the_newest_messages() {
        let mut app = live_app();
        app.tab = Tab::Tail;
        let s = screen(&app, 80, 24);
        assert_has(&s, "press c");
        app.tail.conv = Some("d:alice~bob".into());
        app.tail.generation = 1;
        for seq in 1..=40 {
            app.on_tail(
                1,
                TailEvent::Msg(Message {
                    id: seq.to_string(),
                    conv: "d:alice~bob".into(),
                    seq,
                    from: "alice".into(),
                    body: Some(serde_json::json!({"text": format!("hello {seq}")})),
                    ts: 61_000,
                    cid: None,
                    ..Default::default()
                }),
            );
        }
        let s = screen(&app, 80, 24);
        assert_has(&s, "d:alice~bob live");
        assert_has(&s, "messages (40)");
        assert_has(&s, "#40 00:01:01 alice: hello 40");
        assert!(!has(&s, "hello 1 "), "old messages scrolled off");
        app.on_tail(1, TailEvent::Lost("cannot reach imd".into()));
        assert_has(&screen(&app, 80, 24), "reconnecting (cannot reach imd)");

        app.tail.input = Some("g:te".into());
        let s = screen(&app, 80, 24);
        assert_has(&s, "conversation: g:te▏");
        assert_has(&s, "Enter follow");
    }

    fn shop(name: &str, agents: Vec<AgentStats>, answered: bool) -> ShopStats {
        ShopStats {
            shop: name.into(),
            agents_online: agents.iter().filter(|a| a.online).count() as u64,
            agents_available: agents.iter().filter(|a| a.available).count() as u64,
            open: agents.iter().map(|a| a.open).sum(),
            waiting: 3,
            max_open: 2,
            first_response_ms: FirstResponse {
                count: u64::from(answered),
                p50: answered.then_some(1_250),
                p90: answered.then_some(95_000),
                p99: answered.then_some(95_000),
            },
            rating: RatingStats {
                count: u64::from(answered) * 12,
                avg: answered.then_some(4.4),
            },
            agents,
        }
    }

    fn agent(uid: &str, online: bool, available: bool, open: u64) -> AgentStats {
        AgentStats {
            uid: uid.into(),
            online,
            available,
            open,
        }
    }

    #[test]
    fn service_shows_each_shop_and_the_selected_ones_agents() {
        let mut app = live_app();
        app.tab = Tab::Service;
        let s = screen(&app, 80, 24);
        assert_has(&s, "5 Service");
        assert_has(&s, "shops (0)");
        assert!(
            !has(&s, "no shops yet"),
            "nothing is said before the first answer"
        );
        app.on_service(Ok(ServicePoll {
            shops: vec![],
            total: 0,
        }));
        assert_has(&screen(&app, 80, 24), "no shops yet");

        app.on_service(Ok(ServicePoll {
            shops: vec![
                shop(
                    "shop1",
                    vec![
                        agent("ann", true, true, 2),
                        agent("bob", true, false, 1),
                        agent("cy", false, false, 0),
                    ],
                    true,
                ),
                shop("shop2", vec![agent("dee", false, false, 0)], false),
            ],
            total: 60,
        }));
        let s = screen(&app, 80, 24);
        assert_has(&s, "shops (first 2 of 60)");
        assert_has(&s, "SHOP");
        assert_has(&s, "REPLY p50/p90");
        let row = s.iter().find(|l| l.contains("shop1")).unwrap();
        let cells: Vec<&str> = row
            .trim_matches(|c| c == '│' || c == ' ')
            .split_whitespace()
            .collect();
        assert_eq!(
            cells,
            [
                "shop1",
                "2/3",
                "1",
                "3",
                "3",
                "2",
                "1.2s/1m35s",
                "4.4",
                "(12)"
            ],
            "{row}"
        );
        let row = s.iter().find(|l| l.contains("shop2")).unwrap();
        let cells: Vec<&str> = row
            .trim_matches(|c| c == '│' || c == ' ')
            .split_whitespace()
            .collect();
        assert_eq!(
            cells,
            ["shop2", "0/1", "0", "0", "3", "2", "-", "-"],
            "no answer, no rating yet: {row}"
        );
        assert_has(&s, "agents of shop1 (3)");
        for (uid, rest) in [
            ("ann", "yes    available 2/2"),
            ("bob", "yes    away      1/2"),
            ("cy", "no     -         0/2"),
        ] {
            let row = s.iter().find(|l| l.contains(&format!("│{uid} "))).unwrap();
            assert!(row.contains(rest), "{uid}: {row}");
        }
        assert_has(&s, "↑↓ shop · refreshes every second · Tab/1-5 switch");
        assert!(s.iter().all(|l| l.chars().count() == 80));

        app.service.selected = 1;
        let s = screen(&app, 80, 24);
        assert_has(&s, "agents of shop2 (1)");
        assert!(!has(&s, "available"), "{}", s.join("\n"));
    }

    #[test]
    fn tiny_terminals_do_not_panic() {
        let mut app = live_app();
        app.conns.confirm = Some("alice".into());
        app.blacklist.form = Some(BlacklistForm::default());
        app.on_service(Ok(ServicePoll {
            shops: (0..40)
                .map(|i| shop(&format!("shop{i}"), vec![agent("ann", true, true, 1)], true))
                .collect(),
            total: 40,
        }));
        app.service.selected = 39;
        for tab in Tab::ALL {
            app.tab = tab;
            for (w, h) in [(1, 1), (10, 3), (40, 10), (80, 24), (200, 60)] {
                screen(&app, w, h);
            }
        }
    }
}
