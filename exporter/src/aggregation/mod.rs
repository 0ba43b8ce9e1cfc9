//! Kernel flow entries into typed flow records: addresses as `IpAddr` (v4-mapped IPv6
//! folded to IPv4), enums for transport and direction, the address classes, and the
//! RTT histogram turned back into samples; DNS packets into lookups (query paired
//! with answer, or timed out); HTTP chunks into exchanges (request paired with response).
mod address;
mod dns;
mod flow;
mod http;
mod kernel_keys;

pub use address::{AddressClass, classify};
pub use dns::{DnsLookup, DnsTracker, Outcome, TrackerLosses, TrackerSettings, rcode_name, type_name};
#[cfg(test)]
pub use flow::Failure;
pub use flow::{Direction, FlowRecord, Transport, from_kernel};
#[cfg(test)]
pub use http::RequestHead;
pub use http::{HttpError, HttpExchange, HttpLosses, HttpSettings, HttpTracker, Role, Routes};
pub use kernel_keys::KernelKeyMap;
