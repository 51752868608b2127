//! Setting up, checking, repairing and tearing down one pod's network.

use crate::names::*;
use crate::netlink::*;
use crate::netns::NetNs;
use crate::tbf::Tbf;
use crate::DatapathError;
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

const MAIN_TABLE: u32 = 254;

/// An ENI as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniLink {
    pub mac: [u8; 6],
    /// The policy-routing table of this ENI ([`eni_route_table`]).
    pub route_table: u32,
    pub gateway: Ipv4Addr,
    /// The vSwitch CIDR.
    pub cidr: Ipv4Net,
    pub mtu: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Shared ENI through a veth pair and policy routing.
    Veth,
    /// The ENI itself moves into the pod.
    ExclusiveEni,
    /// Shared ENI through an ipvlan L2 child (veth where the kernel lacks ipvlan).
    Ipvlan,
}

/// Rate limits in bits per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub ingress_bps: Option<u64>,
    pub egress_bps: Option<u64>,
}

/// Everything that decides one pod's datapath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub namespace: String,
    pub name: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    pub eni: EniLink,
    /// The node's primary address (source of the ENI's ARP, target of pod→node routes).
    pub node_ip: Ipv4Addr,
    pub mode: Mode,
    pub bandwidth: Bandwidth,
    /// Exclusive ENI: Service traffic goes through the host peer.
    pub service_cidr: Option<Ipv4Net>,
}

impl PodSpec {
    pub fn host_veth(&self) -> String {
        host_veth_name(&self.namespace, &self.name, &self.ifname)
    }

    fn tmp_name(&self, prefix: &str) -> String {
        format!("{prefix}{}", &self.host_veth()[4..])
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupResult {
    /// The mode really used (ipvlan falls back to veth where unsupported).
    pub mode: Mode,
    pub host_veth: Option<String>,
    /// MAC of the pod's interface.
    pub pod_mac: Vec<u8>,
    pub warnings: Vec<String>,
}

/// One way the actual state differs from the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift(pub String);

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const IPVLAN_UNKNOWN: u8 = 0;
const IPVLAN_YES: u8 = 1;
const IPVLAN_NO: u8 = 2;

/// The datapath of one node, working in its "host" namespace.
#[derive(Debug)]
pub struct Datapath {
    host: NetNs,
    nl: Netlink,
    ipvlan: AtomicU8,
    eni_wait: Duration,
    /// ENIs set up by [`Datapath::ensure_eni`]: MAC → (ifindex, name). A pod's
    /// setup skips the ENI work for these; `repair` forgets the entry first.
    ready_enis: std::sync::Mutex<std::collections::HashMap<[u8; 6], (u32, String)>>,
}

impl Datapath {
    /// Works in `host` (the node's namespace). Needs a tokio runtime.
    pub fn new(host: NetNs) -> Result<Self, DatapathError> {
        let nl = Netlink::open(&host)?;
        Ok(Self {
            host,
            nl,
            ipvlan: AtomicU8::new(IPVLAN_UNKNOWN),
            eni_wait: Duration::from_secs(10),
            ready_enis: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// How long to wait for a hot-plugged ENI link to appear (default 10 s).
    pub fn with_eni_wait(mut self, wait: Duration) -> Self {
        self.eni_wait = wait;
        self
    }

    pub fn host(&self) -> &NetNs {
        &self.host
    }

    pub fn netlink(&self) -> &Netlink {
        &self.nl
    }

    /// Finds the ENI's link (waiting for hot-plug), brings it up with its MTU
    /// and the node IP /32, and puts its default route in its table.
    pub async fn ensure_eni(&self, eni: &EniLink, node_ip: Ipv4Addr) -> Result<u32, DatapathError> {
        let link = self.wait_for_eni(eni).await?;
        let index = link_index(&link);
        if !link_is_up(&link) || link_mtu(&link) != Some(eni.mtu) {
            self.nl.set_link(index, Some(true), Some(eni.mtu), None).await?;
        }
        for (ip, prefix) in self.nl.addresses(index).await? {
            if ip.is_ipv4() && ip != IpAddr::V4(node_ip) {
                self.nl.del_address(index, ip, prefix).await?;
            }
        }
        self.nl.ensure_address(index, IpAddr::V4(node_ip), 32).await?;
        self.nl.replace_route(&eni_default_route(eni, index)).await?;
        let name = link_name(&link).unwrap_or_default();
        if !name.is_empty() {
            self.host
                .write_sysctl(&format!("net/ipv4/conf/{name}/rp_filter"), "0")?;
        }
        self.ready_enis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(eni.mac, (index, name));
        Ok(index)
    }

    /// The ENI's (ifindex, link name), setting it up first unless it is known ready.
    async fn ready_eni(&self, eni: &EniLink, node_ip: Ipv4Addr) -> Result<(u32, String), DatapathError> {
        let known = self
            .ready_enis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&eni.mac)
            .cloned();
        if let Some(k) = known {
            return Ok(k);
        }
        let index = self.ensure_eni(eni, node_ip).await?;
        let cached = self
            .ready_enis
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&eni.mac)
            .cloned();
        Ok(cached.unwrap_or((index, String::new())))
    }

    /// The ENI's link on the host, waiting up to `eni_wait` for it to be hot-plugged.
    async fn wait_for_eni(&self, eni: &EniLink) -> Result<rtnetlink::packet_route::link::LinkMessage, DatapathError> {
        let deadline = Instant::now() + self.eni_wait;
        loop {
            if let Some(l) = self.nl.link_by_mac(&eni.mac).await? {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(DatapathError::NotFound(format!(
                    "no link with MAC {} in {} after {:?}",
                    format_mac(&eni.mac),
                    self.host.path().display(),
                    self.eni_wait
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn host_sysctls(&self, links: &[&str], ipv6: bool) -> Result<(), DatapathError> {
        self.host.write_sysctl("net/ipv4/ip_forward", "1")?;
        self.host.write_sysctl("net/ipv4/conf/all/rp_filter", "0")?;
        for l in links {
            self.host.write_sysctl(&format!("net/ipv4/conf/{l}/rp_filter"), "0")?;
        }
        if ipv6 {
            self.host.write_sysctl("net/ipv6/conf/all/forwarding", "1")?;
        }
        Ok(())
    }

    /// Puts the pod's network in place; doing it again changes nothing.
    pub async fn setup(&self, pod: &PodSpec) -> Result<SetupResult, DatapathError> {
        // an exclusive ENI goes into the pod whole: the host does not route through it
        let (eni_index, eni_name) = match pod.mode {
            Mode::ExclusiveEni => (0, String::new()),
            _ => self.ready_eni(&pod.eni, pod.node_ip).await?,
        };
        let pod_ns = NetNs::open(&pod.netns)?;
        let p = Netlink::open(&pod_ns)?;
        if let Some(lo) = p.link_by_name("lo").await? {
            if !link_is_up(&lo) {
                p.set_link(link_index(&lo), Some(true), None, None).await?;
            }
        }
        match pod.mode {
            Mode::Veth => self.setup_veth(pod, &pod_ns, &p, &eni_name, Vec::new()).await,
            Mode::ExclusiveEni => self.setup_exclusive(pod, &pod_ns, &p).await,
            Mode::Ipvlan => {
                if self.ipvlan.load(Ordering::Relaxed) != IPVLAN_NO {
                    match self.setup_ipvlan(pod, &pod_ns, &p, eni_index).await {
                        Ok(r) => {
                            self.ipvlan.store(IPVLAN_YES, Ordering::Relaxed);
                            return Ok(r);
                        }
                        Err(Unsupported::No(reason)) => {
                            tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), reason = %reason,
                                "IPVLAN seems unavailable on this kernel; using veth instead");
                            self.ipvlan.store(IPVLAN_NO, Ordering::Relaxed);
                        }
                        Err(Unsupported::Failed(e)) => return Err(e),
                    }
                }
                let warning = "ipvlan is not supported by this kernel; the pod uses veth + policy routing".to_owned();
                let r = self.setup_veth(pod, &pod_ns, &p, &eni_name, vec![warning]).await?;
                Ok(r)
            }
        }
    }

    /// A veth pair `host_name` ↔ `pod_name` (in the pod), reused when both ends are there.
    async fn ensure_veth_pair(
        &self,
        pod: &PodSpec,
        pod_ns: &NetNs,
        p: &Netlink,
        pod_name: &str,
    ) -> Result<(u32, u32), DatapathError> {
        let host_name = pod.host_veth();
        let host_link = self.nl.link_by_name(&host_name).await?;
        let pod_link = p.link_by_name(pod_name).await?;
        if let (Some(h), Some(l)) = (&host_link, &pod_link) {
            let peer_of_host = h.attributes.iter().find_map(|a| match a {
                rtnetlink::packet_route::link::LinkAttribute::Link(i) => Some(*i),
                _ => None,
            });
            if peer_of_host == Some(link_index(l)) {
                return Ok((link_index(h), link_index(l)));
            }
        }
        if let Some(h) = host_link {
            self.nl.del_link(link_index(&h)).await?;
        }
        if let Some(l) = pod_link {
            p.del_link(link_index(&l)).await?;
        }
        self.nl
            .add_veth_with_peer_in(&host_name, pod_name, pod_ns, pod.eni.mtu)
            .await?;
        let host = self
            .nl
            .link_by_name(&host_name)
            .await?
            .ok_or_else(|| DatapathError::NotFound(format!("{host_name} vanished")))?;
        let peer = p
            .link_by_name(pod_name)
            .await?
            .ok_or_else(|| DatapathError::NotFound(format!("veth peer {pod_name} did not appear in the pod")))?;
        Ok((link_index(&host), link_index(&peer)))
    }

    async fn setup_veth(
        &self,
        pod: &PodSpec,
        pod_ns: &NetNs,
        p: &Netlink,
        eni_name: &str,
        warnings: Vec<String>,
    ) -> Result<SetupResult, DatapathError> {
        let (host_index, pod_index) = self.ensure_veth_pair(pod, pod_ns, p, &pod.ifname).await?;
        let host_link = self
            .nl
            .link_by_index(host_index)
            .await?
            .ok_or_else(|| DatapathError::NotFound("host veth".into()))?;
        let host_mac = link_mac(&host_link).unwrap_or_default();
        if pod.ipv6.is_some() {
            pod_ns.write_sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", pod.ifname), "0")?;
            pod_ns.write_sysctl(&format!("net/ipv6/conf/{}/accept_ra", pod.ifname), "0")?;
            // the address is ours alone (the cloud assigned it): no duplicate detection delay
            pod_ns.write_sysctl(&format!("net/ipv6/conf/{}/accept_dad", pod.ifname), "0")?;
            let host_name = pod.host_veth();
            self.host
                .write_sysctl(&format!("net/ipv6/conf/{host_name}/accept_dad"), "0")?;
            self.host
                .write_sysctl(&format!("net/ipv6/conf/{host_name}/accept_ra"), "0")?;
            self.host
                .write_sysctl(&format!("net/ipv6/conf/{host_name}/forwarding"), "1")?;
        }
        self.nl
            .set_link(host_index, Some(true), Some(pod.eni.mtu), None)
            .await?;
        p.set_link(pod_index, Some(true), Some(pod.eni.mtu), None).await?;
        if let Some(v6) = pod.ipv6 {
            p.ensure_address(pod_index, IpAddr::V6(v6), 128).await?;
        }
        p.ensure_address(pod_index, IpAddr::V4(pod.ipv4), 32).await?;
        p.replace_permanent_neighbour(pod_index, IpAddr::V4(POD_GATEWAY_V4), &host_mac)
            .await?;
        p.replace_route(&pod_default_route(pod_index, IpAddr::V4(POD_GATEWAY_V4)))
            .await?;
        if pod.ipv6.is_some() {
            p.replace_permanent_neighbour(pod_index, IpAddr::V6(POD_GATEWAY_V6), &host_mac)
                .await?;
            p.replace_route(&pod_default_route(pod_index, IpAddr::V6(POD_GATEWAY_V6)))
                .await?;
        }
        for ip in pod_ips(pod) {
            self.nl.replace_route(&host_route_to_pod(ip, host_index)).await?;
            for rule in pod_rules(ip, pod.eni.route_table) {
                self.nl.ensure_rule(&rule).await?;
            }
        }
        let host_name = pod.host_veth();

        self.host_sysctls(&[&host_name, eni_name], pod.ipv6.is_some())?;
        self.apply_bandwidth(&self.nl, host_index, pod.bandwidth.ingress_bps, pod.eni.mtu)
            .await?;
        self.apply_bandwidth(p, pod_index, pod.bandwidth.egress_bps, pod.eni.mtu)
            .await?;
        let pod_mac = p
            .link_by_index(pod_index)
            .await?
            .and_then(|l| link_mac(&l))
            .unwrap_or_default();
        Ok(SetupResult {
            mode: Mode::Veth,
            host_veth: Some(host_name),
            pod_mac,
            warnings,
        })
    }

    async fn apply_bandwidth(&self, nl: &Netlink, index: u32, bps: Option<u64>, mtu: u32) -> Result<(), DatapathError> {
        match bps {
            Some(bps) => {
                let tbf = Tbf::from_bits_per_second(bps, mtu);
                let current = nl.root_qdisc(index).await?;
                if current
                    .as_ref()
                    .is_some_and(|q| q.kind == "tbf" && q.tbf_rate == Some(tbf.rate.min(u64::from(u32::MAX))))
                {
                    return Ok(());
                }
                nl.replace_root_tbf(index, &tbf).await
            }
            None => {
                if nl.root_qdisc(index).await?.is_some_and(|q| q.kind == "tbf") {
                    nl.del_root_qdisc(index).await?;
                }
                Ok(())
            }
        }
    }

    async fn setup_exclusive(&self, pod: &PodSpec, pod_ns: &NetNs, p: &Netlink) -> Result<SetupResult, DatapathError> {
        // the ENI link: in the host still, or already in the pod from an earlier setup
        let in_pod = match p.link_by_mac(&pod.eni.mac).await? {
            Some(l) => l,
            None => {
                let l = self.wait_for_eni(&pod.eni).await?;
                self.nl.set_link(link_index(&l), Some(false), None, None).await?;
                self.nl.move_link(link_index(&l), pod_ns).await?;
                p.link_by_mac(&pod.eni.mac)
                    .await?
                    .ok_or_else(|| DatapathError::NotFound("the ENI did not arrive in the pod".into()))?
            }
        };
        let index = link_index(&in_pod);
        if link_name(&in_pod).as_deref() != Some(pod.ifname.as_str()) {
            p.set_link(index, Some(false), None, Some(&pod.ifname)).await?;
        }
        p.set_link(index, Some(true), Some(pod.eni.mtu), None).await?;
        p.ensure_address(index, IpAddr::V4(pod.ipv4), 32).await?;
        p.replace_route(&pod_default_route(index, IpAddr::V4(pod.eni.gateway)))
            .await?;
        // the host peer: Service and node traffic go through the host
        let (host_index, peer_index) = self.ensure_veth_pair(pod, pod_ns, p, "veth1").await?;
        let host_mac = self
            .nl
            .link_by_index(host_index)
            .await?
            .and_then(|l| link_mac(&l))
            .unwrap_or_default();
        self.nl
            .set_link(host_index, Some(true), Some(pod.eni.mtu), None)
            .await?;
        p.set_link(peer_index, Some(true), Some(pod.eni.mtu), None).await?;
        p.ensure_address(peer_index, IpAddr::V4(pod.ipv4), 32).await?;
        p.replace_permanent_neighbour(peer_index, IpAddr::V4(POD_GATEWAY_V4), &host_mac)
            .await?;
        let via_host = |destination: IpNet| RouteSpec {
            destination,
            gateway: Some(IpAddr::V4(POD_GATEWAY_V4)),
            oif: peer_index,
            table: MAIN_TABLE,
            scope_link: false,
            onlink: true,
        };
        p.replace_route(&via_host(IpNet::V4(Ipv4Net::new(pod.node_ip, 32).unwrap_or_default())))
            .await?;
        if let Some(svc) = pod.service_cidr {
            p.replace_route(&via_host(IpNet::V4(svc))).await?;
        }
        self.nl
            .replace_route(&host_route_to_pod(IpAddr::V4(pod.ipv4), host_index))
            .await?;
        self.host_sysctls(&[&pod.host_veth()], false)?;
        self.apply_bandwidth(p, index, pod.bandwidth.egress_bps, pod.eni.mtu)
            .await?;
        Ok(SetupResult {
            mode: Mode::ExclusiveEni,
            host_veth: Some(pod.host_veth()),
            pod_mac: pod.eni.mac.to_vec(),
            warnings: Vec::new(),
        })
    }

    async fn setup_ipvlan(
        &self,
        pod: &PodSpec,
        pod_ns: &NetNs,
        p: &Netlink,
        eni_index: u32,
    ) -> Result<SetupResult, Unsupported> {
        let slave = ipvlan_slave_name(eni_index);
        let slave_link = match self.nl.link_by_name(&slave).await? {
            Some(l) => l,
            None => {
                add_ipvlan(&self.nl, &slave, eni_index, pod.eni.mtu).await?;
                self.nl
                    .link_by_name(&slave)
                    .await?
                    .ok_or_else(|| Unsupported::Failed(DatapathError::NotFound(slave.clone())))?
            }
        };
        let slave_index = link_index(&slave_link);
        self.nl.set_link(slave_index, Some(true), None, None).await?;
        self.nl
            .ensure_host_scoped_address(slave_index, IpAddr::V4(pod.node_ip), 32)
            .await?;
        let child = match p.link_by_name(&pod.ifname).await? {
            Some(l) if link_mac(&l).as_deref() == Some(&pod.eni.mac[..]) => l,
            other => {
                if let Some(stale) = other {
                    p.del_link(link_index(&stale)).await?;
                }
                let tmp = pod.tmp_name("ipv");
                add_ipvlan(&self.nl, &tmp, eni_index, pod.eni.mtu).await?;
                let l = self
                    .nl
                    .link_by_name(&tmp)
                    .await?
                    .ok_or_else(|| Unsupported::Failed(DatapathError::NotFound(tmp.clone())))?;
                self.nl.move_link(link_index(&l), pod_ns).await?;
                let moved = p
                    .link_by_name(&tmp)
                    .await?
                    .ok_or_else(|| Unsupported::Failed(DatapathError::NotFound(tmp.clone())))?;
                p.set_link(link_index(&moved), None, None, Some(&pod.ifname)).await?;
                moved
            }
        };
        let index = link_index(&child);
        p.set_link(index, Some(true), None, None).await?;
        p.ensure_address(index, IpAddr::V4(pod.ipv4), pod.eni.cidr.prefix_len())
            .await?;
        p.replace_route(&pod_default_route(index, IpAddr::V4(pod.eni.gateway)))
            .await?;
        p.replace_route(&RouteSpec {
            destination: IpNet::V4(Ipv4Net::new(pod.node_ip, 32).unwrap_or_default()),
            gateway: None,
            oif: index,
            table: MAIN_TABLE,
            scope_link: true,
            onlink: false,
        })
        .await?;
        p.replace_permanent_neighbour(index, IpAddr::V4(pod.node_ip), &pod.eni.mac)
            .await?;
        self.nl
            .replace_route(&host_route_to_pod(IpAddr::V4(pod.ipv4), slave_index))
            .await?;
        self.apply_bandwidth(p, index, pod.bandwidth.egress_bps, pod.eni.mtu)
            .await?;
        Ok(SetupResult {
            mode: Mode::Ipvlan,
            host_veth: None,
            pod_mac: pod.eni.mac.to_vec(),
            warnings: Vec::new(),
        })
    }

    /// Removes what setup made. Goes on past failures and reports them all;
    /// a pod namespace that is gone is not a failure.
    pub async fn teardown(&self, pod: &PodSpec) -> Result<(), DatapathError> {
        let mut problems = Vec::new();
        let mut note = |r: Result<(), DatapathError>| {
            if let Err(e) = r {
                problems.push(e.to_string());
            }
        };
        let pod_ns = match NetNs::open_if_exists(&pod.netns) {
            Ok(ns) => ns,
            Err(e) => {
                note(Err(e));
                None
            }
        };
        // in the pod: give the ENI back, remove our interfaces
        if let Some(ns) = &pod_ns {
            match Netlink::open(ns) {
                Ok(p) => {
                    if pod.mode == Mode::ExclusiveEni {
                        note(self.return_eni(pod, &p).await);
                    }
                    for name in [pod.ifname.as_str(), "veth1"] {
                        if pod.mode == Mode::ExclusiveEni && name == pod.ifname {
                            continue;
                        }
                        match p.link_by_name(name).await {
                            Ok(Some(l)) => note(p.del_link(link_index(&l)).await),
                            Ok(None) => {}
                            Err(e) => note(Err(e)),
                        }
                    }
                }
                Err(e) => note(Err(e)),
            }
        }
        // on the host: rules, routes, the host veth
        for ip in pod_ips(pod) {
            for rule in pod_rules(ip, pod.eni.route_table) {
                note(self.nl.del_rules(&rule).await.map(|_| ()));
            }
        }
        let host_name = pod.host_veth();
        match self.nl.link_by_name(&host_name).await {
            Ok(Some(l)) => note(self.nl.del_link(link_index(&l)).await),
            Ok(None) => {}
            Err(e) => note(Err(e)),
        }
        // a route left behind by a host veth that is already gone, or the ipvlan slave's
        for ip in pod_ips(pod) {
            match self.nl.routes(MAIN_TABLE, ip.is_ipv4()).await {
                Ok(routes) => {
                    let host = host_prefix(ip);
                    for r in routes.iter().filter(|r| route_destination(r) == Some(host)) {
                        if let Some(oif) = route_oif(r) {
                            note(self.nl.del_route(&host_route_to_pod(ip, oif)).await);
                        }
                    }
                }
                Err(e) => note(Err(e)),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DatapathError::Teardown(problems))
        }
    }

    /// Exclusive ENI: back to the host namespace, down, under a name from its MAC.
    async fn return_eni(&self, pod: &PodSpec, p: &Netlink) -> Result<(), DatapathError> {
        let Some(l) = p.link_by_mac(&pod.eni.mac).await? else {
            return Ok(());
        };
        let index = link_index(&l);
        p.set_link(index, Some(false), None, Some(&returned_eni_name(&pod.eni.mac)))
            .await?;
        p.move_link(index, &self.host).await
    }

    /// How the pod's actual state differs from what setup would make.
    pub async fn check(&self, pod: &PodSpec) -> Result<Vec<Drift>, DatapathError> {
        let mut drift = Vec::new();
        let mut miss = |what: String| drift.push(Drift(what));
        let Some(pod_ns) = NetNs::open_if_exists(&pod.netns)? else {
            return Ok(vec![Drift(format!("pod namespace {} is gone", pod.netns.display()))]);
        };
        let p = Netlink::open(&pod_ns)?;
        let eni_link = match pod.mode {
            Mode::ExclusiveEni => p.link_by_mac(&pod.eni.mac).await?,
            _ => self.nl.link_by_mac(&pod.eni.mac).await?,
        };
        let Some(eni_link) = eni_link else {
            return Ok(vec![Drift(format!("ENI link {} not found", format_mac(&pod.eni.mac)))]);
        };
        let pod_link = p.link_by_name(&pod.ifname).await?;
        match &pod_link {
            None => miss(format!("pod interface {} is missing", pod.ifname)),
            Some(l) => {
                if !link_is_up(l) {
                    miss(format!("pod interface {} is down", pod.ifname));
                }
                let addrs = p.addresses(link_index(l)).await?;
                if !addrs.iter().any(|(ip, _)| *ip == IpAddr::V4(pod.ipv4)) {
                    miss(format!("pod interface {} lacks {}", pod.ifname, pod.ipv4));
                }
            }
        }
        let host_veth = self.nl.link_by_name(&pod.host_veth()).await?;
        let on_ipvlan = really_ipvlan(pod, &self.ipvlan);
        let uses_veth = !on_ipvlan;
        if uses_veth {
            match &host_veth {
                None => miss(format!("host veth {} is missing", pod.host_veth())),
                Some(h) if !link_is_up(h) => miss(format!("host veth {} is down", pod.host_veth())),
                Some(h) => {
                    for ip in pod_ips(pod)
                        .into_iter()
                        .filter(|ip| pod.mode != Mode::ExclusiveEni || ip.is_ipv4())
                    {
                        let want = host_route_to_pod(ip, link_index(h));
                        if !self.nl.has_route(&want).await? {
                            miss(format!(
                                "host route {} dev {} is missing",
                                want.destination,
                                pod.host_veth()
                            ));
                        }
                    }
                    if let Some(bps) = pod
                        .bandwidth
                        .ingress_bps
                        .filter(|_| pod.mode == Mode::Veth || pod.mode == Mode::Ipvlan)
                    {
                        let rate = Tbf::from_bits_per_second(bps, pod.eni.mtu).rate;
                        let q = self.nl.root_qdisc(link_index(h)).await?;
                        if !q.is_some_and(|q| q.kind == "tbf" && q.tbf_rate == Some(rate)) {
                            miss(format!("ingress TBF of {bps} bit/s on {} is missing", pod.host_veth()));
                        }
                    }
                }
            }
        }
        if pod.mode != Mode::ExclusiveEni {
            for ip in pod_ips(pod) {
                for rule in pod_rules(ip, pod.eni.route_table) {
                    if !self.nl.has_rule(&rule).await? {
                        miss(format!(
                            "rule prio {} {} {} is missing",
                            rule.priority,
                            if rule.from { "from" } else { "to" },
                            ip
                        ));
                    }
                }
            }
            let table_route = eni_default_route(&pod.eni, link_index(&eni_link));
            if !self.nl.has_route(&table_route).await? {
                miss(format!(
                    "default route via {} in table {} is missing",
                    pod.eni.gateway, pod.eni.route_table
                ));
            }
        }
        if let Some(l) = &pod_link {
            // veth pods route through the link-local gateway; ENI-attached ones straight to the vSwitch
            let gw = if pod.mode == Mode::ExclusiveEni || on_ipvlan {
                IpAddr::V4(pod.eni.gateway)
            } else {
                IpAddr::V4(POD_GATEWAY_V4)
            };
            let routes = p.routes(MAIN_TABLE, true).await?;
            let has_default = routes.iter().any(|r| {
                route_destination(r) == Some(default_v4())
                    && route_oif(r) == Some(link_index(l))
                    && route_gateway(r) == Some(gw)
            });
            if !has_default {
                miss(format!("pod default route via {gw} is missing"));
            }
            if let Some(bps) = pod.bandwidth.egress_bps {
                let rate = Tbf::from_bits_per_second(bps, pod.eni.mtu).rate;
                let q = p.root_qdisc(link_index(l)).await?;
                if !q.is_some_and(|q| q.kind == "tbf" && q.tbf_rate == Some(rate)) {
                    miss(format!("egress TBF of {bps} bit/s on {} is missing", pod.ifname));
                }
            }
        }
        Ok(drift)
    }

    /// Restores the desired state where [`check`](Self::check) finds drift;
    /// returns what was wrong.
    pub async fn repair(&self, pod: &PodSpec) -> Result<Vec<Drift>, DatapathError> {
        let drift = self.check(pod).await?;
        if !drift.is_empty() {
            // the ENI's own set-up may be part of what drifted: redo it too
            self.ready_enis
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&pod.eni.mac);
            tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), drift = ?drift, "repairing pod datapath");
            self.setup(pod).await?;
        }
        Ok(drift)
    }
}

/// Whether an ipvlan pod really runs on ipvlan (not the veth fallback).
fn really_ipvlan(pod: &PodSpec, ipvlan: &AtomicU8) -> bool {
    pod.mode == Mode::Ipvlan && ipvlan.load(Ordering::Relaxed) == IPVLAN_YES
}

/// An ipvlan failure: the kernel lacks it, or something else went wrong.
enum Unsupported {
    No(String),
    Failed(DatapathError),
}

impl From<DatapathError> for Unsupported {
    fn from(e: DatapathError) -> Self {
        Self::Failed(e)
    }
}

async fn add_ipvlan(nl: &Netlink, name: &str, parent: u32, mtu: u32) -> Result<(), Unsupported> {
    match nl
        .add_link(
            crate::ipvlan::child_message(name, parent, mtu),
            &format!("ipvlan {name}"),
        )
        .await
    {
        Ok(()) => Ok(()),
        Err(DatapathError::Netlink { message, .. })
            if message
                .rsplit("errno ")
                .next()
                .and_then(|n| n.trim_end_matches(')').parse().ok())
                .is_some_and(crate::ipvlan::means_unsupported) =>
        {
            Err(Unsupported::No(message))
        }
        Err(e) => Err(Unsupported::Failed(e)),
    }
}

fn default_v4() -> IpNet {
    IpNet::V4(Ipv4Net::default())
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).unwrap_or(IpNet::V4(Ipv4Net::default()))
}

fn pod_ips(pod: &PodSpec) -> Vec<IpAddr> {
    std::iter::once(IpAddr::V4(pod.ipv4))
        .chain(pod.ipv6.map(IpAddr::V6))
        .collect()
}

fn pod_rules(ip: IpAddr, table: u32) -> [RuleSpec; 2] {
    [
        RuleSpec {
            priority: RULE_PRIORITY_TO_POD,
            from: false,
            address: ip,
            table: MAIN_TABLE,
        },
        RuleSpec {
            priority: RULE_PRIORITY_FROM_POD,
            from: true,
            address: ip,
            table,
        },
    ]
}

fn host_route_to_pod(ip: IpAddr, host_index: u32) -> RouteSpec {
    RouteSpec {
        destination: host_prefix(ip),
        gateway: None,
        oif: host_index,
        table: MAIN_TABLE,
        scope_link: true,
        onlink: false,
    }
}

fn pod_default_route(pod_index: u32, gateway: IpAddr) -> RouteSpec {
    let destination = if gateway.is_ipv4() {
        default_v4()
    } else {
        IpNet::V6(ipnet::Ipv6Net::default())
    };
    RouteSpec {
        destination,
        gateway: Some(gateway),
        oif: pod_index,
        table: MAIN_TABLE,
        scope_link: false,
        onlink: true,
    }
}

fn eni_default_route(eni: &EniLink, eni_index: u32) -> RouteSpec {
    RouteSpec {
        destination: default_v4(),
        gateway: Some(IpAddr::V4(eni.gateway)),
        oif: eni_index,
        table: eni.route_table,
        scope_link: false,
        onlink: true,
    }
}
