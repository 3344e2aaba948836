//! Shared by the gateway's socket tests: a `Server` on 127.0.0.1:0 that the
//! test stops itself.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard_gateway::{ServeConfig, Server};
use tokio::sync::oneshot;

pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Trigger the graceful shutdown and wait (at most 10 s) for it to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("server did not stop")
            .unwrap();
    }
}

/// Bind `cfg` on 127.0.0.1 port 0 and run it until `Running::stop`.
pub async fn start(mut cfg: ServeConfig) -> Running {
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let server = Server::bind(cfg).await.unwrap();
    let addr = server.local_addrs()[0];
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}
