//! A TCP front for the emulator that fails the way networks and servers
//! do, switched while the test runs: connections refused (the port
//! closed), accepted and never answered, or answered with garbage. Faults
//! of the API itself (5xx, throttling, latency, clock skew) are the
//! emulator's own ([`terway_cloud::emulator::Faults`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the front does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Passes every byte both ways.
    Forward,
    /// The port is closed: connecting fails at once.
    Refuse,
    /// Connections are accepted and read, never answered.
    Hang,
    /// Every request gets `200 OK` with a body that is no JSON.
    Garbage,
}

/// A running front; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    address: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (mode, changes) = watch::channel(ProxyMode::Forward);
        let task = tokio::spawn(serve(listener, address, upstream, changes));
        Self { address, mode, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Switches the mode; connections open under the old one are cut, so a
    /// client's pooled connection cannot carry on as before.
    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }
}

async fn serve(
    mut listener: TcpListener,
    address: SocketAddr,
    upstream: SocketAddr,
    mut changes: watch::Receiver<ProxyMode>,
) {
    let mut connections = JoinSet::new();
    loop {
        let mode = *changes.borrow_and_update();
        if mode == ProxyMode::Refuse {
            drop(listener);
            connections.abort_all();
            while *changes.borrow_and_update() == ProxyMode::Refuse {
                if changes.changed().await.is_err() {
                    return;
                }
            }
            // the same port again (SO_REUSEADDR is set by tokio on unix)
            listener = loop {
                match TcpListener::bind(address).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            };
            continue;
        }
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(connection(client, upstream, mode));
                while connections.try_join_next().is_some() {}
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                connections.abort_all();
            }
        }
    }
}

async fn connection(mut client: TcpStream, upstream: SocketAddr, mode: ProxyMode) {
    match mode {
        ProxyMode::Forward => {
            if let Ok(mut server) = TcpStream::connect(upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        }
        ProxyMode::Hang => {
            let mut sink = [0u8; 4096];
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        ProxyMode::Garbage => {
            let mut head = [0u8; 8192];
            let _ = client.read(&mut head).await;
            let body = "\u{1}\u{2}<html>not what you asked for";
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(reply.as_bytes()).await;
        }
        ProxyMode::Refuse => {}
    }
}
