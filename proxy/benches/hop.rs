//! What a meshed hop costs: `cargo bench -p mesh-proxy --bench hop -- [options]`.
//!
//! Three paths carry the same load to the same backend, in one run:
//! - direct: the load generator talks to the backend;
//! - mesh pair: load -> west `mesh-proxy` -> mTLS -> east `mesh-proxy` -> backend (two real
//!   processes of the `mesh-proxy` binary);
//! - HAProxy pair: load -> HAProxy A -> mTLS -> HAProxy B -> backend, the reference L7 proxy
//!   set up as a two-hop pair too (skipped, with a note, when `haproxy` is not installed).
//!
//! Scenarios (`--scenario`, default all):
//! - latency: open loop at `--rate` (default 1,000 req/s) over `--connections` keep-alive
//!   HTTP/1.1 connections, corrected for coordinated omission (see `hop/load.rs`); p50, p99,
//!   p99.9 and what each path adds to direct; the proxies' CPU and peak memory meanwhile;
//! - saturation: closed loop, as fast as the connections go; req/s, req/s per core used by the
//!   proxies and per core of the machine, latency percentiles, CPU per 1,000 requests;
//! - throughput: `--bulk-mib` of opaque TCP through one connection, MB/s.
//!
//! The load generator and the backends run in this process, each on a runtime with one worker
//! thread; the proxies are separate processes measured through `/proc`. Every measurement is
//! preceded by a warm-up of the same load (`--warmup`) on the same connections.
//!
//! The output is a set of tables, then the same tables in markdown for BENCHMARKS.md.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::runtime::Runtime;

#[path = "hop/bulk.rs"]
mod bulk;
#[path = "hop/haproxy.rs"]
mod haproxy;
#[path = "hop/mesh.rs"]
mod mesh;
#[path = "hop/pki.rs"]
mod pki;
#[path = "hop/process.rs"]
mod process;
#[path = "hop/procfs.rs"]
mod procfs;
#[path = "hop/report.rs"]
mod report;
#[path = "hop/table.rs"]
mod table;

use mesh_test_support::backends as backend;
use mesh_test_support::load::{self, Target};
use process::PathUnderTest;
use procfs::UsageProbe;
use report::{BulkRun, HttpRun, PathKind, PathReport, Report};

/// Bytes pushed through a path before its throughput is measured.
const BULK_WARMUP_BYTES: u64 = 64 << 20;
/// No single push may take longer.
const BULK_LIMIT: Duration = Duration::from_secs(600);
const MIB: u64 = 1 << 20;

/// What a meshed hop costs, against a direct connection and an HAProxy pair.
#[derive(Debug, Parser)]
#[command(name = "hop")]
struct Args {
    /// Offered load of the latency scenario, requests per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long each scenario is measured (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = mesh_proxy::run::cli::parse_duration)]
    duration: Duration,
    /// How long the same load runs, unmeasured, before each measurement.
    #[arg(long, default_value = "2s", value_parser = mesh_proxy::run::cli::parse_duration)]
    warmup: Duration,
    /// Keep-alive HTTP/1.1 connections the load is spread over.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// MiB of opaque TCP pushed through each path in the throughput scenario.
    #[arg(long, default_value_t = 1024)]
    bulk_mib: u64,
    /// Leave out the HAProxy pair.
    #[arg(long)]
    skip_haproxy: bool,
    /// Leave out the mesh pair.
    #[arg(long)]
    skip_mesh: bool,
    /// The `mesh-proxy` binary (default: the one built with this bench).
    #[arg(long)]
    mesh_proxy: Option<PathBuf>,
    /// The `haproxy` binary (default: `haproxy` on PATH, /usr/sbin or /usr/local/sbin).
    #[arg(long)]
    haproxy: Option<PathBuf>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Latency,
    Saturation,
    Throughput,
    All,
}

// === impl Scenario ===

impl Scenario {
    fn includes(self, other: Scenario) -> bool {
        self == Scenario::All || self == other
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Saturation => "saturation",
            Scenario::Throughput => "throughput",
            Scenario::All => "all",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hop: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn Error>> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err("--rate must be a positive number of requests per second".into());
    }
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be longer than zero".into());
    }

    let server_rt = runtime("bench-server")?;
    let load_rt = runtime("bench-load")?;
    let east_ip = mesh::pick_east_ip()?;
    let backends = backend::start(&server_rt, east_ip)?;
    let dir = tempfile::Builder::new()
        .prefix("mesh-hop-bench")
        .tempdir()?;
    let pki = pki::write(dir.path())?;

    let mut report = Report::new(args.rate, args.connections, args.warmup, args.duration);
    eprintln!(
        "hop: backends at {} (HTTP) and {} (sink); working files in {}",
        backends.http,
        backends.sink,
        dir.path().display()
    );

    let mut paths = Vec::new();
    let direct = PathUnderTest {
        http: backends.http,
        tcp: backends.sink,
        processes: Vec::new(),
        hop: "the load generator connects to the backend".to_owned(),
    };
    paths.push(started(PathKind::Direct, Ok(direct)));

    if args.skip_mesh {
        report
            .notes
            .push("mesh pair: skipped (--skip-mesh)".to_owned());
    } else if let Some(bin) = mesh_proxy_binary(args) {
        report.mesh_binary = Some(bin.display().to_string());
        eprintln!("hop: starting the mesh pair ({})", bin.display());
        let pair = load_rt.block_on(mesh::start(&bin, dir.path(), &pki, &backends));
        paths.push(started(PathKind::Mesh, pair));
    } else {
        report.notes.push(
            "mesh pair: not measured: this build has no `mesh-proxy` binary target \
             (CARGO_BIN_EXE_mesh-proxy is unset); pass --mesh-proxy PATH to use one built elsewhere"
                .to_owned(),
        );
    }

    if args.skip_haproxy {
        report
            .notes
            .push("haproxy pair: skipped (--skip-haproxy)".to_owned());
    } else if let Some(bin) = haproxy::find(args.haproxy.as_deref()) {
        report.haproxy_version = Some(haproxy::version(&bin));
        eprintln!("hop: starting the HAProxy pair ({})", bin.display());
        let pair = load_rt.block_on(haproxy::start(&bin, dir.path(), &pki, &backends));
        paths.push(started(PathKind::Haproxy, pair));
    } else {
        report.notes.push(match &args.haproxy {
            Some(path) => format!(
                "haproxy pair: not measured: {} is not a file",
                path.display()
            ),
            None => "haproxy pair: not measured: haproxy is not installed \
                     (Debian: `apt-get install haproxy`; or pass --haproxy PATH)"
                .to_owned(),
        });
    }

    // Every path is up before any load, so idle figures are idle; each scenario then runs on
    // every path back to back, so the machine changes as little as possible between the rows
    // that are compared. A path that fails is stopped and reported; the others go on.
    for scenario in [
        Scenario::Latency,
        Scenario::Saturation,
        Scenario::Throughput,
    ] {
        if !args.scenario.includes(scenario) {
            continue;
        }
        for (path_report, path) in &mut paths {
            let Some(running) = path else {
                continue;
            };
            eprintln!("hop: {} on {}", scenario.name(), path_report.kind.name());
            if let Err(error) = run_scenario(path_report, args, &load_rt, running, scenario) {
                path_report.failure = Some(error.to_string());
                *path = None;
            }
        }
    }
    // Stops the proxies before the report is printed.
    report.paths = paths
        .into_iter()
        .map(|(path_report, _)| path_report)
        .collect();

    print!("{}", report.render());
    Ok(())
}

/// The bench's own runtime for one role, on one worker thread.
fn runtime(name: &str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
}

fn mesh_proxy_binary(args: &Args) -> Option<PathBuf> {
    args.mesh_proxy
        .clone()
        .or_else(|| option_env!("CARGO_BIN_EXE_mesh-proxy").map(PathBuf::from))
}

/// The report of a path just started (with its idle memory), and the path if it runs.
fn started(
    kind: PathKind,
    path: Result<PathUnderTest, process::SetupError>,
) -> (PathReport, Option<PathUnderTest>) {
    let path = match path {
        Ok(path) => path,
        Err(error) => {
            let mut report = PathReport::new(kind, String::new(), Vec::new());
            report.failure = Some(format!("could not be started: {error}"));
            return (report, None);
        }
    };
    let mut report = PathReport::new(kind, path.hop.clone(), path.names());
    match path.pids().into_iter().map(procfs::rss_kib).collect() {
        Ok(idle) => {
            report.idle_rss_kib = idle;
            (report, Some(path))
        }
        Err(error) => {
            report.failure = Some(format!("cannot read its memory use: {error}"));
            (report, None)
        }
    }
}

/// Runs one scenario on one path and checks that its processes survived it.
fn run_scenario(
    report: &mut PathReport,
    args: &Args,
    rt: &Runtime,
    path: &mut PathUnderTest,
    scenario: Scenario,
) -> Result<(), Box<dyn Error>> {
    let pids = path.pids();
    let target = Target::tcp(path.http, mesh::HTTP_HOST);
    match scenario {
        Scenario::Latency => {
            report.latency = Some(rt.block_on(http_run(args, &target, Some(args.rate), &pids))?);
        }
        Scenario::Saturation => {
            report.saturation = Some(rt.block_on(http_run(args, &target, None, &pids))?);
        }
        Scenario::Throughput => {
            report.bulk = Some(rt.block_on(bulk_run(args, path.tcp, &pids))?);
        }
        Scenario::All => {}
    }
    Ok(path.check_running()?)
}

/// Open loop at `rate`, or closed loop when `rate` is `None`: warm-up, then measurement.
async fn http_run(
    args: &Args,
    target: &Target,
    rate: Option<f64>,
    pids: &[u32],
) -> Result<HttpRun, Box<dyn Error>> {
    let connections = load::connect(target, args.connections).await?;
    let (connections, _) = match rate {
        Some(rate) => load::open_loop(connections, rate, args.warmup).await?,
        None => load::closed_loop(connections, args.warmup).await?,
    };
    let probe = UsageProbe::start(pids)?;
    let (_, result) = match rate {
        Some(rate) => load::open_loop(connections, rate, args.duration).await?,
        None => load::closed_loop(connections, args.duration).await?,
    };
    let usage = probe.finish()?;
    Ok(HttpRun { result, usage })
}

async fn bulk_run(
    args: &Args,
    addr: std::net::SocketAddr,
    pids: &[u32],
) -> Result<BulkRun, Box<dyn Error>> {
    bulk::push(addr, BULK_WARMUP_BYTES, BULK_LIMIT).await?;
    let probe = UsageProbe::start(pids)?;
    let result = bulk::push(addr, args.bulk_mib.saturating_mul(MIB), BULK_LIMIT).await?;
    let usage = probe.finish()?;
    Ok(BulkRun { result, usage })
}
