//! The local dev cluster: an in-memory server speaking the Kubernetes API, for tests and local
//! runs. Start one with [`DevCluster::start`] and point kube-rs at [`DevCluster::kubeconfig`].
//!
//! - [`store`]: objects, resourceVersions, generations, finalizers and the watch history, as
//!   plain data.
//! - [`selector`]: label and field selectors.
//! - [`endpoints`]: the optional endpoints controller.
//! - [`patch`]: merge patch and JSON patch.
//! - [`resources`]: the built-in resources, CRD registration and discovery documents.
//! - [`apply`]: server-side apply and managed fields.
//! - [`auth`]: users, rules, service-account tokens.
//! - [`api`]: the REST API over the store, one request at a time.
//! - [`watch`]: watch streams.
//! - [`server`]: HTTPS with the cluster's own CA, and the kubeconfig.

pub mod api;
pub mod apply;
pub mod auth;
pub mod endpoints;
pub mod patch;
pub mod resources;
pub mod selector;
pub mod server;
pub mod store;
pub mod watch;

pub use api::{Cluster, ClusterConfig};
pub use auth::{Rule, User};
pub use server::{DevCluster, DevClusterConfig, RunError, StartError, run, serve};
