//! The opaque ports of a Service, from its [`mesh_api::labels::OPAQUE_PORTS`] annotation.
//!
//! The value is a comma-separated list of ports and inclusive ranges: `3306,5000-5100`.
//! Proxies skip protocol detection on these ports, so a server-speaks-first protocol (MySQL,
//! SMTP) is not held up waiting for a client that will not speak first.
//!
//! The annotation is operator input: an item that is not a port or a range (`http`, `0`,
//! `10-5`) is ignored and reported, and the rest of the list still applies. A range expands to
//! every port it covers on the wire, so one range may cover at most [`MAX_RANGE_PORTS`] ports;
//! a wider one (`1-65535`, usually a typo or a misunderstanding) is ignored and reported rather
//! than sent, many kilobytes at a time, to every proxy that watches the Service.

use std::collections::BTreeSet;

/// The most ports one range of the annotation may cover.
pub const MAX_RANGE_PORTS: u32 = 1024;

/// A Service's opaque ports, sorted and without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpaquePorts {
    ports: Vec<u32>,
}

/// An item of the annotation that was ignored.
#[derive(Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("opaque port {item:?} ignored: {reason}")]
pub struct InvalidOpaquePort {
    /// The item as written.
    pub item: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

// === impl OpaquePorts ===

impl OpaquePorts {
    /// Parses the annotation's value; returns the ports of the valid items and the items
    /// ignored. Empty items (`3306,,5432,`) are skipped silently.
    pub fn parse(value: &str) -> (Self, Vec<InvalidOpaquePort>) {
        let mut ports = BTreeSet::new();
        let mut invalid = Vec::new();
        for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            match parse_item(item) {
                Ok((first, last)) => ports.extend(u32::from(first)..=u32::from(last)),
                Err(reason) => invalid.push(InvalidOpaquePort {
                    item: item.chars().take(64).collect(),
                    reason,
                }),
            }
        }
        (
            Self {
                ports: ports.into_iter().collect(),
            },
            invalid,
        )
    }

    /// Whether `port` is opaque.
    pub fn contains(&self, port: u16) -> bool {
        self.ports.binary_search(&u32::from(port)).is_ok()
    }

    /// The ports, ascending, as the wire carries them.
    pub fn as_slice(&self) -> &[u32] {
        &self.ports
    }

    /// Whether no port is opaque.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// One item: `port` or `first-last`, each in 1..=65535, `first <= last`, at most
/// [`MAX_RANGE_PORTS`] ports.
fn parse_item(item: &str) -> Result<(u16, u16), &'static str> {
    let (first, last) = match item.split_once('-') {
        Some((first, last)) => (port(first.trim())?, port(last.trim())?),
        None => {
            let port = port(item)?;
            (port, port)
        }
    };
    if first > last {
        return Err("the range ends before it starts");
    }
    if u32::from(last) - u32::from(first) + 1 > MAX_RANGE_PORTS {
        return Err("the range covers more than 1024 ports; list narrower ranges");
    }
    Ok((first, last))
}

fn port(text: &str) -> Result<u16, &'static str> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a port number or a range first-last");
    }
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err("a port must be in 1..=65535"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ports_and_ranges() {
        let (ports, invalid) = OpaquePorts::parse(" 3306, 5000-5003 ,25,3306,");
        assert!(invalid.is_empty(), "{invalid:?}");
        assert_eq!(ports.as_slice(), [25, 3306, 5000, 5001, 5002, 5003]);
        assert!(ports.contains(5002));
        assert!(!ports.contains(5004));
        assert!(OpaquePorts::parse("").0.is_empty());
    }

    #[test]
    fn ignores_bad_items_and_keeps_the_rest() {
        let (ports, invalid) =
            OpaquePorts::parse("http,0,65536,10-5,1-65535,4000,-3,4-,1-2-3,5000-6023");
        assert_eq!(ports.as_slice().len(), 1 + 1024);
        assert!(ports.contains(4000) && ports.contains(6023));
        let items: Vec<_> = invalid.iter().map(|i| i.item.as_str()).collect();
        assert_eq!(
            items,
            ["http", "0", "65536", "10-5", "1-65535", "-3", "4-", "1-2-3"]
        );
        assert_eq!(invalid[3].reason, "the range ends before it starts");
        assert!(invalid[4].to_string().contains("more than 1024 ports"));
    }
}
