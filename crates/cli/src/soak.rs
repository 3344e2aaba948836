//! `switchyard soak`: many WebSockets through an echo endpoint for a long
//! time, every echo checked, while the servers churn, reload and redeploy.
//!
//! Each of `--connections` clients sends sequence-numbered messages (text and
//! binary, sizes log-uniform up to `--max-size`, permessage-deflate offered
//! by `--deflate` percent of them) at an even pace that adds up to `--rate`,
//! and checks every echo for order, duplicates and corruption
//! ([`payload`]). `--churn` percent of the connections per second close
//! cleanly (after their last echo) and reconnect; the client's numbers go on.
//!
//! Instances: `--url` names each instance a redeploy moves between; a client
//! starts with the instance the others last reached, moves to the next when
//! one refuses or closes its connection with 1001 (going away), and the
//! messages then in flight are accounted, never silently lost:
//!
//! | how a connection ended | its messages still in flight count as |
//! |---|---|
//! | our close (churn, end of the run), after every echo came back | - (none left; past `--drain-wait`: lost) |
//! | the server's close 1001 | `drained`: reported, not lost |
//! | cut without a close frame, and its instance then refused a new connection | `cut_at_stop`: reported, not lost (a transparent tunnel at drain) |
//! | anything else | `lost` |
//!
//! `--pids` samples the memory and descriptors of other processes every
//! second ([`procs`]). After the load every client closes, and the run waits
//! up to `--settle` for every process still alive to come back within
//! `--tolerance` of its baseline: its first sample; with `--leak-check D`, the
//! load then runs twice more for D (each followed by a settle) and the
//! baseline is the level after the first of them. Allocators keep the pages
//! of a peak after the heap is freed (mimalloc until something calls into it
//! again) and pools keep what they pool (the gateway's splice pipes), so an
//! idle process after a load sits above its fresh start without leaking; what
//! a leak shows is the same load ending higher the second time.
//!
//! `--label-file`: the latencies of the load (not of the leak check) are also
//! counted under the label that file holds when the echo arrives (a
//! hostile-peer driver writes `hostile` or `quiet` there), so the report
//! compares them.
//!
//! The verdict (exit status 0, else 1): something was echoed; nothing lost,
//! duplicated, reordered or corrupted; every watched process back to its
//! baseline. The report: a summary on stdout (or `--json`), and with `--html`
//! the plots of `bench --html` (throughput, latency, connections, memory,
//! descriptors).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{Sink, StreamExt};
use switchyard::{ClientBuilder, CloseCode, Error as WsError, Message};
use tokio::time::{sleep_until, Sleep};

mod args;
mod payload;
mod plan;
mod procs;
mod recorder;
mod report;
mod summary;

pub use args::SoakArgs;
use payload::{Sequence, SplitMix};
use plan::{lock, Load, Plan, MIN_SIZE};
use procs::{Processes, Watch};
use recorder::{broken_kind, Fate};
use summary::{summary_json, summary_text};

type Ws = switchyard::WebSocket<switchyard::client::MaybeTlsStream>;

/// Longest wait for the end of a connection after the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Pause after every instance failed, before trying them all again; doubled
/// after each round that fails, up to [`MAX_RETRY_PAUSE`].
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// How often the processes are sampled and the label file read.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Between two progress lines on stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Runs the soak; returns the exit status (0 pass, 1 verdict failed).
pub async fn run(args: SoakArgs) -> anyhow::Result<i32> {
    let plan = Arc::new(Plan::new(&args)?);
    let watches = match &args.pids {
        Some(list) => procs::parse_watches(list)?,
        None => Vec::new(),
    };
    let procs = Arc::new(Mutex::new(Processes::default()));
    lock(&procs).sample_all(&watches, 0.0);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_loop(
        plan.clone(),
        watches,
        procs.clone(),
        done.clone(),
    ));
    run_load(&plan, plan.start, args.duration).await;
    let load_end = plan.seconds(Instant::now());
    plan.labelling.store(false, Ordering::Relaxed);
    settle(&plan, &procs).await;
    if let Some(again) = args.leak_check {
        // The same load twice (ramp-up included), each followed by a settle:
        // the second must not end higher than the first.
        let again = again.saturating_sub(plan.ramp_up);
        for round in 0..2 {
            if round == 1 {
                let mut p = lock(&procs);
                let at = p.last_sampling();
                p.mark_idle(at);
            }
            run_load(&plan, Instant::now(), again).await;
            settle(&plan, &procs).await;
        }
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.context("the sampling task failed")?;

    let summary = summary_json(&plan, &lock(&procs), load_end);
    if let Some(path) = &args.html {
        std::fs::write(path, report::html(&summary))
            .with_context(|| format!("cannot write the HTML report to {}", path.display()))?;
    }
    if args.json {
        println!("{summary}");
    } else {
        print!("{}", summary_text(&summary));
    }
    Ok(if summary["verdict"]["pass"] == true {
        0
    } else {
        1
    })
}

/// Every client, from `start` (plus the ramp-up) for `duration`; returns
/// once they all closed.
async fn run_load(plan: &Arc<Plan>, start: Instant, duration: Duration) {
    let load = Load {
        start,
        end: start + plan.ramp_up + duration,
    };
    let mut clients = tokio::task::JoinSet::new();
    for id in 0..plan.connections {
        clients.spawn(client(plan.clone(), id as u32, load));
    }
    while clients.join_next().await.is_some() {}
}

/// Wait (up to `--settle`) until every process still alive is back within
/// the tolerance of its baseline.
async fn settle(plan: &Plan, procs: &Mutex<Processes>) {
    let until = Instant::now() + plan.settle;
    while Instant::now() < until {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let p = lock(procs);
        let at = p.last_sampling();
        if p.alive_at(at).all(|i| i.back_to_baseline(plan.tolerance)) {
            return;
        }
    }
}

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    /// We closed it (churn, or the end of the run).
    Ours,
    /// The server sent a close frame with this code (1005: none in it).
    Closed(u16),
    /// It broke without a close frame (EOF, reset, protocol error): the kind.
    Broken(String),
}

/// One client: connections one after the other, one sequence of messages.
async fn client(plan: Arc<Plan>, id: u32, load: Load) {
    let mut seq = Sequence::new(id);
    let mut rng = SplitMix(u64::from(id).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x50a4);
    let path = &plan.paths[id as usize % plan.paths.len()];
    let builder = if (id % 100) < u32::from(plan.deflate) {
        &plan.with_deflate
    } else {
        &plan.without_deflate
    };
    let opens_at = load.start
        + plan
            .ramp_up
            .mul_f64(f64::from(id) / plan.connections as f64);
    tokio::time::sleep_until(opens_at.into()).await;
    // An instance that cut our last connection without a close frame, and
    // the messages then in flight.
    let mut cut: Option<(usize, usize)> = None;
    while Instant::now() < load.end {
        if let Some((i, n)) = cut.take() {
            let stopped = refuses(&plan, builder, i, path).await;
            plan.rec().cut(n, stopped);
            if stopped {
                plan.leave(i);
            }
        }
        let Some((mut ws, i)) = connect(&plan, builder, path, load.end).await else {
            break;
        };
        plan.open.fetch_add(1, Ordering::Relaxed);
        let until = match plan.lifetime {
            Some(mean) => {
                // Exponential lifetime: -ln(U) * mean, U in (0, 1].
                let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                let life = mean.mul_f64(-(1.0 - u).ln()).min(load.end - load.start);
                (Instant::now() + life).min(load.end)
            }
            None => load.end,
        };
        let ended = drive(&plan, &mut ws, &mut seq, &mut rng, until).await;
        plan.open.fetch_sub(1, Ordering::Relaxed);
        let unanswered = seq.abandon();
        let mut rec = plan.rec();
        match &ended {
            Ended::Ours => rec.ended("1000", unanswered, Fate::Lost),
            Ended::Closed(code) => {
                let going_away = *code == CloseCode::GOING_AWAY.0;
                let fate = if going_away {
                    Fate::Drained
                } else {
                    Fate::Lost
                };
                rec.ended(&code.to_string(), unanswered, fate);
                if going_away {
                    plan.leave(i);
                }
            }
            Ended::Broken(kind) => {
                rec.ended(kind, unanswered, Fate::Undecided);
                cut = Some((i, unanswered));
            }
        }
    }
    if let Some((i, n)) = cut {
        let stopped = refuses(&plan, builder, i, path).await;
        plan.rec().cut(n, stopped);
    }
}

/// Whether instance `i` refuses a new connection (it is stopping): the
/// connection is not kept.
async fn refuses(plan: &Plan, builder: &ClientBuilder, i: usize, path: &str) -> bool {
    let url = format!("{}{path}", plan.instances[i]);
    match builder.connect(&url).await {
        Ok((mut ws, _)) => {
            let _ = ws.close(CloseCode::NORMAL, "soak: probe").await;
            false
        }
        Err(e) => is_refusal(&e),
    }
}

/// An instance that is not (or no longer) accepting: refused, or reset or
/// closed before its 101.
fn is_refusal(e: &WsError) -> bool {
    use std::io::ErrorKind as K;
    match e {
        WsError::Io(io) => matches!(
            io.kind(),
            K::ConnectionRefused | K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof
        ),
        WsError::HeadEof { .. } => true,
        _ => false,
    }
}

/// Connect to the preferred instance, else the next ones; after a round of
/// failures, pause (longer each round) and go on, until `end` (`None`).
async fn connect(
    plan: &Plan,
    builder: &ClientBuilder,
    path: &str,
    end: Instant,
) -> Option<(Ws, usize)> {
    let n = plan.instances.len();
    let mut pause = RETRY_PAUSE;
    while Instant::now() < end {
        let first = plan.preferred.load(Ordering::Relaxed) % n;
        for k in 0..n {
            let i = (first + k) % n;
            let url = format!("{}{path}", plan.instances[i]);
            match builder.connect(&url).await {
                Ok((ws, _)) => {
                    plan.rec().connects += 1;
                    return Some((ws, i));
                }
                Err(e) => {
                    plan.rec().connect_failed(&e);
                    if is_refusal(&e) {
                        plan.leave(i);
                    }
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RETRY_PAUSE);
    }
    None
}

/// What the driver loop reacts to.
enum Event {
    Incoming(Option<Result<Message, WsError>>),
    Failed(WsError),
    Due,
    Stop,
    Drained,
    DrainTimeout,
}

/// Run one connection until `until` (then close it cleanly), the server's
/// close, or its failure.
async fn drive(
    plan: &Plan,
    ws: &mut Ws,
    seq: &mut Sequence,
    rng: &mut SplitMix,
    until: Instant,
) -> Ended {
    // Messages missed while reconnecting are not sent late.
    let mut due = Instant::now();
    let mut send_at: Pin<Box<Sleep>> = Box::pin(sleep_until(due.into()));
    let mut stop_at: Pin<Box<Sleep>> = Box::pin(sleep_until(until.into()));
    let mut drain_timeout: Option<Pin<Box<Sleep>>> = None;
    let mut outbox: Option<Message> = None;
    loop {
        let event = poll_fn(|cx| {
            if let Some(m) = outbox.take() {
                match Pin::new(&mut *ws).poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        if let Err(e) = Pin::new(&mut *ws).start_send(m) {
                            return Poll::Ready(Event::Failed(e));
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::Failed(e)),
                    Poll::Pending => outbox = Some(m),
                }
            }
            if let Poll::Ready(Err(e)) = Pin::new(&mut *ws).poll_flush(cx) {
                return Poll::Ready(Event::Failed(e));
            }
            if let Poll::Ready(item) = ws.poll_next_unpin(cx) {
                return Poll::Ready(Event::Incoming(item));
            }
            if let Some(t) = drain_timeout.as_mut() {
                if seq.in_flight() == 0 && outbox.is_none() {
                    return Poll::Ready(Event::Drained);
                }
                if t.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::DrainTimeout);
                }
                return Poll::Pending;
            }
            if stop_at.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
            if outbox.is_none()
                && seq.in_flight() < plan.in_flight
                && send_at.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Event::Due);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Due => {
                let len = log_uniform(rng, MIN_SIZE, plan.max_size);
                let text = rng.next() % 100 >= u64::from(plan.binary);
                outbox = Some(seq.next_message(len, text, due));
                plan.rec().sent(Instant::now());
                due += plan.interval;
                send_at.as_mut().reset(due.into());
            }
            Event::Stop => drain_timeout = Some(Box::pin(tokio::time::sleep(plan.drain_wait))),
            Event::Drained | Event::DrainTimeout => {
                let _ = tokio::time::timeout(CLOSE_WAIT, ws.close(CloseCode::NORMAL, "soak")).await;
                return Ended::Ours;
            }
            Event::Incoming(Some(Ok(Message::Close(frame)))) => {
                let code = frame.map_or(CloseCode::NO_STATUS.0, |f| f.code.0);
                // Let the close reply go out and the transport end.
                let _ =
                    tokio::time::timeout(CLOSE_WAIT, async { while ws.next().await.is_some() {} })
                        .await;
                return Ended::Closed(code);
            }
            Event::Incoming(Some(Ok(msg))) if msg.is_data() => {
                let outcome = seq.echo(&msg);
                plan.rec().echo(outcome, &msg, Instant::now());
            }
            Event::Incoming(Some(Ok(_))) => {}
            Event::Incoming(Some(Err(e))) | Event::Failed(e) => {
                return Ended::Broken(broken_kind(&e));
            }
            Event::Incoming(None) => return Ended::Broken("1006".into()),
        }
    }
}

/// A size from `lo` to `hi`, log-uniform (many small, some large).
fn log_uniform(rng: &mut SplitMix, lo: usize, hi: usize) -> usize {
    let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
    let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
    ((a + u * (b - a)).exp() as usize).clamp(lo, hi)
}

/// Every second until `done`: sample the processes, read the label file,
/// count the open connections, print progress.
async fn sample_loop(
    plan: Arc<Plan>,
    watches: Vec<Watch>,
    procs: Arc<Mutex<Processes>>,
    done: Arc<AtomicBool>,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress_at = plan.start + PROGRESS_EVERY;
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        let now = Instant::now();
        let at = plan.seconds(now);
        lock(&procs).sample_all(&watches, at);
        let labelling = plan.labelling.load(Ordering::Relaxed);
        let label = plan
            .label_file
            .as_ref()
            .filter(|_| labelling)
            .and_then(|f| {
                let l = std::fs::read_to_string(f).ok()?.trim().to_string();
                (!l.is_empty()).then_some(l)
            });
        let mut rec = plan.rec();
        rec.label = label.clone();
        let open = plan.open.load(Ordering::Relaxed) as u64;
        let s = rec.second(now);
        s.open = open;
        s.label = label;
        if now >= progress_at {
            progress_at += PROGRESS_EVERY;
            eprintln!(
                "soak {at:.0} s: {open} open, sent {}, echoed {}, lost {}, duplicated {}, reordered {}, corrupted {}, drained {}",
                rec.sent,
                rec.echoed,
                rec.lost,
                rec.duplicated,
                rec.reordered,
                rec.corrupted,
                rec.drained
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_uniform_stays_in_range_and_favours_small() {
        let mut rng = SplitMix(1);
        let v: Vec<usize> = (0..10_000)
            .map(|_| log_uniform(&mut rng, 64, 65536))
            .collect();
        assert!(v.iter().all(|s| (64..=65536).contains(s)));
        let small = v.iter().filter(|s| **s < 2048).count();
        // log-uniform: half of the draws below the geometric mean (2048).
        assert!((4000..6000).contains(&small), "{small}");
    }
}
