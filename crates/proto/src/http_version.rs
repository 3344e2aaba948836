//! The HTTP version a WebSocket runs over: HTTP/1.1 `Upgrade` (RFC 6455),
//! or extended CONNECT on an HTTP/2 (RFC 8441) or HTTP/3 (RFC 9220) stream.

use std::fmt;
use std::str::FromStr;

/// Which HTTP version carries a WebSocket (or serves a listener).
///
/// [`HttpVersion::label`] is the short name for logs, metrics and
/// configuration (`h1`, `h2`, `h3`; [`FromStr`] parses it back); `Display`
/// is the name for people (`HTTP/1.1`, `HTTP/2`, `HTTP/3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HttpVersion {
    /// HTTP/1.1 `Upgrade` (RFC 9110 §7.8, RFC 6455).
    Http1,
    /// Extended CONNECT on an HTTP/2 stream (RFC 8441).
    Http2,
    /// Extended CONNECT on an HTTP/3 stream (RFC 9220).
    Http3,
}

impl HttpVersion {
    /// Every version, oldest first.
    pub const ALL: [HttpVersion; 3] = [HttpVersion::Http1, HttpVersion::Http2, HttpVersion::Http3];

    /// `"h1"`, `"h2"` or `"h3"`: the name in logs, metrics and configuration.
    pub fn label(self) -> &'static str {
        match self {
            HttpVersion::Http1 => "h1",
            HttpVersion::Http2 => "h2",
            HttpVersion::Http3 => "h3",
        }
    }
}

impl fmt::Display for HttpVersion {
    /// `HTTP/1.1`, `HTTP/2` or `HTTP/3`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HttpVersion::Http1 => "HTTP/1.1",
            HttpVersion::Http2 => "HTTP/2",
            HttpVersion::Http3 => "HTTP/3",
        })
    }
}

/// A string that is not the label of an [`HttpVersion`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown HTTP version {0:?}; use h1, h2 or h3")]
pub struct UnknownHttpVersion(pub String);

impl FromStr for HttpVersion {
    type Err = UnknownHttpVersion;

    /// The inverse of [`HttpVersion::label`] (exact, lowercase).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HttpVersion::ALL
            .into_iter()
            .find(|v| v.label() == s)
            .ok_or_else(|| UnknownHttpVersion(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_back_and_names_read_as_http() {
        for v in HttpVersion::ALL {
            assert_eq!(v.label().parse::<HttpVersion>(), Ok(v));
        }
        assert_eq!(HttpVersion::Http1.label(), "h1");
        assert_eq!(HttpVersion::Http1.to_string(), "HTTP/1.1");
        assert_eq!(HttpVersion::Http3.to_string(), "HTTP/3");
        let err = "H2".parse::<HttpVersion>().unwrap_err();
        assert_eq!(err, UnknownHttpVersion("H2".into()));
        assert!(err.to_string().contains("h1, h2 or h3"));
        assert!("http/2".parse::<HttpVersion>().is_err());
    }
}
