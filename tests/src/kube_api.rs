//! A Kubernetes API server small enough to run inside a test, speaking the
//! real wire protocol the kube client uses: list with `resourceVersion`,
//! chunked watch streams (ADDED/MODIFIED/DELETED, BOOKMARK, and the 410
//! ERROR a compacted history gives), field selectors, GET, POST, JSON merge
//! and strategic merge PATCH (conditions merge by `type`), and the `status`
//! subresource. No real API server can be installed on these machines; this
//! one lets terwayd's real kube-rs code be exercised end to end.
//!
//! The test plays kubelet and the user through [`FakeApiServer::put`] and
//! [`FakeApiServer::delete`], and breaks things on purpose with
//! [`FakeApiServer::break_watches`], [`FakeApiServer::compact`],
//! [`FakeApiServer::set_unavailable`] and [`FakeApiServer::set_hanging`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

type Key = (String, String, String); // (plural, namespace or "", name)

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str, // ADDED | MODIFIED | DELETED
    plural: String,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    /// A watch from an older resourceVersion than this gets 410 Gone.
    compacted_below: u64,
    unavailable: bool,
    /// Requests (`METHOD path`) containing this are never answered.
    hanging: Option<String>,
    /// API groups this server does not serve (a CRD not installed): 404.
    missing_groups: Vec<String>,
    requests: Vec<String>,
    user_agents: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch stream.
    breaks: watch::Sender<u64>,
}

/// A running fake API server; stops when dropped.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn kind_of(plural: &str) -> &'static str {
    match plural {
        "pods" => "Pod",
        "nodes" => "Node",
        "configmaps" => "ConfigMap",
        "events" => "Event",
        "namespaces" => "Namespace",
        "networkpolicies" | "networkpolicies.crd.projectcalico.org" => "NetworkPolicy",
        "globalnetworkpolicies.crd.projectcalico.org" => "GlobalNetworkPolicy",
        "serviceaccounts" => "ServiceAccount",
        _ => "Unknown",
    }
}

/// Objects are stored under their plural, qualified by the group outside
/// the core and networking groups (Calico's `networkpolicies` are not
/// Kubernetes').
const CALICO: &str = "crd.projectcalico.org";

fn api_version(plural: &str) -> &'static str {
    if plural == "networkpolicies" {
        "networking.k8s.io/v1"
    } else if plural.ends_with(CALICO) {
        "crd.projectcalico.org/v1"
    } else {
        "v1"
    }
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(v: &Value) -> Response {
    (StatusCode::OK, [("content-type", "application/json")], v.to_string()).into_response()
}

/// `a=b,c!=d` against the object's fields.
fn matches_fields(selector: Option<&str>, object: &Value) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| {
        let (path, want, negate) = if let Some((p, v)) = term.split_once("!=") {
            (p, v, true)
        } else if let Some((p, v)) = term.split_once("==") {
            (p, v, false)
        } else if let Some((p, v)) = term.split_once('=') {
            (p, v, false)
        } else {
            return false;
        };
        let mut at = object;
        for part in path.split('.') {
            at = &at[part];
        }
        let have = at.as_str().unwrap_or_default();
        (have == want) != negate
    })
}

/// Strategic merge as far as terwayd needs it: maps merge, `null` deletes,
/// lists of objects with a `type` (conditions) merge by it, other lists replace.
fn strategic_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else if let (Some(Value::Array(existing)), Value::Array(items)) = (t.get_mut(k), v) {
                    if items.iter().all(|i| i.get("type").is_some()) {
                        for item in items {
                            match existing.iter_mut().find(|e| e.get("type") == item.get("type")) {
                                Some(e) => strategic_merge(e, item),
                                None => existing.push(item.clone()),
                            }
                        }
                    } else {
                        *existing = items.clone();
                    }
                } else {
                    strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

impl Shared {
    /// Stores a write: resourceVersion, uid and timestamps as the server sets them.
    fn commit(&self, store: &mut Store, key: Key, mut object: Value, deleted: bool) -> Value {
        store.rv += 1;
        let rv = store.rv;
        let existed = store.objects.contains_key(&key);
        let meta = object["metadata"].as_object_mut().unwrap();
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.entry("uid")
            .or_insert_with(|| json!(format!("uid-{}-{rv}", key.2)));
        meta.entry("creationTimestamp")
            .or_insert_with(|| json!("2026-11-26T00:00:00Z"));
        if !key.1.is_empty() {
            meta.insert("namespace".into(), json!(key.1));
        }
        object["kind"] = json!(kind_of(&key.0));
        object["apiVersion"] = json!(api_version(&key.0));
        let kind = if deleted {
            store.objects.remove(&key);
            "DELETED"
        } else {
            store.objects.insert(key.clone(), object.clone());
            if existed {
                "MODIFIED"
            } else {
                "ADDED"
            }
        };
        let change = Change {
            rv,
            kind,
            plural: key.0,
            object: object.clone(),
        };
        store.history.push(change.clone());
        let _ = self.changes.send(change);
        object
    }
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let (changes, _) = broadcast::channel(4096);
        let (breaks, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 100,
                ..Default::default()
            }),
            changes,
            breaks,
        });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { shared, url, task }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube client configuration pointing here.
    pub fn kube_config(&self) -> kube::Config {
        let mut c = kube::Config::new(self.url.parse().unwrap());
        c.read_timeout = Some(Duration::from_secs(300));
        c
    }

    /// Creates or replaces an object (`metadata.namespace` for namespaced kinds).
    pub fn put(&self, plural: &str, object: Value) -> Value {
        let ns = object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let mut store = self.shared.store.lock().unwrap();
        self.shared.commit(&mut store, (plural.into(), ns, name), object, false)
    }

    /// Deletes an object, as `kubectl delete` (after kubelet's teardown) would.
    pub fn delete(&self, plural: &str, namespace: &str, name: &str) {
        let mut store = self.shared.store.lock().unwrap();
        let key = (plural.to_owned(), namespace.to_owned(), name.to_owned());
        if let Some(object) = store.objects.get(&key).cloned() {
            self.shared.commit(&mut store, key, object, true);
        }
    }

    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .get(&(plural.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn list(&self, plural: &str) -> Vec<Value> {
        let store = self.shared.store.lock().unwrap();
        store
            .objects
            .iter()
            .filter(|(k, _)| k.0 == plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Ends every open watch stream (as an API server restart or a load balancer would).
    pub fn break_watches(&self) {
        self.shared.breaks.send_modify(|n| *n += 1);
    }

    /// Forgets the change history and ends every open watch: resuming from
    /// any resourceVersion seen so far gets 410 Gone, so clients list again.
    pub fn compact(&self) {
        let mut store = self.shared.store.lock().unwrap();
        store.compacted_below = store.rv + 1;
        store.history.clear();
        self.break_watches();
    }

    /// Stops (or resumes) serving an API group, as when its CRDs are not
    /// installed: `crd.projectcalico.org`.
    pub fn set_group_missing(&self, group: &str, missing: bool) {
        let mut store = self.shared.store.lock().unwrap();
        store.missing_groups.retain(|g| g != group);
        if missing {
            store.missing_groups.push(group.to_owned());
        }
    }

    /// While set, every request gets 503.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.store.lock().unwrap().unavailable = unavailable;
        if unavailable {
            self.break_watches();
        }
    }

    /// Requests whose `METHOD path` contains `pattern` get no answer at
    /// all (a stuck request), until cleared with `None`.
    pub fn set_hanging(&self, pattern: Option<&str>) {
        self.shared.store.lock().unwrap().hanging = pattern.map(str::to_owned);
    }

    /// The User-Agent of every request so far (`(none)` when absent), distinct.
    pub fn user_agents(&self) -> Vec<String> {
        let mut agents = self.shared.store.lock().unwrap().user_agents.clone();
        agents.sort();
        agents.dedup();
        agents
    }

    /// Requests seen so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.store.lock().unwrap().requests.clone()
    }

    /// Events written about an object (`kind` Pod or Node, its name).
    pub fn events_about(&self, kind: &str, name: &str) -> Vec<Value> {
        self.list("events")
            .into_iter()
            .filter(|e| e["involvedObject"]["kind"] == kind && e["involvedObject"]["name"] == name)
            .collect()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    {
        let mut store = shared.store.lock().unwrap();
        store.requests.push(format!("{method} {uri}"));
        let agent = headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(none)")
            .to_owned();
        store.user_agents.push(agent);
        if store.unavailable {
            return status(503, "ServiceUnavailable", "the API server is unavailable".into());
        }
    }
    let hangs = |shared: &Shared| {
        let store = shared.store.lock().unwrap();
        let request = format!("{method} {}", uri.path());
        store.hanging.as_ref().is_some_and(|p| request.contains(p.as_str()))
    };
    while hangs(&shared) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calico = uri.path().starts_with("/apis/crd.projectcalico.org/v1/");
    if calico && shared.store.lock().unwrap().missing_groups.iter().any(|g| g == CALICO) {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
        );
    }
    let path = uri
        .path()
        .trim_start_matches("/api/v1/")
        .trim_start_matches("/apis/networking.k8s.io/v1/")
        .trim_start_matches("/apis/crd.projectcalico.org/v1/")
        .trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').collect();
    // (plural, namespace, name, subresource)
    let (plural, ns, name, sub) = match parts.as_slice() {
        [plural] => (*plural, "", None, None),
        [plural, name] => (*plural, "", Some(*name), None),
        [plural, name, sub] if *plural == "nodes" => (*plural, "", Some(*name), Some(*sub)),
        ["namespaces", ns, plural] => (*plural, *ns, None, None),
        ["namespaces", ns, plural, name] => (*plural, *ns, Some(*name), None),
        ["namespaces", ns, plural, name, sub] => (*plural, *ns, Some(*name), Some(*sub)),
        _ => return status(404, "NotFound", format!("no route {path}")),
    };
    let qualified = format!("{plural}.{CALICO}");
    let plural = if calico { qualified.as_str() } else { plural };
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    match (method, name) {
        (Method::GET, None) if watching => watch_stream(shared, plural, ns, &query),
        (Method::GET, None) => list(&shared, plural, ns, &query),
        (Method::GET, Some(name)) => {
            let store = shared.store.lock().unwrap();
            match store.objects.get(&(plural.to_owned(), ns.to_owned(), name.to_owned())) {
                Some(o) => ok_json(o),
                None => status(404, "NotFound", format!("{plural} \"{name}\" not found")),
            }
        }
        (Method::POST, None) => {
            let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "body is not JSON".into());
            };
            let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
                return status(422, "Invalid", "metadata.name: Required value".into());
            };
            let mut store = shared.store.lock().unwrap();
            let key = (plural.to_owned(), ns.to_owned(), name.clone());
            if store.objects.contains_key(&key) {
                return status(409, "AlreadyExists", format!("{plural} \"{name}\" already exists"));
            }
            let created = shared.commit(&mut store, key, object, false);
            (
                StatusCode::CREATED,
                [("content-type", "application/json")],
                created.to_string(),
            )
                .into_response()
        }
        (Method::PATCH, Some(name)) => {
            let Ok(patch) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest", "patch is not JSON".into());
            };
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let mut store = shared.store.lock().unwrap();
            let key = (plural.to_owned(), ns.to_owned(), name.to_owned());
            let Some(mut object) = store.objects.get(&key).cloned() else {
                return status(404, "NotFound", format!("{plural} \"{name}\" not found"));
            };
            // the status subresource changes only status; the main resource everything else
            let patch = match sub {
                Some("status") => json!({"status": patch.get("status").cloned().unwrap_or(Value::Null)}),
                Some(other) => return status(404, "NotFound", format!("no subresource {other}")),
                None => {
                    let mut p = patch;
                    if let Some(o) = p.as_object_mut() {
                        o.remove("status");
                    }
                    p
                }
            };
            match content_type {
                "application/merge-patch+json" => terway_config::merge_patch(&mut object, &patch),
                "application/strategic-merge-patch+json" => strategic_merge(&mut object, &patch),
                other => return status(415, "UnsupportedMediaType", format!("patch type {other:?}")),
            }
            let updated = shared.commit(&mut store, key, object, false);
            ok_json(&updated)
        }
        (method, _) => status(405, "MethodNotAllowed", format!("{method} {path}")),
    }
}

fn list(shared: &Shared, plural: &str, ns: &str, query: &HashMap<String, String>) -> Response {
    let store = shared.store.lock().unwrap();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|(k, _)| k.0 == plural && (ns.is_empty() || k.1 == ns))
        .filter(|(_, v)| matches_fields(query.get("fieldSelector").map(String::as_str), v))
        .map(|(_, v)| v.clone())
        .collect();
    ok_json(&json!({
        "apiVersion": api_version(plural),
        "kind": format!("{}List", kind_of(plural)),
        "metadata": {"resourceVersion": store.rv.to_string()},
        "items": items,
    }))
}

fn watch_stream(shared: Arc<Shared>, plural: &str, ns: &str, query: &HashMap<String, String>) -> Response {
    let from: u64 = query.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let selector = query.get("fieldSelector").cloned();
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = Duration::from_secs(query.get("timeoutSeconds").and_then(|v| v.parse().ok()).unwrap_or(290));
    let kind = kind_of(plural);
    let (plural, ns) = (plural.to_owned(), ns.to_owned());
    let mut live = shared.changes.subscribe();
    let mut breaks = shared.breaks.subscribe();
    breaks.borrow_and_update();
    let (replay, now, expired) = {
        let store = shared.store.lock().unwrap();
        let expired = from != 0 && from < store.compacted_below;
        let replay: Vec<Change> = store.history.iter().filter(|c| c.rv > from).cloned().collect();
        (replay, store.rv, expired)
    };
    let wanted = move |c: &Change| {
        c.plural == plural
            && (ns.is_empty() || c.object["metadata"]["namespace"].as_str() == Some(ns.as_str()))
            && matches_fields(selector.as_deref(), &c.object)
    };
    let line = |v: Value| Ok::<Bytes, std::convert::Infallible>(Bytes::from(v.to_string() + "\n"));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    tokio::spawn(async move {
        if expired {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410}});
            let _ = tx.send(line(gone)).await;
            return;
        }
        let mut sent = from;
        for c in replay.iter().filter(|c| wanted(c)) {
            if tx
                .send(line(json!({"type": c.kind, "object": c.object})))
                .await
                .is_err()
            {
                return;
            }
            sent = c.rv;
        }
        sent = sent.max(now);
        if bookmarks {
            let mark = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": "v1",
                "metadata": {"resourceVersion": sent.to_string()}}});
            if tx.send(line(mark)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                _ = &mut deadline => return,
                _ = breaks.changed() => return,
                change = live.recv() => match change {
                    Ok(c) if c.rv > sent && wanted(&c) => {
                        sent = c.rv;
                        if tx.send(line(json!({"type": c.kind, "object": c.object}))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap()
}
