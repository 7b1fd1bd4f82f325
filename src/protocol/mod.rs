//! The protocol core, sans I/O: message types, the wire codec and the
//! per-request state machines of both sides.
//!
//! Nothing in here touches a socket, a file, a clock or tokio. The runners in
//! [`crate::actors`] feed it what arrives and carry out what it returns; the
//! tests and the simulations drive it directly.

pub mod block_hash;
pub mod codec;
pub mod control;
pub mod message;
pub mod names;
pub mod session;
pub mod set_stream;

pub use control::StreamKind;
pub use message::*;
pub use session::{Failure, Origin, Output, Plan, Role, Session};
