//! Attempts ending and leases on PostgreSQL: batched finishes, worker registration and
//! heartbeats, expired leases and pruning.

use super::*;

crate::sql::statements!("../../sql/postgres/leases.sql":
    REGISTER_WORKER, TOUCH_WORKER, UNREGISTER_WORKER, WORKERS, EXPIRED, PRUNE_RUNS, DELETE_RUN_EVENTS,
    DELETE_RUN_NODES, DELETE_RUNS, PRUNE_WORKERS, PRUNE_RATE_BUCKETS,
);

impl PgStore {
    pub(super) async fn finish_many(&self, fins: Vec<Finish>) -> Result<Vec<bool>, StoreError> {
        if fins.is_empty() {
            return Ok(Vec::new());
        }
        let n = fins.len();
        let (mut ids, mut attempts, mut states, mut outputs, mut errors) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let (mut finished, mut retry_ins, mut base_incs, mut breakers) =
            (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut ev_ids, mut ev_attempts, mut ev_types, mut ev_data, mut ev_retry) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for fin in &fins {
            // The store's clock is read in the statement; the columns' times are relative.
            let c = transition::finish_columns(&fin.result, 0);
            let retry_in = c.run_at;
            ids.push(fin.id);
            attempts.push(fin.attempt as i32);
            states.push(c.state.as_str());
            outputs.push(c.output.map(|o| o.to_string()));
            errors.push(c.error.map(|e| serde_json::to_string(e).unwrap_or_default()));
            finished.push(c.finished);
            retry_ins.push(retry_in);
            base_incs.push(c.base_inc as i32);
            breakers.push(c.breaker);
            for (kind, data) in transition::finish_events(fin, 0) {
                ev_ids.push(fin.id);
                ev_attempts.push(fin.attempt as i32);
                ev_types.push(kind);
                ev_data.push(data.to_string());
                ev_retry.push(retry_in);
            }
        }
        let applied: BTreeSet<(JobId, i32)> = sqlx::query_as(FINISH)
            .bind(ids)
            .bind(attempts)
            .bind(states)
            .bind(outputs)
            .bind(errors)
            .bind(finished)
            .bind(retry_ins)
            .bind(base_incs)
            .bind(ev_ids)
            .bind(ev_attempts)
            .bind(ev_types)
            .bind(ev_data)
            .bind(ev_retry)
            .bind(&self.channel)
            .bind(breakers)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .collect();
        self.committed(applied.iter().map(|(id, _)| Subject::Job(*id)));
        // A retry is due later: this process's claims look for it again (see `due.rs`).
        for fin in &fins {
            match fin.result {
                crate::FinishResult::Retry { .. } | crate::FinishResult::Deferred { .. } => self.due.forget(&fin.queue),
                // Ready again now at its priority, which may come before the head
                // (`postgres/head.rs`); other processes forget on the notification.
                crate::FinishResult::Released => self.heads.forget(&fin.queue),
                _ => {}
            }
        }
        Ok(fins.iter().map(|f| applied.contains(&(f.id, f.attempt as i32))).collect())
    }

    pub(super) async fn register_worker(&self, w: WorkerInfo) -> Result<(), StoreError> {
        sqlx::query(*REGISTER_WORKER)
            .bind(&w.id)
            .bind(&w.node)
            .bind(serde_json::to_string(&w.queues).unwrap_or_default())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn heartbeat(
        &self,
        worker: &str,
        lease_ms: u64,
        running: &[JobId],
    ) -> Result<Vec<JobId>, StoreError> {
        let (mut tx, now) = self.begin().await?;
        let ids = sqlx::query_scalar(HEARTBEAT)
            .bind(worker)
            .bind(now.saturating_add(time::ms(lease_ms)))
            .bind(running)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(*TOUCH_WORKER).bind(worker).bind(now).bind(running.len() as i32).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(ids)
    }

    pub(super) async fn unregister_worker(&self, worker: &str) -> Result<(), StoreError> {
        sqlx::query(*UNREGISTER_WORKER).bind(worker).execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn workers(&self, seen_within_ms: u64) -> Result<Vec<WorkerInfo>, StoreError> {
        let rows = sqlx::query(*WORKERS).bind(time::ms(seen_within_ms)).fetch_all(&self.pool).await?;
        rows.iter().map(row::worker).collect::<Result<_, sqlx::Error>>().map_err(err)
    }

    pub(super) async fn expired(&self, limit: usize) -> Result<Vec<ClaimedJob>, StoreError> {
        // The column list is a block of its own, put in here: it is the list `row::claimed` reads.
        let sql = EXPIRED.to_string();
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(limit as i64).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let mut job = claimed_from_row(r, 0)?;
                job.worker = r.try_get(19)?;
                Ok(job)
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }

    pub(super) async fn prune(&self, older_than_ms: u64, limit: usize) -> Result<usize, StoreError> {
        let (mut tx, now) = self.begin().await?;
        let cut = now.saturating_sub(time::ms(older_than_ms));
        let gone = sqlx::query(PRUNE)
            .bind(crate::id_floor(cut / 1000))
            .bind(cut)
            .bind(limit as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Ended runs, with their nodes and logs, likewise (their dead jobs stay).
        let runs: Vec<JobId> = sqlx::query_scalar(*PRUNE_RUNS)
            .bind(crate::id_floor(cut / 1000))
            .bind(cut)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
        if !runs.is_empty() {
            sqlx::query(*DELETE_RUN_EVENTS).bind(&runs).execute(&mut *tx).await?;
            sqlx::query(*DELETE_RUN_NODES).bind(&runs).execute(&mut *tx).await?;
            sqlx::query(*DELETE_RUNS).bind(&runs).execute(&mut *tx).await?;
        }
        sqlx::query(*PRUNE_WORKERS).bind(now.saturating_sub(time::ms(86_400_000))).execute(&mut *tx).await?;
        sqlx::query(*PRUNE_RATE_BUCKETS).bind(now.saturating_sub(rate::IDLE_BUCKET_US)).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok((gone as usize).max(runs.len()))
    }
}
