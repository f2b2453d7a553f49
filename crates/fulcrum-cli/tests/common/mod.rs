//! Helpers of the CLI's integration tests: the core's (the default models, llama.cpp's golden outputs) and the
//! binary under test.

#![allow(dead_code)]

#[path = "../../../fulcrum-core/tests/common/mod.rs"]
mod shared;
#[allow(unused_imports)]
pub use shared::*;

use std::path::PathBuf;

/// A port free on 127.0.0.1 now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `fulcrum` binary built for this test run.
pub fn fulcrum_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fulcrum"))
}
