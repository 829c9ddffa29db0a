//! Secrets from the environment. Every secret is also a setting (`[webhooks.secrets]`,
//! `[llm.secrets]`, and their nested variables `FERRY_WEBHOOKS__SECRETS__NAME`,
//! `FERRY_LLM__SECRETS__NAME`); an `llm` API key has a shorter variable of its own too, the
//! one providers' documentation leads people to write, and so do the base URLs it may go
//! to:
//!
//! - `FERRY_LLM_SECRET_<NAME>=<key>` is the key of the `llm` secret named `<name>`, the
//!   rest of the variable's name in lowercase (`FERRY_LLM_SECRET_OPENAI` is `openai`,
//!   `FERRY_LLM_SECRET_AZURE_EU` is `azure_eu`). It wins over the key the file or a nested
//!   variable gives the same name, and keeps the base URLs they give it: a key moved to the
//!   environment never loses its binding.
//! - `FERRY_LLM_BASE_URLS_<NAME>=<url>,<url>…` binds the secret `<name>` (from any source)
//!   to those base URLs, replacing any the file gave it. A separate prefix, rather than a
//!   suffix on the key's variable: `FERRY_LLM_SECRET_OPENAI_BASE_URLS` is, and stays, the
//!   key of a secret named `openai_base_urls`.
//!
//! A bad one stops the start, naming the variable, never quoting a key.

use ferry_worker::kinds::{BaseUrl, LLM_BASE_URLS_VAR, LLM_SECRET_VAR, LlmConfig};
use std::ffi::OsString;

/// Whether a `FERRY_*` variable, without the prefix (as the settings' merge sees it), is
/// an `llm` key or base URLs variable, and so not a setting.
pub(super) fn is_llm_variable(key: &str) -> bool {
    [LLM_SECRET_VAR, LLM_BASE_URLS_VAR].iter().any(|prefix| {
        let prefix = &prefix[super::ENV_PREFIX.len()..];
        key.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    })
}

/// The secret's name in `var`, when `var` starts with `prefix` (in any case).
fn name_after(var: &str, prefix: &str) -> anyhow::Result<Option<String>> {
    if !var.get(..prefix.len()).is_some_and(|p| p.eq_ignore_ascii_case(prefix)) {
        return Ok(None);
    }
    let name = var[prefix.len()..].to_ascii_lowercase();
    if !ferry_core::job::valid_name(&name) {
        anyhow::bail!("environment variable {var}: the secret's name (after {prefix}) {}", ferry_core::job::NAME_RULE);
    }
    Ok(Some(name))
}

/// Adds the `llm` keys and base URLs of `vars` (the process environment) to `cfg`.
pub(super) fn add_llm_secrets(
    cfg: &mut LlmConfig,
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> anyhow::Result<()> {
    let vars: Vec<(String, OsString)> = vars.filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v))).collect();
    // Keys first: a base URLs variable may bind a key that only the environment gives.
    for (var, value) in &vars {
        let Some(name) = name_after(var, LLM_SECRET_VAR)? else { continue };
        let secret = cfg.secrets.entry(name.clone()).or_default();
        value
            .to_str()
            .ok_or_else(|| "is not UTF-8".to_string())
            .and_then(|key| secret.set_key(key))
            .map_err(|why| anyhow::anyhow!("environment variable {var} (the llm secret `{name}`) {why}"))?;
    }
    for (var, value) in &vars {
        let Some(name) = name_after(var, LLM_BASE_URLS_VAR)? else { continue };
        let bad = |why: String| {
            anyhow::anyhow!("environment variable {var} (the base URLs of the llm secret `{name}`) {why}")
        };
        let value = value.to_str().ok_or_else(|| bad("is not UTF-8".into()))?;
        let urls = value
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .enumerate()
            .map(|(i, u)| u.parse::<BaseUrl>().map_err(|why| bad(format!("URL {}: {why}", i + 1))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let Some(secret) = cfg.secrets.get_mut(&name) else {
            anyhow::bail!(
                "environment variable {var} binds the llm secret `{name}`, which is not configured \
                 (llm.secrets.{name} or {LLM_SECRET_VAR}{})",
                name.to_ascii_uppercase()
            );
        };
        secret.bind(urls).map_err(|why| bad(format!("is a comma-separated list: {why}")))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
mod tests {
    use crate::config::{Config, FlagOverrides};
    use std::path::PathBuf;

    /// The Standard Webhooks test vector's secret.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn llm_secrets_come_from_the_file_and_both_env_forms_and_are_never_shown() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("llm.toml", "[llm.secrets]\nopenai = \"sk-from-file\"\nlocal = \"sk-local-1\"\n")?;
            jail.set_env("FERRY_LLM_SECRET_OPENAI", "sk-from-env");
            jail.set_env("FERRY_LLM_SECRET_AZURE_EU", "az-key-2");
            jail.set_env("FERRY_LLM__SECRETS__NESTED", "sk-nested-3");
            let cfg = Config::load(Some(&PathBuf::from("llm.toml")), &FlagOverrides::default()).unwrap();
            let names: Vec<&str> = cfg.llm.secrets.keys().map(String::as_str).collect();
            assert_eq!(names, ["azure_eu", "local", "nested", "openai"]);
            assert_eq!(cfg.llm.secrets["openai"], "sk-from-env".parse().unwrap(), "the short variable wins");
            let shown = cfg.show().unwrap();
            for key in ["sk-from", "az-key-2", "sk-local-1", "sk-nested-3"] {
                assert!(!shown.contains(key), "{shown}");
            }
            let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
            assert_eq!(shown["llm"]["secrets"]["openai"], "<redacted>");
            Ok(())
        });
    }

    #[test]
    fn a_bad_llm_secret_is_refused_naming_its_variable_not_its_value() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FERRY_LLM_SECRET_OPENAI", "sk two words");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("FERRY_LLM_SECRET_OPENAI") && err.contains("`openai`"), "{err}");
            assert!(!err.contains("two words"), "{err}");
            jail.set_env("FERRY_LLM_SECRET_OPENAI", "sk-ok");
            jail.set_env("FERRY_LLM_SECRET_", "sk-nameless");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("environment variable FERRY_LLM_SECRET_:") && !err.contains("nameless"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_secret_is_bound_to_base_urls_by_its_table_or_its_own_variable() {
        figment::Jail::expect_with(|jail| {
            let file = "[llm.secrets.openai]\nkey = \"sk-file-1\"\n\
                base_urls = [\"HTTPS://api.openai.com:443/v1/\", \"https://eu.api.openai.com/v1\"]\n\
                [llm.secrets.vault]\nbase_urls = [\"https://vault.example/v1\"]\n\
                [llm.secrets.nested]\nbase_urls = [\"https://nested.example/v1\"]\n\
                [llm.secrets]\nlocal = \"sk-local-2\"\n";
            jail.create_file("llm.toml", file)?;
            // The key of `vault` comes from the environment only; `openai`'s is replaced
            // there, its binding kept.
            jail.set_env("FERRY_LLM_SECRET_VAULT", "sk-vault-3");
            // The nested form of a table's key merges into the table.
            jail.set_env("FERRY_LLM__SECRETS__NESTED__KEY", "sk-nested-5");
            jail.set_env("FERRY_LLM_SECRET_OPENAI", "sk-env-4");
            jail.set_env("FERRY_LLM_BASE_URLS_LOCAL", " http://127.0.0.1:8089/v1 , http://LOCALHOST:8089/v1/,");
            let cfg = Config::load(Some(&PathBuf::from("llm.toml")), &FlagOverrides::default()).unwrap();
            let urls = |name: &str| -> Vec<String> {
                cfg.llm.secrets[name].base_urls().iter().map(ToString::to_string).collect()
            };
            assert_eq!(urls("openai"), ["https://api.openai.com/v1", "https://eu.api.openai.com/v1"]);
            assert_eq!(urls("local"), ["http://127.0.0.1:8089/v1", "http://localhost:8089/v1"]);
            assert_eq!(urls("vault"), ["https://vault.example/v1"]);
            assert_eq!(urls("nested"), ["https://nested.example/v1"]);
            assert!(cfg.llm.secrets["nested"].has_key());
            let mut expected: ferry_worker::kinds::LlmSecret = "sk-env-4".parse().unwrap();
            expected
                .bind(vec![
                    "https://api.openai.com/v1".parse().unwrap(),
                    "https://eu.api.openai.com/v1".parse().unwrap(),
                ])
                .unwrap();
            assert_eq!(cfg.llm.secrets["openai"], expected, "the variable's key, the file's base URLs");
            assert_eq!(cfg.llm.unbound().count(), 0);
            let shown = cfg.show().unwrap();
            for key in ["sk-file-1", "sk-local-2", "sk-vault-3", "sk-env-4", "sk-nested-5"] {
                assert!(!shown.contains(key), "{shown}");
            }
            let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
            assert_eq!(
                shown["llm"]["secrets"]["local"],
                serde_json::json!({"key": "<redacted>", "base_urls": ["http://127.0.0.1:8089/v1", "http://localhost:8089/v1"]})
            );
            // The environment's list replaces the file's.
            jail.set_env("FERRY_LLM_BASE_URLS_OPENAI", "https://proxy.example/openai");
            let cfg = Config::load(Some(&PathBuf::from("llm.toml")), &FlagOverrides::default()).unwrap();
            assert_eq!(cfg.llm.secrets["openai"].base_urls()[0].to_string(), "https://proxy.example/openai");
            assert_eq!(cfg.llm.secrets["openai"].base_urls().len(), 1);
            Ok(())
        });
    }

    #[test]
    fn the_base_urls_variable_cannot_be_read_as_a_key_nor_a_key_as_base_urls() {
        figment::Jail::expect_with(|jail| {
            // The key of a secret named `openai_base_urls`, however much it looks like a
            // list of URLs; and the URLs of `openai`, never a key.
            jail.set_env("FERRY_LLM_SECRET_OPENAI", "sk-1");
            jail.set_env("FERRY_LLM_SECRET_OPENAI_BASE_URLS", "https://api.openai.com/v1");
            jail.set_env("FERRY_LLM_BASE_URLS_OPENAI", "https://api.openai.com/v1");
            let cfg = Config::load(None, &FlagOverrides::default()).unwrap();
            let names: Vec<&str> = cfg.llm.secrets.keys().map(String::as_str).collect();
            assert_eq!(names, ["openai", "openai_base_urls"]);
            assert_eq!(cfg.llm.secrets["openai"].base_urls().len(), 1);
            assert!(cfg.llm.secrets["openai_base_urls"].base_urls().is_empty());
            assert_eq!(cfg.llm.unbound().collect::<Vec<_>>(), ["openai_base_urls"]);
            Ok(())
        });
    }

    #[test]
    fn bad_base_urls_stop_the_start_naming_their_variable_or_key() {
        figment::Jail::expect_with(|jail| {
            let load = || Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            jail.set_env("FERRY_LLM_BASE_URLS_OPENAI", "https://api.openai.com/v1");
            let err = load();
            assert!(
                err.contains("FERRY_LLM_BASE_URLS_OPENAI binds the llm secret `openai`, which is not configured"),
                "{err}"
            );
            jail.set_env("FERRY_LLM_SECRET_OPENAI", "sk-1");
            jail.set_env("FERRY_LLM_BASE_URLS_OPENAI", "https://api.openai.com/v1,ftp://x");
            let err = load();
            assert!(err.contains("FERRY_LLM_BASE_URLS_OPENAI") && err.contains("URL 2: must be an http"), "{err}");
            jail.set_env("FERRY_LLM_BASE_URLS_OPENAI", " , ");
            assert!(load().contains("at least one URL"), "{}", load());
            jail.set_env("FERRY_LLM_BASE_URLS_OPENAI", "https://api.openai.com/v1");
            jail.set_env("FERRY_LLM_BASE_URLS_", "https://x");
            assert!(load().contains("environment variable FERRY_LLM_BASE_URLS_:"), "{}", load());
            jail.clear_env();
            jail.create_file(
                "bad.toml",
                "[llm.secrets.azure]\nkey = \"sk-2\"\nbase_urls = [\"https://h/v1?api-version=1\"]\n",
            )?;
            let err = Config::load(Some(&PathBuf::from("bad.toml")), &FlagOverrides::default()).unwrap_err();
            assert!(err.to_string().contains("llm.secrets.azure") && err.to_string().contains("no query"), "{err}");
            jail.create_file("keyless.toml", "[llm.secrets.azure]\nbase_urls = [\"https://h/v1\"]\n")?;
            let err = Config::load(Some(&PathBuf::from("keyless.toml")), &FlagOverrides::default()).unwrap_err();
            assert!(
                err.to_string()
                    .contains("llm.secrets.azure has no key: set `key` in its table or FERRY_LLM_SECRET_AZURE"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn require_base_urls_refuses_to_start_with_an_unbound_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("strict.toml", "[llm]\nrequire_base_urls = true\n[llm.secrets]\nopenai = \"sk-1\"\n")?;
            let load = || Config::load(Some(&PathBuf::from("strict.toml")), &FlagOverrides::default());
            let err = load().unwrap_err().to_string();
            assert!(
                err.contains("llm.require_base_urls is set, but the llm secret `openai` has no base_urls"),
                "{err}"
            );
            assert!(err.contains("FERRY_LLM_BASE_URLS_OPENAI") && !err.contains("sk-1"), "{err}");
            jail.set_env("FERRY_LLM_BASE_URLS_OPENAI", "https://api.openai.com/v1");
            assert!(load().unwrap().llm.require_base_urls);
            // The setting's nested variable, like any other.
            jail.clear_env();
            jail.set_env("FERRY_LLM__REQUIRE_BASE_URLS", "false");
            jail.create_file("strict.toml", "[llm.secrets]\nopenai = \"sk-1\"\n")?;
            assert!(!load().unwrap().llm.require_base_urls);
            jail.set_env("FERRY_LLM__REQUIRE_BASE_URLS", "true");
            assert!(load().unwrap_err().to_string().contains("llm.require_base_urls is set"));
            Ok(())
        });
    }

    #[test]
    fn webhook_secrets_come_from_the_file_and_env_and_are_never_shown() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("hooks.toml", &format!("[webhooks.secrets]\nbilling = \"{SECRET}\"\n"))?;
            jail.set_env("FERRY_WEBHOOKS__SECRETS__PARTNER", SECRET);
            let cfg = Config::load(Some(&PathBuf::from("hooks.toml")), &FlagOverrides::default()).unwrap();
            let names: Vec<&str> = cfg.webhooks.secrets.keys().map(String::as_str).collect();
            assert_eq!(names, ["billing", "partner"], "a nested env key adds a secret");
            let shown = cfg.show().unwrap();
            assert!(!shown.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{shown}");
            let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
            let redacted = serde_json::json!({"billing": "<redacted>", "partner": "<redacted>"});
            assert_eq!(shown["webhooks"]["secrets"], redacted);
            Ok(())
        });
    }

    #[test]
    fn a_bad_webhook_secret_is_refused_naming_its_key_not_its_value() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("FERRY_WEBHOOKS__SECRETS__PARTNER", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(
                err.contains("`webhooks.secrets.partner`") && err.contains("FERRY_WEBHOOKS__SECRETS__PARTNER"),
                "{err}"
            );
            assert!(err.contains("whsec_") && !err.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"), "{err}");
            jail.set_env("FERRY_WEBHOOKS__SECRETS__PARTNER", "whsec_c2hvcnQ=");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("webhooks.secrets.partner") && err.contains("at least 24"), "{err}");
            jail.set_env("FERRY_WEBHOOKS__SECRETS__PARTNER", SECRET);
            jail.create_file("bad.toml", "[webhooks.secrets]\nbilling = \"whsec_***\"\n")?;
            let err = Config::load(Some(&PathBuf::from("bad.toml")), &FlagOverrides::default()).unwrap_err();
            let err = err.to_string();
            assert!(err.contains("`webhooks.secrets.billing` in ") && err.contains("base64"), "{err}");
            assert!(!err.contains("***"), "{err}");
            Ok(())
        });
    }
}
