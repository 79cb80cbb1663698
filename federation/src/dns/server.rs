//! The DNS server: hickory-server's UDP and TCP transports around our request handler, and the
//! task that rebuilds the [`Snapshot`] when the cache changes.
//!
//! hickory decodes messages (answering FORMERR, or dropping what has no header), truncates UDP
//! answers beyond the client's EDNS size (setting TC, so clients retry over TCP) and closes idle
//! TCP connections; answers to questions without EDNS are cut to 512 bytes here. The handler checks the opcode, the EDNS version and the question count, asks the
//! current snapshot, and never sets RA: the server is not a resolver.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::message::{EmitAndCount, emit_message_parts};
use hickory_proto::op::{Edns, Header, OpCode, Query, ResponseCode};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_proto::xfer::Protocol;
use hickory_server::ServerFuture;
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::answer::Answer;
use super::metrics::DnsMetrics;
use super::snapshot::{Authority, Snapshot};
use super::{DnsConfig, DnsError};
use crate::cache::Cache;

/// The largest UDP answer, whatever a client offers: the EDNS size that avoids IP
/// fragmentation on common paths (DNS Flag Day 2020). Larger answers are truncated.
const MAX_UDP_PAYLOAD: u16 = 1232;

/// The smallest UDP size a client may offer (RFC 6891).
const MIN_UDP_PAYLOAD: u16 = 512;

/// After rebuilding the snapshot, changes are gathered this long before the next rebuild, so
/// a burst of API events costs one rebuild and a busy cluster a bounded share of a core.
const REBUILD_INTERVAL: Duration = Duration::from_millis(200);

/// How many times to look for a port free for both UDP and TCP when asked for port 0.
const BIND_ATTEMPTS: usize = 16;

/// A DNS server bound to its UDP socket and TCP listener, not yet serving.
#[derive(Debug)]
pub struct DnsServer {
    authority: Arc<Authority>,
    cache: Cache,
    metrics: DnsMetrics,
    tcp_timeout: Duration,
    udp: UdpSocket,
    tcp: TcpListener,
    local_addr: SocketAddr,
}

/// How many records of each section a response keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fit {
    answers: usize,
    authority: usize,
    additionals: usize,
}

/// Answers each request from the latest snapshot.
struct DnsHandler {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    metrics: DnsMetrics,
}

// === impl DnsServer ===

impl DnsServer {
    /// Validates `config` and binds UDP and TCP on `config.listen` (with port 0, on one port
    /// free for both). Serving starts with [`DnsServer::run`].
    ///
    /// # Errors
    ///
    /// When the configuration is invalid or a socket cannot be bound.
    pub async fn bind(
        config: DnsConfig,
        cache: Cache,
        metrics: DnsMetrics,
    ) -> Result<Self, DnsError> {
        let authority = Arc::new(Authority::new(&config)?);
        let (udp, tcp) = bind_pair(config.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| DnsError::BindUdp {
            addr: config.listen,
            source,
        })?;
        Ok(Self {
            authority,
            cache,
            metrics,
            tcp_timeout: config.tcp_timeout,
            udp,
            tcp,
            local_addr,
        })
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and returns once in-flight
    /// requests are done.
    ///
    /// # Errors
    ///
    /// When a socket fails beyond recovery before `shutdown`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DnsError> {
        let Self {
            authority,
            cache,
            metrics,
            tcp_timeout,
            udp,
            tcp,
            local_addr,
        } = self;
        let mut changes = cache.changes();
        let serial = *changes.borrow_and_update();
        let first = snapshot_of(&cache, authority.clone(), serial);
        let (snapshots, receiver) = watch::channel(Arc::new(first));
        let mut tasks = JoinSet::new();
        tasks.spawn(refresh(
            cache,
            authority.clone(),
            changes,
            snapshots,
            metrics.clone(),
        ));

        let mut server = ServerFuture::new(DnsHandler {
            snapshots: receiver,
            metrics,
        });
        server.register_socket(udp);
        server.register_listener(tcp, tcp_timeout);
        tracing::info!(
            %local_addr,
            zone = %authority.zones().cluster_zone(),
            clusterset_zone = %authority.zones().clusterset_zone(),
            cluster = authority.cluster(),
            "DNS server listening on UDP and TCP"
        );

        let stop = server.shutdown_token().clone();
        let done = server.block_until_done();
        tokio::pin!(done, shutdown);
        tokio::select! {
            result = &mut done => {
                let reason = match result {
                    Ok(()) => "every listener stopped".to_owned(),
                    Err(error) => error.to_string(),
                };
                tracing::warn!(%local_addr, %reason, "DNS server stopped");
                Err(DnsError::Stopped(reason))
            }
            () = &mut shutdown => {
                stop.cancel();
                done.await.map_err(|error| DnsError::Stopped(error.to_string()))?;
                tracing::info!(%local_addr, "DNS server shut down");
                Ok(())
            }
        }
    }
}

/// Binds UDP on `listen`, then TCP on the same address and port.
async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let attempts = if listen.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| DnsError::BindUdp {
                addr: listen,
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| DnsError::BindUdp {
            addr: listen,
            source,
        })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            // The port the system chose for UDP is taken for TCP: try another.
            Err(error) if attempt < attempts && error.kind() == std::io::ErrorKind::AddrInUse => {}
            Err(source) => return Err(DnsError::BindTcp { addr, source }),
        }
    }
}

/// Rebuilds the snapshot after each change of the cache, at most once per
/// [`REBUILD_INTERVAL`].
async fn refresh(
    cache: Cache,
    authority: Arc<Authority>,
    mut changes: watch::Receiver<u64>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    metrics: DnsMetrics,
) {
    loop {
        if changes.changed().await.is_err() {
            return;
        }
        let serial = *changes.borrow_and_update();
        let (cache, authority) = (cache.clone(), authority.clone());
        // Building reads every object: keep it off the threads that answer queries.
        match tokio::task::spawn_blocking(move || snapshot_of(&cache, authority, serial)).await {
            Ok(snapshot) => {
                snapshots.send_replace(Arc::new(snapshot));
                metrics.snapshot_built();
            }
            Err(error) => tracing::error!(%error, "building the DNS snapshot failed"),
        }
        tokio::time::sleep(REBUILD_INTERVAL).await;
    }
}

/// The snapshot of the cache's stores now. The SOA serial is the cache's change counter,
/// modulo 2^32 (serial arithmetic wraps, RFC 1982).
fn snapshot_of(cache: &Cache, authority: Arc<Authority>, generation: u64) -> Snapshot {
    let complete = cache.ready();
    let services = cache.services.state();
    let slices = cache.slices.state();
    let splits = cache.splits.state();
    Snapshot::build(
        authority,
        services.iter().map(AsRef::as_ref),
        slices.iter().map(AsRef::as_ref),
        splits.iter().map(AsRef::as_ref),
        (generation % (1 << 32)) as u32,
        complete,
    )
}

// === impl DnsHandler ===

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let mut header = Header::response_from_request(request.header());
        header.set_recursion_available(false);
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(offered) = request.edns() {
            let mut edns = Edns::new();
            edns.set_max_payload(
                offered
                    .max_payload()
                    .clamp(MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD),
            );
            edns.set_version(0);
            edns.set_dnssec_ok(false);
            builder.edns(edns);
            if offered.version() > 0 {
                header.set_response_code(ResponseCode::BADVERS);
                return self
                    .send(request, builder.build_no_records(header), response_handle)
                    .await;
            }
        }
        if request.op_code() != OpCode::Query {
            header.set_response_code(ResponseCode::NotImp);
            return self
                .send(request, builder.build_no_records(header), response_handle)
                .await;
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            header.set_response_code(ResponseCode::FormErr);
            return self
                .send(request, builder.build_no_records(header), response_handle)
                .await;
        };
        let snapshot = self.snapshots.borrow().clone();
        let query = info.query.original();
        let answer = snapshot.answer(query);
        header.set_authoritative(answer.authoritative);
        header.set_response_code(answer.rcode);
        let mut fits = Fit::ALL;
        if request.protocol() == Protocol::Udp && request.edns().is_none() {
            if let Some(fit) = Fit::within(MIN_UDP_PAYLOAD, &header, query, &answer) {
                header.set_truncated(true);
                fits = fit;
            }
        }
        let response = builder.build(
            header,
            answer.answers.iter().take(fits.answers),
            answer.authority.iter().take(fits.authority),
            std::iter::empty(),
            answer.additionals.iter().take(fits.additionals),
        );
        match response_handle.send_response(response).await {
            Ok(info) => {
                self.metrics.answered(answer.rcode, request.protocol());
                info
            }
            Err(error) => failed(request, &error),
        }
    }
}

impl DnsHandler {
    /// Sends a response without records and counts it.
    async fn send<'a, R: ResponseHandler>(
        &self,
        request: &Request,
        response: hickory_server::authority::MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
            impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        >,
        mut response_handle: R,
    ) -> ResponseInfo {
        let rcode = response.header().response_code();
        match response_handle.send_response(response).await {
            Ok(info) => {
                self.metrics.answered(rcode, request.protocol());
                info
            }
            Err(error) => failed(request, &error),
        }
    }
}

// === impl Fit ===

impl Fit {
    const ALL: Self = Self {
        answers: usize::MAX,
        authority: usize::MAX,
        additionals: usize::MAX,
    };

    /// The records that fit in `limit` bytes, when not all do. hickory-server allows a UDP
    /// answer to a question without EDNS up to 4096 bytes, where RFC 1035 allows 512 (and such
    /// clients read no more), so those answers are cut here, and marked truncated so that the
    /// client asks again over TCP.
    fn within(limit: u16, header: &Header, query: &Query, answer: &Answer) -> Option<Self> {
        let question = query.to_bytes().ok()?;
        let mut buffer = Vec::with_capacity(usize::from(limit));
        let mut encoder = BinEncoder::new(&mut buffer);
        encoder.set_max_size(limit);
        let emitted = emit_message_parts(
            header,
            &mut Question(&question),
            &mut answer.answers.iter(),
            &mut answer.authority.iter(),
            &mut answer.additionals.iter(),
            None,
            &[],
            &mut encoder,
        )
        // A message that cannot be encoded at all is left to hickory, which answers SERVFAIL.
        .ok()?;
        emitted.truncated().then_some(Self {
            answers: usize::from(emitted.answer_count()),
            authority: usize::from(emitted.name_server_count()),
            additionals: usize::from(emitted.additional_count()),
        })
    }
}

/// The question as hickory-server writes it: the request's bytes, which later names do not
/// point into, so sizes measured with it are never below what hickory sends.
struct Question<'a>(&'a [u8]);

impl EmitAndCount for Question<'_> {
    fn emit(&mut self, encoder: &mut BinEncoder<'_>) -> Result<usize, hickory_proto::ProtoError> {
        encoder.emit_vec(self.0)?;
        Ok(1)
    }
}

/// Logs a response that could not be sent; the request is lost, the server carries on.
fn failed(request: &Request, error: &std::io::Error) -> ResponseInfo {
    tracing::debug!(src = %request.src(), %error, "sending a DNS response failed");
    let mut header = Header::response_from_request(request.header());
    header.set_response_code(ResponseCode::ServFail);
    header.into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn answer(records: usize) -> (Query, Answer) {
        let name = Name::from_ascii("big.prod.svc.west.mesh.local.").unwrap();
        let query = Query::query(name.clone(), RecordType::A);
        let mut answer = Answer::error(ResponseCode::NoError);
        answer.answers = (0..records)
            .map(|i| {
                let address = std::net::Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).unwrap());
                Record::from_rdata(name.clone(), 5, RData::A(A(address)))
            })
            .collect();
        (query, answer)
    }

    #[test]
    fn answers_without_edns_are_cut_to_512_bytes() {
        let header = Header::new();
        let (query, small) = answer(10);
        assert_eq!(Fit::within(512, &header, &query, &small), None);
        let (query, big) = answer(150);
        let fit = Fit::within(512, &header, &query, &big).unwrap();
        assert!(fit.answers > 10 && fit.answers < 150, "{fit:?}");

        // What is kept encodes within 512 bytes.
        let mut message = hickory_proto::op::Message::new();
        message.add_query(query);
        message.add_answers(big.answers.into_iter().take(fit.answers));
        assert!(message.to_vec().unwrap().len() <= 512);
    }
}
