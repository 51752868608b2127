//! NetworkPolicy truth tables: the Kubernetes e2e model (namespaces x, y, z;
//! pods a, b, c; TCP, UDP and SCTP on ports 80 and 81) on two simulated
//! nodes, with real packets. Every cell of every table is probed and
//! compared twice: with the upstream test's expectation, and with the
//! offline evaluator (`terway-cli policy explain`). Root only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::time::Instant;
use terway_node::policy::model::{Policy, Protocol};
use terway_tests::netpol_lab::{namespace_labels, Lab};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const SCTP: Protocol = Protocol::Sctp;

enum Step {
    /// Every policy in force from now on (the previous ones are gone).
    Policies(Vec<Value>),
    NsLabel(&'static str, &'static str, &'static str),
    PodLabels(&'static str, Vec<(&'static str, &'static str)>),
    /// Probe every cell on one port; expectations start all-allowed and
    /// are changed in order: (from pattern, to pattern, allowed).
    Probe(Protocol, u16, Vec<(&'static str, &'static str, bool)>),
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
}

/// A NetworkPolicy as upstream's helpers build it: policyTypes lists
/// the directions the spec has rules for (SetSpecIngressRules/SetSpecEgressRules).
fn np(ns: &str, name: &str, mut spec: Value) -> Value {
    if spec.get("policyTypes").is_none() {
        let types: Vec<&str> = [("ingress", "Ingress"), ("egress", "Egress")]
            .into_iter()
            .filter(|(k, _)| spec.get(*k).is_some())
            .map(|(_, t)| t)
            .collect();
        spec["policyTypes"] = json!(types);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": ns, "name": name}, "spec": spec})
}

fn pod(label: &str) -> Value {
    json!({"matchLabels": {"pod": label}})
}

fn ns_name(ns: &str) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": ns}})
}

fn ingress_from(pod_label: &str, peers: Value) -> Value {
    json!({"podSelector": pod(pod_label), "ingress": [{"from": peers}]})
}

#[allow(clippy::too_many_lines)]
fn cases() -> Vec<Case> {
    use Step::{NsLabel, PodLabels, Policies, Probe};
    let deny_ingress = || {
        np(
            "x",
            "deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        )
    };
    let deny_all = || {
        np(
            "x",
            "deny-all",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        )
    };
    let not_x =
        json!({"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}]});
    let y_ports = |proto: &str, port: u16| {
        np(
            "x",
            "allow-y-on-port",
            json!({"podSelector": pod("a"),
            "ingress": [{"from": [{"namespaceSelector": ns_name("y")}], "ports": [{"port": port, "protocol": proto}]}]}),
        )
    };
    let from_y_a = || {
        ingress_from(
            "a",
            json!([{"namespaceSelector": ns_name("y"), "podSelector": pod("a")}]),
        )
    };
    let v = vec![
        Case {
            name: "default-deny-ingress",
            steps: vec![
                Policies(vec![deny_ingress()]),
                Probe(TCP, 80, vec![("*", "x/*", false)]),
            ],
        },
        Case {
            name: "default-deny-all",
            steps: vec![
                Policies(vec![deny_all()]),
                Probe(TCP, 80, vec![("*", "x/*", false), ("x/*", "*", false)]),
            ],
        },
        Case {
            name: "allow from pods within server namespace by PodSelector",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "x-a-allows-x-b",
                    ingress_from("a", json!([{"podSelector": pod("b")}])),
                )]),
                Probe(TCP, 80, vec![("*", "x/a", false), ("x/b", "x/a", true)]),
            ],
        },
        Case {
            name: "allow ingress traffic for a target",
            steps: vec![
                Policies(vec![
                    deny_ingress(),
                    np(
                        "x",
                        "allow-all-to-a",
                        ingress_from("a", json!([{"podSelector": {}, "namespaceSelector": {}}])),
                    ),
                ]),
                Probe(TCP, 80, vec![("*", "x/*", false), ("*", "x/a", true)]),
            ],
        },
        Case {
            name: "allow ingress from pods in all namespaces",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "allow-from-another-ns",
                    ingress_from("a", json!([{"namespaceSelector": {}}])),
                )]),
                Probe(TCP, 80, vec![]),
            ],
        },
        Case {
            name: "allow only from a different namespace by NamespaceSelector",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "allow-client-a-via-ns-selector",
                    ingress_from("a", json!([{"namespaceSelector": ns_name("y")}])),
                )]),
                Probe(TCP, 80, vec![("x/*", "x/a", false), ("z/*", "x/a", false)]),
            ],
        },
        Case {
            name: "PodSelector with MatchExpressions",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "x-a-allows-x-b",
                    ingress_from(
                        "a",
                        json!([{"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b"]}]}}]),
                    ),
                )]),
                Probe(TCP, 80, vec![("*", "x/a", false), ("x/b", "x/a", true)]),
            ],
        },
        Case {
            name: "NamespaceSelector with MatchExpressions",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "allow-ns-y",
                    ingress_from(
                        "a",
                        json!([{"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["y"]}]}}]),
                    ),
                )]),
                Probe(TCP, 80, vec![("x/*", "x/a", false), ("z/*", "x/a", false)]),
            ],
        },
        Case {
            name: "PodSelector or NamespaceSelector",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "or",
                    ingress_from(
                        "a",
                        json!([{"namespaceSelector": not_x.clone()}, {"podSelector": pod("b")}]),
                    ),
                )]),
                Probe(TCP, 80, vec![("x/a", "x/a", false), ("x/c", "x/a", false)]),
            ],
        },
        Case {
            name: "PodSelector and NamespaceSelector",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "and",
                    ingress_from(
                        "a",
                        json!([{"namespaceSelector": not_x.clone(), "podSelector": pod("b")}]),
                    ),
                )]),
                Probe(
                    TCP,
                    80,
                    vec![("*", "x/a", false), ("y/b", "x/a", true), ("z/b", "x/a", true)],
                ),
            ],
        },
        Case {
            name: "Multiple PodSelectors and NamespaceSelectors",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "multi",
                    ingress_from(
                        "a",
                        json!([{"namespaceSelector": not_x.clone(),
                "podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["b", "c"]}]}}]),
                    ),
                )]),
                Probe(
                    TCP,
                    80,
                    vec![("x/*", "x/a", false), ("y/a", "x/a", false), ("z/a", "x/a", false)],
                ),
            ],
        },
        Case {
            name: "any PodSelectors",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "any",
                    ingress_from("a", json!([{"podSelector": pod("b")}, {"podSelector": pod("c")}])),
                )]),
                Probe(
                    TCP,
                    80,
                    vec![("*", "x/a", false), ("x/b", "x/a", true), ("x/c", "x/a", true)],
                ),
            ],
        },
        Case {
            name: "only from a pod in a different namespace by PodSelector and NamespaceSelector",
            steps: vec![
                Policies(vec![np("x", "y-a", from_y_a())]),
                Probe(TCP, 80, vec![("*", "x/a", false), ("y/a", "x/a", true)]),
            ],
        },
        Case {
            name: "Ports",
            steps: vec![
                Policies(vec![y_ports("TCP", 81)]),
                Probe(
                    TCP,
                    81,
                    vec![("x/*", "x/a", false), ("y/*", "x/a", true), ("z/*", "x/a", false)],
                ),
            ],
        },
        Case {
            name: "multiple stacked policies with overlapping podSelectors",
            steps: vec![
                Policies(vec![y_ports("TCP", 81)]),
                Probe(TCP, 81, vec![("x/*", "x/a", false), ("z/*", "x/a", false)]),
                Probe(TCP, 80, vec![("*", "x/a", false)]),
                Policies(vec![
                    y_ports("TCP", 81),
                    np(
                        "x",
                        "allow-y-on-80",
                        json!({"podSelector": pod("a"),
                "ingress": [{"from": [{"namespaceSelector": ns_name("y")}], "ports": [{"port": 80, "protocol": "TCP"}]}]}),
                    ),
                ]),
                Probe(TCP, 80, vec![("x/*", "x/a", false), ("z/*", "x/a", false)]),
            ],
        },
        Case {
            name: "allow-all policy",
            steps: vec![
                Policies(vec![np("x", "allow-all", json!({"podSelector": {}, "ingress": [{}]}))]),
                Probe(TCP, 80, vec![]),
                Probe(TCP, 81, vec![]),
            ],
        },
        Case {
            name: "ingress on one named port",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "allow-81",
                    json!({"podSelector": {}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
                )]),
                Probe(TCP, 81, vec![]),
                Probe(TCP, 80, vec![("*", "x/*", false)]),
            ],
        },
        Case {
            name: "ingress from a namespace on one named port",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "allow-y-80",
                    json!({"podSelector": pod("a"),
                "ingress": [{"from": [{"namespaceSelector": ns_name("y")}], "ports": [{"port": "serve-80-tcp", "protocol": "TCP"}]}]}),
                )]),
                Probe(TCP, 80, vec![("x/*", "x/a", false), ("z/*", "x/a", false)]),
                Probe(TCP, 81, vec![("*", "x/a", false)]),
            ],
        },
        Case {
            name: "egress on one named port",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "allow-egress",
                    json!({"podSelector": {}, "egress": [{"ports": [{"port": "serve-80-tcp"}]}]}),
                )]),
                Probe(TCP, 80, vec![]),
                Probe(TCP, 81, vec![("x/*", "*", false)]),
            ],
        },
        Case {
            name: "updated policy",
            steps: vec![
                Policies(vec![np("x", "mutate", json!({"podSelector": {}, "ingress": [{}]}))]),
                Probe(TCP, 81, vec![]),
                Policies(vec![np("x", "mutate", json!({"podSelector": {}, "ingress": []}))]),
                Probe(TCP, 81, vec![("*", "x/*", false)]),
            ],
        },
        Case {
            name: "ingress from updated namespace",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "ns2",
                    ingress_from("a", json!([{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}])),
                )]),
                Probe(TCP, 80, vec![("*", "x/a", false)]),
                NsLabel("y", "ns2", "updated"),
                Probe(TCP, 80, vec![("*", "x/a", false), ("y/*", "*", true)]),
            ],
        },
        Case {
            name: "ingress from updated pod",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "pod2",
                    ingress_from(
                        "a",
                        json!([{"podSelector": {"matchLabels": {"pod": "b", "pod2": "updated"}}}]),
                    ),
                )]),
                Probe(TCP, 80, vec![("*", "x/a", false)]),
                PodLabels("x/b", vec![("pod", "b"), ("pod2", "updated")]),
                Probe(TCP, 80, vec![("*", "x/a", false), ("x/b", "x/a", true)]),
            ],
        },
        Case {
            name: "deny ingress from pods in other namespaces",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "deny-empty",
                    json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
                )]),
                Probe(TCP, 80, vec![("y/*", "x/*", false), ("z/*", "x/*", false)]),
            ],
        },
        Case {
            name: "deny ingress to updated pod",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "isolate",
                    json!({"podSelector": {"matchLabels": {"target": "isolated"}}, "policyTypes": ["Ingress"]}),
                )]),
                Probe(TCP, 80, vec![]),
                PodLabels("x/a", vec![("pod", "a"), ("target", "isolated")]),
                Probe(TCP, 80, vec![("*", "x/a", false)]),
            ],
        },
        Case {
            name: "deny egress by PodSelector",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "deny-egress-a",
                    json!({"podSelector": pod("a"), "policyTypes": ["Egress"]}),
                )]),
                Probe(TCP, 80, vec![("x/a", "*", false)]),
            ],
        },
        Case {
            name: "deny egress from all pods in a namespace",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "deny-egress",
                    json!({"podSelector": {}, "policyTypes": ["Egress"]}),
                )]),
                Probe(TCP, 80, vec![("x/*", "*", false)]),
            ],
        },
        Case {
            name: "Ingress and Egress together",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "both",
                    json!({"podSelector": pod("a"), "policyTypes": ["Egress", "Ingress"],
                "ingress": [{"from": [{"podSelector": pod("b")}]}], "egress": [{"ports": [{"port": 80}]}]}),
                )]),
                Probe(TCP, 80, vec![("*", "x/a", false), ("x/b", "x/a", true)]),
                Probe(
                    TCP,
                    81,
                    vec![("*", "x/a", false), ("x/a", "*", false), ("x/b", "x/a", true)],
                ),
            ],
        },
        Case {
            name: "egress denied on the client even if the server allows",
            steps: vec![
                Policies(vec![
                    np(
                        "x",
                        "to-y-a",
                        json!({"podSelector": pod("a"), "egress": [{"to": [{"namespaceSelector": ns_name("y"), "podSelector": pod("a")}]}]}),
                    ),
                    np(
                        "y",
                        "from-x-a-on-a",
                        ingress_from(
                            "a",
                            json!([{"namespaceSelector": ns_name("x"), "podSelector": pod("a")}]),
                        ),
                    ),
                    np(
                        "y",
                        "from-x-a-on-b",
                        ingress_from(
                            "b",
                            json!([{"namespaceSelector": ns_name("x"), "podSelector": pod("a")}]),
                        ),
                    ),
                ]),
                Probe(
                    TCP,
                    80,
                    vec![
                        ("x/a", "*", false),
                        ("*", "y/a", false),
                        ("x/a", "y/a", true),
                        ("*", "y/b", false),
                    ],
                ),
            ],
        },
        Case {
            name: "egress to a server in another namespace by PodSelector and NamespaceSelector",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "to-y-a",
                    json!({"podSelector": pod("a"), "egress": [{"to": [{"namespaceSelector": ns_name("y"), "podSelector": pod("a")}]}]}),
                )]),
                Probe(TCP, 80, vec![("x/a", "*", false), ("x/a", "y/a", true)]),
            ],
        },
        Case {
            name: "ingress on any port of one protocol",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "tcp-only",
                    json!({"podSelector": pod("a"), "ingress": [{"ports": [{"protocol": "TCP"}]}]}),
                )]),
                Probe(TCP, 80, vec![]),
                Probe(UDP, 80, vec![("*", "x/a", false)]),
            ],
        },
        Case {
            name: "multiple ingress policies, allow-all takes precedence",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "port-80",
                    json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
                )]),
                Probe(TCP, 81, vec![("*", "x/*", false)]),
                Policies(vec![
                    np(
                        "x",
                        "port-80",
                        json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}),
                    ),
                    np("x", "allow-ingress", json!({"podSelector": {}, "ingress": [{}]})),
                ]),
                Probe(TCP, 81, vec![]),
            ],
        },
        Case {
            name: "multiple egress policies, allow-all takes precedence",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "port-80",
                    json!({"podSelector": {}, "egress": [{"ports": [{"port": 80}]}]}),
                )]),
                Probe(TCP, 81, vec![("x/*", "*", false)]),
                Policies(vec![
                    np(
                        "x",
                        "port-80",
                        json!({"podSelector": {}, "egress": [{"ports": [{"port": 80}]}]}),
                    ),
                    np("x", "allow-egress", json!({"podSelector": {}, "egress": [{}]})),
                ]),
                Probe(TCP, 81, vec![]),
            ],
        },
        Case {
            name: "stop enforcing policies after they are deleted",
            steps: vec![
                Policies(vec![deny_all()]),
                Probe(TCP, 80, vec![("x/*", "*", false), ("*", "x/*", false)]),
                Policies(vec![]),
                Probe(TCP, 80, vec![]),
            ],
        },
        Case {
            name: "egress to a server in a CIDR block",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "cidr",
                    json!({"podSelector": pod("a"), "egress": [{"to": [{"ipBlock": {"cidr": "{ip:y/b}/32"}}]}]}),
                )]),
                Probe(TCP, 80, vec![("x/a", "*", false), ("x/a", "y/b", true)]),
            ],
        },
        Case {
            name: "except clause of a CIDR block",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "cidr",
                    json!({"podSelector": pod("a"), "egress": [{"to": [{"ipBlock": {"cidr": "{ip:x/b}/8", "except": ["{ip:x/b}/32"]}}]}]}),
                )]),
                Probe(TCP, 80, vec![("x/a", "x/b", false)]),
            ],
        },
        Case {
            name: "an IP in both a CIDR and an except is allowed by another policy",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "cidr",
                    json!({"podSelector": pod("a"), "egress": [{"to": [{"ipBlock": {"cidr": "{ip:x/b}/8", "except": ["{ip:x/b}/32"]}}]}]}),
                )]),
                Probe(TCP, 80, vec![("x/a", "x/b", false)]),
                Policies(vec![np(
                    "x",
                    "cidr",
                    json!({"podSelector": pod("a"), "egress": [{"to": [{"ipBlock": {"cidr": "{ip:x/b}/32"}}]}]}),
                )]),
                Probe(TCP, 80, vec![("x/a", "*", false), ("x/a", "x/b", true)]),
            ],
        },
        Case {
            name: "ingress and egress controlled independently",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "allow-egress",
                    json!({"podSelector": pod("a"), "egress": [{}]}),
                )]),
                Probe(TCP, 80, vec![]),
                Policies(vec![
                    np("x", "allow-egress", json!({"podSelector": pod("a"), "egress": [{}]})),
                    np(
                        "x",
                        "deny-ingress",
                        json!({"podSelector": pod("a"), "policyTypes": ["Ingress"]}),
                    ),
                ]),
                Probe(TCP, 80, vec![("*", "x/a", false)]),
            ],
        },
        Case {
            name: "SCTP is not TCP",
            steps: vec![
                Policies(vec![
                    deny_ingress(),
                    np(
                        "x",
                        "sctp-81",
                        json!({"podSelector": pod("a"), "ingress": [{"ports": [{"port": 81, "protocol": "SCTP"}]}]}),
                    ),
                ]),
                Probe(TCP, 81, vec![("*", "x/*", false)]),
            ],
        },
        Case {
            name: "an SCTP-only policy isolates for TCP",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "sctp-80",
                    json!({"podSelector": pod("a"), "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]}),
                )]),
                Probe(TCP, 81, vec![("*", "x/a", false)]),
            ],
        },
        Case {
            name: "a UDP-only policy allows no TCP",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "udp-81",
                    json!({"podSelector": pod("a"), "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}),
                )]),
                Probe(TCP, 81, vec![("*", "x/a", false)]),
            ],
        },
        Case {
            name: "NamespaceSelector MatchLabels on the default namespace label",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "immutable",
                    ingress_from("a", json!([{"namespaceSelector": ns_name("y")}])),
                )]),
                Probe(TCP, 80, vec![("x/*", "x/a", false), ("z/*", "x/a", false)]),
            ],
        },
        Case {
            name: "NamespaceSelector MatchExpressions on the default namespace label (egress)",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "not-y",
                    json!({"podSelector": pod("a"), "egress": [{"to": [{"namespaceSelector":
                {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["y"]}]}}]}]}),
                )]),
                Probe(TCP, 80, vec![("x/a", "y/*", false)]),
            ],
        },
        Case {
            name: "UDP default-deny-ingress",
            steps: vec![
                Policies(vec![deny_ingress()]),
                Probe(UDP, 80, vec![("*", "x/*", false)]),
            ],
        },
        Case {
            name: "UDP Ports",
            steps: vec![
                Policies(vec![y_ports("UDP", 81)]),
                Probe(UDP, 81, vec![("x/*", "x/a", false), ("z/*", "x/a", false)]),
            ],
        },
        Case {
            name: "UDP from a pod in another namespace",
            steps: vec![
                Policies(vec![np("x", "y-a", from_y_a())]),
                Probe(UDP, 80, vec![("*", "x/a", false), ("y/a", "x/a", true)]),
            ],
        },
        Case {
            name: "SCTP default-deny-ingress",
            steps: vec![
                Policies(vec![deny_ingress()]),
                Probe(SCTP, 80, vec![("*", "x/*", false)]),
            ],
        },
        Case {
            name: "SCTP Ports",
            steps: vec![
                Policies(vec![y_ports("SCTP", 81)]),
                Probe(SCTP, 81, vec![("x/*", "x/a", false), ("z/*", "x/a", false)]),
            ],
        },
        Case {
            name: "SCTP from a pod in another namespace",
            steps: vec![
                Policies(vec![np("x", "y-a", from_y_a())]),
                Probe(SCTP, 80, vec![("*", "x/a", false), ("y/a", "x/a", true)]),
            ],
        },
        // beyond the upstream list: endPort ranges, and named UDP ports on egress
        Case {
            name: "endPort range",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "range",
                    json!({"podSelector": pod("a"), "ingress": [{"ports": [{"port": 81, "endPort": 90}]}]}),
                )]),
                Probe(TCP, 81, vec![]),
                Probe(TCP, 80, vec![("*", "x/a", false)]),
            ],
        },
        Case {
            name: "egress named UDP port to a selector",
            steps: vec![
                Policies(vec![np(
                    "x",
                    "udp-named",
                    json!({"podSelector": pod("a"),
                "egress": [{"to": [{"namespaceSelector": ns_name("z")}], "ports": [{"port": "serve-81-udp", "protocol": "UDP"}]}]}),
                )]),
                Probe(UDP, 81, vec![("x/a", "*", false), ("x/a", "z/*", true)]),
                Probe(UDP, 80, vec![("x/a", "*", false)]),
            ],
        },
    ];
    v
}

fn policy_of(lab: &Lab, mut v: Value) -> Policy {
    // {ip:ns/pod} placeholders: a pod's address
    let mut text = v.to_string();
    for p in &lab.pods {
        text = text.replace(&format!("{{ip:{}}}", p.key), &p.ip.to_string());
    }
    v = serde_json::from_str(&text).expect("policy JSON");
    let np: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_value(v).expect("a NetworkPolicy");
    let policy = Policy::from_k8s(&np).expect("named policy");
    assert!(policy.problems.is_empty(), "{}: {:?}", policy.key, policy.problems);
    policy
}

#[test]
fn e2e_model_truth_tables() {
    if let Some(why) = terway_tests::netpol_lab::unavailable() {
        eprintln!("SKIPPED e2e_model_truth_tables: {why}");
        return;
    }
    let mut lab = Lab::model().expect("the lab");
    let n = lab.pods.len();
    let started = Instant::now();
    let (mut tables, mut cells_probed, mut failures) = (0, 0, Vec::new());
    let cases = cases();
    assert!(cases.len() >= 40, "at least 40 upstream cases");
    for case in cases {
        // each case starts from the model's labels and no policy
        for ns in ["x", "y", "z"] {
            lab.set_namespace_labels(ns, namespace_labels(ns)).expect("labels");
        }
        for i in 0..n {
            let key = lab.pods[i].key.clone();
            lab.set_pod_labels(&key, [("pod".to_owned(), key.name.clone())].into())
                .expect("labels");
        }
        for step in case.steps {
            match step {
                Step::Policies(list) => {
                    let policies = list.into_iter().map(|v| policy_of(&lab, v)).collect();
                    lab.set_policies(policies)
                        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
                }
                Step::NsLabel(ns, k, v) => {
                    let mut labels = namespace_labels(ns);
                    labels.insert(k.into(), v.into());
                    lab.set_namespace_labels(ns, labels).expect("labels");
                }
                Step::PodLabels(key, labels) => {
                    let key = terway_node::policy::ObjectKey::parse(key).expect("key");
                    let labels = labels.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                    lab.set_pod_labels(&key, labels).expect("labels");
                }
                Step::Probe(proto, port, expectations) => {
                    tables += 1;
                    match lab.check_table(case.name, proto, port, &expectations) {
                        Ok(cells) => cells_probed += cells,
                        Err(table) => failures.push(table),
                    }
                }
            }
        }
    }
    eprintln!(
        "{tables} truth tables, {cells_probed} cells probed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} tables wrong:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Random labels, random policies: the kernel's verdict (a real packet)
/// and the offline evaluator's must agree on every probed cell.
#[test]
fn random_policies_rules_and_evaluator_agree() {
    use rand::{Rng, SeedableRng};
    if let Some(why) = terway_tests::netpol_lab::unavailable() {
        eprintln!("SKIPPED random_policies_rules_and_evaluator_agree: {why}");
        return;
    }
    let mut lab = Lab::model().expect("the lab");
    let n = lab.pods.len();
    let seed: u64 = std::env::var("NETPOL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_130);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut probed, mut denied, mut disagreements) = (0, 0, Vec::new());
    let pick = |rng: &mut rand::rngs::StdRng, from: &[&str]| from[rng.random_range(0..from.len())].to_owned();
    for round in 0..25 {
        // random labels on namespaces and pods
        for ns in ["x", "y", "z"] {
            let mut labels = namespace_labels(ns);
            if rng.random_bool(0.6) {
                labels.insert("team".into(), pick(&mut rng, &["red", "blue"]));
            }
            lab.set_namespace_labels(ns, labels).expect("labels");
        }
        for i in 0..n {
            let key = lab.pods[i].key.clone();
            let mut labels: terway_node::policy::model::Labels = [("pod".to_owned(), key.name.clone())].into();
            if rng.random_bool(0.5) {
                labels.insert("tier".into(), pick(&mut rng, &["web", "db"]));
            }
            lab.set_pod_labels(&key, labels).expect("labels");
        }
        let selector = |rng: &mut rand::rngs::StdRng, keys: &[(&str, &[&str])]| -> Value {
            let (key, values) = keys[rng.random_range(0..keys.len())];
            match rng.random_range(0..6) {
                0 => json!({}),
                1 => json!({"matchLabels": {key: pick(rng, values)}}),
                2 => {
                    json!({"matchExpressions": [{"key": key, "operator": "In", "values": [pick(rng, values), pick(rng, values)]}]})
                }
                3 => json!({"matchExpressions": [{"key": key, "operator": "NotIn", "values": [pick(rng, values)]}]}),
                4 => json!({"matchExpressions": [{"key": key, "operator": "Exists"}]}),
                _ => json!({"matchExpressions": [{"key": key, "operator": "DoesNotExist"}]}),
            }
        };
        let pod_keys: &[(&str, &[&str])] = &[("pod", &["a", "b", "c"]), ("tier", &["web", "db"])];
        let ns_keys: &[(&str, &[&str])] = &[("team", &["red", "blue"]), ("ns", &["x", "y", "z"])];
        let mut policies = Vec::new();
        for p in 0..rng.random_range(1..4) {
            let ns = pick(&mut rng, &["x", "y", "z"]);
            let mut rules = Vec::new();
            for _ in 0..rng.random_range(0..3) {
                let mut rule = serde_json::Map::new();
                if rng.random_bool(0.8) {
                    let peers: Vec<Value> = (0..rng.random_range(1..3))
                        .map(|_| match rng.random_range(0..4) {
                            0 => json!({"podSelector": selector(&mut rng, pod_keys)}),
                            1 => json!({"namespaceSelector": selector(&mut rng, ns_keys)}),
                            2 => json!({"podSelector": selector(&mut rng, pod_keys), "namespaceSelector": selector(&mut rng, ns_keys)}),
                            _ => {
                                let ip = lab.pods[rng.random_range(0..n)].ip;
                                if rng.random_bool(0.5) {
                                    json!({"ipBlock": {"cidr": format!("{ip}/32")}})
                                } else {
                                    json!({"ipBlock": {"cidr": format!("{ip}/16"), "except": [format!("{ip}/32")]}})
                                }
                            }
                        })
                        .collect();
                    rule.insert("peers".into(), json!(peers));
                }
                if rng.random_bool(0.6) {
                    let ports: Vec<Value> = (0..rng.random_range(1..3))
                        .map(|_| {
                            let proto = pick(&mut rng, &["TCP", "UDP"]);
                            match rng.random_range(0..4) {
                                0 => json!({"protocol": proto}),
                                1 => json!({"protocol": proto, "port": 80 + rng.random_range(0..2)}),
                                2 => json!({"protocol": proto, "port": 80, "endPort": 81}),
                                _ => json!({"protocol": proto, "port": format!("serve-{}-{}", 80 + rng.random_range(0..2), proto.to_lowercase())}),
                            }
                        })
                        .collect();
                    rule.insert("ports".into(), json!(ports));
                }
                rules.push(rule);
            }
            let direction = pick(&mut rng, &["Ingress", "Egress", "Both"]);
            let render = |rules: &[serde_json::Map<String, Value>], peer_key: &str| -> Value {
                rules
                    .iter()
                    .map(|r| {
                        let mut out = serde_json::Map::new();
                        if let Some(p) = r.get("peers") {
                            out.insert(peer_key.into(), p.clone());
                        }
                        if let Some(p) = r.get("ports") {
                            out.insert("ports".into(), p.clone());
                        }
                        Value::Object(out)
                    })
                    .collect()
            };
            let mut spec = json!({"podSelector": selector(&mut rng, pod_keys)});
            let types: Vec<&str> = match direction.as_str() {
                "Ingress" => vec!["Ingress"],
                "Egress" => vec!["Egress"],
                _ => vec!["Ingress", "Egress"],
            };
            if types.contains(&"Ingress") {
                spec["ingress"] = render(&rules, "from");
            }
            if types.contains(&"Egress") {
                spec["egress"] = render(&rules, "to");
            }
            spec["policyTypes"] = json!(types);
            policies.push(policy_of(&lab, np(&ns, &format!("r{round}-{p}"), spec)));
        }
        let shown: Vec<String> = policies.iter().map(|p| format!("{p:?}")).collect();
        lab.set_policies(policies).expect("policies");
        let cells: Vec<_> = (0..40)
            .map(|_| {
                let proto = if rng.random_bool(0.5) { TCP } else { UDP };
                (
                    rng.random_range(0..n),
                    rng.random_range(0..n),
                    proto,
                    80 + rng.random_range(0..2),
                )
            })
            .collect();
        let (d, wrong) =
            lab.cells_against_evaluator(&cells, &format!("seed {seed} round {round}, policies: {shown:#?}"));
        probed += cells.len();
        denied += d;
        disagreements.extend(wrong);
    }
    eprintln!("{probed} random cells probed, {denied} of them denied (seed {seed})");
    assert!(
        denied > probed / 10 && denied < probed * 9 / 10,
        "random policies should both allow and deny"
    );
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n\n"));
}
