//! The API keys of `llm` calls, and where each may be sent.
//!
//! A key is the server's, by name; a job names the one its call carries and chooses the
//! call's `base_url`. Without a binding, anyone who may submit a job could send any key
//! to a server of their own and read it there. So a secret may carry the base URLs it may
//! go to ([`LlmSecret::base_urls`]), and a job's `base_url` must then be one of them or a
//! path under one, compared after normalising both ([`BaseUrl`]): the scheme and host in
//! lowercase (as URL parsing leaves them), the port explicit (a default one and an absent
//! one are the same), the path without its trailing `/`, the query ignored (it does not
//! change where the key goes: Azure's `?api-version=` stays allowed). A path under a base
//! URL is that path followed by `/`: `https://h/v1` allows `https://h/v1/` and
//! `https://h/v1/x`, never `https://h/v1.evil.example` nor `https://h/v10`.
//!
//! In the configuration a secret is a key (`openai = "sk-…"`, unbound: it may go
//! anywhere, for compatibility) or a table (`[llm.secrets.openai] key = "sk-…", base_urls
//! = ["https://api.openai.com/v1"]`). A table may leave its `key` to the environment
//! (`FERRY_LLM_SECRET_OPENAI`), so that a configuration file can hold the bindings without
//! the keys; [`super::LlmConfig::validate`] refuses a secret that ends up with no key.

use reqwest::Url;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What a key is shown as, and what replaces it in anything an attempt records.
pub(super) const REDACTED: &str = "<redacted>";
/// The longest key.
const MAX_KEY_CHARS: usize = 4096;
/// The most base URLs one secret may list.
const MAX_BASE_URLS: usize = 64;

/// An API key: 1 to 4096 visible ASCII characters (what an `Authorization` header may
/// carry). Its `Debug` is `<redacted>`, and a refusal never quotes it.
#[derive(Clone, PartialEq, Eq)]
struct ApiKey(String);

impl FromStr for ApiKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_KEY_CHARS || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("must be 1 to {MAX_KEY_CHARS} visible ASCII characters (an API key)"));
        }
        Ok(ApiKey(s.to_string()))
    }
}

/// An API key of the server's configuration and the base URLs it may be sent to. The key
/// never leaves the process but in an `Authorization` header: its `Debug` and its
/// serialised form show `<redacted>` (so `ferry config show` prints that: the plain string
/// for an unbound secret, `{"key": "<redacted>", "base_urls": […]}` for a bound one).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LlmSecret {
    /// `None` only while the configuration is being merged: a table that leaves its key
    /// to the environment.
    key: Option<ApiKey>,
    /// Empty: unbound, the key may go to any `base_url`.
    base_urls: Vec<BaseUrl>,
}

impl LlmSecret {
    /// The key, once configured.
    pub(super) fn key(&self) -> Option<&str> {
        self.key.as_ref().map(|k| k.0.as_str())
    }

    /// Whether a key is configured.
    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// Sets the key (`FERRY_LLM_SECRET_NAME`), keeping the base URLs: a key given in the
    /// environment must not undo the binding the file gave it.
    pub fn set_key(&mut self, key: &str) -> Result<(), String> {
        self.key = Some(key.parse()?);
        Ok(())
    }

    /// The base URLs the key may be sent to; empty: any.
    pub fn base_urls(&self) -> &[BaseUrl] {
        &self.base_urls
    }

    /// Binds the key to `urls`, replacing any binding it had; at least one URL.
    pub fn bind(&mut self, urls: Vec<BaseUrl>) -> Result<(), String> {
        check_count(urls.len())?;
        self.base_urls = urls;
        Ok(())
    }

    /// Whether `base_url` (a call's, as its job gave it) may receive the key; `Err` says
    /// why not, naming the secret `name` and the base URLs it is bound to.
    pub(super) fn allows(&self, name: &str, base_url: &Url) -> Result<(), String> {
        if self.base_urls.is_empty() {
            return Ok(());
        }
        let target = BaseUrl::of(base_url);
        if target.as_ref().is_some_and(|t| self.base_urls.iter().any(|b| b.allows(t))) {
            return Ok(());
        }
        let allowed: Vec<String> = self.base_urls.iter().map(BaseUrl::to_string).collect();
        let asked = target.map_or_else(|| base_url.to_string(), |t| t.to_string());
        Err(format!(
            "may not receive the secret `{name}`: it goes only to {} or a path under one of them \
             (llm.secrets.{name}.base_urls), not to {asked}",
            allowed.join(", ")
        ))
    }
}

/// A secret without base URLs, from its key alone.
impl FromStr for LlmSecret {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(LlmSecret { key: Some(s.parse()?), base_urls: Vec::new() })
    }
}

fn check_count(n: usize) -> Result<(), String> {
    match n {
        0 => Err("base_urls must list at least one URL (leave it out to let the key go to any base_url)".into()),
        n if n > MAX_BASE_URLS => Err(format!("base_urls may list at most {MAX_BASE_URLS} URLs")),
        _ => Ok(()),
    }
}

impl fmt::Debug for LlmSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = if self.key.is_some() { REDACTED } else { "<none>" };
        if self.base_urls.is_empty() {
            return f.write_str(key);
        }
        f.debug_struct("LlmSecret").field("key", &key).field("base_urls", &self.base_urls).finish()
    }
}

impl Serialize for LlmSecret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.base_urls.is_empty() && self.key.is_some() {
            return s.serialize_str(REDACTED);
        }
        let mut map = s.serialize_map(None)?;
        if self.key.is_some() {
            map.serialize_entry("key", REDACTED)?;
        }
        map.serialize_entry("base_urls", &self.base_urls)?;
        map.end()
    }
}

/// The table form, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    base_urls: Option<Vec<BaseUrl>>,
}

impl<'de> Deserialize<'de> for LlmSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;

        impl<'de> Visitor<'de> for Either {
            type Value = LlmSecret;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an API key, or a table with `key` and `base_urls`")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<LlmSecret, E> {
                s.parse().map_err(E::custom)
            }

            fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<LlmSecret, M::Error> {
                let table = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let mut secret = LlmSecret::default();
                if let Some(key) = table.key {
                    secret.set_key(&key).map_err(de::Error::custom)?;
                }
                if let Some(urls) = table.base_urls {
                    secret.bind(urls).map_err(de::Error::custom)?;
                }
                Ok(secret)
            }
        }

        d.deserialize_any(Either)
    }
}

/// A base URL a key may be sent to, normalised: `http` or `https`, the host in lowercase,
/// the port explicit, the path without its trailing `/`. Written without a query, a
/// fragment or credentials. It shows as the URL it stands for, the default port left out
/// (`https://api.openai.com/v1`).
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl {
    scheme: String,
    host: String,
    port: u16,
    /// `""` for the root, else `/…` without a trailing `/`.
    path: String,
}

impl BaseUrl {
    /// The normalised parts of any http(s) URL (a query or credentials are left out);
    /// `None` without a host or a known port.
    fn of(url: &Url) -> Option<BaseUrl> {
        let host = url.host_str().filter(|h| !h.is_empty())?;
        Some(BaseUrl {
            scheme: url.scheme().to_ascii_lowercase(),
            host: host.to_ascii_lowercase(),
            port: url.port_or_known_default()?,
            path: url.path().trim_end_matches('/').to_string(),
        })
    }

    /// Whether `target` is this URL or a path under it.
    fn allows(&self, target: &BaseUrl) -> bool {
        self.scheme == target.scheme
            && self.host == target.host
            && self.port == target.port
            && (target.path == self.path
                || target.path.strip_prefix(self.path.as_str()).is_some_and(|rest| rest.starts_with('/')))
    }
}

impl FromStr for BaseUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let url = Url::parse(s.trim()).map_err(|e| format!("is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http or https URL".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must have no query or fragment (a job's base_url may add a query)".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must have no user name or password".into());
        }
        BaseUrl::of(&url).ok_or_else(|| "must have a host".into())
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = match self.scheme.as_str() {
            "http" => 80,
            _ => 443,
        };
        write!(f, "{}://{}", self.scheme, self.host)?;
        if self.port != default {
            write!(f, ":{}", self.port)?;
        }
        f.write_str(&self.path)
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for BaseUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BaseUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(s: &str) -> BaseUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bound(urls: &[&str]) -> LlmSecret {
        let mut secret: LlmSecret = "sk-test".parse().unwrap();
        secret.bind(urls.iter().map(|u| base(u)).collect()).unwrap();
        secret
    }

    fn allowed(secret: &LlmSecret, url: &str) -> bool {
        secret.allows("openai", &Url::parse(url).unwrap()).is_ok()
    }

    #[test]
    fn a_base_url_is_normalised() {
        let cases = [
            ("https://api.openai.com/v1", "https://api.openai.com/v1"),
            ("HTTPS://API.OpenAI.com:443/v1/", "https://api.openai.com/v1"),
            ("http://Example.COM:80", "http://example.com"),
            ("http://example.com/", "http://example.com"),
            ("http://127.0.0.1:8089/v1//", "http://127.0.0.1:8089/v1"),
            ("https://h:8443/a/b", "https://h:8443/a/b"),
            ("http://[::1]:9000/v1", "http://[::1]:9000/v1"),
            ("  https://h/v1  ", "https://h/v1"),
        ];
        for (given, shown) in cases {
            assert_eq!(base(given).to_string(), shown, "{given}");
        }
        assert_eq!(base("https://h:443/v1"), base("https://H/v1/"));
        for (bad, why) in [
            ("ftp://h/v1", "http or https"),
            ("not a url", "is not a URL"),
            ("https://h/v1?api-version=1", "no query"),
            ("https://h/v1#x", "no query or fragment"),
            ("https://user:pw@h/v1", "no user name"),
        ] {
            let err = bad.parse::<BaseUrl>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_bound_key_goes_only_to_its_base_urls_and_paths_under_them() {
        let secret = bound(&["https://api.openai.com/v1", "http://127.0.0.1:8089/v1"]);
        for ok in [
            "https://api.openai.com/v1",
            "https://api.openai.com/v1/",
            "HTTPS://API.OPENAI.COM:443/v1",
            "https://api.openai.com/v1/deployments/x?api-version=2",
            "https://api.openai.com/v1?api-version=2",
            "http://127.0.0.1:8089/v1",
            "http://127.0.0.1:8089/v1/",
        ] {
            assert!(allowed(&secret, ok), "{ok} should be allowed");
        }
        for refused in [
            "https://api.openai.com/v1.evil.example",
            "https://api.openai.com/v10",
            "https://api.openai.com/",
            "https://api.openai.com/V1",
            "http://api.openai.com/v1",
            "https://api.openai.com:8443/v1",
            "https://api.openai.com.evil.example/v1",
            "https://evil.example/api.openai.com/v1",
            "https://api.openai.com@evil.example/v1",
            "http://127.0.0.1:8090/v1",
            "http://127.0.0.1:8089/v1.evil.example",
            "http://localhost:8089/v1",
            "https://api.openai.com/v1/../evil",
        ] {
            assert!(!allowed(&secret, refused), "{refused} should be refused");
        }
        let why = secret.allows("openai", &Url::parse("https://evil.example/v1").unwrap()).unwrap_err();
        assert_eq!(
            why,
            "may not receive the secret `openai`: it goes only to https://api.openai.com/v1, \
             http://127.0.0.1:8089/v1 or a path under one of them (llm.secrets.openai.base_urls), \
             not to https://evil.example/v1"
        );
        // A root allows the whole origin, and an unbound key goes anywhere.
        assert!(allowed(&bound(&["https://h"]), "https://h/any/path"));
        assert!(!allowed(&bound(&["https://h/"]), "https://h.evil/any"));
        assert!(allowed(&"sk-test".parse().unwrap(), "http://anywhere.example/v1"));
    }

    #[test]
    fn a_secret_reads_as_a_key_or_a_table_and_shows_no_key() {
        let plain: LlmSecret = serde_json::from_value(serde_json::json!("sk-1")).unwrap();
        assert_eq!((plain.key(), plain.base_urls()), (Some("sk-1"), &[][..]));
        assert_eq!(serde_json::to_value(&plain).unwrap(), serde_json::json!(REDACTED));
        let table: LlmSecret = serde_json::from_value(
            serde_json::json!({"key": "sk-2", "base_urls": ["HTTPS://api.openai.com/v1/", "https://eu.example/v1"]}),
        )
        .unwrap();
        assert_eq!(table.key(), Some("sk-2"));
        let shown = serde_json::to_value(&table).unwrap();
        assert_eq!(
            shown,
            serde_json::json!({"key": REDACTED, "base_urls": ["https://api.openai.com/v1", "https://eu.example/v1"]})
        );
        assert_eq!(
            format!("{table:?}"),
            r#"LlmSecret { key: "<redacted>", base_urls: [https://api.openai.com/v1, https://eu.example/v1] }"#
        );
        let keyless: LlmSecret = serde_json::from_value(serde_json::json!({"base_urls": ["https://h/v1"]})).unwrap();
        assert!(!keyless.has_key());
        let refusal = |v: serde_json::Value| serde_json::from_value::<LlmSecret>(v).unwrap_err().to_string();
        assert!(refusal(serde_json::json!({"key": "sk-3", "base_urls": []})).contains("at least one URL"));
        assert!(refusal(serde_json::json!({"key": "sk-3", "base_url": ["https://h"]})).contains("base_url"));
        assert!(refusal(serde_json::json!({"key": "sk-3", "base_urls": ["ftp://h"]})).contains("http or https"));
        let bad_key = refusal(serde_json::json!({"key": "sk two words"}));
        assert!(bad_key.contains("visible ASCII") && !bad_key.contains("two words"), "{bad_key}");
        assert!(refusal(serde_json::json!(3)).contains("an API key, or a table"));
    }
}
