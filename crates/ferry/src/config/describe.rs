//! How the configuration is shown: figment's refusals as one line each, naming the
//! setting as written and its source, and URLs with their credentials redacted.

use super::ENV_PREFIX;

/// Settings that exist but are not documented for users (tests and benchmarks set them);
/// a refusal does not offer them.
const UNLISTED: &[&str] = &["exec_helper"];

/// Figment's errors, each as one line that names the setting as the user wrote it and its
/// source: `FERRY_NOSUCH` (environment), `nosuch` in FILE, or a flag.
pub(super) fn describe(errors: figment::Error) -> String {
    use figment::error::Kind;
    let lines: Vec<String> = errors
        .into_iter()
        .map(|e| {
            let key = e.path.join(".");
            let file = e.metadata.as_ref().and_then(|m| m.source.as_ref()).and_then(|s| s.file_path());
            let from_env = e.metadata.as_ref().is_some_and(|m| m.name.contains("environment"));
            let name = if key.is_empty() { "the configuration".to_string() } else { format!("`{key}`") };
            let source = match file {
                Some(path) => format!(" in {}", path.display()),
                None if from_env => {
                    let var: Vec<String> = e.path.iter().map(|p| p.to_ascii_uppercase()).collect();
                    format!(" (environment variable {ENV_PREFIX}{})", var.join("__"))
                }
                None if e.metadata.is_some() => " (command-line flag)".to_string(),
                None => String::new(),
            };
            let one_of = |names: &[&str]| {
                let names: Vec<&str> = names.iter().copied().filter(|n| !UNLISTED.contains(n)).collect();
                names.join(", ")
            };
            match &e.kind {
                Kind::UnknownField(_, expected) => {
                    format!("unknown setting {name}{source}; the settings here are: {}", one_of(expected))
                }
                Kind::UnknownVariant(value, expected) => {
                    format!("{name}{source}: unknown value `{value}`; expected one of: {}", one_of(expected))
                }
                Kind::InvalidType(actual, expected) => format!("{name}{source}: expected {expected}, found {actual}"),
                Kind::InvalidValue(actual, expected) => format!("{name}{source}: expected {expected}, found {actual}"),
                Kind::Message(m) => format!("{name}{source}: {m}"),
                other => format!("{name}{source}: {}", other.to_string().replace("``", "`")),
            }
        })
        .collect();
    lines.join("; ")
}

/// `https://hooks.example/services/T0/B0/XXX` → `https://hooks.example/<redacted>`, for
/// showing a URL whose path or query may hold a credential.
pub fn redact_path(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    match rest.find(['/', '?', '#']) {
        Some(cut) => format!("{scheme}://{}/<redacted>", &rest[..cut]),
        None => url.to_string(),
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for showing a URL.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let Some((auth, host)) = rest.rsplit_once('@') else { return url.to_string() };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}
