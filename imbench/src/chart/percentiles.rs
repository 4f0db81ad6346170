//! The latency percentile chart: an inline SVG of the distribution, drawn like
//! HdrHistogram's plots (latency up, percentile along a log axis in "nines": 0%, 90%,
//! 99%, 99.9%, …), with p50, p90, p99 and p99.9 marked on each curve.
//!
//! Drawing only, from the report's distributions; the page around it is `super`'s.

use std::fmt::Write as _;

use super::{CHAR_W, escape, nice_step, value_grid};
use crate::report::{LatencySummary, Quantile, Report};

const W: f64 = 860.0;
const H: f64 = 480.0;
const LEFT: f64 = 76.0;
/// Room right of the plot for the last axis label, centred on its edge.
const RIGHT: f64 = 40.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 64.0;

/// The percentiles marked on the curve: label, quantile, value.
fn marks(l: &LatencySummary) -> [(&'static str, f64, f64); 4] {
    [
        ("p50", 0.5, l.p50),
        ("p90", 0.9, l.p90),
        ("p99", 0.99, l.p99),
        ("p99.9", 0.999, l.p999),
    ]
}

/// The report's two curves: send → push, and send → sent (the acknowledgement).
pub fn of_report(r: &Report) -> [Series<'_>; 2] {
    [
        Series {
            name: "send → push",
            color: "#1f6fb4",
            points: &r.latency_distribution,
            summary: &r.latency_ms,
        },
        Series {
            name: "send → sent (ack)",
            color: "#d9822b",
            points: &r.ack_latency_distribution,
            summary: &r.ack_latency_ms,
        },
    ]
}

/// One curve.
pub struct Series<'a> {
    /// Legend text.
    pub name: &'a str,
    /// Stroke colour.
    pub color: &'a str,
    /// The distribution, quantile ascending.
    pub points: &'a [Quantile],
    /// Its percentiles, marked on the curve.
    pub summary: &'a LatencySummary,
}

/// Where a quantile sits on the x axis, in nines: 0.9 → 1, 0.99 → 2; 1.0 (the max)
/// and beyond `max_nines` sit at `max_nines`.
pub fn nines(q: f64, max_nines: f64) -> f64 {
    if q >= 1.0 {
        return max_nines;
    }
    (-(1.0 - q.max(0.0)).log10()).clamp(0.0, max_nines)
}

/// The label of `k` nines: 0 → `0%`, 1 → `90%`, 3 → `99.9%`.
pub fn nines_label(k: u32) -> String {
    match k {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        k => format!("99.{}%", "9".repeat(k as usize - 2)),
    }
}

/// The inline SVG.
pub fn svg(series: &[Series<'_>]) -> String {
    let count = series.iter().map(|s| s.summary.count).max().unwrap_or(0);
    // As many nines as the samples support: 1,000 samples reach 99.9%.
    let max_nines = ((count.max(1) as f64).log10().ceil()).clamp(2.0, 6.0);
    let max_ms = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.ms))
        .fold(0.0f64, f64::max);
    let step = nice_step(if max_ms > 0.0 { max_ms } else { 1.0 });
    let y_max = (max_ms / step).ceil().max(1.0) * step;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |n: f64| LEFT + n / max_nines * pw;
    let y = |ms: f64| TOP + ph - ms / y_max * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    s += "<title>Latency by percentile</title>\n";
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"#fafafa\" stroke=\"#999\"/>"
    );
    // x grid: one line per nine
    for k in 0..=(max_nines as u32) {
        let gx = x(f64::from(k));
        let _ = writeln!(
            s,
            "<line x1=\"{gx:.1}\" y1=\"{TOP}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            TOP + ph,
            TOP + ph + 18.0,
            nines_label(k)
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>",
        LEFT + pw / 2.0,
        H - 14.0
    );
    // y grid
    value_grid(&mut s, y, y_max, step, LEFT, pw, "#ddd");
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.1})\">latency (ms)</text>",
        TOP + ph / 2.0,
        TOP + ph / 2.0
    );
    for (i, series) in series.iter().enumerate() {
        if series.points.is_empty() {
            continue;
        }
        let mut path = String::new();
        for p in series.points {
            let _ = write!(
                path,
                "{:.1},{:.1} ",
                x(nines(p.quantile, max_nines)),
                y(p.ms)
            );
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"><title>{}</title></polyline>",
            series.color,
            path.trim_end(),
            escape(series.name)
        );
        for (label, q, ms) in marks(series.summary) {
            let (mx, my) = (x(nines(q, max_nines)), y(ms));
            let text = format!("{label} {ms:.3}");
            // Right of the point, unless that runs past the picture's edge: then left.
            let width = text.chars().count() as f64 * CHAR_W;
            let (tx, anchor) = if mx + 5.0 + width > W - 2.0 {
                (mx - 5.0, "end")
            } else {
                (mx + 5.0, "start")
            };
            let _ = writeln!(
                s,
                "<circle cx=\"{mx:.1}\" cy=\"{my:.1}\" r=\"3.5\" fill=\"{}\"><title>{} {label} {ms:.3} ms</title></circle>\
                 <text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"{}\">{text}</text>",
                series.color,
                escape(series.name),
                (my - 6.0 - 14.0 * i as f64).max(TOP - 4.0),
                series.color
            );
        }
        // legend
        let ly = TOP + 16.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{} (n={})</text>",
            LEFT + 12.0,
            LEFT + 36.0,
            series.color,
            LEFT + 42.0,
            ly + 4.0,
            escape(series.name),
            series.summary.count
        );
    }
    s += "</svg>";
    s
}

#[cfg(test)]
mod tests {
    use super::super::check::{labels_fit, svg_titled, well_formed};
    use super::*;
    use crate::report;

    fn report() -> Report {
        let mut h = report::new_histogram();
        for us in 1..=10_000u64 {
            report::record_us(&mut h, us * 10); // 10 µs … 100 ms, uniform
        }
        let mut r = Report::default();
        r.run.scenario = "chat <&>".into();
        r.latency_ms = LatencySummary::from_histogram(&h);
        r.latency_distribution = report::distribution(&h);
        r
    }

    #[test]
    fn the_chart_carries_the_percentiles() {
        let r = report();
        let page = super::super::html(&r);
        let svg = svg_titled(&page, "Latency by percentile");
        well_formed(svg).unwrap();
        // the nines axis: 10,000 samples reach 99.99%
        for label in ["0%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}");
        }
        assert!(!svg.contains("99.999%"));
        // the marked percentiles, as the summary has them
        for (label, ms) in [
            ("p50", r.latency_ms.p50),
            ("p90", r.latency_ms.p90),
            ("p99", r.latency_ms.p99),
            ("p99.9", r.latency_ms.p999),
        ] {
            let text = format!("{label} {ms:.3}");
            assert!(svg.contains(&text), "{text} missing");
        }
        assert!((r.latency_ms.p99 - 99.0).abs() < 0.2, "{:?}", r.latency_ms);
        assert_eq!(
            svg.matches("<polyline").count(),
            1,
            "no ack samples, no curve"
        );
    }

    #[test]
    fn labels_at_the_right_edge_stay_inside_the_picture() {
        // 1,000 samples: p99.9 sits on the last nine, the plot's right edge
        let mut h = report::new_histogram();
        for us in 1..=1_000u64 {
            report::record_us(&mut h, us * 1_000);
        }
        let mut r = Report::default();
        r.latency_ms = LatencySummary::from_histogram(&h);
        r.latency_distribution = report::distribution(&h);
        r.ack_latency_ms = r.latency_ms;
        r.ack_latency_distribution = r.latency_distribution.clone();
        let svg = svg(&of_report(&r));
        well_formed(&svg).unwrap();
        labels_fit(&svg, W).unwrap();
        assert!(
            svg.contains("text-anchor=\"end\" fill=\"#1f6fb4\">p99.9"),
            "{svg}"
        );
    }

    #[test]
    fn an_empty_run_still_draws() {
        let svg = svg(&of_report(&Report::default()));
        well_formed(&svg).unwrap();
        labels_fit(&svg, W).unwrap();
    }

    #[test]
    fn axis_arithmetic() {
        assert_eq!(nines(0.0, 3.0), 0.0);
        assert!((nines(0.99, 3.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(1.0, 3.0), 3.0);
        assert_eq!(nines(0.99999, 3.0), 3.0);
        assert_eq!(nines_label(4), "99.99%");
    }
}
