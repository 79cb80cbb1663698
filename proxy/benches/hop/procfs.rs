//! What the proxies cost, read from `/proc`: resident memory (`VmRSS` of `/proc/<pid>/status`)
//! and CPU time (`utime + stime` of `/proc/<pid>/stat`, all threads of the process).
//!
//! A [`UsageProbe`] brackets one measured run: it reads the CPU counters at the start and the end
//! and samples resident memory every 50 ms in between on its own thread, so the loaded figure is
//! the peak seen during the run rather than whatever is left when it ends. The bench process
//! itself (load generator and backend server) is read the same way, through `/proc/self`, so a
//! reader can see when the generator, not the path under test, ran out of CPU.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

const RSS_SAMPLE_PERIOD: Duration = Duration::from_millis(50);

/// CPU time and memory of a set of processes over one run.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Wall time between the start and the end of the probe.
    pub wall: Duration,
    /// CPU seconds (user + system) used by the watched processes together.
    pub cpu_seconds: f64,
    /// Peak resident memory seen per watched process, KiB, in the order given.
    pub peak_rss_kib: Vec<u64>,
    /// CPU seconds used by this process (load generator and backends).
    pub self_cpu_seconds: f64,
    /// CPU seconds the whole machine was busy (all processes, all cores).
    pub machine_busy_seconds: f64,
}

/// Measures [`Usage`] between [`UsageProbe::start`] and [`UsageProbe::finish`].
#[derive(Debug)]
pub struct UsageProbe {
    pids: Vec<u32>,
    started: Instant,
    cpu_ticks: u64,
    self_ticks: u64,
    machine_ticks: u64,
    stop: Arc<AtomicBool>,
    sampler: JoinHandle<Vec<u64>>,
}

// === impl Usage ===

impl Usage {
    /// Cores the watched processes kept busy on average (CPU seconds per wall second).
    pub fn cores(&self) -> f64 {
        self.cpu_seconds / self.wall.as_secs_f64().max(f64::EPSILON)
    }

    /// Cores this process kept busy on average.
    pub fn self_cores(&self) -> f64 {
        self.self_cpu_seconds / self.wall.as_secs_f64().max(f64::EPSILON)
    }

    /// Cores kept busy by everything else on the machine: other work competing for the CPUs
    /// during the run, which makes its figures less trustworthy the higher it is.
    pub fn other_cores(&self) -> f64 {
        let other = self.machine_busy_seconds - self.cpu_seconds - self.self_cpu_seconds;
        other.max(0.0) / self.wall.as_secs_f64().max(f64::EPSILON)
    }
}

// === impl UsageProbe ===

impl UsageProbe {
    pub fn start(pids: &[u32]) -> io::Result<Self> {
        let cpu_ticks = sum_cpu_ticks(pids)?;
        let self_ticks = cpu_ticks_of("self")?;
        let machine_ticks = machine_busy_ticks()?;
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = {
            let pids = pids.to_vec();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("bench-rss".into())
                .spawn(move || sample_peak_rss(&pids, &stop))?
        };
        Ok(Self {
            pids: pids.to_vec(),
            started: Instant::now(),
            cpu_ticks,
            self_ticks,
            machine_ticks,
            stop,
            sampler,
        })
    }

    pub fn finish(self) -> io::Result<Usage> {
        let cpu_ticks = sum_cpu_ticks(&self.pids)?;
        let self_ticks = cpu_ticks_of("self")?;
        let machine_ticks = machine_busy_ticks()?;
        let wall = self.started.elapsed();
        self.stop.store(true, Ordering::Relaxed);
        let peak_rss_kib = self
            .sampler
            .join()
            .map_err(|_| io::Error::other("the memory sampling thread panicked"))?;
        let hz = clock_ticks_per_second() as f64;
        Ok(Usage {
            wall,
            cpu_seconds: cpu_ticks.saturating_sub(self.cpu_ticks) as f64 / hz,
            peak_rss_kib,
            self_cpu_seconds: self_ticks.saturating_sub(self.self_ticks) as f64 / hz,
            machine_busy_seconds: machine_ticks.saturating_sub(self.machine_ticks) as f64 / hz,
        })
    }
}

fn sample_peak_rss(pids: &[u32], stop: &AtomicBool) -> Vec<u64> {
    let mut peak = vec![0; pids.len()];
    loop {
        for (pid, peak) in pids.iter().zip(peak.iter_mut()) {
            // A process that has gone away keeps the peak it had; the run reports its errors.
            if let Ok(kib) = rss_kib(*pid) {
                *peak = (*peak).max(kib);
            }
        }
        if stop.load(Ordering::Relaxed) {
            return peak;
        }
        std::thread::sleep(RSS_SAMPLE_PERIOD);
    }
}

/// Resident memory of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_rss(&status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no VmRSS line"),
        )
    })
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn sum_cpu_ticks(pids: &[u32]) -> io::Result<u64> {
    pids.iter()
        .map(|pid| cpu_ticks_of(&pid.to_string()))
        .sum::<io::Result<u64>>()
}

/// `utime + stime` of `/proc/<which>/stat`, in clock ticks.
fn cpu_ticks_of(which: &str) -> io::Result<u64> {
    let path = format!("/proc/{which}/stat");
    let stat = std::fs::read_to_string(&path)?;
    parse_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: no utime/stime fields"),
        )
    })
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces; fields after the last
    // ')' start at field 3 (state), so utime (14) and stime (15) are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Busy time of all CPUs together, from the `cpu` line of `/proc/stat`, in clock ticks: user,
/// nice, system, irq, softirq and steal (guest time is already part of user).
fn machine_busy_ticks() -> io::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    parse_machine_busy(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "/proc/stat: no cpu line"))
}

fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal ...
    let field = |i: usize| ticks.get(i).copied().unwrap_or(0);
    Some(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

/// The unit of `/proc/<pid>/stat` times (`getconf CLK_TCK`); 100 on every Linux the bench targets.
pub fn clock_ticks_per_second() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|hz| *hz > 0)
            .unwrap_or(100)
    })
}
