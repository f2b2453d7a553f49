//! Text embeddings from a generative model: its final hidden states (after the final norm) pooled over a text's
//! tokens, mean or last token, optionally scaled to unit length — what llama.cpp's `--embeddings` and vLLM's
//! embedding runner return for a decoder model.

use fulcrum_core::session::Session;
use fulcrum_core::ModelError;

/// How a text's token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The average over every token.
    Mean,
    /// The last token's state (what a causal model has read the whole text in).
    Last,
}

impl std::str::FromStr for Pooling {
    type Err = String;

    fn from_str(s: &str) -> Result<Pooling, String> {
        match s {
            "mean" => Ok(Pooling::Mean),
            "last" => Ok(Pooling::Last),
            _ => Err(format!("unknown pooling {s:?}: expected mean or last")),
        }
    }
}

/// Pools `hidden`, `(rows, d)` row-major, into one `d`-vector; with `normalize`, of unit Euclidean length.
pub fn pool(hidden: &[f32], d: usize, pooling: Pooling, normalize: bool) -> Vec<f32> {
    let rows = hidden.len() / d.max(1);
    let mut out = vec![0.0f32; d];
    if rows == 0 {
        return out;
    }
    match pooling {
        Pooling::Mean => {
            let mut sum = vec![0.0f64; d];
            for row in hidden.chunks_exact(d) {
                sum.iter_mut()
                    .zip(row)
                    .for_each(|(s, &v)| *s += f64::from(v));
            }
            out.iter_mut()
                .zip(&sum)
                .for_each(|(o, &s)| *o = (s / rows as f64) as f32);
        }
        Pooling::Last => out.copy_from_slice(&hidden[(rows - 1) * d..rows * d]),
    }
    if normalize {
        let norm = out
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        if norm > 0.0 {
            out.iter_mut()
                .for_each(|v| *v = (f64::from(*v) / norm) as f32);
        }
    }
    out
}

/// The embedding of `tokens` in a fresh run of `session` (its cache is cleared first).
pub fn embed(
    session: &mut Session,
    tokens: &[u32],
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<f32>, ModelError> {
    session.truncate(0);
    let d = session.model().config.d_model;
    let hidden = session.eval_hidden(tokens)?;
    Ok(pool(&hidden, d, pooling, normalize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_last_pooling_with_and_without_normalizing() {
        let hidden = [1.0, 2.0, 3.0, 6.0, 2.0, 0.0];
        assert_eq!(pool(&hidden, 2, Pooling::Mean, false), [2.0, 8.0 / 3.0]);
        assert_eq!(pool(&hidden, 2, Pooling::Last, false), [2.0, 0.0]);
        assert_eq!(pool(&hidden, 2, Pooling::Last, true), [1.0, 0.0]);
        let unit = pool(&[3.0, 4.0], 2, Pooling::Mean, true);
        assert!((unit[0] - 0.6).abs() < 1e-7 && (unit[1] - 0.8).abs() < 1e-7);
        assert_eq!(pool(&[], 2, Pooling::Mean, true), [0.0, 0.0]);
        assert_eq!("last".parse::<Pooling>(), Ok(Pooling::Last));
        assert!("cls".parse::<Pooling>().is_err());
    }
}
