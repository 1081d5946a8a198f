//! The scheduler's side of the prompt cache ([`PromptCache`], `--cache-ram`).
//!
//! - Saving: after each step, a prefilling job's whole prompt blocks computed so far are saved
//!   (so a job that arrives while another prefills the same system prompt finds it block by
//!   block), and again when a job finishes (marking its chain recently used). Only rows a
//!   prefill computed or a cache load copied are saved: the scheduler tracks, per sequence
//!   slot, how many leading positions are such "clean" rows (a reused idle prefix may end in
//!   an answer's decode rows, which are not).
//! - Loading: a job is placed on the idle sequence sharing the longest prefix with its
//!   prompt, or on a free one with the cache's longest block prefix copied in, whichever
//!   covers more; and before each step a prefilling job whose prompt has more whole blocks
//!   cached than it holds copies them in (the cache changed since it last looked).
//!
//! At least one prompt token is always left to prefill, for the logits of the first sample;
//! a job scoring its prompt (echo with logprobs) uses no cache.

use std::sync::atomic::Ordering;

use qwenrt::engine::prompt_cache::PromptCache;
use qwenrt::engine::{EngineError, SeqId};

use super::Scheduler;

/// Whole blocks of a prompt of `len` tokens that may come from the cache: one token is left.
fn loadable_blocks(len: usize, block: usize) -> usize {
    len.saturating_sub(1) / block
}

impl Scheduler {
    /// Whether a job's prompt may use the cache (a scored prompt needs every token's logits).
    pub(super) fn cacheable(&self, i: usize) -> bool {
        let req = &self.active[i].job.req;
        self.pcache.is_some() && !(req.echo && req.logprobs.is_some())
    }

    /// Prompt tokens the cache could copy into an empty sequence for `prompt` (whole blocks).
    pub(super) fn cache_lookup(&self, prompt: &[u32]) -> usize {
        self.pcache.as_ref().map_or(0, |c| {
            let b = c.block_tokens();
            c.lookup(prompt, loadable_blocks(prompt.len(), b)) * b
        })
    }

    /// Copies cached blocks of `prompt` into `seq`, which holds `have` of its tokens (a
    /// partial block of them is dropped and copied back). Returns the tokens it holds after.
    pub(super) fn cache_load(
        &mut self,
        seq: SeqId,
        prompt: &[u32],
        have: usize,
    ) -> Result<usize, EngineError> {
        let Some(cache) = self.pcache.as_mut() else {
            return Ok(have);
        };
        let b = cache.block_tokens();
        let limit = loadable_blocks(prompt.len(), b);
        let from = have / b;
        if from >= limit || cache.lookup(prompt, limit) <= from {
            return Ok(have);
        }
        self.engine.truncate(seq, from * b)?;
        let clean = &mut self.clean[seq.slot()];
        let was_clean = *clean >= from * b;
        *clean = (*clean).min(from * b);
        let held = match cache.load(&mut self.engine, seq, prompt, from, limit) {
            Ok(n) => n * b,
            Err(e) => {
                let _ = self.engine.truncate(seq, 0);
                self.clean[seq.slot()] = 0;
                return Err(e);
            }
        };
        if was_clean {
            self.clean[seq.slot()] = held;
        }
        self.shared
            .metrics
            .prompt_cache_hit_tokens
            .fetch_add((held - from * b) as u64, Ordering::Relaxed);
        Ok(held)
    }

    /// Before a step: prefilling jobs copy in blocks the cache gained since they last looked.
    pub(super) fn cache_refill(&mut self) {
        let Some(version) = self.pcache.as_ref().map(PromptCache::version) else {
            return;
        };
        for i in 0..self.active.len() {
            let a = &self.active[i];
            if a.row_len > 0 || a.looked == version || !self.cacheable(i) {
                continue;
            }
            let (seq, fed) = (a.seq, a.fed);
            self.active[i].looked = version;
            let prompt = std::mem::take(&mut self.active[i].job.req.prompt);
            let loaded = self.cache_load(seq, &prompt, fed);
            let a = &mut self.active[i];
            a.job.req.prompt = prompt;
            match loaded {
                Ok(held) if held > fed => {
                    a.reused += held - fed;
                    a.fed = held;
                    self.shared
                        .metrics
                        .prompt_tokens_reused
                        .fetch_add((held - fed) as u64, Ordering::Relaxed);
                }
                Ok(_) => {}
                // the sequence was emptied: this job prefills its whole prompt
                Err(_) => {
                    a.reused = 0;
                    a.fed = 0;
                }
            }
        }
    }

    /// Saves job `i`'s whole prompt blocks held as clean rows (not already cached).
    pub(super) fn cache_save(&mut self, i: usize) {
        if !self.cacheable(i) {
            return;
        }
        let Some(cache) = self.pcache.as_mut() else {
            return;
        };
        let a = &self.active[i];
        let b = cache.block_tokens();
        let held = self.clean[a.seq.slot()]
            .min(a.fed)
            .min(a.job.req.prompt.len());
        let blocks = held / b;
        if blocks == 0 {
            return;
        }
        // a failed copy out leaves the sequence as it was: nothing more is saved for it
        let _ = cache.save(&mut self.engine, a.seq, &a.job.req.prompt, blocks);
    }

    /// Job `i`'s prompt is in: counts the whole blocks it computed as misses.
    pub(super) fn cache_count_misses(&mut self, i: usize) {
        if !self.cacheable(i) {
            return;
        }
        let Some(cache) = self.pcache.as_ref() else {
            return;
        };
        let b = cache.block_tokens();
        let a = &self.active[i];
        let eligible = loadable_blocks(a.job.req.prompt.len(), b);
        let missed = eligible.saturating_sub(a.reused / b);
        self.shared
            .metrics
            .prompt_cache_miss_tokens
            .fetch_add((missed * b) as u64, Ordering::Relaxed);
    }

    /// Publishes the cache's bytes.
    pub(super) fn cache_publish(&self) {
        if let Some(c) = &self.pcache {
            let s = c.stats();
            let m = &self.shared.metrics;
            m.prompt_cache_used_bytes
                .store(s.used_bytes as u64, Ordering::Relaxed);
            m.prompt_cache_capacity_bytes
                .store(s.capacity_bytes as u64, Ordering::Relaxed);
        }
    }
}
