//! Process checkpoint and restore: freezing, tree discovery, dumping tasks,
//! threads, registers, memory and file descriptors into an image, and
//! restoring them.
//!
//! For now it holds [`host`], the probe of the facilities this kernel offers,
//! which every later operation consults before it touches a process, and
//! [`freezer`], the cgroup v2 / v1 freezers the dump will freeze trees with.
#![forbid(unsafe_code)]

pub mod freezer;
pub mod host;
