//! Workload operations built on checkpointing and volumes.
//!
//! This crate will own the operations a user asks for by name: the coherent
//! snapshot (freeze a tree, snapshot its volume, capture its processes, thaw),
//! hibernate (dump, stop the tree and free its memory), resume, and the
//! journal that undoes a half-done operation after the agent was killed. It
//! talks to volumes through the `stasis-volume` trait only; the binary chooses
//! the backend.
//!
//! Nothing is implemented yet: these operations come with the process
//! checkpoint and volume snapshot issues.
#![forbid(unsafe_code)]
