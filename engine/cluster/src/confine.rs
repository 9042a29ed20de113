//! What an executor process is confined to: the environment it gets (a
//! cleared one plus a short list, [`executor_env`]), its per-attempt
//! directory (mode 0700, its working directory, `HOME` and `TMPDIR`,
//! removed when it ends: [`AttemptDir`]), the user it runs as
//! ([`RunAs`]), and the modes of the worker's data directory that keep
//! other users out of it ([`lock_down`]). The attempt's spec, with its
//! secret, never touches a file: the worker writes it to the executor's
//! stdin. The worker decides when executors start and stop; this module
//! knows nothing of the coordinator.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sluice_engine::error::{Error, Result};

/// Variables an executor gets from the worker's environment when set:
/// the search path, logging and backtraces, time zone and locale, and the
/// TLS roots the data plane's clients trust. Everything else (the API
/// token in `SLUICE_TOKEN` above all) stays with the worker.
pub const PASSED_VARS: &[&str] = &[
    "PATH",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "RUST_LIB_BACKTRACE",
    "TZ",
    "LANG",
    "LC_ALL",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

/// Prefix of the variables also passed: checkpoint storage on S3 reads
/// its credentials and endpoint from them.
pub const PASSED_PREFIX: &str = "AWS_";

/// `PATH` when the worker has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The environment of an executor whose directory is `dir`, beside the
/// variables naming its spec and parallelism: the passed variables of
/// `inherited` (the worker's environment), `HOME` and `TMPDIR` set to
/// `dir` (so scratch files and local state are the attempt's alone).
pub fn executor_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    dir: &Path,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = inherited
        .into_iter()
        .filter(|(k, _)| {
            k.to_str().is_some_and(|k| {
                PASSED_VARS.contains(&k) || (k.starts_with(PASSED_PREFIX) && k.len() > 4)
            })
        })
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    env.push(("HOME".into(), dir.into()));
    env.push(("TMPDIR".into(), dir.into()));
    env
}

/// The user executors run as (`--run-as`), resolved when the worker
/// starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name.
    pub name: String,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
}

impl RunAs {
    /// Looks `name` up in the user database. Switching users needs root:
    /// a worker that is not root is refused here rather than at the first
    /// executor.
    pub fn lookup(name: &str) -> Result<RunAs> {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| Error::Config(format!("looking up the user {name:?}: {e}")))?
            .ok_or_else(|| Error::Config(format!("--run-as: there is no user {name:?}")))?;
        if !nix::unistd::geteuid().is_root() {
            return Err(Error::Config(format!(
                "--run-as {name} needs a worker running as root (to switch users)"
            )));
        }
        if user.uid.is_root() {
            return Err(Error::Config(
                "--run-as root would give job code the worker's own rights; name another user"
                    .into(),
            ));
        }
        Ok(RunAs {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

/// Sets the modes of the worker's data directory: the directory itself
/// and `attempts/` may be crossed but not listed by others (0711: an
/// executor running as another user reaches its binary and its own
/// directory by name), `artifacts/` is readable (binaries are run from
/// it), `logs/` is the worker's alone. With a `run_as` user, every
/// directory above the data directory must let it cross too, or no
/// executor could start: that is checked here, with a clear error.
pub fn lock_down(data_dir: &Path, run_as: Option<&RunAs>) -> Result<()> {
    for (dir, mode) in [
        (data_dir.to_path_buf(), 0o711),
        (data_dir.join(ATTEMPTS), 0o711),
        (data_dir.join("artifacts"), 0o755),
        (data_dir.join("logs"), 0o700),
    ] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(format!("setting the mode of {}", dir.display()), e))?;
    }
    if let Some(user) = run_as {
        for dir in data_dir.ancestors().skip(1) {
            let meta = std::fs::metadata(dir)
                .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
            let mode = std::os::unix::fs::MetadataExt::mode(&meta);
            let gid = std::os::unix::fs::MetadataExt::gid(&meta);
            let crossable = mode & 0o001 != 0 || (gid == user.gid && mode & 0o010 != 0);
            if !crossable {
                return Err(Error::Config(format!(
                    "--run-as {}: the user cannot reach the data directory {}, \
                     because {} (mode {:04o}) does not let others cross it \
                     (chmod o+x it, or choose a data directory elsewhere)",
                    user.name,
                    data_dir.display(),
                    dir.display(),
                    mode & 0o7777
                )));
            }
        }
    }
    Ok(())
}

/// The subdirectory of the data directory that holds attempt directories.
pub const ATTEMPTS: &str = "attempts";

/// An executor's own directory, `attempts/<stem>/`: created empty, mode
/// 0700, owned by the user the executor runs as; removed, with whatever
/// the executor left in it, by [`AttemptDir::remove`].
#[derive(Debug)]
pub struct AttemptDir {
    path: PathBuf,
}

impl AttemptDir {
    /// Creates `attempts/<stem>` under `data_dir`, replacing what an
    /// earlier worker process may have left under that name.
    pub async fn create(data_dir: &Path, stem: &str, run_as: Option<&RunAs>) -> Result<AttemptDir> {
        let path = data_dir.join(ATTEMPTS).join(stem);
        let owner = run_as.map(|u| (u.uid, u.gid));
        let p = path.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("clearing {}", p.display()), e)),
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(|e| {
                    Error::io(format!("handing {} to the --run-as user", p.display()), e)
                })?;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::Internal(format!("creating an attempt directory: {e}")))??;
        Ok(AttemptDir { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the directory and everything in it.
    pub async fn remove(self) {
        let path = self.path;
        let shown = path.display().to_string();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&path)).await;
        match removed {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => {
                tracing::warn!(dir = %shown, error = %e, "cannot remove an attempt directory")
            }
            Err(e) => {
                tracing::warn!(dir = %shown, error = %e, "cannot remove an attempt directory")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_variables_pass() {
        let inherited = [
            ("SLUICE_TOKEN", "secret"),
            ("SLUICE_TOKEN_FILE", "/etc/sluice/token"),
            ("RUST_LOG", "info"),
            ("AWS_REGION", "eu"),
            ("AWS_", "x"),
            ("HOME", "/root"),
            ("PATH", "/bin"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = executor_env(inherited, Path::new("/d/a"));
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("RUST_LOG"), Some("info".into()));
        assert_eq!(get("AWS_REGION"), Some("eu".into()));
        assert_eq!(get("PATH"), Some("/bin".into()));
        assert_eq!(get("HOME"), Some("/d/a".into()));
        assert_eq!(get("TMPDIR"), Some("/d/a".into()));
        assert_eq!(get("SLUICE_TOKEN"), None);
        assert_eq!(get("SLUICE_TOKEN_FILE"), None);
        assert_eq!(get("AWS_"), None);
        assert_eq!(env.len(), 5, "{env:?}");
        let env = executor_env([], Path::new("/d"));
        assert!(env.iter().any(|(k, v)| k == "PATH" && v == DEFAULT_PATH));
    }
}
