//! A persistent pool of worker threads that run one parallel job at a time.
//!
//! Every op on the hot path (a matmul, the attention over all heads) is one `run` call: the caller publishes a job,
//! the workers spin briefly and then park while waiting, all threads execute the job with their own index, and the
//! caller returns when every thread is done. No thread is spawned and nothing is allocated per call.

use std::cell::Cell;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Iterations a waiting thread spins before it parks on the condition variable.
const SPIN_LIMIT: usize = 20_000;

type Job<'a> = dyn Fn(usize, usize) + Sync + 'a;

struct Shared {
    /// Incremented once per published job; workers wait for it to change.
    generation: AtomicUsize,
    /// Threads (workers and caller) that have not finished the current job.
    pending: AtomicUsize,
    /// The current job, valid while `pending > 0` (lifetime erased; `run` waits before returning).
    job: Mutex<Option<*const Job<'static>>>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// Set when a worker's part of the current job panicked; `run` re-raises it on the caller.
    panicked: AtomicBool,
}

// SAFETY: the raw job pointer is only dereferenced while the `run` call that owns the closure is blocked waiting.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// A fixed set of threads that execute `run` jobs together with the calling thread.
///
/// Not `Sync`: one job at a time, published by the pool's owner (a job cannot start another).
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    _not_sync: PhantomData<Cell<()>>,
}

/// Waits, even while unwinding, until every worker has finished with the published job.
struct WaitForWorkers<'a>(&'a Shared);

impl Drop for WaitForWorkers<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
        let mut spins = 0usize;
        while self.0.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl ThreadPool {
    /// A pool of `n_threads` threads in total, the caller included (0 means all available cores).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = resolve(n_threads);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
        });
        let workers = (1..n_threads)
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("fulcrum-worker-{index}"))
                    .spawn(move || worker_loop(&shared, index, n_threads))
                    .expect("spawning a worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
            _not_sync: PhantomData,
        }
    }

    /// Number of threads that execute each job.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `job(thread_index, n_threads)` on every thread of the pool and returns when all are done.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, job: F) {
        if self.n_threads == 1 {
            job(0, 1);
            return;
        }
        let job_ref: &Job<'_> = &job;
        // SAFETY: erase the lifetime; we do not return before every worker has finished with the pointer.
        let ptr: *const Job<'static> = unsafe { std::mem::transmute(job_ref as *const Job<'_>) };
        {
            let mut slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(ptr);
            self.shared.panicked.store(false, Ordering::SeqCst);
            self.shared.pending.store(self.n_threads, Ordering::SeqCst);
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
            self.shared.wake.notify_all();
        }
        {
            let _wait = WaitForWorkers(&self.shared);
            job(0, self.n_threads);
        }
        if self.shared.panicked.swap(false, Ordering::SeqCst) {
            panic!("a worker thread panicked while running a job");
        }
    }
}

fn worker_loop(shared: &Shared, index: usize, n_threads: usize) {
    let mut seen = 0usize;
    loop {
        let mut spins = 0usize;
        while shared.generation.load(Ordering::Acquire) == seen
            && !shared.shutdown.load(Ordering::Acquire)
        {
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let slot = shared.job.lock().unwrap_or_else(|e| e.into_inner());
            if shared.generation.load(Ordering::Acquire) == seen
                && !shared.shutdown.load(Ordering::Acquire)
            {
                drop(shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner()));
            }
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = shared.generation.load(Ordering::Acquire);
        let ptr = shared
            .job
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expect("a job is published");
        // SAFETY: the publishing `run` call waits for `pending` to reach zero before the closure goes away.
        let job = unsafe { &*ptr };
        if catch_unwind(AssertUnwindSafe(|| job(index, n_threads))).is_err() {
            shared.panicked.store(true, Ordering::SeqCst);
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::SeqCst);
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// The number of cores available to this process.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The threads a pool asked for `n_threads` runs: that many, or one per core for 0.
pub fn resolve(n_threads: usize) -> usize {
    if n_threads == 0 {
        default_threads()
    } else {
        n_threads
    }
}

/// The half-open range of `0..len` that thread `index` of `n` handles, in contiguous, balanced pieces.
pub fn split_range(len: usize, index: usize, n: usize) -> std::ops::Range<usize> {
    let start = len * index / n;
    let end = len * (index + 1) / n;
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_index_runs_once_per_job() {
        let pool = ThreadPool::new(3);
        for round in 0..200u64 {
            let seen = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
            pool.run(|i, n| {
                assert_eq!(n, 3);
                seen[i].fetch_add(round + 1, Ordering::Relaxed);
            });
            for s in &seen {
                assert_eq!(s.load(Ordering::Relaxed), round + 1);
            }
        }
    }

    #[test]
    fn a_panicking_job_panics_the_caller_and_the_pool_keeps_working() {
        let pool = ThreadPool::new(2);
        for panicking in [0, 1] {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                pool.run(|i, _| assert_ne!(i, panicking, "deliberate panic in thread {i}"));
            }));
            assert!(
                result.is_err(),
                "thread {panicking}'s panic reaches the caller"
            );
            let count = AtomicU64::new(0);
            pool.run(|_, _| {
                count.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(count.load(Ordering::Relaxed), 2);
        }
    }

    #[test]
    fn split_range_covers_everything_once() {
        for len in 0..50 {
            for n in 1..5 {
                let mut covered = 0;
                let mut next = 0;
                for i in 0..n {
                    let r = split_range(len, i, n);
                    assert_eq!(r.start, next);
                    next = r.end;
                    covered += r.len();
                }
                assert_eq!(covered, len);
            }
        }
    }
}
