//! Multi-row statements on the writer: many rows in one statement.
//!
//! Each execution of an `INSERT` opens a cursor on the table and on each of its indexes
//! (`jobs` has thirteen) and, on an `AUTOINCREMENT` table, reads and writes
//! `sqlite_sequence`; with one row a statement that was most of a no-op job's cost on the
//! writer. A [`MultiRow`] holds the same statement prepared for a few row counts
//! ([`CHUNKS`]) and writes any number of rows with the largest that fit, in order.

use rusqlite::{Connection, Row, Statement, ToSql};

/// The row counts a [`MultiRow`] is prepared for, largest first: 1,000 rows take 15
/// statements of 64, two of 16 and two of 4.
pub(super) const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// One statement with a `VALUES {rows}` list, made for each of [`CHUNKS`].
pub(super) struct MultiRow {
    sql: Vec<String>,
    per_row: usize,
}

impl MultiRow {
    /// `template` is a statement whose `VALUES` list is `{rows}`; each row binds `per_row`
    /// parameters, in the order of the list's columns.
    pub(super) fn new(template: &str, per_row: usize) -> MultiRow {
        let row = format!("({})", vec!["?"; per_row].join(", "));
        let sql = CHUNKS.iter().map(|&n| template.replace("{rows}", &vec![row.as_str(); n].join(", "))).collect();
        MultiRow { sql, per_row }
    }

    /// Inserts one row for each of `items`, in order: `bind(statement, first, item)` binds
    /// the item's parameters from index `first` on (1-based, as SQLite counts), as a rule
    /// with [`bind_row`].
    pub(super) fn insert<T>(
        &self,
        conn: &Connection,
        items: &[T],
        bind: impl FnMut(&mut Statement<'_>, usize, &T) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        self.query(conn, items, bind, |_| Ok(()))
    }

    /// As [`MultiRow::insert`], for a statement with `RETURNING`: `row` is called on each
    /// row it returns.
    pub(super) fn query<T>(
        &self,
        conn: &Connection,
        items: &[T],
        mut bind: impl FnMut(&mut Statement<'_>, usize, &T) -> rusqlite::Result<()>,
        mut row: impl FnMut(&Row<'_>) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<()> {
        let mut rest = items;
        while !rest.is_empty() {
            let which = CHUNKS.iter().position(|&n| n <= rest.len()).unwrap_or(CHUNKS.len() - 1);
            let (chunk, tail) = rest.split_at(CHUNKS[which]);
            let mut statement = conn.prepare_cached(&self.sql[which])?;
            for (i, item) in chunk.iter().enumerate() {
                bind(&mut statement, i * self.per_row + 1, item)?;
            }
            let mut rows = statement.raw_query();
            while let Some(r) = rows.next()? {
                row(r)?;
            }
            rest = tail;
        }
        Ok(())
    }
}

/// Binds one row's `values`, in order, from parameter `first` on.
pub(super) fn bind_row(s: &mut Statement<'_>, first: usize, values: &[&dyn ToSql]) -> rusqlite::Result<()> {
    for (i, v) in values.iter().enumerate() {
        s.raw_bind_parameter(first + i, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_count_of_rows_is_inserted_once_each_in_order() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (seq INTEGER PRIMARY KEY AUTOINCREMENT, a INTEGER, b TEXT)").unwrap();
        let insert = MultiRow::new("INSERT INTO t (a, b) VALUES {rows}", 2);
        // Counts at and around each chunk's size, and one that takes every size.
        for n in [0, 1, 3, 4, 5, 16, 63, 64, 65, 64 + 16 + 4 + 1] {
            conn.execute_batch("DELETE FROM t").unwrap();
            let items: Vec<i64> = (0..n).collect();
            insert.insert(&conn, &items, |s, first, &a| bind_row(s, first, &[&a, &format!("row {a}")])).unwrap();
            let rows: Vec<(i64, String)> = conn
                .prepare("SELECT a, b FROM t ORDER BY seq")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let expected: Vec<(i64, String)> = items.iter().map(|&a| (a, format!("row {a}"))).collect();
            assert_eq!(rows, expected, "{n} rows");
        }
    }
}
