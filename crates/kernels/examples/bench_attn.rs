//! Times the attention kernels on one thread, as one decoding unit uses them: `scores` then
//! `weighted_sum` for `rows` query rows (a GQA group) of 64 values over `npos` cached f16
//! rows, `kv_dim` values apart as in the paged cache. "hot" reads the same rows every time
//! (cache-resident); "cold" a different stretch of an `mb` MiB plane each time (from memory).
//!
//!     cargo run --release -p autoglm-kernels --example bench_attn -- [npos] [rows] [mb] [kv_dim]
//!
//! Defaults 192 3 64 192: SmolLM2 decoding after a 128-token prompt.
use std::time::Instant;

use autoglm_kernels::attn::{self, KvRows};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let npos = args.first().copied().unwrap_or(192);
    let rows = args.get(1).copied().unwrap_or(3);
    let mb = args.get(2).copied().unwrap_or(64);
    let hd = 64usize;
    let kv_dim = args.get(3).copied().unwrap_or(192);
    let slots = (mb << 20) / (2 * kv_dim);
    let plane: Vec<u16> = (0..slots * kv_dim)
        .map(|i| 0x3c00 ^ (i as u16 & 0x3ff))
        .collect();
    let q: Vec<f32> = (0..rows * hd).map(|i| (i as f32 * 0.01).sin()).collect();
    let mut scores = vec![0f32; rows * npos];
    let mut out = vec![0f32; rows * hd];
    let units = (slots / npos.max(1)).max(1);
    // Each kernel alone, hot.
    let offs: Vec<usize> = (0..npos).map(|p| p * kv_dim).collect();
    let reps = 4000;
    let t = Instant::now();
    for _ in 0..reps {
        attn::scores(&q, rows, hd, KvRows::F16(&plane), &offs, &mut scores);
    }
    let a = t.elapsed().as_nanos() as f64 / (reps * npos) as f64;
    let t = Instant::now();
    for _ in 0..reps {
        attn::weighted_sum(&scores, rows, hd, KvRows::F16(&plane), &offs, &mut out);
    }
    let b = t.elapsed().as_nanos() as f64 / (reps * npos) as f64;
    println!("hot, per position: scores {a:.2} ns, weighted_sum {b:.2} ns");
    let mut offs = offs;
    for hot in [true, false] {
        let reps = 2000;
        let t = Instant::now();
        for u in 0..reps {
            let base = if hot { 0 } else { (u * 7919 % units) * npos };
            offs.clear();
            offs.extend((0..npos).map(|p| (base + p) * kv_dim));
            attn::scores(&q, rows, hd, KvRows::F16(&plane), &offs, &mut scores);
            attn::weighted_sum(&scores, rows, hd, KvRows::F16(&plane), &offs, &mut out);
        }
        let ns = t.elapsed().as_nanos() as f64 / (reps * npos) as f64;
        let bytes = (2 * npos * hd * 2 * reps) as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!(
            "{}: {ns:.2} ns per position (K and V, {rows} rows), {bytes:.1} GB/s",
            if hot { "hot " } else { "cold" }
        );
    }
}
