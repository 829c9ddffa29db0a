//! Where the statements live: every SQL statement of a backend sits under
//! `sql/<backend>/`, either a file of its own (the hot ones: `claim.sql`, `finish.sql`…)
//! or a named block of one file per area (`sql/postgres/settings.sql`…):
//!
//! ```sql
//! -- name: SET_QUEUE_SETTINGS
//! -- What it does; where it differs from the other backend, and why.
//! INSERT INTO queue_settings …
//! ```
//!
//! A block runs from its `-- name:` line to the next one. A `{NAME}` in a block that
//! names another block of the same file (a column list shared by several statements) is
//! replaced by that block's text when the statement is first read; other `{…}` marks
//! (list filters, a `LIMIT`'s parameter number) are the caller's to fill. A backend module names the
//! blocks it uses with [`statements!`], which makes each a `&'static str` read once from
//! the file compiled into the binary; the crate's tests read every block so named, so a
//! misspelt name fails there and never in production.

/// The text of block `name` in `file` (see the module docs), with every `{NAME}` in it
/// that names another block of the file (a column list, say) replaced by that block's
/// text. Read once per statement, so the result is kept for the process's life.
///
/// # Panics
/// When the file has no such block.
pub(crate) fn block(file: &'static str, name: &str) -> &'static str {
    let text = raw_block(file, name);
    let mut filled = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let (before, after) = rest.split_at(open);
        filled.push_str(before);
        let inner = after[1..].split('}').next().unwrap_or("");
        let is_block = !inner.is_empty()
            && inner.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            && file.lines().any(|l| l.trim_end().strip_prefix("-- name:").map(str::trim) == Some(inner));
        if is_block {
            // Comment lines of the inner block would end the outer statement's line.
            let body: Vec<&str> =
                raw_block(file, inner).lines().filter(|l| !l.trim_start().starts_with("--")).collect();
            filled.push_str(&body.join("\n"));
            rest = &after[inner.len() + 2..];
        } else {
            filled.push('{');
            rest = &after[1..];
        }
    }
    filled.push_str(rest);
    if filled == text { text } else { Box::leak(filled.into_boxed_str()) }
}

fn raw_block(file: &'static str, name: &str) -> &'static str {
    let mut start = None;
    let mut at = 0;
    for line in file.split_inclusive('\n') {
        let head = line.trim_end();
        if let Some(found) = head.strip_prefix("-- name:").map(str::trim) {
            if start.is_some() {
                return file[start.unwrap_or(0)..at].trim();
            }
            if found == name {
                start = Some(at + line.len());
            }
        }
        at += line.len();
    }
    match start {
        Some(from) => file[from..].trim(),
        None => panic!("no statement named {name} in its SQL file"),
    }
}

/// Names blocks of one SQL file (see the module docs) as statics of the calling module:
/// `statements!("../../sql/postgres/settings.sql": SET_QUEUE_SETTINGS, QUEUE_SHARES);`
/// then `sqlx::query(*SET_QUEUE_SETTINGS)`. The path is relative to the calling file; one
/// file per module, as the test this adds has a fixed name.
macro_rules! statements {
    ($file:literal: $($name:ident),+ $(,)?) => {
        $(
            pub(super) static $name: std::sync::LazyLock<&'static str> =
                std::sync::LazyLock::new(|| $crate::sql::block(include_str!($file), stringify!($name)));
        )+
        /// Every statement this module names, read once: a misspelt name fails the tests.
        #[cfg(test)]
        #[test]
        fn every_named_statement_is_in_its_file() {
            $( assert!(!$name.is_empty(), "{} is empty", stringify!($name)); )+
        }
    };
}
pub(crate) use statements;

#[cfg(test)]
mod tests {
    use super::block;

    const FILE: &str = "-- name: ONE\n-- the first\nSELECT 1\n\n-- name: TWO\nSELECT 2;\n-- name: COLS\n-- its columns\na, b\n-- name: THREE\nSELECT {COLS} FROM t WHERE x{filters}\n";

    #[test]
    fn a_block_runs_to_the_next_name() {
        assert_eq!(block(FILE, "ONE"), "-- the first\nSELECT 1");
        assert_eq!(block(FILE, "TWO"), "SELECT 2;");
    }

    #[test]
    fn a_named_block_is_put_in_where_another_names_it() {
        // `{COLS}` is a block of the file; `{filters}` is left for the caller.
        assert_eq!(block(FILE, "THREE"), "SELECT a, b FROM t WHERE x{filters}");
    }

    #[test]
    #[should_panic(expected = "no statement named FOUR")]
    fn a_missing_block_is_refused() {
        block(FILE, "FOUR");
    }
}
