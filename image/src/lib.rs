//! The stasis image format, version 1.
#![forbid(unsafe_code)]
