//! The serving engine on the default model: concurrent requests batched together give the same
//! greedy text as one at a time, a shared prompt prefix is not computed twice, overload is
//! refused at once, and a dropped stream or a timeout frees its request.

use std::time::{Duration, Instant};

use autoglm_engine::{
    Engine, EngineConfig, EngineHandle, FinishReason, GenEvent, GenRequest, Priority,
    SamplingParams, ServeConfig, SubmitError,
};
use autoglm_model::{KvDtype, Model};
use autoglm_testkit::{ids, model_path, reference};

fn handle(cfg: ServeConfig) -> EngineHandle {
    let model = Model::load(model_path("smollm2-135m")).expect("model loads");
    EngineHandle::start(model, cfg).expect("engine starts")
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenRequest {
    GenRequest::new(prompt, SamplingParams::greedy(max_tokens))
}

fn wait_idle(h: &EngineHandle) {
    let t0 = Instant::now();
    while h.in_flight() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "requests never finished"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_requests_match_sequential_generation() {
    concurrent_matches_sequential(KvDtype::F16);
}

/// The same with 8-bit KV blocks, which hold nearly twice the tokens in the same budget.
#[test]
fn concurrent_requests_match_sequential_generation_with_8_bit_kv_cache() {
    concurrent_matches_sequential(KvDtype::Q8);
    let blocks = |kv_dtype| {
        handle(ServeConfig {
            threads: 1,
            kv_cache_mb: 64,
            kv_dtype,
            ..Default::default()
        })
        .stats()
        .blocks_total
    };
    let (f16, q8) = (blocks(KvDtype::F16), blocks(KvDtype::Q8));
    assert!(
        q8 * 100 >= f16 * 187,
        "{q8} 8-bit blocks vs {f16} f16 blocks"
    );
}

fn concurrent_matches_sequential(kv_dtype: KvDtype) {
    let prompts: Vec<Vec<u32>> = reference("smollm2-135m", "greedy.jsonl")
        .iter()
        .take(6)
        .map(|l| ids(&l["prompt_ids"]))
        .collect();
    let mut engine = Engine::load(
        model_path("smollm2-135m"),
        EngineConfig {
            threads: 2,
            kv_dtype,
            ..Default::default()
        },
    )
    .unwrap();
    let sequential: Vec<String> = prompts
        .iter()
        .map(|p| {
            engine
                .generate(p, &SamplingParams::greedy(32), &mut |_| true)
                .unwrap()
                .text
        })
        .collect();
    drop(engine);

    let h = handle(ServeConfig {
        threads: 2,
        kv_dtype,
        ..Default::default()
    });
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| h.submit(greedy(p.clone(), 32)).unwrap())
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (text, summary) = s.collect_blocking().unwrap();
        assert_eq!(text, sequential[i], "request {i}");
        assert_eq!(summary.prompt_tokens, prompts[i].len());
        assert!(matches!(
            summary.finish,
            FinishReason::Length | FinishReason::Stop
        ));
    }
    wait_idle(&h);
}

/// The second request shares a 1,500-token prefix with the first: only its tail is computed.
#[test]
fn shared_prefix_is_not_computed_twice() {
    let h = handle(ServeConfig {
        threads: 2,
        ..Default::default()
    });
    let tok = h.tokenizer().clone();
    let mut prefix = Vec::new();
    let mut i = 0;
    while prefix.len() < 1500 {
        prefix.extend(tok.encode(
            &format!("Fact {i}: the agent keeps its tools and memory in order. "),
            false,
        ));
        i += 1;
    }
    prefix.truncate(1500);
    let mut a = prefix.clone();
    a.extend(tok.encode(" Question one: what is fact 3?", false));
    let mut b = prefix.clone();
    b.extend(tok.encode(" Question two: what is fact 7?", false));

    let (_, first) = h.submit(greedy(a, 4)).unwrap().collect_blocking().unwrap();
    let (_, second) = h.submit(greedy(b, 4)).unwrap().collect_blocking().unwrap();
    assert_eq!(first.cached_prompt_tokens, 0);
    // Whole 16-token blocks of the shared prefix are reused.
    assert!(
        second.cached_prompt_tokens >= 1488,
        "cached {}",
        second.cached_prompt_tokens
    );
    eprintln!(
        "time to first token: {:?} cold, {:?} with a 1,500-token cached prefix ({:.1} %)",
        first.time_to_first_token,
        second.time_to_first_token,
        100.0 * second.time_to_first_token.as_secs_f64() / first.time_to_first_token.as_secs_f64()
    );
    assert!(second.time_to_first_token < first.time_to_first_token);
}

#[test]
fn overload_is_refused_at_once_and_accepted_work_completes() {
    let h = handle(ServeConfig {
        threads: 2,
        max_queue: 2,
        max_running: 1,
        ..Default::default()
    });
    let mut accepted = Vec::new();
    let mut refused = 0;
    for i in 0..10 {
        let t0 = Instant::now();
        match h.submit(greedy(vec![1, 2, 3, 100 + i], 8)) {
            Ok(s) => accepted.push(s),
            Err(SubmitError::Overloaded { .. }) => {
                refused += 1;
                assert!(
                    t0.elapsed() < Duration::from_millis(50),
                    "refusal must be immediate"
                );
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(refused >= 6, "only {refused} refused");
    for s in accepted {
        let (_, summary) = s.collect_blocking().unwrap();
        assert_eq!(summary.completion_tokens, 8);
    }
    wait_idle(&h);
}

#[test]
fn dropped_stream_and_timeout_free_the_request() {
    let h = handle(ServeConfig {
        threads: 2,
        ..Default::default()
    });
    let mut long = SamplingParams::greedy(2000);
    long.ignore_eos = true;
    let mut s = h
        .submit(GenRequest {
            prompt: vec![1, 2, 3],
            params: long.clone(),
            priority: Priority::Batch,
            timeout: None,
            constraint: None,
        })
        .unwrap();
    assert!(matches!(s.next_blocking(), Some(GenEvent::Token { .. })));
    drop(s);
    wait_idle(&h);

    let s = h
        .submit(GenRequest {
            prompt: vec![1, 2, 3],
            params: long,
            priority: Priority::Batch,
            timeout: Some(Duration::from_millis(50)),
            constraint: None,
        })
        .unwrap();
    let (_, summary) = s.collect_blocking().unwrap();
    assert_eq!(summary.finish, FinishReason::Cancelled);
    assert!(summary.completion_tokens < 2000);
    wait_idle(&h);
}

#[test]
fn invalid_requests_are_refused_with_the_reason() {
    let h = handle(ServeConfig {
        threads: 1,
        ..Default::default()
    });
    let check = |r: Result<_, SubmitError>, expect: &str| match r {
        Ok(_) => panic!("accepted"),
        Err(e) => assert!(e.to_string().contains(expect), "{e}"),
    };
    check(h.submit(greedy(vec![], 4)), "empty");
    check(h.submit(greedy(vec![1; 9000], 4)), "context");
    let mut bad = greedy(vec![1, 2], 4);
    bad.params.temperature = -1.0;
    check(h.submit(bad), "temperature");
    assert_eq!(h.in_flight(), 0);
}
