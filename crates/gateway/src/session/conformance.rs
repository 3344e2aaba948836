//! The behaviour every [`SessionStore`] shows, as tests run against each
//! implementation (`store_conformance!` in their test modules).

use std::sync::Arc;
use std::time::Duration;

use switchyard::fallback::wire::{Payload, Seq, SessionId, Token};
use switchyard::{CloseCode, CloseFrame};

use super::settings::FallbackSettings;
use super::store::{
    Aborted, Accepted, Pushed, ReadOutcome, SessionRecord, SessionStore, TokenDigest, ENTRY_COST,
};

pub(crate) fn record(replay_bytes: usize, max_body: usize) -> SessionRecord {
    SessionRecord {
        route: "/r".into(),
        token: TokenDigest::of(&Token::from_bytes([1; 16])),
        subprotocol: None,
        settings: FallbackSettings {
            replay_bytes,
            max_body,
            idle_timeout: Duration::from_secs(30),
            ..FallbackSettings::default()
        },
        receive_only: false,
        transport: None,
    }
}

fn text(s: &str) -> Payload {
    Payload::Text(s.into())
}

pub(crate) const ID: SessionId = SessionId::from_bytes([7; 16]);
const NOW: Duration = Duration::ZERO;

pub(crate) fn seqs(o: &ReadOutcome) -> Vec<u64> {
    match o {
        ReadOutcome::Entries(e) => e.iter().map(|e| e.seq.0).collect(),
        other => panic!("expected entries, got {other:?}"),
    }
}

pub(crate) async fn log_numbers_entries_and_a_close_ends_it(s: Arc<dyn SessionStore>) {
    s.create(ID, record(1 << 20, 1 << 20)).await.unwrap();
    assert_eq!(
        s.push(ID, vec![text("a"), text("b")]).await,
        Ok(Pushed::Appended {
            last: Seq(2),
            room: true
        })
    );
    let r = s.begin_read(ID, Seq(0)).await.unwrap();
    assert!(!r.replays);
    let got = s.read(ID, r.ticket, Seq(0), 1 << 20, NOW).await.unwrap();
    assert_eq!(seqs(&got), [1, 2]);
    let close = Payload::Close(CloseFrame::new(CloseCode::NORMAL, ""));
    assert_eq!(
        s.push(ID, vec![close, text("late")]).await,
        Ok(Pushed::Appended {
            last: Seq(3),
            room: true
        })
    );
    assert_eq!(s.push(ID, vec![text("later")]).await, Ok(Pushed::Ended));
    assert_eq!(
        seqs(&s.read(ID, r.ticket, Seq(2), 1 << 20, NOW).await.unwrap()),
        [3]
    );
    // After the close, the close again.
    assert_eq!(
        seqs(&s.read(ID, r.ticket, Seq(3), 1 << 20, NOW).await.unwrap()),
        [3]
    );
    assert_eq!(
        s.read(ID, r.ticket, Seq(4), 1 << 20, NOW).await.unwrap(),
        ReadOutcome::Ahead { last: Seq(3) }
    );
}

pub(crate) async fn a_new_reader_replaces_the_old_one_and_wakes_it(s: Arc<dyn SessionStore>) {
    s.create(ID, record(1 << 20, 1 << 20)).await.unwrap();
    let old = s.begin_read(ID, Seq(0)).await.unwrap();
    let waiting = {
        let s = s.clone();
        tokio::spawn(async move {
            s.read(ID, old.ticket, Seq(0), 1000, Duration::from_secs(60))
                .await
        })
    };
    tokio::task::yield_now().await;
    let new = s.begin_read(ID, Seq(0)).await.unwrap();
    assert_ne!(new.ticket, old.ticket);
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, Ok(ReadOutcome::Replaced));
}

pub(crate) async fn a_read_waits_for_entries(s: Arc<dyn SessionStore>) {
    s.create(ID, record(1 << 20, 1 << 20)).await.unwrap();
    let r = s.begin_read(ID, Seq(0)).await.unwrap();
    let waiting = {
        let s = s.clone();
        tokio::spawn(async move {
            s.read(ID, r.ticket, Seq(0), 1000, Duration::from_secs(60))
                .await
        })
    };
    tokio::task::yield_now().await;
    s.push(ID, vec![text("x")]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seqs(&got.unwrap()), [1]);
    // A wait that passes answers an empty list.
    let empty = s
        .read(ID, r.ticket, Seq(1), 1000, Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(empty, ReadOutcome::Entries(vec![]));
}

pub(crate) async fn the_window_keeps_undelivered_entries_and_trims_delivered_ones(
    s: Arc<dyn SessionStore>,
) {
    // Room for two entries of 100 bytes.
    let window = 2 * (100 + ENTRY_COST);
    s.create(ID, record(window, 1 << 20)).await.unwrap();
    let hundred = || Payload::Binary(vec![0u8; 100].into());
    let mut rooms = Vec::new();
    for _ in 0..3 {
        match s.push(ID, vec![hundred()]).await.unwrap() {
            Pushed::Appended { room, .. } => rooms.push(room),
            other => panic!("{other:?}"),
        }
    }
    // Each push says whether the owner may go on without waiting.
    assert_eq!(rooms, [true, false, false]);
    // Nothing delivered: nothing dropped, and no room for the owner.
    assert!(!s.wait_room(ID, NOW).await.unwrap());
    let r = s.begin_read(ID, Seq(0)).await.unwrap();
    assert_eq!(
        seqs(&s.read(ID, r.ticket, Seq(0), 150, NOW).await.unwrap()),
        [1]
    );
    assert!(
        !s.wait_room(ID, NOW).await.unwrap(),
        "two undelivered fill the window"
    );
    assert_eq!(
        seqs(&s.read(ID, r.ticket, Seq(1), 1 << 20, NOW).await.unwrap()),
        [2, 3]
    );
    assert!(s.wait_room(ID, NOW).await.unwrap(), "all delivered");
    // Delivered 1..3, window of two: 1 is gone; a resume from 0 cannot be served.
    let again = s.begin_read(ID, Seq(0)).await.unwrap();
    assert!(again.replays);
    assert_eq!(
        s.read(ID, again.ticket, Seq(0), 1 << 20, NOW)
            .await
            .unwrap(),
        ReadOutcome::WindowExceeded
    );
    assert_eq!(
        seqs(
            &s.read(ID, again.ticket, Seq(1), 1 << 20, NOW)
                .await
                .unwrap()
        ),
        [2, 3]
    );
    // The abort ends the log with the client's close and queues the backend's.
    let w = |c| CloseFrame::new(CloseCode(c), "w");
    let a = s.abort(ID, w(4410), w(1011)).await.unwrap();
    assert_eq!(
        a,
        Aborted {
            seq: Seq(4),
            now: true
        }
    );
    let again = s.abort(ID, w(4410), w(1011)).await.unwrap();
    assert_eq!(
        again,
        Aborted {
            seq: Seq(4),
            now: false
        }
    );
    let inbound = s.take_inbound(ID, Seq(0), NOW).await.unwrap();
    assert_eq!(
        inbound.items,
        [(
            Seq(1),
            Payload::Close(CloseFrame::new(CloseCode(1011), "w"))
        )]
    );
    assert_eq!(s.push(ID, vec![hundred()]).await, Ok(Pushed::Ended));
    assert!(
        s.wait_room(ID, NOW).await.unwrap(),
        "an ended log never blocks the owner"
    );
}

pub(crate) async fn client_messages_are_taken_once_in_order(s: Arc<dyn SessionStore>) {
    s.create(ID, record(1 << 20, 1 << 20)).await.unwrap();
    assert_eq!(
        s.accept(ID, Seq(1), vec![text("1"), text("2")]).await,
        Ok(Accepted::Acked(Seq(2)))
    );
    // The same request again: acknowledged, not taken twice.
    assert_eq!(
        s.accept(ID, Seq(1), vec![text("1"), text("2")]).await,
        Ok(Accepted::Acked(Seq(2)))
    );
    // Overlapping: only 3 is new.
    assert_eq!(
        s.accept(ID, Seq(2), vec![text("2"), text("3")]).await,
        Ok(Accepted::Acked(Seq(3)))
    );
    assert_eq!(
        s.accept(ID, Seq(5), vec![text("5")]).await,
        Ok(Accepted::Gap { expected: Seq(4) })
    );
    let got = s.take_inbound(ID, Seq(0), NOW).await.unwrap();
    let texts: Vec<(u64, Payload)> = got.items.into_iter().map(|(s, p)| (s.0, p)).collect();
    assert_eq!(texts, [(1, text("1")), (2, text("2")), (3, text("3"))]);
    // The owner's cursor drops what it handled.
    assert!(s
        .take_inbound(ID, Seq(3), NOW)
        .await
        .unwrap()
        .items
        .is_empty());
    // A close comes after the messages; later sends are refused, a
    // repeat of an old one is still acknowledged.
    assert_eq!(
        s.request_close(ID, CloseFrame::new(CloseCode::NORMAL, ""))
            .await,
        Ok(Accepted::Acked(Seq(3)))
    );
    assert_eq!(
        s.accept(ID, Seq(4), vec![text("4")]).await,
        Ok(Accepted::Closed)
    );
    assert_eq!(
        s.accept(ID, Seq(3), vec![text("3")]).await,
        Ok(Accepted::Acked(Seq(3)))
    );
    let got = s.take_inbound(ID, Seq(3), NOW).await.unwrap();
    assert_eq!(
        got.items,
        [(
            Seq(4),
            Payload::Close(CloseFrame::new(CloseCode::NORMAL, ""))
        )]
    );
}

pub(crate) async fn the_queue_for_the_backend_is_bounded(s: Arc<dyn SessionStore>) {
    let max = 2 * (10 + ENTRY_COST);
    s.create(ID, record(1 << 20, max)).await.unwrap();
    let ten = || Payload::Binary(vec![1u8; 10].into());
    assert_eq!(
        s.accept(ID, Seq(1), vec![ten(), ten()]).await,
        Ok(Accepted::Acked(Seq(2)))
    );
    assert_eq!(s.accept(ID, Seq(3), vec![ten()]).await, Ok(Accepted::Full));
    s.take_inbound(ID, Seq(2), NOW).await.unwrap();
    assert_eq!(
        s.accept(ID, Seq(3), vec![ten()]).await,
        Ok(Accepted::Acked(Seq(3)))
    );
}

/// One `#[tokio::test]` per behaviour above, each on a fresh store from
/// `$make` (an async expression giving the store and what must live as
/// long as the test, e.g. its server).
macro_rules! store_conformance {
    ($make:expr) => {
        #[tokio::test]
        async fn log_numbers_entries_and_a_close_ends_it() {
            let (store, _keep) = $make.await;
            crate::session::conformance::log_numbers_entries_and_a_close_ends_it(store).await;
        }
        #[tokio::test]
        async fn a_new_reader_replaces_the_old_one_and_wakes_it() {
            let (store, _keep) = $make.await;
            crate::session::conformance::a_new_reader_replaces_the_old_one_and_wakes_it(store).await;
        }
        #[tokio::test]
        async fn a_read_waits_for_entries() {
            let (store, _keep) = $make.await;
            crate::session::conformance::a_read_waits_for_entries(store).await;
        }
        #[tokio::test]
        async fn the_window_keeps_undelivered_entries_and_trims_delivered_ones() {
            let (store, _keep) = $make.await;
            crate::session::conformance::the_window_keeps_undelivered_entries_and_trims_delivered_ones(store).await;
        }
        #[tokio::test]
        async fn client_messages_are_taken_once_in_order() {
            let (store, _keep) = $make.await;
            crate::session::conformance::client_messages_are_taken_once_in_order(store).await;
        }
        #[tokio::test]
        async fn the_queue_for_the_backend_is_bounded() {
            let (store, _keep) = $make.await;
            crate::session::conformance::the_queue_for_the_backend_is_bounded(store).await;
        }
    };
}
pub(crate) use store_conformance;
