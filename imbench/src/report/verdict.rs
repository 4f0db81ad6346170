//! The verdict: whether a run passed and, for each problem, what was seen, what caused
//! it as far as imbench can tell, and what to change. A run fails when it did not
//! happen as planned (an agent died or failed, fewer connections opened than asked,
//! under [`MIN_SENT_SHARE`] of the intended messages sent, a send refused, an error
//! from imd) or when what happened was wrong (loss with `--verify`, an agent over its
//! `--max-open`). Drops and reconnects alone do not fail a run: riding them out is
//! what the kill scripts measure, and loss is what shows if that went wrong.
//!
//! It reads only the report's sections (so a saved report can be judged again), and
//! it is the one place that decides what fails a run.

use super::{ErrorSample, Report};

/// The share of the intended messages a run must send: below it, the load that was
/// measured is not the load that was asked for.
pub const MIN_SENT_SHARE: f64 = 0.9;

/// The problems of the run in `r` (empty: it passed), root causes first.
pub fn verdict(r: &Report) -> Vec<String> {
    let mut failures = Vec::new();
    for a in r.agents.iter().filter(|a| a.status != "ok") {
        let mut line = format!("agent {}: {}", a.agent, a.status);
        if a.status.starts_with("died") {
            line += &format!(
                "; its {} connection(s) and their messages are missing from the report \
                 (killed? out of memory? see its stderr and `dmesg`)",
                a.connections
            );
        }
        failures.push(line);
    }
    let c = &r.connections;
    if c.opened < c.target {
        let mut causes = Vec::new();
        let unreported: u64 = r
            .agents
            .iter()
            .filter(|a| a.status != "ok")
            .map(|a| a.connections)
            .sum();
        if unreported > 0 {
            causes.push(format!(
                "{unreported} were planned on agent(s) that never reported (above)"
            ));
        }
        let handshakes: Vec<&ErrorSample> =
            r.errors.iter().filter(|e| is_handshake(&e.kind)).collect();
        if !handshakes.is_empty() {
            causes.push(format!(
                "failed handshakes by cause: {}",
                by_cause(&handshakes)
            ));
        }
        failures.push(format!(
            "opened {} of {} connections ({} never opened){}",
            c.opened,
            c.target,
            c.target - c.opened,
            colon_list(&causes)
        ));
    } else {
        // Every connection opened, but a reconnect met a server fault.
        let faults: Vec<&ErrorSample> = r
            .errors
            .iter()
            .filter(|e| e.kind.starts_with("http 5"))
            .collect();
        if !faults.is_empty() {
            failures.push(format!(
                "imd answered {} reconnection handshake(s) with a server error: {}",
                faults.iter().map(|e| e.count).sum::<u64>(),
                by_cause(&faults)
            ));
        }
    }
    let m = &r.messages;
    let scheduled = m.sent.saturating_sub(m.replies);
    if r.run.scenario != "idle"
        && m.intended > 0
        && (scheduled as f64) < MIN_SENT_SHARE * m.intended as f64
    {
        let mut causes = Vec::new();
        if c.opened < c.target {
            causes.push(format!(
                "{} of {} connections never opened, so their messages were never sent \
                 (above)",
                c.target - c.opened,
                c.target
            ));
        }
        if c.dropped > 0 {
            causes.push(format!(
                "connections were dropped {} time(s), and a sender sends nothing until it \
                 is back",
                c.dropped
            ));
        }
        if causes.is_empty() {
            causes.push(
                "every connection was open, so imbench's sends were held up: imd read them \
                 slowly (writes blocked), or the agents were short of CPU; add agents \
                 (--local-agents, --agents) or lower --rate"
                    .to_owned(),
            );
        }
        failures.push(format!(
            "sent {scheduled} of the {} messages the plan intended ({:.1}%, under {:.0}%; \
             asked {} msg/s, sent {:.0} msg/s){}",
            m.intended,
            100.0 * scheduled as f64 / m.intended as f64,
            100.0 * MIN_SENT_SHARE,
            r.run.rate,
            r.throughput.sent_per_s,
            colon_list(&causes)
        ));
    }
    if m.refused > 0 {
        let kinds = kinds_with(r, |k| k.starts_with("refused "));
        failures.push(format!(
            "imd refused {} send(s): {}",
            m.refused,
            by_cause(&kinds)
        ));
    }
    if m.server_errors > 0 {
        let kinds = kinds_with(r, |k| k.starts_with("server ") || k == "bad frame");
        failures.push(format!(
            "imd answered {} frame(s) with an error not tied to a send, or sent frames \
             imbench could not read: {}",
            m.server_errors,
            by_cause(&kinds)
        ));
    }
    if let Some(s) = &r.service {
        if s.close_errors > 0 {
            let kinds = kinds_with(r, |k| k == "close");
            failures.push(format!(
                "{} conversation close call(s) failed: {}",
                s.close_errors,
                by_cause(&kinds)
            ));
        }
        // The cap check holds whether or not delivery is verified.
        if s.over_cap > 0 {
            failures.push(format!(
                "an agent held more open conversations than --max-open {} ({} time(s) over; \
                 at most {} at once): see the `over cap` error sample",
                s.max_open, s.over_cap, s.max_open_per_agent
            ));
        }
    }
    if r.run.verify {
        if m.lost > 0 {
            failures.push(format!(
                "{} acknowledged message(s) never reached the recipient",
                m.lost
            ));
        }
        if let Some(s) = r.service.as_ref().filter(|s| s.misrouted > 0) {
            failures.push(format!(
                "{} acknowledged customer message(s) missed the agent their conversation was \
                 with (by its events) and reached another agent",
                s.misrouted
            ));
        }
        if m.lost_echo > 0 {
            failures.push(format!(
                "{} acknowledged message(s) never reached the sender's own device",
                m.lost_echo
            ));
        }
    }
    failures
}

/// Whether an error kind is a failed connection attempt (see `dial::DialError`), or a
/// connection the run never got to.
pub(crate) fn is_handshake(kind: &str) -> bool {
    kind.starts_with("http ")
        || matches!(
            kind,
            "tcp connect" | "timeout" | "handshake" | "token" | "not attempted"
        )
}

/// What an error kind most likely means, and what to change.
fn hint(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "http 429" => {
            "imd's per-IP connect limit turned them away: raise imd's --connect-rate and \
             --connect-burst (20/s and 100 by default; 0 turns the limit off), or spread the \
             connections over more source addresses with imbench's --source-ips"
        }
        "http 401" | "http 403" => {
            "imd did not take the token: give imbench the --token-secret imd runs with"
        }
        "http 404" => "no WebSocket endpoint there: check --target",
        k if k.starts_with("http 5") || k == "refused internal" || k == "server internal" => {
            "a server fault in imd: see its log"
        }
        "tcp connect" => {
            "nothing accepted the connection, or this machine ran out of ports or file \
             descriptors: check --target and that imd is up, `ulimit -n`, or add --source-ips"
        }
        "timeout" => {
            "no handshake within --connect-timeout: imd or this machine is overloaded; \
             lower --ramp or raise --connect-timeout"
        }
        "not attempted" => {
            "the run stopped before their turn in the ramp (stopped early, or it overran)"
        }
        "refused rate_limited" | "server rate_limited" => {
            "imd's per-user send limit (read receipts count too): raise imd's --send-rate \
             and --send-burst (0 turns the limit off), or spread --rate over more \
             --connections"
        }
        "bad frame" => "imd and imbench disagree on the protocol: are they the same version?",
        _ => return None,
    })
}

/// `kind ×count (hint)` for each, `; `-separated; without a hint, the kind's sample.
fn by_cause(errors: &[&ErrorSample]) -> String {
    let mut parts = Vec::with_capacity(errors.len());
    for e in errors {
        parts.push(match hint(&e.kind) {
            Some(h) => format!("{} ×{} ({h})", e.kind, e.count),
            None => format!("{} ×{} (e.g. {})", e.kind, e.count, e.sample),
        });
    }
    if parts.is_empty() {
        "no sample was kept".to_owned()
    } else {
        parts.join("; ")
    }
}

fn kinds_with(r: &Report, keep: impl Fn(&str) -> bool) -> Vec<&ErrorSample> {
    r.errors.iter().filter(|e| keep(&e.kind)).collect()
}

/// `: a; b` after a headline, or nothing.
fn colon_list(causes: &[String]) -> String {
    if causes.is_empty() {
        String::new()
    } else {
        format!(": {}", causes.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{AgentSection, ServiceSection, add_error};

    /// A clean verified chat of `target` connections at 100 msg/s for 10 s.
    fn clean(target: u64) -> Report {
        let mut r = Report::default();
        r.run.scenario = "chat".into();
        r.run.rate = 100.0;
        r.run.duration_s = 10.0;
        r.run.verify = true;
        r.connections.target = target;
        r.connections.opened = target;
        r.messages.intended = 1000;
        r.messages.sent = 1000;
        r.throughput.sent_per_s = 100.0;
        r.agents.push(AgentSection {
            status: "ok".into(),
            connections: target,
            ..Default::default()
        });
        r
    }

    fn error(r: &mut Report, kind: &str, count: u64) {
        add_error(&mut r.errors, kind, count, &format!("a {kind}"));
    }

    #[test]
    fn a_run_that_happened_as_planned_passes() {
        assert_eq!(verdict(&clean(20)), Vec::<String>::new());
        // drops ridden out are not a failure, nor is 90% of the schedule
        let mut r = clean(20);
        r.connections.dropped = 3;
        r.connections.reconnects = 3;
        r.messages.sent = 900;
        error(&mut r, "closed", 3);
        error(&mut r, "tcp connect", 7);
        assert_eq!(verdict(&r), Vec::<String>::new());
        // idle runs send nothing, by design
        let mut r = clean(20);
        r.run.scenario = "idle".into();
        r.messages.sent = 0;
        assert!(verdict(&r).is_empty());
    }

    #[test]
    fn connections_refused_by_the_connect_limit_fail_with_the_cause_and_the_fix() {
        // the run: 139 of 2,000 opened, 79 msg/s instead of 1,000
        let mut r = clean(2000);
        r.run.rate = 1000.0;
        r.messages.intended = 10_000;
        r.messages.sent = 790;
        r.throughput.sent_per_s = 79.0;
        r.connections.opened = 139;
        r.connections.failed = 1861;
        error(&mut r, "http 429", 1861);
        let f = verdict(&r);
        assert_eq!(f.len(), 2, "{f:#?}");
        assert!(f[0].starts_with("opened 139 of 2000 connections"), "{f:#?}");
        for needle in [
            "http 429 ×1861",
            "--connect-rate",
            "--connect-burst",
            "--source-ips",
        ] {
            assert!(f[0].contains(needle), "{needle} missing: {}", f[0]);
        }
        assert!(
            f[1].starts_with("sent 790 of the 10000 messages"),
            "{}",
            f[1]
        );
        assert!(
            f[1].contains("1861 of 2000 connections never opened"),
            "{}",
            f[1]
        );
    }

    #[test]
    fn a_sender_short_of_its_schedule_fails_even_with_every_connection_open() {
        let mut r = clean(20);
        r.messages.sent = 899;
        let f = verdict(&r);
        assert_eq!(f.len(), 1, "{f:#?}");
        assert!(f[0].contains("(89.9%, under 90%"), "{}", f[0]);
        assert!(f[0].contains("lower --rate"), "{}", f[0]);
        // replies are not on the schedule: they cannot make up for it
        r.messages.sent = 1_500;
        r.messages.replies = 700;
        assert_eq!(verdict(&r).len(), 1);
    }

    #[test]
    fn a_dead_agent_fails_with_its_connections() {
        let mut r = clean(20);
        r.agents[0].connections = 10;
        r.agents.push(AgentSection {
            agent: 1,
            status: "died without a report (signal: 9 (SIGKILL))".into(),
            connections: 10,
            ..Default::default()
        });
        r.connections.opened = 10;
        r.messages.sent = 500;
        let f = verdict(&r);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(f[0].starts_with("agent 1: died"), "{}", f[0]);
        assert!(f[0].contains("its 10 connection(s)"), "{}", f[0]);
        assert!(f[1].contains("10 were planned on agent(s) that never reported"));
        assert!(f[2].starts_with("sent 500 of the 1000"), "{}", f[2]);
    }

    #[test]
    fn refusals_and_server_errors_fail_with_their_kinds() {
        let mut r = clean(20);
        r.messages.refused = 5;
        error(&mut r, "refused rate_limited", 5);
        r.messages.server_errors = 2;
        error(&mut r, "server internal", 1);
        error(&mut r, "bad frame", 1);
        error(&mut r, "http 500", 4);
        let f = verdict(&r);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(f[0].contains("reconnection handshake(s)") && f[0].contains("http 500 ×4"));
        assert!(f[1].starts_with("imd refused 5 send(s): refused rate_limited ×5"));
        assert!(f[1].contains("--send-rate"), "{}", f[1]);
        assert!(
            f[2].contains("server internal ×1 (a server fault in imd"),
            "{}",
            f[2]
        );
        assert!(f[2].contains("bad frame ×1"), "{}", f[2]);
    }

    #[test]
    fn unknown_kinds_show_their_sample() {
        let mut r = clean(20);
        r.messages.refused = 1;
        error(&mut r, "refused forbidden", 1);
        assert!(verdict(&r)[0].contains("refused forbidden ×1 (e.g. a refused forbidden)"));
    }

    #[test]
    fn loss_counts_only_when_verifying_and_the_cap_always() {
        let mut r = clean(20);
        r.messages.lost = 2;
        r.service = Some(ServiceSection {
            max_open: 2,
            over_cap: 1,
            close_errors: 1,
            ..Default::default()
        });
        error(&mut r, "close", 1);
        let f = verdict(&r);
        assert_eq!(f.len(), 3, "{f:#?}");
        assert!(f[0].starts_with("1 conversation close call(s) failed: close ×1"));
        assert!(f[1].contains("--max-open 2"));
        assert!(f[2].starts_with("2 acknowledged message(s) never reached"));
        r.run.verify = false;
        assert_eq!(verdict(&r).len(), 2);
    }
}
