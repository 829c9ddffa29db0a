//! Remote kinds and remote attempts' events (see [`crate::remote`]).

use super::SqliteStore;
use super::writer::Writer;
use crate::event_signal::Subject;
use crate::{RemoteKind, RemoteStore, StoreError};
use async_trait::async_trait;
use ferry_core::JobId;
use rusqlite::{Connection, params};

crate::sql::statements!("../../sql/sqlite/remote.sql": PUT_REMOTE_KIND, REMOTE_KINDS, JOB_EVENT);

#[async_trait]
impl RemoteStore for SqliteStore {
    async fn put_remote_kinds(&self, kinds: &[RemoteKind]) -> Result<(), StoreError> {
        let kinds = kinds.to_vec();
        self.on_writer(move |w| Ok(w.put_remote_kinds(&kinds)?)).await
    }

    async fn remote_kinds(&self) -> Result<Vec<RemoteKind>, StoreError> {
        self.read(remote_kinds).await
    }

    async fn write_job_events(
        &self,
        id: JobId,
        attempt: u32,
        events: Vec<(String, serde_json::Value)>,
    ) -> Result<bool, StoreError> {
        self.on_writer(move |w| Ok(w.job_events(id, attempt, &events)?)).await
    }
}

impl Writer {
    fn put_remote_kinds(&mut self, kinds: &[RemoteKind]) -> rusqlite::Result<()> {
        let mut put = self.conn.prepare_cached(*PUT_REMOTE_KIND)?;
        for k in kinds {
            put.execute(params![k.kind, k.queue, self.now])?;
        }
        Ok(())
    }

    /// Writes the events while the job runs under `attempt`; whether it did. One writer,
    /// so nothing ends the attempt between the events.
    fn job_events(
        &mut self,
        id: JobId,
        attempt: u32,
        events: &[(String, serde_json::Value)],
    ) -> rusqlite::Result<bool> {
        // After the events noted before them, in the log's order.
        self.flush_events()?;
        let mut insert = self.conn.prepare_cached(*JOB_EVENT)?;
        for (kind, data) in events {
            if insert.execute(params![id, attempt, self.now, kind, data.to_string()])? == 0 {
                return Ok(false);
            }
        }
        drop(insert);
        self.touched(Subject::Job(id));
        Ok(true)
    }
}

fn remote_kinds(c: &Connection) -> rusqlite::Result<Vec<RemoteKind>> {
    c.prepare_cached(*REMOTE_KINDS)?.query_map([], |r| Ok(RemoteKind { kind: r.get(0)?, queue: r.get(1)? }))?.collect()
}
