//! mesh-trust: workload identity and trust across clusters that do not share a root.
//!
//! - [`spiffe`]: SPIFFE IDs and trust domains, strictly validated.
//! - [`ca`]: roots, issuers, and leaves signed from CSRs.
//! - [`bundle`]: trust domain -> roots, as PEM or SPIFFE bundle JSON; merge and diff.
//! - [`verify`]: rustls verifiers that check a peer against the roots of its *own* domain only.
//! - [`tls`]: TLS 1.3 mutual configs and the certificate resolver that rotation swaps.
//! - [`rotation`]: renews the workload leaf at 70 % of its lifetime through a pluggable issuer.
//! - [`identity`]: the Certify gRPC service and its client.
//! - [`x509`]: certificate inspection.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod ca;
pub mod identity;
pub mod pem;
pub mod rotation;
pub mod spiffe;
pub mod tls;
pub mod verify;
pub mod x509;

pub use bundle::TrustBundleSet;
pub use ca::CertificateAuthority;
pub use spiffe::{SpiffeId, TrustDomain};
pub use verify::{PeerPolicy, SharedTrustBundles};
