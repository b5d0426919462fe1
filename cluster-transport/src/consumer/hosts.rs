//! The providers a consumer may connect to, and the order it tries them in.
//!
//! The order is the one the user gave, for two reasons: it is predictable (a nearby or
//! primary hub first, the others as fallbacks), and a user who wants a crowd of consumers
//! spread over the hubs can give each consumer the list rotated, which a random order
//! would take out of their hands. After a drop the consumer starts with the host after
//! the one that dropped, since the hub it just lost is the one most likely still down.

use crate::error::{ConnectError, ConnectErrorKind};
use crate::options::ConsumerOptions;
use std::fmt;

/// One provider to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// Host name or IP, without brackets around an IPv6 address.
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The providers of `options` in the order to try them: `hosts` when set, else `host`
/// and `port`.
///
/// # Errors
/// [`InvalidOptions`](ConnectErrorKind::InvalidOptions) naming the first entry that is
/// not `host`, `host:port`, `[v6]` or `[v6]:port` (a port of 0 included).
pub(crate) fn endpoints(options: &ConsumerOptions) -> Result<Vec<Endpoint>, ConnectError> {
    if options.hosts.is_empty() {
        return Ok(vec![Endpoint {
            host: unbracket(&options.host).to_owned(),
            port: options.port,
        }]);
    }
    options
        .hosts
        .iter()
        .map(|entry| {
            parse(entry, options.port).ok_or_else(|| {
                ConnectError::new(ConnectErrorKind::InvalidOptions).with_detail(format!(
                    "hosts entry {entry:?} is not host, host:port, [v6] or [v6]:port"
                ))
            })
        })
        .collect()
}

fn unbracket(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `entry` as an endpoint, its port `default_port` when it names none.
fn parse(entry: &str, default_port: u16) -> Option<Endpoint> {
    let entry = entry.trim();
    let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match entry.split_once(':') {
            // Two colons or more and no brackets: an IPv6 address without a port.
            Some((_, rest)) if rest.contains(':') => (entry, None),
            Some((host, port)) => (host, Some(port)),
            None => (entry, None),
        }
    };
    let port = match port {
        None => default_port,
        Some(port) => port.parse().ok()?,
    };
    let valid = !host.is_empty() && !host.contains(['[', ']', '/', ' ']) && port != 0;
    valid.then(|| Endpoint {
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(host: &str, port: u16) -> Option<Endpoint> {
        Some(Endpoint {
            host: host.to_owned(),
            port,
        })
    }

    #[test]
    fn entries_take_every_usual_form() {
        assert_eq!(parse("hub-a", 8080), at("hub-a", 8080));
        assert_eq!(parse("hub-a:9001", 8080), at("hub-a", 9001));
        assert_eq!(parse(" 10.0.0.1:9001 ", 8080), at("10.0.0.1", 9001));
        assert_eq!(parse("::1", 8080), at("::1", 8080));
        assert_eq!(parse("[::1]", 8080), at("::1", 8080));
        assert_eq!(parse("[::1]:9001", 8080), at("::1", 9001));
        assert_eq!(
            at("::1", 9001).map(|e| e.to_string()).as_deref(),
            Some("[::1]:9001")
        );
        assert_eq!(
            at("hub", 1).map(|e| e.to_string()).as_deref(),
            Some("hub:1")
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "",
            ":9001",
            "hub:",
            "hub:0",
            "hub:65536",
            "hub:x",
            "[::1",
            "[::1]x",
            "[::1]:",
            "a b:1",
            "hub/path",
        ] {
            assert_eq!(parse(bad, 8080), None, "{bad:?}");
        }
    }

    #[test]
    fn the_list_or_the_single_host() {
        let mut options = ConsumerOptions {
            host: "[::1]".into(),
            port: 9000,
            ..ConsumerOptions::default()
        };
        assert_eq!(endpoints(&options).unwrap(), vec![at("::1", 9000).unwrap()]);
        options.hosts = vec!["a:1".into(), "b".into()];
        assert_eq!(
            endpoints(&options).unwrap(),
            vec![at("a", 1).unwrap(), at("b", 9000).unwrap()]
        );
        options.hosts.push("c:0".into());
        let error = endpoints(&options).unwrap_err();
        assert_eq!(error.kind(), ConnectErrorKind::InvalidOptions);
        assert!(error.to_string().contains("\"c:0\""), "{error}");
        assert!(error.is_fatal());
    }
}
