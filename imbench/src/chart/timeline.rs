//! The run second by second, as Gatling, k6 and Tsung reports show it: four panels on
//! one time axis (seconds from the plan's start): messages per second (sent,
//! delivered), the p99 of each second, open connections, and errors per second. The
//! load phase is shaded, and the moments of `--mark-file` (a kill, a restart) are
//! vertical lines across every panel, so that what a script did lines up with what
//! the run saw. One polyline per series.
//!
//! Drawing only, from the report's `series`; the page around it is `super`'s.

use std::fmt::Write as _;

use super::{CHAR_W, escape, nice_step, trim_float, value_grid};
use crate::report::{Second, SeriesSection};

const W: f64 = 860.0;
const LEFT: f64 = 76.0;
/// Room right of the plot for the last time label, centred on its edge.
const RIGHT: f64 = 40.0;
/// Room above the first panel for two rows of mark labels and the panel's title.
const TOP: f64 = 56.0;
const PANEL_H: f64 = 110.0;
/// Between panels: the next panel's title.
const GAP: f64 = 30.0;
const BOTTOM: f64 = 44.0;
const PANELS: usize = 4;
/// Total height.
const H: f64 = TOP + PANELS as f64 * PANEL_H + (PANELS - 1) as f64 * GAP + BOTTOM;

/// One series: its legend, its colour, its value in a second (none: no point).
struct Line {
    name: &'static str,
    color: &'static str,
    value: fn(&Second) -> Option<f64>,
}

/// One panel: a title and the series drawn on its own y axis.
struct Panel {
    title: &'static str,
    lines: Vec<Line>,
}

fn panels() -> [Panel; PANELS] {
    [
        Panel {
            title: "messages per second",
            lines: vec![
                Line {
                    name: "sent",
                    color: "#1f6fb4",
                    value: |s| Some(s.sent_per_s),
                },
                Line {
                    name: "delivered",
                    color: "#2e8b57",
                    value: |s| Some(s.delivered_per_s),
                },
            ],
        },
        Panel {
            title: "send → push p99 of each second (ms)",
            lines: vec![Line {
                name: "p99",
                color: "#d9822b",
                value: |s| s.p99_ms,
            }],
        },
        Panel {
            title: "open connections",
            lines: vec![Line {
                name: "open",
                color: "#6a3d9a",
                value: |s| Some(s.open as f64),
            }],
        },
        Panel {
            title: "errors per second (failed handshakes, drops, refusals, server errors, kicks)",
            lines: vec![Line {
                name: "errors",
                color: "#c62828",
                value: |s| Some(s.errors as f64),
            }],
        },
    ]
}

/// Seconds from the start of the series' last sample or of the load's end, whichever
/// is later: the right end of the time axis.
fn span_s(series: &SeriesSection) -> f64 {
    let last = series.seconds.last().map_or(0.0, |s| s.t_s);
    last.max(series.load_s[1]).max(1.0)
}

/// A mark's time from the start, seconds (negative: before it).
fn mark_s(series: &SeriesSection, unix_ms: u64) -> f64 {
    (unix_ms as f64 - series.start_unix_ms as f64) / 1000.0
}

/// The inline SVG.
pub fn svg(series: &SeriesSection) -> String {
    let span = span_s(series);
    let pw = W - LEFT - RIGHT;
    let x = |t: f64| LEFT + t.clamp(0.0, span) / span * pw;
    let bottom = TOP + PANELS as f64 * PANEL_H + (PANELS - 1) as f64 * GAP;
    let t_step = nice_step(span);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    s += "<title>The run second by second</title>\n";
    for (k, panel) in panels().iter().enumerate() {
        let y0 = TOP + k as f64 * (PANEL_H + GAP);
        let max = series
            .seconds
            .iter()
            .flat_map(|sec| panel.lines.iter().filter_map(move |l| (l.value)(sec)))
            .fold(0.0f64, f64::max);
        let step = nice_step(if max > 0.0 { max } else { 1.0 });
        let y_max = (max / step).ceil().max(1.0) * step;
        let y = |v: f64| y0 + PANEL_H - v / y_max * PANEL_H;
        let _ = writeln!(
            s,
            "<rect x=\"{LEFT}\" y=\"{y0:.1}\" width=\"{pw}\" height=\"{PANEL_H}\" fill=\"#fafafa\" stroke=\"#999\"/>"
        );
        let (l0, l1) = (x(series.load_s[0]), x(series.load_s[1]));
        if l1 > l0 {
            let _ = writeln!(
                s,
                "<rect x=\"{l0:.1}\" y=\"{y0:.1}\" width=\"{:.1}\" height=\"{PANEL_H}\" fill=\"#e8f3e8\"><title>load phase</title></rect>",
                l1 - l0
            );
        }
        // time grid
        let mut t = 0.0;
        while t <= span + t_step / 1000.0 {
            let gx = x(t);
            let _ = writeln!(
                s,
                "<line x1=\"{gx:.1}\" y1=\"{y0:.1}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#e2e2e2\"/>",
                y0 + PANEL_H
            );
            t += t_step;
        }
        // value grid, labelled on the left
        value_grid(&mut s, y, y_max, step, LEFT, pw, "#e2e2e2");
        // title and legend above the panel
        let mut lx = LEFT;
        let ty = y0 - 8.0;
        let _ = writeln!(
            s,
            "<text x=\"{lx:.1}\" y=\"{ty:.1}\" font-weight=\"bold\">{}</text>",
            escape(panel.title)
        );
        lx += panel.title.chars().count() as f64 * CHAR_W + 12.0;
        for line in &panel.lines {
            if panel.lines.len() > 1 {
                let _ = writeln!(
                    s,
                    "<line x1=\"{lx:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\" stroke-width=\"3\"/>\
                     <text x=\"{:.1}\" y=\"{ty:.1}\" fill=\"{}\">{}</text>",
                    ty - 4.0,
                    lx + 18.0,
                    ty - 4.0,
                    line.color,
                    lx + 22.0,
                    line.color,
                    escape(line.name)
                );
                lx += 22.0 + line.name.chars().count() as f64 * CHAR_W + 12.0;
            }
            let mut points = String::new();
            for sec in &series.seconds {
                if let Some(v) = (line.value)(sec) {
                    let _ = write!(points, "{:.1},{:.1} ", x(sec.t_s), y(v));
                }
            }
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"><title>{}</title></polyline>",
                line.color,
                points.trim_end(),
                escape(line.name)
            );
        }
    }
    // time labels under the last panel
    let mut t = 0.0;
    while t <= span + t_step / 1000.0 {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} s</text>",
            x(t),
            bottom + 16.0,
            trim_float(t)
        );
        t += t_step;
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds from the start (shaded: the load phase)</text>",
        LEFT + pw / 2.0,
        H - 8.0
    );
    // marks, across every panel, labels staggered over two rows
    let shown = series.marks.iter().filter(|m| {
        let t = mark_s(series, m.unix_ms);
        (0.0..=span).contains(&t)
    });
    for (k, m) in shown.enumerate() {
        let mx = x(mark_s(series, m.unix_ms));
        let label = escape(&m.label);
        let width = m.label.chars().count() as f64 * CHAR_W;
        let (tx, anchor) = if mx + 3.0 + width > W - 2.0 {
            (mx - 3.0, "end")
        } else {
            (mx + 3.0, "start")
        };
        let _ = writeln!(
            s,
            "<line class=\"mark\" x1=\"{mx:.1}\" y1=\"{:.1}\" x2=\"{mx:.1}\" y2=\"{bottom:.1}\" stroke=\"#333\" \
             stroke-dasharray=\"5 3\"><title>{label}</title></line>\
             <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"#333\">{label}</text>",
            18.0 + 14.0 * (k % 2) as f64,
            14.0 + 14.0 * (k % 2) as f64,
        );
    }
    s += "</svg>";
    s
}

/// The marks as a table (every one, drawn or not: a mark outside the run's time is
/// listed here only), or nothing when there are none.
pub fn marks_table(series: &SeriesSection) -> String {
    if series.marks.is_empty() {
        return String::new();
    }
    let span = span_s(series);
    let mut s =
        String::from("<table>\n<tr><th>mark</th><th>from the start</th><th>unix ms</th></tr>\n");
    for m in &series.marks {
        let t = mark_s(series, m.unix_ms);
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{t:+.3} s{}</td><td>{}</td></tr>",
            escape(&m.label),
            if (0.0..=span).contains(&t) {
                ""
            } else {
                " (outside the chart)"
            },
            m.unix_ms
        );
    }
    s += "</table>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::super::check::{labels_fit, well_formed};
    use super::*;
    use crate::report::Mark;

    fn series() -> SeriesSection {
        let start = 1_700_000_000_000;
        SeriesSection {
            start_unix_ms: start,
            load_s: [2.0, 12.0],
            seconds: (1..=15)
                .map(|t| Second {
                    t_s: f64::from(t),
                    sent_per_s: if (2..=12).contains(&t) { 1000.0 } else { 0.0 },
                    delivered_per_s: if (3..=13).contains(&t) { 990.0 } else { 0.0 },
                    p99_ms: (3..=13).contains(&t).then_some(f64::from(t) / 2.0),
                    open: 100,
                    errors: u64::from(t == 6) * 4,
                })
                .collect(),
            marks: vec![
                Mark {
                    unix_ms: start + 5_500,
                    label: "kill -9 imd".into(),
                },
                Mark {
                    unix_ms: start + 5_700,
                    label: "imd ready <again>".into(),
                },
                Mark {
                    unix_ms: start + 14_900,
                    label: "a late mark with a long label".into(),
                },
                Mark {
                    unix_ms: start - 60_000,
                    label: "before the run".into(),
                },
            ],
        }
    }

    #[test]
    fn one_polyline_per_series_and_a_line_per_mark() {
        let svg = svg(&series());
        well_formed(&svg).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 5, "{svg}");
        for name in ["sent", "delivered", "p99", "open", "errors"] {
            assert!(
                svg.contains(&format!("<title>{name}</title></polyline>")),
                "{name}"
            );
        }
        // the three marks inside the run, none before it
        assert_eq!(svg.matches("class=\"mark\"").count(), 3, "{svg}");
        assert!(svg.contains(">kill -9 imd</text>"));
        assert!(svg.contains(">imd ready &lt;again&gt;</text>"));
        assert!(!svg.contains("before the run"));
        // 15 s on the axis: the kill at 5.5 s is at 5.5/15 of the plot's width
        let x = LEFT + 5.5 / 15.0 * (W - LEFT - RIGHT);
        assert!(svg.contains(&format!("x1=\"{x:.1}\"")), "{x:.1}");
        // a p99 point only for the seconds that had samples: 11 of them
        let p99 = svg
            .split("<polyline")
            .find(|p| p.contains("<title>p99</title>"))
            .unwrap();
        let points = p99.split("points=\"").nth(1).unwrap();
        let points = &points[..points.find('"').unwrap()];
        assert_eq!(points.split_whitespace().count(), 11, "{points}");
    }

    #[test]
    fn labels_stay_inside_the_picture() {
        let svg = svg(&series());
        labels_fit(&svg, W).unwrap();
        // the late mark's label turned left of its line
        assert!(
            svg.contains("text-anchor=\"end\" fill=\"#333\">a late mark with a long label"),
            "{svg}"
        );
    }

    #[test]
    fn every_mark_is_in_the_table_with_its_time() {
        let t = marks_table(&series());
        well_formed(&t).unwrap();
        assert!(t.contains("<td>kill -9 imd</td><td>+5.500 s</td>"), "{t}");
        assert!(t.contains("<td>-60.000 s (outside the chart)</td>"), "{t}");
        assert!(marks_table(&SeriesSection::default()).is_empty());
    }

    #[test]
    fn an_empty_series_still_draws() {
        let svg = svg(&SeriesSection::default());
        well_formed(&svg).unwrap();
        labels_fit(&svg, W).unwrap();
        assert_eq!(svg.matches("<polyline").count(), 5);
    }
}
