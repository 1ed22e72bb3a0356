//! Navigator's vocabulary: port forwards, their lifecycle, validation of what a
//! tenant may ask for, and the reconcile diff that agents apply.
//!
//! This crate does no I/O, has no async functions and knows no wire format:
//! REST shapes live in `navigator-api`, RPC shapes in `navigator-rpc`, SQL in
//! `navigator-store`. Keeping it pure is what lets every rule here be tested
//! with plain tables of inputs and expected outputs.

pub mod backoff;
pub mod controls;
pub mod digest;
pub mod forward;
pub mod port_range;
pub mod reconcile;
pub mod target;

pub use backoff::Backoff;
pub use controls::{
    CidrError, Controls, ForwardUsage, ProxyProtocol, Unsupported, parse_cidr, unsupported,
};
pub use forward::{
    ForwardId, ForwardSpec, ForwardStatus, ParseError, PortForward, PortMappingError, Protocol,
    check_port_mapping,
};
pub use port_range::{PortRange, PortRangeError, parse_port_number};
pub use reconcile::{Plan, plan};
pub use target::{TargetError, TargetPolicy, special_networks};
