//! Shared pieces of the agent's integration tests.

#![allow(dead_code)]

pub mod ha;
pub mod node;
