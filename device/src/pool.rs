//! A small pool of worker threads that the engine keeps for the life of an `Engine` (`std`), so
//! that a large convolution can split its output rows without starting threads per op (a
//! scoped spawn and join cost ≈ 95 µs on the 2-core development machine, as much as a whole
//! 3×3 layer of the demo student).

extern crate std;

use std::boxed::Box;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::vec::Vec;

/// One band of work: returns whether its kernel took the band.
type Job = Box<dyn FnOnce() -> bool + Send + 'static>;
/// What a worker sends back: the job's result, or its panic.
type Done = std::thread::Result<bool>;

pub(crate) struct Pool {
    workers: Vec<(mpsc::Sender<Job>, JoinHandle<()>)>,
    done: mpsc::Receiver<Done>,
}

impl Pool {
    /// `extra` workers beside the calling thread.
    pub(crate) fn new(extra: usize) -> Pool {
        let (done_tx, done) = mpsc::channel::<Done>();
        let workers = (0..extra)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Job>();
                let done_tx = done_tx.clone();
                let handle = std::thread::spawn(move || {
                    while let Some(job) = wait(&rx) {
                        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        if done_tx.send(r).is_err() {
                            return;
                        }
                    }
                });
                (tx, handle)
            })
            .collect();
        Pool { workers, done }
    }

    /// Workers beside the calling thread.
    pub(crate) fn extra(&self) -> usize {
        self.workers.len()
    }

    /// Runs `jobs` (at most [`Pool::extra`]) on the workers and `here` on the calling thread,
    /// and returns once every one has finished: whether all of them took their band. A panic in
    /// any is resumed here, after all have finished.
    pub(crate) fn run<'s>(
        &self,
        jobs: Vec<Box<dyn FnOnce() -> bool + Send + 's>>,
        here: impl FnOnce() -> bool,
    ) -> bool {
        assert!(jobs.len() <= self.workers.len(), "more bands than workers");
        let mut sent = 0;
        for (job, (tx, _)) in jobs.into_iter().zip(&self.workers) {
            // SAFETY: the job borrows data that lives for 's; this function does not return
            // (nor unwind: `here` runs under catch_unwind) before every job sent has reported
            // back below, so no borrow outlives its data. A worker that died (it cannot: jobs
            // run under catch_unwind) would make `send` fail, and the job is then dropped here.
            let job: Job =
                unsafe { core::mem::transmute::<Box<dyn FnOnce() -> bool + Send + 's>, Job>(job) };
            if tx.send(job).is_ok() {
                sent += 1;
            }
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(here));
        let mut ok = true;
        let mut panic = None;
        for _ in 0..sent {
            match wait(&self.done).ok_or(()) {
                Ok(Ok(r)) => ok &= r,
                Ok(Err(p)) => panic = Some(p),
                // every worker holds a sender, so the channel stays open while one runs
                Err(_) => ok = false,
            }
        }
        match mine {
            Ok(r) => ok &= r,
            Err(p) => std::panic::resume_unwind(p),
        }
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
        ok
    }
}

/// The next message of `rx`, spinning a while before sleeping (waking a sleeping thread costs
/// tens of microseconds on a virtual machine, more than a band of a small layer); `None` once
/// every sender is gone.
fn wait<T>(rx: &mpsc::Receiver<T>) -> Option<T> {
    for _ in 0..SPINS {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => core::hint::spin_loop(),
        }
    }
    rx.recv().ok()
}

/// Polls before a worker or the caller sleeps (≈ 0.1–1 ms).
const SPINS: usize = 20_000;

impl Drop for Pool {
    fn drop(&mut self) {
        for (tx, handle) in self.workers.drain(..) {
            drop(tx);
            let _ = handle.join();
        }
    }
}
