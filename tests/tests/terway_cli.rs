//! `terway-cli` against a running terwayd on the emulator: every
//! subcommand, as tables and as `--json` that parses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use terway_cloud::api::CreateNetworkInterface;
use terway_cloud::emulator::{
    Emulator, Scenario, DEFAULT_ACCESS_KEY_ID, DEFAULT_ACCESS_KEY_SECRET, DEFAULT_INSTANCE_ID, DEFAULT_REGION,
    DEFAULT_SECURITY_GROUP,
};
use terway_cloud::{ClientOptions, CloudClient, CredentialProvider};
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};
use terway_node::daemon::NodeOptions;
use terway_node::service;

struct Cli<'a> {
    socket: &'a Path,
    config: &'a Path,
    url: String,
}

impl Cli<'_> {
    /// Runs terway-cli; returns (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(terway_tests::binary("terway-cli"))
            .arg("--socket")
            .arg(self.socket)
            .arg("--config")
            .arg(self.config)
            .args(["--endpoint", &self.url, "--metadata-endpoint", &self.url])
            .args(args)
            .env_remove("ALIBABA_CLOUD_ACCESS_KEY_ID")
            .env_remove("ALIBABA_CLOUD_ACCESS_KEY_SECRET")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (ok, out, err) = self.run(&all);
        assert!(ok, "terway-cli {args:?} failed: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("terway-cli {args:?} --json: {e}\n{out}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_against_a_live_daemon() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("eni_conf");
    std::fs::write(
        &conf,
        terway_tests::eni_conf(
            &em.url(),
            &["vsw-large0000000001"],
            r#", "max_pool_size": 5, "min_pool_size": 2"#,
        ),
    )
    .unwrap();
    let options = NodeOptions {
        add_deadline: Duration::from_secs(20),
        socket_path: Some(dir.path().join("eni.socket")),
        ledger_path: Some(dir.path().join("ledger")),
        metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Default::default()
    };
    let running = service::start(conf.clone(), None, options).await.unwrap();
    let socket = running.node.socket_path();
    let mut ips = Vec::new();
    for i in 0..3 {
        let request = PodRequest::new("default", &format!("web-{i}"), &format!("c-{i}"), "/var/run/netns/x");
        let s = socket.clone();
        let reply = tokio::task::spawn_blocking(move || exchange(&s, &Request::Add(request), Duration::from_secs(30)))
            .await
            .unwrap()
            .unwrap();
        let Reply::Ok { network: Some(n) } = reply else {
            panic!("{reply:?}")
        };
        ips.push(n.ipv4.trim_end_matches("/32").to_owned());
    }
    let cli = Cli {
        socket: &socket,
        config: &conf,
        url: em.url(),
    };

    // status
    let status = cli.json(&["status"]);
    assert_eq!(status["instance"]["instance_id"], DEFAULT_INSTANCE_ID);
    assert_eq!(status["mode"], "standalone");
    assert_eq!(status["pool"]["bound"], 3);
    assert_eq!(status["max_pods"], 30);
    assert_eq!(status["config"]["max_pool_size"], 5);
    assert!(status["reconcile"]["passes"].as_u64().unwrap() >= 1);
    let (ok, table, _) = cli.run(&["status"]);
    assert!(ok);
    assert!(
        table.contains(DEFAULT_INSTANCE_ID) && table.contains("3 bound"),
        "{table}"
    );
    for text in [status.to_string(), table] {
        assert!(!text.contains(DEFAULT_ACCESS_KEY_SECRET), "the secret leaked");
    }

    // pods and ENIs
    let pods = cli.json(&["pods"]);
    let mut listed: Vec<String> = pods
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ips"][0].as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    ips.sort();
    assert_eq!(listed, ips);
    // a shared-ENI pod shows the ENI its address is on
    for p in pods.as_array().unwrap() {
        let ip: std::net::IpAddr = p["ips"][0].as_str().unwrap().parse().unwrap();
        let eni = running.node.ledger.eni_of_ip(&ip).unwrap();
        assert_eq!(p["eni_id"], eni.id.as_str(), "{p}");
    }
    let (_, table, _) = cli.run(&["pods"]);
    assert!(table.starts_with("POD") && table.contains("default/web-1"), "{table}");
    let enis = cli.json(&["enis"]);
    let ledger = running.node.ledger.snapshot();
    let ids: Vec<&str> = enis
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ledger.enis.keys().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(enis[0]["ips"]["bound"].as_array().unwrap().len(), 3);

    // vSwitches, from the cloud
    let vswitches = cli.json(&["vswitches"]);
    let large = vswitches
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["vswitch_id"] == "vsw-large0000000001")
        .unwrap();
    assert_eq!(large["configured"], true);
    assert_eq!(
        large["available_ips"].as_u64(),
        em.available_addresses("vsw-large0000000001")
    );
    let (_, table, _) = cli.run(&["vswitches"]);
    assert!(table.contains("vsw-small0000000001") && table.contains("FREE IPS"));

    // max-pods
    let m = cli.json(&["max-pods", "--instance-type", "ecs.g6.8xlarge"]);
    assert_eq!(m["shared_eni_max_pods"], 140, "(8 − 1) × 20");
    assert_eq!(m["exclusive_eni_max_pods"], 7);
    let (ok, _, err) = cli.run(&["max-pods", "--instance-type", "ecs.nope"]);
    assert!(!ok && err.contains("ecs.nope"), "{err}");

    // eni gc: an ENI terway-rs made for another node, left Available
    terway_cloud::install_crypto_provider();
    let client = CloudClient::new(
        ClientOptions::for_region(DEFAULT_REGION, false).with_endpoint(&em.url()),
        Arc::new(CredentialProvider::static_keys(
            DEFAULT_ACCESS_KEY_ID,
            terway_config::Secret::new(DEFAULT_ACCESS_KEY_SECRET),
        )),
    )
    .unwrap();
    let leftover = client
        .call(&CreateNetworkInterface {
            region_id: DEFAULT_REGION.into(),
            vswitch_id: "vsw-large0000000001".into(),
            security_group_ids: vec![DEFAULT_SECURITY_GROUP.into()],
            tags: vec![
                ("creator".into(), "terway".into()),
                ("terway.alibabacloud.com/node".into(), "i-gone0000000001".into()),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .eni
        .network_interface_id;
    let exists = |id: &str| em.dump()["enis"].as_array().unwrap().iter().any(|e| e["id"] == id);
    assert!(exists(&leftover));
    let this_node = cli.json(&["eni", "gc", "--min-age-seconds", "0"]);
    assert!(
        this_node.as_array().unwrap().is_empty(),
        "another node's ENI is not this node's: {this_node}"
    );
    let dry = cli.json(&["eni", "gc", "--all-nodes", "--min-age-seconds", "0"]);
    assert_eq!(dry[0]["eni_id"], leftover.as_str());
    assert!(dry[0]["action"].as_str().unwrap().starts_with("would delete"));
    assert!(exists(&leftover), "a dry run deletes nothing");
    let young = cli.json(&["eni", "gc", "--all-nodes", "--yes"]);
    assert!(young[0]["action"].as_str().unwrap().starts_with("kept"), "{young}");
    let done = cli.json(&["eni", "gc", "--all-nodes", "--yes", "--min-age-seconds", "0"]);
    assert!(done[0]["action"].as_str().unwrap().starts_with("deleted"), "{done}");
    assert!(!exists(&leftover), "the leftover ENI is gone");

    // a gateway that ignores the Status and Tag filters answers with every
    // ENI of the region: the primary ENI, the node's InUse ones, and an
    // Available ENI somebody else made; gc deletes none of them
    let foreign = client
        .call(&CreateNetworkInterface {
            region_id: DEFAULT_REGION.into(),
            vswitch_id: "vsw-large0000000001".into(),
            security_group_ids: vec![DEFAULT_SECURITY_GROUP.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .eni
        .network_interface_id;
    em.set_faults(terway_cloud::emulator::Faults {
        ignore_filters: true,
        ..Default::default()
    });
    let before = em.dump()["enis"].as_array().unwrap().len();
    for args in [
        &["eni", "gc", "--yes", "--min-age-seconds", "0"][..],
        &["eni", "gc", "--all-nodes", "--yes", "--min-age-seconds", "0"][..],
    ] {
        let rows = cli.json(args);
        assert!(
            rows.as_array().unwrap().len() >= 3,
            "the unfiltered answer is listed: {rows}"
        );
        for row in rows.as_array().unwrap() {
            assert!(row["action"].as_str().unwrap().starts_with("kept: "), "{row}");
        }
        let primary = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["eni_id"] != foreign.as_str() && r["action"].as_str().unwrap().contains("Primary"));
        assert!(primary.is_some(), "the primary ENI is kept as such: {rows}");
    }
    assert!(exists(&foreign));
    assert_eq!(em.dump()["enis"].as_array().unwrap().len(), before, "nothing deleted");
    em.set_faults(terway_cloud::emulator::Faults::default());

    // a node where terwayd is not serving: a clear error naming the socket
    let missing = dir.path().join("nothing.socket");
    let down = Cli {
        socket: &missing,
        config: &conf,
        url: em.url(),
    };
    let (ok, _, err) = down.run(&["status"]);
    assert!(!ok && err.contains("nothing.socket"), "{err}");
    running.stop();
}

#[test]
fn policy_explain_offline_reads_yaml_and_names_the_deciding_rule() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop, name: db, labels: {app: db}}
spec: {containers: [{name: db, image: pg, ports: [{name: pg, containerPort: 5432}]}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop, name: web, labels: {app: web}}
spec: {containers: [{name: web, image: nginx}]}
status: {podIPs: [{ip: 10.0.1.7}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: shop, name: db-from-web}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: nobody}}}]
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: pg}]
"#,
    )
    .unwrap();
    let explain = |from: &str, to: &str, port: &str| explain_offline(&[&file], from, to, port, "TCP").0;
    // the named port resolves on the destination pod; rule 1 of the policy decides
    let v = explain("shop/web", "shop/db", "5432");
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(
        v["ingress"]["allowed_by"],
        serde_json::json!({"policy": "shop/db-from-web", "rule": 1, "action": "Allow"})
    );
    let v = explain("shop/web", "10.0.0.5", "80");
    assert_eq!(v["allowed"], false, "{v}");
    assert_eq!(v["ingress"]["policies"], serde_json::json!(["shop/db-from-web"]));
    assert_eq!(v["egress"]["allowed"], true);
    // bad input names the value
    let out = std::process::Command::new(terway_tests::binary("terway-cli"))
        .args([
            "policy",
            "explain",
            "--from",
            "shop/nope",
            "--to",
            "shop/db",
            "--port",
            "1",
            "--offline",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pod shop/nope"));
}

#[test]
fn policy_explain_offline_walks_calico_and_kubernetes_policies_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    let calico = dir.path().join("calico.yaml");
    std::fs::write(
        &cluster,
        r#"apiVersion: v1
kind: Pod
metadata: {namespace: shop, name: db, labels: {app: db}}
spec: {containers: [{name: db, image: pg}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {namespace: shop, name: web, labels: {app: web}}
spec: {serviceAccountName: web, containers: [{name: web, image: nginx}]}
status: {podIP: 10.0.1.7}
---
apiVersion: v1
kind: Pod
metadata: {namespace: lab, name: probe, labels: {app: probe}}
spec: {containers: [{name: probe, image: busybox}]}
status: {podIP: 10.0.2.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {namespace: shop, name: db-from-shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {}}]}]
"#,
    )
    .unwrap();
    // calicoctl's form and the stored CRD form in one file, and one policy
    // with a selector that does not parse
    std::fs::write(
        &calico,
        r#"apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: quarantine}
spec:
  order: 10
  selector: app == 'db'
  ingress:
  - action: Log
  - action: Deny
    source: {selector: "projectcalico.org/namespace == 'lab'"}
  - action: Pass
    protocol: ICMP
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {namespace: shop, name: after-kubernetes}
spec:
  order: 2000
  selector: all()
  ingress: [{action: Deny}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: broken}
spec:
  selector: app ==
"#,
    )
    .unwrap();
    let explain = |from: &str, to: &str, port: &str, protocol: &str| {
        explain_offline(&[&cluster, &calico], from, to, port, protocol)
    };
    // order 10 denies lab's pods before the Kubernetes policy (order 1000) is reached
    let (v, notes) = explain("lab/probe", "shop/db", "5432", "TCP");
    assert_eq!(v["allowed"], false, "{v}");
    assert_eq!(
        v["ingress"]["denied_by"],
        serde_json::json!({"policy": "GlobalNetworkPolicy quarantine", "rule": 1, "action": "Deny"})
    );
    assert_eq!(v["ingress"]["logged_by"][0]["rule"], 0, "{v}");
    assert_eq!(
        v["ingress"]["policies"],
        serde_json::json!([
            "GlobalNetworkPolicy quarantine",
            "shop/db-from-shop",
            "NetworkPolicy shop/after-kubernetes"
        ])
    );
    assert!(
        notes.contains("GlobalNetworkPolicy broken is left out") && notes.contains("at position 6"),
        "{notes}"
    );
    // from shop: the Kubernetes policy at 1000 allows before the Deny at 2000
    let (v, _) = explain("shop/web", "shop/db", "5432", "TCP");
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(
        v["ingress"]["allowed_by"],
        serde_json::json!({"policy": "shop/db-from-shop", "rule": 0, "action": "Allow"})
    );
    // ICMP from outside the cluster: Pass at order 10 skips every later policy
    let (v, _) = explain("192.0.2.1", "shop/db", "8", "ICMP");
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(v["ingress"]["allowed_by"]["action"], "Pass", "{v}");
}

/// `terway-cli policy explain --json --offline FILES…`: the verdict, and what it said on stderr.
fn explain_offline(
    files: &[&std::path::Path],
    from: &str,
    to: &str,
    port: &str,
    protocol: &str,
) -> (serde_json::Value, String) {
    let out = std::process::Command::new(terway_tests::binary("terway-cli"))
        .args([
            "policy",
            "explain",
            "--from",
            from,
            "--to",
            to,
            "--port",
            port,
            "--protocol",
            protocol,
            "--json",
            "--offline",
        ])
        .args(files)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        serde_json::from_slice(&out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// terway-cli reads `credential_path` like terwayd: with no keys configured
/// and no RAM role, its cloud calls are signed with the decrypted file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_commands_sign_with_the_ack_credential_file() {
    let em = Emulator::start(Scenario {
        ram_role: None,
        ..Scenario::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token-config");
    terway_tests::write_token_file(
        &token,
        "abcdef0123456789",
        &em.issue_sts_credentials(Duration::from_secs(3600)),
    );
    let conf = dir.path().join("eni_conf");
    std::fs::write(
        &conf,
        format!(
            r#"{{"credential_path": "{}", "ecs_endpoint": "{url}", "vpc_endpoint": "{url}", "metadata_endpoint": "{url}"}}"#,
            token.display(),
            url = em.url()
        ),
    )
    .unwrap();
    let cli = Cli {
        socket: &dir.path().join("no.socket"),
        config: &conf,
        url: em.url(),
    };
    let (ok, out, err) = cli.run(&["vswitches"]);
    assert!(ok && out.contains("vsw-large0000000001"), "{out}{err}");
    // the same file damaged: no source is left, and the error says why
    std::fs::write(&token, r#"{"keyring": "abcdef0123456789", "access.key.id": "!!"}"#).unwrap();
    let (ok, _, err) = cli.run(&["vswitches"]);
    assert!(
        !ok && err.contains("token-config") && err.contains("access.key.id"),
        "{err}"
    );
}
