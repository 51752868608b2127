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
    match cli.command {
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
