//! `mesh trust`: make a cluster's root and issuer, issue leaves, inspect certificates, and build
//! trust bundle sets for linking clusters that do not share a root.
//!
//! File layout, which the charts and `mesh multicluster link` also expect:
//! - a root directory: `root.crt`, `root.key`
//! - an issuer directory: `issuer.crt`, `issuer.key`, and `root.crt` (the trust anchor)
//! - a leaf directory: `leaf.crt` (leaf then issuer), `leaf.key`, and `root.crt`

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use mesh_trust::ca::{self, CertificateAuthority, Validity};
use mesh_trust::pem;
use mesh_trust::x509::{self, CertificateInfo};
use mesh_trust::{SpiffeId, TrustBundleSet, TrustDomain};
use rustls_pki_types::CertificateDer;

use crate::duration;
use crate::files::{self, Output};

const ROOT_CRT: &str = "root.crt";
const ROOT_KEY: &str = "root.key";
const ISSUER_CRT: &str = "issuer.crt";
const ISSUER_KEY: &str = "issuer.key";
const LEAF_CRT: &str = "leaf.crt";
const LEAF_KEY: &str = "leaf.key";

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Create a cluster's root CA for a trust domain.
    #[command(
        after_help = "Example:\n  mesh trust create-root --trust-domain west --out ./west/root"
    )]
    CreateRoot {
        /// The trust domain, usually the cluster name (e.g. west).
        #[arg(long, value_parser = parse_trust_domain)]
        trust_domain: TrustDomain,
        #[command(flatten)]
        out: OutArgs,
        /// How long the root is valid.
        #[arg(long, default_value = "3650d", value_parser = duration::parse)]
        lifetime: Duration,
    },
    /// Create an issuer (intermediate CA) signed by a root.
    #[command(
        after_help = "Example:\n  mesh trust create-issuer --root ./west/root --out ./west/issuer"
    )]
    CreateIssuer {
        /// Directory holding root.crt and root.key.
        #[arg(long)]
        root: PathBuf,
        #[command(flatten)]
        out: OutArgs,
        /// How long the issuer is valid (never past the root).
        #[arg(long, default_value = "365d", value_parser = duration::parse)]
        lifetime: Duration,
    },
    /// Issue a workload leaf certificate for a SPIFFE ID, from a fresh key and CSR.
    #[command(
        after_help = "Example:\n  mesh trust issue --issuer ./west/issuer --identity spiffe://west/ns/default/sa/web --out ./web"
    )]
    Issue {
        /// Directory holding issuer.crt and issuer.key.
        #[arg(long)]
        issuer: PathBuf,
        /// The SPIFFE ID to certify, in the issuer's trust domain.
        #[arg(long, value_parser = parse_spiffe_id)]
        identity: SpiffeId,
        #[command(flatten)]
        out: OutArgs,
        /// How long the leaf is valid (never past the issuer).
        #[arg(long, default_value = "24h", value_parser = duration::parse)]
        lifetime: Duration,
    },
    /// Show what certificates say: identity, validity, issuer, fingerprint, key type.
    #[command(after_help = "Example:\n  mesh trust inspect ./web/leaf.crt -o json")]
    Inspect {
        /// A PEM file with one or more certificates, or one DER certificate.
        file: PathBuf,
        #[arg(short, long, value_enum, default_value_t = InspectFormat::Table)]
        output: InspectFormat,
    },
    /// Merge roots of several trust domains into one bundle set, as PEM or SPIFFE bundle JSON.
    #[command(
        after_help = "Inputs are PEM files of roots that name their domain (as create-root makes \
them), directories of <domain>.pem files, or JSON maps written by this command. Use \
--domain DOMAIN=FILE for roots that do not name their domain, or for one domain's SPIFFE bundle JSON.\n\n\
Examples:\n  mesh trust bundle west/root/root.crt east/root/root.crt --format spiffe\n  \
mesh trust bundle west/root/root.crt --domain east=east-bundle.json --format pem --out ./bundle"
    )]
    Bundle(BundleArgs),
}

#[derive(Debug, Args)]
pub struct OutArgs {
    /// Directory to write into (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite files that already exist.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Root PEM files, <domain>.pem directories, or bundle-set JSON files.
    inputs: Vec<PathBuf>,
    /// A domain's roots from a file (PEM or SPIFFE bundle JSON), as DOMAIN=FILE.
    #[arg(long = "domain", value_name = "DOMAIN=FILE", value_parser = parse_domain_file)]
    domains: Vec<(TrustDomain, PathBuf)>,
    #[arg(short, long, value_enum, default_value_t = BundleFormat::Pem)]
    format: BundleFormat,
    /// Write one file per domain (<domain>.pem or <domain>.json) here instead of to stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Overwrite files that already exist.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InspectFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BundleFormat {
    /// PEM roots per domain.
    Pem,
    /// SPIFFE bundle JSON (a JWK set with x5c), as SPIRE reads and writes it.
    Spiffe,
}

pub fn run(cmd: TrustCommand) -> anyhow::Result<()> {
    match cmd {
        TrustCommand::CreateRoot {
            trust_domain,
            out,
            lifetime,
        } => create_root(&trust_domain, &out, lifetime),
        TrustCommand::CreateIssuer {
            root,
            out,
            lifetime,
        } => create_issuer(&root, &out, lifetime),
        TrustCommand::Issue {
            issuer,
            identity,
            out,
            lifetime,
        } => issue(&issuer, &identity, &out, lifetime),
        TrustCommand::Inspect { file, output } => inspect(&file, output),
        TrustCommand::Bundle(args) => bundle(&args),
    }
}

fn create_root(
    trust_domain: &TrustDomain,
    out: &OutArgs,
    lifetime: Duration,
) -> anyhow::Result<()> {
    let root = CertificateAuthority::create_root(trust_domain, lifetime)?;
    files::write_all(
        &out.out,
        &[
            Output::public(out.out.join(ROOT_CRT), root.certificate_pem()),
            Output::secret(out.out.join(ROOT_KEY), root.private_key_pem()),
        ],
        out.force,
    )?;
    report("root", &out.out.join(ROOT_CRT), root.certificate())
}

fn create_issuer(root_dir: &Path, out: &OutArgs, lifetime: Duration) -> anyhow::Result<()> {
    let root = load_ca(root_dir, ROOT_CRT, ROOT_KEY)?;
    if !root.is_root() {
        bail!(
            "{} is not a self-signed root; pass the directory made by `mesh trust create-root`",
            root_dir.join(ROOT_CRT).display()
        );
    }
    let issuer = root.create_issuer(lifetime)?;
    files::write_all(
        &out.out,
        &[
            Output::public(out.out.join(ISSUER_CRT), issuer.certificate_pem()),
            Output::secret(out.out.join(ISSUER_KEY), issuer.private_key_pem()),
            Output::public(out.out.join(ROOT_CRT), root.certificate_pem()),
        ],
        out.force,
    )?;
    report("issuer", &out.out.join(ISSUER_CRT), issuer.certificate())
}

fn issue(
    issuer_dir: &Path,
    identity: &SpiffeId,
    out: &OutArgs,
    lifetime: Duration,
) -> anyhow::Result<()> {
    let issuer = load_ca(issuer_dir, ISSUER_CRT, ISSUER_KEY)?;
    if identity.trust_domain_str() != issuer.trust_domain().as_str() {
        bail!(
            "identity {identity} is outside the issuer's trust domain {}; use an issuer of {}",
            issuer.trust_domain(),
            identity.trust_domain()
        );
    }
    // The same path a workload takes: a fresh key, a CSR, and a leaf from the CSR's public key.
    let (key, csr) = ca::generate_key_and_csr(identity)?;
    let leaf = issuer.sign_csr(identity, &csr, Validity::starting_now(lifetime))?;
    let mut outputs = vec![
        Output::public(
            out.out.join(LEAF_CRT),
            pem::encode_certificates(leaf.chain().iter()),
        ),
        Output::secret(out.out.join(LEAF_KEY), pem::encode_private_key(&key)),
    ];
    let root_path = issuer_dir.join(ROOT_CRT);
    if root_path.exists() {
        let root_pem = String::from_utf8(files::read(&root_path)?)
            .with_context(|| format!("{} is not text", root_path.display()))?;
        outputs.push(Output::public(out.out.join(ROOT_CRT), root_pem));
    }
    files::write_all(&out.out, &outputs, out.force)?;
    report("leaf", &out.out.join(LEAF_CRT), &leaf.leaf)
}

fn inspect(file: &Path, format: InspectFormat) -> anyhow::Result<()> {
    let bytes = files::read(file)?;
    let certs = read_certificates(&bytes)
        .with_context(|| format!("reading certificates from {}", file.display()))?;
    let infos = certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            x509::parse(c)
                .map_err(|e| anyhow::anyhow!("certificate #{i} in {}: {e}", file.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    match format {
        InspectFormat::Json => println!("{}", serde_json::to_string_pretty(&infos)?),
        InspectFormat::Table => {
            for (i, info) in infos.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                print!("{}", render_table(info));
            }
        }
    }
    Ok(())
}

fn bundle(args: &BundleArgs) -> anyhow::Result<()> {
    if args.inputs.is_empty() && args.domains.is_empty() {
        bail!("no inputs; name root PEM files, <domain>.pem directories, or --domain DOMAIN=FILE");
    }
    let mut set = TrustBundleSet::new();
    for input in &args.inputs {
        let part =
            read_bundle_input(input).with_context(|| format!("reading {}", input.display()))?;
        set.merge(&part);
    }
    for (domain, path) in &args.domains {
        let bytes = files::read(path)?;
        let result = if looks_like_json(&bytes) {
            set.insert_spiffe_json(domain, &bytes)
        } else {
            set.insert_pem(domain, &bytes)
        };
        result.with_context(|| format!("reading roots of {domain} from {}", path.display()))?;
    }
    match (&args.out, args.format) {
        (Some(dir), BundleFormat::Pem) => {
            let outputs = set
                .domains()
                .map(|d| {
                    Output::public(
                        dir.join(format!("{d}.pem")),
                        set.to_pem(d).unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>();
            files::write_all(dir, &outputs, args.force)?;
            print_written(&outputs);
        }
        (Some(dir), BundleFormat::Spiffe) => {
            let outputs = set
                .domains()
                .map(|d| {
                    Ok(Output::public(
                        dir.join(format!("{d}.json")),
                        set.to_spiffe_json(d)? + "\n",
                    ))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            files::write_all(dir, &outputs, args.force)?;
            print_written(&outputs);
        }
        (None, BundleFormat::Pem) => {
            for domain in set.domains() {
                // Text outside PEM blocks is ignored by PEM readers, so the domain can be named.
                println!("# trust domain: {domain}");
                print!("{}", set.to_pem(domain).unwrap_or_default());
            }
        }
        (None, BundleFormat::Spiffe) => println!("{}", set.to_spiffe_json_map()?),
    }
    Ok(())
}

fn read_bundle_input(path: &Path) -> anyhow::Result<TrustBundleSet> {
    if path.is_dir() {
        return Ok(TrustBundleSet::load_pem_dir(path)?);
    }
    let bytes = files::read(path)?;
    if looks_like_json(&bytes) {
        return TrustBundleSet::from_spiffe_json_map(&bytes).context(
            "a JSON input must be a bundle-set map; pass one domain's SPIFFE bundle as --domain DOMAIN=FILE",
        );
    }
    let mut set = TrustBundleSet::new();
    set.insert_self_describing_pem(&bytes)?;
    Ok(set)
}

fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

fn read_certificates(bytes: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    if bytes.starts_with(b"-----") || bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Ok(pem::parse_certificates(bytes)?);
    }
    x509::parse(bytes).map_err(|e| anyhow::anyhow!("neither PEM nor a DER certificate: {e}"))?;
    Ok(vec![CertificateDer::from(bytes.to_vec())])
}

fn load_ca(dir: &Path, crt: &str, key: &str) -> anyhow::Result<CertificateAuthority> {
    let crt_path = dir.join(crt);
    let key_path = dir.join(key);
    let cert = files::read(&crt_path)?;
    let key = files::read(&key_path)?;
    CertificateAuthority::from_pem(&cert, &key).with_context(|| {
        format!(
            "loading the CA from {} and {}",
            crt_path.display(),
            key_path.display()
        )
    })
}

fn report(what: &str, path: &Path, cert: &CertificateDer<'_>) -> anyhow::Result<()> {
    let info =
        x509::parse(cert).map_err(|e| anyhow::anyhow!("reading back the new {what}: {e}"))?;
    let identity = info.uris.first().cloned().unwrap_or_default();
    println!(
        "wrote {what} {} for {identity}, valid until {} (sha256 {})",
        path.display(),
        x509::rfc3339(info.not_after),
        info.fingerprint_sha256
    );
    Ok(())
}

fn print_written(outputs: &[Output]) {
    for o in outputs {
        println!("wrote {}", o.path.display());
    }
}

fn render_table(info: &CertificateInfo) -> String {
    let expired = info.not_after <= std::time::SystemTime::now();
    let ca = match (info.is_ca, info.path_len) {
        (false, _) => "no".to_owned(),
        (true, None) => "yes".to_owned(),
        (true, Some(n)) => format!("yes (path length {n})"),
    };
    let mut not_after = x509::rfc3339(info.not_after);
    if expired {
        not_after.push_str(if std::io::stdout().is_terminal() {
            " \x1b[31m(expired)\x1b[0m"
        } else {
            " (expired)"
        });
    }
    let rows: [(&str, String); 9] = [
        (
            "IDENTITY",
            if info.uris.is_empty() {
                "-".into()
            } else {
                info.uris.join(", ")
            },
        ),
        // SPIFFE leaves identify by URI SAN; their subject is empty by design.
        (
            "SUBJECT",
            if info.subject.is_empty() {
                "(empty)".into()
            } else {
                info.subject.clone()
            },
        ),
        ("ISSUER", info.issuer.clone()),
        ("NOT BEFORE", x509::rfc3339(info.not_before)),
        ("NOT AFTER", not_after),
        ("CA", ca),
        ("KEY", info.key_type.clone()),
        ("SERIAL", info.serial.clone()),
        ("SHA-256", info.fingerprint_sha256.clone()),
    ];
    rows.iter().map(|(k, v)| format!("{k:<11} {v}\n")).collect()
}

fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s)
        .map_err(|e| format!("{e} (a trust domain looks like west or prod.example.com)"))
}

fn parse_spiffe_id(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(s)
        .map_err(|e| format!("{e} (an identity looks like spiffe://west/ns/default/sa/web)"))
}

fn parse_domain_file(s: &str) -> Result<(TrustDomain, PathBuf), String> {
    let (domain, file) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not DOMAIN=FILE"))?;
    Ok((parse_trust_domain(domain)?, PathBuf::from(file)))
}
