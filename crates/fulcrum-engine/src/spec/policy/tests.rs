use super::*;

fn policy(mode: &str) -> Policy {
    Policy::new(
        mode.parse().unwrap(),
        SpecOptions::default(),
        24,
        Some(Some(0.3)),
        true,
    )
    .unwrap()
}

fn plan(p: &mut Policy, tokens: &[u32], max_len: usize) -> (Choice, Vec<u32>) {
    let mut draft = Vec::new();
    let choice = p.plan(
        &Timings::default(),
        None,
        tokens,
        max_len,
        Progress::default(),
        &mut draft,
    );
    (choice, draft)
}

#[test]
fn static_modes_draft_what_they_say() {
    let (c, d) = plan(&mut policy("early-exit:8,3"), &[1, 2, 3], 10);
    assert_eq!((c.arm, c.draft_len, d.len()), (Some(Arm::Exit(8)), 3, 3));
    // Cut to the room left.
    let (c, _) = plan(&mut policy("draft:x,6"), &[1, 2, 3], 2);
    assert_eq!((c.arm, c.draft_len), (Some(Arm::DraftModel), 2));
    // Lookup drafts what followed the last match, at most its γ.
    let text = [7, 8, 9, 1, 2, 7, 8];
    let (c, d) = plan(&mut policy("lookup:2"), &text, 10);
    assert_eq!((c.arm, d), (Some(Arm::Lookup), vec![9, 1]));
    let (c, d) = plan(&mut policy("lookup:2"), &[1, 2, 3], 10);
    assert_eq!((c, d), (Choice::PLAIN, vec![]));
    assert_eq!(plan(&mut policy("off"), &text, 10).0, Choice::PLAIN);
}

#[test]
fn exit_fsm_grows_after_full_acceptance_and_shrinks_otherwise() {
    let mut p = policy("exit-fsm:12");
    let mut lens = Vec::new();
    for accept_all in [true, true, false, true] {
        let (c, d) = plan(&mut p, &[1, 2, 3], 10);
        lens.push(c.draft_len);
        let committed: Vec<u32> = if accept_all {
            d.iter().copied().chain([0]).collect()
        } else {
            vec![99]
        };
        p.learn(&d, &[], &committed);
    }
    assert_eq!(lens, [1, 2, 3, 2]);
    assert_eq!(p.stats.rounds, 4);
    assert_eq!(p.stats.accepted, 1 + 2 + 2);
}

#[test]
fn a_cancelled_draft_counts_as_a_plain_step() {
    let mut p = policy("early-exit:8,3");
    let (_, _) = plan(&mut p, &[1, 2, 3], 10);
    p.cancel_draft();
    p.learn(&[], &[], &[5]);
    assert_eq!((p.stats.plain_steps, p.stats.rounds), (1, 0));
}

#[test]
fn settings_that_cannot_work_are_refused() {
    let new = |mode: &str, draft| {
        Policy::new(
            mode.parse().unwrap(),
            SpecOptions::default(),
            24,
            draft,
            true,
        )
    };
    let err = new("early-exit:24,4", None).unwrap_err().to_string();
    assert!(err.contains("from 1 to 23"), "{err}");
    assert!(matches!(
        new("draft", None),
        Err(SpecError::MissingDraftModel(_))
    ));
    assert!(new("draft", Some(None)).is_ok());
    let bad_exits = SpecOptions {
        exits: vec![4, 30],
        ..SpecOptions::default()
    };
    assert!(Policy::new(Speculation::Del, bad_exits, 24, None, true).is_err());
}
