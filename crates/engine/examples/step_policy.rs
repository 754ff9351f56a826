//! Measures step-size policies under mixed load: streaming users decoding while long prompts
//! keep arriving. Prints, per policy, the streaming users' inter-token latency (p50 / p99 /
//! max), the long prompts' time to first token, and the throughput of both.
//!
//!     cargo run --release -p autoglm-engine --example step_policy [-- SECONDS [DECODERS]]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use autoglm_engine::{EngineHandle, GenEvent, GenRequest, Rng, SamplingParams, ServeConfig};
use autoglm_model::Model;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let decoders: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(12);
    let path = autoglm_testkit::model_path("smollm2-135m");
    let policies: [(&str, usize, u64); 4] = [
        ("fixed 512", 512, 0),
        ("fixed 2048", 2048, 0),
        ("adaptive 100 ms, max 2048", 2048, 100),
        ("adaptive 250 ms, max 2048", 2048, 250),
    ];
    println!(
        "{decoders} streaming users, a 1500-token prompt every 2 s, {secs} s per policy, smollm2-135m, 2 threads"
    );
    println!(
        "| policy | ITL p50 ms | ITL p99 ms | ITL max ms | long TTFT p50 ms | decode tok/s | prompt tok/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, max_step, target) in policies {
        let model = Model::load(&path).expect("model loads");
        let vocab = model.config().vocab_size as u64;
        let h = EngineHandle::start(
            model,
            ServeConfig {
                threads: 2,
                max_step_tokens: max_step,
                step_target_ms: target,
                max_running: decoders + 4,
                prefix_caching: false,
                kv_cache_mb: 1024,
                ..Default::default()
            },
        )
        .expect("engine starts");
        let gaps = Arc::new(Mutex::new(Vec::<f64>::new()));
        let decoded = Arc::new(Mutex::new(0usize));
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(secs);
        let mut threads = Vec::new();
        for d in 0..decoders {
            let h = h.clone();
            let gaps = gaps.clone();
            let decoded = decoded.clone();
            threads.push(std::thread::spawn(move || {
                let mut p = SamplingParams::greedy(4000);
                p.ignore_eos = true;
                let prompt: Vec<u32> = (0..16).map(|i| 1000 + d as u32 * 16 + i).collect();
                let mut s = h.submit(GenRequest::new(prompt, p)).expect("accepted");
                let mut last: Option<Instant> = None;
                loop {
                    match s.next_blocking() {
                        Some(GenEvent::Token { .. }) => {}
                        Some(GenEvent::Error(e)) => panic!("decoder refused: {e}"),
                        _ => break,
                    }
                    let now = Instant::now();
                    // Skip the warm-up second: every policy starts with the same prefills.
                    if let Some(l) = last
                        && now > t0 + Duration::from_secs(1)
                    {
                        gaps.lock().unwrap().push((now - l).as_secs_f64() * 1e3);
                        *decoded.lock().unwrap() += 1;
                    }
                    last = Some(now);
                    if now > end {
                        break;
                    }
                }
            }));
        }
        let mut ttft = Vec::new();
        let mut prompt_tokens = 0;
        let mut rng = Rng::new(7);
        let mut next = t0 + Duration::from_secs(1);
        let mut longs = Vec::new();
        while Instant::now() < end - Duration::from_secs(2) {
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
            next += Duration::from_secs(2);
            let prompt: Vec<u32> = (0..1500)
                .map(|_| 100 + (rng.next_u64() % (vocab - 200)) as u32)
                .collect();
            prompt_tokens += prompt.len();
            let h = h.clone();
            longs.push(std::thread::spawn(move || {
                let t = Instant::now();
                let mut s = h
                    .submit(GenRequest::new(prompt, SamplingParams::greedy(4)))
                    .expect("accepted");
                let first = match s.next_blocking() {
                    Some(GenEvent::Token { .. }) => Some(t.elapsed()),
                    _ => None,
                };
                while s.next_blocking().is_some() {}
                first
            }));
        }
        for l in longs {
            if let Some(t) = l.join().unwrap() {
                ttft.push(t.as_secs_f64() * 1e3);
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        let wall = (Instant::now() - t0).as_secs_f64() - 1.0;
        let mut g = gaps.lock().unwrap().clone();
        let n = *decoded.lock().unwrap();
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            percentile(&mut g, 0.5),
            percentile(&mut g, 0.99),
            percentile(&mut g, 1.0),
            percentile(&mut ttft, 0.5),
            n as f64 / wall,
            prompt_tokens as f64 / wall,
        );
    }
}
