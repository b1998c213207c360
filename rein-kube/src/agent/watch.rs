//! The agent's watches: a reflector store per kind, and a wake-up for the loop on every change.
use std::{fmt::Debug, sync::Arc};

use futures::StreamExt as _;
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::metrics::Metrics;

/// A watch of one kind: its store, filled by a task of its own.
pub struct Watch<K: Resource<DynamicType = ()> + 'static> {
    pub store: Store<K>,
    task: JoinHandle<()>,
    /// Whether the first list is in the store, or there is nothing to list.
    listed: watch::Receiver<bool>,
}

impl<K: Resource<DynamicType = ()> + 'static> Drop for Watch<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<K> Watch<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Lists and watches `api` (named `resource` in logs and metrics), waking `changed` on
    /// every change once the list is complete. Errors are retried with kube's backoff.
    ///
    /// A `custom` kind whose CustomResourceDefinition is not installed (the list is not
    /// found) counts as listed and empty, so the pods' limits do not wait for it; its objects
    /// are taken once it is installed.
    pub fn start(
        api: Api<K>,
        config: watcher::Config,
        resource: &'static str,
        custom: bool,
        changed: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (listed_tx, listed_rx) = watch::channel(false);
        let (store, writer) = reflector::store();
        let stream = watcher(api, config).default_backoff().reflect(writer);
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut listed = false;
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Init) if listed => metrics.watch_restarted(resource),
                    Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                    Ok(watcher::Event::InitDone) => {
                        listed = true;
                        listed_tx.send_replace(true);
                        changed.notify_one();
                    }
                    Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => {
                        changed.notify_one();
                    }
                    Err(watcher::Error::InitialListFailed(kube::Error::Api(status)))
                        if custom && status.is_not_found() =>
                    {
                        if !listed_tx.send_replace(true) {
                            tracing::warn!(
                                "{resource}: its CustomResourceDefinition is not installed \
                                 (kubectl apply -f deploy/crds.yaml); none apply until it is"
                            );
                            changed.notify_one();
                        }
                        metrics.watch_failed(resource);
                    }
                    Err(error) => {
                        tracing::warn!("watching {resource}: {error}; trying again");
                        metrics.watch_failed(resource);
                    }
                }
            }
        });
        Self {
            store,
            task,
            listed: listed_rx,
        }
    }

    /// Waits until the first list is in the store (or a custom kind is not installed).
    pub async fn listed(&self) -> bool {
        self.listed.clone().wait_for(|listed| *listed).await.is_ok()
    }
}
