//! The datapath in real network namespaces (root only). One test runs the
//! scenarios in order, so it can check at the end that the namespace the
//! tests run in is exactly as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod lab;

use lab::*;
use std::net::Ipv4Addr;
use terway_datapath::*;

fn pod(lab_pod: &Ns, name: &str, ip: Ipv4Addr, eni: &EniLink, mode: Mode) -> PodSpec {
    PodSpec {
        namespace: "test".into(),
        name: name.into(),
        netns: lab_pod.path(),
        ifname: "eth0".into(),
        ipv4: ip,
        ipv6: None,
        eni: eni.clone(),
        node_ip: NODE_IP,
        mode,
        bandwidth: Bandwidth::default(),
        service_cidr: Some("172.21.0.0/20".parse().unwrap()),
        host_stack_cidrs: vec!["169.254.20.10/32".parse().unwrap()],
    }
}

#[test]
fn datapath_in_namespaces() {
    if let Some(why) = skip_reason() {
        println!("SKIPPED datapath_in_namespaces: {why}");
        return;
    }
    let before = root_state();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        two_pods_two_enis().await;
        idempotent_setup_teardown_and_repair().await;
        exclusive_eni().await;
        ipvlan_or_fallback().await;
        egress_redirect_into_a_host_link().await;
        bandwidth_is_shaped().await;
        dual_stack_pods().await;
        waits_for_hot_plug().await;
    });
    drop(rt);
    let after = root_state();
    assert_eq!(before, after, "the root namespace changed");
}

async fn two_pods_two_enis() {
    let lab = Lab::new();
    let eni1 = lab.add_eni(1);
    let eni2 = lab.add_eni(2);
    let dp = Datapath::new(lab.node.handle()).unwrap();
    let (ns_a, ns_b) = (Ns::new("pa"), Ns::new("pb"));
    let a = pod(&ns_a, "a", Ipv4Addr::new(192, 168, 1, 10), &eni1, Mode::Veth);
    let b = pod(&ns_b, "b", Ipv4Addr::new(192, 168, 2, 10), &eni2, Mode::Veth);
    let ra = dp.setup(&a).await.unwrap();
    dp.setup(&b).await.unwrap();
    assert_eq!(ra.mode, Mode::Veth);
    assert_eq!(ra.host_veth.as_deref(), Some(a.host_veth().as_str()));
    lab.vpc_knows(1, a.ipv4, &eni1);
    lab.vpc_knows(2, b.ipv4, &eni2);

    // pod ↔ pod and pod → node on the same node
    assert!(
        tcp_reaches(ns_a.path(), ns_b.path(), b.ipv4, 7001),
        "pod a reaches pod b"
    );
    assert!(
        tcp_reaches(ns_b.path(), ns_a.path(), a.ipv4, 7002),
        "pod b reaches pod a"
    );
    assert!(
        tcp_reaches(ns_a.path(), lab.node.path(), NODE_IP, 7003),
        "pod a reaches the node"
    );
    assert!(
        tcp_reaches(lab.node.path(), ns_a.path(), a.ipv4, 7004),
        "the node reaches pod a"
    );

    // each pod leaves through the ENI that owns its address
    for (p, ns, own, other) in [(&a, &ns_a, "gw1", "gw2"), (&b, &ns_b, "gw2", "gw1")] {
        let (own0, other0) = (lab.vpc.rx_packets(own), lab.vpc.rx_packets(other));
        for port in 0..20 {
            assert!(
                tcp_reaches(ns.path(), lab.vpc.path(), VPC_ADDR, 7100 + port),
                "{} reaches the VPC",
                p.name
            );
        }
        let (own_d, other_d) = (lab.vpc.rx_packets(own) - own0, lab.vpc.rx_packets(other) - other0);
        println!(
            "pod {}: {own_d} packets arrived through {own}, {other_d} through {other}",
            p.name
        );
        assert!(own_d >= 60, "{} sent through its own ENI: {own_d}", p.name);
        assert!(other_d < 10, "{} leaked through the other ENI: {other_d}", p.name);
    }
    // and the VPC reaches the pods back
    assert!(
        tcp_reaches(lab.vpc.path(), ns_a.path(), a.ipv4, 7200),
        "the VPC reaches pod a"
    );
    assert!(
        tcp_reaches(lab.vpc.path(), ns_b.path(), b.ipv4, 7201),
        "the VPC reaches pod b"
    );
    assert!(dp.check(&a).await.unwrap().is_empty());
    dp.teardown(&a).await.unwrap();
    dp.teardown(&b).await.unwrap();
}

async fn idempotent_setup_teardown_and_repair() {
    let lab = Lab::new();
    let eni = lab.add_eni(1);
    let dp = Datapath::new(lab.node.handle()).unwrap();
    let empty_node = {
        dp.ensure_eni(&eni, NODE_IP).await.unwrap();
        lab.node.state()
    };
    let ns = Ns::new("pi");
    let mut p = pod(&ns, "idem", Ipv4Addr::new(192, 168, 1, 20), &eni, Mode::Veth);
    p.bandwidth = Bandwidth {
        ingress_bps: Some(50_000_000),
        egress_bps: Some(40_000_000),
    };
    dp.setup(&p).await.unwrap();
    let (node_once, pod_once) = (lab.node.state(), ns.state());
    dp.setup(&p).await.unwrap();
    assert_eq!(lab.node.state(), node_once, "setup twice = setup once (node)");
    assert_eq!(ns.state(), pod_once, "setup twice = setup once (pod)");
    assert!(
        node_once.contains(&format!("from {} lookup 1001", p.ipv4)),
        "{node_once}"
    );
    assert!(node_once.contains(&format!("to {} lookup main", p.ipv4)), "{node_once}");
    assert!(
        node_once.contains("default via 192.168.1.253 dev eni1 table 1001 proto static onlink"),
        "{node_once}"
    );
    assert!(
        pod_once.contains("default via 169.254.1.1 dev eth0 proto static onlink"),
        "{pod_once}"
    );
    assert!(pod_once.contains("169.254.1.1 dev eth0 lladdr"), "{pod_once}");
    assert!(pod_once.contains("qdisc tbf 1: dev eth0 root"), "{pod_once}");
    assert!(
        node_once.contains(&format!("qdisc tbf 1: dev {} root", p.host_veth())),
        "{node_once}"
    );
    let drift = dp.check(&p).await.unwrap();
    assert!(drift.is_empty(), "{drift:?}");

    // repair after a rule, a route, a qdisc and the gateway's static
    // neighbour were deleted by hand, and a sysctl turned back on
    lab.node
        .ip(&["rule", "del", "pref", "2048", "from", &p.ipv4.to_string()]);
    lab.node.ip(&["route", "del", &format!("{}/32", p.ipv4)]);
    sh(&["tc", "-n", &ns.name, "qdisc", "del", "dev", "eth0", "root"]);
    ns.ip(&["neigh", "del", "169.254.1.1", "dev", "eth0"]);
    let rp_filter = format!("net.ipv4.conf.{}.rp_filter=1", p.host_veth());
    sh(&["ip", "netns", "exec", &lab.node.name, "sysctl", "-qw", &rp_filter]);
    let drift = dp.check(&p).await.unwrap();
    let kinds: std::collections::BTreeSet<String> = drift.iter().map(|d| format!("{:?}", d.kind)).collect();
    assert_eq!(drift.len(), 5, "{drift:?}");
    assert_eq!(
        kinds,
        ["Neighbour", "Qdisc", "Route", "Rule", "Sysctl"]
            .map(String::from)
            .into(),
        "{drift:?}"
    );
    let fixed = dp.repair(&p).await.unwrap();
    assert_eq!(fixed, drift);
    assert!(dp.check(&p).await.unwrap().is_empty());
    assert_eq!(
        lab.node.state(),
        node_once,
        "repaired to exactly the desired state (node)"
    );
    assert_eq!(ns.state(), pod_once, "repaired to exactly the desired state (pod)");

    // dropping the limits removes the qdiscs
    p.bandwidth = Bandwidth::default();
    dp.setup(&p).await.unwrap();
    assert!(!ns.state().contains("qdisc tbf"));

    // teardown: rules and routes go at once, the link in the background
    dp.teardown(&p).await.unwrap();
    let right_after = lab.node.state();
    assert!(
        !right_after.contains(&format!("from {}", p.ipv4)) && !right_after.contains(&format!("{} dev", p.ipv4)),
        "{right_after}"
    );
    dp.released_links_deleted().await;
    let after_teardown = lab.node.state();
    assert_eq!(after_teardown, empty_node, "teardown leaves the node as before the pod");
    dp.teardown(&p).await.unwrap();
    dp.released_links_deleted().await;
    assert_eq!(lab.node.state(), empty_node, "teardown twice = teardown once");

    // the same pod again right after its teardown, its old link maybe not yet deleted
    dp.setup(&p).await.unwrap();
    dp.teardown(&p).await.unwrap();
    dp.setup(&p).await.unwrap();
    dp.released_links_deleted().await;
    assert!(
        dp.check(&p).await.unwrap().is_empty(),
        "set up over a link being deleted"
    );
    // a crash between teardown and the deletion: the marked link is found and deleted
    sh(&[
        "ip",
        "-n",
        &lab.node.name,
        "link",
        "set",
        &p.host_veth(),
        "group",
        &terway_datapath::RELEASED_GROUP.to_string(),
    ]);
    let restarted = Datapath::new(lab.node.handle()).unwrap();
    assert_eq!(restarted.remove_released_links().await.unwrap(), 1);
    restarted.released_links_deleted().await;
    assert!(!lab.node.state().contains(&p.host_veth()));
    dp.teardown(&p).await.unwrap();
    dp.released_links_deleted().await;
    assert_eq!(lab.node.state(), empty_node);

    // a half-made setup: only the host veth exists
    lab.node.ip(&[
        "link",
        "add",
        &p.host_veth(),
        "type",
        "veth",
        "peer",
        "name",
        "halfpeer",
    ]);
    dp.teardown(&p).await.unwrap();
    dp.released_links_deleted().await;
    assert!(!lab.node.state().contains(&p.host_veth()));

    // teardown after the pod's namespace was deleted
    let gone_ns = Ns::new("pg");
    let gone = pod(&gone_ns, "gone", Ipv4Addr::new(192, 168, 1, 21), &eni, Mode::Veth);
    dp.setup(&gone).await.unwrap();
    gone_ns.delete();
    dp.teardown(&gone).await.unwrap();
    dp.released_links_deleted().await;
    let final_state = lab.node.state();
    assert!(
        !final_state.contains(&gone.ipv4.to_string()),
        "rules and routes of the gone pod are removed: {final_state}"
    );
    assert_eq!(final_state, empty_node);
}

async fn exclusive_eni() {
    let lab = Lab::new();
    let eni3 = lab.add_eni(3);
    let dp = Datapath::new(lab.node.handle()).unwrap();
    let ns = Ns::new("px");
    let x = pod(&ns, "x", Ipv4Addr::new(192, 168, 3, 20), &eni3, Mode::ExclusiveEni);
    let r = dp.setup(&x).await.unwrap();
    assert_eq!(r.mode, Mode::ExclusiveEni);
    dp.setup(&x).await.unwrap();
    assert!(
        lab.node
            .ip(&["-o", "link"])
            .lines()
            .all(|l| !l.contains("00:16:3e:00:03:01")),
        "the ENI left the node"
    );
    let pod_links = ns.ip(&["-o", "link"]);
    assert!(
        pod_links.contains("eth0") && pod_links.contains("00:16:3e:00:03:01"),
        "{pod_links}"
    );
    assert!(
        dp.check(&x).await.unwrap().is_empty(),
        "{:?}",
        dp.check(&x).await.unwrap()
    );
    lab.vpc_knows(3, x.ipv4, &eni3);
    let rx0 = lab.vpc.rx_packets("gw3");
    assert!(
        tcp_reaches(ns.path(), lab.vpc.path(), VPC_ADDR, 7300),
        "the exclusive pod reaches the VPC"
    );
    assert!(lab.vpc.rx_packets("gw3") > rx0, "through its own ENI");
    assert!(
        tcp_reaches(lab.vpc.path(), ns.path(), x.ipv4, 7301),
        "the VPC reaches the exclusive pod"
    );
    assert!(
        tcp_reaches(lab.node.path(), ns.path(), x.ipv4, 7302),
        "the node reaches it through the host peer"
    );
    dp.teardown(&x).await.unwrap();
    dp.released_links_deleted().await;
    let node_links = lab.node.ip(&["-o", "link"]);
    assert!(
        node_links.contains("00:16:3e:00:03:01"),
        "teardown returned the ENI to the host: {node_links}"
    );
    assert!(!node_links.contains(&x.host_veth()));
    dp.teardown(&x).await.unwrap();
    // and it serves again after coming back
    dp.ensure_eni(&eni3, NODE_IP).await.unwrap();
}

async fn ipvlan_or_fallback() {
    let lab = Lab::new();
    let eni = lab.add_eni(4);
    let dp = Datapath::new(lab.node.handle()).unwrap();
    let ns = Ns::new("pv");
    let v = pod(&ns, "v", Ipv4Addr::new(192, 168, 4, 30), &eni, Mode::Ipvlan);
    let r = dp.setup(&v).await.unwrap();
    lab.vpc_knows(4, v.ipv4, &eni);
    match r.mode {
        Mode::Ipvlan => println!("ipvlan: the kernel has it; the pod runs on an ipvlan child"),
        Mode::Veth => {
            println!("SKIPPED the ipvlan datapath: this kernel has no ipvlan; checked the fallback to veth instead");
            assert_eq!(r.warnings.len(), 1, "the fallback is reported: {:?}", r.warnings);
        }
        Mode::ExclusiveEni => panic!("unexpected mode"),
    }
    assert!(
        tcp_reaches(ns.path(), lab.vpc.path(), VPC_ADDR, 7400),
        "the pod reaches the VPC either way"
    );
    assert!(
        dp.check(&v).await.unwrap().is_empty(),
        "{:?}",
        dp.check(&v).await.unwrap()
    );
    // a second pod skips the probe and goes straight to what works
    let ns2 = Ns::new("pv");
    let v2 = pod(&ns2, "v2", Ipv4Addr::new(192, 168, 4, 31), &eni, Mode::Ipvlan);
    assert_eq!(dp.setup(&v2).await.unwrap().mode, r.mode);
    dp.teardown(&v).await.unwrap();
    dp.teardown(&v2).await.unwrap();
}

/// What an ipvlan node does with a pod's Service traffic, tried on a veth
/// (this kernel may have no ipvlan): a clsact egress filter on the ENI turns
/// packets to the Service CIDR into the ingress of a host link (the ipvlan
/// host slave there); other traffic leaves by the ENI as before.
async fn egress_redirect_into_a_host_link() {
    let lab = Lab::new();
    lab.add_eni(6);
    let dp = Datapath::new(lab.node.handle()).unwrap();
    let nl = dp.netlink();
    lab.node
        .ip(&["link", "add", "hs0", "type", "veth", "peer", "name", "hs1"]);
    for l in ["eni6", "hs0", "hs1"] {
        lab.node.ip(&["link", "set", l, "up"]);
    }
    let index = |name: &str| -> u32 {
        let out = lab.node.ip(&["-o", "link", "show", name]);
        out.split(':').next().unwrap().trim().parse().unwrap()
    };
    let (eni, host) = (index("eni6"), index("hs0"));
    let services: ipnet::Ipv4Net = "172.21.0.0/20".parse().unwrap();
    nl.ensure_clsact(eni).await.unwrap();
    nl.ensure_clsact(eni).await.unwrap(); // there already: fine
    assert!(nl.egress_redirects(eni).await.unwrap().is_empty());
    nl.add_egress_redirect(eni, services, host).await.unwrap();
    assert_eq!(nl.egress_redirects(eni).await.unwrap(), [(services, host)]);
    // traffic to a Service address and to the VPC, both routed out of the ENI
    lab.node.ip(&["route", "add", "172.21.0.0/20", "dev", "eni6"]);
    lab.node.ip(&["route", "add", "192.168.6.0/24", "dev", "eni6"]);
    // the VPC side's MAC, so what leaves by the ENI is taken in there
    let gw_link = lab.vpc.ip(&["-o", "link", "show", "gw6"]);
    let gw_mac = gw_link
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    for ip in ["172.21.0.5", "192.168.6.7"] {
        lab.node.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &gw_mac,
            "dev",
            "eni6",
            "nud",
            "permanent",
        ]);
    }
    // a packet counter per (namespace, destination): the host link's
    // ingress in the node, the gateway's in the VPC
    let counters = |ns: &str, iif: &str| {
        let script = format!(
            "table inet redirect_test {{\n chain pre {{\n type filter hook prerouting priority 0;\n \
             iifname \"{iif}\" ip daddr 172.21.0.5 counter\n iifname \"{iif}\" ip daddr 192.168.6.7 counter\n }}\n}}\n"
        );
        let mut nft = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut nft.stdin.take().unwrap(), script.as_bytes()).unwrap();
        assert!(nft.wait().unwrap().success(), "nft refused the counters");
    };
    let counted = |ns: &str, to: &str| -> u64 {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            ns,
            "nft",
            "list",
            "table",
            "inet",
            "redirect_test",
        ]);
        out.lines()
            .find(|l| l.contains(&format!("daddr {to} ")))
            .and_then(|l| l.split("packets ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    if std::process::Command::new("nft").arg("--version").output().is_ok() {
        counters(&lab.node.name, "hs0");
        counters(&lab.vpc.name, "gw6");
        in_ns(lab.node.path(), || {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for to in ["172.21.0.5:53", "192.168.6.7:53"] {
                s.send_to(b"x", to).unwrap();
            }
        })
        .join()
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (node, vpc) = (&lab.node.name, &lab.vpc.name);
        assert_eq!(
            counted(node, "172.21.0.5"),
            1,
            "the Service packet arrived at the host link"
        );
        assert_eq!(
            counted(vpc, "172.21.0.5"),
            0,
            "the Service packet did not leave by the ENI"
        );
        assert_eq!(counted(vpc, "192.168.6.7"), 1, "the VPC packet left by the ENI");
        assert_eq!(counted(node, "192.168.6.7"), 0);
    } else {
        println!("SKIPPED the traffic part of egress_redirect_into_a_host_link: nft is not installed");
    }
}

async fn bandwidth_is_shaped() {
    let lab = Lab::new();
    let eni = lab.add_eni(5);
    let dp = Datapath::new(lab.node.handle()).unwrap();
    let (ns_e, ns_i) = (Ns::new("pe"), Ns::new("pn"));
    let mut egress = pod(&ns_e, "egress", Ipv4Addr::new(192, 168, 5, 40), &eni, Mode::Veth);
    egress.bandwidth.egress_bps = Some(20_000_000);
    let mut ingress = pod(&ns_i, "ingress", Ipv4Addr::new(192, 168, 5, 41), &eni, Mode::Veth);
    ingress.bandwidth.ingress_bps = Some(30_000_000);
    dp.setup(&egress).await.unwrap();
    dp.setup(&ingress).await.unwrap();
    lab.vpc_knows(5, egress.ipv4, &eni);
    lab.vpc_knows(5, ingress.ipv4, &eni);
    let out = tcp_rate(ns_e.path(), lab.vpc.path(), VPC_ADDR, 7500, 3.0);
    let inn = tcp_rate(lab.vpc.path(), ns_i.path(), ingress.ipv4, 7501, 3.0);
    println!(
        "egress limit 20 Mbit/s: measured {:.2} Mbit/s; ingress limit 30 Mbit/s: measured {:.2} Mbit/s",
        out / 1e6,
        inn / 1e6
    );
    assert!(
        (out / 20e6 - 1.0).abs() <= 0.2,
        "egress {:.2} Mbit/s is not within 20 % of 20",
        out / 1e6
    );
    assert!(
        (inn / 30e6 - 1.0).abs() <= 0.2,
        "ingress {:.2} Mbit/s is not within 20 % of 30",
        inn / 1e6
    );
    dp.teardown(&egress).await.unwrap();
    dp.teardown(&ingress).await.unwrap();
}

async fn dual_stack_pods() {
    let lab = Lab::new();
    let eni = lab.add_eni(6);
    let dp = Datapath::new(lab.node.handle()).unwrap();
    let (ns_a, ns_b) = (Ns::new("p6"), Ns::new("p6"));
    let mut a = pod(&ns_a, "six-a", Ipv4Addr::new(192, 168, 6, 10), &eni, Mode::Veth);
    a.ipv6 = Some("fd00:6::10".parse().unwrap());
    let mut b = pod(&ns_b, "six-b", Ipv4Addr::new(192, 168, 6, 11), &eni, Mode::Veth);
    b.ipv6 = Some("fd00:6::11".parse().unwrap());
    dp.setup(&a).await.unwrap();
    dp.setup(&b).await.unwrap();
    let pod_state = ns_a.state();
    assert!(pod_state.contains("inet6 fd00:6::10/128"), "{pod_state}");
    assert!(pod_state.contains("default via fe80::1 dev eth0"), "{pod_state}");
    let node_state = lab.node.state();
    assert!(node_state.contains("from fd00:6::10 lookup 1006"), "{node_state}");
    assert!(node_state.contains("to fd00:6::10 lookup main"), "{node_state}");
    assert!(
        node_state.contains(&format!("fd00:6::10 dev {}", a.host_veth())),
        "{node_state}"
    );
    assert!(
        tcp_reaches(
            ns_a.path(),
            ns_b.path(),
            "fd00:6::11".parse::<std::net::Ipv6Addr>().unwrap(),
            7600
        ),
        "pod a reaches pod b over IPv6"
    );
    assert!(dp.check(&a).await.unwrap().is_empty());
    dp.teardown(&a).await.unwrap();
    dp.teardown(&b).await.unwrap();
    assert!(!lab.node.state().contains("fd00:6::"), "IPv6 rules and routes are gone");
}

async fn waits_for_hot_plug() {
    let lab = Lab::new();
    let dp = Datapath::new(lab.node.handle())
        .unwrap()
        .with_eni_wait(std::time::Duration::from_secs(5));
    let eni = EniLink {
        mac: names::parse_mac("00:16:3e:00:07:01").unwrap(),
        route_table: names::eni_route_table(7),
        gateway: Ipv4Addr::new(192, 168, 7, 253),
        cidr: "192.168.7.0/24".parse().unwrap(),
        gateway_v6: None,
        cidr_v6: None,
        mtu: 1500,
    };
    // the ENI is attached while the datapath waits for it
    let (node, vpc) = (lab.node.name.clone(), lab.vpc.name.clone());
    let plug = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        sh(&[
            "ip",
            "link",
            "add",
            "eni7",
            "netns",
            &node,
            "address",
            "00:16:3e:00:07:01",
            "type",
            "veth",
            "peer",
            "name",
            "gw7",
            "netns",
            &vpc,
        ]);
    });
    let index = dp.ensure_eni(&eni, NODE_IP).await.unwrap();
    plug.join().unwrap();
    assert!(index > 0);
    let short = Datapath::new(lab.node.handle())
        .unwrap()
        .with_eni_wait(std::time::Duration::from_millis(200));
    let missing = EniLink {
        mac: names::parse_mac("00:16:3e:00:08:01").unwrap(),
        ..eni
    };
    let e = short.ensure_eni(&missing, NODE_IP).await.unwrap_err();
    assert!(e.to_string().contains("00:16:3e:00:08:01"), "{e}");
}
