//! A leader cut off from the other coordinators by the network while it
//! still reaches its workers. Three `sluice coordinator`s run in network
//! namespaces of their own, each behind a veth link with a loopback-range
//! address (127.10.I.2), routed through this test thread's own private
//! namespace, where the workers, their executors and the CLI run; nothing
//! of the machine's network is touched. The leader's routes to the other
//! coordinators (and theirs to it) are blackholed: the majority elects a
//! new leader and finishes q5 exactly once while the old leader, which
//! can still talk to every worker, steps down and completes no
//! checkpoint; healed, the group converges to one leader and the old one
//! catches up. Needs root (network namespaces), as the worker partition
//! test in `distributed.rs` does.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sluice_cluster::local::{WorkerPlace, PLACED_PORT};

mod common;
use common::cluster::{embedded_q5, Cluster};
use common::{assert_exactly_once, http_at, local_status_at, rows};

const COORDINATORS: usize = 3;

/// Coordinator `i`'s address, in its own namespace.
fn addr(i: usize) -> String {
    format!("127.10.{i}.2")
}

/// This side's end of coordinator `i`'s link.
fn gateway(i: usize) -> String {
    format!("127.10.{i}.1")
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{} (scripts/setup.sh installs iproute2): {e}", args[0]));
    assert!(
        out.status.success(),
        "{}: {} (the partition test needs root for network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loopback-range addresses route only where the 127.0.0.0/8 local route
/// gives way to 127.0.0.1 alone and `route_localnet` lets them cross
/// links: a script for `sh -c` doing that in the current namespace.
fn loopback_routable() -> String {
    "ip link set lo up && ip route del local 127.0.0.0/8 dev lo table local && \
     ip route replace local 127.0.0.1 dev lo table local && \
     for k in all default; do \
       echo 1 > /proc/sys/net/ipv4/conf/$k/route_localnet && \
       echo 0 > /proc/sys/net/ipv4/conf/$k/rp_filter; \
     done"
        .to_string()
}

/// The test thread's private namespace and one namespace per coordinator.
struct Network {
    names: Vec<String>,
}

impl Network {
    fn create(coordinators: usize) -> Network {
        // SAFETY: unshare(2) with CLONE_NEWNET moves only the calling
        // thread into a new network namespace; it touches no memory. Every
        // process this thread starts from now on (workers, the CLI, the
        // `ip` commands) inherits the namespace; other tests' threads keep
        // theirs.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "unshare(CLONE_NEWNET): {} (the partition test needs root)",
            std::io::Error::last_os_error()
        );
        run(&[
            "sh",
            "-c",
            &format!(
                "{} && echo 1 > /proc/sys/net/ipv4/ip_forward",
                loopback_routable()
            ),
        ]);
        let id = std::process::id();
        let net = Network {
            names: (0..coordinators).map(|i| format!("slr{id}c{i}")).collect(),
        };
        for i in 0..coordinators {
            net.link(i);
        }
        net
    }

    /// Coordinator `i`'s namespace, linked to this one.
    fn link(&self, i: usize) {
        let ns = self.names[i].as_str();
        // Interface names live in this private namespace and the
        // coordinator's: they cannot clash with another run's.
        let (outer, inner) = (format!("slr{i}"), format!("slr{i}in"));
        run(&["ip", "netns", "add", ns]);
        run(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", ns,
        ]);
        let (a, g) = (addr(i), gateway(i));
        run(&[
            "sh",
            "-c",
            &format!(
                "ip addr add {g}/32 dev {outer} && ip link set {outer} up && \
                 ip route add {a}/32 dev {outer} && \
                 echo 1 > /proc/sys/net/ipv4/conf/{outer}/route_localnet && \
                 echo 0 > /proc/sys/net/ipv4/conf/{outer}/rp_filter && \
                 echo 1 > /proc/sys/net/ipv4/conf/{outer}/forwarding"
            ),
        ]);
        // Everything else in 127.0.0.0/8 (the other coordinators, the
        // workers' side) is reached through this side, from its own
        // address, so answers find their way back.
        run(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            &format!(
                "{} && ip addr add {a}/32 dev {inner} && ip link set {inner} up && \
                 echo 1 > /proc/sys/net/ipv4/conf/{inner}/route_localnet && \
                 echo 0 > /proc/sys/net/ipv4/conf/{inner}/rp_filter && \
                 ip route add {g}/32 dev {inner} && \
                 ip route add 127.0.0.0/8 via {g} dev {inner} onlink src {a}",
                loopback_routable()
            ),
        ]);
    }

    fn place(&self, i: usize) -> WorkerPlace {
        WorkerPlace {
            host: addr(i),
            prefix: ["ip", "netns", "exec", &self.names[i]]
                .map(String::from)
                .to_vec(),
        }
    }

    /// Cuts (or heals) coordinator `i`'s paths to every other coordinator,
    /// both ways; its link to this side, the workers', stays up.
    fn cut(&self, i: usize, cut: bool) {
        let op = if cut { "add" } else { "del" };
        for j in (0..self.names.len()).filter(|&j| j != i) {
            for (from, to) in [(i, j), (j, i)] {
                run(&[
                    "ip",
                    "netns",
                    "exec",
                    &self.names[from],
                    "ip",
                    "route",
                    op,
                    "blackhole",
                    &format!("{}/32", addr(to)),
                ]);
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Status, header block and body of a request to coordinator `i`.
fn ask(i: usize, path: &str) -> (u16, String, String) {
    http_at(&addr(i), PLACED_PORT, "GET", path, None)
}

/// The coordinators among `of` that answer the API as leader.
fn leaders(of: &[usize]) -> Vec<usize> {
    of.iter()
        .copied()
        .filter(|&i| ask(i, "/api/v1/jobs").0 == 200)
        .collect()
}

/// Coordinator `i`'s own copy of `job`'s status, and the term it is in.
fn local_status(i: usize, job: &str) -> (Value, u64) {
    local_status_at(&addr(i), PLACED_PORT, job)
}

#[test]
fn a_leader_cut_off_by_the_network_steps_down_and_the_majority_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let want = embedded_q5(dir.path());
    // Dropped after the cluster (declared first): the processes go first.
    let net = Network::create(COORDINATORS);
    let places = (0..COORDINATORS).map(|i| net.place(i)).collect();
    let cluster = Cluster::start_placed(dir.path(), 2, 2, places);
    let job = cluster.submit_q5(2, "150000");
    let before = cluster.after_a_checkpoint(&job);
    let all: Vec<usize> = (0..COORDINATORS).collect();
    let first = *leaders(&all).first().expect("a leader answers");
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != first).collect();

    net.cut(first, true);
    // The majority elects a leader of its own...
    cluster.wait_for(
        Duration::from_secs(30),
        "a leader on the majority side",
        |_| leaders(&rest).len() == 1,
    );
    // ...and the old one, which its workers still reach, stops acting as
    // one.
    cluster.wait_for(
        Duration::from_secs(30),
        "the cut-off leader to step down",
        |_| ask(first, "/api/v1/jobs").0 == 503,
    );
    let (cut_off, cut_term) = local_status(first, &job);

    // The majority side finishes the job, exactly once, while the old
    // leader is still cut off.
    let done = cluster.wait_state(&job, "FINISHED", Duration::from_secs(180));
    assert_eq!(
        done["attempt"], before["attempt"],
        "adopted by the new leader, not restarted: {done}"
    );
    let out = dir.path().join("out");
    assert_exactly_once(&want, &rows(&out), &out, "q5 across a cut-off leader");
    // Nothing reached the old leader's copy of the log meanwhile: no
    // checkpoint completed through it.
    let (still, _) = local_status(first, &job);
    assert_eq!(
        still["latest_checkpoint"], cut_off["latest_checkpoint"],
        "the cut-off leader's log moved: {still}"
    );
    assert_ne!(still["state"], "FINISHED", "{still}");

    // Healed: one leader, every member in its term, the old leader a
    // follower that caught up.
    net.cut(first, false);
    cluster.wait_for(
        Duration::from_secs(30),
        "one leader, and every member caught up",
        |_| {
            let copies: Vec<(Value, u64)> = all.iter().map(|&i| local_status(i, &job)).collect();
            leaders(&all).len() == 1
                && copies
                    .iter()
                    .all(|(s, t)| s["state"] == "FINISHED" && *t == copies[0].1 && *t > cut_term)
        },
    );
}
