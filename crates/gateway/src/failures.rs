//! Refused and failed upgrade attempts, explained from the server's side:
//! the last [`FAILURES_KEPT`] in a ring ([`FailureLog`]), each with the
//! request's upgrade fields and the reason in `doctor` words with the fix,
//! and a count per reason since start. `GET /status/failures` serves
//! [`FailureLog::to_json`].

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{CONNECTION, ORIGIN, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::HeaderMap;
use serde::Serialize;
use switchyard::proto::HttpVersion;

use crate::outcome::Reason;

/// How many attempts the ring keeps.
pub const FAILURES_KEPT: usize = 100;

/// The request fields that explain an upgrade attempt, as sent (lossy
/// UTF-8, each cut at [`FIELD_CAP`] bytes: the ring's memory is bounded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UpgradeFields {
    /// `Upgrade`.
    pub upgrade: Option<String>,
    /// `Connection`.
    pub connection: Option<String>,
    /// `Origin`.
    pub origin: Option<String>,
    /// `Sec-WebSocket-Version`.
    pub sec_websocket_version: Option<String>,
}

/// Longest field value kept.
pub const FIELD_CAP: usize = 256;

impl UpgradeFields {
    /// The fields of `headers` (the first value of each).
    pub fn of(headers: &HeaderMap) -> Self {
        let field = |name| {
            headers.get(name).map(|v: &http::HeaderValue| {
                let bytes = v.as_bytes();
                String::from_utf8_lossy(&bytes[..bytes.len().min(FIELD_CAP)]).into_owned()
            })
        };
        UpgradeFields {
            upgrade: field(UPGRADE),
            connection: field(CONNECTION),
            origin: field(ORIGIN),
            sec_websocket_version: field(SEC_WEBSOCKET_VERSION),
        }
    }

    fn connection_names_upgrade(&self) -> bool {
        self.connection.as_deref().is_some_and(|c| {
            c.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    }
}

/// One refused or failed attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    /// The client's address.
    pub client: SocketAddr,
    /// The route label (`-` when no route matched).
    pub route: String,
    /// `h1`, `h2` or `h3`.
    pub protocol: &'static str,
    /// The request's upgrade fields.
    pub request: UpgradeFields,
    /// The reason label (as in `switchyard_upgrade_attempts_total`).
    pub reason: &'static str,
    /// What went wrong and what to do, in `doctor` words.
    pub explanation: String,
}

/// The ring of recent failures and the count per reason.
#[derive(Debug, Default)]
pub struct FailureLog {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    recent: VecDeque<Failure>,
    counts: BTreeMap<&'static str, u64>,
}

/// What [`FailureLog::to_json`] serves.
#[derive(Serialize)]
struct Report<'a> {
    counts: &'a BTreeMap<&'static str, u64>,
    recent: Vec<&'a Failure>,
}

impl FailureLog {
    /// Record an attempt that ended for `reason`; `detail` is the gateway's
    /// own message (the refusal's body or the outcome's detail).
    pub fn record(
        &self,
        client: SocketAddr,
        route: &str,
        protocol: HttpVersion,
        request: UpgradeFields,
        reason: Reason,
        detail: &str,
    ) {
        let explanation = explain(reason, &request, detail);
        let at_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let failure = Failure {
            at_unix,
            client,
            route: route.to_owned(),
            protocol: protocol.label(),
            request,
            reason: reason.label(),
            explanation,
        };
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner.counts.entry(reason.label()).or_insert(0) += 1;
        if inner.recent.len() == FAILURES_KEPT {
            inner.recent.pop_front();
        }
        inner.recent.push_back(failure);
    }

    /// The recent failures, oldest first.
    pub fn recent(&self) -> Vec<Failure> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.recent.iter().cloned().collect()
    }

    /// Every attempt kept or not, counted by reason label.
    pub fn counts(&self) -> BTreeMap<&'static str, u64> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.counts.clone()
    }

    /// `{"counts": {reason: n}, "recent": [failure, newest first]}`.
    pub fn to_json(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let report = Report {
            counts: &inner.counts,
            recent: inner.recent.iter().rev().collect(),
        };
        serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The reason in `doctor` words, with the fix: the cases an operator meets
/// most get their own sentence, the rest the gateway's message.
fn explain(reason: Reason, req: &UpgradeFields, detail: &str) -> String {
    match reason {
        Reason::UpgradeRequired if req.upgrade.is_some() && !req.connection_names_upgrade() => {
            format!(
                "Connection header without upgrade ({:?}): a proxy in front is stripping it; \
                 make it pass Connection: Upgrade (nginx: proxy_set_header Connection \"upgrade\")",
                req.connection.as_deref().unwrap_or("")
            )
        }
        Reason::UpgradeRequired if req.upgrade.is_none() && req.connection_names_upgrade() => {
            "Connection: upgrade without an Upgrade header: a proxy in front is stripping it; \
             make it pass Upgrade (nginx: proxy_set_header Upgrade $http_upgrade)"
                .to_owned()
        }
        Reason::Handshake => match req.sec_websocket_version.as_deref() {
            Some(v) if v.trim() != "13" => format!(
                "version {v}: client too old; WebSocket is version 13 (RFC 6455): \
                 upgrade the client library"
            ),
            _ => detail.to_owned(),
        },
        Reason::UpstreamStatus => format!(
            "backend answered {}: it ignored Upgrade; check that the backend serves \
             WebSocket on this path, and that nothing between strips Upgrade",
            detail.trim_start_matches("the upstream answered ")
        ),
        _ => detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(upgrade: Option<&str>, connection: Option<&str>) -> UpgradeFields {
        UpgradeFields {
            upgrade: upgrade.map(Into::into),
            connection: connection.map(Into::into),
            ..UpgradeFields::default()
        }
    }

    #[test]
    fn the_ring_keeps_the_last_hundred_and_counts_all() {
        let log = FailureLog::default();
        let client = "127.0.0.1:1".parse().unwrap();
        for i in 0..(FAILURES_KEPT + 5) {
            log.record(
                client,
                "/r",
                HttpVersion::Http1,
                UpgradeFields::default(),
                Reason::Origin,
                &format!("n{i}"),
            );
        }
        let recent = log.recent();
        assert_eq!(recent.len(), FAILURES_KEPT);
        assert_eq!(recent[0].explanation, "n5");
        let json: serde_json::Value = serde_json::from_str(&log.to_json()).unwrap();
        assert_eq!(json["counts"]["origin"], 105);
        assert_eq!(json["recent"][0]["explanation"], "n104", "newest first");
    }

    #[test]
    fn stripped_connection_or_upgrade_is_named() {
        let e = explain(
            Reason::UpgradeRequired,
            &fields(Some("websocket"), Some("keep-alive")),
            "x",
        );
        assert!(e.starts_with("Connection header without upgrade"), "{e}");
        let e = explain(Reason::UpgradeRequired, &fields(None, Some("Upgrade")), "x");
        assert!(e.contains("without an Upgrade header"), "{e}");
        let e = explain(Reason::UpgradeRequired, &fields(None, None), "plain");
        assert_eq!(e, "plain");
    }

    #[test]
    fn field_values_are_capped() {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, "x".repeat(1000).parse().unwrap());
        assert_eq!(UpgradeFields::of(&h).origin.unwrap().len(), FIELD_CAP);
    }
}
