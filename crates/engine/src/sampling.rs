//! Token sampling: penalties, top-k, top-p, min-p, temperature and a seeded generator, applied in
//! llama.cpp's order so that the same parameters mean the same thing in both engines.

use crate::EngineError;

/// How to pick each next token. `temperature <= 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than min_p times the most likely one (0 = off).
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens (1 = off).
    pub repetition_penalty: f32,
    /// Subtract this from the logit of every token seen at least once (0 = off).
    pub presence_penalty: f32,
    /// Subtract this times the count of each seen token (0 = off).
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    /// Same seed, same output. None draws a seed from the clock.
    pub seed: Option<u64>,
    pub max_tokens: usize,
    /// Generation ends before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
    /// Keep going past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Report each generated token's log-probability and this many alternatives (0..=20).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
            max_tokens: 256,
            stop: Vec::new(),
            ignore_eos: false,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding, nothing else.
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            max_tokens,
            ..Self::default()
        }
    }

    /// Rejects values that have no meaning, with the parameter named.
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad =
            |name: &str, why: &str| Err(EngineError::InvalidParameter(format!("{name} {why}")));
        let finite = |v: f32| v.is_finite();
        if !finite(self.temperature) || self.temperature < 0.0 || self.temperature > 100.0 {
            return bad(
                "temperature",
                &format!("must be between 0 and 100, got {}", self.temperature),
            );
        }
        if !finite(self.top_p) || self.top_p <= 0.0 || self.top_p > 1.0 {
            return bad("top_p", &format!("must be in (0, 1], got {}", self.top_p));
        }
        if !finite(self.min_p) || !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", &format!("must be in [0, 1], got {}", self.min_p));
        }
        if !finite(self.repetition_penalty) || self.repetition_penalty <= 0.0 {
            return bad(
                "repetition_penalty",
                &format!("must be positive, got {}", self.repetition_penalty),
            );
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !finite(v) || !(-2.0..=2.0).contains(&v) {
                return bad(name, &format!("must be between -2 and 2, got {v}"));
            }
        }
        if self.max_tokens == 0 {
            return bad("max_tokens", "must be at least 1");
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return bad("stop", "strings must not be empty");
        }
        if let Some(k) = self.logprobs
            && k > MAX_TOP_LOGPROBS
        {
            return bad(
                "top_logprobs",
                &format!("must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
            );
        }
        Ok(())
    }
}

/// SplitMix64: tiny, fast, and stable across versions, so a seed reproduces a generation forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Per-sequence sampling state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Reused candidate buffer: (token, logit or probability).
    cand: Vec<(u32, f32)>,
    counts: std::collections::HashMap<u32, u32>,
}

/// Candidates further than this below the best logit have probability < e^-30 of it: dropping
/// them before sorting changes nothing measurable and keeps a 262k vocabulary cheap.
const LOGIT_WINDOW: f32 = 30.0;

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x5EED)
        });
        Sampler {
            params,
            rng: Rng::new(seed),
            cand: Vec::new(),
            counts: Default::default(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `logits` is modified (penalties); `history` is prompt + generated.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let recent = &history[history.len().saturating_sub(p.penalty_last_n)..];
        if p.repetition_penalty != 1.0 || p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            self.counts.clear();
            for &t in recent {
                *self.counts.entry(t).or_insert(0) += 1;
            }
            for (&t, &n) in &self.counts {
                let Some(l) = logits.get_mut(t as usize) else {
                    continue;
                };
                if *l > 0.0 {
                    *l /= p.repetition_penalty;
                } else {
                    *l *= p.repetition_penalty;
                }
                *l -= p.frequency_penalty * n as f32 + p.presence_penalty;
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }

        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l >= max - LOGIT_WINDOW * p.temperature.max(1.0))
                .map(|(i, &l)| (i as u32, l)),
        );
        // Descending by logit; ties broken by id so sampling is deterministic.
        self.cand
            .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            self.cand.truncate(p.top_k.max(1));
        }
        softmax_in_place(&mut self.cand, 1.0);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = self.cand.len();
            for (i, &(_, pr)) in self.cand.iter().enumerate() {
                acc += pr;
                if acc >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 && !self.cand.is_empty() {
            let floor = self.cand[0].1 * p.min_p;
            let keep = self.cand.iter().take_while(|c| c.1 >= floor).count();
            self.cand.truncate(keep.max(1));
        }
        // Temperature applies to the surviving logits: recover them from probabilities.
        for c in self.cand.iter_mut() {
            c.1 = c.1.max(f32::MIN_POSITIVE).ln();
        }
        softmax_in_place(&mut self.cand, p.temperature);
        let r = self.rng.next_f64() as f32;
        let mut acc = 0.0;
        for &(t, pr) in &self.cand {
            acc += pr;
            if r < acc {
                return t;
            }
        }
        self.cand.last().map_or(0, |c| c.0)
    }
}

/// Most alternatives a token's log-probability report may list (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The log-probability of `tok` under `logits` and the `k` most likely tokens with theirs.
pub(crate) fn logprobs_of(logits: &[f32], tok: u32, k: usize) -> crate::TokenLogprob {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max + sum.ln() as f32;
    let lp = |l: f32| l - lse;
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (i, &l) in logits.iter().enumerate() {
            if top.len() < k || l > top[top.len() - 1].1 {
                let at = top.partition_point(|&(_, x)| x >= l);
                top.insert(at, (i as u32, l));
                top.truncate(k);
            }
        }
    }
    crate::TokenLogprob {
        logprob: logits
            .get(tok as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l)),
        top: top.into_iter().map(|(i, l)| (i, lp(l))).collect(),
    }
}

fn softmax_in_place(c: &mut [(u32, f32)], temperature: f32) {
    let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in c.iter_mut() {
        x.1 = ((x.1 - max) / temperature).exp();
        sum += x.1;
    }
    for x in c.iter_mut() {
        x.1 /= sum;
    }
}

/// Index of the largest logit; the lowest index wins ties, as in llama.cpp.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        vec![1.0, 3.0, 2.0, 0.5, 2.9, -1.0]
    }

    #[test]
    fn greedy_picks_the_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy(1));
        assert_eq!(s.sample(&mut logits(), &[]), 1);
    }

    #[test]
    fn same_seed_same_choices_and_different_seed_differs() {
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.5,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: Some(seed),
                ..Default::default()
            });
            (0..64)
                .map(|_| s.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy_and_top_k_restricts() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 2,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..50 {
            assert!([1, 4].contains(&s.sample(&mut logits(), &[])));
        }
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        // Probabilities of tokens 1 and 4 dominate; top_p 0.5 keeps only token 1 (p ≈ 0.38 then 0.35).
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.3,
            min_p: 0.0,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits(), &[]), 1);
        }
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.8,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..50 {
            assert!([1, 4].contains(&s.sample(&mut logits(), &[])));
        }
    }

    #[test]
    fn penalties_push_away_from_repeats() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..SamplingParams::greedy(1)
        });
        // Token 1 (3.0) becomes 1.5 and token 4 (2.9) becomes 1.45: token 2 (2.0) wins.
        assert_eq!(s.sample(&mut logits(), &[1, 4]), 2);
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 0.2,
            ..SamplingParams::greedy(1)
        });
        assert_eq!(s.sample(&mut logits(), &[1]), 4);
        let mut s = Sampler::new(SamplingParams {
            frequency_penalty: 0.05,
            ..SamplingParams::greedy(1)
        });
        assert_eq!(
            s.sample(&mut logits(), &[1, 1]),
            1,
            "0.1 total is not enough"
        );
        assert_eq!(s.sample(&mut logits(), &[1, 1, 1]), 4, "0.15 total is");
    }

    #[test]
    fn logprobs_are_normalised_and_ranked() {
        let l = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let r = logprobs_of(&l, 2, 3);
        let total: f32 = l.iter().map(|&x| (x - 3.0).exp()).sum();
        let expect = |x: f32| x - 3.0 - total.ln();
        assert!((r.logprob - expect(2.0)).abs() < 1e-5);
        // Ties keep the lower id first.
        assert_eq!(r.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        assert!((r.top[0].1 - expect(3.0)).abs() < 1e-5);
        assert!(logprobs_of(&l, 0, 0).top.is_empty());
        let too_many = SamplingParams {
            logprobs: Some(21),
            ..SamplingParams::default()
        };
        assert!(
            too_many
                .validate()
                .unwrap_err()
                .to_string()
                .contains("top_logprobs")
        );
    }

    #[test]
    fn invalid_parameters_are_named() {
        let check = |p: SamplingParams, expect: &str| {
            let err = p.validate().unwrap_err().to_string();
            assert!(err.contains(expect), "{err}");
        };
        check(
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            "temperature",
        );
        check(
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
            "temperature",
        );
        check(
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            "top_p",
        );
        check(
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            "top_p",
        );
        check(
            SamplingParams {
                min_p: 2.0,
                ..Default::default()
            },
            "min_p",
        );
        check(
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            "repetition_penalty",
        );
        check(
            SamplingParams {
                presence_penalty: 3.0,
                ..Default::default()
            },
            "presence_penalty",
        );
        check(
            SamplingParams {
                max_tokens: 0,
                ..Default::default()
            },
            "max_tokens",
        );
        check(
            SamplingParams {
                stop: vec![String::new()],
                ..Default::default()
            },
            "stop",
        );
        assert!(SamplingParams::default().validate().is_ok());
    }
}
