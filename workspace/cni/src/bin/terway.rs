//! terway: the CNI plugin kubelet (or containerd) execs. It checks its
//! input, asks terwayd over a unix socket, and writes the CNI result.
//! Synchronous and small: no async runtime.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use terway_cni::plugin::{self, code, CniError, Command};
use terway_cni::protocol::{Reply, Request};
use terway_cni::{exchange, EXCHANGE_TIMEOUT};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    // errors are written in the version the caller asked for, when it can be read
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(|v| v.as_str()).map(str::to_owned))
        .filter(|v| plugin::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| plugin::FALLBACK_VERSION.to_owned());
    let result = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(CniError::new(code::IO_FAILURE, format!("reading stdin: {e}"))),
    };
    match result {
        Ok(Some(output)) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            ExitCode::FAILURE
        }
    }
}

fn run(stdin: &[u8]) -> Result<Option<String>, CniError> {
    let env = |k: &str| std::env::var(k).ok();
    let inv = plugin::parse(&env, stdin)?;
    let Some(request) = inv.request else {
        // VERSION, or a DEL that names nothing to delete
        return Ok((inv.command == Command::Version).then(plugin::version_output));
    };
    let socket = inv
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(terway_cni::DEFAULT_SOCKET_PATH));
    match exchange(&socket, &request, EXCHANGE_TIMEOUT)? {
        Reply::Error { code, msg, details } => Err(CniError { code, msg, details }),
        Reply::Inspect { .. } => Err(CniError::new(
            code::IO_FAILURE,
            "terwayd answered a CNI request with an inspection",
        )),
        Reply::Ok { network } => match (inv.command, &request, network) {
            (Command::Add, Request::Add(pod), Some(net)) => Ok(Some(plugin::render_result(
                &inv.cni_version,
                &net,
                &pod.ifname,
                &pod.netns,
            ))),
            (Command::Add, _, None) => Err(CniError::new(
                code::IO_FAILURE,
                "terwayd answered ADD without an address",
            )),
            _ => Ok(None),
        },
    }
}
