//! Dispatcher role: turns each committed message into deliveries for the workers that
//! hold its recipients' devices. Two forms, chosen once at start (the composition root
//! picks one; neither asks which deployment it is in):
//!
//! - [`Direct`] on one node: every recipient goes to the one worker, which knows which
//!   of them are online. It runs on the commit task, so it calls the worker
//!   synchronously and keeps commit order without a queue.
//! - [`Routed`] in a cluster: the commit task only queues the message; a routing task
//!   reads the connection routes and hands each live worker its share
//!   ([`routed`]).
//!
//! [`Workers`] holds every worker a node can reach, its own hub included, and serves
//! the admin operations that span them (the business layer's [`crate::business::Devices`]).

mod routed;
mod workers;

pub use routed::Routed;
pub use workers::Workers;

use std::sync::Arc;

use crate::business::Deliver;
use crate::store::Committed;
use crate::worker::{Delivery, Notice, Worker};

/// The single node's dispatcher: every committed message to the one worker.
pub struct Direct {
    worker: Arc<dyn Worker>,
}

impl Direct {
    /// Delivers to `worker`, which holds every connection of the node. (One node's
    /// store never loses what it acknowledged: deliveries carry no generation.)
    pub fn new(worker: Arc<dyn Worker>) -> Self {
        Self { worker }
    }
}

impl Deliver for Direct {
    fn deliver(&self, msg: &Committed) {
        self.worker.deliver(Delivery {
            msg: msg.json.clone(),
            to: msg.recipients.clone(),
            generation: None,
        });
    }

    fn notify(&self, uids: Vec<String>, frame: String) {
        self.worker.notify(Notice { uids, frame });
    }
}
