//! Helpers shared by the integration tests.

pub mod keystone_admin;

pub mod stack;

pub mod wire;
