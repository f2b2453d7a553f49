//! Speculative decoding: drafters propose tokens, the target checks them all in one batched forward pass, and the
//! output is exactly what plain decoding would give (greedy: token for token; sampling: in distribution).
//!
//! One driver serves every caller: [`step::run`] takes a batch of [`Lane`]s (every running sequence of the serving
//! engine, or the one sequence of `generate`), fills their drafts, verifies them in one forward pass, runs the
//! acceptance walk and lets each sequence's [`Policy`] learn. Where things are:
//!
//! | module | job |
//! |---|---|
//! | [`mode`] | [`Speculation`], the one `--spec`/`"spec"` type |
//! | [`policy`], [`rules`], [`controller`] | choosing the drafter and length per round (DEL's controller), learning |
//! | [`lookup`], [`early_exit`], [`draft_model`] | the drafters |
//! | [`step`], [`verify`], `shadow` | the driver, the acceptance math, DEL's shadow statistics |
//! | [`lane`] | what the driver works on |
//! | [`single`] | a [`Session`](fulcrum_core::Session)'s batch of one (`generate`) |

pub mod controller;
pub mod draft_model;
pub mod early_exit;
mod error;
pub mod lane;
pub mod lookup;
pub mod mode;
mod options;
pub mod policy;
pub mod rules;
mod shadow;
pub mod single;
mod stats;
pub mod step;
pub mod verify;

pub use controller::{Arm, Choice, Controller, CostUnits, Timings};
pub use draft_model::{check_vocabulary, step_ratio, DraftModel};
pub use error::SpecError;
pub use lane::{Lane, LaneResult, Runner, SpecState};
pub use mode::{Speculation, SPEC_SYNTAX};
pub use options::{default_exits, SpecOptions};
pub use policy::{Policy, Progress};
pub use rules::argmax_confidence;
pub use single::Speculator;
pub use stats::{fold_answer_len, ArmStats, Learned, SpecStats};
pub use step::{StepOptions, Verified};
