//! The API's listen address: `IP:PORT` or `HOST:PORT`, resolved when the server starts.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// An address to listen on: `IP:PORT` or `HOST:PORT` (`localhost:7700`). A host name is
/// resolved when the server starts ([`ListenAddr::resolve`]); `localhost` is loopback, so
/// it keeps the unauthenticated open mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr(String);

/// Why a text is not a [`ListenAddr`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrError(String);

impl fmt::Display for ListenAddrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not HOST:PORT (e.g. 127.0.0.1:7700, localhost:7700, [::1]:7700)", self.0)
    }
}

impl std::error::Error for ListenAddrError {}

impl FromStr for ListenAddr {
    type Err = ListenAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.parse::<SocketAddr>().is_ok() {
            return Ok(ListenAddr(s.to_string()));
        }
        let bad = || ListenAddrError(s.to_string());
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b));
        if !host_ok || port.parse::<u16>().is_err() {
            return Err(bad());
        }
        Ok(ListenAddr(s.to_string()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ListenAddr {
    /// The socket address to bind: an IP address as given, or the host name's first IPv4
    /// address (IPv6 if it has none), so that `localhost` means 127.0.0.1 like the CLI's
    /// default server URL.
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Ok(addr) = self.0.parse() {
            return Ok(addr);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(self.0.as_str()).await?.collect();
        addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} resolves to no address", self.0))
        })
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure type, not ours
mod tests {
    use super::*;
    use crate::config::{Config, FlagOverrides};

    #[test]
    fn listen_takes_an_address_or_a_host_name() {
        for ok in ["127.0.0.1:7700", "[::1]:0", "localhost:7803", "ferry-1.internal:80"] {
            assert_eq!(ok.parse::<ListenAddr>().expect(ok).to_string(), ok);
        }
        for bad in ["localhost", "localhost:http", ":7700", "local host:1", "127.0.0.1:70000"] {
            assert!(bad.parse::<ListenAddr>().is_err(), "{bad}");
        }
        figment::Jail::expect_with(|jail| {
            jail.set_env("FERRY_LISTEN", "nowhere");
            let err = Config::load(None, &FlagOverrides::default()).unwrap_err().to_string();
            assert!(err.contains("FERRY_LISTEN") && err.contains("HOST:PORT"), "{err}");
            Ok(())
        });
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let addr = "localhost:0".parse::<ListenAddr>().unwrap().resolve().await.unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }
}
