//! Prompt lookup: draft the tokens that followed the latest earlier occurrence of the text's last few tokens.

/// Longest suffix (in tokens) that lookup tries to match first.
pub const MAX_NGRAM: usize = 4;
/// Shortest suffix it accepts.
pub const MIN_NGRAM: usize = 2;

/// Up to `max` tokens that followed the most recent earlier occurrence of the longest suffix of `history` (between
/// [`MIN_NGRAM`] and [`MAX_NGRAM`] tokens) found elsewhere in `history`; empty if none occurs.
pub fn propose(history: &[u32], max: usize, out: &mut Vec<u32>) {
    out.clear();
    if max == 0 {
        return;
    }
    let n = history.len();
    for len in (MIN_NGRAM..=MAX_NGRAM.min(n.saturating_sub(1))).rev() {
        let suffix = &history[n - len..];
        // The latest occurrence that ends before the suffix itself starts, searched backwards.
        let found = (0..n - len)
            .rev()
            .find(|&start| &history[start..start + len] == suffix);
        if let Some(start) = found {
            let follow = start + len;
            let end = (follow + max).min(n);
            out.extend_from_slice(&history[follow..end]);
            if !out.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(history: &[u32], max: usize) -> Vec<u32> {
        let mut out = Vec::new();
        propose(history, max, &mut out);
        out
    }

    #[test]
    fn continues_the_latest_match_of_the_longest_suffix() {
        // "1 2 3 9 ... 1 2 3 7 8 ... 2 3" → the suffix [2, 3] last occurred before 7 8.
        let h = [1, 2, 3, 9, 5, 1, 2, 3, 7, 8, 6, 2, 3];
        assert_eq!(lookup(&h, 2), vec![7, 8]);
        assert_eq!(lookup(&h, 10), vec![7, 8, 6, 2, 3]);
        // A longer suffix wins over a more recent short one.
        let h = [4, 5, 6, 10, 11, 5, 6, 12, 4, 5, 6];
        assert_eq!(lookup(&h, 1), vec![10]);
    }

    #[test]
    fn nothing_when_no_suffix_repeats() {
        assert!(lookup(&[1, 2, 3, 4, 5], 4).is_empty());
        assert!(lookup(&[1], 4).is_empty());
        assert!(lookup(&[], 4).is_empty());
        assert!(lookup(&[1, 2, 1, 2], 0).is_empty());
    }
}
