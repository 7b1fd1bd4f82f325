//! ferry: a managed file transfer cluster.
//!
//! Nodes talk QUIC with mutual TLS. Each request is persisted on both nodes
//! it involves, runs on its own private channel (a QUIC stream) of the one
//! connection between the two nodes, and ends with the file verified by
//! BLAKE3 end to end. See `docs/ARCHITECTURE.md` for the codemap.

pub mod actors;
pub mod api;
pub mod audit;
pub mod auth;
pub mod calendar;
pub mod certs;
pub mod cluster;
pub mod config;
pub mod determinism;
pub mod events;
pub mod fileset;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod node;
pub mod protocol;
pub mod store;
pub mod tasks;
pub mod text;
pub mod transfer;
pub mod transport;
