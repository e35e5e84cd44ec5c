//! Every `unsafe` line of stasis: thin, safe, owning wrappers over the kernel
//! facilities that `nix` and `libc` do not wrap, or wrap too loosely.
//!
//! One module per kernel facility. Each returns an owning type that releases
//! what it holds on drop (a detached tracee, a closed fd, a reaped child), so
//! that no error path in the crates above can leak a half-seized process.
//! Every `unsafe` block states the invariant that makes it sound.
