//! The daemon's CNI service: the unix socket the `terway` plugin talks to,
//! and what ADD, DEL, CHECK, GC and STATUS do.

use super::ipam::{self, AllocError, Pool};
use super::pod_network::{self, PodPlace};
use super::{upstream, Node};
use crate::bridge::Notice;
use crate::cni::plugin::code;
use crate::cni::protocol::{decode_request, PodNetworkReply, PodRequest, Reply, Request, MAX_REQUEST_BYTES};
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use terway_datapath::{bandwidth::resolve as resolve_bandwidth, names};
use terway_statestore::{BindRequest, Durability, PodNetworkSettings, PodRecord, PodRef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// How long ADD waits for the pod object when the watch has not shown it yet.
const POD_META_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the socket (mode 0600, a stale file replaced) and serves until aborted.
pub async fn serve(node: Arc<Node>) -> anyhow::Result<()> {
    let path = node.socket_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    tracing::info!(socket = %path.display(), "CNI service listening");
    node.serving.store(true, Ordering::SeqCst);
    loop {
        let (mut stream, _) = listener.accept().await?;
        let node = node.clone();
        node.in_flight.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut body = Vec::new();
            let read = (&mut stream)
                .take(MAX_REQUEST_BYTES as u64 + 1)
                .read_to_end(&mut body)
                .await;
            let reply = match read {
                Ok(_) => match decode_request(&body) {
                    Ok(request) => handle(&node, request).await,
                    Err(e) => Reply::Error {
                        code: code::DECODING_FAILURE,
                        msg: e.to_string(),
                        details: String::new(),
                    },
                },
                Err(e) => Reply::Error {
                    code: code::IO_FAILURE,
                    msg: format!("reading the request: {e}"),
                    details: String::new(),
                },
            };
            let bytes = serde_json::to_vec(&reply).unwrap_or_default();
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
            node.in_flight.fetch_sub(1, Ordering::SeqCst);
            node.request_done.notify_waiters();
        });
    }
}

/// Answers one request (and measures it).
pub async fn handle(node: &Node, request: Request) -> Reply {
    let started = Instant::now();
    let command = request.command();
    let reply = answer(node, request).await;
    node.metrics
        .observe_cni(command, matches!(reply, Reply::Ok { .. }), started.elapsed());
    reply
}

async fn answer(node: &Node, request: Request) -> Reply {
    match request {
        Request::Add(p) => {
            let lock = node.pod_lock(&pod_key(&p));
            let _guard = lock.lock().await;
            add(node, &p).await
        }
        Request::Del(p) => {
            let lock = node.pod_lock(&pod_key(&p));
            let _guard = lock.lock().await;
            del(node, &p).await
        }
        Request::Check(p) => check(node, &p).await,
        Request::Gc { valid } => gc(node, &valid).await,
        Request::Inspect { what } => Reply::Inspect {
            body: super::inspect::answer(node, what),
        },
        Request::Explain {
            from,
            to,
            port,
            protocol,
        } => {
            if !node.policy.is_active() {
                let why = node
                    .policy_refusal()
                    .unwrap_or_else(|| "the policy watches have not started".into());
                return fail(
                    code::INVALID_NETWORK_CONFIG,
                    format!("NetworkPolicy is not enforced on this node: {why}"),
                );
            }
            match node
                .policy
                .read(|e| crate::policy::evaluate::explain_query(&e.state, &from, &to, port, &protocol))
            {
                Ok(verdict) => Reply::Inspect {
                    body: serde_json::to_value(verdict).unwrap_or_default(),
                },
                Err(e) => fail(code::INVALID_NETWORK_CONFIG, e),
            }
        }
        Request::Status => {
            let s = node.ledger.snapshot();
            if s.ips.values().any(|r| r.state == terway_statestore::IpState::Idle) || node.last_error().is_none() {
                Reply::Ok { network: None }
            } else {
                Reply::Error {
                    code: code::PLUGIN_NOT_AVAILABLE,
                    msg: node.last_error().unwrap_or_default(),
                    details: String::new(),
                }
            }
        }
    }
}

fn pod_key(p: &PodRequest) -> String {
    if p.runtime_name.is_empty() {
        format!("{}/{}", p.pod_namespace, p.pod_name)
    } else {
        format!("{}/{} ({})", p.pod_namespace, p.pod_name, p.runtime_name)
    }
}

/// The ledger's record of the attachment a DEL or CHECK names: by pod, or
/// (a runtime that sent other arguments than at ADD) by container id and
/// interface, as the CNI spec keys attachments.
fn attachment(node: &Node, p: &PodRequest) -> Option<PodRecord> {
    node.ledger.pod(&pod_ref(p)).or_else(|| {
        node.ledger
            .snapshot()
            .pods
            .into_values()
            .find(|r| r.container_id == p.container_id && r.ifname == p.ifname)
    })
}

fn pod_ref(p: &PodRequest) -> PodRef {
    PodRef::new(&p.pod_namespace, &p.pod_name, "")
}

fn fail(code: u32, msg: impl Into<String>) -> Reply {
    Reply::Error {
        code,
        msg: msg.into(),
        details: String::new(),
    }
}

/// A Warning Event on the pod (in a cluster).
fn warn_pod(node: &Node, p: &PodRequest, reason: &'static str, message: String) {
    if !p.is_kubernetes() {
        return; // no pod object to put it on; the log has it
    }
    node.tell(Notice::PodEvent {
        namespace: p.pod_namespace.clone(),
        name: p.pod_name.clone(),
        warning: true,
        reason,
        message,
    });
}

/// The request's `host_stack_cidrs`. An exclusive-ENI pod reaches them
/// through its host peer, a veth pod through the host anyway, an ipvlan
/// pod through the redirect from its ENI into the host slave.
fn host_stack_cidrs(p: &PodRequest) -> Result<Vec<ipnet::IpNet>, String> {
    p.host_stack_cidrs
        .iter()
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .ok()
                .filter(|n| n.trunc() == *n)
                .ok_or_else(|| format!("host_stack_cidrs: {c:?} is not a CIDR such as 169.254.20.10/32"))
        })
        .collect()
}

async fn add(node: &Node, p: &PodRequest) -> Reply {
    let started = Instant::now();
    // the caller's mistake, not a moment to wait out: refused before anything is bound
    if node.datapath.is_some() {
        if let Err(why) = terway_datapath::netns::NetNs::check(std::path::Path::new(&p.netns)) {
            return fail(code::INVALID_ENVIRONMENT, format!("CNI_NETNS: {why}"));
        }
    }
    let meta = match node.bridge.get() {
        Some(c) if p.is_kubernetes() => c.pod_meta(&p.pod_namespace, &p.pod_name, POD_META_TIMEOUT).await,
        _ => None,
    };
    let annotations = meta.as_ref().map(|m| m.annotations.clone()).unwrap_or_default();
    let (bandwidth, bad) = resolve_bandwidth(p.ingress_bps, p.egress_bps, &annotations);
    for e in bad {
        tracing::warn!(pod = %pod_key(p), error = %e, "bandwidth setting ignored");
        warn_pod(
            node,
            p,
            "ParseFailed",
            format!("{e}; the pod gets its network without this setting"),
        );
    }
    let pool = Pool::for_pod(
        node,
        annotations.get(crate::bridge::POD_ENI_ANNOTATION).map(String::as_str) == Some("true"),
    );
    let exclusive = pool != Pool::SharedAddress;
    if exclusive && node.dual_stack() {
        return fail(
            code::INVALID_NETWORK_CONFIG,
            format!(
                "pod {} asks for a whole ENI, which is not served with ip_stack \"dual\" (it would get IPv4 only)",
                pod_key(p)
            ),
        );
    }
    let host_stack_cidrs = match host_stack_cidrs(p) {
        Ok(cidrs) => cidrs,
        Err(why) => return fail(code::INVALID_NETWORK_CONFIG, why),
    };
    let request = BindRequest {
        pod: pod_ref(p),
        container_id: p.container_id.clone(),
        netns: p.netns.clone(),
        ifname: p.ifname.clone(),
        settings: PodNetworkSettings {
            ingress_bps: bandwidth.ingress_bps.unwrap_or(0),
            egress_bps: bandwidth.egress_bps.unwrap_or(0),
            exclusive_eni: exclusive,
            host_stack_cidrs: host_stack_cidrs.clone(),
        },
        ipv6: node.dual_stack(),
    };
    let bound = match ipam::allocate(node, &request, pool, started + node.options.add_deadline).await {
        Ok(b) => b,
        Err(AllocError::Exhausted(why)) => {
            tracing::warn!(pod = %pod_key(p), reason = %why, "ADD gave up waiting for an address");
            warn_pod(
                node,
                p,
                "AllocIPFailed",
                format!("no address yet (the runtime will retry): {why}"),
            );
            return Reply::Error {
                code: code::TRY_AGAIN_LATER,
                msg: format!("no address for pod {} yet; try again later", pod_key(p)),
                details: why,
            };
        }
        Err(AllocError::Ledger(e)) => return fail(code::IO_FAILURE, format!("ledger: {e}")),
    };
    let bound_after = started.elapsed();
    let IpAddr::V4(ip) = bound.ip else {
        return fail(code::IO_FAILURE, "an IPv6 address was bound as the pod's IPv4");
    };
    let pod = PodPlace::of(p);
    let spec = match pod_network::spec(
        node,
        &pod,
        &bound.eni,
        ip,
        bound.ipv6,
        bandwidth,
        exclusive,
        &host_stack_cidrs,
    ) {
        Ok(s) => s,
        Err(e) => return fail(code::IO_FAILURE, e.to_string()),
    };
    // without a datapath (IPAM only) the reply says what the driver would set up
    let (addresses, mac) = match &node.datapath {
        Some(dp) => {
            let wired = match dp.setup(&spec).await {
                Ok(r) => admit_to_policy(node, p, &spec, meta.as_ref()).await.map(|()| r).map_err(|why| {
                    tracing::warn!(pod = %pod_key(p), ip = %ip, reason = %why, "ADD refused by NetworkPolicy; giving the address back");
                    warn_pod(node, p, "NetworkPolicyNotEnforced", why.clone());
                    why
                }),
                Err(e) => {
                    tracing::warn!(pod = %pod_key(p), ip = %ip, error = %e, "datapath setup failed; giving the address back");
                    Err(format!("setting up the pod network failed; try again later: {e}"))
                }
            };
            match wired {
                Ok(r) => {
                    if spec.mode == terway_datapath::Mode::ExclusiveEni {
                        node.sync_masquerade(false);
                    }
                    (r.addresses, names::format_mac(&r.pod_mac))
                }
                Err(msg) => {
                    let _ = dp.teardown(&spec).await;
                    node.policy
                        .forget(&crate::policy::ObjectKey::new(&p.pod_namespace, &p.pod_name))
                        .await;
                    let _ = node.ledger.release(
                        &pod_ref(p),
                        Some(&p.container_id),
                        std::time::Duration::ZERO,
                        Durability::Flush,
                    );
                    return Reply::Error {
                        code: code::TRY_AGAIN_LATER,
                        msg,
                        details: String::new(),
                    };
                }
            }
        }
        None => (
            terway_datapath::desired_state(&spec, spec.mode).addresses,
            String::new(),
        ),
    };
    tracing::info!(pod = %pod_key(p), ip = %ip, eni = %bound.eni.id, vswitch = %bound.eni.vswitch_id, existing = bound.existing,
        bound_ms = bound_after.as_secs_f64() * 1e3, took_ms = started.elapsed().as_secs_f64() * 1e3, "ADD served");
    if node.config().enable_patch_pod_ips && p.is_kubernetes() {
        node.tell(Notice::PodIps {
            namespace: p.pod_namespace.clone(),
            name: p.pod_name.clone(),
            ips: addresses.iter().map(|a| a.ip.to_string()).collect(),
        });
    }
    let family = |v4: bool| addresses.iter().find(|a| a.ip.is_ipv4() == v4);
    let Some(v4) = family(true) else {
        return fail(code::IO_FAILURE, "the datapath gave the pod no IPv4 address");
    };
    Reply::Ok {
        network: Some(PodNetworkReply {
            ipv4: format!("{}/{}", v4.ip, v4.prefix),
            ipv4_gateway: v4.gateway.to_string(),
            ipv6: family(false).map(|a| format!("{}/{}", a.ip, a.prefix)),
            ipv6_gateway: family(false).map(|a| a.gateway.to_string()),
            mac,
        }),
    }
}

/// Registers the wired pod with policy; when policy is on, its rules (or
/// its default allow) are in force when this returns.
async fn admit_to_policy(
    node: &Node,
    p: &PodRequest,
    spec: &terway_datapath::PodSpec,
    meta: Option<&crate::bridge::PodMeta>,
) -> Result<(), String> {
    let (key, local, unpoliced) = pod_network::policy_local_of(spec, vec![IpAddr::V4(spec.ipv4)]);
    let known = match meta {
        Some(m) => Some(crate::policy::PodInfo {
            labels: m.labels.clone(),
            ..Default::default()
        }),
        // outside Kubernetes: no labels, so only policies selecting every endpoint apply
        None if !p.is_kubernetes() => Some(crate::policy::PodInfo::default()),
        None => None,
    };
    if node.policy.is_active() && known.is_none() && node.bridge.get().is_some() {
        // without its labels nobody can say which policies select the pod
        return Err(format!(
            "the pod object of {} could not be read, so the NetworkPolicies selecting it are unknown; try again later",
            pod_key(p)
        ));
    }
    node.policy
        .admit(key, local, known, unpoliced, node.options.add_deadline)
        .await
}

async fn del(node: &Node, p: &PodRequest) -> Reply {
    let Some(record) = attachment(node, p) else {
        if let Some(placeholder) = upstream::placeholder_of(node, p) {
            // a pod wired before terwayd took the node over
            let wired = upstream::as_pod(&placeholder, p);
            return match ipam::release_wired_as(node, &placeholder, &wired, Some(&p.netns)).await {
                Ok(r) => {
                    tracing::info!(pod = %pod_key(p), ips = ?r.ips, "DEL of a pod wired before terwayd served");
                    Reply::Ok { network: None }
                }
                Err(e) => fail(code::IO_FAILURE, e),
            };
        }
        return Reply::Ok { network: None }; // an unknown pod: nothing to undo
    };
    if record.container_id != p.container_id {
        tracing::info!(pod = %pod_key(p), "DEL for an older sandbox of the pod; nothing to do");
        return Reply::Ok { network: None };
    }
    match ipam::release(node, &record, Some(&p.netns)).await {
        Ok(r) => {
            tracing::info!(pod = %pod_key(p), ips = ?r.ips, "DEL served");
            Reply::Ok { network: None }
        }
        Err(e) => fail(code::IO_FAILURE, e),
    }
}

/// CNI GC: every pod the runtime no longer lists gives its address back.
async fn gc(node: &Node, valid: &[crate::cni::protocol::Attachment]) -> Reply {
    let stale: Vec<PodRecord> = node
        .ledger
        .snapshot()
        .pods
        .into_values()
        // placeholders of pods wired before terwayd: the runtime's list cannot name them
        .filter(|p| !upstream::is_placeholder(p))
        .filter(|p| {
            !valid
                .iter()
                .any(|a| a.container_id == p.container_id && a.ifname == p.ifname)
        })
        .collect();
    for record in stale {
        tracing::info!(pod = %record.pod, container = %record.container_id, "GC: the runtime no longer lists this attachment");
        if let Err(e) = ipam::release_gone(node, &record).await {
            return fail(code::IO_FAILURE, format!("GC of pod {}: {e}", record.pod));
        }
    }
    Reply::Ok { network: None }
}

async fn check(node: &Node, p: &PodRequest) -> Reply {
    let Some(record) = attachment(node, p) else {
        return fail(
            code::UNKNOWN_CONTAINER,
            format!("pod {} has no address in the ledger", pod_key(p)),
        );
    };
    if record.container_id != p.container_id {
        return fail(
            code::UNKNOWN_CONTAINER,
            format!(
                "pod {} belongs to container {}, not {}",
                pod_key(p),
                record.container_id,
                p.container_id
            ),
        );
    }
    if let (Some(dp), Some(spec)) = (
        &node.datapath,
        pod_network::spec_of_record(node, &record, Some(&p.netns)),
    ) {
        match dp.check(&spec).await {
            Ok(drift) if drift.is_empty() => {}
            Ok(drift) => {
                let list: Vec<String> = drift.iter().map(ToString::to_string).collect();
                return fail(
                    code::IO_FAILURE,
                    format!("pod network differs from the desired state: {}", list.join("; ")),
                );
            }
            Err(e) => return fail(code::IO_FAILURE, e.to_string()),
        }
    }
    Reply::Ok { network: None }
}
