//! The local dev cluster: an in-memory server speaking the Kubernetes API.
//!
//! - [`store`]: objects, resourceVersions, generations, finalizers and the watch history, as
//!   plain data.
//! - [`selector`]: label and field selectors.

pub mod selector;
pub mod store;
