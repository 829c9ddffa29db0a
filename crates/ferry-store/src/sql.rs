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
//! A block runs from its `-- name:` line to the next one. A backend module names the
//! blocks it uses with [`statements!`], which makes each a `&'static str` read once from
//! the file compiled into the binary; the crate's tests read every block so named, so a
//! misspelt name fails there and never in production.

/// The text of block `name` in `file` (see the module docs).
///
/// # Panics
/// When the file has no such block.
pub(crate) fn block(file: &'static str, name: &str) -> &'static str {
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

    const FILE: &str = "-- name: ONE\n-- the first\nSELECT 1\n\n-- name: TWO\nSELECT 2;\n";

    #[test]
    fn a_block_runs_to_the_next_name() {
        assert_eq!(block(FILE, "ONE"), "-- the first\nSELECT 1");
        assert_eq!(block(FILE, "TWO"), "SELECT 2;");
    }

    #[test]
    #[should_panic(expected = "no statement named THREE")]
    fn a_missing_block_is_refused() {
        block(FILE, "THREE");
    }
}
