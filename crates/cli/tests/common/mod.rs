//! Shared by the cli's process tests (`mod common;`): child processes that
//! are killed on drop with their output captured, `switchyard` itself, nginx
//! (the Debian package) from a config template, and the repository's Python
//! venv. Each test binary uses a part of it.
#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The `switchyard` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// A child process with stdin kept open (a pipe), stdout and stderr captured
/// by threads; killed (SIGKILL, which also ends a stopped process) and
/// reaped on drop.
pub struct Proc {
    child: Child,
    name: String,
    stdin: Option<ChildStdin>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn capture(mut from: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

impl Proc {
    /// Spawn `cmd` with piped stdin, stdout and stderr.
    pub fn spawn(mut cmd: Command) -> Proc {
        let name = format!("{:?}", cmd.get_program());
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdin = child.stdin.take();
        let stdout = capture(child.stdout.take().unwrap());
        let stderr = capture(child.stderr.take().unwrap());
        Proc {
            child,
            name,
            stdin,
            stdout,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stdout so far.
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Stderr (the log) so far, without ANSI colour codes.
    pub fn stderr(&self) -> String {
        strip_ansi(&self.stderr.lock().unwrap())
    }

    /// Write to the child's stdin.
    pub fn write_stdin(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Close the child's stdin (EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Send a signal (`"TERM"`, `"STOP"`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {} failed", self.child.id());
    }

    /// The exit status, if it exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Wait for the exit, at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < within,
                "{} did not exit within {within:?}\nstdout:\n{}\nstderr:\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait (at most `within`) until `which` (stdout or stderr) satisfies
    /// `done`; returns that text.
    fn wait_for(&self, stream: &str, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let text = if stream == "stdout" {
                self.stdout()
            } else {
                self.stderr()
            };
            if done(&text) {
                return text;
            }
            if start.elapsed() > within {
                panic!(
                    "{}: waited {within:?} in vain on its {stream}\nstdout:\n{}\nstderr:\n{}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait (at most 10 s) until the log (stderr) contains `needle`.
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_for("stderr", Duration::from_secs(10), |s| s.contains(needle))
    }

    /// Wait (at most 10 s) until stdout contains `needle`.
    pub fn wait_stdout(&self, needle: &str) -> String {
        self.wait_for("stdout", Duration::from_secs(10), |s| s.contains(needle))
    }

    /// Wait (at most `within`) until stdout has `n` lines.
    pub fn wait_stdout_lines(&self, n: usize, within: Duration) -> Vec<String> {
        let text = self.wait_for("stdout", within, |s| s.matches('\n').count() >= n);
        text.lines().map(str::to_string).collect()
    }
}

/// `s` without ANSI escape sequences.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The address in a line like `listening on http://ADDR (...)`.
pub fn addr_in_line(line: &str) -> Option<SocketAddr> {
    line.split("://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// Start `switchyard ARGS` (log level info) and wait for its first `lines`
/// stdout lines (`listening on http://ADDR`, `admin on http://ADDR`); returns
/// the process and those addresses.
pub fn switchyard(args: &[&str], lines: usize) -> (Proc, Vec<SocketAddr>) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("RUST_LOG", "info");
    let p = Proc::spawn(cmd);
    let out = p.wait_stdout_lines(lines, Duration::from_secs(20));
    let addrs = out[..lines]
        .iter()
        .map(|l| addr_in_line(l).unwrap_or_else(|| panic!("unexpected line {l:?}")))
        .collect();
    (p, addrs)
}

/// A fresh directory under the system temp dir, unique per call.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "switchyard-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A file under `tests/fixtures` of this crate.
pub fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The repository's venv Python (`SWITCHYARD_PYTHON` overrides it), checked
/// to import `module`. Panics with the fix when it cannot: a test that needs
/// it fails rather than skips (scripts/install-test-deps.sh installs it).
pub fn venv_python(module: &str) -> OsString {
    let python = std::env::var_os("SWITCHYARD_PYTHON").unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../.venv/bin/python")
            .into_os_string()
    });
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{python:?} cannot import {module}: run scripts/install-test-deps.sh (or set SWITCHYARD_PYTHON)"
    );
    python
}

/// The nginx binary, if installed.
pub fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// nginx (the Debian package) in the foreground with one config; killed and
/// its directory removed on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nginx {
    /// Start nginx with the template `tests/fixtures/{fixture}`, whose
    /// `@DIR@`, `@PORT@` and `@BACKEND@` are replaced by its own directory, a
    /// free port and `backend`. Fails (never skips) when nginx is missing:
    /// scripts/install-test-deps.sh installs it. A port taken between the
    /// probe and nginx's bind is retried with another one.
    pub fn start(fixture_name: &str, backend: SocketAddr) -> Nginx {
        let nginx = find_nginx().expect(
            "nginx is not installed: this test needs the Debian package nginx (run \
             scripts/install-test-deps.sh); it fails rather than skips because CI installs it",
        );
        let template = std::fs::read_to_string(fixture(fixture_name)).unwrap();
        let mut last_log = String::new();
        for _ in 0..5 {
            let dir = temp_dir("nginx");
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = template
                .replace("@DIR@", dir.to_str().unwrap())
                .replace("@PORT@", &port.to_string())
                .replace("@BACKEND@", &backend.to_string());
            std::fs::write(dir.join("nginx.conf"), conf).unwrap();
            let child = Command::new(&nginx)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", nginx.display()));
            let mut n = Nginx {
                child,
                addr: ([127, 0, 0, 1], port).into(),
                dir,
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Some(status) = n.child.try_wait().unwrap() {
                    last_log = format!("nginx exited with {status}: {}", n.error_log());
                    break;
                }
                if TcpStream::connect(n.addr).is_ok() {
                    return n;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !last_log.contains("Address already in use") {
                panic!("nginx did not start on {}: {last_log}", n.addr);
            }
        }
        panic!("nginx could not bind a free port: {last_log}");
    }

    /// nginx's error log so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

/// Our own echo server (the gateway's built-in default: `/echo`), in-process
/// on its own thread and runtime, on a free loopback port. Lives as long as
/// the test process.
pub fn echo_server() -> SocketAddr {
    gateway(switchyard_gateway::config::Overrides::new())
}

/// The embedded default with these flags, listening on a free loopback
/// port, in-process on its own thread and runtime. Lives as long as the
/// test process.
pub fn gateway(mut flags: switchyard_gateway::config::Overrides) -> SocketAddr {
    use switchyard_gateway::config::Config;
    flags.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let cfg = flags.apply(Config::embedded_default()).unwrap();
    gateway_with(cfg)
}

/// [`gateway`] for a whole configuration (its listeners as configured).
pub fn gateway_with(cfg: switchyard_gateway::config::Config) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let gw = switchyard_gateway::Gateway::new(cfg, None).unwrap();
            let server = switchyard_gateway::Server::bind(gw).await.unwrap();
            tx.send(server.addresses()[0].tcp).unwrap();
            server.run(std::future::pending()).await;
        });
    });
    rx.recv().unwrap()
}

/// Run `fut(listener)` on a background runtime; return the listener's address.
pub fn spawn_server<F, Fut>(f: F) -> SocketAddr
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            f(l).await;
        });
    });
    rx.recv().unwrap()
}
