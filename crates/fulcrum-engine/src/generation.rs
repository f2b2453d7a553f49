//! One sequence's generation on a [`Session`]: evaluate the new tokens, then sample until an end-of-generation token,
//! the token limit or a full context, in speculative rounds when a [`Speculator`] is given (the output is the same as
//! without: token for token when greedy, in distribution when sampling). Text comes out in complete UTF-8 pieces.

use crate::engine::FinishReason;
use crate::sampler::Sampler;
use crate::spec::Speculator;
use fulcrum_core::tokenizer::StreamDecoder;
use fulcrum_core::{ModelError, Session};
use std::time::Instant;

/// What one generation produced.
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub prompt_seconds: f64,
    pub gen_seconds: f64,
    /// Why it ended: an end-of-generation token, or the token limit or a full context.
    pub finish_reason: FinishReason,
}

/// Evaluates `new_tokens` after what `session` holds, then samples up to `max_tokens` tokens, passing each piece of
/// complete UTF-8 text to `on_text`, which returns false to stop there. `history` holds every token in the session, for the repetition penalty. With a
/// speculator, tokens come in speculative rounds; the output is the same as without (in distribution when sampling).
pub fn decode(
    session: &mut Session,
    sampler: &mut Sampler,
    history: &mut Vec<u32>,
    new_tokens: &[u32],
    max_tokens: usize,
    mut spec: Option<&mut Speculator>,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, ModelError> {
    let model = session.model.clone();
    let tok = &model.tokenizer;
    let started = Instant::now();
    let mut logits = match spec.as_deref_mut() {
        Some(spec) => spec.prefill(session, new_tokens)?,
        None => session.eval_last(new_tokens)?.to_vec(),
    };
    history.extend_from_slice(new_tokens);
    let prompt_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut decoder = StreamDecoder::new();
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        prompt_seconds,
        gen_seconds: 0.0,
        finish_reason: FinishReason::Length,
    };
    // Takes one committed token; false when generation is over.
    let mut emit = |out: &mut Generation, id: u32| {
        out.tokens.push(id);
        if tok.is_eog(id) {
            out.finish_reason = FinishReason::Stop;
            return false;
        }
        let piece = decoder.push(tok, id);
        if !piece.is_empty() {
            let more = on_text(&piece);
            out.text.push_str(&piece);
            if !more {
                out.finish_reason = FinishReason::Stop;
                return false;
            }
        }
        out.tokens.len() < max_tokens
    };
    if max_tokens > 0 {
        let id = sampler.sample(&logits, history);
        sampler.accept(id);
        history.push(id);
        let mut going = emit(&mut out, id);
        while going && session.len() < session.n_ctx() {
            match spec.as_deref_mut() {
                Some(spec) => {
                    let start = history.len();
                    spec.step(session, sampler, history, max_tokens - out.tokens.len())?;
                    for &id in &history[start..] {
                        going = emit(&mut out, id);
                        if !going {
                            break;
                        }
                    }
                }
                None => {
                    logits.copy_from_slice(session.eval_last(&[id_of(history)])?);
                    let id = sampler.sample(&logits, history);
                    sampler.accept(id);
                    history.push(id);
                    going = emit(&mut out, id);
                }
            }
        }
    }
    let rest = decoder.flush();
    if !rest.is_empty() {
        let _ = on_text(&rest);
        out.text.push_str(&rest);
    }
    out.gen_seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// Length of the longest end of `text` that is a proper beginning of one of `markers` (on a char boundary): text a
/// stream holds back until it knows whether a stop string, tag or turn marker starts there.
pub fn held_back<S: AsRef<str>>(text: &str, markers: &[S]) -> usize {
    markers
        .iter()
        .filter_map(|m| {
            let m = m.as_ref();
            (1..m.len().min(text.len() + 1)).rev().find(|&n| {
                let at = text.len() - n;
                text.is_char_boundary(at) && m.starts_with(&text[at..])
            })
        })
        .max()
        .unwrap_or(0)
}

/// The last token of `history`, the next one to evaluate.
fn id_of(history: &[u32]) -> u32 {
    history[history.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn text_that_may_start_a_marker_is_held() {
        let stops = ["END".to_string(), "\n\n".to_string()];
        assert_eq!(held_back("hello E", &stops), 1);
        assert_eq!(held_back("hello EN", &stops), 2);
        assert_eq!(
            held_back("hello END", &stops),
            0,
            "a whole marker is found, not held"
        );
        assert_eq!(held_back("hello\n", &stops), 1);
        assert_eq!(held_back("hello", &stops), 0);
        assert_eq!(held_back("héllo", &["ö"]), 0);
        assert_eq!(held_back("Hello\nus", &["\nuser:", "\nsystem:"]), 3);
        assert_eq!(held_back("x", &[] as &[&str]), 0);
    }
}
