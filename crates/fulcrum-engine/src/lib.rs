//! fulcrum-engine: sampling, chat templates and the model registry.

pub mod blocks;
pub mod chat;
pub mod models;
pub mod sampler;
pub mod scheduler;
