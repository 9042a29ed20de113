//! STUB (replaced by the executor branch): the coordinator side of an attempt.
#![allow(missing_docs, dead_code)]
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crossbeam_channel::Receiver;

use crate::checkpoint::coordinator::TaskKey;
use crate::checkpoint::{CheckpointConfig, CheckpointStats, Location, Storage};
use crate::cluster::api::{JobDescription, NodeCounters};
use crate::error::Result;

pub struct ControlServer;
impl ControlServer {
    pub fn bind(_addr: SocketAddr) -> Result<ControlServer> { todo!() }
    pub fn local_addr(&self) -> SocketAddr { todo!() }
    pub fn start_attempt(&self, _cfg: AttemptConfig) -> Result<AttemptHandle> { todo!() }
}
pub struct AttemptConfig { pub job_id: String, pub attempt: u64, pub description: JobDescription, pub placement: Vec<(TaskKey, usize)>, pub executors: usize, pub checkpoint: Option<CheckpointSetup>, pub stats: Arc<Mutex<CheckpointStats>> }
pub struct CheckpointSetup { pub config: CheckpointConfig, pub root: Storage, pub next_id: u64 }
#[derive(Clone)]
pub struct AttemptHandle;
impl AttemptHandle {
    pub fn events(&self) -> Receiver<AttemptEvent> { todo!() }
    pub fn savepoint(&self, _dir: Location, _stop: bool) -> Result<Location> { todo!() }
    pub fn cancel(&self, _reason: &str) {}
    pub fn rejected_stale(&self) -> u64 { 0 }
    pub fn metrics(&self) -> Vec<NodeCounters> { vec![] }
}
pub enum AttemptEvent { Running, Finished, Failed(String) }
