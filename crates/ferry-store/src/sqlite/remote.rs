//! Remote kinds and remote attempts' events (see [`crate::remote`]).

use super::writer::Writer;
use crate::RemoteKind;
use crate::event_signal::Subject;
use ferry_core::JobId;
use rusqlite::{Connection, params};

crate::sql::statements!("../../sql/sqlite/remote.sql": PUT_REMOTE_KIND, REMOTE_KINDS, JOB_EVENT);

impl Writer {
    pub(super) fn put_remote_kinds(&mut self, kinds: &[RemoteKind]) -> rusqlite::Result<()> {
        let mut put = self.conn.prepare_cached(*PUT_REMOTE_KIND)?;
        for k in kinds {
            put.execute(params![k.kind, k.queue, self.now])?;
        }
        Ok(())
    }

    /// Writes the events while the job runs under `attempt`; whether it did. One writer,
    /// so nothing ends the attempt between the events.
    pub(super) fn job_events(
        &mut self,
        id: JobId,
        attempt: u32,
        events: &[(String, serde_json::Value)],
    ) -> rusqlite::Result<bool> {
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

pub(super) fn remote_kinds(c: &Connection) -> rusqlite::Result<Vec<RemoteKind>> {
    c.prepare_cached(*REMOTE_KINDS)?.query_map([], |r| Ok(RemoteKind { kind: r.get(0)?, queue: r.get(1)? }))?.collect()
}
