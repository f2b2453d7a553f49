//! `fulcrum serve`: an OpenAI-compatible HTTP server over the continuous-batching engine. HTTP runs on a small tokio
//! runtime; inference runs on the engine's own threads, never on the async workers.

mod generation;
mod kv_events;
mod listen;
mod request;
mod response;

use crate::common::{self, CliResult};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use clap::Args as ClapArgs;
use fulcrum_core::session::Session;
use fulcrum_core::AttentionMode;
use fulcrum_core::Model;
use fulcrum_engine::chat::ChatTemplate;
use fulcrum_engine::constraint::{ConstraintFactory, ConstraintSpec};
use fulcrum_engine::engine::{self, EngineConfig, EngineHandle, Params};
use fulcrum_engine::latency::TbtTarget;
use fulcrum_engine::prompt;
use fulcrum_engine::sampler::{Format, SamplerConfig};
use fulcrum_engine::scheduler::{Limits, Rejected};
use fulcrum_engine::spec::Speculation;
use fulcrum_engine::tools::{call_grammar, Tool, ToolChoice};
use generation::{Chunk, TokenLogprob, Usage};
use request::{BadRequest, Prompt, PromptInput};
use response::{Choice, Echo, Ids, Tooling, Totals};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tower_http::cors::{AllowOrigin, CorsLayer};

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
    /// The model's name in responses and /v1/models (repeatable: later ones are aliases requests may use too).
    #[arg(long = "served-model-name")]
    served_model_name: Vec<String>,
    /// Require `Authorization: Bearer KEY` on every route but /health (repeatable; also FULCRUM_API_KEY, comma-separated).
    #[arg(
        long = "api-key",
        env = "FULCRUM_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_key: Vec<String>,
    /// A file of API keys, one per line (blank lines and lines starting with # are skipped).
    #[arg(long)]
    api_key_file: Option<std::path::PathBuf>,
    /// Serve /metrics without an API key (for Prometheus and routers' endpoint pickers, which scrape without one).
    #[arg(long)]
    public_metrics: bool,
    /// An origin whose web pages may call the API from a browser (CORS), as `https://host[:port]`, or `*` for any;
    /// repeatable. None: no cross-origin access.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origin: Vec<String>,
    /// Serve no chat page at `/`.
    #[arg(long)]
    no_webui: bool,
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
    /// Publish the prefix cache's changes (blocks stored, removed, all cleared) for routers, as vLLM does: a ZeroMQ
    /// PUB endpoint, bound if it has `*` (`tcp://*:5557`), else connected to (`tcp://router:5557`).
    #[arg(long, value_name = "ENDPOINT")]
    kv_events_endpoint: Option<String>,
    /// A ZeroMQ ROUTER endpoint to bind where subscribers ask for missed KV-event batches by sequence number.
    #[arg(long, value_name = "ENDPOINT", requires = "kv_events_endpoint")]
    kv_events_replay_endpoint: Option<String>,
    /// The topic (first frame) of every KV-event message.
    #[arg(long, default_value = "", requires = "kv_events_endpoint")]
    kv_events_topic: String,
    /// vLLM's form of the KV-event settings, as JSON: {"enable_kv_cache_events": true, "publisher": "zmq",
    /// "endpoint": …, "replay_endpoint": …, "topic": …}.
    #[arg(long, value_name = "JSON", conflicts_with = "kv_events_endpoint")]
    kv_events_config: Option<String>,
}

/// The KV-event publisher the flags ask for, if any.
fn kv_publisher(args: &Args) -> CliResult<Option<kv_events::Publisher>> {
    let mut p = kv_events::Publisher {
        endpoint: String::new(),
        replay: args.kv_events_replay_endpoint.clone(),
        topic: args.kv_events_topic.clone(),
        block_size: BLOCK_SIZE,
    };
    if let Some(endpoint) = &args.kv_events_endpoint {
        p.endpoint = endpoint.clone();
    } else if let Some(json) = &args.kv_events_config {
        let bad = |e: String| format!("--kv-events-config: {e}");
        let v: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let Value::Object(fields) = v else {
            return Err(bad("expected a JSON object".into()).into());
        };
        let mut enabled = false;
        // vLLM's default publisher is zmq once events are enabled.
        let mut publisher = "zmq".to_string();
        p.endpoint = "tcp://*:5557".into();
        for (k, v) in &fields {
            let text = || {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad(format!("`{k}` must be a string")))
            };
            match k.as_str() {
                "enable_kv_cache_events" => {
                    enabled = v.as_bool().ok_or_else(|| {
                        bad("`enable_kv_cache_events` must be true or false".into())
                    })?
                }
                "publisher" => publisher = text()?,
                "endpoint" => p.endpoint = text()?,
                "replay_endpoint" if v.is_null() => p.replay = None,
                "replay_endpoint" => p.replay = Some(text()?),
                "topic" => p.topic = text()?,
                // Queue sizes of vLLM's Python publisher: ours keeps a fixed replay buffer and an unbounded queue.
                "buffer_steps" | "hwm" | "max_queue_size" if v.is_u64() => {}
                _ => return Err(bad(format!("unsupported field `{k}`")).into()),
            }
        }
        match (enabled, publisher.as_str()) {
            (false, _) | (_, "null") => return Ok(None),
            (true, "zmq") => {}
            (true, other) => {
                return Err(bad(format!(
                    "publisher `{other}` is not supported (zmq or null)"
                ))
                .into())
            }
        }
    } else {
        return Ok(None);
    }
    kv_events::check(&p)?;
    Ok(Some(p))
}

struct AppState {
    model: Arc<Model>,
    /// The name the server answers with (the first `--served-model-name`, else the model as given).
    name: String,
    /// Every name a request's `model` may use: the served names, the model as given and its file stem.
    names: Vec<String>,
    /// Bearer tokens a request must present (none: open).
    api_keys: Vec<String>,
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
    /// The vocabulary compiled for structured outputs, built in the background at start-up (or why it cannot be).
    formats: Arc<OnceLock<Result<ConstraintFactory, String>>>,
    /// Threads of a side run.
    threads: usize,
    /// Longest input in tokens (the sequence limit).
    max_seq_len: usize,
    /// One side run (embeddings, prompt scoring) at a time, beside the engine.
    side_runs: tokio::sync::Semaphore,
    /// /metrics is served without an API key.
    public_metrics: bool,
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

/// The CORS policy for `--cors-origin`: those origins (or any) may call every route with a bearer key and a JSON
/// body; `None` without the flag.
fn cors(origins: &[String]) -> CliResult<Option<CorsLayer>> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                let valid = (o.starts_with("http://") || o.starts_with("https://"))
                    && !o.ends_with('/')
                    && !o.contains(char::is_whitespace);
                valid
                    .then(|| HeaderValue::from_str(o).ok())
                    .flatten()
                    .ok_or_else(|| {
                        format!(
                            "--cors-origin {o:?}: expected scheme://host[:port] (no path), or *"
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(Duration::from_secs(3600)),
    ))
}

/// The model's vocabulary compiled for structured outputs, with how long that took on the log.
fn build_formats(model: &Model) -> Result<ConstraintFactory, String> {
    let started = std::time::Instant::now();
    let factory = ConstraintFactory::from_tokenizer(&model.tokenizer).map_err(|e| e.to_string());
    match &factory {
        Ok(f) => eprintln!(
            "structured outputs: {} tokens compiled in {} ms",
            f.vocab_size(),
            started.elapsed().as_millis()
        ),
        Err(e) => eprintln!("structured outputs unavailable: {e}"),
    }
    factory
}

/// Compiles a request's response format (given by field `param`) off the async threads; an invalid schema, regex
/// or grammar is a 400 naming the field.
async fn compile_format(
    state: &Arc<AppState>,
    param: &'static str,
    spec: &ConstraintSpec,
) -> Result<Format, ApiError> {
    let (shared, spec) = (state.clone(), spec.clone());
    let constraint = tokio::task::spawn_blocking(move || {
        let factory = shared
            .formats
            .get_or_init(|| build_formats(&shared.model))
            .as_ref()
            .map_err(|e| {
                ApiError::invalid(
                    format!("structured output is not available for this model: {e}"),
                    Some(param.into()),
                )
            })?;
        factory
            .compile(&spec)
            .map_err(|e| ApiError::invalid(e.to_string(), Some(param.into())))
    })
    .await
    .map_err(|e| ApiError::internal(format!("compiling the response format failed: {e}")))??;
    Ok(Format::new(constraint, state.model.tokenizer.eog_ids()))
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
    let kv_publisher = kv_publisher(&args)?;
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
    let block_size = BLOCK_SIZE;
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
    if let Some(tiles) = fulcrum_quant::tile_choice() {
        eprintln!(
            "kernels: {}; tiles for 1 row / 2-8 / 9+: {}",
            fulcrum_quant::simd_level(),
            crate::kernels::describe(&tiles)
        );
    }
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
    let cache_watch = engine.clone();
    // A registry name as given; a path by its file name.
    let path = std::path::Path::new(&args.model);
    let stem = match path.file_stem() {
        Some(stem) if path.is_file() => stem.to_string_lossy().into_owned(),
        _ => args.model.clone(),
    };
    let mut names = args.served_model_name.clone();
    let name = names.first().cloned().unwrap_or_else(|| stem.clone());
    names.extend([stem, args.model.clone()]);
    let api_keys = api_keys(&args)?;
    let formats = Arc::new(OnceLock::new());
    {
        let (formats, model) = (formats.clone(), model.clone());
        std::thread::Builder::new()
            .name("formats".into())
            .spawn(move || {
                formats.get_or_init(|| build_formats(&model));
            })?;
    }
    let state = Arc::new(AppState {
        formats,
        threads,
        max_seq_len,
        side_runs: tokio::sync::Semaphore::new(1),
        template: prompt::chat_template(&model)?,
        model,
        name,
        names,
        api_keys,
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
        public_metrics: args.public_metrics,
    });
    let drain = state.drain.clone();
    let app = Router::new();
    let app = if args.no_webui {
        app
    } else {
        app.route("/", get(chat_page))
    };
    let app = app
        .route("/health", get(health))
        .route("/ready", get(health))
        .route("/live", get(live))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model_info))
        .route("/metrics", get(metrics))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/reset_prefix_cache", post(reset_prefix_cache))
        .route("/flush_cache", post(reset_prefix_cache))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(DefaultBodyLimit::max(state.max_body))
        .with_state(state);
    // Outermost, so preflight requests are answered before authorization and every answer carries the headers.
    let app = match cors(&args.cors_origin)? {
        Some(layer) => app.layer(layer),
        None => app,
    };
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
        if let Some(p) = kv_publisher {
            let what = format!("{} (topic {:?})", p.endpoint, p.topic);
            let events = kv_events::start(p).await?;
            cache_watch.watch_cache(engine::KvEventSink(Arc::new(move |batch| {
                let _ = events.send(batch);
            })));
            eprintln!("publishing KV events on {what}");
        }
        eprintln!("listening on http://{addr}");
        listen::serve(listener, app, drain, limits).await?;
        Ok(())
    })
}

/// `POST /reset_prefix_cache` (vLLM's name; `/flush_cache` is SGLang's): forgets every cached prefix.
async fn reset_prefix_cache(State(state): State<Arc<AppState>>) -> AppResult {
    let engine = state.engine.clone();
    let done = tokio::task::spawn_blocking(move || engine.clear_cache())
        .await
        .unwrap_or(false);
    if !done {
        return Err(ApiError::unavailable("the inference engine has stopped"));
    }
    Ok(Json(json!({"status": "ok"})).into_response())
}

/// `GET /`: a small web chat over this server's API (streamed replies, tokens per second, system prompt and
/// sampling settings), with no dependencies.
async fn chat_page() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("serve/chat.html"))
}

/// Positions per KV block of the serving pool.
const BLOCK_SIZE: usize = 16;

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

/// The API keys of `--api-key`, FULCRUM_API_KEY and `--api-key-file`.
fn api_keys(args: &Args) -> CliResult<Vec<String>> {
    let mut keys: Vec<String> = args.api_key.iter().map(|k| k.trim().to_string()).collect();
    if let Some(path) = &args.api_key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --api-key-file {}: {e}", path.display()))?;
        keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
        if keys.is_empty() {
            return Err(format!("--api-key-file {} holds no key", path.display()).into());
        }
    }
    if keys.iter().any(String::is_empty) {
        return Err("an API key must not be empty".into());
    }
    Ok(keys)
}

/// With API keys set, every route but /health needs `Authorization: Bearer KEY`: a 401 in OpenAI's shape otherwise.
async fn authorize(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    // The health checks and probes, the chat page (static; it sends the key the user gives it), and the metrics
    // where asked for, are open.
    let path = request.uri().path();
    if state.api_keys.is_empty()
        || matches!(path, "/health" | "/ready" | "/live")
        || (path == "/metrics" && state.public_metrics)
        || (path == "/" && request.method() == Method::GET)
    {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    // Compared in time independent of where a wrong key differs.
    let matches = |key: &String| {
        presented.is_some_and(|p| {
            p.len() == key.len() && p.bytes().zip(key.bytes()).fold(0, |d, (a, b)| d | (a ^ b)) == 0
        })
    };
    if state.api_keys.iter().any(matches) {
        return next.run(request).await;
    }
    let message = if presented.is_some() {
        "incorrect API key provided"
    } else {
        "this server needs an API key: send 'Authorization: Bearer KEY'"
    };
    let mut response = ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: Some("invalid_api_key"),
        ..ApiError::invalid(message, None)
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The served model as /v1/models lists it, with what clients size requests by.
fn model_json(state: &AppState) -> Value {
    let c = &state.model.config;
    json!({
        "id": state.name, "object": "model", "created": now(), "owned_by": "fulcrum",
        "max_model_len": state.engine.max_seq_len,
        "aliases": state.names.iter().filter(|n| **n != state.name).collect::<Vec<_>>(),
        "meta": {
            "architecture": c.arch_name, "n_ctx_train": c.context_length, "n_ctx": state.engine.max_seq_len,
            "n_vocab": state.model.tokenizer.vocab_size(), "n_embd": c.d_model, "n_layer": c.n_layers,
            "n_head": c.n_heads, "n_head_kv": c.n_kv_heads, "kv_cache_tokens": state.kv_tokens,
            "chat_template": state.model.chat_template().is_some(),
        },
    })
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_json(&state)]}))
}

/// `GET /v1/models/{id}`: the served model by any of its names, else 404 `model_not_found`.
async fn model_info(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> AppResult {
    check_model(&state, Some(&id))?;
    Ok(Json(model_json(&state)).into_response())
}

/// Parses a JSON object body whose fields are all among `fields`.
fn object_body(body: &[u8], fields: &[&str]) -> Result<serde_json::Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        ));
    };
    if let Some(key) = map.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("unknown field '{key}'"),
            Some(key.clone()),
        ));
    }
    Ok(map)
}

/// `POST /v1/embeddings`: each input's final hidden states pooled (mean, or the last token's with the extension
/// `"pooling": "last"`) and scaled to unit length (unless `"normalize": false`), as floats or base64. Runs one request
/// at a time on its own session beside the engine.
async fn embeddings(State(state): State<Arc<AppState>>, request: Request) -> AppResult {
    let Some(_flight) = state.drain.enter() else {
        return Err(ApiError::draining(state.drain_timeout));
    };
    let body = read_body(&state, request).await?;
    let req = request::parse_embeddings(&body)?;
    check_model(&state, req.model.as_deref())?;
    let vocab = state.model.config.vocab_size;
    let inputs: Vec<Vec<u32>> = req
        .input
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let ids = match input {
                PromptInput::Text(t) => prompt::tokenize(&state.model, t),
                PromptInput::Tokens(ids) => ids.clone(),
            };
            if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(ApiError::invalid(
                    format!("input {i} holds token {id}, outside this model's vocabulary of {vocab} tokens"),
                    Some("input".into()),
                ));
            }
            if ids.is_empty() || ids.len() > state.max_seq_len {
                return Err(ApiError::invalid(
                    format!(
                        "input {i} has {} tokens; this server embeds 1 to {} tokens per input",
                        ids.len(),
                        state.max_seq_len
                    ),
                    Some("input".into()),
                ));
            }
            Ok(ids)
        })
        .collect::<Result<_, _>>()?;
    let _turn = state
        .side_runs
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("the embedding runner has stopped"))?;
    let tokens: usize = inputs.iter().map(Vec::len).sum();
    let (shared, pooling, normalize) = (state.clone(), req.pooling, req.normalize);
    let vectors = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<f32>>, String> {
        let longest = inputs.iter().map(Vec::len).max().unwrap_or(1);
        let mut session = Session::new(
            shared.model.clone(),
            longest,
            shared.threads,
            fulcrum_core::session::DEFAULT_BATCH,
        )
        .map_err(|e| e.to_string())?;
        inputs
            .iter()
            .map(|ids| {
                fulcrum_engine::embeddings::embed(&mut session, ids, pooling, normalize)
                    .map_err(|e| e.to_string())
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal(format!("the embedding run failed: {e}")))?
    .map_err(ApiError::internal)?;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if req.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": state.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

/// `POST /tokenize`: a text (`content`, llama.cpp's name, or `prompt`, vLLM's) or a conversation (`messages`, through
/// the chat template) to token ids, as the completion endpoints would tokenize it; `with_pieces` adds each token's text.
async fn tokenize(State(state): State<Arc<AppState>>, request: Request) -> AppResult {
    let body = read_body(&state, request).await?;
    let map = object_body(
        &body,
        &[
            "content",
            "prompt",
            "messages",
            "model",
            "add_special",
            "add_special_tokens",
            "with_pieces",
            "add_generation_prompt",
        ],
    )?;
    check_model(&state, map.get("model").and_then(Value::as_str))?;
    let bool_field = |key: &str, default: bool| match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(
            format!("'{key}' must be a boolean"),
            Some(key.into()),
        )),
    };
    let add_special = bool_field("add_special", true)? && bool_field("add_special_tokens", true)?;
    let with_pieces = bool_field("with_pieces", false)?;
    let tokens = if let Some(messages) = map.get("messages") {
        let chat = json!({"messages": messages}).to_string();
        let Prompt::Chat(messages) = request::parse(chat.as_bytes(), true)?.prompt else {
            unreachable!("a chat request has messages")
        };
        let generation_prompt = bool_field("add_generation_prompt", true)?;
        prompt::tokenize_chat(
            &state.model,
            &state.template,
            &messages,
            &[],
            generation_prompt,
        )
        .map_err(|e| ApiError::invalid(format!("chat template: {e}"), Some("messages".into())))?
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages".into())))?
    } else {
        let text =
            match map.get("content").or_else(|| map.get("prompt")) {
                Some(Value::String(t)) => t,
                _ => return Err(ApiError::invalid(
                    "give the text to tokenize as a string 'content' (or 'prompt'), or 'messages'",
                    Some("content".into()),
                )),
            };
        if add_special {
            prompt::tokenize(&state.model, text)
        } else {
            state.model.tokenizer.encode(text, false, true)
        }
    };
    let listed: Vec<Value> = if with_pieces {
        tokens
            .iter()
            .map(|&id| json!({"id": id, "piece": generation::token_text(&state.model, id)}))
            .collect()
    } else {
        tokens.iter().map(|&id| json!(id)).collect()
    };
    Ok(Json(
        json!({"tokens": listed, "count": tokens.len(), "max_model_len": state.engine.max_seq_len}),
    )
    .into_response())
}

/// `POST /detokenize`: token ids to text (`content`, llama.cpp's name, and `prompt`, vLLM's).
async fn detokenize(State(state): State<Arc<AppState>>, request: Request) -> AppResult {
    let body = read_body(&state, request).await?;
    let map = object_body(&body, &["tokens", "model"])?;
    check_model(&state, map.get("model").and_then(Value::as_str))?;
    let vocab = state.model.tokenizer.vocab_size();
    let tokens: Vec<u32> = match map.get("tokens") {
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|id| {
                id.as_u64()
                    .filter(|&id| id < vocab as u64)
                    .map(|id| id as u32)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("'tokens' must be token ids from 0 to {}", vocab - 1),
                    Some("tokens".into()),
                )
            })?,
        _ => {
            return Err(ApiError::invalid(
                "'tokens' must be an array of token ids",
                Some("tokens".into()),
            ))
        }
    };
    let text = state.model.tokenizer.decode(&tokens, true);
    Ok(Json(json!({"content": text, "prompt": text})).into_response())
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
    for &(name, help, kind, v) in &series {
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
    let histograms = [
        (
            "time_to_first_token_seconds",
            "Time to first token.",
            m.ttft.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ),
        (
            "time_per_output_token_seconds",
            "Time between tokens.",
            m.tbt.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ),
        (
            "e2e_request_latency_seconds",
            "Time from a request's submission to its end.",
            m.e2e.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        ),
    ];
    let finished = m
        .finished_by_reason
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    request_success(&mut out, "fulcrum_", "", &finished);
    for (name, help, h) in &histograms {
        histogram(&mut out, &format!("fulcrum_{name}"), help, "", h);
    }
    vllm_metrics(&state, &series, &histograms, &finished, &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// The series that routers read from vLLM under `vllm:` and the same name (Fulcrum's names follow vLLM's).
const VLLM_MIRRORED: &[&str] = &[
    "num_requests_waiting",
    "num_requests_running",
    "kv_cache_usage_perc",
    "prompt_tokens_total",
    "generation_tokens_total",
    "num_preemptions_total",
    "prefix_cache_queries_total",
    "prefix_cache_hits_total",
];

/// The metrics under the names routers read from vLLM by default (the Gateway API Inference Extension's endpoint
/// picker, llm-d, the SGLang router), labelled with the served model's name as vLLM labels them: the mirrored
/// series and histograms (the time between tokens also as vLLM's newer `inter_token_latency_seconds`), the cache
/// configuration and an empty LoRA report.
fn vllm_metrics(
    state: &AppState,
    series: &[(&str, &str, &str, f64)],
    histograms: &[(&str, &str, engine::Histogram)],
    finished: &std::collections::BTreeMap<&'static str, u64>,
    out: &mut String,
) {
    let label = format!(
        "model_name=\"{}\"",
        state.name.replace('\\', "\\\\").replace('"', "\\\"")
    );
    let mut one = |name: &str, help: &str, kind: &str, labels: &str, v: f64| {
        out.push_str(&format!(
            "# HELP vllm:{name} {help}\n# TYPE vllm:{name} {kind}\nvllm:{name}{{{labels}}} {v}\n"
        ));
    };
    for &(name, help, kind, v) in series.iter().filter(|s| VLLM_MIRRORED.contains(&s.0)) {
        one(name, help, kind, &label, v);
    }
    one(
        "cache_config_info",
        "KV cache configuration.",
        "gauge",
        &format!(
            "{label},block_size=\"{BLOCK_SIZE}\",num_gpu_blocks=\"{}\",num_cpu_blocks=\"0\",cache_dtype=\"f16\",enable_prefix_caching=\"True\"",
            state.kv_tokens / BLOCK_SIZE
        ),
        1.0,
    );
    // No LoRA adapters: present, empty, as vLLM reports it without adapters.
    one(
        "lora_requests_info",
        "Running and waiting LoRA adapters.",
        "gauge",
        "running_lora_adapters=\"\",waiting_lora_adapters=\"\",max_lora=\"0\"",
        now() as f64,
    );
    request_success(out, "vllm:", &format!("{label},"), finished);
    for (name, help, h) in histograms {
        histogram(out, &format!("vllm:{name}"), help, &label, h);
        if *name == "time_per_output_token_seconds" {
            histogram(out, "vllm:inter_token_latency_seconds", help, &label, h);
        }
    }
}

/// `request_success_total` under `prefix`, one series per way a request ended (`labels` go first, each followed by a
/// comma); the three usual reasons are always present.
fn request_success(
    out: &mut String,
    prefix: &str,
    labels: &str,
    finished: &std::collections::BTreeMap<&'static str, u64>,
) {
    out.push_str(&format!(
        "# HELP {prefix}request_success_total Requests ended, by finished_reason (stop, length, abort, error).\n# TYPE {prefix}request_success_total counter\n"
    ));
    const USUAL: [&str; 3] = ["stop", "length", "abort"];
    let mut reasons = USUAL.to_vec();
    reasons.extend(finished.keys().filter(|k| !USUAL.contains(k)));
    for reason in reasons {
        let n = finished.get(reason).copied().unwrap_or(0);
        out.push_str(&format!(
            "{prefix}request_success_total{{{labels}finished_reason=\"{reason}\"}} {n}\n"
        ));
    }
}

/// Histogram `name` in Prometheus' text format, its series labelled with `labels` (`a="b",…`; empty: none).
fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: &engine::Histogram) {
    let (with, alone) = if labels.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{labels},"), format!("{{{labels}}}"))
    };
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
    for (b, c) in h.bounds.iter().zip(&h.counts) {
        out.push_str(&format!("{name}_bucket{{{with}le=\"{b}\"}} {c}\n"));
    }
    let total = h.counts.last().copied().unwrap_or(0);
    out.push_str(&format!(
        "{name}_bucket{{{with}le=\"+Inf\"}} {total}\n{name}_sum{alone} {}\n{name}_count{alone} {total}\n",
        h.sum
    ));
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

/// One generation to run for a request: a prompt and the choice's seed.
struct Job {
    prompt: Arc<Vec<u32>>,
    seed: u64,
    /// Whether this is its prompt's first choice (whose prompt tokens the usage counts, and which is prefilled
    /// before the others so that they find its KV in the prefix cache).
    first: bool,
}

async fn handle(state: Arc<AppState>, request: Request, chat: bool) -> AppResult {
    let Some(flight) = state.drain.enter() else {
        return Err(ApiError::draining(state.drain_timeout));
    };
    let body = read_body(&state, request).await?;
    let req = request::parse(&body, chat)?;
    check_model(&state, req.model.as_deref())?;
    let field = if chat { "messages" } else { "prompt" };
    let tok = &state.model.tokenizer;
    let vocab = tok.vocab_size();
    // With `tool_choice: "none"` the model is not shown the tools at all.
    let tooling = !req.tools.is_empty() && req.tool_choice != ToolChoice::None;
    let shown: &[Tool] = if tooling { &req.tools } else { &[] };
    let syntax = state.template.tool_syntax();
    // Messages' content is tokenized as plain text: only the template's markup becomes control tokens.
    let prompts: Vec<Vec<u32>> = match &req.prompt {
        Prompt::Chat(messages) => vec![prompt::tokenize_chat(
            &state.model,
            &state.template,
            messages,
            shown,
            true,
        )
        .map_err(|e| ApiError::invalid(format!("chat template: {e}"), Some("messages".into())))?
        .map_err(|e| ApiError::invalid(e.to_string(), Some("messages".into())))?],
        Prompt::Completion(inputs) => inputs
            .iter()
            .map(|input| match (input, &req.suffix) {
                (PromptInput::Text(t), Some(suffix)) => {
                    prompt::fill_in_the_middle(&state.model, t, suffix).ok_or_else(|| {
                        ApiError::invalid(
                            "this model has no fill-in-the-middle tokens, so 'suffix' cannot be used",
                            Some("suffix".into()),
                        )
                    })
                }
                (PromptInput::Tokens(_), Some(_)) => Err(ApiError::invalid(
                    "'suffix' needs a text prompt",
                    Some("suffix".into()),
                )),
                (PromptInput::Text(t), None) => Ok(prompt::tokenize(&state.model, t)),
                (PromptInput::Tokens(ids), None) => match ids.iter().find(|&&id| id as usize >= vocab) {
                    Some(id) => Err(ApiError::invalid(
                        format!("the prompt holds token {id}, outside this model's vocabulary of {vocab} tokens"),
                        Some("prompt".into()),
                    )),
                    None => Ok(ids.clone()),
                },
            })
            .collect::<Result<_, _>>()?,
    };
    let limit = state.engine.max_seq_len;
    for prompt in &prompts {
        if prompt.is_empty() {
            return Err(ApiError::invalid("the prompt is empty", Some(field.into())));
        }
        if prompt.len() >= limit {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    format!(
                        "the prompt has {} tokens; this server's context is {limit} tokens (prompt and output)",
                        prompt.len()
                    ),
                    Some(field.into()),
                )
            });
        }
    }
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
    check_spec(&state, &spec)?;
    // A required or named call is forced by a grammar of the tool-call syntax over the functions' schemas.
    let forced = call_grammar(
        syntax,
        shown,
        &req.tool_choice,
        req.parallel_tool_calls,
        |text| tok.token_id(text),
    );
    let format = match (&req.constraint, forced) {
        (Some((param, spec)), _) => Some(compile_format(&state, param, spec).await?),
        (None, Some(grammar)) => {
            Some(compile_format(&state, "tool_choice", &ConstraintSpec::Lark(grammar)).await?)
        }
        (None, None) => None,
    };
    // Each prompt's choices are numbered together (OpenAI's index = prompt × n + choice); with best_of, `best_of`
    // run per prompt and the best `n` are kept.
    let per_prompt = req.best_of;
    let jobs: Vec<Job> = prompts
        .into_iter()
        .flat_map(|p| {
            let p = Arc::new(p);
            (0..per_prompt).map(move |j| (p.clone(), j))
        })
        .map(|(prompt, j)| Job {
            prompt,
            seed: req.sampler.seed.wrapping_add(j as u64),
            first: j == 0,
        })
        .collect();
    let echo: Vec<Echo> = match (req.echo, req.logprobs) {
        (false, _) => Vec::new(),
        (true, None) => jobs
            .iter()
            .map(|j| Echo {
                text: tok.decode(&j.prompt, false),
                logprobs: Vec::new(),
            })
            .collect(),
        (true, Some(top)) => {
            let scored = score_prompts(&state, &jobs, top).await?;
            jobs.iter()
                .zip(scored)
                .map(|(j, logprobs)| Echo {
                    text: tok.decode(&j.prompt, false),
                    logprobs,
                })
                .collect()
        }
    };
    // A reasoning model's thinking goes to `reasoning_content`; its template may open it in the generation prompt.
    let thinking = (chat
        && req.separate_reasoning
        && fulcrum_engine::reasoning::template_thinks(state.model.chat_template()))
    .then(|| {
        jobs.first().is_some_and(|j| {
            let tail = &j.prompt[j.prompt.len().saturating_sub(4)..];
            tok.decode(tail, true).trim_end().ends_with("<think>")
        })
    });
    let ranked = req.best_of > req.n;
    // best_of ranks choices by their tokens' log-probabilities, so they are computed even when not asked for.
    let logprobs = match (req.logprobs, ranked) {
        (None, true) => Some(0),
        (l, _) => l,
    };
    // A chat in the plain fallback format ends where the model would begin the next turn.
    let mut stops = req.stop.clone();
    if chat && state.template.is_fallback() {
        stops.extend(fulcrum_engine::chat::FALLBACK_TURN_MARKERS.map(String::from));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut cancels: Vec<Option<Cancel>> = Vec::with_capacity(jobs.len());
    let mut prefilled = None;
    for (index, job) in jobs.iter().enumerate() {
        // A prompt's other choices wait until its first is prefilled: they then share its KV through the prefix cache.
        if !job.first {
            if let Some(done) = prefilled.take() {
                let _ = done.await;
            }
        }
        let params = Params {
            max_tokens: req
                .max_tokens
                .unwrap_or(usize::MAX)
                .min(limit - job.prompt.len()),
            sampler: SamplerConfig {
                seed: job.seed,
                ..req.sampler.clone()
            },
            logprobs,
            stop_at_eog: !req.ignore_eos,
            spec: spec.clone(),
            attention: req.attention.unwrap_or(state.attention),
            format: format.clone(),
        };
        let (done, wait) = tokio::sync::oneshot::channel();
        let siblings = job.first && per_prompt > 1;
        prefilled = siblings.then_some(wait);
        let sink = generation::Sink {
            index,
            // Some syntaxes mark calls with control tokens, so their text is kept for the parser.
            special: tooling || !req.skip_special_tokens,
            keep_stop: req.no_stop_trim,
            tx: tx.clone(),
            prefilled: siblings.then_some(done),
        };
        if req.max_tokens == Some(0) {
            // Nothing to generate (a harness scoring an echoed prompt): the choice ends at once.
            let usage = Usage {
                prompt_tokens: job.prompt.len(),
                ..Default::default()
            };
            let _ = sink.tx.send((
                index,
                Chunk::Done {
                    reason: "length",
                    usage,
                },
            ));
            cancels.push(None);
            continue;
        }
        cancels.push(submit(&state, job.prompt.clone(), params, stops.clone(), sink).await?);
    }
    drop(tx);
    let number = cancels
        .iter()
        .flatten()
        .next()
        .map_or_else(|| state.engine.reserve_id(), |c| c.id);
    let ids = Ids {
        id: format!("{}-{number}", if chat { "chatcmpl" } else { "cmpl" }),
        created: now(),
        model: state.name.clone(),
        chat,
        tools: tooling.then(|| Tooling {
            syntax,
            parallel: req.parallel_tool_calls,
            names: req.tools.iter().map(|t| t.name.clone()).collect(),
        }),
        thinking,
    };
    let totals = Totals::new(jobs.iter().map(|j| j.first).collect());
    if req.stream {
        let want_logprobs = req.logprobs.is_some();
        let stream = response::stream(
            ids,
            rx,
            echo,
            totals,
            req.include_usage,
            want_logprobs,
            (cancels, flight),
        );
        return Ok(Sse::new(stream).into_response());
    }
    let mut rx = rx;
    let mut totals = totals;
    let mut choices: Vec<Choice> = (0..jobs.len())
        .map(|index| Choice {
            index,
            text: String::new(),
            logprobs: Vec::new(),
            reason: "stop",
        })
        .collect();
    while let Some((index, chunk)) = rx.recv().await {
        match chunk {
            Chunk::Delta { text, logprobs } => {
                choices[index].text.push_str(&text);
                choices[index].logprobs.extend(logprobs);
            }
            Chunk::Done { reason, usage } => {
                choices[index].reason = reason;
                totals.add(index, usage);
            }
            Chunk::Failed(message) => return Err(ApiError::internal(message)),
        }
    }
    for c in cancels.iter_mut().flatten() {
        c.done = true;
    }
    if ranked {
        // Per prompt, the `n` choices with the best mean log-probability per token, renumbered.
        let mut kept = Vec::with_capacity(choices.len() / per_prompt * req.n);
        let mut echo_kept = Vec::new();
        let mut rest = choices.into_iter();
        let mut prompt = 0;
        loop {
            let mut group: Vec<Choice> = rest.by_ref().take(per_prompt).collect();
            if group.is_empty() {
                break;
            }
            group.sort_by(|a, b| b.mean_logprob().total_cmp(&a.mean_logprob()));
            for (j, mut c) in group.into_iter().take(req.n).enumerate() {
                if let Some(e) = echo.get(c.index) {
                    echo_kept.push(e.clone());
                }
                c.index = prompt * req.n + j;
                kept.push(c);
            }
            prompt += 1;
        }
        let body = ids.full(&kept, req.logprobs.is_some(), &echo_kept, totals.usage);
        return Ok(Json(body).into_response());
    }
    Ok(Json(ids.full(&choices, req.logprobs.is_some(), &echo, totals.usage)).into_response())
}

/// The log-probabilities of each job's prompt tokens with `top` alternatives (`echo` with `logprobs`): one run at a
/// time on its own session beside the engine, each distinct prompt scored once.
async fn score_prompts(
    state: &Arc<AppState>,
    jobs: &[Job],
    top: usize,
) -> Result<Vec<Vec<TokenLogprob>>, ApiError> {
    let prompts: Vec<Arc<Vec<u32>>> = jobs.iter().map(|j| j.prompt.clone()).collect();
    let _turn = state
        .side_runs
        .acquire()
        .await
        .map_err(|_| ApiError::unavailable("the scoring runner has stopped"))?;
    let shared = state.clone();
    tokio::task::spawn_blocking(move || -> Result<Vec<Vec<TokenLogprob>>, String> {
        let longest = prompts.iter().map(|p| p.len()).max().unwrap_or(1);
        let mut session = Session::new(
            shared.model.clone(),
            longest,
            shared.threads,
            fulcrum_engine::eval::SCORE_BATCH,
        )
        .map_err(|e| e.to_string())?;
        let mut out: Vec<Vec<TokenLogprob>> = Vec::with_capacity(prompts.len());
        for (i, prompt) in prompts.iter().enumerate() {
            if let Some(earlier) = prompts[..i].iter().position(|p| Arc::ptr_eq(p, prompt)) {
                out.push(out[earlier].clone());
                continue;
            }
            session.truncate(0);
            let scores = fulcrum_engine::eval::prompt_logprobs(&mut session, prompt, top)
                .map_err(|e| e.to_string())?;
            // The first token has no log-probability (NaN, written as null).
            out.push(
                prompt
                    .iter()
                    .zip(&scores)
                    .map(|(&t, s)| match s {
                        Some(s) => generation::token_logprob(&shared.model, t, s),
                        None => TokenLogprob {
                            token: generation::token_text(&shared.model, t),
                            logprob: f32::NAN,
                            top: Vec::new(),
                        },
                    })
                    .collect(),
            );
        }
        Ok(out)
    })
    .await
    .map_err(|e| ApiError::internal(format!("scoring the prompt failed: {e}")))?
    .map_err(ApiError::internal)
}

/// A request's `model` must be the served model (by any of its names) when given.
fn check_model(state: &AppState, model: Option<&str>) -> Result<(), ApiError> {
    match model {
        Some(m) if !m.is_empty() && !state.names.iter().any(|n| n == m) => Err(ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            param: Some("model".into()),
            ..ApiError::invalid(
                format!(
                    "the model '{m}' does not exist here; this server serves '{}'",
                    state.name
                ),
                None,
            )
        }),
        _ => Ok(()),
    }
}

/// The speculation asked for must fit the model and the server's draft model.
fn check_spec(state: &AppState, spec: &Speculation) -> Result<(), ApiError> {
    spec.check(state.model.config.n_layers)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("spec".into())))?;
    if !spec.needs_draft_model() {
        return Ok(());
    }
    let known =
        |(name, stem): &(String, String)| spec.draft_model().is_none_or(|n| n == name || n == stem);
    match &state.draft {
        None => Err(ApiError::invalid(
            "this server has no draft model (start it with --draft-model NAME); try \"del\" or \"lookup\"",
            Some("spec".into()),
        )),
        Some(d) if !known(d) => Err(ApiError::invalid(
            format!("this server drafts with {}, not {}", d.0, spec.draft_model().unwrap_or_default()),
            Some("spec".into()),
        )),
        Some(_) => Ok(()),
    }
}

/// Submits one choice to the engine and relays its events to `sink`; `None` when there is nothing to generate (the
/// choice is answered at once, empty, cut by its length).
async fn submit(
    state: &Arc<AppState>,
    prompt: Arc<Vec<u32>>,
    params: Params,
    stops: Vec<String>,
    sink: generation::Sink,
) -> Result<Option<Cancel>, ApiError> {
    let n_prompt = prompt.len();
    if params.max_tokens == 0 {
        let usage = Usage {
            prompt_tokens: n_prompt,
            ..Usage::default()
        };
        let _ = sink.tx.send((
            sink.index,
            Chunk::Done {
                reason: "length",
                usage,
            },
        ));
        return Ok(None);
    }
    // Submitting waits for the engine's next iteration boundary: on a blocking thread, which then relays the
    // request's events, so the async workers stay free for other connections, /health and /metrics.
    let (submitted, answer) = tokio::sync::oneshot::channel();
    let relay_state = state.clone();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        match relay_state.engine.submit((*prompt).clone(), params) {
            Err(e) => {
                let _ = submitted.send(Err(e));
            }
            Ok((id, events)) => {
                if submitted.send(Ok(id)).is_err() {
                    // The client went away while it was being submitted.
                    relay_state.engine.abort(id);
                    return;
                }
                let reason = generation::relay(
                    &relay_state.model,
                    &relay_state.engine,
                    id,
                    events,
                    &stops,
                    n_prompt,
                    sink,
                );
                relay_state
                    .engine
                    .metrics
                    .count_finished(reason, started.elapsed().as_secs_f64());
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
    Ok(Some(Cancel {
        engine: state.engine.clone(),
        id,
        done: false,
    }))
}

/// `GET /health`: 200 while the engine runs, 503 once it has stopped or while the server drains for shutdown.
/// `GET /live`: liveness for an orchestrator: 200 while the engine runs, draining included (a draining server must
/// not be restarted; `/health` and `/ready` tell routers to stop sending it work).
async fn live(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.is_alive() {
        Json(json!({"status": "alive"})).into_response()
    } else {
        ApiError::unavailable("the inference engine has stopped").into_response()
    }
}

/// `GET /health` and `GET /ready`: readiness: 200 when the model is loaded and the server admits requests, 503 while
/// draining or when the engine has stopped.
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
