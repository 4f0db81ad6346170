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
    out.table(&table(&cluster.nodes, now_ms()), "no live nodes")
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
        "UPTIME",
        "CONNS",
        "UNACKED",
        "MSG/S",
        "COMMITTED",
        "PUSHES",
        "RETRANSMITS",
    ]);
    for n in nodes {
        t.row(vec![
            n.node_id.clone(),
            roles(n),
            n.listen.clone(),
            n.version.clone(),
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
            "NODE   ROLES    LISTEN          VERSION  UPTIME  CONNS  UNACKED  MSG/S  COMMITTED  PUSHES  RETRANSMITS"
        );
        assert_eq!(
            lines[1],
            "imd-1  all      127.0.0.1:8080  0.1.0    1h02m   3      2        7      100        300     1"
        );
        assert!(lines[2].starts_with("imd-2  gateway  "), "{}", lines[2]);
        assert!(
            lines[3].starts_with("TOTAL")
                && lines[3].ends_with("8      4        14     200        600     2"),
            "{}",
            lines[3]
        );
    }
}
