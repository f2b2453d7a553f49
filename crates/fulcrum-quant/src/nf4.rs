//! Which NF4 dot product [`crate::vec_dot`] runs, and each path on its own for tests and benchmarks.
//!
//! NF4 weights have two dot products: the exact one against f32 activations (the f32 table in two registers) and
//! the int8 one against Q8_0 activations (the table rounded to int8 in a byte shuffle). The choice is made once per
//! process from `FULCRUM_NF4_DOT` (`exact`, the default, or `int8`) and [`crate::vec_dot_type`] follows it, so the
//! model code, which quantizes activations to whatever `vec_dot_type` says, needs no switch of its own.

use crate::formats::nf4_dot;
use crate::GgmlType;
use std::sync::OnceLock;

/// A dot product of one NF4 row with one activation row of the path's [`Nf4Dot::activation_type`].
pub type Nf4DotFn = fn(&[u8], &[u8]) -> f32;

/// The NF4 dot-product paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nf4Dot {
    /// Exact NF4 values against f32 activations.
    Exact,
    /// NF4 values rounded to int8 against Q8_0 activations.
    Int8,
}

impl Nf4Dot {
    /// The activation type the path dots against.
    pub fn activation_type(self) -> GgmlType {
        match self {
            Nf4Dot::Exact => GgmlType::F32,
            Nf4Dot::Int8 => GgmlType::Q8_0,
        }
    }

    /// The scalar reference of the path.
    pub fn scalar(self) -> Nf4DotFn {
        match self {
            Nf4Dot::Exact => nf4_dot::vec_dot_f32,
            Nf4Dot::Int8 => nf4_dot::vec_dot_q8_0,
        }
    }

    /// The SIMD kernel of the path, if this CPU can run one (whatever `FULCRUM_FORCE_SCALAR` says).
    pub fn simd(self) -> Option<Nf4DotFn> {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Nf4Dot::Exact => crate::x86::nf4::exact(),
                Nf4Dot::Int8 => crate::x86::nf4::int8(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// The path's name as `FULCRUM_NF4_DOT` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Nf4Dot::Exact => "exact",
            Nf4Dot::Int8 => "int8",
        }
    }
}

/// The path used for NF4 weights in this process: `FULCRUM_NF4_DOT=int8` picks [`Nf4Dot::Int8`], anything else
/// [`Nf4Dot::Exact`].
pub fn selected() -> Nf4Dot {
    static SELECTED: OnceLock<Nf4Dot> = OnceLock::new();
    *SELECTED.get_or_init(|| match std::env::var("FULCRUM_NF4_DOT").as_deref() {
        Ok("int8") => Nf4Dot::Int8,
        _ => Nf4Dot::Exact,
    })
}

/// The benchmark baseline: a branchy per-element decode, then a plain f32 dot (f32 activations).
pub fn branchy_dot() -> Nf4DotFn {
    nf4_dot::vec_dot_branchy
}
