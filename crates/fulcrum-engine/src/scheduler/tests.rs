use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

fn limits(token_budget: usize, max_running: usize) -> Limits {
    Limits {
        token_budget,
        max_running,
        max_waiting: 64,
    }
}

/// The token a fake model "samples" after `tokens`: a function of the sequence alone, so any schedule must give
/// every request the same output.
fn fake_sample(tokens: &[u32]) -> u32 {
    tokens
        .iter()
        .fold(7u32, |h, &t| h.wrapping_mul(31).wrapping_add(t))
        % 5
}

/// Runs requests `(prompt, new tokens)` to completion; returns each output and the number of preemptions.
fn run(
    sched: &mut Scheduler,
    requests: &[(Vec<u32>, usize)],
    budget: usize,
) -> (HashMap<u64, Vec<u32>>, usize) {
    let mut want: HashMap<u64, usize> = HashMap::new();
    for (id, (prompt, new)) in requests.iter().enumerate() {
        sched
            .submit(id as u64, prompt.clone(), prompt.len() + new)
            .unwrap();
        want.insert(id as u64, *new);
    }
    let mut done = HashMap::new();
    let (mut steps, mut preemptions) = (0, 0);
    while done.len() < requests.len() {
        steps += 1;
        assert!(steps < 10_000, "no progress");
        let step = sched.schedule();
        preemptions += step.preempted.len();
        assert!(step.work.iter().map(|w| w.len).sum::<usize>() <= budget);
        assert!(sched.n_running() <= sched.limits.max_running);
        let mut seen = std::collections::HashSet::new();
        for w in &step.work {
            assert!(seen.insert(w.id), "one share per sequence per step");
            let seq = sched.get(w.id).unwrap();
            assert_eq!(w.start, seq.computed);
            assert!(w.len > 0 && w.start + w.len <= seq.tokens.len());
            assert!(seq.table.len >= w.start + w.len, "blocks for the work");
            let sampled = w
                .wants_logits
                .then(|| fake_sample(&seq.tokens[..w.start + w.len]));
            sched.commit(w, sampled);
            let seq = sched.get(w.id).unwrap();
            if seq.generated() == want[&w.id] {
                let seq = sched.remove(w.id).unwrap();
                done.insert(w.id, seq.tokens[seq.prompt_len..].to_vec());
            }
        }
    }
    (done, preemptions)
}

fn alone(prompt: &[u32], new: usize) -> Vec<u32> {
    let mut t = prompt.to_vec();
    for _ in 0..new {
        t.push(fake_sample(&t));
    }
    t[prompt.len()..].to_vec()
}

#[test]
fn long_prompts_are_chunked_and_decodes_keep_running() {
    let mut s = Scheduler::new(BlockPool::new(64, 4), limits(8, 4));
    s.submit(0, vec![1; 3], 6).unwrap();
    let first = s.schedule();
    s.commit(&first.work[0], Some(9));
    s.submit(1, vec![2; 20], 24).unwrap();
    let step = s.schedule();
    // The decode of request 0 goes first, then as much of the new prompt as the budget allows.
    assert_eq!(
        step.work,
        vec![
            Work {
                id: 0,
                start: 3,
                len: 1,
                wants_logits: true
            },
            Work {
                id: 1,
                start: 0,
                len: 7,
                wants_logits: false
            },
        ]
    );
}

#[test]
fn a_shared_prefix_is_not_recomputed() {
    let mut s = Scheduler::new(BlockPool::new(64, 4), limits(64, 4));
    let prompt: Vec<u32> = (0..18).collect();
    s.submit(0, prompt.clone(), 20).unwrap();
    let step = s.schedule();
    s.commit(&step.work[0], Some(1));
    s.submit(1, prompt.clone(), 20).unwrap();
    let step = s.schedule();
    let second = step.work.iter().find(|w| w.id == 1).unwrap();
    assert_eq!((second.start, second.len), (16, 2));
    assert_eq!(s.pool.hit_tokens, 16);
}

#[test]
fn oversized_and_overflowing_requests_are_refused() {
    let mut s = Scheduler::new(
        BlockPool::new(4, 4),
        Limits {
            token_budget: 8,
            max_running: 2,
            max_waiting: 1,
        },
    );
    assert_eq!(
        s.submit(0, vec![0; 10], 17),
        Err(Rejected::TooLong {
            needed: 17,
            capacity: 16
        })
    );
    s.submit(1, vec![0; 4], 8).unwrap();
    assert_eq!(s.submit(2, vec![0; 4], 8), Err(Rejected::QueueFull(1)));
}

#[test]
fn preemption_frees_blocks_and_recomputes() {
    // Two requests that each need 3 of the 4 blocks: the second is preempted and finishes after the first.
    let mut s = Scheduler::new(BlockPool::new(4, 4), limits(16, 2));
    let reqs = vec![(vec![1; 6], 6), (vec![2; 6], 6)];
    let (out, preemptions) = run(&mut s, &reqs, 16);
    assert!(preemptions > 0);
    for (id, (p, n)) in reqs.iter().enumerate() {
        assert_eq!(out[&(id as u64)], alone(p, *n));
    }
    assert_eq!(s.pool.n_free(), 4);
}

proptest! {
    /// Whatever the mix of requests, budget and pool size: every request gets exactly the output it gets alone, no
    /// step exceeds the budget, and every block comes back.
    #[test]
    fn any_schedule_gives_each_request_its_own_output(
        reqs in proptest::collection::vec((proptest::collection::vec(0u32..4, 1..30), 1usize..12), 1..8),
        budget in 1usize..40,
        max_running in 1usize..6,
        n_blocks in 11usize..40,
    ) {
        let mut s = Scheduler::new(BlockPool::new(n_blocks, 4), limits(budget, max_running));
        let (out, _) = run(&mut s, &reqs, budget);
        for (id, (p, n)) in reqs.iter().enumerate() {
            prop_assert_eq!(&out[&(id as u64)], &alone(p, *n));
        }
        prop_assert_eq!(s.pool.n_free(), n_blocks);
        prop_assert_eq!(s.n_running() + s.n_waiting(), 0);
    }
}
