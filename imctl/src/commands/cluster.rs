//! `imctl cluster`.

use shared::admin::NodeInfo;
use shared::time::now_ms;

use crate::client::Client;
use crate::output::{Out, Table, duration};

pub(super) async fn run(client: &Client, out: &Out) -> anyhow::Result<()> {
    let cluster = client.cluster().await?;
    if out.json {
        for n in &cluster.nodes {
            out.json_line(n)?;
        }
        return Ok(());
    }
    out.table(&table(&cluster.nodes, now_ms()), "no live nodes")?;
    if let Some(warning) = rpc_mismatch(&cluster.nodes) {
        eprintln!("imctl: {warning}");
    }
    Ok(())
}

/// A warning when the nodes speak different RPC versions (they refuse each other's
/// links), naming each node's; `None` when they agree. Nodes that did not report one
/// (0) are left out.
pub(crate) fn rpc_mismatch(nodes: &[NodeInfo]) -> Option<String> {
    let known: Vec<&NodeInfo> = nodes.iter().filter(|n| n.rpc_version != 0).collect();
    let first = known.first()?.rpc_version;
    if known.iter().all(|n| n.rpc_version == first) {
        return None;
    }
    let each: Vec<String> = known
        .iter()
        .map(|n| format!("{}={}", n.node_id, n.rpc_version))
        .collect();
    Some(format!(
        "RPC VERSION MISMATCH ({}): nodes of different rpc versions refuse each other's \
         links; run one imd version on every node",
        each.join(", ")
    ))
}

/// A node's RPC version, flagged with `!` when the cluster does not agree on one.
fn rpc_cell(n: &NodeInfo, mismatch: bool) -> String {
    match (n.rpc_version, mismatch) {
        (0, _) => "-".to_owned(),
        (v, true) => format!("{v}!"),
        (v, false) => v.to_string(),
    }
}

/// A node's roles, short: `all` when it runs every role.
pub(crate) fn roles(n: &NodeInfo) -> String {
    let all = ["gateway", "dispatcher", "worker"];
    if all.iter().all(|r| n.roles.iter().any(|x| x == r)) && n.roles.len() == all.len() {
        "all".to_owned()
    } else {
        n.roles.join(",")
    }
}

/// The `cluster` table, with a total row when there are several nodes.
fn table(nodes: &[NodeInfo], now: i64) -> Table {
    let mut t = Table::new(&[
        "NODE",
        "ROLES",
        "LISTEN",
        "VERSION",
        "RPC",
        "UPTIME",
        "CONNS",
        "UNACKED",
        "MSG/S",
        "COMMITTED",
        "PUSHES",
        "RETRANSMITS",
    ]);
    let mismatch = rpc_mismatch(nodes).is_some();
    for n in nodes {
        t.row(vec![
            n.node_id.clone(),
            roles(n),
            n.listen.clone(),
            n.version.clone(),
            rpc_cell(n, mismatch),
            duration(now - n.started_at),
            n.connections.to_string(),
            n.unacked.to_string(),
            n.committed_per_s.to_string(),
            n.committed.to_string(),
            n.pushes.to_string(),
            n.retransmits.to_string(),
        ]);
    }
    if nodes.len() > 1 {
        let sum = |f: fn(&NodeInfo) -> i128| nodes.iter().map(f).sum::<i128>().to_string();
        t.row(vec![
            "TOTAL".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            sum(|n| n.connections.into()),
            sum(|n| n.unacked.into()),
            sum(|n| n.committed_per_s.into()),
            sum(|n| n.committed.into()),
            sum(|n| n.pushes.into()),
            sum(|n| n.retransmits.into()),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, conns: u64) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            roles: vec!["gateway".into(), "dispatcher".into(), "worker".into()],
            listen: "127.0.0.1:8080".into(),
            version: "0.1.0".into(),
            rpc_version: 2,
            started_at: 0,
            connections: conns,
            unacked: 2,
            committed: 100,
            committed_per_s: 7,
            pushes: 300,
            retransmits: 1,
        }
    }

    #[test]
    fn cluster_table() {
        let mut gw = node("imd-2", 5);
        gw.roles = vec!["gateway".into()];
        let lines = table(&[node("imd-1", 3), gw], 3_723_000).render(false);
        assert_eq!(
            lines[0],
            "NODE   ROLES    LISTEN          VERSION  RPC  UPTIME  CONNS  UNACKED  MSG/S  COMMITTED  PUSHES  RETRANSMITS"
        );
        assert_eq!(
            lines[1],
            "imd-1  all      127.0.0.1:8080  0.1.0    2    1h02m   3      2        7      100        300     1"
        );
        assert!(lines[2].starts_with("imd-2  gateway  "), "{}", lines[2]);
        assert!(
            lines[3].starts_with("TOTAL")
                && lines[3].ends_with("8      4        14     200        600     2"),
            "{}",
            lines[3]
        );
    }

    #[test]
    fn rpc_version_mismatches_are_flagged() {
        let mut old = node("imd-2", 1);
        old.rpc_version = 1;
        let mut unknown = node("imd-3", 1);
        unknown.rpc_version = 0;
        let agree = [node("imd-1", 1), unknown.clone()];
        assert_eq!(
            rpc_mismatch(&agree),
            None,
            "an unknown version is no mismatch"
        );
        let nodes = [node("imd-1", 1), old, unknown];
        let warning = rpc_mismatch(&nodes).expect("a mismatch");
        assert!(warning.contains("imd-1=2, imd-2=1"), "{warning}");
        let lines = table(&nodes, 0).render(false);
        assert!(lines[1].contains(" 2!  "), "{}", lines[1]);
        assert!(lines[2].contains(" 1!  "), "{}", lines[2]);
        assert!(lines[3].contains(" -    "), "{}", lines[3]);
    }
}
