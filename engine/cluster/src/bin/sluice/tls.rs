//! `sluice tls`: makes the cluster CA and node certificates.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use sluice_cluster::certs;

const DAY: u64 = 24 * 3600;

#[derive(Debug, Subcommand)]
pub(crate) enum TlsCommand {
    /// Makes a new cluster CA: DIR/ca.pem, the certificate every process of
    /// the cluster trusts (give it to workers and the CLI as --ca-cert, to the
    /// coordinator as --tls-ca), and DIR/ca.key, its private key (mode 600;
    /// only the coordinator needs it, as --tls-ca-key: it signs each job
    /// attempt's certificate with it). Existing files are never overwritten.
    #[command(after_help = "Then make the coordinator's certificate:\n  \
        sluice tls node --ca-dir DIR --name coordinator --dns coord.example --ip 10.0.0.5\n\
        and start it with\n  \
        sluice coordinator --tls-ca DIR/ca.pem --tls-ca-key DIR/ca.key \
        --tls-cert DIR/coordinator.pem --tls-key DIR/coordinator.key ...")]
    Init(InitArgs),
    /// Makes a node's certificate signed by the CA in --ca-dir: DIR/NAME.pem
    /// and DIR/NAME.key (mode 600). It must name every host name (--dns) and
    /// address (--ip) others use to reach the node: the coordinator's API URL
    /// and its control address are checked against it.
    Node(NodeArgs),
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Directory for ca.pem and ca.key (created if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The CA's name (its certificate's common name).
    #[arg(long, default_value = "Sluice cluster CA")]
    name: String,
    /// Days the CA is valid.
    #[arg(long, default_value_t = 3650)]
    days: u64,
}

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Directory holding the CA's ca.pem and ca.key (from `sluice tls init`).
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// The node's name: the certificate's common name and the files' name.
    #[arg(long)]
    name: String,
    /// A DNS name the node is reached at (repeat for several).
    #[arg(long, value_name = "HOST")]
    dns: Vec<String>,
    /// An IP address the node is reached at (repeat for several).
    #[arg(long, value_name = "ADDR")]
    ip: Vec<IpAddr>,
    /// Where NAME.pem and NAME.key go [default: --ca-dir].
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: u64,
}

pub(crate) fn run(cmd: TlsCommand) -> anyhow::Result<()> {
    match cmd {
        TlsCommand::Init(a) => {
            let files = certs::init_ca(&a.dir, &a.name, Duration::from_secs(a.days * DAY))?;
            println!("{}", files.cert.display());
            println!("{}", files.key.display());
        }
        TlsCommand::Node(a) => {
            let out = a.out_dir.clone().unwrap_or_else(|| a.ca_dir.clone());
            let files = certs::node(
                &a.ca_dir,
                &out,
                &a.name,
                &a.dns,
                &a.ip,
                Duration::from_secs(a.days * DAY),
            )?;
            println!("{}", files.cert.display());
            println!("{}", files.key.display());
        }
    }
    Ok(())
}
