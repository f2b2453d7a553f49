//! fulcrum-quant
