//! HTTP/2 with prior knowledge (the connection preface) and HTTP/1 (the request line).
//!
//! HTTP/1 is decided on the request line alone, RFC 9112 §3: `method SP request-target SP
//! HTTP-version CRLF`, the method any RFC 9110 token (extension methods and lowercase ones
//! included: they are valid syntax, and a server may well implement them), the version exactly
//! `HTTP/1.0` or `HTTP/1.1`. Headers are not waited for; whatever part of them has arrived is only
//! searched for `Host`, as a routing hint that the HTTP codec taking over will verify.

use super::{Detection, Limits, Protocol, Refusal};

/// RFC 9113 §3.4, sent first by a client that knows the server speaks HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `HTTP-version CRLF` as this detector accepts it; `x` stands for the minor version digit.
const VERSION_CRLF: &[u8] = b"HTTP/1.x\r\n";

// A request-line cap shorter than the preface would make a prefix of it undecidable at the cap.
const _: () = assert!(H2_PREFACE.len() <= super::MAX_REQUEST_LINE_BYTES);

pub(super) fn detect(buf: &[u8], limits: &Limits) -> Detection {
    let n = buf.len().min(H2_PREFACE.len());
    if buf.get(..n) == H2_PREFACE.get(..n) {
        return if n == H2_PREFACE.len() {
            Detection::Decided(Protocol::Http2)
        } else {
            Detection::NeedMore
        };
    }

    match request_line(buf, limits.request_line) {
        Line::Complete {
            method,
            target,
            len,
        } => {
            let authority = match target_authority(method, target) {
                TargetAuthority::Target(authority) => authority,
                TargetAuthority::FromHost => {
                    let scan_end = buf.len().min(limits.max_detect());
                    buf.get(len..scan_end).and_then(host_header)
                }
            };
            Detection::Decided(Protocol::Http1 {
                // A token is ASCII, so nothing is lost.
                method: String::from_utf8_lossy(method).into_owned(),
                authority,
            })
        }
        Line::Partial => Detection::NeedMore,
        Line::TooLong => Detection::Refused(Refusal::RequestLineTooLong {
            limit: limits.request_line,
        }),
        Line::NotHttp => Detection::Decided(Protocol::Opaque),
    }
}

/// How far the bytes read make an HTTP/1 request line.
#[derive(Debug)]
enum Line<'a> {
    Complete {
        method: &'a [u8],
        target: &'a [u8],
        /// Length of the request line, CRLF included.
        len: usize,
    },
    /// A valid beginning; more bytes are needed.
    Partial,
    /// A method, a space and a valid beginning of a request-target, but no CRLF within the cap.
    TooLong,
    NotHttp,
}

fn request_line(buf: &[u8], limit: usize) -> Line<'_> {
    // As for TLS: truncating first makes every buffer of `limit` bytes or more get the same
    // verdict.
    let at_cap = buf.len() >= limit;
    let view = &buf[..buf.len().min(limit)];
    let out_of_bytes = |after_method: bool| match (at_cap, after_method) {
        (false, _) => Line::Partial,
        (true, true) => Line::TooLong,
        // No method is kilobytes long: these bytes only happen to be token characters.
        (true, false) => Line::NotHttp,
    };

    let Some(method_end) = view.iter().position(|&b| !is_tchar(b)) else {
        return out_of_bytes(false);
    };
    let (method, rest) = view.split_at(method_end);
    let Some(rest) = rest.strip_prefix(b" ").filter(|_| !method.is_empty()) else {
        return Line::NotHttp;
    };
    let Some(target_end) = rest.iter().position(|&b| !is_target_byte(b)) else {
        return out_of_bytes(true);
    };
    let (target, rest) = rest.split_at(target_end);
    let Some(rest) = rest.strip_prefix(b" ").filter(|_| !target.is_empty()) else {
        return Line::NotHttp;
    };

    for (&got, &want) in rest.iter().zip(VERSION_CRLF) {
        let ok = if want == b'x' {
            got == b'0' || got == b'1'
        } else {
            got == want
        };
        if !ok {
            return Line::NotHttp;
        }
    }
    if rest.len() < VERSION_CRLF.len() {
        return out_of_bytes(true);
    }
    Line::Complete {
        method,
        target,
        len: view.len() - rest.len() + VERSION_CRLF.len(),
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Lenient on purpose: any byte but controls and space, as servers such as hyper accept. A
/// stricter set would send requests those servers serve to the opaque path, around HTTP policy.
fn is_target_byte(b: u8) -> bool {
    !(b.is_ascii_control() || b == b' ')
}

/// Where the authority of a request is, RFC 9112 §3.2.
#[derive(Debug)]
enum TargetAuthority {
    /// In the request-target (absolute-form or authority-form), which overrides `Host`; `None`
    /// if it is not a usable authority.
    Target(Option<String>),
    /// Origin-form or asterisk-form: in the `Host` header.
    FromHost,
}

fn target_authority(method: &[u8], target: &[u8]) -> TargetAuthority {
    if method == b"CONNECT" {
        return TargetAuthority::Target(authority(target));
    }
    if target.starts_with(b"/") || target == b"*" {
        return TargetAuthority::FromHost;
    }
    let after_scheme = target
        .iter()
        .position(|&b| b == b':')
        .and_then(|colon| {
            let (scheme, rest) = target.split_at(colon);
            let scheme_ok = scheme.first().is_some_and(u8::is_ascii_alphabetic)
                && scheme
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
            scheme_ok.then_some(rest)
        })
        .and_then(|rest| rest.strip_prefix(b"://"));
    let authority = after_scheme.and_then(|rest| {
        let end = rest
            .iter()
            .position(|b| b"/?#".contains(b))
            .unwrap_or(rest.len());
        authority(rest.split_at(end).0)
    });
    TargetAuthority::Target(authority)
}

/// The value of the first `Host` field among the complete header lines in `headers`.
///
/// Stops, with `None`, at the end of the header section, at the first line that is not a
/// well-formed field (obs-fold included) and at the first `Host`, valid or not: only the first
/// can be reported without knowing what follows, which keeps the verdict stable as bytes arrive.
/// A second `Host` makes the request invalid (RFC 9112 §3.2) and the HTTP codec refuses it.
fn host_header(headers: &[u8]) -> Option<String> {
    let mut rest = headers;
    loop {
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        let (line, next) = rest.split_at(end);
        if line.is_empty() {
            return None;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = line.split_at(colon);
        // A space before the colon, or a leading one (obs-fold), fails here.
        if name.is_empty() || !name.iter().copied().all(is_tchar) {
            return None;
        }
        if name.eq_ignore_ascii_case(b"host") {
            let value = value.get(1..).unwrap_or_default();
            return authority(value.trim_ascii());
        }
        rest = next.get(2..).unwrap_or_default();
    }
}

/// A `host[:port]` worth routing on, ASCII-lowercased: names compare case-insensitively and
/// routes are keyed in lowercase. The character set is that of DNS names, ports and bracketed IP
/// literals; userinfo, lists and anything odd are not routed on.
fn authority(bytes: &[u8]) -> Option<String> {
    let ok = !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~:[]%".contains(&b));
    ok.then(|| String::from_utf8_lossy(bytes).to_ascii_lowercase())
}
