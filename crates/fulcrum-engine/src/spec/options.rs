//! The speculation driver's tunables and DEL's candidate exits.

/// Tunables of the speculative driver.
#[derive(Clone, Debug)]
pub struct SpecOptions {
    /// Exit layers (as layer counts) that DEL and auto consider; empty: spread over the depth.
    pub exits: Vec<usize>,
    /// Shadow tokens (every candidate exit's prediction, for its acceptance statistics) every this many rounds;
    /// 0 never. The current exit's statistics come from its own drafts every round.
    pub shadow_every: usize,
    /// Prompt tokens whose shadow predictions initialise the statistics. DEL uses 32; on a CPU each costs one
    /// classifier row per candidate exit (about 4.5 ms each for Qwen2.5-0.5B on two cores), so the default is 8.
    pub init_window: usize,
    /// A draft model not used for this many rounds is tried again for one round.
    pub probe_every: usize,
    /// DEL's γ_min: with 1 or more, DEL and auto always draft (once an exit has statistics).
    pub gamma_min: usize,
}

impl Default for SpecOptions {
    fn default() -> Self {
        SpecOptions {
            exits: Vec::new(),
            shadow_every: 4,
            init_window: 8,
            probe_every: 32,
            gamma_min: 0,
        }
    }
}

/// Exit layers spread over the depth of an `n_layers`-layer model: ¼, ⅜, ½, ⅝, ¾ and ⅞ of it.
pub fn default_exits(n_layers: usize) -> Vec<usize> {
    let mut exits: Vec<usize> = (2..=7)
        .map(|eighths| (n_layers * eighths + 4) / 8)
        .filter(|&e| e >= 1 && e < n_layers)
        .collect();
    exits.dedup();
    exits
}
