//! One module per block format: its `#[repr(C)]` layout (cited from ggml-common.h), the scalar reference
//! dequantizer, quantizer and dot product. These are the ground truth the SIMD kernels are tested against.

pub mod float;
pub mod k_scales;
pub mod nf4;
pub mod nf4_dot;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;
