//! The cluster's dispatcher: committed messages and notices (`read`, `typing` frames)
//! are queued, and one routing task reads, per batch, the connection routes of every
//! recipient (a Redis hash per user: device → node) and hands each live worker one
//! [`Delivery`] per message, and one [`Notice`] per notice, in queue order (see
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

/// What the routing task routes.
enum Routable {
    /// A committed message, to its recipients.
    Message(Committed),
    /// A frame with no inbox entry, to every device of its users.
    Notice(Notice),
}

impl Routable {
    fn uids(&self) -> impl Iterator<Item = &String> {
        let (messages, notices) = match self {
            Routable::Message(m) => (Some(m.recipients.iter().map(|(u, _)| u)), None),
            Routable::Notice(n) => (None, Some(n.uids.iter())),
        };
        messages
            .into_iter()
            .flatten()
            .chain(notices.into_iter().flatten())
    }
}

/// Fans committed messages out to the workers that hold their recipients' devices.
pub struct Routed {
    queue: mpsc::Sender<Routable>,
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
        if self.queue.try_send(Routable::Message(msg.clone())).is_err() {
            metrics::counter!("imd_routing_dropped_total").increment(1);
            // Any worker may hold a recipient's device.
            self.workers.catch_up_everywhere();
        }
    }

    fn lost(&self) {
        self.workers.catch_up_everywhere();
    }

    /// Routed like a message, in the same queue: only the workers that hold a device
    /// of its users get it, and a route to a worker this node has not discovered yet
    /// makes it look. A full queue drops it (a notice has nothing to catch up from).
    fn notify(&self, uids: Vec<String>, frame: String) {
        if uids.is_empty() {
            return;
        }
        let notice = Routable::Notice(Notice { uids, frame });
        if self.queue.try_send(notice).is_err() {
            metrics::counter!("imd_routing_notices_dropped_total").increment(1);
        }
    }
}

/// Routes queued messages and notices in batches: one round of route lookups per batch,
/// then one delivery per (message, worker) in commit order, and one notice per (notice,
/// worker), in queue order. Ends with `stop`, or once the queue
/// is empty after `finish`.
async fn route_loop(
    store: Arc<RedisStore>,
    workers: Arc<Workers>,
    mut rx: mpsc::Receiver<Routable>,
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
            .flat_map(Routable::uids)
            .cloned()
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
        for item in batch.drain(..) {
            match item {
                Routable::Message(msg) => {
                    // Read after the committing node verified it (the commit task
                    // checks before it hands a message over), so never older than the
                    // state the message was written in.
                    let generation = store.known_generation();
                    for (node, to) in split_by_node(&msg.recipients, &nodes_of) {
                        let d = Delivery {
                            msg: msg.json.clone(),
                            to,
                            generation: Some(generation.as_str().to_owned()),
                        };
                        if !workers.deliver(node, d) {
                            metrics::counter!("imd_routing_dead_routes_total").increment(1);
                        }
                    }
                }
                Routable::Notice(n) => {
                    for (node, uids) in split_by_node(&n.uids, &nodes_of) {
                        let n = Notice {
                            uids,
                            frame: n.frame.clone(),
                        };
                        if !workers.notify(node, n) {
                            metrics::counter!("imd_routing_dead_routes_total").increment(1);
                        }
                    }
                }
            }
        }
    }
}

/// A recipient of a message (with its `useq`) or of a notice, by its uid.
trait Recipient: Clone {
    fn uid(&self) -> &str;
}

impl Recipient for (String, u64) {
    fn uid(&self) -> &str {
        &self.0
    }
}

impl Recipient for String {
    fn uid(&self) -> &str {
        self
    }
}

/// Groups `recipients` by the nodes their devices are on, in first-seen node order.
fn split_by_node<'a, R: Recipient>(
    recipients: &[R],
    nodes_of: &HashMap<&str, Vec<&'a str>>,
) -> Vec<(&'a str, Vec<R>)> {
    let mut out: Vec<(&'a str, Vec<R>)> = Vec::new();
    for r in recipients {
        for node in nodes_of.get(r.uid()).into_iter().flatten() {
            match out.iter_mut().find(|(n, _)| n == node) {
                Some((_, to)) => to.push(r.clone()),
                None => out.push((node, vec![r.clone()])),
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
