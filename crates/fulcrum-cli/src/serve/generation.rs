//! Turns the engine's token events for one request into text deltas: streaming detokenization, stop strings (text
//! that might start a stop string is held back until it is decided), log-probabilities, and the final usage. Runs on a
//! blocking thread; when the consumer goes away it cancels the request in the engine.

use fulcrum_core::Model;
use fulcrum_engine::engine::{EngineHandle, Event, TokenLogprobs};
use fulcrum_tokenizer::StreamDecoder;
use std::sync::mpsc::Receiver;
use tokio::sync::mpsc::UnboundedSender;

/// One token's log-probability and its top alternatives, as text.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// A token's text as log-probabilities show it (control tokens' text kept).
pub fn token_text(model: &Model, id: u32) -> String {
    String::from_utf8_lossy(model.tokenizer.token_bytes(id, true)).into_owned()
}

/// A token's log-probabilities with the tokens as their text.
pub fn token_logprob(model: &Model, token: u32, lp: &TokenLogprobs) -> TokenLogprob {
    TokenLogprob {
        token: token_text(model, token),
        logprob: lp.logprob,
        top: lp
            .top
            .iter()
            .map(|&(t, l)| (token_text(model, t), l))
            .collect(),
    }
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

/// What the HTTP side receives.
#[derive(Debug, Clone)]
pub enum Chunk {
    Delta {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        reason: &'static str,
        usage: Usage,
    },
    /// The request ended without a result (an internal error); the message says why.
    Failed(String),
}

/// Where a choice's chunks go: the response's channel, tagged with the choice's index.
pub struct Sink {
    pub index: usize,
    /// Whether control tokens are decoded as their text (for a tool-call parser, or asked for) rather than dropped.
    pub special: bool,
    /// Whether the output ends with the stop string that ended it (SGLang's `no_stop_trim`).
    pub keep_stop: bool,
    pub tx: UnboundedSender<(usize, Chunk)>,
    /// Told when the prompt has been prefilled (its KV is then in the prefix cache for the other choices).
    pub prefilled: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Relays request `id`'s events to `sink` until it finishes or the response goes away; returns how it ended:
/// `stop`, `length`, `abort` (the response went away) or `error`.
pub fn relay(
    model: &Model,
    engine: &EngineHandle,
    id: u64,
    events: Receiver<Event>,
    stops: &[String],
    prompt_tokens: usize,
    mut sink: Sink,
) -> &'static str {
    let tok = &model.tokenizer;
    let mut decoder = if sink.special {
        StreamDecoder::with_special()
    } else {
        StreamDecoder::new()
    };
    let mut held = String::new();
    let mut pending_logprobs = Vec::new();
    let mut generated = 0;
    let mut cached = 0;
    let (index, out) = (sink.index, sink.tx);
    let send = |chunk: Chunk| out.send((index, chunk)).is_ok();
    for event in events {
        match event {
            Event::Prefilled { cached_tokens } => {
                cached = cached_tokens;
                if let Some(prefilled) = sink.prefilled.take() {
                    let _ = prefilled.send(());
                }
            }
            Event::Token {
                id: token,
                logprobs,
            } => {
                generated += 1;
                if let Some(lp) = logprobs {
                    pending_logprobs.push(token_logprob(model, token, &lp));
                }
                held.push_str(&decoder.push(tok, token));
                if let Some((at, stop)) = stops
                    .iter()
                    .filter_map(|s| held.find(s.as_str()).map(|i| (i, s)))
                    .min_by_key(|(i, _)| *i)
                {
                    engine.abort(id);
                    held.truncate(if sink.keep_stop { at + stop.len() } else { at });
                    let text = std::mem::take(&mut held);
                    let _ = send(Chunk::Delta {
                        text,
                        logprobs: std::mem::take(&mut pending_logprobs),
                    });
                    let _ = send(Chunk::Done {
                        reason: "stop",
                        usage: Usage {
                            prompt_tokens,
                            completion_tokens: generated,
                            cached_tokens: cached,
                        },
                    });
                    return "stop";
                }
                let keep = fulcrum_engine::generation::held_back(&held, stops);
                let text: String = held.drain(..held.len() - keep).collect();
                if (!text.is_empty() || !pending_logprobs.is_empty())
                    && !send(Chunk::Delta {
                        text,
                        logprobs: std::mem::take(&mut pending_logprobs),
                    })
                {
                    engine.abort(id);
                    return "abort";
                }
            }
            Event::Finished {
                reason,
                prompt_tokens: _,
                completion_tokens,
                cached_tokens,
            } => {
                held.push_str(&decoder.flush());
                if !held.is_empty() || !pending_logprobs.is_empty() {
                    let _ = send(Chunk::Delta {
                        text: std::mem::take(&mut held),
                        logprobs: std::mem::take(&mut pending_logprobs),
                    });
                }
                let delivered = send(Chunk::Done {
                    reason: reason.as_str(),
                    usage: Usage {
                        prompt_tokens,
                        completion_tokens,
                        cached_tokens,
                    },
                });
                return if delivered { reason.as_str() } else { "abort" };
            }
            Event::Failed(message) => {
                let _ = send(Chunk::Failed(message));
                return "error";
            }
        }
    }
    // The engine dropped the request without a word: it has stopped.
    let _ = send(Chunk::Failed(
        "the inference engine stopped before the request finished".into(),
    ));
    "error"
}
