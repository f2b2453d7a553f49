//! The shape of one attention call: head counts and widths, the score multiplier and the sliding window.

/// Shapes and arithmetic of one attention call.
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub head_dim_v: usize,
    /// Multiplier of q·k.
    pub scale: f32,
    /// Keys at distance ≥ window from the query are masked (sliding-window layers).
    pub window: Option<usize>,
}

impl AttentionShape {
    /// Positions a query at `pos` attends to: causal, and within the window on sliding layers.
    pub fn visible(&self, pos: usize) -> std::ops::Range<usize> {
        match self.window {
            Some(w) if pos + 1 > w => pos + 1 - w..pos + 1,
            _ => 0..pos + 1,
        }
    }
}
