//! The TLS ClientHello parser: record layer, handshake header, and the two extensions the proxy
//! routes on (`server_name` and `application_layer_protocol_negotiation`).
//!
//! It reads only the client's first flight and validates only the framing: every length is
//! checked against the one enclosing it and against the bytes present, every vector against its
//! RFC bounds, and nothing outside the ClientHello is looked at. Cryptographic content (random,
//! cipher suites, key shares) is skipped; the TLS stack that terminates the connection, if any,
//! judges it.
//!
//! Records are reassembled: a ClientHello fragmented over several handshake records (large
//! post-quantum key shares make that common) is parsed once all of it is present, as long as it
//! ends within the inspection cap counted in stream bytes, record headers included.
//!
//! The parser is prefix-monotone, which is what lets [`super::detect`] run it again on a growing
//! buffer: it reads the stream strictly in order, and every read either succeeds, fails on bytes
//! already read, or stops with [`TlsParseError::Incomplete`] at the first byte not present yet.
//! So a verdict reached on some prefix is reached on every longer one.

use std::collections::HashSet;
use std::net::IpAddr;

/// TLS record content type `handshake`.
pub(super) const CONTENT_TYPE_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER_LEN: usize = 5;
const HANDSHAKE_HEADER_LEN: usize = 4;
/// RFC 8446 §5.1: a plaintext record carries at most 2^14 bytes.
const MAX_RECORD_PAYLOAD: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the proxy needs from a ClientHello.
///
/// Non-exhaustive so that more of the hello (supported versions, for instance) can be reported
/// later without breaking callers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientHelloInfo {
    /// The `server_name` extension's `host_name`, ASCII-lowercased and without a trailing dot,
    /// since names compare case-insensitively and routes are keyed in lowercase. `None` when the
    /// extension is absent or names an IP address (RFC 6066 forbids literal addresses there;
    /// rustls ignores them the same way).
    pub sni: Option<String>,
    /// The ALPN protocol names offered, in the client's order of preference; empty when the
    /// extension is absent.
    pub alpn: Vec<Vec<u8>>,
}

// === impl ClientHelloInfo ===

impl ClientHelloInfo {
    /// Whether the client offered `protocol` (for instance `b"mesh.h2"`) in ALPN.
    pub fn offers_alpn(&self, protocol: &[u8]) -> bool {
        self.alpn.iter().any(|offered| offered == protocol)
    }
}

/// Why [`parse_client_hello`] did not return a ClientHello.
///
/// Only [`TlsParseError::Incomplete`] means "read more and try again"; every other error is final
/// for that connection and stays the same however many bytes follow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsParseError {
    /// The bytes so far are a valid beginning of a ClientHello; more are needed.
    #[error("incomplete ClientHello: more bytes are needed")]
    Incomplete,
    /// The ClientHello does not end within the first `limit` bytes of the stream.
    #[error("ClientHello does not fit in the first {limit} bytes")]
    TooLarge {
        /// The inspection cap, in stream bytes.
        limit: usize,
    },
    /// A record that should carry the ClientHello is not a handshake record.
    #[error("TLS record of content type {0} where a handshake record was expected")]
    NotHandshake(u8),
    /// A record's legacy version is not 3.x; the major version is reported (the minor one may
    /// not have arrived yet when this is decided).
    #[error("TLS record major version {0} is not 3")]
    RecordVersion(u8),
    /// A record's length is zero (forbidden for handshake records) or above 2^14.
    #[error("TLS record length {0} is out of range")]
    RecordLength(u16),
    /// The first handshake message is not a ClientHello.
    #[error("handshake message type {0} is not a ClientHello")]
    NotClientHello(u8),
    /// A field's length overruns the structure enclosing it, breaks the field's bounds, or leaves
    /// bytes unaccounted for.
    #[error("malformed ClientHello: bad {0}")]
    Malformed(&'static str),
    /// An extension type appears twice (RFC 8446 §4.2 forbids it, and two `server_name`s would
    /// make routing ambiguous).
    #[error("extension {0} appears twice in the ClientHello")]
    DuplicateExtension(u16),
    /// The `host_name` is not a DNS name, so it cannot be routed on.
    #[error("server_name host_name is not a valid DNS name")]
    InvalidServerName,
}

/// Parses the ClientHello at the start of `buf`, the bytes a client sent first, TLS record layer
/// included.
///
/// Looks at no more than [`super::MAX_TLS_DETECT_BYTES`] bytes; bytes after the ClientHello are
/// ignored. Never panics, whatever `buf` holds.
pub fn parse_client_hello(buf: &[u8]) -> Result<ClientHelloInfo, TlsParseError> {
    parse(buf, super::MAX_TLS_DETECT_BYTES)
}

/// [`parse_client_hello`] with the cap as a parameter, so that the fuzz checks can reach it with
/// short inputs.
pub(super) fn parse(buf: &[u8], limit: usize) -> Result<ClientHelloInfo, TlsParseError> {
    // Truncating first makes the verdict on any buffer of `limit` bytes or more the same: the
    // parser never sees past the cap, and running out there means too large, not incomplete.
    let buf = &buf[..buf.len().min(limit)];
    let out_of_bytes = if buf.len() >= limit {
        TlsParseError::TooLarge { limit }
    } else {
        TlsParseError::Incomplete
    };
    let (handshake, stop) = reassemble(buf, out_of_bytes);
    let mut stream = Reader::new(&handshake, &stop);

    let msg_type = stream.u8("handshake type")?;
    if msg_type != HANDSHAKE_CLIENT_HELLO {
        return Err(TlsParseError::NotClientHello(msg_type));
    }
    let len = stream.u24("handshake length")?;
    // Decided as soon as the length is known: even unfragmented, this hello cannot end in time.
    if RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + len > limit {
        return Err(TlsParseError::TooLarge { limit });
    }
    let mut body = stream.sub(len, "handshake length")?;
    client_hello(&mut body)
}

/// Concatenates the payloads of the handshake records at the start of `buf`.
///
/// Returns the handshake bytes and the error the parser must report if it needs more than that:
/// `out_of_bytes` when the buffer ends, or what is wrong with the record header that stopped the
/// walk. A bad header only matters if the ClientHello has not ended before it.
fn reassemble(buf: &[u8], out_of_bytes: TlsParseError) -> (Vec<u8>, TlsParseError) {
    let mut handshake = Vec::new();
    let mut rest = buf;
    loop {
        // Header bytes are checked as they arrive, so that a stream that is not TLS is told
        // apart on its second byte rather than its fifth.
        match rest.first() {
            None => return (handshake, out_of_bytes),
            Some(&CONTENT_TYPE_HANDSHAKE) => {}
            Some(&content_type) => return (handshake, TlsParseError::NotHandshake(content_type)),
        }
        // Clients send 3.1 (TLS 1.0) for compatibility, sometimes 3.0 or 3.3; the real version is
        // negotiated inside the hello.
        if let Some(&major) = rest.get(1).filter(|&&major| major != 3) {
            return (handshake, TlsParseError::RecordVersion(major));
        }
        let Some(([_, _, _, len_hi, len_lo], after)) =
            rest.split_first_chunk::<RECORD_HEADER_LEN>()
        else {
            return (handshake, out_of_bytes);
        };
        let len = u16::from_be_bytes([*len_hi, *len_lo]);
        if len == 0 || usize::from(len) > MAX_RECORD_PAYLOAD {
            return (handshake, TlsParseError::RecordLength(len));
        }
        let len = usize::from(len);
        if after.len() < len {
            handshake.extend_from_slice(after);
            return (handshake, out_of_bytes);
        }
        let (payload, next) = after.split_at(len);
        handshake.extend_from_slice(payload);
        rest = next;
    }
}

/// The ClientHello body, RFC 8446 §4.1.2 (and RFC 5246 §7.4.1.2, whose extensions are optional).
fn client_hello(body: &mut Reader<'_>) -> Result<ClientHelloInfo, TlsParseError> {
    let [major, _minor] = body.array::<2>("legacy_version")?;
    if major != 3 {
        return Err(TlsParseError::Malformed("legacy_version"));
    }
    body.take(32, "random")?;
    let mut session_id = body.vec_u8("session_id")?;
    if session_id.remaining() > 32 {
        return Err(TlsParseError::Malformed("session_id"));
    }
    session_id.skip_rest("session_id")?;
    let mut cipher_suites = body.vec_u16("cipher_suites")?;
    if cipher_suites.remaining() < 2 || cipher_suites.remaining() % 2 != 0 {
        return Err(TlsParseError::Malformed("cipher_suites"));
    }
    cipher_suites.skip_rest("cipher_suites")?;
    let mut compression = body.vec_u8("compression_methods")?;
    if compression.remaining() < 1 {
        return Err(TlsParseError::Malformed("compression_methods"));
    }
    compression.skip_rest("compression_methods")?;

    let mut info = ClientHelloInfo::default();
    // No extensions block at all is a valid TLS 1.2 hello (it can have no SNI nor ALPN).
    if body.remaining() == 0 {
        return Ok(info);
    }
    let mut extensions = body.vec_u16("extensions")?;
    body.finish("ClientHello length")?;
    let mut seen = HashSet::new();
    while extensions.remaining() > 0 {
        let ext_type = extensions.u16("extension type")?;
        let mut data = extensions.vec_u16("extension length")?;
        if !seen.insert(ext_type) {
            return Err(TlsParseError::DuplicateExtension(ext_type));
        }
        match ext_type {
            EXT_SERVER_NAME => info.sni = server_name(&mut data)?,
            EXT_ALPN => info.alpn = alpn(&mut data)?,
            _ => data.skip_rest("extension data")?,
        }
    }
    Ok(info)
}

/// The `server_name` extension, RFC 6066 §3.
fn server_name(data: &mut Reader<'_>) -> Result<Option<String>, TlsParseError> {
    let mut list = data.vec_u16("server_name list")?;
    data.finish("server_name extension")?;
    if list.remaining() == 0 {
        return Err(TlsParseError::Malformed("server_name list"));
    }
    let mut host_name = None;
    while list.remaining() > 0 {
        let name_type = list.u8("server_name type")?;
        // Every name type defined so far has this shape; RFC 6066 itself parses unknown ones so.
        let mut name = list.vec_u16("server_name length")?;
        if name.remaining() == 0 {
            return Err(TlsParseError::Malformed("server_name length"));
        }
        let name = name.take(name.remaining(), "server_name")?;
        if name_type == NAME_TYPE_HOST_NAME {
            if host_name.is_some() {
                return Err(TlsParseError::Malformed(
                    "server_name list (two host_names)",
                ));
            }
            host_name = Some(name);
        }
    }
    host_name.map(dns_name).transpose().map(Option::flatten)
}

/// Validates a `host_name` for routing: `Ok(None)` for an IP address, which is ignored.
fn dns_name(name: &[u8]) -> Result<Option<String>, TlsParseError> {
    let name = std::str::from_utf8(name).map_err(|_| TlsParseError::InvalidServerName)?;
    if name.parse::<IpAddr>().is_ok() {
        return Ok(None);
    }
    // RFC 6066 forbids the trailing dot, but some clients send it and it names the same host.
    let name = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(TlsParseError::InvalidServerName);
    }
    Ok(Some(name.to_ascii_lowercase()))
}

/// The `application_layer_protocol_negotiation` extension, RFC 7301 §3.1.
fn alpn(data: &mut Reader<'_>) -> Result<Vec<Vec<u8>>, TlsParseError> {
    let mut list = data.vec_u16("ALPN list")?;
    data.finish("ALPN extension")?;
    if list.remaining() == 0 {
        return Err(TlsParseError::Malformed("ALPN list"));
    }
    let mut protocols = Vec::new();
    while list.remaining() > 0 {
        let mut name = list.vec_u8("ALPN protocol length")?;
        if name.remaining() == 0 {
            return Err(TlsParseError::Malformed("ALPN protocol length"));
        }
        protocols.push(name.take(name.remaining(), "ALPN protocol")?.to_vec());
    }
    Ok(protocols)
}

/// A cursor over the reassembled handshake bytes, bounded by the length of the structure being
/// read (`end`), which may lie beyond the bytes present (`data`).
///
/// Every read checks the bound first, then presence: a length that overruns its enclosing
/// structure is malformed whatever comes next, while a read past `data` returns `stop` (most
/// often [`TlsParseError::Incomplete`]). That order is what makes the parser prefix-monotone.
#[derive(Debug)]
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
    stop: &'a TlsParseError,
}

// === impl Reader ===

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], stop: &'a TlsParseError) -> Self {
        Self {
            data,
            pos: 0,
            end: usize::MAX,
            stop,
        }
    }

    /// Bytes left before the end of the structure, present or not.
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TlsParseError> {
        if n > self.remaining() {
            return Err(TlsParseError::Malformed(what));
        }
        let end = self.pos + n;
        let bytes = self
            .data
            .get(self.pos..end)
            .ok_or_else(|| self.stop.clone())?;
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], TlsParseError> {
        let bytes = self.take(N, what)?;
        // `take` returned exactly N bytes.
        bytes.try_into().map_err(|_| TlsParseError::Malformed(what))
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, TlsParseError> {
        let [b] = self.array(what)?;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, TlsParseError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u24(&mut self, what: &'static str) -> Result<usize, TlsParseError> {
        let [a, b, c] = self.array(what)?;
        Ok((usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c))
    }

    /// The next `len` bytes as a structure of their own; they are checked for presence as the
    /// sub-reader reads them, and this reader moves past them.
    fn sub(&mut self, len: usize, what: &'static str) -> Result<Reader<'a>, TlsParseError> {
        if len > self.remaining() {
            return Err(TlsParseError::Malformed(what));
        }
        let sub = Reader {
            data: self.data,
            pos: self.pos,
            end: self.pos + len,
            stop: self.stop,
        };
        self.pos += len;
        Ok(sub)
    }

    /// A vector with a one-byte length prefix.
    fn vec_u8(&mut self, what: &'static str) -> Result<Reader<'a>, TlsParseError> {
        let len = self.u8(what)?;
        self.sub(usize::from(len), what)
    }

    /// A vector with a two-byte length prefix.
    fn vec_u16(&mut self, what: &'static str) -> Result<Reader<'a>, TlsParseError> {
        let len = self.u16(what)?;
        self.sub(usize::from(len), what)
    }

    /// Reads (so checks the presence of) the rest of the structure without looking at it.
    fn skip_rest(&mut self, what: &'static str) -> Result<(), TlsParseError> {
        self.take(self.remaining(), what).map(drop)
    }

    /// The structure must have been read to its end: leftover bytes mean a length lied.
    fn finish(&self, what: &'static str) -> Result<(), TlsParseError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(TlsParseError::Malformed(what))
        }
    }
}
