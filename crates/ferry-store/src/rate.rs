//! Rate limits, kept in the store so that a rate holds across every worker process.
//!
//! A rate is set on a queue (`queue_settings.rate`, for every workspace's jobs of that
//! queue, by the operator), by a workspace on its share of a queue (`queue_shares.rate`,
//! for that workspace's jobs of that queue only), or by a workspace on a label key
//! (`label_rates`, for that workspace's jobs only): a tenant cannot slow another one down. Each rate is a token bucket in the
//! `rate_buckets` table: it holds at most one second's worth of tokens (at least one),
//! refills continuously by the store's clock, and starts full. A label key's rate keeps one
//! bucket per label value, so with a rate of 5 on `api`, jobs labelled `api=github` and
//! jobs labelled `api=openai` may each start 5 times a second.
//!
//! Every attempt a claim starts takes one token from its queue's bucket (if the queue has a
//! rate), one from its workspace's share bucket (if the share has a rate) and one from the
//! bucket of each rated label it carries, in the claim's own
//! transaction: the SQLite writer, or on PostgreSQL with the buckets' rows locked, so two
//! processes never spend the same token. A job whose label bucket is empty is passed
//! over (so is one whose workspace's share bucket is empty), and the jobs behind it, within a window of [`MAX_WINDOW`] candidates, may start
//! before it; it keeps its place and goes when its bucket has a token again. The claim
//! reports how long until a token it lacked is back, so the dispatcher sleeps that long
//! instead of polling.
//!
//! A claim takes this path only when a rate could apply: its queue has one, a workspace's
//! share of it has one, or some workspace rated a label key (then every queue's claims do, since any job may carry the
//! label). It reads the candidates and leases them one statement each, where an unrated
//! claim is one statement in all; that costs throughput on busy queues, not correctness.
//!
//! Rates are read through a cache (the SQLite writer reloads after a change; a PostgreSQL
//! process re-reads them every second), so a change applies within a second everywhere.

use ferry_core::JobId;
use ferry_core::time::Micros;
use std::collections::{BTreeMap, HashMap};

/// The most queued jobs one rated claim looks at to find some whose buckets have tokens.
pub const MAX_WINDOW: usize = 1000;

/// A bucket that was not used for this long is full again for any rate worth setting
/// (one token per day or more); pruning deletes it, and a missing bucket is a full one.
pub const IDLE_BUCKET_US: Micros = 24 * 3600 * 1_000_000;

/// Every rate in force.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    /// Queue name → jobs per second.
    pub queues: HashMap<String, f64>,
    /// Workspace → label key → jobs per second.
    pub labels: HashMap<String, HashMap<String, f64>>,
    /// Queue → workspace → jobs per second: a workspace's rate on its share of a queue.
    pub shares: HashMap<String, HashMap<String, f64>>,
}

impl Rates {
    /// Whether a claim of this queue must go through the buckets.
    pub fn applies_to(&self, queue: &str) -> bool {
        self.queues.contains_key(queue) || self.shares.contains_key(queue) || !self.labels.is_empty()
    }

    /// How many queued jobs a rated claim of `limit` on `queue` looks at: the limit when
    /// only a queue-wide rate applies (it holds every job alike), more when some jobs may
    /// be held back while others pass.
    pub fn window(&self, queue: &str, limit: usize) -> usize {
        if self.labels.is_empty() && !self.shares.contains_key(queue) {
            limit
        } else {
            (limit.saturating_mul(4)).clamp(64, MAX_WINDOW)
        }
    }

    /// The buckets a claim of `queue` over these candidates may draw on, with their rates,
    /// sorted by key (PostgreSQL locks them in this order, so claimers cannot deadlock).
    pub fn buckets_for(&self, queue: &str, candidates: &[Candidate]) -> Vec<(String, f64)> {
        let mut keys: BTreeMap<String, f64> = BTreeMap::new();
        if let Some(rate) = self.queues.get(queue) {
            keys.insert(queue_bucket(queue), *rate);
        }
        for c in candidates {
            keys.extend(self.job_buckets(queue, c));
        }
        keys.into_iter().collect()
    }

    /// The buckets one job draws on besides its queue's: its workspace's share of the
    /// queue, and its workspace's rated labels.
    fn job_buckets(&self, queue: &str, c: &Candidate) -> Vec<(String, f64)> {
        let share = self.shares.get(queue).and_then(|ws| ws.get(&c.workspace));
        let mut out: Vec<(String, f64)> =
            share.map(|rate| (share_bucket(queue, &c.workspace), *rate)).into_iter().collect();
        if let Some(rated) = self.labels.get(&c.workspace) {
            out.extend(
                c.labels.iter().filter_map(|(k, v)| rated.get(k).map(|rate| (label_bucket(&c.workspace, k, v), *rate))),
            );
        }
        out
    }
}

/// The bucket of a queue's rate.
pub fn queue_bucket(queue: &str) -> String {
    format!("queue:{queue}")
}

/// The bucket of a workspace's share of a queue.
pub fn share_bucket(queue: &str, workspace: &str) -> String {
    format!("share:{}", serde_json::json!([queue, workspace]))
}

/// The bucket of one value of a workspace's rated label key. JSON quoting keeps the three
/// parts apart whatever they contain.
pub fn label_bucket(workspace: &str, key: &str, value: &str) -> String {
    format!("label:{}", serde_json::json!([workspace, key, value]))
}

/// The most tokens a bucket of this rate holds: one second's worth, at least one.
pub fn burst(rate: f64) -> f64 {
    rate.max(1.0)
}

/// A token bucket as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub tokens: f64,
    /// When `tokens` was computed (the store's clock).
    pub refilled_at: Micros,
}

impl Bucket {
    /// A bucket nobody used yet: full.
    pub fn full(rate: f64, now: Micros) -> Self {
        Bucket { tokens: burst(rate), refilled_at: now }
    }

    fn refill(&mut self, rate: f64, now: Micros) {
        let elapsed = now.saturating_sub(self.refilled_at).max(0) as f64 / 1e6;
        self.tokens = (self.tokens + rate * elapsed).min(burst(rate));
        self.refilled_at = self.refilled_at.max(now);
    }

    /// Microseconds until the bucket holds a whole token.
    fn wait_us(&self, rate: f64) -> Micros {
        (((1.0 - self.tokens).max(0.0) / rate) * 1e6).ceil().max(1000.0) as Micros
    }
}

/// A queued job a rated claim may start, in claim order.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: JobId,
    pub workspace: String,
    pub labels: BTreeMap<String, String>,
}

/// What a rated claim decided.
#[derive(Debug, Default, PartialEq)]
pub struct Choice {
    /// The jobs to start, in claim order.
    pub chosen: Vec<JobId>,
    /// Set when a bucket held back work: microseconds until it has a token again.
    pub wait_us: Option<Micros>,
}

impl Choice {
    /// [`Choice::wait_us`] in whole milliseconds, rounded up (what a claim reports).
    pub fn wait_ms(&self) -> Option<u64> {
        self.wait_us.map(|us| (us.max(0) as u64).div_ceil(1000))
    }
}

/// Picks up to `limit` candidates whose buckets all hold a token, in order, and spends
/// their tokens. `buckets` holds the stored state of the buckets in `needed` (from
/// [`Rates::buckets_for`]); missing ones start full. On return it holds every needed
/// bucket's new state, to be written back in the same transaction.
pub fn choose(
    rates: &Rates,
    queue: &str,
    candidates: &[Candidate],
    limit: usize,
    needed: &[(String, f64)],
    buckets: &mut HashMap<String, Bucket>,
    now: Micros,
) -> Choice {
    for (key, rate) in needed {
        buckets.entry(key.clone()).or_insert_with(|| Bucket::full(*rate, now)).refill(*rate, now);
    }
    let mut choice = Choice::default();
    let held_back = |wait: Micros, choice: &mut Choice| {
        choice.wait_us = Some(choice.wait_us.map_or(wait, |w| w.min(wait)));
    };
    let queue_rate = rates.queues.get(queue).map(|r| (queue_bucket(queue), *r));
    for c in candidates {
        if choice.chosen.len() == limit {
            break;
        }
        if let Some((key, rate)) = &queue_rate {
            let b = buckets.get(key).copied().unwrap_or_else(|| Bucket::full(*rate, now));
            if b.tokens < 1.0 {
                held_back(b.wait_us(*rate), &mut choice);
                break;
            }
        }
        let labels = rates.job_buckets(queue, c);
        let blocked: Vec<Micros> = labels
            .iter()
            .filter_map(|(key, rate)| buckets.get(key).filter(|b| b.tokens < 1.0).map(|b| b.wait_us(*rate)))
            .collect();
        if let Some(wait) = blocked.into_iter().min() {
            held_back(wait, &mut choice);
            continue;
        }
        for (key, _) in queue_rate.iter().chain(labels.iter()) {
            if let Some(b) = buckets.get_mut(key) {
                b.tokens -= 1.0;
            }
        }
        choice.chosen.push(c.id);
    }
    choice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(n: u128, ws: &str, labels: &[(&str, &str)]) -> Candidate {
        Candidate {
            id: JobId::from_u128(n),
            workspace: ws.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn rates(queue: Option<f64>, labels: &[(&str, &str, f64)]) -> Rates {
        let mut r = Rates::default();
        if let Some(q) = queue {
            r.queues.insert("q".into(), q);
        }
        for (ws, key, rate) in labels {
            r.labels.entry(ws.to_string()).or_default().insert(key.to_string(), *rate);
        }
        r
    }

    fn run(r: &Rates, cands: &[Candidate], limit: usize, b: &mut HashMap<String, Bucket>, now: Micros) -> Choice {
        let needed = r.buckets_for("q", cands);
        choose(r, "q", cands, limit, &needed, b, now)
    }

    #[test]
    fn a_queue_rate_starts_full_then_refills_at_its_rate() {
        let r = rates(Some(5.0), &[]);
        let cands: Vec<_> = (0..20).map(|i| cand(i, "w", &[])).collect();
        let mut b = HashMap::new();
        let first = run(&r, &cands, 20, &mut b, 0);
        assert_eq!(first.chosen.len(), 5, "a burst of one second's worth");
        let wait = first.wait_us.expect("held back");
        assert!((199_000..=201_000).contains(&wait), "one token every 200 ms: {wait}");
        assert!(run(&r, &cands, 20, &mut b, 100_000).chosen.is_empty(), "half a token is not one");
        assert_eq!(run(&r, &cands, 20, &mut b, 600_000).chosen.len(), 3, "0.5 left + 2.5 refilled");
        // Idle for a long time: never more than the burst.
        assert_eq!(run(&r, &cands, 20, &mut b, 100_000_000).chosen.len(), 5);
    }

    #[test]
    fn a_label_rate_holds_per_value_and_per_workspace_and_lets_others_pass() {
        let r = rates(None, &[("w", "api", 2.0)]);
        let mut cands = Vec::new();
        for i in 0..5 {
            cands.push(cand(i, "w", &[("api", "a")]));
            cands.push(cand(100 + i, "w", &[("api", "b")]));
            cands.push(cand(200 + i, "other", &[("api", "a")]));
            cands.push(cand(300 + i, "w", &[("team", "x")]));
        }
        let mut b = HashMap::new();
        let choice = run(&r, &cands, 100, &mut b, 0);
        let count = |lo: u128| choice.chosen.iter().filter(|id| (lo..lo + 100).contains(&id.as_u128())).count();
        assert_eq!((count(0), count(100), count(200), count(300)), (2, 2, 5, 5));
        assert!(choice.wait_us.is_some());
        let order: Vec<u128> = choice.chosen.iter().map(|id| id.as_u128()).collect();
        let mut sorted = order.clone();
        sorted.sort_by_key(|n| cands.iter().position(|c| c.id.as_u128() == *n));
        assert_eq!(order, sorted, "claim order is kept");
    }

    #[test]
    fn a_share_rate_holds_one_workspace_on_one_queue_and_lets_the_others_pass() {
        let mut r = rates(None, &[]);
        r.shares.entry("q".into()).or_default().insert("slow".into(), 3.0);
        assert!(r.applies_to("q") && !r.applies_to("other"));
        assert!(r.window("q", 10) > 10, "held-back jobs must not hide the others");
        let mut cands = Vec::new();
        for i in 0..10 {
            cands.push(cand(i, "slow", &[]));
            cands.push(cand(100 + i, "fast", &[]));
        }
        let mut b = HashMap::new();
        let choice = run(&r, &cands, 100, &mut b, 0);
        let count = |lo: u128| choice.chosen.iter().filter(|id| (lo..lo + 100).contains(&id.as_u128())).count();
        assert_eq!((count(0), count(100)), (3, 10), "the slow workspace gets its burst, the other all");
        assert!(choice.wait_us.is_some());
        // The same workspace's share of another queue is not held.
        let other = r.buckets_for("other", &cands);
        assert!(other.is_empty(), "{other:?}");
    }

    #[test]
    fn nothing_held_back_means_no_wait() {
        let r = rates(Some(100.0), &[]);
        let cands: Vec<_> = (0..3).map(|i| cand(i, "w", &[])).collect();
        let choice = run(&r, &cands, 10, &mut HashMap::new(), 0);
        assert_eq!((choice.chosen.len(), choice.wait_us), (3, None));
    }

    #[test]
    fn bucket_keys_cannot_collide() {
        assert_ne!(label_bucket("a\",\"b", "c", "d"), label_bucket("a", "b\",\"c", "d"));
        assert_ne!(queue_bucket("x"), label_bucket("x", "", ""));
        assert_ne!(share_bucket("a\",\"b", "c"), share_bucket("a", "b\",\"c"));
    }
}
