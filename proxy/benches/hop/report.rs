//! What the run measured, and how it is printed: tables for the terminal, the aims checked
//! against the figures, then the same tables in markdown for BENCHMARKS.md.
//!
//! Every "vs direct" figure compares with the direct path measured in the same run, and every
//! "added" latency is the mesh or HAProxy percentile minus the direct one.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bulk::BulkResult;
use crate::procfs::Usage;
use crate::table::Table;
use mesh_test_support::load::LoadResult;

/// The aims the figures are held against.
const AIM_ADDED_P99_MS: f64 = 0.2;
const AIM_IDLE_RSS_MIB: f64 = 8.0;
const AIM_LOADED_RSS_MIB: f64 = 15.0;

/// What the less obvious columns mean.
const LEGEND: &str = "\
Columns: proxy cores = CPU seconds of the path's proxy processes per second of the run \
(/proc/<pid>/stat utime+stime); req/s per proxy core = req/s / proxy cores; req/s per machine \
core = req/s / all cores of the machine; bench cores = the bench process (load generator and \
backends); other cores = everything else on the machine meanwhile (noise: the lower, the \
cleaner the run).
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Mesh,
    Haproxy,
}

/// One HTTP scenario on one path.
#[derive(Debug)]
pub struct HttpRun {
    pub result: LoadResult,
    /// The path's proxies (and the bench process) during the measurement.
    pub usage: Usage,
}

/// One throughput push on one path.
#[derive(Debug)]
pub struct BulkRun {
    pub result: BulkResult,
    pub usage: Usage,
}

/// Everything measured on one path.
#[derive(Debug)]
pub struct PathReport {
    pub kind: PathKind,
    pub hop: String,
    pub process_names: Vec<String>,
    pub idle_rss_kib: Vec<u64>,
    pub latency: Option<HttpRun>,
    pub saturation: Option<HttpRun>,
    pub bulk: Option<BulkRun>,
    /// Why the path's measurements stopped, if they did.
    pub failure: Option<String>,
}

/// The whole run.
#[derive(Debug)]
pub struct Report {
    rate: f64,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    pub paths: Vec<PathReport>,
    pub notes: Vec<String>,
    pub mesh_binary: Option<String>,
    pub haproxy_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpScenario {
    Latency,
    Saturation,
}

// === impl PathKind ===

impl PathKind {
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Mesh => "mesh pair",
            PathKind::Haproxy => "haproxy pair",
        }
    }
}

// === impl PathReport ===

impl PathReport {
    pub fn new(kind: PathKind, hop: String, process_names: Vec<String>) -> Self {
        Self {
            kind,
            hop,
            process_names,
            idle_rss_kib: Vec::new(),
            latency: None,
            saturation: None,
            bulk: None,
            failure: None,
        }
    }

    fn http(&self, scenario: HttpScenario) -> Option<&HttpRun> {
        match scenario {
            HttpScenario::Latency => self.latency.as_ref(),
            HttpScenario::Saturation => self.saturation.as_ref(),
        }
    }

    fn proxied(&self) -> bool {
        self.kind != PathKind::Direct
    }

    /// `west 4.1 / east 4.0` for per-process KiB figures.
    fn per_process_mib(&self, kib: &[u64]) -> String {
        if !self.proxied() {
            return "—".to_owned();
        }
        self.process_names
            .iter()
            .zip(kib)
            .map(|(name, kib)| format!("{} {:.1}", short_name(name), mib(*kib)))
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

// === impl Report ===

impl Report {
    pub fn new(rate: f64, connections: usize, warmup: Duration, duration: Duration) -> Self {
        Self {
            rate,
            connections,
            warmup,
            duration,
            paths: Vec::new(),
            notes: Vec::new(),
            mesh_binary: None,
            haproxy_version: None,
        }
    }

    fn path(&self, kind: PathKind) -> Option<&PathReport> {
        self.paths.iter().find(|p| p.kind == kind)
    }

    pub fn render(&self) -> String {
        let tables = self.tables();
        let mut out = String::new();
        let _ = writeln!(out, "\n== mesh-proxy hop benchmark ==");
        out.push_str(&self.preamble());
        for (title, table) in &tables {
            let _ = writeln!(out, "\n{title}\n{}", table.text());
        }
        out.push_str(LEGEND);
        out.push_str(&self.pacing());
        out.push_str(&self.aims());
        out.push_str(&self.problems());
        let _ = writeln!(out, "\n---- markdown, for BENCHMARKS.md ----\n");
        let _ = writeln!(
            out,
            "## A meshed hop against direct and HAProxy (mesh-proxy)\n"
        );
        out.push_str(&self.preamble());
        for (title, table) in &tables {
            let _ = writeln!(out, "\n{title}:\n\n{}", table.markdown());
        }
        out.push_str(LEGEND);
        out.push_str(&self.pacing());
        out.push_str(&self.aims());
        out
    }

    fn preamble(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Command: `cargo bench -p mesh-proxy --bench hop{}`. Date: {}. Machine: {}.",
            self.command_args(),
            today(),
            machine()
        );
        let _ = writeln!(
            out,
            "Load: HTTP/1.1 GET, 200 with a {}-byte body, over {} keep-alive connections; \
             latency scenario open loop at {} req/s (latency from the intended send time); \
             saturation closed loop; warm-up {:?} then {:?} measured per scenario. \
             Load generator and backends run in the bench process, one runtime thread each; \
             proxies are separate processes, measured through /proc.",
            mesh_test_support::backends::BODY.len(),
            self.connections,
            self.rate,
            self.warmup,
            self.duration,
        );
        let _ = writeln!(out, "Paths:");
        for path in &self.paths {
            let what = match path.kind {
                PathKind::Direct => None,
                PathKind::Mesh => self.mesh_binary.as_deref(),
                PathKind::Haproxy => self.haproxy_version.as_deref(),
            };
            let how = if path.hop.is_empty() {
                "not started"
            } else {
                &path.hop
            };
            match what {
                Some(what) => writeln!(out, "- {}: {what}: {how}", path.kind.name()),
                None => writeln!(out, "- {}: {how}", path.kind.name()),
            }
            .ok();
        }
        out
    }

    /// The options this run was given, as they would follow `--` on the cargo command line.
    fn command_args(&self) -> String {
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|arg| arg != "--bench")
            .collect();
        if args.is_empty() {
            String::new()
        } else {
            format!(" -- {}", args.join(" "))
        }
    }

    fn tables(&self) -> Vec<(String, Table)> {
        let mut tables = Vec::new();
        let http = self.http_table();
        if !http.is_empty() {
            tables.push(("HTTP latency and rate".to_owned(), http));
        }
        let memory = self.memory_table();
        if !memory.is_empty() {
            tables.push(("Proxy memory, VmRSS MiB per process".to_owned(), memory));
        }
        let bulk = self.bulk_table();
        if !bulk.is_empty() {
            let mib = self
                .paths
                .iter()
                .find_map(|p| p.bulk.as_ref())
                .map_or(0, |b| b.result.bytes >> 20);
            tables.push((
                format!("Opaque TCP throughput, {mib} MiB through one connection"),
                bulk,
            ));
        }
        tables
    }

    fn http_table(&self) -> Table {
        let machine_cores = machine_cores() as f64;
        let mut table = Table::new(&[
            ("scenario", false),
            ("path", false),
            ("req/s", true),
            ("p50 ms", true),
            ("p99 ms", true),
            ("p99.9 ms", true),
            ("added p50 / p99 / p99.9 ms", true),
            ("vs direct", true),
            ("proxy cores", true),
            ("req/s per proxy core", true),
            ("req/s per machine core", true),
            ("proxy CPU s per 1k req", true),
            ("bench cores", true),
            ("other cores", true),
            ("errors", true),
        ]);
        for scenario in [HttpScenario::Latency, HttpScenario::Saturation] {
            let direct = self
                .path(PathKind::Direct)
                .and_then(|p| p.http(scenario))
                .map(|run| &run.result);
            for path in &self.paths {
                let Some(run) = path.http(scenario) else {
                    continue;
                };
                let r = &run.result;
                let rate = r.rate();
                let name = match scenario {
                    HttpScenario::Latency => format!("latency @ {} req/s", self.rate),
                    HttpScenario::Saturation => "saturation".to_owned(),
                };
                let (added, versus) = match (path.proxied(), direct) {
                    (true, Some(d)) => (
                        format!(
                            "{:+.3} / {:+.3} / {:+.3}",
                            r.latency_ms(0.5) - d.latency_ms(0.5),
                            r.latency_ms(0.99) - d.latency_ms(0.99),
                            r.latency_ms(0.999) - d.latency_ms(0.999)
                        ),
                        match scenario {
                            HttpScenario::Latency => {
                                format!("p99 ×{:.2}", r.latency_ms(0.99) / d.latency_ms(0.99))
                            }
                            HttpScenario::Saturation => {
                                format!("req/s ×{:.2}", rate / d.rate().max(f64::EPSILON))
                            }
                        },
                    ),
                    _ => ("—".to_owned(), "—".to_owned()),
                };
                let cores = run.usage.cores();
                let proxy = |value: String| {
                    if path.proxied() {
                        value
                    } else {
                        "—".to_owned()
                    }
                };
                table.push(vec![
                    name,
                    path.kind.name().to_owned(),
                    format!("{rate:.0}"),
                    format!("{:.3}", r.latency_ms(0.5)),
                    format!("{:.3}", r.latency_ms(0.99)),
                    format!("{:.3}", r.latency_ms(0.999)),
                    added,
                    versus,
                    proxy(format!("{cores:.2}")),
                    proxy(format!("{:.0}", rate / cores.max(f64::EPSILON))),
                    format!("{:.0}", rate / machine_cores),
                    proxy(format!(
                        "{:.3}",
                        run.usage.cpu_seconds / (r.completed.max(1) as f64) * 1000.0
                    )),
                    format!("{:.2}", run.usage.self_cores()),
                    format!("{:.2}", run.usage.other_cores()),
                    if r.abandoned > 0 {
                        format!("{} (+{} abandoned)", r.errors, r.abandoned)
                    } else {
                        r.errors.to_string()
                    },
                ]);
            }
        }
        table
    }

    fn memory_table(&self) -> Table {
        let mut table = Table::new(&[
            ("path", false),
            ("idle", false),
            ("latency run, peak", false),
            ("saturation run, peak", false),
        ]);
        for path in self.paths.iter().filter(|p| p.proxied()) {
            if path.idle_rss_kib.is_empty() {
                continue;
            }
            let peak = |run: Option<&HttpRun>| {
                run.map_or("—".to_owned(), |run| {
                    path.per_process_mib(&run.usage.peak_rss_kib)
                })
            };
            table.push(vec![
                path.kind.name().to_owned(),
                path.per_process_mib(&path.idle_rss_kib),
                peak(path.latency.as_ref()),
                peak(path.saturation.as_ref()),
            ]);
        }
        table
    }

    fn bulk_table(&self) -> Table {
        let mut table = Table::new(&[
            ("path", false),
            ("MB/s", true),
            ("vs direct", true),
            ("proxy cores", true),
            ("proxy CPU s per GiB", true),
            ("bench cores", true),
            ("other cores", true),
        ]);
        let direct = self
            .path(PathKind::Direct)
            .and_then(|p| p.bulk.as_ref())
            .map(|b| b.result.mb_per_s());
        for path in &self.paths {
            let Some(run) = &path.bulk else {
                continue;
            };
            let mbs = run.result.mb_per_s();
            let proxy = |value: String| {
                if path.proxied() {
                    value
                } else {
                    "—".to_owned()
                }
            };
            let gib = run.result.bytes as f64 / (1u64 << 30) as f64;
            table.push(vec![
                path.kind.name().to_owned(),
                format!("{mbs:.0}"),
                match (path.proxied(), direct) {
                    (true, Some(d)) => format!("×{:.2}", mbs / d.max(f64::EPSILON)),
                    _ => "—".to_owned(),
                },
                proxy(format!("{:.2}", run.usage.cores())),
                proxy(format!(
                    "{:.2}",
                    run.usage.cpu_seconds / gib.max(f64::EPSILON)
                )),
                format!("{:.2}", run.usage.self_cores()),
                format!("{:.2}", run.usage.other_cores()),
            ]);
        }
        table
    }

    /// The generator's own floor under open-loop latencies.
    fn pacing(&self) -> String {
        let lags: Vec<String> = self
            .paths
            .iter()
            .filter_map(|p| {
                let lag = p.latency.as_ref()?.result.pacing_lag_us.as_ref()?;
                Some(format!(
                    "{} p50 {:.3} ms, p99 {:.3} ms",
                    p.kind.name(),
                    lag.value_at_quantile(0.5) as f64 / 1000.0,
                    lag.value_at_quantile(0.99) as f64 / 1000.0
                ))
            })
            .collect();
        if lags.is_empty() {
            return String::new();
        }
        format!(
            "Open-loop pacing lag (how late the generator handed a request to an idle connection; \
             part of every open-loop latency, the same floor for every path): {}.\n",
            lags.join("; ")
        )
    }

    /// The aims, held against the mesh pair's figures.
    fn aims(&self) -> String {
        let mut out = String::from("\nAims (mesh pair):\n");
        let Some(mesh) = self.path(PathKind::Mesh) else {
            out.push_str("- not checked: the mesh pair was not measured\n");
            return out;
        };
        let verdict = |met: bool| if met { "met" } else { "missed" };

        let direct_latency = self.path(PathKind::Direct).and_then(|p| p.latency.as_ref());
        match (&mesh.latency, direct_latency) {
            (Some(m), Some(d)) => {
                let added = m.result.latency_ms(0.99) - d.result.latency_ms(0.99);
                let _ = writeln!(
                    out,
                    "- added p99 at {} req/s: {added:+.3} ms (aim ≤ {AIM_ADDED_P99_MS} ms at 1,000 req/s): {}",
                    self.rate,
                    verdict(added <= AIM_ADDED_P99_MS)
                );
            }
            _ => out.push_str("- added p99: not measured (latency scenario not run)\n"),
        }

        if !mesh.idle_rss_kib.is_empty() {
            let worst = mib(mesh.idle_rss_kib.iter().copied().max().unwrap_or(0));
            let _ = writeln!(
                out,
                "- RSS idle: {} MiB (aim ≤ {AIM_IDLE_RSS_MIB} MiB each): {}",
                mesh.per_process_mib(&mesh.idle_rss_kib),
                verdict(worst <= AIM_IDLE_RSS_MIB)
            );
        }
        if let Some(run) = &mesh.latency {
            let worst = mib(run.usage.peak_rss_kib.iter().copied().max().unwrap_or(0));
            let _ = writeln!(
                out,
                "- RSS at {} req/s, peak: {} MiB (aim ≤ {AIM_LOADED_RSS_MIB} MiB each at 1,000 req/s): {}",
                self.rate,
                mesh.per_process_mib(&run.usage.peak_rss_kib),
                verdict(worst <= AIM_LOADED_RSS_MIB)
            );
        }

        let per_core = |p: &PathReport| {
            p.saturation
                .as_ref()
                .map(|run| run.result.rate() / run.usage.cores().max(f64::EPSILON))
        };
        match (
            per_core(mesh),
            self.path(PathKind::Haproxy).and_then(per_core),
        ) {
            (Some(m), Some(h)) => {
                let _ = writeln!(
                    out,
                    "- req/s per proxy core at saturation: mesh {m:.0} vs HAProxy {h:.0}, ×{:.2} (aim ≥ HAProxy's): {}",
                    m / h.max(f64::EPSILON),
                    verdict(m >= h)
                );
            }
            (Some(m), None) => {
                let _ = writeln!(
                    out,
                    "- req/s per proxy core at saturation: mesh {m:.0}; not compared, HAProxy not measured"
                );
            }
            _ => {
                out.push_str("- req/s per proxy core: not measured (saturation scenario not run)\n")
            }
        }
        out
    }

    fn problems(&self) -> String {
        let mut out = String::new();
        for path in &self.paths {
            for (scenario, run) in [("latency", &path.latency), ("saturation", &path.saturation)] {
                if let Some(run) = run {
                    if run.result.errors > 0 {
                        let _ = writeln!(
                            out,
                            "- {} {scenario}: {} failed requests; first: {}",
                            path.kind.name(),
                            run.result.errors,
                            run.result.first_error.as_deref().unwrap_or("?")
                        );
                    }
                }
            }
            if let Some(failure) = &path.failure {
                let _ = writeln!(out, "- {}: stopped: {failure}", path.kind.name());
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "- {note}");
        }
        if out.is_empty() {
            out
        } else {
            format!("\nNotes:\n{out}")
        }
    }
}

fn short_name(process: &str) -> &str {
    process.rsplit(' ').next().unwrap_or(process)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `2 cores (AMD EPYC ...), Linux 6.1.0`.
fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    format!("{} cores ({model}), Linux {kernel}", machine_cores())
}

/// Today's date (UTC) as `YYYY-MM-DD`.
fn today() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
