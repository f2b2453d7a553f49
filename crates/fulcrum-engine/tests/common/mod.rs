//! The engine's integration tests use the core's test helpers: the default models and llama.cpp's golden outputs.

#[path = "../../../fulcrum-core/tests/common/mod.rs"]
mod shared;
#[allow(unused_imports)]
pub use shared::*;
