//! terwayd's IPAM end to end against the emulator, through the real socket
//! protocol (no datapath: these run without root).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use terway_cloud::emulator::{Emulator, Scenario, DEFAULT_ZONE};
use terway_node::cni::exchange;
use terway_node::cni::protocol::{PodRequest, Reply, Request};
use terway_node::daemon::{cni_service, reconciler, Node, NodeOptions};
use terway_statestore::IpState;

fn config_text(em: &Emulator, vswitches: &[&str], extra: &str) -> String {
    let pool = format!(r#", "max_pool_size": 25, "min_pool_size": 10 {extra}"#);
    terway_tests::eni_conf(&em.url(), vswitches, &pool)
}

fn config(em: &Emulator, vswitches: &[&str], extra: &str) -> Arc<terway_config::Config> {
    Arc::new(
        terway_config::Config::parse(&config_text(em, vswitches, extra), None)
            .unwrap()
            .config,
    )
}

struct Running {
    node: Arc<Node>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
}

impl Running {
    /// Stops every task and hands back the directory holding the ledger.
    async fn stop(mut self) -> tempfile::TempDir {
        for t in &self.tasks {
            t.abort();
        }
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
        let _ = std::fs::remove_file(self.node.socket_path());
        self.dir.take().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn start(config: Arc<terway_config::Config>, add_deadline: Duration) -> Running {
    start_in(config, add_deadline, tempfile::tempdir().unwrap()).await
}

async fn start_in(config: Arc<terway_config::Config>, add_deadline: Duration, dir: tempfile::TempDir) -> Running {
    start_with(config, add_deadline, dir, |_| {}).await
}

async fn start_with(
    config: Arc<terway_config::Config>,
    add_deadline: Duration,
    dir: tempfile::TempDir,
    tweak: impl FnOnce(&mut NodeOptions),
) -> Running {
    let mut options = NodeOptions {
        datapath: None,
        add_deadline,
        socket_path: Some(dir.path().join("eni.socket")),
        ledger_path: Some(dir.path().join("ledger")),
        metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Default::default()
    };
    tweak(&mut options);
    let node = Node::start(config, options).await.unwrap();
    let server = tokio::spawn({
        let node = node.clone();
        async move {
            cni_service::serve(node).await.unwrap();
        }
    });
    let reconcile = tokio::spawn(reconciler::run(node.clone()));
    let confirm = tokio::spawn(node.clone().confirm_facts());
    for _ in 0..1000 {
        if node.socket_path().exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Running {
        node,
        tasks: vec![server, reconcile, confirm],
        dir: Some(dir),
    }
}

fn pod(i: usize) -> PodRequest {
    PodRequest::new(
        "default",
        &format!("pod-{i}"),
        &format!("container-{i}"),
        &format!("/var/run/netns/pod-{i}"),
    )
}

async fn call(socket: &Path, request: Request) -> Reply {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || exchange(&socket, &request, Duration::from_secs(60)).unwrap())
        .await
        .unwrap()
}

/// A client of the emulator's API with its default keys: another party in the account.
fn api_client(em: &Emulator) -> terway_cloud::CloudClient {
    terway_tests::emulator_client(&em.url())
}

/// Addresses the cloud shows on the instance's attached secondary ENIs.
fn cloud_ips(em: &Emulator) -> BTreeSet<String> {
    terway_tests::cloud_addresses(&em.dump(), "InUse").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_confirmed_addresses_and_the_pool_settles() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let running = start(config(&em, &["vsw-large0000000001"], ""), Duration::from_secs(30)).await;
    let socket = running.node.socket_path();
    let mut ips = BTreeSet::new();
    let mut tasks = Vec::new();
    for i in 0..25 {
        let socket = socket.clone();
        tasks.push(tokio::spawn(
            async move { (i, call(&socket, Request::Add(pod(i))).await) },
        ));
    }
    for t in tasks {
        let (i, reply) = t.await.unwrap();
        let Reply::Ok { network: Some(net) } = reply else {
            panic!("pod {i}: {reply:?}")
        };
        assert!(ips.insert(net.ipv4.clone()), "{} handed out twice", net.ipv4);
    }
    // a repeated ADD gets the same address
    let Reply::Ok { network: Some(again) } = call(&socket, Request::Add(pod(3))).await else {
        panic!()
    };
    assert!(ips.contains(&again.ipv4));
    let confirmed = cloud_ips(&em);
    for ip in &ips {
        assert!(
            confirmed.contains(ip.trim_end_matches("/32")),
            "{ip} is not on an attached ENI in the cloud"
        );
    }
    for i in 0..25 {
        assert_eq!(call(&socket, Request::Del(pod(i))).await, Reply::Ok { network: None });
    }
    // DEL of an unknown pod succeeds too
    assert_eq!(call(&socket, Request::Del(pod(999))).await, Reply::Ok { network: None });
    // CNI GC releases what the runtime no longer lists
    for i in 0..3 {
        call(&socket, Request::Add(pod(i))).await;
    }
    let keep = vec![terway_node::cni::protocol::Attachment {
        container_id: "container-1".into(),
        ifname: "eth0".into(),
    }];
    assert_eq!(
        call(&socket, Request::Gc { valid: keep }).await,
        Reply::Ok { network: None }
    );
    let pods: Vec<String> = running.node.ledger.snapshot().pods.keys().cloned().collect();
    assert_eq!(pods, ["default/pod-1"]);
    call(&socket, Request::Del(pod(1))).await;
    // at rest the idle pool is within [min, max] and every cloud address is in the ledger
    let mut settled = false;
    for _ in 0..100 {
        running.node.reconcile_soon();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = running.node.ledger.snapshot();
        let idle = s.ips.values().filter(|r| r.state == IpState::Idle).count();
        let ledger_ips: BTreeSet<String> = s.ips.keys().map(ToString::to_string).collect();
        if (10..=25).contains(&idle) && s.intents.is_empty() && ledger_ips == cloud_ips(&em) {
            settled = true;
            break;
        }
    }
    let s = running.node.ledger.snapshot();
    assert!(
        settled,
        "pool did not settle: {} idle, {} intents",
        s.ips.values().filter(|r| r.state == IpState::Idle).count(),
        s.intents.len()
    );
    assert!(running.node.ledger.check().is_empty());
    let calls = running.node.cloud.stats();
    println!(
        "API calls: {:?}",
        calls.iter().map(|(k, v)| (k, v.calls)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_vswitch_gives_a_clear_error() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    // only the /28: 12 addresses in all
    let running = start(
        config(
            &em,
            &["vsw-small0000000001"],
            r#", "max_pool_size": 0, "min_pool_size": 0"#,
        ),
        Duration::from_secs(3),
    )
    .await;
    let socket = running.node.socket_path();
    let mut served = 0;
    let mut last = None;
    for i in 0..14 {
        match call(&socket, Request::Add(pod(i))).await {
            Reply::Ok { network: Some(_) } => served += 1,
            other => {
                last = Some(other);
                break;
            }
        }
    }
    assert_eq!(served, 12, "the /28 serves 12 pods");
    let Some(Reply::Error { code, msg, details }) = last else {
        panic!("{last:?}")
    };
    assert_eq!(code, 11);
    assert!(msg.contains("try again later"), "{msg}");
    assert!(
        details.contains("vsw-small0000000001"),
        "the vSwitch is named: {details}"
    );
    // an address freed on the exhausted vSwitch (given back to the cloud, as
    // max_pool_size is 0) serves the next pod, with no restart and before
    // the vSwitch's cooldown is over
    assert_eq!(call(&socket, Request::Del(pod(0))).await, Reply::Ok { network: None });
    let mut served_again = None;
    for _ in 0..5 {
        if let Reply::Ok { network: Some(net) } = call(&socket, Request::Add(pod(100))).await {
            served_again = Some(net);
            break;
        }
    }
    assert!(served_again.is_some(), "the freed address never served again");
}

/// Captures everything the daemon logs (a global subscriber: one per test binary).
#[derive(Clone, Default)]
struct LogCapture(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vswitch_runs_out_mid_run_and_the_next_one_serves() {
    let logs = LogCapture::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_env_filter("terway_node=info")
        .init();
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let mid = "vsw-mid000000000001";
    em.add_vswitch(mid, DEFAULT_ZONE, "192.168.2.0/26").unwrap();
    // "ordered" starts on the vSwitch with most free addresses: the /26 (60) before the /28 (12)
    let running = start(
        config(
            &em,
            &[mid, "vsw-small0000000001"],
            r#", "max_pool_size": 0, "min_pool_size": 0, "vswitch_selection_policy": "ordered""#,
        ),
        Duration::from_secs(20),
    )
    .await;
    let socket = running.node.socket_path();
    let mut ips = BTreeSet::new();
    let Reply::Ok { network: Some(first) } = call(&socket, Request::Add(pod(0))).await else {
        panic!("first pod")
    };
    assert!(first.ipv4.starts_with("192.168.2."), "{}", first.ipv4);
    ips.insert(first.ipv4);
    // the node settles first: a surplus address given back after the count
    // below would add one to what the /26 has left
    let settled = || {
        let s = running.node.ledger.snapshot();
        s.intents.is_empty() && s.ips.values().all(|r| matches!(r.state, IpState::Bound(_)))
    };
    for _ in 0..100 {
        if settled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        settled(),
        "the node kept addresses beyond its pod or cloud work under way"
    );
    // other nodes take all but three of the /26's addresses
    let free = em.available_addresses(mid).unwrap() as usize;
    em.take_addresses(mid, free - 3).unwrap();
    for i in 1..10 {
        let reply = call(&socket, Request::Add(pod(i))).await;
        let Reply::Ok { network: Some(net) } = reply else {
            panic!("pod {i}: {reply:?}")
        };
        assert!(ips.insert(net.ipv4.clone()), "{} handed out twice", net.ipv4);
    }
    let s = running.node.ledger.snapshot();
    let vswitch_of = |ip: &str| {
        let r = &s.ips[&ip.trim_end_matches("/32").parse().unwrap()];
        s.enis[&r.eni_id].vswitch_id.clone()
    };
    let on_small = ips.iter().filter(|ip| vswitch_of(ip) == "vsw-small0000000001").count();
    assert!(on_small > 0, "no pod was served from the next vSwitch");
    assert_eq!(ips.len() - on_small, 4, "the /26 served what it had left");
    let aside = running.node.vswitches_set_aside();
    assert!(aside.iter().any(|(v, _)| v == mid), "{aside:?}");
    let refused = em.calls()["AssignPrivateIpAddresses"]
        .get("InvalidVSwitchId.IpNotEnough")
        .copied()
        .unwrap_or(0);
    assert!(refused > 0, "the cloud refused an assignment on the /26");
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let logged = logs
        .lines()
        .find(|l| l.contains("InvalidVSwitchId.IpNotEnough") && l.contains(mid))
        .unwrap_or_else(|| panic!("the IpNotEnough was not logged with the vSwitch:\n{logs}"));
    assert!(
        logged.contains("request_id="),
        "the log names the cloud request: {logged}"
    );
    assert!(
        logs.lines().any(|l| l.contains("set aside") && l.contains(mid)),
        "setting the vSwitch aside was not logged"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("ENI created") && l.contains("vsw-small0000000001")),
        "the next ENI's creation on the next vSwitch was not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_enis_above_max_are_given_back_whole() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let running = start(
        config(
            &em,
            &["vsw-large0000000001"],
            r#", "max_pool_size": 5, "min_pool_size": 0"#,
        ),
        Duration::from_secs(30),
    )
    .await;
    let socket = running.node.socket_path();
    // 25 pods need three secondary ENIs of ten addresses
    for i in 0..25 {
        let reply = call(&socket, Request::Add(pod(i))).await;
        assert!(matches!(reply, Reply::Ok { network: Some(_) }), "pod {i}: {reply:?}");
    }
    assert_eq!(running.node.ledger.snapshot().enis.len(), 3);
    for i in 0..25 {
        call(&socket, Request::Del(pod(i))).await;
    }
    // 30 idle, max 5: two whole ENIs go back, then five addresses of the last
    let mut settled = false;
    for _ in 0..150 {
        running.node.reconcile_soon();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = running.node.ledger.snapshot();
        if s.enis.len() == 1 && s.ips.len() == 5 && s.intents.is_empty() {
            settled = true;
            break;
        }
    }
    let s = running.node.ledger.snapshot();
    assert!(settled, "{} ENIs, {} addresses at rest", s.enis.len(), s.ips.len());
    let dump = em.dump();
    let secondary: Vec<&serde_json::Value> = dump["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["primary"] == false)
        .collect();
    assert_eq!(
        secondary.len(),
        1,
        "the retired ENIs were deleted in the cloud, not left Available"
    );
    let ledger_ips: BTreeSet<String> = s.ips.keys().map(ToString::to_string).collect();
    assert_eq!(ledger_ips, cloud_ips(&em));
    assert_eq!(em.calls()["DeleteNetworkInterface"].values().sum::<u64>(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_faults_during_a_burst() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let running = start(
        config(
            &em,
            &["vsw-large0000000001"],
            r#", "max_pool_size": 5, "min_pool_size": 2"#,
        ),
        Duration::from_secs(45),
    )
    .await;
    // throttling-like refusals, server errors, lost answers and a Describe that lags
    em.set_faults(terway_cloud::emulator::Faults {
        error_rate: 0.2,
        drop_rate: 0.15,
        describe_lag_ms: 300,
        latency_ms: [("*".to_owned(), 20)].into(),
        ..Default::default()
    });
    let socket = running.node.socket_path();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let socket = socket.clone();
        tasks.push(tokio::spawn(
            async move { (i, call(&socket, Request::Add(pod(i))).await) },
        ));
    }
    let mut ips = BTreeSet::new();
    for t in tasks {
        let (i, reply) = t.await.unwrap();
        let Reply::Ok { network: Some(net) } = reply else {
            panic!("pod {i}: {reply:?}")
        };
        assert!(ips.insert(net.ipv4.clone()), "{} handed out twice", net.ipv4);
    }
    em.set_faults(Default::default());
    // no ENI or address twice in the cloud, and the ledger agrees with it at rest
    let mut agreed = false;
    for _ in 0..100 {
        running.node.reconcile_soon();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = running.node.ledger.snapshot();
        let ledger_ips: BTreeSet<String> = s.ips.keys().map(ToString::to_string).collect();
        if s.intents.is_empty() && ledger_ips == cloud_ips(&em) {
            agreed = true;
            break;
        }
    }
    assert!(agreed, "ledger and cloud never agreed after the faults stopped");
    let dump = em.dump();
    let ours = dump["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["primary"] == false)
        .count();
    assert!(
        ours <= 3,
        "{ours} secondary ENIs: the instance allows 3, so no ENI was made twice"
    );
    let stats = running.node.cloud.stats();
    let errors: u64 = stats.values().map(|s| s.errors.values().sum::<u64>()).sum();
    println!("faults met: {errors} failed attempts, every pod served");
    assert!(errors > 0, "the faults were injected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_returns_when_a_vswitch_is_added_to_the_file() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |vswitches: &[&str]| {
        let text = config_text(&em, vswitches, r#", "max_pool_size": 0, "min_pool_size": 0"#);
        std::fs::write(dir.path().join("eni_conf"), text).unwrap();
    };
    write(&["vsw-small0000000001"]);
    let options = NodeOptions {
        datapath: None,
        add_deadline: Duration::from_secs(3),
        socket_path: Some(dir.path().join("eni.socket")),
        ledger_path: Some(dir.path().join("ledger")),
        metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Default::default()
    };
    let running = terway_node::service::start(dir.path().join("eni_conf"), None, options)
        .await
        .unwrap();
    let socket = running.node.socket_path();
    let mut i = 0;
    let refusal = loop {
        match call(&socket, Request::Add(pod(i))).await {
            Reply::Ok { .. } => i += 1,
            other => break other,
        }
    };
    assert_eq!(i, 12, "the /28 served its 12 addresses");
    assert!(matches!(refusal, Reply::Error { code: 11, .. }), "{refusal:?}");
    // the operator adds a vSwitch to the live file: no restart
    write(&["vsw-small0000000001", "vsw-large0000000001"]);
    let Reply::Ok { network: Some(net) } = call(&socket, Request::Add(pod(i))).await else {
        panic!("ADD still refused")
    };
    assert!(net.ipv4.starts_with("192.168.16."), "{}", net.ipv4);
    // and addresses freed on the exhausted vSwitch serve again too
    assert_eq!(call(&socket, Request::Del(pod(0))).await, Reply::Ok { network: None });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_metadata_and_cloud_at_start_still_serve() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let cfg = config(&em, &["vsw-large0000000001"], "");
    let running = start(cfg.clone(), Duration::from_secs(30)).await;
    let socket = running.node.socket_path();
    let Reply::Ok { network: Some(first) } = call(&socket, Request::Add(pod(0))).await else {
        panic!()
    };
    for _ in 0..100 {
        if terway_tests::idle_addresses(&running.node.ledger) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // stop, keeping the ledger directory
    let dir = running.stop().await;
    // the metadata service is down and every cloud call fails
    em.set_faults(terway_cloud::emulator::Faults {
        metadata_unavailable: true,
        error_rate: 1.0,
        ..Default::default()
    });
    let running = start_in(cfg, Duration::from_secs(5), dir).await;
    let socket = running.node.socket_path();
    assert_eq!(
        call(&socket, Request::Del(pod(0))).await,
        Reply::Ok { network: None },
        "DEL from local state"
    );
    for i in 1..=5 {
        let reply = call(&socket, Request::Add(pod(i))).await;
        let Reply::Ok { network: Some(net) } = reply else {
            panic!("pod {i}: {reply:?}")
        };
        assert_ne!(net.ipv4, "", "served from a confirmed idle address");
    }
    let Reply::Ok { network: Some(again) } = call(&socket, Request::Add(pod(0))).await else {
        panic!()
    };
    assert!(
        again.ipv4.starts_with("192.168.16."),
        "{} vs {}",
        again.ipv4,
        first.ipv4
    );
    assert_eq!(running.node.pending().len(), 2, "{:?}", running.node.pending());
    // once the metadata service and the cloud answer, the recorded facts are confirmed
    em.set_faults(terway_cloud::emulator::Faults::default());
    for _ in 0..300 {
        if running.node.pending().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(running.node.pending(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_of_another_instance_stops_the_node() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let cfg = config(&em, &["vsw-large0000000001"], "");
    let dir = start(cfg.clone(), Duration::from_secs(5)).await.stop().await;
    // the disk was cloned from another instance: its ledger names that one
    {
        let ledger = terway_statestore::Ledger::open(&dir.path().join("ledger")).unwrap();
        let mut identity: terway_cloud::InstanceIdentity = ledger.node_fact("identity").unwrap().unwrap();
        identity.instance_id = "i-clonedfrom0000001".into();
        ledger.set_node_fact("identity", &identity).unwrap();
    }
    // the metadata service answers: terwayd refuses to start
    let options = NodeOptions {
        ledger_path: Some(dir.path().join("ledger")),
        socket_path: Some(dir.path().join("eni.socket")),
        ..Default::default()
    };
    let refused = Node::start(cfg.clone(), options).await.unwrap_err().to_string();
    assert!(
        refused.contains("i-clonedfrom0000001") && refused.contains("i-emulated00000001"),
        "{refused}"
    );
    // it is down at start: terwayd serves, and stops once the metadata service answers
    em.set_faults(terway_cloud::emulator::Faults {
        metadata_unavailable: true,
        ..Default::default()
    });
    let running = start_in(cfg, Duration::from_secs(5), dir).await;
    em.set_faults(terway_cloud::emulator::Faults::default());
    let why = tokio::time::timeout(Duration::from_secs(30), running.node.fatal())
        .await
        .expect("the node stops once the metadata service names another instance");
    assert!(why.contains("i-clonedfrom0000001"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_eni_mode_up_to_the_quota() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    // ecs.g6.2xlarge: 4 ENIs, so 3 pods with an ENI each
    let cfg = config(
        &em,
        &["vsw-large0000000001"],
        r#", "datapath_mode": "exclusive_eni", "max_pool_size": 1, "min_pool_size": 0"#,
    );
    let running = start(cfg, Duration::from_secs(5)).await;
    let socket = running.node.socket_path();
    let mut enis = BTreeSet::new();
    for i in 0..3 {
        let reply = call(&socket, Request::Add(pod(i))).await;
        let Reply::Ok { network: Some(net) } = reply else {
            panic!("pod {i}: {reply:?}")
        };
        assert_eq!(
            net.ipv4_gateway, "192.168.31.253",
            "an exclusive ENI routes to its vSwitch gateway"
        );
        let record = running.node.ledger.snapshot().pods[&format!("default/pod-{i}")].clone();
        assert!(enis.insert(record.eni_id.clone().unwrap()), "each pod has its own ENI");
        assert_eq!(
            running.node.ledger.snapshot().enis[record.eni_id.as_ref().unwrap()]
                .primary_ip
                .to_string()
                + "/32",
            net.ipv4
        );
    }
    let Reply::Error { code, details, .. } = call(&socket, Request::Add(pod(3))).await else {
        panic!("a fourth pod got an ENI")
    };
    assert_eq!(code, 11);
    assert!(
        details.contains("ecs.g6.2xlarge") && details.contains("EniQuantity 4"),
        "names the quota: {details}"
    );
    // DEL returns the ENI: the next pod gets it
    assert_eq!(call(&socket, Request::Del(pod(0))).await, Reply::Ok { network: None });
    let Reply::Ok { network: Some(_) } = call(&socket, Request::Add(pod(3))).await else {
        panic!("the returned ENI was not reused")
    };
    // above max_pool_size (1 idle ENI) the extra ones are detached and deleted
    for i in 1..=3 {
        call(&socket, Request::Del(pod(i))).await;
    }
    let mut retired = false;
    for _ in 0..100 {
        running.node.reconcile_soon();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if running.node.ledger.snapshot().enis.len() == 1 {
            retired = true;
            break;
        }
    }
    assert!(retired, "idle ENIs above max_pool_size were not given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_and_conflist_are_installed_once_serving() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("eni_conf"),
        config_text(&em, &["vsw-large0000000001"], ""),
    )
    .unwrap();
    let plugin = dir.path().join("terway-plugin-build");
    std::fs::write(&plugin, b"#!/bin/sh\necho plugin\n").unwrap();
    let (bin_dir, conf_dir) = (dir.path().join("opt/cni/bin"), dir.path().join("etc/cni/net.d"));
    let options = NodeOptions {
        add_deadline: Duration::from_secs(5),
        socket_path: Some(dir.path().join("eni.socket")),
        ledger_path: Some(dir.path().join("ledger")),
        metrics_address: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        install_cni: Some(terway_node::daemon::InstallCni {
            plugin,
            bin_dir: bin_dir.clone(),
            conf_dir: conf_dir.clone(),
            chained: vec![terway_config::conflist::ChainedPlugin::Portmap],
        }),
        ..Default::default()
    };
    let running = terway_node::service::start(dir.path().join("eni_conf"), None, options)
        .await
        .unwrap();
    // by the time the conflist exists the socket answers
    let conflist = std::fs::read_to_string(conf_dir.join("10-terway.conflist")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&conflist).unwrap();
    assert_eq!(parsed["plugins"][0]["type"], "terway");
    assert_eq!(
        parsed["plugins"][0]["socket"],
        running.node.socket_path().to_str().unwrap()
    );
    assert_eq!(parsed["plugins"][1]["type"], "portmap");
    assert_eq!(
        call(&running.node.socket_path(), Request::Status).await,
        Reply::Ok { network: None }
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(bin_dir.join("terway")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    assert!(
        std::fs::read_dir(&conf_dir).unwrap().count() == 1,
        "no staging file left behind"
    );
    running.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_waiting_on_a_full_node_is_served_when_an_address_finishes_cooling() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    // one secondary ENI of ten addresses, and a released address cools for 2 s
    let running = start(
        config(
            &em,
            &["vsw-node00000000001"],
            r#", "max_eni": 1, "min_pool_size": 0, "max_pool_size": 10, "ip_cooldown": "2s""#,
        ),
        Duration::from_secs(20),
    )
    .await;
    let socket = running.node.socket_path();
    for i in 0..10 {
        let reply = call(&socket, Request::Add(pod(i))).await;
        assert!(matches!(reply, Reply::Ok { network: Some(_) }), "pod {i}: {reply:?}");
    }
    let Reply::Ok { network: Some(freed) } = call(&socket, Request::Add(pod(0))).await else {
        panic!("pod 0 lost its address")
    };
    assert_eq!(call(&socket, Request::Del(pod(0))).await, Reply::Ok { network: None });
    // the node is full; the ADD waits for the cooled address rather than failing
    let started = std::time::Instant::now();
    let Reply::Ok { network: Some(got) } = call(&socket, Request::Add(pod(10))).await else {
        panic!("the waiting ADD was not served")
    };
    let waited = started.elapsed();
    assert_eq!(got.ipv4, freed.ipv4, "the cooled address is the one free");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(15),
        "served once the cooldown ended, not at the deadline: {waited:?}"
    );
    // the same with the cloud refusing every call and the metadata service
    // down: the reconciler's passes fail, cooling still ends for the waiting ADD
    em.set_faults(terway_cloud::emulator::Faults {
        metadata_unavailable: true,
        error_rate: 1.0,
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_secs(2)).await; // a few failed passes: the reconciler backs off
    let Reply::Ok { network: Some(freed) } = call(&socket, Request::Add(pod(1))).await else {
        panic!("pod 1 lost its address")
    };
    assert_eq!(call(&socket, Request::Del(pod(1))).await, Reply::Ok { network: None });
    let Reply::Ok { network: Some(got) } = call(&socket, Request::Add(pod(11))).await else {
        panic!("the waiting ADD was not served while the cloud is down")
    };
    assert_eq!(got.ipv4, freed.ipv4);
    let s = running.node.ledger.snapshot();
    assert!(
        s.ips.values().all(|r| r.state.name() == "bound"),
        "no address left cooling: {:?}",
        s.ips.values().map(|r| r.state.name()).collect::<Vec<_>>()
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_groups_apply_to_the_next_eni_without_a_restart() {
    const OTHER_GROUP: &str = "sg-emulated00000002";
    let mut scenario = Scenario::default();
    scenario.security_groups.push(OTHER_GROUP.into());
    let em = Emulator::start(scenario).await.unwrap();
    let extra = |group: &str| {
        format!(
            r#", "datapath_mode": "exclusive_eni", "max_pool_size": 0, "min_pool_size": 0, "security_groups": ["{group}"]"#
        )
    };
    let cfg = config(
        &em,
        &["vsw-large0000000001"],
        &extra(terway_cloud::emulator::DEFAULT_SECURITY_GROUP),
    );
    let running = start(cfg, Duration::from_secs(5)).await;
    let socket = running.node.socket_path();
    let secondary_enis = || -> Vec<(String, serde_json::Value)> {
        em.dump()["enis"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["primary"] == false)
            .map(|e| (e["id"].as_str().unwrap().to_owned(), e["security_groups"].clone()))
            .collect()
    };
    assert!(matches!(call(&socket, Request::Add(pod(0))).await, Reply::Ok { .. }));
    // no ENI creation of the old configuration still under way (each is behind an intent)
    for _ in 0..100 {
        if running.node.ledger.intents().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(running.node.ledger.intents().is_empty(), "cloud work still under way");
    let before = secondary_enis();
    assert!(!before.is_empty());
    for (_, groups) in &before {
        assert_eq!(
            *groups,
            serde_json::json!([terway_cloud::emulator::DEFAULT_SECURITY_GROUP])
        );
    }
    // the operator changes security_groups: a reload, no restart
    running
        .node
        .set_config(config(&em, &["vsw-large0000000001"], &extra(OTHER_GROUP)));
    // the quota (4 ENIs) leaves room for two more pods; at least one needs a new ENI
    for i in 1..3 {
        assert!(matches!(call(&socket, Request::Add(pod(i))).await, Reply::Ok { .. }));
    }
    let made_after: Vec<_> = secondary_enis()
        .into_iter()
        .filter(|(id, _)| !before.iter().any(|(b, _)| b == id))
        .collect();
    assert!(!made_after.is_empty(), "no ENI was made after the reload");
    for (id, groups) in made_after {
        assert_eq!(
            groups,
            serde_json::json!([OTHER_GROUP]),
            "{id} was made after the reload"
        );
    }
}

/// A gateway that ignores DescribeNetworkInterfaces' filters answers with
/// every ENI of the region: the node's sweep of leftover ENIs deletes only
/// its own Available ones, and nothing of another instance is adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_ignoring_filters_makes_the_sweep_delete_nothing_but_ours() {
    use terway_cloud::api::CreateNetworkInterface;
    use terway_cloud::emulator::{Faults, DEFAULT_INSTANCE_ID, DEFAULT_REGION, DEFAULT_SECURITY_GROUP};
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let cfg = config(
        &em,
        &["vsw-large0000000001"],
        r#", "max_pool_size": 5, "min_pool_size": 2"#,
    );
    let running = start(cfg.clone(), Duration::from_secs(10)).await;
    assert!(matches!(
        call(&running.node.socket_path(), Request::Add(pod(0))).await,
        Reply::Ok { .. }
    ));
    let dir = running.stop().await;

    let client = api_client(&em);
    let create = |tags: Vec<(String, String)>| {
        let client = &client;
        async move {
            client
                .call(&CreateNetworkInterface {
                    region_id: DEFAULT_REGION.into(),
                    vswitch_id: "vsw-large0000000001".into(),
                    security_group_ids: vec![DEFAULT_SECURITY_GROUP.into()],
                    tags,
                    ..Default::default()
                })
                .await
                .unwrap()
                .eni
                .network_interface_id
        }
    };
    let tag = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let untagged = create(vec![]).await;
    let other_node = create(vec![
        tag("creator", "terway"),
        tag("terway.alibabacloud.com/node", "i-other000000001"),
    ])
    .await;
    let ours = create(vec![
        tag("creator", "terway"),
        tag("terway.alibabacloud.com/node", DEFAULT_INSTANCE_ID),
    ])
    .await;
    em.set_faults(Faults {
        ignore_filters: true,
        ..Default::default()
    });
    let enis_before: Vec<String> = em.dump()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();

    // a new start reads the cloud and sweeps first
    let running = start_in(cfg, Duration::from_secs(10), dir).await;
    let exists = |id: &str| em.dump()["enis"].as_array().unwrap().iter().any(|e| e["id"] == id);
    let mut swept = false;
    for _ in 0..100 {
        if !exists(&ours) {
            swept = true;
            break;
        }
        running.node.reconcile_soon();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(swept, "this node's leftover ENI was deleted");
    for id in enis_before.iter().filter(|id| **id != ours) {
        assert!(exists(id), "{id} was deleted");
    }
    assert!(exists(&untagged) && exists(&other_node));
    // and nothing of theirs was taken as this node's
    let ledger = running.node.ledger.snapshot();
    assert!(
        !ledger.enis.contains_key(&untagged) && !ledger.enis.contains_key(&other_node),
        "{:?}",
        ledger.enis.keys()
    );
    let primaries: Vec<String> = em.dump()["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["primary"] == true)
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(primaries.iter().all(|p| !ledger.enis.contains_key(p)));
}

/// ACK's encrypted credential file as the only source of credentials (no
/// keys in the config, no RAM role): every cloud call is signed with the
/// decrypted key and carries the decrypted STS token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ack_credential_file_signs_every_cloud_call() {
    let scenario = Scenario {
        ram_role: None,
        ..Scenario::default()
    };
    let em = Emulator::start(scenario).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token-config");
    let sts = em.issue_sts_credentials(Duration::from_secs(3600));
    terway_tests::write_token_file(&token, "0123456789abcdef", &sts);
    let patch = serde_json::json!({"access_key": null, "access_secret": null, "credential_path": token}).to_string();
    let cfg = Arc::new(
        terway_config::Config::parse(&config_text(&em, &["vsw-large0000000001"], ""), Some(&patch))
            .unwrap()
            .config,
    );
    let running = start(cfg, Duration::from_secs(10)).await;
    let reply = call(&running.node.socket_path(), Request::Add(pod(0))).await;
    assert!(matches!(reply, Reply::Ok { .. }), "{reply:?}");
    let calls = &em.dump()["api_calls"];
    assert!(
        calls["CreateNetworkInterface"]["Success"].as_u64() >= Some(1),
        "{calls}"
    );
    let refused: u64 = calls
        .as_object()
        .unwrap()
        .values()
        .flat_map(|codes| codes.as_object().unwrap().iter())
        .filter(|(code, _)| code.contains("AccessKey") || code.contains("SecurityToken") || code.contains("Signature"))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(refused, 0, "{calls}");
}

/// An ipvlan pod's `host_stack_cidrs` are kept with its record (the datapath
/// redirects them from the ENI into the host slave, as upstream's tc filter
/// does); one that is not a CIDR is refused, naming it, with nothing bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_stack_cidrs_of_ipvlan_pods_are_kept_and_bad_ones_refused() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let cfg = config(&em, &["vsw-large0000000001"], r#", "datapath_mode": "ipvlan""#);
    let running = start(cfg, Duration::from_secs(5)).await;
    let mut bad = pod(0);
    bad.host_stack_cidrs = vec!["169.254.20.10/33".into()];
    let Reply::Error { code, msg, .. } = call(&running.node.socket_path(), Request::Add(bad)).await else {
        panic!("a pod with a bad host_stack_cidrs entry was wired")
    };
    assert_eq!(code, 7);
    assert!(msg.contains("169.254.20.10/33"), "{msg}");
    assert!(running.node.ledger.snapshot().pods.is_empty(), "nothing bound");
    let mut p = pod(1);
    p.host_stack_cidrs = vec!["169.254.20.10/32".into()];
    let key = terway_statestore::PodRef::new(&p.pod_namespace, &p.pod_name, "");
    assert!(matches!(
        call(&running.node.socket_path(), Request::Add(p)).await,
        Reply::Ok { .. }
    ));
    let record = running.node.ledger.pod(&key).unwrap();
    let kept: Vec<String> = record
        .settings
        .host_stack_cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(kept, ["169.254.20.10/32"]);
}

/// Our own mutations that landed are confirmed from the metadata service
/// (local, not counted against the account's API limits), not by reading
/// the cloud; when the metadata service shows otherwise than the ledger (an
/// address someone else put on our ENI), the next pass reads the cloud and
/// adopts what it shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_changes_are_confirmed_from_metadata_and_a_disagreement_reads_the_cloud() {
    use terway_cloud::api::AssignPrivateIpAddresses;
    use terway_cloud::emulator::DEFAULT_REGION;
    let em = Emulator::start(Scenario::default()).await.unwrap();
    // a sync period longer than the test: every read here has another cause
    let text = terway_tests::eni_conf(
        &em.url(),
        &["vsw-large0000000001"],
        r#", "max_pool_size": 1, "min_pool_size": 0"#,
    )
    .replace(r#""ip_pool_sync_period": "1s""#, r#""ip_pool_sync_period": "1h""#);
    let cfg = Arc::new(terway_config::Config::parse(&text, None).unwrap().config);
    let running = start(cfg, Duration::from_secs(30)).await;
    let socket = running.node.socket_path();
    let count = |action: &str| em.calls().get(action).map_or(0, |m| m.values().sum::<u64>());
    let settle = || async {
        for _ in 0..200 {
            let s = running.node.ledger.snapshot();
            let idle = s.ips.values().filter(|r| r.state == IpState::Idle).count();
            if s.intents.is_empty()
                && idle <= 1
                && s.ips
                    .values()
                    .all(|r| !matches!(r.state, IpState::Cooling { .. } | IpState::Releasing))
            {
                // the pass after the last step (confirming it) has run too
                tokio::time::sleep(Duration::from_millis(300)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the node did not settle: {:?}", running.node.ledger.snapshot().ips);
    };
    // pods that come and go: each of our own changes after them wants confirming
    let add_and_delete = |pods: std::ops::Range<usize>| {
        let socket = socket.clone();
        async move {
            for i in pods.clone() {
                assert!(matches!(call(&socket, Request::Add(pod(i))).await, Reply::Ok { .. }));
            }
            for i in pods {
                assert_eq!(call(&socket, Request::Del(pod(i))).await, Reply::Ok { network: None });
            }
        }
    };
    for i in 0..4 {
        assert!(
            matches!(call(&socket, Request::Add(pod(i))).await, Reply::Ok { .. }),
            "pod {i}"
        );
    }
    settle().await;
    let reads = count("DescribeNetworkInterfaces");
    // three surplus addresses go back to the cloud: our own mutation, confirmed locally
    for i in 0..4 {
        assert_eq!(call(&socket, Request::Del(pod(i))).await, Reply::Ok { network: None });
    }
    settle().await;
    assert!(count("UnassignPrivateIpAddresses") > 0, "{:?}", em.calls());
    assert_eq!(
        count("DetachNetworkInterface"),
        0,
        "the test expects addresses, not an ENI, to go back"
    );
    assert_eq!(
        count("DescribeNetworkInterfaces"),
        reads,
        "the release was confirmed by reading the cloud, not the metadata service"
    );

    // someone else puts an address on our ENI; our next own mutation finds
    // the metadata service disagreeing, and the cloud read adopts it
    let s = running.node.ledger.snapshot();
    let eni = s.enis.values().find(|e| !e.exclusive).unwrap().id.clone();
    let client = api_client(&em);
    let foreign = client
        .call(&AssignPrivateIpAddresses {
            region_id: DEFAULT_REGION.into(),
            network_interface_id: eni.clone(),
            secondary_private_ip_address_count: Some(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .addresses()[0];
    add_and_delete(10..12).await;
    settle().await;
    assert!(
        count("DescribeNetworkInterfaces") > reads,
        "the disagreement was not followed by a cloud read"
    );
    // the ledger holds exactly what the cloud shows: the foreign address was
    // adopted (and given back as surplus, or kept)
    let ledger_ips: BTreeSet<String> = running
        .node
        .ledger
        .snapshot()
        .ips
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ledger_ips, cloud_ips(&em), "foreign address {foreign}");

    // a metadata service that fails cannot confirm: the cloud is read instead
    let reads = count("DescribeNetworkInterfaces");
    em.set_faults(terway_cloud::emulator::Faults {
        metadata_unavailable: true,
        ..Default::default()
    });
    add_and_delete(20..22).await;
    settle().await;
    assert!(
        count("DescribeNetworkInterfaces") > reads,
        "our own changes were taken as confirmed without the metadata service"
    );
}

/// A dual-stack node takes addresses only from ENIs with IPv6: an ENI an
/// IPv4 run left on a vSwitch without IPv6 is no part of the pool, never
/// grows, keeps its old pod, and goes back to the cloud once that pod is
/// gone; new ENIs come only from a vSwitch with an IPv6 CIDR; a node whose
/// vSwitches have none says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_node_uses_only_vswitches_and_enis_with_ipv6() {
    const SMALL: &str = "vsw-small0000000001";
    const LARGE: &str = "vsw-large0000000001";
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let pool = r#", "max_pool_size": 3, "min_pool_size": 1, "ip_cooldown": "1s""#;
    let v4 = start(config(&em, &[SMALL], pool), Duration::from_secs(10)).await;
    let reply = call(&v4.node.socket_path(), Request::Add(pod(0))).await;
    assert!(matches!(reply, Reply::Ok { network: Some(_) }), "{reply:?}");
    let old_eni = v4.node.ledger.snapshot().enis.into_values().next().unwrap();
    assert_eq!(old_eni.vswitch_id, SMALL);
    let dir = v4.stop().await;

    let dual = format!(r#"{pool}, "ip_stack": "dual""#);
    let running = start_in(config(&em, &[SMALL, LARGE], &dual), Duration::from_secs(20), dir).await;
    let socket = running.node.socket_path();
    let Reply::Ok { network: Some(net) } = call(&socket, Request::Add(pod(1))).await else {
        panic!("a dual-stack pod was not served")
    };
    let s = running.node.ledger.snapshot();
    let ip: std::net::IpAddr = net.ipv4.split('/').next().unwrap().parse().unwrap();
    let ipv6: std::net::IpAddr = net
        .ipv6
        .as_deref()
        .expect("an IPv6 address")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let eni_of = |ip: &std::net::IpAddr| s.enis[&s.ips[ip].eni_id].clone();
    assert_eq!(eni_of(&ip).vswitch_id, LARGE, "the pod's ENI has IPv6");
    assert_eq!(eni_of(&ip).id, eni_of(&ipv6).id, "both families from one ENI");
    // the old ENI serves its pod still, and takes no address of either family
    let on_old = |s: &terway_statestore::State| s.ips.values().filter(|r| r.eni_id == old_eni.id).count();
    let before = on_old(&s);
    for _ in 0..10 {
        running.node.reconcile_soon();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = running.node.ledger.snapshot();
    assert!(s.enis.contains_key(&old_eni.id), "the old pod's ENI was kept");
    assert_eq!(on_old(&s), before, "the ENI without IPv6 did not grow");
    assert!(s
        .ips
        .values()
        .any(|r| r.eni_id == old_eni.id && matches!(r.state, IpState::Bound(_))));

    // the old pod goes: its ENI goes back to the cloud
    assert_eq!(call(&socket, Request::Del(pod(0))).await, Reply::Ok { network: None });
    let gone = |em: &Emulator| {
        !em.dump()["enis"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["id"] == old_eni.id.as_str())
    };
    let mut retired = false;
    for _ in 0..150 {
        running.node.reconcile_soon();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if gone(&em) && !running.node.ledger.snapshot().enis.contains_key(&old_eni.id) {
            retired = true;
            break;
        }
    }
    assert!(retired, "the idle ENI without IPv6 was not given back");
    let s = running.node.ledger.snapshot();
    assert!(
        s.enis.values().all(|e| e.vswitch_id == LARGE && e.ipv6.is_some()),
        "{:?}",
        s.enis
    );
    assert!(
        running.node.ledger.check().is_empty(),
        "{:?}",
        running.node.ledger.check()
    );
    running.stop().await;

    // only vSwitches without IPv6: the ADD fails, naming them
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let running = start(config(&em, &[SMALL], &dual), Duration::from_secs(3)).await;
    let reply = call(&running.node.socket_path(), Request::Add(pod(2))).await;
    let Reply::Error { details, .. } = &reply else {
        panic!("{reply:?}")
    };
    assert!(details.contains("IPv6") && details.contains(SMALL), "{details}");
    assert!(
        em.dump()["enis"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["primary"] == true),
        "no ENI was made on a vSwitch without IPv6"
    );
}

/// Taking over from upstream Terway by its pod records (ResRelation.db, as
/// its daemon writes them): an address a live pod holds there is never
/// handed out, whatever the datapath (no host route is needed); records of
/// pods whose sandbox is gone are left out; the ENI of a pod given one whole
/// is left alone (not adopted, no address of it handed out); the DEL of the
/// pod gives its address back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_pod_records_keep_their_addresses_until_the_pods_go() {
    let em = Emulator::start(Scenario::default()).await.unwrap();
    let client = api_client(&em);
    // the shared ENI upstream made, four addresses besides its primary, and one given whole to a pod
    let eni = terway_tests::upstream_eni(&client, 4).await;
    let whole = terway_tests::upstream_eni(&client, 0).await;
    let secondaries: Vec<String> = eni.ipv4_addresses()[1..].iter().map(ToString::to_string).collect();
    assert_eq!(secondaries.len(), 4);

    // upstream's records: a live pod, a pod whose sandbox is gone, an
    // exited one, and one given a whole ENI
    let dir = tempfile::tempdir().unwrap();
    let live_netns = dir.path().join("cni-live");
    std::fs::write(&live_netns, b"").unwrap(); // stands for the namespace's bind mount
    let record = |name: &str, ip: &str, netns: &std::path::Path, exited: bool, whole_eni: bool| {
        let (eni, network) = if whole_eni {
            (&whole, "VPCENI")
        } else {
            (&eni, "ENIMultiIP")
        };
        let value = serde_json::json!({
            "Resources": [{"type": "eniIp", "id": format!("{}.{ip}", eni.mac_address), "extra_eip_info": null,
                "eni_id": eni.network_interface_id, "eni_mac": eni.mac_address, "ipv4": ip, "ipv6": ""}],
            "PodInfo": {"Name": name, "Namespace": "default", "PodNetworkType": network,
                "PodIPs": {"IPv4": ip, "IPv6": null}, "SandboxExited": exited, "PodUID": format!("uid-{name}")},
            "NetNs": netns.display().to_string(),
            "ContainerID": format!("sandbox-{name}"),
            "NetConf": "[]",
        });
        (
            format!("default/{name}").into_bytes(),
            serde_json::to_vec(&value).unwrap(),
        )
    };
    let db = dir.path().join("ResRelation.db");
    terway_tests::bolt_writer::write(
        &db,
        b"relation",
        &[
            record("web-0", &secondaries[0], &live_netns, false, false),
            record("gone-0", &secondaries[1], &dir.path().join("cni-gone"), false, false),
            record("exited-0", &secondaries[2], &live_netns, true, false),
            record("whole-0", &whole.private_ip_address, &live_netns, false, true),
        ],
    )
    .unwrap();

    let cfg = config(
        &em,
        &["vsw-large0000000001"],
        r#", "max_pool_size": 10, "min_pool_size": 0, "ip_cooldown": "1s""#,
    );
    let running = start_with(cfg, Duration::from_secs(10), tempfile::tempdir().unwrap(), |o| {
        o.upstream_db = Some(db.clone());
    })
    .await;
    let held: std::net::IpAddr = secondaries[0].parse().unwrap();
    let placeholder = terway_datapath::names::host_veth_name("default", "web-0", "eth0");
    let mut adopted = false;
    for _ in 0..100 {
        running.node.reconcile_soon();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if running
            .node
            .ledger
            .snapshot()
            .enis
            .contains_key(&eni.network_interface_id)
        {
            adopted = true;
            break;
        }
    }
    assert!(adopted, "the upstream ENI was not adopted");
    let s = running.node.ledger.snapshot();
    let IpState::Bound(b) = &s.ips[&held].state else {
        panic!("{held} is not held: {:?}", s.ips[&held])
    };
    assert_eq!(
        (b.pod.namespace.as_str(), b.pod.name.as_str()),
        ("_upstream", placeholder.as_str())
    );
    let record = running.node.ledger.pod(&b.pod).unwrap();
    assert_eq!(record.container_id, "sandbox-web-0");
    assert_eq!(record.netns, live_netns.display().to_string());
    // the ENI's other addresses (its primary too, as upstream) are free:
    // pods take them, and never the held one
    let socket = running.node.socket_path();
    let mut given = BTreeSet::new();
    for i in 0..4 {
        let Reply::Ok { network: Some(net) } = call(&socket, Request::Add(pod(i))).await else {
            panic!("pod {i} not served")
        };
        given.insert(net.ipv4.split('/').next().unwrap().to_owned());
    }
    let free: BTreeSet<String> = eni
        .ipv4_addresses()
        .iter()
        .map(ToString::to_string)
        .filter(|ip| *ip != secondaries[0])
        .collect();
    assert_eq!(given, free, "the left-out records' addresses went to new pods first");
    for i in 4..9 {
        let Reply::Ok { network: Some(net) } = call(&socket, Request::Add(pod(i))).await else {
            panic!("pod {i} not served")
        };
        assert_ne!(net.ipv4.split('/').next().unwrap(), secondaries[0]);
        assert_ne!(net.ipv4.split('/').next().unwrap(), whole.private_ip_address);
    }
    let s = running.node.ledger.snapshot();
    assert!(
        !s.enis.contains_key(&whole.network_interface_id),
        "the ENI inside an upstream pod was adopted"
    );
    // the pod goes: its DEL gives the address back
    let web = PodRequest::new("default", "web-0", "sandbox-web-0", &live_netns.display().to_string());
    assert_eq!(call(&socket, Request::Del(web)).await, Reply::Ok { network: None });
    let s = running.node.ledger.snapshot();
    assert!(!matches!(s.ips[&held].state, IpState::Bound(_)), "{:?}", s.ips[&held]);
    assert!(s.pods.values().all(|p| p.pod.namespace != "_upstream"));
    assert!(
        running.node.ledger.check().is_empty(),
        "{:?}",
        running.node.ledger.check()
    );
}
