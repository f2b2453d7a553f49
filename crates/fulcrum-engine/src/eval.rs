//! Evaluation of a model on a text: perplexity as llama.cpp's `llama-perplexity` computes it (windows of the
//! context's length, each scored on its second half, the first token of each window replaced by BOS where the model
//! adds one); decode-scored perplexity of long windows ([`tail`]) and a needle-in-a-haystack set ([`needle`]), which
//! measure what DELTA's sparse decoding changes.

pub mod needle;
pub mod tail;

use crate::engine::TokenLogprobs;
use crate::sampler::{log_softmax_at, top_logprobs};
use fulcrum_core::{ModelError, Session};

/// Positions [`prompt_logprobs`] scores per pass: their logits are held for one pass at a time.
pub const SCORE_BATCH: usize = 64;

/// Each of `tokens`' log-probability given the tokens before it, with the `top` most likely tokens at its position
/// (what `echo` with `logprobs` returns); the first token has none. Evaluated after what `session` has cached.
pub fn prompt_logprobs(
    session: &mut Session,
    tokens: &[u32],
    top: usize,
) -> Result<Vec<Option<TokenLogprobs>>, ModelError> {
    let vocab = session.model().config.vocab_size;
    let mut out = Vec::with_capacity(tokens.len());
    out.push(None);
    for (n, part) in tokens.chunks(SCORE_BATCH).enumerate() {
        let logits = session.eval_from(part, 0)?;
        for (i, row) in logits.chunks(vocab).enumerate() {
            let Some(&next) = tokens.get(n * SCORE_BATCH + i + 1) else {
                break;
            };
            out.push(Some(TokenLogprobs {
                logprob: log_softmax_at(row, &[next])[0],
                top: top_logprobs(row, top),
            }));
        }
    }
    out.truncate(tokens.len());
    Ok(out)
}

/// A perplexity and its spread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perplexity {
    pub ppl: f64,
    /// One standard error of the perplexity.
    pub plus_minus: f64,
    pub chunks: usize,
    pub tokens_scored: usize,
}

/// `log p(token)` under the softmax of `logits`, with the sum of exponentials in f64 as llama.cpp does.
pub fn log_prob(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (logits[token as usize] - max) as f64 - sum.ln()
}

/// The perplexity of `tokens` over `n_chunks` windows of the session's context length, calling `on_chunk` with the
/// running perplexity after each window.
pub fn perplexity(
    session: &mut Session,
    tokens: &[u32],
    n_chunks: usize,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<Perplexity, ModelError> {
    let model = session.model.clone();
    let tok = &model.tokenizer;
    let n_ctx = session.n_ctx();
    let vocab = model.config.vocab_size;
    let first = n_ctx / 2;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    for chunk in 0..n_chunks.min(tokens.len() / n_ctx) {
        let window = window(tokens, chunk, n_ctx, tok);
        session.truncate(0);
        let logits = session.eval_from(&window, first)?;
        for i in 0..n_ctx - 1 - first {
            let lp = log_prob(&logits[i * vocab..(i + 1) * vocab], window[first + i + 1]);
            nll -= lp;
            nll2 += lp * lp;
        }
        count += n_ctx - 1 - first;
        on_chunk(chunk + 1, (nll / count as f64).exp());
    }
    Ok(Perplexity::from_sums(
        nll,
        nll2,
        count,
        n_chunks.min(tokens.len() / n_ctx),
    ))
}

/// Window `chunk` of `n_ctx` tokens, its first token replaced by BOS where the model adds one (as llama.cpp does).
fn window(
    tokens: &[u32],
    chunk: usize,
    n_ctx: usize,
    tok: &fulcrum_core::tokenizer::Tokenizer,
) -> Vec<u32> {
    let mut window = tokens[chunk * n_ctx..(chunk + 1) * n_ctx].to_vec();
    if let (true, Some(bos)) = (tok.add_bos(), tok.bos()) {
        window[0] = bos;
    }
    window
}

impl Perplexity {
    /// The perplexity of `count` scored tokens from the sums of their negative log-probabilities and of their squares.
    pub fn from_sums(nll: f64, nll2: f64, count: usize, chunks: usize) -> Perplexity {
        let mean = nll / count.max(1) as f64;
        let ppl = mean.exp();
        let var = nll2 / count.max(1) as f64 - mean * mean;
        let plus_minus = if var > 0.0 && count > 1 {
            (var / (count as f64 - 1.0)).sqrt() * ppl
        } else {
            0.0
        };
        Perplexity {
            ppl,
            plus_minus,
            chunks,
            tokens_scored: count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_prob;

    #[test]
    fn log_prob_is_the_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &l) in logits.iter().enumerate() {
            assert!((log_prob(&logits, i as u32) - ((l as f64) - z.ln())).abs() < 1e-6);
        }
    }
}
