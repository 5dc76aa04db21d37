//! Who sent a request, for the logs: the peer's socket address, and the
//! client address in `X-Forwarded-For` only when the peer is a trusted
//! reverse proxy (`--trusted-proxies`). From anyone else the header is
//! ignored: a prober could write any address into it.
//!
//! The server's accept loop wraps each connection's service in
//! [`WithPeer`], which puts the [`Peer`] into every request's extensions;
//! [`client`] reads it back as a filter.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use warp::http::{HeaderValue, Request};
use warp::Filter;

use super::filters::with_app;
use crate::app::App;

/// The socket address of a connection's peer, as a request extension.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// A connection's service that tags every request with its [`Peer`].
#[derive(Debug, Clone)]
pub struct WithPeer<S> {
    inner: S,
    peer: Option<SocketAddr>,
}

impl<S> WithPeer<S> {
    /// Wraps `inner`, the service of the connection from `peer` (`None`
    /// when the kernel could not say, e.g. the client already left).
    pub fn new(inner: S, peer: Option<SocketAddr>) -> WithPeer<S> {
        WithPeer { inner, peer }
    }
}

impl<S, B> hyper::service::Service<Request<B>> for WithPeer<S>
where
    S: hyper::service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: Request<B>) -> Self::Future {
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(Peer(peer));
        }
        self.inner.call(req)
    }
}

/// The client of a request as far as it can be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr {
    /// The connection's peer (`None` only for requests that did not come
    /// through the accept loop).
    pub peer: Option<SocketAddr>,
    /// The client a trusted proxy names in `X-Forwarded-For`.
    pub forwarded_for: Option<IpAddr>,
}

impl fmt::Display for ClientAddr {
    /// `203.0.113.7 via 127.0.0.1:41234` behind a trusted proxy, else the
    /// peer (`198.51.100.2:5230`), or `-` when unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.forwarded_for, self.peer) {
            (Some(client), Some(peer)) => write!(f, "{client} via {peer}"),
            (None, Some(peer)) => write!(f, "{peer}"),
            (Some(client), None) => write!(f, "{client}"),
            (None, None) => f.write_str("-"),
        }
    }
}

/// The request's [`ClientAddr`]. Never rejects: a missing or unreadable
/// header only leaves `forwarded_for` empty.
pub fn client(app: &Arc<App>) -> impl Filter<Extract = (ClientAddr,), Error = Infallible> + Clone {
    let forwarded = warp::header::value("x-forwarded-for")
        .map(Some)
        .or(warp::any().map(|| None))
        .unify();
    with_app(app.clone())
        .and(warp::ext::optional::<Peer>())
        .and(forwarded)
        .map(
            |app: Arc<App>, peer: Option<Peer>, header: Option<HeaderValue>| {
                let peer = peer.map(|Peer(addr)| addr);
                let forwarded_for = match (peer, header) {
                    (Some(addr), Some(header)) if trusted(&app.trusted_proxies, addr.ip()) => {
                        forwarded_client(header.as_bytes(), &app.trusted_proxies)
                    }
                    _ => None,
                };
                ClientAddr {
                    peer,
                    forwarded_for,
                }
            },
        )
}

/// Whether `ip` is one of the trusted proxies.
fn trusted(proxies: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    proxies.iter().any(|net| net.contains(&ip))
}

/// The client named by an `X-Forwarded-For` value that a trusted proxy
/// sent: the right-most address that is not itself a trusted proxy (each
/// proxy appends the address it saw; entries left of an untrusted one may
/// be forged). `None` if an entry on the way is not an address.
fn forwarded_client(header: &[u8], proxies: &[IpNet]) -> Option<IpAddr> {
    let text = std::str::from_utf8(header).ok()?;
    let mut leftmost = None;
    for entry in text.rsplit(',') {
        let ip = parse_entry(entry.trim())?;
        if !trusted(proxies, ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or `203.0.113.7:80`.
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let proxies = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        let client = |h: &str| forwarded_client(h.as_bytes(), &proxies);
        assert_eq!(client("203.0.113.7"), Some("203.0.113.7".parse().unwrap()));
        // A client-written entry left of the real one is skipped.
        assert_eq!(
            client("1.2.3.4, 203.0.113.7, 10.1.2.3"),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(
            client("[2001:db8::1]:443"),
            Some("2001:db8::1".parse().unwrap())
        );
        // Only proxies: the left-most of them.
        assert_eq!(
            client("10.0.0.1, 127.0.0.1"),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(
            client("unknown, 203.0.113.7"),
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(client("203.0.113.7, garbage"), None);
        assert_eq!(forwarded_client(b"\xff", &proxies), None);
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let proxies = nets(&["127.0.0.1/32"]);
        assert!(trusted(&proxies, "::ffff:127.0.0.1".parse().unwrap()));
        assert!(!trusted(&proxies, "127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn display() {
        let peer: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        let both = ClientAddr {
            peer: Some(peer),
            forwarded_for: Some("203.0.113.7".parse().unwrap()),
        };
        assert_eq!(both.to_string(), "203.0.113.7 via 127.0.0.1:41234");
        let direct = ClientAddr {
            peer: Some(peer),
            forwarded_for: None,
        };
        assert_eq!(direct.to_string(), "127.0.0.1:41234");
    }
}
