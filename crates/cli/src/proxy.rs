//! Tunnels through a proxy: HTTP `CONNECT` (RFC 9110 §9.3.6, with Basic
//! `Proxy-Authorization` from the URL's userinfo) and SOCKS5 (RFC 1928, with
//! the username/password method of RFC 1929). Both hand back the TCP stream
//! positioned at the first byte of the tunnel, so the TLS and WebSocket
//! handshakes run over it unchanged.

use base64::Engine;
use http::Uri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest proxy answer head we read to a CONNECT.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// A proxy from `--proxy URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub kind: ProxyKind,
    pub host: String,
    pub port: u16,
    /// Username and password (percent-decoded) from the URL's userinfo.
    pub auth: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    /// `http://`: `CONNECT host:port`.
    HttpConnect,
    /// `socks5://` or `socks5h://`: the proxy resolves the name.
    Socks5,
}

/// Why the tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("invalid --proxy URL {url:?}: {why}")]
    Url { url: String, why: &'static str },
    #[error("cannot reach the proxy {proxy}: {source}; check the --proxy address and that the proxy runs")]
    Reach {
        proxy: String,
        source: std::io::Error,
    },
    #[error("I/O error talking to the proxy {proxy}: {source}")]
    Io {
        proxy: String,
        source: std::io::Error,
    },
    #[error("the proxy {proxy} refused CONNECT {target} with \"{status_line}\"{hint}")]
    ConnectRefused {
        proxy: String,
        target: String,
        status_line: String,
        hint: &'static str,
    },
    #[error("the proxy {proxy} sent an answer to CONNECT that is not HTTP ({what}); is it an HTTP proxy? for SOCKS use socks5://")]
    BadConnectAnswer { proxy: String, what: &'static str },
    #[error("the SOCKS5 proxy {proxy} {what}")]
    Socks { proxy: String, what: String },
}

impl Proxy {
    /// Parse `http://[user:pass@]host:port` or `socks5://[user:pass@]host:port`.
    pub fn parse(url: &str) -> Result<Proxy, ProxyError> {
        let bad = |why| ProxyError::Url {
            url: url.to_owned(),
            why,
        };
        let uri: Uri = url
            .parse()
            .map_err(|_| bad("not a URL; use http://host:port or socks5://host:port"))?;
        let (kind, default_port) = match uri.scheme_str().map(|s| s.to_ascii_lowercase()) {
            Some(s) if s == "http" => (ProxyKind::HttpConnect, 8080),
            Some(s) if s == "socks5" || s == "socks5h" => (ProxyKind::Socks5, 1080),
            Some(_) => return Err(bad("the scheme must be http:// or socks5://")),
            None => {
                return Err(bad(
                    "missing scheme; use http://host:port or socks5://host:port",
                ))
            }
        };
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        let port = authority.port_u16().unwrap_or(default_port);
        let auth = match authority.as_str().rsplit_once('@') {
            None => None,
            Some((userinfo, _)) => {
                let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                Some((percent_decode(user), percent_decode(pass)))
            }
        };
        Ok(Proxy {
            kind,
            host,
            port,
            auth,
        })
    }

    fn display(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Connect to the proxy and open a tunnel to `host:port`.
    pub async fn tunnel(&self, host: &str, port: u16) -> Result<TcpStream, ProxyError> {
        let proxy = self.display();
        let mut tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|source| ProxyError::Reach {
                proxy: proxy.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match self.kind {
            ProxyKind::HttpConnect => {
                http_connect(&mut tcp, &proxy, host, port, self.auth.as_ref()).await?
            }
            ProxyKind::Socks5 => {
                socks5_connect(&mut tcp, &proxy, host, port, self.auth.as_ref()).await?
            }
        }
        Ok(tcp)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `host:port` as a CONNECT target / Host value (IPv6 in brackets).
fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Send `CONNECT` and read the answer head byte by byte (so nothing of the
/// tunnel is consumed). 2xx opens the tunnel.
pub async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    proxy: &str,
    host: &str,
    port: u16,
    auth: Option<&(String, String)>,
) -> Result<(), ProxyError> {
    let target = authority(host, port);
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    let io = |source| ProxyError::Io {
        proxy: proxy.to_owned(),
        source,
    };
    s.write_all(req.as_bytes()).await.map_err(io)?;
    s.flush().await.map_err(io)?;

    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_CONNECT_HEAD {
            return Err(ProxyError::BadConnectAnswer {
                proxy: proxy.to_owned(),
                what: "its answer head exceeds 16 KiB",
            });
        }
        let n = s.read(&mut byte).await.map_err(io)?;
        if n == 0 {
            return Err(ProxyError::BadConnectAnswer {
                proxy: proxy.to_owned(),
                what: "it closed the connection before the end of its answer",
            });
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("").trim().to_owned();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let code = parts.next().and_then(|c| c.parse::<u16>().ok());
    if !version.starts_with("HTTP/1.") {
        return Err(ProxyError::BadConnectAnswer {
            proxy: proxy.to_owned(),
            what: "its status line does not start with HTTP/1.x",
        });
    }
    match code {
        Some(200..=299) => Ok(()),
        Some(c) => Err(ProxyError::ConnectRefused {
            proxy: proxy.to_owned(),
            target,
            status_line,
            hint: match c {
                407 => {
                    if auth.is_some() {
                        " — the proxy rejected the credentials in the --proxy URL"
                    } else {
                        " — the proxy wants credentials: use --proxy http://USER:PASSWORD@host:port"
                    }
                }
                403 => " — the proxy's policy forbids this destination or port",
                405 | 501 => " — this proxy does not support CONNECT tunnels",
                502..=504 => " — the proxy could not reach the WebSocket server",
                _ => "",
            },
        }),
        None => Err(ProxyError::BadConnectAnswer {
            proxy: proxy.to_owned(),
            what: "its status line has no numeric status",
        }),
    }
}

/// RFC 1928 CONNECT, with RFC 1929 username/password when `auth` is set.
/// Names are sent as names (the proxy resolves them, like `socks5h`).
pub async fn socks5_connect<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    proxy: &str,
    host: &str,
    port: u16,
    auth: Option<&(String, String)>,
) -> Result<(), ProxyError> {
    let fail = |what: String| ProxyError::Socks {
        proxy: proxy.to_owned(),
        what,
    };
    let io = |source| ProxyError::Io {
        proxy: proxy.to_owned(),
        source,
    };
    // Greeting: version 5, the methods we offer.
    let greeting: &[u8] = if auth.is_some() {
        &[5, 2, 0x00, 0x02]
    } else {
        &[5, 1, 0x00]
    };
    s.write_all(greeting).await.map_err(io)?;
    let mut reply = [0u8; 2];
    s.read_exact(&mut reply).await.map_err(io)?;
    if reply[0] != 5 {
        return Err(fail(format!(
            "answered with version {} instead of 5; is it a SOCKS5 proxy? for an HTTP proxy use http://",
            reply[0]
        )));
    }
    match reply[1] {
        0x00 => {}
        0x02 => {
            let Some((user, pass)) = auth else {
                return Err(fail(
                    "chose username/password authentication, which we did not offer".into(),
                ));
            };
            if user.len() > 255 || pass.len() > 255 {
                return Err(fail(
                    "cannot take a username or password over 255 bytes (RFC 1929)".into(),
                ));
            }
            let mut msg = Vec::with_capacity(3 + user.len() + pass.len());
            msg.push(1);
            msg.push(user.len() as u8);
            msg.extend_from_slice(user.as_bytes());
            msg.push(pass.len() as u8);
            msg.extend_from_slice(pass.as_bytes());
            s.write_all(&msg).await.map_err(io)?;
            let mut st = [0u8; 2];
            s.read_exact(&mut st).await.map_err(io)?;
            if st[1] != 0 {
                return Err(fail(
                    "rejected the username/password from the --proxy URL".into(),
                ));
            }
        }
        0xFF => {
            return Err(fail(if auth.is_some() {
                "accepts none of our authentication methods (none, username/password)".into()
            } else {
                "requires authentication: use --proxy socks5://USER:PASSWORD@host:port".into()
            }))
        }
        m => {
            return Err(fail(format!(
                "chose method {m:#04x}, which we did not offer"
            )))
        }
    }

    // CONNECT request.
    let mut req = vec![5, 1, 0];
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        match ip {
            std::net::IpAddr::V4(v4) => {
                req.push(1);
                req.extend_from_slice(&v4.octets());
            }
            std::net::IpAddr::V6(v6) => {
                req.push(4);
                req.extend_from_slice(&v6.octets());
            }
        }
    } else {
        if host.len() > 255 {
            return Err(fail("cannot take a host name over 255 bytes".into()));
        }
        req.push(3);
        req.push(host.len() as u8);
        req.extend_from_slice(host.as_bytes());
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).await.map_err(io)?;
    s.flush().await.map_err(io)?;

    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.map_err(io)?;
    if head[0] != 5 {
        return Err(fail(format!(
            "answered CONNECT with version {} instead of 5",
            head[0]
        )));
    }
    if head[1] != 0 {
        return Err(fail(format!(
            "refused CONNECT {}: {}",
            authority(host, port),
            socks5_reply(head[1])
        )));
    }
    // The bound address: skip it.
    let skip = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await.map_err(io)?;
            usize::from(len[0]) + 2
        }
        t => return Err(fail(format!("sent an unknown address type {t}"))),
    };
    let mut sink = [0u8; 257];
    s.read_exact(&mut sink[..skip]).await.map_err(io)?;
    Ok(())
}

/// RFC 1928 §6 reply codes.
pub fn socks5_reply(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused by the destination",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown error code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_socks_urls() {
        let p = Proxy::parse("http://alice:s%40cret@proxy.example:3128").unwrap();
        assert_eq!(p.kind, ProxyKind::HttpConnect);
        assert_eq!((p.host.as_str(), p.port), ("proxy.example", 3128));
        assert_eq!(p.auth, Some(("alice".into(), "s@cret".into())));
        let p = Proxy::parse("socks5://[::1]").unwrap();
        assert_eq!(p.kind, ProxyKind::Socks5);
        assert_eq!((p.host.as_str(), p.port, p.auth), ("::1", 1080, None));
        assert!(matches!(
            Proxy::parse("ftp://x:1"),
            Err(ProxyError::Url { .. })
        ));
        assert!(matches!(Proxy::parse("x:1"), Err(ProxyError::Url { .. })));
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%"), "%zz%");
    }

    #[tokio::test]
    async fn http_connect_sends_auth_and_accepts_200() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let srv = tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let n = server.read(&mut buf).await.unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            server
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\nTUNNEL")
                .await
                .unwrap();
            req
        });
        let auth = ("u".to_string(), "p".to_string());
        http_connect(&mut client, "p:1", "example.com", 443, Some(&auth))
            .await
            .unwrap();
        let req = srv.await.unwrap();
        assert!(
            req.starts_with("CONNECT example.com:443 HTTP/1.1\r\n"),
            "{req}"
        );
        // base64("u:p") = "dTpw"
        assert!(req.contains("Proxy-Authorization: Basic dTpw\r\n"), "{req}");
        // The tunnel's first bytes were not consumed.
        let mut rest = [0u8; 6];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"TUNNEL");
    }

    #[tokio::test]
    async fn http_connect_407_says_credentials() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1024];
            let _ = server.read(&mut buf).await;
            let _ = server
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                .await;
        });
        let e = http_connect(&mut client, "p:1", "h", 80, None)
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("407"), "{msg}");
        assert!(msg.contains("USER:PASSWORD"), "{msg}");
    }

    #[tokio::test]
    async fn socks5_refusal_names_the_reply_code() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut g = [0u8; 3];
            server.read_exact(&mut g).await.unwrap();
            server.write_all(&[5, 0]).await.unwrap();
            let mut req = [0u8; 4 + 1 + 4 + 2];
            server.read_exact(&mut req).await.unwrap();
            server
                .write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0])
                .await
                .unwrap();
        });
        let e = socks5_connect(&mut client, "p:1", "host", 80, None)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("connection refused"), "{e}");
    }
}
