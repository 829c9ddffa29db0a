//! The CLI's API client: one base URL, an optional token, and errors a person can act on.
//!
//! Every client command goes through [`Client::call`]. What it promises:
//! - `--server` may leave out the scheme (`127.0.0.1:7899`, `localhost:7700`): `http://` is
//!   assumed, since Ferry itself serves plain HTTP.
//! - A refusal from Ferry is shown as its status, `code`, message and field.
//! - A 401 also says how to send a token (`--token` or `FERRY_TOKEN`).
//! - An answer that is not Ferry's (another program on that port, a proxy's error page) is
//!   shown with its status and the start of its body, never as an empty error.

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;

/// How much of an unexpected answer's body an error shows.
const SNIPPET_CHARS: usize = 200;

/// A thin client of the HTTP API.
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// `--server` as given, with `http://` when it names no scheme and without a trailing `/`.
pub fn base_url(server: &str) -> String {
    let server = server.trim().trim_end_matches('/');
    if server.contains("://") { server.to_string() } else { format!("http://{server}") }
}

/// The first `SNIPPET_CHARS` characters of a body, on one line.
fn snippet(body: &str) -> String {
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(SNIPPET_CHARS) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None if one_line.is_empty() => "(an empty body)".to_string(),
        None => one_line,
    }
}

impl Client {
    /// A client of the server at `server` (see [`base_url`]), sending `token` if given.
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        Ok(Client { base: base_url(server), http, token })
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(String, reqwest::Response)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the Ferry server at {}", self.base))?;
        Ok((url, resp))
    }

    /// Sends a request; returns the JSON answer of a 2xx, or an error that says what the
    /// server answered.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (url, resp) = self.send(method, path, body).await?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("cannot read the answer of {url}"))?;
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        if status.is_success() {
            return serde_json::from_str(&text).ok().with_context(|| {
                format!(
                    "{url} answered {status} with something that is not JSON (is it a Ferry server?): {}",
                    snippet(&text)
                )
            });
        }
        Err(self.refusal(&url, status, &text))
    }

    /// GETs `path`; returns the bytes of a 2xx answer as they came (a blob), or an error
    /// that says what the server answered.
    pub async fn bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let (url, resp) = self.send(Method::GET, path, None).await?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| format!("cannot read the answer of {url}"))?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        Err(self.refusal(&url, status, &String::from_utf8_lossy(&body)))
    }

    /// The error for an unsuccessful answer: Ferry's refusal with its code and field, or
    /// the start of a body that is not Ferry's.
    fn refusal(&self, url: &str, status: StatusCode, text: &str) -> anyhow::Error {
        let value: Option<Value> = serde_json::from_str(text).ok();
        let Some(e) = value.as_ref().map(|v| &v["error"]).filter(|e| e["code"].is_string()) else {
            return anyhow::anyhow!(
                "{url} answered {status}, not with a Ferry error (is it a Ferry server?): {}",
                snippet(text)
            );
        };
        let field =
            e["field"].as_str().filter(|f| !f.is_empty()).map(|f| format!(" (field `{f}`)")).unwrap_or_default();
        let hint = if status == StatusCode::UNAUTHORIZED {
            if self.token.is_some() {
                "; check the token given with --token or FERRY_TOKEN"
            } else {
                "; pass a token with --token or FERRY_TOKEN (`ferry token create` makes one)"
            }
        } else {
            ""
        };
        anyhow::anyhow!(
            "{status}: {}: {}{field}{hint}",
            e["code"].as_str().unwrap_or("error"),
            e["message"].as_str().unwrap_or("")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_without_a_scheme_is_http() {
        assert_eq!(base_url("127.0.0.1:7899"), "http://127.0.0.1:7899");
        assert_eq!(base_url("localhost:7700/"), "http://localhost:7700");
        assert_eq!(base_url("https://ferry.example.com/"), "https://ferry.example.com");
    }

    #[test]
    fn a_snippet_is_one_short_line() {
        assert_eq!(snippet("<html>\n  <body>Not   Found</body>\n</html>"), "<html> <body>Not Found</body> </html>");
        assert_eq!(snippet(""), "(an empty body)");
        let long = "x".repeat(500);
        assert_eq!(snippet(&long).chars().count(), SNIPPET_CHARS + 1);
    }
}
