//! The cluster end to end: a real `redis-server`, three gateway instances,
//! HAProxy (Debian) in front of them in HTTP mode, round robin per request
//! and no stickiness, with `Upgrade` removed so that the browser must fall
//! back; a Python `websockets` backend; Chromium running `SwitchyardSocket`
//! through HAProxy (tests/interop/cluster_chromium.mjs): 1,000 messages each
//! way in order, none lost or repeated, while the session's requests land on
//! all three instances, as each one's `/metrics` shows.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use http::Method;

use crate::gateway::Running;
use crate::harness::*;
use crate::redis_server::{free_port, RedisServer};

/// HAProxy in the foreground balancing `servers` round robin per request,
/// `Upgrade` removed from every request; killed and its directory removed
/// on drop. Fails, never skips, without HAProxy
/// (scripts/install-test-deps.sh installs it).
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Haproxy {
    async fn start(servers: &[SocketAddr]) -> Haproxy {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "switchyard-session-haproxy-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // http-server-close: each request is balanced on its own, whatever
        // connection the browser reuses.
        let mut conf = format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  \
             timeout server 60s\n  option http-server-close\n\
             frontend front\n  bind 127.0.0.1:{port}\n  http-request del-header Upgrade\n  \
             default_backend gateways\n\
             backend gateways\n  balance roundrobin\n"
        );
        for (i, s) in servers.iter().enumerate() {
            conf.push_str(&format!("  server g{i} {s}\n"));
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, conf).unwrap();
        let child = Command::new("haproxy")
            .env("PATH", "/usr/sbin:/usr/local/sbin:/usr/bin:/bin")
            .args(["-db", "-q", "-f"])
            .arg(&file)
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start haproxy: run scripts/install-test-deps.sh");
        let h = Haproxy {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            dir,
        };
        wait_listening("haproxy", h.addr).await;
        h
    }
}

/// The samples of `family` whose labels contain `labels`, summed.
fn sum_of(metrics: &str, family: &str, labels: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_through_haproxy_spreads_one_session_over_three_instances() {
    let redis = RedisServer::start().await;
    let py = PyBackend::start();
    let mut gateways = Vec::new();
    for node in ["g1", "g2", "g3"] {
        // Small event-stream responses: the stream is resumed, each time on
        // the next instance.
        gateways.push(
            Running::start(&format!(
                "[[route]]\npath = \"/\"\nmatch = \"exact\"\napp = \"index\"\n\
                 [[route]]\npath = \"/echo\"\napp = \"echo\"\n{}\
                 [admin]\naddress = \"127.0.0.1:0\"\n\
                 [cluster]\nredis = \"redis://127.0.0.1:{}/0\"\nnode_id = \"{node}\"\n\
                 key_prefix = \"e2e:\"\n",
                py.route("/py", "[route.policy]\nfallback_stream_bytes = \"8KiB\"\n"),
                redis.port
            ))
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    let haproxy = Haproxy::start(&addrs).await;

    let args = [
        format!("http://{}", haproxy.addr),
        "/py".into(),
        "1000".into(),
    ];
    interop_script("cluster_chromium.mjs", &args).await;

    // One session, opened on one instance, its requests served by all three.
    let mut totals = [0u64; 3];
    for g in &gateways {
        let admin = g.admin.expect("an [admin] listener");
        let m = request(admin, Method::GET, "/metrics", &[], "").await;
        let m = String::from_utf8_lossy(&m.body);
        let on_py = |action: &str| {
            sum_of(
                &m,
                "switchyard_fallback_requests_total",
                &format!("route=\"/py\",action=\"{action}\""),
            )
        };
        let served = [on_py("open"), on_py("sse"), on_py("send")];
        println!(
            "{}: open, sse, send requests of the session: {served:?}",
            g.addr
        );
        assert!(
            served.iter().sum::<u64>() >= 1,
            "{} served none of the session's requests: {m}",
            g.addr
        );
        for (t, n) in totals.iter_mut().zip(served) {
            *t += n;
        }
    }
    // The browser tried a WebSocket first; HAProxy took its Upgrade away.
    let refused: u64 = gateways
        .iter()
        .map(|g| {
            g.gateway
                .metrics()
                .upgrade_attempts("refused", "upgrade_required")
        })
        .sum();
    assert!(refused >= 1, "no WebSocket attempt reached a gateway");
    let [opens, streams, sends] = totals;
    assert_eq!(opens, 1, "one session");
    assert!(streams >= 2, "the event stream was resumed: {streams}");
    assert!(sends >= 1, "{sends}");
    drop(haproxy);
    for g in gateways {
        g.stop().await;
    }
}
