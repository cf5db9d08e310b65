//! The `ambit` command's library: the local cluster on network namespaces, the
//! built-in test app, and the demos. The binary (`src/main.rs`) is a thin CLI.

pub mod cluster;
pub mod demo;
pub mod echo;
pub mod waypoint_cmd;
