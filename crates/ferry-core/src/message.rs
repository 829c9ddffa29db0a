//! Error messages with their variable parts taken out, so that failures that differ only
//! in a number, an id or a quoted value group together (`GET /v1/errors`).
//!
//! [`normalise`] replaces, word by word (a word is a run of letters, digits, `-` and `_`):
//!
//! - a UUID, a `0x…` number, or a hex string of 8 or more characters with a digit and a
//!   letter in it (a commit, a request id) by `<id>`;
//! - a run of digits that does not follow a letter by `<n>` (`503`, `12ms` → `<n>ms`,
//!   `job-42` → `job-<n>`; `v2` and `sha256` stay), and numbers joined by dots or a
//!   colon (`1.5`, `127.0.0.1`, `10:30`) by one `<n>`;
//! - a quoted string (`"…"`, `'…'` or `` `…` ``, whose opening quote does not follow a
//!   letter or digit, so `can't` is no quote) by `"…"`.
//!
//! The result is cut to [`MAX_CHARS`] characters: a group's message is a label, not a
//! record (the sample job has the whole message).

/// The longest normalised message, in characters.
pub const MAX_CHARS: usize = 300;

/// The message with numbers, ids and quoted strings replaced by placeholders.
pub fn normalise(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    let mut out = String::with_capacity(message.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let after_word = i > 0 && chars[i - 1].is_alphanumeric();
        if matches!(c, '"' | '\'' | '`')
            && !after_word
            && let Some(end) = chars[i + 1..].iter().position(|&d| d == c)
        {
            out.push_str("\"…\"");
            i += end + 2;
            continue;
        }
        if is_word_char(c) {
            let start = i;
            while i < chars.len() && is_word_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            push_word(&mut out, &word);
            continue;
        }
        // `<n>.<n>` and `<n>:<n>` are one number (a decimal, an address, a time).
        if matches!(c, '.' | ':')
            && out.ends_with("<n>")
            && chars.get(i + 1).is_some_and(char::is_ascii_digit)
            && let Some(len) = digits_word_len(&chars[i + 1..])
        {
            i += 1 + len;
            continue;
        }
        out.push(c);
        i += 1;
    }
    if out.chars().count() > MAX_CHARS {
        out = out.chars().take(MAX_CHARS - 1).collect();
        out.push('…');
    }
    out
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-' || c == '_'
}

/// The length of `chars`' leading word if it is all digits.
fn digits_word_len(chars: &[char]) -> Option<usize> {
    let len = chars.iter().take_while(|c| is_word_char(**c)).count();
    chars[..len].iter().all(char::is_ascii_digit).then_some(len)
}

fn push_word(out: &mut String, word: &str) {
    if is_uuid(word) || is_hex_id(word) {
        out.push_str("<id>");
        return;
    }
    // Digit runs that start the word or follow a non-letter are numbers.
    let mut prev_letter = false;
    let mut in_number = false;
    for c in word.chars() {
        if c.is_ascii_digit() && !prev_letter {
            if !in_number {
                out.push_str("<n>");
                in_number = true;
            }
            continue;
        }
        if !c.is_ascii_digit() {
            in_number = false;
        }
        prev_letter = c.is_alphabetic() || (prev_letter && c.is_ascii_digit());
        if !in_number {
            out.push(c);
        }
    }
}

fn is_uuid(w: &str) -> bool {
    let b = w.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_hex_id(w: &str) -> bool {
    if let Some(hex) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        return !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    }
    w.len() >= 8
        && w.chars().all(|c| c.is_ascii_hexdigit())
        && w.chars().any(|c| c.is_ascii_digit())
        && w.chars().any(|c| c.is_ascii_alphabetic())
}

#[cfg(test)]
mod tests {
    use super::normalise;

    #[test]
    fn numbers_ids_and_quotes_become_placeholders() {
        let cases = [
            ("HTTP 503 from upstream", "HTTP <n> from upstream"),
            ("attempt timed out after 30000 ms", "attempt timed out after <n> ms"),
            ("took 12ms", "took <n>ms"),
            ("job-42 failed", "job-<n> failed"),
            ("sha256 mismatch in v2", "sha256 mismatch in v2"),
            ("job 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b is gone", "job <id> is gone"),
            ("commit deadbeef12 not found", "commit <id> not found"),
            ("pointer 0x7ffd at fault", "pointer <id> at fault"),
            ("connect to 127.0.0.1:8080 refused", "connect to <n> refused"),
            ("ratio 1.5 over", "ratio <n> over"),
            ("id 12345678901 taken", "id <n> taken"),
            (r#"user "alice" not found"#, r#"user "…" not found"#),
            ("key 'a b' and `c` differ", r#"key "…" and "…" differ"#),
            ("can't connect", "can't connect"),
            (r#"unterminated "quote"#, r#"unterminated "quote"#),
            ("worker node-a:1234:ab12cd34ef stopped", "worker node-a:<n>:<id> stopped"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(normalise(input), want, "{input}");
        }
    }

    #[test]
    fn messages_that_differ_only_in_their_values_are_equal() {
        assert_eq!(normalise("order 17 failed: status 500"), normalise("order 9001 failed: status 502"));
        assert_ne!(normalise("order 17 failed"), normalise("invoice 17 failed"));
    }

    #[test]
    fn long_messages_are_cut() {
        let long = "word ".repeat(200);
        let n = normalise(&long);
        assert_eq!(n.chars().count(), super::MAX_CHARS);
        assert!(n.ends_with('…'));
    }
}
