//! The REST contract of Navigator's API v1: every JSON shape a client sends or
//! receives, the OpenStack-style error body, and a typed async client.
//!
//! This is the only crate that defines REST JSON. The server serialises these
//! types, the CLI and tests deserialise them, and the OpenAPI document is
//! generated from their `ToSchema` derives, so the three cannot drift apart.
//! It has no web-server dependency, so clients do not compile one.

pub mod client;
pub mod error;
pub mod quota;
pub mod v1;

pub use client::{Auth, Client, ClientError};
pub use error::{ErrorBody, ErrorDetail};
