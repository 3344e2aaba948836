//! Helpers shared by the integration tests: a raw peer that speaks frames
//! through a proto `Connection` (so tests control every byte and timing).
#![allow(dead_code)]

use std::time::Duration;

use switchyard::proto::{Connection, Limits, Message, Role};
use switchyard::WebSocket;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// A hand-driven peer: encodes with its own Connection, writes raw bytes.
pub struct RawPeer {
    pub io: DuplexStream,
    pub conn: Connection,
}

impl RawPeer {
    /// Encode `msg` as this peer would send it.
    pub fn encode(&mut self, msg: Message) -> Vec<u8> {
        self.conn.send(msg).expect("peer send");
        let out = self.conn.output().to_vec();
        let n = out.len();
        self.conn.advance_output(n);
        out
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("peer write");
    }

    /// Write what the peer's connection queued by itself (pongs, close reply).
    pub async fn flush_auto(&mut self) {
        let out = self.conn.output().to_vec();
        self.conn.advance_output(out.len());
        self.write_raw(&out).await;
    }

    pub async fn send(&mut self, msg: Message) {
        let b = self.encode(msg);
        self.write_raw(&b).await;
    }

    /// Read until one message can be decoded, or `None` on EOF / within 60 s.
    pub async fn recv(&mut self) -> Option<Message> {
        loop {
            match self.conn.poll_message() {
                Ok(Some(m)) => return Some(m),
                Ok(None) => {}
                Err(e) => panic!("peer got protocol error {e}"),
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(60), self.io.read(&mut buf))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.conn.receive(&buf[..n]);
        }
    }

    /// Whether the other side closed the transport (EOF) within 60 s,
    /// ignoring any bytes still arriving.
    pub async fn sees_eof(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(60), self.io.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A server-role WebSocket over an in-memory pipe, and a raw client peer.
pub fn server_ws(limits: Limits) -> (WebSocket<DuplexStream>, RawPeer) {
    pair(Role::Server, limits, 64 * 1024)
}

/// A WebSocket of `role` and a raw peer of the other role; `cap` is the
/// pipe's buffer in each direction.
pub fn pair(role: Role, limits: Limits, cap: usize) -> (WebSocket<DuplexStream>, RawPeer) {
    let (a, b) = tokio::io::duplex(cap);
    let ws = WebSocket::from_raw(a, Connection::new(role, limits), &[]);
    let peer_role = match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    (
        ws,
        RawPeer {
            io: b,
            conn: Connection::new(peer_role, Limits::default()),
        },
    )
}

/// The echo the servers of these tests run: every data message sent back,
/// until the WebSocket ends or a send fails.
pub async fn echo_data<S>(mut ws: WebSocket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt as _, StreamExt as _};
    while let Some(Ok(m)) = ws.next().await {
        if m.is_data() && ws.send(m).await.is_err() {
            return;
        }
    }
}

/// A rustls server configuration with a fresh self-signed certificate for
/// `names`, offering `alpn`, and the certificate with its key pair (its PEM
/// for a client's trust store, its public key for an SPKI pin).
pub fn self_signed_tls(
    names: &[&str],
    alpn: &[&[u8]],
) -> (rustls::ServerConfig, rcgen::CertifiedKey) {
    let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    let cert = rcgen::generate_simple_self_signed(names).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (cfg, cert)
}
