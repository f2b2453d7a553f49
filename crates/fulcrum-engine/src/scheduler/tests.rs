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

/// A fake drafter: the true continuation of `tokens` for up to `len` tokens, with every token whose running hash
/// (seeded by `seed`) is divisible by 3 replaced by a wrong one.
fn fake_draft(tokens: &[u32], len: usize, seed: u64) -> Vec<u32> {
    let mut t = tokens.to_vec();
    let mut draft = Vec::new();
    for i in 0..len {
        let right = fake_sample(&t);
        let wrong = (seed
            .wrapping_mul(0x9E37_79B9)
            .wrapping_add(i as u64 * 7 + t.len() as u64))
        .is_multiple_of(3);
        let token = if wrong { (right + 1) % 5 } else { right };
        draft.push(token);
        t.push(token);
    }
    draft
}

/// Runs requests `(prompt, new tokens)` to completion, with speculative drafts on decode steps if `drafting`;
/// returns each output and the number of preemptions.
fn run_with(
    sched: &mut Scheduler,
    requests: &[(Vec<u32>, usize)],
    budget: usize,
    drafting: bool,
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
        let mut step = sched.schedule();
        preemptions += step.preempted.len();
        if drafting {
            let mut left = budget - step.work.iter().map(Work::rows).sum::<usize>();
            for w in &mut step.work {
                let seq = sched.get(w.id).unwrap();
                let len = (want[&w.id] - seq.generated())
                    .saturating_sub(1)
                    .min(left)
                    .min(4);
                let draft = fake_draft(&seq.tokens, len, steps as u64 + w.id);
                if sched.add_draft(w, draft) {
                    left -= w.draft.len();
                }
            }
        }
        assert!(step.work.iter().map(Work::rows).sum::<usize>() <= budget);
        assert!(sched.n_running() <= sched.limits.max_running);
        let mut seen = std::collections::HashSet::new();
        for w in &step.work {
            assert!(seen.insert(w.id), "one share per sequence per step");
            let seq = sched.get(w.id).unwrap();
            assert_eq!(w.start, seq.computed);
            assert!(w.len > 0 && w.start + w.len <= seq.tokens.len());
            assert!(seq.table.len >= w.start + w.rows(), "blocks for the work");
            if w.draft.is_empty() {
                let sampled = w
                    .wants_logits
                    .then(|| fake_sample(&seq.tokens[..w.start + w.len]));
                sched.commit(w, sampled);
            } else {
                // Greedy verification: keep drafts while they are what the model says, then its own token.
                let mut t = seq.tokens.clone();
                let mut committed = Vec::new();
                for &d in &w.draft {
                    let right = fake_sample(&t);
                    committed.push(right);
                    t.push(right);
                    if d != right {
                        break;
                    }
                }
                if committed.len() == w.draft.len() {
                    committed.push(fake_sample(&t));
                }
                sched.commit_verified(w, committed.len() - 1, &committed);
                let seq = sched.get(w.id).unwrap();
                assert_eq!(
                    seq.computed + 1,
                    seq.tokens.len(),
                    "only verified tokens are computed"
                );
            }
            let seq = sched.get(w.id).unwrap();
            if seq.generated() == want[&w.id] {
                let seq = sched.remove(w.id).unwrap();
                done.insert(w.id, seq.tokens[seq.prompt_len..].to_vec());
            }
        }
    }
    (done, preemptions)
}

fn run(
    sched: &mut Scheduler,
    requests: &[(Vec<u32>, usize)],
    budget: usize,
) -> (HashMap<u64, Vec<u32>>, usize) {
    run_with(sched, requests, budget, false)
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
                wants_logits: true,
                draft: Vec::new(),
            },
            Work {
                id: 1,
                start: 0,
                len: 7,
                wants_logits: false,
                draft: Vec::new(),
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
    /// Whatever the mix of requests, budget and pool size, with or without speculative drafts (some wrong) on decode
    /// steps: every request gets exactly the output it gets alone, no step exceeds the budget, only verified tokens
    /// count as computed, and every block comes back.
    #[test]
    fn any_schedule_gives_each_request_its_own_output(
        reqs in proptest::collection::vec((proptest::collection::vec(0u32..4, 1..30), 1usize..12), 1..8),
        budget in 1usize..40,
        max_running in 1usize..6,
        n_blocks in 11usize..40,
        drafting in any::<bool>(),
    ) {
        let mut s = Scheduler::new(BlockPool::new(n_blocks, 4), limits(budget, max_running));
        let (out, _) = run_with(&mut s, &reqs, budget, drafting);
        for (id, (p, n)) in reqs.iter().enumerate() {
            prop_assert_eq!(&out[&(id as u64)], &alone(p, *n));
        }
        prop_assert_eq!(s.pool.n_free(), n_blocks);
        prop_assert_eq!(s.n_running() + s.n_waiting(), 0);
    }
}

#[test]
fn drafts_need_a_decode_step_and_free_blocks() {
    // Three blocks of 4: request 1 keeps one, request 0 (6 prompt tokens) takes two.
    let mut s = Scheduler::new(BlockPool::new(3, 4), limits(16, 2));
    s.submit(1, vec![2; 3], 4).unwrap();
    s.submit(0, vec![1; 6], 12).unwrap();
    let mut step = s.schedule();
    // A prefill chunk takes no draft.
    assert!(!s.add_draft(&mut step.work[1], vec![1, 2]));
    for w in &step.work {
        s.commit(w, Some(3));
    }
    let step = s.schedule();
    let mut work = step.work.iter().find(|w| w.id == 0).unwrap().clone();
    // 7 tokens and a draft of 1 fit the two blocks; a draft of 2 would need a block nobody has.
    assert!(!s.add_draft(&mut work.clone(), vec![1, 2]));
    assert!(s.add_draft(&mut work, vec![1]));
    assert_eq!(work.rows(), 2);
    // The draft (wrong) is rejected: the sequence gains one token and computes only its verified one.
    s.commit_verified(&work, 0, &[4]);
    let seq = s.get(0).unwrap();
    assert_eq!((seq.tokens.len(), seq.computed), (8, 7));
}

/// A budget that grants each step's first prompt chunk at most `cap` tokens while any decode is planned, and no
/// further chunk in that step.
struct CapWhileDecoding {
    cap: usize,
}

impl PrefillBudget for CapWhileDecoding {
    fn allow(&self, planned: &[Shape], _context: usize, wanted: usize) -> usize {
        let decoding = planned.iter().any(|s| s.new_tokens == 1 && s.logits);
        let chunked = planned.iter().any(|s| s.new_tokens > 1);
        match (decoding, chunked) {
            (false, _) => wanted,
            (true, false) => wanted.min(self.cap),
            (true, true) => 0,
        }
    }
}

#[test]
fn a_prefill_budget_caps_chunks_while_sequences_decode_and_prompts_still_finish() {
    let mut sched = Scheduler::new(BlockPool::new(64, 16), limits(256, 8));
    sched.submit(0, vec![1; 10], 200).unwrap();
    let budget = CapWhileDecoding { cap: 24 };
    // Alone, the first prompt is computed in one chunk.
    let step = sched.schedule_with(&budget);
    assert_eq!(step.work.len(), 1);
    assert_eq!(step.work[0].len, 10);
    sched.commit(&step.work[0], Some(3));
    // Two long prompts arrive while it decodes: the first gets a capped chunk, the second waits.
    sched.submit(1, vec![2; 100], 120).unwrap();
    sched.submit(2, vec![3; 100], 120).unwrap();
    let mut chunk_steps = 0;
    for _ in 0..100 {
        let step = sched.schedule_with(&budget);
        let decodes = step
            .work
            .iter()
            .filter(|w| w.len == 1 && w.wants_logits)
            .count();
        let chunks: Vec<usize> = step
            .work
            .iter()
            .filter(|w| w.len > 1)
            .map(|w| w.len)
            .collect();
        if decodes > 0 {
            assert!(
                chunks.len() <= 1 && chunks.iter().all(|&n| n <= 24),
                "{:?}",
                step.work
            );
        }
        chunk_steps += !chunks.is_empty() as usize;
        for w in &step.work {
            let seq = sched.get(w.id).unwrap();
            let sampled = (w.start + w.len == seq.tokens.len()).then_some(5);
            sched.commit(w, sampled);
        }
        if [1, 2]
            .iter()
            .all(|&id| sched.get(id).is_some_and(|s| s.computed >= 100))
        {
            break;
        }
    }
    assert!([1, 2]
        .iter()
        .all(|&id| sched.get(id).is_some_and(|s| s.computed >= 100)));
    // 200 prompt tokens in chunks of at most 24 while sequence 0 decodes.
    assert!(chunk_steps >= 200 / 24, "{chunk_steps}");
}
