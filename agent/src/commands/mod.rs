//! One module per subcommand: each turns its arguments into library calls
//! and prints the result.

pub mod bench;
pub mod check;
pub mod demo;
pub mod dump;
pub mod inspect;
pub mod restore;
pub mod snapshot;
pub mod verify;
pub mod volume;
