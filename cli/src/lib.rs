//! The `ambit` command's library: the built-in test app and the demos, on
//! the local cluster (`ambit-cluster`). The binary (`src/main.rs`) is a thin
//! CLI.

pub mod chart;
pub mod dashboard;
pub mod demo;
pub mod echo;
pub mod explain;
pub mod inspect;
pub mod install;
pub mod live;
pub mod precheck;
pub mod proxies;
pub mod trace_sink;
pub mod waypoint_cmd;
