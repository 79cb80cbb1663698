//! What a new connection speaks, decided from the first bytes its client sends.
//!
//! The proxy must choose a handler (TLS pass-through routed by SNI, the HTTP/1 or HTTP/2 codec,
//! or opaque TCP) before forwarding anything, and it can only look at what the client has sent.
//! This is the pure core of that choice: [`detect`] takes everything read so far and answers
//! [`Detection::NeedMore`] or a verdict; the async shell ([`detect_stream`]) reads the socket, owns the
//! detection timer, calls [`decide_on_timeout`] when the peer goes quiet or closes, and replays
//! the buffered bytes to the chosen handler. [`Detector`] packages that loop's state.
//!
//! Rules, in the order the first byte selects them:
//! - `0x16` (a TLS handshake record): a ClientHello, parsed by [`parse_client_hello`]. One that
//!   fails to parse is [`Protocol::Opaque`]: the bytes still pass through, just without a routing
//!   hint. Refusing it would break TLS clients this parser does not understand, and routing on a
//!   hello we could not fully read would trust fields we did not validate.
//! - A prefix of the HTTP/2 preface waits for the whole preface.
//! - Anything else waits only while it is a valid beginning of an HTTP/1 request line.
//! - Everything else is [`Protocol::Opaque`], decided at the first byte that rules the others out
//!   (so a binary protocol is usually decided on its first byte), and so is whatever is still
//!   undecided at the timeout or at end of stream: server-speaks-first protocols (MySQL, SMTP)
//!   send nothing at all.
//!
//! How much is inspected is capped so that the shell never buffers more than
//! [`MAX_DETECT_BYTES`]: at that many bytes, [`detect`] always returns a verdict. The one verdict
//! that is not a protocol is [`Refusal::RequestLineTooLong`]; see there why.
//!
//! A verdict, once reached, is the same for every longer buffer that starts with the same bytes
//! (only [`Protocol::Http1`]'s `authority` may go from `None` to `Some` as headers arrive).
//! [`fuzz_detect`] checks exactly that.

mod fixtures;
mod fuzz;
mod http;
mod stream;
#[cfg(test)]
mod tests;
mod tls;

use bytes::BytesMut;

#[doc(hidden)]
pub use self::fuzz::fuzz_detect;
pub use self::stream::{Detected, detect_stream};
pub use self::tls::{ClientHelloInfo, TlsParseError, parse_client_hello};

/// How far into the stream a ClientHello must end to be parsed, record headers included.
///
/// Hellos with post-quantum key shares (X25519MLKEM768 adds 1.2 KiB) and ECH run to a few KiB and
/// may span records; 16 KiB leaves room for several times that.
pub const MAX_TLS_DETECT_BYTES: usize = 16 * 1024;

/// The longest HTTP/1 request line, CRLF included, that is recognised. Matches the 8 KiB that
/// common servers (nginx, Apache) accept by default.
pub const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;

/// The most bytes the shell needs to buffer: by then [`detect`] has always reached a verdict.
pub const MAX_DETECT_BYTES: usize = Limits::DEFAULT.max_detect();

/// What the bytes read so far tell.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Detection {
    /// Too few bytes to decide: read more, unless the timer has fired or the peer has closed,
    /// then ask [`decide_on_timeout`].
    NeedMore,
    /// The connection speaks this.
    Decided(Protocol),
    /// The connection must not be forwarded.
    Refused(Refusal),
}

/// What a connection speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// A TLS ClientHello, with what the proxy routes on. A struct rather than inline fields so
    /// that [`parse_client_hello`] returns the same thing.
    Tls(ClientHelloInfo),
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1 {
        /// The method token, as sent (case-sensitive, RFC 9110 §9.1).
        method: String,
        /// From the request-target in absolute-form or authority-form, else from the first
        /// `Host` header if it had fully arrived; ASCII-lowercased. A hint: the HTTP codec that
        /// takes the connection over parses the request again.
        authority: Option<String>,
    },
    /// The HTTP/2 connection preface (prior knowledge, no TLS).
    Http2,
    /// Anything else: forwarded as a byte stream.
    Opaque,
}

/// Why a connection is refused rather than forwarded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A method, a space and a request-target running on for the whole cap without a CRLF.
    ///
    /// Refused rather than passed through as opaque because those bytes are HTTP in every way but
    /// length, and servers such as hyper accept far longer lines: forwarding them as opaque TCP
    /// would let a client step around HTTP routing and policy just by padding its URI. The
    /// client is either abusive or buggy; the shell can answer `414 URI Too Long` and close.
    /// Without a valid method and space first, a long run of bytes is simply not HTTP, and is
    /// [`Protocol::Opaque`].
    #[error("HTTP/1 request line longer than {limit} bytes")]
    RequestLineTooLong {
        /// The cap, [`MAX_REQUEST_LINE_BYTES`].
        limit: usize,
    },
}

/// Decides what `buf`, the first bytes the client sent, speaks, or that more are needed.
///
/// Looks at no more than [`MAX_DETECT_BYTES`] bytes, and never answers
/// [`Detection::NeedMore`] for a buffer that long. Never panics, whatever `buf` holds.
pub fn detect(buf: &[u8]) -> Detection {
    detect_with(buf, &Limits::DEFAULT)
}

/// The verdict once no more bytes will come, because the detection timer fired or the peer
/// closed: what [`detect`] says, with [`Detection::NeedMore`] becoming [`Protocol::Opaque`].
pub fn decide_on_timeout(buf: &[u8]) -> Result<Protocol, Refusal> {
    decide_on_timeout_with(buf, &Limits::DEFAULT)
}

fn detect_with(buf: &[u8], limits: &Limits) -> Detection {
    match buf.first() {
        None => Detection::NeedMore,
        Some(&tls::CONTENT_TYPE_HANDSHAKE) => match tls::parse(buf, limits.tls) {
            Ok(info) => Detection::Decided(Protocol::Tls(info)),
            Err(TlsParseError::Incomplete) => Detection::NeedMore,
            Err(_) => Detection::Decided(Protocol::Opaque),
        },
        // Neither the HTTP/2 preface nor a method token can start with 0x16, so nothing is lost
        // by sending everything else to the HTTP side.
        Some(_) => http::detect(buf, limits),
    }
}

fn decide_on_timeout_with(buf: &[u8], limits: &Limits) -> Result<Protocol, Refusal> {
    match detect_with(buf, limits) {
        Detection::NeedMore => Ok(Protocol::Opaque),
        Detection::Decided(protocol) => Ok(protocol),
        Detection::Refused(refusal) => Err(refusal),
    }
}

/// The caps on what is inspected. A parameter only so that the fuzz checks can use tiny ones and
/// reach the cap paths with short inputs.
#[derive(Clone, Copy, Debug)]
struct Limits {
    tls: usize,
    request_line: usize,
}

// === impl Limits ===

impl Limits {
    const DEFAULT: Self = Self {
        tls: MAX_TLS_DETECT_BYTES,
        request_line: MAX_REQUEST_LINE_BYTES,
    };

    const fn max_detect(&self) -> usize {
        if self.tls > self.request_line {
            self.tls
        } else {
            self.request_line
        }
    }
}

/// The state of detection on one connection: the bytes read so far and, once reached, the
/// verdict.
///
/// The shell reads at most [`Detector::max_read`] bytes at a time, hands them to
/// [`Detector::push`] until it returns a verdict (or calls [`Detector::decide_on_timeout`]), then
/// takes [`Detector::into_buffered`] to replay to the chosen handler. The verdict is fixed once
/// reached, and not computed again however many bytes follow.
#[derive(Debug, Default)]
pub struct Detector {
    buf: BytesMut,
    verdict: Option<Result<Protocol, Refusal>>,
}

// === impl Detector ===

impl Detector {
    /// A detector for a connection that has sent nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the client and returns what everything read so far tells.
    pub fn push(&mut self, bytes: &[u8]) -> Detection {
        self.buf.extend_from_slice(bytes);
        if let Some(verdict) = &self.verdict {
            return detection(verdict.clone());
        }
        let detection = detect(&self.buf);
        self.verdict = match &detection {
            Detection::NeedMore => None,
            Detection::Decided(protocol) => Some(Ok(protocol.clone())),
            Detection::Refused(refusal) => Some(Err(refusal.clone())),
        };
        detection
    }

    /// The verdict now that no more bytes will come (timer fired, or the peer closed).
    pub fn decide_on_timeout(&mut self) -> Result<Protocol, Refusal> {
        let verdict = self
            .verdict
            .get_or_insert_with(|| decide_on_timeout(&self.buf));
        verdict.clone()
    }

    /// The verdict, if one has been reached.
    pub fn verdict(&self) -> Option<&Result<Protocol, Refusal>> {
        self.verdict.as_ref()
    }

    /// How many bytes it is worth reading next: zero once decided, and never so many that the
    /// buffer would grow past [`MAX_DETECT_BYTES`], where a verdict is certain.
    pub fn max_read(&self) -> usize {
        if self.verdict.is_some() {
            0
        } else {
            MAX_DETECT_BYTES.saturating_sub(self.buf.len())
        }
    }

    /// Everything read so far.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Everything read so far, to be replayed to the handler that takes the connection.
    pub fn into_buffered(self) -> BytesMut {
        self.buf
    }
}

fn detection(verdict: Result<Protocol, Refusal>) -> Detection {
    match verdict {
        Ok(protocol) => Detection::Decided(protocol),
        Err(refusal) => Detection::Refused(refusal),
    }
}
