//! Secrets from the environment. Every secret is also a setting (`[webhooks.secrets]`,
//! `[llm.secrets]`, and their nested variables `FERRY_WEBHOOKS__SECRETS__NAME`,
//! `FERRY_LLM__SECRETS__NAME`); an `llm` API key has a shorter variable of its own too, the
//! one providers' documentation leads people to write:
//!
//! `FERRY_LLM_SECRET_<NAME>=<key>` is the `llm` secret named `<name>`, the rest of the
//! variable's name in lowercase (`FERRY_LLM_SECRET_OPENAI` is `openai`,
//! `FERRY_LLM_SECRET_AZURE_EU` is `azure_eu`). It wins over the same name in the file or
//! a nested variable. A bad one stops the start, naming the variable, never quoting its
//! value.

use ferry_worker::kinds::{LlmConfig, LlmSecret};
use std::ffi::OsString;

/// The prefix of the variables that hold `llm` API keys.
pub const LLM_SECRET_PREFIX: &str = "FERRY_LLM_SECRET_";

/// Whether a `FERRY_*` variable, without the prefix (as the settings' merge sees it), is
/// an `llm` secret, and so not a setting.
pub(super) fn is_llm_secret(key: &str) -> bool {
    key.to_ascii_lowercase().starts_with("llm_secret_")
}

/// Adds the `llm` secrets of `vars` (the process environment) to `cfg`.
pub(super) fn add_llm_secrets(
    cfg: &mut LlmConfig,
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> anyhow::Result<()> {
    for (var, value) in vars {
        let Some(var) = var.to_str() else { continue };
        let prefix = LLM_SECRET_PREFIX.len();
        if !var.get(..prefix).is_some_and(|p| p.eq_ignore_ascii_case(LLM_SECRET_PREFIX)) {
            continue;
        }
        let name = var[prefix..].to_ascii_lowercase();
        if !ferry_core::job::valid_name(&name) {
            anyhow::bail!(
                "environment variable {var}: the secret's name (after {LLM_SECRET_PREFIX}) {}",
                ferry_core::job::NAME_RULE
            );
        }
        let secret = value
            .to_str()
            .ok_or_else(|| "is not UTF-8".to_string())
            .and_then(|v| v.parse::<LlmSecret>())
            .map_err(|why| anyhow::anyhow!("environment variable {var} (the llm secret `{name}`) {why}"))?;
        cfg.secrets.insert(name, secret);
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
