//! Handshakes and issuance per second, on one core.
//!
//! `cargo bench -p mesh-trust --bench handshake` prints a Markdown table for BENCHMARKS.md.
//! Handshakes run in memory (no sockets), client and server on the same thread, so the figure is
//! the CPU cost of both ends of one handshake on one core. The baseline is rustls's stock webpki
//! verifiers (DNS-name server check) over the same chain shape (leaf + issuer, ECDSA P-256),
//! measured in the same run, so the ratio shows what SPIFFE verification costs.
// A synchronous benchmark: std's clock is the right one here.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_trust::ca::{self, CertificateAuthority, Validity};
use mesh_trust::tls::{self, CertResolver, WorkloadCredentials};
use mesh_trust::{PeerPolicy, SharedTrustBundles, TrustBundleSet, TrustDomain};
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

const RUN_FOR: Duration = Duration::from_secs(3);

fn main() {
    let td = TrustDomain::new("west").unwrap();
    let root = CertificateAuthority::create_root(&td, ca::DEFAULT_ROOT_LIFETIME).unwrap();
    let issuer = Arc::new(root.create_issuer(ca::DEFAULT_ISSUER_LIFETIME).unwrap());
    let mut set = TrustBundleSet::new();
    set.insert(&td, root.certificate()).unwrap();
    let bundles = SharedTrustBundles::new(set);

    let creds = |sa: &str| {
        let id = td.workload("default", sa).unwrap();
        let (key, csr) = ca::generate_key_and_csr(&id).unwrap();
        let leaf = issuer
            .sign_csr(&id, &csr, Validity::starting_now(ca::DEFAULT_LEAF_LIFETIME))
            .unwrap();
        WorkloadCredentials::new(id, leaf, key).unwrap()
    };
    let server_id = td.workload("default", "api").unwrap();
    let mesh_server = Arc::new(
        tls::server_config(
            bundles.clone(),
            PeerPolicy::AnyDomain,
            Arc::new(CertResolver::new(creds("api")).unwrap()),
            &[b"mesh.h2"],
        )
        .unwrap(),
    );
    let client_resolver = Arc::new(CertResolver::new(creds("web")).unwrap());
    let mesh_client = |resumption: bool| {
        let mut config = tls::client_config(
            bundles.clone(),
            PeerPolicy::Exactly(server_id.clone()),
            Some(client_resolver.clone()),
            &[b"mesh.h2"],
        )
        .unwrap();
        if resumption {
            config.resumption = rustls::client::Resumption::in_memory_sessions(256);
        }
        Arc::new(config)
    };
    let (stock_server, stock_client) = stock_configs(&root, &issuer);

    let mut rows = Vec::new();
    let stock_full = per_second(|| {
        assert!(!handshake(&stock_client, &stock_server));
    });
    let full_client = mesh_client(false);
    let mesh_full = per_second(|| {
        assert!(!handshake(&full_client, &mesh_server));
    });
    // Mesh configs turn resumption off (a resumed handshake skips verification, see
    // `tls::server_config`); this measures what it would save, with it turned back on.
    let resumed_client = mesh_client(true);
    let resuming_server = {
        let mut config = (*mesh_server).clone();
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(256);
        config.send_tls13_tickets = 2;
        Arc::new(config)
    };
    assert!(
        !handshake(&resumed_client, &resuming_server),
        "the first handshake is a full one"
    );
    let mesh_resumed = per_second(|| {
        assert!(
            handshake(&resumed_client, &resuming_server),
            "handshake was not resumed"
        );
    });
    rows.push((
        "full mTLS handshakes/s, rustls stock webpki verifiers (baseline)",
        stock_full,
        1.0,
    ));
    rows.push((
        "full mTLS handshakes/s, mesh SPIFFE verifiers",
        mesh_full,
        mesh_full / stock_full,
    ));
    rows.push((
        "resumed mTLS handshakes/s, if resumption were on (TLS 1.3 PSK)",
        mesh_resumed,
        mesh_resumed / mesh_full,
    ));

    let id = td.workload("default", "web").unwrap();
    let (_key, csr) = ca::generate_key_and_csr(&id).unwrap();
    let sign_only = per_second(|| {
        issuer
            .sign_csr(&id, &csr, Validity::starting_now(ca::DEFAULT_LEAF_LIFETIME))
            .unwrap();
    });
    let with_keygen = per_second(|| {
        let (_key, csr) = ca::generate_key_and_csr(&id).unwrap();
        issuer
            .sign_csr(&id, &csr, Validity::starting_now(ca::DEFAULT_LEAF_LIFETIME))
            .unwrap();
    });
    rows.push((
        "leaves issued/s from a CSR (verify CSR, sign)",
        sign_only,
        1.0,
    ));
    rows.push((
        "leaves issued/s incl. workload key + CSR generation",
        with_keygen,
        with_keygen / sign_only,
    ));

    println!("| measurement | per second, one core | ratio |");
    println!("|---|---:|---:|");
    for (name, rate, ratio) in rows {
        println!("| {name} | {rate:.0} | {ratio:.2} |");
    }
    println!();
    println!(
        "Ratios: mesh full vs stock full; resumed vs mesh full; with key generation vs sign only."
    );
}

/// Runs `f` repeatedly for [`RUN_FOR`] after a short warm-up and returns calls per second.
fn per_second(mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN_FOR {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// One complete handshake in memory; returns whether it was resumed.
fn handshake(client: &Arc<ClientConfig>, server: &Arc<ServerConfig>) -> bool {
    let name = ServerName::try_from("api.default.svc.cluster.local").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut buf = Vec::with_capacity(8192);
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().unwrap();
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().unwrap();
        }
    }
    // Deliver the server's session tickets, which arrive after the handshake.
    buf.clear();
    while s.wants_write() {
        s.write_tls(&mut buf).unwrap();
    }
    if !buf.is_empty() {
        c.read_tls(&mut buf.as_slice()).unwrap();
        c.process_new_packets().unwrap();
    }
    c.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// The same chain shape for rustls's stock verifiers: leaves with a DNS SAN under the same issuer.
fn stock_configs(
    root: &CertificateAuthority,
    issuer: &CertificateAuthority,
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let provider = Arc::new(tls::provider());
    let signer = Issuer::from_ca_cert_der(
        issuer.certificate(),
        KeyPair::from_pem(&issuer.private_key_pem()).unwrap(),
    )
    .unwrap();
    let leaf = |dns: &str| -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::DnsName(dns.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &signer).unwrap();
        (
            vec![cert.der().clone(), issuer.certificate().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    };
    let mut roots = RootCertStore::empty();
    roots.add(root.certificate().clone()).unwrap();
    let roots = Arc::new(roots);
    let (server_chain, server_key) = leaf("api.default.svc.cluster.local");
    let client_verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server_chain, server_key)
        .unwrap();
    let (client_chain, client_key) = leaf("web.default.svc.cluster.local");
    let mut client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(client_chain, client_key)
        .unwrap();
    client.resumption = rustls::client::Resumption::disabled();
    (Arc::new(server), Arc::new(client))
}
