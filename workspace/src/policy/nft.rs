//! Runs `nft` (Debian's `nftables` package): one script, one transaction.
//! In a namespace other than the process's own, the binary is started from
//! a thread switched into that namespace, so it inherits it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run {binary}: {source} (install Debian's `nftables` package)")]
    Spawn { binary: String, source: std::io::Error },
    #[error("nft rejected the transaction: {stderr}")]
    Rejected { stderr: String },
    #[error("network namespace {path}: {message}")]
    Netns { path: PathBuf, message: String },
}

/// Where `nft` runs.
#[derive(Debug, Clone)]
pub struct Nft {
    binary: String,
    netns: Option<PathBuf>,
}

impl Nft {
    /// `nft` from `PATH` (or `TERWAY_NFT`), in the namespace at `netns` (`None`: this process's).
    pub fn new(netns: Option<&Path>) -> Self {
        Self {
            binary: std::env::var("TERWAY_NFT").unwrap_or_else(|_| "nft".into()),
            netns: netns.map(Path::to_path_buf),
        }
    }

    /// Runs `args` with `input` on stdin; returns stdout.
    pub fn run(&self, args: &[&str], input: &str) -> Result<String, NftError> {
        let spawn = || {
            Command::new(&self.binary)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
        };
        let child = match &self.netns {
            None => spawn(),
            Some(path) => terway_datapath::netns::NetNs::open(path)
                .and_then(|ns| ns.enter(spawn))
                .map_err(|e| NftError::Netns {
                    path: path.clone(),
                    message: e.to_string(),
                })?,
        };
        let mut child = child.map_err(|source| NftError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            // a write error shows up as nft's own failure below
            let _ = stdin.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(|source| NftError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(NftError::Rejected {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            })
        }
    }

    /// Applies a script atomically (`nft -f -`).
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        self.run(&["-f", "-"], script).map(|_| ())
    }

    /// Removes the table, if it is there.
    pub fn remove_table(&self) -> Result<(), NftError> {
        self.apply(&format!("add table {t}\ndelete table {t}\n", t = super::ruleset::TABLE))
    }

    /// The table as `nft -j list table` prints it; `None` when absent.
    pub fn list_json(&self) -> Result<Option<serde_json::Value>, NftError> {
        match self.run(&["-j", "list", "table", "inet", "terway"], "") {
            Ok(out) => Ok(serde_json::from_str(&out).ok()),
            Err(NftError::Rejected { stderr }) if stderr.contains("No such file") => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Packets dropped per isolated pod interface, read from the drop counters.
pub fn dropped_per_interface(listing: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for item in listing["nftables"].as_array().into_iter().flatten() {
        let rule = &item["rule"];
        let Some(chain) = rule["chain"].as_str() else { continue };
        let Some(ifname) = chain.strip_prefix("in_").or_else(|| chain.strip_prefix("eg_")) else {
            continue;
        };
        for e in rule["expr"].as_array().into_iter().flatten() {
            if let Some(n) = e["counter"]["packets"].as_u64() {
                *out.entry(ifname.to_owned()).or_insert(0) += n;
            }
        }
    }
    out
}
