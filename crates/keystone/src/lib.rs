//! A Keystone v3 client for both sides of Navigator: the CLI authenticates
//! users (password, application credential or token) and finds Navigator's
//! endpoint in the catalog; the server validates the tokens it receives with
//! its own service credentials and caches the answers.
//!
//! It knows nothing of Navigator's resources, only of Keystone.

pub mod auth;
pub mod token;
pub mod validate;
