//! The serving engine: one thread that owns the model, the paged KV pool and the scheduler, and runs one forward pass
//! per iteration over every running sequence (prefill chunks and decode tokens together). Callers submit requests
//! through an [`EngineHandle`] and receive a stream of [`Event`]s; dropping the receiver cancels the request.
//!
//! Forward passes use batch-invariant rounding, so a request's output does not depend on what it was batched with.

use crate::blocks::BlockPool;
use crate::latency::{LatencyModel, Machine, ModelCost, SloBudget, TbtTarget};
use crate::sampler::{log_softmax_at, top_logprobs, Sampler, SamplerConfig};
use crate::scheduler::{Limits, Rejected, Scheduler, Shape, Step, Work};
use crate::spec::served::Adaptive;
use crate::spec::{argmax_confidence, Arm, SpecOptions, Timings};
use fulcrum_core::model::Scratch;
use fulcrum_core::{Model, ModelError, Rounding, SeqSpan, ThreadPool};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Sizes of an engine.
#[derive(Debug, Clone, Copy)]
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
}

/// The drafters a served request may use; every one is lossless (verified in the decode step's batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speculation {
    /// One token per decode step.
    Off,
    /// Prompt lookup: up to `gamma` tokens copied from an earlier match of the sequence's last tokens.
    Lookup { gamma: usize },
    /// The model's own first `exit` layers, then its final norm and classifier, draft `gamma` tokens greedily
    /// (their keys and values below the exit go to the spare rows the draft will occupy).
    EarlyExit { exit: usize, gamma: usize },
    /// DEL: per decode step, the request's own controller picks the exit layer and the length (or no draft) from
    /// decayed acceptance and the engine's measured costs; drafting stops at a token below the confidence τ.
    Del,
    /// DEL's controller choosing among the early exits, prompt lookup and the engine's draft model (if it has one).
    Auto,
    /// The engine's draft model drafts `gamma` tokens greedily, batched over every request that uses it, with its
    /// keys and values in its own pool at the same rows as the target's.
    Draft { gamma: usize },
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-generation token (or a stop string, decided by the caller).
    Stop,
    /// `max_tokens` reached.
    Length,
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

/// Counters and gauges for `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub waiting: AtomicU64,
    pub running: AtomicU64,
    /// KV usage × 10⁶.
    pub kv_usage_ppm: AtomicU64,
    pub prefix_queried_tokens: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub requests_finished: AtomicU64,
    /// Speculative tokens drafted and accepted.
    pub spec_drafted: AtomicU64,
    pub spec_accepted: AtomicU64,
    /// The same per drafter (`lookup`, `exit:E`), with the rounds each drafted in.
    pub spec_by_drafter: Mutex<BTreeMap<String, DrafterCounts>>,
    /// Rounds of DEL shadow tokens (every candidate exit's prediction, for the statistics), and their rows.
    pub spec_shadow_rounds: AtomicU64,
    pub spec_shadow_rows: AtomicU64,
    /// The latency model's measured-to-predicted ratio × 10⁶ (0 without a model).
    pub latency_correction_ppm: AtomicU64,
    /// Time to first token and between tokens, in seconds.
    pub ttft: Mutex<Histogram>,
    pub tbt: Mutex<Histogram>,
}

/// One drafter's speculation counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrafterCounts {
    /// Decode steps that verified a draft of this drafter.
    pub rounds: u64,
    pub drafted: u64,
    pub accepted: u64,
}

/// A fixed-bucket histogram in the Prometheus sense.
#[derive(Debug, Clone)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    /// Cumulative counts per bound, then the total.
    pub counts: Vec<u64>,
    pub sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        let bounds = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        Histogram {
            counts: vec![0; bounds.len() + 1],
            bounds,
            sum: 0.0,
        }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, v: f64) {
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        *self.counts.last_mut().expect("total") += 1;
        self.sum += v;
    }
}

enum Command {
    Submit {
        id: u64,
        prompt: Vec<u32>,
        params: Params,
        events: SyncSender<Event>,
        reply: Sender<Result<(), Rejected>>,
    },
    Abort(u64),
}

/// A cheap, cloneable handle to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    commands: Sender<Command>,
    alive: Arc<AtomicBool>,
    next_id: Arc<AtomicU64>,
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
        let (events, rx) = mpsc::sync_channel(params.max_tokens.min(self.max_seq_len) + 2);
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

    /// Cancels request `id` and frees its blocks at the next iteration.
    pub fn abort(&self, id: u64) {
        let _ = self.commands.send(Command::Abort(id));
    }
}

struct Request {
    params: Params,
    sampler: Sampler,
    events: SyncSender<Event>,
    submitted: Instant,
    last_token: Option<Instant>,
    /// Tokens reported so far (an end-of-generation token is not).
    emitted: usize,
    /// DEL's controller (`del`, `auto`).
    adaptive: Option<Box<Adaptive>>,
    /// The drafter of the step in flight.
    drafter: Option<Arm>,
    /// Positions whose keys and values the draft model's pool holds for this sequence.
    draft_fed: usize,
}

/// A draft model beside the target: its own pool with one row per target row (a sequence's blocks address both),
/// and its own activations.
struct DraftSide {
    model: Arc<Model>,
    kv: fulcrum_core::kv::KvCache,
    scratch: Scratch,
    /// Its decode step over the target's, by weight bytes.
    ratio: Option<f64>,
}

/// Hidden states a forward pass copies at a layer boundary: rows `row..row + rows` after `exit` layers, for the
/// DEL statistics of request `id`, whose predictions are checked against `targets` (or, when empty, against the
/// tokens the step commits).
struct Capture {
    id: u64,
    exit: usize,
    row: usize,
    rows: usize,
    targets: Vec<u32>,
}

/// What [`Engine::forward`] returns: the logits, the captured states (one buffer per capture) and the seconds the
/// layers and the classifier took.
struct Pass {
    logits: Vec<f32>,
    captured: Vec<Vec<f32>>,
    layers_s: f64,
    head_s: f64,
}

/// Starts the engine thread over `model`, with `draft` (checked to share its vocabulary) for `draft` and `auto`
/// requests.
pub fn start(model: Arc<Model>, draft: Option<Arc<Model>>, config: EngineConfig) -> EngineHandle {
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
            Engine::new(model, draft, config, metrics).run(rx)
        })
        .expect("spawn engine thread");
    handle
}

/// Fault injection for tests of the failure path: with `FULCRUM_INJECT_PANIC_MAX_TOKENS=N` set, an iteration that
/// includes a request for exactly N tokens panics.
static INJECTED_PANIC: std::sync::LazyLock<Option<usize>> = std::sync::LazyLock::new(|| {
    std::env::var("FULCRUM_INJECT_PANIC_MAX_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
});

/// The text of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

struct Engine {
    model: Arc<Model>,
    config: EngineConfig,
    pool: ThreadPool,
    kv: fulcrum_core::kv::KvCache,
    scratch: Scratch,
    scheduler: Scheduler,
    requests: HashMap<u64, Request>,
    metrics: Arc<Metrics>,
    /// The step-time model and its target, when the latency-aware budget is on.
    latency: Option<(LatencyModel, TbtTarget)>,
    /// Measured layer and classifier times by batch size, for the DEL controllers.
    timings: Timings,
    draft: Option<DraftSide>,
    /// The decayed mean length of finished answers, which prices a draft model's catch-up against a request's
    /// likely rest.
    answer_len: Option<f64>,
}

impl Engine {
    fn new(
        model: Arc<Model>,
        draft: Option<Arc<Model>>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
    ) -> Engine {
        let n_blocks = config.kv_tokens / config.block_size;
        let pool = ThreadPool::new(config.threads);
        let kv = model.new_kv_cache(n_blocks * config.block_size);
        let scratch = Scratch::new(
            &model.config,
            config.limits.token_budget,
            config.max_seq_len,
            pool.n_threads(),
        );
        let mut blocks = BlockPool::new(n_blocks, config.block_size);
        blocks.prefix_caching = config.prefix_caching;
        let draft = draft.map(|d| DraftSide {
            kv: d.new_kv_cache(n_blocks * config.block_size),
            scratch: Scratch::new(
                &d.config,
                config.limits.token_budget,
                config.max_seq_len,
                pool.n_threads(),
            ),
            ratio: crate::spec::step_ratio(&d, &model),
            model: d,
        });
        let mut engine = Engine {
            scheduler: Scheduler::new(blocks, config.limits),
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
        };
        let model = engine.calibrate();
        if let Some(target) = config.tbt_target {
            engine.latency = Some((model, target));
        }
        engine
    }

    /// Measures this machine's speeds on the model (DuetServe's profiler, and the costs DEL's controllers start
    /// from): a single decoded token, which reads the weights, and a prompt chunk of the token budget (64 at most),
    /// which computes, both written to cache rows no sequence owns yet. The first step only pages the weights in and
    /// is not counted.
    fn calibrate(&mut self) -> LatencyModel {
        let cost = ModelCost::of(&self.model);
        let chunk = (self.config.limits.token_budget.min(64))
            .min(self.kv.n_ctx)
            .min(self.config.max_seq_len);
        let mut timed = |n: usize| {
            let slots: Vec<u32> = (0..n as u32).collect();
            let span = SeqSpan {
                start_row: 0,
                len: n,
                start_pos: 0,
                slots: Some(&slots),
                logits_from: n - 1,
            };
            let tokens = vec![0u32; n];
            let start = Instant::now();
            let pass = self.forward(&tokens, &[span], &[]).ok()?;
            Some((start.elapsed().as_secs_f64(), pass))
        };
        let _ = timed(1);
        let mut singles = Vec::new();
        for _ in 0..3 {
            if let Some(r) = timed(1) {
                singles.push(r);
            }
        }
        let one = singles.iter().map(|r| r.0).fold(f64::INFINITY, f64::min);
        let long = timed(chunk);
        for (_, pass) in &singles {
            self.record(pass, 1, 1);
        }
        if let Some((_, pass)) = &long {
            self.record(pass, chunk, 1);
        }
        let machine = match (one.is_finite(), long.map(|r| r.0)) {
            (true, Some(t)) => Machine::fit(&cost, one, chunk, t),
            // Cannot happen for a loaded model; a rough machine keeps the budget working.
            _ => Machine {
                bandwidth: 10e9,
                flops: 50e9,
                overhead: 1e-3,
            },
        };
        eprintln!(
            "latency model: weights stream at {:.1} GB/s, matmuls run at {:.1} GFLOP/s; one decode step ≈ {:.0} ms",
            machine.bandwidth / 1e9,
            machine.flops / 1e9,
            one * 1e3
        );
        LatencyModel::new(cost, machine)
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
        let mut blocks = BlockPool::new(
            self.config.kv_tokens / self.config.block_size,
            self.config.block_size,
        );
        blocks.prefix_caching = self.config.prefix_caching;
        self.scheduler = Scheduler::new(blocks, self.config.limits);
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
                let max_len = (prompt.len() + params.max_tokens).min(self.config.max_seq_len);
                let sampler = Sampler::new(params.sampler.clone());
                let result = match sampler {
                    Err(e) => Err(Rejected::Invalid(e.to_string())),
                    Ok(sampler) => {
                        let n = prompt.len();
                        self.scheduler.submit(id, prompt, max_len).map(|()| {
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
                                    emitted: 0,
                                    adaptive: match params.spec {
                                        Speculation::Del | Speculation::Auto => {
                                            let auto = params.spec == Speculation::Auto;
                                            Some(Box::new(Adaptive::new(
                                                self.model.config.n_layers,
                                                auto,
                                                self.draft
                                                    .as_ref()
                                                    .filter(|_| auto)
                                                    .map(|d| d.ratio.unwrap_or(0.5)),
                                                SpecOptions {
                                                    gamma_min: self.config.spec_gamma_min,
                                                    ..SpecOptions::default()
                                                },
                                            )))
                                        }
                                        _ => None,
                                    },
                                    drafter: None,
                                    draft_fed: 0,
                                    params,
                                },
                            );
                        })
                    }
                };
                let _ = reply.send(result);
            }
            Command::Abort(id) => self.finish(id, None),
        }
    }

    fn iterate(&mut self) {
        let Step {
            mut work,
            preempted,
        } = match &self.latency {
            Some((model, target)) => self.scheduler.schedule_with(&SloBudget {
                model,
                target: *target,
                min_chunk: self.config.block_size,
            }),
            None => self.scheduler.schedule(),
        };
        // A preempted sequence's blocks were freed: the draft model starts over with it too.
        for id in preempted {
            if let Some(req) = self.requests.get_mut(&id) {
                req.draft_fed = 0;
            }
        }
        if work.is_empty() {
            return;
        }
        self.add_drafts(&mut work);
        if let Some(n) = *INJECTED_PANIC {
            let hit = |id: &u64| {
                self.requests
                    .get(id)
                    .is_some_and(|r| r.params.max_tokens == n)
            };
            if work.iter().any(|w| hit(&w.id)) {
                panic!("injected fault (FULCRUM_INJECT_PANIC_MAX_TOKENS={n})");
            }
        }
        // Gather the batch: tokens, and each sequence's cache rows for the positions it attends to.
        let mut tokens = Vec::new();
        let mut slots: Vec<Vec<u32>> = Vec::new();
        for w in &work {
            let seq = self.scheduler.get(w.id).expect("scheduled sequence exists");
            tokens.extend_from_slice(&seq.tokens[w.start..w.start + w.len]);
            tokens.extend_from_slice(&w.draft);
            slots.push(seq.table.slots(w.start + w.rows()).to_vec());
        }
        let mut row = 0;
        let spans: Vec<SeqSpan> = work
            .iter()
            .zip(&slots)
            .map(|(w, sl)| {
                let span = SeqSpan {
                    start_row: row,
                    len: w.rows(),
                    start_pos: w.start,
                    slots: Some(sl),
                    logits_from: if w.wants_logits { w.len - 1 } else { w.len },
                };
                row += w.rows();
                span
            })
            .collect();
        let captures = self.captures(&work);
        let started = Instant::now();
        let (logits, captured) = match self.forward(&tokens, &spans, &captures) {
            Ok(pass) => {
                if let Some((model, _)) = &mut self.latency {
                    let shapes: Vec<Shape> = work.iter().map(Work::shape).collect();
                    model.observe(&shapes, started.elapsed().as_secs_f64());
                    self.metrics
                        .latency_correction_ppm
                        .store((model.correction * 1e6) as u64, Ordering::Relaxed);
                }
                let logit_rows = pass.logits.len() / self.model.config.vocab_size;
                self.record(&pass, tokens.len(), logit_rows);
                (pass.logits, pass.captured)
            }
            Err(_) => {
                // Cannot happen for batches the scheduler built; fail the requests rather than the engine.
                for w in &work {
                    self.finish(w.id, None);
                }
                return;
            }
        };
        // What each decode step committed, for the shadow statistics.
        let mut committed_by: HashMap<u64, Vec<u32>> = HashMap::new();
        let vocab = self.model.config.vocab_size;
        let mut logit_row = 0;
        for w in &work {
            if !w.wants_logits {
                self.scheduler.commit(w, None);
                continue;
            }
            let rows = 1 + w.draft.len();
            let l = &logits[logit_row * vocab..(logit_row + rows) * vocab];
            logit_row += rows;
            let Some(committed) = self.verify(w, l) else {
                continue;
            };
            let accepted = committed.len() - 1;
            if w.draft.is_empty() {
                self.scheduler.commit(w, committed.first().copied());
            } else {
                self.scheduler.commit_verified(w, accepted, &committed);
                self.count_draft(w, accepted);
            }
            if let Some(req) = self.requests.get_mut(&w.id) {
                if let Some(adaptive) = req.adaptive.as_mut().filter(|_| w.len == 1) {
                    adaptive.learn(&w.draft, &committed);
                }
                // The draft model's rows hold the committed text up to the first rejected draft.
                req.draft_fed = req.draft_fed.min(w.start + 1 + accepted);
            }
            if captures.iter().any(|c| c.id == w.id) {
                committed_by.insert(w.id, committed.clone());
            }
            for (i, &token) in committed.iter().enumerate() {
                let row = &l[i * vocab..(i + 1) * vocab];
                if !self.emit(w.id, token, row, i == 0) {
                    break;
                }
            }
        }
        if !captures.is_empty() {
            self.learn_from_shadow(captures, captured, &committed_by);
        }
    }

    /// Adds one verified draft of `w` to the speculation metrics.
    fn count_draft(&mut self, w: &Work, accepted: usize) {
        let m = &self.metrics;
        m.spec_drafted
            .fetch_add(w.draft.len() as u64, Ordering::Relaxed);
        m.spec_accepted
            .fetch_add(accepted as u64, Ordering::Relaxed);
        let drafter = self.requests.get(&w.id).and_then(|r| r.drafter);
        if let Some(arm) = drafter {
            let mut by = m.spec_by_drafter.lock().unwrap_or_else(|e| e.into_inner());
            let c = by.entry(arm.to_string()).or_default();
            c.rounds += 1;
            c.drafted += w.draft.len() as u64;
            c.accepted += accepted as u64;
        }
    }

    /// The hidden states this step's forward pass copies for DEL's statistics: the rows of decode steps on their
    /// requests' shadow rounds, and the last prompt tokens of requests whose prefill ends in this step.
    fn captures(&mut self, work: &[Work]) -> Vec<Capture> {
        let mut captures = Vec::new();
        let mut row = 0;
        for w in work {
            let first_row = row;
            row += w.rows();
            let (Some(req), Some(seq)) = (self.requests.get_mut(&w.id), self.scheduler.get(w.id))
            else {
                continue;
            };
            let Some(adaptive) = &mut req.adaptive else {
                continue;
            };
            if !w.wants_logits {
                continue;
            }
            if seq.generated() > 0 {
                // A decode step (a sequence recomputed after preemption has nothing to compare yet).
                let exits = adaptive.take_shadow_exits();
                if w.len != 1 {
                    continue;
                }
                for exit in exits {
                    captures.push(Capture {
                        id: w.id,
                        exit,
                        row: first_row,
                        rows: w.rows(),
                        targets: Vec::new(),
                    });
                }
                continue;
            }
            // The prompt's last chunk: rows predicting its last `window - 1` tokens.
            let window = adaptive.init_window().min(w.len);
            let exits = adaptive.init_exits(&self.timings);
            if window < 2 {
                continue;
            }
            let from = w.start + w.len - window;
            let targets = seq.tokens[from + 1..w.start + w.len].to_vec();
            for exit in exits {
                captures.push(Capture {
                    id: w.id,
                    exit,
                    row: first_row + w.len - window,
                    rows: window - 1,
                    targets: targets.clone(),
                });
            }
        }
        captures
    }

    /// Runs a batch (as [`Model::forward_batch`] does, with the same arithmetic), copying the hidden states
    /// `captures` ask for on the way.
    fn forward(
        &mut self,
        tokens: &[u32],
        spans: &[SeqSpan],
        captures: &[Capture],
    ) -> Result<Pass, ModelError> {
        let n_layers = self.model.config.n_layers;
        let d = self.model.config.d_model;
        let started = Instant::now();
        self.model.embed(tokens, &mut self.scratch)?;
        let mut exits: Vec<usize> = captures.iter().map(|c| c.exit).collect();
        exits.sort_unstable();
        exits.dedup();
        let mut captured = vec![Vec::new(); captures.len()];
        let mut from = 0;
        for exit in exits.into_iter().filter(|&e| e > 0 && e < n_layers) {
            self.model.run_layers(
                &self.pool,
                from..exit,
                spans,
                &mut self.kv,
                &mut self.scratch,
                Rounding::BatchInvariant,
            )?;
            let hidden = self.scratch.hidden(tokens.len(), d);
            for (c, out) in captures.iter().zip(&mut captured) {
                if c.exit == exit {
                    out.extend_from_slice(&hidden[c.row * d..(c.row + c.rows) * d]);
                }
            }
            from = exit;
        }
        self.model.run_layers(
            &self.pool,
            from..n_layers,
            spans,
            &mut self.kv,
            &mut self.scratch,
            Rounding::BatchInvariant,
        )?;
        let layers_s = started.elapsed().as_secs_f64();
        let rows = spans
            .iter()
            .map(|s| s.len.saturating_sub(s.logits_from))
            .sum();
        let head = Instant::now();
        let logits = self
            .model
            .classify(
                &self.pool,
                rows,
                &mut self.scratch,
                Rounding::BatchInvariant,
            )
            .to_vec();
        Ok(Pass {
            logits,
            captured,
            layers_s,
            head_s: head.elapsed().as_secs_f64(),
        })
    }

    /// Folds a pass of `rows` tokens with `logit_rows` classified into the timings the DEL controllers read.
    fn record(&mut self, pass: &Pass, rows: usize, logit_rows: usize) {
        let n_layers = self.model.config.n_layers.max(1);
        self.timings
            .layer
            .record(rows, pass.layers_s / n_layers as f64);
        if logit_rows > 0 {
            self.timings.head.record(logit_rows, pass.head_s);
        }
    }

    /// Classifies the captured hidden states and tells each request how well its candidate exits predicted the
    /// tokens (the prompt's, or those its step committed).
    fn learn_from_shadow(
        &mut self,
        captures: Vec<Capture>,
        captured: Vec<Vec<f32>>,
        committed_by: &HashMap<u64, Vec<u32>>,
    ) {
        let d = self.model.config.d_model;
        let vocab = self.model.config.vocab_size;
        // Each capture's positions that have a known next token.
        let mut jobs = Vec::new();
        let mut rows = Vec::new();
        for (c, states) in captures.into_iter().zip(captured) {
            if !self.requests.contains_key(&c.id) {
                continue;
            }
            let targets = if c.targets.is_empty() {
                match committed_by.get(&c.id) {
                    Some(t) => t.clone(),
                    None => continue,
                }
            } else {
                c.targets
            };
            let n = targets.len().min(c.rows);
            if n == 0 {
                continue;
            }
            rows.extend_from_slice(&states[..n * d]);
            jobs.push((c.id, c.exit, targets[..n].to_vec()));
        }
        let total = rows.len() / d;
        if total == 0 {
            return;
        }
        let started = Instant::now();
        let mut predictions = Vec::with_capacity(total);
        let capacity = self.scratch.max_batch.max(1);
        let mut done = 0;
        while done < total {
            let n = (total - done).min(capacity);
            if self
                .scratch
                .load_hidden(&rows[done * d..(done + n) * d])
                .is_err()
            {
                return;
            }
            let logits =
                self.model
                    .classify(&self.pool, n, &mut self.scratch, Rounding::BatchInvariant);
            predictions.extend(logits.chunks_exact(vocab).map(argmax_confidence));
            done += n;
        }
        let per_row = started.elapsed().as_secs_f64() / total as f64;
        self.metrics
            .spec_shadow_rows
            .fetch_add(total as u64, Ordering::Relaxed);
        let mut at = 0;
        let mut seen = Vec::new();
        for (id, exit, targets) in jobs {
            let n = targets.len();
            let preds = &predictions[at..at + n];
            at += n;
            if let Some(adaptive) = self.requests.get_mut(&id).and_then(|r| r.adaptive.as_mut()) {
                adaptive.learn_shadow(exit, preds, &targets, per_row * n as f64);
                if !seen.contains(&id) {
                    seen.push(id);
                }
            }
        }
        self.metrics
            .spec_shadow_rounds
            .fetch_add(seen.len() as u64, Ordering::Relaxed);
    }

    /// Drafts for the decode steps of requests that ask for them, within the step's token budget.
    fn add_drafts(&mut self, work: &mut [Work]) {
        let mut left = self
            .config
            .limits
            .token_budget
            .saturating_sub(work.iter().map(Work::rows).sum());
        let mut draft = Vec::new();
        // The decode steps sharing this step, for the controllers: a draft's extra time delays every one of them.
        // Prefill chunks are left out: their work is done whenever it is scheduled, so a long step does not make
        // drafting cheaper.
        let n_layers = self.model.config.n_layers as f64;
        let decoding = work.iter().filter(|w| w.len == 1 && w.wants_logits).count();
        let mut rows = decoding;
        // Decode steps that draft with an early exit: (index in `work`, exit layer); and with the draft model.
        let mut early = Vec::new();
        let mut with_model = Vec::new();
        for (i, w) in work.iter_mut().enumerate() {
            let Some(req) = self.requests.get_mut(&w.id) else {
                continue;
            };
            req.drafter = None;
            let Some(seq) = self.scheduler.get(w.id) else {
                continue;
            };
            if w.len != 1 || !w.wants_logits || seq.generated() == 0 {
                continue;
            }
            let room = req.params.max_tokens.saturating_sub(seq.generated() + 1);
            let most = room.min(left);
            let arm = match req.params.spec {
                Speculation::Off => continue,
                Speculation::Lookup { gamma } => {
                    crate::spec::lookup::propose(&seq.tokens, gamma.min(most), &mut draft);
                    Arm::Lookup
                }
                Speculation::EarlyExit { exit, gamma } => {
                    // Placeholders that reserve the rows; `draft_early_exit` writes the tokens.
                    draft.resize(gamma.min(most), 0);
                    Arm::Exit(exit)
                }
                Speculation::Draft { gamma } if self.draft.is_some() => {
                    draft.resize(gamma.min(most), 0);
                    Arm::DraftModel
                }
                Speculation::Draft { .. } => continue,
                Speculation::Del | Speculation::Auto => {
                    let Some(adaptive) = &mut req.adaptive else {
                        continue;
                    };
                    let t = &self.timings;
                    let batch = t
                        .layer
                        .estimate(rows.max(1))
                        .zip(t.head.estimate(decoding.max(1)))
                        .map(|(layer, head)| crate::spec::controller::Batch {
                            other_tokens: decoding.saturating_sub(1) as f64,
                            seconds: n_layers * layer + head,
                        });
                    let behind = seq.tokens.len().saturating_sub(req.draft_fed);
                    let choice = adaptive.plan(
                        &self.timings,
                        batch,
                        &seq.tokens,
                        most,
                        (room, seq.generated(), behind, self.answer_len),
                    );
                    match choice.arm {
                        Some(Arm::Lookup) => {
                            let proposal = adaptive.lookup_proposal();
                            // Lookup is sure of its proposals: no confidences (they count as 1).
                            draft.extend_from_slice(
                                &proposal[..choice.draft_len.min(proposal.len())],
                            );
                            Arm::Lookup
                        }
                        Some(Arm::Exit(exit)) => {
                            draft.resize(choice.draft_len, 0);
                            Arm::Exit(exit)
                        }
                        Some(Arm::DraftModel) if self.draft.is_some() => {
                            draft.resize(choice.draft_len, 0);
                            Arm::DraftModel
                        }
                        _ => continue,
                    }
                }
            };
            if draft.is_empty() {
                continue;
            }
            if self.scheduler.add_draft(w, std::mem::take(&mut draft)) {
                left -= w.draft.len();
                rows += w.draft.len();
                req.drafter = Some(arm);
                match arm {
                    Arm::Exit(exit) => early.push((i, exit)),
                    Arm::DraftModel => with_model.push(i),
                    Arm::Lookup => {}
                }
            }
            draft.clear();
        }
        if !with_model.is_empty() && self.draft_with_model(work, &with_model).is_err() {
            for &i in &with_model {
                work[i].draft.clear();
                if let Some(req) = self.requests.get_mut(&work[i].id) {
                    req.draft_fed = 0;
                }
            }
        }
        early.sort_by_key(|&(_, exit)| exit);
        for group in early.chunk_by(|a, b| a.1 == b.1) {
            let exit = group[0].1;
            let members: Vec<usize> = group.iter().map(|&(i, _)| i).collect();
            if self.draft_early_exit(work, &members, exit).is_err() {
                for &i in &members {
                    work[i].draft.clear();
                }
            }
        }
    }

    /// Each member's cache rows for every position its draft reaches, built once; a drafting step reads a prefix.
    fn draft_slots(&self, work: &[Work], members: &[usize]) -> Vec<Vec<u32>> {
        members
            .iter()
            .map(|&i| {
                let w = &work[i];
                let seq = self.scheduler.get(w.id).expect("drafting sequence exists");
                seq.table.slots(w.start + w.draft.len()).to_vec()
            })
            .collect()
    }

    /// Whether each member's request has a DEL controller (which wants the drafts' confidences).
    fn adaptive_members(&self, work: &[Work], members: &[usize]) -> Vec<bool> {
        members
            .iter()
            .map(|&i| {
                self.requests
                    .get(&work[i].id)
                    .is_some_and(|r| r.adaptive.is_some())
            })
            .collect()
    }

    /// Fills the placeholder drafts of `work[i]`, `i` in `members`, with the draft model's greedy predictions: one
    /// batched forward that catches its rows up with each sequence's text (the prompt, at first) and yields the
    /// first draft token, then one per further draft position. A sequence with more text to catch up than the step
    /// has room for feeds part of it and decodes plainly this step.
    fn draft_with_model(&mut self, work: &mut [Work], members: &[usize]) -> Result<(), ModelError> {
        let slots = self.draft_slots(work, members);
        let Some(side) = self.draft.as_mut() else {
            return Ok(());
        };
        let vocab = side.model.config.vocab_size;
        let capacity = side.scratch.max_batch;
        // Step 0: each member's text from where its draft rows end, through the token the step decodes.
        let mut tokens = Vec::new();
        let mut spans = Vec::new();
        let mut fed_to = vec![0; members.len()];
        let mut drafting = vec![false; members.len()];
        for (m, &i) in members.iter().enumerate() {
            let w = &work[i];
            let seq = self.scheduler.get(w.id).expect("drafting sequence exists");
            let fed = self
                .requests
                .get(&w.id)
                .map_or(0, |r| r.draft_fed)
                .min(w.start);
            let room = capacity - tokens.len();
            let want = w.start + 1 - fed;
            let take = want.min(room);
            fed_to[m] = fed + take;
            if take == 0 {
                continue;
            }
            drafting[m] = take == want;
            spans.push(SeqSpan {
                start_row: tokens.len(),
                len: take,
                start_pos: fed,
                slots: Some(&slots[m][..fed + take]),
                logits_from: if drafting[m] { take - 1 } else { take },
            });
            tokens.extend_from_slice(&seq.tokens[fed..fed + take]);
        }
        let mut confidences: Vec<Vec<f32>> = vec![Vec::new(); members.len()];
        let mut step = 0;
        let mut active: Vec<usize> = (0..members.len()).filter(|&m| drafting[m]).collect();
        while !spans.is_empty() {
            let started = Instant::now();
            let logits = side.model.forward_batch(
                &self.pool,
                &tokens,
                &spans,
                &mut side.kv,
                &mut side.scratch,
                Rounding::BatchInvariant,
            )?;
            self.timings
                .draft_step
                .record(tokens.len(), started.elapsed().as_secs_f64());
            for (row, &m) in active.iter().enumerate() {
                let (token, confidence) = argmax_confidence(&logits[row * vocab..][..vocab]);
                let w = &mut work[members[m]];
                w.draft[step] = token;
                confidences[m].push(confidence);
                if side.model.tokenizer.is_eog(token) {
                    w.draft.truncate(step + 1);
                }
            }
            // The next position: each member still drafting feeds the token it just drafted.
            step += 1;
            active.retain(|&m| work[members[m]].draft.len() > step);
            tokens.clear();
            spans.clear();
            for (row, &m) in active.iter().enumerate() {
                let w = &work[members[m]];
                let pos = w.start + step;
                tokens.push(w.draft[step - 1]);
                spans.push(SeqSpan {
                    start_row: row,
                    len: 1,
                    start_pos: pos,
                    slots: Some(&slots[m][..pos + 1]),
                    logits_from: 0,
                });
                fed_to[m] = pos + 1;
            }
        }
        for (m, &i) in members.iter().enumerate() {
            if !drafting[m] {
                work[i].draft.clear();
            }
            let id = work[i].id;
            if let Some(req) = self.requests.get_mut(&id) {
                req.draft_fed = fed_to[m];
                if let Some(a) = req.adaptive.as_mut() {
                    a.set_confidences(&confidences[m]);
                }
            }
        }
        Ok(())
    }

    /// Fills the placeholder drafts of `work[i]`, `i` in `members`, with the greedy predictions of the first `exit`
    /// layers: one batched partial forward per draft position, every row rounded as if alone (so that the keys and
    /// values it leaves below the exit are the ones verification recomputes).
    fn draft_early_exit(
        &mut self,
        work: &mut [Work],
        members: &[usize],
        exit: usize,
    ) -> Result<(), fulcrum_core::ModelError> {
        let vocab = self.model.config.vocab_size;
        let longest = members
            .iter()
            .map(|&i| work[i].draft.len())
            .max()
            .unwrap_or(0);
        // Each member's rows for every position its draft reaches, built once; step `s` reads a prefix.
        let slots = self.draft_slots(work, members);
        // DEL's confidence stop, per member: drafting ends after a token below its τ.
        let adaptive = self.adaptive_members(work, members);
        let taus: Vec<Option<f32>> = members
            .iter()
            .map(|&i| {
                self.requests
                    .get(&work[i].id)
                    .and_then(|r| r.adaptive.as_ref())
                    .and_then(|a| a.threshold(exit))
            })
            .collect();
        let mut confidences: Vec<Vec<f32>> = vec![Vec::new(); members.len()];
        let mut tokens = Vec::with_capacity(members.len());
        for step in 0..longest {
            let active: Vec<usize> = (0..members.len())
                .filter(|&m| work[members[m]].draft.len() > step)
                .collect();
            tokens.clear();
            for &m in &active {
                let w = &work[members[m]];
                tokens.push(if step == 0 {
                    self.scheduler
                        .get(w.id)
                        .expect("drafting sequence exists")
                        .tokens[w.start]
                } else {
                    w.draft[step - 1]
                });
            }
            let spans: Vec<SeqSpan> = active
                .iter()
                .enumerate()
                .map(|(row, &m)| SeqSpan {
                    start_row: row,
                    len: 1,
                    start_pos: work[members[m]].start + step,
                    slots: Some(&slots[m][..work[members[m]].start + step + 1]),
                    logits_from: 0,
                })
                .collect();
            let started = Instant::now();
            self.model.embed(&tokens, &mut self.scratch)?;
            self.model.run_layers(
                &self.pool,
                0..exit,
                &spans,
                &mut self.kv,
                &mut self.scratch,
                Rounding::BatchInvariant,
            )?;
            let layers_s = started.elapsed().as_secs_f64();
            let head = Instant::now();
            let logits = self.model.classify(
                &self.pool,
                active.len(),
                &mut self.scratch,
                Rounding::BatchInvariant,
            );
            let head_s = head.elapsed().as_secs_f64();
            for (row, &m) in active.iter().enumerate() {
                let row_logits = &logits[row * vocab..][..vocab];
                let w = &mut work[members[m]];
                let token = if adaptive[m] {
                    let (token, confidence) = argmax_confidence(row_logits);
                    confidences[m].push(confidence);
                    let unsure = taus[m].is_some_and(|tau| confidence < tau);
                    if unsure || self.model.tokenizer.is_eog(token) {
                        // Kept, but the last of this draft; its spare rows stay unused.
                        w.draft.truncate(step + 1);
                    }
                    token
                } else {
                    crate::sampler::argmax(row_logits)
                };
                w.draft[step] = token;
            }
            self.timings
                .layer
                .record(active.len(), layers_s / exit.max(1) as f64);
            self.timings.head.record(active.len(), head_s);
        }
        for (m, &i) in members.iter().enumerate() {
            let id = work[i].id;
            if let Some(a) = self.requests.get_mut(&id).and_then(|r| r.adaptive.as_mut()) {
                a.set_confidences(&confidences[m]);
            }
        }
        Ok(())
    }

    /// The tokens a step commits for `w` from its logits rows `l`: the sampled token, or, with a draft, the accepted
    /// drafts and the target's own next token (greedy: the longest agreeing prefix; sampling: rejection sampling).
    fn verify(&mut self, w: &Work, l: &[f32]) -> Option<Vec<u32>> {
        let vocab = self.model.config.vocab_size;
        let req = self.requests.get_mut(&w.id)?;
        let seq = self.scheduler.get(w.id)?;
        let keep = req.params.sampler.repeat_last_n;
        let mut recent = seq.tokens[seq.tokens.len().saturating_sub(keep)..].to_vec();
        if w.draft.is_empty() {
            return Some(vec![req.sampler.sample(&l[..vocab], &recent)]);
        }
        let (mut p, mut residual) = (Vec::new(), Vec::new());
        let mut committed = Vec::with_capacity(w.draft.len() + 1);
        for (j, row) in l.chunks_exact(vocab).enumerate() {
            req.sampler.distribution(row, &recent, &mut p);
            let token = match w.draft.get(j) {
                None => req.sampler.draw_from(&p),
                Some(&d) => {
                    match crate::spec::verify::check(&p, None, d, &mut req.sampler, &mut residual) {
                        crate::spec::verify::Verdict::Accept => d,
                        crate::spec::verify::Verdict::Replace(t) => {
                            committed.push(t);
                            break;
                        }
                    }
                }
            };
            committed.push(token);
            recent.push(token);
        }
        Some(committed)
    }

    /// Reports one committed `token` of request `id` (its logits `row`); `first` says whether it is the step's first
    /// (the others arrive at the same moment). Returns false once the request has ended.
    fn emit(&mut self, id: u64, token: u32, row: &[f32], first: bool) -> bool {
        let Some(req) = self.requests.get_mut(&id) else {
            return false;
        };
        let is_eog = req.params.stop_at_eog && self.model.tokenizer.is_eog(token);
        let logprobs = req.params.logprobs.map(|n| TokenLogprobs {
            logprob: log_softmax_at(row, &[token])[0],
            top: top_logprobs(row, n),
        });
        let now = Instant::now();
        match req.last_token {
            None => self
                .metrics
                .ttft
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe((now - req.submitted).as_secs_f64()),
            Some(t) => self
                .metrics
                .tbt
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .observe(if first { (now - t).as_secs_f64() } else { 0.0 }),
        }
        req.last_token = Some(now);
        if is_eog {
            self.finish(id, Some(FinishReason::Stop));
            return false;
        }
        req.emitted += 1;
        // Ends at the token limit or at the context: the length as of this token (a speculative step has already
        // appended the tokens after it).
        let prompt_len = self.scheduler.get(id).map_or(0, |s| s.prompt_len);
        let full = req.emitted >= req.params.max_tokens
            || prompt_len + req.emitted >= self.config.max_seq_len;
        self.metrics
            .generated_tokens
            .fetch_add(1, Ordering::Relaxed);
        if req
            .events
            .try_send(Event::Token {
                id: token,
                logprobs,
            })
            .is_err()
        {
            // The client went away (or stopped reading): cancel at once.
            self.finish(id, None);
            return false;
        }
        if full {
            self.finish(id, Some(FinishReason::Length));
            return false;
        }
        true
    }

    /// Ends request `id`: reports `reason` (none for a cancellation) and frees its blocks.
    fn finish(&mut self, id: u64, reason: Option<FinishReason>) {
        let seq = self.scheduler.remove(id);
        if let Some(req) = self.requests.remove(&id) {
            if reason.is_some() && req.emitted > 0 {
                self.answer_len = Some(crate::spec::fold_answer_len(self.answer_len, req.emitted));
            }
            if let (Some(reason), Some(seq)) = (reason, seq) {
                let _ = req.events.try_send(Event::Finished {
                    reason,
                    prompt_tokens: seq.prompt_len,
                    completion_tokens: req.emitted,
                    cached_tokens: seq.cached,
                });
            }
            self.metrics
                .requests_finished
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn publish(&self) {
        let m = &self.metrics;
        m.waiting
            .store(self.scheduler.n_waiting() as u64, Ordering::Relaxed);
        m.running
            .store(self.scheduler.n_running() as u64, Ordering::Relaxed);
        let pool = &self.scheduler.pool;
        m.kv_usage_ppm
            .store((pool.usage() * 1e6) as u64, Ordering::Relaxed);
        m.prefix_queried_tokens
            .store(pool.queried_tokens, Ordering::Relaxed);
        m.prefix_hit_tokens
            .store(pool.hit_tokens, Ordering::Relaxed);
    }
}
