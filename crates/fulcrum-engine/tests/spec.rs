//! Speculative decoding is lossless: for every golden prompt and every drafter, greedy output is token-identical to
//! plain greedy decoding (which golden.rs checks against llama.cpp); sampling with a seed is reproducible; drafts that
//! cannot work are refused with a clear error.

mod common;

use common::{golden, ids, model};
use fulcrum_core::{Model, Session};
use fulcrum_engine::sampler::{Sampler, SamplerConfig};
use fulcrum_engine::spec::{SpecError, SpecOptions, Speculation, Speculator};
use std::sync::Arc;

const N_GEN: usize = 32;

/// Generates `n` tokens after `prompt`, speculating as `spec` says (or not at all), the way `fulcrum generate` does.
fn generate(
    target: &Arc<Model>,
    spec: Option<Speculator>,
    sampling: &SamplerConfig,
    prompt: &[u32],
    n: usize,
) -> (Vec<u32>, Option<Speculator>) {
    let n_ctx = prompt.len() + n + 32;
    let mut session = Session::new(target.clone(), n_ctx, 2, 512).unwrap();
    let mut sampler = Sampler::new(sampling.clone()).unwrap();
    let mut spec = spec;
    let mut history = prompt.to_vec();
    let logits = match &mut spec {
        Some(s) => s.prefill(&mut session, prompt).unwrap(),
        None => session.eval_last(prompt).unwrap().to_vec(),
    };
    history.push(sampler.sample(&logits, &history));
    while history.len() - prompt.len() < n {
        let left = n - (history.len() - prompt.len());
        match &mut spec {
            Some(s) => {
                let got = s
                    .step(&mut session, &mut sampler, &mut history, left)
                    .unwrap();
                assert!(
                    (1..=left).contains(&got),
                    "a round committed {got} of {left}"
                );
            }
            None => {
                let last = *history.last().unwrap();
                let logits = session.eval_last(&[last]).unwrap().to_vec();
                history.push(sampler.sample(&logits, &history));
            }
        }
    }
    (history[prompt.len()..].to_vec(), spec)
}

fn speculator(
    target: &Model,
    mode: &str,
    options: SpecOptions,
    draft: Option<Arc<Model>>,
    sampling: &SamplerConfig,
) -> Result<Speculator, SpecError> {
    Speculator::new(
        mode.parse::<Speculation>().unwrap(),
        options,
        target,
        draft,
        sampling,
        256,
        2,
    )
}

/// Every mode on every golden case of `name` gives exactly plain greedy's tokens, which match llama.cpp's up to the
/// first near-tie.
fn check_lossless(name: &str, modes: &[(&str, SpecOptions)], draft: Option<Arc<Model>>) {
    let g = golden();
    let target = model(name);
    let greedy = SamplerConfig::greedy();
    let cases = g["models"][name]["cases"].as_object().unwrap().clone();
    for (case, c) in &cases {
        let prompt = ids(&c["prompt_ids"]);
        let want = ids(&c["generated_ids"]);
        let margins = common::floats(&c["top1_minus_top2_logit"]);
        let (plain, _) = generate(&target, None, &greedy, &prompt, N_GEN);
        let agree = plain.iter().zip(&want).take_while(|(a, b)| a == b).count();
        assert!(
            agree == N_GEN || margins[agree] < 0.05,
            "{name}/{case}: plain greedy leaves llama.cpp's output at step {agree}"
        );
        for (mode, options) in modes {
            let spec = speculator(&target, mode, options.clone(), draft.clone(), &greedy)
                .unwrap_or_else(|e| panic!("{mode}: {e}"));
            let (out, spec) = generate(&target, Some(spec), &greedy, &prompt, N_GEN);
            let stats = spec.unwrap().final_stats();
            eprintln!(
                "{name}/{case} {mode}: {} rounds, {}/{} drafts accepted, {} plain steps",
                stats.rounds, stats.accepted, stats.drafted, stats.plain_steps
            );
            assert_eq!(
                out, plain,
                "{name}/{case}: --spec {mode} changed the output"
            );
        }
    }
}

fn options() -> SpecOptions {
    SpecOptions::default()
}

/// DEL with shadow tokens every round, three candidate exits and γ_min = 1, so that it drafts (its confidence stop
/// included) even where plain decoding would pay better.
fn eager_del(n_layers: usize) -> SpecOptions {
    SpecOptions {
        exits: vec![n_layers / 2, n_layers - 3, n_layers - 1],
        shadow_every: 1,
        gamma_min: 1,
        ..SpecOptions::default()
    }
}

#[test]
fn gemma_drafters_are_lossless() {
    check_lossless(
        "gemma3-270m",
        &[
            ("lookup:4", options()),
            ("early-exit:9,3", options()),
            ("early-exit:16,6", options()),
            ("exit-fsm:15", options()),
            ("del", eager_del(18)),
            ("auto", options()),
        ],
        None,
    );
}

#[test]
fn qwen_drafters_are_lossless() {
    let draft = model("qwen2.5-coder-0.5b-instruct");
    check_lossless(
        "qwen2.5-coder-0.5b-instruct",
        &[
            ("lookup", options()),
            ("early-exit:20,4", options()),
            ("del", eager_del(24)),
            ("draft:self,3", options()),
            ("auto", options()),
        ],
        Some(draft),
    );
}

#[test]
fn a_small_draft_model_is_lossless_for_the_larger_target() {
    let draft = model("qwen2.5-coder-0.5b-instruct");
    check_lossless(
        "qwen2.5-coder-1.5b-instruct",
        &[("draft:0.5b,4", options()), ("auto", options())],
        Some(draft),
    );
}

#[test]
fn a_speculator_resumed_from_an_earlier_one_is_lossless_and_remembers_it() {
    let target = model("qwen2.5-coder-0.5b-instruct");
    let greedy = SamplerConfig::greedy();
    let fresh = || speculator(&target, "auto", options(), Some(target.clone()), &greedy).unwrap();
    let first = target.tokenizer.encode("def fibonacci(n):", true, true);
    let second = target.tokenizer.encode(
        "def is_prime(n):\n    \"\"\"Whether n is prime.",
        true,
        true,
    );
    let (_, spec) = generate(&target, Some(fresh()), &greedy, &first, N_GEN);
    let learned = spec.unwrap().learned();
    assert_eq!(learned.answer_len, Some(N_GEN as f64));
    assert!(learned.timings.layer.estimate(1).is_some());
    assert!(!learned.exits.is_empty());
    let mut resumed = fresh();
    resumed.resume(learned);
    let (out, spec) = generate(&target, Some(resumed), &greedy, &second, N_GEN);
    let (plain, _) = generate(&target, None, &greedy, &second, N_GEN);
    assert_eq!(out, plain, "a resumed auto changed the output");
    // The second answer is folded into the mean length.
    assert_eq!(spec.unwrap().learned().answer_len, Some(N_GEN as f64));
}

#[test]
fn sampling_with_a_draft_is_reproducible() {
    let target = model("qwen2.5-coder-0.5b-instruct");
    let sampling = SamplerConfig {
        temperature: 0.8,
        seed: 42,
        ..SamplerConfig::default()
    };
    let prompt = target.tokenizer.encode("def fibonacci(n):", true, true);
    let run = || {
        let spec = speculator(
            &target,
            "draft:self,4",
            options(),
            Some(target.clone()),
            &sampling,
        )
        .unwrap();
        generate(&target, Some(spec), &sampling, &prompt, 48)
    };
    let (a, spec) = run();
    let (b, _) = run();
    assert_eq!(a, b);
    // A model drafting for itself with the same distribution is accepted (almost) always.
    let stats = spec.unwrap().final_stats();
    assert!(
        stats.accepted * 10 >= stats.drafted * 8,
        "self-drafting accepted {} of {}",
        stats.accepted,
        stats.drafted
    );
}

#[test]
fn unusable_settings_are_refused_clearly() {
    let qwen = model("qwen2.5-coder-0.5b-instruct");
    let gemma = model("gemma3-270m");
    let greedy = SamplerConfig::greedy();
    let err = speculator(&qwen, "draft:gemma,4", options(), Some(gemma), &greedy)
        .err()
        .expect("a Gemma draft for Qwen must be refused");
    assert!(matches!(err, SpecError::VocabularyMismatch(_)), "{err}");
    assert!(err.to_string().contains("vocabulary"), "{err}");
    let err = speculator(&qwen, "early-exit:24,4", options(), None, &greedy)
        .err()
        .expect("an exit at the last layer must be refused");
    assert!(err.to_string().contains("from 1 to 23"), "{err}");
    let err = speculator(&qwen, "draft:x,4", options(), None, &greedy)
        .err()
        .expect("draft without a model");
    assert!(matches!(err, SpecError::MissingDraftModel(_)), "{err}");
}
