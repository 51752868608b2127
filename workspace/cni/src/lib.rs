//! terway-cni: the `terway` CNI plugin's side of terway-rs — input parsing
//! and result rendering ([`plugin`]), the plugin ⇄ daemon messages
//! ([`protocol`]), and the synchronous exchange over the daemon's unix
//! socket. std + serde_json only, so the binary kubelet execs for every pod
//! stays small and starts fast; terwayd decodes with the same types.

pub mod plugin;
pub mod protocol;

use plugin::{code, CniError};
use protocol::{Reply, Request};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Where terwayd listens unless the conflist says otherwise (terway-config's
/// `defaults::SOCKET_PATH`; a test in terway-node keeps the two equal).
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/eni/eni.socket";

/// Upstream's daemon deadline is 118 s inside the plugin's 120 s.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends one request and reads the reply: one JSON document each way, the
/// request ended by shutting down the writing half.
pub fn exchange(socket: &Path, request: &Request, timeout: Duration) -> Result<Reply, CniError> {
    let try_later = |what: String| CniError {
        code: code::TRY_AGAIN_LATER,
        msg: format!(
            "terwayd is not serving on {}: {what}; try again later",
            socket.display()
        ),
        details: String::new(),
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| try_later(e.to_string()))?;
    let io = |e: std::io::Error| {
        CniError::new(
            code::IO_FAILURE,
            format!("talking to terwayd on {}: {e}", socket.display()),
        )
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let body = serde_json::to_vec(request).map_err(|e| CniError::new(code::IO_FAILURE, e.to_string()))?;
    stream.write_all(&body).map_err(io)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(|e| {
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            try_later(format!("no answer within {timeout:?}"))
        } else {
            io(e)
        }
    })?;
    serde_json::from_slice(&answer).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("terwayd answered something that is not a reply: {e}"),
        )
    })
}
