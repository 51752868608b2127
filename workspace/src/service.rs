//! Running terwayd: the wiring of the node service with the config watcher,
//! the Kubernetes integration and the metrics server, its tasks, and a clean
//! stop on SIGTERM. The only module that knows all of them.

use crate::daemon::{cni_service, datapath_agent, reconciler, InstallCni, Node, NodeOptions};
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
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`None`: the address was taken).
    pub metrics_address: Option<std::net::SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The CNI socket's accept loop, stopped first on drain.
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops taking CNI requests, lets those under way finish (bounded), then stops.
    pub async fn drain(&self, within: Duration) {
        self.server.abort(); // the accept loop; requests under way run in their own tasks
        self.node.serving.store(false, std::sync::atomic::Ordering::SeqCst);
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

    /// Stops every task and waits until each is gone, so the ledger can be
    /// opened again in this process (a restart in place, in tests).
    pub async fn shutdown(mut self) {
        self.stop();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let _ = (&mut self.server).await;
    }

    pub fn stop(&self) {
        self.server.abort();
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
    if options.cluster.is_some() && options.bridge.is_some() {
        anyhow::bail!("a Kubernetes cluster and another cluster bridge were both given; terwayd uses one");
    }
    let node = Node::start(watcher.current(), options.clone()).await?;
    let mut tasks = vec![
        watcher.spawn_polling(CONFIG_POLL),
        tokio::spawn(node.clone().confirm_facts()),
    ];
    tasks.push(tokio::spawn(node.clone().follow_config(watcher.subscribe())));
    if let Some(cluster) = options.cluster.clone() {
        let (_, cluster_tasks) = crate::cluster::Cluster::start(node.clone(), watcher.clone(), cluster).await?;
        tasks.extend(cluster_tasks);
    }
    tasks.push(tokio::spawn(reconciler::run(node.clone())));
    if let Some(dp) = node.datapath.clone() {
        tasks.push(tokio::spawn(datapath_agent::run(node.clone(), dp)));
    }
    let metrics_address = match start_metrics(&node, &options).await {
        Ok((address, task)) => {
            tasks.push(task);
            Some(address)
        }
        Err(e) => {
            tracing::error!(error = %e, "metrics not served");
            None
        }
    };
    let server_node = node.clone();
    let server = tokio::spawn(async move {
        if let Err(e) = cni_service::serve(server_node).await {
            tracing::error!(error = %e, "CNI service stopped");
        }
    });
    for _ in 0..1000 {
        if node.serving.load(std::sync::atomic::Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(install) = &options.install_cni {
        install_cni(&node, install).with_context(|| {
            format!(
                "installing the CNI plugin into {} and its conflist into {}",
                install.bin_dir.display(),
                install.conf_dir.display()
            )
        })?;
    }
    Ok(Running {
        node,
        watcher,
        metrics_address,
        tasks,
        server,
    })
}

async fn start_metrics(
    node: &Arc<Node>,
    options: &NodeOptions,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let address = options.metrics_address.unwrap_or(node.config().metrics_address);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding metrics_address {address}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(address = %bound, "metrics, /healthz and /readyz served");
    let node = node.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = crate::metrics::serve(node, listener).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((bound, task))
}

/// Copies the plugin and writes the conflist, each by writing a temporary
/// file and renaming it over the old one, so kubelet never reads half a file.
/// Runs once the socket serves: until the conflist exists, kubelet keeps
/// the node NotReady and schedules no pods onto it.
pub fn install_cni(node: &Node, install: &InstallCni) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(&install.bin_dir)?;
    std::fs::create_dir_all(&install.conf_dir)?;
    let plugin = install.bin_dir.join("terway");
    let staged = install.bin_dir.join(".terway.new");
    std::fs::copy(&install.plugin, &staged).with_context(|| format!("copying {}", install.plugin.display()))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&staged, &plugin)?;
    let socket = node.socket_path();
    let text = terway_config::conflist::render(&terway_config::conflist::ConflistOptions {
        mtu: node.config().mtu,
        socket_path: &socket,
        chained: &install.chained,
    });
    let conflist = install.conf_dir.join(terway_config::conflist::CONFLIST_FILE_NAME);
    let staged = install.conf_dir.join(".10-terway.conflist.new");
    std::fs::write(&staged, text)?;
    std::fs::rename(&staged, &conflist)?;
    tracing::info!(plugin = %plugin.display(), conflist = %conflist.display(), "CNI plugin and conflist installed");
    Ok(())
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: PathBuf, override_path: Option<PathBuf>, options: NodeOptions) -> anyhow::Result<()> {
    let running = start(config, override_path, options).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let node = running.node.clone();
    let fatal = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: draining CNI requests, then stopping"); None }
        _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted: draining CNI requests, then stopping"); None }
        why = node.fatal() => Some(why),
    };
    running.drain(DRAIN_TIMEOUT).await;
    running.node.ledger.flush()?;
    match fatal {
        Some(why) => Err(anyhow::anyhow!(why)),
        None => Ok(()),
    }
}
