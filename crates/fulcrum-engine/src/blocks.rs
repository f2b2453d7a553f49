//! The block manager of the paged KV cache: one pool of fixed-size blocks, a block table per sequence, and prefix
//! caching across sequences.
//!
//! A full block is keyed by a hash chain: its key is the hash of its parent block's key and its own token ids, so a
//! key names a whole prefix. A hit is trusted only after comparing the stored token ids (hash collisions are
//! possible). Blocks are reference-counted; a block nobody references keeps its contents and its key until the pool
//! needs it, and the least recently freed such block is reused first. This module moves no tensors: it hands out block
//! numbers, and the engine stores keys and values at `block · block_size + offset`.
//!
//! When asked to, the pool records what enters and leaves its prefix index as [`KvEvent`]s, so that a router can
//! follow the cache of every replica (the server publishes them in vLLM's KV-event format).

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

/// The pool has too few free blocks for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("KV cache full: {needed} blocks needed, {free} free")]
pub struct NoSpace {
    pub needed: usize,
    pub free: usize,
}

/// A change to the set of cached prefix blocks, as a router following the cache sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// Consecutive full blocks of one sequence entered the index: their keys in order, the key of the block before the
    /// first (`None` at the start of a sequence), and their token ids, `block_size` per block.
    Stored {
        hashes: Vec<u64>,
        parent: Option<u64>,
        tokens: Vec<u32>,
    },
    /// Blocks left the index (their rows were reused).
    Removed { hashes: Vec<u64> },
    /// Every cached block was forgotten.
    AllCleared,
}

/// The blocks of one sequence, in order, and how many token slots of them are in use.
///
/// It keeps the pool row of every slot of its blocks as well, extended when a block is added, so that a step reads
/// a sequence's slot list without rebuilding it (O(new blocks) per step, not O(context)).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BlockTable {
    pub blocks: Vec<usize>,
    pub len: usize,
    /// Pool row of each slot: block `blocks[i]` holds positions `i·block_size..(i + 1)·block_size`.
    rows: Vec<u32>,
}

impl BlockTable {
    /// The pool rows of positions `0..positions` (each block holds `block_size` consecutive positions).
    ///
    /// Panics if the table's blocks hold fewer than `positions` slots (the scheduler grows them first).
    pub fn slots(&self, positions: usize) -> &[u32] {
        &self.rows[..positions]
    }

    /// Appends block `b` of a pool of `block_size`-slot blocks.
    fn push(&mut self, b: usize, block_size: usize) {
        self.blocks.push(b);
        let first = b * block_size;
        self.rows
            .extend((first..first + block_size).map(|row| row as u32));
    }

    /// Drops every block.
    fn clear(&mut self) {
        self.blocks.clear();
        self.rows.clear();
        self.len = 0;
    }
}

#[derive(Debug, Clone, Default)]
struct Block {
    refs: usize,
    /// Prefix key once the block is full and registered.
    key: Option<u64>,
    /// Token ids of a registered block, to verify hits.
    tokens: Vec<u32>,
    /// Its key in the free set while unreferenced: when it was released, or 0 if it caches nothing.
    released: u64,
}

/// A pool of `n_blocks` blocks of `block_size` token slots.
#[derive(Debug)]
pub struct BlockPool {
    block_size: usize,
    blocks: Vec<Block>,
    /// Unreferenced blocks as (release time, id): the first is reused first.
    free: BTreeSet<(u64, usize)>,
    by_key: HashMap<u64, usize>,
    clock: u64,
    /// Whether full blocks are shared across sequences (the prefix-caching switch).
    pub prefix_caching: bool,
    /// Prefix-cache lookups and verified hits, in tokens.
    pub queried_tokens: u64,
    pub hit_tokens: u64,
    /// Changes to the index since the last [`BlockPool::take_events`], when recording.
    events: Option<Vec<KvEvent>>,
}

fn chain_key(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockPool {
    /// An empty pool.
    pub fn new(n_blocks: usize, block_size: usize) -> BlockPool {
        assert!(block_size > 0, "block size must be positive");
        BlockPool {
            block_size,
            blocks: vec![Block::default(); n_blocks],
            free: (0..n_blocks).map(|i| (0, i)).collect(),
            by_key: HashMap::new(),
            clock: 0,
            prefix_caching: true,
            queried_tokens: 0,
            hit_tokens: 0,
            events: None,
        }
    }

    /// Starts recording [`KvEvent`]s.
    pub fn record_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// The events recorded since the last call (none when not recording).
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Forgets every cached prefix (blocks in use keep their contents for their sequences, unshared).
    pub fn clear_cache(&mut self) {
        for (b, block) in self.blocks.iter_mut().enumerate() {
            if block.key.take().is_some() {
                block.tokens.clear();
                if block.refs == 0 {
                    self.free.remove(&(block.released, b));
                    block.released = 0;
                    self.free.insert((0, b));
                }
            }
        }
        self.by_key.clear();
        if let Some(events) = &mut self.events {
            events.push(KvEvent::AllCleared);
        }
    }

    /// Records that `key` (after `parent`) entered the index, extending the previous event where it continues it.
    fn stored(&mut self, key: u64, parent: Option<u64>, tokens: &[u32]) {
        let Some(events) = &mut self.events else {
            return;
        };
        if let Some(KvEvent::Stored {
            hashes, tokens: t, ..
        }) = events.last_mut()
        {
            if parent.is_some() && hashes.last() == parent.as_ref() {
                hashes.push(key);
                t.extend_from_slice(tokens);
                return;
            }
        }
        events.push(KvEvent::Stored {
            hashes: vec![key],
            parent,
            tokens: tokens.to_vec(),
        });
    }

    /// Records that `key` left the index.
    fn removed(&mut self, key: u64) {
        let Some(events) = &mut self.events else {
            return;
        };
        if let Some(KvEvent::Removed { hashes }) = events.last_mut() {
            hashes.push(key);
            return;
        }
        events.push(KvEvent::Removed { hashes: vec![key] });
    }

    /// Token slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn n_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that no sequence references (some may still hold cached prefixes).
    pub fn n_free(&self) -> usize {
        self.free.len()
    }

    /// Fraction of blocks referenced by some sequence, 0–1.
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        1.0 - self.free.len() as f64 / self.blocks.len() as f64
    }

    /// Blocks needed to hold `tokens` slots.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Reference count of block `b` (for tests and metrics).
    pub fn refs(&self, b: usize) -> usize {
        self.blocks[b].refs
    }

    /// Starts a table for a sequence whose first tokens are `tokens`: whole blocks of it that are cached are shared
    /// (and counted as computed); returns the table, holding just those blocks, and the number of cached tokens.
    ///
    /// At most `tokens.len() - 1` tokens are taken from the cache, so that at least one token is computed and yields
    /// logits.
    pub fn match_prefix(&mut self, tokens: &[u32]) -> (BlockTable, usize) {
        let mut table = BlockTable::default();
        if !self.prefix_caching {
            return (table, 0);
        }
        let mut parent = None;
        let usable = tokens.len().saturating_sub(1) / self.block_size;
        self.queried_tokens += (usable * self.block_size) as u64;
        for chunk in tokens.chunks_exact(self.block_size).take(usable) {
            let key = chain_key(parent, chunk);
            match self.by_key.get(&key) {
                Some(&b) if self.blocks[b].tokens == chunk => {
                    self.take(b);
                    table.push(b, self.block_size);
                    table.len += self.block_size;
                    parent = Some(key);
                }
                _ => break,
            }
        }
        self.hit_tokens += table.len as u64;
        let cached = table.len;
        (table, cached)
    }

    /// Grows `table` so that it has slots for `new_len` tokens, taking fresh blocks (all or none).
    pub fn grow(&mut self, table: &mut BlockTable, new_len: usize) -> Result<(), NoSpace> {
        let needed = self.blocks_for(new_len).saturating_sub(table.blocks.len());
        if needed > self.free.len() {
            return Err(NoSpace {
                needed,
                free: self.free.len(),
            });
        }
        for _ in 0..needed {
            let (_, b) = self.free.pop_first().expect("checked above");
            // Reusing a cached block evicts its prefix.
            if let Some(key) = self.blocks[b].key.take() {
                if self.by_key.get(&key) == Some(&b) {
                    self.by_key.remove(&key);
                    self.removed(key);
                }
                self.blocks[b].tokens.clear();
            }
            self.blocks[b].refs = 1;
            table.push(b, self.block_size);
        }
        table.len = table.len.max(new_len);
        Ok(())
    }

    /// Registers the full blocks of `table` whose contents are now computed (`tokens` are the sequence's first
    /// `computed` token ids), so that later sequences can share them.
    pub fn register(&mut self, table: &BlockTable, tokens: &[u32], computed: usize) {
        if !self.prefix_caching {
            return;
        }
        let mut parent = None;
        for (i, chunk) in tokens[..computed.min(tokens.len())]
            .chunks_exact(self.block_size)
            .enumerate()
        {
            let b = table.blocks[i];
            let key = chain_key(parent, chunk);
            let before = parent.replace(key);
            if self.blocks[b].key.is_some() {
                continue;
            }
            if let Some(&other) = self.by_key.get(&key) {
                if other != b && self.blocks[other].tokens == chunk {
                    // An identical block exists already; keep that one as the cached copy.
                    continue;
                }
            }
            self.blocks[b].key = Some(key);
            self.blocks[b].tokens = chunk.to_vec();
            self.by_key.insert(key, b);
            self.stored(key, before, chunk);
        }
    }

    /// Releases every block of `table` (which becomes empty).
    pub fn release(&mut self, table: &mut BlockTable) {
        // Release the tail first, so that a prefix's first blocks are evicted last.
        for &b in table.blocks.iter().rev() {
            let block = &mut self.blocks[b];
            assert!(block.refs > 0, "block {b} released twice");
            block.refs -= 1;
            if block.refs == 0 {
                // A block with nothing cached is reused before any cached one (stamp 0).
                self.clock += 1;
                block.released = if block.key.is_some() { self.clock } else { 0 };
                self.free.insert((block.released, b));
            }
        }
        table.clear();
    }

    fn take(&mut self, b: usize) {
        let block = &mut self.blocks[b];
        if block.refs == 0 {
            self.free.remove(&(block.released, b));
        }
        block.refs += 1;
    }
}

#[cfg(test)]
mod tests;
