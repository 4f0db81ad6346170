//! What imctl prints: aligned tables, relative times ("3m ago"), compact durations and
//! response times, JSON lines, and colour only when stdout is a terminal.
//!
//! It owns formatting and the writing of stdout; it must not know the admin API's
//! calls. Every line goes through [`Out`], which flushes it (a piped `tail` must not sit
//! in a buffer) and turns a closed pipe (`imctl conns | head`) into a quiet stop instead
//! of the panic `println!` would give.

use std::io::{IsTerminal, Write};

/// Unix milliseconds now; kept under this path for code that names it here.
pub use shared::time::now_ms;

/// A span of milliseconds in its largest unit, rounded to the nearest: `45s`, `3m`, `2h`,
/// `4d` (so that a ttl of 2h, a moment later, still reads `in 2h`, not `in 1h`).
fn coarse(ms: i64) -> String {
    let s = (ms + 500) / 1000;
    if s < 60 {
        return format!("{s}s");
    }
    let m = (s + 30) / 60;
    if m < 60 {
        return format!("{m}m");
    }
    let h = (m + 30) / 60;
    if h < 24 {
        return format!("{h}h");
    }
    format!("{}d", (h + 12) / 24)
}

/// `at_ms` relative to `now_ms`: `just now`, `3m ago`, `in 59m`.
pub fn relative(now_ms: i64, at_ms: i64) -> String {
    let d = now_ms.saturating_sub(at_ms);
    if d.abs() < 1000 {
        "just now".to_owned()
    } else if d > 0 {
        format!("{} ago", coarse(d))
    } else {
        format!("in {}", coarse(d.saturating_neg()))
    }
}

/// A duration in two units: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{:02}s", s % 60)
    } else {
        format!("{s}s")
    }
}

/// A short span, as response times read: `250ms`, `1.2s`, `45s`, `3m12s`, `2h05m`.
pub fn latency(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..10_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => duration(i64::try_from(ms.saturating_add(500) / 1000 * 1000).unwrap_or(i64::MAX)),
    }
}

/// The UTC wall-clock time of `ts_ms`: `11:30:55`.
pub fn clock(ts_ms: i64) -> String {
    let s = ts_ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// The UTC date and time of `ts_ms`: `2026-11-27 11:30:55`.
pub fn datetime(ts_ms: i64) -> String {
    // Howard Hinnant's civil_from_days: days since 1970-01-01 to a proleptic Gregorian date.
    let z = ts_ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {}", clock(ts_ms))
}

/// What a message says, for one line: its body ([`body_text`]), `(recalled)` for a
/// recalled message, `(erased)` for an erased one, or the event in words
/// (`[assigned to bob]`, `[closed]`, …).
pub fn message_text(msg: &shared::protocol::Message) -> String {
    if msg.recalled {
        return "(recalled)".into();
    }
    if msg.erased {
        return "(erased)".into();
    }
    if let Some(event) = &msg.event {
        return event_text(event);
    }
    msg.body.as_ref().map(body_text).unwrap_or_default()
}

/// An event message's `event` in words, in brackets; an event type this build does not
/// know shows its type.
fn event_text(event: &serde_json::Value) -> String {
    use shared::protocol::Event;
    let said = match serde_json::from_value::<Event>(event.clone()) {
        Ok(Event::Assigned { agent, previous }) => match previous {
            Some(p) => format!("assigned to {agent} (was {p})"),
            None => format!("assigned to {agent}"),
        },
        Ok(Event::Closed) => "closed".into(),
        Ok(Event::Recalled { seq, by }) => match by {
            Some(by) => format!("recalled #{seq} by {by}"),
            None => format!("recalled #{seq}"),
        },
        Ok(Event::Rated { score, comment }) => match comment {
            Some(c) => format!("rated {score}/5: {c}"),
            None => format!("rated {score}/5"),
        },
        Err(_) => match event.get("type").and_then(|t| t.as_str()) {
            Some(t) => format!("event {t}"),
            None => format!("event {event}"),
        },
    };
    format!("[{}]", said.replace(['\n', '\r'], " "))
}

/// A message body for one line: its `text` when it has one, else its JSON.
pub fn body_text(body: &serde_json::Value) -> String {
    let text = match body {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => match o.get("text") {
            Some(serde_json::Value::String(s)) if o.len() == 1 => s.clone(),
            _ => body.to_string(),
        },
        _ => body.to_string(),
    };
    // One message, one line, whatever the sender put in it.
    text.replace(['\n', '\r'], " ")
}

/// ANSI styles, applied only when colour is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// Headers.
    Bold,
    /// Secondary detail.
    Dim,
    /// Errors.
    Red,
    /// Good news.
    Green,
    /// Names.
    Cyan,
}

impl Paint {
    fn code(self) -> &'static str {
        match self {
            Paint::Bold => "1",
            Paint::Dim => "2",
            Paint::Red => "31",
            Paint::Green => "32",
            Paint::Cyan => "36",
        }
    }

    /// `text` in this style when `on`, else as is.
    pub fn apply(self, on: bool, text: &str) -> String {
        if on {
            format!("\x1b[{}m{text}\x1b[0m", self.code())
        } else {
            text.to_owned()
        }
    }
}

/// Whether to colour what goes to this stream: a terminal, and `NO_COLOR` unset.
pub fn colour_for(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A table of left-aligned columns separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra cells are dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The lines of the table, header first, with no trailing spaces.
    pub fn render(&self, colour: bool) -> Vec<String> {
        let n = self.header.len();
        let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, w) in widths.iter_mut().enumerate() {
                *w = (*w).max(cell(row, i).chars().count());
            }
        }
        let line = |row: &[String]| {
            let mut out = String::new();
            for (i, w) in widths.iter().enumerate() {
                let c = cell(row, i);
                out.push_str(&c);
                if i + 1 < n {
                    out.push_str(&" ".repeat(w - c.chars().count() + 2));
                }
            }
            out.trim_end().to_owned()
        };
        let mut lines = vec![Paint::Bold.apply(colour, &line(&self.header))];
        lines.extend(self.rows.iter().map(|r| line(r)));
        lines
    }
}

/// stdout was closed by the reader (`| head`): stop quietly, successfully.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
pub struct StdoutClosed;

/// Where the commands print: one line at a time, as tables or JSON lines.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// `--json`: one JSON object per line.
    pub json: bool,
    /// Colour on stdout.
    pub colour: bool,
}

impl Out {
    /// For the real stdout.
    pub fn stdout(json: bool) -> Self {
        Self {
            json,
            colour: !json && colour_for(std::io::stdout().is_terminal()),
        }
    }

    /// Prints one line and flushes it.
    pub fn line(&self, line: &str) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
            other => Ok(other?),
        }
    }

    /// Prints `value` as one JSON line.
    pub fn json_line<T: serde::Serialize>(&self, value: &T) -> anyhow::Result<()> {
        self.line(&serde_json::to_string(value)?)
    }

    /// Prints a table, or `empty` (dimmed) when it has no rows.
    pub fn table(&self, table: &Table, empty: &str) -> anyhow::Result<()> {
        if table.is_empty() {
            return self.line(&Paint::Dim.apply(self.colour, empty));
        }
        for line in table.render(self.colour) {
            self.line(&line)?;
        }
        Ok(())
    }

    /// `text` in `paint` when colour is on.
    pub fn paint(&self, paint: Paint, text: &str) -> String {
        paint.apply(self.colour, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times() {
        let now = 1_000_000_000_000;
        for (delta_ms, want) in [
            (0, "just now"),
            (999, "just now"),
            (-999, "just now"),
            (1_000, "1s ago"),
            (59_000, "59s ago"),
            (59_600, "1m ago"),
            (60_000, "1m ago"),
            (3 * 60_000 + 29_000, "3m ago"),
            (3 * 60_000 + 31_000, "4m ago"),
            (3_600_000, "1h ago"),
            (22 * 3_600_000 + 29 * 60_000, "22h ago"),
            (86_399_000, "1d ago"),
            (40 * 86_400_000, "40d ago"),
            (-5_000, "in 5s"),
            (-(58 * 60_000 + 10_000), "in 58m"),
            // A ttl of 1h or 2h, a moment after it was set.
            (-(59 * 60_000 + 59_000), "in 1h"),
            (-(2 * 3_600_000 - 700), "in 2h"),
            (-7 * 86_400_000, "in 7d"),
        ] {
            assert_eq!(relative(now, now - delta_ms), want, "{delta_ms}");
        }
    }

    #[test]
    fn durations_and_clock() {
        for (ms, want) in [
            (-5, "0s"),
            (0, "0s"),
            (45_000, "45s"),
            (192_000, "3m12s"),
            (2 * 3_600_000 + 5 * 60_000, "2h05m"),
            (3 * 86_400_000 + 4 * 3_600_000 + 59_000, "3d04h"),
        ] {
            assert_eq!(duration(ms), want, "{ms}");
        }
        for (ms, want) in [
            (0, "0ms"),
            (250, "250ms"),
            (999, "999ms"),
            (1_000, "1.0s"),
            (1_249, "1.2s"),
            (9_949, "9.9s"),
            (10_000, "10s"),
            (44_600, "45s"),
            (192_000, "3m12s"),
            (2 * 3_600_000 + 5 * 60_000, "2h05m"),
            (u64::MAX, "106751991167d07h"),
        ] {
            assert_eq!(latency(ms), want, "{ms}");
        }
        assert_eq!(clock(0), "00:00:00");
        assert_eq!(clock(1_795_778_030_410), "11:13:50");
        for (ms, want) in [
            (0, "1970-01-01 00:00:00"),
            (1_795_778_030_410, "2026-11-27 11:13:50"),
            (951_782_400_000, "2000-02-29 00:00:00"),
            (4_107_542_399_000, "2100-02-28 23:59:59"),
            (-1_000, "1969-12-31 23:59:59"),
        ] {
            assert_eq!(datetime(ms), want, "{ms}");
        }
    }

    #[test]
    fn bodies_fit_one_line() {
        use serde_json::json;
        assert_eq!(body_text(&json!({"text": "hi"})), "hi");
        assert_eq!(body_text(&json!("plain")), "plain");
        assert_eq!(body_text(&json!({"text": "a\nb"})), "a b");
        assert_eq!(
            body_text(&json!({"text": "hi", "img": 1})),
            r#"{"img":1,"text":"hi"}"#
        );
        assert_eq!(body_text(&json!(42)), "42");
    }

    #[test]
    fn events_and_recalls_read_as_words() {
        use serde_json::{Value, json};
        let msg = |v: Value| serde_json::from_value::<shared::protocol::Message>(v).unwrap();
        let base = |extra: Value| {
            let mut m = json!({"id": "i", "conv": "s:shop~c", "seq": 3, "from": "ann", "ts": 1});
            m.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            msg(m)
        };
        for (extra, want) in [
            (
                json!({"event": {"type": "assigned", "agent": "ann"}}),
                "[assigned to ann]",
            ),
            (
                json!({"event": {"type": "assigned", "agent": "bo", "previous": "ann"}}),
                "[assigned to bo (was ann)]",
            ),
            (json!({"event": {"type": "closed"}}), "[closed]"),
            (
                json!({"event": {"type": "recalled", "seq": 2}}),
                "[recalled #2]",
            ),
            (
                json!({"event": {"type": "recalled", "seq": 2, "by": "admin"}}),
                "[recalled #2 by admin]",
            ),
            (
                json!({"event": {"type": "rated", "score": 4, "comment": "quick\nthanks"}}),
                "[rated 4/5: quick thanks]",
            ),
            (
                json!({"event": {"type": "snoozed", "until": 9}}),
                "[event snoozed]",
            ),
            (json!({"recalled": true}), "(recalled)"),
            (json!({"erased": true}), "(erased)"),
            (json!({"body": {"text": "hi"}}), "hi"),
        ] {
            assert_eq!(message_text(&base(extra.clone())), want, "{extra}");
        }
    }

    #[test]
    fn tables_align_without_trailing_spaces() {
        let mut t = Table::new(&["UID", "DEVICE", "SINCE"]);
        t.row(vec!["alice".into(), "laptop".into(), "3m ago".into()]);
        t.row(vec!["bo".into(), "".into(), "just now".into()]);
        t.row(vec!["ünï".into()]);
        assert_eq!(
            t.render(false),
            vec![
                "UID    DEVICE  SINCE",
                "alice  laptop  3m ago",
                "bo             just now",
                "ünï",
            ]
        );
        let coloured = t.render(true);
        assert_eq!(coloured[0], "\x1b[1mUID    DEVICE  SINCE\x1b[0m");
        assert_eq!(coloured[1], "alice  laptop  3m ago");
    }
}
