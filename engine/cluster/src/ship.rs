//! What `sluice submit` ships: the job binary without its debug info.
//!
//! A release job binary is mostly DWARF (the Rust code's and, larger, the
//! C++ of RocksDB and librdkafka, which their build scripts compile with
//! `-g`): every upload, store and download paid for it. Before uploading,
//! the CLI copies the binary with `objcopy --strip-debug` (binutils, which
//! the linker of every Rust build on Linux comes with), keeping the symbol
//! table, so a backtrace on a worker still names every function. The debug
//! info is kept beside the local binary, `BINARY.debug` (`objcopy
//! --only-keep-debug`, written again only when the binary is newer, at the
//! same time as the stripped copy): `addr2line -e BINARY.debug` or `gdb`
//! with it as symbol file map a worker's addresses to lines (stripping
//! moves no code; both files carry the linker's build id). No
//! `.gnu_debuglink` is added: computing its checksum means reading the
//! whole `.debug` file again, which doubled the time of a submission, and
//! a worker's copy is named by its hash, so a debug link would not find
//! the file there anyway. Stripping is done at
//! submission rather than in the release profile so that it applies to
//! every job binary, whichever workspace and profile built it. `objcopy`'s
//! output is deterministic, so a binary submitted twice has one SHA-256
//! and is uploaded once. Not an ELF file, no `objcopy`, or `--no-strip`:
//! the binary is shipped as it is.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tracing::{debug, warn};

use sluice_engine::error::{Error, Result};

/// The file to upload for a job binary.
#[derive(Debug)]
pub struct Shipped {
    /// The file to upload: the stripped copy, or the binary itself.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// The binary's size in bytes.
    pub original_bytes: u64,
    /// The debug info kept beside the binary, if any was written or found.
    pub debug: Option<PathBuf>,
    /// Holds the stripped copy until the upload is done.
    _scratch: Option<ScratchDir>,
}

/// A directory only this user can enter (0700, a fresh name), removed
/// with what it holds when dropped.
#[derive(Debug)]
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create(parent: &Path) -> std::io::Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        loop {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let dir = parent.join(format!(".sluice-ship-{}-{nanos}-{n}", std::process::id()));
            // Fails if the name exists, whoever made it: never a
            // directory someone else prepared.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(ScratchDir(dir)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // A few unlinks of one small directory.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `objcopy` to run: `$OBJCOPY`, else the one on `PATH`.
fn objcopy() -> std::ffi::OsString {
    std::env::var_os("OBJCOPY")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "objcopy".into())
}

/// Prepares `binary` for upload: stripped of its debug info into a
/// private temporary directory under `scratch` if `strip` and it is an ELF
/// file, else as it is.
pub async fn prepare(binary: &Path, strip: bool, scratch: &Path) -> Result<Shipped> {
    let meta = tokio::fs::metadata(binary)
        .await
        .map_err(|e| Error::io(format!("reading {}", binary.display()), e))?;
    let as_is = |debug| Shipped {
        path: binary.to_path_buf(),
        bytes: meta.len(),
        original_bytes: meta.len(),
        debug,
        _scratch: None,
    };
    if !strip || !is_elf(binary).await? {
        return Ok(as_is(None));
    }
    let dir = ScratchDir::create(scratch)
        .map_err(|e| Error::io(format!("creating a directory in {}", scratch.display()), e))?;
    let name = binary
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "job".into());
    let stripped = dir.path().join(name);
    let args = [
        "--strip-debug".into(),
        binary.as_os_str().to_owned(),
        stripped.as_os_str().to_owned(),
    ];
    // Two processes reading one file: mostly I/O, so side by side.
    let (debug_file, copied) = tokio::join!(keep_debug_info(binary, &meta), run_objcopy(&args));
    match copied {
        Ok(()) => {}
        Err(why) => {
            warn!(binary = %binary.display(), bytes = meta.len(),
                "cannot strip the job binary ({why}); shipping it with its debug info");
            return Ok(as_is(debug_file));
        }
    }
    let bytes = tokio::fs::metadata(&stripped)
        .await
        .map_err(|e| Error::io(format!("reading {}", stripped.display()), e))?
        .len();
    debug!(binary = %binary.display(), original = meta.len(), shipped = bytes, "job binary stripped");
    Ok(Shipped {
        path: stripped,
        bytes,
        original_bytes: meta.len(),
        debug: debug_file,
        _scratch: Some(dir),
    })
}

async fn is_elf(path: &Path) -> Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut magic = [0u8; 4];
    match f.read_exact(&mut magic).await {
        Ok(_) => Ok(&magic == b"\x7fELF"),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// `BINARY.debug` beside `binary`, (re)written unless it is newer than
/// the binary; none (with a warning) if it cannot be written there.
async fn keep_debug_info(binary: &Path, meta: &std::fs::Metadata) -> Option<PathBuf> {
    let name = binary.file_name()?.to_string_lossy().into_owned();
    let debug = binary.with_file_name(format!("{name}.debug"));
    let built = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if let Ok(d) = tokio::fs::metadata(&debug).await {
        if d.len() > 0 && d.modified().is_ok_and(|t| t >= built) {
            return Some(debug);
        }
    }
    // Written aside and renamed: a concurrent submission of the same
    // binary never reads half a file.
    let tmp = binary.with_file_name(format!(".{name}.debug.{}.tmp", std::process::id()));
    let args = [
        "--only-keep-debug".into(),
        binary.as_os_str().to_owned(),
        tmp.as_os_str().to_owned(),
    ];
    let kept = match run_objcopy(&args).await {
        Ok(()) => tokio::fs::rename(&tmp, &debug)
            .await
            .map_err(|e| format!("renaming to {}: {e}", debug.display())),
        Err(why) => Err(why),
    };
    match kept {
        Ok(()) => Some(debug),
        Err(why) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            warn!(binary = %binary.display(),
                "the job binary's debug info is not kept beside it ({why})");
            None
        }
    }
}

/// Runs `objcopy` with `args`; the reason it failed, if it did.
async fn run_objcopy(args: &[std::ffi::OsString]) -> std::result::Result<(), String> {
    let tool = objcopy();
    let out = tokio::process::Command::new(&tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "{} not found: install binutils, or set OBJCOPY",
                tool.to_string_lossy()
            ),
            _ => format!("running {}: {e}", tool.to_string_lossy()),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} exited with {}: {}",
            tool.to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary itself: an ELF file with debug info (line tables).
    fn this_binary(dir: &Path) -> PathBuf {
        let me = std::env::current_exe().expect("current exe");
        let copy = dir.join("job");
        std::fs::copy(&me, &copy).expect("copy");
        copy
    }

    fn sections(path: &Path) -> String {
        let out = std::process::Command::new("readelf")
            .args(["-S", "-W"])
            .arg(path)
            .output()
            .expect("readelf (binutils)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[tokio::test]
    async fn an_elf_binary_ships_without_debug_info_which_stays_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let job = this_binary(dir.path());
        assert!(
            sections(&job).contains(".debug_line"),
            "built with debug info"
        );
        let a = prepare(&job, true, dir.path()).await.expect("prepared");
        assert!(
            a.bytes < a.original_bytes,
            "{} ≥ {}",
            a.bytes,
            a.original_bytes
        );
        let shipped = sections(&a.path);
        for dwarf in [".debug_info", ".debug_line", ".debug_str"] {
            assert!(!shipped.contains(dwarf), "{shipped}");
        }
        assert!(shipped.contains(".symtab"), "symbols kept: {shipped}");
        let debug = a.debug.clone().expect("debug info kept");
        assert_eq!(debug, dir.path().join("job.debug"));
        assert!(sections(&debug).contains(".debug_line"));
        // The copy still runs (it lists its tests).
        let out = std::process::Command::new(&a.path)
            .arg("--list")
            .output()
            .expect("runs");
        assert!(out.status.success());
        // Deterministic: the same binary ships under the same hash.
        let b = prepare(&job, true, dir.path())
            .await
            .expect("prepared again");
        assert_eq!(
            crate::artifact::sha256_of_file(&a.path).expect("hash"),
            crate::artifact::sha256_of_file(&b.path).expect("hash")
        );
        let scratch = a.path.parent().expect("dir").to_path_buf();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&scratch).expect("stat").permissions(),
        );
        assert_eq!(mode & 0o777, 0o700, "a private directory");
        drop(a);
        assert!(!scratch.exists(), "the copy goes with its Shipped");
    }

    #[tokio::test]
    async fn scripts_and_no_strip_ship_as_they_are() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("job.sh");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write");
        let s = prepare(&script, true, dir.path()).await.expect("prepared");
        assert_eq!(
            (s.path.as_path(), s.debug.as_ref()),
            (script.as_path(), None)
        );
        let job = this_binary(dir.path());
        let s = prepare(&job, false, dir.path()).await.expect("prepared");
        assert_eq!(s.path, job);
        assert_eq!(s.bytes, s.original_bytes);
    }
}
