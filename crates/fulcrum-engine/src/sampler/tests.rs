use super::*;

fn sampler(config: SamplerConfig) -> Sampler {
    Sampler::new(config).expect("valid config")
}

/// Only the chain's truncation step under test: temperature 1, no other filter.
fn plain(seed: u64) -> SamplerConfig {
    SamplerConfig {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        seed,
        ..SamplerConfig::default()
    }
}

/// The set of ids the sampler can return, found by drawing many times.
fn reachable(config: SamplerConfig, logits: &[f32], recent: &[u32]) -> Vec<u32> {
    let mut s = sampler(config);
    let mut seen: Vec<u32> = (0..4000).map(|_| s.sample(logits, recent)).collect();
    seen.sort_unstable();
    seen.dedup();
    seen
}

#[test]
fn argmax_prefers_lowest_id_on_ties_and_ignores_nan() {
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(argmax(&[f32::NAN, -5.0, f32::NAN, -1.0]), 3);
    assert_eq!(argmax(&[f32::NAN, f32::NAN]), 0);
    assert_eq!(argmax(&[]), 0);
    assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
}

#[test]
fn greedy_is_argmax_including_ties() {
    let mut s = sampler(SamplerConfig::greedy());
    assert_eq!(s.sample(&[0.5, 2.0, 2.0, 1.0], &[]), 1);
    assert_eq!(s.sample(&[f32::NAN, 0.1, 0.3, 0.3], &[]), 2);
    let logits: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 1000) as f32).collect();
    assert_eq!(s.sample(&logits, &[]), argmax(&logits));
}

#[test]
fn top_k_one_is_argmax_at_any_temperature() {
    let config = SamplerConfig {
        top_k: 1,
        temperature: 5.0,
        ..SamplerConfig::default()
    };
    let logits = [0.0, 4.0, 4.0, 3.9, -1.0];
    assert_eq!(reachable(config, &logits, &[]), vec![1]);
}

#[test]
fn same_seed_gives_same_sequence_and_reseed_restarts_it() {
    let logits: Vec<f32> = (0..500).map(|i| ((i * 37) % 101) as f32 / 20.0).collect();
    let run = |s: &mut Sampler| -> Vec<u32> { (0..200).map(|_| s.sample(&logits, &[])).collect() };
    let mut a = sampler(SamplerConfig::default());
    let mut b = sampler(SamplerConfig::default());
    let first = run(&mut a);
    assert_eq!(first, run(&mut b));
    a.reseed(DEFAULT_SEED);
    assert_eq!(first, run(&mut a));
    let mut c = sampler(SamplerConfig {
        seed: 99,
        ..SamplerConfig::default()
    });
    assert_ne!(first, run(&mut c));
}

#[test]
fn draws_follow_the_softmax_distribution() {
    // Probabilities 0.1, 0.2, 0.3, 0.4 as logits ln(p) + an offset.
    let probabilities = [0.1f64, 0.2, 0.3, 0.4];
    let logits: Vec<f32> = probabilities
        .iter()
        .map(|p| (p.ln() + 3.0) as f32)
        .collect();
    let draws = 20_000;
    let mut counts = [0usize; 4];
    let mut s = sampler(plain(12345));
    for _ in 0..draws {
        counts[s.sample(&logits, &[]) as usize] += 1;
    }
    let chi_square: f64 = probabilities
        .iter()
        .zip(counts)
        .map(|(p, observed)| {
            let expected = p * draws as f64;
            (observed as f64 - expected).powi(2) / expected
        })
        .sum();
    // 3 degrees of freedom: P(chi2 > 30) < 1e-5. A wrong softmax (e.g. p ∝ logit) gives thousands.
    assert!(chi_square < 30.0, "counts {counts:?}, chi2 {chi_square}");
}

#[test]
fn temperature_sharpens_the_distribution() {
    let logits = [0.0f32, 1.0];
    let mut cold = sampler(SamplerConfig {
        temperature: 0.25,
        ..plain(5)
    });
    let ones = (0..10_000)
        .filter(|_| cold.sample(&logits, &[]) == 1)
        .count();
    // p(1) = 1 / (1 + e^-4) ≈ 0.982.
    assert!((9_700..9_950).contains(&ones), "{ones}");
}

#[test]
fn top_p_keeps_smallest_set_reaching_the_mass() {
    // Probabilities 0.5, 0.25, 0.15, 0.1 (ids shuffled so the order is not the id order).
    let p = [0.15f64, 0.5, 0.1, 0.25];
    let logits: Vec<f32> = p.iter().map(|p| p.ln() as f32).collect();
    let with = |top_p| SamplerConfig { top_p, ..plain(1) };
    assert_eq!(reachable(with(0.4), &logits, &[]), vec![1]);
    assert_eq!(reachable(with(0.6), &logits, &[]), vec![1, 3]);
    assert_eq!(reachable(with(0.8), &logits, &[]), vec![0, 1, 3]);
    assert_eq!(reachable(with(0.95), &logits, &[]), vec![0, 1, 2, 3]);
    // Tiny top_p still keeps one token.
    assert_eq!(reachable(with(1e-6), &logits, &[]), vec![1]);
}

#[test]
fn top_p_splits_ties_inside_a_bucket_by_id() {
    // 5000 equally likely tokens: top_p = 0.5 must keep exactly 2500 of them, the lowest ids
    // (ties broken by id), all of which share one bucket.
    let logits = vec![1.0f32; 5000];
    let mut s = sampler(SamplerConfig {
        top_p: 0.5,
        ..plain(3)
    });
    s.load_candidates(&logits);
    s.apply_top_p(false);
    let mut ids: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..2500).collect::<Vec<u32>>());
}

#[test]
fn bucketed_top_p_matches_a_full_sort() {
    let mut rng = Rng::seed_from(21);
    for round in 0..50 {
        let spread = [0.5, 3.0, 10.0, 40.0][round % 4];
        let logits: Vec<f32> = (0..3000)
            .map(|_| ((rng.next_f64() - 0.5) * spread) as f32)
            .collect();
        let top_p = rng.next_f64() as f32 * 0.99 + 0.01;
        let mut s = sampler(SamplerConfig { top_p, ..plain(1) });
        s.load_candidates(&logits);
        s.apply_top_p(false);
        let mut got: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
        got.sort_unstable();
        // Reference: sort everything, keep the shortest prefix reaching top_p.
        s.load_candidates(&logits);
        s.candidates.sort_unstable_by(by_logit_desc);
        let max = s.candidates[0].logit;
        let total: f64 = s.candidates.iter().map(|c| weight(c.logit, max)).sum();
        let keep = prefix_reaching(&s.candidates, max, 0.0, f64::from(top_p) * total);
        let mut expected: Vec<u32> = s.candidates[..keep].iter().map(|c| c.id).collect();
        expected.sort_unstable();
        // Summation order differs, so allow the boundary token alone to differ by rounding.
        let difference = got.len().abs_diff(expected.len());
        assert!(
            difference <= 1,
            "round {round}: {} vs {}",
            got.len(),
            expected.len()
        );
        let common = got.len().min(expected.len());
        assert!(got.iter().filter(|id| expected.contains(id)).count() >= common.saturating_sub(1));
    }
}

#[test]
fn rank_keys_order_like_the_comparator_and_round_trip() {
    let values = [
        f32::NEG_INFINITY,
        -3.5,
        -0.0,
        0.0,
        1e-30,
        2.0,
        f32::INFINITY,
    ];
    let mut candidates = Vec::new();
    for (i, &logit) in values.iter().enumerate() {
        for id in [7u32, 3, u32::MAX - (i as u32)] {
            candidates.push(Candidate { id, logit });
        }
    }
    for a in &candidates {
        let back = from_rank_key(rank_key(a));
        assert_eq!((back.id, back.logit.to_bits()), (a.id, a.logit.to_bits()));
        for b in &candidates {
            // Larger key = better = earlier in by_logit_desc.
            assert_eq!(
                rank_key(b).cmp(&rank_key(a)),
                by_logit_desc(a, b),
                "{a:?} {b:?}"
            );
        }
    }
}

#[test]
fn top_k_keeps_the_k_best_with_ties_by_id() {
    let logits = [1.0f32, 5.0, 3.0, 5.0, 3.0, 3.0, -2.0];
    let mut s = sampler(SamplerConfig {
        top_k: 4,
        ..plain(1)
    });
    s.load_candidates(&logits);
    assert!(s.apply_top_k());
    let kept: Vec<u32> = s.candidates.iter().map(|c| c.id).collect();
    assert_eq!(kept, vec![1, 3, 2, 4]);
}

#[test]
fn min_p_keeps_tokens_at_least_min_p_times_the_best() {
    let p = [0.05f64, 0.5, 0.2, 0.25];
    let logits: Vec<f32> = p.iter().map(|p| p.ln() as f32).collect();
    let with = |min_p| SamplerConfig { min_p, ..plain(1) };
    // p_max = 0.5, so min_p 0.09 / 0.3 / 0.45 / 1 keep p >= 0.045 / 0.15 / 0.225 / 0.5.
    assert_eq!(reachable(with(0.09), &logits, &[]), vec![0, 1, 2, 3]);
    assert_eq!(reachable(with(0.3), &logits, &[]), vec![1, 2, 3]);
    assert_eq!(reachable(with(0.45), &logits, &[]), vec![1, 3]);
    assert_eq!(reachable(with(1.0), &logits, &[]), vec![1]);
}

#[test]
fn top_k_then_min_p_combine() {
    let logits = [5.0f32, 4.9, 4.8, 0.0, -3.0, 4.7];
    let config = SamplerConfig {
        top_k: 3,
        min_p: 0.5,
        ..plain(8)
    };
    assert_eq!(reachable(config, &logits, &[]), vec![0, 1, 2]);
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let mut s = sampler(SamplerConfig {
        repeat_penalty: 2.0,
        repeat_last_n: 3,
        ..SamplerConfig::greedy()
    });
    s.load_candidates(&[4.0, -1.0, 3.0, 0.0, 2.0]);
    // Token 0 repeats but is penalized once; token 2 lies outside the last 3; 99 is out of range.
    s.apply_repeat_penalty(&[2, 0, 1, 0, 99]);
    let logits: Vec<f32> = s.candidates.iter().map(|c| c.logit).collect();
    assert_eq!(logits, vec![2.0, -2.0, 3.0, 0.0, 2.0]);
}

#[test]
fn presence_and_frequency_penalties_subtract_per_token_and_per_occurrence() {
    let mut s = sampler(SamplerConfig {
        repeat_penalty: 2.0,
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        repeat_last_n: 4,
        ..SamplerConfig::greedy()
    });
    s.load_candidates(&[4.0, -1.0, 3.0, 0.0, 2.0]);
    // The window is [0, 1, 0, 0]: token 0 three times (4 / 2 - 3 × 0.25 - 0.5), token 1 once (-1 × 2 - 0.25 - 0.5);
    // token 2 lies outside it.
    s.apply_repeat_penalty(&[2, 0, 1, 0, 0]);
    let logits: Vec<f32> = s.candidates.iter().map(|c| c.logit).collect();
    assert_eq!(logits, vec![0.75, -2.75, 3.0, 0.0, 2.0]);
    // Negative penalties encourage repetition; alone (no multiplicative penalty) they still apply.
    let mut s = sampler(SamplerConfig {
        frequency_penalty: -1.0,
        ..SamplerConfig::greedy()
    });
    assert_eq!(s.sample(&[1.0, 1.5], &[0, 0]), 0);
    assert!(SamplerConfig {
        presence_penalty: f32::NAN,
        ..SamplerConfig::greedy()
    }
    .validate()
    .is_err());
}

#[test]
fn greedy_applies_the_penalty_first() {
    let mut s = sampler(SamplerConfig {
        repeat_penalty: 1.5,
        ..SamplerConfig::greedy()
    });
    let logits = [3.0f32, 2.5, 1.0];
    assert_eq!(s.sample(&logits, &[]), 0);
    assert_eq!(s.sample(&logits, &[7, 0]), 1); // 3.0 / 1.5 = 2.0 < 2.5
}

#[test]
fn validate_names_the_bad_parameter() {
    let cases = [
        (
            SamplerConfig {
                temperature: -0.1,
                ..SamplerConfig::default()
            },
            "temperature",
        ),
        (
            SamplerConfig {
                temperature: f32::NAN,
                ..SamplerConfig::default()
            },
            "temperature",
        ),
        (
            SamplerConfig {
                top_p: 0.0,
                ..SamplerConfig::default()
            },
            "top_p",
        ),
        (
            SamplerConfig {
                top_p: 1.5,
                ..SamplerConfig::default()
            },
            "top_p",
        ),
        (
            SamplerConfig {
                min_p: -0.1,
                ..SamplerConfig::default()
            },
            "min_p",
        ),
        (
            SamplerConfig {
                min_p: f32::NAN,
                ..SamplerConfig::default()
            },
            "min_p",
        ),
        (
            SamplerConfig {
                repeat_penalty: 0.0,
                ..SamplerConfig::default()
            },
            "repeat_penalty",
        ),
    ];
    for (config, name) in cases {
        let err = Sampler::new(config).expect_err(name);
        let SamplerError::InvalidParameter { name: got, .. } = &err;
        assert_eq!(*got, name);
        assert!(err.to_string().contains(name), "{err}");
    }
    assert!(SamplerConfig::default().validate().is_ok());
    assert!(SamplerConfig::greedy().validate().is_ok());
}

#[test]
fn logprob_helpers_match_a_direct_softmax() {
    let logits = [1.0f32, 2.0, 3.0, 3.0];
    let denominator: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
    let expected = |id: usize| (f64::from(logits[id]).exp() / denominator).ln() as f32;
    let got = log_softmax_at(&logits, &[2, 0, 9]);
    assert!((got[0] - expected(2)).abs() < 1e-6);
    assert!((got[1] - expected(0)).abs() < 1e-6);
    assert_eq!(got[2], f32::NEG_INFINITY);
    let top = top_logprobs(&logits, 3);
    let ids: Vec<u32> = top.iter().map(|t| t.0).collect();
    assert_eq!(ids, vec![2, 3, 1]);
    assert!((top[2].1 - expected(1)).abs() < 1e-6);
    assert_eq!(top_logprobs(&logits, 10).len(), 4);
}

#[test]
fn all_impossible_logits_do_not_panic() {
    let logits = [f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY];
    let mut s = sampler(SamplerConfig::default());
    assert_eq!(s.sample(&logits, &[]), 0);
    assert_eq!(s.sample(&[], &[]), 0);
    // An infinite logit wins like a very large one instead of poisoning the softmax.
    let logits = [0.0, f32::INFINITY, 1.0];
    assert_eq!(reachable(plain(4), &logits, &[]), vec![1]);
}

#[test]
fn large_vocabulary_is_fast_enough() {
    // 262k logits, the Gemma 3 vocabulary: every chain shape should stay in the low milliseconds.
    let mut rng = Rng::seed_from(11);
    let logits: Vec<f32> = (0..262_144)
        .map(|_| (rng.next_f64() * 20.0 - 10.0) as f32)
        .collect();
    let recent: Vec<u32> = (0..64).map(|i| i * 1000).collect();
    for config in [
        SamplerConfig::default(),
        SamplerConfig {
            top_k: 0,
            ..SamplerConfig::default()
        },
        SamplerConfig {
            repeat_penalty: 1.1,
            ..SamplerConfig::greedy()
        },
    ] {
        let mut s = sampler(config.clone());
        s.sample(&logits, &recent); // warm-up allocates the scratch buffers
        let start = std::time::Instant::now();
        let rounds = 20;
        for _ in 0..rounds {
            s.sample(&logits, &recent);
        }
        let per_call = start.elapsed() / rounds;
        eprintln!("262k logits, {config:?}: {per_call:?} per call");
        // Generous bound so a loaded CI machine never flakes; typical is well under 2 ms.
        assert!(per_call.as_millis() < 50, "{config:?}: {per_call:?}");
    }
}

#[test]
fn logit_bias_bans_and_forces_tokens() {
    let logits = [1.0, 5.0, 3.0, 4.9];
    let banned = SamplerConfig {
        logit_bias: vec![(1, -100.0)],
        ..SamplerConfig::greedy()
    };
    assert_eq!(sampler(banned.clone()).sample(&logits, &[]), 3);
    let mut reach = reachable(
        SamplerConfig {
            temperature: 1.0,
            ..banned
        },
        &logits,
        &[],
    );
    reach.retain(|&t| t == 1);
    assert!(reach.is_empty(), "a -100 bias never draws the token");
    let forced = SamplerConfig {
        logit_bias: vec![(0, 100.0), (99, 100.0)],
        ..SamplerConfig::greedy()
    };
    assert_eq!(
        sampler(forced).sample(&logits, &[]),
        0,
        "ids past the vocabulary are ignored"
    );
    let bad = SamplerConfig {
        logit_bias: vec![(0, f32::NAN)],
        ..SamplerConfig::greedy()
    };
    assert!(bad.validate().is_err());
    let ban = SamplerConfig {
        logit_bias: vec![(1, f32::NEG_INFINITY)],
        temperature: 1.0,
        ..SamplerConfig::greedy()
    };
    assert!(ban.validate().is_ok());
    assert!(
        !reachable(ban, &logits, &[]).contains(&1),
        "-inf bans a token"
    );
}
