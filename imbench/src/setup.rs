//! Set-up through imd's admin API before a run: the members of every group (`group`)
//! and the agents of every shop (`service`, with `--max-open` as the shop's
//! `max_open`), one `PUT` per unit, a few in flight.
//!
//! The coordinator calls it once, before any agent starts; it must not open
//! WebSockets or touch the load. A unit whose set-up fails fails the run before it
//! starts, with the status and body imd answered.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{StreamExt, TryStreamExt};
use shared::admin::{GroupMembers, ShopAgents};

use crate::cli::Scenario;
use crate::plan::{RunPlan, uid};

/// Set-up calls in flight at once.
const IN_FLIGHT: usize = 16;
/// Deadline of one admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What the set-up did.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetupDone {
    /// Groups or shops set.
    pub units: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// Sets up the plan's groups or shops (nothing for idle and chat).
pub async fn admin_setup(plan: &RunPlan) -> anyhow::Result<SetupDone> {
    if !matches!(plan.scenario, Scenario::Group | Scenario::Service) {
        return Ok(SetupDone::default());
    }
    let token = plan
        .admin_token
        .as_ref()
        .context("the set-up needs --admin-token")?
        .expose()
        .to_owned();
    let client = reqwest::Client::builder()
        .timeout(CALL_TIMEOUT)
        .build()
        .context("building the admin HTTP client")?;
    let started = Instant::now();
    let units = plan.units();
    futures_util::stream::iter(0..units)
        .map(|k| {
            let (url, body) = unit_request(plan, k);
            let request = client.put(&url).bearer_auth(&token).json(&body);
            async move {
                let response = request.send().await.with_context(|| format!("PUT {url}"))?;
                let status = response.status();
                if !status.is_success() {
                    let text = response.text().await.unwrap_or_default();
                    bail!("PUT {url} answered {status}: {}", text.trim());
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    Ok(SetupDone {
        units,
        elapsed: started.elapsed(),
    })
}

/// The admin call that sets up unit `k`: its URL and JSON body.
fn unit_request(plan: &RunPlan, k: u64) -> (String, serde_json::Value) {
    let unit = plan.unit();
    let first = k * unit;
    let end = (first + unit).min(plan.connections);
    let api = plan.api_for(k);
    let uids = |range: std::ops::Range<u64>| -> Vec<String> {
        range.map(|i| uid(&plan.run_id, i)).collect()
    };
    match plan.scenario {
        Scenario::Group => (
            format!(
                "{api}/admin/v1/groups/{}/members",
                crate::plan::group_name(&plan.run_id, k)
            ),
            serde_json::to_value(GroupMembers {
                members: uids(first..end),
            })
            .expect("a member list serializes"),
        ),
        _ => (
            format!(
                "{api}/admin/v1/shops/{}/agents",
                crate::plan::shop_id(&plan.run_id, k)
            ),
            serde_json::to_value(ShopAgents {
                max_open: plan.max_open,
                ..ShopAgents::agents(uids(first..(first + plan.shop_agents).min(end)))
            })
            .expect("an agent list serializes"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{RunPlan, Target};

    #[test]
    fn a_shops_agents_go_with_its_cap() {
        let mut plan = RunPlan {
            run_id: "r".into(),
            scenario: Scenario::Service,
            targets: vec![Target::parse("http://127.0.0.1:1").unwrap()],
            token_secret: "s".parse().unwrap(),
            connections: 10,
            ramp_per_s: 100.0,
            rate_per_s: 10.0,
            duration_ms: 1000,
            drain_ms: 1000,
            source_ips: Vec::new(),
            verify: true,
            connect_timeout_ms: 1000,
            heartbeat_ms: 0,
            lifetime_ms: 0,
            reconnect_max_ms: 2000,
            read_buffer: 4096,
            spread: false,
            read_receipts: false,
            api: None,
            admin_token: None,
            group_size: 3,
            shop_size: 5,
            shop_agents: 2,
            max_open: 3,
            close_after: 2,
        };
        let (url, body) = unit_request(&plan, 1);
        assert_eq!(url, "http://127.0.0.1:1/admin/v1/shops/brs1/agents");
        assert_eq!(
            body,
            serde_json::json!({"agents": ["bru5", "bru6"], "max_open": 3})
        );
        plan.max_open = 0;
        assert_eq!(unit_request(&plan, 0).1["max_open"], 0, "no cap");
    }
}
