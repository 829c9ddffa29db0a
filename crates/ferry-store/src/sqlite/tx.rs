//! The rules' transaction on SQLite: [`SqliteTx`] borrows the writer inside its
//! group-commit transaction; each area's module implements that area's statement
//! interface of `rules/` on it (`runs.rs`: `RunTx`; `tokens.rs`: `TokenTx`). Every
//! statement completes at once, so the writer runs a rule with [`crate::rules::ready`].

use super::Writer;

pub(super) struct SqliteTx<'a> {
    pub(super) w: &'a mut Writer,
}

impl Writer {
    /// The rules' statements on this writer's transaction.
    pub(super) fn tx(&mut self) -> SqliteTx<'_> {
        SqliteTx { w: self }
    }
}
