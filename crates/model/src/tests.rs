//! Model tests on the two catalogue models: greedy generations against llama.cpp's recorded
//! outputs (`shared/reference/*/greedy.jsonl`), and invariance of the logits under batching,
//! block-table layout and prefill chunking — the properties the batching server relies on.

use autoglm_kernels::ThreadPool;
use autoglm_testkit::{ids, model_path, reference};

use crate::*;

fn model(name: &str) -> Model {
    Model::load(model_path(name)).expect("model loads")
}

fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// A single sequence driven greedily with contiguous blocks.
struct Runner<'m> {
    model: &'m Model,
    pool: ThreadPool,
    scratch: ForwardScratch,
    kv: KvCache,
    table: Vec<u32>,
}

impl<'m> Runner<'m> {
    fn new(model: &'m Model, max_tokens: usize) -> Self {
        Runner::with_dtype(model, max_tokens, KvDtype::F16)
    }

    fn with_dtype(model: &'m Model, max_tokens: usize, dtype: KvDtype) -> Self {
        let bs = 16;
        let n_blocks = max_tokens.div_ceil(bs);
        Runner {
            model,
            pool: ThreadPool::new(2),
            scratch: ForwardScratch::default(),
            kv: KvCache::new(model.kv_layout(bs, n_blocks).with_dtype(dtype)).unwrap(),
            table: (0..n_blocks as u32).collect(),
        }
    }

    fn step(&mut self, tokens: &[u32], start_pos: usize) -> Vec<f32> {
        let input = SeqInput {
            tokens,
            start_pos,
            block_table: &self.table,
            logits: LogitsWanted::Last,
        };
        self.model
            .forward(&self.pool, &mut self.scratch, &mut self.kv, &[input])
            .unwrap()
            .to_vec()
    }
}

/// Teacher-forced comparison with llama.cpp: llama.cpp's greedy tokens are fed back step by
/// step, and at every step our distribution is compared with its recorded top-5.
///
/// Exact agreement is not expected: both engines quantise activations to 8 bits before every
/// matrix product, so a last-bit difference in float summation order flips an occasional
/// rounding, and these small models amplify that into probability noise of a few percent (our
/// own scalar and SIMD paths differ from each other by as much as either differs from
/// llama.cpp). So the test asserts what separates noise from a bug: deviations are small in the
/// median and in the tail, and wherever our top choice differs from llama.cpp's, llama.cpp itself
/// had a close race between the two tokens. Then it reports how many free-running greedy
/// generations are identical token for token.
fn check_against_llama_cpp(name: &str, dtype: KvDtype, median_max: f32, p95_max: f32) {
    // How far apart llama.cpp's own probabilities for its choice and ours may be for a
    // disagreement to count as a near-tie.
    const GAP_MAX: f32 = 0.35;
    let m = model(name);
    let lines = reference(name, "greedy.jsonl");
    let mut devs = Vec::new();
    let mut disagreements = 0;
    let mut steps = 0;
    let mut identical = 0;
    let mut not_near_ties = Vec::new();
    for (li, line) in lines.iter().enumerate() {
        let prompt = ids(&line["prompt_ids"]);
        let want = ids(&line["generated_ids"]);
        let top5 = line["top5"].as_array().unwrap();

        // llama-server reports probabilities per UTF-8-complete piece, so where tokens carry
        // partial characters (line 20: Chinese) its top-5 list is shorter than the tokens and
        // misaligned with them; such lines are compared on free-running output only.
        let aligned = top5.len() == want.len();
        let mut r = Runner::with_dtype(&m, prompt.len() + want.len() + 1, dtype);
        let mut logits = r.step(&prompt, 0);
        for (i, &want_tok) in want.iter().enumerate().filter(|_| aligned) {
            let probs = softmax(&logits);
            let ref_top: Vec<(usize, f32)> = top5[i]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_u64().unwrap() as usize,
                        p[1].as_f64().unwrap() as f32,
                    )
                })
                .collect();
            for &(id, p) in &ref_top {
                devs.push((probs[id] - p).abs());
            }
            let got = argmax(&logits) as usize;
            steps += 1;
            if got != want_tok as usize {
                disagreements += 1;
                // llama.cpp's probability for our choice (0 if outside its top 5).
                let p_ours_there = ref_top.iter().find(|t| t.0 == got).map_or(0.0, |t| t.1);
                let gap = ref_top[0].1 - p_ours_there;
                if gap >= GAP_MAX {
                    not_near_ties.push(format!(
                        "line {li} step {i}: we chose {got} (p={:.3}), llama.cpp {want_tok} (p={:.3}); \
                         llama.cpp gave our choice p={p_ours_there:.3}",
                        probs[got],
                        probs[want_tok as usize]
                    ));
                }
            }
            logits = r.step(&[want_tok], prompt.len() + i);
        }

        // Free-running greedy generation.
        let mut r = Runner::with_dtype(&m, prompt.len() + want.len() + 1, dtype);
        let mut logits = r.step(&prompt, 0);
        let mut ours = Vec::new();
        for i in 0..want.len() {
            let t = argmax(&logits);
            ours.push(t);
            logits = r.step(&[t], prompt.len() + i);
        }
        identical += usize::from(ours == want);
    }
    devs.sort_by(f32::total_cmp);
    let median = devs[devs.len() / 2];
    let p95 = devs[devs.len() * 95 / 100];
    eprintln!(
        "{name} ({} KV cache): top-5 probability deviation from llama.cpp: median {median:.4}, p95 {p95:.4}, max {:.4}; \
         top choice differs at {disagreements}/{steps} teacher-forced steps ({} not near-ties); \
         {identical}/{} free-running greedy generations identical",
        dtype.name(),
        devs[devs.len() - 1],
        not_near_ties.len(),
        lines.len()
    );
    assert!(
        not_near_ties.is_empty(),
        "{name}: disagreements that are not near-ties:\n{}",
        not_near_ties.join("\n")
    );
    assert!(
        median <= median_max,
        "{name}: median deviation {median} > {median_max}"
    );
    assert!(p95 <= p95_max, "{name}: p95 deviation {p95} > {p95_max}");
    assert!(
        disagreements * 20 <= steps,
        "{name}: {disagreements}/{steps} steps disagree"
    );
}

#[test]
fn smollm2_greedy_matches_llama_cpp() {
    check_against_llama_cpp("smollm2-135m", KvDtype::F16, 0.01, 0.05);
}

#[test]
fn gemma3_greedy_matches_llama_cpp() {
    check_against_llama_cpp("gemma3-270m", KvDtype::F16, 0.01, 0.05);
}

/// The 8-bit KV cache is a compression: held to the same oracle, with the same near-tie rule.
#[test]
fn smollm2_greedy_with_8_bit_kv_cache_stays_with_llama_cpp() {
    check_against_llama_cpp("smollm2-135m", KvDtype::Q8, 0.01, 0.05);
}

#[test]
fn gemma3_greedy_with_8_bit_kv_cache_stays_with_llama_cpp() {
    check_against_llama_cpp("gemma3-270m", KvDtype::Q8, 0.01, 0.05);
}

#[test]
fn config_is_read_from_metadata() {
    let m = model("smollm2-135m");
    let c = m.config();
    assert_eq!(
        (
            c.arch,
            c.n_layers,
            c.n_embd,
            c.n_head,
            c.n_head_kv,
            c.head_dim
        ),
        (Arch::Llama, 30, 576, 9, 3, 64)
    );
    assert_eq!(
        (c.vocab_size, c.context_length, c.n_ff),
        (49152, 8192, 1536)
    );
    assert_eq!(c.rope_style, RopeStyle::Interleaved);

    let g = model("gemma3-270m");
    let c = g.config();
    assert_eq!(
        (
            c.arch,
            c.n_layers,
            c.n_embd,
            c.n_head,
            c.n_head_kv,
            c.head_dim
        ),
        (Arch::Gemma3, 18, 640, 4, 1, 256)
    );
    assert_eq!(c.sliding_window, Some(512));
    let global: Vec<usize> = (0..c.n_layers).filter(|&l| !c.is_swa_layer(l)).collect();
    assert_eq!(global, [5, 11, 17]);
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Batching two sequences, scattering their blocks, and chunking a prompt must not change logits
/// beyond float noise (activation quantisation is per row, so rows do not interact).
#[test]
fn logits_do_not_depend_on_batching_paging_or_chunking() {
    let m = model("smollm2-135m");
    let a: Vec<u32> = (0..37).map(|i| 100 + i * 13).collect();
    let b: Vec<u32> = (0..21).map(|i| 2000 + i * 7).collect();

    let mut alone = Runner::new(&m, 64);
    let la = alone.step(&a, 0);
    let mut alone_b = Runner::new(&m, 64);
    let lb = alone_b.step(&b, 0);

    // Both in one batch, with interleaved, out-of-order blocks.
    let pool = ThreadPool::new(2);
    let mut scratch = ForwardScratch::default();
    let mut kv = KvCache::new(m.kv_layout(16, 12)).unwrap();
    let ta = [7u32, 2, 9];
    let tb = [4u32, 11];
    let out = m
        .forward(
            &pool,
            &mut scratch,
            &mut kv,
            &[
                SeqInput {
                    tokens: &a,
                    start_pos: 0,
                    block_table: &ta,
                    logits: LogitsWanted::Last,
                },
                SeqInput {
                    tokens: &b,
                    start_pos: 0,
                    block_table: &tb,
                    logits: LogitsWanted::Last,
                },
            ],
        )
        .unwrap()
        .to_vec();
    let v = m.config().vocab_size;
    assert!(max_abs_diff(&out[..v], &la) < 1e-3, "batched a differs");
    assert!(max_abs_diff(&out[v..], &lb) < 1e-3, "batched b differs");

    // The same prompt in three chunks.
    let mut chunked = Runner::new(&m, 64);
    chunked.step(&a[..10], 0);
    chunked.step(&a[10..30], 10);
    let lc = chunked.step(&a[30..], 30);
    assert!(max_abs_diff(&lc, &la) < 1e-3, "chunked prefill differs");

    // And decoding one more token after a batched prefill equals doing it alone.
    let next = argmax(&la);
    let la2 = alone.step(&[next], a.len());
    let out2 = m
        .forward(
            &pool,
            &mut scratch,
            &mut kv,
            &[SeqInput {
                tokens: &[next],
                start_pos: a.len(),
                block_table: &ta,
                logits: LogitsWanted::Last,
            }],
        )
        .unwrap();
    assert!(
        max_abs_diff(out2, &la2) < 1e-3,
        "decode after batched prefill differs"
    );
}

#[test]
fn bad_batches_are_refused() {
    let m = model("smollm2-135m");
    let pool = ThreadPool::new(1);
    let mut scratch = ForwardScratch::default();
    let mut kv = KvCache::new(m.kv_layout(16, 2)).unwrap();
    let check = |tokens: &[u32],
                 start: usize,
                 table: &[u32],
                 expect: &str,
                 kv: &mut KvCache,
                 scratch: &mut ForwardScratch| {
        let err = m
            .forward(
                &pool,
                scratch,
                kv,
                &[SeqInput {
                    tokens,
                    start_pos: start,
                    block_table: table,
                    logits: LogitsWanted::Last,
                }],
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains(expect), "{err:?} should mention {expect:?}");
    };
    check(
        &[1, 2, 3],
        0,
        &[],
        "block table has 0 blocks",
        &mut kv,
        &mut scratch,
    );
    check(
        &[1, 2, 3],
        0,
        &[5],
        "outside the cache",
        &mut kv,
        &mut scratch,
    );
    check(
        &[60000],
        0,
        &[0],
        "outside the vocabulary",
        &mut kv,
        &mut scratch,
    );
    check(
        &[1],
        9000,
        &[0],
        "past the model's context",
        &mut kv,
        &mut scratch,
    );
}

#[test]
fn unknown_architecture_and_missing_tensors_are_clear_errors() {
    use autoglm_gguf::{GgufFile, GgufWriter, Value as V};
    let bytes = GgufWriter::new()
        .kv("general.architecture", V::String("mamba".into()))
        .finish();
    let err = Model::from_gguf(GgufFile::from_bytes(bytes).unwrap())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "unsupported architecture 'mamba' (supported: llama, gemma3)"
    );

    let bytes = GgufWriter::new()
        .kv("general.architecture", V::String("llama".into()))
        .kv("llama.block_count", V::U32(1))
        .kv("llama.embedding_length", V::U32(4))
        .kv("llama.feed_forward_length", V::U32(8))
        .kv("llama.attention.head_count", V::U32(2))
        .kv("llama.context_length", V::U32(16))
        .tensor_f32("token_embd.weight", &[4, 3], &[0.0; 12])
        .tensor_f32("output_norm.weight", &[4], &[1.0; 4])
        .finish();
    let err = Model::from_gguf(GgufFile::from_bytes(bytes).unwrap())
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "tensor 'blk.0.attn_norm.weight' is missing from the model file"
    );
}
