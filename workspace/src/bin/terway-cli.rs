//! terway-cli: look into a live node and the cloud around it.
//!
//! `status`, `pods` and `enis` ask the terwayd of this node over its socket
//! (root only, like the socket). `vswitches`, `eni gc` and `max-pods` ask
//! the cloud, with the credentials and endpoints of the node's config unless
//! flags say otherwise. Tables by default, `--json` everywhere.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use terway_cloud::api::{DeleteNetworkInterface, DescribeNetworkInterfaces, DescribeVSwitches};
use terway_cloud::credentials::CredentialFiles;
use terway_cloud::safety::{reason_to_keep, DeletionRules};
use terway_cloud::{ClientOptions, CloudClient, CredentialProvider, MetadataClient};
use terway_config::{Config, Secret};
use terway_node::cni::exchange;
use terway_node::cni::protocol::{Inspect, Reply, Request};
use terway_node::daemon::{CREATOR_TAG, NODE_TAG};
use terway_statestore::table;

#[derive(Debug, Parser)]
#[command(
    name = "terway-cli",
    version,
    about = "Look into a terway-rs node and the cloud around it"
)]
struct Cli {
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// terwayd's socket.
    #[arg(long, global = true, default_value = terway_config::defaults::SOCKET_PATH)]
    socket: PathBuf,
    /// The node's eni_conf (for credentials, endpoints and vSwitches); optional.
    #[arg(long, global = true, default_value = terway_config::defaults::CONFIG_PATH)]
    config: PathBuf,
    /// ECS and VPC API endpoint (both), e.g. https://ecs-vpc.cn-hangzhou.aliyuncs.com.
    #[arg(long, global = true)]
    endpoint: Option<String>,
    /// The instance metadata service.
    #[arg(long, global = true)]
    metadata_endpoint: Option<String>,
    /// Region (default: the instance's, from the metadata service).
    #[arg(long, global = true)]
    region: Option<String>,
    #[arg(long, global = true, env = "ALIBABA_CLOUD_ACCESS_KEY_ID")]
    access_key_id: Option<String>,
    #[arg(long, global = true, env = "ALIBABA_CLOUD_ACCESS_KEY_SECRET", hide_env_values = true)]
    access_key_secret: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Config in force, pool, ENIs, vSwitches set aside, last reconcile.
    Status,
    /// Pods with an address on this node.
    Pods,
    /// ENIs of this node and their addresses.
    Enis,
    /// vSwitches of the zone with the free addresses the cloud reports.
    Vswitches {
        /// Zone (default: the instance's).
        #[arg(long)]
        zone: Option<String>,
    },
    /// ENIs.
    Eni {
        #[command(subcommand)]
        command: EniCmd,
    },
    /// Pods an instance type can serve (via DescribeInstanceTypes).
    MaxPods {
        #[arg(long)]
        instance_type: String,
    },
    /// NetworkPolicy.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Would a new connection pass, and which policy and rule decided (Calico
    /// and Kubernetes policies in Calico's order) — from the live terwayd, or
    /// (`--offline`) from YAML files alone.
    Explain {
        /// NAMESPACE/POD or an address.
        #[arg(long)]
        from: String,
        /// NAMESPACE/POD or an address.
        #[arg(long)]
        to: String,
        /// The destination port; for ICMP, the ICMP type (8: echo request).
        #[arg(long)]
        port: u16,
        /// TCP, UDP, SCTP or ICMP.
        #[arg(long, default_value = "TCP")]
        protocol: String,
        /// YAML files (multi-document) of Namespace, Pod, ServiceAccount and NetworkPolicy
        /// objects and Calico NetworkPolicy/GlobalNetworkPolicy; no daemon needed.
        #[arg(long, num_args = 1..)]
        offline: Vec<PathBuf>,
        /// Print {"allowed", "ingress", "egress"} as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EniCmd {
    /// ENIs terway-rs created that are left Available (not attached): a dry
    /// run lists them; `--yes` deletes them.
    Gc {
        /// Delete them.
        #[arg(long)]
        yes: bool,
        /// Every node's, not only this instance's.
        #[arg(long)]
        all_nodes: bool,
        /// Leave ENIs younger than this alone (one may be between create and attach).
        #[arg(long, default_value_t = 300)]
        min_age_seconds: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Cmd::Status => status(&cli, inspect(&cli, Inspect::Status)?),
        Cmd::Pods => pods(&cli, inspect(&cli, Inspect::Pods)?),
        Cmd::Enis => enis(&cli, &inspect(&cli, Inspect::Enis)?),
        Cmd::Vswitches { zone } => vswitches(&cli, zone.clone()).await,
        Cmd::Eni {
            command:
                EniCmd::Gc {
                    yes,
                    all_nodes,
                    min_age_seconds,
                },
        } => eni_gc(&cli, *yes, *all_nodes, Duration::from_secs(*min_age_seconds)).await,
        Cmd::MaxPods { instance_type } => max_pods(&cli, instance_type).await,
        Cmd::Policy {
            command:
                PolicyCmd::Explain {
                    from,
                    to,
                    port,
                    protocol,
                    offline,
                    json,
                },
        } => policy_explain(&cli, from, to, *port, protocol, offline, *json),
    }
}

fn policy_explain(
    cli: &Cli,
    from: &str,
    to: &str,
    port: u16,
    protocol: &str,
    offline: &[PathBuf],
    json: bool,
) -> anyhow::Result<()> {
    let verdict: Value = if offline.is_empty() {
        let request = Request::Explain {
            from: from.into(),
            to: to.into(),
            port,
            protocol: protocol.into(),
        };
        match exchange(&cli.socket, &request, Duration::from_secs(10)).map_err(|e| anyhow::anyhow!("{}", e.msg))? {
            Reply::Inspect { body } => body,
            Reply::Error { msg, .. } => bail!("terwayd: {msg}"),
            Reply::Ok { .. } => bail!("terwayd answered without a verdict (an older terwayd?)"),
        }
    } else {
        let (state, skipped) = terway_node::policy::offline::load_files(offline)?;
        for note in skipped {
            eprintln!("note: {note}");
        }
        serde_json::to_value(
            terway_node::policy::evaluate::explain_query(&state, from, to, port, protocol)
                .map_err(anyhow::Error::msg)?,
        )?
    };
    if json {
        return print_json(&verdict);
    }
    let word = |b: &Value| if b.as_bool() == Some(true) { "allowed" } else { "denied" };
    println!(
        "{}: {} -> {} {}/{}",
        word(&verdict["allowed"]),
        s(&verdict["from"]),
        s(&verdict["to"]),
        s(&verdict["protocol"]),
        verdict["port"]
    );
    for side in ["egress", "ingress"] {
        println!(
            "  {side:<8} {:<8} {}",
            word(&verdict[side]["allowed"]),
            s(&verdict[side]["reason"])
        );
        for logged in verdict[side]["logged_by"].as_array().into_iter().flatten() {
            println!(
                "  {:<17} logged by {} {side}[{}]",
                "",
                s(&logged["policy"]),
                logged["rule"]
            );
        }
    }
    Ok(())
}

fn inspect(cli: &Cli, what: Inspect) -> anyhow::Result<Value> {
    let reply = exchange(&cli.socket, &Request::Inspect { what }, Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("{}", e.msg))?;
    match reply {
        Reply::Inspect { body } => Ok(body),
        Reply::Error { msg, .. } => bail!("terwayd: {msg}"),
        Reply::Ok { .. } => bail!("terwayd answered without an inspection (an older terwayd?)"),
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn status(cli: &Cli, body: Value) -> anyhow::Result<()> {
    if cli.json {
        return print_json(&body);
    }
    let i = &body["instance"];
    println!(
        "instance     {} ({}, {}), node IP {}",
        s(&i["instance_id"]),
        s(&i["instance_type"]),
        s(&i["zone_id"]),
        s(&i["node_ip"])
    );
    match body["cluster"]["node_name"].as_str() {
        Some(n) => println!(
            "mode         cluster (node {n}), datapath {}",
            s(&body["datapath_mode"])
        ),
        None => println!("mode         standalone, datapath {}", s(&body["datapath_mode"])),
    }
    println!(
        "capacity     {} pods ({} ENIs × {} IPv4 each, primary excluded)",
        s(&body["max_pods"]),
        s(&body["limits"]["enis"]),
        s(&body["limits"]["ipv4_per_eni"])
    );
    let p = &body["pool"];
    println!(
        "pool         {} idle, {} bound, {} cooling, {} releasing, {} held by intents (bounds {}..{}); {} ADDs waiting",
        s(&p["idle"]),
        s(&p["bound"]),
        s(&p["cooling"]),
        s(&p["releasing"]),
        s(&p["held_by_intents"]),
        s(&p["min_pool_size"]),
        s(&p["max_pool_size"]),
        s(&p["waiting_adds"])
    );
    let aside: Vec<String> = body["vswitches_set_aside"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| format!("{} ({} s left)", s(&v["vswitch"]), s(&v["seconds_left"])))
        .collect();
    println!(
        "set aside    {}",
        if aside.is_empty() {
            "none".into()
        } else {
            aside.join(", ")
        }
    );
    let r = &body["reconcile"];
    let last = &r["last"];
    if last.is_object() {
        let ago = last["finished_at_ms"].as_u64().map_or("?".into(), |t| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            format!("{:.1} s ago", now.saturating_sub(t) as f64 / 1000.0)
        });
        println!(
            "reconcile    {} passes; last {ago}, took {} ms, {}",
            s(&r["passes"]),
            s(&last["took_ms"]),
            last["error"]
                .as_str()
                .map_or("succeeded".into(), |e| format!("failed: {e}"))
        );
    }
    if let Some(e) = r["last_error"].as_str() {
        println!("last error   {e}");
    }
    println!();
    enis(cli, &body["enis"])?;
    println!(
        "\nconfig in force (secrets redacted):\n{}",
        serde_json::to_string_pretty(&body["config"])?
    );
    Ok(())
}

fn pods(cli: &Cli, body: Value) -> anyhow::Result<()> {
    if cli.json {
        return print_json(&body);
    }
    let rows: Vec<Vec<String>> = body
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let ips: Vec<String> = p["ips"].as_array().into_iter().flatten().map(s).collect();
            vec![
                format!("{}/{}", s(&p["namespace"]), s(&p["name"])),
                ips.join(","),
                s(&p["eni_id"]),
                p["container_id"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .take(12)
                    .collect(),
                s(&p["netns"]),
            ]
        })
        .collect();
    print!("{}", table::render(&["POD", "IP", "ENI", "CONTAINER", "NETNS"], &rows));
    Ok(())
}

fn enis(cli: &Cli, body: &Value) -> anyhow::Result<()> {
    if cli.json {
        return print_json(body);
    }
    let count = |e: &Value, state: &str| e["ips"][state].as_array().map_or(0, Vec::len).to_string();
    let rows: Vec<Vec<String>> = body
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            vec![
                s(&e["id"]),
                s(&e["vswitch_id"]),
                s(&e["status"]),
                s(&e["mac"]),
                s(&e["route_table"]),
                count(e, "idle"),
                count(e, "bound"),
                count(e, "cooling"),
                s(&e["owner"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["ENI", "VSWITCH", "STATUS", "MAC", "TABLE", "IDLE", "BOUND", "COOLING", "OWNER"],
            &rows
        )
    );
    Ok(())
}

/// The cloud as the node's config (and the flags) reach it.
struct Cloud {
    client: CloudClient,
    metadata: Arc<MetadataClient>,
    config: Config,
    region: String,
}

impl Cloud {
    async fn connect(cli: &Cli) -> anyhow::Result<Self> {
        terway_cloud::install_crypto_provider();
        let config = if cli.config.exists() {
            Config::load(&cli.config, None)
                .with_context(|| format!("reading {}", cli.config.display()))?
                .config
        } else {
            Config::defaults()
        };
        let metadata_endpoint = cli
            .metadata_endpoint
            .clone()
            .unwrap_or_else(|| config.endpoints.metadata.clone());
        let metadata = Arc::new(MetadataClient::new(&metadata_endpoint, Duration::from_secs(3))?.with_attempts(2));
        let region = match &cli.region {
            Some(r) => r.clone(),
            None => {
                metadata
                    .identity()
                    .await
                    .with_context(|| {
                        format!(
                            "reading the region from the metadata service at {metadata_endpoint} (or pass --region)"
                        )
                    })?
                    .region_id
            }
        };
        let secret = cli.access_key_secret.clone().map(Secret::new);
        let (key, secret) = match (&cli.access_key_id, secret) {
            (Some(k), Some(s)) => (Some(k.as_str()), Some(s)),
            _ => (config.access_key.as_deref(), config.access_secret.clone()),
        };
        let credentials = Arc::new(CredentialProvider::chain(
            key,
            secret.as_ref(),
            &CredentialFiles::on_this_node(config.credential_path.clone()),
            metadata.clone(),
        ));
        let mut options = ClientOptions::from_config(&config, &region);
        if let Some(e) = &cli.endpoint {
            options = options.with_endpoint(e);
        }
        Ok(Self {
            client: CloudClient::new(options, credentials)?,
            metadata,
            config,
            region,
        })
    }
}

async fn vswitches(cli: &Cli, zone: Option<String>) -> anyhow::Result<()> {
    let cloud = Cloud::connect(cli).await?;
    let zone = match zone {
        Some(z) => z,
        None => {
            cloud
                .metadata
                .identity()
                .await
                .context("reading the zone (or pass --zone)")?
                .zone_id
        }
    };
    let configured = cloud.config.vswitches_in_zone(&zone);
    let list = cloud
        .client
        .describe_vswitches_all(DescribeVSwitches {
            region_id: cloud.region.clone(),
            zone_id: Some(zone.clone()),
            ..Default::default()
        })
        .await?;
    let rows: Vec<Value> = list
        .iter()
        .map(|v| {
            json!({
                "vswitch_id": v.vswitch_id,
                "zone_id": v.zone_id,
                "cidr": v.cidr_block,
                "available_ips": v.available_ip_address_count,
                "status": v.status,
                "configured": configured.contains(&v.vswitch_id),
            })
        })
        .collect();
    if cli.json {
        return print_json(&json!(rows));
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                s(&r["vswitch_id"]),
                s(&r["zone_id"]),
                s(&r["cidr"]),
                s(&r["available_ips"]),
                s(&r["status"]),
                if r["configured"] == true {
                    "yes".into()
                } else {
                    "".into()
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(
            &["VSWITCH", "ZONE", "CIDR", "FREE IPS", "STATUS", "CONFIGURED"],
            &table_rows
        )
    );
    Ok(())
}

async fn eni_gc(cli: &Cli, yes: bool, all_nodes: bool, min_age: Duration) -> anyhow::Result<()> {
    let cloud = Cloud::connect(cli).await?;
    let mut tags = vec![(CREATOR_TAG.0.to_owned(), CREATOR_TAG.1.to_owned())];
    let instance = if all_nodes {
        None
    } else {
        let id = cloud
            .metadata
            .identity()
            .await
            .context("reading this instance's id (or pass --all-nodes)")?
            .instance_id;
        tags.push((NODE_TAG.to_owned(), id.clone()));
        Some(id)
    };
    let available = cloud
        .client
        .describe_network_interfaces_all(DescribeNetworkInterfaces {
            region_id: cloud.region.clone(),
            status: Some("Available".into()),
            tags,
            max_results: Some(100),
            ..Default::default()
        })
        .await?;
    // the filters above are the server's; what is deleted is decided here
    let rules = DeletionRules {
        creator_tag: CREATOR_TAG,
        node_tag: instance.as_deref().map(|id| (NODE_TAG, id)),
        status: "Available",
        min_age,
        now: SystemTime::now(),
    };
    let mut rows = Vec::new();
    for eni in available {
        let action = match (reason_to_keep(&eni, &rules), yes) {
            (Some(why), _) => format!("kept: {why}"),
            (None, false) => "would delete (dry run; --yes deletes)".to_owned(),
            (None, true) => match cloud
                .client
                .call(&DeleteNetworkInterface {
                    region_id: cloud.region.clone(),
                    network_interface_id: eni.network_interface_id.clone(),
                })
                .await
            {
                Ok(r) => format!("deleted (RequestId {})", r.request_id),
                Err(e) => format!("delete failed: {e}"),
            },
        };
        rows.push(json!({
            "eni_id": eni.network_interface_id,
            "vswitch_id": eni.vswitch_id,
            "node": eni.tag(NODE_TAG),
            "created": eni.creation_time,
            "ips": eni.ipv4_addresses().iter().map(ToString::to_string).collect::<Vec<_>>(),
            "action": action,
        }));
    }
    if cli.json {
        return print_json(&json!(rows));
    }
    if rows.is_empty() {
        println!("no Available ENI created by terway-rs");
        return Ok(());
    }
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                s(&r["eni_id"]),
                s(&r["vswitch_id"]),
                s(&r["node"]),
                s(&r["created"]),
                s(&r["action"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table::render(&["ENI", "VSWITCH", "NODE", "CREATED", "ACTION"], &table_rows)
    );
    Ok(())
}

async fn max_pods(cli: &Cli, instance_type: &str) -> anyhow::Result<()> {
    let cloud = Cloud::connect(cli).await?;
    let t = cloud.client.instance_type(instance_type).await?;
    let limits = terway_config::capacity::InstanceLimits {
        enis: t.eni_quantity,
        ipv4_per_eni: t.eni_private_ip_address_quantity,
    };
    let shared = limits.enis.saturating_sub(1) * limits.ipv4_per_eni;
    let exclusive = limits.enis.saturating_sub(1);
    let body = json!({
        "instance_type": instance_type,
        "eni_quantity": t.eni_quantity,
        "ipv4_per_eni": t.eni_private_ip_address_quantity,
        "shared_eni_max_pods": shared,
        "exclusive_eni_max_pods": exclusive,
        "with_this_config": cloud.config.max_pods(limits),
    });
    if cli.json {
        return print_json(&body);
    }
    println!(
        "{instance_type}: {} ENIs × {} IPv4 each\n  shared ENI mode:    {shared} pods ((ENIs − 1) × IPs per ENI)\n  exclusive ENI mode: {exclusive} pods (ENIs − 1)\n  with {}: {}",
        t.eni_quantity,
        t.eni_private_ip_address_quantity,
        if cli.config.exists() { cli.config.display().to_string() } else { "the default config".into() },
        body["with_this_config"]
    );
    Ok(())
}
