//! A client of the gateway's admin listener (`[admin]`): `reload --admin`
//! and `monitor --admin` ask it with one HTTP/1.1 request per connection,
//! with the bearer token of `[admin] token_file` when there is one.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use switchyard_gateway::config::AdminToken;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest an answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin listener at `addr`.
#[derive(Debug, Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: Option<AdminToken>,
}

/// An answer: its status code and body.
#[derive(Debug)]
pub struct AdminAnswer {
    pub status: u16,
    pub body: String,
}

impl AdminClient {
    /// A client of `addr`; with `token_file`, the token read from it (the
    /// same file as the server's `[admin] token_file`).
    pub fn new(addr: SocketAddr, token_file: Option<&Path>) -> anyhow::Result<AdminClient> {
        let token = match token_file {
            None => None,
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the admin token from {}", f.display()))?;
                let token =
                    AdminToken::parse(&text).map_err(|why| anyhow!("{}: {why}", f.display()))?;
                Some(token)
            }
        };
        Ok(AdminClient { addr, token })
    }

    /// `METHOD PATH` and the whole answer.
    pub async fn request(&self, method: &str, path: &str) -> anyhow::Result<AdminAnswer> {
        let addr = self.addr;
        let ask = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let auth = self
                .token
                .as_ref()
                .map(|t| format!("authorization: Bearer {}\r\n", t.secret()))
                .unwrap_or_default();
            s.write_all(
                format!(
                    "{method} {path} HTTP/1.1\r\nhost: admin\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(ANSWER_TIMEOUT, ask)
            .await
            .map_err(|_| anyhow!("the admin listener at {addr} did not answer within 10 s"))?
            .with_context(|| format!("cannot reach the admin listener at {addr}"))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .with_context(|| format!("{addr} did not answer HTTP: is it the admin address?"))?;
        if status == 401 {
            bail!(
                "the admin listener at {addr} refused the request (401): {}",
                if self.token.is_some() {
                    "wrong token; give the file of its [admin] token_file to --token-file"
                } else {
                    "it wants a bearer token; give the file of its [admin] token_file to --token-file"
                }
            );
        }
        Ok(AdminAnswer {
            status,
            body: body.to_string(),
        })
    }
}
