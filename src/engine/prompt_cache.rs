//! A prompt cache across requests: KV rows of prompt prefixes kept in host memory, so that a
//! new sequence starting with a cached prefix copies its rows in instead of computing them.
//!
//! The memory is one buffer of `blocks` slots, allocated by [`PromptCache::new`] and never
//! grown: each slot holds one block of [`PromptCache::block_tokens`] tokens and their KV rows
//! (as [`Engine::export_kv`] writes them). A block is keyed by a hash chain: block i's key
//! hashes block i-1's key and block i's tokens, so a key names a whole prefix; the tokens are
//! kept too and compared on every lookup, so a hash collision is a miss, never wrong rows.
//! When the slots are full, the least recently used block with no cached successor goes first
//! (a chain shrinks from its end, so every cached block's prefix is cached).
//!
//! Only rows a prefill computed belong here (a sequence's prompt, not its sampled answer:
//! decode computes its rows with other numerics), so that a sequence that imports a prefix
//! holds the very bits a prefill of it would have left, and its output does not depend on
//! the cache.
//!
//! Lookups and saves allocate nothing: the index is made with room for every slot.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::engine::{Engine, EngineError, SeqId};

/// Tokens per block unless the caller chooses.
pub const DEFAULT_BLOCK_TOKENS: usize = 16;

/// The hash-chain key of the empty prefix.
const ROOT: u64 = 0x7177_656e_7274_7063;

/// One slot's bookkeeping.
#[derive(Clone, Copy, Debug, Default)]
struct Meta {
    /// Whether the slot holds a block.
    used: bool,
    /// The block's key (its whole prefix's).
    key: u64,
    /// The key of the block before it (`ROOT` for a first block).
    parent: u64,
    /// Cached blocks whose parent this is.
    children: u32,
    /// When it was last saved or found.
    stamp: u64,
}

/// Counters of a [`PromptCache`] (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromptCacheStats {
    /// Tokens per block.
    pub block_tokens: usize,
    /// Blocks the cache holds at most.
    pub capacity_blocks: usize,
    /// Blocks held now.
    pub used_blocks: usize,
    /// Bytes of the cache's buffer (KV rows and tokens).
    pub capacity_bytes: usize,
    /// Bytes of the blocks held now.
    pub used_bytes: usize,
    /// Blocks copied into sequences ([`PromptCache::load`]).
    pub hit_blocks: u64,
    /// Blocks saved ([`PromptCache::save`]).
    pub saved_blocks: u64,
    /// Blocks dropped to make room.
    pub evicted_blocks: u64,
}

/// KV rows of prompt prefixes, in blocks, least recently used out first.
pub struct PromptCache {
    block: usize,
    /// Bytes of one block's rows.
    block_bytes: usize,
    rows: Vec<u8>,
    tokens: Vec<u32>,
    meta: Vec<Meta>,
    /// Key to slot.
    index: HashMap<u64, usize>,
    /// Slots not holding a block.
    free: Vec<usize>,
    clock: u64,
    version: u64,
    hits: u64,
    saved: u64,
    evicted: u64,
}

/// The key of a block after the prefix keyed `parent`.
fn chain(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same key for the same prefix in every run
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl PromptCache {
    /// Bytes one slot takes: `block_tokens` rows of `row_bytes` and the tokens.
    pub fn slot_bytes(block_tokens: usize, row_bytes: usize) -> usize {
        block_tokens * (row_bytes + 4)
    }

    /// Blocks that fit in `bytes` with rows of `row_bytes` (as [`Engine::kv_row_bytes`]).
    pub fn blocks_for(bytes: usize, block_tokens: usize, row_bytes: usize) -> usize {
        bytes / Self::slot_bytes(block_tokens, row_bytes).max(1)
    }

    /// A cache of `blocks` blocks of `block_tokens` tokens with rows of `row_bytes`; its
    /// memory is allocated here, once (check it against the memory available first). `None`
    /// when a size is zero or overflows.
    pub fn new(blocks: usize, block_tokens: usize, row_bytes: usize) -> Option<PromptCache> {
        if block_tokens == 0 || row_bytes == 0 {
            return None;
        }
        let block_bytes = block_tokens.checked_mul(row_bytes)?;
        let total = blocks.checked_mul(block_bytes)?;
        // zeroed by the allocator: the pages are taken as blocks are first written
        let rows = vec![0u8; total];
        let mut tokens = Vec::new();
        tokens
            .try_reserve_exact(blocks.checked_mul(block_tokens)?)
            .ok()?;
        tokens.resize(blocks * block_tokens, 0);
        let mut index = HashMap::new();
        index.try_reserve(blocks).ok()?;
        Some(PromptCache {
            block: block_tokens,
            block_bytes,
            rows,
            tokens,
            meta: vec![Meta::default(); blocks],
            index,
            free: (0..blocks).rev().collect(),
            clock: 0,
            version: 0,
            hits: 0,
            saved: 0,
            evicted: 0,
        })
    }

    /// Tokens per block.
    pub fn block_tokens(&self) -> usize {
        self.block
    }

    /// Changes each time a block is saved: a lookup that found nothing may find more after.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sizes and counters.
    pub fn stats(&self) -> PromptCacheStats {
        let slot = Self::slot_bytes(self.block, self.block_bytes / self.block);
        let used = self.meta.len() - self.free.len();
        PromptCacheStats {
            block_tokens: self.block,
            capacity_blocks: self.meta.len(),
            used_blocks: used,
            capacity_bytes: self.meta.len() * slot,
            used_bytes: used * slot,
            hit_blocks: self.hits,
            saved_blocks: self.saved,
            evicted_blocks: self.evicted,
        }
    }

    /// The slot holding the block of `tokens` after the prefix keyed `parent`, and its key.
    fn find(&self, parent: u64, tokens: &[u32]) -> Option<(usize, u64)> {
        let key = chain(parent, tokens);
        let &slot = self.index.get(&key)?;
        let m = &self.meta[slot];
        let b = self.block;
        (m.used && m.parent == parent && self.tokens[slot * b..(slot + 1) * b] == *tokens)
            .then_some((slot, key))
    }

    /// How many leading blocks of `tokens` are cached (at most `max_blocks`). Changes nothing.
    pub fn lookup(&self, tokens: &[u32], max_blocks: usize) -> usize {
        let mut parent = ROOT;
        let mut n = 0;
        for block in tokens.chunks_exact(self.block).take(max_blocks) {
            match self.find(parent, block) {
                Some((_, key)) => parent = key,
                None => break,
            }
            n += 1;
        }
        n
    }

    /// Copies the cached blocks `from..to` of `tokens` (blocks `0..from` being in `seq`
    /// already: it holds exactly `from` blocks) into `seq`, as far as they are cached, and
    /// marks the whole chain used. Returns the blocks `seq` holds after it.
    pub fn load(
        &mut self,
        engine: &mut Engine,
        seq: SeqId,
        tokens: &[u32],
        from: usize,
        to: usize,
    ) -> Result<usize, EngineError> {
        self.clock += 1;
        let b = self.block;
        let mut parent = ROOT;
        for (i, block) in tokens.chunks_exact(b).take(to).enumerate() {
            let Some((slot, key)) = self.find(parent, block) else {
                return Ok(i.max(from));
            };
            self.meta[slot].stamp = self.clock;
            if i >= from {
                let rows = &self.rows[slot * self.block_bytes..(slot + 1) * self.block_bytes];
                engine.import_kv(seq, block, rows)?;
                self.hits += 1;
            }
            parent = key;
        }
        Ok(to.max(from).min(tokens.len() / b))
    }

    /// Saves the first `blocks` blocks of `seq` (whose cache holds `tokens`, at least
    /// `blocks` blocks of it, computed by prefill) that are not cached yet, evicting the least
    /// recently used blocks for room; marks the chain used. Returns the blocks saved (it stops
    /// early, keeping what it saved, when no block can make room).
    pub fn save(
        &mut self,
        engine: &mut Engine,
        seq: SeqId,
        tokens: &[u32],
        blocks: usize,
    ) -> Result<usize, EngineError> {
        self.clock += 1;
        let b = self.block;
        let mut parent = (ROOT, None::<usize>);
        let mut saved = 0;
        for (i, block) in tokens.chunks_exact(b).take(blocks).enumerate() {
            if let Some((slot, key)) = self.find(parent.0, block) {
                self.meta[slot].stamp = self.clock;
                parent = (key, Some(slot));
                continue;
            }
            let key = chain(parent.0, block);
            let Some(slot) = self.take_slot(parent.1) else {
                break;
            };
            let rows = &mut self.rows[slot * self.block_bytes..(slot + 1) * self.block_bytes];
            if let Err(e) = engine.export_kv(seq, i * b, rows) {
                self.free.push(slot);
                return Err(e);
            }
            self.tokens[slot * b..(slot + 1) * b].copy_from_slice(block);
            // a stale index entry of the same key (a collision) is replaced
            if let Some(old) = self.index.insert(key, slot) {
                if old != slot && self.meta[old].used && self.meta[old].key == key {
                    self.drop_slot(old);
                }
            }
            self.meta[slot] = Meta {
                used: true,
                key,
                parent: parent.0,
                children: 0,
                stamp: self.clock,
            };
            if let Some(p) = parent.1 {
                self.meta[p].children += 1;
            }
            self.saved += 1;
            self.version += 1;
            saved += 1;
            parent = (key, Some(slot));
        }
        Ok(saved)
    }

    /// A free slot, evicting the least recently used leaf block (never `keep`) if none is.
    fn take_slot(&mut self, keep: Option<usize>) -> Option<usize> {
        if let Some(s) = self.free.pop() {
            return Some(s);
        }
        let victim = (0..self.meta.len())
            .filter(|&s| Some(s) != keep && self.meta[s].used && self.meta[s].children == 0)
            .min_by_key(|&s| self.meta[s].stamp)?;
        let key = self.meta[victim].key;
        if self.index.get(&key) == Some(&victim) {
            self.index.remove(&key);
        }
        self.drop_slot(victim);
        self.evicted += 1;
        self.free.pop()
    }

    /// Frees `slot` (a leaf): its parent has one child fewer.
    fn drop_slot(&mut self, slot: usize) {
        let parent = self.meta[slot].parent;
        self.meta[slot].used = false;
        if let Some(&p) = self.index.get(&parent) {
            if self.meta[p].used && self.meta[p].key == parent {
                self.meta[p].children = self.meta[p].children.saturating_sub(1);
            }
        }
        self.free.push(slot);
    }
}
