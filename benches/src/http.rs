//! A plain HTTP/1.0 GET against a local coordinator, for the cluster
//! benchmarks' polling (no client library: the answer ends when the
//! connection closes).

use std::io::{Error, ErrorKind, Read, Result, Write};
use std::time::Duration;

/// The body of `GET path` from 127.0.0.1:`port`; an answer other than 200
/// is an error naming its status line.
pub fn get(port: u16, path: &str) -> Result<Vec<u8>> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| Error::new(ErrorKind::InvalidData, "no end of the HTTP header"))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or("").to_string();
        return Err(Error::other(format!("GET {path}: {status}")));
    }
    Ok(answer[split + 4..].to_vec())
}
