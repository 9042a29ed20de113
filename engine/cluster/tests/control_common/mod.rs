//! What the control-server tests share: a one-source attempt of job
//! `JOB` (attempt 1, secret `SECRET`) started on a server, the hello its
//! executor says, and how a test tells that the server closed a
//! connection.

use std::io::Read;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use sluice_cluster::attempt::{AttemptConfig, AttemptHandle, ControlServer};
use sluice_protocol::api::{JobDescription, RestartPolicy, VertexInfo};
use sluice_protocol::control::ToCoordinator;
use sluice_protocol::ids::TaskKey;

pub const JOB: &str = "job-1";
pub const ATTEMPT: u64 = 1;
pub const SECRET: &str = "s3cret";

pub fn description() -> JobDescription {
    JobDescription {
        protocol: sluice_protocol::PROTOCOL_VERSION,
        name: "t".into(),
        parallelism: 1,
        max_parallelism: 128,
        vertices: vec![VertexInfo {
            id: 0,
            name: "source".into(),
            parallelism: 1,
            source: true,
            nodes: vec![(0, "source".into())],
            inputs: Vec::new(),
        }],
        graph_nodes: 1,
        uids: Vec::new(),
        checkpoint: None,
        restart: RestartPolicy::None,
    }
}

/// Starts attempt `ATTEMPT` of `JOB` (one source subtask on executor 0)
/// on `server`.
pub fn start_attempt(server: &ControlServer) -> AttemptHandle {
    server
        .start_attempt(AttemptConfig {
            job_id: JOB.into(),
            attempt: ATTEMPT,
            description: description(),
            placement: vec![(
                TaskKey {
                    vertex: 0,
                    subtask: 0,
                },
                0,
            )],
            executors: 1,
            checkpoint: None,
            stats: Arc::default(),
            secret: SECRET.into(),
            adopt: None,
        })
        .unwrap()
}

/// Executor 0's hello for attempt `ATTEMPT` of `job`.
pub fn hello(protocol: u32, job: &str, secret: &str, term: u64) -> ToCoordinator {
    ToCoordinator::Hello {
        protocol,
        job_id: job.into(),
        attempt: ATTEMPT,
        term,
        executor: 0,
        exchange: "127.0.0.1:1".into(),
        secret: secret.into(),
        rejoin: None,
    }
}

/// Whether the server closed `s` (reads end) within `within`.
pub fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a Rejected frame before the close
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true, // reset
        }
    }
}
