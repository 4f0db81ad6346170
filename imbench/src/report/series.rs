//! The run second by second, as load tools' reports show it (Gatling, k6, Tsung): what
//! the coordinator's progress view saw each second (sent and delivered per second, that
//! second's p99, open connections, new errors), and the moments marked: by a script
//! with `--mark-file` (`<unix ms> <label>` lines: a kill, a restart) or by the
//! coordinator (an agent gone), for the chart to draw on one time axis.
//!
//! Plain data and arithmetic over counter snapshots; it must not read clocks or files
//! (the coordinator samples, and hands over the mark file's text).

use serde::{Deserialize, Serialize};

use super::{Counters, per_second};

/// `series` of the report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SeriesSection {
    /// Unix milliseconds of the plan's time zero, from which every `t_s` counts.
    pub start_unix_ms: u64,
    /// When the load phase (the messages' schedule) begins and ends, seconds from the
    /// start.
    pub load_s: [f64; 2],
    /// One sample a second, in time order.
    pub seconds: Vec<Second>,
    /// Moments marked, in time order: by the coordinator (`agent 1 gone`, `Ctrl-C`, an
    /// overrun) and by a script (`--mark-file`).
    pub marks: Vec<Mark>,
}

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// End of the second, seconds from the start.
    pub t_s: f64,
    /// `send` frames written per second.
    pub sent_per_s: f64,
    /// First pushes on recipients' devices per second.
    pub delivered_per_s: f64,
    /// p99 of the send → push latencies recorded in this second (none: no sample).
    pub p99_ms: Option<f64>,
    /// Connections open at its end.
    pub open: u64,
    /// Errors counted in this second (see [`error_count`]).
    pub errors: u64,
}

impl Second {
    /// The second that ends `t_ms` after the start, from the counters at its start
    /// (`before`, `dt_ms` earlier) and at its end (`now`), and its latencies' p99.
    pub fn between(
        before: &Counters,
        now: &Counters,
        dt_ms: u64,
        t_ms: u64,
        p99_ms: Option<f64>,
    ) -> Second {
        let rate = |now: u64, before: u64| per_second(now.saturating_sub(before), dt_ms.max(1));
        Second {
            t_s: t_ms as f64 / 1000.0,
            sent_per_s: rate(now.sent, before.sent),
            delivered_per_s: rate(now.delivered, before.delivered),
            p99_ms,
            open: now.open,
            errors: error_count(now).saturating_sub(error_count(before)),
        }
    }
}

/// Errors among the counters: failed handshakes, drops, refused sends, server errors
/// and kicks.
pub fn error_count(c: &Counters) -> u64 {
    c.failed + c.dropped + c.refused + c.server_errors + c.kicks
}

/// A moment a script marked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// When, unix milliseconds.
    pub unix_ms: u64,
    /// What happened (`kill -9 imd`).
    pub label: String,
}

/// Reads a mark file: one `<unix ms> <label>` a line; blank lines and `#` comments are
/// skipped. Returns the marks in time order and, for each line it could not read, a
/// note naming it (a bad line is reported, never fatal).
pub fn parse_marks(text: &str) -> (Vec<Mark>, Vec<String>) {
    let (mut marks, mut bad) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (ms, label) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        match ms.parse::<u64>() {
            Ok(unix_ms) => marks.push(Mark {
                unix_ms,
                label: label.trim().to_owned(),
            }),
            Err(_) => bad.push(format!(
                "line {}: {line:?} is not `<unix ms> <label>`",
                n + 1
            )),
        }
    }
    marks.sort_by_key(|m| m.unix_ms);
    (marks, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_is_the_difference_of_two_snapshots() {
        let before = Counters {
            sent: 100,
            delivered: 90,
            failed: 2,
            open: 10,
            ..Default::default()
        };
        let now = Counters {
            sent: 600,
            delivered: 590,
            failed: 3,
            refused: 4,
            open: 9,
            ..Default::default()
        };
        let s = Second::between(&before, &now, 500, 3_000, Some(2.5));
        assert_eq!(s.t_s, 3.0);
        assert_eq!((s.sent_per_s, s.delivered_per_s), (1000.0, 1000.0));
        assert_eq!((s.open, s.errors, s.p99_ms), (9, 5, Some(2.5)));
    }

    #[test]
    fn marks_are_read_in_time_order_and_bad_lines_reported() {
        let text = "# kills\n1700000002000 imd ready again\n\n1700000001000   kill -9 imd\n\
                    soon restart\n1700000003000\n";
        let (marks, bad) = parse_marks(text);
        let got: Vec<(u64, &str)> = marks
            .iter()
            .map(|m| (m.unix_ms, m.label.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (1_700_000_001_000, "kill -9 imd"),
                (1_700_000_002_000, "imd ready again"),
                (1_700_000_003_000, ""),
            ]
        );
        assert_eq!(bad.len(), 1);
        assert!(bad[0].starts_with("line 5:"), "{bad:?}");
    }
}
