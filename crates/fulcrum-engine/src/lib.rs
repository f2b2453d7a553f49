//! fulcrum-engine: sampling, chat templates, the serving engine (block manager, scheduler, engine loop), and
//! speculative decoding.

pub mod blocks;
pub mod chat;
pub mod engine;
pub mod latency;
pub mod sampler;
pub mod scheduler;
pub mod spec;
