//! The latency chart written next to the JSON report (`r.json` → `r.html`): one
//! self-contained HTML page with an inline SVG of the percentile distribution, drawn
//! like HdrHistogram's plots (latency up, percentile along a log axis in "nines":
//! 0%, 90%, 99%, 99.9%, …), plus the summary figures as a table.
//!
//! It reads only the [`Report`] (so a chart can be redrawn from a saved report) and
//! references nothing outside the page: no scripts, no fonts, no stylesheets.

use std::fmt::Write as _;

use crate::report::{LatencySummary, Quantile, Report};

const W: f64 = 860.0;
const H: f64 = 480.0;
const LEFT: f64 = 76.0;
const RIGHT: f64 = 24.0;
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

/// The whole page.
pub fn html(r: &Report) -> String {
    let run = &r.run;
    let title = format!(
        "imbench {} {}: latency by percentile",
        escape(&run.scenario),
        escape(&run.run_id)
    );
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n\
         <style>body{{font-family:sans-serif;margin:24px;color:#222}}\
         table{{border-collapse:collapse}}td,th{{padding:2px 10px;text-align:right;\
         border-bottom:1px solid #ddd}}th:first-child,td:first-child{{text-align:left}}</style>\n\
         </head>\n<body>\n<h1 style=\"font-size:20px\">{title}</h1>\n"
    );
    let _ = writeln!(
        s,
        "<p>{} connection(s) to {} target(s), {:.0} s load at {} msg/s; sent {}, delivered {}, \
         lost {}, duplicated {}. {}</p>",
        r.connections.target,
        run.targets.len(),
        run.duration_s,
        run.rate,
        r.messages.sent,
        r.messages.delivered,
        r.messages.lost,
        r.messages.duplicated,
        if r.ok {
            "Result: OK."
        } else {
            "Result: FAILED."
        }
    );
    let series = [
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
    ];
    s += &svg(&series);
    s += "\n<table>\n<tr><th>latency ms</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th>\
          <th>max</th><th>n</th></tr>\n";
    for (name, l) in [
        ("send → push", &r.latency_ms),
        ("send → sent (ack)", &r.ack_latency_ms),
    ] {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td>\
             <td>{:.3}</td><td>{}</td></tr>",
            escape(name),
            l.p50,
            l.p90,
            l.p99,
            l.p999,
            l.max,
            l.count
        );
    }
    s += "</table>\n</body>\n</html>\n";
    s
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

/// A round step (1, 2 or 5 × 10^k) that cuts `range` into about 5 parts.
fn nice_step(range: f64) -> f64 {
    let raw = (range / 5.0).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
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
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        let gy = y(v);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            LEFT + pw,
            LEFT - 6.0,
            gy + 4.0,
            trim_float(v)
        );
        v += step;
    }
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
            let _ = writeln!(
                s,
                "<circle cx=\"{mx:.1}\" cy=\"{my:.1}\" r=\"3.5\" fill=\"{}\"><title>{} {label} {ms:.3} ms</title></circle>\
                 <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{}\">{label} {ms:.3}</text>",
                series.color,
                escape(series.name),
                mx + 5.0,
                my - 6.0 - 14.0 * i as f64,
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

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Escapes text for HTML and SVG.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report;

    /// A small XML well-formedness check: every tag closes in order, attributes are
    /// quoted, and text holds no raw `<` or bare `&`.
    fn well_formed(xml: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = xml;
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open])?;
            let close = rest[open..].find('>').ok_or("unterminated tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let top = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
                if top != name.trim() {
                    return Err(format!("</{name}> closes <{top}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("empty tag")?;
            check_attrs(&body[name.len()..])?;
            if !self_closing {
                stack.push(name.to_owned());
            }
        }
        check_text(rest)?;
        match stack.pop() {
            None => Ok(()),
            Some(open) => Err(format!("<{open}> never closed")),
        }
    }

    fn check_text(t: &str) -> Result<(), String> {
        for (i, _) in t.match_indices('&') {
            let entity = &t[i..t[i..].find(';').map_or(t.len(), |e| i + e + 1)];
            if !["&amp;", "&lt;", "&gt;", "&quot;"].contains(&entity) {
                return Err(format!("bare & in {t:?}"));
            }
        }
        Ok(())
    }

    fn check_attrs(mut a: &str) -> Result<(), String> {
        loop {
            a = a.trim_start();
            if a.is_empty() {
                return Ok(());
            }
            let eq = a
                .find('=')
                .ok_or(format!("attribute without value: {a:?}"))?;
            let name = &a[..eq];
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-:_".contains(c))
            {
                return Err(format!("bad attribute name {name:?}"));
            }
            let v = a[eq + 1..]
                .strip_prefix('"')
                .ok_or(format!("unquoted {name}"))?;
            let end = v.find('"').ok_or(format!("unterminated {name}"))?;
            check_text(&v[..end])?;
            a = &v[end + 1..];
        }
    }

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
    fn the_page_is_well_formed_and_carries_the_percentiles() {
        let r = report();
        let page = html(&r);
        let start = page.find("<svg").unwrap();
        let end = page.find("</svg>").unwrap() + "</svg>".len();
        let svg = &page[start..end];
        well_formed(svg).unwrap();
        well_formed(&page["<!DOCTYPE html>\n".len()..].replace("<meta charset=\"utf-8\">", ""))
            .unwrap();
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
        assert!(svg.contains("<polyline"));
        // self-contained: nothing to fetch
        for outside in ["<script", "src=", "href=", "url(", "@import"] {
            assert!(!page.contains(outside), "{outside}");
        }
        assert!(page.contains("chat &lt;&amp;&gt;"));
    }

    #[test]
    fn the_checker_catches_bad_markup() {
        assert!(well_formed("<a><b></a></b>").is_err());
        assert!(well_formed("<a x=1/>").is_err());
        assert!(well_formed("<a>1 & 2</a>").is_err());
        assert!(well_formed("<a x=\"1\"><b/>t &amp; u</a>").is_ok());
    }

    #[test]
    fn an_empty_run_still_draws() {
        let page = html(&Report::default());
        let start = page.find("<svg").unwrap();
        well_formed(&page[start..page.find("</svg>").unwrap() + 6]).unwrap();
    }

    #[test]
    fn axis_arithmetic() {
        assert_eq!(nines(0.0, 3.0), 0.0);
        assert!((nines(0.99, 3.0) - 2.0).abs() < 1e-9);
        assert_eq!(nines(1.0, 3.0), 3.0);
        assert_eq!(nines(0.99999, 3.0), 3.0);
        assert_eq!(nines_label(4), "99.99%");
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7.0), 2.0);
    }
}
