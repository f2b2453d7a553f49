//! The engine loop's pieces on a real model: a request ends at its token limit with its usage reported, an abandoned
//! or aborted request frees its blocks, a crowd of requests all complete with the metrics adding up, and the modes
//! the server gained with the one speculation type (adaptive lookup, exit-fsm) are lossless in a batch.

mod common;

use common::model;
use fulcrum_core::Model;
use fulcrum_engine::engine::{self, EngineConfig, EngineHandle, Event, FinishReason, Params};
use fulcrum_engine::sampler::SamplerConfig;
use fulcrum_engine::scheduler::Limits;
use fulcrum_engine::spec::Speculation;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start(model: &Arc<Model>) -> EngineHandle {
    engine::start(
        model.clone(),
        None,
        EngineConfig {
            threads: 2,
            kv_tokens: 2048,
            block_size: 16,
            prefix_caching: true,
            max_seq_len: 256,
            limits: Limits {
                token_budget: 64,
                max_running: 4,
                max_waiting: 16,
            },
            tbt_target: None,
            spec_gamma_min: 0,
            delta: fulcrum_core::DeltaConfig::for_model(model.config.n_layers),
        },
    )
    .expect("engine starts")
}

fn params(max_tokens: usize, spec: Speculation) -> Params {
    Params {
        max_tokens,
        sampler: SamplerConfig::greedy(),
        logprobs: None,
        stop_at_eog: false,
        spec,
        attention: fulcrum_core::AttentionMode::Dense,
        format: None,
    }
}

/// Every event of a request: its tokens and how it finished.
fn drain(events: std::sync::mpsc::Receiver<Event>) -> (Vec<u32>, Option<Event>) {
    let mut tokens = Vec::new();
    for event in events {
        match event {
            Event::Token { id, .. } => tokens.push(id),
            Event::Prefilled { .. } => {}
            end => return (tokens, Some(end)),
        }
    }
    (tokens, None)
}

/// Waits until `done` holds (the engine thread works on its own), for at most a minute.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_request_ends_at_its_limit_and_an_abandoned_one_frees_its_blocks() {
    let model = model("qwen2.5-coder-0.5b-instruct");
    let engine = start(&model);
    let prompt = model.tokenizer.encode("def add(a, b):", true, true);
    let (_, rx) = engine
        .submit(prompt.clone(), params(7, Speculation::Off))
        .expect("accepted");
    let (tokens, end) = drain(rx);
    assert_eq!(tokens.len(), 7);
    match end {
        Some(Event::Finished {
            reason,
            prompt_tokens,
            completion_tokens,
            ..
        }) => {
            assert_eq!(reason, FinishReason::Length);
            assert_eq!((prompt_tokens, completion_tokens), (prompt.len(), 7));
        }
        other => panic!("expected Finished, got {other:?}"),
    }
    // A client that stops listening: the engine notices at its next token and frees everything.
    let (_, rx) = engine
        .submit(prompt.clone(), params(200, Speculation::Off))
        .expect("accepted");
    drop(rx);
    let m = engine.metrics.clone();
    eventually("the abandoned request is gone", || {
        m.running.load(Ordering::Relaxed) == 0 && m.waiting.load(Ordering::Relaxed) == 0
    });
    assert_eq!(
        m.kv_usage_ppm.load(Ordering::Relaxed),
        0,
        "no block stays referenced"
    );
    // An abort of a running request ends it without a Finished event.
    let (id, rx) = engine
        .submit(prompt, params(200, Speculation::Off))
        .expect("accepted");
    let first = rx.recv().expect("the prompt's end");
    assert!(matches!(first, Event::Prefilled { .. }));
    let first = rx.recv().expect("a first token");
    assert!(matches!(first, Event::Token { .. }));
    engine.abort(id);
    let (_, end) = drain(rx);
    assert!(end.is_none(), "an aborted request reports no end: {end:?}");
    eventually("the aborted request is gone", || {
        m.running.load(Ordering::Relaxed) == 0
    });
    eventually("three requests are counted", || {
        m.requests_finished.load(Ordering::Relaxed) == 3
    });
}

#[test]
fn a_crowd_completes_and_new_served_modes_are_lossless() {
    let model = model("qwen2.5-coder-0.5b-instruct");
    let engine = start(&model);
    let prompts = [
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3, 4, 5,",
        "def quicksort(xs):",
        "The capital of France is",
        "for i in range(10):\n    print(i)\nfor i in range(10):\n",
        "Once upon a time",
        "import numpy as np\n",
    ];
    let run = |spec: Speculation| -> Vec<Vec<u32>> {
        let receivers: Vec<_> = prompts
            .iter()
            .map(|p| {
                let ids = model.tokenizer.encode(p, true, true);
                engine
                    .submit(ids, params(20, spec.clone()))
                    .expect("accepted")
                    .1
            })
            .collect();
        receivers.into_iter().map(|rx| drain(rx).0).collect()
    };
    let plain = run(Speculation::Off);
    assert!(
        plain.iter().all(|t| t.len() == 20),
        "every request completes"
    );
    let m = &engine.metrics;
    assert_eq!(m.generated_tokens.load(Ordering::Relaxed), 6 * 20);
    // Counted just after the last Finished event goes out.
    eventually("six requests are counted", || {
        m.requests_finished.load(Ordering::Relaxed) == 6
    });
    assert_eq!(*m.ttft.lock().unwrap().counts.last().unwrap(), 6);
    for spec in [
        Speculation::Lookup { gamma: None },
        Speculation::ExitFsm { exit: 20 },
    ] {
        assert_eq!(run(spec.clone()), plain, "{spec} changed greedy output");
    }
    let by = m.spec_by_drafter.lock().unwrap().clone();
    assert!(by.get("exit:20").is_some_and(|c| c.drafted > 0), "{by:?}");
}
