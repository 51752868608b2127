//! Loading, validation and merge patches of eni_conf files.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![recursion_limit = "256"]

use serde_json::json;
use std::time::Duration;
use terway_config::*;

const SEED: &str = r#"{
"version": "1",
"max_pool_size": 25,
"min_pool_size": 10,
"vswitches": {"cn-shanghai-f":["vsw-AAA", "vsw-BBB"]},
"service_cidr": "172.21.0.0/20",
"security_group": "sg-CCC"
}"#;

fn errors_of(text: &str) -> Vec<Diagnostic> {
    match Config::parse(text, None) {
        Err(ConfigError::Invalid { errors, .. }) => errors,
        other => panic!("expected validation errors for {text}, got {other:?}"),
    }
}

/// Asserts exactly one error, at `path`, whose value text contains `value`.
fn assert_one_error(text: &str, path: &str, value: &str) -> Diagnostic {
    let errors = errors_of(text);
    assert_eq!(errors.len(), 1, "{text}: {errors:#?}");
    let e = errors.into_iter().next().unwrap();
    assert_eq!(e.path, path, "{e}");
    assert!(
        e.value.as_deref().unwrap_or("").contains(value),
        "value {value:?} not in {e}"
    );
    assert!(e.to_string().contains(path), "{e}");
    e
}

#[test]
fn seed_example_loads_unchanged() {
    let loaded = Config::parse(SEED, None).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.version.as_deref(), Some("1"));
    assert_eq!(c.max_pool_size, 25);
    assert_eq!(c.min_pool_size, 10);
    assert_eq!(c.vswitches_in_zone("cn-shanghai-f"), ["vsw-AAA", "vsw-BBB"]);
    assert_eq!(c.service_cidr.ipv4.unwrap().to_string(), "172.21.0.0/20");
    assert_eq!(c.security_groups, ["sg-CCC"]);
    // upstream defaults
    assert_eq!(c.vswitch_selection_policy, VSwitchSelectionPolicy::Random);
    assert_eq!(c.ip_stack, IpStack::Ipv4);
    assert_eq!(c.eni_selection_policy, EniSelectionPolicy::MostIps);
    assert_eq!(c.eni_cap_ratio, 1.0);
    assert!(c.enable_patch_pod_ips);
    assert_eq!(c.ip_pool_sync_period, Duration::from_secs(120));
    assert_eq!(c.idle_ip_reclaim.after, None);
    assert_eq!(c.idle_ip_reclaim.interval, Duration::from_secs(600));
    assert_eq!(c.idle_ip_reclaim.batch_size, 5);
    assert_eq!(c.rate_limit["DescribeNetworkInterfaces"], 800);
    assert_eq!(c.backoff["eni_create"].steps, 2);
    assert_eq!(c.datapath_mode, DatapathMode::Veth);
    assert_eq!(c.ledger_path.to_str(), Some("/var/lib/terway/ledger"));
}

#[test]
fn every_field_loads() {
    let text = json!({
        "version": "1",
        "access_key": "LTAI5tExample",
        "access_secret": "s3cr3t-value",
        "credential_path": "/var/addon/token-config",
        "region_id": "cn-shanghai",
        "service_cidr": "172.21.0.0/20,fd00:21::/112",
        "vswitches": {"cn-shanghai-f": ["vsw-AAA"], "cn-shanghai-g": ["vsw-CCC", "vsw-DDD"]},
        "vswitch_selection_policy": "ordered",
        "security_group": "sg-1",
        "security_groups": ["sg-2", "sg-1"],
        "resource_group_id": "rg-abc",
        "eni_tags": {"team": "net"},
        "eni_tag_filter": {"cluster": "c1"},
        "eni_tag_block_list": [{"key": "keep", "value": "me"}],
        "max_pool_size": 30,
        "min_pool_size": 5,
        "min_eni": 1,
        "max_eni": 3,
        "eni_cap_ratio": 0.5,
        "eni_cap_shift": 1,
        "ip_warm_up_size": 8,
        "idle_ip_reclaim_after": "1h30m",
        "idle_ip_reclaim_interval": "90s",
        "idle_ip_reclaim_batch_size": 3,
        "idle_ip_reclaim_jitter_factor": "0.2",
        "ip_pool_sync_period": "2m",
        "ip_stack": "dual",
        "eni_selection_policy": "least_ips",
        "rate_limit": {"AssignPrivateIpAddresses": 100},
        "backoff_override": {"eni_create": {"Duration": 1_000_000_000u64, "Steps": 4}, "eni_ops": {"Duration": "3s", "Cap": "30s"}},
        "kube_client_qps": 20.5,
        "kube_client_burst": 40,
        "enable_patch_pod_ips": false,
        "disable_network_policy": "true",
        "custom_stateful_workload_kinds": ["CloneSet"],
        "disable_device_plugin": true,
        "ledger_path": "/tmp/ledger",
        "socket_path": "/tmp/eni.socket",
        "metrics_address": "127.0.0.1:9999",
        "ecs_endpoint": "http://127.0.0.1:8080",
        "vpc_endpoint": "vpc.example.com",
        "metadata_endpoint": "http://127.0.0.1:8081/",
        "use_public_endpoint": true,
        "ip_cooldown": "10s",
        "vswitch_cooldown": "5m",
        "datapath_mode": "ipvlan",
        "mtu": 9000
    })
    .to_string();
    let loaded = Config::parse(&text, None).unwrap();
    // every key is read; those terway-rs does not act on yet each say so
    let mut warned: Vec<&str> = loaded.warnings.iter().map(|w| w.path.as_str()).collect();
    warned.sort_unstable();
    assert_eq!(
        warned,
        [
            "backoff_override",
            "custom_stateful_workload_kinds",
            "disable_device_plugin",
            "idle_ip_reclaim_after",
            "idle_ip_reclaim_batch_size",
            "idle_ip_reclaim_interval",
            "idle_ip_reclaim_jitter_factor",
            "ip_warm_up_size",
        ],
        "{:?}",
        loaded.warnings
    );
    assert!(loaded.warnings.iter().all(|w| w.message.contains("no effect")));
    let c = loaded.config;
    assert_eq!(c.access_secret.as_ref().unwrap().expose(), "s3cr3t-value");
    assert_eq!(c.service_cidr.ipv6.unwrap().to_string(), "fd00:21::/112");
    assert_eq!(c.vswitches.len(), 2);
    assert_eq!(c.vswitch_selection_policy, VSwitchSelectionPolicy::Ordered);
    assert_eq!(c.security_groups, ["sg-1", "sg-2"]);
    assert_eq!(c.eni_tags["team"], "net");
    assert_eq!(c.eni_tag_filter["cluster"], "c1");
    assert_eq!(c.eni_tag_block_list.len(), 3);
    assert_eq!((c.max_pool_size, c.min_pool_size, c.min_eni, c.max_eni), (30, 5, 1, 3));
    assert_eq!((c.eni_cap_ratio, c.eni_cap_shift), (0.5, 1));
    assert_eq!(c.ip_warm_up_size, Some(8));
    assert_eq!(c.idle_ip_reclaim.after, Some(Duration::from_secs(5400)));
    assert_eq!(c.idle_ip_reclaim.interval, Duration::from_secs(90));
    assert_eq!(c.idle_ip_reclaim.batch_size, 3);
    assert_eq!(c.idle_ip_reclaim.jitter_factor, 0.2);
    assert_eq!(c.ip_pool_sync_period, Duration::from_secs(120));
    assert_eq!(c.ip_stack, IpStack::Dual);
    assert_eq!(c.eni_selection_policy, EniSelectionPolicy::LeastIps);
    assert_eq!(c.rate_limit["AssignPrivateIpAddresses"], 100);
    assert_eq!(c.rate_limit["CreateNetworkInterface"], 500, "others keep their default");
    assert_eq!(c.backoff["eni_create"].duration, Duration::from_secs(1));
    assert_eq!(c.backoff["eni_create"].steps, 4);
    assert_eq!(c.backoff["eni_create"].factor, 2.0, "unset fields keep the default");
    assert_eq!(c.backoff["eni_ops"].cap, Some(Duration::from_secs(30)));
    assert_eq!((c.kube_client_qps, c.kube_client_burst), (20.5, 40));
    assert!(!c.enable_patch_pod_ips);
    assert!(c.disable_network_policy);
    assert_eq!(c.custom_stateful_workload_kinds, ["cloneset", "statefulset"]);
    assert!(c.disable_device_plugin);
    assert_eq!(c.socket_path.to_str(), Some("/tmp/eni.socket"));
    assert_eq!(c.metrics_address.to_string(), "127.0.0.1:9999");
    assert_eq!(c.endpoints.ecs.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(c.endpoints.metadata, "http://127.0.0.1:8081");
    assert!(c.endpoints.public);
    assert_eq!(c.ip_cooldown, Duration::from_secs(10));
    assert_eq!(c.vswitch_cooldown, Duration::from_secs(300));
    assert_eq!(c.datapath_mode, DatapathMode::Ipvlan);
    assert_eq!(c.mtu, 9000);

    let shown = format!("{c:?}\n{}", c.to_redacted_json());
    assert!(!shown.contains("s3cr3t-value"), "secret leaked: {shown}");
}

#[test]
fn configmap_mount_directory_and_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("eni_conf"), SEED).unwrap();
    let from_dir = Config::load(dir.path(), None).unwrap().config;
    let from_file = Config::load(&dir.path().join("eni_conf"), None).unwrap().config;
    assert_eq!(from_dir, from_file);
    assert_eq!(from_dir.max_pool_size, 25);
}

#[test]
fn each_invalid_case_names_path_and_value() {
    let e = assert_one_error(r#"{"max_pool_size": -3}"#, "max_pool_size", "-3");
    assert!(e.message.contains("negative"), "{e}");
    let e = assert_one_error(r#"{"max_pool_size": 1000000}"#, "max_pool_size", "1000000");
    assert!(e.message.contains("absurd"), "{e}");
    assert_one_error(r#"{"max_pool_size": "25"}"#, "max_pool_size", "\"25\"");
    assert_one_error(r#"{"service_cidr": "172.21.0.0/33"}"#, "service_cidr", "172.21.0.0/33");
    let e = assert_one_error(r#"{"service_cidr": "172.21.0.1/20"}"#, "service_cidr", "172.21.0.1/20");
    assert!(e.message.contains("172.21.0.0/20"), "suggests the network: {e}");
    assert_one_error(r#"{"service_cidr": "banana"}"#, "service_cidr", "banana");
    assert_one_error(
        r#"{"vswitches": {"cn-shanghai-f": ["sg-1"]}}"#,
        "vswitches.\"cn-shanghai-f\"[0]",
        "sg-1",
    );
    assert_one_error(r#"{"idle_ip_reclaim_after": "-5s"}"#, "idle_ip_reclaim_after", "-5s");
    assert_one_error(
        r#"{"idle_ip_reclaim_interval": 600}"#,
        "idle_ip_reclaim_interval",
        "600",
    );
    assert_one_error(
        r#"{"idle_ip_reclaim_jitter_factor": "2"}"#,
        "idle_ip_reclaim_jitter_factor",
        "2",
    );
    assert_one_error(r#"{"ip_stack": "ipv5"}"#, "ip_stack", "ipv5");
    let e = assert_one_error(r#"{"ip_stack": "ipv6"}"#, "ip_stack", "ipv6");
    assert!(e.message.contains("not supported"), "{e}");
    let sgs: Vec<String> = (0..11).map(|i| format!("sg-{i}")).collect();
    let e = assert_one_error(
        &json!({ "security_groups": sgs }).to_string(),
        "security_groups",
        "sg-10",
    );
    assert!(e.message.contains("at most 10"), "{e}");
    // 10 listed plus a different legacy one make 11 after the merge
    let ten: Vec<String> = (0..10).map(|i| format!("sg-{i}")).collect();
    errors_of(&json!({ "security_groups": ten, "security_group": "sg-x" }).to_string());
    // ... but a duplicate is merged away
    Config::parse(
        &json!({ "security_groups": ten, "security_group": "sg-0" }).to_string(),
        None,
    )
    .unwrap();
    let e = assert_one_error(
        r#"{"rate_limit": {"AssignPrivateIpAddress": 10}}"#,
        "rate_limit.AssignPrivateIpAddress",
        "10",
    );
    assert!(
        e.message.contains("unknown API") && e.message.contains("AssignPrivateIpAddresses"),
        "{e}"
    );
    assert_one_error(
        r#"{"rate_limit": {"AssignPrivateIpAddresses": 0}}"#,
        "rate_limit.AssignPrivateIpAddresses",
        "0",
    );
    assert_one_error(
        r#"{"backoff_override": {"eni_crate": {"Steps": 1}}}"#,
        "backoff_override.eni_crate",
        "Steps",
    );
    assert_one_error(
        r#"{"backoff_override": {"eni_create": {"Steps": 0}}}"#,
        "backoff_override.eni_create.Steps",
        "0",
    );
    assert_one_error(r#"{"eni_cap_ratio": -1}"#, "eni_cap_ratio", "-1");
    assert_one_error(r#"{"ip_pool_sync_period": "0s"}"#, "ip_pool_sync_period", "0s");
    assert_one_error(r#"{"metrics_address": "localhost"}"#, "metrics_address", "localhost");
    assert_one_error(r#"{"ecs_endpoint": "ftp://x"}"#, "ecs_endpoint", "ftp://x");
    assert_one_error(r#"{"ledger_path": "relative/dir"}"#, "ledger_path", "relative/dir");
    assert_one_error(r#"{"datapath_mode": "vlan"}"#, "datapath_mode", "vlan");
    assert_one_error(r#"{"mtu": 70000}"#, "mtu", "70000");
    assert_one_error(
        r#"{"enable_patch_pod_ips": "yes please"}"#,
        "enable_patch_pod_ips",
        "yes please",
    );
}

#[test]
fn secret_never_appears_in_errors() {
    let errors = errors_of(r#"{"access_key": "LTAI", "access_secret": 12345678}"#);
    let text = format!("{errors:?}");
    assert!(!text.contains("12345678"), "{text}");
    assert_eq!(errors[0].path, "access_secret");
    let errors = errors_of(r#"{"access_secret": "only-the-secret"}"#);
    assert_eq!(errors[0].path, "access_key");
    assert!(!format!("{errors:?}").contains("only-the-secret"));
}

#[test]
fn all_errors_are_reported_at_once() {
    let errors = errors_of(
        r#"{"max_pool_size": -1, "min_pool_size": "x", "service_cidr": "1.2.3.4/40",
            "vswitches": {"z": ["x"]}, "ip_stack": "v4", "max_pool_sise": 3}"#,
    );
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "max_pool_size",
        "min_pool_size",
        "service_cidr",
        "vswitches.z[0]",
        "ip_stack",
        "max_pool_sise",
    ] {
        assert!(paths.contains(&want), "{want} missing from {paths:?}");
    }
}

#[test]
fn unknown_keys_warn_and_typos_fail() {
    let loaded = Config::parse(r#"{"max_pool_size": 2, "future_knob": 1}"#, None).unwrap();
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].path, "future_knob");
    assert_eq!(loaded.warnings[0].severity, Severity::Warning);

    let e = assert_one_error(r#"{"max_pool_sise": 2}"#, "max_pool_sise", "");
    assert!(e.message.contains("did you mean \"max_pool_size\""), "{e}");
    let e = assert_one_error(r#"{"vswitchs": {}}"#, "vswitchs", "");
    assert!(e.message.contains("\"vswitches\""), "{e}");
    let e = assert_one_error(r#"{"Min_Pool_Size": 2}"#, "Min_Pool_Size", "");
    assert!(e.message.contains("\"min_pool_size\""), "{e}");

    // upstream keys terway-rs does not act on are accepted with a warning that says why
    let loaded = Config::parse(r#"{"ipam_type": "crd", "enable_eni_trunking": true}"#, None).unwrap();
    assert_eq!(loaded.warnings.len(), 2);
    assert!(loaded.warnings.iter().all(|w| w.message.contains("no effect")));

    // keys read with a value terway-rs already behaves as are not warned about;
    // other values are
    let quiet = Config::parse(r#"{"ip_stack": "ipv4", "disable_network_policy": "true"}"#, None).unwrap();
    assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);
    let loud = Config::parse(r#"{"ip_stack": "dual", "disable_network_policy": false}"#, None).unwrap();
    assert!(loud.warnings.is_empty(), "{:?}", loud.warnings);
    // dual stack is served, except for pods given a whole ENI
    assert_one_error(
        r#"{"ip_stack": "dual", "datapath_mode": "exclusive_eni"}"#,
        "ip_stack",
        "dual",
    );
}

#[test]
fn syntax_errors_say_where() {
    match Config::parse("{\"max_pool_size\": 25,\n \"min_pool_size\" 10}", None) {
        Err(ConfigError::Syntax { line, .. }) => assert_eq!(line, 2),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        Config::parse("[1,2]", None),
        Err(ConfigError::NotAnObject { .. })
    ));
}

#[test]
fn node_override_merges() {
    let patch = r#"{"max_pool_size": 40, "vswitches": {"cn-shanghai-f": ["vsw-EEE"], "cn-shanghai-g": ["vsw-GGG"]}}"#;
    let c = Config::parse(SEED, Some(patch)).unwrap().config;
    assert_eq!(c.max_pool_size, 40);
    assert_eq!(c.min_pool_size, 10, "untouched keys stay");
    assert_eq!(
        c.vswitches_in_zone("cn-shanghai-f"),
        ["vsw-EEE"],
        "lists are replaced, not appended"
    );
    assert_eq!(c.vswitches_in_zone("cn-shanghai-g"), ["vsw-GGG"], "maps merge");
}

#[test]
fn null_in_override_deletes() {
    let base = r#"{"vswitches": {"cn-shanghai-f": ["vsw-AAA"], "cn-shanghai-g": ["vsw-GGG"]}, "security_group": "sg-1", "max_pool_size": 3}"#;
    let c = Config::parse(
        base,
        Some(r#"{"vswitches": {"cn-shanghai-g": null}, "security_group": null}"#),
    )
    .unwrap()
    .config;
    assert_eq!(c.vswitches.keys().collect::<Vec<_>>(), ["cn-shanghai-f"]);
    assert!(c.security_groups.is_empty());
    assert_eq!(c.max_pool_size, 3);
    // errors in the merged result name the path
    assert!(matches!(
        Config::parse(base, Some(r#"{"min_pool_size": -9}"#)),
        Err(ConfigError::Invalid { ref errors, .. }) if errors[0].path == "min_pool_size"
    ));
    assert!(matches!(
        Config::parse(base, Some("[]")),
        Err(ConfigError::NotAnObject { .. })
    ));
}

#[test]
fn defaults_serialize_as_go_durations() {
    let v: serde_json::Value = serde_json::from_str(&Config::defaults().to_redacted_json()).unwrap();
    assert_eq!(v["ip_pool_sync_period"], "2m0s");
    assert_eq!(v["idle_ip_reclaim"]["interval"], "10m0s");
    assert_eq!(v["backoff"]["eni_create"]["Duration"], "10s");
}

#[test]
fn restart_only_fields_are_all_kept() {
    let mut a = Config::defaults();
    let b = Config::parse(
        r#"{"access_key":"k","access_secret":"s","credential_path":"/x","ip_stack":"dual","kube_client_qps":5,
            "kube_client_burst":9,"disable_device_plugin":true,"ledger_path":"/l",
            "socket_path":"/s","metrics_address":"127.0.0.1:1","ecs_endpoint":"e","datapath_mode":"ipvlan","mtu":9000}"#,
        None,
    )
    .unwrap()
    .config;
    let changed = a.changed_fields(&b);
    let mut want: Vec<&str> = RESTART_ONLY_FIELDS.to_vec();
    want.sort_unstable();
    let mut got = changed.clone();
    got.sort_unstable();
    assert_eq!(got, want, "the test file changes exactly the restart-only fields");
    let original = a.clone();
    a = b.clone();
    a.keep_restart_only_from(&original);
    assert!(a.changed_fields(&original).is_empty());
}

/// Configs upstream Terway accepts (clamping, defaulting or falling back)
/// load here too, each with a warning at its path that says what is used.
#[test]
fn upstream_tolerated_configs_load_with_a_warning() {
    type Effect = fn(&Config) -> bool;
    let rows: &[(&str, &str, &str, Effect)] = &[
        // a per-node max under the cluster's min: min is clamped to max
        (
            r#"{"max_pool_size": 5, "min_pool_size": 10}"#,
            "min_pool_size",
            "using 5",
            |c| (c.min_pool_size, c.max_pool_size) == (5, 5),
        ),
        ("{\"eni_cap_ratio\": 0}", "eni_cap_ratio", "using 1", |c| {
            c.eni_cap_ratio == 1.0
        }),
        (
            r#"{"idle_ip_reclaim_batch_size": 0}"#,
            "idle_ip_reclaim_batch_size",
            "using 5",
            |c| c.idle_ip_reclaim.batch_size == 5,
        ),
        (
            r#"{"idle_ip_reclaim_batch_size": -2}"#,
            "idle_ip_reclaim_batch_size",
            "using 5",
            |c| c.idle_ip_reclaim.batch_size == 5,
        ),
        (
            r#"{"vswitch_selection_policy": "most"}"#,
            "vswitch_selection_policy",
            "using \"random\"",
            |c| c.vswitch_selection_policy == VSwitchSelectionPolicy::Random,
        ),
        (
            r#"{"eni_selection_policy": "fewest"}"#,
            "eni_selection_policy",
            "using \"most_ips\"",
            |c| c.eni_selection_policy == EniSelectionPolicy::MostIps,
        ),
        (
            r#"{"ip_pool_sync_period": "10 minutes"}"#,
            "ip_pool_sync_period",
            "using 120s",
            |c| c.ip_pool_sync_period == Duration::from_secs(120),
        ),
        (
            r#"{"vswitches": {"cn-shanghai-f": [], "cn-shanghai-g": ["vsw-1"]}}"#,
            "vswitches.\"cn-shanghai-f\"",
            "instance's own vSwitch",
            |c| c.vswitches_in_zone("cn-shanghai-f").is_empty() && c.vswitches_in_zone("cn-shanghai-g") == ["vsw-1"],
        ),
        (r#"{"service_cidr": ""}"#, "service_cidr", "treated as unset", |c| {
            c.service_cidr == ServiceCidr::default()
        }),
        (
            r#"{"rate_limit": {"AttachElasticNetworkInterface": 300, "DescribeVSwitches": 100}}"#,
            "rate_limit.AttachElasticNetworkInterface",
            "no effect",
            |c| c.rate_limit["DescribeVSwitches"] == 100 && !c.rate_limit.contains_key("AttachElasticNetworkInterface"),
        ),
        (
            r#"{"backoff_override": {"wait_podeni_status": {"Steps": 10}}}"#,
            "backoff_override.wait_podeni_status",
            "no effect",
            |c| !c.backoff.contains_key("wait_podeni_status"),
        ),
        (r#"{"max_eni": 2, "min_eni": 3}"#, "min_eni", "max_pool_size", |c| {
            (c.min_eni, c.max_eni) == (3, 2)
        }),
    ];
    for (text, path, says, effect) in rows {
        let loaded = Config::parse(text, None).unwrap_or_else(|e| panic!("{text} is refused: {e}"));
        assert!(
            loaded
                .warnings
                .iter()
                .any(|w| w.path == *path && w.message.contains(says)),
            "{text}: no warning at {path} saying {says:?}: {:#?}",
            loaded.warnings
        );
        assert!(effect(&loaded.config), "{text}: effective config {:#?}", loaded.config);
    }
    // the same merged under a per-node override, as ACK does
    let loaded = Config::parse(SEED, Some(r#"{"max_pool_size": 5}"#)).unwrap();
    assert_eq!((loaded.config.min_pool_size, loaded.config.max_pool_size), (5, 5));
}
