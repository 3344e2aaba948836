//! A WebSocket over HTTP/3 (RFC 9220, QUIC): send each line of standard
//! input, print each message that comes back.
//!
//! ```text
//! switchyard serve --tls --http3 ... &
//! cargo run -p switchyard-ws --example h3_client -- wss://localhost:8443/echo [CA_PEM]
//! ```

use futures_util::{SinkExt, StreamExt};
use switchyard::h3::connect_h3;
use switchyard::{ClientBuilder, CloseCode, Error, Message};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// One line in, one echo out, until `input` ends; then a normal close.
async fn run<I, O>(url: &str, client: &ClientBuilder, input: I, mut output: O) -> Result<(), Error>
where
    I: AsyncBufRead + Unpin,
    O: AsyncWrite + Unpin,
{
    let (mut ws, resp) = connect_h3(url, client).await?;
    eprintln!("connected over {:?} to {url}", resp.version());
    let mut lines = input.lines();
    while let Some(line) = lines.next_line().await? {
        ws.send(Message::text(line)).await?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    output.write_all(format!("{t}\n").as_bytes()).await?;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(Error::Closed),
            }
        }
    }
    output.flush().await?;
    ws.close(CloseCode::NORMAL, "end of input").await
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or("wss://localhost:8443/".into());
    let mut client = ClientBuilder::new();
    if let Some(ca) = args.next() {
        client = client.add_ca_file(ca);
    }
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    run(&url, &client, stdin, tokio::io::stdout()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use switchyard::h3;
    use switchyard::server::AcceptConfig;

    #[tokio::test]
    async fn echoes_lines_over_http3() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let endpoint = h3::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
        let port = endpoint.local_addr().unwrap().port();
        let ca = std::env::temp_dir().join(format!("switchyard-h3-client-example-{port}.pem"));
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(h3::serve(
            endpoint,
            AcceptConfig::default(),
            |_req, mut ws| {
                tokio::spawn(async move {
                    while let Some(Ok(m)) = ws.next().await {
                        let reply = match m {
                            Message::Text(t) => Message::text(t.to_uppercase()),
                            _ => continue,
                        };
                        if ws.send(reply).await.is_err() {
                            break;
                        }
                    }
                });
            },
            async move {
                let _ = stopped.await;
            },
        ));

        let client = ClientBuilder::new().add_ca_file(&ca);
        let mut output = Vec::new();
        let url = format!("wss://localhost:{port}/echo");
        run(&url, &client, &b"one\ntwo\n"[..], &mut output)
            .await
            .unwrap();
        let _ = std::fs::remove_file(&ca);
        assert_eq!(String::from_utf8(output).unwrap(), "ONE\nTWO\n");
    }
}
