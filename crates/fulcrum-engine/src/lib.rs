//! fulcrum-engine
