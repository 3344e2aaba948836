//! The threads that run io_uring connections when the server's runtime has several
//! worker threads.
//!
//! A ring belongs to one thread, and the tasks of a multi-thread runtime move between
//! threads. So with io_uring on a multi-thread runtime, connections run on threads of
//! their own: one current-thread runtime and one ring each, as many as the main runtime
//! has workers. The accept loop (on the main runtime) hands every accepted socket to the
//! next worker in turn, and the connection's task lives and ends there. Routes, caps,
//! metrics and the drain are the same shared state the main runtime's tasks use.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::sync::mpsc;
use tracing::{info, warn};

/// Work for a worker thread, run inside its runtime (it may `tokio::spawn`).
pub(crate) type Job = Box<dyn FnOnce() + Send>;

/// The process's io_uring worker threads.
pub(crate) struct UringWorkers {
    queues: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl UringWorkers {
    /// The process's workers, started on first use with `threads` threads. None when no
    /// thread could set up its ring (the kernel refuses io_uring: each said why) or
    /// start.
    pub(crate) fn get(threads: usize) -> Option<&'static UringWorkers> {
        static WORKERS: OnceLock<Option<UringWorkers>> = OnceLock::new();
        WORKERS.get_or_init(|| Self::start(threads.max(1))).as_ref()
    }

    fn start(threads: usize) -> Option<UringWorkers> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<(usize, bool)>();
        let mut queues = Vec::with_capacity(threads);
        for i in 0..threads {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!("cannot start an io_uring worker runtime: {e}");
                    break;
                }
            };
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let ready = ready_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("uring-worker-{i}"))
                .spawn(move || {
                    let up = crate::io::uring::available();
                    let _ = ready.send((i, up));
                    if !up {
                        return;
                    }
                    runtime.block_on(async move {
                        while let Some(job) = rx.recv().await {
                            job();
                        }
                    });
                });
            match spawned {
                Ok(_) => queues.push(tx),
                Err(e) => {
                    warn!("cannot start an io_uring worker thread: {e}");
                    break;
                }
            }
        }
        drop(ready_tx);
        // A thread whose ring failed has ended: keep the queues of those that run.
        let mut up = vec![false; queues.len()];
        for (i, ok) in ready_rx.iter().take(queues.len()) {
            up[i] = ok;
        }
        let queues: Vec<_> = queues
            .into_iter()
            .zip(up)
            .filter_map(|(q, up)| up.then_some(q))
            .collect();
        if queues.is_empty() {
            return None;
        }
        info!(threads = queues.len(), "io_uring worker threads started");
        Some(UringWorkers {
            queues,
            next: AtomicUsize::new(0),
        })
    }

    /// Run `job` on the next worker thread.
    pub(crate) fn run(&self, job: Job) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.queues.len();
        // A worker's loop only ends with the process.
        let _ = self.queues[i].send(job);
    }
}
