//! Long-context perplexity scored by decode steps: each window's head is prefilled densely, then its last tokens are
//! fed one at a time, each scored on the next, so that attention that only changes decoding (DELTA) is measured
//! rather than skipped by a prefill that scores everything at once.

use super::{log_prob, window, Perplexity};
use fulcrum_core::{DeltaConfig, ModelError, Session};

/// Decode-scored perplexity of `tokens` in windows of the session's context: per window, prefill all but the last
/// `tail + 1` tokens, then per mode of `modes` (`None`: dense; `Some`: DELTA's settings) feed the rest one token at a
/// time from the same prefilled cache, scoring `tail` tokens. One result per mode; `on_chunk(window, running)`
/// after each window with the modes' running perplexities.
pub fn decode_scored(
    session: &mut Session,
    tokens: &[u32],
    tail: usize,
    n_chunks: usize,
    modes: &[Option<DeltaConfig>],
    mut on_chunk: impl FnMut(usize, &[f64]),
) -> Result<Vec<Perplexity>, ModelError> {
    let model = session.model.clone();
    let n_ctx = session.n_ctx();
    let vocab = model.config.vocab_size;
    if tail == 0 || tail + 2 > n_ctx {
        return Err(ModelError::BadBatch(format!(
            "a tail of {tail} tokens does not fit windows of {n_ctx}"
        )));
    }
    let head = n_ctx - tail - 1;
    let mut sums = vec![(0.0f64, 0.0f64); modes.len()];
    let chunks = n_chunks.min(tokens.len() / n_ctx);
    for chunk in 0..chunks {
        let window = window(tokens, chunk, n_ctx, &model.tokenizer);
        session.truncate(0);
        session.set_delta(None).map_err(ModelError::BadBatch)?;
        session.eval_last(&window[..head])?;
        for (mode, (nll, nll2)) in modes.iter().zip(sums.iter_mut()) {
            session.truncate(head);
            session
                .set_delta(mode.clone())
                .map_err(ModelError::BadBatch)?;
            for i in head..n_ctx - 1 {
                let logits = session.eval_last(&window[i..i + 1])?;
                let lp = log_prob(&logits[..vocab], window[i + 1]);
                *nll -= lp;
                *nll2 += lp * lp;
            }
        }
        let count = ((chunk + 1) * tail) as f64;
        let running: Vec<f64> = sums.iter().map(|(nll, _)| (nll / count).exp()).collect();
        on_chunk(chunk + 1, &running);
    }
    session.set_delta(None).map_err(ModelError::BadBatch)?;
    let count = chunks * tail;
    Ok(sums
        .iter()
        .map(|&(nll, nll2)| Perplexity::from_sums(nll, nll2, count, chunks))
        .collect())
}
