//! The proxies under test as child processes: started with their output in a log file, watched
//! until they are ready, killed when dropped (so a failed run never leaves one behind).

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// How long a proxy may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(25);
const LOG_TAIL_LINES: usize = 20;

/// Why a path could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Invalid { what: String },
    #[error("{name} exited with {status} before it was ready; last lines of {}:\n{tail}", log.display())]
    Exited {
        name: String,
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("{name} was not ready within {READY_TIMEOUT:?} ({what}); last lines of {}:\n{tail}", log.display())]
    NotReady {
        name: String,
        what: String,
        log: PathBuf,
        tail: String,
    },
}

/// One running proxy process.
#[derive(Debug)]
pub struct ProxyProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

// === impl SetupError ===

impl SetupError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}

// === impl ProxyProcess ===

impl ProxyProcess {
    /// Starts `command` with stdout and stderr in `log`.
    pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self, SetupError> {
        let out = File::create(log).map_err(SetupError::io(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(SetupError::io(format!("open {}", log.display())))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(SetupError::io(format!(
                "start {name} ({})",
                command.get_program().to_string_lossy()
            )))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<(), SetupError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(SetupError::Exited {
                name: self.name.clone(),
                status,
                log: self.log.clone(),
                tail: self.log_tail(),
            }),
            Ok(None) => Ok(()),
            Err(source) => Err(SetupError::Io {
                what: format!("wait for {}", self.name),
                source,
            }),
        }
    }

    /// Waits until `probe` succeeds, failing early if the process exits.
    pub async fn wait_ready<F, Fut>(&mut self, what: &str, mut probe: F) -> Result<(), SetupError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_running()?;
            if probe().await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SetupError::NotReady {
                    name: self.name.clone(),
                    what: what.to_owned(),
                    log: self.log.clone(),
                    tail: self.log_tail(),
                });
            }
            sleep(POLL).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        // Already gone is fine; either way, reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// True once something accepts TCP connections at `addr`.
pub async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        timeout(Duration::from_millis(200), TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// A free port on `ip`, from the kernel. Another process could take it before it is used; the
/// proxies would then fail to bind and the run says so.
pub fn free_port(ip: std::net::IpAddr) -> Result<SocketAddr, SetupError> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map_err(SetupError::io(format!("find a free port on {ip}")))
}

/// A path ready to carry load: where HTTP and opaque TCP enter it, and the processes that make
/// it up (none for the direct path). Dropping it stops the processes.
#[derive(Debug)]
pub struct PathUnderTest {
    pub http: SocketAddr,
    pub tcp: SocketAddr,
    pub processes: Vec<ProxyProcess>,
    /// How the hop between the two proxies is carried, for the report.
    pub hop: String,
}

// === impl PathUnderTest ===

impl PathUnderTest {
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(ProxyProcess::pid).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.processes.iter().map(|p| p.name().to_owned()).collect()
    }

    /// Fails if any process of the path has exited.
    pub fn check_running(&mut self) -> Result<(), SetupError> {
        self.processes
            .iter_mut()
            .try_for_each(ProxyProcess::check_running)
    }
}
