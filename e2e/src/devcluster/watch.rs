//! Watches: a stream of newline-delimited watch events for one resource, from a resourceVersion
//! or from the current state, filtered by namespace and selectors, with bookmarks, a timeout, and
//! an ERROR event carrying 410 Expired when the history no longer reaches back to the start.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::api::{ApiError, Body, Cluster, Target, list_options};
use super::store::{EventType, ListOptions, WatchEvent};

impl Cluster {
    pub(super) fn watch(
        self: &Arc<Self>,
        target: &Target,
        query: &HashMap<String, String>,
    ) -> Result<Response<Body>, ApiError> {
        let mut options = list_options(query)?;
        // A watch streams everything that matches: paging does not apply.
        options.limit = 0;
        options.continue_token = None;
        let timeout = match query.get("timeoutSeconds") {
            Some(t) => Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds {t:?} is not a number"))
            })?),
            None => Duration::from_secs(1800),
        };
        let bookmarks = matches!(
            query.get("allowWatchBookmarks").map(String::as_str),
            Some("true" | "1")
        );
        let initial_events = matches!(
            query.get("sendInitialEvents").map(String::as_str),
            Some("true" | "1")
        );
        let start = match query.get("resourceVersion").map(String::as_str) {
            // A streaming list starts from the current state, whatever version it names.
            _ if initial_events => None,
            None | Some("" | "0") => None,
            Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("resourceVersion {rv:?} is not a valid version"))
            })?),
        };
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let mut changed = self.changed.subscribe();
        let cluster = Arc::clone(self);
        let gvr = target.gvr.clone();
        let namespace = target.namespace.clone();
        let kind = self.kind(&gvr);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            // Initial state: from the given version, or every current object as ADDED.
            let mut last = match start {
                Some(rv) => rv,
                None => {
                    let (page, revision) = {
                        let store = cluster.store();
                        (
                            store.list(&gvr, namespace.as_deref(), &options),
                            store.revision(),
                        )
                    };
                    let Ok(page) = page else { return };
                    for object in page.items {
                        if tx.send(event_line("ADDED", &object)).await.is_err() {
                            return;
                        }
                    }
                    if initial_events {
                        // The end of a streaming list, as watch-list clients expect it.
                        let object = json!({"kind": kind, "apiVersion": gvr.api_version(),
                            "metadata": {"resourceVersion": revision.to_string(),
                                "annotations": {"k8s.io/initial-events-end": "true"}}});
                        if tx.send(event_line("BOOKMARK", &object)).await.is_err() {
                            return;
                        }
                    }
                    revision
                }
            };
            let mut bookmark = tokio::time::interval(cluster.bookmark_interval);
            bookmark.tick().await;
            loop {
                let events = cluster.store().events_since(&gvr, last);
                match events {
                    Ok(events) => {
                        for event in events {
                            last = last.max(event.resource_version);
                            let Some(kind) = visible_as(&event, namespace.as_deref(), &options)
                            else {
                                continue;
                            };
                            if tx.send(event_line(kind, &event.object)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let e = ApiError::from(e);
                        let _ = tx.send(event_line("ERROR", &e.status())).await;
                        return;
                    }
                }
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = bookmark.tick(), if bookmarks => {
                        let object = json!({"kind": kind, "apiVersion": gvr.api_version(),
                            "metadata": {"resourceVersion": last.to_string()}});
                        if tx.send(event_line("BOOKMARK", &object)).await.is_err() {
                            return;
                        }
                    }
                    _ = tx.closed() => return,
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|line| (Ok::<_, Infallible>(Frame::data(line)), rx))
        });
        let mut response = Response::new(StreamBody::new(stream).boxed_unsync());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }
}

/// How a watch filtered by namespace and selectors reports an event, if at all: an object that
/// starts matching is ADDED and one that stops matching is DELETED, as on a real API server.
fn visible_as(
    event: &WatchEvent,
    namespace: Option<&str>,
    options: &ListOptions,
) -> Option<&'static str> {
    let matches = |object: &Value| {
        namespace.is_none_or(|ns| {
            object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                == Some(ns)
        }) && options.labels.matches_object(object)
            && options.fields.matches_object(object)
    };
    let now = matches(&event.object);
    match event.kind {
        EventType::Added | EventType::Deleted => now.then_some(event.kind.as_str()),
        EventType::Modified => {
            let before = event.previous.as_ref().is_some_and(matches);
            match (before, now) {
                (true, true) => Some("MODIFIED"),
                (false, true) => Some("ADDED"),
                (true, false) => Some("DELETED"),
                (false, false) => None,
            }
        }
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}
