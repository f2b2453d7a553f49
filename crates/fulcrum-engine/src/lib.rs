//! fulcrum-engine: everything around a forward pass that the CLI and the server share: sampling, chat templates and
//! prompts, a session's generation loop, speculative decoding (one driver for every caller), and the serving engine
//! (block manager, scheduler, engine loop).

pub mod blocks;
pub mod chat;
pub mod constraint;
pub mod embeddings;
pub mod engine;
pub mod eval;
pub mod generation;
pub mod latency;
pub mod prompt;
pub mod reasoning;
pub mod sampler;
pub mod scheduler;
pub mod spec;
pub mod tools;
