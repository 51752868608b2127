//! A small netlink wrapper over rtnetlink, bound to one namespace: the socket
//! is opened with the thread inside the namespace, so no later call switches.

use crate::netns::NetNs;
use crate::DatapathError;
use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::DefaultNla;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::tc::{TcAttribute, TcMessage, TcOption};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkUnspec, LinkVeth, RouteMessageBuilder};
use std::net::IpAddr;
use std::path::PathBuf;

const EEXIST: i32 = 17;
/// Where an IPv4 header holds its destination.
const IPV4_DST_OFFSET: i32 = 16;
const ETH_P_IP: u16 = 0x0800;
/// The priority of terway-rs's egress redirect filters.
const REDIRECT_PRIORITY: u16 = 0x2000;
const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EADDRNOTAVAIL: i32 = 99;
const EBUSY: i32 = 16;
const ENOBUFS: i32 = 105;
/// How often a dump interrupted by concurrent changes is taken again.
const DUMP_RETRIES: u32 = 10;

/// The errno of a netlink error, if it is one.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// An error the kernel answered, with its errno kept as a value.
pub(crate) trait KernelError: std::fmt::Display {
    fn errno(&self) -> Option<i32>;
}

impl KernelError for rtnetlink::Error {
    fn errno(&self) -> Option<i32> {
        errno(self)
    }
}

impl KernelError for rtnetlink::packet_core::ErrorMessage {
    fn errno(&self) -> Option<i32> {
        Some(self.raw_code().abs())
    }
}

/// "Already there" and "already gone" answers that idempotent calls accept.
fn is_exists(e: &rtnetlink::Error) -> bool {
    errno(e) == Some(EEXIST)
}

fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENOENT | ESRCH | ENODEV | EADDRNOTAVAIL))
}

/// A route to put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub destination: IpNet,
    pub gateway: Option<IpAddr>,
    pub oif: u32,
    pub table: u32,
    /// `scope link` (directly reachable through `oif`).
    pub scope_link: bool,
    /// `onlink`: the gateway is reachable through `oif` whatever its address.
    pub onlink: bool,
}

impl RouteSpec {
    pub(crate) fn message(&self) -> RouteMessage {
        let mut m = match self.destination {
            IpNet::V4(n) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .build(),
            IpNet::V6(n) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(n.network(), n.prefix_len())
                .build(),
        };
        if self.table < 256 {
            m.header.table = self.table as u8;
        } else {
            m.header.table = 0; // RT_TABLE_UNSPEC: the attribute carries it
        }
        m.attributes.push(RouteAttribute::Table(self.table));
        m.attributes.push(RouteAttribute::Oif(self.oif));
        if let Some(gw) = self.gateway {
            m.attributes.push(RouteAttribute::Gateway(match gw {
                IpAddr::V4(v4) => RouteAddress::Inet(v4),
                IpAddr::V6(v6) => RouteAddress::Inet6(v6),
            }));
        }
        m.header.scope = if self.scope_link {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
        if self.onlink {
            m.header.flags |= rtnetlink::packet_route::route::RouteFlags::Onlink;
        }
        m
    }
}

/// An `ip rule` by what it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    pub priority: u32,
    /// `from` (true) or `to` (false) the address.
    pub from: bool,
    pub address: IpAddr,
    pub table: u32,
}

impl RuleSpec {
    fn matches(&self, m: &RuleMessage) -> bool {
        let prefix = if self.address.is_ipv4() { 32 } else { 128 };
        let (len, addr) = if self.from {
            (
                m.header.src_len,
                m.attributes.iter().find_map(|a| {
                    if let RuleAttribute::Source(s) = a {
                        Some(*s)
                    } else {
                        None
                    }
                }),
            )
        } else {
            (
                m.header.dst_len,
                m.attributes.iter().find_map(|a| {
                    if let RuleAttribute::Destination(d) = a {
                        Some(*d)
                    } else {
                        None
                    }
                }),
            )
        };
        let priority = m.attributes.iter().find_map(|a| {
            if let RuleAttribute::Priority(p) = a {
                Some(*p)
            } else {
                None
            }
        });
        len == prefix && addr == Some(self.address) && priority == Some(self.priority)
    }

    fn table_of(m: &RuleMessage) -> u32 {
        m.attributes
            .iter()
            .find_map(|a| {
                if let RuleAttribute::Table(t) = a {
                    Some(*t)
                } else {
                    None
                }
            })
            .unwrap_or(u32::from(m.header.table))
    }
}

/// What a root qdisc is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootQdisc {
    pub kind: String,
    /// TBF rate in bytes per second, read from its parameters.
    pub tbf_rate: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Netlink {
    handle: Handle,
    ns: PathBuf,
}

impl Netlink {
    /// A netlink socket in `ns`. Needs a tokio runtime (the connection task runs on it).
    pub fn open(ns: &NetNs) -> Result<Self, DatapathError> {
        let (connection, handle, _) = ns
            .enter(rtnetlink::new_connection)?
            .map_err(|e| DatapathError::Netlink {
                op: "open socket".into(),
                ns: ns.path().to_path_buf(),
                message: e.to_string(),
                errno: e.raw_os_error(),
            })?;
        tokio::spawn(connection);
        Ok(Self {
            handle,
            ns: ns.path().to_path_buf(),
        })
    }

    fn err(&self, op: impl Into<String>, e: impl KernelError) -> DatapathError {
        DatapathError::Netlink {
            op: op.into(),
            ns: self.ns.clone(),
            message: e.to_string(),
            errno: e.errno(),
        }
    }

    // ---- links ----

    /// Runs a dump, taking it again when a concurrent change interrupted it
    /// (the kernel answers EBUSY for NLM_F_DUMP_INTR) or when the socket's
    /// receive buffer was full of other requests' answers (ENOBUFS: many pods
    /// set up at once share this socket); the kernel answers either as an
    /// error to this request, so the connection stays in step.
    async fn dump<T, F, Fut>(&self, what: &str, mut take: F) -> Result<Vec<T>, DatapathError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<T>, rtnetlink::Error>>,
    {
        let mut attempt = 0;
        loop {
            match take().await {
                Err(e) if errno(&e) == Some(EBUSY) && attempt < DUMP_RETRIES => {
                    attempt += 1;
                    // pods set up side by side keep changing the table: wait
                    // a little, each at its own pace, rather than all retrying at once
                    let jitter = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos())
                        % (1_000_000 << attempt);
                    tokio::time::sleep(std::time::Duration::from_nanos(u64::from(jitter))).await;
                }
                Err(e) if errno(&e) == Some(ENOBUFS) && attempt < DUMP_RETRIES => {
                    attempt += 1;
                    // let the reader drain what is queued
                    tokio::time::sleep(std::time::Duration::from_millis(2 << attempt)).await;
                }
                other => return other.map_err(|e| self.err(what, e)),
            }
        }
    }

    pub async fn links(&self) -> Result<Vec<LinkMessage>, DatapathError> {
        self.dump("list links", || self.handle.link().get().execute().try_collect())
            .await
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, DatapathError> {
        match self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_next()
            .await
        {
            Ok(link) => Ok(link),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(self.err(format!("get link {name}"), e)),
        }
    }

    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, DatapathError> {
        match self.handle.link().get().match_index(index).execute().try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(self.err(format!("get link {index}"), e)),
        }
    }

    /// The link carrying `mac`, skipping ipvlan/macvlan/vlan children that share a parent's MAC.
    pub async fn link_by_mac(&self, mac: &[u8; 6]) -> Result<Option<LinkMessage>, DatapathError> {
        Ok(self
            .links()
            .await?
            .into_iter()
            .find(|l| link_mac(l).as_deref() == Some(&mac[..]) && !is_child_kind(l)))
    }

    pub async fn set_link(
        &self,
        index: u32,
        up: Option<bool>,
        mtu: Option<u32>,
        name: Option<&str>,
    ) -> Result<(), DatapathError> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        if let Some(name) = name {
            b = b.name(name.to_owned());
        }
        b = match up {
            Some(true) => b.up(),
            Some(false) => b.down(),
            None => b,
        };
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| self.err(format!("set link {index}"), e))
    }

    /// Sets a link's alias and group (`ip link set … alias A group G`):
    /// marks that cost the kernel no more than a notification.
    pub async fn mark_link(&self, index: u32, alias: &str, group: u32) -> Result<(), DatapathError> {
        use rtnetlink::packet_route::link::LinkAttribute;
        let mut msg = LinkUnspec::new_with_index(index).build();
        msg.attributes.push(LinkAttribute::IfAlias(alias.to_owned()));
        msg.attributes.push(LinkAttribute::Group(group));
        match self.handle.link().set(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(self.err(format!("mark link {index}"), e)),
        }
    }

    /// Deletes every link of `group` at once (`ip link delete group G`): the
    /// kernel unregisters them together, one RCU grace period for them all.
    pub async fn del_link_group(&self, group: u32) -> Result<(), DatapathError> {
        let mut req = self.handle.link().del(0);
        req.message_mut()
            .attributes
            .push(rtnetlink::packet_route::link::LinkAttribute::Group(group));
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(self.err(format!("delete link group {group}"), e)),
        }
    }

    /// Moves a link into another namespace.
    pub async fn move_link(&self, index: u32, to: &NetNs) -> Result<(), DatapathError> {
        use std::os::fd::AsRawFd;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(to.fd().as_raw_fd())
            .build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| self.err(format!("move link {index} to {}", to.path().display()), e))
    }

    /// Deletes a link; one that is already gone is fine.
    pub async fn del_link(&self, index: u32) -> Result<(), DatapathError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(self.err(format!("delete link {index}"), e)),
        }
    }

    /// Adds a veth pair whose peer is created straight inside `peer_ns`
    /// (as `ip link add … peer name P netns N` does): no later move, which
    /// would cost the kernel an RCU grace period per pod.
    pub async fn add_veth_with_peer_in(
        &self,
        name: &str,
        peer: &str,
        peer_ns: &NetNs,
        mtu: u32,
    ) -> Result<(), DatapathError> {
        use rtnetlink::packet_route::link::{InfoData, InfoVeth};
        use std::os::fd::AsRawFd;
        let peer_msg = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(peer_ns.fd().as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle.link().add(msg).execute().await.map_err(|e| {
            self.err(
                format!("add veth {name} (peer {peer} in {})", peer_ns.path().display()),
                e,
            )
        })
    }

    /// Adds a prebuilt link message (ipvlan children).
    pub async fn add_link(&self, msg: LinkMessage, what: &str) -> Result<(), DatapathError> {
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| self.err(format!("add {what}"), e))
    }

    // ---- addresses ----

    pub async fn addresses(&self, index: u32) -> Result<Vec<(IpAddr, u8)>, DatapathError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let msgs: Vec<_> = self
            .dump("list addresses", || {
                self.handle
                    .address()
                    .get()
                    .set_link_index_filter(index)
                    .execute()
                    .try_collect()
            })
            .await?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some((*ip, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect())
    }

    /// Adds an address unless it is there already.
    pub async fn ensure_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), DatapathError> {
        match self.handle.address().add(index, ip, prefix).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(self.err(format!("add address {ip}/{prefix}"), e)),
        }
    }

    /// Adds a scope-host address (the ipvlan slave's node IP).
    pub async fn ensure_host_scoped_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), DatapathError> {
        let mut req = self.handle.address().add(index, ip, prefix);
        req.message_mut().header.scope = rtnetlink::packet_route::address::AddressScope::Host;
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(self.err(format!("add address {ip}/{prefix}"), e)),
        }
    }

    pub async fn del_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), DatapathError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
        let mut m = AddressMessage::default();
        m.header.family = if ip.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.index = index;
        m.header.prefix_len = prefix;
        m.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv4() {
            m.attributes.push(AddressAttribute::Local(ip));
        }
        match self.handle.address().del(m).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(self.err(format!("delete address {ip}/{prefix}"), e)),
        }
    }

    // ---- routes ----

    pub async fn replace_route(&self, r: &RouteSpec) -> Result<(), DatapathError> {
        self.handle
            .route()
            .add(r.message())
            .replace()
            .execute()
            .await
            .map_err(|e| self.err(format!("route {} table {}", r.destination, r.table), e))
    }

    /// Routes of `table` for the address family of `v4`.
    pub async fn routes(&self, table: u32, v4: bool) -> Result<Vec<RouteMessage>, DatapathError> {
        let query = if v4 {
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().table_id(table).build()
        } else {
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().table_id(table).build()
        };
        let all: Vec<RouteMessage> = self
            .dump("list routes", || {
                self.handle.route().get(query.clone()).execute().try_collect()
            })
            .await?;
        Ok(all.into_iter().filter(|m| route_table(m) == table).collect())
    }

    /// Whether a route like `r` exists (same destination, table, device and gateway).
    pub async fn has_route(&self, r: &RouteSpec) -> Result<bool, DatapathError> {
        let routes = self.routes(r.table, r.destination.addr().is_ipv4()).await?;
        Ok(routes.iter().any(|m| {
            route_destination(m) == Some(r.destination) && route_oif(m) == Some(r.oif) && route_gateway(m) == r.gateway
        }))
    }

    pub async fn del_route(&self, r: &RouteSpec) -> Result<(), DatapathError> {
        match self.handle.route().del(r.message()).execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) => Ok(()),
            Err(e) => Err(self.err(format!("delete route {}", r.destination), e)),
        }
    }

    // ---- rules ----

    pub async fn rules(&self, v4: bool) -> Result<Vec<RuleMessage>, DatapathError> {
        let version = if v4 { IpVersion::V4 } else { IpVersion::V6 };
        self.dump("list rules", || {
            self.handle.rule().get(version.clone()).execute().try_collect()
        })
        .await
    }

    /// Adds the rule unless an identical one exists (the kernel would add a duplicate).
    pub async fn ensure_rule(&self, r: &RuleSpec) -> Result<(), DatapathError> {
        let existing = self.rules(r.address.is_ipv4()).await?;
        if existing
            .iter()
            .any(|m| r.matches(m) && RuleSpec::table_of(m) == r.table)
        {
            return Ok(());
        }
        // a rule for this address at this priority pointing elsewhere is stale: replace it
        for m in existing.into_iter().filter(|m| r.matches(m)) {
            self.handle
                .rule()
                .del(m)
                .execute()
                .await
                .map_err(|e| self.err("delete stale rule", e))?;
        }
        let req = self
            .handle
            .rule()
            .add()
            .priority(r.priority)
            .table_id(r.table)
            .action(RuleAction::ToTable);
        let result = match r.address {
            IpAddr::V4(a) => {
                let req = req.v4();
                if r.from {
                    req.source_prefix(a, 32)
                } else {
                    req.destination_prefix(a, 32)
                }
                .execute()
                .await
            }
            IpAddr::V6(a) => {
                let req = req.v6();
                if r.from {
                    req.source_prefix(a, 128)
                } else {
                    req.destination_prefix(a, 128)
                }
                .execute()
                .await
            }
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_exists(&e) => Ok(()),
            Err(e) => Err(self.err(
                format!(
                    "add rule prio {} {} {}",
                    r.priority,
                    if r.from { "from" } else { "to" },
                    r.address
                ),
                e,
            )),
        }
    }

    pub async fn has_rule(&self, r: &RuleSpec) -> Result<bool, DatapathError> {
        Ok(self
            .rules(r.address.is_ipv4())
            .await?
            .iter()
            .any(|m| r.matches(m) && RuleSpec::table_of(m) == r.table))
    }

    /// Deletes every rule matching `r` (whatever its table); returns how many.
    pub async fn del_rules(&self, r: &RuleSpec) -> Result<usize, DatapathError> {
        let mut n = 0;
        for m in self
            .rules(r.address.is_ipv4())
            .await?
            .into_iter()
            .filter(|m| r.matches(m))
        {
            match self.handle.rule().del(m).execute().await {
                Ok(()) => n += 1,
                Err(e) if is_gone(&e) => {}
                Err(e) => return Err(self.err("delete rule", e)),
            }
        }
        Ok(n)
    }

    // ---- neighbours ----

    pub async fn replace_permanent_neighbour(&self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<(), DatapathError> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| self.err(format!("neighbour {ip}"), e))
    }

    /// The permanent neighbour entry of `ip` on `index`, as its MAC.
    pub async fn permanent_neighbour(&self, index: u32, ip: IpAddr) -> Result<Option<Vec<u8>>, DatapathError> {
        let all: Vec<NeighbourMessage> = self
            .dump("list neighbours", || {
                self.handle.neighbours().get().execute().try_collect()
            })
            .await?;
        Ok(all.into_iter().find_map(|m| {
            let dst = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
                _ => None,
            });
            let lla = m.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(l) => Some(l.clone()),
                _ => None,
            });
            (m.header.ifindex == index && dst == Some(ip) && m.header.state == NeighbourState::Permanent)
                .then_some(lla)
                .flatten()
        }))
    }

    // ---- qdiscs ----

    pub async fn root_qdisc(&self, index: u32) -> Result<Option<RootQdisc>, DatapathError> {
        let all: Vec<TcMessage> = self
            .dump("list qdiscs", || {
                self.handle.qdisc().get().index(index as i32).execute().try_collect()
            })
            .await?;
        Ok(all
            .into_iter()
            .find(|m| m.header.index == index as i32 && u32::from(m.header.parent) == u32::MAX)
            .map(|m| {
                let kind = m
                    .attributes
                    .iter()
                    .find_map(|a| {
                        if let TcAttribute::Kind(k) = a {
                            Some(k.clone())
                        } else {
                            None
                        }
                    })
                    .unwrap_or_default();
                let tbf_rate = m.attributes.iter().find_map(|a| match a {
                    TcAttribute::Options(opts) => opts.iter().find_map(crate::tbf::rate_from_option),
                    _ => None,
                });
                RootQdisc { kind, tbf_rate }
            }))
    }

    /// Puts a TBF at the root of `index`, replacing whatever is there.
    pub async fn replace_root_tbf(&self, index: u32, tbf: &crate::tbf::Tbf) -> Result<(), DatapathError> {
        use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
        use rtnetlink::packet_route::tc::TcHandle;
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::ROOT;
        m.header.handle = TcHandle { major: 1, minor: 0 };
        m.attributes.push(TcAttribute::Kind("tbf".into()));
        m.attributes.push(TcAttribute::Options(tbf.options()));
        self.new_qdisc(m, NLM_F_CREATE | NLM_F_REPLACE)
            .await
            .map_err(|e| self.err(format!("tbf on link {index}"), e))
    }

    /// A clsact qdisc on `index` (the hook for egress filters); one there already is fine.
    pub async fn ensure_clsact(&self, index: u32) -> Result<(), DatapathError> {
        use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
        use rtnetlink::packet_route::tc::TcHandle;
        let mut m = TcMessage::with_index(index as i32);
        m.header.parent = TcHandle::CLSACT;
        m.header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        m.attributes.push(TcAttribute::Kind("clsact".into()));
        match self.new_qdisc(m, NLM_F_CREATE | NLM_F_EXCL).await {
            Err(e) if e.errno() == Some(EEXIST) => Ok(()),
            r => r.map_err(|e| self.err(format!("clsact qdisc on link {index}"), e)),
        }
    }

    /// Sends a new-qdisc request (rtnetlink's builder has no tbf or clsact).
    async fn new_qdisc(&self, m: TcMessage, flags: u16) -> Result<(), rtnetlink::packet_core::ErrorMessage> {
        use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST};
        use rtnetlink::packet_route::RouteNetlinkMessage;
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(m));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let Ok(mut response) = handle.request(req) else {
            let mut e = rtnetlink::packet_core::ErrorMessage::default();
            e.code = std::num::NonZeroI32::new(-5); // EIO: the connection is gone
            return Err(e);
        };
        while let Some(msg) = futures::StreamExt::next(&mut response).await {
            if let NetlinkPayload::Error(e) = msg.payload {
                if e.code.is_some() {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The IPv4 destinations whose packets leaving `index` are redirected
    /// to another link's ingress: (CIDR, target link index), from its
    /// clsact egress u32 filters.
    pub async fn egress_redirects(&self, index: u32) -> Result<Vec<(ipnet::Ipv4Net, u32)>, DatapathError> {
        use rtnetlink::packet_route::tc::{
            TcActionAttribute, TcActionMirrorOption, TcActionOption, TcFilterU32Option, TcMirrorActionType,
        };
        let filters: Vec<TcMessage> = self
            .dump("list egress filters", || {
                let mut h = self.handle.traffic_filter(index as i32);
                h.get().egress().execute().try_collect()
            })
            .await?;
        let mut out = Vec::new();
        for f in filters.iter().filter(|f| f.header.index == index as i32) {
            let opts = f.attributes.iter().filter_map(|a| match a {
                TcAttribute::Options(o) => Some(o),
                _ => None,
            });
            let (mut cidr, mut target) = (None, None);
            for o in opts.flatten() {
                match o {
                    TcOption::U32(TcFilterU32Option::Selector(sel)) => {
                        if let [key] = sel.keys.as_slice() {
                            if key.off == IPV4_DST_OFFSET {
                                let prefix = key.mask.leading_ones() as u8;
                                cidr = ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(key.val), prefix).ok();
                            }
                        }
                    }
                    TcOption::U32(TcFilterU32Option::Action(actions)) => {
                        for a in actions {
                            for attr in &a.attributes {
                                if let TcActionAttribute::Options(ao) = attr {
                                    for x in ao {
                                        if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = x {
                                            if m.eaction == TcMirrorActionType::IngressRedir {
                                                target = Some(m.ifindex);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(c), Some(t)) = (cidr, target) {
                out.push((c, t));
            }
        }
        Ok(out)
    }

    /// Redirects IPv4 packets to `cidr` leaving `index` (after its clsact
    /// qdisc is there) to the ingress of `to`: `tc filter add dev <index>
    /// egress protocol ip u32 match ip dst <cidr> action mirred ingress redirect dev <to>`.
    pub async fn add_egress_redirect(&self, index: u32, cidr: ipnet::Ipv4Net, to: u32) -> Result<(), DatapathError> {
        use rtnetlink::packet_route::tc::{
            TcAction, TcActionAttribute, TcActionGeneric, TcActionMirrorOption, TcActionOption, TcActionType,
            TcFilterU32Option, TcMirror, TcMirrorActionType, TcU32Key, TcU32Selector, TcU32SelectorFlags,
        };
        let mut mirror = TcMirror::default();
        mirror.generic = TcActionGeneric::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::IngressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind("mirred".into()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]),
        ];
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        let mut key = TcU32Key::default();
        key.mask = u32::from(cidr.netmask());
        key.val = u32::from(cidr.network());
        key.off = IPV4_DST_OFFSET;
        selector.keys = vec![key];
        let req = self
            .handle
            .traffic_filter(index as i32)
            .add()
            .egress()
            .priority(REDIRECT_PRIORITY)
            .protocol(ETH_P_IP.to_be())
            .u32(&[
                TcFilterU32Option::Selector(selector),
                TcFilterU32Option::Action(vec![action]),
            ])
            .map_err(|e| self.err(format!("redirect of {cidr} on link {index}"), e))?;
        req.execute()
            .await
            .map_err(|e| self.err(format!("redirect of {cidr} on link {index}"), e))
    }

    /// Removes the root qdisc (back to the default); none there is fine.
    pub async fn del_root_qdisc(&self, index: u32) -> Result<(), DatapathError> {
        let mut req = self.handle.qdisc().del(index as i32);
        req.message_mut().header.parent = rtnetlink::packet_route::tc::TcHandle::ROOT;
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if is_gone(&e) || errno(&e) == Some(22) => Ok(()), // EINVAL: only the default qdisc is there
            Err(e) => Err(self.err(format!("delete root qdisc of link {index}"), e)),
        }
    }
}

// ---- reading messages ----

pub fn link_index(l: &LinkMessage) -> u32 {
    l.header.index
}

pub fn link_name(l: &LinkMessage) -> Option<String> {
    l.attributes.iter().find_map(|a| {
        if let LinkAttribute::IfName(n) = a {
            Some(n.clone())
        } else {
            None
        }
    })
}

pub fn link_group(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        rtnetlink::packet_route::link::LinkAttribute::Group(g) => Some(*g),
        _ => None,
    })
}

pub fn link_mac(l: &LinkMessage) -> Option<Vec<u8>> {
    l.attributes.iter().find_map(|a| {
        if let LinkAttribute::Address(m) = a {
            Some(m.clone())
        } else {
            None
        }
    })
}

pub fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes
        .iter()
        .find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None })
}

pub fn link_is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

pub fn link_kind(l: &LinkMessage) -> Option<InfoKind> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| {
            if let LinkInfo::Kind(k) = i {
                Some(k.clone())
            } else {
                None
            }
        }),
        _ => None,
    })
}

fn is_child_kind(l: &LinkMessage) -> bool {
    matches!(
        link_kind(l),
        Some(InfoKind::IpVlan | InfoKind::MacVlan | InfoKind::Vlan)
    )
}

pub fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| {
            if let RouteAttribute::Table(t) = a {
                Some(*t)
            } else {
                None
            }
        })
        .unwrap_or(u32::from(m.header.table))
}

pub fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })
}

pub fn route_gateway(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

pub fn route_destination(m: &RouteMessage) -> Option<IpNet> {
    let len = m.header.destination_prefix_length;
    let addr = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    match (addr, m.header.address_family) {
        (Some(a), _) => IpNet::new(a, len).ok(),
        (None, AddressFamily::Inet) => IpNet::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0).ok(),
        (None, AddressFamily::Inet6) => IpNet::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0).ok(),
        _ => None,
    }
}

/// An option the typed tc module does not know, as raw netlink attribute.
pub(crate) fn raw_option(kind: u16, value: Vec<u8>) -> TcOption {
    TcOption::Other(DefaultNla::new(kind, value))
}
