//! The charts written next to the JSON report (`r.json` → `r.html`): one
//! self-contained HTML page with the run's result (FAILED with each problem's cause
//! when it failed), the run second by second ([`timeline`]: sent and delivered per
//! second, p99 per second, open connections, errors, on one time axis with the marks of
//! `--mark-file`), the latency percentile distribution ([`percentiles`], drawn like
//! HdrHistogram's plots), and the summary figures as a table.
//!
//! It reads only the [`Report`] (so a chart can be redrawn from a saved report) and
//! references nothing outside the page: no scripts, no fonts, no stylesheets.

pub mod percentiles;
pub mod timeline;

use std::fmt::Write as _;

use crate::report::Report;

/// Average width of a character of the charts' 12 px sans-serif text, to keep labels
/// inside the picture (an estimate: the page has no way to measure text).
pub(crate) const CHAR_W: f64 = 7.0;

/// The whole page.
pub fn html(r: &Report) -> String {
    let run = &r.run;
    let title = format!("imbench {} {}", escape(&run.scenario), escape(&run.run_id));
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{title}</title>\n\
         <style>body{{font-family:sans-serif;margin:24px;color:#222}}\
         table{{border-collapse:collapse}}td,th{{padding:2px 10px;text-align:right;\
         border-bottom:1px solid #ddd}}th:first-child,td:first-child{{text-align:left}}\
         .failed{{border:2px solid #c62828;background:#fdecea;padding:8px 16px;max-width:1100px}}\
         .ok{{color:#2e7d32;font-weight:bold}}h2{{font-size:16px;margin-top:28px}}</style>\n\
         </head>\n<body>\n<h1 style=\"font-size:20px\">{title}</h1>\n"
    );
    if r.ok {
        s += "<p class=\"ok\">Result: OK</p>\n";
    } else {
        let _ = writeln!(
            s,
            "<div class=\"failed\">\n<p><strong>Result: FAILED</strong> ({} problem(s), each \
             with its cause)</p>\n<ul>",
            r.failures.len()
        );
        for f in &r.failures {
            let _ = writeln!(s, "<li>{}</li>", escape(f));
        }
        s += "</ul>\n</div>\n";
    }
    let _ = writeln!(
        s,
        "<p>{} of {} connection(s) opened, to {} target(s); {:.0} s load at {} msg/s; sent {} \
         of {} intended, delivered {}, refused {}, lost {}, duplicated {}.</p>",
        r.connections.opened,
        r.connections.target,
        run.targets.len(),
        run.duration_s,
        run.rate,
        r.messages.sent,
        r.messages.intended,
        r.messages.delivered,
        r.messages.refused,
        r.messages.lost,
        r.messages.duplicated,
    );
    s += "<h2>Second by second</h2>\n";
    s += &timeline::svg(&r.series);
    s += "\n";
    s += &timeline::marks_table(&r.series);
    s += "<h2>Latency by percentile</h2>\n";
    s += &percentiles::svg(&percentiles::of_report(r));
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

/// A round step (1, 2 or 5 × 10^k) that cuts `range` into about 5 parts.
pub(crate) fn nice_step(range: f64) -> f64 {
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

/// Horizontal grid lines at every `step` from 0 to `y_max`, across `left..left + width`,
/// each labelled with its value left of `left`; `y` maps a value to its height.
pub(crate) fn value_grid(
    s: &mut String,
    y: impl Fn(f64) -> f64,
    y_max: f64,
    step: f64,
    left: f64,
    width: f64,
    stroke: &str,
) {
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        let gy = y(v);
        let _ = writeln!(
            s,
            "<line x1=\"{left}\" y1=\"{gy:.1}\" x2=\"{:.1}\" y2=\"{gy:.1}\" stroke=\"{stroke}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left + width,
            left - 6.0,
            gy + 4.0,
            trim_float(v)
        );
        v += step;
    }
}

pub(crate) fn trim_float(v: f64) -> String {
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
pub(crate) mod check {
    //! Checks the chart tests share: well-formed markup, labels inside the picture.

    /// A small XML well-formedness check: every tag closes in order, attributes are
    /// quoted, and text holds no raw `<` or bare `&`.
    pub(crate) fn well_formed(xml: &str) -> Result<(), String> {
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

    /// The `<svg>` element of `page` whose `<title>` is `title`.
    pub(crate) fn svg_titled<'a>(page: &'a str, title: &str) -> &'a str {
        let needle = format!("<title>{title}</title>");
        let at = page
            .find(&needle)
            .unwrap_or_else(|| panic!("no svg titled {title}"));
        let start = page[..at].rfind("<svg").expect("an svg around the title");
        let end = at + page[at..].find("</svg>").expect("the svg closes") + "</svg>".len();
        &page[start..end]
    }

    /// Checks that every unrotated `<text>` of `svg`, by its anchor and an estimate of
    /// its width, lies between 0 and `width`.
    pub(crate) fn labels_fit(svg: &str, width: f64) -> Result<(), String> {
        let mut rest = svg;
        while let Some(open) = rest.find("<text ") {
            rest = &rest[open..];
            let tag_end = rest.find('>').ok_or("unterminated text")?;
            let tag = &rest[..tag_end];
            let close = rest.find("</text>").ok_or("unclosed text")?;
            let content = &rest[tag_end + 1..close];
            rest = &rest[close..];
            if tag.contains("transform=") {
                continue;
            }
            let attr = |name: &str| -> Option<&str> {
                let at = tag.find(&format!(" {name}=\""))? + name.len() + 3;
                Some(&tag[at..at + tag[at..].find('"')?])
            };
            let x: f64 = attr("x")
                .ok_or("text without x")?
                .parse()
                .map_err(|_| "bad x")?;
            let chars = content
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .chars()
                .count() as f64;
            let w = chars * super::CHAR_W;
            let (from, to) = match attr("text-anchor") {
                Some("end") => (x - w, x),
                Some("middle") => (x - w / 2.0, x + w / 2.0),
                _ => (x, x + w),
            };
            if from < 0.0 || to > width {
                return Err(format!(
                    "{content:?} spans {from:.0}..{to:.0}, outside 0..{width}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::check::{svg_titled, well_formed};
    use super::*;

    fn failed() -> Report {
        let mut r = Report::default();
        r.run.scenario = "chat <&>".into();
        r.failures = vec![
            "opened 139 of 2000 connections: http 429 ×1861 (raise imd's --connect-rate)".into(),
            "sent 790 of the 10000 messages <90%".into(),
        ];
        r
    }

    #[test]
    fn the_page_is_well_formed_self_contained_and_has_both_charts() {
        let mut r = failed();
        r.ok = true;
        r.failures.clear();
        let page = html(&r);
        well_formed(&page["<!DOCTYPE html>\n".len()..].replace("<meta charset=\"utf-8\">", ""))
            .unwrap();
        for title in ["Latency by percentile", "The run second by second"] {
            well_formed(svg_titled(&page, title)).unwrap();
        }
        // self-contained: nothing to fetch
        for outside in ["<script", "src=", "href=", "url(", "@import"] {
            assert!(!page.contains(outside), "{outside}");
        }
        assert!(page.contains("chat &lt;&amp;&gt;"));
        assert!(page.contains("Result: OK"));
        assert!(!page.contains("FAILED"));
    }

    #[test]
    fn a_failed_run_says_failed_with_every_cause() {
        let r = failed();
        let page = html(&r);
        well_formed(&page["<!DOCTYPE html>\n".len()..].replace("<meta charset=\"utf-8\">", ""))
            .unwrap();
        assert!(page.contains("Result: FAILED"));
        assert!(!page.contains("Result: OK"));
        assert!(page.contains("<li>opened 139 of 2000 connections: http 429 ×1861"));
        assert!(page.contains("<li>sent 790 of the 10000 messages &lt;90%</li>"));
    }

    #[test]
    fn the_checker_catches_bad_markup() {
        assert!(well_formed("<a><b></a></b>").is_err());
        assert!(well_formed("<a x=1/>").is_err());
        assert!(well_formed("<a>1 & 2</a>").is_err());
        assert!(well_formed("<a x=\"1\"><b/>t &amp; u</a>").is_ok());
        assert!(check::labels_fit("<svg><text x=\"850\">long label</text></svg>", 860.0).is_err());
        assert!(
            check::labels_fit(
                "<svg><text x=\"850\" text-anchor=\"end\">long label</text></svg>",
                860.0
            )
            .is_ok()
        );
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7.0), 2.0);
    }
}
