//! fulcrum-core
