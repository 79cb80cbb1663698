//! Helpers shared by the workspace's tests, written once so that every crate's tests build the
//! same kind of world. Test code only: failures here panic with a message, as a test should.

pub mod apps;
pub mod backends;
pub mod load;
pub mod pki;
