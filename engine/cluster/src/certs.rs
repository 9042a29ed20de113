//! The cluster's certificate files, as `sluice tls` writes them: a CA
//! (`ca.pem`, `ca.key`) and node certificates (`NAME.pem`, `NAME.key`)
//! in one directory. Keys are created private to their owner (0600) and
//! nothing is overwritten; the certificates themselves come from
//! `sluice_engine::tls::issue`.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_engine::error::{Error, Result};
use sluice_engine::tls::issue::{new_ca, Signer};

/// A CA's files in a directory.
#[derive(Debug, Clone)]
pub struct CaFiles {
    /// `DIR/ca.pem`: the certificate every process trusts.
    pub cert: PathBuf,
    /// `DIR/ca.key`: its private key (the coordinator signs attempts'
    /// certificates with it).
    pub key: PathBuf,
}

impl CaFiles {
    /// The files of the CA in `dir` (whether or not they exist).
    pub fn in_dir(dir: &Path) -> CaFiles {
        CaFiles {
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        }
    }
}

/// A node's certificate and key files.
#[derive(Debug, Clone)]
pub struct NodeFiles {
    /// `DIR/NAME.pem`.
    pub cert: PathBuf,
    /// `DIR/NAME.key`.
    pub key: PathBuf,
}

/// Writes `text` to a new file `path` with `mode`; an existing file is an
/// error (a CA or key is never replaced by accident).
fn write_new(path: &Path, text: &str, mode: u32) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Config(format!(
                    "{} exists already; remove it first to make a new one",
                    path.display()
                ))
            } else {
                Error::io(format!("creating {}", path.display()), e)
            }
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))
}

/// Makes a new CA named `name` in `dir` (created if needed).
pub fn init_ca(dir: &Path, name: &str, valid_for: Duration) -> Result<CaFiles> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let files = CaFiles::in_dir(dir);
    for p in [&files.cert, &files.key] {
        if p.exists() {
            return Err(Error::Config(format!(
                "{} exists already; remove it first to make a new CA",
                p.display()
            )));
        }
    }
    let ca = new_ca(name, valid_for)?;
    write_new(&files.key, &ca.key, 0o600)?;
    write_new(&files.cert, &ca.cert, 0o644)?;
    Ok(files)
}

/// Makes the certificate of node `name`, valid for the hosts `dns` and
/// `ips`, signed by the CA in `ca_dir`, as `out_dir/NAME.pem` and
/// `out_dir/NAME.key`.
pub fn node(
    ca_dir: &Path,
    out_dir: &Path,
    name: &str,
    dns: &[String],
    ips: &[IpAddr],
    valid_for: Duration,
) -> Result<NodeFiles> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || name.starts_with('.')
    {
        return Err(Error::Config(format!(
            "node name {name:?}: use letters, digits, '-', '_' and '.' (it names the files)"
        )));
    }
    if dns.is_empty() && ips.is_empty() {
        return Err(Error::Config(
            "a node certificate needs the host names (--dns) or addresses (--ip) others reach it at"
                .into(),
        ));
    }
    let ca = CaFiles::in_dir(ca_dir);
    let signer = Signer::from_pem(&read(&ca.cert)?, &read(&ca.key)?)?;
    let issued = signer.node(name, dns, ips, valid_for)?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| Error::io(format!("creating {}", out_dir.display()), e))?;
    let files = NodeFiles {
        cert: out_dir.join(format!("{name}.pem")),
        key: out_dir.join(format!("{name}.key")),
    };
    if files.cert.exists() {
        return Err(Error::Config(format!(
            "{} exists already; remove it first to make a new one",
            files.cert.display()
        )));
    }
    write_new(&files.key, &issued.key, 0o600)?;
    write_new(&files.cert, &issued.cert, 0o644)?;
    Ok(files)
}
