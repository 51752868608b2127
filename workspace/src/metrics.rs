//! Prometheus metrics (text exposition format 0.0.4), `/healthz` and
//! `/readyz`, served on `metrics_address` (127.0.0.1 by default).

pub use crate::daemon::measurements::{Histogram, LastReconcile, NodeMetrics};
use crate::daemon::Node;
use crate::policy::ObjectKey;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use terway_cloud::LATENCY_BUCKETS;
use terway_statestore::IpState;

/// Writes families in the text format; label values escaped as it requires.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let v = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{v}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram) {
        for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets.iter()) {
            let le = bound.to_string();
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &l, *n as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &l, h.count as f64);
        self.sample(&format!("{name}_sum"), labels, h.sum_seconds);
        self.sample(&format!("{name}_count"), labels, h.count as f64);
    }
}

/// The whole exposition. `policy_drops`: packets dropped per local pod,
/// read from the kernel by the caller (`None`: policy off or unreadable).
pub fn render(node: &Node, policy_drops: Option<&BTreeMap<ObjectKey, u64>>) -> String {
    let mut out = Exposition(String::new());
    let s = node.ledger.snapshot();

    out.family("terway_pool_ips", "gauge", "Addresses in the ledger by ENI and state.");
    let mut per_eni: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for e in s.enis.values() {
        for state in ["idle", "bound", "cooling", "releasing"] {
            per_eni.insert((e.id.as_str(), e.vswitch_id.as_str(), state), 0);
        }
    }
    for r in s.ips.values() {
        let vswitch = s.enis.get(&r.eni_id).map_or("", |e| e.vswitch_id.as_str());
        *per_eni.entry((r.eni_id.as_str(), vswitch, r.state.name())).or_default() += 1;
    }
    for ((eni, vswitch, state), n) in &per_eni {
        out.sample(
            "terway_pool_ips",
            &[("eni", eni), ("vswitch", vswitch), ("state", state)],
            *n as f64,
        );
    }
    let held = s.ips_held_by_intents().len();
    out.family(
        "terway_pool_ips_held_by_intents",
        "gauge",
        "Addresses kept out of the pool until the cloud resolves an intent.",
    );
    out.sample("terway_pool_ips_held_by_intents", &[], held as f64);
    let idle = s.ips.values().filter(|r| r.state == IpState::Idle).count();
    let config = node.config();
    out.family(
        "terway_pool_bounds",
        "gauge",
        "The idle pool's configured bounds (min_pool_size, max_pool_size) and idle addresses now.",
    );
    out.sample(
        "terway_pool_bounds",
        &[("bound", "min")],
        f64::from(config.min_pool_size),
    );
    out.sample(
        "terway_pool_bounds",
        &[("bound", "max")],
        f64::from(config.max_pool_size),
    );
    out.sample("terway_pool_bounds", &[("bound", "idle")], idle as f64);

    out.family("terway_enis", "gauge", "Secondary ENIs in the ledger by status.");
    let mut by_status: BTreeMap<String, u64> = ["in_use", "draining"].iter().map(|s| ((*s).to_owned(), 0)).collect();
    for e in s.enis.values() {
        *by_status.entry(status_label(&e.status)).or_default() += 1;
    }
    for (status, n) in &by_status {
        out.sample("terway_enis", &[("status", status)], *n as f64);
    }
    out.family(
        "terway_max_pods",
        "gauge",
        "Pods this node can serve with the configuration in force.",
    );
    out.sample("terway_max_pods", &[], f64::from(node.max_pods()));
    out.family(
        "terway_add_waiting",
        "gauge",
        "CNI ADD requests waiting for an address.",
    );
    out.sample(
        "terway_add_waiting",
        &[],
        f64::from(node.waiting.load(Ordering::Relaxed) + node.waiting_eni.load(Ordering::Relaxed)),
    );

    let stats = node.cloud.stats();
    out.family(
        "terway_cloud_api_calls_total",
        "counter",
        "Cloud API calls by action (one per call, however many attempts).",
    );
    for (action, st) in &stats {
        out.sample("terway_cloud_api_calls_total", &[("action", action)], st.calls as f64);
    }
    out.family(
        "terway_cloud_api_errors_total",
        "counter",
        "Failed cloud API attempts by action and error code.",
    );
    for (action, st) in &stats {
        for (code, n) in &st.errors {
            out.sample(
                "terway_cloud_api_errors_total",
                &[("action", action), ("code", code)],
                *n as f64,
            );
        }
    }
    out.family(
        "terway_cloud_api_latency_seconds",
        "histogram",
        "Cloud API attempt latency by action.",
    );
    for (action, st) in &stats {
        let h = Histogram {
            buckets: st.latency_buckets.clone(),
            count: st.attempts,
            sum_seconds: st.latency_seconds_sum,
        };
        out.histogram("terway_cloud_api_latency_seconds", &[("action", action)], &h);
    }
    out.family(
        "terway_cloud_rate_limit_wait_seconds_total",
        "counter",
        "Time spent waiting for the client-side rate limiter, by action.",
    );
    for (action, st) in &stats {
        out.sample(
            "terway_cloud_rate_limit_wait_seconds_total",
            &[("action", action)],
            st.rate_limit_wait_seconds,
        );
    }

    out.family(
        "terway_cni_request_duration_seconds",
        "histogram",
        "CNI requests served by terwayd, by command and result.",
    );
    let cni = node.metrics.cni.lock().unwrap_or_else(PoisonError::into_inner).clone();
    for ((command, result), h) in &cni {
        out.histogram(
            "terway_cni_request_duration_seconds",
            &[("command", command), ("result", result)],
            h,
        );
    }

    out.family("terway_reconcile_passes_total", "counter", "Reconcile passes run.");
    out.sample(
        "terway_reconcile_passes_total",
        &[],
        node.reconcile_passes.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "terway_reconcile_failures_total",
        "counter",
        "Reconcile passes that failed.",
    );
    out.sample(
        "terway_reconcile_failures_total",
        &[],
        node.metrics.reconcile_failures.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "terway_reconcile_duration_seconds",
        "histogram",
        "Duration of reconcile passes.",
    );
    let h = node
        .metrics
        .reconcile
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    out.histogram("terway_reconcile_duration_seconds", &[], &h);

    out.family(
        "terway_datapath_checks_total",
        "counter",
        "Rounds of the datapath agent over every pod and shared ENI.",
    );
    out.sample(
        "terway_datapath_checks_total",
        &[],
        node.metrics.datapath_checks.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "terway_datapath_check_failures_total",
        "counter",
        "Pods or ENIs the datapath agent could not check or repair.",
    );
    out.sample(
        "terway_datapath_check_failures_total",
        &[],
        node.metrics.datapath_check_failures.load(Ordering::Relaxed) as f64,
    );
    out.family(
        "terway_datapath_repairs_total",
        "counter",
        "Drift the datapath agent repaired, by what had drifted.",
    );
    let repairs = node.metrics.datapath_repairs();
    for kind in ["link", "address", "route", "rule", "neighbour", "qdisc", "sysctl"] {
        let n = repairs.get(kind).copied().unwrap_or(0);
        out.sample("terway_datapath_repairs_total", &[("what", kind)], n as f64);
    }

    let aside = node
        .vswitches
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .set_aside_now();
    out.family(
        "terway_vswitches_set_aside",
        "gauge",
        "vSwitches set aside after running out of addresses.",
    );
    out.sample("terway_vswitches_set_aside", &[], aside.len() as f64);
    out.family(
        "terway_vswitch_set_aside_seconds",
        "gauge",
        "Seconds left before a set-aside vSwitch is tried again.",
    );
    for (vswitch, left) in &aside {
        out.sample(
            "terway_vswitch_set_aside_seconds",
            &[("vswitch", vswitch)],
            left.as_secs_f64(),
        );
    }
    render_policy(&mut out, &node.policy.stats(), node.policy.is_active(), policy_drops);
    out.0
}

fn render_policy(
    out: &mut Exposition,
    stats: &crate::policy::PolicyStats,
    active: bool,
    drops: Option<&BTreeMap<ObjectKey, u64>>,
) {
    out.family(
        "terway_policy_enforced",
        "gauge",
        "1 when NetworkPolicy is on and its rules are written from a complete picture of the cluster.",
    );
    out.sample(
        "terway_policy_enforced",
        &[],
        f64::from(u8::from(active && stats.ready)),
    );
    for (name, help, value) in [
        ("terway_policy_policies", "NetworkPolicies known.", stats.policies),
        (
            "terway_policy_rules",
            "nftables rules in force in table inet terway.",
            stats.rules,
        ),
        ("terway_policy_sets", "nftables named sets in force.", stats.sets),
        (
            "terway_policy_set_elements",
            "Elements of those sets (addresses, address-port pairs, ranges).",
            stats.set_elements,
        ),
        (
            "terway_policy_isolated_pods",
            "Local pods that some policy isolates in a direction.",
            stats.isolated_pods,
        ),
    ] {
        out.family(name, "gauge", help);
        out.sample(name, &[], value as f64);
    }
    out.family("terway_policy_syncs_total", "counter", "nftables transactions written.");
    out.sample("terway_policy_syncs_total", &[], stats.syncs as f64);
    out.family(
        "terway_policy_sync_errors_total",
        "counter",
        "nftables transactions the kernel or nft rejected.",
    );
    out.sample("terway_policy_sync_errors_total", &[], stats.sync_errors as f64);
    out.family(
        "terway_policy_sync_duration_seconds",
        "histogram",
        "Time from a change being recorded to its transaction being in force.",
    );
    out.histogram("terway_policy_sync_duration_seconds", &[], &stats.sync_duration);
    out.family(
        "terway_policy_dropped_packets_total",
        "counter",
        "Packets the policy dropped, by the local pod they were going to or coming from.",
    );
    for (pod, n) in drops.into_iter().flatten() {
        out.sample(
            "terway_policy_dropped_packets_total",
            &[("namespace", &pod.namespace), ("pod", &pod.name)],
            *n as f64,
        );
    }
}

fn status_label(status: &terway_statestore::EniStatus) -> String {
    match status {
        terway_statestore::EniStatus::InUse => "in_use",
        terway_statestore::EniStatus::Draining => "draining",
    }
    .to_owned()
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the task is aborted.
pub async fn serve(node: Arc<Node>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    let metrics_node = node.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let node = metrics_node.clone();
                async move {
                    let drops = node.policy.dropped_per_pod().await;
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        render(&node, drops.as_ref()),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let node = node.clone();
                async move {
                    if node.serving.load(Ordering::SeqCst) {
                        let mut text = String::from("ready: ledger open, CNI socket serving\n");
                        for pending in node.pending() {
                            let _ = writeln!(text, "pending: {pending}");
                        }
                        (StatusCode::OK, text).into_response()
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: the CNI socket is not serving\n",
                        )
                            .into_response()
                    }
                }
            }),
        );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn label_values_are_escaped_and_histograms_are_cumulative() {
        let mut out = Exposition(String::new());
        out.sample("m", &[("code", "a\"b\\c\nd")], 1.0);
        assert_eq!(out.0, "m{code=\"a\\\"b\\\\c\\nd\"} 1\n");
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = Exposition(String::new());
        out.histogram("h", &[], &h);
        assert!(out.0.contains("h_bucket{le=\"0.005\"} 1\n"), "{}", out.0);
        assert!(out.0.contains("h_bucket{le=\"0.05\"} 2\n"));
        assert!(out.0.contains("h_bucket{le=\"10\"} 2\n"));
        assert!(out.0.contains("h_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.0.contains("h_count 3\n"));
    }
}
