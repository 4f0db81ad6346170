//! Dispatcher role: turns each committed message into pushes for the workers that hold
//! its recipients' devices.
//!
//! In one process there is one worker, and the dispatcher hands it every recipient;
//! the worker knows which of them are online. It must not block (it runs on the commit
//! task) and must keep commit order, so it calls the worker synchronously.

use std::sync::Arc;

use crate::business::Deliver;
use crate::rpc::{Push, WorkerApi};
use crate::store::Committed;

/// Fans committed messages out to workers.
pub struct Dispatcher {
    worker: Arc<dyn WorkerApi>,
}

impl Dispatcher {
    /// A dispatcher for a single, in-process worker.
    pub fn local(worker: Arc<dyn WorkerApi>) -> Self {
        Self { worker }
    }
}

impl Deliver for Dispatcher {
    fn deliver(&self, msg: &Committed) {
        let pushes = msg
            .recipients
            .iter()
            .map(|(uid, useq)| Push {
                uid: uid.clone(),
                useq: *useq,
                msg: msg.json.clone(),
            })
            .collect();
        self.worker.push(pushes);
    }
}
