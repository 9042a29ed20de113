//! A real Kafka-protocol broker for tests and benchmarks: starts tansu
//! (memory storage) on a free loopback port and stops it when dropped.
//!
//! The binary is `$SLUICE_TANSU` when set (`scripts/test.sh` exports it),
//! else `.tools/tansu` in the workspace (`scripts/kafka-broker.sh install`
//! puts it there). A missing binary is an error saying how to install it:
//! tests that need a broker fail rather than pass without one.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_engine::{Error, Result};

use super::send_waiting;

/// The tansu binary to run.
pub fn tansu_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("SLUICE_TANSU") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/tansu"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Config(format!(
            "the tansu broker is not installed at {} (set SLUICE_TANSU, or run scripts/kafka-broker.sh install)",
            path.display()
        )))
    }
}

/// A running tansu broker.
pub struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    /// Starts a broker on a free 127.0.0.1 port and waits until it accepts
    /// connections.
    pub fn start() -> Result<Self> {
        let bin = tansu_binary()?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::io("finding a free port", e))?
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", bin.display()), e))?;
        let mut broker = Broker { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = broker.child.try_wait() {
                return Err(Error::connector(
                    "kafka",
                    format!("tansu exited at start: {status}"),
                ));
            }
            if Instant::now() > deadline {
                return Err(Error::connector(
                    "kafka",
                    "tansu did not start listening within 20 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        broker.port = port;
        Ok(broker)
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn admin(&self) -> Result<AdminClient<DefaultClientContext>> {
        ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .create()
            .map_err(|e| Error::connector("kafka", format!("admin client: {e}")))
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        let admin = self.admin()?;
        let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let res = block_on(admin.create_topics([&t], &opts))
            .map_err(|e| Error::connector("kafka", format!("creating topic {topic}: {e}")))?;
        for r in res {
            r.map_err(|(t, e)| Error::connector("kafka", format!("creating topic {t}: {e}")))?;
        }
        Ok(())
    }

    /// Writes `values` to `topic` with a plain rdkafka producer (a client
    /// independent of Sluice's sink), value `i` to partition
    /// `i % partitions`, and waits until the producer has flushed them.
    pub fn produce<V: AsRef<[u8]>>(
        &self,
        topic: &str,
        partitions: i32,
        values: impl IntoIterator<Item = V>,
    ) -> Result<()> {
        let err = |e: KafkaError| Error::connector("kafka", format!("producing to {topic}: {e}"));
        let p: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.address())
            .set("linger.ms", "20")
            .create()
            .map_err(err)?;
        for (i, v) in values.into_iter().enumerate() {
            let rec = BaseRecord::<(), [u8]>::to(topic)
                .payload(v.as_ref())
                .partition((i % partitions as usize) as i32);
            send_waiting(&p, rec).map_err(err)?;
        }
        p.flush(Duration::from_secs(120)).map_err(err)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drives an admin future to completion on this thread. The admin client
/// completes its futures from its own background thread, so a trivial
/// executor that parks between polls is enough (no async runtime needed).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}
