//! Rough matmul and pool timings: `cargo run -p autoglm-kernels --release --example bench_matmul`.
//!
//! Reports the best of several batches (the machine is usually shared, so the minimum is the
//! most repeatable figure). GFLOP/s counts 2 flops per weight per activation row.
//! Pass `--all` for more types and backends.

use autoglm_kernels::quantize::quantize_row;
use autoglm_kernels::{
    Backend, DType, MatmulScratch, PackedMatrix, QMatrix, ThreadPool, matmul_packed, matmul_with,
};
use std::time::Instant;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// Best per-iteration time in seconds over `batches` batches of `iters` calls.
fn best_of(batches: usize, iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..batches {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / iters as f64);
    }
    best
}

fn bench(dtype: DType, rows: usize, cols: usize, n: usize, threads: usize, backend: Backend) {
    bench_impl(dtype, rows, cols, n, threads, backend, false)
}

fn bench_impl(
    dtype: DType,
    rows: usize,
    cols: usize,
    n: usize,
    threads: usize,
    backend: Backend,
    packed: bool,
) {
    let mut seed = 42u64;
    let w: Vec<f32> = (0..rows * cols).map(|_| lcg(&mut seed)).collect();
    let mut data = Vec::with_capacity(dtype.row_bytes(cols).unwrap() * rows);
    for r in w.chunks(cols) {
        data.extend(quantize_row(dtype, r).unwrap());
    }
    let m = QMatrix::new(dtype, rows, cols, &data).unwrap();
    let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut seed)).collect();
    let mut out = vec![0f32; n * rows];
    let mut scratch = MatmulScratch::default();
    let pool = ThreadPool::new(threads);
    let flops = 2.0 * rows as f64 * cols as f64 * n as f64;
    let iters = ((2e8 / flops) as usize).clamp(3, 20_000);
    let pm = packed.then(|| PackedMatrix::pack(&pool, &m).unwrap());
    let t = best_of(40, iters, || match &pm {
        Some(pm) => matmul_packed(&pool, pm, &x, n, &mut out, &mut scratch),
        None => matmul_with(backend, &pool, &m, &x, n, &mut out, &mut scratch),
    });
    println!(
        "{:<5} {:>6}x{:<5} n={:<3} threads={} {:<11} {:>9.1} us {:>7.1} GFLOP/s",
        dtype.name(),
        rows,
        cols,
        n,
        threads,
        if packed {
            "packed".to_string()
        } else {
            format!("{backend:?}")
        },
        t * 1e6,
        flops / t / 1e9
    );
}

fn main() {
    let all = std::env::args().any(|a| a == "--all");
    let best = Backend::detect();
    println!("backend detected: {best:?}");
    let args: Vec<String> = std::env::args().collect();
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("NOAMX").is_some() {
        autoglm_kernels::set_amx_enabled(false);
    }
    if let Some(i) = args.iter().position(|a| a == "--one") {
        // --one DTYPE ROWS COLS N THREADS packed|plain
        let dtype = DType::ALL
            .into_iter()
            .find(|d| d.name() == args[i + 1])
            .expect("dtype");
        let p = |j: usize| args[i + j].parse::<usize>().expect("number");
        bench_impl(dtype, p(2), p(3), p(4), p(5), best, args[i + 6] == "packed");
        return;
    }
    if std::env::args().any(|a| a == "--pack") {
        for dtype in [DType::Q4_1, DType::Q8_0, DType::Q5_0] {
            let (rows, cols) = (32768, 576);
            let mut seed = 1u64;
            let proto: Vec<u8> = (0..64)
                .flat_map(|_| {
                    let r: Vec<f32> = (0..cols).map(|_| lcg(&mut seed)).collect();
                    quantize_row(dtype, &r).unwrap()
                })
                .collect();
            let data: Vec<u8> = proto
                .iter()
                .copied()
                .cycle()
                .take(proto.len() / 64 * rows)
                .collect();
            let m = QMatrix::new(dtype, rows, cols, &data).unwrap();
            for threads in [1, 2] {
                let pool = ThreadPool::new(threads);
                let mut best = f64::MAX;
                for _ in 0..10 {
                    let t = Instant::now();
                    let p = PackedMatrix::pack(&pool, &m).unwrap();
                    best = best.min(t.elapsed().as_secs_f64());
                    drop(p);
                }
                println!(
                    "pack {dtype} {rows}x{cols} ({:.1} MB) threads={threads}: {:.2} ms ({:.2} GB/s)",
                    data.len() as f64 / 1e6,
                    best * 1e3,
                    data.len() as f64 / best / 1e9
                );
            }
        }
        return;
    }
    if std::env::args().any(|a| a == "--report") {
        // The shapes of SmolLM2-135M's hot matrices, on 2 threads.
        for (dtype, rows, cols) in [
            (DType::Q4_1, 1536, 576),
            (DType::Q4_1, 576, 1536),
            (DType::Q8_0, 49152, 576),
        ] {
            for n in [1, 16, 512] {
                if !std::env::args().any(|a| a == "--packed-only") {
                    bench(dtype, rows, cols, n, 2, best);
                }
                if PackedMatrix::pays_off() {
                    bench_impl(dtype, rows, cols, n, 2, best, true);
                }
            }
        }
        return;
    }
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        for n in [1, 16] {
            for threads in [1, 2] {
                bench(DType::Q4_1, rows, cols, n, threads, best);
            }
        }
    }
    if all {
        for b in Backend::available() {
            bench(DType::Q4_1, 1536, 576, 16, 1, b);
        }
        for (dtype, rows, cols) in [
            (DType::Q8_0, 4096, 576),
            (DType::Q4_0, 1536, 576),
            (DType::Q5_0, 1024, 640),
            (DType::Q4_K, 2048, 1024),
            (DType::Q5_K, 2048, 1024),
            (DType::Q6_K, 640, 2048),
            (DType::F16, 576, 576),
            (DType::F32, 576, 576),
        ] {
            for n in [1, 16] {
                bench(dtype, rows, cols, n, 1, best);
                bench(dtype, rows, cols, n, 1, Backend::Avx2.or_scalar());
            }
        }
    }
    for threads in [1, 2] {
        let pool = ThreadPool::new(threads);
        let t = best_of(15, 20_000, || pool.run(&|_, _| {}));
        println!("ThreadPool({threads}) empty run: {:.2} us", t * 1e6);
    }
    // A run in which the worker really takes part: index 0 waits until index 1 has run, so each
    // run is a full publish -> worker wakes from spinning -> caller sees completion round trip.
    // (An empty run mostly measures the caller claiming index 1 itself.)
    let pool = ThreadPool::new(2);
    let hits = std::sync::atomic::AtomicUsize::new(0);
    let mut expect = 0;
    let t = best_of(15, 20_000, || {
        expect += 1;
        pool.run(&|i, _| {
            if i == 1 {
                hits.fetch_add(1, std::sync::atomic::Ordering::Release);
            } else {
                while hits.load(std::sync::atomic::Ordering::Acquire) < expect {
                    std::hint::spin_loop();
                }
            }
        })
    });
    println!("ThreadPool(2) run with worker hand-off: {:.2} us", t * 1e6);
}
