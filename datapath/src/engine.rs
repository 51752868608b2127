//! The one engine: applies, checks, repairs and tears down whatever desired
//! state a driver produced. Every operation is idempotent: applying twice is
//! applying once, and teardown of what is half made or already gone succeeds.

use crate::desired::{Desired, Item, LinkPlan, LinkRef, MacOf, Route};
use crate::driver::{self, host_prefix, MAIN_TABLE};
use crate::names::{format_mac, returned_eni_name};
use crate::netlink::*;
use crate::netns::NetNs;
use crate::spec::{Drift, DriftKind, EniLink, Mode, PodSpec, SetupResult, Side};
use crate::tbf::Tbf;
use crate::DatapathError;
use rtnetlink::packet_route::link::{InfoKind, LinkMessage};
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// What this kernel was found to do about ipvlan (it cannot change while we run).
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
    /// ENIs whose host set-up is done: a pod's setup skips it for these;
    /// `repair` forgets an ENI before redoing it.
    ready_enis: Mutex<HashSet<[u8; 6]>>,
    /// Host links of pods torn down, deleted in the background.
    reaper: Arc<Reaper>,
}

/// The alias and the link group a pod's host link gets when its pod is
/// torn down. Its deletion is left to the background: a veth's deletion
/// waits for an RCU grace period (tens of milliseconds) while it holds the
/// kernel's rtnl lock, so released links are gathered and deleted as one
/// group, one grace period for all of them; after a crash
/// [`Datapath::remove_released_links`] deletes the group.
pub const RELEASED_ALIAS: &str = "terway-rs: pod released";
pub const RELEASED_GROUP: u32 = 0x7472_7764;

/// How long released links gather before they are deleted together.
const REAP_GATHER: Duration = Duration::from_millis(200);

/// Deletes the released links' group, off the reply path.
#[derive(Debug, Default)]
struct Reaper {
    /// Links marked since the last deletion.
    pending: std::sync::atomic::AtomicUsize,
    /// A task is gathering or deleting.
    running: std::sync::atomic::AtomicBool,
    /// Wakes [`Datapath::released_links_deleted`] when nothing is pending.
    idle: tokio::sync::Notify,
}

impl Reaper {
    /// A link was marked: delete the group soon.
    fn soon(self: &Arc<Self>, nl: &Netlink) {
        self.pending.fetch_add(1, Ordering::SeqCst);
        if self.running.swap(true, Ordering::SeqCst) {
            return; // the running task takes it
        }
        let (reaper, nl) = (self.clone(), nl.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_GATHER).await;
                let marked = reaper.pending.swap(0, Ordering::SeqCst);
                if marked > 0 {
                    if let Err(e) = nl.del_link_group(RELEASED_GROUP).await {
                        // the next sweep deletes the group again
                        tracing::warn!(error = %e, "deleting released pod links failed");
                    }
                    continue;
                }
                reaper.running.store(false, Ordering::SeqCst);
                // a link marked between the swap and the store found the task running: go on for it
                if reaper.pending.load(Ordering::SeqCst) > 0 && !reaper.running.swap(true, Ordering::SeqCst) {
                    continue;
                }
                reaper.idle.notify_waiters();
                return;
            }
        });
    }

    fn is_idle(&self) -> bool {
        !self.running.load(Ordering::SeqCst) && self.pending.load(Ordering::SeqCst) == 0
    }
}

/// The two namespaces one operation works in.
struct Sides<'a> {
    host: &'a NetNs,
    host_nl: &'a Netlink,
    pod: Option<(NetNs, Netlink)>,
}

impl Sides<'_> {
    /// The pod's namespace and its netlink socket (absent: the namespace is gone).
    fn pod(&self) -> Result<&(NetNs, Netlink), DatapathError> {
        self.pod
            .as_ref()
            .ok_or_else(|| DatapathError::NotFound("the pod's namespace".into()))
    }

    fn nl(&self, side: Side) -> Result<&Netlink, DatapathError> {
        match side {
            Side::Host => Ok(self.host_nl),
            Side::Pod => self.pod().map(|(_, nl)| nl),
        }
    }

    fn ns(&self, side: Side) -> Result<&NetNs, DatapathError> {
        match side {
            Side::Host => Ok(self.host),
            Side::Pod => self.pod().map(|(ns, _)| ns),
        }
    }

    async fn link(&self, side: Side, link: &LinkRef) -> Result<Option<LinkMessage>, DatapathError> {
        let nl = self.nl(side)?;
        match link {
            LinkRef::Name(n) => nl.link_by_name(n).await,
            LinkRef::Mac(m) => nl.link_by_mac(m).await,
        }
    }

    async fn index(&self, side: Side, link: &LinkRef) -> Result<u32, DatapathError> {
        self.link(side, link)
            .await?
            .map(|l| link_index(&l))
            .ok_or_else(|| DatapathError::NotFound(format!("link {link} on the {side:?} side")))
    }

    async fn route_spec(&self, side: Side, r: &Route) -> Result<RouteSpec, DatapathError> {
        Ok(RouteSpec {
            destination: r.destination,
            gateway: r.gateway,
            oif: self.index(side, &r.dev).await?,
            table: r.table,
            scope_link: r.scope_link,
            onlink: r.onlink,
        })
    }

    async fn mac(&self, mac: &MacOf) -> Result<Vec<u8>, DatapathError> {
        match mac {
            MacOf::Fixed(m) => Ok(m.to_vec()),
            MacOf::Link(side, link) => self
                .link(*side, link)
                .await?
                .and_then(|l| link_mac(&l))
                .ok_or_else(|| DatapathError::NotFound(format!("MAC of {link}"))),
        }
    }
}

/// The rate a TBF shows when read back (the kernel keeps 32 bits of it).
fn readable_rate(t: &Tbf) -> u64 {
    t.rate.min(u64::from(u32::MAX))
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
            ready_enis: Mutex::new(HashSet::new()),
            reaper: Arc::default(),
        })
    }

    /// Deletes the host links of released pods that a crash left behind
    /// (the [`RELEASED_GROUP`]); returns how many there were.
    pub async fn remove_released_links(&self) -> Result<usize, DatapathError> {
        let left = self
            .nl
            .links()
            .await?
            .iter()
            .filter(|l| link_group(l) == Some(RELEASED_GROUP))
            .count();
        if left > 0 {
            self.nl.del_link_group(RELEASED_GROUP).await?;
        }
        Ok(left)
    }

    /// Pods wired on this host through veths named `prefix…`: each host
    /// route in the main table to one address (/32 or /128) through such a
    /// link, as (address, link name). How a node that upstream Terway (or an
    /// earlier terway-rs) set up shows which addresses its pods hold. Links
    /// of released pods, waiting for their deletion, are left out.
    pub async fn host_routes_via(&self, prefix: &str) -> Result<Vec<(std::net::IpAddr, String)>, DatapathError> {
        let names: std::collections::HashMap<u32, String> = self
            .nl
            .links()
            .await?
            .iter()
            .filter(|l| link_group(l) != Some(RELEASED_GROUP))
            .filter_map(|l| {
                link_name(l)
                    .filter(|n| n.starts_with(prefix))
                    .map(|n| (link_index(l), n))
            })
            .collect();
        let mut out = Vec::new();
        for v4 in [true, false] {
            for r in self.nl.routes(MAIN_TABLE, v4).await? {
                let (Some(dst), Some(oif)) = (route_destination(&r), route_oif(&r)) else {
                    continue;
                };
                if dst.prefix_len() == dst.max_prefix_len() {
                    if let Some(name) = names.get(&oif) {
                        out.push((dst.addr(), name.clone()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Waits until every released link queued so far is deleted.
    pub async fn released_links_deleted(&self) {
        loop {
            let idle = self.reaper.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.reaper.is_idle() {
                return;
            }
            idle.await;
        }
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

    fn sides(&self, pod: Option<(NetNs, Netlink)>) -> Sides<'_> {
        Sides {
            host: &self.host,
            host_nl: &self.nl,
            pod,
        }
    }

    fn is_ready(&self, mac: &[u8; 6]) -> bool {
        self.ready_enis
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(mac)
    }

    fn set_ready(&self, mac: [u8; 6], ready: bool) {
        let mut set = self.ready_enis.lock().unwrap_or_else(PoisonError::into_inner);
        if ready {
            set.insert(mac);
        } else {
            set.remove(&mac);
        }
    }

    /// Finds the ENI's link (waiting for hot-plug), brings it up with its MTU
    /// and the node IP /32, and puts its default route in its table.
    pub async fn ensure_eni(&self, eni: &EniLink, node_ip: Ipv4Addr) -> Result<u32, DatapathError> {
        let sides = self.sides(None);
        for item in driver::eni_on_host(eni, node_ip) {
            self.apply(&sides, &item).await?;
        }
        self.set_ready(eni.mac, true);
        sides.index(Side::Host, &LinkRef::Mac(eni.mac)).await
    }

    /// The policy-routing table for the ENI with `mac`: upstream's numbering,
    /// 1000 + its link index on the host ([`crate::names::eni_route_table`]).
    /// An error while the ENI's link is not on the host yet.
    pub async fn eni_route_table(&self, mac: [u8; 6]) -> Result<u32, DatapathError> {
        let index = self.sides(None).index(Side::Host, &LinkRef::Mac(mac)).await?;
        Ok(crate::names::eni_route_table(index))
    }

    /// Checks the ENI's host set-up alone (the datapath agent's per-ENI check).
    pub async fn check_eni(&self, eni: &EniLink, node_ip: Ipv4Addr) -> Result<Vec<Drift>, DatapathError> {
        self.check_items(&self.sides(None), &driver::eni_on_host(eni, node_ip))
            .await
    }

    /// The mode to wire a new pod with: ipvlan only where the kernel has it.
    fn setup_mode(&self, pod: &PodSpec) -> Mode {
        match pod.mode {
            Mode::Ipvlan if self.ipvlan.load(Ordering::Relaxed) == IPVLAN_NO => Mode::Veth,
            m => m,
        }
    }

    /// The mode an existing pod was wired with: an ipvlan pod whose
    /// interface is not an ipvlan link fell back to veth. Read from the pod,
    /// so it holds across restarts.
    async fn wired_mode(&self, pod: &PodSpec, sides: &Sides<'_>) -> Result<Mode, DatapathError> {
        if pod.mode != Mode::Ipvlan {
            return Ok(pod.mode);
        }
        let link = sides.link(Side::Pod, &LinkRef::Name(pod.ifname.clone())).await?;
        Ok(match link.as_ref().and_then(link_kind) {
            Some(InfoKind::IpVlan) => Mode::Ipvlan,
            Some(_) => Mode::Veth,
            None => self.setup_mode(pod),
        })
    }

    async fn open_pod(&self, pod: &PodSpec) -> Result<(NetNs, Netlink), DatapathError> {
        let ns = NetNs::open(&pod.netns)?;
        let nl = Netlink::open(&ns)?;
        Ok((ns, nl))
    }

    /// Puts the pod's network in place; doing it again changes nothing.
    pub async fn setup(&self, pod: &PodSpec) -> Result<SetupResult, DatapathError> {
        let sides = self.sides(Some(self.open_pod(pod).await?));
        let p = sides.nl(Side::Pod)?;
        if let Some(lo) = p.link_by_name("lo").await? {
            if !link_is_up(&lo) {
                p.set_link(link_index(&lo), Some(true), None, None).await?;
            }
        }
        let mut mode = self.setup_mode(pod);
        let mut warnings = Vec::new();
        if pod.mode == Mode::Ipvlan && mode == Mode::Veth {
            warnings.push(IPVLAN_FALLBACK.to_owned());
        }
        let desired = driver::desired(pod, mode);
        let desired = match self.apply_desired(&sides, &desired).await {
            Ok(()) => {
                if mode == Mode::Ipvlan {
                    self.ipvlan.store(IPVLAN_YES, Ordering::Relaxed);
                }
                desired
            }
            Err(DatapathError::Unsupported { what, errno }) if mode == Mode::Ipvlan => {
                tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), %what, errno,
                    "IPVLAN is unavailable on this kernel; using veth instead");
                self.ipvlan.store(IPVLAN_NO, Ordering::Relaxed);
                mode = Mode::Veth;
                warnings.push(IPVLAN_FALLBACK.to_owned());
                let veth = driver::desired(pod, mode);
                self.apply_desired(&sides, &veth).await?;
                veth
            }
            Err(e) => return Err(e),
        };
        let pod_mac = sides
            .link(Side::Pod, &LinkRef::Name(pod.ifname.clone()))
            .await?
            .and_then(|l| link_mac(&l))
            .unwrap_or_default();
        Ok(SetupResult {
            mode,
            host_veth: (mode != Mode::Ipvlan).then(|| pod.host_veth()),
            pod_mac,
            addresses: desired.addresses,
            policy_point: desired.policy_point,
            warnings,
        })
    }

    async fn apply_desired(&self, sides: &Sides<'_>, desired: &Desired) -> Result<(), DatapathError> {
        if let Some(Item::Link(LinkPlan::EniOnHost { mac, .. })) = desired.eni.first() {
            if !self.is_ready(mac) {
                for item in &desired.eni {
                    self.apply(sides, item).await?;
                }
                self.set_ready(*mac, true);
            }
        }
        for item in &desired.pod {
            self.apply(sides, item).await?;
        }
        Ok(())
    }

    /// How the pod's actual state differs from what setup would make.
    pub async fn check(&self, pod: &PodSpec) -> Result<Vec<Drift>, DatapathError> {
        let Some(ns) = NetNs::open_if_exists(&pod.netns)? else {
            return Ok(vec![Drift::new(
                DriftKind::Namespace,
                format!("pod namespace {} is gone", pod.netns.display()),
            )]);
        };
        let nl = Netlink::open(&ns)?;
        let sides = self.sides(Some((ns, nl)));
        let mode = self.wired_mode(pod, &sides).await?;
        let desired = driver::desired(pod, mode);
        let mut drift = self.check_items(&sides, &desired.eni).await?;
        if !drift.is_empty() {
            // without its ENI nothing of the pod can be right: say that once
            return Ok(drift);
        }
        drift.extend(self.check_items(&sides, &desired.pod).await?);
        Ok(drift)
    }

    /// Restores the desired state where [`check`](Self::check) finds drift;
    /// returns what was wrong.
    pub async fn repair(&self, pod: &PodSpec) -> Result<Vec<Drift>, DatapathError> {
        let drift = self.check(pod).await?;
        if drift.is_empty() {
            return Ok(drift);
        }
        // the ENI's own set-up may be part of what drifted: redo it too
        self.set_ready(pod.eni.mac, false);
        tracing::info!(pod = %format!("{}/{}", pod.namespace, pod.name), drift = ?drift, "repairing pod datapath");
        let sides = self.sides(Some(self.open_pod(pod).await?));
        let mode = self.wired_mode(pod, &sides).await?;
        self.apply_desired(&sides, &driver::desired(pod, mode)).await?;
        Ok(drift)
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
        let pod_side = match NetNs::open_if_exists(&pod.netns) {
            Ok(Some(ns)) => match Netlink::open(&ns) {
                Ok(nl) => Some((ns, nl)),
                Err(e) => {
                    note(Err(e));
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                note(Err(e));
                None
            }
        };
        let sides = self.sides(pod_side);
        // an ipvlan pod may have fallen back to veth: undo whichever it is
        let mut items = driver::desired(pod, pod.mode).pod;
        if pod.mode == Mode::Ipvlan {
            items.extend(driver::desired(pod, Mode::Veth).pod);
        }
        for item in items.iter().rev() {
            match item {
                Item::Link(plan) => note(self.remove_link(&sides, plan).await),
                Item::Rule(rule) => note(self.nl.del_rules(rule).await.map(|_| ())),
                _ => {} // addresses, routes, neighbours and qdiscs go with their links
            }
        }
        // a route left behind by a host link that is already gone
        for ip in pod.ips() {
            match self.nl.routes(MAIN_TABLE, ip.is_ipv4()).await {
                Ok(routes) => {
                    for r in routes.iter().filter(|r| route_destination(r) == Some(host_prefix(ip))) {
                        if let Some(oif) = route_oif(r) {
                            let spec = RouteSpec {
                                destination: host_prefix(ip),
                                gateway: None,
                                oif,
                                table: MAIN_TABLE,
                                scope_link: true,
                                onlink: false,
                            };
                            note(self.nl.del_route(&spec).await);
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

    async fn remove_link(&self, sides: &Sides<'_>, plan: &LinkPlan) -> Result<(), DatapathError> {
        match plan {
            LinkPlan::Veth { host, pod, .. } => {
                // the host end goes in the background, its peer with it; marked
                // first, so a crash before the deletion leaves it findable
                if let Some(l) = self.nl.link_by_name(host).await? {
                    let index = link_index(&l);
                    self.nl.mark_link(index, RELEASED_ALIAS, RELEASED_GROUP).await?;
                    self.reaper.soon(&self.nl);
                    return Ok(());
                }
                // a half-made pair: only the pod end is left
                if let Ok(p) = sides.nl(Side::Pod) {
                    if let Some(l) = p.link_by_name(pod).await? {
                        if link_kind(&l) == Some(InfoKind::Veth) {
                            p.del_link(link_index(&l)).await?;
                        }
                    }
                }
                Ok(())
            }
            // back to the host, down, under a name from its MAC
            LinkPlan::EniInPod { mac, .. } => {
                let Ok(p) = sides.nl(Side::Pod) else { return Ok(()) };
                let Some(l) = p.link_by_mac(mac).await? else {
                    return Ok(());
                };
                let index = link_index(&l);
                p.set_link(index, Some(false), None, Some(&returned_eni_name(mac)))
                    .await?;
                p.move_link(index, &self.host).await
            }
            LinkPlan::IpvlanChild {
                side: Side::Pod, name, ..
            } => {
                let Ok(p) = sides.nl(Side::Pod) else { return Ok(()) };
                match p.link_by_name(name).await? {
                    Some(l) if link_kind(&l) == Some(InfoKind::IpVlan) => p.del_link(link_index(&l)).await,
                    _ => Ok(()),
                }
            }
            // the host-side ipvlan child and the ENI serve every pod of the ENI
            LinkPlan::IpvlanChild { side: Side::Host, .. } | LinkPlan::EniOnHost { .. } => Ok(()),
        }
    }

    // ---- one item ----

    async fn apply(&self, sides: &Sides<'_>, item: &Item) -> Result<(), DatapathError> {
        match item {
            Item::Link(plan) => self.apply_link(sides, plan).await,
            Item::Address {
                side,
                link,
                ip,
                prefix,
                host_scope,
            } => {
                let index = sides.index(*side, link).await?;
                let nl = sides.nl(*side)?;
                if *host_scope {
                    nl.ensure_host_scoped_address(index, *ip, *prefix).await
                } else {
                    nl.ensure_address(index, *ip, *prefix).await
                }
            }
            Item::OnlyV4Address { side, link, ip } => {
                let index = sides.index(*side, link).await?;
                let nl = sides.nl(*side)?;
                for (other, prefix) in nl.addresses(index).await? {
                    if other.is_ipv4() && other != *ip {
                        nl.del_address(index, other, prefix).await?;
                    }
                }
                nl.ensure_address(index, *ip, if ip.is_ipv4() { 32 } else { 128 }).await
            }
            Item::Route { side, route } => {
                let spec = sides.route_spec(*side, route).await?;
                sides.nl(*side)?.replace_route(&spec).await
            }
            Item::Rule(rule) => self.nl.ensure_rule(rule).await,
            Item::Neighbour { side, link, ip, mac } => {
                let index = sides.index(*side, link).await?;
                let mac = sides.mac(mac).await?;
                sides.nl(*side)?.replace_permanent_neighbour(index, *ip, &mac).await
            }
            Item::RootTbf { side, link, tbf } => {
                let index = sides.index(*side, link).await?;
                let nl = sides.nl(*side)?;
                let current = nl.root_qdisc(index).await?;
                let is_tbf = current.as_ref().is_some_and(|q| q.kind == "tbf");
                match tbf {
                    Some(t) if is_tbf && current.as_ref().and_then(|q| q.tbf_rate) == Some(readable_rate(t)) => Ok(()),
                    Some(t) => nl.replace_root_tbf(index, t).await,
                    None if is_tbf => nl.del_root_qdisc(index).await,
                    None => Ok(()),
                }
            }
            Item::Sysctl { side, key, value } => sides.ns(*side)?.write_sysctl(key, value),
            Item::LinkSysctl {
                side,
                link,
                template,
                value,
            } => {
                let name = sides.link(*side, link).await?.and_then(|l| link_name(&l));
                match name {
                    Some(n) => sides.ns(*side)?.write_sysctl(&template.replace("{}", &n), value),
                    None => Err(DatapathError::NotFound(format!("link {link}"))),
                }
            }
            Item::EgressRedirect { link, cidr, to } => {
                let (index, target) = (sides.index(Side::Host, link).await?, sides.index(Side::Host, to).await?);
                self.nl.ensure_clsact(index).await?;
                if self.nl.egress_redirects(index).await?.contains(&(*cidr, target)) {
                    return Ok(());
                }
                self.nl.add_egress_redirect(index, *cidr, target).await
            }
        }
    }

    async fn apply_link(&self, sides: &Sides<'_>, plan: &LinkPlan) -> Result<(), DatapathError> {
        match plan {
            LinkPlan::Veth { host, pod, mtu } => {
                let (host_index, pod_index) = self.ensure_veth_pair(sides, host, pod, *mtu).await?;
                let p = sides.nl(Side::Pod)?;
                self.nl.set_link(host_index, Some(true), Some(*mtu), None).await?;
                p.set_link(pod_index, Some(true), Some(*mtu), None).await
            }
            LinkPlan::EniOnHost { mac, mtu } => {
                let link = self.wait_for_eni(mac).await?;
                if !link_is_up(&link) || link_mtu(&link) != Some(*mtu) {
                    self.nl
                        .set_link(link_index(&link), Some(true), Some(*mtu), None)
                        .await?;
                }
                Ok(())
            }
            LinkPlan::EniInPod { mac, name, mtu } => {
                let p = sides.nl(Side::Pod)?;
                // in the host still, or already in the pod from an earlier setup
                let in_pod = match p.link_by_mac(mac).await? {
                    Some(l) => l,
                    None => {
                        let l = self.wait_for_eni(mac).await?;
                        self.nl.set_link(link_index(&l), Some(false), None, None).await?;
                        self.nl.move_link(link_index(&l), sides.ns(Side::Pod)?).await?;
                        p.link_by_mac(mac)
                            .await?
                            .ok_or_else(|| DatapathError::NotFound("the ENI did not arrive in the pod".into()))?
                    }
                };
                let index = link_index(&in_pod);
                if link_name(&in_pod).as_deref() != Some(name.as_str()) {
                    p.set_link(index, Some(false), None, Some(name)).await?;
                }
                p.set_link(index, Some(true), Some(*mtu), None).await
            }
            LinkPlan::IpvlanChild {
                parent,
                side,
                name,
                made_as,
                mtu,
            } => {
                let nl = sides.nl(*side)?;
                let existing = nl.link_by_name(name).await?;
                let index = match existing {
                    Some(l) if link_kind(&l) == Some(InfoKind::IpVlan) => link_index(&l),
                    stale => {
                        if let Some(l) = stale {
                            nl.del_link(link_index(&l)).await?;
                        }
                        let parent_index = sides.index(Side::Host, &LinkRef::Mac(*parent)).await?;
                        // made in the host (where its parent is), then moved under its name
                        let made = made_as.clone();
                        self.nl
                            .add_link(
                                crate::ipvlan::child_message(&made, parent_index, *mtu),
                                &format!("ipvlan {made}"),
                            )
                            .await
                            .map_err(|e| match e.errno() {
                                Some(n) if crate::ipvlan::means_unsupported(n) => DatapathError::Unsupported {
                                    what: format!("ipvlan link {made}"),
                                    errno: n,
                                },
                                _ => e,
                            })?;
                        if *side == Side::Pod {
                            let l = self
                                .nl
                                .link_by_name(&made)
                                .await?
                                .ok_or_else(|| DatapathError::NotFound(made.clone()))?;
                            self.nl.move_link(link_index(&l), sides.ns(Side::Pod)?).await?;
                            let moved = nl
                                .link_by_name(&made)
                                .await?
                                .ok_or_else(|| DatapathError::NotFound(made.clone()))?;
                            nl.set_link(link_index(&moved), None, None, Some(name)).await?;
                            link_index(&moved)
                        } else {
                            nl.link_by_name(name)
                                .await?
                                .map(|l| link_index(&l))
                                .ok_or_else(|| DatapathError::NotFound(name.clone()))?
                        }
                    }
                };
                nl.set_link(index, Some(true), None, None).await
            }
        }
    }

    /// A veth pair `host` ↔ `pod` (in the pod), reused when both ends are there and paired.
    async fn ensure_veth_pair(
        &self,
        sides: &Sides<'_>,
        host: &str,
        pod: &str,
        mtu: u32,
    ) -> Result<(u32, u32), DatapathError> {
        let p = sides.nl(Side::Pod)?;
        let host_link = self.nl.link_by_name(host).await?;
        let pod_link = p.link_by_name(pod).await?;
        // a pair released a moment ago (the same pod again) is about to be deleted: never reuse it
        let released = host_link
            .as_ref()
            .is_some_and(|h| link_group(h) == Some(RELEASED_GROUP));
        if let (Some(h), Some(l), false) = (&host_link, &pod_link, released) {
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
            .add_veth_with_peer_in(host, pod, sides.ns(Side::Pod)?, mtu)
            .await?;
        let h = self
            .nl
            .link_by_name(host)
            .await?
            .ok_or_else(|| DatapathError::NotFound(format!("{host} vanished")))?;
        let l = p
            .link_by_name(pod)
            .await?
            .ok_or_else(|| DatapathError::NotFound(format!("veth peer {pod} did not appear in the pod")))?;
        Ok((link_index(&h), link_index(&l)))
    }

    /// The ENI's link on the host, waiting up to `eni_wait` for it to be hot-plugged.
    async fn wait_for_eni(&self, mac: &[u8; 6]) -> Result<LinkMessage, DatapathError> {
        let deadline = Instant::now() + self.eni_wait;
        loop {
            if let Some(l) = self.nl.link_by_mac(mac).await? {
                return Ok(l);
            }
            if Instant::now() >= deadline {
                return Err(DatapathError::NotFound(format!(
                    "no link with MAC {} in {} after {:?}",
                    format_mac(mac),
                    self.host.path().display(),
                    self.eni_wait
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // ---- checking ----

    /// What of `items` is not in place. A missing link is said once: what
    /// lives on it is not listed too.
    async fn check_items(&self, sides: &Sides<'_>, items: &[Item]) -> Result<Vec<Drift>, DatapathError> {
        let mut drift = Vec::new();
        let mut missing: Vec<(Side, LinkRef)> = Vec::new();
        for item in items {
            let on_missing = |side: Side, link: &LinkRef| missing.contains(&(side, link.clone()));
            match item {
                Item::Link(plan) => {
                    for (side, link, what) in self.check_link(sides, plan).await? {
                        drift.push(Drift::new(DriftKind::Link, what));
                        missing.push((side, link));
                    }
                }
                Item::Address { side, link, ip, .. } | Item::OnlyV4Address { side, link, ip } => {
                    if on_missing(*side, link) {
                        continue;
                    }
                    let Some(l) = sides.link(*side, link).await? else {
                        drift.push(Drift::new(DriftKind::Link, format!("{link} is missing")));
                        continue;
                    };
                    let addrs = sides.nl(*side)?.addresses(link_index(&l)).await?;
                    if !addrs.iter().any(|(a, _)| a == ip) {
                        drift.push(Drift::new(
                            DriftKind::Address,
                            format!("{} lacks {ip}", describe(*side, link)),
                        ));
                    }
                }
                Item::Route { side, route } => {
                    if on_missing(*side, &route.dev) {
                        continue;
                    }
                    let present = match sides.route_spec(*side, route).await {
                        Ok(spec) => sides.nl(*side)?.has_route(&spec).await?,
                        Err(DatapathError::NotFound(_)) => false,
                        Err(e) => return Err(e),
                    };
                    if !present {
                        drift.push(Drift::new(DriftKind::Route, format!("{item} is missing")));
                    }
                }
                Item::Rule(rule) => {
                    if !self.nl.has_rule(rule).await? {
                        drift.push(Drift::new(DriftKind::Rule, format!("{item} is missing")));
                    }
                }
                Item::Neighbour { side, link, ip, mac } => {
                    if on_missing(*side, link) {
                        continue;
                    }
                    let Some(l) = sides.link(*side, link).await? else {
                        continue;
                    };
                    let want = sides.mac(mac).await.ok();
                    let have = sides.nl(*side)?.permanent_neighbour(link_index(&l), *ip).await?;
                    if want.is_none() || have != want {
                        drift.push(Drift::new(DriftKind::Neighbour, format!("{item} is missing")));
                    }
                }
                Item::RootTbf { side, link, tbf } => {
                    if on_missing(*side, link) {
                        continue;
                    }
                    let Some(l) = sides.link(*side, link).await? else {
                        continue;
                    };
                    let q = sides.nl(*side)?.root_qdisc(link_index(&l)).await?;
                    let is_tbf = q.as_ref().is_some_and(|q| q.kind == "tbf");
                    let ok = match tbf {
                        Some(t) => is_tbf && q.as_ref().and_then(|q| q.tbf_rate) == Some(readable_rate(t)),
                        None => !is_tbf,
                    };
                    if !ok {
                        drift.push(Drift::new(
                            DriftKind::Qdisc,
                            match tbf {
                                Some(_) => format!("{item} is missing"),
                                None => format!("{} has a TBF it should not", describe(*side, link)),
                            },
                        ));
                    }
                }
                Item::Sysctl { side, key, value } => {
                    if sides.ns(*side)?.read_sysctl(key).ok().as_deref() != Some(*value) {
                        drift.push(Drift::new(DriftKind::Sysctl, format!("{item} is not set")));
                    }
                }
                Item::LinkSysctl {
                    side,
                    link,
                    template,
                    value,
                } => {
                    if on_missing(*side, link) {
                        continue;
                    }
                    let Some(name) = sides.link(*side, link).await?.and_then(|l| link_name(&l)) else {
                        continue;
                    };
                    let key = template.replace("{}", &name);
                    if sides.ns(*side)?.read_sysctl(&key).ok().as_deref() != Some(*value) {
                        drift.push(Drift::new(DriftKind::Sysctl, format!("{item} is not set")));
                    }
                }
                Item::EgressRedirect { link, cidr, to } => {
                    if on_missing(Side::Host, link) || on_missing(Side::Host, to) {
                        continue;
                    }
                    let (Some(from), Some(target)) =
                        (sides.link(Side::Host, link).await?, sides.link(Side::Host, to).await?)
                    else {
                        continue;
                    };
                    let present = self.nl.egress_redirects(link_index(&from)).await?;
                    if !present.contains(&(*cidr, link_index(&target))) {
                        drift.push(Drift::new(DriftKind::Qdisc, format!("{item} is missing")));
                    }
                }
            }
        }
        Ok(drift)
    }

    /// The links of `plan` that are missing or down: (side, link, what).
    async fn check_link(
        &self,
        sides: &Sides<'_>,
        plan: &LinkPlan,
    ) -> Result<Vec<(Side, LinkRef, String)>, DatapathError> {
        let wanted: Vec<(Side, LinkRef, String)> = match plan {
            LinkPlan::Veth { host, pod, .. } => vec![
                (Side::Pod, LinkRef::Name(pod.clone()), format!("pod interface {pod}")),
                (Side::Host, LinkRef::Name(host.clone()), format!("host veth {host}")),
            ],
            LinkPlan::EniOnHost { mac, .. } => {
                vec![(Side::Host, LinkRef::Mac(*mac), format!("ENI link {}", format_mac(mac)))]
            }
            LinkPlan::EniInPod { name, .. } => {
                vec![(
                    Side::Pod,
                    LinkRef::Name(name.clone()),
                    format!("pod interface {name} (its ENI)"),
                )]
            }
            LinkPlan::IpvlanChild { side, name, .. } => {
                vec![(*side, LinkRef::Name(name.clone()), format!("ipvlan link {name}"))]
            }
        };
        let mut out = Vec::new();
        for (side, link, what) in wanted {
            match sides.link(side, &link).await? {
                None => out.push((side, link, format!("{what} is missing"))),
                Some(l) if !link_is_up(&l) => out.push((side, link, format!("{what} is down"))),
                Some(l) => {
                    if let LinkPlan::EniInPod { mac, .. } = plan {
                        if link_mac(&l).as_deref() != Some(&mac[..]) {
                            out.push((side, link, format!("{what} is not the ENI {}", format_mac(mac))));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

fn describe(side: Side, link: &LinkRef) -> String {
    match side {
        Side::Host => format!("host link {link}"),
        Side::Pod => format!("pod interface {link}"),
    }
}

const IPVLAN_FALLBACK: &str = "ipvlan is not supported by this kernel; the pod uses veth + policy routing";
