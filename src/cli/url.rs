//! Endpoint URLs: `tcp://HOST:PORT` and `rdma://HOST:PORT`, where HOST is a name, an IPv4 address
//! or a bracketed IPv6 address, and the port is required. Nothing else (no path, user or query).
//!
//! `rdma://` means RDMA with TCP fallback on the same host and port (see `rpc::connect`); the
//! TCP port is also where the RDMA connection is set up.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use super::error::CliError;

/// The transport an endpoint names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `tcp://`.
    Tcp,
    /// `rdma://`.
    Rdma,
}

impl Scheme {
    /// The URL scheme, without "://".
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Tcp => "tcp",
            Scheme::Rdma => "rdma",
        }
    }
}

/// A parsed endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The transport.
    pub scheme: Scheme,
    /// A host name or an IP address; IPv6 addresses without their brackets.
    pub host: String,
    /// The port (0 only makes sense for `serve`: it picks a free port).
    pub port: u16,
}

impl Endpoint {
    /// "HOST:PORT", with an IPv6 host in brackets: what sockets and `tcp://` URLs take.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// "tcp" or "rdma".
    pub fn scheme_name(&self) -> &'static str {
        match self.scheme {
            Scheme::Tcp => "tcp",
            Scheme::Rdma => "rdma",
        }
    }

    /// Whether the URL asks for RDMA (`rdma://`).
    pub fn wants_rdma(&self) -> bool {
        self.scheme == Scheme::Rdma
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme.as_str(), self.host_port())
    }
}

impl FromStr for Endpoint {
    type Err = CliError;

    fn from_str(url: &str) -> Result<Self, CliError> {
        parse(url).map_err(|reason| CliError::BadUrl { url: url.to_string(), reason })
    }
}

fn parse(url: &str) -> Result<Endpoint, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("missing scheme (tcp:// or rdma://)".into());
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "tcp" => Scheme::Tcp,
        "rdma" => Scheme::Rdma,
        "" => return Err("missing scheme (tcp:// or rdma://)".into()),
        other => return Err(format!("unsupported scheme `{other}`")),
    };
    if let Some(c) = rest.chars().find(|c| matches!(c, '/' | '?' | '#' | '@')) {
        return Err(format!("unexpected `{c}`: an endpoint is only HOST:PORT, without path, query or user"));
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (inside, after) = bracketed.split_once(']').ok_or("`[` without a closing `]`")?;
        let ip: Ipv6Addr = inside.parse().map_err(|_| format!("`{inside}` is not an IPv6 address"))?;
        let port = after.strip_prefix(':').ok_or("missing port after the IPv6 address")?;
        (ip.to_string(), port)
    } else {
        let (host, port) = rest.rsplit_once(':').ok_or("missing port")?;
        if host.contains(':') {
            return Err("an IPv6 address needs brackets, e.g. tcp://[::1]:7878".into());
        }
        (parse_host(host)?, port)
    };
    if port.is_empty() {
        return Err("missing port".into());
    }
    let port: u16 = port.parse().map_err(|_| format!("port `{port}` is not a number from 0 to 65535"))?;
    Ok(Endpoint { scheme, host, port })
}

fn parse_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("missing host".into());
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let ip: Ipv4Addr = host.parse().map_err(|_| format!("`{host}` is not an IPv4 address"))?;
        return Ok(ip.to_string());
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.len() > 253 || !name.split('.').all(valid_label) {
        return Err(format!("`{host}` is not a valid host name"));
    }
    Ok(host.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> Endpoint {
        url.parse().unwrap_or_else(|err| panic!("{url} should parse: {err}"))
    }

    fn bad(url: &str) -> String {
        match url.parse::<Endpoint>() {
            Ok(endpoint) => panic!("{url} should not parse, got {endpoint:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn good_forms() {
        assert_eq!(ok("tcp://127.0.0.1:7878"), Endpoint { scheme: Scheme::Tcp, host: "127.0.0.1".into(), port: 7878 });
        assert_eq!(
            ok("rdma://node2.example:1"),
            Endpoint { scheme: Scheme::Rdma, host: "node2.example".into(), port: 1 }
        );
        assert_eq!(ok("tcp://[::1]:0"), Endpoint { scheme: Scheme::Tcp, host: "::1".into(), port: 0 });
        assert_eq!(ok("TCP://localhost:65535").port, 65535);
        assert_eq!(ok("tcp://my_host-1:80").host, "my_host-1");
        assert_eq!(ok("tcp://[fe80::1:2]:9").host, "fe80::1:2");
    }

    #[test]
    fn display_round_trips() {
        for url in ["tcp://127.0.0.1:7878", "rdma://node2:1", "tcp://[::1]:7878", "tcp://[2001:db8::5]:80"] {
            assert_eq!(ok(url).to_string(), url);
        }
        assert_eq!(ok("tcp://[::1]:5").host_port(), "[::1]:5");
    }

    #[test]
    fn bad_forms_say_why_and_list_the_accepted_forms() {
        let cases = [
            ("ftp://x:1", "unsupported scheme `ftp`"),
            ("127.0.0.1:7878", "missing scheme"),
            ("://h:1", "missing scheme"),
            ("tcp://host", "missing port"),
            ("tcp://host:", "missing port"),
            ("tcp://:7878", "missing host"),
            ("tcp://host:70000", "port `70000`"),
            ("tcp://host:-1", "port `-1`"),
            ("tcp://::1:7878", "needs brackets"),
            ("tcp://[::1]", "missing port"),
            ("tcp://[::1:7878", "closing `]`"),
            ("tcp://[nope]:1", "not an IPv6 address"),
            ("tcp://300.1.1.1:1", "not an IPv4 address"),
            ("tcp://host:1/path", "unexpected `/`"),
            ("tcp://user@host:1", "unexpected `@`"),
            ("tcp://bad host:1", "not a valid host name"),
            ("tcp://-x:1", "not a valid host name"),
            ("", "missing scheme"),
        ];
        for (url, why) in cases {
            let text = bad(url);
            assert!(text.contains(why), "{url}: {text}");
            assert!(text.contains("tcp://HOST:PORT or rdma://HOST:PORT"), "{url}: {text}");
        }
    }

    #[test]
    fn the_scheme_says_whether_rdma_is_wanted() {
        assert!(ok("rdma://[::1]:9").wants_rdma());
        assert_eq!(ok("rdma://h:9").host_port(), "h:9");
        assert!(!ok("tcp://h:9").wants_rdma());
    }
}
