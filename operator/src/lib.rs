//! The wsgiscale Kubernetes operator: turns a `WsgiApp` (group `wsgiscale.dev`) into running
//! pods whose server is `wsgiscale serve`, with the app's worker limits in a live-reloaded
//! ConfigMap.
//!
//! The reconcile is a chain of pure steps and one thin I/O step:
//! [`validate`] (WsgiApp -> ValidatedApp, defaults resolved) -> [`render`] (ValidatedApp ->
//! ConfigMap, Deployment, Service, PodDisruptionBudget) -> [`reconcile`] (server-side apply of
//! what [`drift`] says changed) -> [`status`] (observed -> status and conditions).
//!
//! The process around it: [`cli`] (flags with env twins), [`run`] (client, controllers,
//! shutdown), [`leader`] (Lease-based leader election), [`http`] and [`metrics`] (`/healthz`,
//! `/readyz`, `/metrics`), [`telemetry`] (logs), [`activation`] (pure) and [`routing`] (its I/O: the
//! activator's path, route table and demand reports). [`crd`] holds the resource's types and
//! generates the CRD, [`layout`] the names of the pod's parts (label, container, ports,
//! volumes, mount paths), [`api_error`] how the API server's refusals are told apart. It
//! depends on `wsgiscale-core` for the server's command line and config file, never on the
//! server itself, so it does not link libpython.

pub mod activation;
pub mod api_error;
pub mod autoscale;
pub mod cache;
pub mod cli;
pub mod crd;
pub mod dependency;
pub mod drift;
pub mod events;
pub mod explain;
pub mod handoff;
pub mod http;
pub mod layout;
pub mod leader;
pub mod metrics;
pub mod pods;
pub mod reconcile;
pub mod render;
pub mod routing;
pub mod run;
pub mod scrape;
pub mod simulate;
pub mod status;
pub mod telemetry;
pub mod validate;
pub mod watch;

#[cfg(test)]
mod fixtures;
