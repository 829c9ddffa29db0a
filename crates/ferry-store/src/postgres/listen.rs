//! The `LISTEN` task: queue wake-ups, cancellations, token changes and event-stream
//! notifications from other processes.

use super::*;

/// What the notification connection listens to, and whom it tells.
pub(super) struct Listening {
    /// Payload: a queue with new work, maybe with more (see [`head::Wakeup`]).
    pub(super) wakeups: String,
    /// Wake-ups marked with this origin are this store's own, already answered.
    pub(super) origin: String,
    /// Payload: the id of a running job that was cancelled.
    pub(super) cancels: String,
    pub(super) queues: Arc<Wakeups>,
    /// Where deep queues' claims start: forgotten when a job may come before.
    pub(super) heads: Arc<head::Heads>,
    pub(super) cancelled: broadcast::Sender<JobId>,
    /// Payload: none; tokens were created or revoked.
    pub(super) tokens: String,
    pub(super) token_changes: broadcast::Sender<()>,
    /// Payload: see `postgres/events.rs`.
    pub(super) events_channel: String,
    pub(super) events: Arc<EventSignal>,
}

impl Listening {
    /// Notifications may have been missed: any queue may have work anywhere in its claim
    /// order, and any log may have grown.
    fn missed(&self) {
        self.heads.forget_all();
        self.queues.all();
        self.events.committed_all();
    }
}

/// Wakes local dispatchers and stops local attempts on notifications from any node.
pub(super) async fn listen(pool: PgPool, l: Listening) {
    let wakeups = &l.queues;
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the notification connection; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let channels = [l.wakeups.as_str(), l.cancels.as_str(), l.tokens.as_str(), l.events_channel.as_str()];
        if let Err(e) = listener.listen_all(channels).await {
            tracing::warn!(error = %e, "cannot LISTEN; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Anything may have happened while we were not listening.
        l.missed();
        let _ = l.token_changes.send(());
        loop {
            match listener.try_recv().await {
                Ok(Some(n)) if n.channel() == l.events_channel => match events::parse(n.payload(), &l.origin) {
                    events::Told::Own => {}
                    events::Told::Subjects(subjects) => l.events.committed(subjects),
                    events::Told::All => l.events.committed_all(),
                },
                Ok(Some(n)) if n.channel() == l.tokens => {
                    let _ = l.token_changes.send(());
                }
                Ok(Some(n)) if n.channel() == l.cancels => {
                    if let Ok(id) = JobId::parse_str(n.payload()) {
                        let _ = l.cancelled.send(id);
                    }
                }
                Ok(Some(n)) => match head::Wakeup::parse(n.payload()) {
                    w if w.origin == Some(l.origin.as_str()) => {}
                    w => {
                        match w.arrived {
                            Some((priority, run_at)) => l.heads.arrived(w.queue, priority, run_at),
                            None => l.heads.forget(w.queue),
                        }
                        wakeups.get(w.queue).notify_one();
                    }
                },
                Ok(None) => {
                    tracing::warn!("notification connection lost; reconnecting");
                    l.missed();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "notification connection failed; reconnecting");
                    l.missed();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}
