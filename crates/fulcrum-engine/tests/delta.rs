//! DELTA end to end on the real 0.5B with a budget small enough that the sparse path runs on a prompt of ~1,500
//! tokens: the needle is found with and without it, greedy output is stable, and in the serving engine a DELTA
//! request gives the same tokens alone, batched with others, and speculating (DEL and prompt lookup, lossless
//! under the same attention mode).

#[path = "../../fulcrum-core/tests/common/mod.rs"]
mod common;

use common::model;
use fulcrum_core::{AttentionMode, DeltaConfig, Model, Session};
use fulcrum_engine::engine::{self, EngineConfig, EngineHandle, Event, Params};
use fulcrum_engine::eval::needle;
use fulcrum_engine::sampler::SamplerConfig;
use fulcrum_engine::scheduler::Limits;
use fulcrum_engine::spec::Speculation;
use std::sync::Arc;

fn small_budget(model: &Model) -> DeltaConfig {
    DeltaConfig {
        budget: 16,
        recent: 4,
        ..DeltaConfig::for_model(model.config.n_layers)
    }
}

#[test]
fn the_needle_is_found_with_and_without_delta_and_answers_are_stable() {
    let model = model("qwen2.5-coder-0.5b-instruct");
    let case = needle::case(&model, &needle::haystack_text(), 1536, 0.5, 0).unwrap();
    assert!(
        case.prompt.len() > 16 * 16 * 4,
        "the prompt must be well over the budget"
    );
    let mut session = Session::new(model.clone(), 2048, 2, 512).unwrap();
    let modes = [None, Some(small_budget(&model))];
    let first = needle::answer(&mut session, &case, &modes, 12).unwrap();
    let again = needle::answer(&mut session, &case, &modes, 12).unwrap();
    for (a, b) in first.iter().zip(&again) {
        assert!(a.found, "expected {} in {:?}", case.answer, a.text);
        assert_eq!(a.text, b.text, "greedy answers are stable");
    }
    let delta = &first[1];
    assert!(
        delta.attended * 2 < delta.context,
        "{} of {}",
        delta.attended,
        delta.context
    );
}

fn start(model: &Arc<Model>) -> EngineHandle {
    engine::start(
        model.clone(),
        None,
        EngineConfig {
            threads: 2,
            kv_tokens: 8192,
            block_size: 16,
            prefix_caching: true,
            max_seq_len: 2048,
            limits: Limits {
                token_budget: 512,
                max_running: 4,
                max_waiting: 16,
            },
            tbt_target: None,
            spec_gamma_min: 0,
            delta: small_budget(model),
        },
    )
    .expect("engine starts")
}

fn params(spec: Speculation, attention: AttentionMode) -> Params {
    Params {
        max_tokens: 12,
        sampler: SamplerConfig::greedy(),
        logprobs: None,
        stop_at_eog: false,
        spec,
        attention,
        format: None,
    }
}

fn tokens(events: std::sync::mpsc::Receiver<Event>) -> Vec<u32> {
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::Token { id, .. } => Some(id),
            _ => None,
        })
        .collect()
}

#[test]
fn a_delta_request_is_the_same_alone_batched_and_speculating() {
    let model = model("qwen2.5-coder-0.5b-instruct");
    let haystack = needle::haystack_text();
    let prompts: Vec<Vec<u32>> = [(1200, 0.3), (1000, 0.7)]
        .iter()
        .enumerate()
        .map(|(i, &(len, depth))| {
            needle::case(&model, &haystack, len, depth, i)
                .unwrap()
                .prompt
        })
        .collect();
    let engine = start(&model);
    let run = |prompt: &Vec<u32>, spec: Speculation, attention| {
        tokens(
            engine
                .submit(prompt.clone(), params(spec, attention))
                .expect("accepted")
                .1,
        )
    };
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| run(p, Speculation::Off, AttentionMode::Delta))
        .collect();
    // Together, with a dense request beside them, and each speculating.
    for spec in [
        Speculation::Off,
        Speculation::Del,
        "lookup".parse().unwrap(),
    ] {
        let receivers: Vec<_> = prompts
            .iter()
            .map(|p| {
                engine
                    .submit(p.clone(), params(spec.clone(), AttentionMode::Delta))
                    .expect("accepted")
                    .1
            })
            .collect();
        let dense = engine
            .submit(
                prompts[0].clone(),
                params(Speculation::Off, AttentionMode::Dense),
            )
            .expect("accepted")
            .1;
        for (i, rx) in receivers.into_iter().enumerate() {
            assert_eq!(tokens(rx), alone[i], "sequence {i} under {spec}");
        }
        assert_eq!(tokens(dense).len(), 12);
    }
    let m = &engine.metrics;
    let attended = m
        .attention_attended
        .load(std::sync::atomic::Ordering::Relaxed);
    let context = m
        .attention_context
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(attended * 2 < context, "{attended} of {context}");
}
