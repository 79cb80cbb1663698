//! The object store of the dev cluster: plain data, no I/O.
//!
//! Objects are `serde_json::Value`s keyed by resource (group, version, plural) and by
//! (namespace, name); cluster-scoped objects use the empty namespace. One counter gives every
//! write a new, global `resourceVersion`, as etcd's revision does for a real API server. Each
//! resource keeps a bounded history of its watch events so a watch can resume from a
//! resourceVersion; a resume point older than the history is answered with `Expired` (HTTP 410),
//! which makes clients relist, exactly as against a real server whose etcd was compacted.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde_json::{Map, Value, json};

use super::selector::{FieldSelector, LabelSelector};

/// A resource: API group (empty for the core group), version and plural name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gvr {
    /// The API group, `""` for the core group.
    pub group: String,
    /// The API version, e.g. `v1`.
    pub version: String,
    /// The plural resource name, e.g. `configmaps`.
    pub resource: String,
}

impl Gvr {
    /// Builds a resource name.
    pub fn new(group: &str, version: &str, resource: &str) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            resource: resource.to_string(),
        }
    }

    /// The `apiVersion` of objects of this resource (`v1` or `group/version`).
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

/// The kind of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// The object was created.
    Added,
    /// The object changed.
    Modified,
    /// The object was removed.
    Deleted,
}

impl EventType {
    /// The event type as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as a watch reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    /// What happened.
    pub kind: EventType,
    /// The object after the change (for `Deleted`, its last state with the deletion's version).
    pub object: Value,
    /// The resourceVersion of the change.
    pub resource_version: u64,
    /// For `Modified`, the object before the change: a filtered watch needs it to tell an
    /// object that started or stopped matching.
    pub previous: Option<Value>,
}

/// Why a store operation failed; each maps onto one Kubernetes `Status` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The resource is not served.
    #[error("the server could not find the requested resource {0}")]
    UnknownResource(String),
    /// No object with that name.
    #[error("{resource} {name:?} not found")]
    NotFound {
        /// The plural resource.
        resource: String,
        /// The object name.
        name: String,
    },
    /// An object with that name already exists.
    #[error("{resource} {name:?} already exists")]
    AlreadyExists {
        /// The plural resource.
        resource: String,
        /// The object name.
        name: String,
    },
    /// The write named a resourceVersion that is no longer current.
    #[error(
        "Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict {
        /// The plural resource.
        resource: String,
        /// The object name.
        name: String,
    },
    /// The object is malformed (missing name, wrong namespace, not an object, ...).
    #[error("invalid object: {0}")]
    Invalid(String),
    /// A watch or list asked for a resourceVersion older than the retained history.
    #[error("too old resource version: {requested} ({oldest})")]
    Expired {
        /// The requested resourceVersion.
        requested: u64,
        /// The oldest resourceVersion a watch can still resume from.
        oldest: u64,
    },
    /// A continue token that this server did not issue.
    #[error("invalid continue token; restart the list without `continue`")]
    BadContinue,
}

/// How a resource behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceInfo {
    /// The kind, e.g. `ConfigMap`.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether `status` is written only through the `/status` subresource.
    pub status_subresource: bool,
}

#[derive(Debug)]
struct Table {
    info: ResourceInfo,
    objects: BTreeMap<(String, String), Value>,
    history: VecDeque<WatchEvent>,
    /// Watches may resume from any resourceVersion >= this one.
    oldest: u64,
}

/// Options of a list call.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Only objects whose labels match.
    pub labels: LabelSelector,
    /// Only objects whose fields match.
    pub fields: FieldSelector,
    /// At most this many items (0: all).
    pub limit: usize,
    /// A continue token from a previous page.
    pub continue_token: Option<String>,
}

/// One page of a list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    /// The matching objects, ordered by namespace then name.
    pub items: Vec<Value>,
    /// The store's resourceVersion at the time of the list.
    pub resource_version: u64,
    /// A token for the next page, if there is one.
    pub continue_token: Option<String>,
}

/// The in-memory object store.
#[derive(Debug)]
pub struct Store {
    revision: u64,
    tables: HashMap<Gvr, Table>,
    history_limit: usize,
    /// The next Service ClusterIP to hand out, as an offset into [`SERVICE_CIDR`].
    next_cluster_ip: u32,
}

/// Where Service ClusterIPs come from: `10.96.0.0/12`, as kubeadm's default service range.
const SERVICE_CIDR: (std::net::Ipv4Addr, u32) = (std::net::Ipv4Addr::new(10, 96, 0, 0), 12);
/// The first offset handed out (`10.96.0.1` is the `kubernetes` Service's on a real cluster).
const FIRST_CLUSTER_IP_OFFSET: u32 = 10;

impl Store {
    /// An empty store whose per-resource watch history keeps `history_limit` events.
    pub fn new(history_limit: usize) -> Self {
        Self {
            revision: 1,
            tables: HashMap::new(),
            history_limit: history_limit.max(1),
            next_cluster_ip: FIRST_CLUSTER_IP_OFFSET,
        }
    }

    /// Gives a Service being created a ClusterIP, as the API server does, unless it names one,
    /// is headless (`None`) or is an `ExternalName`. Addresses are handed out in order from
    /// [`SERVICE_CIDR`] and not reused.
    fn allocate_cluster_ip(&mut self, service: &mut Value) -> Result<(), StoreError> {
        let Some(spec) = service.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let named = spec
            .get("clusterIP")
            .and_then(Value::as_str)
            .is_some_and(|ip| !ip.is_empty());
        let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
        if named || external {
            return Ok(());
        }
        let (base, prefix) = SERVICE_CIDR;
        let size = 1u32 << (32 - prefix);
        if self.next_cluster_ip >= size - 1 {
            return Err(StoreError::Invalid(
                "the service IP range 10.96.0.0/12 is exhausted".into(),
            ));
        }
        let ip = std::net::Ipv4Addr::from(u32::from(base) + self.next_cluster_ip).to_string();
        self.next_cluster_ip += 1;
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        Ok(())
    }

    /// The current global resourceVersion.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Makes a resource servable (idempotent; an existing resource keeps its objects).
    pub fn register(&mut self, gvr: Gvr, info: ResourceInfo) {
        let oldest = self.revision;
        self.tables
            .entry(gvr)
            .and_modify(|t| t.info = info.clone())
            .or_insert_with(|| Table {
                info,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                oldest,
            });
    }

    /// Stops serving a resource and drops its objects.
    pub fn unregister(&mut self, gvr: &Gvr) {
        self.tables.remove(gvr);
    }

    /// The resource's behaviour, if it is served.
    pub fn info(&self, gvr: &Gvr) -> Option<&ResourceInfo> {
        self.tables.get(gvr).map(|t| &t.info)
    }

    /// Every served resource.
    pub fn resources(&self) -> impl Iterator<Item = (&Gvr, &ResourceInfo)> {
        self.tables.iter().map(|(g, t)| (g, &t.info))
    }

    fn table(&self, gvr: &Gvr) -> Result<&Table, StoreError> {
        self.tables
            .get(gvr)
            .ok_or_else(|| StoreError::UnknownResource(gvr.resource.clone()))
    }

    fn table_mut(&mut self, gvr: &Gvr) -> Result<&mut Table, StoreError> {
        self.tables
            .get_mut(gvr)
            .ok_or_else(|| StoreError::UnknownResource(gvr.resource.clone()))
    }

    /// One object.
    pub fn get(&self, gvr: &Gvr, namespace: &str, name: &str) -> Result<Value, StoreError> {
        let table = self.table(gvr)?;
        table
            .objects
            .get(&(scoped(&table.info, namespace), name.to_string()))
            .cloned()
            .ok_or_else(|| not_found(gvr, name))
    }

    /// Objects of a resource, in one namespace (`Some`) or all (`None`), filtered and paged.
    pub fn list(
        &self,
        gvr: &Gvr,
        namespace: Option<&str>,
        options: &ListOptions,
    ) -> Result<ListPage, StoreError> {
        let table = self.table(gvr)?;
        let (start, revision) = match &options.continue_token {
            Some(token) => decode_continue(token)?,
            None => ((String::new(), String::new()), self.revision),
        };
        let mut items = Vec::new();
        let mut continue_token = None;
        let range = table.objects.range(start.clone()..);
        for (key, object) in range {
            if options.continue_token.is_some() && *key == start {
                continue;
            }
            if namespace.is_some_and(|ns| table.info.namespaced && key.0 != ns) {
                continue;
            }
            if !options.labels.matches_object(object) || !options.fields.matches_object(object) {
                continue;
            }
            if options.limit > 0 && items.len() == options.limit {
                if let Some(last) = items.last().map(object_key) {
                    continue_token = Some(encode_continue(&last, revision));
                }
                break;
            }
            items.push(object.clone());
        }
        Ok(ListPage {
            items,
            resource_version: revision,
            continue_token,
        })
    }

    /// Creates an object: assigns uid, creationTimestamp, generation and resourceVersion, and a
    /// name from `generateName` when there is none.
    pub fn create(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        object: Value,
    ) -> Result<Value, StoreError> {
        let revision = self.revision + 1;
        let mut object = object;
        if gvr.group.is_empty() && gvr.resource == "services" {
            self.table_mut(gvr)?;
            self.allocate_cluster_ip(&mut object)?;
        }
        let table = self.table_mut(gvr)?;
        let namespace = scoped(&table.info, namespace);
        let meta = metadata_mut(&mut object)?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => {
                    let mut name;
                    loop {
                        name = format!("{prefix}{}", random_suffix());
                        if !table
                            .objects
                            .contains_key(&(namespace.clone(), name.clone()))
                        {
                            break;
                        }
                    }
                    name
                }
                _ => {
                    return Err(StoreError::Invalid(
                        "metadata.name or metadata.generateName is required".into(),
                    ));
                }
            },
        };
        check_name(&name)?;
        check_namespace(meta, &namespace)?;
        let key = (namespace.clone(), name.clone());
        if table.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists {
                resource: gvr.resource.clone(),
                name,
            });
        }
        meta.insert("name".into(), json!(name));
        if table.info.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
        meta.remove("deletionTimestamp");
        if table.info.status_subresource
            && let Some(map) = object.as_object_mut()
        {
            // As for CRDs with a status subresource: status is written only through it.
            map.remove("status");
        }
        set_type_meta(&mut object, gvr, &table.info);
        table.objects.insert(key, object.clone());
        self.revision = revision;
        self.record(gvr, EventType::Added, object.clone(), None, revision);
        Ok(object)
    }

    /// Replaces an object. A resourceVersion in the new object must match the stored one (409
    /// otherwise); server-owned metadata is kept; `generation` is bumped when anything but
    /// metadata and status changed. With a status subresource the stored status is kept. An
    /// object that is being deleted and has no finalizers left is removed.
    pub fn replace(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        object: Value,
    ) -> Result<Value, StoreError> {
        self.write(gvr, namespace, name, object, false)
    }

    /// Replaces only the `status` of an object (the `/status` subresource).
    pub fn replace_status(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        object: Value,
    ) -> Result<Value, StoreError> {
        self.write(gvr, namespace, name, object, true)
    }

    fn write(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        object: Value,
        status_only: bool,
    ) -> Result<Value, StoreError> {
        let revision = self.revision + 1;
        let table = self.table_mut(gvr)?;
        let namespace = scoped(&table.info, namespace);
        let key = (namespace.clone(), name.to_string());
        let old = table
            .objects
            .get(&key)
            .ok_or_else(|| not_found(gvr, name))?;
        let mut object = object;
        {
            let meta = metadata_mut(&mut object)?;
            if let Some(n) = meta.get("name").and_then(Value::as_str)
                && n != name
            {
                return Err(StoreError::Invalid(format!(
                    "metadata.name {n:?} does not match the name in the path {name:?}"
                )));
            }
            check_namespace(meta, &namespace)?;
            if let Some(rv) = meta.get("resourceVersion").and_then(Value::as_str)
                && !rv.is_empty()
                && Some(rv)
                    != old
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
            {
                return Err(StoreError::Conflict {
                    resource: gvr.resource.clone(),
                    name: name.to_string(),
                });
            }
        }
        let mut new = if status_only {
            let mut new = old.clone();
            match object.get("status") {
                Some(status) => {
                    if let Some(map) = new.as_object_mut() {
                        map.insert("status".into(), status.clone());
                    }
                }
                None => {
                    if let Some(map) = new.as_object_mut() {
                        map.remove("status");
                    }
                }
            }
            new
        } else {
            if table.info.status_subresource {
                if let Some(map) = object.as_object_mut() {
                    match old.get("status") {
                        Some(s) => map.insert("status".into(), s.clone()),
                        None => map.remove("status"),
                    };
                }
            }
            let old_meta = old.get("metadata").cloned().unwrap_or_default();
            let meta = metadata_mut(&mut object)?;
            for field in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "generation",
            ] {
                match old_meta.get(field) {
                    Some(v) => meta.insert(field.into(), v.clone()),
                    None => meta.remove(field),
                };
            }
            // As on a real server: a write that omits managedFields keeps them.
            if !meta.contains_key("managedFields")
                && let Some(managed) = old_meta.get("managedFields")
            {
                meta.insert("managedFields".into(), managed.clone());
            }
            meta.insert("name".into(), json!(name));
            if table.info.namespaced {
                meta.insert("namespace".into(), json!(namespace));
            }
            object
        };
        if spec_of(&new) != spec_of(old) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            metadata_mut(&mut new)?.insert("generation".into(), json!(generation + 1));
        }
        let previous = old.clone();
        set_type_meta(&mut new, gvr, &table.info);
        if let Some(rv) = old.pointer("/metadata/resourceVersion") {
            metadata_mut(&mut new)?.insert("resourceVersion".into(), rv.clone());
        }
        if new == previous {
            // No change: like the real server, no new resourceVersion and no event.
            return Ok(new);
        }
        metadata_mut(&mut new)?.insert("resourceVersion".into(), json!(revision.to_string()));
        let finished =
            new.pointer("/metadata/deletionTimestamp").is_some() && finalizers(&new).is_empty();
        self.revision = revision;
        if finished {
            if let Ok(t) = self.table_mut(gvr) {
                t.objects.remove(&key);
            }
            self.record(gvr, EventType::Deleted, new.clone(), None, revision);
        } else {
            if let Ok(t) = self.table_mut(gvr) {
                t.objects.insert(key, new.clone());
            }
            self.record(
                gvr,
                EventType::Modified,
                new.clone(),
                Some(previous),
                revision,
            );
        }
        Ok(new)
    }

    /// Deletes an object with a propagation policy. `Orphan` first removes the object from its
    /// dependents' ownerReferences; `Foreground` keeps the object (finalizer
    /// `foregroundDeletion`) until [`Store::collect_garbage`] has removed its dependents;
    /// `Background` is [`Store::delete`].
    pub fn delete_with(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        precondition_rv: Option<&str>,
        propagation: Propagation,
    ) -> Result<(Value, bool), StoreError> {
        let current = self.get(gvr, namespace, name)?;
        // Before anything changes: orphaning edits the dependents first.
        check_precondition(gvr, name, &current, precondition_rv)?;
        let uid = current
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let dependents: Vec<(Gvr, String, String)> = self
            .tables
            .iter()
            .flat_map(|(g, t)| {
                t.objects
                    .iter()
                    .filter(|(_, o)| owner_uids(o).contains(&uid.as_str()))
                    .map(move |((ns, n), _)| (g.clone(), ns.clone(), n.clone()))
            })
            .collect();
        match propagation {
            Propagation::Background => {}
            Propagation::Orphan => {
                for (g, ns, n) in dependents {
                    if let Ok(mut dependent) = self.get(&g, &ns, &n) {
                        if let Some(refs) = dependent
                            .pointer_mut("/metadata/ownerReferences")
                            .and_then(Value::as_array_mut)
                        {
                            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(&uid));
                        }
                        let _ = self.replace(&g, &ns, &n, dependent);
                    }
                }
            }
            Propagation::Foreground => {
                if !dependents.is_empty()
                    && current.pointer("/metadata/deletionTimestamp").is_none()
                {
                    let mut held = current.clone();
                    let mut list = finalizers(&held);
                    list.push(FOREGROUND_DELETION.to_string());
                    held["metadata"]["finalizers"] = json!(list);
                    if let Some(rv) = precondition_rv {
                        held["metadata"]["resourceVersion"] = json!(rv);
                    }
                    self.replace(gvr, namespace, name, held)?;
                    return self.delete(gvr, namespace, name, None);
                }
            }
        }
        self.delete(gvr, namespace, name, precondition_rv)
    }

    /// Deletes an object. With finalizers it only gets a `deletionTimestamp` (and stays until an
    /// update empties its finalizers); without, it is removed. Returns the object's last state
    /// and whether it is gone.
    pub fn delete(
        &mut self,
        gvr: &Gvr,
        namespace: &str,
        name: &str,
        precondition_rv: Option<&str>,
    ) -> Result<(Value, bool), StoreError> {
        let revision = self.revision + 1;
        let table = self.table_mut(gvr)?;
        let key = (scoped(&table.info, namespace), name.to_string());
        let old = table
            .objects
            .get(&key)
            .ok_or_else(|| not_found(gvr, name))?;
        check_precondition(gvr, name, old, precondition_rv)?;
        let previous = old.clone();
        let mut object = old.clone();
        if !finalizers(&object).is_empty() {
            if object.pointer("/metadata/deletionTimestamp").is_some() {
                return Ok((object, false));
            }
            let meta = metadata_mut(&mut object)?;
            meta.insert("deletionTimestamp".into(), json!(now_rfc3339()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            meta.insert("resourceVersion".into(), json!(revision.to_string()));
            table.objects.insert(key, object.clone());
            self.revision = revision;
            self.record(
                gvr,
                EventType::Modified,
                object.clone(),
                Some(previous),
                revision,
            );
            return Ok((object, false));
        }
        table.objects.remove(&key);
        metadata_mut(&mut object)?.insert("resourceVersion".into(), json!(revision.to_string()));
        self.revision = revision;
        self.record(gvr, EventType::Deleted, object.clone(), None, revision);
        Ok((object, true))
    }

    /// Every object with its resource, and the current revision, as JSON (for a snapshot file).
    pub fn export(&self) -> Value {
        let mut objects = Vec::new();
        for (gvr, table) in &self.tables {
            for object in table.objects.values() {
                objects.push(json!({
                    "group": gvr.group, "version": gvr.version, "resource": gvr.resource,
                    "object": object,
                }));
            }
        }
        json!({"revision": self.revision, "objects": objects})
    }

    /// Loads what [`Store::export`] wrote, into a store whose resources are registered (CRDs'
    /// resources are registered by the caller from the exported CRD objects first). Objects of
    /// unknown resources are skipped and counted. Watch history starts empty at the restored
    /// revision, so a watch resuming from before the restart gets 410 and relists, as after an
    /// etcd compaction.
    pub fn import(&mut self, exported: &Value) -> Result<usize, StoreError> {
        let revision = exported
            .get("revision")
            .and_then(Value::as_u64)
            .ok_or_else(|| StoreError::Invalid("snapshot: missing revision".into()))?;
        let objects = exported
            .get("objects")
            .and_then(Value::as_array)
            .ok_or_else(|| StoreError::Invalid("snapshot: missing objects".into()))?;
        let mut skipped = 0;
        for entry in objects {
            let field = |f: &str| entry.get(f).and_then(Value::as_str).unwrap_or_default();
            let gvr = Gvr::new(field("group"), field("version"), field("resource"));
            let object = entry.get("object").cloned().unwrap_or_default();
            let Some(table) = self.tables.get_mut(&gvr) else {
                skipped += 1;
                continue;
            };
            let (namespace, name) = object_key(&object);
            let namespace = scoped(&table.info, &namespace);
            if gvr.group.is_empty() && gvr.resource == "services" {
                let (base, _) = SERVICE_CIDR;
                let offset = object
                    .pointer("/spec/clusterIP")
                    .and_then(Value::as_str)
                    .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
                    .and_then(|ip| u32::from(ip).checked_sub(u32::from(base)));
                if let Some(offset) = offset {
                    self.next_cluster_ip = self.next_cluster_ip.max(offset.saturating_add(1));
                }
            }
            table.objects.insert((namespace, name), object);
        }
        self.revision = self.revision.max(revision);
        for table in self.tables.values_mut() {
            table.history.clear();
            table.oldest = self.revision;
        }
        Ok(skipped)
    }

    /// Starts the deletions a real cluster's garbage collector and namespace controller would:
    /// of objects whose owners (`ownerReferences`, by uid) are all gone, and of namespaced
    /// objects whose namespace is gone. Deletion honours finalizers, and cascades through
    /// owners of owners. Returns how many deletions were started.
    pub fn collect_garbage(&mut self) -> usize {
        let namespaces = Gvr::new("", "v1", "namespaces");
        let mut started = 0;
        loop {
            let live_namespaces: Option<HashSet<&str>> = self
                .tables
                .get(&namespaces)
                .map(|t| t.objects.keys().map(|(_, name)| name.as_str()).collect());
            let live_uids: HashSet<&str> = self
                .tables
                .values()
                .flat_map(|t| t.objects.values())
                .filter_map(|o| o.pointer("/metadata/uid").and_then(Value::as_str))
                .collect();
            // Owners deleted in the foreground: their dependents go first.
            let dying: HashSet<&str> = self
                .tables
                .values()
                .flat_map(|t| t.objects.values())
                .filter(|o| finalizers(o).iter().any(|f| f == FOREGROUND_DELETION))
                .filter_map(|o| o.pointer("/metadata/uid").and_then(Value::as_str))
                .collect();
            let referenced: HashSet<&str> = self
                .tables
                .values()
                .flat_map(|t| t.objects.values())
                .flat_map(|o| owner_uids(o))
                .collect();
            let mut doomed = Vec::new();
            let mut finished = Vec::new();
            for (gvr, table) in &self.tables {
                for ((namespace, name), object) in &table.objects {
                    let uid = object
                        .pointer("/metadata/uid")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if dying.contains(uid) && !referenced.contains(uid) {
                        finished.push((gvr.clone(), namespace.clone(), name.clone()));
                    }
                    if object.pointer("/metadata/deletionTimestamp").is_some() {
                        continue;
                    }
                    let owners = owner_uids(object);
                    let orphaned = !owners.is_empty()
                        && owners
                            .iter()
                            .all(|uid| !live_uids.contains(uid) || dying.contains(uid));
                    let homeless = table.info.namespaced
                        && live_namespaces
                            .as_ref()
                            .is_some_and(|live| !live.contains(namespace.as_str()));
                    if orphaned || homeless {
                        doomed.push((gvr.clone(), namespace.clone(), name.clone()));
                    }
                }
            }
            if doomed.is_empty() && finished.is_empty() {
                return started;
            }
            for (gvr, namespace, name) in finished {
                // Every dependent is gone: drop the foreground finalizer (which may complete
                // the deletion).
                if let Ok(mut object) = self.get(&gvr, &namespace, &name) {
                    let rest: Vec<String> = finalizers(&object)
                        .into_iter()
                        .filter(|f| f != FOREGROUND_DELETION)
                        .collect();
                    object["metadata"]["finalizers"] = json!(rest);
                    let _ = self.replace(&gvr, &namespace, &name, object);
                }
            }
            for (gvr, namespace, name) in doomed {
                if self.delete(&gvr, &namespace, &name, None).is_ok() {
                    started += 1;
                }
            }
        }
    }

    /// The events of a resource after `since`, for a watch resuming there. `Expired` when the
    /// history no longer reaches back that far.
    pub fn events_since(&self, gvr: &Gvr, since: u64) -> Result<Vec<WatchEvent>, StoreError> {
        let table = self.table(gvr)?;
        if since < table.oldest {
            return Err(StoreError::Expired {
                requested: since,
                oldest: table.oldest,
            });
        }
        // The history is in resourceVersion order.
        let start = table
            .history
            .partition_point(|e| e.resource_version <= since);
        Ok(table.history.range(start..).cloned().collect())
    }

    fn record(
        &mut self,
        gvr: &Gvr,
        kind: EventType,
        object: Value,
        previous: Option<Value>,
        resource_version: u64,
    ) {
        let limit = self.history_limit;
        if let Some(table) = self.tables.get_mut(gvr) {
            table.history.push_back(WatchEvent {
                kind,
                object,
                resource_version,
                previous,
            });
            while table.history.len() > limit {
                if let Some(dropped) = table.history.pop_front() {
                    table.oldest = dropped.resource_version;
                }
            }
        }
    }
}

/// How a deletion treats the object's dependents (objects naming it in ownerReferences).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// Delete the object now; the garbage collector removes dependents afterwards.
    #[default]
    Background,
    /// Remove dependents first; the object stays (with a deletionTimestamp) until they are gone.
    Foreground,
    /// Keep dependents, removing their reference to the object.
    Orphan,
}

/// The finalizer that holds an object deleted in the foreground until its dependents are gone.
pub const FOREGROUND_DELETION: &str = "foregroundDeletion";

/// The uids an object's ownerReferences name.
fn owner_uids(object: &Value) -> Vec<&str> {
    object
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default()
}

/// The finalizers of an object.
pub fn finalizers(object: &Value) -> Vec<String> {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn scoped(info: &ResourceInfo, namespace: &str) -> String {
    if info.namespaced {
        namespace.to_string()
    } else {
        String::new()
    }
}

fn not_found(gvr: &Gvr, name: &str) -> StoreError {
    StoreError::NotFound {
        resource: gvr.resource.clone(),
        name: name.to_string(),
    }
}

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, StoreError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| StoreError::Invalid("the body must be a JSON object".into()))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| StoreError::Invalid("metadata must be an object".into()))
}

fn check_namespace(meta: &Map<String, Value>, namespace: &str) -> Result<(), StoreError> {
    match meta.get("namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() && !namespace.is_empty() && ns != namespace => {
            Err(StoreError::Invalid(format!(
                "the namespace of the object ({ns}) does not match the namespace of the request ({namespace})"
            )))
        }
        _ => Ok(()),
    }
}

fn check_name(name: &str) -> Result<(), StoreError> {
    let valid = name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "metadata.name {name:?}: a name must consist of lower case alphanumeric characters, '-' or '.', and start with an alphanumeric character"
        )))
    }
}

fn set_type_meta(object: &mut Value, gvr: &Gvr, info: &ResourceInfo) {
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), json!(gvr.api_version()));
        map.insert("kind".into(), json!(info.kind));
    }
}

/// Everything but metadata and status: a change here bumps `generation`.
fn spec_of(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(map) = object.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
        map.remove("apiVersion");
        map.remove("kind");
    }
    object
}

fn object_key(object: &Value) -> (String, String) {
    let s = |p: &str| {
        object
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    (s("/metadata/namespace"), s("/metadata/name"))
}

fn encode_continue(key: &(String, String), revision: u64) -> String {
    use base64::Engine;
    let raw = json!([key.0, key.1, revision]).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn decode_continue(token: &str) -> Result<((String, String), u64), StoreError> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| StoreError::BadContinue)?;
    let (ns, name, rv): (String, String, u64) =
        serde_json::from_slice(&raw).map_err(|_| StoreError::BadContinue)?;
    Ok(((ns, name), rv))
}

fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The current time in the RFC 3339 form Kubernetes uses, whole seconds, UTC.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// A delete's `preconditions.resourceVersion`, when given, must be the object's current one.
fn check_precondition(
    gvr: &Gvr,
    name: &str,
    object: &Value,
    precondition_rv: Option<&str>,
) -> Result<(), StoreError> {
    match precondition_rv {
        Some(rv)
            if Some(rv)
                != object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str) =>
        {
            Err(StoreError::Conflict {
                resource: gvr.resource.clone(),
                name: name.to_string(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cm() -> Gvr {
        Gvr::new("", "v1", "configmaps")
    }

    #[test]
    fn services_get_cluster_ips_unless_headless_named_or_external() {
        let services = Gvr::new("", "v1", "services");
        let mut s = Store::new(10);
        s.register(
            services.clone(),
            ResourceInfo {
                kind: "Service".into(),
                namespaced: true,
                status_subresource: true,
            },
        );
        let create = |s: &mut Store, name: &str, spec: Value| {
            let object = json!({"metadata": {"name": name}, "spec": spec});
            s.create(&services, "default", object).unwrap()
        };
        let ip = |object: &Value| object.pointer("/spec/clusterIP").cloned();
        let first = create(&mut s, "a", json!({"ports": [{"port": 80}]}));
        assert_eq!(ip(&first), Some(json!("10.96.0.10")));
        assert_eq!(
            first.pointer("/spec/clusterIPs"),
            Some(&json!(["10.96.0.10"]))
        );
        let second = create(&mut s, "b", json!({"clusterIP": ""}));
        assert_eq!(ip(&second), Some(json!("10.96.0.11")));
        let headless = create(&mut s, "c", json!({"clusterIP": "None"}));
        assert_eq!(ip(&headless), Some(json!("None")));
        let named = create(&mut s, "d", json!({"clusterIP": "10.96.5.5"}));
        assert_eq!(ip(&named), Some(json!("10.96.5.5")));
        let external = create(
            &mut s,
            "e",
            json!({"type": "ExternalName", "externalName": "x.example"}),
        );
        assert_eq!(ip(&external), None);

        // After a restart from a snapshot, addresses in use are not handed out again.
        let mut restored = Store::new(10);
        restored.register(
            services.clone(),
            ResourceInfo {
                kind: "Service".into(),
                namespaced: true,
                status_subresource: true,
            },
        );
        restored.import(&s.export()).unwrap();
        let next = create(&mut restored, "f", json!({}));
        assert_eq!(ip(&next), Some(json!("10.96.5.6")));
    }

    fn store(history: usize) -> Store {
        let mut s = Store::new(history);
        s.register(
            cm(),
            ResourceInfo {
                kind: "ConfigMap".into(),
                namespaced: true,
                status_subresource: false,
            },
        );
        s.register(
            Gvr::new("x.io", "v1", "things"),
            ResourceInfo {
                kind: "Thing".into(),
                namespaced: false,
                status_subresource: true,
            },
        );
        s
    }

    fn rv(v: &Value) -> u64 {
        v.pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn create_assigns_server_metadata_and_rejects_duplicates() {
        let mut s = store(10);
        let a = s
            .create(
                &cm(),
                "ns",
                json!({"metadata": {"name": "a"}, "data": {"k": "v"}}),
            )
            .unwrap();
        assert_eq!(a["kind"], "ConfigMap");
        assert_eq!(a["apiVersion"], "v1");
        assert_eq!(a["metadata"]["namespace"], "ns");
        assert_eq!(a["metadata"]["generation"], 1);
        assert_eq!(a["metadata"]["uid"].as_str().unwrap().len(), 36);
        assert!(
            a["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
        assert_eq!(rv(&a), s.revision());
        let err = s
            .create(&cm(), "ns", json!({"metadata": {"name": "a"}}))
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }));
        // Same name, other namespace: fine.
        s.create(&cm(), "other", json!({"metadata": {"name": "a"}}))
            .unwrap();
        let g = s
            .create(&cm(), "ns", json!({"metadata": {"generateName": "gen-"}}))
            .unwrap();
        assert!(g["metadata"]["name"].as_str().unwrap().starts_with("gen-"));
        assert!(matches!(
            s.create(&cm(), "ns", json!({"metadata": {}})),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.create(&cm(), "ns", json!([1])),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.create(
                &cm(),
                "ns",
                json!({"metadata": {"name": "a", "namespace": "zz"}})
            ),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.get(&Gvr::new("", "v1", "nope"), "ns", "a"),
            Err(StoreError::UnknownResource(_))
        ));
    }

    #[test]
    fn replace_checks_resource_version_and_bumps_generation_on_spec_change() {
        let mut s = store(10);
        let t = Gvr::new("x.io", "v1", "things");
        let a = s
            .create(
                &t,
                "",
                json!({"metadata": {"name": "a"}, "spec": {"n": 1}, "status": {"s": 1}}),
            )
            .unwrap();
        let mut b = a.clone();
        b["metadata"]["labels"] = json!({"l": "x"});
        let b = s.replace(&t, "", "a", b).unwrap();
        assert_eq!(
            b["metadata"]["generation"], 1,
            "metadata change keeps generation"
        );
        assert!(rv(&b) > rv(&a));
        // Status is written only through the subresource, and does not bump generation.
        assert!(b.get("status").is_none());
        let mut c = b.clone();
        c["status"] = json!({"s": 2});
        let c = s.replace_status(&t, "", "a", c).unwrap();
        assert_eq!(c["status"]["s"], 2);
        assert_eq!(c["metadata"]["generation"], 1);
        let mut d = c.clone();
        d["spec"]["n"] = json!(2);
        let d = s.replace(&t, "", "a", d).unwrap();
        assert_eq!(d["metadata"]["generation"], 2);
        assert_eq!(d["status"]["s"], 2, "replace keeps the stored status");
        assert_eq!(d["metadata"]["uid"], a["metadata"]["uid"]);
        // Stale write.
        let err = s.replace(&t, "", "a", c).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        // No resourceVersion: unconditional.
        let mut e = d.clone();
        e["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("resourceVersion");
        e["spec"]["n"] = json!(3);
        s.replace(&t, "", "a", e).unwrap();
    }

    #[test]
    fn delete_honours_finalizers() {
        let mut s = store(10);
        s.create(
            &cm(),
            "ns",
            json!({"metadata": {"name": "a", "finalizers": ["x.io/f"]}}),
        )
        .unwrap();
        let (obj, gone) = s.delete(&cm(), "ns", "a", None).unwrap();
        assert!(!gone);
        assert!(obj["metadata"]["deletionTimestamp"].is_string());
        assert!(s.get(&cm(), "ns", "a").is_ok());
        let mut cleared = obj.clone();
        cleared["metadata"]["finalizers"] = json!([]);
        s.replace(&cm(), "ns", "a", cleared).unwrap();
        assert!(matches!(
            s.get(&cm(), "ns", "a"),
            Err(StoreError::NotFound { .. })
        ));
        let kinds: Vec<_> = s
            .events_since(&cm(), 1)
            .unwrap()
            .iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(
            kinds,
            [EventType::Added, EventType::Modified, EventType::Deleted]
        );
        s.create(&cm(), "ns", json!({"metadata": {"name": "b"}}))
            .unwrap();
        assert!(s.delete(&cm(), "ns", "b", Some("1")).is_err());
        assert!(s.delete(&cm(), "ns", "b", None).unwrap().1);
    }

    #[test]
    fn list_filters_and_pages() {
        let mut s = store(10);
        for (ns, name, app) in [
            ("a", "x", "web"),
            ("a", "y", "db"),
            ("b", "z", "web"),
            ("b", "w", "web"),
        ] {
            s.create(
                &cm(),
                ns,
                json!({"metadata": {"name": name, "labels": {"app": app}}}),
            )
            .unwrap();
        }
        let all = s.list(&cm(), None, &ListOptions::default()).unwrap();
        assert_eq!(all.items.len(), 4);
        assert_eq!(all.resource_version, s.revision());
        let web = ListOptions {
            labels: LabelSelector::parse("app=web").unwrap(),
            ..Default::default()
        };
        assert_eq!(s.list(&cm(), None, &web).unwrap().items.len(), 3);
        assert_eq!(s.list(&cm(), Some("a"), &web).unwrap().items.len(), 1);
        let by_name = ListOptions {
            fields: FieldSelector::parse("metadata.name=z").unwrap(),
            ..Default::default()
        };
        assert_eq!(s.list(&cm(), None, &by_name).unwrap().items.len(), 1);
        let mut names = Vec::new();
        let mut options = ListOptions {
            limit: 3,
            ..Default::default()
        };
        loop {
            let page = s.list(&cm(), None, &options).unwrap();
            assert!(page.items.len() <= 3);
            names.extend(page.items.iter().map(|o| o["metadata"]["name"].clone()));
            match page.continue_token {
                Some(t) => options.continue_token = Some(t),
                None => break,
            }
        }
        assert_eq!(names, ["x", "y", "w", "z"]);
        options.continue_token = Some("garbage!".into());
        assert_eq!(
            s.list(&cm(), None, &options).unwrap_err(),
            StoreError::BadContinue
        );
    }

    #[test]
    fn garbage_collection_follows_owners_and_namespaces() {
        let mut s = store(100);
        let ns = Gvr::new("", "v1", "namespaces");
        s.register(
            ns.clone(),
            ResourceInfo {
                kind: "Namespace".into(),
                namespaced: false,
                status_subresource: false,
            },
        );
        s.create(&ns, "", json!({"metadata": {"name": "a"}}))
            .unwrap();
        s.create(&ns, "", json!({"metadata": {"name": "b"}}))
            .unwrap();
        let owner = s
            .create(&cm(), "a", json!({"metadata": {"name": "owner"}}))
            .unwrap();
        let uid = owner["metadata"]["uid"].clone();
        let owned = |name: &str, uids: Vec<Value>| {
            let refs: Vec<Value> = uids
                .into_iter()
                .map(|u| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": u}))
                .collect();
            json!({"metadata": {"name": name, "ownerReferences": refs}})
        };
        s.create(&cm(), "a", owned("child", vec![uid.clone()]))
            .unwrap();
        let child = s.get(&cm(), "a", "child").unwrap();
        s.create(
            &cm(),
            "a",
            owned("grandchild", vec![child["metadata"]["uid"].clone()]),
        )
        .unwrap();
        let other = s
            .create(&cm(), "b", json!({"metadata": {"name": "other"}}))
            .unwrap();
        s.create(
            &cm(),
            "a",
            owned("shared", vec![uid, other["metadata"]["uid"].clone()]),
        )
        .unwrap();
        assert_eq!(s.collect_garbage(), 0);
        s.delete(&cm(), "a", "owner", None).unwrap();
        assert_eq!(s.collect_garbage(), 2, "child, then grandchild");
        assert!(s.get(&cm(), "a", "grandchild").is_err());
        assert!(
            s.get(&cm(), "a", "shared").is_ok(),
            "one owner is still there"
        );
        s.delete(&ns, "", "b", None).unwrap();
        s.collect_garbage();
        assert!(s.get(&cm(), "b", "other").is_err());
        assert!(
            s.get(&cm(), "a", "shared").is_err(),
            "its last owner went with namespace b"
        );
    }

    #[test]
    fn export_and_import_round_trip_and_expire_old_watches() {
        let mut s = store(10);
        s.create(&cm(), "ns", json!({"metadata": {"name": "a"}}))
            .unwrap();
        let before = s.revision();
        s.create(&cm(), "ns", json!({"metadata": {"name": "b"}}))
            .unwrap();
        let exported = s.export();
        let mut t = store(10);
        assert_eq!(t.import(&exported).unwrap(), 0);
        assert_eq!(t.revision(), s.revision());
        assert_eq!(
            t.get(&cm(), "ns", "a").unwrap(),
            s.get(&cm(), "ns", "a").unwrap()
        );
        assert!(matches!(
            t.events_since(&cm(), before),
            Err(StoreError::Expired { .. })
        ));
        let c = t
            .create(&cm(), "ns", json!({"metadata": {"name": "c"}}))
            .unwrap();
        assert!(rv(&c) > s.revision());
        assert!(t.import(&json!({"objects": []})).is_err());
    }

    #[test]
    fn history_is_bounded_and_old_versions_expire() {
        let mut s = store(3);
        let start = s.revision();
        for i in 0..5 {
            s.create(&cm(), "ns", json!({"metadata": {"name": format!("o{i}")}}))
                .unwrap();
        }
        assert!(matches!(
            s.events_since(&cm(), start),
            Err(StoreError::Expired { .. })
        ));
        let recent = s.events_since(&cm(), s.revision() - 2).unwrap();
        assert_eq!(recent.len(), 2);
        assert!(s.events_since(&cm(), s.revision()).unwrap().is_empty());
    }
}
