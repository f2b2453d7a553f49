//! fulcrum-tokenizer
