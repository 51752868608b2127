//! terwayd: the terway-rs node daemon.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "terwayd", version, about = "terway-rs node daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run {
            config,
            override_file,
            no_datapath,
            host_netns,
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
            let options = terway_node::daemon::NodeOptions {
                datapath,
                ..Default::default()
            };
            terway_node::daemon::service::run(config, override_file, options).await
        }),
        Command::Demo { pods, interval_ms } => block_on(terway_node::demo::run(
            pods,
            std::time::Duration::from_millis(interval_ms),
        )),
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
