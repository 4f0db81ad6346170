//! The human summary printed at the end of a run: a few aligned lines over the report's
//! sections. It formats; it must not compute anything the JSON report lacks.

use std::fmt::Write as _;

use super::Report;

/// The human summary printed at the end.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let run = &r.run;
    let _ = writeln!(
        s,
        "imbench {} run {}: {} connection(s) to {} target(s), {} agent process(es), {:.0}s load{}",
        run.scenario,
        run.run_id,
        r.connections.target,
        run.targets.len(),
        run.local_agents + run.remote_agents.len(),
        run.duration_s,
        if run.scenario != "idle" {
            format!(" at {} msg/s", run.rate)
        } else {
            String::new()
        }
    );
    let c = &r.connections;
    let _ = writeln!(
        s,
        "  connections  opened {}/{}  failed {}  dropped {}  reconnects {}  open at end {}  \
         handshakes/s {:.0} (peak {:.0})",
        c.opened,
        c.target,
        c.failed,
        c.dropped,
        c.reconnects,
        c.open_at_end,
        c.handshakes_per_s,
        c.handshakes_per_s_peak
    );
    if !c.failed_by_cause.is_empty() {
        let causes: Vec<String> = c
            .failed_by_cause
            .iter()
            .map(|(kind, n)| format!("{kind} ×{n}"))
            .collect();
        let _ = writeln!(s, "  handshakes   failed by cause: {}", causes.join("  "));
    }
    if c.churned > 0 {
        let _ = writeln!(
            s,
            "  churn        {} openings ended by their connection (--lifetime) and opened again",
            c.churned
        );
    }
    if run.scenario != "idle" {
        let m = &r.messages;
        let _ = writeln!(
            s,
            "  messages     sent {} (intended {})  acked {}  refused {}  delivered {}  echoed {}  \
             retransmits {}  server errors {}",
            m.sent,
            m.intended,
            m.acked,
            m.refused,
            m.delivered,
            m.echoed,
            m.retransmits,
            m.server_errors
        );
        if m.reads > 0 {
            let _ = writeln!(s, "  receipts     read {}", m.reads);
        }
        let l = &r.latency_ms;
        let _ = writeln!(
            s,
            "  latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={}, send→push)",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
        let a = &r.ack_latency_ms;
        let _ = writeln!(
            s,
            "  ack ms       p50 {:.3}  p99 {:.3}  max {:.3}  (send→sent)",
            a.p50, a.p99, a.max
        );
        if let Some(sv) = &r.service {
            let w = &sv.queue_wait_ms;
            let _ = writeln!(
                s,
                "  queue wait   p50 {:.3}  p99 {:.3}  max {:.3} ms  (n={}, opening message → assigned \
                 push at the customer)",
                w.p50, w.p99, w.max, w.count
            );
            let _ = writeln!(
                s,
                "  service      max_open {}  close_after {}  assignments {}  queued {}  closes {} \
                 (failed {}; p50 {:.3} p99 {:.3} ms)  max queue position {}  queue frames {}",
                sv.max_open,
                sv.close_after,
                sv.assignments,
                sv.queued,
                sv.closes,
                sv.close_errors,
                sv.close_ms.p50,
                sv.close_ms.p99,
                sv.max_queue_position,
                sv.queue_frames
            );
            let _ = writeln!(
                s,
                "  caps         max open per agent {}{}  delivered at assignment {}  history {}  \
                 waiting at end {}  misrouted {}",
                sv.max_open_per_agent,
                match (sv.max_open, sv.over_cap) {
                    (0, _) => " (no cap)".to_string(),
                    (cap, 0) => format!(" (cap {cap} held)"),
                    (cap, n) => format!(" (OVER cap {cap}, {n} time(s))"),
                },
                sv.delivered_at_assignment,
                sv.history,
                sv.waiting_at_end,
                sv.misrouted
            );
        }
        let t = &r.throughput;
        let _ = writeln!(
            s,
            "  throughput   sent {:.1}/s  delivered {:.1}/s  longest delivery gap {:.0} ms",
            t.sent_per_s, t.delivered_per_s, r.delivery_gap.longest_ms
        );
        if run.verify {
            let _ = writeln!(
                s,
                "  verify       lost {}  lost_echo {}  duplicated {}  out_of_order {}  unacked {}  \
                 undeliverable {}",
                m.lost, m.lost_echo, m.duplicated, m.out_of_order, m.unacked, m.undeliverable
            );
        }
    }
    for e in &r.errors {
        let _ = writeln!(s, "  error        {} x{}: {}", e.kind, e.count, e.sample);
    }
    if r.ok {
        let _ = writeln!(s, "  result       OK");
    } else {
        let _ = writeln!(
            s,
            "  result       FAILED: {} problem(s), each with its cause",
            r.failures.len()
        );
        for f in &r.failures {
            let _ = writeln!(s, "  FAILED       {f}");
        }
    }
    s
}
