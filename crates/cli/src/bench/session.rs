//! `--transport sse|poll`: the echo through a switchyard gateway's fallback sessions, one
//! session per connection slot, with the library's session client
//! (`switchyard::fallback::FallbackSocket`). Each session keeps `--in-flight` messages
//! outstanding (closed loop), or sends its share of `--rate` messages per second on a fixed
//! schedule (open loop); messages go as numbered POSTs and are read back from the event
//! stream or by long polls. A reply is matched to its request in FIFO order, checked, and
//! timed from the moment the message was handed to the client (closed loop) or from its
//! scheduled time (open loop: a stall delays the schedule's later messages, whose wait counts).
//!
//! Unlike the WebSocket paths the client is not hand-written: its tasks and HTTP requests
//! are part of what is measured, as a user of the library sees them. Sessions are opened
//! before the window and closed (the close accepted by the gateway) after it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Barrier, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use switchyard::fallback::{FallbackBuilder, FallbackSocket, Transport};
use switchyard::{CloseCode, Message};

use super::plan::*;
use super::tally::*;

/// Longest wait for the gateway to accept a session's close after the window.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// One worker thread's sessions, from open to close.
pub(super) fn worker(
    plan: &Plan,
    transport: Transport,
    index: usize,
    rt: &tokio::runtime::Runtime,
    barrier: &Barrier,
    start: &OnceLock<Instant>,
) -> anyhow::Result<Report> {
    let slots = (index..plan.connections).step_by(plan.threads).count();
    let builder = FallbackBuilder::new(transport).tls(plan.client.clone());
    let local = tokio::task::LocalSet::new();
    local.block_on(rt, async {
        let mut first = Report::new();
        first.live = Some(plan.live.clone());
        let report = RefCell::new(first);
        let opened =
            futures_util::future::join_all((0..slots).map(|_| builder.connect(&plan.target.url)))
                .await;
        let mut sessions = Vec::with_capacity(slots);
        for o in opened {
            match o {
                Ok(s) => sessions.push(s),
                Err(e) => report
                    .borrow_mut()
                    .error_of("session_open", || e.to_string()),
            }
        }
        barrier.wait();
        let window = window_from(plan, *start.get_or_init(Instant::now));
        report.borrow_mut().origin = Some(window.t0);
        let _ = plan.live.started.set(window.t0);
        let report = Rc::new(report);
        let grace = window.end + Duration::from_secs(2);
        let tasks: Vec<_> = sessions
            .into_iter()
            .enumerate()
            .map(|(k, s)| {
                let report = report.clone();
                // The slot's number among all threads' (its place in the rate's schedule).
                let slot = index + k * plan.threads;
                async move {
                    let run = async {
                        match plan.rate {
                            Some(rate) => echo_at_rate(s, plan, slot, rate, window, &report).await,
                            None => echo(s, plan, window, &report).await,
                        }
                    };
                    match tokio::time::timeout_at(grace.into(), run).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => report.borrow_mut().error_of(e.kind, || e.what),
                        Err(_) => report.borrow_mut().error_of("timeout", || {
                            "a reply did not arrive within 2 s after the end of the run".into()
                        }),
                    }
                }
            })
            .collect();
        futures_util::future::join_all(tasks).await;
        let mut rep = report.replace(Report::new());
        rep.measured = window.end.saturating_duration_since(window.measure_from);
        rep.live = None;
        Ok(rep)
    })
}

/// Why one session's echo failed: an error kind and what happened.
struct Failed {
    kind: &'static str,
    what: String,
}

fn failed(kind: &'static str, what: impl Into<String>) -> Failed {
    Failed {
        kind,
        what: what.into(),
    }
}

/// The message every session sends.
fn message_of(plan: &Plan) -> Message {
    if plan.binary {
        Message::binary(plan.payload.clone())
    } else {
        // ASCII (see `Plan::payload`).
        Message::text(String::from_utf8_lossy(&plan.payload).into_owned())
    }
}

/// Closed loop on `s` until `window.end`, then its close.
async fn echo(
    mut s: FallbackSocket,
    plan: &Plan,
    window: Window,
    report: &RefCell<Report>,
) -> Result<(), Failed> {
    let message = message_of(plan);
    let mut sent: VecDeque<Instant> = VecDeque::with_capacity(plan.in_flight);
    loop {
        while sent.len() < plan.in_flight {
            // `feed` queues without waiting for the gateway's acknowledgement.
            s.feed(message.clone())
                .await
                .map_err(|e| failed("session_failed", e.to_string()))?;
            sent.push_back(Instant::now());
        }
        let reply = s.next().await;
        let now = Instant::now();
        echoed(reply, plan, &mut sent, now, &window, report)?;
        if now >= window.end {
            break;
        }
    }
    // Replies still outstanding do not count; the close is not measured.
    let _ = tokio::time::timeout(CLOSE_WAIT, s.close(CloseCode::NORMAL, "")).await;
    Ok(())
}

/// Open loop on `s`, session number `slot`: its share of `rate` messages per second, each
/// handed to the client at its scheduled time (late if the client holds it back, but timed
/// from the schedule), until `window.end`, then its close.
async fn echo_at_rate(
    mut s: FallbackSocket,
    plan: &Plan,
    slot: usize,
    rate: f64,
    window: Window,
    report: &RefCell<Report>,
) -> Result<(), Failed> {
    let message = message_of(plan);
    let per_session = rate / plan.connections as f64;
    let interval = Duration::from_secs_f64(1.0 / per_session).max(Duration::from_nanos(1));
    // Spread the sessions' schedules over one interval so that the total is smooth.
    let mut next =
        Instant::now().max(window.t0) + interval.mul_f64(slot as f64 / plan.connections as f64);
    let mut sent: VecDeque<Instant> = VecDeque::new();
    loop {
        let now = Instant::now();
        if now >= window.end {
            break;
        }
        tokio::select! {
            reply = s.next() => {
                let now = Instant::now();
                echoed(reply, plan, &mut sent, now, &window, report)?;
            }
            () = tokio::time::sleep_until(next.min(window.end).into()) => {
                let now = Instant::now();
                while next <= now && next < window.end {
                    s.feed(message.clone())
                        .await
                        .map_err(|e| failed("session_failed", e.to_string()))?;
                    // Timed from the schedule (forgiving the timer's own lateness, up to
                    // TIMER_SLACK).
                    sent.push_back(now.min(next + TIMER_SLACK));
                    next += interval;
                }
            }
        }
    }
    // Replies still outstanding do not count; the close is not measured.
    let _ = tokio::time::timeout(CLOSE_WAIT, s.close(CloseCode::NORMAL, "")).await;
    Ok(())
}

/// Checks `reply`, the echo of the oldest message in `sent` (sent at that time), and counts
/// it as arrived `now`.
fn echoed(
    reply: Option<Result<Message, switchyard::fallback::FallbackError>>,
    plan: &Plan,
    sent: &mut VecDeque<Instant>,
    now: Instant,
    window: &Window,
    report: &RefCell<Report>,
) -> Result<(), Failed> {
    let reply = match reply {
        Some(Ok(m)) => m,
        Some(Err(e)) => return Err(failed("session_failed", e.to_string())),
        None => {
            return Err(failed(
                "closed_early",
                "the session ended in the middle of the run",
            ))
        }
    };
    let payload: &[u8] = match &reply {
        Message::Text(t) if !plan.binary => t.as_bytes(),
        Message::Binary(b) if plan.binary => b,
        Message::Close(f) => {
            return Err(failed(
                "closed_early",
                format!("the session was closed in the middle of the run: {f:?}"),
            ))
        }
        other => {
            return Err(failed(
                "protocol_error",
                format!("unexpected message {other:?}; expected echoes"),
            ))
        }
    };
    if payload != plan.payload.as_slice() {
        return Err(failed(
            "protocol_error",
            format!(
                "echoed payload differs from the one sent ({} bytes back, {} sent)",
                payload.len(),
                plan.size
            ),
        ));
    }
    let Some(at) = sent.pop_front() else {
        return Err(failed(
            "protocol_error",
            "the server echoed more messages than were sent",
        ));
    };
    let mut r = report.borrow_mut();
    r.complete(now, now.saturating_duration_since(at), window);
    if let Some(live) = &r.live {
        live.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
