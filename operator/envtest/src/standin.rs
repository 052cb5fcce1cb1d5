//! The parts of a one-node cluster that the envtest control plane lacks, together: a
//! [`StandInNode`] (kubelet), a [`StandInProxy`] (kube-proxy) and a [`MetricsServer`]
//! (metrics-server and a custom-metrics adapter), following the same namespaces.

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::metrics_server::{MetricsError, MetricsServer, Sources};
use crate::node::{NodeConfig, NodeError, StandInNode};
use crate::proxy::StandInProxy;

/// Why the stand-ins could not start.
#[derive(Debug, thiserror::Error)]
pub enum StandInError {
    /// The node.
    #[error("stand-in node: {0}")]
    Node(#[from] NodeError),
    /// The metrics-server.
    #[error("stand-in metrics-server: {0}")]
    Metrics(#[from] MetricsError),
}

/// How to start them.
#[derive(Debug, Clone)]
pub struct StandInConfig {
    /// The node.
    pub node: NodeConfig,
    /// How often the metrics-server samples every pod (metrics-server's `--metric-resolution`,
    /// 15 s by default).
    pub metrics_resolution: Duration,
}

impl Default for StandInConfig {
    fn default() -> Self {
        StandInConfig {
            node: NodeConfig::default(),
            metrics_resolution: Duration::from_secs(15),
        }
    }
}

/// A node, a kube-proxy and a metrics-server.
pub struct StandIn {
    /// The node.
    pub node: Arc<StandInNode>,
    /// The kube-proxy.
    pub proxy: Arc<StandInProxy>,
    /// The metrics-server.
    pub metrics: MetricsServer,
}

impl StandIn {
    /// Starts all three (the metrics APIs registered and available).
    pub async fn start(client: Client, config: StandInConfig) -> Result<StandIn, StandInError> {
        crate::fdlimit::raise();
        let namespaces = config.node.namespaces.clone();
        let node = Arc::new(StandInNode::start(client.clone(), config.node).await?);
        let proxy = Arc::new(StandInProxy::start(client.clone(), &namespaces));
        let (n, p) = (node.clone(), proxy.clone());
        let sources = Sources {
            pods: Box::new(move || n.pods()),
            inflight: Box::new(move || p.inflight()),
        };
        let metrics =
            match MetricsServer::start(client, node.address(), sources, config.metrics_resolution)
                .await
            {
                Ok(m) => m,
                Err(e) => {
                    node.stop().await;
                    return Err(e.into());
                }
            };
        Ok(StandIn {
            node,
            proxy,
            metrics,
        })
    }

    /// Runs the pods and proxies the Services of `namespace` too.
    pub fn serve(&self, namespace: &str) {
        self.node.serve(namespace);
        self.proxy.serve(namespace);
    }

    /// Stops everything and removes what it made.
    pub async fn stop(self) {
        self.metrics.stop().await;
        self.node.stop().await;
        self.proxy.stop();
    }
}
