//! Detection tests: captured and synthetic ClientHellos, HTTP/1 request lines, the HTTP/2
//! preface, hostile and undecided input, the `Detector`, and the fuzz checks on fixed seeds.

#![allow(clippy::unwrap_used)]

use rand::{Rng, SeedableRng, rngs::StdRng};

use super::*;
use crate::detect::fixtures::{OPENSSL_NO_SNI_ALPN, RUSTLS_NO_SNI_MESH_ALPN, RUSTLS_SNI_ALPN};

fn tls(sni: Option<&str>, alpn: &[&[u8]]) -> Protocol {
    Protocol::Tls(ClientHelloInfo {
        sni: sni.map(str::to_owned),
        alpn: alpn.iter().map(|p| p.to_vec()).collect(),
    })
}

fn http1(method: &str, authority: Option<&str>) -> Detection {
    Detection::Decided(Protocol::Http1 {
        method: method.to_owned(),
        authority: authority.map(str::to_owned),
    })
}

const OPAQUE: Detection = Detection::Decided(Protocol::Opaque);

/// Asserts that every proper prefix of `input` shorter than `decided_at` needs more, and that
/// `decided_at` bytes and every longer prefix give `expected`.
fn assert_decided_at(input: &[u8], decided_at: usize, expected: &Detection) {
    for len in 0..=input.len() {
        let got = detect(&input[..len]);
        if len < decided_at {
            assert_eq!(got, Detection::NeedMore, "at {len} bytes of {input:?}");
        } else {
            assert_eq!(&got, expected, "at {len} bytes of {input:?}");
        }
    }
}

// --- Synthetic ClientHellos, for what the captured ones do not cover. ---

fn ext(ext_type: u16, data: &[u8]) -> Vec<u8> {
    let mut out = ext_type.to_be_bytes().to_vec();
    out.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
    out.extend_from_slice(data);
    out
}

fn sni_ext(name: &[u8]) -> Vec<u8> {
    let mut entry = vec![0];
    entry.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    entry.extend_from_slice(name);
    let mut list = u16::try_from(entry.len()).unwrap().to_be_bytes().to_vec();
    list.extend_from_slice(&entry);
    ext(0, &list)
}

fn alpn_ext(protocols: &[&[u8]]) -> Vec<u8> {
    let mut names = Vec::new();
    for p in protocols {
        names.push(u8::try_from(p.len()).unwrap());
        names.extend_from_slice(p);
    }
    let mut list = u16::try_from(names.len()).unwrap().to_be_bytes().to_vec();
    list.extend_from_slice(&names);
    ext(16, &list)
}

/// A ClientHello handshake message (no record layer) with these extensions.
fn handshake(extensions: &[Vec<u8>]) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    let extensions = extensions.concat();
    body.extend_from_slice(&u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&extensions);
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut out = vec![1, len[1], len[2], len[3]];
    out.extend_from_slice(&body);
    out
}

/// `handshake` cut into handshake records of at most `fragment` bytes each.
fn records(handshake: &[u8], fragment: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(fragment) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

// --- TLS ---

#[test]
fn captured_rustls_hello_with_sni_and_alpn() {
    let expected = tls(Some("web.prod.svc.cluster.local"), &[b"h2", b"http/1.1"]);
    assert_eq!(
        detect(RUSTLS_SNI_ALPN),
        Detection::Decided(expected.clone())
    );
    let Protocol::Tls(info) = expected else {
        unreachable!()
    };
    assert_eq!(parse_client_hello(RUSTLS_SNI_ALPN), Ok(info));
}

#[test]
fn captured_hellos_without_sni() {
    let info = parse_client_hello(RUSTLS_NO_SNI_MESH_ALPN).unwrap();
    assert_eq!(info.sni, None);
    assert!(info.offers_alpn(b"mesh.opaque"));
    assert!(!info.offers_alpn(b"mesh.h2"));

    assert_eq!(
        detect(OPENSSL_NO_SNI_ALPN),
        Detection::Decided(tls(None, &[b"h2", b"http/1.1"]))
    );
}

#[test]
fn every_split_of_a_hello_needs_more_then_decides() {
    for hello in [
        RUSTLS_SNI_ALPN,
        RUSTLS_NO_SNI_MESH_ALPN,
        OPENSSL_NO_SNI_ALPN,
    ] {
        let expected = detect(hello);
        assert!(matches!(expected, Detection::Decided(Protocol::Tls(_))));
        assert_decided_at(hello, hello.len(), &expected);
        // Bytes after the hello (early data, a pipelined record) change nothing.
        let mut longer = hello.to_vec();
        longer.extend_from_slice(&[23, 3, 3, 0, 1, 0xff]);
        assert_eq!(detect(&longer), expected);
    }
}

#[test]
fn fragmented_hello_is_reassembled() {
    let hello = &RUSTLS_SNI_ALPN[5..];
    let expected = parse_client_hello(RUSTLS_SNI_ALPN).unwrap();
    for fragment in [1, 2, 3, 4, 5, 39, 100, 200] {
        let input = records(hello, fragment);
        assert_eq!(
            parse_client_hello(&input),
            Ok(expected.clone()),
            "{fragment}"
        );
        assert_decided_at(
            &input,
            input.len(),
            &Detection::Decided(Protocol::Tls(expected.clone())),
        );
    }
}

#[test]
fn fragmented_hello_with_a_foreign_record_is_opaque() {
    let mut input = records(&RUSTLS_SNI_ALPN[5..], 100);
    // The second record's content type: application data, mid-hello.
    input[105] = 23;
    assert_eq!(
        parse_client_hello(&input),
        Err(TlsParseError::NotHandshake(23))
    );
    assert_eq!(detect(&input), OPAQUE);
    assert_eq!(detect(&input[..105]), Detection::NeedMore);
}

#[test]
fn large_post_quantum_sized_hello_across_records() {
    // A key share the size of a few ML-KEM ones, pushing the hello past one record.
    let key_share = ext(51, &[0x5a; 9000]);
    let hs = handshake(&[sni_ext(b"pq.example"), key_share, alpn_ext(&[b"mesh.h2"])]);
    let input = records(&hs, 1 << 14);
    assert!(input.len() > 9000 && input.len() < MAX_TLS_DETECT_BYTES);
    let detected = detect(&input);
    assert_eq!(
        detected,
        Detection::Decided(tls(Some("pq.example"), &[b"mesh.h2"]))
    );
    assert_eq!(detect(&input[..input.len() - 1]), Detection::NeedMore);
    // Same hello in small records.
    assert_eq!(detect(&records(&hs, 1000)), detected);
}

#[test]
fn hello_past_the_cap_is_opaque() {
    // Declared too long to fit: decided on the handshake header, without waiting for the rest.
    let hs = handshake(&[ext(21, &[0; 20_000])]);
    let input = records(&hs, 1 << 14);
    assert_eq!(
        parse_client_hello(&input[..9]),
        Err(TlsParseError::TooLarge {
            limit: MAX_TLS_DETECT_BYTES
        })
    );
    assert_eq!(detect(&input[..9]), OPAQUE);

    // Short enough on its own, but fragmented so finely that record headers push it past the cap.
    let hs = handshake(&[ext(21, &[0; 5000])]);
    let input = records(&hs, 1);
    assert_eq!(
        detect(&input[..MAX_TLS_DETECT_BYTES - 1]),
        Detection::NeedMore
    );
    assert_eq!(detect(&input[..MAX_TLS_DETECT_BYTES]), OPAQUE);
    assert_eq!(detect(&input), OPAQUE);
}

#[test]
fn server_name_is_normalised_and_validated() {
    let with_name = |name: &[u8]| parse_client_hello(&records(&handshake(&[sni_ext(name)]), 512));
    assert_eq!(
        with_name(b"API.Example.COM.").unwrap().sni.as_deref(),
        Some("api.example.com")
    );
    assert_eq!(with_name(b"10.0.0.1").unwrap().sni, None);
    assert_eq!(with_name(b"::1").unwrap().sni, None);
    for bad in [
        &b"bad name"[..],
        b"a..b",
        b".",
        b"\xc3\xa9.example",
        b"x\0y",
    ] {
        assert_eq!(
            with_name(bad),
            Err(TlsParseError::InvalidServerName),
            "{bad:?}"
        );
    }
    assert_eq!(
        with_name(&[b'a'; 64]),
        Err(TlsParseError::InvalidServerName)
    );
}

#[test]
fn duplicate_and_empty_extensions_are_opaque() {
    let cases = [
        handshake(&[sni_ext(b"a.example"), sni_ext(b"b.example")]),
        handshake(&[alpn_ext(&[b"h2"]), alpn_ext(&[b"h2"])]),
        handshake(&[ext(0, &[])]),
        handshake(&[ext(16, &[0, 0])]),
        handshake(&[alpn_ext(&[b""])]),
    ];
    for hs in cases {
        let input = records(&hs, 1 << 14);
        assert!(parse_client_hello(&input).is_err());
        assert_eq!(detect(&input), OPAQUE);
    }
}

#[test]
fn hello_without_extensions_is_tls() {
    let mut hs = handshake(&[]);
    hs.truncate(hs.len() - 2);
    hs[3] -= 2;
    assert_eq!(
        detect(&records(&hs, 1 << 14)),
        Detection::Decided(tls(None, &[]))
    );
}

#[test]
fn not_a_hello_is_opaque_early() {
    // Handshake record, wrong record version.
    assert_eq!(detect(&[22, 2]), OPAQUE);
    // Zero and oversized record lengths.
    assert_eq!(detect(&[22, 3, 1, 0, 0]), OPAQUE);
    assert_eq!(detect(&[22, 3, 1, 0x40, 1]), OPAQUE);
    // A ServerHello (type 2), as if we were the client.
    assert_eq!(detect(&[22, 3, 3, 0, 80, 2]), OPAQUE);
    // SSLv2-compatible hello: not supported, and rightly so.
    assert_eq!(detect(&[0x80, 0x2e, 0x01, 0x03, 0x01]), OPAQUE);
    // A session id longer than 32 bytes is refused as soon as its length byte arrives.
    let mut start = vec![22, 3, 1, 1, 0, 1, 0, 0, 0xfc, 3, 3];
    start.extend_from_slice(&[0; 32]);
    start.push(33);
    assert_eq!(detect(&start), OPAQUE);
    assert_eq!(detect(&start[..start.len() - 1]), Detection::NeedMore);
}

/// Offsets and widths of every length field in a single-record hello built as the captured
/// ones are. A test-side walker, deliberately simpler than the parser: it trusts its input.
fn length_fields(hello: &[u8]) -> Vec<(usize, usize)> {
    let u16_at = |at: usize| usize::from(u16::from_be_bytes([hello[at], hello[at + 1]]));
    let mut fields = vec![(3, 2), (6, 3)];
    let mut at = 5 + 4 + 2 + 32;
    fields.push((at, 1));
    at += 1 + usize::from(hello[at]);
    fields.push((at, 2));
    at += 2 + u16_at(at);
    fields.push((at, 1));
    at += 1 + usize::from(hello[at]);
    fields.push((at, 2));
    let end = at + 2 + u16_at(at);
    at += 2;
    while at < end {
        let ext_type = u16_at(at);
        let len = u16_at(at + 2);
        fields.push((at + 2, 2));
        let data = at + 4;
        match ext_type {
            0 => fields.extend([(data, 2), (data + 3, 2)]),
            16 => {
                fields.push((data, 2));
                let mut p = data + 2;
                while p < data + len {
                    fields.push((p, 1));
                    p += 1 + usize::from(hello[p]);
                }
            }
            _ => {}
        }
        at = data + len;
    }
    assert_eq!(at, hello.len());
    fields
}

#[test]
fn lying_lengths_never_panic_and_stay_sane() {
    for hello in [
        RUSTLS_SNI_ALPN,
        RUSTLS_NO_SNI_MESH_ALPN,
        OPENSSL_NO_SNI_ALPN,
    ] {
        let Detection::Decided(Protocol::Tls(original)) = detect(hello) else {
            panic!("fixture does not parse");
        };
        let fields = length_fields(hello);
        assert!(fields.len() > 10);
        for (at, width) in fields {
            let value = hello[at..at + width]
                .iter()
                .fold(0usize, |v, &b| (v << 8) | usize::from(b));
            let max = (1usize << (8 * width)) - 1;
            for lie in [0, value.saturating_sub(1), value + 1, value * 2, max] {
                if lie == value || lie > max {
                    continue;
                }
                let mut mutated = hello.to_vec();
                let bytes = lie.to_be_bytes();
                mutated[at..at + width].copy_from_slice(&bytes[bytes.len() - width..]);

                let got = detect(&mutated);
                // A length that grows by exactly the size of the extensions after it swallows
                // them and still frames correctly: their SNI or ALPN is then lost, not invented.
                let sane = match &got {
                    Detection::NeedMore | Detection::Decided(Protocol::Opaque) => true,
                    Detection::Decided(Protocol::Tls(info)) => {
                        (info.sni.is_none() || info.sni == original.sni)
                            && (info.alpn.is_empty() || info.alpn == original.alpn)
                    }
                    _ => false,
                };
                assert!(sane, "length at {at} set to {lie}: {got:?}");
                let on_timeout = decide_on_timeout(&mutated).unwrap();
                match got {
                    Detection::Decided(protocol) => assert_eq!(on_timeout, protocol),
                    _ => assert_eq!(on_timeout, Protocol::Opaque),
                }
                fuzz_detect(&mutated);
            }
        }
    }
}

// --- HTTP ---

#[test]
fn http1_request_lines() {
    let cases: &[(&[u8], Detection)] = &[
        (b"GET / HTTP/1.1\r\n", http1("GET", None)),
        (b"GET / HTTP/1.0\r\n\r\n", http1("GET", None)),
        (
            b"GET /a?b=c HTTP/1.1\r\nHost: Example.COM:8080\r\n\r\n",
            http1("GET", Some("example.com:8080")),
        ),
        (
            b"POST /x HTTP/1.1\r\nUser-Agent: t\r\nhost:\tweb.svc \r\n",
            http1("POST", Some("web.svc")),
        ),
        (
            b"GET http://proxy.example/a HTTP/1.1\r\nHost: other\r\n",
            http1("GET", Some("proxy.example")),
        ),
        (
            b"CONNECT db.internal:5432 HTTP/1.1\r\n",
            http1("CONNECT", Some("db.internal:5432")),
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: h\r\n",
            http1("OPTIONS", Some("h")),
        ),
        (b"PROPFIND /dav HTTP/1.1\r\n", http1("PROPFIND", None)),
        // Lowercase is a valid extension method token; the server decides if it knows it.
        (b"get / HTTP/1.1\r\n", http1("get", None)),
        // Host not fully arrived, invalid, after the header section, or behind a broken line.
        (b"GET / HTTP/1.1\r\nHost: exam", http1("GET", None)),
        (b"GET / HTTP/1.1\r\nHost: a, b\r\n", http1("GET", None)),
        (b"GET / HTTP/1.1\r\n\r\nHost: a\r\n", http1("GET", None)),
        (
            b"GET / HTTP/1.1\r\nX : y\r\nHost: a\r\n",
            http1("GET", None),
        ),
        (
            b"GET http://u@h/ HTTP/1.1\r\nHost: h\r\n",
            http1("GET", None),
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(&detect(input), expected, "{}", input.escape_ascii());
    }
}

#[test]
fn http1_decides_at_the_crlf_and_learns_host_later() {
    let request = b"GET /index.html HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n";
    let line_end = b"GET /index.html HTTP/1.1\r\n".len();
    let host_end = line_end + b"Host: web\r\n".len();
    for len in 0..=request.len() {
        let expected = match len {
            _ if len < line_end => Detection::NeedMore,
            _ if len < host_end => http1("GET", None),
            _ => http1("GET", Some("web")),
        };
        assert_eq!(detect(&request[..len]), expected, "at {len}");
    }
}

#[test]
fn not_http1_is_opaque() {
    let cases: &[&[u8]] = &[
        b"GE(T / HTTP/1.1\r\n",
        b"GET\t/ HTTP/1.1\r\n",
        b" GET / HTTP/1.1\r\n",
        b"GET  / HTTP/1.1\r\n",
        b"GET / HTTP/1.2\r\n",
        b"GET / HTTP/2.0\r\n",
        b"GET / http/1.1\r\n",
        b"GET / HTTP/1.1\n",
        b"GET / HTTP/1.1 \r\n",
        b"GET /\x00 HTTP/1.1\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        b"PING\r\n",
        b"EHLO client.example\r\n",
    ];
    for input in cases {
        assert_eq!(
            decide_on_timeout(input),
            Ok(Protocol::Opaque),
            "{}",
            input.escape_ascii()
        );
        assert_eq!(detect(input), OPAQUE, "{}", input.escape_ascii());
    }
    // Decided on the byte that breaks the grammar, not later.
    assert_eq!(detect(b"GE("), OPAQUE);
    assert_eq!(detect(b"GET / HTTP/1.1\r"), Detection::NeedMore);
    assert_eq!(detect(b"GET / HTTP/1.1\rX"), OPAQUE);
    // Postgres' startup message: decided on its first byte.
    assert_eq!(detect(&[0]), OPAQUE);
}

#[test]
fn over_long_request_line_is_refused() {
    let mut line = b"GET /".to_vec();
    line.resize(MAX_REQUEST_LINE_BYTES, b'a');
    assert_eq!(
        detect(&line[..MAX_REQUEST_LINE_BYTES - 1]),
        Detection::NeedMore
    );
    let refused = Detection::Refused(Refusal::RequestLineTooLong {
        limit: MAX_REQUEST_LINE_BYTES,
    });
    assert_eq!(detect(&line), refused);
    line.extend_from_slice(b" HTTP/1.1\r\n");
    assert_eq!(detect(&line), refused);
    assert_eq!(
        decide_on_timeout(&line),
        Err(Refusal::RequestLineTooLong {
            limit: MAX_REQUEST_LINE_BYTES
        })
    );

    // A line that ends exactly at the cap is fine.
    let mut fits = b"GET /".to_vec();
    fits.resize(MAX_REQUEST_LINE_BYTES - b" HTTP/1.1\r\n".len(), b'a');
    fits.extend_from_slice(b" HTTP/1.1\r\n");
    assert_eq!(fits.len(), MAX_REQUEST_LINE_BYTES);
    assert_eq!(detect(&fits), http1("GET", None));

    // Token characters without a space are not an over-long request, just not HTTP.
    assert_eq!(detect(&[b'A'; MAX_REQUEST_LINE_BYTES]), OPAQUE);
}

#[test]
fn h2_preface_byte_by_byte() {
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert_decided_at(preface, preface.len(), &Detection::Decided(Protocol::Http2));
    let mut with_settings = preface.to_vec();
    with_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    assert_eq!(detect(&with_settings), Detection::Decided(Protocol::Http2));

    // Diverging anywhere in the preface is not HTTP/2.
    for at in 0..preface.len() {
        let mut bent = preface.to_vec();
        bent[at] ^= 0x01;
        let got = decide_on_timeout(&bent).unwrap();
        assert_ne!(got, Protocol::Http2, "at {at}");
    }
    // An HTTP/1 request with the PRI method is still HTTP/1.
    assert_eq!(detect(b"PRI * HTTP/1.1\r\n"), http1("PRI", None));
}

// --- Undecided, timeout, hostile input ---

#[test]
fn server_speaks_first_is_opaque_at_timeout() {
    assert_eq!(detect(b""), Detection::NeedMore);
    assert_eq!(decide_on_timeout(b""), Ok(Protocol::Opaque));
    // Partial TLS, HTTP/1 and HTTP/2 left hanging at the timeout or at end of stream.
    for partial in [
        &RUSTLS_SNI_ALPN[..100],
        b"GET /index",
        b"PRI * HTTP/2.0\r\n",
    ] {
        assert_eq!(detect(partial), Detection::NeedMore);
        assert_eq!(decide_on_timeout(partial), Ok(Protocol::Opaque));
    }
}

#[test]
fn random_binary_is_opaque_quickly() {
    let mut rng = StdRng::seed_from_u64(0x6465_7465_6374);
    let (mut total, mut worst) = (0, 0);
    for _ in 0..2000 {
        let mut buf = [0u8; 64];
        rng.fill(&mut buf[..]);
        let decided_at = (0..=buf.len())
            .find(|&n| detect(&buf[..n]) != Detection::NeedMore)
            .unwrap();
        assert_eq!(detect(&buf), OPAQUE, "{buf:?}");
        total += decided_at;
        worst = worst.max(decided_at);
    }
    // Most random streams break every grammar on the first or second byte; the slowest ones
    // happen to start with a token and a space, and run on as a request-target.
    assert!(total < 2 * 2000, "{total} bytes for 2000 verdicts");
    assert!(worst <= 48, "one took {worst} bytes");
}

#[test]
fn nothing_is_undecided_at_the_cap() {
    let mut rng = StdRng::seed_from_u64(7);
    let mut starts: Vec<Vec<u8>> = vec![
        b"GET /".to_vec(),
        b"GET / HTTP/1.1\r\nHost: ".to_vec(),
        RUSTLS_SNI_ALPN[..50].to_vec(),
        records(&handshake(&[ext(21, &[0; 15_000])]), 1 << 14),
    ];
    starts.push(vec![b'x'; 3]);
    for start in starts {
        let mut buf = start;
        while buf.len() < MAX_DETECT_BYTES {
            buf.push(rng.random_range(b'a'..=b'z'));
        }
        assert_ne!(detect(&buf), Detection::NeedMore);
    }
}

// --- Detector ---

#[test]
fn detector_buffers_until_a_verdict() {
    let mut detector = Detector::new();
    assert_eq!(detector.max_read(), MAX_DETECT_BYTES);
    let (first, rest) = RUSTLS_SNI_ALPN.split_at(40);
    assert_eq!(detector.push(first), Detection::NeedMore);
    assert_eq!(detector.verdict(), None);
    assert_eq!(detector.max_read(), MAX_DETECT_BYTES - 40);
    let verdict = detector.push(rest);
    assert_eq!(verdict, detect(RUSTLS_SNI_ALPN));
    assert_eq!(detector.max_read(), 0);
    // Bytes after the verdict are kept for replay but change nothing.
    assert_eq!(detector.push(b"more"), verdict);
    let mut replay = RUSTLS_SNI_ALPN.to_vec();
    replay.extend_from_slice(b"more");
    assert_eq!(detector.buffered(), &replay[..]);
    assert_eq!(detector.into_buffered(), replay);
}

#[test]
fn detector_times_out_to_opaque() {
    let mut detector = Detector::new();
    assert_eq!(detector.push(b"GET /slow"), Detection::NeedMore);
    assert_eq!(detector.decide_on_timeout(), Ok(Protocol::Opaque));
    assert_eq!(detector.verdict(), Some(&Ok(Protocol::Opaque)));
    assert_eq!(detector.push(b" HTTP/1.1\r\n"), OPAQUE);
}

// --- The fuzz checks, on hostile seeds ---

#[test]
fn fuzz_checks_hold_on_hostile_seeds() {
    let mut seeds: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![22],
        vec![22, 3, 1, 0xff, 0xff, 1, 0xff, 0xff, 0xff],
        RUSTLS_SNI_ALPN.to_vec(),
        RUSTLS_NO_SNI_MESH_ALPN.to_vec(),
        OPENSSL_NO_SNI_ALPN.to_vec(),
        records(&RUSTLS_SNI_ALPN[5..], 1),
        records(&RUSTLS_SNI_ALPN[5..], 7),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        b"GET http://a/ HTTP/1.1\r\nHost: b\r\nHost: c\r\n\r\n".to_vec(),
        b"CONNECT x:1 HTTP/1.0\r\n\r\n".to_vec(),
        vec![b'G'; 100],
        // Splice control bytes first: overwrite the SNI length in each hello, insert, truncate.
        [&[0x00, 0x00, 0xd0][..], &[0xff, 0xff]].concat(),
        [&[0x41, 0x00, 0x60][..], &[0x00; 40]].concat(),
        [&[0x82, 0x00, 0x05][..], b"GET / HTTP/1.1\r\n"].concat(),
        [&[0xc0, 0x00, 0x20][..], &[0x16, 0x03]].concat(),
    ];
    let mut long = b"GET /".to_vec();
    long.resize(MAX_DETECT_BYTES + 100, b'a');
    seeds.push(long);
    let mut rng = StdRng::seed_from_u64(1);
    for len in [1, 5, 9, 43, 300, 2000] {
        let mut seed = vec![0u8; len];
        rng.fill(&mut seed[..]);
        seeds.push(seed.clone());
        seed[0] = 22;
        seeds.push(seed);
    }
    for seed in &seeds {
        fuzz_detect(seed);
    }
}
