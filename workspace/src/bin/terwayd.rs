//! terwayd: the terway-rs node daemon.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "terwayd", version, about = "terway-rs node daemon")]
struct Cli {
    /// `text` (colours only on a terminal) or `json` (one object a line, for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// parsed once at start: the size of the largest variant costs nothing
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node service.
    Run {
        /// The eni_conf file or ConfigMap mount directory.
        #[arg(long, default_value = terway_config::defaults::CONFIG_PATH)]
        config: PathBuf,
        /// A per-node override file (RFC 7396 merge patch).
        #[arg(long = "override")]
        override_file: Option<PathBuf>,
        /// Serve IPAM only, without setting up pod networking.
        #[arg(long)]
        no_datapath: bool,
        /// The namespace that plays the host (default: the current one).
        #[arg(long)]
        host_netns: Option<PathBuf>,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Once serving, copy the `terway` plugin into this directory (the host's /opt/cni/bin).
        #[arg(long, requires = "install_cni_conf_dir")]
        install_cni_bin_dir: Option<PathBuf>,
        /// Once serving, write 10-terway.conflist into this directory (the host's /etc/cni/net.d).
        #[arg(long, requires = "install_cni_bin_dir")]
        install_cni_conf_dir: Option<PathBuf>,
        /// The plugin binary to install (default: `terway` beside terwayd).
        #[arg(long)]
        cni_plugin: Option<PathBuf>,
        /// Reference plugins chained after terway in the conflist (portmap, bandwidth).
        #[arg(long, value_delimiter = ',')]
        chain: Vec<terway_config::conflist::ChainedPlugin>,
        /// Upstream Terway's pod records, read at start to take over the pods
        /// it wired (skipped when the file is absent).
        #[arg(long, default_value = terway_node::daemon::upstream::RES_RELATION_DB)]
        upstream_db: PathBuf,
    },
    /// The daemon on the embedded API emulator: pods arrive until the small
    /// vSwitch runs out, a vSwitch is added to the live config, and a summary follows.
    Demo {
        #[arg(long, default_value_t = 20)]
        pods: usize,
        /// Milliseconds between pods.
        #[arg(long, default_value_t = 150)]
        interval_ms: u64,
    },
    /// Removes what terwayd leaves in the kernel that outlives it: the
    /// NetworkPolicy table `inet terway` and the masquerade table `ip
    /// terway_masq` (uninstall; pods' own links go with DEL).
    Cleanup {
        /// The namespace that plays the host (default: the current one).
        #[arg(long)]
        host_netns: Option<PathBuf>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

/// Kubernetes: in a pod (KUBERNETES_SERVICE_HOST set) terwayd uses the
/// service account; `--kubeconfig` points elsewhere; `--standalone` runs
/// without a cluster (systemd), from the ledger and CNI calls alone.
#[derive(Debug, clap::Args)]
struct ClusterArgs {
    /// Run without a Kubernetes cluster.
    #[arg(long, conflicts_with = "kubeconfig")]
    standalone: bool,
    /// A kubeconfig file (default: in-cluster service account when in a pod).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This node's name in the cluster.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Namespace of the eni-config ConfigMap and node overrides.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    namespace: String,
}

impl ClusterArgs {
    async fn options(&self) -> anyhow::Result<Option<terway_node::cluster::ClusterOptions>> {
        if self.standalone {
            return Ok(None);
        }
        let kube = match &self.kubeconfig {
            Some(path) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| anyhow::anyhow!("reading kubeconfig {}: {e}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default()).await?
            }
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => kube::Config::incluster()?,
            None => {
                tracing::info!("no cluster (no KUBERNETES_SERVICE_HOST, no --kubeconfig): standalone mode");
                return Ok(None);
            }
        };
        let node_name = self
            .node_name
            .clone()
            .ok_or_else(|| anyhow::anyhow!("in a cluster terwayd needs its node's name: set NODE_NAME (the DaemonSet passes spec.nodeName) or --node-name"))?;
        Ok(Some(terway_node::cluster::ClusterOptions::new(
            kube,
            &node_name,
            &self.namespace,
        )))
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate an eni_conf file (or ConfigMap mount directory): prints the
    /// effective configuration as JSON and exits 0, or every error and exits 1.
    Check {
        /// The eni_conf file or the directory it is mounted in.
        file: PathBuf,
        /// A per-node override, applied as an RFC 7396 JSON merge patch.
        #[arg(long = "override")]
        override_file: Option<PathBuf>,
    },
    /// Print the CNI conflist terwayd installs (10-terway.conflist).
    Conflist {
        /// MTU written for the plugin.
        #[arg(long, default_value_t = terway_config::defaults::MTU)]
        mtu: u32,
        /// The socket the plugin dials.
        #[arg(long, default_value = terway_config::defaults::SOCKET_PATH)]
        socket: PathBuf,
        /// Reference plugins chained after terway (portmap, bandwidth).
        #[arg(long, value_delimiter = ',')]
        chain: Vec<terway_config::conflist::ChainedPlugin>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let default = if matches!(cli.command, Command::Demo { .. }) {
            "error"
        } else {
            "info"
        };
        tracing_subscriber::EnvFilter::new(default)
    });
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        // journald and files get no ANSI colour codes
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    match cli.command {
        Command::Run {
            config,
            override_file,
            no_datapath,
            host_netns,
            cluster,
            install_cni_bin_dir,
            install_cni_conf_dir,
            cni_plugin,
            chain,
            upstream_db,
        } => block_on(async move {
            let datapath = if no_datapath {
                None
            } else {
                let ns = match &host_netns {
                    Some(p) => terway_datapath::NetNs::open(p)?,
                    None => terway_datapath::NetNs::current()?,
                };
                Some(std::sync::Arc::new(terway_datapath::Datapath::new(ns)?))
            };
            let install_cni = match (install_cni_bin_dir, install_cni_conf_dir) {
                (Some(bin_dir), Some(conf_dir)) => {
                    let plugin = match cni_plugin {
                        Some(p) => p,
                        None => std::env::current_exe()?.with_file_name("terway"),
                    };
                    Some(terway_node::daemon::InstallCni {
                        plugin,
                        bin_dir,
                        conf_dir,
                        chained: chain,
                    })
                }
                _ => None,
            };
            let options = terway_node::daemon::NodeOptions {
                datapath,
                cluster: cluster.options().await?,
                install_cni,
                upstream_db: Some(upstream_db),
                ..Default::default()
            };
            terway_node::service::run(config, override_file, options).await
        }),
        #[cfg(feature = "demo")]
        Command::Demo { pods, interval_ms } => block_on(terway_node::demo::run(
            pods,
            std::time::Duration::from_millis(interval_ms),
        )),
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            eprintln!(
                "error: this terwayd was built without the demo (the API emulator and simulated node stay out of production builds); \
                 build it with `cargo build -p terway-node -p terway-cni --bins --features terway-node/demo`"
            );
            ExitCode::FAILURE
        }
        Command::Cleanup { host_netns } => {
            let nft = terway_node::policy::nft::Nft::new(host_netns.as_deref());
            let masq = terway_node::daemon::masquerade::TABLE;
            let removed = nft
                .remove_table()
                .map_err(|e| e.to_string())
                .and_then(|()| terway_node::daemon::masquerade::Masquerade::remove(&nft));
            match removed {
                Ok(()) => {
                    println!("removed the NetworkPolicy table inet terway and the masquerade table ip {masq} (those that were there)");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config {
            command: ConfigCommand::Conflist { mtu, socket, chain },
        } => {
            print!(
                "{}",
                terway_config::conflist::render(&terway_config::conflist::ConflistOptions {
                    mtu,
                    socket_path: &socket,
                    chained: &chain,
                })
            );
            ExitCode::SUCCESS
        }
        Command::Config {
            command: ConfigCommand::Check { file, override_file },
        } => {
            let (stdout, stderr) = (std::io::stdout(), std::io::stderr());
            match terway_node::config_check::run(
                &file,
                override_file.as_deref(),
                &mut stdout.lock(),
                &mut stderr.lock(),
            ) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: writing output: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
