//! `imctl shop …`: a shop's agents with their availability and load (`agents`), its
//! figures (`stats`: queue, first-response times, ratings), and its settings (`show`,
//! `set`: agents, cap, welcome and away messages).
//!
//! imd's `PUT /admin/v1/shops/{shop}/agents` replaces the agents and every setting at
//! once, so each change here goes through [`Client::update_shop`], which reads the shop
//! first and writes back what it was not asked to change.

use serde_json::json;
use shared::admin::{AgentStats, ShopAgents, ShopStats};

use super::plural;
use crate::cli::{ShopCmd, shop_message};
use crate::client::Client;
use crate::output::{Out, Paint, Table, body_text, latency};

pub(super) async fn run(client: &Client, out: &Out, cmd: ShopCmd) -> anyhow::Result<()> {
    match cmd {
        ShopCmd::Agents { shop, uids, clear } => {
            if !uids.is_empty() || clear {
                client.set_shop_agents(&shop, uids).await?;
            }
            agents(client, out, &shop).await
        }
        ShopCmd::Stats { shop } => stats(client, out, shop).await,
        ShopCmd::Show { shop } => {
            let settings = client.shop(&shop).await?;
            if out.json {
                return out.json_line(&with_shop(&shop, &settings, None));
            }
            out.table(&settings_table(&shop, &settings), "")
        }
        ShopCmd::Set {
            shop,
            max_open,
            welcome,
            no_welcome,
            away,
            no_away,
        } => {
            let message = |text: Option<String>, none: bool| match (text, none) {
                (Some(t), _) => Some(Some(shop_message(&t))),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let (welcome, away) = (message(welcome, no_welcome), message(away, no_away));
            let (settings, created) = client
                .update_shop(&shop, |s| {
                    if let Some(n) = max_open {
                        s.max_open = n;
                    }
                    if let Some(w) = welcome {
                        s.welcome = w;
                    }
                    if let Some(a) = away {
                        s.away = a;
                    }
                })
                .await?;
            if out.json {
                return out.json_line(&with_shop(&shop, &settings, Some(created)));
            }
            let verb = if created { "created" } else { "updated" };
            let mut line = format!(
                "{verb} shop {}: {}",
                out.paint(Paint::Cyan, &shop),
                describe(&settings)
            );
            if settings.agents.is_empty() {
                line.push_str(&format!(
                    "; add agents with `imctl shop agents {shop} UID…`"
                ));
            }
            out.line(&line)
        }
    }
}

/// `shop agents SHOP`: each agent's availability and load, from the shop's figures.
async fn agents(client: &Client, out: &Out, shop: &str) -> anyhow::Result<()> {
    let stats = client.shop_stats(shop).await?;
    if out.json {
        return out.json_line(&json!({
            "shop": stats.shop,
            "max_open": stats.max_open,
            "agents": stats.agents,
        }));
    }
    out.table(
        &agents_table(&stats.agents, stats.max_open),
        &format!("shop {shop} has no agents"),
    )
}

/// `shop stats [SHOP]`: one shop's figures, or every shop's.
async fn stats(client: &Client, out: &Out, shop: Option<String>) -> anyhow::Result<()> {
    let all = match &shop {
        Some(shop) => vec![client.shop_stats(shop).await?],
        None => client.shops_stats(&client.shops().await?).await?,
    };
    if out.json {
        for s in &all {
            out.json_line(s)?;
        }
        return Ok(());
    }
    out.table(&stats_table(&all), "no shops")
}

/// The shop's settings as `shop show --json` and `shop set --json` print them.
fn with_shop(shop: &str, settings: &ShopAgents, created: Option<bool>) -> serde_json::Value {
    let mut v = json!({"shop": shop});
    if let (Some(o), Ok(serde_json::Value::Object(s))) =
        (v.as_object_mut(), serde_json::to_value(settings))
    {
        o.extend(s);
        if let Some(c) = created {
            o.insert("created".into(), c.into());
        }
    }
    v
}

/// The cap as a cell: the number, or `-` for none.
pub(crate) fn cap(max_open: u32) -> String {
    if max_open == 0 {
        "-".into()
    } else {
        max_open.to_string()
    }
}

/// An agent's load against the cap: `1/3`, or `1/-` with no cap.
pub(crate) fn load(open: u64, max_open: u32) -> String {
    format!("{open}/{}", cap(max_open))
}

/// An agent's availability: `available`, `away`, or `-` while offline (away or not,
/// an offline agent takes nothing).
pub(crate) fn status(a: &AgentStats) -> &'static str {
    match (a.online, a.available) {
        (false, _) => "-",
        (true, true) => "available",
        (true, false) => "away",
    }
}

/// `yes` or `no`.
pub(crate) fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A percentile of the first-response times, or `-` before any answer.
pub(crate) fn percentile(ms: Option<u64>) -> String {
    ms.map_or_else(|| "-".into(), latency)
}

/// The mean rating, one decimal, or `-` before any.
pub(crate) fn rating(avg: Option<f64>) -> String {
    avg.map_or_else(|| "-".into(), |a| format!("{a:.1}"))
}

/// The `shop agents` table.
fn agents_table(agents: &[AgentStats], max_open: u32) -> Table {
    let mut t = Table::new(&["AGENT", "ONLINE", "STATUS", "OPEN/CAP"]);
    for a in agents {
        t.row(vec![
            a.uid.clone(),
            yes_no(a.online).into(),
            status(a).into(),
            load(a.open, max_open),
        ]);
    }
    t
}

/// The `shop stats` table, one row per shop.
fn stats_table(shops: &[ShopStats]) -> Table {
    let mut t = Table::new(&[
        "SHOP",
        "AGENTS",
        "ONLINE",
        "AVAILABLE",
        "OPEN",
        "WAITING",
        "CAP",
        "ANSWERED",
        "P50",
        "P90",
        "P99",
        "RATINGS",
        "AVG",
    ]);
    for s in shops {
        let f = &s.first_response_ms;
        t.row(vec![
            s.shop.clone(),
            s.agents.len().to_string(),
            s.agents_online.to_string(),
            s.agents_available.to_string(),
            s.open.to_string(),
            s.waiting.to_string(),
            cap(s.max_open),
            f.count.to_string(),
            percentile(f.p50),
            percentile(f.p90),
            percentile(f.p99),
            s.rating.count.to_string(),
            rating(s.rating.avg),
        ]);
    }
    t
}

/// A message setting as a cell: its text, or `-`.
fn message_cell(m: Option<&serde_json::Value>) -> String {
    m.map_or_else(|| "-".into(), body_text)
}

/// The `shop show` table.
fn settings_table(shop: &str, s: &ShopAgents) -> Table {
    let mut t = Table::new(&["SHOP", "AGENTS", "CAP", "WELCOME", "AWAY"]);
    t.row(vec![
        shop.to_owned(),
        if s.agents.is_empty() {
            "-".into()
        } else {
            s.agents.join(",")
        },
        cap(s.max_open),
        message_cell(s.welcome.as_ref()),
        message_cell(s.away.as_ref()),
    ]);
    t
}

/// A shop's settings in words, for `shop set`.
fn describe(s: &ShopAgents) -> String {
    let cap = match s.max_open {
        0 => "no cap".to_owned(),
        n => format!("at most {n} open per agent"),
    };
    let message = |what: &str, m: Option<&serde_json::Value>| match m {
        Some(m) => format!("{what} {:?}", body_text(m)),
        None => format!("no {what} message"),
    };
    format!(
        "{}, {cap}, {}, {}",
        plural(s.agents.len(), "agent", "agents"),
        message("welcome", s.welcome.as_ref()),
        message("away", s.away.as_ref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::admin::{FirstResponse, RatingStats};

    fn agent(uid: &str, online: bool, available: bool, open: u64) -> AgentStats {
        AgentStats {
            uid: uid.into(),
            online,
            available,
            open,
        }
    }

    #[test]
    fn agents_table_shows_availability_and_load() {
        let agents = [
            agent("ann", true, true, 3),
            agent("bob", true, false, 1),
            agent("cy", false, false, 0),
        ];
        assert_eq!(
            agents_table(&agents, 3).render(false),
            vec![
                "AGENT  ONLINE  STATUS     OPEN/CAP",
                "ann    yes     available  3/3",
                "bob    yes     away       1/3",
                "cy     no      -          0/3",
            ]
        );
        assert_eq!(
            agents_table(&agents[..1], 0).render(false)[1],
            "ann    yes     available  3/-"
        );
    }

    #[test]
    fn stats_table_before_and_after_answers() {
        let shop = |name: &str, answered: bool| ShopStats {
            shop: name.into(),
            agents_online: 1,
            agents_available: 1,
            open: 2,
            waiting: 4,
            max_open: if answered { 2 } else { 0 },
            first_response_ms: FirstResponse {
                count: u64::from(answered) * 7,
                p50: answered.then_some(1_250),
                p90: answered.then_some(4_768),
                p99: answered.then_some(90_000),
            },
            rating: RatingStats {
                count: u64::from(answered) * 2,
                avg: answered.then_some(4.5),
            },
            agents: vec![agent("ann", true, true, 2), agent("bob", false, false, 0)],
        };
        assert_eq!(
            stats_table(&[shop("s1", true), shop("new-shop", false)]).render(false),
            vec![
                "SHOP      AGENTS  ONLINE  AVAILABLE  OPEN  WAITING  CAP  ANSWERED  P50   P90   P99    RATINGS  AVG",
                "s1        2       1       1          2     4        2    7         1.2s  4.8s  1m30s  2        4.5",
                "new-shop  2       1       1          2     4        -    0         -     -     -      0        -",
            ]
        );
    }

    #[test]
    fn settings_read_as_words_and_as_a_row() {
        let mut s = ShopAgents::agents(vec!["ann".into(), "bob".into()]);
        assert_eq!(
            describe(&s),
            "2 agents, no cap, no welcome message, no away message"
        );
        s.max_open = 3;
        s.welcome = Some(shop_message("Hi, how can we help?"));
        s.away = Some(json!({"text": "Back at 9", "img": 1}));
        assert_eq!(
            describe(&s),
            r#"2 agents, at most 3 open per agent, welcome "Hi, how can we help?", away "{\"img\":1,\"text\":\"Back at 9\"}""#
        );
        assert_eq!(
            settings_table("s1", &s).render(false),
            vec![
                r#"SHOP  AGENTS   CAP  WELCOME               AWAY"#,
                r#"s1    ann,bob  3    Hi, how can we help?  {"img":1,"text":"Back at 9"}"#,
            ]
        );
        assert_eq!(
            with_shop("s1", &s, Some(true)),
            json!({
                "shop": "s1",
                "agents": ["ann", "bob"],
                "max_open": 3,
                "welcome": {"text": "Hi, how can we help?"},
                "away": {"text": "Back at 9", "img": 1},
                "created": true,
            })
        );
    }
}
