//! The open exchange as plain functions over data: the request a proxy sends, and what it makes
//! of the gateway's answer.
//!
//! The answer comes from the network, through a gateway that relays what the remote gateway said,
//! so nothing in it is taken on trust: an unknown status is a protocol error, the gateway's
//! message is cut and stripped of control characters before it reaches an error or a log, and
//! the endpoint identity must be a SPIFFE ID of the remote trust domain.

use mesh_api::common::ProtocolHint;
use mesh_api::tunnel::{OpenStatus, StreamHeader, TunnelOpen, TunnelOpenResponse, stream_header};
use mesh_trust::{SpiffeId, TrustDomain};

use super::error::{ProtocolViolation, Refusal, TunnelErrorKind};
use crate::discovery::TunnelMeta;

/// The cap on an open response frame. A response holds a status, a SPIFFE ID (at most 2 KiB) and
/// a short message; a larger frame is not one, and is refused from its length prefix alone.
pub const MAX_OPEN_RESPONSE_LEN: usize = 4 * 1024;

/// The cap on an open request frame: a cluster name, an authority, a hint and a SPIFFE ID.
pub const MAX_OPEN_REQUEST_LEN: usize = 4 * 1024;

/// How many characters of the gateway's message are kept.
pub const MAX_GATEWAY_MESSAGE_CHARS: usize = 256;

/// The first frame on an egress connection: open a tunnel to `tunnel`'s service.
pub(super) fn open_request(
    tunnel: &TunnelMeta,
    hint: ProtocolHint,
    caller: &SpiffeId,
) -> StreamHeader {
    StreamHeader {
        kind: Some(stream_header::Kind::Open(TunnelOpen {
            target_cluster: tunnel.cluster.clone(),
            authority: tunnel.authority.clone(),
            protocol_hint: hint.into(),
            caller_identity: caller.to_string(),
        })),
    }
}

/// What an open response says: the endpoint identity to require in the inner handshake, or why
/// there is no tunnel.
pub(super) fn check_response(
    response: &TunnelOpenResponse,
    remote: &TrustDomain,
) -> Result<SpiffeId, TunnelErrorKind> {
    let message = || sanitize(&response.message);
    let refused = |refusal| TunnelErrorKind::Refused {
        refusal,
        message: message(),
    };
    let violation = |violation| TunnelErrorKind::Protocol {
        violation,
        message: message(),
    };
    let status = OpenStatus::try_from(response.status)
        .map_err(|_| violation(ProtocolViolation::UnknownStatus(response.status)))?;
    match status {
        OpenStatus::Ok => {}
        OpenStatus::Unspecified => return Err(violation(ProtocolViolation::UnspecifiedStatus)),
        OpenStatus::NotExported => return Err(refused(Refusal::NotExported)),
        OpenStatus::NoEndpoints => return Err(refused(Refusal::NoEndpoints)),
        OpenStatus::Unreachable => return Err(refused(Refusal::Unreachable)),
        OpenStatus::Forbidden => return Err(refused(Refusal::Forbidden)),
        OpenStatus::BadRequest => return Err(refused(Refusal::BadRequest)),
    }

    let endpoint = SpiffeId::parse(&response.endpoint_identity).map_err(|error| {
        violation(ProtocolViolation::EndpointIdentity {
            value: sanitize(&response.endpoint_identity),
            error,
        })
    })?;
    if endpoint.trust_domain_str() != remote.as_str() {
        return Err(TunnelErrorKind::ForeignEndpoint {
            endpoint,
            remote: remote.clone(),
        });
    }
    Ok(endpoint)
}

/// Text from the network made fit for an error message or a log line: control characters (line
/// breaks, terminal escapes) removed, at most [`MAX_GATEWAY_MESSAGE_CHARS`] characters kept, and
/// a cut marked with `...`.
pub(super) fn sanitize(text: &str) -> String {
    let mut kept = text.chars().filter(|c| !c.is_control());
    let mut out: String = kept.by_ref().take(MAX_GATEWAY_MESSAGE_CHARS).collect();
    if kept.next().is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn east() -> TrustDomain {
        TrustDomain::new("east").unwrap()
    }

    fn response(status: i32, identity: &str, message: &str) -> TunnelOpenResponse {
        TunnelOpenResponse {
            status,
            endpoint_identity: identity.into(),
            message: message.into(),
        }
    }

    #[test]
    fn request_names_the_remote_service_and_the_caller() {
        let tunnel = TunnelMeta {
            cluster: "east".into(),
            authority: "web.default.svc.cluster.local:80".into(),
            gateway: "10.0.0.1:4181".parse().unwrap(),
            gateway_identity: SpiffeId::parse("spiffe://west/ns/mesh/sa/gateway").unwrap(),
            remote_trust_domain: east(),
        };
        let caller = SpiffeId::parse("spiffe://west/ns/default/sa/client").unwrap();
        let request = open_request(&tunnel, ProtocolHint::Opaque, &caller);
        let Some(stream_header::Kind::Open(open)) = request.kind else {
            panic!("not an open request: {request:?}");
        };
        assert_eq!(open.target_cluster, "east");
        assert_eq!(open.authority, "web.default.svc.cluster.local:80");
        assert_eq!(open.protocol_hint, i32::from(ProtocolHint::Opaque));
        assert_eq!(open.caller_identity, "spiffe://west/ns/default/sa/client");
    }

    #[test]
    fn ok_yields_the_endpoint_identity() {
        let id = check_response(
            &response(OpenStatus::Ok.into(), "spiffe://east/ns/default/sa/web", ""),
            &east(),
        )
        .unwrap();
        assert_eq!(id.as_str(), "spiffe://east/ns/default/sa/web");
    }

    #[test]
    fn each_refusal_is_typed_and_keeps_the_message() {
        let cases = [
            (OpenStatus::NotExported, Refusal::NotExported),
            (OpenStatus::NoEndpoints, Refusal::NoEndpoints),
            (OpenStatus::Unreachable, Refusal::Unreachable),
            (OpenStatus::Forbidden, Refusal::Forbidden),
            (OpenStatus::BadRequest, Refusal::BadRequest),
        ];
        for (status, expected) in cases {
            let kind =
                check_response(&response(status.into(), "", "why not"), &east()).unwrap_err();
            assert!(
                matches!(&kind, TunnelErrorKind::Refused { refusal, message } if *refusal == expected && message == "why not"),
                "{status:?}: {kind:?}"
            );
            assert!(kind.to_string().contains("\"why not\""), "{kind}");
        }
    }

    #[test]
    fn unspecified_and_unknown_statuses_are_protocol_errors() {
        let kind = check_response(&response(0, "", ""), &east()).unwrap_err();
        assert!(
            matches!(
                kind,
                TunnelErrorKind::Protocol {
                    violation: ProtocolViolation::UnspecifiedStatus,
                    ..
                }
            ),
            "{kind:?}"
        );
        for status in [7, 42, -1, i32::MAX] {
            let kind = check_response(&response(status, "", "x"), &east()).unwrap_err();
            assert!(
                matches!(&kind, TunnelErrorKind::Protocol { violation: ProtocolViolation::UnknownStatus(s), message } if *s == status && message == "x"),
                "{kind:?}"
            );
        }
    }

    #[test]
    fn ok_needs_a_spiffe_id_of_the_remote_domain() {
        let ok = i32::from(OpenStatus::Ok);
        for bad in [
            "",
            "east",
            "https://east/ns/default/sa/web",
            "spiffe://east/a//b",
        ] {
            let kind = check_response(&response(ok, bad, ""), &east()).unwrap_err();
            assert!(
                matches!(
                    kind,
                    TunnelErrorKind::Protocol {
                        violation: ProtocolViolation::EndpointIdentity { .. },
                        ..
                    }
                ),
                "{bad:?}: {kind:?}"
            );
        }
        for foreign in [
            "spiffe://west/ns/default/sa/web",
            "spiffe://east.evil/ns/default/sa/web",
            "spiffe://easter/ns/default/sa/web",
        ] {
            let kind = check_response(&response(ok, foreign, ""), &east()).unwrap_err();
            assert!(
                matches!(&kind, TunnelErrorKind::ForeignEndpoint { endpoint, remote } if endpoint.as_str() == foreign && remote.as_str() == "east"),
                "{foreign}: {kind:?}"
            );
        }
    }

    #[test]
    fn gateway_text_is_stripped_of_control_characters_and_cut() {
        assert_eq!(sanitize("no\r\nendpoints\u{1b}[31m\0"), "noendpoints[31m");
        assert_eq!(sanitize(""), "");
        let exact = "é".repeat(MAX_GATEWAY_MESSAGE_CHARS);
        assert_eq!(sanitize(&exact), exact);
        let long = format!("{exact}tail");
        assert_eq!(sanitize(&long), format!("{exact}..."));
        // Control characters do not count against the cap.
        let padded = format!("{}{exact}", "\n".repeat(10));
        assert_eq!(sanitize(&padded), exact);

        // An invalid identity is quoted sanitised in the error, too.
        let kind = check_response(
            &response(OpenStatus::Ok.into(), "spiffe://east/\u{7}x\ny", ""),
            &east(),
        )
        .unwrap_err();
        assert!(
            matches!(&kind, TunnelErrorKind::Protocol { violation: ProtocolViolation::EndpointIdentity { value, .. }, .. } if value == "spiffe://east/xy"),
            "{kind:?}"
        );
    }
}
