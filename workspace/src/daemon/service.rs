//! Running terwayd: the config watcher, the node service's tasks, and a
//! clean stop on SIGTERM.

use super::{cni_service, reconciler, Node, NodeOptions};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use terway_config::{ConfigSource, ConfigWatcher};

/// How often the config file is re-read (a ConfigMap update lands within kubelet's sync period anyway).
pub const CONFIG_POLL: Duration = Duration::from_secs(2);

/// How long SIGTERM waits for CNI requests under way.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A running node service; dropping it stops every task.
#[derive(Debug)]
pub struct Running {
    pub node: Arc<Node>,
    pub watcher: Arc<ConfigWatcher>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops taking CNI requests, lets those under way finish (bounded), then stops.
    pub async fn drain(&self, within: Duration) {
        if let Some(server) = self.tasks.last() {
            server.abort(); // the accept loop; requests under way run in their own tasks
        }
        let _ = std::fs::remove_file(self.node.socket_path());
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let done = self.node.request_done.notified();
            let left = self.node.in_flight.load(std::sync::atomic::Ordering::SeqCst);
            if left == 0 {
                break;
            }
            tracing::info!(in_flight = left, "waiting for CNI requests under way");
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                tracing::warn!(in_flight = left, "stopping with CNI requests still under way");
                break;
            }
        }
        self.stop();
    }

    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(self.node.socket_path());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Loads the config, starts the node and its tasks.
pub async fn start(config: PathBuf, override_path: Option<PathBuf>, options: NodeOptions) -> anyhow::Result<Running> {
    let (watcher, warnings) = ConfigWatcher::start(ConfigSource {
        path: config.clone(),
        override_path,
    })
    .with_context(|| format!("loading {}", config.display()))?;
    for w in warnings {
        tracing::warn!(%w, "configuration");
    }
    let watcher = Arc::new(watcher);
    let node = Node::start(watcher.current(), options).await?;
    let mut tasks = vec![watcher.spawn_polling(CONFIG_POLL)];
    tasks.push(tokio::spawn(node.clone().follow_config(watcher.subscribe())));
    tasks.push(tokio::spawn(reconciler::run(node.clone())));
    let server_node = node.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = cni_service::serve(server_node).await {
            tracing::error!(error = %e, "CNI service stopped");
        }
    }));
    for _ in 0..1000 {
        if node.socket_path().exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Running { node, watcher, tasks })
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: PathBuf, override_path: Option<PathBuf>, options: NodeOptions) -> anyhow::Result<()> {
    let running = start(config, override_path, options).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining CNI requests, then stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining CNI requests, then stopping"),
    }
    running.drain(DRAIN_TIMEOUT).await;
    running.node.ledger.flush()?;
    Ok(())
}
