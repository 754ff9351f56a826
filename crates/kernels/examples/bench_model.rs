//! The matrix products of one forward step of a real model, on distinct weight buffers as large
//! as the model's, so that weights stream from memory as they do in the engine (unlike
//! `bench_matmul`, whose single matrix stays in cache):
//! `cargo run -p autoglm-kernels --release --example bench_model -- smollm2 1 2`
//! (model `smollm2` or `gemma3`, `n` activation rows, threads, repetitions, mode: `plain`
//! matmul per matrix, `packed` matrices (where the type allows) with `matmul_many` for q/k/v
//! and gate/up as the forward pass does).

use autoglm_kernels::quantize::quantize_row;
use autoglm_kernels::{
    DType, MatRef, MatmulScratch, PackedMatrix, QMatrix, ThreadPool, matmul, matmul_many,
};
use std::time::Instant;

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// `rows x cols` of `dtype`: 64 random rows quantised once, then repeated (distinct memory).
fn matrix(dtype: DType, rows: usize, cols: usize, seed: &mut u64) -> Vec<u8> {
    let mut proto = Vec::new();
    for _ in 0..64 {
        let r: Vec<f32> = (0..cols).map(|_| lcg(seed)).collect();
        proto.extend(quantize_row(dtype, &r).unwrap());
    }
    let rb = dtype.row_bytes(cols).unwrap();
    let mut data = Vec::with_capacity(rows * rb);
    for r in 0..rows {
        let p = r % 64;
        data.extend_from_slice(&proto[p * rb..(p + 1) * rb]);
    }
    data
}

struct Layer {
    /// (dtype, rows, cols, data, input index)
    mats: Vec<(DType, usize, usize, Vec<u8>)>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let model = args.get(1).map_or("smollm2", |s| s.as_str());
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let threads: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let reps: usize = args.get(4).and_then(|s| s.parse().ok()).unwrap_or(20);
    let packed = args.get(5).is_some_and(|s| s == "packed");
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("NOAMX").is_some() {
        autoglm_kernels::set_amx_enabled(false);
    }
    let mut seed = 7u64;
    let (layers, out_t, out_rows, e, ff) = match model {
        "gemma3" => {
            let (e, q, kv, ff) = (640, 1024, 256, 2048);
            let layers: Vec<Layer> = (0..18)
                .map(|il| Layer {
                    mats: vec![
                        (DType::Q5_0, q, e, matrix(DType::Q5_0, q, e, &mut seed)),
                        (DType::Q5_0, kv, e, matrix(DType::Q5_0, kv, e, &mut seed)),
                        {
                            let t = if il % 2 == 0 {
                                DType::Q8_0
                            } else {
                                DType::Q5_0
                            };
                            (t, kv, e, matrix(t, kv, e, &mut seed))
                        },
                        (DType::Q4_K, e, q, matrix(DType::Q4_K, e, q, &mut seed)),
                        (DType::Q5_0, ff, e, matrix(DType::Q5_0, ff, e, &mut seed)),
                        (DType::Q5_0, ff, e, matrix(DType::Q5_0, ff, e, &mut seed)),
                        {
                            let t = if il % 2 == 0 {
                                DType::Q6_K
                            } else {
                                DType::Q4_K
                            };
                            (t, e, ff, matrix(t, e, ff, &mut seed))
                        },
                    ],
                })
                .collect();
            (layers, DType::Q8_0, 262144, e, ff)
        }
        _ => {
            let (e, q, kv, ff) = (576, 576, 192, 1536);
            let t = DType::Q4_1;
            let layers: Vec<Layer> = (0..30)
                .map(|_| Layer {
                    mats: vec![
                        (t, q, e, matrix(t, q, e, &mut seed)),
                        (t, kv, e, matrix(t, kv, e, &mut seed)),
                        (t, kv, e, matrix(t, kv, e, &mut seed)),
                        (t, e, q, matrix(t, e, q, &mut seed)),
                        (t, ff, e, matrix(t, ff, e, &mut seed)),
                        (t, ff, e, matrix(t, ff, e, &mut seed)),
                        (t, e, ff, matrix(t, e, ff, &mut seed)),
                    ],
                })
                .collect();
            (layers, DType::Q8_0, 49152, e, ff)
        }
    };
    let out_data = matrix(out_t, out_rows, e, &mut seed);
    let out_m = QMatrix::new(out_t, out_rows, e, &out_data).unwrap();
    let bytes: usize = layers
        .iter()
        .flat_map(|l| l.mats.iter().map(|m| m.3.len()))
        .sum::<usize>()
        + out_data.len();
    let pool = ThreadPool::new(threads);
    let t = Instant::now();
    let pack = |dtype: DType, rows, cols, data: &[u8]| {
        let m = QMatrix::new(dtype, rows, cols, data).unwrap();
        (packed && PackedMatrix::supports(dtype)).then(|| PackedMatrix::pack(&pool, &m).unwrap())
    };
    let packs: Vec<Vec<Option<PackedMatrix>>> = layers
        .iter()
        .map(|l| {
            l.mats
                .iter()
                .map(|(t, r, c, d)| pack(*t, *r, *c, d))
                .collect()
        })
        .collect();
    let out_pack = pack(out_t, out_rows, e, &out_data);
    if packed {
        println!("packing: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        if std::env::var_os("PACK_ONLY").is_some() {
            return;
        }
    }
    let mut scratch = MatmulScratch::default();
    let maxd = ff.max(1024);
    let x: Vec<f32> = (0..n * maxd).map(|_| lcg(&mut seed)).collect();
    let mut out = vec![0f32; n * out_rows.max(4 * maxd)];
    let mut best_layers = f64::MAX;
    let mut best_out = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        let hot = std::env::var_os("HOT").is_some();
        for il in 0..layers.len() {
            let il = if hot { 0 } else { il };
            let l = &layers[il];
            let refs: Vec<MatRef> = l
                .mats
                .iter()
                .zip(&packs[il])
                .map(|((t, r, c, d), p)| match p {
                    Some(p) => MatRef::Packed(p),
                    None => MatRef::Plain(QMatrix::new(*t, *r, *c, d).unwrap()),
                })
                .collect();
            if packed {
                // q/k/v, o, gate/up, down, as the forward pass groups them.
                for group in [&refs[0..3], &refs[3..4], &refs[4..6], &refs[6..7]] {
                    let cols = group[0].cols();
                    let (a, rest) = out.split_at_mut(n * group[0].rows());
                    let mut outs: Vec<&mut [f32]> = vec![a];
                    let mut rest = rest;
                    for w in &group[1..] {
                        let (b, r) = rest.split_at_mut(n * w.rows());
                        outs.push(b);
                        rest = r;
                    }
                    matmul_many(&pool, group, &x[..n * cols], n, &mut outs, &mut scratch);
                }
            } else {
                for (dtype, rows, cols, data) in &l.mats {
                    let m = QMatrix::new(*dtype, *rows, *cols, data).unwrap();
                    matmul(
                        &pool,
                        &m,
                        &x[..n * cols],
                        n,
                        &mut out[..n * rows],
                        &mut scratch,
                    );
                }
            }
        }
        let t1 = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let w = match &out_pack {
            Some(p) => MatRef::Packed(p),
            None => MatRef::Plain(out_m),
        };
        matmul_many(
            &pool,
            &[w],
            &x[..n * e],
            n,
            &mut [&mut out[..n * out_rows]],
            &mut scratch,
        );
        let t2 = t.elapsed().as_secs_f64();
        best_layers = best_layers.min(t1);
        best_out = best_out.min(t2);
    }
    println!(
        "{model} n={n} threads={threads}: layers {:.3} ms, output {:.3} ms, total {:.3} ms ({:.1} MB, {:.1} GB/s)",
        best_layers * 1e3,
        best_out * 1e3,
        (best_layers + best_out) * 1e3,
        bytes as f64 / 1e6,
        bytes as f64 / (best_layers + best_out) / 1e9
    );
}
