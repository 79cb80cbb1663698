//! The transport header: the first frame a client proxy sends inside a meshed mTLS session.
//!
//! It names the destination port and the authority the caller addressed, so the inbound proxy
//! can route without iptables' original destination (through a gateway there is none). It comes
//! from a peer that passed mTLS, but a peer can still be buggy or compromised, so every field is
//! checked: a port in 1..=65535 and an authority of `host:port` with a DNS name or IP address.

pub use crate::authority::Authority;
use crate::authority::InvalidAuthority;
use bytes::BytesMut;
use mesh_api::common::ProtocolHint;
use mesh_api::frame::{self, FrameError};
use mesh_api::tunnel::TransportHeader;

/// A transport header is a few dozen bytes; anything near this cap is not one.
pub const MAX_TRANSPORT_HEADER_LEN: usize = 1024;

/// A checked transport header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTransportHeader {
    pub port: u16,
    /// The authority the caller addressed, when it knew one.
    pub authority: Option<Authority>,
    pub protocol: ProtocolHint,
}

/// Why a transport header was refused. The connection it came on is closed; nothing else is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportHeaderError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the session ended before a transport header arrived")]
    Missing,
    #[error("transport header port {0} is not in 1..=65535")]
    BadPort(u32),
    #[error("transport header authority {authority:?} is invalid: {reason}")]
    BadAuthority {
        authority: String,
        reason: &'static str,
    },
    #[error("transport header protocol hint {0} is unknown")]
    BadProtocol(i32),
}

// === impl MeshTransportHeader ===

impl MeshTransportHeader {
    /// Decodes and checks one header from the front of `buf` (sans-IO); `Ok(None)` means more
    /// bytes are needed. Bytes after the header stay in `buf`: they are the application's.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, TransportHeaderError> {
        match frame::decode_frame::<TransportHeader>(buf, MAX_TRANSPORT_HEADER_LEN)? {
            Some(raw) => Ok(Some(Self::try_from(raw)?)),
            None => Ok(None),
        }
    }

    /// Like [`Self::decode`] once the stream has ended: a partial header is an error.
    pub fn decode_eof(buf: &mut BytesMut) -> Result<Self, TransportHeaderError> {
        match frame::decode_frame_eof::<TransportHeader>(buf, MAX_TRANSPORT_HEADER_LEN)? {
            Some(raw) => Self::try_from(raw),
            None => Err(TransportHeaderError::Missing),
        }
    }

    /// Appends the encoded header to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), TransportHeaderError> {
        let raw = TransportHeader {
            port: u32::from(self.port),
            authority: self
                .authority
                .as_ref()
                .map(|a| format!("{}:{}", a.host, a.port))
                .unwrap_or_default(),
            protocol_hint: self.protocol.into(),
        };
        Ok(frame::encode_frame(&raw, dst, MAX_TRANSPORT_HEADER_LEN)?)
    }
}

impl TryFrom<TransportHeader> for MeshTransportHeader {
    type Error = TransportHeaderError;

    fn try_from(raw: TransportHeader) -> Result<Self, Self::Error> {
        let port = u16::try_from(raw.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(TransportHeaderError::BadPort(raw.port))?;
        let authority = if raw.authority.is_empty() {
            None
        } else {
            Some(Authority::parse(&raw.authority)?)
        };
        let protocol = ProtocolHint::try_from(raw.protocol_hint)
            .map_err(|_| TransportHeaderError::BadProtocol(raw.protocol_hint))?;
        Ok(Self {
            port,
            authority,
            protocol,
        })
    }
}

impl From<InvalidAuthority> for TransportHeaderError {
    fn from(e: InvalidAuthority) -> Self {
        Self::BadAuthority {
            authority: e.authority,
            reason: e.reason,
        }
    }
}

/// Fuzzing entry point: never panics, and an accepted header re-encodes to an equal one.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(header)) = MeshTransportHeader::decode(&mut buf) {
        let mut again = BytesMut::new();
        assert!(
            header.encode(&mut again).is_ok(),
            "an accepted header must encode"
        );
        let back = MeshTransportHeader::decode(&mut again);
        assert!(
            matches!(&back, Ok(Some(h)) if *h == header),
            "round trip changed the header: {back:?}"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(port: u32, authority: &str, hint: i32) -> BytesMut {
        let mut buf = BytesMut::new();
        frame::encode_frame(
            &TransportHeader {
                port,
                authority: authority.into(),
                protocol_hint: hint,
            },
            &mut buf,
            MAX_TRANSPORT_HEADER_LEN,
        )
        .unwrap();
        buf
    }

    #[test]
    fn round_trips_and_leaves_application_bytes() {
        let header = MeshTransportHeader {
            port: 8080,
            authority: Some(Authority::parse("web.default.svc.cluster.local:80").unwrap()),
            protocol: ProtocolHint::Http,
        };
        let mut buf = BytesMut::new();
        header.encode(&mut buf).unwrap();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        // Byte by byte: undecided until the whole header is in.
        let whole = buf.clone();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            match MeshTransportHeader::decode(&mut part).unwrap() {
                None => {}
                Some(h) => {
                    assert_eq!(h, header);
                    assert_eq!(&whole[cut - part.len()..cut], &part[..]);
                }
            }
        }
        assert_eq!(MeshTransportHeader::decode(&mut buf).unwrap(), Some(header));
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn accepts_ip_authorities_and_no_authority() {
        for a in ["10.1.2.3:80", "[fd00::1]:443", "web:1", "a_b.svc.:9"] {
            let h = MeshTransportHeader::decode(&mut raw(80, a, 0))
                .unwrap()
                .unwrap();
            assert_eq!(h.authority.unwrap().to_string(), a);
        }
        let h = MeshTransportHeader::decode(&mut raw(80, "", 2))
            .unwrap()
            .unwrap();
        assert_eq!(h.authority, None);
        assert_eq!(h.protocol, ProtocolHint::Opaque);
    }

    #[test]
    fn refuses_bad_fields_with_reasons() {
        let cases: &[(u32, &str, i32, &str)] = &[
            (0, "", 0, "port 0 is not in"),
            (70_000, "", 0, "port 70000 is not in"),
            (80, "web", 0, "no :port"),
            (80, "web:0", 0, "not a number in 1..=65535"),
            (80, "web:http", 0, "not a number"),
            (80, ":80", 0, "the host is empty"),
            (80, "we b:80", 0, "cannot have"),
            (80, "-web:80", 0, "starts or ends with '-'"),
            (80, "a..b:80", 0, "empty or longer than 63"),
            (80, "[zz::1]:80", 0, "not a valid IPv6"),
            (80, "web:80", 99, "protocol hint 99 is unknown"),
        ];
        for (port, authority, hint, want) in cases {
            let err = MeshTransportHeader::decode(&mut raw(*port, authority, *hint)).unwrap_err();
            assert!(err.to_string().contains(want), "{authority:?}: {err}");
        }
        let long = format!("{}:80", "a.".repeat(200));
        let err = MeshTransportHeader::decode(&mut raw(80, &long, 0)).unwrap_err();
        assert!(err.to_string().contains("longer than a DNS name"), "{err}");
    }

    #[test]
    fn refuses_oversized_truncated_and_garbage_frames() {
        let mut oversized = BytesMut::from(&[0xff, 0xff, 0x04][..]);
        assert!(matches!(
            MeshTransportHeader::decode(&mut oversized),
            Err(TransportHeaderError::Frame(FrameError::Oversized { .. }))
        ));
        let mut truncated = raw(80, "web:80", 0);
        truncated.truncate(3);
        assert!(matches!(
            MeshTransportHeader::decode_eof(&mut truncated),
            Err(TransportHeaderError::Frame(FrameError::Truncated { .. }))
        ));
        assert!(matches!(
            MeshTransportHeader::decode_eof(&mut BytesMut::new()),
            Err(TransportHeaderError::Missing)
        ));
        let mut garbage = BytesMut::from(&[0x03, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            MeshTransportHeader::decode(&mut garbage),
            Err(TransportHeaderError::Frame(
                FrameError::MalformedMessage { .. }
            ))
        ));
    }

    #[test]
    fn fuzz_entry_survives_hostile_seeds() {
        for seed in [
            &b""[..],
            b"\x00",
            b"\x05\x08\x50\x12\x01:",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            fuzz_decode(seed);
        }
        fuzz_decode(&raw(443, "[::1]:443", 1));
    }
}
