//! The admin listener's `/status` dashboard in Chromium headless, driven by
//! tests/interop/status_chromium.mjs: the page without the token asks for
//! it; with `#token=` its figures follow a WebSocket the browser opens
//! through the gateway (a proxied route to a second gateway's echo app,
//! with the gateway's probe pings) and sends on; screenshots at laptop and phone widths go to
//! `reports/dashboard/` (ignored by git).

use std::path::Path;

use crate::gateway::Running;
use crate::harness::interop_script;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_browser_client_and_fits_a_phone() {
    let backend = Running::start("[[route]]\npath = \"/chat\"\napp = \"echo\"\n").await;
    let dir = std::env::temp_dir().join(format!("dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("admin.token");
    let token = "dash-T0ken";
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let gw = Running::start(&format!(
        "[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
         [[upstream]]\nname = \"back\"\nservers = [\"ws://{}\"]\n\
         [[route]]\npath = \"/chat\"\nupstream = \"back\"\n\
         [route.policy]\nping_interval = \"300ms\"\n",
        token_file.display(),
        backend.addr
    ))
    .await;
    let admin = gw.admin.expect("the admin listener");

    let reports = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../reports/dashboard");
    // No screenshot of an earlier run can pass for this one's.
    let _ = std::fs::remove_dir_all(&reports);
    let args = [
        format!("http://{admin}"),
        format!("ws://{}/chat", gw.addr),
        token.to_string(),
        reports.display().to_string(),
    ];
    interop_script("status_chromium.mjs", &args).await;
    for shot in ["status-laptop.png", "status-phone.png"] {
        let len = std::fs::metadata(reports.join(shot)).map_or(0, |m| m.len());
        assert!(len > 1000, "{shot}: {len} bytes");
    }
    gw.stop().await;
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
