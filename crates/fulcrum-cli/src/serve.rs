//! `fulcrum serve`: an OpenAI-compatible HTTP server over the continuous-batching engine. HTTP runs on a small tokio
//! runtime; inference runs on the engine's own threads, never on the async workers.

mod generation;
mod listen;
mod request;

use crate::common::{self, CliResult};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args as ClapArgs;
use fulcrum_core::AttentionMode;
use fulcrum_core::Model;
use fulcrum_engine::chat::ChatTemplate;
use fulcrum_engine::engine::{self, EngineConfig, EngineHandle, Params};
use fulcrum_engine::latency::TbtTarget;
use fulcrum_engine::prompt;
use fulcrum_engine::scheduler::{Limits, Rejected};
use fulcrum_engine::spec::Speculation;
use generation::{Chunk, TokenLogprob, Usage};
use request::{BadRequest, Prompt};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Arguments of `fulcrum serve`.
#[derive(ClapArgs)]
pub struct Args {
    /// Model name (pulled if missing) or path to a GGUF file.
    #[arg(short, long, default_value = common::DEFAULT_MODEL)]
    model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Compute threads.
    #[arg(short, long, default_value_t = fulcrum_core::threads::default_threads())]
    threads: usize,
    /// Memory for the KV cache pool, in MiB (default: 512, or as much as one sequence of --ctx needs if more).
    #[arg(long)]
    kv_memory: Option<usize>,
    /// Longest sequence (prompt and output) per request; default: the model's context, capped at 8192.
    #[arg(long)]
    ctx: Option<usize>,
    /// Most tokens computed per iteration over all requests (prefill chunks and decodes together).
    #[arg(long, default_value_t = 256)]
    batch_tokens: usize,
    /// Time-between-tokens target of iterations that carry decoding requests (DuetServe): prefill chunks are sized
    /// by a latency model to stay within it. `auto` (2.5 times the iteration without its prefill chunks), milliseconds
    /// (`100`), a factor (`3x`), or `off` (every chunk as large as --batch-tokens).
    #[arg(long, default_value = "auto", value_parser = tbt_target)]
    tbt_target: Tbt,
    /// Requests running at once.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Turn prefix caching off (for comparisons).
    #[arg(long)]
    no_prefix_cache: bool,
    /// Requests queued before new ones get 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Default speculation of requests that do not choose one ("spec" field): off, lookup[:γ], draft[:MODEL[,γ]],
    /// early-exit:E,γ, exit-fsm:E, del or auto.
    #[arg(long, default_value = "off")]
    spec: Speculation,
    /// Draft model (sharing the model's vocabulary) for requests that ask for "draft", and for "auto"; its keys and
    /// values take a pool of their own with as many tokens as the model's.
    #[arg(long)]
    draft_model: Option<String>,
    /// How the draft model's weights are held: q4_0 (re-quantized once into the model cache, if wider) or keep.
    #[arg(long, value_enum, default_value_t = common::DraftType::Q4_0)]
    draft_type: common::DraftType,
    /// DEL's γ_min for `del` and `auto` requests: with 1 or more they always draft (for measuring what drafting
    /// costs where it does not pay); 0 lets the controller fall back to plain decoding.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=18))]
    spec_gamma_min: u64,
    /// `--attention` is the default of requests that do not choose one ("attention" field: "dense" or "delta").
    #[command(flatten)]
    attention: common::AttentionArgs,
    /// Largest request body, in MiB (larger ones get 413).
    #[arg(long, default_value_t = 8)]
    max_body_mib: usize,
    /// Seconds a client may take to send a request's headers, or its body (slower ones are cut off: 408 for a body),
    /// and an idle keep-alive connection may wait for its next request.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    read_timeout: u64,
    /// Connections served at once (more wait to be accepted).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Seconds requests in flight may run on after SIGTERM or SIGINT (new ones get 503 meanwhile); a second signal
    /// exits at once.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
}

struct AppState {
    model: Arc<Model>,
    name: String,
    template: ChatTemplate,
    engine: EngineHandle,
    kv_tokens: usize,
    /// Speculation of requests that do not choose.
    spec: Speculation,
    /// Attention of requests that do not choose.
    attention: AttentionMode,
    /// The draft model, as named on the command line, and its file stem.
    draft: Option<(String, String)>,
    /// Shutdown's state and the requests in flight.
    drain: Arc<listen::Drain>,
    /// Longest wait for a request's body.
    read_timeout: Duration,
    /// Largest request body in bytes.
    max_body: usize,
    /// What a draining server tells clients to wait, in seconds.
    drain_timeout: u64,
}

type AppResult = Result<Response, ApiError>;

/// An OpenAI-shaped error response.
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    /// Seconds to wait before a retry (the `Retry-After` header).
    retry_after: Option<u64>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
            retry_after: None,
        }
    }

    /// An error of the request as a whole, with its own status.
    fn status(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            ..ApiError::invalid(message, None)
        }
    }

    /// 503 while the server shuts down.
    fn draining(retry_after: u64) -> ApiError {
        ApiError {
            code: Some("server_shutting_down"),
            retry_after: Some(retry_after),
            ..ApiError::unavailable(
                "the server is shutting down; retry on another replica or later",
            )
        }
    }

    /// 503: the engine cannot take requests.
    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "server_error",
            ..ApiError::invalid(message, None)
        }
    }

    /// 500: the request failed inside the engine.
    fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            kind: "server_error",
            ..ApiError::invalid(message, None)
        }
    }
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> Self {
        ApiError::invalid(e.message, e.param)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// The `--tbt-target` setting: off, or a target.
#[derive(Clone, Copy, Debug)]
struct Tbt(Option<TbtTarget>);

/// Parses `--tbt-target`: `off`, or a [`TbtTarget`].
fn tbt_target(s: &str) -> Result<Tbt, String> {
    match s {
        "off" => Ok(Tbt(None)),
        _ => s.parse().map(|t| Tbt(Some(t))),
    }
}

/// Runs the server until the process is stopped.
pub fn run(args: Args) -> CliResult {
    let threads = common::check_threads(args.threads)?;
    // Listen before loading, so that a port in use is reported at once rather than after the model has loaded.
    let addr = format!("{}:{}", args.host, args.port);
    let listener =
        std::net::TcpListener::bind(&addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let model = common::load_model(&args.model, true)?;
    let c = &model.config;
    let max_seq_len = args
        .ctx
        .unwrap_or(c.context_length.min(8192))
        .min(c.context_length);
    if max_seq_len == 0 || args.batch_tokens == 0 || args.parallel == 0 {
        return Err("--ctx, --batch-tokens and --parallel must be positive".into());
    }
    args.spec.check(c.n_layers)?;
    let draft_name = match (&args.draft_model, args.spec.draft_model()) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "--spec names draft model {b} but --draft-model is {a}; name one draft model"
            )
            .into())
        }
        (Some(a), _) => Some(a.clone()),
        (None, b) => b.map(str::to_string),
    };
    if draft_name.is_none() && args.spec.needs_draft_model() {
        return Err("--spec draft needs a draft model: add --draft-model NAME".into());
    }
    let draft = match &draft_name {
        Some(name) => Some(common::load_draft(name, args.draft_type, true)?),
        None => None,
    };
    let block_size = 16;
    let bytes_per_token = c.n_layers * c.kv_row_bytes();
    // By default at least one whole sequence fits (a 32k context of the 1.5B needs ~900 MiB).
    let kv_memory = args.kv_memory.unwrap_or_else(|| {
        ((max_seq_len + block_size) * bytes_per_token)
            .div_ceil(1 << 20)
            .max(512)
    });
    let kv_tokens = (kv_memory << 20) / bytes_per_token / block_size * block_size;
    if kv_tokens < max_seq_len {
        return Err(format!(
            "--kv-memory {kv_memory} MiB holds {kv_tokens} tokens, fewer than one sequence of {max_seq_len}; raise it or lower --ctx"
        )
        .into());
    }
    eprintln!(
        "KV cache: {kv_memory} MiB = {kv_tokens} tokens in blocks of {block_size}; sequences up to {max_seq_len} tokens"
    );
    if let Some(d) = &draft {
        let mib = (kv_tokens * d.config.n_layers * d.config.kv_row_bytes()) >> 20;
        eprintln!("draft model's KV pool: {mib} MiB");
    }
    let engine = engine::start(
        model.clone(),
        draft.clone(),
        EngineConfig {
            threads,
            kv_tokens,
            block_size,
            prefix_caching: !args.no_prefix_cache,
            max_seq_len,
            limits: Limits {
                token_budget: args.batch_tokens,
                max_running: args.parallel,
                max_waiting: args.queue,
            },
            tbt_target: args.tbt_target.0,
            spec_gamma_min: args.spec_gamma_min as usize,
            delta: args.attention.delta.config(model.config.n_layers)?,
        },
    )?;
    // A registry name as given; a path by its file name.
    let path = std::path::Path::new(&args.model);
    let name = match path.file_stem() {
        Some(stem) if path.is_file() => stem.to_string_lossy().into_owned(),
        _ => args.model.clone(),
    };
    let state = Arc::new(AppState {
        template: prompt::chat_template(&model)?,
        model,
        name,
        engine,
        kv_tokens,
        spec: args.spec,
        attention: args.attention.attention,
        draft: draft_name.map(|n| {
            let stem = std::path::Path::new(&n)
                .file_stem()
                .map_or(n.clone(), |s| s.to_string_lossy().into_owned());
            (n, stem)
        }),
        drain: Arc::default(),
        read_timeout: Duration::from_secs(args.read_timeout),
        max_body: args.max_body_mib << 20,
        drain_timeout: args.drain_timeout,
    });
    let drain = state.drain.clone();
    let app = Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body))
        .with_state(state);
    let limits = listen::ConnLimits {
        header_timeout: Duration::from_secs(args.read_timeout),
        max_connections: args.max_connections as usize,
        drain_timeout: Duration::from_secs(args.drain_timeout),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        eprintln!("listening on http://{addr}");
        listen::serve(listener, app, drain, limits).await?;
        Ok(())
    })
}

/// Any other path: an OpenAI-shaped 404.
async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError {
        code: Some("not_found"),
        ..ApiError::status(
            StatusCode::NOT_FOUND,
            format!("no route {method} {}", uri.path()),
        )
    }
}

/// A known path with the wrong method: an OpenAI-shaped 405.
async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::status(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}", uri.path()),
    )
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.name, "object": "model", "created": now(), "owned_by": "fulcrum",
        "max_model_len": state.engine.max_seq_len,
    }]}))
}

async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let m = &state.engine.metrics;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, v: f64| {
        out.push_str(&format!(
            "# HELP fulcrum_{name} {help}\n# TYPE fulcrum_{name} {kind}\nfulcrum_{name} {v}\n"
        ));
    };
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    let series = [
        (
            "num_requests_waiting",
            "Requests waiting to run.",
            "gauge",
            load(&m.waiting),
        ),
        (
            "num_requests_running",
            "Requests running.",
            "gauge",
            load(&m.running),
        ),
        (
            "kv_cache_usage_perc",
            "Fraction of KV blocks in use (0-1).",
            "gauge",
            load(&m.kv_usage_ppm) / 1e6,
        ),
        (
            "kv_cache_tokens",
            "KV cache capacity in tokens.",
            "gauge",
            state.kv_tokens as f64,
        ),
        (
            "prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            "counter",
            load(&m.prefix_queried_tokens),
        ),
        (
            "prefix_cache_hits_total",
            "Prompt tokens found in the prefix cache.",
            "counter",
            load(&m.prefix_hit_tokens),
        ),
        (
            "prompt_tokens_total",
            "Prompt tokens received.",
            "counter",
            load(&m.prompt_tokens),
        ),
        (
            "generation_tokens_total",
            "Tokens generated.",
            "counter",
            load(&m.generated_tokens),
        ),
        (
            "requests_finished_total",
            "Requests finished or cancelled.",
            "counter",
            load(&m.requests_finished),
        ),
        (
            "num_preemptions_total",
            "Requests preempted for lack of KV blocks (recomputed when they resume).",
            "counter",
            load(&m.preemptions),
        ),
        (
            "spec_draft_tokens_total",
            "Speculative tokens drafted.",
            "counter",
            load(&m.spec_drafted),
        ),
        (
            "spec_accepted_tokens_total",
            "Speculative tokens the model accepted.",
            "counter",
            load(&m.spec_accepted),
        ),
        (
            "spec_shadow_rounds_total",
            "Decode steps (and prompt ends) that computed DEL shadow tokens at the candidate exits.",
            "counter",
            load(&m.spec_shadow_rounds),
        ),
        (
            "spec_shadow_rows_total",
            "Classifier rows spent on DEL shadow tokens.",
            "counter",
            load(&m.spec_shadow_rows),
        ),
        (
            "attention_attended_tokens_total",
            "KV positions read by the decode rows of DELTA requests, summed over layers.",
            "counter",
            load(&m.attention_attended),
        ),
        (
            "attention_context_tokens_total",
            "KV positions dense attention would have read for those rows (over attended: DELTA's reduction).",
            "counter",
            load(&m.attention_context),
        ),
        (
            "latency_model_correction",
            "Measured over predicted iteration time of the latency model (0 with --tbt-target off).",
            "gauge",
            load(&m.latency_correction_ppm) / 1e6,
        ),
    ];
    for (name, help, kind, v) in series {
        gauge(name, help, kind, v);
    }
    let by = m
        .spec_by_drafter
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for (name, help, get) in [
        (
            "spec_drafter_rounds_total",
            "Decode steps that verified a draft, per drafter (lookup, exit:E).",
            (|c: &engine::DrafterCounts| c.rounds) as fn(&engine::DrafterCounts) -> u64,
        ),
        (
            "spec_drafter_draft_tokens_total",
            "Speculative tokens drafted, per drafter.",
            |c| c.drafted,
        ),
        (
            "spec_drafter_accepted_tokens_total",
            "Speculative tokens accepted, per drafter.",
            |c| c.accepted,
        ),
    ] {
        out.push_str(&format!(
            "# HELP fulcrum_{name} {help}\n# TYPE fulcrum_{name} counter\n"
        ));
        for (drafter, c) in &by {
            out.push_str(&format!(
                "fulcrum_{name}{{drafter=\"{drafter}\"}} {}\n",
                get(c)
            ));
        }
    }
    for (name, help, h) in [
        (
            "time_to_first_token_seconds",
            "Time to first token.",
            &m.ttft,
        ),
        (
            "time_per_output_token_seconds",
            "Time between tokens.",
            &m.tbt,
        ),
    ] {
        let h = h.lock().unwrap_or_else(|e| e.into_inner()).clone();
        out.push_str(&format!(
            "# HELP fulcrum_{name} {help}\n# TYPE fulcrum_{name} histogram\n"
        ));
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            out.push_str(&format!("fulcrum_{name}_bucket{{le=\"{b}\"}} {c}\n"));
        }
        let total = h.counts.last().copied().unwrap_or(0);
        out.push_str(&format!(
            "fulcrum_{name}_bucket{{le=\"+Inf\"}} {total}\nfulcrum_{name}_sum {}\nfulcrum_{name}_count {total}\n",
            h.sum
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

async fn completions(State(state): State<Arc<AppState>>, request: Request) -> AppResult {
    handle(state, request, false).await
}

async fn chat_completions(State(state): State<Arc<AppState>>, request: Request) -> AppResult {
    handle(state, request, true).await
}

/// Reads a request's body within the read timeout and the size limit.
async fn read_body(state: &AppState, request: Request) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::status(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than this server's limit of {} MiB (--max-body-mib)",
                state.max_body >> 20
            ),
        )
    };
    // A declared length over the limit is refused before a byte of the body is read.
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(state.read_timeout, Bytes::from_request(request, &())).await {
        Err(_) => Err(ApiError::status(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                state.read_timeout.as_secs()
            ),
        )),
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(too_large())
        }
        Ok(Err(rejection)) => Err(ApiError::status(
            rejection.status(),
            format!("cannot read the request body: {}", rejection.body_text()),
        )),
        Ok(Ok(body)) => Ok(body),
    }
}

/// Cancels a request in the engine when its response is dropped before the end (the client went away while it was
/// queued, in prefill or streaming).
struct Cancel {
    engine: EngineHandle,
    id: u64,
    done: bool,
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if !self.done {
            self.engine.abort(self.id);
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn handle(state: Arc<AppState>, request: Request, chat: bool) -> AppResult {
    let Some(flight) = state.drain.enter() else {
        return Err(ApiError::draining(state.drain_timeout));
    };
    let body = read_body(&state, request).await?;
    let req = request::parse(&body, chat)?;
    // Messages' content is tokenized as plain text: only the template's markup becomes control tokens.
    let prompt = match &req.prompt {
        Prompt::Text(t) => prompt::tokenize(&state.model, t),
        Prompt::Chat(messages) => {
            prompt::tokenize_chat(&state.model, &state.template, messages, true)
                .map_err(|e| {
                    ApiError::invalid(format!("chat template: {e}"), Some("messages".into()))
                })?
                .map_err(|e| ApiError::invalid(e.to_string(), Some("messages".into())))?
        }
    };
    let limit = state.engine.max_seq_len;
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "the prompt is empty",
            Some("prompt".into()),
        ));
    }
    if prompt.len() >= limit {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid(
                format!(
                    "the prompt has {} tokens; this server's context is {limit} tokens (prompt and output)",
                    prompt.len()
                ),
                Some(if chat { "messages" } else { "prompt" }.into()),
            )
        });
    }
    let vocab = state.model.tokenizer.vocab_size();
    if let Some(&(id, _)) = req
        .sampler
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= vocab)
    {
        return Err(ApiError::invalid(
            format!(
                "logit_bias names token {id}, outside this model's vocabulary of {vocab} tokens"
            ),
            Some("logit_bias".into()),
        ));
    }
    let spec = req.spec.clone().unwrap_or_else(|| state.spec.clone());
    spec.check(state.model.config.n_layers)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("spec".into())))?;
    if spec.needs_draft_model() {
        let known = |(name, stem): &(String, String)| {
            spec.draft_model().is_none_or(|n| n == name || n == stem)
        };
        match &state.draft {
            None => {
                return Err(ApiError::invalid(
                    "this server has no draft model (start it with --draft-model NAME); try \"del\" or \"lookup\"",
                    Some("spec".into()),
                ))
            }
            Some(d) if !known(d) => {
                return Err(ApiError::invalid(
                    format!(
                        "this server drafts with {}, not {}",
                        d.0,
                        spec.draft_model().unwrap_or_default()
                    ),
                    Some("spec".into()),
                ))
            }
            Some(_) => {}
        }
    }
    let max_tokens = req
        .max_tokens
        .unwrap_or(usize::MAX)
        .min(limit - prompt.len());
    let n_prompt = prompt.len();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut cancel = None;
    if max_tokens == 0 {
        // Nothing to generate: the answer is empty, cut by its length limit.
        let usage = Usage {
            prompt_tokens: n_prompt,
            ..Usage::default()
        };
        let _ = tx.send(Chunk::Done {
            reason: "length",
            usage,
        });
        drop(tx);
    } else {
        let params = Params {
            max_tokens,
            sampler: req.sampler.clone(),
            logprobs: req.logprobs,
            stop_at_eog: true,
            spec,
            attention: req.attention.unwrap_or(state.attention),
        };
        // Submitting waits for the engine's next iteration boundary: on a blocking thread, which then relays the
        // request's events, so the async workers stay free for other connections, /health and /metrics.
        let (submitted, answer) = tokio::sync::oneshot::channel();
        let (relay_state, stops) = (state.clone(), req.stop.clone());
        tokio::task::spawn_blocking(move || {
            match relay_state.engine.submit(prompt, params) {
                Err(e) => {
                    let _ = submitted.send(Err(e));
                }
                Ok((id, events)) => {
                    if submitted.send(Ok(id)).is_err() {
                        // The client went away while it was being submitted.
                        relay_state.engine.abort(id);
                        return;
                    }
                    generation::relay(
                        &relay_state.model,
                        &relay_state.engine,
                        id,
                        events,
                        &stops,
                        n_prompt,
                        tx,
                    )
                }
            }
        });
        let id = answer
            .await
            .unwrap_or(Err(Rejected::Unavailable))
            .map_err(|e| match e {
                Rejected::QueueFull(_) => ApiError {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    kind: "rate_limit_error",
                    retry_after: Some(1),
                    ..ApiError::invalid(format!("server overloaded: {e}; retry later"), None)
                },
                Rejected::Unavailable => ApiError::unavailable(e.to_string()),
                other => ApiError::invalid(other.to_string(), None),
            })?;
        cancel = Some(Cancel {
            engine: state.engine.clone(),
            id,
            done: false,
        });
    }
    let number = cancel
        .as_ref()
        .map_or_else(|| state.engine.reserve_id(), |c| c.id);
    let ids = Ids {
        id: format!("{}-{number}", if chat { "chatcmpl" } else { "cmpl" }),
        created: now(),
        model: state.name.clone(),
        chat,
    };
    if !req.stream {
        let mut rx = rx;
        let mut text = String::new();
        let mut logprobs = Vec::new();
        let mut end = ("stop", Usage::default());
        while let Some(chunk) = rx.recv().await {
            match chunk {
                Chunk::Delta {
                    text: t,
                    logprobs: l,
                } => {
                    text.push_str(&t);
                    logprobs.extend(l);
                }
                Chunk::Done { reason, usage } => end = (reason, usage),
                Chunk::Failed(message) => return Err(ApiError::internal(message)),
            }
        }
        if let Some(c) = &mut cancel {
            c.done = true;
        }
        let lp = req.logprobs.map(|_| ids.logprobs_json(&logprobs));
        return Ok(Json(ids.full(&text, lp, end.0, end.1)).into_response());
    }
    let include_usage = req.include_usage;
    let want_logprobs = req.logprobs.is_some();
    let stream = async_stream(ids, rx, include_usage, want_logprobs, (cancel, flight));
    Ok(Sse::new(stream).into_response())
}

/// `GET /health`: 200 while the engine runs, 503 once it has stopped or while the server drains for shutdown.
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if !state.engine.is_alive() {
        ApiError::unavailable("the inference engine has stopped").into_response()
    } else if state.drain.is_draining() {
        let mut response = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "in_flight": state.drain.in_flight()})),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(state.drain_timeout));
        response
    } else {
        Json(json!({"status": "ok"})).into_response()
    }
}

/// The identity shared by the chunks of one response.
struct Ids {
    id: String,
    created: u64,
    model: String,
    chat: bool,
}

impl Ids {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    fn usage(u: Usage) -> Value {
        json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
               "total_tokens": u.prompt_tokens + u.completion_tokens,
               "prompt_tokens_details": {"cached_tokens": u.cached_tokens}})
    }

    fn logprobs_json(&self, lps: &[TokenLogprob]) -> Value {
        if self.chat {
            let entry = |t: &str, l: f32| json!({"token": t, "logprob": l, "bytes": t.as_bytes()});
            json!({"content": lps.iter().map(|lp| {
                let mut e = entry(&lp.token, lp.logprob);
                e["top_logprobs"] = lp.top.iter().map(|(t, l)| entry(t, *l)).collect();
                e
            }).collect::<Vec<_>>()})
        } else {
            let mut offset = 0;
            let offsets: Vec<usize> = lps
                .iter()
                .map(|lp| {
                    let o = offset;
                    offset += lp.token.len();
                    o
                })
                .collect();
            json!({
                "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|l| l.top.iter().map(|(t, p)| (t.clone(), json!(p))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                "text_offset": offsets,
            })
        }
    }

    fn full(&self, text: &str, logprobs: Option<Value>, reason: &str, usage: Usage) -> Value {
        let choice = if self.chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text},
                   "logprobs": logprobs, "finish_reason": reason})
        } else {
            json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason})
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
               "choices": [choice], "usage": Ids::usage(usage)})
    }

    fn chunk(&self, text: Option<&str>, logprobs: Option<Value>, reason: Option<&str>) -> Value {
        let choice = if self.chat {
            let delta = match text {
                Some(t) => json!({"content": t}),
                None if reason.is_none() => json!({"role": "assistant", "content": ""}),
                None => json!({}),
            };
            json!({"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason})
        } else {
            json!({"index": 0, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": reason})
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
               "choices": [choice]})
    }
}

/// The SSE events of a streamed response; `guards` (the engine request's cancellation and the request's count in
/// flight) live as long as the stream: dropped early (the client went away), the request is cancelled.
fn async_stream(
    ids: Ids,
    rx: tokio::sync::mpsc::UnboundedReceiver<Chunk>,
    include_usage: bool,
    want_logprobs: bool,
    guards: (Option<Cancel>, listen::Flight),
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> {
    enum Phase {
        Start,
        Body,
        Usage(Usage),
        Done,
        End,
    }
    let data = |v: Value| Ok(SseEvent::default().data(v.to_string()));
    futures_util::stream::unfold(
        (ids, rx, Phase::Start, guards),
        move |(ids, mut rx, phase, mut guards)| async move {
            match phase {
                Phase::Start if ids.chat => {
                    let first = ids.chunk(None, None, None);
                    Some((data(first), (ids, rx, Phase::Body, guards)))
                }
                Phase::Start | Phase::Body => match rx.recv().await {
                    Some(Chunk::Delta { text, logprobs }) => {
                        let lp = want_logprobs.then(|| ids.logprobs_json(&logprobs));
                        let v = ids.chunk(Some(&text), lp, None);
                        Some((data(v), (ids, rx, Phase::Body, guards)))
                    }
                    Some(Chunk::Done { reason, usage }) => {
                        if let Some(cancel) = &mut guards.0 {
                            cancel.done = true;
                        }
                        let v = ids.chunk(None, None, Some(reason));
                        let next = if include_usage {
                            Phase::Usage(usage)
                        } else {
                            Phase::Done
                        };
                        Some((data(v), (ids, rx, next, guards)))
                    }
                    Some(Chunk::Failed(message)) => {
                        // OpenAI's clients raise an error for a `data:` event holding an `error` object.
                        let v = json!({"error": {"message": message, "type": "server_error",
                                                 "param": null, "code": null}});
                        Some((data(v), (ids, rx, Phase::End, guards)))
                    }
                    None => None,
                },
                Phase::Usage(u) => {
                    let v = json!({"id": ids.id, "object": ids.object(true), "created": ids.created,
                                   "model": ids.model, "choices": [], "usage": Ids::usage(u)});
                    Some((data(v), (ids, rx, Phase::Done, guards)))
                }
                Phase::Done => Some((
                    Ok(SseEvent::default().data("[DONE]")),
                    (ids, rx, Phase::End, guards),
                )),
                Phase::End => None,
            }
        },
    )
}
