//! `switchyard connect` in pipe mode against real sockets: round trips, exit
//! statuses, diagnoses, headers, subprotocols, proxies, reconnects.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchyard::server::{accept_request, read_request_head, AcceptConfig};
use switchyard::{CloseCode, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;
use common::{echo_server, spawn_server};

const WAIT: Duration = Duration::from_secs(20);

struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(args: &[&str]) -> Client {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("connect")
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("CLI_TEST_LOG").unwrap_or("warn".into()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    let mut stderr_pipe = child.stderr.take().unwrap();
    let (etx, stderr) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        let _ = etx.send(s);
    });
    let stdin = child.stdin.take();
    Client {
        child,
        stdin,
        lines,
        stderr,
    }
}

impl Client {
    fn send_line(&mut self, l: &str) {
        let s = self.stdin.as_mut().unwrap();
        writeln!(s, "{l}").unwrap();
        s.flush().unwrap();
    }
    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("no line from connect in time")
    }
    fn close_stdin(&mut self) {
        self.stdin = None;
    }
    /// Wait for the exit; return the status code and everything on stderr.
    fn finish(mut self) -> (i32, String) {
        self.stdin = None;
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "connect did not exit in time"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = self.stderr.recv_timeout(WAIT).unwrap_or_default();
        (status.code().expect("killed by a signal"), err)
    }
}

#[test]
fn pipe_round_trip_and_clean_exit_on_eof() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let mut c = connect(&[&url]);
    for l in ["hello", "second line", "ünïcode ✓", ""] {
        c.send_line(l);
        assert_eq!(c.line(), l);
    }
    c.close_stdin();
    let (code, err) = c.finish();
    assert_eq!(code, 0, "stderr: {err}");
    assert!(err.contains("closed"), "{err}");
}

#[test]
fn many_lines_piped_at_once_all_come_back_in_order() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let mut c = connect(&[&url, "--no-deflate"]);
    for i in 0..200 {
        c.send_line(&format!("line {i}"));
    }
    c.close_stdin();
    for i in 0..200 {
        assert_eq!(c.line(), format!("line {i}"));
    }
    let (code, err) = c.finish();
    assert_eq!(code, 0, "stderr: {err}");
}

#[test]
fn json_flag_pretty_prints() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    let mut c = connect(&["--json", &url]);
    c.send_line(r#"{"a":[1,2]}"#);
    let got: Vec<String> = (0..6).map(|_| c.line()).collect();
    assert_eq!(got.join("\n"), "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
    assert_eq!(c.finish().0, 0);
}

/// A server that answers every request with `answer`.
fn fixed_answer_server(answer: &'static [u8]) -> SocketAddr {
    spawn_server(move |l| async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    })
}

#[test]
fn a_200_answer_is_diagnosed_and_exits_1() {
    let addr = fixed_answer_server(
        b"HTTP/1.1 200 OK\r\nServer: fake\r\nVia: 1.1 middlebox\r\nContent-Length: 6\r\n\r\nhello\n",
    );
    let url = format!("ws://{addr}/ws");
    let c = connect(&[&url]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "stderr: {err}");
    assert!(
        err.contains("server answered 200 OK instead of 101 — it ignored the Upgrade header"),
        "{err}"
    );
    assert!(err.contains("proxy"), "{err}");
    assert!(err.contains("Via: 1.1 middlebox"), "{err}");
    assert!(err.contains(&format!("switchyard doctor {url}")), "{err}");
    assert!(
        err.contains(&format!("try `switchyard connect --transport sse {url}`")),
        "{err}"
    );
}

#[test]
fn fallback_transports_round_trip_and_close_cleanly() {
    let addr = echo_server();
    let url = format!("ws://{addr}/echo");
    for t in ["sse", "poll"] {
        let mut c = connect(&["--transport", t, &url]);
        for l in ["hello", "ünïcode ✓", ""] {
            c.send_line(l);
            assert_eq!(c.line(), l, "over {t}");
        }
        c.close_stdin();
        let (code, err) = c.finish();
        assert_eq!(code, 0, "stderr: {err}");
        assert!(
            err.contains(&format!("over a fallback session ({t}, open in")),
            "{err}"
        );
        assert!(err.contains("closed"), "{err}");
    }
}

/// `--transport sse|poll --http3`: the session's requests over QUIC, to the
/// gateway's HTTP/3 listener.
#[test]
fn fallback_transports_run_over_http3() {
    let (_srv, addrs) =
        common::switchyard(&["serve", "--tls", "--http3", "--listen", "127.0.0.1:0"], 1);
    let url = format!("wss://localhost:{}/echo", addrs[0].port());
    for t in ["sse", "poll"] {
        let mut c = connect(&["--transport", t, "--http3", "--insecure", &url]);
        c.send_line("over quic");
        assert_eq!(c.line(), "over quic", "over {t}");
        c.close_stdin();
        let (code, err) = c.finish();
        assert_eq!(code, 0, "stderr: {err}");
        assert!(
            err.contains(&format!(
                "over a fallback session ({t} over HTTP/3, open in"
            )),
            "{err}"
        );
    }
}

#[test]
fn fallback_refusals_say_why() {
    let addr = echo_server();
    // Nothing serves sessions there.
    let c = connect(&["--transport", "sse", &format!("ws://{addr}/nowhere")]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "stderr: {err}");
    assert!(err.contains("404"), "{err}");
    assert!(err.contains("nothing serves fallback sessions"), "{err}");
    // WebSocket-only flags are usage errors.
    let c = connect(&[
        "--transport",
        "poll",
        "--reconnect",
        &format!("ws://{addr}/echo"),
    ]);
    let (code, err) = c.finish();
    assert_eq!(code, 2, "stderr: {err}");
    assert!(
        err.contains("--reconnect applies to --transport ws"),
        "{err}"
    );
}

#[test]
fn show_handshake_prints_both_heads_even_on_failure() {
    let addr = fixed_answer_server(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n");
    let url = format!("ws://{addr}/ws");
    let c = connect(&[&url, "--show-handshake"]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("> GET /ws HTTP/1.1"), "{err}");
    assert!(err.contains("> upgrade: websocket"), "{err}");
    assert!(err.contains("< HTTP/1.1 403 Forbidden"), "{err}");
    assert!(err.contains("403 Forbidden instead of 101"), "{err}");
    // The server's own reason phrase is what the user sees, in both places.
    let addr =
        fixed_answer_server(b"HTTP/1.1 403 Origin not on the list\r\nContent-Length: 0\r\n\r\n");
    let c = connect(&[&format!("ws://{addr}/ws"), "--show-handshake"]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("< HTTP/1.1 403 Origin not on the list"),
        "{err}"
    );
    assert!(
        err.contains("403 Origin not on the list instead of 101"),
        "{err}"
    );
}

#[test]
fn refused_port_exits_1_with_diagnosis() {
    // Bind then drop: the port is (almost certainly) free now.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = connect(&[&format!("ws://{addr}/")]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing is listening"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let c = connect(&["ws://127.0.0.1:1/", "-H", "no colon here"]);
    assert_eq!(c.finish().0, 2);
    let c = connect(&["ftp://127.0.0.1/"]);
    let (code, err) = c.finish();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("ws://"), "{err}");
}

/// Accept one WebSocket per connection; `each(n, request, ws)` drives it.
fn ws_server<F, Fut>(subprotocols: &'static [&'static str], each: F) -> SocketAddr
where
    F: Fn(usize, http::Request<()>, switchyard::WebSocket<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    spawn_server(move |l| async move {
        let cfg = AcceptConfig::default().handshake(
            switchyard::proto::handshake::ServerConfig::default()
                .subprotocols(subprotocols.iter().map(|s| s.to_string())),
        );
        let mut n = 0;
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let Ok((req, leftover)) = read_request_head(&mut s, &cfg.limits).await else {
                continue;
            };
            let Ok(ws) = accept_request(s, &req, leftover, &cfg).await else {
                continue;
            };
            n += 1;
            // One at a time: each test drives its connections in order.
            each(n, req, ws).await;
        }
    })
}

#[test]
fn headers_origin_and_subprotocol_reach_the_server() {
    let addr = ws_server(&["chat.v2"], |_, req, mut ws| async move {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .map(|v| v.to_str().unwrap_or("").to_owned())
                .unwrap_or_default()
        };
        let report = format!(
            "x-one={} x-two={} origin={} offered={} chosen={}",
            h("x-one"),
            h("x-two"),
            h("origin"),
            h("sec-websocket-protocol"),
            ws.subprotocol().unwrap_or("-")
        );
        let _ = ws.send(Message::text(report)).await;
        while let Some(Ok(_)) = ws.next().await {}
    });
    let url = format!("ws://{addr}/");
    // Flags before and after the URL.
    let c = connect(&[
        "-H",
        "X-One: 1",
        &url,
        "--header",
        "X-Two: two words",
        "--origin",
        "https://app.example",
        "--subprotocol",
        "chat.v1",
        "--subprotocol",
        "chat.v2",
    ]);
    assert_eq!(
        c.line(),
        "x-one=1 x-two=two words origin=https://app.example offered=chat.v1, chat.v2 chosen=chat.v2"
    );
    let (code, err) = c.finish();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("subprotocol chat.v2"), "{err}");
}

#[test]
fn server_close_codes_map_to_exit_statuses() {
    // 1000 from the server: 0. 4001: 3. Dropped TCP: 4.
    let addr = ws_server(&[], |n, _, mut ws| async move {
        match n {
            1 => {
                let _ = ws.close(CloseCode::NORMAL, "done").await;
            }
            2 => {
                let _ = ws.close(CloseCode(4001), "kicked").await;
            }
            _ => drop(ws),
        }
    });
    let url = format!("ws://{addr}/");
    let c = connect(&[&url]);
    let (code, err) = c.finish_keep_stdin();
    assert_eq!(code, 0, "{err}");
    let c = connect(&[&url]);
    let (code, err) = c.finish_keep_stdin();
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("4001") && err.contains("kicked"), "{err}");
    let c = connect(&[&url]);
    let (code, err) = c.finish_keep_stdin();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("1006"), "{err}");
}

impl Client {
    /// Like `finish`, but stdin stays open so the server decides the end.
    fn finish_keep_stdin(mut self) -> (i32, String) {
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(std::time::Instant::now() < deadline, "no exit in time");
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = self.stderr.recv_timeout(WAIT).unwrap_or_default();
        (status.code().expect("killed by a signal"), err)
    }
}

#[test]
fn reconnects_after_the_server_drops_the_connection() {
    let addr = ws_server(&[], |n, _, mut ws| async move {
        let _ = ws.send(Message::text(format!("connection {n}"))).await;
        if n == 1 {
            return; // drop TCP without a close frame
        }
        while let Some(Ok(m)) = ws.next().await {
            if m.is_data() {
                let _ = ws.send(m).await;
            }
        }
    });
    let url = format!("ws://{addr}/");
    let mut c = connect(&[&url, "--reconnect"]);
    assert_eq!(c.line(), "connection 1");
    assert_eq!(c.line(), "connection 2");
    c.send_line("still here");
    assert_eq!(c.line(), "still here");
    let (code, err) = c.finish();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("reconnecting in 250 ms (attempt 1)"), "{err}");
    assert!(err.contains("1006"), "{err}");
}

#[test]
fn max_reconnects_gives_up_with_the_last_status() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let c = connect(&[
        &format!("ws://{addr}/"),
        "--reconnect",
        "--max-reconnects",
        "2",
        "--reconnect-max-delay",
        "300ms",
    ]);
    let (code, err) = c.finish_keep_stdin();
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("nothing is listening").count(), 3, "{err}");
    assert!(err.contains("giving up after 2 attempts"), "{err}");
}

/// Copy both ways between two streams until either ends.
async fn splice(a: TcpStream, b: TcpStream) {
    let (mut a, mut b) = (a, b);
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

#[test]
fn http_connect_proxy_with_basic_auth() {
    let echo = echo_server();
    let (seen_tx, seen_rx) = mpsc::channel::<String>();
    let proxy = spawn_server(move |l| async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read_exact(&mut b).await.is_err() {
                    return;
                }
                head.push(b[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let _ = seen_tx.send(head.clone());
            // base64("user:p@ss")
            if !head.contains("Proxy-Authorization: Basic dXNlcjpwQHNz\r\n") {
                let _ = s
                    .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                    .await;
                continue;
            }
            let target = head
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let Ok(up) = TcpStream::connect(target).await else {
                let _ = s.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                continue;
            };
            let _ = s
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await;
            tokio::spawn(splice(s, up));
        }
    });
    let url = format!("ws://{echo}/echo");
    let mut c = connect(&[&url, "--proxy", &format!("http://user:p%40ss@{proxy}")]);
    c.send_line("through the tunnel");
    assert_eq!(c.line(), "through the tunnel");
    let (code, err) = c.finish();
    assert_eq!(code, 0, "{err}");
    let head = seen_rx.recv_timeout(WAIT).unwrap();
    assert!(
        head.starts_with(&format!("CONNECT {echo} HTTP/1.1\r\n")),
        "{head}"
    );

    // Without credentials: the 407 is explained, exit 1.
    let c = connect(&[&url, "--proxy", &format!("http://{proxy}")]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("407"), "{err}");
    assert!(err.contains("USER:PASSWORD"), "{err}");
}

#[test]
fn socks5_proxy_with_username_password() {
    let echo = echo_server();
    let (seen_tx, seen_rx) = mpsc::channel::<(String, String, String)>();
    let proxy = spawn_server(move |l| async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut g = [0u8; 2];
                s.read_exact(&mut g).await.ok()?;
                let mut methods = vec![0u8; usize::from(g[1])];
                s.read_exact(&mut methods).await.ok()?;
                if !methods.contains(&2) {
                    s.write_all(&[5, 0xff]).await.ok()?;
                    return None;
                }
                s.write_all(&[5, 2]).await.ok()?;
                let mut v = [0u8; 2];
                s.read_exact(&mut v).await.ok()?;
                let mut user = vec![0u8; usize::from(v[1])];
                s.read_exact(&mut user).await.ok()?;
                let mut pl = [0u8; 1];
                s.read_exact(&mut pl).await.ok()?;
                let mut pass = vec![0u8; usize::from(pl[0])];
                s.read_exact(&mut pass).await.ok()?;
                s.write_all(&[1, 0]).await.ok()?;
                let mut req = [0u8; 4];
                s.read_exact(&mut req).await.ok()?;
                let host = match req[3] {
                    1 => {
                        let mut a = [0u8; 4];
                        s.read_exact(&mut a).await.ok()?;
                        std::net::Ipv4Addr::from(a).to_string()
                    }
                    3 => {
                        let mut n = [0u8; 1];
                        s.read_exact(&mut n).await.ok()?;
                        let mut name = vec![0u8; usize::from(n[0])];
                        s.read_exact(&mut name).await.ok()?;
                        String::from_utf8(name).ok()?
                    }
                    _ => return None,
                };
                let mut port = [0u8; 2];
                s.read_exact(&mut port).await.ok()?;
                let port = u16::from_be_bytes(port);
                let _ = seen_tx.send((
                    String::from_utf8_lossy(&user).into_owned(),
                    String::from_utf8_lossy(&pass).into_owned(),
                    format!("{host}:{port}"),
                ));
                let up = TcpStream::connect((host.as_str(), port)).await.ok()?;
                s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await.ok()?;
                splice(s, up).await;
                Some(())
            });
        }
    });
    let url = format!("ws://{echo}/echo");
    let mut c = connect(&[&url, "--proxy", &format!("socks5://alice:secret@{proxy}")]);
    c.send_line("via socks");
    assert_eq!(c.line(), "via socks");
    let (code, err) = c.finish();
    assert_eq!(code, 0, "{err}");
    let (user, pass, target) = seen_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (user.as_str(), pass.as_str(), target),
        ("alice", "secret", echo.to_string())
    );

    // No credentials: the proxy refuses every method we offer.
    let c = connect(&[&url, "--proxy", &format!("socks5://{proxy}")]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("requires authentication"), "{err}");
}

#[test]
fn binary_messages_are_base64_or_hex() {
    let addr = ws_server(&[], |_, _, mut ws| async move {
        let _ = ws
            .send(Message::binary(bytes::Bytes::from_static(&[
                0, 1, 0xfe, 0xff,
            ])))
            .await;
        while let Some(Ok(_)) = ws.next().await {}
    });
    let url = format!("ws://{addr}/");
    let c = connect(&[&url]);
    assert_eq!(c.line(), "AAH+/w==");
    assert_eq!(c.finish().0, 0);
    let c = connect(&[&url, "--binary-format", "hex"]);
    assert_eq!(c.line(), "0001feff");
    assert_eq!(c.finish().0, 0);
}

/// Echo every data message until the peer closes.
async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut ws: switchyard::WebSocket<S>,
) {
    while let Some(Ok(m)) = ws.next().await {
        if m.is_data() && ws.send(m).await.is_err() {
            return;
        }
    }
}

/// An HTTP/2 (prior knowledge) server answering RFC 8441 extended CONNECTs
/// with an echo.
fn h2_echo_server() -> SocketAddr {
    spawn_server(|l| async move {
        let builder = switchyard::h2::server_builder(true, &switchyard::Limits::default());
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let builder = builder.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: hyper::Request<hyper::body::Incoming>| async move {
                        let cfg = AcceptConfig::default();
                        let resp = match switchyard::h2::accept(&mut req, &cfg) {
                            Ok((resp, fut)) => {
                                tokio::spawn(async move {
                                    if let Ok(ws) = fut.await {
                                        echo(ws).await;
                                    }
                                });
                                resp
                            }
                            Err(rej) => switchyard::server::rejection_response(&rej),
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    },
                );
                let _ = builder
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

// A full --http2 round trip against `h2_echo_server` is not asserted here
// yet: switchyard::h2::connect_h2 (branch wt-h2) sometimes waits forever
// after the server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) arrived; reported
// to its owner. This test pins the wiring: with --http2 (ws://: prior
// knowledge) the first bytes on the wire are the HTTP/2 connection preface.
#[test]
fn http2_flag_uses_the_http2_client() {
    let _ = h2_echo_server; // kept for the round trip once connect_h2 is fixed
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let addr = spawn_server(move |l| async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut first = vec![0u8; 24];
            if s.read_exact(&mut first).await.is_ok() {
                let _ = tx.send(first);
            }
        }
    });
    let c = connect(&[&format!("ws://{addr}/echo"), "--http2"]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "{err}");
    let first = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(first, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
}

#[test]
fn http2_with_proxy_is_refused_with_a_reason() {
    let c = connect(&[
        "ws://127.0.0.1:1/",
        "--http2",
        "--proxy",
        "http://127.0.0.1:1",
    ]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--proxy works with HTTP/1.1 only"), "{err}");
}

/// A self-signed certificate for 127.0.0.1: the rustls server config and the
/// PEM file of the certificate (to pass as --ca).
fn self_signed(dir_tag: &str) -> (std::sync::Arc<rustls::ServerConfig>, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("switchyard-cli-{}-{dir_tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    (std::sync::Arc::new(cfg), ca)
}

#[test]
fn http3_round_trip() {
    let (tls, ca) = self_signed("h3");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let endpoint =
                switchyard::h3::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
            tx.send(endpoint.local_addr().unwrap()).unwrap();
            let cfg = AcceptConfig::default();
            switchyard::h3::serve(
                endpoint,
                cfg,
                |_req, ws| {
                    tokio::spawn(echo(ws));
                },
                std::future::pending(),
            )
            .await;
        });
    });
    let addr: SocketAddr = rx.recv().unwrap();
    let url = format!("wss://127.0.0.1:{}/echo", addr.port());
    let mut c = connect(&[&url, "--http3", "--ca", ca.to_str().unwrap()]);
    c.send_line("over h3");
    assert_eq!(c.line(), "over h3");
    let (code, err) = c.finish();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("over HTTP/3"), "{err}");
}

/// A wss server (HTTP/1.1 over TLS) that requires a client certificate
/// signed by `client_ca` and echoes.
fn wss_server(server: std::sync::Arc<rustls::ServerConfig>) -> SocketAddr {
    spawn_server(move |l| async move {
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let cfg = AcceptConfig::default();
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            if let Ok(ws) = switchyard::accept(tls, &cfg).await {
                echo(ws).await;
            }
        }
    })
}

#[test]
fn wss_with_ca_and_client_certificate() {
    // The client's identity, signed by itself; the server trusts exactly it.
    let client = rcgen::generate_simple_self_signed(vec!["client.example".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(format!("switchyard-cli-{}-mtls", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("client.pem"), dir.join("client.key"));
    std::fs::write(&cert_path, client.cert.pem()).unwrap();
    std::fs::write(&key_path, client.key_pair.serialize_pem()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca_path = dir.join("server-ca.pem");
    std::fs::write(&ca_path, server_cert.cert.pem()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_cert.key_pair.serialize_der().into()),
        )
        .unwrap();
    let addr = wss_server(std::sync::Arc::new(server));
    let url = format!("wss://127.0.0.1:{}/", addr.port());
    let ca = ca_path.to_str().unwrap();

    let mut c = connect(&[
        &url,
        "--ca",
        ca,
        "--cert",
        cert_path.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
    ]);
    c.send_line("mutual TLS");
    assert_eq!(c.line(), "mutual TLS");
    let (code, err) = c.finish();
    assert_eq!(code, 0, "{err}");

    // --insecure instead of --ca (the certificate is not checked).
    let mut c = connect(&[
        &url,
        "-k",
        "--cert",
        cert_path.to_str().unwrap(),
        "--key",
        key_path.to_str().unwrap(),
    ]);
    c.send_line("insecure");
    assert_eq!(c.line(), "insecure");
    assert_eq!(c.finish().0, 0);

    // The server requires the client certificate: without it, no WebSocket.
    let c = connect(&[&url, "--ca", ca]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "{err}");

    // Without the server's CA: an unknown issuer, with the fix.
    let c = connect(&[&url]);
    let (code, err) = c.finish();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--ca FILE"), "{err}");

    // --cert without --key is a usage error.
    let c = connect(&[&url, "--cert", cert_path.to_str().unwrap()]);
    assert_eq!(c.finish().0, 2);
}

/// Interactive mode on a real pseudo-terminal (util-linux `script`): line
/// editing prompt, /ping, /binary, an unknown command, /close with a code,
/// and the history file under $XDG_DATA_HOME.
#[test]
fn interactive_mode_on_a_pty() {
    use std::sync::{Arc, Mutex};
    let addr = echo_server();
    let data = std::env::temp_dir().join(format!("switchyard-cli-{}-xdg", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let cmd = format!(
        "'{}' connect ws://{addr}/echo",
        env!("CARGO_BIN_EXE_switchyard")
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("XDG_DATA_HOME", &data)
        .env("RUST_LOG", "warn")
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("util-linux `script` is needed for the pty test");
    let screen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let s2 = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                return;
            }
            s2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let wait_for = |what: &str| {
        let deadline = std::time::Instant::now() + WAIT;
        while !screen.lock().unwrap().contains(what) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what:?} not on the screen: {:?}",
                screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let mut type_line = |l: &str| {
        stdin.write_all(format!("{l}\r").as_bytes()).unwrap();
        stdin.flush().unwrap();
    };
    wait_for("* connected to");
    type_line("hello pty");
    wait_for("< hello pty");
    type_line("/ping abc");
    wait_for("* pong \"abc\" in ");
    type_line("/binary 00ff");
    wait_for("< [binary, 2 bytes] 00ff");
    type_line("/bogus");
    wait_for("! unknown command /bogus");
    type_line("/close 4000 bye");
    wait_for("* closed");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "no exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    let history = std::fs::read_to_string(data.join("switchyard").join("history")).unwrap();
    for l in ["hello pty", "/ping abc", "/binary 00ff", "/close 4000 bye"] {
        assert!(history.lines().any(|h| h == l), "{l:?} not in {history:?}");
    }
}

#[test]
fn ping_interval_sends_pings_and_timestamps_prefix_lines() {
    // The server reports each ping it receives as a text message.
    let addr = ws_server(&[], |_, _, mut ws| async move {
        let mut pings = 0;
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Ping(_) = m {
                pings += 1;
                let _ = ws.send(Message::text(format!("ping {pings}"))).await;
            }
        }
    });
    let url = format!("ws://{addr}/");
    let c = connect(&[&url, "--ping-interval", "100ms", "--timestamps"]);
    for n in 1..=2 {
        let l = c.line();
        let (stamp, text) = l.split_once(' ').unwrap();
        assert_eq!(text, format!("ping {n}"));
        // 2026-11-22T03:07:18.748Z
        assert_eq!(stamp.len(), 24, "{stamp}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{stamp}"
        );
    }
    assert_eq!(c.finish().0, 0);
}

#[test]
fn unanswered_keepalive_ping_exits_4() {
    // A valid 101, then silence: pings are never answered.
    let addr = spawn_server(|l| async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let Ok((req, _)) = read_request_head(&mut s, &Default::default()).await else {
                continue;
            };
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            let accept = switchyard::proto::handshake::accept_key(&key);
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            let _ = s.write_all(resp.as_bytes()).await;
            held.push(s);
        }
    });
    let c = connect(&[
        &format!("ws://{addr}/"),
        "--no-deflate",
        "--ping-interval",
        "100ms",
        "--ping-timeout",
        "300ms",
    ]);
    let (code, err) = c.finish_keep_stdin();
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no pong within 300ms"), "{err}");
}
