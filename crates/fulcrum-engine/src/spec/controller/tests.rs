use super::*;

fn scripted(alpha_of: impl Fn(usize) -> f64, exits: &[usize], n_layers: usize) -> Controller {
    let arms: Vec<Arm> = exits.iter().map(|&e| Arm::Exit(e)).collect();
    let mut c = Controller::new(&arms, n_layers, CostUnits::Layers);
    // Feed 100 rounds of 20 tokens at each exit's acceptance rate (exact fractions of 20).
    for &e in exits {
        let matched = (alpha_of(e) * 20.0).round() as usize;
        let outcomes: Vec<(bool, f32)> = (0..20).map(|i| (i < matched, 0.5)).collect();
        for _ in 0..100 {
            c.observe(Arm::Exit(e), &outcomes);
        }
    }
    c
}

#[test]
fn expected_tokens_is_the_geometric_sum() {
    assert_eq!(expected_tokens(0.5, 0), 1.0);
    assert!((expected_tokens(0.5, 3) - 1.875).abs() < 1e-12);
    assert!((expected_tokens(0.9, 18) - (1.0 - 0.9f64.powi(19)) / 0.1).abs() < 1e-9);
}

#[test]
fn picks_the_layer_and_length_the_formula_says() {
    let n_layers = 24;
    let exits = [4, 8, 12, 16, 20];
    let alpha_of = |e: usize| (e as f64 / 24.0).powf(0.5).min(0.95);
    let c = scripted(alpha_of, &exits, n_layers);
    let choice = c.choose(GAMMA_MAX, |_| true);
    // Brute force over the same table.
    let mut best = (1.0 / n_layers as f64, None, 0);
    for &e in &exits {
        let alpha = c.acceptance(Arm::Exit(e)).unwrap().alpha().unwrap();
        for d in 1..=GAMMA_MAX {
            let tpl = tokens_per_layer(alpha, e, d, n_layers);
            if tpl > best.0 {
                best = (tpl, Some(Arm::Exit(e)), d);
            }
        }
    }
    assert_eq!((choice.arm, choice.draft_len), (best.1, best.2));
    assert!(choice.arm.is_some());
}

#[test]
fn falls_back_to_plain_decoding_when_nothing_pays() {
    let c = scripted(|_| 0.02, &[6, 12, 18], 24);
    assert_eq!(c.choose(GAMMA_MAX, |_| true), Choice::PLAIN);
    // γ_min = 1 forces a draft.
    let mut forced = scripted(|_| 0.02, &[6, 12, 18], 24);
    forced.gamma_min = 1;
    assert_eq!(forced.choose(GAMMA_MAX, |_| true).draft_len, 1);
    // Unknown statistics never win either.
    let c = Controller::new(&[Arm::Exit(6), Arm::Lookup], 24, CostUnits::Layers);
    assert_eq!(c.choose(GAMMA_MAX, |_| true), Choice::PLAIN);
}

#[test]
fn the_decay_forgets_old_contexts() {
    let mut a = Acceptance::default();
    for _ in 0..50 {
        a.update(OMEGA, &[(true, 0.9)]);
    }
    assert!(a.alpha().unwrap() > 0.9);
    let mut one = Acceptance::default();
    one.update(OMEGA, &[(true, 0.9)]);
    assert_eq!(one.alpha(), Some(0.5), "one match is not certainty");
    for _ in 0..50 {
        a.update(OMEGA, &[(false, 0.2)]);
    }
    assert!(a.alpha().unwrap() < 0.1);
    // τ lies between the two mean confidences.
    let tau = a.threshold().unwrap();
    assert!((0.2..0.9).contains(&tau), "τ {tau}");
    assert_eq!(Acceptance::default().threshold(), None);
}

/// Records one and five rows of 24 layers and a classifier, and a draft step of a third of a target step.
fn time_small_batches(c: &mut Controller) {
    c.timings.layer.record(1, 1e-3);
    c.timings.layer.record(5, 1.4e-3);
    c.timings.head.record(1, 2e-3);
    c.timings.head.record(5, 3e-3);
    c.timings.draft_step.record(1, 8e-3);
}

#[test]
fn measured_costs_favour_cheap_verification() {
    let mut c = Controller::new(&[Arm::Lookup, Arm::DraftModel], 24, CostUnits::Seconds);
    assert_eq!(c.choose(8, |_| true), Choice::PLAIN, "no timings yet");
    time_small_batches(&mut c);
    c.observe(Arm::Lookup, &[(true, 1.0); 8]);
    c.observe(Arm::Lookup, &[(false, 1.0); 2]);
    c.observe(Arm::DraftModel, &[(true, 1.0); 8]);
    c.observe(Arm::DraftModel, &[(false, 1.0); 2]);
    // Same acceptance, but lookup drafts for free.
    let choice = c.choose(8, |_| true);
    assert_eq!(choice.arm, Some(Arm::Lookup));
    assert!(c.expected_speedup(choice).unwrap() > 1.5);
    assert!(c.can_pay(Arm::Lookup, 8));
    // An exit at layer 23 of 24 cannot pay even if always right.
    let mut exits = Controller::new(&[Arm::Exit(23)], 24, CostUnits::Seconds);
    exits.timings.layer.record(5, 3e-3);
    exits.timings.layer.record(1, 1e-3);
    exits.timings.head.record(1, 2e-3);
    exits.timings.head.record(5, 6e-3);
    assert!(!exits.can_pay(Arm::Exit(23), 8));
    assert!(exits.can_pay(Arm::Exit(4), 8));
    // Without lookup, the draft model still pays at α = 0.8 and a third of a target step per draft token.
    assert_eq!(c.choose(8, |a| a != Arm::Lookup).arm, Some(Arm::DraftModel));
}

#[test]
fn batch_times_follow_each_measured_size() {
    let mut t = BatchTime::default();
    assert_eq!(t.estimate(1), None);
    // A prompt's batch before any single token is kept until one is timed.
    t.record(4, 0.118);
    assert_eq!(t.estimate(4), None);
    t.record(1, 0.080);
    t.record(2, 0.080);
    t.record(8, 0.212);
    let est = |b: usize| t.estimate(b).unwrap();
    let close = |b: usize, want: f64| assert!((est(b) - want).abs() < 1e-12, "t({b}) = {}", est(b));
    // Measured sizes are what was measured: a second row free, the eighth dear (not an affine t(b)).
    close(1, 0.080);
    close(2, 0.080);
    close(4, 0.118);
    close(8, 0.212);
    // Between them, interpolated; past the largest, the affine fit's slope.
    close(3, 0.099);
    close(6, 0.165);
    assert!(est(10) > est(8));
    assert!((est(10) - est(9) - (est(9) - est(8))).abs() < 1e-12);
    assert!((est(40) - est(8) - 32.0 * (est(9) - est(8))).abs() < 1e-12);
    // A new measurement moves its own size halfway.
    let mut t = t.clone();
    t.record(2, 0.090);
    assert!((t.estimate(2).unwrap() - 0.085).abs() < 1e-12);
}

#[test]
fn large_batches_cost_their_rows() {
    let mut t = BatchTime::default();
    // A draft model's calibration batch, before any single step was timed: its rows' time, for large batches.
    t.record(16, 0.048);
    assert_eq!(t.estimate(8), None);
    assert!((t.estimate(200).unwrap() - 0.6).abs() < 1e-12);
    // Once steps are timed, small sizes come from them and large ones still from the rows' time, where the
    // small batches' slope (a second row is almost free) would price a 200-token catch-up far too low.
    t.record(1, 0.020);
    t.record(2, 0.021);
    t.record(3, 0.022);
    assert!((t.estimate(2).unwrap() - 0.021).abs() < 1e-12);
    assert!((t.estimate(200).unwrap() - 0.6).abs() < 1e-12);
    assert!(t.estimate(19).unwrap() < t.estimate(20).unwrap());
}

#[test]
fn a_free_second_row_makes_one_token_drafts_pay() {
    let mut c = Controller::new(&[Arm::Lookup], 24, CostUnits::Seconds);
    c.timings.layer.record(1, 1e-3);
    c.timings.layer.record(5, 2e-3);
    c.timings.head.record(1, 2e-3);
    c.timings.head.record(2, 2e-3);
    for _ in 0..50 {
        c.observe(Arm::Lookup, &[(true, 1.0), (false, 1.0)]);
        for _ in 0..4 {
            c.observe(Arm::Lookup, &[(false, 1.0)]);
        }
    }
    let alpha = c.acceptance(Arm::Lookup).unwrap().alpha().unwrap();
    assert!((0.12..0.2).contains(&alpha), "α {alpha}");
    // An affine fit through one and five rows prices a second row at a quarter of a layer's time: no draft.
    assert_eq!(c.choose(8, |_| true), Choice::PLAIN);
    // Measured, the second row costs nothing, and a one-token draft at α ≈ 0.15 wins.
    c.timings.layer.record(2, 1e-3);
    let choice = c.choose(8, |_| true);
    assert_eq!((choice.arm, choice.draft_len), (Some(Arm::Lookup), 1));
}

#[test]
fn a_probe_must_save_more_than_its_setup_costs() {
    let arms = [Arm::DraftModel, Arm::Exit(23), Arm::Lookup];
    let mut c = Controller::new(&arms, 24, CostUnits::Seconds);
    time_small_batches(&mut c);
    let worth = |c: &Controller, arm, room, setup| {
        c.worth_probing((arm, Choice::PLAIN), 8, 0.9, room, setup)
    };
    // At α = 0.9 the draft model runs about 1.55× plain decoding: over 100 tokens of 26 ms it saves ~0.9 s.
    assert!(worth(&c, Arm::DraftModel, 100, 0.5));
    assert!(!worth(&c, Arm::DraftModel, 100, 2.0));
    assert!(!worth(&c, Arm::DraftModel, 10, 0.5));
    // An arm that cannot beat plain decoding is never worth it, however cheap.
    assert!(!worth(&c, Arm::Exit(23), 1000, 0.0));
    // Nor is one that would not beat what the controller does instead: lookup accepted every time.
    for _ in 0..20 {
        c.observe(Arm::Lookup, &[(true, 1.0); 8]);
    }
    let lookup = Choice {
        arm: Some(Arm::Lookup),
        draft_len: 8,
    };
    assert!(!c.worth_probing((Arm::DraftModel, lookup), 8, 0.9, 100, 0.0));
    assert!(worth(&c, Arm::DraftModel, 100, 0.5));
    // Without timings nothing is known: try it.
    let fresh = Controller::new(&[Arm::DraftModel], 24, CostUnits::Seconds);
    assert!(worth(&fresh, Arm::DraftModel, 1, 10.0));
}

#[test]
fn a_shared_step_makes_drafts_pay_for_everyone_they_delay() {
    let mut c = Controller::new(&[Arm::DraftModel], 24, CostUnits::Seconds);
    c.timings.layer.record(1, 1e-3);
    c.timings.layer.record(9, 1.8e-3);
    c.timings.head.record(1, 2e-3);
    c.timings.head.record(9, 4e-3);
    c.timings.draft_step.record(1, 8e-3);
    c.observe(Arm::DraftModel, &[(true, 1.0); 8]);
    c.observe(Arm::DraftModel, &[(false, 1.0); 2]);
    let plain = c.cost(None, 0).unwrap();
    let alone = c.choose(8, |_| true);
    assert_eq!(alone.arm, Some(Arm::DraftModel));
    // Alone described as a batch of one: the same decision.
    c.batch = Some(Batch {
        other_tokens: 0.0,
        seconds: plain,
    });
    assert_eq!(c.choose(8, |_| true), alone);
    // Seven other sequences in a step 1.3× as long: each draft token's time now costs eight sequences.
    c.batch = Some(Batch {
        other_tokens: 7.0,
        seconds: 1.3 * plain,
    });
    assert_eq!(c.choose(8, |_| true), Choice::PLAIN);
    assert!(!c.could_pay(Arm::DraftModel, 8, 0.8));
}
