//! Row decoding and the batch statements shared by submissions and runs (jobs and their
//! events as `UNNEST` arrays).

use super::*;

crate::sql::statements!("../../sql/postgres/rows.sql": JOB_EVENTS);

pub(super) fn decode(e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(e.to_string().into())
}

pub(super) fn parse_enum<T: FromStr<Err = String>>(s: &str) -> Result<T, sqlx::Error> {
    s.parse().map_err(decode)
}

pub(super) fn claimed_from_row(r: &PgRow, started_at: Micros) -> Result<ClaimedJob, sqlx::Error> {
    row::claimed(r, started_at)
}

pub(super) fn job_from_row(r: &PgRow) -> Result<JobRecord, sqlx::Error> {
    row::job(r)
}

/// Appends events, in the order given, in one statement.
pub(super) async fn insert_events(
    tx: &mut Transaction<'static, Postgres>,
    now: Micros,
    events: Vec<(JobId, &'static str, Value)>,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut kinds = Vec::with_capacity(events.len());
    let mut data = Vec::with_capacity(events.len());
    for (id, kind, d) in events {
        ids.push(id);
        kinds.push(kind);
        data.push(d.to_string());
    }
    sqlx::query(INSERT_EVENTS).bind(now).bind(ids).bind(kinds).bind(data).execute(&mut **tx).await?;
    Ok(())
}

pub(super) async fn read_events(tx: &mut Transaction<'static, Postgres>, id: JobId) -> Result<Vec<Event>, StoreError> {
    let rows = sqlx::query(*JOB_EVENTS).bind(id).fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|r| {
            Ok(Event {
                id: r.try_get(0)?,
                job_id: id,
                at: r.try_get(1)?,
                event_type: r.try_get(2)?,
                data: row::Columns::json(r, 3)?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(err)
}

/// Inserts new jobs (node instances where `links` says so) in one statement; returns the
/// rows of those inserted (`id, state, queue, run_at, created_at`), not those an idempotency key
/// skipped. Their first events are the caller's to write.
/// `now: None` reads the clock in the statement.
pub(super) async fn insert_jobs(
    tx: &mut Transaction<'static, Postgres>,
    now: Option<Micros>,
    jobs: &[NewJob],
    links: &[Option<(RunId, String, Option<u32>)>],
) -> Result<Vec<PgRow>, StoreError> {
    Ok(insert_query(INSERT_JOBS, now, jobs, links).fetch_all(&mut **tx).await?)
}

/// `sql` with `insert_jobs.sql`'s parameters bound ($1 to $22).
pub(super) fn insert_query(
    sql: &'static str,
    now: Option<Micros>,
    jobs: &[NewJob],
    links: &[Option<(RunId, String, Option<u32>)>],
) -> sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments> {
    let n = jobs.len();
    let mut cols: IdentityColumns = Default::default();
    let mut prio = Vec::with_capacity(n);
    let mut input = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut backoff = Vec::with_capacity(n);
    let mut timeout = Vec::with_capacity(n);
    let mut total = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut run_at = Vec::with_capacity(n);
    let mut soft = Vec::with_capacity(n);
    let mut cache = Vec::with_capacity(n);
    let mut run_ids = Vec::with_capacity(n);
    let mut node_ids = Vec::with_capacity(n);
    let mut items = Vec::with_capacity(n);
    let mut breakers = Vec::with_capacity(n);
    let mut ordering = Vec::with_capacity(n);
    for (j, link) in jobs.iter().zip(links.iter().chain(std::iter::repeat(&None))) {
        run_ids.push(link.as_ref().map(|l| l.0));
        node_ids.push(link.as_ref().map(|l| l.1.clone()));
        items.push(link.as_ref().and_then(|l| l.2).map(i64::from));
        cols.0.push(j.id);
        cols.1.push(j.workspace.clone());
        cols.2.push(j.user.clone());
        cols.3.push(j.kind.clone());
        cols.4.push(j.queue.clone());
        prio.push(j.priority);
        input.push(j.input.to_string());
        labels.push((!j.labels.is_empty()).then(|| serde_json::to_string(&j.labels).unwrap_or_default()));
        max_attempts.push(j.max_attempts as i32);
        backoff.push(serde_json::to_string(&j.backoff).unwrap_or_default());
        timeout.push(j.timeout_ms as i64);
        total.push(j.total_timeout_ms.map(|t| t as i64));
        keys.push(j.idempotency_key.clone());
        hashes.push(j.request_hash.clone());
        run_at.push(j.run_at);
        soft.push(j.soft_timeout_ms.map(|t| t as i64));
        cache.push(j.cache_key.clone());
        breakers.push(j.breaker.clone());
        ordering.push(j.ordering_key.clone());
    }
    sqlx::query(sql)
        .bind(now)
        .bind(cols.0)
        .bind(cols.1)
        .bind(cols.2)
        .bind(cols.3)
        .bind(cols.4)
        .bind(prio)
        .bind(input)
        .bind(labels)
        .bind(max_attempts)
        .bind(backoff)
        .bind(timeout)
        .bind(total)
        .bind(keys)
        .bind(hashes)
        .bind(run_at)
        .bind(soft)
        .bind(cache)
        .bind(run_ids)
        .bind(node_ids)
        .bind(items)
        .bind(breakers)
        .bind(ordering)
}

impl row::Columns for PgRow {
    type Error = sqlx::Error;
    fn uuid(&self, i: usize) -> Result<JobId, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_uuid(&self, i: usize) -> Result<Option<JobId>, sqlx::Error> {
        self.try_get(i)
    }
    fn text(&self, i: usize) -> Result<String, sqlx::Error> {
        self.try_get(i)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(i)
    }
    fn int(&self, i: usize) -> Result<i64, sqlx::Error> {
        // integer and bigint columns alike.
        self.try_get::<i64, _>(i).or_else(|_| self.try_get::<i32, _>(i).map(i64::from))
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        self.try_get::<Option<i64>, _>(i).or_else(|_| self.try_get::<Option<i32>, _>(i).map(|v| v.map(i64::from)))
    }
    fn invalid(&self, _i: usize, why: String) -> sqlx::Error {
        decode(why)
    }
}
