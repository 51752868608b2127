//! terway-ledger: inspect a terway-rs ledger offline.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use terway_statestore::*;

#[derive(Debug, Parser)]
#[command(name = "terway-ledger", version, about = "Inspect a terway-rs ledger offline")]
struct Cli {
    /// The ledger directory.
    #[arg(long, global = true, default_value = "/var/lib/terway/ledger")]
    path: PathBuf,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    /// Read a copy of the ledger (for a ledger terwayd holds open).
    #[arg(long, global = true)]
    snapshot: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pool counts per ENI and state.
    Summary,
    /// Pods and their addresses.
    Pods,
    /// Every address and its state.
    Ips,
    /// ENIs.
    Enis,
    /// Cloud mutations recorded but not yet resolved.
    Intents,
    /// Cross-tree consistency: exit 0 when consistent, 1 with the problems.
    Check,
    /// Everything, as JSON in the stable export schema.
    Export,
    /// Move inconsistent records aside (kept in the quarantine tree).
    Repair,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("terway-ledger: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn open(cli: &Cli, writable: bool) -> anyhow::Result<(Ledger, Option<tempfile::TempDir>)> {
    let opts = OpenOptions {
        must_exist: true,
        read_only: !writable,
        ..OpenOptions::default()
    };
    if cli.snapshot {
        anyhow::ensure!(
            !writable,
            "--snapshot reads a copy; repair must run on the ledger itself, with terwayd stopped"
        );
        let (ledger, dir) = Ledger::open_snapshot(&cli.path).context("reading a snapshot")?;
        return Ok((ledger, Some(dir)));
    }
    Ok((Ledger::open_with(&cli.path, &opts)?, None))
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", terway_statestore::table::render(headers, &rows));
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let writable = matches!(cli.command, Command::Repair);
    let (ledger, _snapshot_dir) = open(cli, writable)?;
    let s = ledger.snapshot();
    match cli.command {
        Command::Summary => {
            let mut rows = Vec::new();
            let mut out = serde_json::Map::new();
            for (id, eni) in &s.enis {
                let counts: Vec<usize> = ["idle", "bound", "cooling", "releasing"]
                    .iter()
                    .map(|st| s.count(id, st))
                    .collect();
                out.insert(id.clone(), serde_json::json!({
                    "vswitch_id": eni.vswitch_id, "status": eni.status, "owner": eni.owner.as_ref().map(ToString::to_string),
                    "idle": counts[0], "bound": counts[1], "cooling": counts[2], "releasing": counts[3],
                }));
                let mut row = vec![id.clone(), eni.vswitch_id.clone(), format!("{:?}", eni.status)];
                row.extend(counts.iter().map(ToString::to_string));
                rows.push(row);
            }
            let total = |st: &str| s.ips.values().filter(|r| r.state.name() == st).count();
            let totals = serde_json::json!({"idle": total("idle"), "bound": total("bound"), "cooling": total("cooling"),
                "releasing": total("releasing"), "pods": s.pods.len(), "enis": s.enis.len(), "intents": s.intents.len()});
            if cli.json {
                print_json(&serde_json::json!({"enis": out, "totals": totals}))?;
            } else {
                table(
                    &["ENI", "VSWITCH", "STATUS", "IDLE", "BOUND", "COOLING", "RELEASING"],
                    rows,
                );
                println!(
                    "\ntotal: {} idle, {} bound, {} cooling, {} releasing; {} pods, {} ENIs, {} unresolved intents",
                    totals["idle"],
                    totals["bound"],
                    totals["cooling"],
                    totals["releasing"],
                    totals["pods"],
                    totals["enis"],
                    totals["intents"]
                );
            }
        }
        Command::Pods => {
            if cli.json {
                print_json(&s.pods.values().collect::<Vec<_>>())?;
            } else {
                let rows = s
                    .pods
                    .values()
                    .map(|p| {
                        vec![
                            p.pod.to_string(),
                            p.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                            p.eni_id.clone().unwrap_or_else(|| "-".into()),
                            p.container_id.chars().take(12).collect(),
                            p.netns.clone(),
                        ]
                    })
                    .collect();
                table(&["POD", "IPS", "EXCLUSIVE ENI", "CONTAINER", "NETNS"], rows);
            }
        }
        Command::Ips => {
            if cli.json {
                print_json(&s.ips.values().collect::<Vec<_>>())?;
            } else {
                let rows = s
                    .ips
                    .values()
                    .map(|r| {
                        let detail = match &r.state {
                            IpState::Bound(b) => b.pod.to_string(),
                            IpState::Cooling { until } => format!("until {until} ms"),
                            _ => String::new(),
                        };
                        vec![r.ip.to_string(), r.eni_id.clone(), r.state.name().to_owned(), detail]
                    })
                    .collect();
                table(&["IP", "ENI", "STATE", "DETAIL"], rows);
            }
        }
        Command::Enis => {
            if cli.json {
                print_json(&s.enis.values().collect::<Vec<_>>())?;
            } else {
                let rows = s
                    .enis
                    .values()
                    .map(|e| {
                        vec![
                            e.id.clone(),
                            e.mac.clone(),
                            e.vswitch_id.clone(),
                            e.cidr.clone(),
                            e.gateway.to_string(),
                            e.primary_ip.to_string(),
                            format!("{:?}", e.status),
                            e.route_table.to_string(),
                            e.owner.as_ref().map_or("-".into(), ToString::to_string),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "ENI",
                        "MAC",
                        "VSWITCH",
                        "CIDR",
                        "GATEWAY",
                        "PRIMARY IP",
                        "STATUS",
                        "TABLE",
                        "OWNER",
                    ],
                    rows,
                );
            }
        }
        Command::Intents => {
            if cli.json {
                print_json(&s.intents.values().collect::<Vec<_>>())?;
            } else {
                let rows = s
                    .intents
                    .values()
                    .map(|i| {
                        vec![
                            i.id.to_string(),
                            serde_json::to_value(&i.kind)
                                .ok()
                                .and_then(|v| v["kind"].as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            serde_json::to_string(&i.kind).unwrap_or_default(),
                            i.client_token.clone().unwrap_or_else(|| "-".into()),
                            i.created_at.to_string(),
                        ]
                    })
                    .collect();
                table(&["ID", "KIND", "PARAMETERS", "CLIENT TOKEN", "CREATED (ms)"], rows);
            }
        }
        Command::Check => {
            let problems = ledger.check();
            if cli.json {
                print_json(&serde_json::json!({"consistent": problems.is_empty(), "problems": problems}))?;
            } else if problems.is_empty() {
                println!(
                    "consistent: {} ENIs, {} addresses, {} pods, {} intents",
                    s.enis.len(),
                    s.ips.len(),
                    s.pods.len(),
                    s.intents.len()
                );
            } else {
                for p in &problems {
                    println!("{p}");
                }
                println!(
                    "{} problem(s); `terway-ledger repair` moves these records aside",
                    problems.len()
                );
            }
            return Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Export => print_json(&ledger.export()?)?,
        Command::Repair => {
            let moved = ledger.repair()?;
            if cli.json {
                print_json(&serde_json::json!({"moved": moved}))?;
            } else if moved.is_empty() {
                println!("nothing to repair");
            } else {
                for p in &moved {
                    println!("moved aside {p}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
