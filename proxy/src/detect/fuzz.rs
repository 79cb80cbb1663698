//! The checks the `protocol_detect` fuzz target runs, kept here so that unit tests run them too.
//!
//! On every prefix of the input (all of the first [`DENSE_PREFIXES`], a sample after that):
//! detection does not panic; a verdict never changes as bytes are added (except an HTTP/1
//! authority appearing); nothing is left undecided at the cap; the timeout verdict is the
//! detection verdict, or opaque; and [`super::parse_client_hello`] agrees with it. A
//! [`super::Detector`] fed the input in uneven chunks reaches the same verdict.

use super::{
    Detection, Detector, Limits, MAX_DETECT_BYTES, Protocol, TlsParseError, decide_on_timeout_with,
    detect, detect_with, fixtures, tls,
};

/// Caps small enough for short fuzz inputs to hit them; the request line one still fits the
/// HTTP/2 preface, as the real one must.
const TINY: Limits = Limits {
    tls: 64,
    request_line: 32,
};

/// Prefix lengths checked one by one; beyond, about [`SAMPLED_PREFIXES`] more, so that a long
/// input costs linear, not quadratic, time.
const DENSE_PREFIXES: usize = 512;
const SAMPLED_PREFIXES: usize = 128;

/// Runs detection on prefixes of `data`, and of `data` spliced into real ClientHellos, and
/// panics if any check above fails.
pub fn fuzz_detect(data: &[u8]) {
    check_prefixes(data, &Limits::DEFAULT);
    check_prefixes(data, &TINY);
    check_detector(data);
    let spliced = splice_into_hello(data);
    check_prefixes(&spliced, &Limits::DEFAULT);
    check_detector(&spliced);
}

fn check_prefixes(input: &[u8], limits: &Limits) {
    let cap = limits.max_detect();
    // Past the cap nothing may change; a few bytes beyond it are enough to show that.
    let input = &input[..input.len().min(cap + 16)];
    let mut last_verdict: Option<(usize, Detection)> = None;
    for len in prefix_lengths(input.len()) {
        let prefix = &input[..len];
        let got = detect_with(prefix, limits);

        if len >= cap {
            assert_ne!(
                got,
                Detection::NeedMore,
                "undecided at the cap, {len} bytes"
            );
        }
        let expected_on_timeout = match got.clone() {
            Detection::NeedMore => Ok(Protocol::Opaque),
            Detection::Decided(protocol) => Ok(protocol),
            Detection::Refused(refusal) => Err(refusal),
        };
        assert_eq!(decide_on_timeout_with(prefix, limits), expected_on_timeout);
        if prefix.first() == Some(&tls::CONTENT_TYPE_HANDSHAKE) {
            let expected = match tls::parse(prefix, limits.tls) {
                Ok(info) => Detection::Decided(Protocol::Tls(info)),
                Err(TlsParseError::Incomplete) => Detection::NeedMore,
                Err(_) => Detection::Decided(Protocol::Opaque),
            };
            assert_eq!(
                got, expected,
                "TLS parser and detection disagree at {len} bytes"
            );
        }

        if let Some((at, earlier)) = &last_verdict {
            assert!(
                still_holds(earlier, &got),
                "verdict at {at} bytes, {earlier:?}, became {got:?} at {len} bytes",
            );
        }
        if got != Detection::NeedMore {
            last_verdict = Some((len, got));
        }
    }
}

/// Every length up to [`DENSE_PREFIXES`], then a sample, then the whole input.
fn prefix_lengths(len: usize) -> impl Iterator<Item = usize> {
    let stride = (len.saturating_sub(DENSE_PREFIXES) / SAMPLED_PREFIXES).max(1);
    (0..=len).filter(move |&n| n <= DENSE_PREFIXES || n % stride == 0 || n == len)
}

/// Whether `later`, on a longer buffer, keeps the verdict `earlier`.
fn still_holds(earlier: &Detection, later: &Detection) -> bool {
    match (earlier, later) {
        (Detection::NeedMore, _) => true,
        (
            Detection::Decided(Protocol::Http1 {
                method: m1,
                authority: a1,
            }),
            Detection::Decided(Protocol::Http1 {
                method: m2,
                authority: a2,
            }),
        ) => m1 == m2 && (a1.is_none() || a1 == a2),
        _ => earlier == later,
    }
}

/// Feeds `input` to a [`Detector`] the way the shell would, in chunks no larger than it allows,
/// sized by the input itself so that the fuzzer explores how reads split.
fn check_detector(input: &[u8]) {
    let mut detector = Detector::new();
    let mut rest = input;
    let mut sizes = input.iter().cycle().map(|&b| usize::from(b % 17) + 1);
    let mut last = Detection::NeedMore;
    while !rest.is_empty() && detector.max_read() > 0 {
        let size = sizes
            .next()
            .unwrap_or(1)
            .min(detector.max_read())
            .min(rest.len());
        let (chunk, next) = rest.split_at(size);
        rest = next;
        last = detector.push(chunk);
        assert_eq!(
            last,
            detect(detector.buffered()),
            "detector and detect disagree"
        );
    }
    assert!(detector.buffered().len() <= MAX_DETECT_BYTES);
    if detector.buffered().len() == MAX_DETECT_BYTES {
        assert_ne!(last, Detection::NeedMore, "detector undecided at the cap");
    }
    let on_timeout = detector.decide_on_timeout();
    assert_eq!(detector.verdict(), Some(&on_timeout));
    // The verdict holds for the whole input, however much of it the detector read.
    let whole = detect(input);
    let verdict = match on_timeout {
        Ok(protocol) => Detection::Decided(protocol),
        Err(refusal) => Detection::Refused(refusal),
    };
    if last != Detection::NeedMore {
        assert!(still_holds(&verdict, &whole), "{verdict:?} then {whole:?}");
    }
}

/// Splices the input into one of the captured ClientHellos, so that the checks reach the
/// extension parsers: byte 0 picks the hello and the mode (overwrite, insert or truncate after),
/// bytes 1 and 2 the offset, and the rest is what is spliced in.
fn splice_into_hello(data: &[u8]) -> Vec<u8> {
    let [choice, offset_hi, offset_lo, patch @ ..] = data else {
        return Vec::new();
    };
    let hellos = [
        fixtures::RUSTLS_SNI_ALPN,
        fixtures::RUSTLS_NO_SNI_MESH_ALPN,
        fixtures::OPENSSL_NO_SNI_ALPN,
    ];
    let hello = hellos[usize::from(*choice) % hellos.len()];
    let offset = usize::from(u16::from_be_bytes([*offset_hi, *offset_lo])) % (hello.len() + 1);
    let (head, tail) = hello.split_at(offset);
    let mut out = head.to_vec();
    out.extend_from_slice(patch);
    match choice >> 6 {
        0 | 1 => out.extend_from_slice(tail.get(patch.len()..).unwrap_or_default()),
        2 => out.extend_from_slice(tail),
        _ => {}
    }
    out
}
