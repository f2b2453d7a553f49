//! The serving engine: one thread that owns the model, the paged KV pool and the scheduler, and runs one forward pass
//! per iteration over every running sequence (prefill chunks and decode tokens together). Callers submit requests
//! through an [`EngineHandle`] and receive a stream of [`Event`]s; dropping the receiver cancels the request.
//!
//! Forward passes use batch-invariant rounding, so a request's output does not depend on what it was batched with.
//!
//! | module | job |
//! |---|---|
//! | [`api`] | configuration, request parameters, events, the handle |
//! | [`metrics`] | counters and histograms for `/metrics` |
//! | `calibrate` | the start-up profile of the machine (DuetServe's latency model, DEL's first costs) |
//! | `step` | one iteration: schedule, plan drafts, run the speculation driver over the batch, commit |
//! | `emit` | reporting a request's tokens and its end |

pub mod api;
mod calibrate;
mod emit;
pub mod metrics;
mod step;

pub use api::{
    EngineConfig, EngineHandle, Event, FinishReason, KvEventSink, Params, StartError, TokenLogprobs,
};
pub use metrics::{DrafterCounts, Histogram, Metrics};

use crate::blocks::BlockPool;
use crate::latency::{LatencyModel, TbtTarget};
use crate::sampler::Sampler;
use crate::scheduler::{Rejected, Scheduler};
use crate::spec::{DraftModel, Policy, SpecOptions, SpecState, Speculation, Timings};
use api::Command;
use fulcrum_core::kv::KvCache;
use fulcrum_core::model::Scratch;
use fulcrum_core::{Model, ThreadPool};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

/// Starts the engine thread over `model`, with `draft` (checked to share its vocabulary) for `draft` and `auto`
/// requests.
pub fn start(
    model: Arc<Model>,
    draft: Option<Arc<Model>>,
    config: EngineConfig,
) -> Result<EngineHandle, StartError> {
    config
        .delta
        .check(model.config.n_layers)
        .map_err(StartError::Delta)?;
    let n_blocks = config.kv_tokens / config.block_size;
    let threads = ThreadPool::new(config.threads);
    let draft = match draft {
        Some(d) => Some(DraftModel::new(
            d,
            &model,
            n_blocks * config.block_size,
            config.limits.token_budget,
            config.max_seq_len,
            threads.n_threads(),
        )?),
        None => None,
    };
    let (tx, rx) = mpsc::channel();
    let metrics = Arc::new(Metrics::default());
    let alive = Arc::new(AtomicBool::new(true));
    let handle = EngineHandle {
        commands: tx,
        alive: alive.clone(),
        next_id: Arc::new(AtomicU64::new(1)),
        metrics: metrics.clone(),
        max_seq_len: config.max_seq_len,
    };
    std::thread::Builder::new()
        .name("fulcrum-engine".into())
        .spawn(move || {
            // Marks the engine dead however the thread ends, so the server can answer 503 and fail health checks.
            struct Alive(Arc<AtomicBool>);
            impl Drop for Alive {
                fn drop(&mut self) {
                    self.0.store(false, Ordering::Relaxed);
                }
            }
            let _alive = Alive(alive);
            Engine::new(model, draft, threads, config, metrics).run(rx)
        })
        .map_err(StartError::Thread)?;
    Ok(handle)
}

/// The text of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// What the engine keeps for a request beside its sequence in the scheduler.
struct Request {
    params: Params,
    sampler: Sampler,
    events: SyncSender<Event>,
    submitted: Instant,
    last_token: Option<Instant>,
    /// The time between tokens of the latest step, shared among the tokens it committed.
    step_gap: Option<f64>,
    /// Tokens reported so far (an end-of-generation token is not).
    emitted: usize,
    /// Its speculation state (`None`: it decodes plainly).
    spec: Option<Box<SpecState>>,
}

/// The engine thread's state.
struct Engine {
    model: Arc<Model>,
    config: EngineConfig,
    pool: ThreadPool,
    kv: KvCache,
    scratch: Scratch,
    scheduler: Scheduler,
    requests: HashMap<u64, Request>,
    metrics: Arc<Metrics>,
    /// The step-time model and its target, when the latency-aware budget is on.
    latency: Option<(LatencyModel, TbtTarget)>,
    /// Measured layer, classifier and draft-model times by batch size, for the speculation controllers.
    timings: Timings,
    /// The draft model beside the target: its pool has one row per row of the target's.
    draft: Option<DraftModel>,
    /// The decayed mean length of finished answers, which prices a draft model's catch-up against a request's
    /// likely rest.
    answer_len: Option<f64>,
    /// Where the prefix cache's changes go, once someone watches it.
    cache_watch: Option<KvEventSink>,
}

impl Engine {
    fn new(
        model: Arc<Model>,
        draft: Option<DraftModel>,
        pool: ThreadPool,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let n_blocks = config.kv_tokens / config.block_size;
        let kv = model.new_kv_cache(n_blocks * config.block_size);
        let scratch = Scratch::new(
            &model.config,
            config.limits.token_budget,
            config.max_seq_len,
            pool.n_threads(),
        );
        let mut engine = Engine {
            scheduler: Scheduler::new(Self::block_pool(&config), config.limits),
            model,
            config,
            pool,
            kv,
            scratch,
            requests: HashMap::new(),
            metrics,
            latency: None,
            timings: Timings::default(),
            answer_len: None,
            draft,
            cache_watch: None,
        };
        let model = engine.calibrate();
        if let Some(target) = engine.config.tbt_target {
            engine.latency = Some((model, target));
        }
        engine
    }

    /// An empty block pool of the configured size.
    fn block_pool(config: &EngineConfig) -> BlockPool {
        let mut blocks = BlockPool::new(config.kv_tokens / config.block_size, config.block_size);
        blocks.prefix_caching = config.prefix_caching;
        blocks
    }

    fn run(mut self, commands: Receiver<Command>) {
        loop {
            // Block while idle; otherwise take whatever arrived since the last iteration.
            if self.requests.is_empty() {
                match commands.recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => return,
                }
            }
            while let Ok(c) = commands.try_recv() {
                self.handle(c);
            }
            if !self.requests.is_empty() {
                let step =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.iterate()));
                if let Err(payload) = step {
                    self.recover(&panic_message(payload.as_ref()));
                }
            }
            self.publish();
            self.report_cache_events();
        }
    }

    /// Passes the prefix index's changes of this iteration to the watcher.
    fn report_cache_events(&mut self) {
        if let Some(sink) = &self.cache_watch {
            let events = self.scheduler.pool.take_events();
            if !events.is_empty() {
                (sink.0)(events);
            }
        }
    }

    /// After an iteration panicked (a bug): fails every request in flight, whose state may be half-updated, and starts
    /// over with an empty block pool, so that requests arriving later are served normally.
    fn recover(&mut self, message: &str) {
        eprintln!(
            "error: engine iteration failed: {message}; failing {} requests and resetting the KV pool",
            self.requests.len()
        );
        for (_, req) in self.requests.drain() {
            let _ = req.events.try_send(Event::Failed(format!(
                "internal error in the inference engine ({message}); the request was cancelled"
            )));
            self.metrics
                .requests_finished
                .fetch_add(1, Ordering::Relaxed);
        }
        self.scheduler = Scheduler::new(Self::block_pool(&self.config), self.config.limits);
        if self.cache_watch.is_some() {
            // The new pool caches nothing: say so.
            self.scheduler.pool.record_events();
            self.scheduler.pool.clear_cache();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit {
                id,
                prompt,
                params,
                events,
                reply,
            } => {
                let result = self.admit(id, prompt, params, events);
                let _ = reply.send(result);
            }
            Command::Abort(id) => self.finish(id, None),
            Command::WatchCache(sink) => {
                self.scheduler.pool.record_events();
                self.scheduler.pool.clear_cache();
                self.cache_watch = Some(sink);
            }
            Command::ClearCache(reply) => {
                self.scheduler.pool.clear_cache();
                let _ = reply.send(());
            }
        }
    }

    /// Queues request `id`, or says why it cannot be served.
    fn admit(
        &mut self,
        id: u64,
        prompt: Vec<u32>,
        params: Params,
        events: mpsc::SyncSender<Event>,
    ) -> Result<(), Rejected> {
        let mut sampler = crate::sampler::Sampler::new(params.sampler.clone())
            .map_err(|e| Rejected::Invalid(e.to_string()))?;
        if let Some(format) = &params.format {
            sampler.set_format(format.clone());
        }
        let spec = match &params.spec {
            Speculation::Off => None,
            mode => {
                let options = SpecOptions {
                    gamma_min: self.config.spec_gamma_min,
                    ..SpecOptions::default()
                };
                let ratio = self.draft.as_ref().map(DraftModel::ratio);
                // Verification recomputes every layer of an exit's draft whenever the batch mixes sequences.
                let policy = Policy::new(
                    mode.clone(),
                    options,
                    self.model.config.n_layers,
                    ratio,
                    false,
                )
                .map_err(|e| Rejected::Invalid(e.to_string()))?;
                Some(Box::new(SpecState::new(policy, &params.sampler)))
            }
        };
        let n = prompt.len();
        let max_len = (n + params.max_tokens).min(self.config.max_seq_len);
        self.scheduler.submit(id, prompt, max_len)?;
        self.metrics
            .prompt_tokens
            .fetch_add(n as u64, Ordering::Relaxed);
        self.requests.insert(
            id,
            Request {
                sampler,
                events,
                submitted: Instant::now(),
                last_token: None,
                step_gap: None,
                emitted: 0,
                spec,
                params,
            },
        );
        Ok(())
    }
}
