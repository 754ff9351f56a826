//! A persistent worker pool for fork-join parallel loops.
//!
//! `run(f)` publishes `f` by bumping an epoch counter, runs `f(0, n)` on the calling thread,
//! then makes sure every other index has run exactly once before returning. Each index is
//! *claimed* with a compare-and-swap, by its worker or, if that worker has not woken up yet,
//! by the caller, which then runs it itself. So a descheduled or parked worker never stalls a
//! run: the caller only waits for workers that actually started. On a shared or oversubscribed
//! machine this degrades to single-threaded speed instead of to scheduler-latency speed.
//!
//! Idle workers spin on the epoch for a short while (a forward pass issues matmuls
//! microseconds apart, and waking a parked thread costs several microseconds), yielding the
//! CPU between polls after the first few microseconds, and then park, so an idle process burns
//! no CPU. Nothing allocates per run.
//!
//! The job is a borrowed closure, so a worker holds a pointer into the caller's stack frame
//! while it runs its index; `run` does not return (or unwind) before every claimed index has
//! finished. That hand-off is the one piece of `unsafe` here.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

type Job<'a> = &'a (dyn Fn(usize, usize) + Sync + 'a);

/// Keeps each hot atomic on its own cache line pair (adjacent-line prefetch) so polling one
/// does not bounce another.
#[repr(align(128))]
struct Padded<T>(T);

/// Per-index state: `claim` holds the last epoch whose index was claimed (by the worker or the
/// caller); `done` the last epoch the worker finished; `sleeping` whether it is parked.
struct Slot {
    claim: Padded<AtomicUsize>,
    done: Padded<AtomicUsize>,
    sleeping: Padded<AtomicBool>,
}

struct Shared {
    epoch: Padded<AtomicUsize>,
    /// Points at a `Job` living on the stack of the thread inside `run`.
    job: AtomicPtr<()>,
    shutdown: AtomicBool,
    worker_panicked: AtomicBool,
    slots: Box<[Slot]>,
    n_threads: usize,
    spin: Duration,
}

/// A fixed set of worker threads running fork-join jobs. See the module docs.
pub struct ThreadPool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    threads: Vec<Thread>,
    /// Serialises `run`; a nested or concurrent `run` that cannot take it runs inline.
    run_lock: Mutex<()>,
}

/// How long an idle worker polls for the next job before parking, by default.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(300);

/// Pure busy-polling time before polls start yielding the CPU.
const HOT_SPIN: Duration = Duration::from_micros(3);

impl ThreadPool {
    /// A pool of `n_threads` threads counting the caller (`0` is treated as `1`; `1` runs jobs
    /// inline and starts no workers).
    pub fn new(n_threads: usize) -> ThreadPool {
        ThreadPool::with_spin(n_threads, DEFAULT_SPIN)
    }

    /// Like [`ThreadPool::new`] with an explicit poll-before-park time for idle workers.
    pub fn with_spin(n_threads: usize, spin: Duration) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            epoch: Padded(AtomicUsize::new(0)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            shutdown: AtomicBool::new(false),
            worker_panicked: AtomicBool::new(false),
            slots: (0..n_threads)
                .map(|_| Slot {
                    claim: Padded(AtomicUsize::new(0)),
                    done: Padded(AtomicUsize::new(0)),
                    sleeping: Padded(AtomicBool::new(false)),
                })
                .collect(),
            n_threads,
            spin,
        });
        let mut handles = Vec::with_capacity(n_threads - 1);
        for index in 1..n_threads {
            let sh = Arc::clone(&shared);
            let h = thread::Builder::new()
                .name(format!("autoglm-worker-{index}"))
                .spawn(move || worker_loop(sh, index))
                .expect("failed to spawn a worker thread");
            handles.push(h);
        }
        let threads = handles.iter().map(|h| h.thread().clone()).collect();
        ThreadPool {
            shared,
            handles,
            threads,
            run_lock: Mutex::new(()),
        }
    }

    /// Number of threads including the caller.
    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Runs `f(index, n_threads)` exactly once for every index in `0..n_threads` and returns
    /// when all have finished. The caller runs index 0, and also any index whose worker has not
    /// picked it up by the time the caller is done with its own, so `f` must not assume that
    /// different indices run on different threads. If any call panics, `run` panics after all
    /// have finished.
    ///
    /// Calling `run` from inside a job, or from two threads at once, does not deadlock: the
    /// call that cannot get the pool runs all indices one after another on its own thread.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        let n = self.shared.n_threads;
        if n == 1 {
            f(0, 1);
            return;
        }
        let _guard = match self.run_lock.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                for i in 0..n {
                    f(i, n);
                }
                return;
            }
        };
        let sh = &*self.shared;
        let job: Job<'_> = f;
        sh.worker_panicked.store(false, Ordering::Relaxed);
        sh.job
            .store(&job as *const Job<'_> as *mut (), Ordering::Relaxed);
        // Only `run` writes the epoch, and runs are serialised by `run_lock`.
        let e = sh.epoch.0.load(Ordering::Relaxed).wrapping_add(1);
        // SeqCst pairs with the workers' SeqCst `sleeping` store / `epoch` load: either a worker
        // sees the new epoch before parking, or we see it asleep and unpark it.
        sh.epoch.0.store(e, Ordering::SeqCst);
        for (i, t) in self.threads.iter().enumerate() {
            if sh.slots[i + 1].sleeping.0.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        // Runs on return and on unwind: every index must be claimed, and every index a worker
        // claimed must be finished, before `job` goes out of scope. On the normal path the
        // indices are all claimed already and this only waits.
        struct Finish<'a> {
            sh: &'a Shared,
            e: usize,
        }
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                let (sh, e) = (self.sh, self.e);
                for i in 1..sh.n_threads {
                    if claim(sh, i, e) {
                        sh.slots[i].done.0.store(e, Ordering::Release);
                    }
                }
                for slot in &sh.slots[1..] {
                    let start = Instant::now();
                    let mut polls = 0u32;
                    while slot.done.0.load(Ordering::Acquire) != e {
                        polls = polls.wrapping_add(1);
                        if polls.is_multiple_of(8) && start.elapsed() > HOT_SPIN {
                            thread::yield_now();
                        } else {
                            std::hint::spin_loop();
                        }
                    }
                }
            }
        }
        let finish = Finish { sh, e };
        f(0, n);
        // Indices whose workers have not started yet: run them here rather than wait.
        let mut caller_panic = None;
        for i in 1..n {
            if claim(sh, i, e) {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i, n))) {
                    caller_panic = Some(p);
                }
                sh.slots[i].done.0.store(e, Ordering::Release);
            }
        }
        drop(finish);
        if let Some(p) = caller_panic {
            std::panic::resume_unwind(p);
        }
        if sh.worker_panicked.swap(false, Ordering::Relaxed) {
            panic!("a ThreadPool job panicked on a worker thread");
        }
    }
}

/// Claims index `i` for epoch `e`; exactly one of the worker and the caller succeeds.
#[inline]
fn claim(sh: &Shared, i: usize, e: usize) -> bool {
    sh.slots[i]
        .claim
        .0
        .compare_exchange(e.wrapping_sub(1), e, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

impl Default for ThreadPool {
    /// One thread per available core.
    fn default() -> Self {
        ThreadPool::new(thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.0.fetch_add(1, Ordering::SeqCst);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.handles.drain(..) {
            // A worker never unwinds (jobs run under catch_unwind), so join only fails if the
            // thread was killed from outside; nothing useful to do about that in drop.
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.shared.n_threads)
            .finish()
    }
}

fn worker_loop(sh: Arc<Shared>, index: usize) {
    let mut seen = 0usize;
    let slot = &sh.slots[index];
    loop {
        let e = wait_for_epoch(&sh, index, seen);
        seen = e;
        if sh.shutdown.load(Ordering::Acquire) {
            return;
        }
        if !claim(&sh, index, e) {
            // The caller got here first and runs this index itself.
            continue;
        }
        let p = sh.job.load(Ordering::Acquire) as *const Job<'static>;
        // SAFETY: `run` stored a pointer to a live `Job` before publishing epoch `e` (Release
        // store, which our Acquire loads of the epoch and the claim synchronise with), and it
        // does not return or unwind past that `Job` until every index claimed for `e` by a
        // worker has published `done = e`, which we do only after the call below. The claim
        // CAS succeeding for `e` guarantees run `e` is still in progress. The 'static in the
        // type is never relied upon.
        let job: Job<'_> = unsafe { *p };
        if catch_unwind(AssertUnwindSafe(|| job(index, sh.n_threads))).is_err() {
            sh.worker_panicked.store(true, Ordering::Relaxed);
        }
        slot.done.0.store(e, Ordering::Release);
    }
}

/// Polls, then parks, until the epoch moves past `seen`; returns the new epoch.
fn wait_for_epoch(sh: &Shared, index: usize, seen: usize) -> usize {
    let start = Instant::now();
    let mut polls = 0u32;
    loop {
        let e = sh.epoch.0.load(Ordering::Acquire);
        if e != seen {
            return e;
        }
        polls = polls.wrapping_add(1);
        if !polls.is_multiple_of(8) {
            std::hint::spin_loop();
            continue;
        }
        let waited = start.elapsed();
        if waited < HOT_SPIN {
            continue;
        }
        if waited < sh.spin {
            // Let a runnable thread (perhaps the one about to publish work) have the core.
            thread::yield_now();
            continue;
        }
        let sleeping = &sh.slots[index].sleeping.0;
        sleeping.store(true, Ordering::SeqCst);
        if sh.epoch.0.load(Ordering::SeqCst) == seen {
            // Spurious wake-ups are fine: the loop re-checks the epoch.
            thread::park();
        }
        sleeping.store(false, Ordering::SeqCst);
    }
}
