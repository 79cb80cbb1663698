//! Transparent redirection: the iptables `nat` rules that send a pod's TCP traffic through the
//! proxy, in the manner of linkerd2-proxy-init and istio-iptables.
//!
//! - Inbound: `PREROUTING` (TCP) jumps to `MESH_INBOUND`, which lets the skipped ports through
//!   (by default the proxy's own tap 4190 and admin 4191, so kubelet probes and scrapes reach the
//!   admin server directly) and sends everything else to `MESH_INBOUND_REDIRECT`:
//!   `REDIRECT --to-ports 4143`.
//! - Outbound: `OUTPUT` (TCP) jumps to `MESH_OUTPUT`, which lets through the proxy's own traffic
//!   (`-m owner --uid-owner <proxy uid>`; without it every connection the proxy makes would be
//!   redirected back into itself), loopback traffic, skipped CIDRs and skipped ports, and sends
//!   everything else to `MESH_OUTPUT_REDIRECT`: `REDIRECT --to-ports 4140`.
//!
//! The rules are built by pure functions ([`rules`], [`render`]) and applied by [`apply`] through
//! `iptables-restore --noflush`. Applying is idempotent: the `:CHAIN` declarations make
//! `iptables-restore` flush and refill our own chains, and the jumps from the built-in chains
//! (which `--noflush` would otherwise append again on every run) are only added when the current
//! table, read with `iptables-save`, does not already have them. Other rules in the table are
//! never touched.
//!
//! Rules are written exactly as `iptables-save` prints them (e.g. `-p tcp -m tcp --dport`), so
//! that the rendered text can be compared line for line with the live table.

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::{Command, ExitStatus, Stdio};
use std::str::FromStr;

/// Inbound port: redirected inbound connections land here.
pub const DEFAULT_INBOUND_PORT: u16 = 4143;
/// Outbound port: redirected outbound connections land here.
pub const DEFAULT_OUTBOUND_PORT: u16 = 4140;
/// The proxy's tap port, skipped on inbound by default.
pub const TAP_PORT: u16 = 4190;
/// The proxy's admin port (`/ready`, `/live`, `/metrics`), skipped on inbound by default.
pub const ADMIN_PORT: u16 = 4191;

/// Entry chain for inbound traffic (jumped to from `PREROUTING`).
pub const INBOUND_CHAIN: &str = "MESH_INBOUND";
/// Holds the single inbound `REDIRECT`.
pub const INBOUND_REDIRECT_CHAIN: &str = "MESH_INBOUND_REDIRECT";
/// Entry chain for locally generated traffic (jumped to from `OUTPUT`).
pub const OUTPUT_CHAIN: &str = "MESH_OUTPUT";
/// Holds the single outbound `REDIRECT`.
pub const OUTPUT_REDIRECT_CHAIN: &str = "MESH_OUTPUT_REDIRECT";

/// Our chains, in the order they are declared.
const OWN_CHAINS: [&str; 4] = [
    INBOUND_CHAIN,
    INBOUND_REDIRECT_CHAIN,
    OUTPUT_CHAIN,
    OUTPUT_REDIRECT_CHAIN,
];

/// What to redirect, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConfig {
    /// The uid the proxy runs as; its own connections are never redirected. Required: there is
    /// no safe default (every connection the proxy makes would loop back into it).
    pub proxy_uid: Option<u32>,
    /// Where inbound connections are redirected.
    pub inbound_port: u16,
    /// Where outbound connections are redirected.
    pub outbound_port: u16,
    /// Destination ports that reach the pod directly on inbound. Default: tap and admin.
    pub skip_inbound_ports: Vec<u16>,
    /// Destination ports that leave the pod directly on outbound.
    pub skip_outbound_ports: Vec<u16>,
    /// Destination networks that leave the pod directly on outbound (each in the table of its
    /// family).
    pub skip_outbound_cidrs: Vec<Cidr>,
    /// When false, nothing routed over `lo` is redirected: that includes 127.0.0.0/8 and the pod's
    /// own addresses. When true, only the loopback network itself is exempt, so an application
    /// calling its own pod IP goes through the outbound proxy.
    pub redirect_loopback: bool,
    /// Also program `ip6tables`. Off by default: the IPv6 `nat` table needs `ip6table_nat`, which
    /// IPv4-only nodes may not have.
    pub ipv6: bool,
}

impl Default for InitConfig {
    fn default() -> Self {
        Self {
            proxy_uid: None,
            inbound_port: DEFAULT_INBOUND_PORT,
            outbound_port: DEFAULT_OUTBOUND_PORT,
            skip_inbound_ports: vec![TAP_PORT, ADMIN_PORT],
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
            redirect_loopback: false,
            ipv6: false,
        }
    }
}

impl InitConfig {
    /// The defaults, for a proxy running as `proxy_uid`.
    pub fn new(proxy_uid: u32) -> Self {
        Self {
            proxy_uid: Some(proxy_uid),
            ..Self::default()
        }
    }

    /// Checks the configuration; [`rules`], [`render`] and [`apply`] call this first.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.proxy_uid.is_none() {
            return Err(ConfigError::MissingProxyUid);
        }
        if self.inbound_port == 0 {
            return Err(ConfigError::ZeroPort {
                field: "inbound_port",
            });
        }
        if self.outbound_port == 0 {
            return Err(ConfigError::ZeroPort {
                field: "outbound_port",
            });
        }
        if self.inbound_port == self.outbound_port {
            return Err(ConfigError::SamePort(self.inbound_port));
        }
        if self.skip_inbound_ports.contains(&0) {
            return Err(ConfigError::ZeroPort {
                field: "skip_inbound_ports",
            });
        }
        if self.skip_outbound_ports.contains(&0) {
            return Err(ConfigError::ZeroPort {
                field: "skip_outbound_ports",
            });
        }
        if !self.ipv6
            && let Some(cidr) = self
                .skip_outbound_cidrs
                .iter()
                .find(|c| c.family() == Family::Ipv6)
        {
            // Silently dropping it would leave that network redirected on a dual-stack pod the
            // moment IPv6 is switched on; say so now instead.
            return Err(ConfigError::Ipv6CidrWithoutIpv6(*cidr));
        }
        Ok(())
    }
}

/// An invalid [`InitConfig`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `proxy_uid` was not given.
    #[error(
        "proxy_uid is required: the proxy's own connections must be exempt from redirection, \
         or each one would be sent back into the proxy"
    )]
    MissingProxyUid,
    /// A port was 0.
    #[error("{field}: port 0 is not a valid port")]
    ZeroPort {
        /// The offending field.
        field: &'static str,
    },
    /// Inbound and outbound ports are the same.
    #[error("inbound_port and outbound_port are both {0}; they must differ")]
    SamePort(u16),
    /// An IPv6 network in `skip_outbound_cidrs` while `ipv6` is off.
    #[error("skip_outbound_cidrs contains the IPv6 network {0}, but ipv6 is not enabled")]
    Ipv6CidrWithoutIpv6(Cidr),
}

/// The address family of a rule set: `iptables` or `ip6tables`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// `iptables`.
    Ipv4,
    /// `ip6tables`.
    Ipv6,
}

impl Family {
    fn loopback(self) -> Cidr {
        match self {
            Family::Ipv4 => Cidr {
                addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
                prefix_len: 8,
            },
            Family::Ipv6 => Cidr {
                addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
                prefix_len: 128,
            },
        }
    }
}

/// Which iptables implementation [`apply`] runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// `iptables-restore` / `iptables-save`: whatever the system's alternatives point at.
    #[default]
    Auto,
    /// `iptables-legacy-restore` / `iptables-legacy-save` (x_tables).
    Legacy,
    /// `iptables-nft-restore` / `iptables-nft-save` (nf_tables).
    Nft,
}

impl Backend {
    /// The `*-restore` program for `family`.
    pub fn restore_program(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Auto, Family::Ipv4) => "iptables-restore",
            (Backend::Auto, Family::Ipv6) => "ip6tables-restore",
            (Backend::Legacy, Family::Ipv4) => "iptables-legacy-restore",
            (Backend::Legacy, Family::Ipv6) => "ip6tables-legacy-restore",
            (Backend::Nft, Family::Ipv4) => "iptables-nft-restore",
            (Backend::Nft, Family::Ipv6) => "ip6tables-nft-restore",
        }
    }

    /// The `*-save` program for `family`.
    pub fn save_program(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Auto, Family::Ipv4) => "iptables-save",
            (Backend::Auto, Family::Ipv6) => "ip6tables-save",
            (Backend::Legacy, Family::Ipv4) => "iptables-legacy-save",
            (Backend::Legacy, Family::Ipv6) => "ip6tables-legacy-save",
            (Backend::Nft, Family::Ipv4) => "iptables-nft-save",
            (Backend::Nft, Family::Ipv6) => "ip6tables-nft-save",
        }
    }
}

/// An IP network, `addr/prefix_len`, with the host bits cleared (as iptables prints it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The network of `addr` with `prefix_len` bits (at most 32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let addr = match addr {
            IpAddr::V4(a) if prefix_len <= 32 => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) if prefix_len <= 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(prefix_len))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
            _ => return Err(CidrError::PrefixTooLong { addr, prefix_len }),
        };
        Ok(Self { addr, prefix_len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Which table the network belongs in.
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || CidrError::Invalid(s.to_owned());
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr = addr.parse::<IpAddr>().map_err(|_| invalid())?;
                let len = len.parse::<u8>().map_err(|_| invalid())?;
                Self::new(addr, len)
            }
            None => {
                let addr = s.parse::<IpAddr>().map_err(|_| invalid())?;
                let len = if addr.is_ipv4() { 32 } else { 128 };
                Self::new(addr, len)
            }
        }
    }
}

/// A string that is not a [`Cidr`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// Not of the form `address/length`.
    #[error("{0:?} is not an IP network (expected e.g. 10.0.0.0/8 or fd00::/8)")]
    Invalid(String),
    /// The prefix is longer than the address.
    #[error("prefix length {prefix_len} is too long for {addr}")]
    PrefixTooLong {
        /// The address.
        addr: IpAddr,
        /// The prefix length given.
        prefix_len: u8,
    },
}

/// One rule of the `nat` table: `-A <chain> <spec>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The chain it is appended to.
    pub chain: &'static str,
    /// Matches and target, exactly as `iptables-save` prints them.
    pub spec: String,
}

impl Rule {
    fn new(chain: &'static str, spec: impl Into<String>) -> Self {
        Self {
            chain,
            spec: spec.into(),
        }
    }

    /// Whether this rule lives in a built-in chain (a jump into ours), which `--noflush` does not
    /// clear and which must therefore not be appended twice.
    pub fn is_hook(&self) -> bool {
        !OWN_CHAINS.contains(&self.chain)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "-A {} {}", self.chain, self.spec)
    }
}

/// The rules for `family`, in order: our chains' contents, then the jumps into them from
/// `PREROUTING` and `OUTPUT`. Skip lists are sorted and de-duplicated so that equivalent
/// configurations give identical rules.
pub fn rules(cfg: &InitConfig, family: Family) -> Result<Vec<Rule>, ConfigError> {
    cfg.validate()?;
    let proxy_uid = cfg.proxy_uid.ok_or(ConfigError::MissingProxyUid)?;
    let mut out = Vec::new();

    // Inbound. The skips come before the redirect: first match wins.
    out.push(Rule::new(
        INBOUND_REDIRECT_CHAIN,
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.inbound_port),
    ));
    for port in sorted(&cfg.skip_inbound_ports) {
        out.push(Rule::new(
            INBOUND_CHAIN,
            format!("-p tcp -m tcp --dport {port} -j RETURN"),
        ));
    }
    out.push(Rule::new(
        INBOUND_CHAIN,
        format!("-p tcp -j {INBOUND_REDIRECT_CHAIN}"),
    ));

    // Outbound.
    out.push(Rule::new(
        OUTPUT_REDIRECT_CHAIN,
        format!("-p tcp -j REDIRECT --to-ports {}", cfg.outbound_port),
    ));
    // First, so that nothing below can ever catch the proxy's own upstream connections.
    out.push(Rule::new(
        OUTPUT_CHAIN,
        format!("-m owner --uid-owner {proxy_uid} -j RETURN"),
    ));
    if cfg.redirect_loopback {
        // The loopback network itself is never a mesh destination (and the redirect target is on
        // it); the pod's own IPs, also routed over lo, are redirected.
        out.push(Rule::new(
            OUTPUT_CHAIN,
            format!("-d {} -j RETURN", family.loopback()),
        ));
    } else {
        // Everything the kernel routes over lo: 127.0.0.0/8, ::1, and the pod's own addresses.
        out.push(Rule::new(OUTPUT_CHAIN, "-o lo -j RETURN"));
    }
    let mut cidrs: Vec<Cidr> = cfg
        .skip_outbound_cidrs
        .iter()
        .copied()
        .filter(|c| c.family() == family)
        .collect();
    cidrs.sort_by_key(|c| (c.addr, c.prefix_len));
    cidrs.dedup();
    for cidr in cidrs {
        out.push(Rule::new(OUTPUT_CHAIN, format!("-d {cidr} -j RETURN")));
    }
    for port in sorted(&cfg.skip_outbound_ports) {
        out.push(Rule::new(
            OUTPUT_CHAIN,
            format!("-p tcp -m tcp --dport {port} -j RETURN"),
        ));
    }
    out.push(Rule::new(
        OUTPUT_CHAIN,
        format!("-p tcp -j {OUTPUT_REDIRECT_CHAIN}"),
    ));

    // Hooks last: by the time traffic can enter our chains, they are complete (the restore is
    // one transaction anyway, but the text reads top-down).
    out.push(Rule::new(
        "PREROUTING",
        format!("-p tcp -j {INBOUND_CHAIN}"),
    ));
    out.push(Rule::new("OUTPUT", format!("-p tcp -j {OUTPUT_CHAIN}")));
    Ok(out)
}

fn sorted(ports: &[u16]) -> Vec<u16> {
    let mut ports = ports.to_vec();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The `iptables-restore --noflush` input for `family` on a table without our rules: the dry run
/// of [`apply`].
pub fn render(cfg: &InitConfig, family: Family) -> Result<String, ConfigError> {
    render_onto(cfg, family, "")
}

/// The `iptables-restore --noflush` input that brings a `nat` table whose current state is
/// `current` (the output of `iptables-save -t nat`) to our rules: our chains are redeclared (and
/// so flushed and refilled), and a jump from a built-in chain is left out when `current` already
/// has it, so that applying again never duplicates it.
pub fn render_onto(cfg: &InitConfig, family: Family, current: &str) -> Result<String, ConfigError> {
    let rules = rules(cfg, family)?;
    let present = nat_rules(current);
    let mut out = String::from("*nat\n");
    for chain in OWN_CHAINS {
        // With --noflush, declaring an existing user chain flushes it; a new one is created.
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in &rules {
        let line = rule.to_string();
        if rule.is_hook() && present.contains(&line.as_str()) {
            continue;
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    Ok(out)
}

/// The `-A` lines of the `*nat` section of `iptables-save` output.
fn nat_rules(save: &str) -> Vec<&str> {
    let mut in_nat = false;
    let mut out = Vec::new();
    for line in save.lines().map(str::trim) {
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
        } else if line == "COMMIT" {
            in_nat = false;
        } else if in_nat && line.starts_with("-A ") {
            out.push(line);
        }
    }
    out
}

/// Running iptables failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The program could not be started (most often: not installed).
    #[error("could not run {program}: {source} (is the iptables package installed and on PATH?)")]
    Spawn {
        /// The program.
        program: &'static str,
        /// Why it could not be started.
        #[source]
        source: io::Error,
    },
    /// The program ran and failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: &'static str,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr (it names the failing line of `input`).
        stderr: String,
        /// What it was given on stdin, if anything.
        input: Option<String>,
    },
}

/// Installs the rules: for IPv4, and for IPv6 too when `cfg.ipv6`, reads the `nat` table with
/// `*-save`, then feeds [`render_onto`]'s output to `*-restore --noflush -w`. Safe to run again
/// (e.g. by a restarted init container); a changed configuration replaces the previous rules.
///
/// Each family is one `iptables-restore` transaction; if IPv6 fails after IPv4 succeeded, the
/// IPv4 rules stay, and running again completes the job.
pub fn apply(cfg: &InitConfig, backend: Backend) -> Result<(), InitError> {
    cfg.validate()?;
    let families: &[Family] = if cfg.ipv6 {
        &[Family::Ipv4, Family::Ipv6]
    } else {
        &[Family::Ipv4]
    };
    for &family in families {
        let save = backend.save_program(family);
        let current = run(save, &["-t", "nat"], None)?;
        let input = render_onto(cfg, family, &current)?;
        let restore = backend.restore_program(family);
        // -w: wait for the xtables lock rather than fail if something else holds it.
        run(restore, &["--noflush", "-w"], Some(&input))?;
        tracing::info!(
            program = restore,
            proxy_uid = cfg.proxy_uid,
            inbound_port = cfg.inbound_port,
            outbound_port = cfg.outbound_port,
            "installed redirect rules"
        );
    }
    Ok(())
}

/// Runs `program args`, feeding `input` on stdin; its stdout on success.
fn run(program: &'static str, args: &[&str], input: Option<&str>) -> Result<String, InitError> {
    let spawn = |source| InitError::Spawn { program, source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    let mut written = Ok(());
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // The input is a few hundred bytes, well within a pipe buffer, so writing before reading
        // the child's output cannot deadlock. Dropping stdin closes it: restore reads to EOF.
        written = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn)?;
    // A program that dies early breaks the pipe (EPIPE); its exit status and stderr say why,
    // which is more useful than the broken pipe, so they are checked first.
    if !output.status.success() {
        return Err(InitError::Failed {
            program,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            input: input.map(str::to_owned),
        });
    }
    written.map_err(spawn)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DEFAULT_V4: &str = "\
*nat
:MESH_INBOUND - [0:0]
:MESH_INBOUND_REDIRECT - [0:0]
:MESH_OUTPUT - [0:0]
:MESH_OUTPUT_REDIRECT - [0:0]
-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 4143
-A MESH_INBOUND -p tcp -m tcp --dport 4190 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 4191 -j RETURN
-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT
-A MESH_OUTPUT_REDIRECT -p tcp -j REDIRECT --to-ports 4140
-A MESH_OUTPUT -m owner --uid-owner 2102 -j RETURN
-A MESH_OUTPUT -o lo -j RETURN
-A MESH_OUTPUT -p tcp -j MESH_OUTPUT_REDIRECT
-A PREROUTING -p tcp -j MESH_INBOUND
-A OUTPUT -p tcp -j MESH_OUTPUT
COMMIT
";

    #[test]
    fn default_config_renders_exactly() {
        assert_eq!(
            render(&InitConfig::new(2102), Family::Ipv4).unwrap(),
            DEFAULT_V4
        );
    }

    #[test]
    fn rendering_is_deterministic_and_canonical() {
        let mut cfg = InitConfig::new(2102);
        cfg.skip_outbound_ports = vec![5432, 25, 5432];
        let once = render(&cfg, Family::Ipv4).unwrap();
        assert_eq!(once, render(&cfg, Family::Ipv4).unwrap());
        // Order and duplicates in the config do not change the rules.
        cfg.skip_outbound_ports = vec![25, 5432];
        assert_eq!(once, render(&cfg, Family::Ipv4).unwrap());
    }

    #[test]
    fn skips_and_owner_appear_in_order() {
        let mut cfg = InitConfig::new(1337);
        cfg.inbound_port = 15006;
        cfg.outbound_port = 15001;
        cfg.skip_inbound_ports = vec![22, 4191];
        cfg.skip_outbound_ports = vec![3306];
        cfg.skip_outbound_cidrs = vec!["10.96.0.0/12".parse().unwrap()];
        let text = render(&cfg, Family::Ipv4).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let pos = |l: &str| {
            lines
                .iter()
                .position(|x| *x == l)
                .unwrap_or_else(|| panic!("missing {l:?} in\n{text}"))
        };
        let owner = pos("-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN");
        let lo = pos("-A MESH_OUTPUT -o lo -j RETURN");
        let cidr = pos("-A MESH_OUTPUT -d 10.96.0.0/12 -j RETURN");
        let port = pos("-A MESH_OUTPUT -p tcp -m tcp --dport 3306 -j RETURN");
        let redirect = pos("-A MESH_OUTPUT -p tcp -j MESH_OUTPUT_REDIRECT");
        assert!(owner < lo && lo < cidr && cidr < port && port < redirect);
        pos("-A MESH_OUTPUT_REDIRECT -p tcp -j REDIRECT --to-ports 15001");
        pos("-A MESH_INBOUND_REDIRECT -p tcp -j REDIRECT --to-ports 15006");
        let ssh = pos("-A MESH_INBOUND -p tcp -m tcp --dport 22 -j RETURN");
        let admin = pos("-A MESH_INBOUND -p tcp -m tcp --dport 4191 -j RETURN");
        let inbound = pos("-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT");
        assert!(ssh < admin && admin < inbound);
        // The tap port was dropped from the list, so it is redirected like any other.
        assert!(!text.contains("--dport 4190"));
    }

    #[test]
    fn redirect_loopback_exempts_only_the_loopback_network() {
        let mut cfg = InitConfig::new(2102);
        cfg.redirect_loopback = true;
        cfg.ipv6 = true;
        let v4 = render(&cfg, Family::Ipv4).unwrap();
        assert!(v4.contains("-A MESH_OUTPUT -d 127.0.0.0/8 -j RETURN\n"));
        assert!(!v4.contains("-o lo"));
        let v6 = render(&cfg, Family::Ipv6).unwrap();
        assert!(v6.contains("-A MESH_OUTPUT -d ::1/128 -j RETURN\n"));
    }

    #[test]
    fn cidrs_go_to_the_table_of_their_family() {
        let mut cfg = InitConfig::new(2102);
        cfg.ipv6 = true;
        cfg.skip_outbound_cidrs = vec![
            "fd00::/8".parse().unwrap(),
            "192.168.0.0/16".parse().unwrap(),
        ];
        let v4 = render(&cfg, Family::Ipv4).unwrap();
        let v6 = render(&cfg, Family::Ipv6).unwrap();
        assert!(v4.contains("-d 192.168.0.0/16 -j RETURN") && !v4.contains("fd00::"));
        assert!(v6.contains("-d fd00::/8 -j RETURN") && !v6.contains("192.168"));
        // The v6 table is otherwise the same as the v4 one.
        assert!(v6.contains("-A MESH_OUTPUT -o lo -j RETURN"));
        assert!(v6.contains("-A OUTPUT -p tcp -j MESH_OUTPUT"));
    }

    #[test]
    fn existing_hooks_are_not_appended_again() {
        let cfg = InitConfig::new(2102);
        // What iptables-save prints after a first apply (abridged), with a foreign rule too.
        let current = "\
# Generated by iptables-save v1.8.9
*filter
-A OUTPUT -p tcp -j MESH_OUTPUT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:MESH_INBOUND - [0:0]
-A PREROUTING -p tcp -j MESH_INBOUND
-A PREROUTING -p udp -j ACCEPT
-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT
COMMIT
";
        let text = render_onto(&cfg, Family::Ipv4, current).unwrap();
        assert!(!text.contains("-A PREROUTING"), "{text}");
        // The OUTPUT hook in *filter does not count: it is a different table.
        assert!(text.contains("-A OUTPUT -p tcp -j MESH_OUTPUT\n"), "{text}");
        // Our own chains are always redeclared and refilled.
        assert!(text.contains(":MESH_INBOUND - [0:0]\n"));
        assert!(text.contains("-A MESH_INBOUND -p tcp -j MESH_INBOUND_REDIRECT\n"));
        // Once both hooks exist, the input is the same however often it is computed.
        let both = format!("{current}*nat\n-A OUTPUT -p tcp -j MESH_OUTPUT\nCOMMIT\n");
        let again = render_onto(&cfg, Family::Ipv4, &both).unwrap();
        assert!(!again.contains("-A PREROUTING") && !again.contains("-A OUTPUT "));
    }

    #[test]
    fn invalid_configs_are_refused_with_the_reason() {
        let err = |cfg: InitConfig| render(&cfg, Family::Ipv4).unwrap_err();
        assert_eq!(err(InitConfig::default()), ConfigError::MissingProxyUid);
        let mut cfg = InitConfig::new(1);
        cfg.outbound_port = 0;
        assert_eq!(
            err(cfg),
            ConfigError::ZeroPort {
                field: "outbound_port"
            }
        );
        let mut cfg = InitConfig::new(1);
        cfg.inbound_port = 0;
        assert_eq!(
            err(cfg),
            ConfigError::ZeroPort {
                field: "inbound_port"
            }
        );
        let mut cfg = InitConfig::new(1);
        cfg.skip_inbound_ports.push(0);
        assert_eq!(
            err(cfg),
            ConfigError::ZeroPort {
                field: "skip_inbound_ports"
            }
        );
        let mut cfg = InitConfig::new(1);
        cfg.outbound_port = 4143;
        assert_eq!(err(cfg), ConfigError::SamePort(4143));
        let mut cfg = InitConfig::new(1);
        cfg.skip_outbound_cidrs = vec!["fd00::/8".parse().unwrap()];
        assert!(matches!(err(cfg), ConfigError::Ipv6CidrWithoutIpv6(_)));
        assert!(
            ConfigError::MissingProxyUid
                .to_string()
                .contains("proxy_uid is required")
        );
    }

    #[test]
    fn apply_refuses_invalid_config_before_running_anything() {
        let err = apply(&InitConfig::default(), Backend::Auto).unwrap_err();
        assert!(matches!(
            err,
            InitError::Config(ConfigError::MissingProxyUid)
        ));
    }

    #[test]
    fn cidr_parsing_and_normalisation() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            "0.0.0.0/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(
            "fd00:1::5/16".parse::<Cidr>().unwrap().to_string(),
            "fd00::/16"
        );
        assert_eq!("::/0".parse::<Cidr>().unwrap().prefix_len(), 0);
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "nonsense/8".parse::<Cidr>(),
            Err(CidrError::Invalid(_))
        ));
        assert!(matches!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::Invalid(_))
        ));
    }

    #[test]
    fn missing_program_is_a_spawn_error_naming_it() {
        let err = run("mesh-no-such-iptables-restore", &[], Some("x")).unwrap_err();
        assert!(matches!(
            err,
            InitError::Spawn {
                program: "mesh-no-such-iptables-restore",
                ..
            }
        ));
        assert!(err.to_string().contains("iptables package"));
    }

    #[test]
    fn failing_program_reports_its_stderr() {
        // `sh` stands in for iptables-restore: reads stdin, complains, fails.
        let err = run(
            "sh",
            &[
                "-c",
                "cat >/dev/null; echo 'Error occurred at line: 3' >&2; exit 2",
            ],
            Some("*nat\nCOMMIT\n"),
        )
        .unwrap_err();
        match &err {
            InitError::Failed { stderr, input, .. } => {
                assert_eq!(stderr, "Error occurred at line: 3");
                assert_eq!(input.as_deref(), Some("*nat\nCOMMIT\n"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("Error occurred at line: 3"));
    }
}
