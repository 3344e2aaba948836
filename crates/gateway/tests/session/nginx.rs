//! The end-to-end case of fallback sessions: Chromium loads the gateway's
//! index page through nginx configured WITHOUT the Upgrade headers (the
//! classic mistake: every WebSocket handshake reaches the gateway as a
//! plain HTTP/1.0 GET and gets 426), in front of the real gateway, whose
//! `/py` route is a Python `websockets` backend. `SwitchyardSocket` falls
//! back to SSE, then long polling, 1,000 messages each way, connections cut
//! mid-stream and resumed, a receive-only `EventSource`
//! (tests/interop/fallback_chromium.mjs in its `behind-nginx` mode).

use std::sync::Arc;

use crate::browser::run_script;
use crate::gateway::Running;
use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_falls_back_through_nginx_without_upgrade_headers() {
    let py = PyBackend::start();
    // Small responses: the event streams end and are resumed many times.
    let small = "fallback_stream_bytes = \"4KiB\"\n";
    let gw = Running::start(&format!(
        "[[route]]\npath = \"/\"\nmatch = \"exact\"\napp = \"index\"\n\
         [[route]]\npath = \"/echo\"\napp = \"echo\"\n[route.policy]\n{small}{}",
        py.route("/py", &format!("[route.policy]\n{small}"))
    ))
    .await;
    let nginx = NginxNoUpgrade::start(gw.addr).await;
    let cutter = Arc::new(Cutter::start(nginx.addr).await);
    // The engine harness serves the script's /__cut for the cutter.
    let control = Gateway::start(Setup::echo()).await;
    control.control(cutter.clone());

    let stdout = run_script(cutter.addr, control.addr, Some("behind-nginx")).await;
    assert!(
        cutter.cuts.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "{stdout}"
    );
    // Every WebSocket the page tried reached the gateway without Upgrade.
    let m = gw.gateway.metrics();
    assert!(m.upgrade_attempts("refused", "upgrade_required") >= 1);

    // A send retried through nginx (its answer lost, say) reaches the
    // backend once: the Python echo answers "once" a single time, before
    // the next message's echo.
    let s = open(nginx.addr, "/py", "{}").await;
    for _ in 0..2 {
        let r = send_text(nginx.addr, "/py", &s, 1, "once").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let r = send_text(nginx.addr, "/py", &s, 2, "end").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut got = Vec::new();
    while !got.iter().any(|t| t == "end") {
        let after = got.len() as u64;
        for e in messages(&poll(nginx.addr, "/py", &s, after).await) {
            match e.payload {
                switchyard::fallback::wire::Payload::Text(t) => got.push(t.as_str().to_owned()),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(got, ["once", "end"]);
    gw.stop().await;
}
