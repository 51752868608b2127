//! Real container runtimes through terway: podman (CNI backend),
//! containerd's `ctr run --cni`, and containerd's CRI driven as kubelet
//! drives it run containers on the `terway` network of a
//! `terwayd run --standalone` that wires them into a simulated node, against
//! the API emulator. Prints each container's address and the time the
//! runtime's call and terwayd's ADD took.
//!
//! The whole test runs in a private network and mount namespace of its own
//! (it re-executes itself under `unshare`): tmpfs over /run/netns and
//! /etc/cni/net.d, container storage in a temporary directory, so the
//! machine's root namespaces are never touched. Root only, and podman, runc,
//! containerd and busybox-static installed (`.ci/run` installs them);
//! otherwise it says why it skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use terway_cloud::emulator::{Emulator, Scenario};
use terway_node::cni::exchange;
use terway_node::cni::protocol::{Inspect, Reply, Request};
use terway_node::simulated_node::SimulatedNode;

const INNER: &str = "TERWAY_RUNTIMES_INSIDE";
const VPC_ADDR: &str = "10.99.0.1";

fn main() -> ExitCode {
    if let Some(why) = skip_reason() {
        println!("SKIPPED runtimes: {why}");
        return ExitCode::SUCCESS;
    }
    if std::env::var_os(INNER).is_none() {
        // the same binary again, in namespaces of its own
        let before = root_state();
        let status = Command::new("unshare")
            .args(["--mount", "--net", "--propagation", "private"])
            .arg(std::env::current_exe().unwrap())
            .env(INNER, "1")
            .status()
            .unwrap();
        if !status.success() {
            return ExitCode::FAILURE;
        }
        assert_eq!(before, root_state(), "the root namespaces changed");
        println!("test runtimes::root_namespaces_unchanged ... ok");
        return ExitCode::SUCCESS;
    }
    run_inside();
    ExitCode::SUCCESS
}

/// Links, routes, rules and netfilter tables of the machine's own namespace,
/// and the namespaces and CNI configs it lists.
fn root_state() -> String {
    let run = |cmd: &[&str]| {
        Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    [
        run(&["ip", "-o", "link"]),
        run(&["ip", "route", "show", "table", "all"]),
        run(&["ip", "rule"]),
        run(&["nft", "list", "tables"]),
        run(&["ip", "netns", "list"]),
        run(&["ls", "/etc/cni/net.d"]),
    ]
    .join("\n")
}

fn skip_reason() -> Option<String> {
    let root =
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
    if !root {
        return Some("needs root for network and mount namespaces".into());
    }
    for (tool, package) in [
        ("podman", "podman"),
        ("runc", "runc"),
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("unshare", "util-linux"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is not installed (Debian package {package})"));
        }
    }
    if !Path::new("/usr/lib/cni/loopback").exists() {
        return Some("no CNI loopback plugin for containerd's CRI (Debian package containernetworking-plugins)".into());
    }
    if !busybox_is_static() {
        return Some("no static /bin/busybox for the container image (Debian package busybox-static)".into());
    }
    None
}

fn busybox_is_static() -> bool {
    Command::new("ldd")
        .arg("/bin/busybox")
        .output()
        .is_ok_and(|o| !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("not a dynamic"))
        && Path::new("/bin/busybox").exists()
}

fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(status.success(), "{args:?}");
}

/// The private namespaces: loopback up, fresh /run/netns, /etc/cni/net.d
/// and /opt (where `ctr run --cni` looks for plugins: /opt/cni/bin).
fn prepare_namespaces() {
    sh(&["ip", "link", "set", "lo", "up"]);
    for dir in ["/run/netns", "/etc/cni/net.d", "/opt"] {
        std::fs::create_dir_all(dir).unwrap();
        sh(&["mount", "-t", "tmpfs", "tmpfs", dir]);
    }
    std::fs::create_dir_all("/opt/cni/bin").unwrap();
}

struct Podman {
    base: Vec<String>,
    conf: PathBuf,
}

impl Podman {
    fn new(dir: &Path, plugin_dir: &Path) -> Self {
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                r#"[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "cni"
network_config_dir = "/etc/cni/net.d"
cni_plugin_dirs = ["{}", "/usr/lib/cni"]
"#,
                plugin_dir.display()
            ),
        )
        .unwrap();
        let base = vec![
            "--root".into(),
            dir.join("storage").display().to_string(),
            "--runroot".into(),
            dir.join("run").display().to_string(),
            "--tmpdir".into(),
            dir.join("tmp").display().to_string(),
        ];
        Self { base, conf }
    }

    /// Runs podman; (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        self.run_in(None, args)
    }

    /// Runs podman with `netns` as its host's network namespace (`nsenter --net`).
    fn run_in(&self, netns: Option<&Path>, args: &[&str]) -> (bool, String, String) {
        let mut cmd = match netns {
            None => Command::new("podman"),
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("podman");
                c
            }
        };
        let out = cmd
            .args(&self.base)
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "podman {args:?}: {err}");
        out
    }

    fn ip_of(&self, container: &str) -> String {
        self.ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.terway.IPAddress}}",
            container,
        ])
    }
}

/// terwayd's view over its socket.
fn inspect(socket: &Path, what: Inspect) -> serde_json::Value {
    match exchange(socket, &Request::Inspect { what }, Duration::from_secs(10)).unwrap() {
        Reply::Inspect { body } => body,
        other => panic!("{other:?}"),
    }
}

/// Addresses terwayd has bound to containers.
fn bound(socket: &Path) -> Vec<String> {
    let pods = inspect(socket, Inspect::Pods);
    pods.as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["ips"]
                .as_array()
                .unwrap()
                .iter()
                .map(|ip| ip.as_str().unwrap().to_owned())
        })
        .collect()
}

fn run_inside() {
    prepare_namespaces();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sim = Arc::new(SimulatedNode::new("rt").unwrap());
    sim.add_vpc_address(&format!("{VPC_ADDR}/32")).unwrap();
    let em = rt.block_on(Emulator::start(Scenario::default())).unwrap();
    em.add_hotplug_hook(sim.clone());

    // terwayd as the systemd unit runs it, its host being the simulated node
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("eni.socket");
    let own = format!(
        r#", "max_pool_size": 5, "min_pool_size": 2, "ledger_path": "{}", "socket_path": "{}""#,
        dir.path().join("ledger").display(),
        socket.display()
    );
    let config = dir.path().join("eni_conf");
    std::fs::write(
        &config,
        terway_tests::eni_conf(&em.url(), &["vsw-large0000000001"], &own),
    )
    .unwrap();
    let log = dir.path().join("terwayd.log");
    let terwayd = KillOnDrop(
        Command::new(terway_tests::binary("terwayd"))
            .args(["--log-format", "json", "run", "--standalone", "--config"])
            .arg(&config)
            .arg("--host-netns")
            .arg(sim.node_ns_path())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while exchange(&socket, &Request::Status, Duration::from_secs(2)).is_err() {
        assert!(Instant::now() < deadline, "terwayd did not serve");
        std::thread::sleep(Duration::from_millis(50));
    }

    // the network podman uses: terway alone, in a conflist that sorts first
    let plugin_dir = PathBuf::from("/opt/cni/bin");
    std::os::unix::fs::symlink(terway_tests::binary("terway"), plugin_dir.join("terway")).unwrap();
    // containerd's CRI sets up the sandbox's loopback with the reference plugin
    std::os::unix::fs::symlink("/usr/lib/cni/loopback", plugin_dir.join("loopback")).unwrap();
    std::fs::write(
        "/etc/cni/net.d/10-terway.conflist",
        serde_json::json!({"cniVersion": "1.0.0", "name": "terway",
            "plugins": [{"type": "terway", "socket": socket}]})
        .to_string(),
    )
    .unwrap();
    let podman = Podman::new(dir.path(), &plugin_dir);
    // a local busybox image: no registry is reachable
    let rootfs = dir.path().join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "ip", "sleep", "ping", "cat", "hostname", "nc"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let tar = dir.path().join("busybox.tar");
    sh(&["tar", "-C", rootfs.to_str().unwrap(), "-cf", tar.to_str().unwrap(), "."]);
    podman.ok(&["import", tar.to_str().unwrap(), "localhost/busybox:latest"]);

    let reaches_vpc = |container: &str| {
        podman
            .run(&["exec", container, "ping", "-c", "1", "-W", "2", VPC_ADDR])
            .0
    };
    let route = |ip: &str| {
        let pods = inspect(&socket, Inspect::Pods);
        let eni = pods
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["ips"][0] == ip)
            .and_then(|p| p["eni_id"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{ip} in terwayd's pods: {pods}"));
        let enis = inspect(&socket, Inspect::Enis);
        let mac = enis
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == eni.as_str())
            .and_then(|e| e["mac"].as_str())
            .unwrap()
            .to_owned();
        sim.route_to_pod(ip, &mac).unwrap();
    };

    // run -d: the address podman reports is the one terwayd bound
    let t = Instant::now();
    podman.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "terway",
        "localhost/busybox",
        "sleep",
        "600",
    ]);
    let took = t.elapsed();
    let ip = podman.ip_of("web");
    assert_eq!(bound(&socket), vec![ip.clone()], "podman's address is terwayd's");
    route(&ip);
    assert!(reaches_vpc("web"), "{ip} reaches the VPC");
    println!(
        "podman: container web got {ip}; `podman run -d` took {:.0} ms, terwayd's ADD {}",
        took.as_secs_f64() * 1e3,
        add_took(&log).last().map_or("?".into(), |ms| format!("{ms:.1} ms"))
    );
    // stop gives the address back; start takes one again
    podman.ok(&["stop", "-t", "0", "web"]);
    assert!(bound(&socket).is_empty(), "stop released the address");
    podman.ok(&["start", "web"]);
    let again = podman.ip_of("web");
    assert_eq!(bound(&socket), vec![again.clone()]);
    podman.ok(&["rm", "-f", "web"]);
    assert!(bound(&socket).is_empty(), "rm released the address");

    // run --rm without --name: a generated name that is no Kubernetes name
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "terway",
        "localhost/busybox",
        "ip",
        "-4",
        "-o",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(out.contains("inet "), "{out}");
    assert!(bound(&socket).is_empty(), "--rm released the address");

    // a pod: two containers share one address
    podman.ok(&["pod", "create", "--name", "duo", "--network", "terway"]);
    podman.ok(&[
        "run",
        "-d",
        "--pod",
        "duo",
        "--name",
        "one",
        "localhost/busybox",
        "sleep",
        "600",
    ]);
    podman.ok(&[
        "run",
        "-d",
        "--pod",
        "duo",
        "--name",
        "two",
        "localhost/busybox",
        "sleep",
        "600",
    ]);
    let addr = |c: &str| podman.ok(&["exec", c, "ip", "-4", "-o", "addr", "show", "eth0"]);
    let (one, two) = (addr("one"), addr("two"));
    assert_eq!(one, two, "the pod's containers share the address");
    assert_eq!(bound(&socket).len(), 1, "one address for the pod");
    podman.ok(&["pod", "rm", "-f", "duo"]);
    assert!(bound(&socket).is_empty(), "pod rm released the address");

    // -p through portmap chained after terway: podman's host is the node here
    // (where the pod's host-side interface is), a client there reaches the
    // published port on one of the node's addresses
    std::fs::write(
        "/etc/cni/net.d/20-terway-portmap.conflist",
        serde_json::json!({"cniVersion": "1.0.0", "name": "terway-portmap", "plugins": [
            {"type": "terway", "socket": socket},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}]})
        .to_string(),
    )
    .unwrap();
    let node_ns = sim.node_ns_path();
    sh(&["ip", "-n", &sim.node_ns, "addr", "add", "10.255.0.1/32", "dev", "lo"]);
    let (ok, _, err) = podman.run_in(
        Some(&node_ns),
        &[
            "run",
            "-d",
            "--name",
            "published",
            "--network",
            "terway-portmap",
            "-p",
            "8080:80",
            "localhost/busybox",
            "sh",
            "-c",
            "while true; do echo hello-from-the-pod | nc -l -p 80; done",
        ],
    );
    assert!(ok, "podman run -p: {err}");
    let reply = terway_datapath::NetNs::open(&node_ns)
        .unwrap()
        .enter(|| {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                use std::io::Read;
                let attempt =
                    std::net::TcpStream::connect_timeout(&"10.255.0.1:8080".parse().unwrap(), Duration::from_secs(2))
                        .and_then(|mut c| {
                            c.set_read_timeout(Some(Duration::from_secs(2)))?;
                            let mut text = String::new();
                            c.read_to_string(&mut text)?;
                            Ok(text)
                        });
                match attempt {
                    Ok(text) if !text.is_empty() => return Ok(text),
                    other if Instant::now() > deadline => return other,
                    _ => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        })
        .unwrap();
    assert_eq!(
        reply.as_ref().map(|t| t.trim()).ok(),
        Some("hello-from-the-pod"),
        "{reply:?}"
    );
    let (ok, _, err) = podman.run_in(Some(&node_ns), &["rm", "-f", "published"]);
    assert!(ok, "podman rm: {err}");
    assert!(
        bound(&socket).is_empty(),
        "rm released the published container's address"
    );
    println!("test runtimes::podman ... ok");

    // containerd's ctr, with the same image saved by podman as an OCI archive
    let image = dir.path().join("busybox-oci.tar");
    podman.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        image.to_str().unwrap(),
        "localhost/busybox:latest",
    ]);
    ctr(dir.path(), &image, &socket, &log);
    println!("test runtimes::ctr ... ok");

    // containerd through CRI, as kubelet drives it; the sandbox image is a
    // busybox that sleeps (no registry to pull pause from)
    let tar_path = tar.to_str().unwrap();
    podman.ok(&[
        "import",
        "--change",
        "CMD [\"/bin/sleep\", \"1000000\"]",
        tar_path,
        "localhost/pause:latest",
    ]);
    let pause = dir.path().join("pause-oci.tar");
    podman.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        pause.to_str().unwrap(),
        "localhost/pause:latest",
    ]);
    rt.block_on(cri(dir.path(), &pause, &socket, &log, &sim.vpc_ns));
    println!("test runtimes::cri ... ok");

    drop(podman);
    drop(terwayd);
    drop(em);
    drop(sim);
}

/// A child process killed when dropped, also when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every container and pod goes with the test, also when it fails.
impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["pod", "rm", "-a", "-f"]);
        let _ = self.run(&["rm", "-a", "-f"]);
    }
}

/// terwayd's `ADD served` times (ms), from its JSON log.
fn add_took(log: &Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "ADD served")
        .filter_map(|v| v["fields"]["took_ms"].as_f64())
        .collect()
}

/// A containerd of the test's own (root, state and socket under `root`),
/// killed on drop; `cri`: with its CRI plugin, as kubelet's nodes run it.
struct Containerd {
    address: PathBuf,
    child: std::process::Child,
}

impl Containerd {
    fn start(root: &Path, cri: bool) -> Self {
        let address = root.join("containerd.sock");
        let config = root.join("config.toml");
        std::fs::create_dir_all(root).unwrap();
        let plugins = if cri {
            "[plugins.\"io.containerd.grpc.v1.cri\"]\nrestrict_oom_score_adj = true\nsandbox_image = \"localhost/pause:latest\"\n\
             [plugins.\"io.containerd.grpc.v1.cri\".cni]\nbin_dir = \"/opt/cni/bin\"\nconf_dir = \"/etc/cni/net.d\"\n"
        } else {
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n"
        };
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n{plugins}[grpc]\naddress = \"{a}\"\n",
                r = root.display(),
                a = address.display()
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("containerd.log")).unwrap())
            .spawn()
            .unwrap();
        let this = Self { address, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !this.ctr(&["version"]).0 {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        this
    }

    /// `ctr` against this containerd: (success, stdout, stderr).
    fn ctr(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.address)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        )
    }

    /// Imports an OCI archive into a containerd namespace; returns the image's reference.
    fn import(&self, namespace: &str, image: &Path) -> String {
        let (ok, out, err) = self.ctr(&[
            "-n",
            namespace,
            "images",
            "import",
            "--all-platforms",
            image.to_str().unwrap(),
        ]);
        assert!(ok, "ctr images import: {out} {err}");
        let (_, list, _) = self.ctr(&["-n", namespace, "images", "list", "-q"]);
        list.lines()
            .next()
            .unwrap_or_else(|| panic!("no image imported: {out}"))
            .to_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// containerd 1.6 and `ctr run --cni` (no Kubernetes arguments; its cleanup
/// DEL comes when the container exits).
fn ctr(dir: &Path, image: &Path, socket: &Path, log: &Path) {
    let containerd = Containerd::start(&dir.join("containerd"), false);
    let reference = containerd.import("default", image);
    // the container prints its address and pings the VPC; ctr's DEL follows its exit
    let t = Instant::now();
    let (ok, out, err) = containerd.ctr(&[
        "run",
        "--cni",
        "--rm",
        &reference,
        "ctr-one",
        "sh",
        "-c",
        &format!("ip -4 -o addr show eth0 && ping -c 1 -W 2 {VPC_ADDR} >/dev/null && echo reached"),
    ]);
    let took = t.elapsed();
    let took_add = add_took(log).last().copied();
    drop(containerd);
    assert!(ok, "ctr run --cni: {out}\n{err}");
    let ip = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {out}"))
        .trim_end_matches("/32")
        .to_owned();
    println!(
        "ctr: container ctr-one got {ip}; `ctr run --cni --rm` took {:.0} ms in all, terwayd's ADD {}",
        took.as_secs_f64() * 1e3,
        took_add.map_or("?".into(), |ms| format!("{ms:.1} ms"))
    );
    assert!(out.contains("reached"), "ctr-one reaches the VPC: {out}");
    assert!(bound(socket).is_empty(), "ctr's DEL released {ip}");
}

/// containerd's CRI over its socket, as kubelet drives it: RunPodSandbox
/// (the K8S_* arguments reach terway), PodSandboxStatus (its address is
/// terwayd's; the VPC answers from the sandbox), StopPodSandbox (released),
/// RemovePodSandbox.
async fn cri(dir: &Path, pause: &Path, socket: &Path, log: &Path, vpc_ns: &str) {
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
    use k8s_cri::v1::{
        LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
        RunPodSandboxRequest, StopPodSandboxRequest,
    };
    let root = dir.join("containerd-cri");
    let containerd = Containerd::start(&root, true);
    let reference = containerd.import("k8s.io", pause);
    if reference != "localhost/pause:latest" {
        let (ok, _, err) = containerd.ctr(&["-n", "k8s.io", "images", "tag", &reference, "localhost/pause:latest"]);
        assert!(ok, "ctr images tag: {err}");
    }
    let path = containerd.address.clone();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    let mut client = RuntimeServiceClient::new(channel);
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "cri-pod".into(),
            uid: "0b5e7c2a-cri-pod".into(),
            namespace: "cri".into(),
            attempt: 0,
        }),
        hostname: "cri-pod".into(),
        log_directory: root.join("logs").display().to_string(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let t = Instant::now();
    let id = client
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
        .into_inner()
        .pod_sandbox_id;
    let took = t.elapsed();
    let status = client
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    println!(
        "cri: sandbox cri/cri-pod got {ip}; RunPodSandbox took {:.0} ms, terwayd's ADD {}",
        took.as_secs_f64() * 1e3,
        add_took(log).last().map_or("?".into(), |ms| format!("{ms:.1} ms"))
    );
    assert_eq!(bound(socket), vec![ip.clone()], "the sandbox's address is terwayd's");
    let pods = inspect(socket, Inspect::Pods);
    assert_eq!(
        (pods[0]["namespace"].as_str(), pods[0]["name"].as_str()),
        (Some("cri"), Some("cri-pod")),
        "kubelet's K8S_* arguments name the pod: {pods}"
    );
    // from the sandbox's namespace, the VPC answers
    let sandbox = terway_datapath::NetNs::open(Path::new(pods[0]["netns"].as_str().unwrap())).unwrap();
    let vpc = terway_datapath::NetNs::open(&Path::new("/run/netns").join(vpc_ns)).unwrap();
    let listener = vpc
        .enter(|| std::net::TcpListener::bind((VPC_ADDR, 7901)))
        .unwrap()
        .unwrap();
    let reached = sandbox
        .enter(|| {
            std::net::TcpStream::connect_timeout(&format!("{VPC_ADDR}:7901").parse().unwrap(), Duration::from_secs(3))
        })
        .unwrap();
    assert!(reached.is_ok(), "the sandbox reaches the VPC: {reached:?}");
    drop(listener);
    client
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    assert!(bound(socket).is_empty(), "StopPodSandbox released {ip}");
    client
        .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    drop(containerd);
}
