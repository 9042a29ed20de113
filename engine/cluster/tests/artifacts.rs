//! The artifact store of a real `sluice coordinator` process, attacked and
//! loaded the way the security review did: two concurrent uploads of one
//! binary (one of them wrong) must not poison the store; downloads of a
//! large binary keep the coordinator's memory bounded; a stored binary
//! corrupted on disk is refused and moved aside, and a correct upload
//! replaces it; the size limits answer 413 naming the limit; and `sluice
//! rescale` never runs a binary planted in a cache under the job's hash.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sluice_cluster::local::{LocalCluster, LocalClusterConfig};

fn sluice_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sluice"))
}

/// A coordinator without workers (jobs wait for slots, which these tests
/// never need), with `args`.
fn coordinator(dir: &Path, args: &[&str]) -> LocalCluster {
    LocalCluster::start(LocalClusterConfig {
        sluice: sluice_bin(),
        dir: dir.to_path_buf(),
        host: "127.0.0.1".into(),
        coordinator_args: args.iter().map(|a| a.to_string()).collect(),
        workers: Vec::new(),
        slots: 1,
        security: None,
        // Raw HTTP requests: these tests are about the artifact store.
        plaintext: true,
        coordinators: 1,
    })
    .expect("coordinator starts")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn artifacts_dir(c: &LocalCluster) -> PathBuf {
    c.dir().join("coordinator").join("artifacts")
}

/// An HTTP/1.1 answer: status, body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    /// The body as text, cut short for messages (a binary body is not
    /// worth printing); search [`Answer::full_text`], whose length depends
    /// on paths.
    fn text(&self) -> String {
        self.full_text().chars().take(300).collect()
    }

    fn full_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads an answer (the connection says `Connection: close`, so the body
/// ends with it), hashing the body instead of keeping it if `hash_only`.
fn read_answer(stream: TcpStream, hash_only: bool) -> (Answer, Option<String>) {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    if hash_only {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf).expect("body");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let answer = Answer {
            status,
            body: Vec::new(),
        };
        (answer, Some(hex(&hasher.finalize())))
    } else {
        let mut body = Vec::new();
        r.read_to_end(&mut body).expect("body");
        (Answer { status, body }, None)
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    s
}

/// Starts `PUT /api/v1/artifacts/{sha}` announcing `len` bytes.
fn start_put(port: u16, sha: &str, len: usize) -> TcpStream {
    let mut s = connect(port);
    write!(
        s,
        "PUT /api/v1/artifacts/{sha} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n"
    )
    .expect("request head");
    s
}

fn put(port: u16, sha: &str, body: &[u8]) -> Answer {
    let mut s = start_put(port, sha, body.len());
    s.write_all(body).expect("body");
    read_answer(s, false).0
}

fn request(port: u16, method: &str, path: &str) -> Answer {
    let mut s = connect(port);
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    read_answer(s, false).0
}

/// Waits until `ok` holds, polling every 20 ms, for at most a minute.
fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(60), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Files in the artifact store being written (uploads in progress).
fn parts(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::read_dir(dir)
        .expect("artifacts dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap_or_default()))
        .collect()
}

/// Some bytes that are not all alike.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

/// The poisoning found by the review: upload B of the same name starts
/// while upload A is under way. With one temporary file per name and
/// process, B truncated A's file and kept writing its wrong bytes into it
/// after A had been checked and renamed into place, so the store served
/// bytes that do not hash to their name, and a correct upload was
/// answered 200 without fixing it.
#[test]
fn concurrent_uploads_of_one_binary_cannot_poison_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(dir.path(), &[]);
    let store = artifacts_dir(&c);
    let n = 4 << 20;
    let good = pattern(n, 1);
    let sha = sha256(&good);
    let bad = vec![0xFFu8; n];

    let mut a = start_put(c.port(), &sha, n);
    a.write_all(&good[..n / 2]).expect("first half of A");
    wait_until("A's first half to be written", || {
        parts(&store).iter().any(|(_, b)| b.len() >= n / 2)
    });
    let mut b = start_put(c.port(), &sha, n);
    b.write_all(&bad[..n / 4]).expect("first quarter of B");
    wait_until("B's first quarter to be written", || {
        parts(&store)
            .iter()
            .any(|(_, b)| b.len() >= n / 4 && b[..n / 4].iter().all(|&x| x == 0xFF))
    });
    a.write_all(&good[n / 2..]).expect("rest of A");
    let a = read_answer(a, false).0;
    b.write_all(&bad[n / 4..]).expect("rest of B");
    let b = read_answer(b, false).0;
    assert_eq!(a.status, 201, "A: {}", a.text());
    assert_eq!(b.status, 400, "B: {}", b.text());
    assert!(b.full_text().contains("hashes to"), "{}", b.full_text());

    let served = request(c.port(), "GET", &format!("/api/v1/artifacts/{sha}"));
    assert_eq!(served.status, 200, "{}", served.text());
    assert!(
        served.body == good,
        "the store serves bytes that hash to {}, not {sha}",
        sha256(&served.body)
    );
    assert!(parts(&store).is_empty(), "no upload left behind");
}

/// A stored binary changed on disk is never served: it is refused with
/// an error that says so, moved aside, and a correct upload replaces it
/// (201, not a 200 that leaves it broken); submissions naming it are
/// refused meanwhile.
#[test]
fn a_corrupted_stored_binary_is_refused_and_replaced_by_an_upload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(dir.path(), &[]);
    let content = pattern(1 << 20, 7);
    let sha = sha256(&content);
    let path = format!("/api/v1/artifacts/{sha}");
    assert_eq!(put(c.port(), &sha, &content).status, 201);
    let first = request(c.port(), "GET", &path);
    assert_eq!((first.status, first.body == content), (200, true));

    // Same length, a few bytes changed in place: only the hash tells.
    let stored = artifacts_dir(&c).join(&sha);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .expect("open stored");
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(4096)).expect("seek");
    f.write_all(b"evil").expect("corrupt");
    drop(f);

    let refused = request(c.port(), "GET", &path);
    assert_eq!(refused.status, 500, "{}", refused.text());
    for needle in ["corrupt", &sha, "uploaded again"] {
        assert!(
            refused.full_text().contains(needle),
            "{}",
            refused.full_text()
        );
    }
    assert!(!stored.exists(), "moved aside");
    assert!(artifacts_dir(&c).join(format!(".{sha}.corrupt")).exists());
    assert_eq!(request(c.port(), "HEAD", &path).status, 404);

    // The CLI asks HEAD first: it uploads again, and the job is accepted.
    let jobs = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs).expect("mkdir");
    let job = describe_script(&jobs, "job", "");
    let job_sha = sha256(&std::fs::read(&job).expect("read job"));
    let o = cli(&c, &["submit", job.to_str().expect("utf-8")], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let job_store = artifacts_dir(&c).join(&job_sha);
    std::fs::write(&job_store, b"#!/bin/sh\necho planted\n").expect("plant");
    let o = cli(&c, &["submit", job.to_str().expect("utf-8")], &[]);
    assert!(o.status.success(), "resubmitted: {}", stderr(&o));
    assert_eq!(
        sha256(&std::fs::read(&job_store).expect("stored")),
        job_sha,
        "the resubmission replaced the planted file"
    );

    // A plain upload also replaces a corrupt file it finds.
    assert_eq!(put(c.port(), &sha, &content).status, 201);
    let again = request(c.port(), "GET", &path);
    assert_eq!((again.status, again.body == content), (200, true));
    assert_eq!(put(c.port(), &sha, &content).status, 200, "now stored");
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Uploading a 200 MiB binary and six concurrent downloads of it keep
/// the coordinator's resident memory far below the binary's size: both
/// directions stream. (Before, every download read the whole file into
/// memory: six took a coordinator from 1.7 to 3.4 GiB.)
#[test]
fn transfers_of_a_large_binary_keep_the_coordinator_memory_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(dir.path(), &[]);
    let pid = c.coordinator_pid(0).expect("coordinator pid");
    let size: usize = 200 << 20;
    let file = dir.path().join("big");
    let mut hasher = Sha256::new();
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).expect("create"));
        for i in 0..(size >> 20) {
            let chunk = pattern(1 << 20, i as u8);
            hasher.update(&chunk);
            out.write_all(&chunk).expect("write");
        }
        out.flush().expect("flush");
    }
    let sha = hex(&hasher.finalize());

    let baseline = rss(pid);
    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (Arc::clone(&peak), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let mut s = start_put(c.port(), &sha, size);
    std::io::copy(&mut std::fs::File::open(&file).expect("open"), &mut s).expect("upload");
    let answer = read_answer(s, false).0;
    assert_eq!(answer.status, 201, "{}", answer.text());
    let after_upload = peak.load(Ordering::Relaxed);

    let downloads: Vec<_> = (0..6)
        .map(|_| {
            let (port, sha) = (c.port(), sha.clone());
            std::thread::spawn(move || {
                let mut s = connect(port);
                write!(
                    s,
                    "GET /api/v1/artifacts/{sha} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                )
                .expect("request");
                let (answer, hash) = read_answer(s, true);
                (answer.status, hash.expect("hashed"))
            })
        })
        .collect();
    for d in downloads {
        let (status, hash) = d.join().expect("download thread");
        assert_eq!((status, hash.as_str()), (200, sha.as_str()));
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "coordinator RSS: {:.0} MiB before, {:.0} MiB peak during the upload, {:.0} MiB peak \
         overall",
        mib(baseline),
        mib(after_upload),
        mib(peak)
    );
    assert!(baseline > 0, "RSS readable from /proc");
    assert!(
        peak.saturating_sub(baseline) < 64 << 20,
        "the coordinator grew by {:.0} MiB moving a {:.0} MiB binary",
        mib(peak - baseline),
        mib(size as u64)
    );
}

/// The CLI's environment: nothing from a developer's shell.
fn cli(c: &LocalCluster, args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(sluice_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("SLUICE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .args(["--coordinator", &c.url()])
        .env("RUST_LOG", "warn")
        .env("XDG_CACHE_HOME", c.dir().join("cache"))
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .current_dir(c.dir())
        .stdin(Stdio::null())
        .output()
        .expect("sluice runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A job binary as a script: in describe mode it writes a one-vertex plan
/// and appends a line to `$JOB_MARKER` (if set); `extra` follows.
fn describe_script(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(name);
    let body = format!(
        r#"#!/bin/sh
[ -n "$JOB_MARKER" ] && echo "{name} described" >> "$JOB_MARKER"
cat > "$SLUICE_DESCRIBE" <<EOF
{{"protocol":{protocol},"name":"{name}","parallelism":${{SLUICE_PARALLELISM:-1}},"max_parallelism":128,
 "vertices":[{{"id":0,"name":"src","parallelism":${{SLUICE_PARALLELISM:-1}},"source":true,"nodes":[[0,"src"]]}}],
 "graph_nodes":1,"checkpoint":null,"restart":{{"kind":"none"}}}}
EOF
{extra}
"#,
        protocol = sluice_protocol::PROTOCOL_VERSION
    );
    std::fs::write(&path, body).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// `--max-artifact-bytes` and `--max-artifact-store-bytes` are enforced
/// with a 413 that names the limit, and the CLI shows it.
#[test]
fn the_store_limits_answer_413_naming_the_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(
        dir.path(),
        &[
            "--max-artifact-bytes",
            "1M",
            "--max-artifact-store-bytes",
            "2M",
        ],
    );
    let jobs = dir.path().join("jobs");
    std::fs::create_dir_all(&jobs).expect("mkdir");
    let padding = |kib: usize| format!("exit 0\n{}\n", "#".repeat(kib << 10));

    let big = describe_script(&jobs, "big", &padding(8 << 10));
    let o = cli(&c, &["submit", big.to_str().expect("utf-8")], &[]);
    assert!(!o.status.success(), "an 8 MiB binary was accepted");
    for needle in ["413", "--max-artifact-bytes", "1048576"] {
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    }
    // Without a length said up front (chunked), found while streaming.
    let content = pattern(3 << 19, 3);
    let mut s = connect(c.port());
    write!(
        s,
        "PUT /api/v1/artifacts/{} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n",
        sha256(&content),
        content.len()
    )
    .expect("head");
    let _ = s.write_all(&content);
    let _ = s.write_all(b"\r\n0\r\n\r\n");
    let answer = read_answer(s, false).0;
    assert_eq!(answer.status, 413, "{}", answer.text());

    for name in ["one", "two"] {
        let job = describe_script(&jobs, name, &padding(700));
        let o = cli(&c, &["submit", job.to_str().expect("utf-8")], &[]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
    }
    let three = describe_script(&jobs, "three", &padding(700));
    let o = cli(&c, &["submit", three.to_str().expect("utf-8")], &[]);
    assert!(!o.status.success(), "the store outgrew its limit");
    for needle in [
        "413",
        "store is full",
        "--max-artifact-store-bytes",
        "2097152",
    ] {
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
    }
    let left: Vec<_> = std::fs::read_dir(artifacts_dir(&c))
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "refused uploads leave nothing: {left:?}");
}

/// `sluice rescale` fetches the job's binary into this user's cache
/// (never a shared temporary directory) and runs nothing there that does
/// not hash to the job's SHA-256: a binary planted under that name, in
/// the old shared place or in the cache itself, never runs.
#[test]
fn rescale_never_runs_a_planted_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = coordinator(dir.path(), &[]);
    let (tmp, cache) = (dir.path().join("tmp"), dir.path().join("cache"));
    std::fs::create_dir_all(&tmp).expect("mkdir");
    let marker = dir.path().join("described");
    let planted_marker = dir.path().join("planted-ran");
    let env = [
        ("TMPDIR", tmp.as_path()),
        ("XDG_CACHE_HOME", cache.as_path()),
        ("JOB_MARKER", marker.as_path()),
    ];
    let job = describe_script(dir.path(), "job", "");
    let o = cli(&c, &["submit", job.to_str().expect("utf-8")], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let job_id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let sha = sha256(&std::fs::read(&job).expect("read"));

    let planted = format!(
        "#!/bin/sh\necho planted >> {}\n{}",
        planted_marker.display(),
        std::fs::read_to_string(&job).expect("read")
    );
    let user_cache = cache.join("sluice").join("artifacts");
    for place in [tmp.join("sluice-artifacts"), user_cache.clone()] {
        std::fs::create_dir_all(&place).expect("mkdir");
        std::fs::set_permissions(&place, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let p = place.join(&sha);
        std::fs::write(&p, &planted).expect("plant");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    // The job waits for slots; whatever the coordinator answers, the
    // binary was fetched and described first.
    let o = cli(&c, &["rescale", &job_id, "-p", "2"], &env);
    assert!(
        !planted_marker.exists(),
        "a planted binary ran: {}",
        stderr(&o)
    );
    let described = std::fs::read_to_string(&marker).unwrap_or_default();
    assert_eq!(
        described.lines().count(),
        2,
        "the job's binary described at submit and at rescale: {described:?}; {}",
        stderr(&o)
    );
    assert_eq!(
        sha256(&std::fs::read(user_cache.join(&sha)).expect("cached")),
        sha,
        "the planted file was replaced by the job's binary"
    );
    let mode = |d: &Path| std::fs::metadata(d).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&user_cache), 0o700);
    assert_eq!(
        mode(&cache.join("sluice")) & 0o022,
        0,
        "others cannot write"
    );
}
