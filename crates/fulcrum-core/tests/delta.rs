//! DELTA through the real forward pass (Qwen2.5-Coder-0.5B, 24 layers): with a budget that covers the context it is
//! dense attention bit for bit; with a small one the sparse path runs, and it still gives every sequence the same
//! bits batched as alone, and a verification span the same bits as decoding its tokens one at a time.

mod common;

use common::{argmax, model};
use fulcrum_core::model::Scratch;
use fulcrum_core::{DeltaConfig, Model, Rounding, SeqSpan, Session, ThreadPool};
use std::sync::Arc;

/// About 300 tokens of text that is on every machine (and, failing that, of our own source).
fn long_prompt(model: &Model, words: usize) -> Vec<u32> {
    let text = std::fs::read_to_string("/usr/share/common-licenses/GPL-3")
        .unwrap_or_else(|_| include_str!("../src/model.rs").to_string());
    let text: Vec<&str> = text.split_whitespace().take(words).collect();
    model.tokenizer.encode(&text.join(" "), true, true)
}

fn small_budget(model: &Model) -> DeltaConfig {
    DeltaConfig {
        budget: 4,
        recent: 1,
        ..DeltaConfig::for_model(model.config.n_layers)
    }
}

/// Greedy decode of `n` tokens after `prompt` through a session; the logits of each step.
fn decode(
    model: &Arc<Model>,
    prompt: &[u32],
    delta: Option<DeltaConfig>,
    n: usize,
) -> (Vec<Vec<f32>>, (u64, u64)) {
    let mut session = Session::new(model.clone(), 1024, 2, 512).unwrap();
    session.set_delta(delta).unwrap();
    let mut logits = session.eval_last(prompt).unwrap().to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let next = argmax(&logits);
        out.push(logits);
        logits = session.eval_last(&[next]).unwrap().to_vec();
    }
    out.push(logits);
    (out, session.attention_counts())
}

#[test]
fn a_budget_covering_the_context_or_all_full_layers_is_dense_bit_for_bit() {
    let model = model("qwen2.5-coder-0.5b-instruct");
    let prompt = long_prompt(&model, 220);
    assert!(
        prompt.len() > 4 * 16,
        "the prompt must exceed the small budget"
    );
    let (dense, _) = decode(&model, &prompt, None, 6);
    let wide = DeltaConfig {
        budget: 1000,
        ..DeltaConfig::for_model(model.config.n_layers)
    };
    let all_full = DeltaConfig {
        full_layers: (0..model.config.n_layers).collect(),
        ..small_budget(&model)
    };
    for config in [wide, all_full] {
        let (got, (attended, context)) = decode(&model, &prompt, Some(config.clone()), 6);
        assert_eq!(attended, context, "{config:?}: nothing is skipped");
        for (step, (a, b)) in got.iter().zip(&dense).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{config:?}: step {step} differs from dense"
            );
        }
    }
    // A small budget really attends to fewer positions.
    let (_, (attended, context)) = decode(&model, &prompt, Some(small_budget(&model)), 2);
    assert!(attended * 2 < context, "{attended} of {context}");
}

/// Prefill of `prompt` into cache rows `slots` of a paged pool (dense), one chunk.
fn prefill(
    model: &Model,
    pool: &ThreadPool,
    kv: &mut fulcrum_core::kv::KvCache,
    s: &mut Scratch,
    prompt: &[u32],
    slots: &[u32],
) {
    let span = SeqSpan {
        start_row: 0,
        len: prompt.len(),
        start_pos: 0,
        slots: Some(slots),
        logits_from: prompt.len(),
        delta: None,
    };
    model
        .forward_batch(pool, prompt, &[span], kv, s, Rounding::BatchInvariant)
        .unwrap();
}

/// Slots of `n` positions scattered over a pool: block `b` of 16 rows for each 16 positions, from `first` on.
fn scattered(n: usize, first: u32, stride: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|p| (first + p / 16 * stride) * 16 + p % 16)
        .collect()
}

/// Every prompt prefilled into one pool (`pool = (rows, first block, block stride)`), then `follow` fed after each
/// as one span per sequence in a single pass; the logits of every fed token.
fn together(
    model: &Model,
    pool: &ThreadPool,
    prompts: &[Vec<u32>],
    follow: &[u32],
    (n_rows, first, stride): (usize, u32, u32),
    delta: Option<&DeltaConfig>,
) -> Vec<f32> {
    let mut kv = model.new_kv_cache(n_rows);
    let mut s = Scratch::new(&model.config, 512, n_rows, 2);
    let slots: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| scattered(p.len() + follow.len(), first + i as u32, stride))
        .collect();
    for (prompt, slots) in prompts.iter().zip(&slots) {
        prefill(model, pool, &mut kv, &mut s, prompt, slots);
    }
    let spans: Vec<SeqSpan> = prompts
        .iter()
        .zip(&slots)
        .enumerate()
        .map(|(i, (prompt, slots))| SeqSpan {
            start_row: follow.len() * i,
            len: follow.len(),
            start_pos: prompt.len(),
            slots: Some(slots),
            logits_from: 0,
            delta,
        })
        .collect();
    let tokens: Vec<u32> = prompts.iter().flat_map(|_| follow).copied().collect();
    model
        .forward_batch(
            pool,
            &tokens,
            &spans,
            &mut kv,
            &mut s,
            Rounding::BatchInvariant,
        )
        .unwrap()
        .to_vec()
}

#[test]
fn sparse_decode_is_the_same_batched_alone_and_verified_at_once() {
    let model = model("qwen2.5-coder-0.5b-instruct");
    let pool = ThreadPool::new(2);
    let config = small_budget(&model);
    let prompts = [long_prompt(&model, 200), long_prompt(&model, 260)];
    let n_rows = 64 * 16;
    let follow: [u32; 3] = [279, 1879, 315]; // fed after each prompt: a decode step, then two more
                                             // Each alone: prefill, then the three tokens one at a time.
    let mut alone = Vec::new();
    for (i, prompt) in prompts.iter().enumerate() {
        let slots = scattered(prompt.len() + 3, 2 + i as u32, 3);
        let mut kv = model.new_kv_cache(n_rows);
        let mut s = Scratch::new(&model.config, 512, n_rows, 2);
        prefill(&model, &pool, &mut kv, &mut s, prompt, &slots);
        let mut steps = Vec::new();
        for (k, &tok) in follow.iter().enumerate() {
            let span = SeqSpan {
                start_row: 0,
                len: 1,
                start_pos: prompt.len() + k,
                slots: Some(&slots),
                logits_from: 0,
                delta: Some(&config),
            };
            let logits = model
                .forward_batch(
                    &pool,
                    &[tok],
                    &[span],
                    &mut kv,
                    &mut s,
                    Rounding::BatchInvariant,
                )
                .unwrap();
            steps.push(logits.to_vec());
        }
        assert!(s.delta.attended * 2 < s.delta.context);
        alone.push(steps);
    }
    // Both together in one pool and one pass each: the three tokens as one verification span per sequence.
    let logits = together(
        &model,
        &pool,
        &prompts,
        &follow,
        (n_rows, 2, 3),
        Some(&config),
    );
    let vocab = model.config.vocab_size;
    for (i, steps) in alone.iter().enumerate() {
        for (k, want) in steps.iter().enumerate() {
            let got = &logits[(3 * i + k) * vocab..][..vocab];
            assert!(
                got.iter()
                    .zip(want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "sequence {i} token {k}: batched verification differs from decoding alone"
            );
        }
    }
}

#[test]
fn batched_with_a_budget_covering_the_context_is_dense_bit_for_bit() {
    let model = model("qwen2.5-coder-0.5b-instruct");
    let pool = ThreadPool::new(2);
    let wide = DeltaConfig {
        budget: 1000,
        ..DeltaConfig::for_model(model.config.n_layers)
    };
    let prompts = [long_prompt(&model, 120), long_prompt(&model, 90)];
    let follow: [u32; 3] = [279, 1879, 315];
    let n_rows = 32 * 16;
    let run = |delta| together(&model, &pool, &prompts, &follow, (n_rows, 1, 2), delta);
    let (dense, delta) = (run(None), run(Some(&wide)));
    assert!(dense
        .iter()
        .zip(&delta)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}
