//! Exchange peers: the addresses executors give each other and the
//! established connections the runtime takes its remote channel ends from.

use super::*;

/// The identity an executor gives in exchange hellos.
pub(super) fn peer_name(executor: usize) -> String {
    format!("executor-{executor}")
}

pub(super) fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

pub(super) fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    first_addr((host, port), host)
}

pub(super) fn resolve_addr(addr: &str) -> Result<SocketAddr> {
    first_addr(addr, addr)
}

/// The first address `target` resolves to; `name` is for errors.
pub(super) fn first_addr(target: impl ToSocketAddrs, name: &str) -> Result<SocketAddr> {
    target
        .to_socket_addrs()
        .map_err(|e| Error::io(format!("resolving {name}"), e))?
        .next()
        .ok_or_else(|| Error::Config(format!("{name} resolves to no address")))
}

/// The established exchange connections, by peer executor.
pub(super) struct Conns {
    pub(super) by_peer: HashMap<usize, Connection>,
    pub(super) placed: HashMap<TaskKey, usize>,
}

impl Conns {
    fn peer(&mut self, task: TaskKey) -> Result<&mut Connection> {
        let j = self.placed[&task];
        self.by_peer
            .get_mut(&j)
            .ok_or_else(|| Error::Internal(format!("no exchange connection to executor {j}")))
    }
}

impl RemoteEnds for Conns {
    fn sender(&mut self, channel: ChannelId, to: TaskKey) -> Result<Box<dyn ChannelSender>> {
        let s = self.peer(to)?.take_sender(channel).ok_or_else(|| {
            Error::Internal(format!(
                "channel {} is not outbound on its connection",
                channel.0
            ))
        })?;
        Ok(Box::new(s))
    }

    fn receiver(&mut self, channel: ChannelId, from: TaskKey) -> Result<Receiver<StreamMessage>> {
        self.peer(from)?.take_receiver(channel).ok_or_else(|| {
            Error::Internal(format!(
                "channel {} is not inbound on its connection",
                channel.0
            ))
        })
    }
}
