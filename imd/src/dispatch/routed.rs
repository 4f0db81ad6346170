//! The cluster's dispatcher: committed messages are queued, and one routing task reads,
//! per batch, the connection routes of every recipient (a Redis hash per user: device →
//! node) and hands each live worker one [`Delivery`] per message, in commit order (see
//! [`Workers`]). A route naming a node it does not know yet (a worker that just
//! started) makes it follow discovery at once, at most every [`REFRESH_AT_MOST_EVERY`];
//! a route naming a dead node is skipped, and the dead node's cleanup removes it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Workers;
use crate::business::Deliver;
use crate::store::{Committed, RedisStore};
use crate::worker::{Delivery, Notice};

/// Committed messages waiting for their routes; beyond this they are dropped from
/// pushing (they are in every inbox already, and the devices catch up with `sync`).
const ROUTING_QUEUE: usize = 64 * 1024;
/// Most messages routed with one round of route lookups.
const ROUTING_BATCH: usize = 256;
/// How often a route to an unknown node may trigger a discovery refresh.
const REFRESH_AT_MOST_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Fans committed messages out to the workers that hold their recipients' devices.
pub struct Routed {
    queue: mpsc::Sender<Committed>,
    workers: Arc<Workers>,
    /// Ends the routing task once its queue is empty (see [`Routed::finish`]).
    finish: CancellationToken,
    routing: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Routed {
    /// A dispatcher that finds recipients' devices through the connection routes in
    /// `store` and reaches them through `workers`. Its routing task ends with `stop`.
    pub fn start(store: Arc<RedisStore>, workers: Arc<Workers>, stop: CancellationToken) -> Self {
        let (queue, rx) = mpsc::channel(ROUTING_QUEUE);
        let finish = CancellationToken::new();
        let routing = tokio::spawn(route_loop(store, workers.clone(), rx, stop, finish.clone()));
        Self {
            queue,
            workers,
            finish,
            routing: std::sync::Mutex::new(Some(routing)),
        }
    }

    /// Routes what is queued, then stops taking messages (later ones are dropped, and
    /// their workers told to catch up). Returns once every queued message has been
    /// handed to its workers' delivery queues. For shutdown, after the last commit.
    pub async fn finish(&self) {
        self.finish.cancel();
        // Held only to take the handle out.
        let task = self
            .routing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Deliver for Routed {
    fn deliver(&self, msg: &Committed) {
        if msg.recipients.is_empty() {
            return;
        }
        if self.queue.try_send(msg.clone()).is_err() {
            metrics::counter!("imd_routing_dropped_total").increment(1);
            // Any worker may hold a recipient's device.
            self.workers.catch_up_everywhere();
        }
    }

    fn lost(&self) {
        self.workers.catch_up_everywhere();
    }

    /// To every live worker, at once: a notice has no inbox entry to route by, and
    /// looking its users' routes up would cost a Redis round trip for a frame that is
    /// smaller than the lookup.
    fn notify(&self, uids: Vec<String>, frame: String) {
        self.workers.notify(&Notice { uids, frame });
    }
}

/// Routes queued messages in batches: one round of route lookups per batch, then one
/// delivery per (message, worker) in commit order. Ends with `stop`, or once the queue
/// is empty after `finish`.
async fn route_loop(
    store: Arc<RedisStore>,
    workers: Arc<Workers>,
    mut rx: mpsc::Receiver<Committed>,
    stop: CancellationToken,
    finish: CancellationToken,
) {
    let mut batch = Vec::with_capacity(ROUTING_BATCH);
    let mut refreshed = std::time::Instant::now() - REFRESH_AT_MOST_EVERY;
    let mut finishing = false;
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, ROUTING_BATCH) => n,
            _ = finish.cancelled(), if !finishing => {
                // What is queued is still received; then recv_many returns 0.
                rx.close();
                finishing = true;
                continue;
            }
            _ = stop.cancelled() => break,
        };
        if n == 0 {
            break;
        }
        let uids: Vec<String> = batch
            .iter()
            .flat_map(|m| m.recipients.iter().map(|(u, _)| u.clone()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let routes = match store.routes(&uids).await {
            Ok(r) => r,
            Err(e) => {
                // The messages are in the inboxes, and any worker may hold a device
                // of a recipient: every worker looks.
                tracing::warn!(error = %e, messages = n, "route lookup failed; pushes skipped");
                metrics::counter!("imd_routing_failures_total").increment(1);
                workers.catch_up_everywhere();
                batch.clear();
                continue;
            }
        };
        let nodes_of: HashMap<&str, Vec<&str>> = uids
            .iter()
            .zip(&routes)
            .map(|(uid, r)| {
                let mut nodes: Vec<&str> = r.iter().map(|(_, n)| n.as_str()).collect();
                nodes.sort_unstable();
                nodes.dedup();
                (uid.as_str(), nodes)
            })
            .collect();
        let unknown = nodes_of.values().flatten().any(|n| !workers.is_live(n));
        if unknown && refreshed.elapsed() >= REFRESH_AT_MOST_EVERY {
            refreshed = std::time::Instant::now();
            workers.refresh().await;
        }
        for msg in batch.drain(..) {
            for (node, to) in split_by_node(&msg.recipients, &nodes_of) {
                if !workers.deliver(
                    node,
                    Delivery {
                        msg: msg.json.clone(),
                        to,
                    },
                ) {
                    metrics::counter!("imd_routing_dead_routes_total").increment(1);
                }
            }
        }
    }
}

/// Groups `recipients` by the nodes their devices are on, in first-seen node order.
fn split_by_node<'a>(
    recipients: &[(String, u64)],
    nodes_of: &HashMap<&str, Vec<&'a str>>,
) -> Vec<(&'a str, Vec<(String, u64)>)> {
    let mut out: Vec<(&'a str, Vec<(String, u64)>)> = Vec::new();
    for (uid, useq) in recipients {
        for node in nodes_of.get(uid.as_str()).into_iter().flatten() {
            match out.iter_mut().find(|(n, _)| n == node) {
                Some((_, to)) => to.push((uid.clone(), *useq)),
                None => out.push((node, vec![(uid.clone(), *useq)])),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_grouped_per_node_once_per_user() {
        let nodes_of = HashMap::from([("a", vec!["n1", "n2"]), ("b", vec!["n2"]), ("c", vec![])]);
        let recipients = vec![
            ("a".to_owned(), 7),
            ("b".to_owned(), 3),
            ("c".to_owned(), 1),
        ];
        let split = split_by_node(&recipients, &nodes_of);
        assert_eq!(
            split,
            vec![
                ("n1", vec![("a".to_owned(), 7)]),
                ("n2", vec![("a".to_owned(), 7), ("b".to_owned(), 3)]),
            ]
        );
    }
}
