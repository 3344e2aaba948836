//! Client for the Autobahn TestSuite fuzzingserver (e.g. `kosoku -m fuzzingserver`).
//!
//! Usage: `autobahn_client ws://127.0.0.1:9001 [agent] [parallel]`
//!
//! Asks the server for the number of cases, runs each one (echoing every text
//! and binary message until the close), then asks it to write the reports.
//! `parallel` (default 1) cases run at once, each on its own connection: the
//! suite's time is mostly the fuzzing server's, waiting on one case at a time.

use futures_util::{SinkExt, StreamExt};
use switchyard::{ClientBuilder, Error, Limits, Message};

fn builder() -> ClientBuilder {
    let limits = Limits::default()
        .max_message_size(64 << 20)
        .max_frame_size(64 << 20);
    // permessage-deflate is offered by default.
    ClientBuilder::new().limits(limits)
}

async fn case_count(base: &str) -> Result<u32, Error> {
    let (mut ws, _) = builder().connect(&format!("{base}/getCaseCount")).await?;
    let mut count = None;
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            count = t.trim().parse().ok();
        }
    }
    count.ok_or(Error::Closed)
}

async fn run_case(base: &str, case: u32, agent: &str) -> Result<(), Error> {
    let url = format!("{base}/runCase?case={case}&agent={agent}");
    let (mut ws, _) = builder().connect(&url).await?;
    while let Some(msg) = ws.next().await {
        let msg = msg?;
        if msg.is_data() {
            ws.send(msg).await?;
        }
    }
    Ok(())
}

async fn update_reports(base: &str, agent: &str) -> Result<(), Error> {
    let (mut ws, _) = builder()
        .connect(&format!("{base}/updateReports?agent={agent}"))
        .await?;
    // The request is complete once the handshake succeeded; some servers then
    // drop TCP without a closing handshake (1006), which is not a failure here.
    while let Some(msg) = ws.next().await {
        if let Err(e) = msg {
            eprintln!("updateReports connection ended with: {e}");
            break;
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(base) = args.next() else {
        eprintln!("usage: autobahn_client ws://127.0.0.1:9001 [agent] [parallel]");
        std::process::exit(2);
    };
    let base = base.trim_end_matches('/').to_owned();
    let agent = args.next().unwrap_or_else(|| "switchyard".to_owned());
    let parallel = match args.next().map(|p| p.parse::<usize>()) {
        None => 1,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("parallel must be a positive number");
            std::process::exit(2);
        }
    };

    let count = match case_count(&base).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("cannot get the case count from {base}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("running {count} cases as agent {agent:?}, {parallel} at a time");
    let (base_ref, agent_ref) = (&base, &agent);
    futures_util::stream::iter(1..=count)
        .map(|case| async move { (case, run_case(base_ref, case, agent_ref).await) })
        .buffer_unordered(parallel)
        .for_each(|(case, result)| async move {
            match result {
                Ok(()) => eprintln!("case {case}/{count}: done"),
                // Many cases end with a protocol error on purpose.
                Err(e) => eprintln!("case {case}/{count}: ended with: {e}"),
            }
        })
        .await;
    if let Err(e) = update_reports(&base, &agent).await {
        eprintln!("updateReports failed: {e}");
        std::process::exit(1);
    }
    eprintln!("reports updated");
}
