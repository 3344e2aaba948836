//! `SwitchyardSocket` (crates/gateway/src/client.js) and a bare
//! `EventSource` in Chromium headless, driven by
//! tests/interop/fallback_chromium.mjs (playwright-core over the system
//! Chromium). The page and all its requests go through a [`Cutter`] that
//! the script triggers mid-stream; WebSocket upgrades on the session routes
//! are answered 426 as behind a proxy that drops `Upgrade`. The scenarios
//! are listed in the script; it prints one `ok:` line per check.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::harness::*;

const PAGE: &str = "<!doctype html><meta charset=\"utf-8\"><title>fallback sessions</title>\n\
    <script type=\"module\">import { SwitchyardSocket } from '/client.js'; \
    window.SwitchyardSocket = SwitchyardSocket;</script>\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_socket_falls_back_resumes_and_event_source_reads_in_chromium() {
    let py = PyBackend::start();
    let mut setup = Setup::with_routes(&format!(
        "[[route]]\npath = \"/echo\"\napp = \"echo\"\n{}",
        py.route("/py", "")
    ));
    setup.page = PAGE;
    // Small responses: the event streams end and are resumed many times.
    setup.settings.response_max_bytes = 4 << 10;
    let gw = Gateway::start(setup).await;
    let cutter = Arc::new(Cutter::start(gw.addr).await);
    gw.control(cutter.clone());

    let stdout = run_script(cutter.addr, gw.addr, None).await;
    assert!(
        cutter.cuts.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "{stdout}"
    );
    assert!(gw.ws_attempts() >= 1);
}

/// Run tests/interop/fallback_chromium.mjs with the page at `page`, the
/// control endpoints at `control`, in `mode`; its output (the checks), or
/// the test fails with it.
pub async fn run_script(page: SocketAddr, control: SocketAddr, mode: Option<&str>) -> String {
    run_origins(
        &format!("http://{page}"),
        &format!("http://{control}"),
        mode,
    )
    .await
}

/// [`run_script`] with the origins spelled out.
async fn run_origins(page: &str, control: &str, mode: Option<&str>) -> String {
    let mut args = vec![page.to_owned(), control.to_owned()];
    args.extend(mode.map(str::to_owned));
    interop_script("fallback_chromium.mjs", &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchyard_socket_sends_cookies_across_origins_only_when_asked_in_chromium() {
    use crate::gateway::Running;
    // The page's gateway (its index page, the client script), and the
    // sessions' gateway on another port of the same site, whose /py route
    // allows pages of the first.
    let page = Running::start(
        "[[route]]\npath = \"/\"\nmatch = \"exact\"\napp = \"index\"\n\
         [[route]]\npath = \"/echo\"\napp = \"echo\"\n",
    )
    .await;
    let page_origin = format!("http://localhost:{}", page.addr.port());
    let py = PyBackend::start();
    let sessions = Running::start(&py.route(
        "/py",
        &format!("[route.policy]\nallowed_origins = [\"{page_origin}\"]\n"),
    ))
    .await;
    let out = run_origins(
        &page_origin,
        &format!("http://localhost:{}", sessions.addr.port()),
        Some("credentials"),
    )
    .await;
    assert_eq!(out.matches("ok: ").count(), 2, "{out}");
    sessions.stop().await;
    page.stop().await;
}
