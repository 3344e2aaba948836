//! Server-Sent Events framing of a session's messages (the HTML Standard's
//! `text/event-stream`, what `EventSource` reads), both ways: the gateway
//! writes events with [`write_entry`], the client parses them with
//! [`SseParser`].
//!
//! | message | event |
//! |---|---|
//! | text without CR | `data:` lines (the text split at LF), default event type |
//! | text with a CR | `event: text-base64`, `data:` base64 of the UTF-8 |
//! | binary | `event: binary`, `data:` base64 |
//! | close | `event: close`, `data: {"code":N,"reason":"..."}` |
//!
//! Text with a carriage return is base64: the event-stream format treats CR,
//! LF and CRLF alike as line ends, so `data:` lines could not tell them apart
//! and the text would not arrive unchanged. Every event carries
//! `id: <event id>` ([`super::wire::EventId`]).

use bytes::{BufMut, Bytes, BytesMut};
use switchyard_proto::message::Utf8Bytes;
use switchyard_proto::CloseFrame;

use super::wire::{decode_base64, encode_base64, Entry, EventId, Payload, WireError};

/// The event type of binary messages.
pub const EVENT_BINARY: &str = "binary";
/// The event type of text messages that contain a carriage return.
pub const EVENT_TEXT_BASE64: &str = "text-base64";
/// The event type of the end of the session.
pub const EVENT_CLOSE: &str = "close";

/// The JSON data of a close event.
#[derive(serde::Serialize, serde::Deserialize)]
struct CloseData {
    code: u16,
    reason: String,
}

/// Append one event for `entry`, numbered `id` (whose sequence number is
/// the entry's).
pub fn write_entry(out: &mut BytesMut, id: &EventId, entry: &Entry) {
    out.put_slice(b"id: ");
    out.put_slice(id.to_string().as_bytes());
    out.put_u8(b'\n');
    match &entry.payload {
        Payload::Text(t) if !t.contains('\r') => {
            for line in t.split('\n') {
                data_line(out, line);
            }
        }
        Payload::Text(t) => {
            event_line(out, EVENT_TEXT_BASE64);
            data_line(out, &encode_base64(t.as_bytes()));
        }
        Payload::Binary(b) => {
            event_line(out, EVENT_BINARY);
            data_line(out, &encode_base64(b));
        }
        Payload::Close(f) => {
            event_line(out, EVENT_CLOSE);
            let data = CloseData {
                code: f.code.0,
                reason: f.reason.clone(),
            };
            // Serializing a struct of a number and a string cannot fail.
            data_line(out, &serde_json::to_string(&data).unwrap_or_default());
        }
    }
    out.put_u8(b'\n');
}

fn event_line(out: &mut BytesMut, event: &str) {
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
}

fn data_line(out: &mut BytesMut, line: &str) {
    // Always one space after the colon: the parser removes exactly one, so
    // a line that starts with a space keeps it.
    out.put_slice(b"data: ");
    out.put_slice(line.as_bytes());
    out.put_u8(b'\n');
}

/// Append a comment (ignored by `EventSource`; keeps the stream alive).
/// `text` must not contain CR or LF.
pub fn write_comment(out: &mut BytesMut, text: &str) {
    out.put_u8(b':');
    out.put_slice(text.as_bytes());
    out.put_slice(b"\n\n");
}

/// Append a `retry:` field: the milliseconds an `EventSource` waits before it
/// reconnects.
pub fn write_retry(out: &mut BytesMut, millis: u64) {
    out.put_slice(format!("retry: {millis}\n\n").as_bytes());
}

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `id:` field, if the event had one.
    pub id: Option<String>,
    /// The event type (`message` when none was given).
    pub event: String,
    /// The data lines joined with LF.
    pub data: String,
}

impl SseEvent {
    /// The session entry this event carries.
    pub fn to_entry(&self) -> Result<Entry, WireError> {
        let id = self
            .id
            .as_deref()
            .ok_or_else(|| WireError::BadEvent("an event without id".into()))?;
        let seq = EventId::parse(id)?.seq();
        let payload = match self.event.as_str() {
            "message" => Payload::Text(Utf8Bytes::from(self.data.as_str())),
            EVENT_BINARY => Payload::Binary(decode_base64(&self.data)?),
            EVENT_TEXT_BASE64 => {
                let bytes: Bytes = decode_base64(&self.data)?;
                Payload::Text(Utf8Bytes::try_from_bytes(bytes).ok_or(WireError::NotUtf8)?)
            }
            EVENT_CLOSE => {
                let c: CloseData = serde_json::from_str(&self.data)
                    .map_err(|e| WireError::BadEvent(format!("close data: {e}")))?;
                Payload::Close(CloseFrame::new(c.code.into(), c.reason))
            }
            other => return Err(WireError::BadEvent(format!("event type {other:?}"))),
        };
        Ok(Entry { seq, payload })
    }
}

/// The event-stream parser of the HTML Standard (§9.2.6), incremental:
/// [`SseParser::feed`] bytes as they arrive, take the events it completes.
/// Lines end with CR, LF or CRLF; comments and unknown fields are skipped.
///
/// Memory is bounded: an event (or a line) longer than `max_event` bytes is
/// an error.
#[derive(Debug)]
pub struct SseParser {
    buf: BytesMut,
    /// A CR ended the last line; an LF right after it belongs to it.
    after_cr: bool,
    started: bool,
    event: SseEvent,
    has_data: bool,
    /// The last `id:` seen (kept across events, as `EventSource` does).
    last_id: Option<String>,
    max_event: usize,
}

/// An event or a line exceeded the parser's bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an SSE event is larger than {0} bytes")]
pub struct EventTooLarge(pub usize);

impl SseParser {
    /// A parser that refuses events above `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        SseParser {
            buf: BytesMut::new(),
            after_cr: false,
            started: false,
            event: SseEvent::default(),
            has_data: false,
            last_id: None,
            max_event,
        }
    }

    /// Parse `bytes`; completed events are appended to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), EventTooLarge> {
        self.buf.extend_from_slice(bytes);
        loop {
            match self.buf.first() {
                // The rest of this line end may come in the next call.
                None => break,
                Some(b'\n') if self.after_cr => {
                    let _ = self.buf.split_to(1);
                }
                Some(_) => {}
            }
            self.after_cr = false;
            let Some(end) = self.buf.iter().position(|&b| b == b'\n' || b == b'\r') else {
                break;
            };
            self.after_cr = self.buf[end] == b'\r';
            let line = self.buf.split_to(end + 1);
            let mut line = &line[..end];
            if !self.started {
                self.started = true;
                line = line.strip_prefix("\u{feff}".as_bytes()).unwrap_or(line);
            }
            self.line(&String::from_utf8_lossy(line), out);
            if self.event.data.len() > self.max_event {
                return Err(EventTooLarge(self.max_event));
            }
        }
        if self.buf.len() > self.max_event {
            return Err(EventTooLarge(self.max_event));
        }
        Ok(())
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.has_data {
                let mut ev = std::mem::take(&mut self.event);
                ev.id.clone_from(&self.last_id);
                if ev.event.is_empty() {
                    ev.event = "message".into();
                }
                out.push(ev);
            }
            self.event = SseEvent::default();
            self.has_data = false;
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event.event = value.to_string(),
            "data" => {
                if self.has_data {
                    self.event.data.push('\n');
                }
                self.event.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_string()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_proto::CloseCode;

    use super::super::wire::{Seq, SessionId, Token};

    fn entry(seq: u64, payload: Payload) -> Entry {
        Entry {
            seq: Seq(seq),
            payload,
        }
    }

    fn round_trip(entries: &[Entry], chunk: usize) -> Vec<Entry> {
        let mut out = BytesMut::new();
        write_retry(&mut out, 2000);
        for e in entries {
            write_entry(&mut out, &EventId::Seq(e.seq), e);
            write_comment(&mut out, "hb");
        }
        let mut p = SseParser::new(1 << 20);
        let mut events = Vec::new();
        for c in out.chunks(chunk) {
            p.feed(c, &mut events).unwrap();
        }
        events.iter().map(|e| e.to_entry().unwrap()).collect()
    }

    #[test]
    fn every_payload_survives_the_event_stream() {
        let entries = vec![
            entry(1, Payload::Text("hello".into())),
            entry(2, Payload::Text("".into())),
            entry(3, Payload::Text("two\nlines\n".into())),
            entry(4, Payload::Text(" leading space and \r\n CRLF".into())),
            entry(5, Payload::Text("\r".into())),
            entry(6, Payload::Binary(Bytes::from_static(&[0, 10, 13, 255]))),
            entry(7, Payload::Binary(Bytes::new())),
            entry(8, Payload::Text(": not a comment ✓".into())),
            entry(
                9,
                Payload::Close(CloseFrame::new(CloseCode(4001), "bye \"x\"\n")),
            ),
        ];
        for chunk in [1, 3, 7, 4096] {
            assert_eq!(round_trip(&entries, chunk), entries, "chunk {chunk}");
        }
    }

    #[test]
    fn event_text_is_what_event_source_expects() {
        let mut out = BytesMut::new();
        write_entry(
            &mut out,
            &EventId::Seq(Seq(3)),
            &entry(3, Payload::Text("a\nb".into())),
        );
        assert_eq!(&out[..], b"id: 3\ndata: a\ndata: b\n\n");
        out.clear();
        write_entry(
            &mut out,
            &EventId::Seq(Seq(4)),
            &entry(4, Payload::Binary(Bytes::from_static(b"\x01\x02"))),
        );
        assert_eq!(&out[..], b"id: 4\nevent: binary\ndata: AQI=\n\n");
        out.clear();
        let id = EventId::Resume {
            sid: SessionId::from_bytes([1; 16]),
            token: Token::from_bytes([2; 16]),
            seq: Seq(5),
        };
        write_entry(
            &mut out,
            &id,
            &entry(5, Payload::Close(CloseFrame::new(CloseCode::NORMAL, ""))),
        );
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(
            text,
            format!(
                "id: {}.{}.5\nevent: close\ndata: {{\"code\":1000,\"reason\":\"\"}}\n\n",
                "01".repeat(16),
                "02".repeat(16)
            )
        );
    }

    #[test]
    fn parser_follows_the_standard() {
        // BOM, CR and CRLF line ends, a field without colon, comments, an
        // event without data (not dispatched), an id kept for later events;
        // whole and byte by byte (a CRLF split between two reads).
        let stream =
            "\u{feff}id: 1\r\ndata:x\r\rdata\n\nevent: e\n\n: c\nid: 2\ndata: y\n\ndata: z\r\n\r\n";
        for chunk in [stream.len(), 1] {
            let mut p = SseParser::new(1024);
            let mut ev = Vec::new();
            for c in stream.as_bytes().chunks(chunk) {
                p.feed(c, &mut ev).unwrap();
            }
            let got: Vec<(Option<&str>, &str, &str)> = ev
                .iter()
                .map(|e| (e.id.as_deref(), e.event.as_str(), e.data.as_str()))
                .collect();
            assert_eq!(
                got,
                [
                    (Some("1"), "message", "x"),
                    (Some("1"), "message", ""),
                    (Some("2"), "message", "y"),
                    (Some("2"), "message", "z"),
                ]
            );
        }
    }

    #[test]
    fn parser_bounds_memory() {
        let mut p = SseParser::new(16);
        let mut ev = Vec::new();
        assert_eq!(p.feed(&[b'a'; 17], &mut ev), Err(EventTooLarge(16)));
        let mut p = SseParser::new(16);
        assert!(p.feed(b"data: 0123456789\n", &mut ev).is_ok());
        assert_eq!(
            p.feed(b"data: 0123456789\n", &mut ev),
            Err(EventTooLarge(16))
        );
    }

    #[test]
    fn bad_events_are_errors() {
        let ev = |id: Option<&str>, event: &str, data: &str| SseEvent {
            id: id.map(str::to_string),
            event: event.into(),
            data: data.into(),
        };
        assert!(ev(None, "message", "x").to_entry().is_err());
        assert!(ev(Some("x"), "message", "x").to_entry().is_err());
        assert!(ev(Some("1"), "binary", "!").to_entry().is_err());
        assert!(
            ev(Some("1"), "text-base64", "/w==").to_entry().is_err(),
            "not UTF-8"
        );
        assert!(ev(Some("1"), "close", "{}").to_entry().is_err());
        assert!(ev(Some("1"), "other", "").to_entry().is_err());
    }
}
