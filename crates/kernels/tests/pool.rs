//! ThreadPool behaviour.

use autoglm_kernels::ThreadPool;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[test]
fn every_index_runs_exactly_once_per_run() {
    for n in [1, 2, 3, 7] {
        let pool = ThreadPool::new(n);
        assert_eq!(pool.n_threads(), n);
        let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let runs = 2000;
        for _ in 0..runs {
            pool.run(&|i, nt| {
                assert_eq!(nt, n);
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
        }
        for (i, c) in counts.iter().enumerate() {
            assert_eq!(c.load(Ordering::Relaxed), runs, "n={n} index {i}");
        }
    }
}

/// Index 0 runs on the caller. Holding it until every other index has finished proves the
/// workers run their indices concurrently (the caller only runs leftovers after index 0).
#[test]
fn workers_run_concurrently_with_the_caller() {
    let pool = ThreadPool::new(3);
    let me = std::thread::current().id();
    let ids = Mutex::new(vec![None; 3]);
    let finished = AtomicUsize::new(0);
    pool.run(&|i, _| {
        ids.lock().unwrap()[i] = Some(std::thread::current().id());
        if i == 0 {
            let start = std::time::Instant::now();
            while finished.load(Ordering::Acquire) < 2 {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "workers never ran"
                );
                std::thread::yield_now();
            }
        } else {
            finished.fetch_add(1, Ordering::Release);
        }
    });
    let ids = ids.into_inner().unwrap();
    assert_eq!(ids[0], Some(me));
    assert!(ids[1].is_some() && ids[1] != Some(me) && ids[2] != Some(me) && ids[1] != ids[2]);
}

#[test]
fn jobs_see_and_produce_shared_data() {
    let pool = ThreadPool::new(4);
    let input: Vec<u64> = (0..10_000).collect();
    let partial: Vec<Mutex<u64>> = (0..4).map(|_| Mutex::new(0)).collect();
    for round in 0..50u64 {
        pool.run(&|i, n| {
            let chunk = input.len().div_ceil(n);
            let s: u64 = input
                .iter()
                .skip(i * chunk)
                .take(chunk)
                .map(|v| v * round)
                .sum();
            *partial[i].lock().unwrap() = s;
        });
        let total: u64 = partial.iter().map(|m| *m.lock().unwrap()).sum();
        assert_eq!(total, round * 10_000 * 9_999 / 2);
    }
}

#[test]
fn workers_wake_after_parking() {
    let pool = ThreadPool::with_spin(2, Duration::from_micros(10));
    let hits = AtomicUsize::new(0);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(5)); // long enough for the worker to park
        pool.run(&|_, _| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
    }
    assert_eq!(hits.load(Ordering::Relaxed), 10);
}

#[test]
fn panics_propagate_and_the_pool_survives() {
    let pool = ThreadPool::new(3);
    for bad in [0, 2] {
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|i, _| {
                if i == bad {
                    panic!("boom {i}");
                }
            })
        }));
        assert!(r.is_err(), "panic on index {bad} must reach the caller");
        let count = AtomicUsize::new(0);
        pool.run(&|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 3);
    }
}

#[test]
fn nested_run_does_not_deadlock() {
    let pool = ThreadPool::new(2);
    let count = AtomicUsize::new(0);
    pool.run(&|_, _| {
        pool.run(&|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
    });
    assert_eq!(count.load(Ordering::Relaxed), 4);
}

#[test]
fn concurrent_runs_from_two_threads() {
    let pool = ThreadPool::new(2);
    let count = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..500 {
                    pool.run(&|_, _| {
                        count.fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
        }
    });
    assert_eq!(count.load(Ordering::Relaxed), 2 * 500 * 2);
}

static TLS_DROPS: AtomicUsize = AtomicUsize::new(0);

struct CountOnDrop;
impl Drop for CountOnDrop {
    fn drop(&mut self) {
        TLS_DROPS.fetch_add(1, Ordering::SeqCst);
    }
}

thread_local! {
    static MARK: Cell<Option<CountOnDrop>> = const { Cell::new(None) };
}

#[test]
fn dropping_the_pool_joins_its_threads() {
    let pool = ThreadPool::new(4);
    let finished = AtomicUsize::new(0);
    pool.run(&|i, _| {
        if i == 0 {
            // Keep the caller busy so that every other index runs on its worker.
            let start = std::time::Instant::now();
            while finished.load(Ordering::Acquire) < 3 {
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "workers never ran"
                );
                std::thread::yield_now();
            }
        } else {
            MARK.with(|m| m.set(Some(CountOnDrop)));
            finished.fetch_add(1, Ordering::Release);
        }
    });
    assert_eq!(TLS_DROPS.load(Ordering::SeqCst), 0);
    drop(pool);
    // Thread-local destructors run before a thread finishes, so a joined worker has dropped its
    // mark by the time `drop` returns.
    assert_eq!(TLS_DROPS.load(Ordering::SeqCst), 3);
}

#[test]
fn default_uses_available_parallelism() {
    let pool = ThreadPool::default();
    let want = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(pool.n_threads(), want);
    assert_eq!(ThreadPool::new(0).n_threads(), 1);
}

/// Per-run synchronisation cost of an empty job (`cargo test --release -- --ignored --nocapture`).
#[test]
#[ignore]
fn bench_sync_cost() {
    for n in [1, 2] {
        let pool = ThreadPool::new(n);
        let iters = 200_000;
        for _ in 0..1000 {
            pool.run(&|_, _| {});
        }
        let t = std::time::Instant::now();
        for _ in 0..iters {
            pool.run(&|_, _| {});
        }
        let per = t.elapsed().as_secs_f64() / iters as f64 * 1e9;
        println!("ThreadPool({n}) empty run: {per:.0} ns");
    }
}
