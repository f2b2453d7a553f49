//! Batch invariance of the forward pass used for serving: sequences computed together in one batch, over a paged
//! pool with scattered cache rows and mixed prefill chunks and decode tokens, give bit-identical logits to each
//! sequence computed alone.

mod common;

use common::{argmax, model};
use fulcrum_core::model::Scratch;
use fulcrum_core::{Model, Rounding, SeqSpan, ThreadPool};

const NEW_TOKENS: usize = 6;

/// Greedy continuation of `prompt` alone (contiguous cache, one chunk): the logits of each generated position.
fn alone(model: &Model, pool: &ThreadPool, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut kv = model.new_kv_cache(64);
    let mut s = Scratch::new(&model.config, 64, 64, pool.n_threads());
    let mut tokens = prompt.to_vec();
    let mut out = Vec::new();
    let mut done = 0;
    while out.len() < NEW_TOKENS {
        let span = SeqSpan {
            start_row: 0,
            len: tokens.len() - done,
            start_pos: done,
            slots: None,
            logits_from: tokens.len() - done - 1,
            delta: None,
        };
        let logits = model
            .forward_batch(
                pool,
                &tokens[done..],
                &[span],
                &mut kv,
                &mut s,
                Rounding::BatchInvariant,
            )
            .unwrap()
            .to_vec();
        done = tokens.len();
        tokens.push(argmax(&logits));
        out.push(logits);
    }
    out
}

#[test]
fn batched_paged_sequences_match_each_alone() {
    let model = model("gemma3-270m");
    let pool = ThreadPool::new(2);
    let prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "def fibonacci(n):",
        "1, 2, 3, 4,",
    ]
    .iter()
    .map(|p| model.tokenizer.encode(p, true, true))
    .collect();
    let want: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| alone(&model, &pool, p)).collect();

    // Scattered cache rows: sequence i uses rows i, i + 3, i + 6, ... in reverse order.
    let mut kv = model.new_kv_cache(96);
    let slots: Vec<Vec<u32>> = (0..3u32)
        .map(|i| (0..32).rev().map(|p| p * 3 + i).collect())
        .collect();
    let mut s = Scratch::new(&model.config, 64, 64, pool.n_threads());
    let mut tokens = prompts.clone();
    let mut done = [0usize; 3];
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); 3];
    // Prefill chunks of at most 3 tokens, so prompts, decodes and staggered starts mix in one batch.
    for step in 0..40 {
        let mut batch = Vec::new();
        let mut spans = Vec::new();
        for i in 0..3 {
            if step < i || got[i].len() == NEW_TOKENS {
                continue;
            }
            let len = (tokens[i].len() - done[i]).min(3);
            let wants = done[i] + len == tokens[i].len();
            spans.push((
                i,
                SeqSpan {
                    start_row: batch.len(),
                    len,
                    start_pos: done[i],
                    slots: Some(&slots[i][..]),
                    logits_from: if wants { len - 1 } else { len },
                    delta: None,
                },
            ));
            batch.extend_from_slice(&tokens[i][done[i]..done[i] + len]);
        }
        if spans.is_empty() {
            break;
        }
        let only: Vec<SeqSpan> = spans.iter().map(|(_, sp)| *sp).collect();
        let logits = model
            .forward_batch(
                &pool,
                &batch,
                &only,
                &mut kv,
                &mut s,
                Rounding::BatchInvariant,
            )
            .unwrap()
            .to_vec();
        let vocab = model.config.vocab_size;
        let mut row = 0;
        for (i, sp) in spans {
            done[i] += sp.len;
            if sp.logits_from < sp.len {
                let l = logits[row * vocab..(row + 1) * vocab].to_vec();
                row += 1;
                tokens[i].push(argmax(&l));
                got[i].push(l);
            }
        }
    }
    for i in 0..3 {
        assert_eq!(got[i].len(), NEW_TOKENS, "sequence {i} finished");
        for (step, (a, b)) in got[i].iter().zip(&want[i]).enumerate() {
            assert!(
                a == b,
                "sequence {i}, generated token {step}: logits differ from the sequence alone"
            );
        }
    }
}
