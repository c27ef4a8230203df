//! HTTP/1.1: keel's static-file server (`keel http`).
//!
//! The pieces, from the bytes up:
//! - [`parse`] turns a request head into a [`parse::Head`] (an explicit state machine around
//!   httparse, with the limits and the request-smuggling refusals), and [`body`] frames a
//!   request body (Content-Length or chunked with trailers) so a pipelined request after it is
//!   found where it starts;
//! - [`path`] maps a request target to a file beneath the root and never outside it;
//! - [`conditional`], [`range`], [`mime`] and [`autoindex`] decide what a found file's answer is;
//! - the rest (response encoding, the Date cache, the file caches and the connection handler)
//!   turns that into bytes and sendfile calls on a keel connection.

pub mod access_log;
pub mod autoindex;
pub mod body;
pub mod conditional;
pub mod conn;
pub mod date;
pub mod files;
pub mod mime;
pub mod parse;
pub mod path;
pub mod range;
pub mod response;
pub mod site;

use std::sync::Arc;

use crate::net::{Handler, HandlerFactory};

pub use conn::HttpConn;
pub use site::{HttpSettings, Site};

/// The handler factory for a site: one [`HttpConn`] per connection.
pub fn factory(site: Arc<Site>) -> HandlerFactory {
    Arc::new(move || Box::new(HttpConn::new(site.clone())) as Box<dyn Handler>)
}
