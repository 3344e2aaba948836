//! A measurement sketch, not a WebSocket server: what the io_uring I/O path would give an echo
//! server in case (a) of `bench/run.sh`, against the epoll servers (switchyard and the peers all
//! make one `recv` and one `send` syscall per message and one `epoll_wait` per batch).
//!
//! One thread, one ring (`SINGLE_ISSUER | COOP_TASKRUN | DEFER_TASKRUN`), no epoll: every
//! connection always has one `Recv` queued and at most one `Send` in flight, and all the
//! requests of a batch of completions go to the kernel in one `io_uring_enter`.
//!
//! It reads the upgrade request only for its `Sec-WebSocket-Key`, and unmasks and echoes
//! frames of up to 64 KiB without checking anything RFC 6455 asks for (no UTF-8, no
//! limits, no close handshake beyond echoing the close). Only ever run it by hand:
//! `bench/run.sh --servers "switchyard fastwebsockets io-uring-sketch" --cases a`.

#[path = "../common.rs"]
#[allow(dead_code)] // the tokio helpers
mod common;

use io_uring::{opcode, types, IoUring};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// `user_data` of the accept; a connection's is `index << 1`, `| 1` for its send.
const ACCEPT: u64 = u64::MAX;

struct Conn {
    fd: i32,
    rbuf: Vec<u8>,
    rlen: usize,
    /// The bytes of the send in flight: they must not move until it completes.
    sending: Vec<u8>,
    in_flight: bool,
    /// Replies queued while a send is in flight.
    next: Vec<u8>,
    upgraded: bool,
    closed: bool,
}

fn main() {
    let addr = common::listen_addr();
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {addr}");
    let mut ring: IoUring = match IoUring::builder()
        .setup_single_issuer()
        .setup_coop_taskrun()
        .setup_defer_taskrun()
        .build(4096)
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot set up io_uring: {e}");
            std::process::exit(1);
        }
    };
    let lfd = listener.as_raw_fd();
    let mut conns: Vec<Conn> = Vec::new();
    push(
        &mut ring,
        opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
            .build()
            .user_data(ACCEPT),
    );
    let mut done = Vec::new();
    loop {
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            eprintln!("error: io_uring_enter: {e}");
            std::process::exit(1);
        }
        done.clear();
        done.extend(ring.completion().map(|e| (e.user_data(), e.result())));
        for &(ud, res) in &done {
            if ud == ACCEPT {
                if res >= 0 {
                    let one: libc::c_int = 1;
                    // SAFETY: `res` is the accepted socket; the option value is a c_int.
                    unsafe {
                        libc::setsockopt(
                            res,
                            libc::IPPROTO_TCP,
                            libc::TCP_NODELAY,
                            (&one as *const libc::c_int).cast(),
                            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                        );
                    }
                    conns.push(Conn {
                        fd: res,
                        rbuf: vec![0; 128 * 1024],
                        rlen: 0,
                        sending: Vec::with_capacity(4096),
                        in_flight: false,
                        next: Vec::with_capacity(4096),
                        upgraded: false,
                        closed: false,
                    });
                    let i = conns.len() - 1;
                    recv(&mut ring, i, &mut conns[i]);
                }
                push(
                    &mut ring,
                    opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
                        .build()
                        .user_data(ACCEPT),
                );
                continue;
            }
            let i = (ud >> 1) as usize;
            let c = &mut conns[i];
            if ud & 1 == 1 {
                c.in_flight = false;
                if res < 0 || c.closed {
                    close(c);
                    continue;
                }
                c.sending.drain(..(res as usize).min(c.sending.len()));
                if c.sending.is_empty() {
                    std::mem::swap(&mut c.sending, &mut c.next);
                }
                if !c.sending.is_empty() {
                    send(&mut ring, i, c);
                }
                continue;
            }
            if res <= 0 || c.closed {
                close(c);
                continue;
            }
            c.rlen += res as usize;
            let queue = if c.in_flight {
                &mut c.next
            } else {
                &mut c.sending
            };
            if !c.upgraded {
                let Some(end) = c.rbuf[..c.rlen].windows(4).position(|w| w == b"\r\n\r\n") else {
                    recv(&mut ring, i, c);
                    continue;
                };
                let head = String::from_utf8_lossy(&c.rbuf[..end]).into_owned();
                let key = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("sec-websocket-key")
                        .then(|| v.trim().to_owned())
                });
                let Some(key) = key else {
                    close(c);
                    continue;
                };
                queue.extend_from_slice(
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                        derive_accept_key(key.as_bytes())
                    )
                    .as_bytes(),
                );
                c.rbuf.copy_within(end + 4..c.rlen, 0);
                c.rlen -= end + 4;
                c.upgraded = true;
            }
            let used = echo_frames(&c.rbuf[..c.rlen], queue);
            match used {
                Some(n) => {
                    c.rbuf.copy_within(n..c.rlen, 0);
                    c.rlen -= n;
                }
                None => c.closed = true,
            }
            if !c.in_flight && !c.sending.is_empty() {
                send(&mut ring, i, c);
            }
            if !c.closed {
                recv(&mut ring, i, c);
            }
        }
    }
}

/// The largest frame echoed (case (c) sends 64 KiB); the receive buffer holds two.
const MAX_FRAME: usize = 64 * 1024;

/// Appends the echo of every complete (masked) client frame in `buf` to `out`; returns the
/// bytes used, or `None` after a close frame or a frame larger than [`MAX_FRAME`].
fn echo_frames(buf: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let mut pos = 0;
    loop {
        let b = &buf[pos..];
        if b.len() < 2 {
            return Some(pos);
        }
        let (header, len) = match b[1] & 0x7f {
            126 if b.len() < 4 => return Some(pos),
            126 => (4, usize::from(u16::from_be_bytes([b[2], b[3]]))),
            127 if b.len() < 10 => return Some(pos),
            127 => {
                let len = u64::from_be_bytes(b[2..10].try_into().unwrap_or_default());
                match usize::try_from(len) {
                    Ok(len) if len <= MAX_FRAME => (10, len),
                    _ => return None,
                }
            }
            n => (2, usize::from(n)),
        };
        if b.len() < header + 4 + len {
            return Some(pos);
        }
        let opcode = b[0] & 0x0f;
        let mask = [b[header], b[header + 1], b[header + 2], b[header + 3]];
        out.push(0x80 | opcode);
        if len < 126 {
            out.push(len as u8);
        } else if len <= usize::from(u16::MAX) {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let start = out.len();
        out.extend_from_slice(&b[header + 4..header + 4 + len]);
        for (k, x) in out[start..].iter_mut().enumerate() {
            *x ^= mask[k & 3];
        }
        if opcode == 0x8 {
            return None;
        }
        pos += header + 4 + len;
    }
}

fn push(ring: &mut IoUring, entry: io_uring::squeue::Entry) {
    // SAFETY: every buffer an entry points at lives in a `Conn` that is never dropped, and is
    // not touched (`sending`) or not moved (`rbuf`, fixed length) until the entry completes.
    while unsafe { ring.submission().push(&entry) }.is_err() {
        if let Err(e) = ring.submit() {
            eprintln!("error: io_uring_enter: {e}");
            std::process::exit(1);
        }
    }
}

fn recv(ring: &mut IoUring, i: usize, c: &mut Conn) {
    if c.rlen == c.rbuf.len() {
        close(c); // a frame larger than the buffer: not for this sketch
        return;
    }
    let room = &mut c.rbuf[c.rlen..];
    let entry = opcode::Recv::new(types::Fd(c.fd), room.as_mut_ptr(), room.len() as u32)
        .build()
        .user_data((i as u64) << 1);
    push(ring, entry);
}

fn send(ring: &mut IoUring, i: usize, c: &mut Conn) {
    c.in_flight = true;
    let entry = opcode::Send::new(types::Fd(c.fd), c.sending.as_ptr(), c.sending.len() as u32)
        .build()
        .user_data(((i as u64) << 1) | 1);
    push(ring, entry);
}

fn close(c: &mut Conn) {
    if c.fd >= 0 && !c.in_flight {
        // SAFETY: `c.fd` is a socket this loop accepted and closes once (set to -1 after).
        unsafe { libc::close(c.fd) };
        c.fd = -1;
    }
    c.closed = true;
}
