//! HTTP proxying: serving detected connections, the request handler and
//! the stack it calls, forwarding to the upstream pool, metered bodies, and
//! the hold an accepted connection keeps on the proxy.

pub mod body;
pub mod client;
pub mod forward;
pub mod hold;
pub mod proxy;
pub mod server;
pub mod stack;
