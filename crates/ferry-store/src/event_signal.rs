//! The signal that events were committed, which event streams wait on instead of polling.
//!
//! An event stream (`GET /v1/jobs/{id}/events`, `GET /v1/runs/{id}/events`) holds a
//! [`EventWatch`] on its subject and reads the store again only when the watch fires (or
//! on a slow safety-net timer). A backend fires the signal *after* the commit that wrote
//! the events, so a stream woken by it always finds them.
//!
//! **Per subject where the backend can name it, global where it cannot.**
//! - The SQLite writer knows every job and run whose log it wrote in a group commit: it
//!   wakes exactly those subjects' streams ([`EventSignal::committed`]).
//! - PostgreSQL wakes by subject after this process's own commits when the transaction
//!   names few subjects, and otherwise wakes every stream ([`EventSignal::committed_all`]);
//!   events committed by another process arrive as one notification per transaction
//!   (never one per row), which names its subjects when they are few and else means
//!   "anything may have changed" (see the PostgreSQL backend's module docs).
//!
//! A global wake-up makes every stream of this node read once; the streams coalesce (one
//! read per ~50 ms at most, however often they are woken), so its cost under load is
//! bounded by the number of open streams, not by the commit rate.
//!
//! Watches are kept per subject: a commit that touched subjects nobody watches costs one
//! lock and a hash lookup per subject, and no lock at all while no stream is open.

use ferry_core::JobId;
use ferry_core::run::RunId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// Whose log an event went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject {
    Job(JobId),
    Run(RunId),
}

/// See the module docs. Cheap to share (`Arc`).
pub struct EventSignal {
    /// Each watched subject's channel; an entry lives while a watch on it does.
    subjects: Mutex<HashMap<Subject, watch::Sender<()>>>,
    /// Open watches, so a backend with none skips the lock.
    watches: AtomicUsize,
    /// Fired when any subject may have new events.
    all: watch::Sender<()>,
}

impl Default for EventSignal {
    fn default() -> Self {
        EventSignal { subjects: Mutex::default(), watches: AtomicUsize::new(0), all: watch::channel(()).0 }
    }
}

impl EventSignal {
    /// Whether any stream is watching (backends may skip collecting subjects when not).
    pub fn watched(&self) -> bool {
        self.watches.load(Ordering::Relaxed) > 0
    }

    /// Starts watching `subject`. Events committed after this call fire the watch; the
    /// caller reads the store after watching, so nothing falls in between.
    pub fn watch(self: &Arc<Self>, subject: Subject) -> EventWatch {
        let one = {
            let mut map = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(subject).or_insert_with(|| watch::channel(()).0).subscribe()
        };
        self.watches.fetch_add(1, Ordering::Relaxed);
        EventWatch { signal: self.clone(), subject, one: Some(one), all: self.all.subscribe() }
    }

    /// Events of these subjects were committed.
    pub fn committed(&self, subjects: impl IntoIterator<Item = Subject>) {
        if !self.watched() {
            return;
        }
        let map = self.subjects.lock().unwrap_or_else(|e| e.into_inner());
        for subject in subjects {
            if let Some(tx) = map.get(&subject) {
                tx.send_replace(());
            }
        }
    }

    /// Events of unknown subjects were committed (a notification that named none, or one
    /// that may have been missed): every watch fires.
    pub fn committed_all(&self) {
        self.all.send_replace(());
    }
}

/// One stream's watch on its subject. Dropping it stops the watch.
pub struct EventWatch {
    signal: Arc<EventSignal>,
    subject: Subject,
    one: Option<watch::Receiver<()>>,
    all: watch::Receiver<()>,
}

impl EventWatch {
    /// Waits until events of the subject may have been committed since the watch began
    /// or since this last returned.
    pub async fn changed(&mut self) {
        // Both senders outlive the watch (the signal holds them, and a subject's entry is
        // removed only by its last watch's drop), so neither `changed` fails.
        let one = self.one.as_mut().expect("set until drop");
        tokio::select! {
            _ = one.changed() => {}
            _ = self.all.changed() => {}
        }
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        self.signal.watches.fetch_sub(1, Ordering::Relaxed);
        let mut map = self.signal.subjects.lock().unwrap_or_else(|e| e.into_inner());
        drop(self.one.take());
        if map.get(&self.subject).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(&self.subject);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn fires(w: &mut EventWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(200), w.changed()).await.is_ok()
    }

    #[tokio::test]
    async fn a_watch_fires_for_its_subject_and_for_all_only() {
        let signal = Arc::new(EventSignal::default());
        let (a, b) = (Subject::Job(JobId::now_v7()), Subject::Run(RunId::now_v7()));
        let mut wa = signal.watch(a);
        let mut wb = signal.watch(b);
        signal.committed([a]);
        assert!(fires(&mut wa).await);
        assert!(!fires(&mut wb).await, "another subject's commit does not wake it");
        signal.committed_all();
        assert!(fires(&mut wa).await && fires(&mut wb).await);
        // A commit while nobody waits is not lost: the next wait returns at once.
        signal.committed([b]);
        assert!(fires(&mut wb).await);
        assert!(!fires(&mut wb).await, "and only once");
    }

    #[tokio::test]
    async fn the_last_watch_of_a_subject_removes_it() {
        let signal = Arc::new(EventSignal::default());
        let a = Subject::Job(JobId::now_v7());
        let w1 = signal.watch(a);
        let mut w2 = signal.watch(a);
        drop(w1);
        signal.committed([a]);
        assert!(fires(&mut w2).await, "the other watch still fires");
        drop(w2);
        assert!(!signal.watched());
        assert!(signal.subjects.lock().unwrap().is_empty());
    }
}
