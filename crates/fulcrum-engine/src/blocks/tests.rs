use super::*;
use proptest::prelude::*;

/// Every invariant of the pool, given the tables that sequences hold.
fn check(pool: &BlockPool, tables: &[BlockTable]) {
    let mut refs = vec![0usize; pool.n_blocks()];
    for t in tables {
        let bs = pool.block_size();
        assert!(t.blocks.len() * bs >= t.len);
        for &b in &t.blocks {
            refs[b] += 1;
        }
        // The incrementally kept slot list is each position's block row.
        let want: Vec<u32> = (0..t.blocks.len() * bs)
            .map(|p| (t.blocks[p / bs] * bs + p % bs) as u32)
            .collect();
        assert_eq!(
            t.slots(want.len()),
            &want[..],
            "slot list of {:?}",
            t.blocks
        );
    }
    for (b, &r) in refs.iter().enumerate() {
        assert_eq!(pool.refs(b), r, "block {b}: ref count");
        let in_free = pool.free.iter().any(|&(_, f)| f == b);
        assert_eq!(in_free, r == 0, "block {b}: free iff unreferenced");
    }
    assert_eq!(pool.free.len(), refs.iter().filter(|&&r| r == 0).count());
    for (&key, &b) in &pool.by_key {
        assert_eq!(pool.blocks[b].key, Some(key), "index points at block {b}");
        assert_eq!(pool.blocks[b].tokens.len(), pool.block_size());
    }
}

#[test]
fn a_repeated_prompt_shares_its_full_blocks() {
    let mut pool = BlockPool::new(8, 4);
    let prompt: Vec<u32> = (0..10).collect();
    let (mut a, cached) = pool.match_prefix(&prompt);
    assert_eq!(cached, 0);
    pool.grow(&mut a, 10).unwrap();
    pool.register(&a, &prompt, 10);
    let (mut b, cached) = pool.match_prefix(&prompt);
    assert_eq!(cached, 8, "two full blocks of four");
    assert_eq!(b.blocks[..], a.blocks[..2]);
    pool.grow(&mut b, 10).unwrap();
    check(&pool, &[a.clone(), b.clone()]);
    assert_eq!(pool.refs(a.blocks[0]), 2);
    assert_eq!(pool.hit_tokens, 8);
    // A different second block stops sharing there.
    let mut other = prompt.clone();
    other[5] = 99;
    let (c, cached) = pool.match_prefix(&other);
    assert_eq!(cached, 4);
    check(&pool, &[a.clone(), b.clone(), c.clone()]);
    for mut t in [a, b, c] {
        pool.release(&mut t);
    }
    check(&pool, &[]);
    // Released blocks keep their prefix until reused.
    let (_, cached) = pool.match_prefix(&prompt);
    assert_eq!(cached, 8);
}

#[test]
fn growth_is_all_or_nothing_and_evicts_least_recent_prefix() {
    let mut pool = BlockPool::new(3, 2);
    let p: Vec<u32> = vec![1, 2, 3, 4, 5];
    let (mut t, _) = pool.match_prefix(&p);
    pool.grow(&mut t, 5).unwrap();
    pool.register(&t, &p, 5);
    let mut more = t.clone();
    assert_eq!(pool.grow(&mut more, 8), Err(NoSpace { needed: 1, free: 0 }));
    pool.release(&mut t);
    check(&pool, &[]);
    // The unregistered tail block is reused first, then the prefix from its end.
    let (mut u, cached) = pool.match_prefix(&[7, 7, 7]);
    assert_eq!(cached, 0);
    pool.grow(&mut u, 2).unwrap();
    let (_, cached) = pool.match_prefix(&p);
    assert_eq!(cached, 4, "both registered blocks survive");
}

proptest! {
    /// Random sequences over a small alphabet (so prefixes collide) start, grow, register and finish; the pool's
    /// counts always match the tables, and everything comes back at the end.
    #[test]
    fn no_block_is_leaked_or_double_owned(
        ops in proptest::collection::vec((0u8..4, proptest::collection::vec(0u32..3, 1..20), 0usize..8), 1..80),
    ) {
        let mut pool = BlockPool::new(12, 4);
        pool.record_events();
        // What a router following the events believes is cached.
        let mut mirror = std::collections::HashSet::new();
        let mut live: Vec<(Vec<u32>, BlockTable)> = Vec::new();
        for (op, tokens, pick) in ops {
            match op {
                0 | 1 => {
                    let (mut t, cached) = pool.match_prefix(&tokens);
                    prop_assert!(cached < tokens.len() && cached % 4 == 0);
                    prop_assert_eq!(&tokens[..cached], &tokens[..cached]);
                    if pool.grow(&mut t, tokens.len()).is_ok() {
                        pool.register(&t, &tokens, tokens.len());
                        live.push((tokens, t));
                    } else {
                        pool.release(&mut t);
                    }
                }
                2 if !live.is_empty() => {
                    let i = pick % live.len();
                    let (toks, t) = &mut live[i];
                    toks.extend([1, 2]);
                    if pool.grow(t, toks.len()).is_ok() {
                        pool.register(t, toks, toks.len());
                    } else {
                        toks.truncate(toks.len() - 2);
                    }
                }
                _ if !live.is_empty() => {
                    let (_, mut t) = live.swap_remove(pick % live.len());
                    pool.release(&mut t);
                }
                _ => {}
            }
            if op == 3 && pick == 7 {
                pool.clear_cache();
            }
            for event in pool.take_events() {
                match event {
                    KvEvent::Stored { hashes, parent, tokens } => {
                        prop_assert_eq!(tokens.len(), hashes.len() * 4);
                        if let Some(p) = parent {
                            prop_assert!(mirror.contains(&p), "parent {} of a stored block is cached", p);
                        }
                        mirror.extend(hashes);
                    }
                    KvEvent::Removed { hashes } => {
                        for h in hashes {
                            prop_assert!(mirror.remove(&h), "removed block {} was stored", h);
                        }
                    }
                    KvEvent::AllCleared => mirror.clear(),
                }
            }
            let cached: std::collections::HashSet<u64> = pool.by_key.keys().copied().collect();
            prop_assert_eq!(&mirror, &cached, "the events describe the index");
            let tables: Vec<BlockTable> = live.iter().map(|(_, t)| t.clone()).collect();
            check(&pool, &tables);
            // A shared block holds the same tokens in every sequence using it.
            for (toks, t) in &live {
                for (i, &b) in t.blocks.iter().enumerate() {
                    if let Some(key) = pool.blocks[b].key {
                        let chunk = &toks[i * 4..(i * 4 + 4).min(toks.len())];
                        prop_assert_eq!(&pool.blocks[b].tokens[..], chunk, "block {} key {}", b, key);
                    }
                }
            }
        }
        for (_, mut t) in live {
            pool.release(&mut t);
        }
        check(&pool, &[]);
        prop_assert_eq!(pool.n_free(), pool.n_blocks());
    }
}

#[test]
fn prefix_caching_can_be_switched_off() {
    let mut pool = BlockPool::new(8, 4);
    pool.prefix_caching = false;
    let prompt: Vec<u32> = (0..10).collect();
    let (mut a, _) = pool.match_prefix(&prompt);
    pool.grow(&mut a, 10).unwrap();
    pool.register(&a, &prompt, 10);
    let (b, cached) = pool.match_prefix(&prompt);
    assert_eq!((cached, b.blocks.len()), (0, 0));
    assert!(pool.by_key.is_empty());
}

#[test]
fn events_name_each_block_with_its_parent_and_tokens() {
    let mut pool = BlockPool::new(3, 2);
    pool.record_events();
    let p: Vec<u32> = vec![1, 2, 3, 4, 5];
    let (mut t, _) = pool.match_prefix(&p);
    pool.grow(&mut t, 5).unwrap();
    pool.register(&t, &p, 5);
    let k1 = chain_key(None, &[1, 2]);
    let k2 = chain_key(Some(k1), &[3, 4]);
    assert_eq!(
        pool.take_events(),
        vec![KvEvent::Stored {
            hashes: vec![k1, k2],
            parent: None,
            tokens: vec![1, 2, 3, 4],
        }]
    );
    pool.release(&mut t);
    // Reusing the cached blocks evicts them, the last block of the prefix first.
    let (mut u, _) = pool.match_prefix(&[9]);
    pool.grow(&mut u, 6).unwrap();
    assert_eq!(
        pool.take_events(),
        vec![KvEvent::Removed {
            hashes: vec![k2, k1]
        }]
    );
    pool.clear_cache();
    assert_eq!(pool.take_events(), vec![KvEvent::AllCleared]);
    assert!(pool.take_events().is_empty());
}

#[test]
fn clearing_the_cache_frees_cached_blocks_for_reuse_first() {
    let mut pool = BlockPool::new(4, 2);
    let p: Vec<u32> = vec![1, 2, 3, 4, 5];
    let (mut t, _) = pool.match_prefix(&p);
    pool.grow(&mut t, 5).unwrap();
    pool.register(&t, &p, 5);
    let (mut held, _) = pool.match_prefix(&p);
    pool.grow(&mut held, 5).unwrap();
    pool.release(&mut t);
    pool.clear_cache();
    check(&pool, std::slice::from_ref(&held));
    assert!(pool.by_key.is_empty());
    let (_, cached) = pool.match_prefix(&p);
    assert_eq!(cached, 0, "nothing is shared after a clear");
    // A sequence still holding a block re-registers it afterwards.
    pool.register(&held, &p, 5);
    assert_eq!(pool.by_key.len(), 2);
}
