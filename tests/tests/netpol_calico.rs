//! Calico policies on terway's engine, as truth tables with real packets on
//! two simulated nodes: Calico's "stars" demo, its advanced policy tutorial
//! (in the Kubernetes and the `projectcalico.org/v3` forms), ordering with
//! Pass, Deny and Log between GlobalNetworkPolicies and Kubernetes
//! policies, the selector language, service accounts, ICMP, nets/notNets,
//! port ranges and named ports. Every cell is probed and must match both the
//! expectation (Calico's documented verdict) and the offline evaluator.
//! Root only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use std::time::Instant;
use terway_node::policy::calico::model::CalicoPolicy;
use terway_node::policy::model::{Labels, ObjectKey, Policy, Protocol};
use terway_tests::netpol_lab::{namespace_labels, Lab};

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;
const ICMP: Protocol = Protocol::Icmp;

enum Step {
    /// Every policy in force from now on, Kubernetes and Calico objects alike.
    Policies(Vec<Value>),
    NsLabels(&'static str, Vec<(&'static str, &'static str)>),
    PodLabels(&'static str, Vec<(&'static str, &'static str)>),
    ServiceAccount(&'static str, &'static str, Vec<(&'static str, &'static str)>),
    /// Probe every cell on one protocol and port (ICMP: the type, 8):
    /// expectations start all-allowed and change in order.
    Probe(Protocol, u16, Vec<(&'static str, &'static str, bool)>),
}

struct Case {
    name: &'static str,
    steps: Vec<Step>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn k8s(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": ns, "name": name}, "spec": spec})
}

/// A Calico NetworkPolicy as users write it with calicoctl.
fn cnp(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
           "metadata": {"namespace": ns, "name": name}, "spec": spec})
}

/// A GlobalNetworkPolicy in the stored CRD form (`crd.projectcalico.org/v1`).
fn gnp(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy",
           "metadata": {"name": name}, "spec": spec})
}

fn apply(lab: &mut Lab, list: Vec<Value>) {
    let mut text = Value::Array(list).to_string();
    // {ip:ns/pod} placeholders: a pod's address
    for p in &lab.pods {
        text = text.replace(&format!("{{ip:{}}}", p.key), &p.ip.to_string());
    }
    let (mut kube, mut calico) = (Vec::new(), Vec::new());
    for v in serde_json::from_str::<Vec<Value>>(&text).unwrap() {
        if v["apiVersion"] == "networking.k8s.io/v1" {
            let p = Policy::from_k8s(&serde_json::from_value(v).unwrap()).unwrap();
            assert!(p.problems.is_empty(), "{}: {:?}", p.key, p.problems);
            kube.push(p);
        } else {
            let p = CalicoPolicy::from_object(&v).unwrap();
            assert!(p.problems.is_empty(), "{}: {:?}", p.id(), p.problems);
            calico.push(p);
        }
    }
    lab.set_all_policies(kube, calico).unwrap();
}

/// Runs the cases on a lab; each starts from the lab's labels and no policy.
fn run(lab: &mut Lab, cases: Vec<Case>, ns_base: &dyn Fn(&str) -> Labels) {
    let started = Instant::now();
    let (mut tables, mut cells, mut failures) = (0, 0, Vec::new());
    let namespaces: Vec<String> = {
        let mut v: Vec<String> = lab.pods.iter().map(|p| p.key.namespace.clone()).collect();
        v.dedup();
        v
    };
    for case in cases {
        for ns in &namespaces {
            lab.set_namespace_labels(ns, ns_base(ns)).unwrap();
        }
        for i in 0..lab.pods.len() {
            let key = lab.pods[i].key.clone();
            lab.set_pod_labels(&key, labels(&[("pod", &key.name)])).unwrap();
        }
        for step in case.steps {
            match step {
                Step::Policies(list) => apply(lab, list),
                Step::NsLabels(ns, extra) => {
                    let mut l = ns_base(ns);
                    l.extend(labels(&extra));
                    lab.set_namespace_labels(ns, l).unwrap();
                }
                Step::PodLabels(key, l) => lab.set_pod_labels(&ObjectKey::parse(key).unwrap(), labels(&l)).unwrap(),
                Step::ServiceAccount(key, account, l) => lab
                    .set_service_account(&ObjectKey::parse(key).unwrap(), account, labels(&l))
                    .unwrap(),
                Step::Probe(proto, port, expectations) => {
                    tables += 1;
                    match lab.check_table(case.name, proto, port, &expectations) {
                        Ok(n) => cells += n,
                        Err(table) => failures.push(table),
                    }
                }
            }
        }
    }
    eprintln!(
        "{tables} truth tables, {cells} cells probed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} tables wrong:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn pods(list: &[(&str, &str, usize)]) -> Vec<(String, String, usize)> {
    list.iter()
        .map(|(ns, name, node)| ((*ns).to_owned(), (*name).to_owned(), *node))
        .collect()
}

/// Calico's "stars" demo (docs: Network policy → Stars policy demo): the
/// management UI sees everything, the client reaches the frontend on 80,
/// the frontend reaches the backend on 6379, nothing else.
#[test]
fn stars_demo() {
    if let Some(why) = terway_tests::netpol_lab::unavailable() {
        eprintln!("SKIPPED stars_demo: {why}");
        return;
    }
    let mut lab = Lab::with_ports(
        &pods(&[
            ("stars", "frontend", 0),
            ("stars", "backend", 1),
            ("client", "client", 0),
            ("management-ui", "management-ui", 1),
        ]),
        &[80, 6379],
    )
    .unwrap();
    let role = |pod: &'static str| Step::PodLabels(pod, vec![("role", pod.rsplit('/').next().unwrap())]);
    let deny = |ns| k8s(ns, "default-deny", json!({"podSelector": {}}));
    let allow_ui = |ns| {
        k8s(
            ns,
            "allow-ui",
            json!({"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"role": "management-ui"}}}]}]}),
        )
    };
    let cases = vec![Case {
        name: "stars",
        steps: vec![
            Step::NsLabels("client", vec![("role", "client")]),
            Step::NsLabels("management-ui", vec![("role", "management-ui")]),
            role("stars/frontend"),
            role("stars/backend"),
            role("client/client"),
            role("management-ui/management-ui"),
            // before any policy: everything reaches everything
            Step::Probe(TCP, 6379, vec![]),
            Step::Policies(vec![
                deny("stars"),
                deny("client"),
                allow_ui("stars"),
                allow_ui("client"),
            ]),
            Step::Probe(
                TCP,
                80,
                vec![
                    ("*", "stars/*", false),
                    ("*", "client/*", false),
                    ("management-ui/*", "*", true),
                ],
            ),
            Step::Policies(vec![
                deny("stars"),
                deny("client"),
                allow_ui("stars"),
                allow_ui("client"),
                k8s(
                    "stars",
                    "backend-policy",
                    json!({"podSelector": {"matchLabels": {"role": "backend"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "frontend"}}}],
                                 "ports": [{"protocol": "TCP", "port": 6379}]}]}),
                ),
                k8s(
                    "stars",
                    "frontend-policy",
                    json!({"podSelector": {"matchLabels": {"role": "frontend"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"role": "client"}}}],
                                 "ports": [{"protocol": "TCP", "port": 80}]}]}),
                ),
            ]),
            Step::Probe(
                TCP,
                80,
                vec![
                    ("*", "stars/*", false),
                    ("*", "client/*", false),
                    ("client/client", "stars/frontend", true),
                    ("management-ui/*", "*", true),
                ],
            ),
            Step::Probe(
                TCP,
                6379,
                vec![
                    ("*", "stars/*", false),
                    ("*", "client/*", false),
                    ("stars/frontend", "stars/backend", true),
                    ("management-ui/*", "*", true),
                ],
            ),
        ],
    }];
    run(&mut lab, cases, &|ns| namespace_labels(ns));
}

/// Calico's advanced policy tutorial: default deny, then allow ingress to
/// nginx, default deny egress, allow DNS egress to kube-system, allow
/// egress within the namespace — first with Kubernetes policies as the
/// tutorial writes them, then the same isolation in Calico's own API.
#[test]
fn advanced_policy_tutorial() {
    if let Some(why) = terway_tests::netpol_lab::unavailable() {
        eprintln!("SKIPPED advanced_policy_tutorial: {why}");
        return;
    }
    let demo = "advanced-policy-demo";
    let mut lab = Lab::with_ports(
        &pods(&[(demo, "nginx", 0), (demo, "access", 1), ("kube-system", "kube-dns", 0)]),
        &[80, 53],
    )
    .unwrap();
    let base = |ns: &str| {
        let mut l = namespace_labels(ns);
        l.insert("name".into(), ns.into());
        l
    };
    let setup = || {
        vec![
            Step::PodLabels("advanced-policy-demo/nginx", vec![("app", "nginx")]),
            Step::PodLabels("advanced-policy-demo/access", vec![("run", "access")]),
            Step::PodLabels("kube-system/kube-dns", vec![("k8s-app", "kube-dns")]),
        ]
    };
    let deny_ingress = k8s(
        demo,
        "default-deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    );
    let access_nginx = k8s(
        demo,
        "access-nginx",
        json!({"podSelector": {"matchLabels": {"app": "nginx"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"run": "access"}}}]}]}),
    );
    let deny_egress = k8s(
        demo,
        "default-deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    );
    let allow_dns = k8s(
        demo,
        "allow-dns-access",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"name": "kube-system"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}]}]}),
    );
    let allow_ns = k8s(
        demo,
        "allow-egress-to-advance-policy-ns",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"name": demo}}}]}]}),
    );
    let access = "advanced-policy-demo/access";
    let nginx = "advanced-policy-demo/nginx";
    let dns = "kube-system/kube-dns";
    let mut k8s_steps = setup();
    k8s_steps.extend([
        Step::Policies(vec![deny_ingress.clone()]),
        Step::Probe(TCP, 80, vec![("*", "advanced-policy-demo/*", false)]),
        Step::Policies(vec![deny_ingress.clone(), access_nginx.clone()]),
        Step::Probe(
            TCP,
            80,
            vec![("*", "advanced-policy-demo/*", false), (access, nginx, true)],
        ),
        Step::Policies(vec![deny_ingress.clone(), access_nginx.clone(), deny_egress.clone()]),
        Step::Probe(
            UDP,
            53,
            vec![
                ("*", "advanced-policy-demo/*", false),
                ("advanced-policy-demo/*", "*", false),
            ],
        ),
        Step::Policies(vec![
            deny_ingress.clone(),
            access_nginx.clone(),
            deny_egress.clone(),
            allow_dns.clone(),
        ]),
        Step::Probe(
            UDP,
            53,
            vec![
                ("*", "advanced-policy-demo/*", false),
                ("advanced-policy-demo/*", "*", false),
                ("advanced-policy-demo/*", dns, true),
            ],
        ),
        Step::Probe(
            TCP,
            80,
            vec![
                ("*", "advanced-policy-demo/*", false),
                ("advanced-policy-demo/*", "*", false),
            ],
        ),
        Step::Policies(vec![deny_ingress, access_nginx, deny_egress, allow_dns, allow_ns]),
        Step::Probe(
            TCP,
            80,
            vec![
                ("*", "advanced-policy-demo/*", false),
                ("advanced-policy-demo/*", "*", false),
                (access, nginx, true),
            ],
        ),
    ]);
    // the same isolation in Calico's API: a GlobalNetworkPolicy denying the
    // namespace by its Calico label, DNS egress to kube-dns, traffic within the namespace
    let mut calico_steps = setup();
    let default_deny = gnp(
        "default-deny",
        json!({
        "selector": "projectcalico.org/namespace == 'advanced-policy-demo'", "types": ["Ingress", "Egress"]}),
    );
    let dns_egress = cnp(
        demo,
        "allow-dns",
        json!({"order": 100, "selector": "all()", "types": ["Egress"], "egress": [
        {"action": "Allow", "protocol": "UDP", "destination": {
            "selector": "k8s-app == 'kube-dns'", "namespaceSelector": "projectcalico.org/name == 'kube-system'", "ports": [53]}}]}),
    );
    let within = cnp(
        demo,
        "namespace-isolation",
        json!({"order": 200, "selector": "all()", "types": ["Ingress", "Egress"],
        "ingress": [{"action": "Allow", "source": {"selector": "all()"}}],
        "egress": [{"action": "Allow", "destination": {"selector": "all()"}}]}),
    );
    calico_steps.extend([
        Step::Policies(vec![default_deny.clone()]),
        Step::Probe(
            UDP,
            53,
            vec![
                ("*", "advanced-policy-demo/*", false),
                ("advanced-policy-demo/*", "*", false),
            ],
        ),
        Step::Policies(vec![default_deny.clone(), dns_egress.clone()]),
        Step::Probe(
            UDP,
            53,
            vec![
                ("*", "advanced-policy-demo/*", false),
                ("advanced-policy-demo/*", "*", false),
                ("advanced-policy-demo/*", dns, true),
            ],
        ),
        Step::Policies(vec![default_deny, dns_egress, within]),
        Step::Probe(
            TCP,
            80,
            vec![
                ("*", "advanced-policy-demo/*", false),
                ("advanced-policy-demo/*", "*", false),
                ("advanced-policy-demo/*", "advanced-policy-demo/*", true),
            ],
        ),
    ]);
    let cases = vec![
        Case {
            name: "advanced tutorial (Kubernetes policies)",
            steps: k8s_steps,
        },
        Case {
            name: "advanced tutorial (Calico policies)",
            steps: calico_steps,
        },
    ];
    run(&mut lab, cases, &base);
}

fn ns_y() -> Value {
    json!("projectcalico.org/namespace == 'y'")
}

/// On the e2e model (x, y, z; a, b, c on two nodes): ordering, actions,
/// the selector language, service accounts, ICMP, nets and ports.
#[test]
fn calico_semantics_on_the_model() {
    if let Some(why) = terway_tests::netpol_lab::unavailable() {
        eprintln!("SKIPPED calico_semantics_on_the_model: {why}");
        return;
    }
    let mut lab = Lab::model().unwrap();
    let allow_all_into_y = k8s("y", "allow-all", json!({"podSelector": {}, "ingress": [{}]}));
    let deny_all_into_y = k8s("y", "deny-all", json!({"podSelector": {}, "policyTypes": ["Ingress"]}));
    let cases = vec![
        Case {
            name: "GlobalNetworkPolicy Deny at order 100 before a Kubernetes allow-all",
            steps: vec![
                Step::Policies(vec![
                    gnp(
                        "deny-xa",
                        json!({"order": 100, "selector": ns_y(), "ingress": [
                        {"action": "Deny", "source": {"selector": "pod == 'a'", "namespaceSelector": "ns == 'x'"}}]}),
                    ),
                    allow_all_into_y.clone(),
                ]),
                Step::Probe(TCP, 80, vec![("x/a", "y/*", false)]),
            ],
        },
        Case {
            name: "Kubernetes allow (order 1000) before a GlobalNetworkPolicy Deny at order 2000",
            steps: vec![
                Step::Policies(vec![
                    gnp(
                        "deny-late",
                        json!({"order": 2000, "selector": ns_y(), "ingress": [{"action": "Deny"}]}),
                    ),
                    k8s(
                        "y",
                        "allow-x",
                        json!({"podSelector": {}, "ingress": [{"from": [
                        {"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
                    ),
                ]),
                Step::Probe(TCP, 80, vec![("*", "y/*", false), ("x/*", "y/*", true)]),
            ],
        },
        Case {
            name: "Pass skips the tier's Kubernetes deny-all: the profile allows",
            steps: vec![
                Step::Policies(vec![
                    gnp(
                        "pass-x",
                        json!({"order": 10, "selector": ns_y(), "ingress": [
                        {"action": "Pass", "source": {"namespaceSelector": "ns == 'x'"}}]}),
                    ),
                    deny_all_into_y.clone(),
                ]),
                Step::Probe(TCP, 81, vec![("*", "y/*", false), ("x/*", "y/*", true)]),
            ],
        },
        Case {
            name: "Log decides nothing; a policy that applies and allows nothing denies",
            steps: vec![
                Step::Policies(vec![gnp(
                    "log-deny-z",
                    json!({"order": 5, "selector": ns_y(), "ingress": [
                    {"action": "Log"}, {"action": "Deny", "source": {"namespaceSelector": "ns == 'z'"}}]}),
                )]),
                Step::Probe(TCP, 80, vec![("*", "y/*", false)]),
                Step::Policies(vec![gnp(
                    "log-deny-z-allow",
                    json!({"order": 5, "selector": ns_y(), "ingress": [
                    {"action": "Log"}, {"action": "Deny", "source": {"namespaceSelector": "ns == 'z'"}}, {"action": "Allow"}]}),
                )]),
                Step::Probe(TCP, 80, vec![("z/*", "y/*", false)]),
            ],
        },
        Case {
            name: "a Kubernetes deny-all has no rules: a later Calico Allow (no order) decides",
            steps: vec![
                Step::Policies(vec![
                    deny_all_into_y.clone(),
                    cnp(
                        "y",
                        "allow-last",
                        json!({"ingress": [
                    {"action": "Allow", "source": {"namespaceSelector": "ns != 'z'"}}]}),
                    ),
                ]),
                Step::Probe(TCP, 80, vec![("z/*", "y/*", false)]),
            ],
        },
        Case {
            name: "Calico NetworkPolicy at order 500 denies x/c before a Kubernetes allow from x",
            steps: vec![
                Step::Policies(vec![
                    cnp(
                        "y",
                        "deny-xc",
                        json!({"order": 500, "ingress": [{"action": "Deny", "source": {
                        "selector": "pod == 'c'", "namespaceSelector": "ns == 'x'"}}]}),
                    ),
                    k8s(
                        "y",
                        "allow-x",
                        json!({"podSelector": {}, "ingress": [{"from": [
                        {"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}]}),
                    ),
                ]),
                Step::Probe(
                    TCP,
                    80,
                    vec![("*", "y/*", false), ("x/*", "y/*", true), ("x/c", "y/*", false)],
                ),
            ],
        },
        Case {
            name: "selectors: in, has(), !, && and a rule namespaceSelector",
            steps: vec![
                Step::Policies(vec![cnp(
                    "y",
                    "sel",
                    json!({"selector": "pod in {'a', 'b'}", "ingress": [
                    {"action": "Allow", "source": {"selector": "has(pod) && !(pod == 'c')", "namespaceSelector": "ns in {'x', 'z'}"}}]}),
                )]),
                Step::Probe(
                    TCP,
                    80,
                    vec![
                        ("*", "y/a", false),
                        ("*", "y/b", false),
                        ("x/a", "y/a", true),
                        ("x/b", "y/a", true),
                        ("z/a", "y/a", true),
                        ("z/b", "y/a", true),
                        ("x/a", "y/b", true),
                        ("x/b", "y/b", true),
                        ("z/a", "y/b", true),
                        ("z/b", "y/b", true),
                    ],
                ),
            ],
        },
        Case {
            name: "selectors: notSelector, starts with, || in a GlobalNetworkPolicy",
            steps: vec![
                Step::Policies(vec![gnp(
                    "not-b",
                    json!({"selector": "projectcalico.org/namespace == 'z' && (pod starts with 'a' || pod ends with 'b')",
                    "ingress": [{"action": "Allow", "source": {"notSelector": "pod == 'b'"}}]}),
                )]),
                Step::Probe(TCP, 80, vec![("*/b", "z/a", false), ("*/b", "z/b", false)]),
            ],
        },
        Case {
            name: "a namespaced Calico selector stays in its namespace",
            steps: vec![
                Step::Policies(vec![cnp(
                    "y",
                    "same-ns",
                    json!({"ingress": [{"action": "Allow", "source": {"selector": "pod == 'a'"}}]}),
                )]),
                Step::Probe(TCP, 80, vec![("*", "y/*", false), ("y/a", "y/*", true)]),
            ],
        },
        Case {
            name: "service accounts: rule serviceAccounts and policy serviceAccountSelector",
            steps: vec![
                Step::ServiceAccount("x/a", "frontend", vec![("team", "web")]),
                Step::Policies(vec![
                    gnp(
                        "from-web",
                        json!({"selector": ns_y(), "ingress": [
                        {"action": "Allow", "source": {"serviceAccounts": {"selector": "team == 'web'"}}}]}),
                    ),
                    gnp(
                        "web-not-to-z",
                        json!({"serviceAccountSelector": "team == 'web'", "egress": [
                        {"action": "Deny", "destination": {"namespaceSelector": "ns == 'z'"}}, {"action": "Allow"}]}),
                    ),
                ]),
                Step::Probe(
                    TCP,
                    80,
                    vec![("*", "y/*", false), ("x/a", "y/*", true), ("x/a", "z/*", false)],
                ),
                Step::Policies(vec![cnp(
                    "x",
                    "by-name",
                    json!({"ingress": [
                    {"action": "Allow", "source": {"serviceAccounts": {"names": ["frontend"]}}}]}),
                )]),
                Step::Probe(TCP, 80, vec![("*", "x/*", false), ("x/a", "x/*", true)]),
            ],
        },
        Case {
            name: "ICMP type and notProtocol",
            steps: vec![
                Step::Policies(vec![
                    gnp(
                        "icmp-from-x",
                        json!({"selector": ns_y(), "ingress": [
                        {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}, "source": {"namespaceSelector": "ns == 'x'"}},
                        {"action": "Allow", "protocol": "TCP", "destination": {"ports": [80]}}]}),
                    ),
                    gnp(
                        "no-udp-into-z",
                        json!({"selector": "projectcalico.org/namespace == 'z'", "ingress": [
                        {"action": "Allow", "notProtocol": "UDP"}]}),
                    ),
                ]),
                Step::Probe(ICMP, 8, vec![("*", "y/*", false), ("x/*", "y/*", true)]),
                Step::Probe(TCP, 80, vec![]),
                Step::Probe(TCP, 81, vec![("*", "y/*", false)]),
                Step::Probe(UDP, 80, vec![("*", "y/*", false), ("*", "z/*", false)]),
            ],
        },
        Case {
            name: "nets and notNets",
            steps: vec![
                Step::Policies(vec![
                    cnp(
                        "y",
                        "from-nets",
                        json!({"ingress": [{"action": "Allow", "source": {"nets": ["{ip:x/a}/32", "{ip:x/b}"]}}]}),
                    ),
                    cnp(
                        "z",
                        "not-to-ya",
                        json!({"egress": [{"action": "Allow", "destination": {"notNets": ["{ip:y/a}/32"]}}]}),
                    ),
                ]),
                Step::Probe(
                    TCP,
                    80,
                    vec![
                        ("*", "y/*", false),
                        ("x/a", "y/*", true),
                        ("x/b", "y/*", true),
                        ("z/*", "y/a", false),
                    ],
                ),
            ],
        },
        Case {
            name: "port ranges, notPorts and named ports",
            steps: vec![
                Step::Policies(vec![
                    cnp(
                        "y",
                        "range",
                        json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["80:81"]}}]}),
                    ),
                    cnp(
                        "x",
                        "not-81",
                        json!({"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"notPorts": [81]}}]}),
                    ),
                    cnp(
                        "z",
                        "named",
                        json!({"types": ["Ingress", "Egress"],
                        "ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["serve-80-tcp"]}}],
                        "egress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["serve-81-tcp"]}}]}),
                    ),
                ]),
                Step::Probe(TCP, 80, vec![("z/*", "*", false)]),
                Step::Probe(
                    TCP,
                    81,
                    vec![("*", "x/*", false), ("*", "z/*", false), ("z/*", "x/*", false)],
                ),
                Step::Probe(
                    UDP,
                    80,
                    vec![
                        ("*", "x/*", false),
                        ("*", "y/*", false),
                        ("*", "z/*", false),
                        ("z/*", "*", false),
                    ],
                ),
            ],
        },
    ];
    run(&mut lab, cases, &|ns| namespace_labels(ns));
}

/// Random Calico policies (orders, actions, selectors in the Calico
/// language, nets, ports, protocols) mixed with Kubernetes ones: the
/// kernel's verdict (a real packet) and the offline evaluator's agree.
#[test]
fn random_calico_policies_rules_and_evaluator_agree() {
    use rand::{Rng, SeedableRng};
    if let Some(why) = terway_tests::netpol_lab::unavailable() {
        eprintln!("SKIPPED random_calico_policies_rules_and_evaluator_agree: {why}");
        return;
    }
    let mut lab = Lab::model().unwrap();
    let n = lab.pods.len();
    let seed: u64 = std::env::var("NETPOL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_261_130);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pick = |rng: &mut rand::rngs::StdRng, from: &[&str]| from[rng.random_range(0..from.len())].to_owned();
    let selector = |rng: &mut rand::rngs::StdRng| -> String {
        let atom = |rng: &mut rand::rngs::StdRng| match rng.random_range(0..7) {
            0 => format!("pod == '{}'", pick(rng, &["a", "b", "c"])),
            1 => format!("pod != '{}'", pick(rng, &["a", "b", "c"])),
            2 => format!(
                "tier in {{'{}', '{}'}}",
                pick(rng, &["web", "db"]),
                pick(rng, &["web", "db"])
            ),
            3 => "has(tier)".into(),
            4 => "!has(tier)".into(),
            5 => format!("projectcalico.org/namespace == '{}'", pick(rng, &["x", "y", "z"])),
            _ => "all()".into(),
        };
        match rng.random_range(0..4) {
            0 => format!("{} && {}", atom(rng), atom(rng)),
            1 => format!("({}) || !({})", atom(rng), atom(rng)),
            _ => atom(rng),
        }
    };
    let (mut probed, mut denied, mut disagreements) = (0, 0, Vec::new());
    for round in 0..25 {
        for i in 0..n {
            let key = lab.pods[i].key.clone();
            let mut l = labels(&[("pod", &key.name)]);
            if rng.random_bool(0.5) {
                l.insert("tier".into(), pick(&mut rng, &["web", "db"]));
            }
            lab.set_pod_labels(&key, l).unwrap();
        }
        let mut objects = Vec::new();
        for p in 0..rng.random_range(1..4) {
            let mut rules = Vec::new();
            for _ in 0..rng.random_range(0..4) {
                let mut rule = json!({"action": pick(&mut rng, &["Allow", "Allow", "Deny", "Pass", "Log"])});
                let mut remote = serde_json::Map::new();
                match rng.random_range(0..5) {
                    0 => {
                        remote.insert("selector".into(), json!(selector(&mut rng)));
                    }
                    1 => {
                        remote.insert("notSelector".into(), json!(selector(&mut rng)));
                    }
                    2 => {
                        remote.insert(
                            "namespaceSelector".into(),
                            json!(format!("ns == '{}'", pick(&mut rng, &["x", "y", "z"]))),
                        );
                    }
                    3 => {
                        let ip = lab.pods[rng.random_range(0..n)].ip;
                        let key = if rng.random_bool(0.5) { "nets" } else { "notNets" };
                        remote.insert(key.into(), json!([format!("{ip}/32")]));
                    }
                    _ => {}
                }
                match rng.random_range(0..5) {
                    0 => rule["protocol"] = json!(pick(&mut rng, &["TCP", "UDP"])),
                    1 => {
                        rule["protocol"] = json!("TCP");
                        rule["destination"] =
                            json!({"ports": [pick(&mut rng, &["80", "81", "80:81", "serve-81-tcp"])]});
                    }
                    2 => rule["notProtocol"] = json!("UDP"),
                    3 => {
                        rule["protocol"] = json!("ICMP");
                        rule["icmp"] = json!({"type": 8});
                    }
                    _ => {}
                }
                rules.push((rule, remote));
            }
            let direction = pick(&mut rng, &["Ingress", "Egress"]);
            let (own, far) = if direction == "Ingress" {
                ("destination", "source")
            } else {
                ("source", "destination")
            };
            let rules: Vec<Value> = rules
                .into_iter()
                .map(|(mut rule, remote)| {
                    if !remote.is_empty() {
                        rule[far] = Value::Object(remote);
                    }
                    // ports stay on the destination: for egress that is the remote side
                    if own == "source"
                        && rule.get("destination").is_some()
                        && rule["destination"].get("ports").is_none()
                    {
                        rule.as_object_mut().unwrap().remove("destination");
                    }
                    rule
                })
                .collect();
            let mut spec = json!({"selector": selector(&mut rng), "types": [direction]});
            spec[direction.to_lowercase()] = json!(rules);
            if rng.random_bool(0.7) {
                spec["order"] = json!(rng.random_range(0..2000));
            }
            if rng.random_bool(0.5) {
                objects.push(gnp(&format!("g{round}-{p}"), spec));
            } else {
                objects.push(cnp(&pick(&mut rng, &["x", "y", "z"]), &format!("c{round}-{p}"), spec));
            }
        }
        if rng.random_bool(0.5) {
            let ns = pick(&mut rng, &["x", "y", "z"]);
            objects.push(k8s(
                &ns,
                "k",
                json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"ns": pick(&mut rng, &["x", "y", "z"])}}}]}]}),
            ));
        }
        let shown = serde_json::to_string_pretty(&objects).unwrap();
        apply(&mut lab, objects);
        let cells: Vec<_> = (0..40)
            .map(|_| {
                let (proto, port) = match rng.random_range(0..5) {
                    0 => (ICMP, 8),
                    1 | 2 => (TCP, 80 + rng.random_range(0..2)),
                    _ => (UDP, 80 + rng.random_range(0..2)),
                };
                (rng.random_range(0..n), rng.random_range(0..n), proto, port)
            })
            .collect();
        let (d, wrong) = lab.cells_against_evaluator(&cells, &format!("seed {seed} round {round}, policies: {shown}"));
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
