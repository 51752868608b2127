//! aliyun-emulator: the ECS/VPC OpenAPI and ECS metadata service, emulated.

use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use terway_cloud::emulator::{AccessKeySpec, Emulator, Scenario, DEFAULT_ACCESS_KEY_ID};

/// Serves the ECS 2014-05-26 / VPC 2016-04-28 actions terway-rs uses and the
/// metadata service (`/latest/meta-data/…`) over HTTP, verifying every
/// request's signature as the cloud does.
///
/// With no --scenario it starts the built-in default: region cn-hangzhou,
/// zone cn-hangzhou-i, VPC 192.168.0.0/16, vSwitches vsw-node00000000001
/// (192.168.0.0/24, the node's), vsw-small0000000001 (192.168.1.0/28, runs
/// out after 12 addresses) and vsw-large0000000001 (192.168.16.0/20),
/// security group sg-emulated00000001, one ecs.g6.2xlarge instance
/// i-emulated00000001 (4 ENIs × 10 IPv4), RAM role TerwayEmulatedRole, and
/// the AccessKey pair emulator-access-key-id / emulator-access-key-secret.
///
/// Control endpoint: GET /__emulator/world (the whole world as JSON),
/// GET /__emulator/calls, GET|PUT /__emulator/faults, POST /__emulator/vswitches.
#[derive(Debug, Parser)]
#[command(name = "aliyun-emulator", version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// A scenario JSON file (every field optional; see the crate docs).
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Replace the scenario's AccessKey pair with this id (needs --access-key-secret).
    #[arg(long, requires = "access_key_secret")]
    access_key_id: Option<String>,
    #[arg(long, requires = "access_key_id")]
    access_key_secret: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let args = Args::parse();
    let mut scenario = match &args.scenario {
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| Scenario::from_json(&t))
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: scenario {}: {e}", path.display());
                return std::process::ExitCode::FAILURE;
            }
        },
        None => Scenario::default(),
    };
    if let (Some(id), Some(secret)) = (args.access_key_id, args.access_key_secret) {
        scenario.credentials = vec![AccessKeySpec {
            access_key_id: id,
            access_key_secret: secret,
        }];
    }
    let key_id = scenario
        .credentials
        .first()
        .map_or(DEFAULT_ACCESS_KEY_ID.to_owned(), |c| c.access_key_id.clone());
    let emulator = match Emulator::bind(args.listen, scenario).await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("aliyun-emulator listening on {} (AccessKeyId {key_id})", emulator.url());
    let _ = tokio::signal::ctrl_c().await;
    emulator.stop();
    std::process::ExitCode::SUCCESS
}
