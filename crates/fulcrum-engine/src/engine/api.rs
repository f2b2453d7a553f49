//! The engine's public face: its configuration, what a request asks for, the events it reports, and the handle that
//! submits and cancels requests.

use super::metrics::Metrics;
use crate::blocks::KvEvent;
use crate::latency::TbtTarget;
use crate::sampler::{Format, SamplerConfig};
use crate::scheduler::{Limits, Rejected};
use crate::spec::Speculation;
use fulcrum_core::{AttentionMode, DeltaConfig};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;

/// Sizes of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub threads: usize,
    /// KV slots in the pool, over all sequences.
    pub kv_tokens: usize,
    pub block_size: usize,
    /// Share cached prompt prefixes across requests.
    pub prefix_caching: bool,
    /// Longest sequence (prompt and output), at most the model's context.
    pub max_seq_len: usize,
    pub limits: Limits,
    /// DuetServe's latency-aware prefill budget: prefill chunks are sized so that steps carrying decoding sequences
    /// stay within this time-between-tokens target (`None`: every chunk as large as `limits.token_budget`).
    pub tbt_target: Option<TbtTarget>,
    /// DEL's γ_min for `del` and `auto` requests: with 1 or more they always draft, even where plain decoding pays
    /// better (0: the controller may choose plain decoding).
    pub spec_gamma_min: usize,
    /// DELTA's settings, used by requests whose `attention` is [`AttentionMode::Delta`].
    pub delta: DeltaConfig,
}

/// What a request asks for.
#[derive(Debug, Clone)]
pub struct Params {
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Alternatives to report per token (0: none; `Some(0)` reports the chosen token's log-probability only).
    pub logprobs: Option<usize>,
    /// Stop at the model's end-of-generation tokens.
    pub stop_at_eog: bool,
    /// How its decode steps speculate.
    pub spec: Speculation,
    /// How its decode steps attend: densely, or with DELTA's sparse attention.
    pub attention: AttentionMode,
    /// The response format its output must follow (structured outputs), if any.
    pub format: Option<Format>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token (or a stop string, decided by the caller).
    Stop,
    /// `max_tokens` reached.
    Length,
}

impl FinishReason {
    /// Its name in OpenAI's API and in `--json` output: `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One generated token's log-probabilities.
#[derive(Debug, Clone)]
pub struct TokenLogprobs {
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What the engine reports about a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// The prompt is in the cache and the first token follows; `cached_tokens` of it came from the prefix cache.
    Prefilled { cached_tokens: usize },
    /// The next token (an end-of-generation token is reported through `Finished` only).
    Token {
        id: u32,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        cached_tokens: usize,
    },
    /// The request was lost to an internal error (the engine recovered and serves other requests).
    Failed(String),
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The draft model cannot draft for the target.
    #[error(transparent)]
    Draft(#[from] crate::spec::SpecError),
    /// DELTA's settings do not suit the model.
    #[error("{0}")]
    Delta(String),
    /// The operating system refused a thread.
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
}

/// What the handle sends the engine thread.
pub(super) enum Command {
    Submit {
        id: u64,
        prompt: Vec<u32>,
        params: Params,
        events: SyncSender<Event>,
        reply: Sender<Result<(), Rejected>>,
    },
    Abort(u64),
    /// Record the prefix index's changes from now on and pass them, one batch per iteration, to the sink.
    WatchCache(KvEventSink),
    /// Forget every cached prefix.
    ClearCache(Sender<()>),
}

/// Receives the prefix cache's changes, one batch per engine iteration (called on the engine thread: keep it cheap).
#[derive(Clone)]
pub struct KvEventSink(pub Arc<dyn Fn(Vec<KvEvent>) + Send + Sync>);

impl std::fmt::Debug for KvEventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvEventSink")
    }
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) commands: Sender<Command>,
    pub(super) alive: Arc<AtomicBool>,
    pub(super) next_id: Arc<AtomicU64>,
    pub metrics: Arc<Metrics>,
    /// Longest sequence the engine accepts.
    pub max_seq_len: usize,
}

impl EngineHandle {
    /// Queues a request; returns its id and its events (at most `capacity` buffered).
    pub fn submit(
        &self,
        prompt: Vec<u32>,
        params: Params,
    ) -> Result<(u64, Receiver<Event>), Rejected> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Room for every event a request can produce, so the engine never blocks on a slow reader.
        let (events, rx) = mpsc::sync_channel(params.max_tokens.min(self.max_seq_len) + 3);
        let (reply, answer) = mpsc::channel();
        let sent = self.commands.send(Command::Submit {
            id,
            prompt,
            params,
            events,
            reply,
        });
        if sent.is_err() {
            return Err(Rejected::Unavailable);
        }
        answer.recv().unwrap_or(Err(Rejected::Unavailable))?;
        Ok((id, rx))
    }

    /// Whether the engine thread is still running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// An id no request will have, for answers that never reach the engine.
    pub fn reserve_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Cancels request `id` and frees its blocks at the next iteration.
    pub fn abort(&self, id: u64) {
        let _ = self.commands.send(Command::Abort(id));
    }

    /// Empties the prefix cache and sends `sink` every change to it from then on, starting with
    /// [`KvEvent::AllCleared`] (whatever a follower knew of this engine's cache before is stale); call it at start.
    pub fn watch_cache(&self, sink: KvEventSink) {
        let _ = self.commands.send(Command::WatchCache(sink));
    }

    /// Forgets every cached prefix; returns once done (false: the engine is gone).
    pub fn clear_cache(&self) -> bool {
        let (reply, done) = mpsc::channel();
        self.commands.send(Command::ClearCache(reply)).is_ok() && done.recv().is_ok()
    }
}
