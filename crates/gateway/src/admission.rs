//! Admission of a request on a route, before an app or an upstream sees it:
//! the `Origin` policy (403), the per-route connection cap (503) and the
//! per-client-IP cap (429), both with `Retry-After`. Applied by the
//! dispatcher, once, for every kind of route.
//!
//! A [`ConnectionGuard`] holds one slot and gives it back when dropped, so a
//! tunnel that ends by any path (error, panic, cancellation) frees its slot.
//! Counters exist only for live connections: the maps cannot grow beyond the
//! number of open connections.
//!
//! In a cluster the local count stays the first check (what one instance
//! holds cannot exceed what the cluster holds); a guard admitted by it also
//! carries a lease in the cluster's caps ([`crate::shared_caps`]), which
//! the front takes ([`ConnectionGuard::take_shared`]) before it switches.

use crate::sync::lock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, StatusCode};

use crate::config::Policy;
use crate::outcome::{Reason, Refusal};
use crate::shared_caps::{Lease, SharedCaps, Verdict};

/// Seconds advertised in `Retry-After` when a cap is reached.
pub const RETRY_AFTER_SECS: u32 = 5;

#[derive(Debug, Default)]
struct RouteCount {
    total: u32,
    per_ip: HashMap<IpAddr, u32>,
}

#[derive(Debug, Default)]
struct Counts {
    routes: HashMap<String, RouteCount>,
}

/// Connection counts per route and per client IP. Share it (`Clone` is
/// cheap) across connections; one per gateway (keep it across reloads so
/// existing tunnels still count).
#[derive(Debug, Clone, Default)]
pub struct ConnectionLimiter {
    counts: Arc<Mutex<Counts>>,
    /// The cluster's caps, with `[cluster]`.
    shared: Option<Arc<SharedCaps>>,
}

/// One admitted connection; dropping it frees the slot (and its lease in
/// the cluster's caps). On a route without caps it holds nothing (nothing
/// is counted, nothing is locked).
#[derive(Debug)]
pub struct ConnectionGuard {
    _slot: Option<Slot>,
    /// Boxed: most gateways run without a cluster, and every proxied
    /// connection holds its guard for its whole life.
    shared: Option<Box<SharedSlot>>,
}

/// The guard's lease in the cluster's caps, and what a refusal names.
#[derive(Debug)]
struct SharedSlot {
    lease: Lease,
    route: String,
    ip: IpAddr,
    taken: bool,
}

#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    route: String,
    ip: IpAddr,
}

fn route_full(route: &str, max: u32) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Reason::RouteFull,
        format!("route {route} has its maximum of {max} connections open; try again later"),
    )
    .retry_after(RETRY_AFTER_SECS)
}

fn ip_full(route: &str, ip: IpAddr, max: u32) -> Refusal {
    Refusal::new(
        StatusCode::TOO_MANY_REQUESTS,
        Reason::IpFull,
        format!("{ip} already has {max} connections open on route {route}, the most allowed per client; close one or try again later"),
    )
    .retry_after(RETRY_AFTER_SECS)
}

impl ConnectionLimiter {
    /// An empty limiter.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty limiter whose guards also take a lease in the cluster's
    /// caps.
    pub fn shared(caps: Arc<SharedCaps>) -> Self {
        ConnectionLimiter {
            counts: Arc::default(),
            shared: Some(caps),
        }
    }

    /// Admit a connection from `ip` on `route` under `policy`'s caps, or say
    /// why not: 503 when the route is full, 429 when this IP has its share;
    /// both with `Retry-After`.
    pub fn try_acquire(
        &self,
        route: &str,
        ip: IpAddr,
        policy: &Policy,
    ) -> Result<ConnectionGuard, Refusal> {
        let (route_max, ip_max) = (policy.max_connections, policy.max_connections_per_ip);
        if route_max.is_none() && ip_max.is_none() {
            return Ok(ConnectionGuard {
                _slot: None,
                shared: None,
            });
        }
        let mut counts = lock(&self.counts);
        let entry = counts.routes.entry(route.to_string()).or_default();
        if let Some(max) = route_max {
            if entry.total >= max {
                drop_if_empty(&mut counts, route);
                return Err(route_full(route, max));
            }
        }
        let per_ip = entry.per_ip.get(&ip).copied().unwrap_or(0);
        if let Some(max) = ip_max {
            if per_ip >= max {
                return Err(ip_full(route, ip, max));
            }
        }
        entry.total += 1;
        *entry.per_ip.entry(ip).or_insert(0) += 1;
        drop(counts);
        Ok(ConnectionGuard {
            _slot: Some(Slot {
                counts: self.counts.clone(),
                route: route.to_string(),
                ip,
            }),
            shared: self.shared.as_ref().map(|caps| {
                Box::new(SharedSlot {
                    lease: caps.lease(route, ip, route_max, ip_max),
                    route: route.to_string(),
                    ip,
                    taken: false,
                })
            }),
        })
    }

    /// The cluster's caps' figures in Prometheus text (empty without a
    /// cluster).
    pub fn render(&self) -> String {
        self.shared
            .as_ref()
            .map_or_else(String::new, |c| c.render())
    }

    /// Connections open on `route` now (counted on routes with a cap).
    pub fn route_count(&self, route: &str) -> u32 {
        lock(&self.counts).routes.get(route).map_or(0, |r| r.total)
    }

    /// Connections open from `ip` on `route` now.
    pub fn ip_count(&self, route: &str, ip: IpAddr) -> u32 {
        lock(&self.counts)
            .routes
            .get(route)
            .and_then(|r| r.per_ip.get(&ip).copied())
            .unwrap_or(0)
    }

    /// Routes with at least one connection (the maps hold nothing else).
    pub fn tracked_routes(&self) -> usize {
        lock(&self.counts).routes.len()
    }
}

impl ConnectionGuard {
    /// Whether the cluster's caps still have to admit this connection
    /// ([`ConnectionGuard::take_shared`]).
    pub fn needs_shared(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| !s.taken)
    }

    /// Take the connection's lease in the cluster's caps (one Redis call;
    /// nothing without a cluster): the same 503 or 429 as the local count
    /// when the cluster is full. Redis unreachable admits (logged).
    pub async fn take_shared(&mut self) -> Result<(), Refusal> {
        let Some(s) = self.shared.as_mut().filter(|s| !s.taken) else {
            return Ok(());
        };
        s.taken = true;
        match s.lease.take().await {
            Verdict::Taken | Verdict::Unchecked(_) => Ok(()),
            Verdict::RouteFull => Err(route_full(&s.route, s.lease.route_max())),
            Verdict::IpFull => Err(ip_full(&s.route, s.ip, s.lease.ip_max())),
        }
    }
}

fn drop_if_empty(counts: &mut Counts, route: &str) {
    if counts.routes.get(route).is_some_and(|r| r.total == 0) {
        counts.routes.remove(route);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(r) = counts.routes.get_mut(&self.route) {
            r.total = r.total.saturating_sub(1);
            if let Some(n) = r.per_ip.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    r.per_ip.remove(&self.ip);
                }
            }
        }
        drop_if_empty(&mut counts, &self.route);
    }
}

/// The route's `Origin` policy: no header (not a browser) passes; exactly
/// one header must be in `allowed_origins` when the list is set; several
/// `Origin` lines or a non-text value are refused (403) as they cannot be
/// judged.
pub fn check_origin(headers: &HeaderMap, policy: &Policy) -> Result<(), Refusal> {
    if policy.allowed_origins.is_none() {
        return Ok(());
    }
    let mut lines = headers.get_all(http::header::ORIGIN).iter();
    let first = lines.next();
    let forbidden = |shown: &str| {
        Refusal::new(
            StatusCode::FORBIDDEN,
            Reason::Origin,
            format!("Origin {shown} is not allowed on this route (see allowed_origins)"),
        )
    };
    if lines.next().is_some() {
        return Err(forbidden("(several Origin headers)"));
    }
    match first {
        None => Ok(()),
        Some(v) => match v.to_str() {
            Ok(o) if policy.origin_allowed(Some(o)) => Ok(()),
            Ok(o) => Err(forbidden(o)),
            Err(_) => Err(forbidden("(not text)")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(route: Option<u32>, ip: Option<u32>) -> Policy {
        Policy {
            max_connections: route,
            max_connections_per_ip: ip,
            ..Policy::default()
        }
    }

    #[test]
    fn per_ip_cap_answers_429_and_frees_on_drop() {
        let l = ConnectionLimiter::new();
        let p = policy(None, Some(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = l.try_acquire("r", a, &p).unwrap();
        let _g2 = l.try_acquire("r", a, &p).unwrap();
        let err = l.try_acquire("r", a, &p).unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            err.header(http::header::RETRY_AFTER).unwrap(),
            &RETRY_AFTER_SECS.to_string()
        );
        // Another IP is not affected, another route neither.
        let _g3 = l.try_acquire("r", b, &p).unwrap();
        let _g4 = l.try_acquire("other", a, &p).unwrap();
        drop(g1);
        assert_eq!(l.ip_count("r", a), 1);
        let _g5 = l.try_acquire("r", a, &p).unwrap();
    }

    #[test]
    fn route_cap_answers_503() {
        let l = ConnectionLimiter::new();
        let p = policy(Some(1), None);
        let g = l.try_acquire("r", "::1".parse().unwrap(), &p).unwrap();
        let err = l.try_acquire("r", "::2".parse().unwrap(), &p).unwrap_err();
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(err.to_bytes().windows(14).any(|w| w == b"retry-after: 5"));
        drop(g);
        assert_eq!(l.route_count("r"), 0);
        assert_eq!(
            l.tracked_routes(),
            0,
            "no entry left for a route without connections"
        );
    }

    #[test]
    fn no_caps_admit_everything_and_count_nothing() {
        let l = ConnectionLimiter::new();
        let p = Policy::default();
        let guards: Vec<_> = (0..100)
            .map(|_| l.try_acquire("r", "10.0.0.1".parse().unwrap(), &p).unwrap())
            .collect();
        assert_eq!(l.route_count("r"), 0);
        assert_eq!(l.tracked_routes(), 0);
        drop(guards);
    }

    #[test]
    fn origin_policy() {
        let p = Policy {
            allowed_origins: Some(vec!["https://app.example".into()]),
            ..Policy::default()
        };
        let mut h = HeaderMap::new();
        assert!(check_origin(&h, &p).is_ok(), "no Origin: not a browser");
        h.insert("origin", "https://APP.example".parse().unwrap());
        assert!(check_origin(&h, &p).is_ok());
        h.insert("origin", "https://evil.example".parse().unwrap());
        assert_eq!(
            check_origin(&h, &p).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        h.insert("origin", "https://app.example".parse().unwrap());
        h.append("origin", "https://app.example".parse().unwrap());
        assert_eq!(
            check_origin(&h, &p).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        assert!(
            check_origin(&h, &Policy::default()).is_ok(),
            "no list: any origin"
        );
    }
}
