//! The `mesh-proxy` command line: `run` (the sidecar) and `init` (the iptables rules).
//!
//! Every `run` flag can also come from an environment variable named `MESH_PROXY_<FLAG>` (e.g.
//! `MESH_PROXY_DISCOVERY_ADDR`), which is how a pod spec usually configures a sidecar. A bad value
//! is refused here, before anything starts, with a message that names the flag.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use mesh_trust::SpiffeId;

use super::config::{ControllerAddr, DiscoverySource, IdentitySource, OutboundMap, ProxyConfig};
use super::logging::LogFormat;
use crate::init::{self, Backend, Cidr, Family, InitConfig, InitError};

/// The sidecar proxy of the mesh.
#[derive(Debug, Parser)]
#[command(name = "mesh-proxy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar: inbound, outbound and admin listeners, until SIGTERM or POST /shutdown.
    #[command(
        after_help = "Example:\n  mesh-proxy run --identity-dir /var/run/mesh/identity \
        --trust-bundle /var/run/mesh/bundle --discovery-addr https://mesh-controller.mesh-system.svc:8086"
    )]
    Run(Box<RunArgs>),
    /// Install the iptables rules that redirect the pod's traffic through the proxy, then exit.
    #[command(after_help = "Example:\n  mesh-proxy init --proxy-uid 2102 --dry-run")]
    Init(InitArgs),
}

/// `mesh-proxy run`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("identity-source").required(true).args(["identity_dir", "identity_addr"])))]
#[command(group(ArgGroup::new("discovery-source").required(true).args(["discovery_addr", "discovery_file"])))]
pub struct RunArgs {
    /// Directory with leaf.crt (leaf then issuer) and leaf.key, as `mesh trust issue` writes
    /// them; re-read when they change.
    #[arg(long, env = "MESH_PROXY_IDENTITY_DIR", value_name = "DIR")]
    pub identity_dir: Option<PathBuf>,
    /// The controller's identity service, https://host:port: the proxy sends it a CSR and renews
    /// its leaf at 70 % of its lifetime.
    #[arg(long, env = "MESH_PROXY_IDENTITY_ADDR", value_name = "URL",
        requires_all = ["identity_token_file", "identity"], value_parser = parse_identity_addr)]
    pub identity_addr: Option<ControllerAddr>,
    /// The service-account token the identity service checks; re-read at each renewal.
    #[arg(
        long,
        env = "MESH_PROXY_IDENTITY_TOKEN_FILE",
        value_name = "PATH",
        requires = "identity_addr"
    )]
    pub identity_token_file: Option<PathBuf>,
    /// This workload's SPIFFE ID: what to ask the identity service for, or what the leaf in
    /// --identity-dir must be for.
    #[arg(long, env = "MESH_PROXY_IDENTITY", value_name = "SPIFFE_ID", value_parser = parse_spiffe_id)]
    pub identity: Option<SpiffeId>,
    /// The SPIFFE ID the controller's services must present
    /// [default: spiffe://<own trust domain>/ns/mesh-system/sa/mesh-controller].
    #[arg(long, env = "MESH_PROXY_CONTROLLER_IDENTITY", value_name = "SPIFFE_ID", value_parser = parse_spiffe_id)]
    pub controller_identity: Option<SpiffeId>,
    /// Trust roots: a directory of <domain>.pem (or <domain>.json SPIFFE bundles), a PEM file
    /// of roots that name their domain, or a bundle-set JSON map, as `mesh trust bundle` writes
    /// them; reloaded on change. Required unless --discovery-addr streams the bundles.
    #[arg(long, env = "MESH_PROXY_TRUST_BUNDLE", value_name = "PATH")]
    pub trust_bundle: Option<PathBuf>,
    /// The controller's discovery service (gRPC): https://host:port (mesh TLS) or http://host:port.
    #[arg(long, env = "MESH_PROXY_DISCOVERY_ADDR", value_name = "URL", value_parser = parse_discovery_addr)]
    pub discovery_addr: Option<ControllerAddr>,
    /// Destinations from a JSON file instead of the controller, for tests and demos.
    #[arg(long, env = "MESH_PROXY_DISCOVERY_FILE", value_name = "PATH")]
    pub discovery_file: Option<PathBuf>,
    /// Meshed (mTLS) and redirected inbound connections.
    #[arg(
        long,
        env = "MESH_PROXY_INBOUND_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:4143"
    )]
    pub inbound_addr: SocketAddr,
    /// Outbound connections: the iptables redirect target, or used directly.
    #[arg(
        long,
        env = "MESH_PROXY_OUTBOUND_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:4140"
    )]
    pub outbound_addr: SocketAddr,
    /// The admin server: /metrics, /ready, /live, and POST /shutdown from loopback.
    #[arg(
        long,
        env = "MESH_PROXY_ADMIN_ADDR",
        value_name = "ADDR",
        default_value = "0.0.0.0:4191"
    )]
    pub admin_addr: SocketAddr,
    /// The tap server.
    #[arg(
        long,
        env = "MESH_PROXY_TAP_ADDR",
        value_name = "ADDR",
        default_value = "127.0.0.1:4190"
    )]
    pub tap_addr: SocketAddr,
    /// An explicit outbound listener bound to one service, LISTEN_ADDR=AUTHORITY
    /// (127.0.0.1:9000=web.default.svc.cluster.local:80). Repeatable; comma-separated in the
    /// environment variable.
    #[arg(long = "outbound-map", env = "MESH_PROXY_OUTBOUND_MAP", value_name = "LISTEN=AUTHORITY",
        value_parser = parse_outbound_map, value_delimiter = ',')]
    pub outbound_maps: Vec<OutboundMap>,
    /// Where inbound connections are forwarded: the application at this address. In a pod, give
    /// the pod's own IP (the default when POD_IP is set, as the injected sidecar does), so that
    /// ports the application keeps on loopback stay unreachable from the mesh; 127.0.0.1
    /// otherwise.
    #[arg(long, env = "MESH_PROXY_APP_IP", value_name = "IP")]
    pub app_ip: Option<IpAddr>,
    /// The port other proxies' inbound listeners listen on (4143 in a cluster; set it when
    /// several proxies share one host).
    #[arg(long, env = "MESH_PROXY_PEER_INBOUND_PORT", value_name = "PORT",
        default_value_t = mesh_api::ports::PROXY_INBOUND, value_parser = clap::value_parser!(u16).range(1..))]
    pub peer_inbound_port: u16,
    /// Ports whose traffic is never protocol-detected: a comma list of ports and ranges.
    #[arg(long, env = "MESH_PROXY_OPAQUE_PORTS", value_name = "PORTS",
        default_value = "25,587,3306,4444,5432,6379,9300,11211", value_parser = parse_port_list)]
    pub opaque_ports: PortList,
    /// How long a new inbound connection has to show what it speaks.
    #[arg(long, env = "MESH_PROXY_DETECT_TIMEOUT", value_name = "DURATION", default_value = "10s",
        value_parser = parse_timeout)]
    pub detect_timeout: Duration,
    /// How long connecting to an endpoint or to the application may take.
    #[arg(long, env = "MESH_PROXY_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "1s",
        value_parser = parse_timeout)]
    pub connect_timeout: Duration,
    /// A connection on which nothing moves for this long is closed.
    #[arg(long, env = "MESH_PROXY_IDLE_TIMEOUT", value_name = "DURATION", default_value = "1h",
        value_parser = parse_timeout)]
    pub idle_timeout: Duration,
    /// Connections served at once per listener; more are refused.
    #[arg(long, env = "MESH_PROXY_MAX_CONNECTIONS", value_name = "N", default_value = "10000",
        value_parser = parse_max_connections)]
    pub max_connections: usize,
    /// How long a drain may take before the remaining connections are cut.
    #[arg(long, env = "MESH_PROXY_SHUTDOWN_GRACE", value_name = "DURATION", default_value = "30s",
        value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How often --identity-dir and --trust-bundle are checked for changes.
    #[arg(long, env = "MESH_PROXY_RELOAD_INTERVAL", value_name = "DURATION", default_value = "5s",
        value_parser = parse_timeout)]
    pub reload_interval: Duration,
    /// Log lines as text or as one JSON object each. The filter comes from MESH_PROXY_LOG or
    /// RUST_LOG (default: info).
    #[arg(long, env = "MESH_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// Threads that serve traffic. A sidecar shares its pod's CPU with the application, so one
    /// thread is the default; give more to a proxy in front of a busy service.
    #[arg(long, env = "MESH_PROXY_THREADS", value_name = "N", default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
}

/// `mesh-proxy init`: the fields of [`InitConfig`].
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The uid the proxy runs as; its own connections are never redirected.
    #[arg(long, value_name = "UID")]
    pub proxy_uid: u32,
    /// Where inbound connections are redirected.
    #[arg(long, value_name = "PORT", default_value_t = init::DEFAULT_INBOUND_PORT)]
    pub inbound_port: u16,
    /// Where outbound connections are redirected.
    #[arg(long, value_name = "PORT", default_value_t = init::DEFAULT_OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Destination ports that reach the pod directly, not through the proxy (comma list).
    #[arg(long, value_name = "PORTS", default_value = "4190,4191", value_parser = parse_port_list)]
    pub skip_inbound_ports: PortList,
    /// Destination ports that leave the pod directly (comma list).
    #[arg(long, value_name = "PORTS", value_parser = parse_port_list)]
    pub skip_outbound_ports: Option<PortList>,
    /// Destination networks that leave the pod directly (comma list, e.g. 10.0.0.0/8,fd00::/8).
    #[arg(long, value_name = "CIDRS", value_delimiter = ',')]
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// Also redirect traffic the pod sends to its own addresses over loopback.
    #[arg(long)]
    pub redirect_loopback: bool,
    /// Also program ip6tables.
    #[arg(long)]
    pub ipv6: bool,
    /// Print the iptables-restore input instead of applying it.
    #[arg(long)]
    pub dry_run: bool,
    /// Which iptables to run.
    #[arg(long, value_enum, default_value_t = IptablesBackend::Auto)]
    pub backend: IptablesBackend,
}

/// `--backend` of `init`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum IptablesBackend {
    /// Whatever `iptables-restore` is on this system.
    Auto,
    /// iptables-legacy (x_tables).
    Legacy,
    /// iptables-nft (nf_tables).
    Nft,
}

/// A set of ports, from `25,587,4000-4010`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortList(pub BTreeSet<u16>);

/// Combinations of flags that clap cannot express (the first three it does check; they are here so
/// that a [`RunArgs`] built in code is held to the same rules), reported like clap's own usage
/// errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    #[error("exactly one of --identity-dir and --identity-addr is required")]
    OneIdentitySource,
    #[error("--identity-addr needs --identity and --identity-token-file")]
    IdentityServiceIncomplete,
    #[error("exactly one of --discovery-addr and --discovery-file is required")]
    OneDiscoverySource,
    #[error(
        "--trust-bundle is required with --discovery-file: without it no peer can be verified \
         (only --discovery-addr streams the trust bundles)"
    )]
    TrustBundleRequired,
    #[error(
        "--trust-bundle is required with an https:// --discovery-addr: the controller's own \
         identity must be checked against it before its bundles can be received"
    )]
    TrustBundleForController,
    #[error("POD_IP={0:?} is not an IP address; set --app-ip instead")]
    PodIp(String),
}

// === impl RunArgs ===

impl RunArgs {
    /// The proxy's configuration, after the checks that span several flags.
    pub fn into_config(self) -> Result<ProxyConfig, UsageError> {
        let identity = match (self.identity_dir, self.identity_addr) {
            (Some(dir), None) => IdentitySource::Dir {
                dir,
                expected: self.identity,
            },
            (None, Some(addr)) => match (self.identity_token_file, self.identity) {
                (Some(token_file), Some(identity)) => IdentitySource::Service {
                    addr,
                    token_file,
                    identity,
                },
                _ => return Err(UsageError::IdentityServiceIncomplete),
            },
            _ => return Err(UsageError::OneIdentitySource),
        };
        let discovery = match (self.discovery_addr, self.discovery_file) {
            (Some(addr), None) => DiscoverySource::Controller { addr },
            (None, Some(path)) => DiscoverySource::File { path },
            _ => return Err(UsageError::OneDiscoverySource),
        };
        match (&discovery, &self.trust_bundle) {
            (DiscoverySource::File { .. }, None) => return Err(UsageError::TrustBundleRequired),
            (DiscoverySource::Controller { addr }, None) if addr.tls => {
                return Err(UsageError::TrustBundleForController);
            }
            _ => {}
        }
        let mut config = ProxyConfig::new(identity, discovery);
        config.trust_bundle = self.trust_bundle;
        config.controller_identity = self.controller_identity;
        config.inbound_addr = self.inbound_addr;
        config.outbound_addr = self.outbound_addr;
        config.admin_addr = self.admin_addr;
        config.tap_addr = self.tap_addr;
        config.outbound_maps = self.outbound_maps;
        config.app_ip = match self.app_ip {
            Some(ip) => ip,
            None => match std::env::var("POD_IP") {
                Ok(pod_ip) => pod_ip.parse().map_err(|_| UsageError::PodIp(pod_ip))?,
                Err(_) => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            },
        };
        config.peer_inbound_port = self.peer_inbound_port;
        config.opaque_ports = self.opaque_ports.0;
        config.detect_timeout = self.detect_timeout;
        config.connect_timeout = self.connect_timeout;
        config.idle_timeout = self.idle_timeout;
        config.max_connections = self.max_connections;
        config.shutdown_grace = self.shutdown_grace;
        config.reload_interval = self.reload_interval;
        Ok(config)
    }
}

// === impl InitArgs ===

impl InitArgs {
    pub fn config(&self) -> InitConfig {
        InitConfig {
            proxy_uid: Some(self.proxy_uid),
            inbound_port: self.inbound_port,
            outbound_port: self.outbound_port,
            skip_inbound_ports: self.skip_inbound_ports.0.iter().copied().collect(),
            skip_outbound_ports: self
                .skip_outbound_ports
                .iter()
                .flat_map(|p| p.0.iter().copied())
                .collect(),
            skip_outbound_cidrs: self.skip_outbound_cidrs.clone(),
            redirect_loopback: self.redirect_loopback,
            ipv6: self.ipv6,
        }
    }

    /// Prints the rules (`--dry-run`) to `out`, or installs them.
    pub fn execute(&self, out: &mut impl Write) -> Result<(), InitError> {
        let config = self.config();
        if !self.dry_run {
            let backend = match self.backend {
                IptablesBackend::Auto => Backend::Auto,
                IptablesBackend::Legacy => Backend::Legacy,
                IptablesBackend::Nft => Backend::Nft,
            };
            return init::apply(&config, backend);
        }
        let mut families = vec![Family::Ipv4];
        if config.ipv6 {
            families.push(Family::Ipv6);
        }
        for family in families {
            let program = match family {
                Family::Ipv4 => "iptables-restore",
                Family::Ipv6 => "ip6tables-restore",
            };
            let rules = init::render(&config, family)?;
            let written = writeln!(out, "# {program} --noflush input\n{rules}");
            written.map_err(|source| InitError::Spawn {
                program: "stdout",
                source,
            })?;
        }
        Ok(())
    }
}

// === value parsers ===

fn parse_spiffe_id(input: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(input).map_err(|e| e.to_string())
}

fn parse_identity_addr(input: &str) -> Result<ControllerAddr, String> {
    let addr = ControllerAddr::parse(input, mesh_api::ports::CONTROLLER_IDENTITY)?;
    if !addr.tls {
        return Err(
            "the identity service is served over TLS only (the token must never travel in the \
             clear); use https://"
                .into(),
        );
    }
    Ok(addr)
}

fn parse_discovery_addr(input: &str) -> Result<ControllerAddr, String> {
    ControllerAddr::parse(input, mesh_api::ports::CONTROLLER_DISCOVERY)
}

fn parse_outbound_map(input: &str) -> Result<OutboundMap, String> {
    let (listen, authority) = crate::outbound::parse_outbound_map(input)?;
    Ok(OutboundMap { listen, authority })
}

fn parse_max_connections(input: &str) -> Result<usize, String> {
    match input.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{input:?} is not a whole number")),
    }
}

/// `25,587,4000-4010`; empty means none.
pub fn parse_port_list(input: &str) -> Result<PortList, String> {
    let mut ports = BTreeSet::new();
    for item in input.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let port = |s: &str| match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1-65535)")),
            Ok(port) => Ok(port),
        };
        match item.split_once('-') {
            Some((low, high)) => {
                let (low, high) = (port(low)?, port(high)?);
                if low > high {
                    return Err(format!("{item:?} is an empty range"));
                }
                ports.extend(low..=high);
            }
            None => {
                ports.insert(port(item)?);
            }
        }
    }
    Ok(PortList(ports))
}

/// The longest duration a flag takes: a year, far beyond any timeout, and far from overflowing
/// a deadline computed from it.
const MAX_DURATION: Duration = Duration::from_secs(366 * 86_400);

/// A whole number and a unit: `250ms`, `10s`, `5m`, `1h`, `2d` ([`mesh_api::duration`]), at
/// most a year. Zero is allowed.
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    mesh_api::duration::parse(input, MAX_DURATION)
}

/// A [`parse_duration`] that must be longer than zero: a zero timeout would fail everything.
pub fn parse_timeout(input: &str) -> Result<Duration, String> {
    let duration = parse_duration(input)?;
    if duration.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
        for bad in [
            "",
            "10",
            "10x",
            "s",
            "1.5s",
            "-1s",
            "10 s",
            "367d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        assert!(parse_timeout("0ms").is_err());
        assert!(parse_timeout("1ms").is_ok());
    }

    #[test]
    fn port_lists() {
        assert_eq!(
            parse_port_list("25, 587,4000-4002").unwrap().0,
            BTreeSet::from([25, 587, 4000, 4001, 4002])
        );
        assert!(parse_port_list("").unwrap().0.is_empty());
        for bad in ["0", "65536", "x", "10-5", "1-"] {
            assert!(parse_port_list(bad).is_err(), "{bad:?}");
        }
    }

    fn run_args(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let cli = Cli::try_parse_from(["mesh-proxy", "run"].iter().chain(args))?;
        match cli.command {
            Command::Run(args) => Ok(*args),
            Command::Init(_) => panic!("parsed as init"),
        }
    }

    #[test]
    fn flags_become_a_config() {
        let args = run_args(&[
            "--identity-dir",
            "/id",
            "--trust-bundle",
            "/bundle",
            "--discovery-file",
            "/d.json",
            "--outbound-map",
            "127.0.0.1:9000=web.default.svc.cluster.local:80",
            "--outbound-map",
            "127.0.0.1:9001=db.default.svc.cluster.local:5432",
            "--opaque-ports",
            "3306",
            "--detect-timeout",
            "250ms",
            "--max-connections",
            "5",
        ])
        .unwrap();
        let config = args.into_config().unwrap();
        assert!(matches!(
            config.identity,
            IdentitySource::Dir { expected: None, .. }
        ));
        assert!(matches!(config.discovery, DiscoverySource::File { .. }));
        assert_eq!(config.outbound_maps.len(), 2);
        assert_eq!(
            config.outbound_maps[1].authority,
            "db.default.svc.cluster.local:5432"
        );
        assert_eq!(config.opaque_ports, BTreeSet::from([3306]));
        assert_eq!(config.detect_timeout, Duration::from_millis(250));
        assert_eq!(config.max_connections, 5);
        assert_eq!(config.inbound_addr, "0.0.0.0:4143".parse().unwrap());
        assert_eq!(config.admin_addr, "0.0.0.0:4191".parse().unwrap());
        assert_eq!(config.shutdown_grace, Duration::from_secs(30));
    }

    #[test]
    fn usage_errors_name_the_flag() {
        let err = |args: &[&str]| {
            run_args(args)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let missing = err(&["--trust-bundle", "/b", "--discovery-file", "/d"]);
        assert!(missing.contains("--identity-dir"), "{missing}");
        let both = err(&[
            "--identity-dir",
            "/id",
            "--discovery-file",
            "/d",
            "--discovery-addr",
            "http://c:1",
        ]);
        assert!(
            both.contains("--discovery-addr") && both.contains("--discovery-file"),
            "{both}"
        );
        let token = err(&[
            "--identity-addr",
            "https://c:1",
            "--discovery-addr",
            "http://c:2",
        ]);
        assert!(token.contains("--identity-token-file"), "{token}");
        let plain = err(&[
            "--identity-addr",
            "http://c:1",
            "--identity",
            "spiffe://west/ns/default/sa/web",
            "--identity-token-file",
            "/t",
            "--discovery-addr",
            "http://c:2",
        ]);
        assert!(
            plain.contains("--identity-addr") && plain.contains("TLS only"),
            "{plain}"
        );
        let map = err(&[
            "--identity-dir",
            "/i",
            "--discovery-file",
            "/d",
            "--outbound-map",
            "9000",
        ]);
        assert!(map.contains("--outbound-map"), "{map}");

        let args = run_args(&["--identity-dir", "/id", "--discovery-file", "/d"]).unwrap();
        assert!(matches!(
            args.into_config(),
            Err(UsageError::TrustBundleRequired)
        ));
        let args = run_args(&["--identity-dir", "/id", "--discovery-addr", "https://c:1"]).unwrap();
        assert!(matches!(
            args.into_config(),
            Err(UsageError::TrustBundleForController)
        ));
        // Plaintext discovery streams the bundles before anything needs them.
        let args = run_args(&["--identity-dir", "/id", "--discovery-addr", "http://c:1"]).unwrap();
        assert!(args.into_config().is_ok());
    }

    #[test]
    fn init_flags_become_an_init_config() {
        let cli = Cli::try_parse_from([
            "mesh-proxy",
            "init",
            "--proxy-uid",
            "2102",
            "--skip-outbound-ports",
            "5432,25",
            "--skip-outbound-cidrs",
            "10.0.0.0/8,192.168.0.0/16",
            "--ipv6",
        ])
        .unwrap();
        let Command::Init(args) = cli.command else {
            panic!("parsed as run");
        };
        let config = args.config();
        assert_eq!(config.proxy_uid, Some(2102));
        assert_eq!(config.skip_inbound_ports, vec![4190, 4191]);
        assert_eq!(config.skip_outbound_ports, vec![25, 5432]);
        assert_eq!(config.skip_outbound_cidrs.len(), 2);
        assert!(config.ipv6 && !config.redirect_loopback);
        let mut out = Vec::new();
        InitArgs {
            dry_run: true,
            ..args
        }
        .execute(&mut out)
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("# iptables-restore --noflush input"), "{out}");
        assert!(out.contains("# ip6tables-restore --noflush input"), "{out}");
        assert!(out.contains("--uid-owner 2102"), "{out}");
    }
}
