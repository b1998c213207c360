//! A Kubernetes API server in the test: kube's `Client` over a `tower_test` mock service,
//! answering the agent's real list and watch requests with the payloads an API server sends
//! (a `PodList` with its `resourceVersion`; then watch events as newline-delimited JSON on a
//! body that stays open), and recording what the agent writes (Events, status patches).
//!
//! Collections are served from one shared state, so an agent started again (a new client)
//! sees the same cluster. A watch from a resource version first gets what happened since,
//! then what happens, as the API server's watch cache does.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt as _;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// A response body fed by the server's task: a whole answer, or a watch that stays open.
pub struct StreamBody(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// A kind the server serves: where, and what it calls its objects and lists.
#[derive(Clone, Debug)]
pub struct Kind {
    /// The cluster-wide collection path, e.g. `/api/v1/pods`.
    pub path: &'static str,
    pub api_version: &'static str,
    pub kind: &'static str,
    /// The path's last component, for namespaced paths (`pods`).
    pub plural: &'static str,
}

pub const PODS: Kind = Kind {
    path: "/api/v1/pods",
    api_version: "v1",
    kind: "Pod",
    plural: "pods",
};

pub const POLICIES: Kind = Kind {
    path: "/apis/rein.dev/v1alpha1/bandwidthpolicies",
    api_version: "rein.dev/v1alpha1",
    kind: "BandwidthPolicy",
    plural: "bandwidthpolicies",
};

pub const RATE_LIMITS: Kind = Kind {
    path: "/apis/rein.dev/v1alpha1/ratelimits",
    api_version: "rein.dev/v1alpha1",
    kind: "RateLimit",
    plural: "ratelimits",
};

pub const SERVICES: Kind = Kind {
    path: "/api/v1/services",
    api_version: "v1",
    kind: "Service",
    plural: "services",
};

/// Every kind the agent watches: it applies nothing before each has listed.
pub const WATCHED: &[Kind] = &[PODS, POLICIES, RATE_LIMITS, SERVICES];

/// One collection: its objects and its history of watch events.
#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// (resource version, the event's line).
    history: Vec<(u64, Value)>,
    watchers: Vec<(Option<String>, mpsc::UnboundedSender<Bytes>)>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    collections: BTreeMap<&'static str, (Kind, Collection)>,
    /// Every request, as `METHOD path?query`.
    requests: Vec<String>,
    /// Events created or patched (events.k8s.io/v1), in order.
    events: Vec<Value>,
    /// Patches of objects' status: (path, patch).
    status_patches: Vec<(String, Value)>,
    /// Requests the server does not know.
    unknown: Vec<String>,
    /// Whether list requests wait (an API server slow to answer).
    lists_held: bool,
}

/// The test's API server.
#[derive(Clone)]
pub struct Api {
    state: Arc<Mutex<State>>,
}

/// The value of `key` in `obj`'s `metadata`.
fn meta<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj["metadata"][key].as_str().unwrap_or_default()
}

/// Whether `obj` passes a field selector (`spec.nodeName=x` is the one the agent sends; any
/// other is refused as the API server refuses unknown fields).
fn selects(selector: Option<&str>, obj: &Value) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').all(|term| match term.split_once('=') {
        Some(("spec.nodeName", node)) => obj["spec"]["nodeName"].as_str() == Some(node),
        Some(("metadata.namespace", ns)) => meta(obj, "namespace") == ns,
        Some(("metadata.name", name)) => meta(obj, "name") == name,
        _ => panic!("field selector {selector:?} not supported by the API server"),
    })
}

fn query_pairs(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_owned(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn answer(status: StatusCode, body: &Value) -> Response<StreamBody> {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(Bytes::from(body.to_string())).unwrap();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(StreamBody(rx))
        .unwrap()
}

fn status_error(code: StatusCode, message: &str) -> Response<StreamBody> {
    answer(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            // The API server's StatusReason (`NotFound`), not the HTTP reason phrase.
            "message": message, "reason": code.canonical_reason().unwrap_or("").replace(' ', ""),
            "code": code.as_u16()
        }),
    )
}

impl Api {
    /// A server of `kinds`, empty.
    pub fn new(kinds: &[Kind]) -> Self {
        let mut state = State {
            resource_version: 1000,
            ..State::default()
        };
        for kind in kinds {
            state
                .collections
                .insert(kind.path, (kind.clone(), Collection::default()));
        }
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client of this server (each agent gets its own, as a restarted one would); its
    /// requests are answered by a task on the current runtime.
    pub fn client(&self) -> kube::Client {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<StreamBody>>();
        let api = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let response = api.serve(request).await;
                respond.send_response(response);
            }
        });
        kube::Client::new(service, "default")
    }

    async fn serve(&self, request: Request<Body>) -> Response<StreamBody> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let query = query_pairs(parts.uri.query().unwrap_or_default());
        let line = format!("{} {}", parts.method, parts.uri);
        self.state().requests.push(line.clone());
        let body: Option<Value> = match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap())
            }
            Err(e) => panic!("cannot read the body of {line}: {e}"),
        };
        match (&parts.method, path.as_str()) {
            (&Method::GET, p) if self.state().collections.contains_key(p) => {
                if query.get("watch").map(String::as_str) == Some("true") {
                    self.watch(p, &query)
                } else {
                    while self.state().lists_held {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    self.list(p, &query)
                }
            }
            (&Method::POST, p) if p.starts_with("/apis/events.k8s.io/v1/namespaces/") => {
                let event = body.unwrap();
                self.state().events.push(event.clone());
                answer(StatusCode::CREATED, &event)
            }
            (&Method::PATCH, p) if p.starts_with("/apis/events.k8s.io/v1/namespaces/") => {
                let patch = body.unwrap();
                self.state().events.push(patch.clone());
                answer(StatusCode::OK, &patch)
            }
            (&Method::PATCH, p) if p.ends_with("/status") => {
                let patch = body.unwrap();
                self.state()
                    .status_patches
                    .push((p.to_owned(), patch.clone()));
                match self.patch_status(p, &patch) {
                    Some(object) => answer(StatusCode::OK, &object),
                    None => status_error(StatusCode::NOT_FOUND, &format!("no object at {p}")),
                }
            }
            _ => {
                self.state().unknown.push(line.clone());
                status_error(
                    StatusCode::NOT_FOUND,
                    &format!("the test's API server does not serve {line}"),
                )
            }
        }
    }

    fn list(&self, path: &str, query: &BTreeMap<String, String>) -> Response<StreamBody> {
        let state = self.state();
        let (kind, collection) = &state.collections[path];
        let items: Vec<Value> = collection
            .objects
            .values()
            .filter(|obj| selects(query.get("fieldSelector").map(String::as_str), obj))
            .cloned()
            .collect();
        answer(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", kind.kind),
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": state.resource_version.to_string()},
                "items": items,
            }),
        )
    }

    fn watch(&self, path: &str, query: &BTreeMap<String, String>) -> Response<StreamBody> {
        let selector = query.get("fieldSelector").cloned();
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.state();
        let (_, collection) = state.collections.get_mut(path).unwrap();
        for (version, event) in &collection.history {
            if *version > from && selects(selector.as_deref(), &event["object"]) {
                tx.send(line_of(event)).unwrap();
            }
        }
        collection.watchers.push((selector, tx));
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(StreamBody(rx))
            .unwrap()
    }

    /// As the API server does: `patch` (a JSON merge patch) merged into the status of the
    /// object at `path` (`.../namespaces/NS/PLURAL/NAME/status`), the object answered and sent
    /// to the watches as MODIFIED.
    fn patch_status(&self, path: &str, patch: &Value) -> Option<Value> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let [.., "namespaces", namespace, plural, name, "status"] = parts.as_slice() else {
            return None;
        };
        let kind = self
            .state()
            .collections
            .values()
            .find(|(kind, _)| kind.plural == *plural)
            .map(|(kind, _)| kind.clone())?;
        let key = ((*namespace).to_owned(), (*name).to_owned());
        let mut object = self.state().collections[kind.path]
            .1
            .objects
            .get(&key)?
            .clone();
        if let Some(status) = patch.get("status") {
            merge_patch(&mut object["status"], status);
        }
        self.change(&kind, "MODIFIED", object);
        Some(self.get(&kind, namespace, name))
    }

    /// Records a change of `kind`'s object and sends it to the open watches.
    fn change(&self, kind: &Kind, event_type: &str, mut object: Value) {
        let mut state = self.state();
        state.resource_version += 1;
        let version = state.resource_version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        let (_, collection) = state.collections.get_mut(kind.path).unwrap();
        let key = (
            meta(&object, "namespace").to_owned(),
            meta(&object, "name").to_owned(),
        );
        if event_type == "DELETED" {
            collection.objects.remove(&key);
        } else {
            collection.objects.insert(key, object.clone());
        }
        let event = json!({"type": event_type, "object": object});
        collection.history.push((version, event.clone()));
        let line = line_of(&event);
        collection.watchers.retain(|(selector, tx)| {
            !selects(selector.as_deref(), &event["object"]) || tx.send(line.clone()).is_ok()
        });
    }

    /// Adds `object` (its kind's `apiVersion` and `kind` filled in).
    pub fn add(&self, kind: &Kind, mut object: Value) {
        object["apiVersion"] = json!(kind.api_version);
        object["kind"] = json!(kind.kind);
        self.change(kind, "ADDED", object);
    }

    /// Changes the object `namespace/name` by `edit`.
    pub fn modify(&self, kind: &Kind, namespace: &str, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut object = self.get(kind, namespace, name);
        edit(&mut object);
        self.change(kind, "MODIFIED", object);
    }

    pub fn delete(&self, kind: &Kind, namespace: &str, name: &str) {
        let object = self.get(kind, namespace, name);
        self.change(kind, "DELETED", object);
    }

    pub fn get(&self, kind: &Kind, namespace: &str, name: &str) -> Value {
        let state = self.state();
        state.collections[kind.path].1.objects[&(namespace.to_owned(), name.to_owned())].clone()
    }

    /// A BOOKMARK on every open watch of `kind`: the resource version moves, nothing changes.
    pub fn bookmark(&self, kind: &Kind) {
        let mut state = self.state();
        state.resource_version += 1;
        let event = json!({
            "type": "BOOKMARK",
            "object": {
                "apiVersion": kind.api_version, "kind": kind.kind,
                "metadata": {"resourceVersion": state.resource_version.to_string()}
            }
        });
        let line = line_of(&event);
        let (_, collection) = state.collections.get_mut(kind.path).unwrap();
        collection
            .watchers
            .retain(|(_, tx)| tx.send(line.clone()).is_ok());
    }

    /// Ends every open watch (as the API server does at a watch's timeout): the watchers
    /// watch again from their last resource version.
    pub fn close_watches(&self) {
        for (_, collection) in self.state().collections.values_mut() {
            collection.watchers.clear();
        }
    }

    /// Makes list requests wait until [`Api::release_lists`].
    pub fn hold_lists(&self) {
        self.state().lists_held = true;
    }

    pub fn release_lists(&self) {
        self.state().lists_held = false;
    }

    pub fn events(&self) -> Vec<Value> {
        self.state().events.clone()
    }

    pub fn status_patches(&self) -> Vec<(String, Value)> {
        self.state().status_patches.clone()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    pub fn unknown_requests(&self) -> Vec<String> {
        self.state().unknown.clone()
    }

    /// Waits up to `timeout` for an Event that `matches`.
    pub async fn wait_event(
        &self,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = self.events().into_iter().find(|e| matches(e)) {
                return Some(event);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn line_of(event: &Value) -> Bytes {
    let mut text = event.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// A pod as the API server returns it, running on `node`.
pub struct PodSpec<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
    pub node: &'a str,
    pub qos: &'a str,
    pub host_network: bool,
    pub annotations: &'a [(&'a str, &'a str)],
    pub labels: &'a [(&'a str, &'a str)],
}

pub fn pod(spec: &PodSpec<'_>) -> Value {
    let map = |pairs: &[(&str, &str)]| -> serde_json::Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect()
    };
    let mut metadata = json!({
        "name": spec.name,
        "namespace": spec.namespace,
        "uid": spec.uid,
        "creationTimestamp": "2026-11-26T18:00:00Z",
        "generateName": format!("{}-", spec.name),
        "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{}-rs", spec.name),
            "uid": "00000000-0000-4000-8000-00000000a11c", "controller": true, "blockOwnerDeletion": true
        }],
    });
    if !spec.labels.is_empty() {
        metadata["labels"] = Value::Object(map(spec.labels));
    }
    if !spec.annotations.is_empty() {
        metadata["annotations"] = Value::Object(map(spec.annotations));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": spec.node,
            "hostNetwork": spec.host_network,
            "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
            "containers": [{
                "name": "app",
                "image": "registry.k8s.io/pause:3.10",
                "imagePullPolicy": "IfNotPresent",
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File"
            }],
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ]
        },
        "status": {
            "phase": "Running",
            "qosClass": spec.qos,
            "hostIP": "10.0.0.10",
            "podIP": "10.244.1.7",
            "podIPs": [{"ip": "10.244.1.7"}],
            "startTime": "2026-11-26T18:00:01Z",
            "conditions": [
                {"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-11-26T18:00:03Z"}
            ],
            "containerStatuses": [{
                "name": "app", "ready": true, "restartCount": 0, "started": true,
                "image": "registry.k8s.io/pause:3.10", "imageID": "registry.k8s.io/pause@sha256:ee6521f290b2168b6e0935a181d4cff9be1ac3f505666ef0e3c98fae8199917a",
                "containerID": "containerd://4f9c1f0e7d6b",
                "state": {"running": {"startedAt": "2026-11-26T18:00:02Z"}}
            }]
        }
    })
}

/// RFC 7386: objects merged key by key, `null` removes, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(entries) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in entries {
        if value.is_null() {
            if let Some(map) = target.as_object_mut() {
                map.remove(key);
            }
        } else {
            merge_patch(&mut target[key.as_str()], value);
        }
    }
}
