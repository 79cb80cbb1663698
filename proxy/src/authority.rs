//! Service authorities, `host:port`: what callers address, what discovery watches and what the
//! transport header carries. One parser for all of them, so that the proxy never accepts an
//! authority in one place that it refuses in another.

/// RFC 1035's limit on a DNS name, plus `:65535`.
const MAX_AUTHORITY_LEN: usize = 253 + 6;

/// A `host:port` authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: String,
    pub port: u16,
}

/// Why an authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authority {authority:?} is invalid: {reason}")]
pub struct InvalidAuthority {
    /// The input, cut to 64 characters.
    pub authority: String,
    pub reason: &'static str,
}

// === impl Authority ===

impl Authority {
    /// Parses `host:port`, where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
    pub fn parse(s: &str) -> Result<Self, InvalidAuthority> {
        let bad = |reason| InvalidAuthority {
            authority: s.chars().take(64).collect(),
            reason,
        };
        if s.len() > MAX_AUTHORITY_LEN {
            return Err(bad("longer than a DNS name and port can be"));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no :port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not a number in 1..=65535"))?;
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            v6.parse::<std::net::Ipv6Addr>()
                .map_err(|_| bad("not a valid IPv6 address in brackets"))?;
        } else if host.parse::<std::net::Ipv4Addr>().is_err() {
            check_dns_name(host).map_err(bad)?;
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn check_dns_name(host: &str) -> Result<(), &'static str> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err("the host is empty");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("a DNS label is empty or longer than 63 bytes");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a DNS label starts or ends with '-'");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("the host has a character a DNS name cannot have");
        }
    }
    Ok(())
}
