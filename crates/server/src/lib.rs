//! `navigator-server`: the REST API, the store, placement and the control loop
//! that drives the proxy agents. In all-in-one mode it also runs an agent with
//! the userspace relay in the same process, talking to it over the in-process
//! RPC transport, exactly as it would talk to a remote agent.
//!
//! `main.rs` is a thin shell over [`run`]: parse arguments, load the
//! configuration, start.

pub mod app;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod context;
pub mod control;
pub mod dashboard;
pub mod error;
pub mod handlers;
pub mod health;
pub mod host_check;
pub mod http;
pub mod metrics;
pub mod nova;
pub mod openapi_auth;
pub mod policy;
pub mod quotas;
pub mod ratelimit;
pub mod reload;
pub mod run;
pub mod status;
pub mod systemd;
pub mod tls;
pub mod usage;
