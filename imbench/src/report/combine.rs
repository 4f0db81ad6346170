//! Adding up agents' final reports into the run's report: totals, latency over every
//! agent, the longest delivery pause across agents, rates; then it asks
//! [`super::verdict`] whether the run passed.
//!
//! Arithmetic only; what counts as a failure is decided in `verdict`.

use super::{
    AgentReport, AgentSection, ConnectionsSection, Counters, DeliveryGap, LatencySummary,
    MessagesSection, PushTimes, Report, RunSection, SeriesSection, ServiceSection,
    ThroughputSection, VerifyCounts, add_error, distribution, new_histogram, verdict,
};

/// Adds up agent reports into the report's sections. `statuses[i]` says what became
/// of agent i (`ok`, `died: …`); an agent with no report contributes nothing but its
/// planned connections, which count as failed.
pub fn combine(
    run: RunSection,
    planned: &[u64],
    finals: &[Option<AgentReport>],
    statuses: &[String],
    handshakes_peak: f64,
) -> Report {
    let mut counters = Counters::default();
    let mut verify = VerifyCounts::default();
    let mut latency = new_histogram();
    let mut ack_latency = new_histogram();
    let mut errors = Vec::new();
    let mut agents = Vec::new();
    let (mut first_open, mut last_open, mut traffic_ms) = (None::<u64>, None::<u64>, 0u64);
    let mut missing_connections = 0;
    let mut open_at_end = 0;
    for (i, planned) in planned.iter().enumerate() {
        let status = statuses.get(i).cloned().unwrap_or_else(|| "unknown".into());
        let Some(r) = finals.get(i).and_then(Option::as_ref) else {
            missing_connections += planned;
            agents.push(AgentSection {
                agent: i,
                status,
                connections: *planned,
                ..Default::default()
            });
            continue;
        };
        counters.add(&r.counters);
        open_at_end += r.open_at_stop;
        if let Some(v) = &r.verify {
            verify.add(v);
        }
        let mut h = new_histogram();
        r.latency.add_to(&mut h);
        latency.add(&h).expect("histograms share bounds");
        r.ack_latency.add_to(&mut ack_latency);
        for e in &r.errors {
            add_error(&mut errors, &e.kind, e.count, &e.sample);
        }
        first_open = match (first_open, r.first_open_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last_open = last_open.max(r.last_open_ms);
        traffic_ms = traffic_ms.max(r.traffic_ms);
        agents.push(AgentSection {
            agent: i,
            pid: r.pid,
            addr: String::new(),
            status,
            connections: r.connections,
            counters: r.counters,
            verify: r.verify,
            latency_ms: LatencySummary::from_histogram(&h),
        });
    }
    let pushes: Vec<&PushTimes> = finals
        .iter()
        .flatten()
        .filter_map(|r| r.pushes.as_ref())
        .collect();
    let delivery_gap = match longest_silence(&pushes) {
        Some([from, to]) => DeliveryGap {
            longest_ms: (to - from) as f64 / 1000.0,
            from_unix_ms: Some(from / 1000),
            to_unix_ms: Some(to / 1000),
        },
        None => DeliveryGap::default(),
    };
    let ramp_ms = match (first_open, last_open) {
        (Some(a), Some(b)) if b > a => b - a,
        _ => 0,
    };
    let service = (run.max_open.is_some() || run.close_after.is_some()).then(|| {
        let reports: Vec<_> = finals
            .iter()
            .flatten()
            .filter_map(|r| r.service.as_ref())
            .collect();
        let mut s = ServiceSection::combine(
            run.max_open.unwrap_or(0),
            run.close_after.unwrap_or(0),
            &reports,
        );
        s.waiting_at_end = verify.waiting;
        s.misrouted = verify.misrouted;
        s
    });
    let intended = if run.scenario == "idle" {
        0
    } else {
        (run.rate * run.duration_s).round() as u64
    };
    let mut report = Report {
        connections: ConnectionsSection {
            target: planned.iter().sum(),
            opened: counters.opened,
            failed: counters.failed + missing_connections,
            failed_by_cause: errors
                .iter()
                .filter(|e| verdict::is_handshake(&e.kind))
                .map(|e| (e.kind.clone(), e.count))
                .collect(),
            dropped: counters.dropped,
            reconnects: counters.reconnects,
            churned: counters.churned,
            open_at_end,
            handshakes_per_s: if ramp_ms == 0 {
                counters.opened as f64
            } else {
                per_second(counters.opened.saturating_sub(1), ramp_ms)
            },
            handshakes_per_s_peak: handshakes_peak,
        },
        messages: MessagesSection {
            intended,
            sent: counters.sent,
            replies: counters.replies,
            acked: counters.acked,
            refused: counters.refused,
            server_errors: counters.server_errors,
            delivered: counters.delivered,
            echoed: counters.echoed,
            lost: verify.lost,
            lost_echo: verify.lost_echo,
            duplicated: counters.duplicated,
            out_of_order: counters.out_of_order,
            retransmits: counters.retransmits,
            unacked: verify.unacked,
            undeliverable: verify.undeliverable,
            reads: counters.reads,
        },
        latency_ms: LatencySummary::from_histogram(&latency),
        ack_latency_ms: LatencySummary::from_histogram(&ack_latency),
        latency_distribution: distribution(&latency),
        ack_latency_distribution: distribution(&ack_latency),
        throughput: ThroughputSection {
            sent_per_s: per_second(counters.sent, traffic_ms),
            delivered_per_s: per_second(counters.delivered, traffic_ms),
        },
        delivery_gap,
        service,
        ok: false,
        failures: Vec::new(),
        agents,
        errors,
        series: SeriesSection::default(),
        run,
    };
    report.failures = verdict(&report);
    report.ok = report.failures.is_empty();
    report
}

/// The longest time during which no device of any agent received a push, between the
/// first push and the last (intervals in unix µs). Each agent was silent outside its
/// span and during its gaps; the run was silent where all of them were.
pub fn longest_silence(agents: &[&PushTimes]) -> Option<[u64; 2]> {
    let first = agents.iter().map(|a| a.span_us[0]).min()?;
    let last = agents.iter().map(|a| a.span_us[1]).max()?;
    let silent = |a: &PushTimes| -> Vec<[u64; 2]> {
        let mut v = Vec::with_capacity(a.gaps_us.len() + 2);
        v.push([0, a.span_us[0]]);
        v.extend_from_slice(&a.gaps_us);
        v.push([a.span_us[1], u64::MAX]);
        v
    };
    let mut common = silent(agents[0]);
    for a in &agents[1..] {
        let other = silent(a);
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        while i < common.len() && j < other.len() {
            let lo = common[i][0].max(other[j][0]);
            let hi = common[i][1].min(other[j][1]);
            if lo < hi {
                out.push([lo, hi]);
            }
            if common[i][1] < other[j][1] {
                i += 1;
            } else {
                j += 1;
            }
        }
        common = out;
    }
    common
        .into_iter()
        .map(|[lo, hi]| [lo.max(first), hi.min(last)])
        .filter(|[lo, hi]| lo < hi)
        .max_by_key(|[lo, hi]| hi - lo)
}

/// Events per second, 0 for an empty window.
pub fn per_second(count: u64, millis: u64) -> f64 {
    if millis == 0 {
        0.0
    } else {
        count as f64 * 1000.0 / millis as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{ErrorSample, HistData, record_us, summary};

    fn agent(i: usize, opened: u64, delivered: u64, lost: u64, lat_us: u64) -> AgentReport {
        let mut h = new_histogram();
        for _ in 0..delivered {
            record_us(&mut h, lat_us);
        }
        AgentReport {
            agent: i,
            pid: 100 + i as u32,
            connections: 10,
            counters: Counters {
                opened,
                failed: 10 - opened,
                open: opened,
                sent: delivered + lost,
                acked: delivered + lost,
                delivered,
                ..Default::default()
            },
            latency: HistData::from_histogram(&h),
            verify: Some(VerifyCounts {
                lost,
                ..Default::default()
            }),
            first_open_ms: Some(1000 + i as u64),
            last_open_ms: Some(2000 + i as u64),
            traffic_ms: 10_000,
            errors: vec![ErrorSample {
                kind: "http 401".into(),
                count: 10 - opened,
                sample: "x".into(),
            }],
            ..Default::default()
        }
    }

    fn run(verify: bool) -> RunSection {
        RunSection {
            scenario: "chat".into(),
            verify,
            ..Default::default()
        }
    }

    #[test]
    fn combine_adds_up_agents() {
        let finals = vec![
            Some(agent(0, 10, 1000, 0, 1_000)),
            Some(agent(1, 8, 3000, 0, 3_000)),
        ];
        let r = combine(
            run(true),
            &[10, 10],
            &finals,
            &["ok".into(), "ok".into()],
            7.0,
        );
        assert_eq!(
            r.connections.failed_by_cause,
            [("http 401".to_string(), 2)].into_iter().collect()
        );
        assert!(summary(&r).contains("failed by cause: http 401 ×2"));
        // two handshakes of agent 1 failed: the one problem of the run
        assert_eq!(r.failures.len(), 1, "{:?}", r.failures);
        assert!(
            r.failures[0].starts_with("opened 18 of 20 connections")
                && r.failures[0].contains("http 401 ×2"),
            "{:?}",
            r.failures
        );
        assert_eq!(
            (
                r.connections.target,
                r.connections.opened,
                r.connections.failed
            ),
            (20, 18, 2)
        );
        // 18 handshakes from t=1000 to t=2001: 17 intervals in 1.001 s
        assert!((r.connections.handshakes_per_s - 17.0 / 1.001).abs() < 1e-9);
        assert_eq!(r.connections.handshakes_per_s_peak, 7.0);
        assert_eq!((r.messages.sent, r.messages.delivered), (4000, 4000));
        assert_eq!(r.throughput.delivered_per_s, 400.0);
        // 1000 samples at 1 ms and 3000 at 3 ms: the median is 3 ms
        assert_eq!(r.latency_ms.count, 4000);
        assert!((r.latency_ms.p50 - 3.0).abs() < 0.01);
        assert!((r.agents[0].latency_ms.p99 - 1.0).abs() < 0.01);
        assert_eq!(
            r.errors,
            vec![ErrorSample {
                kind: "http 401".into(),
                count: 2,
                sample: "x".into()
            }]
        );
    }

    #[test]
    fn loss_and_dead_agents_fail_the_run() {
        let finals = vec![Some(agent(0, 10, 1000, 2, 1_000)), None];
        let r = combine(
            run(true),
            &[10, 10],
            &finals,
            &["ok".into(), "died: exit 9".into()],
            0.0,
        );
        assert!(!r.ok);
        assert_eq!(r.messages.lost, 2);
        assert_eq!(r.connections.failed, 10);
        // the dead agent, the connections it took with it, the loss
        assert_eq!(r.failures.len(), 3, "{:?}", r.failures);
        // without --verify a loss count is not a failure
        let finals = vec![Some(agent(0, 10, 1000, 2, 1_000))];
        assert!(combine(run(false), &[10], &finals, &["ok".into()], 0.0).ok);
    }

    #[test]
    fn an_agent_over_its_cap_fails_the_run_verified_or_not() {
        use crate::report::ServiceReport;
        let with = |over_cap: u64, verify: bool| {
            let mut a = agent(0, 10, 100, 0, 1_000);
            a.service = Some(ServiceReport {
                max_open_per_agent: 2 + over_cap.min(1),
                over_cap,
                queued: 3,
                ..Default::default()
            });
            a.verify = Some(VerifyCounts {
                waiting: 4,
                ..Default::default()
            });
            let mut run = run(verify);
            run.scenario = "service".into();
            run.max_open = Some(2);
            run.close_after = Some(3);
            combine(run, &[10], &[Some(a)], &["ok".into()], 0.0)
        };
        let r = with(0, true);
        assert!(r.ok, "{:?}", r.failures);
        let s = r.service.as_ref().unwrap();
        assert_eq!((s.max_open, s.close_after, s.queued), (2, 3, 3));
        assert_eq!((s.max_open_per_agent, s.waiting_at_end), (2, 4));
        assert!(summary(&r).contains("max open per agent 2 (cap 2 held)"));
        for verify in [true, false] {
            let r = with(1, verify);
            assert!(!r.ok);
            assert!(r.failures[0].contains("--max-open 2"), "{:?}", r.failures);
            assert!(summary(&r).contains("OVER cap 2"));
        }
        // no workflow, no section
        let r = combine(
            run(true),
            &[10],
            &[Some(agent(0, 10, 1, 0, 5))],
            &["ok".into()],
            0.0,
        );
        assert!(r.service.is_none());
        assert!(serde_json::to_value(&r).unwrap().get("service").is_none());
    }

    #[test]
    fn report_json_has_the_contract_fields() {
        let r = combine(
            run(true),
            &[10],
            &[Some(agent(0, 10, 10, 0, 5))],
            &["ok".into()],
            0.0,
        );
        let v = serde_json::to_value(&r).unwrap();
        for path in [
            "/connections/target",
            "/connections/opened",
            "/connections/failed",
            "/messages/sent",
            "/messages/delivered",
            "/messages/lost",
            "/messages/duplicated",
            "/messages/out_of_order",
            "/latency_ms/p50",
            "/latency_ms/p90",
            "/latency_ms/p99",
            "/latency_ms/p999",
            "/latency_ms/max",
            "/throughput/sent_per_s",
            "/throughput/delivered_per_s",
            "/agents/0/status",
            "/messages/intended",
            "/messages/refused",
            "/messages/server_errors",
            "/series/seconds",
            "/series/marks",
            "/ok",
            "/failures",
        ] {
            assert!(v.pointer(path).is_some(), "{path} missing in {v}");
        }
        assert!(summary(&r).contains("result       OK"));
    }

    #[test]
    fn the_longest_silence_is_where_every_agent_was_silent() {
        let a = PushTimes {
            span_us: [100, 10_000],
            gaps_us: vec![[1_000, 5_000], [6_000, 9_000]],
        };
        let b = PushTimes {
            span_us: [200, 12_000],
            gaps_us: vec![[2_000, 7_000]],
        };
        // a: silent 1000-5000 and 6000-9000; b: 2000-7000 → both 2000-5000, 6000-7000
        assert_eq!(longest_silence(&[&a, &b]), Some([2_000, 5_000]));
        assert_eq!(longest_silence(&[&a]), Some([1_000, 5_000]));
        // one agent finished before the other began: the run was silent between
        let c = PushTimes {
            span_us: [100, 3_000],
            gaps_us: vec![],
        };
        let d = PushTimes {
            span_us: [8_000, 9_000],
            gaps_us: vec![],
        };
        assert_eq!(longest_silence(&[&c, &d]), Some([3_000, 8_000]));
        assert_eq!(longest_silence(&[]), None);
        let e = PushTimes {
            span_us: [5, 5],
            gaps_us: vec![],
        };
        assert_eq!(longest_silence(&[&e]), None);
    }

    #[test]
    fn rates_guard_empty_windows() {
        assert_eq!(per_second(10, 0), 0.0);
        assert_eq!(per_second(10, 2000), 5.0);
    }
}
