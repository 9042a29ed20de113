//! Helpers shared by the end-to-end tests: Parquet output read back with
//! the parquet crate's reader, as counted rows of text; plain HTTP/1.1
//! requests to a coordinator or an embedded job's web UI; commands run
//! with a deadline.
#![allow(dead_code)]

pub mod cluster;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every row of every visible Parquet file in `dir`, as text, counted.
pub fn rows(dir: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !name.ends_with(".parquet") {
            continue;
        }
        let f = std::fs::File::open(e.path()).unwrap();
        for b in ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap()
        {
            let b = b.unwrap();
            for line in render(&b) {
                *out.entry(line).or_default() += 1;
            }
        }
    }
    out
}

pub fn render(b: &RecordBatch) -> Vec<String> {
    let opts = FormatOptions::default();
    let fmts: Vec<ArrayFormatter> = b
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
        .collect();
    (0..b.num_rows())
        .map(|r| {
            fmts.iter()
                .map(|f| f.value(r).to_string())
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

/// Asserts that `got` holds every row of `want` exactly as often (counts
/// of missing and extra rows in the message, not thousands of rows) and
/// that no uncommitted file is left in `out`.
pub fn assert_exactly_once(
    want: &BTreeMap<String, usize>,
    got: &BTreeMap<String, usize>,
    out: &Path,
    what: &str,
) {
    let missing = want.iter().filter(|(k, n)| got.get(*k) != Some(n)).count();
    let extra = got.iter().filter(|(k, n)| want.get(*k) != Some(n)).count();
    assert_eq!(
        (missing, extra),
        (0, 0),
        "{what}: output differs from the failure-free run"
    );
    let hidden = hidden_files(out);
    assert!(
        hidden.is_empty(),
        "{what}: uncommitted files left: {hidden:?}"
    );
}

pub fn hidden_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// An S3-compatible server (moto, installed by `scripts/tools.sh`) on a
/// free loopback port with one empty bucket, stopped when dropped.
pub struct S3Server {
    child: std::process::Child,
    port: u16,
    bucket: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        Self::start_with(&[])
    }

    /// A server with extra settings in its environment (e.g. moto's
    /// `S3_UPLOAD_PART_MIN_SIZE`, the smallest part but the last of a
    /// multipart upload it accepts: S3's 5 MiB by default).
    pub fn start_with(env: &[(&str, &str)]) -> S3Server {
        let bin = std::env::var_os("SLUICE_MOTO_SERVER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/moto_server")
            });
        assert!(
            bin.exists(),
            "{} is missing: run scripts/tools.sh (scripts/test.sh does) to install the S3 test server",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let server = S3Server {
            child,
            port,
            bucket: "sluice-test".into(),
        };
        let start = Instant::now();
        loop {
            if let Ok(status) = server.try_request("PUT", "/sluice-test") {
                assert!(
                    status.starts_with("HTTP/1.1 200"),
                    "creating the bucket: {status}"
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the S3 test server did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// One plain HTTP request; returns the whole response.
    fn try_request(&self, method: &str, path: &str) -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// `s3://` URL of `prefix` in the bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (key, ETag) of every object under `prefix` (up to 1000). A
    /// multipart upload's ETag ends in `-PARTS`.
    pub fn objects(&self, prefix: &str) -> Vec<(String, String)> {
        let body = self
            .try_request(
                "GET",
                &format!("/{}?list-type=2&prefix={prefix}", self.bucket),
            )
            .unwrap();
        let field = |c: &str, f: &str| {
            c.split(&format!("<{f}>"))
                .nth(1)
                .and_then(|v| v.split(&format!("</{f}>")).next())
                .unwrap_or_default()
                .replace("&quot;", "")
                .replace('"', "")
        };
        body.split("<Contents>")
            .skip(1)
            .map(|c| (field(c, "Key"), field(c, "ETag")))
            .collect()
    }

    /// Keys of the multipart uploads started and neither completed nor
    /// aborted.
    pub fn uploads_in_progress(&self) -> Vec<String> {
        let body = self
            .try_request("GET", &format!("/{}?uploads", self.bucket))
            .unwrap();
        body.split("<Upload>")
            .skip(1)
            .filter_map(|u| u.split("<Key>").nth(1)?.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// Points a job process at this server.
    pub fn configure(&self, c: &mut Command) {
        c.env("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1");
    }

    /// Keys in the bucket under `prefix` (up to 1000).
    pub fn list(&self, prefix: &str) -> Vec<String> {
        let body = self
            .try_request(
                "GET",
                &format!("/{}?list-type=2&prefix={prefix}", self.bucket),
            )
            .unwrap();
        body.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status, lower-cased header block and body of a plain HTTP/1.1
/// request (`token` as a bearer token; a POST sends an empty JSON object).
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String, String) {
    http_at("127.0.0.1", port, method, path, token)
}

/// [`http`] to `host`.
pub fn http_at(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, port)).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = if method == "POST" { "{}" } else { "" };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header block");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// `records` JSON events (`id`, `user`, `amount`) produced into a new
/// topic `topic` of 4 partitions on `broker`.
pub fn produce_events(
    broker: &sluice_connectors::kafka::testing::Broker,
    topic: &str,
    records: usize,
) {
    broker.create_topic(topic, 4).unwrap();
    let values = (0..records).map(|i| {
        format!(
            r#"{{"id": {i}, "user": "u{}", "amount": {}.5}}"#,
            i % 97,
            i % 1000
        )
    });
    broker.produce(topic, 4, values).unwrap();
}

/// The rows `kafka_to_parquet JOB_ARGS --parallelism P` writes run
/// embedded into `out`: the reference a cluster's run is held to.
pub fn kafka_reference(
    job_args: &[&str],
    parallelism: usize,
    out: &Path,
) -> BTreeMap<String, usize> {
    let status = Command::new(env!("CARGO_BIN_EXE_kafka_to_parquet"))
        .args(job_args)
        .arg("--parallelism")
        .arg(parallelism.to_string())
        .arg("--output")
        .arg(out)
        .output_within(RUN_LIMIT)
        .status;
    assert!(status.success(), "the embedded kafka_to_parquet run failed");
    rows(out)
}

/// A coordinator's own copy of `job`'s status (`?consistency=local`) at
/// `host:port`, and the Raft term it answered in.
pub fn local_status_at(host: &str, port: u16, job: &str) -> (serde_json::Value, u64) {
    let (code, head, body) = http_at(
        host,
        port,
        "GET",
        &format!("/api/v1/jobs/{job}?consistency=local"),
        None,
    );
    assert_eq!(code, 200, "{head}\n{body}");
    let term = header(&head, "x-sluice-raft-term")
        .and_then(|t| t.parse().ok())
        .expect("an answer carries its term");
    (serde_json::from_str(&body).unwrap(), term)
}

/// A header's value in a lower-cased header block (as [`http`] returns).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

/// Every row of the Parquet dataset at `location` (a directory, or an
/// `s3://` URL on `s3`), read by PyArrow with Hive partitioning (partition
/// values become columns), as sorted-key JSON lines, counted; and the
/// number of files PyArrow found. An independent reader: neither our
/// writer's crate nor our naming.
pub fn dataset_rows(location: &str, s3: Option<&S3Server>) -> (BTreeMap<String, usize>, usize) {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/tools.sh (scripts/test.sh does)",
        python.display()
    );
    let mut c = Command::new(python);
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/read_dataset.py"))
        .arg(location);
    if let Some(s3) = s3 {
        s3.configure(&mut c);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "reading {location} with PyArrow: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = BTreeMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        *rows.entry(line.to_string()).or_default() += 1;
    }
    let files = String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("files="))
        .and_then(|n| n.trim().parse().ok())
        .expect("the reader reports its file count");
    (rows, files)
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus text exposition (format 0.0.4), read strictly: every
/// sample belongs to a family declared by `# TYPE`, label values are
/// quoted, values parse as numbers. Written here, independently of the
/// library that renders the exposition.
#[derive(Debug, Default)]
pub struct Exposition {
    /// Family name → its type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    pub fn parse(text: &str) -> Exposition {
        let mut out = Exposition::default();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                out.types.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("labels end with }");
                    let mut labels = BTreeMap::new();
                    let mut rest = body;
                    while !rest.is_empty() {
                        let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
                        let mut value = String::new();
                        let mut chars = after.char_indices();
                        let end = loop {
                            let (i, c) = chars.next().expect("a closing quote");
                            match c {
                                '\\' => {
                                    let (_, e) = chars.next().expect("an escaped character");
                                    value.push(if e == 'n' { '\n' } else { e });
                                }
                                '"' => break i,
                                c => value.push(c),
                            }
                        };
                        labels.insert(key.to_string(), value);
                        rest = after[end + 1..].trim_start_matches(',');
                    }
                    (name.to_string(), labels)
                }
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| out.types.contains_key(*f)))
                .unwrap_or(&name);
            assert!(out.types.contains_key(family), "{name} has no # TYPE");
            out.samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        out
    }

    /// The value of the sample `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Histogram `name` for `job`: checks it is one (buckets cumulative,
    /// ending at `+Inf` with the count) and returns its count and sum.
    pub fn histogram(&self, name: &str, job: &str) -> Option<(f64, f64)> {
        assert_eq!(
            self.types.get(name).map(String::as_str),
            Some("histogram"),
            "{name}"
        );
        let count = self.value(&format!("{name}_count"), &[("job", job)])?;
        let sum = self
            .value(&format!("{name}_sum"), &[("job", job)])
            .expect("a sum");
        let buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket") && s.labels["job"] == job)
            .map(|s| {
                let le = match s.labels["le"].as_str() {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().expect("a bound"),
                };
                (le, s.value)
            })
            .collect();
        assert!(buckets.len() > 3, "{name}: too few buckets {buckets:?}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{name}: buckets not cumulative {buckets:?}"
        );
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, count)), "{name}");
        Some((count, sum))
    }
}

/// How long a job binary run to its end may take in a test: a healthy
/// run takes seconds even in a debug build on a loaded 2-core machine.
pub const RUN_LIMIT: Duration = Duration::from_secs(300);

/// `Command::output` with a deadline: a run that does not end within
/// `limit` is killed and the test fails naming the command and showing
/// what it logged, instead of hanging the suite (a bounded Kafka run that
/// never ended once held a CI run until its time ran out).
pub trait OutputWithin {
    fn output_within(&mut self, limit: Duration) -> Output;
}

impl OutputWithin for Command {
    fn output_within(&mut self, limit: Duration) -> Output {
        let what = format!("{self:?}");
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let drain = |mut pipe: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            })
        };
        let stdout = drain(Box::new(child.stdout.take().expect("piped")));
        let stderr = drain(Box::new(child.stderr.take().expect("piped")));
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for a child") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let err = stderr.join().unwrap_or_default();
                let err = String::from_utf8_lossy(&err);
                let tail: Vec<&str> = err.lines().rev().take(60).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{what} did not end within {limit:?}; killed. The last lines it logged:\n{}",
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        }
    }
}
