//! DELTA (papers.md §4): sparse attention for long decodes that keeps the whole KV cache. A few layers attend to
//! every position; a full layer whose successor is not full is a *planner*, which scores the context's 16-token
//! pages from its own attention probabilities (per token the largest over every query head, summed over the page),
//! keeps the top pages plus the most recent ones, and hands that set, in logical order, to every *sparse* layer up
//! to the next planner, which attend only to those pages. Every layer still writes its keys and values to the full
//! cache. Rows at or under the budget, prefill, and sliding-window layers attend densely.
//!
//! The rule this module keeps: selection is per query row. A verification row of a speculative step selects with
//! its own query exactly as the same token decoded alone would, so speculation stays lossless under DELTA.

pub mod pass;
mod select;

pub use pass::DeltaScratch;
pub use select::{page_scores, select_pages};

use std::fmt;
use std::str::FromStr;

/// How a sequence's decode steps attend: to every position, or DELTA's selected pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionMode {
    /// Every layer attends to the whole context.
    #[default]
    Dense,
    /// DELTA's layer-aware sparse attention.
    Delta,
}

impl FromStr for AttentionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<AttentionMode, String> {
        match s {
            "dense" => Ok(AttentionMode::Dense),
            "delta" => Ok(AttentionMode::Delta),
            _ => Err(format!(
                "unknown attention mode '{s}' (expected 'dense' or 'delta')"
            )),
        }
    }
}

impl fmt::Display for AttentionMode {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            AttentionMode::Dense => "dense",
            AttentionMode::Delta => "delta",
        })
    }
}

/// The full-attention layers of the paper's 28-layer models; other depths scale them.
pub const PAPER_FULL_LAYERS: [usize; 5] = [0, 1, 2, 14, 22];

/// DELTA's settings: which layers attend fully, the page size, the budget of selected pages and the recency window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaConfig {
    /// Layers that attend to the whole context, ascending; the first layer is always one.
    pub full_layers: Vec<usize>,
    /// Tokens per page (the serving engine's KV block).
    pub page: usize,
    /// Pages a sparse layer attends to; a row with no more pages than this attends densely.
    pub budget: usize,
    /// The most recent pages, always selected.
    pub recent: usize,
}

/// What a layer does under DELTA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerRole {
    /// Attends to the whole context.
    Full,
    /// Attends to the whole context and selects the pages of the sparse layers after it.
    Planner,
    /// Attends to the pages its planner selected.
    Sparse,
}

impl DeltaConfig {
    /// The paper's settings for a model of `n_layers` layers: full layers 0, 1, 2, 14 and 22 of 28, scaled by relative
    /// depth; 16-token pages, a budget of 64 pages, the last 8 always kept.
    pub fn for_model(n_layers: usize) -> DeltaConfig {
        let mut full_layers: Vec<usize> = PAPER_FULL_LAYERS
            .iter()
            .map(|&l| if l < 3 { l } else { (l * n_layers + 14) / 28 })
            .filter(|&l| l < n_layers)
            .collect();
        full_layers.dedup();
        DeltaConfig {
            full_layers,
            page: 16,
            budget: 64,
            recent: 8,
        }
    }

    /// Checks the settings against a model of `n_layers` layers; the error names the setting.
    pub fn check(&self, n_layers: usize) -> Result<(), String> {
        if let Some(&l) = self.full_layers.iter().find(|&&l| l >= n_layers) {
            return Err(format!(
                "delta layers: layer {l} is outside the model's {n_layers} layers (0 to {})",
                n_layers.saturating_sub(1)
            ));
        }
        if self.full_layers.first() != Some(&0) {
            return Err("delta layers: layer 0 must be a full-attention layer (sparse layers use the selection \
                        of a full layer before them)"
                .into());
        }
        if self.full_layers.windows(2).any(|w| w[0] >= w[1]) {
            return Err("delta layers: list each layer once, in ascending order".into());
        }
        if self.page == 0 {
            return Err("delta page size must be at least 1 token".into());
        }
        if self.budget == 0 {
            return Err("delta budget must be at least 1 page".into());
        }
        if self.recent > self.budget {
            return Err(format!(
                "delta recency window ({} pages) exceeds the budget ({} pages)",
                self.recent, self.budget
            ));
        }
        Ok(())
    }

    /// Parses a comma-separated layer list, as `--delta-layers 0,1,2,14,22` gives it.
    pub fn parse_layers(text: &str) -> Result<Vec<usize>, String> {
        let mut layers = text
            .split(',')
            .map(|x| {
                x.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("delta layers: '{}' is not a layer number", x.trim()))
            })
            .collect::<Result<Vec<usize>, String>>()?;
        layers.sort_unstable();
        layers.dedup();
        Ok(layers)
    }

    /// The role of layer `l`.
    pub fn role(&self, l: usize) -> LayerRole {
        if self.full_layers.binary_search(&l).is_err() {
            LayerRole::Sparse
        } else if self.full_layers.binary_search(&(l + 1)).is_ok() {
            LayerRole::Full
        } else {
            LayerRole::Planner
        }
    }

    /// Whether a query at position `pos` has more pages than the budget (and so attends sparsely).
    pub fn over_budget(&self, pos: usize) -> bool {
        pos / self.page + 1 > self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_layers_for_28_and_scaled_for_other_depths() {
        assert_eq!(DeltaConfig::for_model(28).full_layers, [0, 1, 2, 14, 22]);
        assert_eq!(DeltaConfig::for_model(24).full_layers, [0, 1, 2, 12, 19]);
        assert_eq!(DeltaConfig::for_model(2).full_layers, [0, 1]);
        let c = DeltaConfig::for_model(28);
        let roles: Vec<LayerRole> = (0..5).map(|l| c.role(l)).collect();
        use LayerRole::*;
        assert_eq!(roles, [Full, Full, Planner, Sparse, Sparse]);
        assert_eq!(c.role(14), Planner);
        assert_eq!(c.role(27), Sparse);
        assert!(c.check(28).is_ok());
    }

    #[test]
    fn bad_settings_name_what_is_wrong() {
        let mut c = DeltaConfig::for_model(28);
        assert!(c.check(20).unwrap_err().contains("layer 22"));
        c.budget = 0;
        assert!(c.check(28).unwrap_err().contains("budget"));
        c = DeltaConfig::for_model(28);
        c.full_layers = vec![1, 5];
        assert!(c.check(28).unwrap_err().contains("layer 0"));
        assert!(DeltaConfig::parse_layers("0,x")
            .unwrap_err()
            .contains("'x'"));
        assert_eq!(
            DeltaConfig::parse_layers("14, 0,2,1,2").unwrap(),
            [0, 1, 2, 14]
        );
        assert!("sparse".parse::<AttentionMode>().is_err());
        assert_eq!("delta".parse::<AttentionMode>(), Ok(AttentionMode::Delta));
    }

    #[test]
    fn budget_counts_pages_of_the_query_position() {
        let c = DeltaConfig::for_model(28);
        assert!(!c.over_budget(64 * 16 - 1));
        assert!(c.over_budget(64 * 16));
    }
}
