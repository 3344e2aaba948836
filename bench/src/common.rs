//! Shared command-line handling for the peer echo servers.
//!
//! Every server takes `--listen ADDR` (default 127.0.0.1:9001), serves the echo on any path,
//! runs a current-thread tokio runtime (one core; `bench/run.sh` pins it with taskset) and prints
//! `listening on ADDR` once the socket is bound.

use std::net::SocketAddr;

pub fn listen_addr() -> SocketAddr {
    let mut args = std::env::args().skip(1);
    let mut addr = String::from("127.0.0.1:9001");
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => match args.next() {
                Some(v) => addr = v,
                None => usage("--listen needs an address such as 127.0.0.1:9001"),
            },
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    match addr.parse() {
        Ok(a) => a,
        Err(e) => usage(&format!("--listen {addr:?} is not an IP:port address: {e}")),
    }
}

fn usage(msg: &str) -> ! {
    if !msg.is_empty() {
        eprintln!("error: {msg}");
    }
    eprintln!(
        "usage: {} [--listen ADDR]",
        std::env::args().next().unwrap_or_default()
    );
    std::process::exit(if msg.is_empty() { 0 } else { 2 });
}

#[allow(dead_code)]
pub fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    }
}

pub async fn bind(addr: SocketAddr) -> tokio::net::TcpListener {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            let local = l.local_addr().unwrap_or(addr);
            println!("listening on {local}");
            l
        }
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    }
}

/// Serve an axum echo app on every path: `axum::serve` on one thread with
/// I/O and timers, as `#[tokio::main(flavor = "current_thread")]` builds it
/// for an axum app (switchyard's WebSocket arms its close and ping deadlines
/// on tokio's timer), TCP_NODELAY like the other peers.
#[allow(dead_code)]
pub fn serve_axum(app: axum::Router) {
    use axum::serve::ListenerExt;
    let addr = listen_addr();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let listener = bind(addr).await.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("error: {e}");
        }
    });
}
