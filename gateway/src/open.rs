//! The stream protocol as plain functions over data: what the first frame of a stream asks for,
//! whether it is well formed, and the answers the gateway gives.
//!
//! Every stream, on the egress port and on the QUIC port alike, starts with one
//! `StreamHeader` frame of at most [`MAX_OPEN_REQUEST_LEN`] bytes. Its `open` asks for a tunnel
//! and is answered by one `TunnelOpenResponse`; its `probe` is answered by one `ProbeResponse`
//! (on the egress port, the one the target cluster's gateway gave over the link). Anything else costs the stream a `bad-request` answer, never the connection.

use mesh_api::tunnel::{
    OpenStatus, Probe, StreamHeader, TunnelOpen, TunnelOpenResponse, stream_header,
};
use mesh_proxy::discovery::Target;

/// The cap on the first frame of a stream, the same the proxies send under.
pub use mesh_proxy::tunnel::MAX_OPEN_REQUEST_LEN;
/// The cap on an open response frame, the same the proxies read under.
pub use mesh_proxy::tunnel::MAX_OPEN_RESPONSE_LEN;

/// The longest cluster name accepted in an open request (a Kubernetes name is at most 253).
pub const MAX_CLUSTER_NAME_LEN: usize = 253;

/// What the first frame of a stream asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamRequest {
    /// A tunnel.
    Open(TunnelOpen),
    /// The gateway's health.
    Probe(Probe),
}

/// Why a first frame was refused: the text of the `bad-request` answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The header names neither an open nor a probe.
    #[error("the stream header asks for nothing: send an open request or a probe")]
    Empty,
    /// A probe on the egress port that names no cluster to probe.
    #[error("the probe names no target cluster")]
    ProbeWithoutCluster,
    /// No target cluster.
    #[error("the open request names no target cluster")]
    NoCluster,
    /// A target cluster name that no Link could have.
    #[error(
        "the target cluster name is longer than {MAX_CLUSTER_NAME_LEN} bytes or holds control characters"
    )]
    BadCluster,
    /// The authority is not a service's `host:port`.
    #[error("the authority {authority:?} is not a service host:port ({reason})")]
    Authority {
        /// The authority as sent, cut to 256 characters.
        authority: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The frame could not be read.
    #[error("the stream header frame is invalid: {0}")]
    Frame(String),
}

/// Classifies the first frame of a stream.
pub fn classify(header: StreamHeader) -> Result<StreamRequest, BadRequest> {
    match header.kind {
        Some(stream_header::Kind::Open(open)) => Ok(StreamRequest::Open(open)),
        Some(stream_header::Kind::Probe(probe)) => Ok(StreamRequest::Probe(probe)),
        None => Err(BadRequest::Empty),
    }
}

/// The target cluster of an open request, checked for shape only; whether it is linked is the
/// link table's business.
pub fn target_cluster(open: &TunnelOpen) -> Result<&str, BadRequest> {
    let cluster = open.target_cluster.as_str();
    if cluster.is_empty() {
        return Err(BadRequest::NoCluster);
    }
    if cluster.len() > MAX_CLUSTER_NAME_LEN || cluster.chars().any(char::is_control) {
        return Err(BadRequest::BadCluster);
    }
    Ok(cluster)
}

/// The service an open request names: a `host:port` authority, lowercased. An IP address is
/// refused: ingress reaches services, never addresses.
pub fn service_authority(open: &TunnelOpen) -> Result<String, BadRequest> {
    let refuse = |reason| BadRequest::Authority {
        authority: open.authority.chars().take(256).collect(),
        reason,
    };
    match Target::parse(&open.authority) {
        Ok(Target::Authority(authority)) => Ok(authority),
        Ok(_) => Err(refuse("an address, not a service name")),
        Err(invalid) => Err(refuse(invalid.reason)),
    }
}

/// An open response that refuses with `status`, saying why in `message`.
pub fn refusal(status: OpenStatus, message: impl Into<String>) -> TunnelOpenResponse {
    TunnelOpenResponse {
        status: status.into(),
        endpoint_identity: String::new(),
        message: message.into(),
    }
}

/// An open response that accepts, naming the endpoint the tunnel reaches.
pub fn accepted(endpoint_identity: &mesh_trust::SpiffeId) -> TunnelOpenResponse {
    TunnelOpenResponse {
        status: OpenStatus::Ok.into(),
        endpoint_identity: endpoint_identity.to_string(),
        message: String::new(),
    }
}

/// Whether an open response relayed from a remote gateway accepted the tunnel.
pub fn is_accepted(response: &TunnelOpenResponse) -> bool {
    response.status == i32::from(OpenStatus::Ok)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn open(cluster: &str, authority: &str) -> TunnelOpen {
        TunnelOpen {
            target_cluster: cluster.into(),
            authority: authority.into(),
            ..TunnelOpen::default()
        }
    }

    #[test]
    fn classifies_headers() {
        assert_eq!(
            classify(StreamHeader { kind: None }),
            Err(BadRequest::Empty)
        );
        let probe = Probe {
            nonce: 7,
            sent_at_unix_micros: 1,
            target_cluster: String::new(),
        };
        assert_eq!(
            classify(StreamHeader {
                kind: Some(stream_header::Kind::Probe(probe.clone()))
            }),
            Ok(StreamRequest::Probe(probe))
        );
    }

    #[test]
    fn checks_cluster_shape() {
        assert_eq!(target_cluster(&open("east", "a:1")), Ok("east"));
        assert_eq!(target_cluster(&open("", "a:1")), Err(BadRequest::NoCluster));
        assert_eq!(
            target_cluster(&open("ea\nst", "a:1")),
            Err(BadRequest::BadCluster)
        );
        let long = "x".repeat(MAX_CLUSTER_NAME_LEN + 1);
        assert_eq!(
            target_cluster(&open(&long, "a:1")),
            Err(BadRequest::BadCluster)
        );
    }

    #[test]
    fn authority_must_be_a_service_name() {
        assert_eq!(
            service_authority(&open("e", "Web.NS.svc.cluster.local:80")).unwrap(),
            "web.ns.svc.cluster.local:80"
        );
        assert!(service_authority(&open("e", "10.0.0.1:80")).is_err());
        assert!(service_authority(&open("e", "web")).is_err());
        assert!(service_authority(&open("e", "web:0")).is_err());
        assert!(service_authority(&open("e", "")).is_err());
    }

    #[test]
    fn responses() {
        let id = mesh_trust::SpiffeId::parse("spiffe://east.local/ns/a/sa/b").unwrap();
        assert!(is_accepted(&accepted(&id)));
        assert_eq!(accepted(&id).endpoint_identity, id.to_string());
        assert!(!is_accepted(&refusal(OpenStatus::NotExported, "no")));
    }
}
