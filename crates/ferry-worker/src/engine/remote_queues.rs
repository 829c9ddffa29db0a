//! The queues of remote kinds (see [`crate::remote`]): a dispatcher for each queue a
//! session serves here, sized to the sessions' slots, and the hub's upkeep.
//!
//! A queue of remote kinds gets its dispatcher the first time a session serving it opens
//! on this node, and keeps it (with no slots while no session serves it: a dispatcher
//! without slots claims nothing). Its attempts are ordinary attempts whose executor is
//! the hub's (`RemoteExecutor`).

use super::queue_control::QueueControl;
use super::{Inner, QueueConfig, dispatch};
use crate::remote::{Hub, HubConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The longest a lease call of a remote worker waits for work.
pub(super) const MAX_LEASE_WAIT: Duration = Duration::from_secs(30);

/// The hub of an engine: sessions time out after a lease's length without a call, and
/// heartbeat as often as the engine does. Each change of a queue's slots is sent on
/// `slots`, which [`serve`] applies.
pub(super) fn hub(cfg: &super::EngineConfig, slots: mpsc::UnboundedSender<(String, usize)>) -> Arc<Hub> {
    Hub::new(
        HubConfig {
            node: cfg.node.clone(),
            session_timeout: Duration::from_millis(cfg.lease_ms),
            heartbeat: Duration::from_millis(cfg.heartbeat_ms),
            max_wait: MAX_LEASE_WAIT,
        },
        move |queue, n| {
            let _ = slots.send((queue.to_string(), n));
        },
    )
}

/// Gives each queue of remote kinds the slots its sessions bring, starting its
/// dispatcher the first time.
pub(super) async fn serve(inner: Arc<Inner>, mut slots: mpsc::UnboundedReceiver<(String, usize)>) {
    loop {
        let (queue, n) = tokio::select! {
            got = slots.recv() => match got {
                Some(got) => got,
                None => return,
            },
            _ = inner.stop_background.cancelled() => return,
        };
        let (control, new) = {
            let mut controls = inner.remote_controls();
            match controls.get(&queue) {
                Some(c) => (c.clone(), false),
                None => {
                    let c = Arc::new(QueueControl::remote());
                    controls.insert(queue.clone(), c.clone());
                    (c, true)
                }
            }
        };
        control.set_remote_slots(n);
        if new && !inner.stop_claiming.is_cancelled() {
            tracing::info!(queue = %queue, slots = n, "serving a queue of remote kinds");
            inner.dispatchers.spawn(dispatch::dispatch(inner.clone(), QueueConfig { name: queue, concurrency: n }));
        }
    }
}

/// Ends sessions that stopped calling, and reads the store's remote kinds again now and
/// then (a kind registered on another node is known here within [`crate::remote::REFRESH`]).
pub(super) async fn upkeep(inner: Arc<Inner>, hub: Arc<Hub>) {
    let every = (Duration::from_millis(inner.cfg.lease_ms) / 4).min(crate::remote::REFRESH);
    loop {
        hub.expire();
        if let Err(e) = inner.registry.remote().refresh(inner.store.as_ref(), false).await {
            tracing::warn!(error = %e, "cannot read the remote kinds");
        }
        tokio::select! {
            _ = tokio::time::sleep(super::spread(every)) => {}
            _ = inner.stop_background.cancelled() => return,
        }
    }
}
