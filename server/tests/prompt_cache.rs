//! The prompt cache across requests (`--cache-ram`): `Engine::export_kv` / `import_kv` and
//! [`PromptCache`] at the engine (a sequence that copies a cached prefix in gets the logits a
//! prefill of it gives, bit for bit; blocks are keyed by a hash chain and leave least recently
//! used first), and through the server (the same bytes with and without the cache, greedy and
//! seeded, and its counters in `/metrics`).

#[path = "support/server_kit.rs"]
mod kit;

#[path = "../../tests/support/small_engine.rs"]
mod small;

use kit::*;
use qwenrt::engine::prompt_cache::PromptCache;
use qwenrt::engine::sampler::SamplerParams;
use qwenrt::engine::{EngineError, Feed, Numerics, Want};
use qwenrt_kernels::Dtype;
use small::*;

/// 21 tokens: two blocks of 8 and 5 more.
const PROMPT: [u32; 21] = [
    3, 141, 59, 26, 5, 358, 97, 93, 238, 46, 264, 33, 83, 279, 50, 288, 41, 97, 169, 399, 37,
];

#[test]
fn a_prefix_copied_in_gives_the_logits_of_prefilling_it_bit_for_bit() {
    let (dir, w) = small_model("pcache-bits", 11);
    for kv in [Dtype::F32, Dtype::BF16, Dtype::F16] {
        let mut e = engine(&w, kv);
        let mut cache = PromptCache::new(4, 8, e.kv_row_bytes()).unwrap();
        let a = e.create_sequence(SamplerParams::greedy()).unwrap();
        let b = e.create_sequence(SamplerParams::greedy()).unwrap();
        let c = e.create_sequence(SamplerParams::greedy()).unwrap();
        // b held something else before: what it gets is the cache's
        prefill(&mut e, b, &[7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        e.truncate(b, 0).unwrap();
        // a prefills the first two blocks and saves them
        prefill(&mut e, a, &PROMPT[..16]);
        assert_eq!(cache.save(&mut e, a, &PROMPT, 2).unwrap(), 2, "{kv}");
        assert_eq!(cache.lookup(&PROMPT, 2), 2);
        // b copies them in and prefills the rest; c prefills all of it, in the same chunks
        assert_eq!(cache.load(&mut e, b, &PROMPT, 0, 2).unwrap(), 2);
        assert_eq!(e.position(b).unwrap(), 16);
        assert_eq!(e.tokens(b).unwrap(), &PROMPT[..16]);
        prefill(&mut e, b, &PROMPT[16..]);
        prefill(&mut e, c, &PROMPT[..16]);
        prefill(&mut e, c, &PROMPT[16..]);
        let want = bits(e.logits(c).unwrap());
        assert_eq!(bits(e.logits(b).unwrap()), want, "{kv}");
        // and they decode alike, step after step
        for _ in 0..4 {
            let t = e.sample(c).unwrap();
            assert_eq!(e.sample(b).unwrap(), t, "{kv}");
            let row = [t];
            let feeds = [
                Feed {
                    seq: b,
                    tokens: &row,
                    numerics: Numerics::Decode,
                    logits: Want::Last,
                },
                Feed {
                    seq: c,
                    tokens: &row,
                    numerics: Numerics::Decode,
                    logits: Want::Last,
                },
            ];
            e.step(&feeds, &mut |_, _, _| {}).unwrap();
            assert_eq!(
                bits(e.logits(b).unwrap()),
                bits(e.logits(c).unwrap()),
                "{kv}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn export_and_import_refuse_bad_rows_and_change_nothing() {
    let (dir, w) = small_model("pcache-refuse", 11);
    let mut e = engine(&w, Dtype::BF16);
    let row = e.kv_row_bytes();
    // 2 layers x 2 kv heads x 32 dims, K and V, 2 bytes each
    assert_eq!(row, 2 * 2 * 2 * 32 * 2);
    let a = e.create_sequence(SamplerParams::greedy()).unwrap();
    let b = e.create_sequence(SamplerParams::greedy()).unwrap();
    prefill(&mut e, a, &PROMPT[..8]);
    let mut rows = vec![0u8; 8 * row];
    // past what `a` holds; not whole rows
    assert!(e.export_kv(a, 1, &mut rows).is_err());
    assert!(e.export_kv(a, 0, &mut rows[..row + 3]).is_err());
    e.export_kv(a, 0, &mut rows).unwrap();
    // the wrong number of rows for the tokens; a token past the vocabulary; past the context
    assert!(matches!(
        e.import_kv(b, &PROMPT[..7], &rows),
        Err(EngineError::Cache(_))
    ));
    let mut bad = PROMPT;
    bad[3] = 9999;
    assert!(matches!(
        e.import_kv(b, &bad[..8], &rows),
        Err(EngineError::TokenOutOfRange { token: 9999, .. })
    ));
    assert_eq!(e.position(b).unwrap(), 0);
    for _ in 0..8 {
        e.import_kv(b, &PROMPT[..8], &rows).unwrap();
    }
    assert_eq!(e.position(b).unwrap(), 64);
    assert!(matches!(
        e.import_kv(b, &PROMPT[..8], &rows),
        Err(EngineError::ContextFull {
            needed: 72,
            ctx: 64
        })
    ));
    assert_eq!(e.position(b).unwrap(), 64);
    // logits are not ready after an import: the next step computes them
    assert!(matches!(e.logits(b), Err(EngineError::NoLogits)));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn blocks_are_keyed_by_their_whole_prefix_and_leave_least_recently_used_first() {
    let (dir, w) = small_model("pcache-lru", 11);
    let mut e = engine(&w, Dtype::F32);
    let mut cache = PromptCache::new(3, 4, e.kv_row_bytes()).unwrap();
    assert_eq!(cache.stats().capacity_blocks, 3);
    assert_eq!(cache.stats().used_bytes, 0);
    let s = e.create_sequence(SamplerParams::greedy()).unwrap();
    let p1: Vec<u32> = (10..22).collect(); // 3 blocks
    prefill(&mut e, s, &p1);
    assert_eq!(cache.save(&mut e, s, &p1, 3).unwrap(), 3);
    // saving again saves nothing
    assert_eq!(cache.save(&mut e, s, &p1, 3).unwrap(), 0);
    assert_eq!(cache.lookup(&p1, 3), 3);
    // the same second block after another first block is not cached: the key is the prefix's
    let mut p2 = p1.clone();
    p2[0] = 99;
    assert_eq!(cache.lookup(&p2, 3), 0);
    let mut p3 = p1.clone();
    p3[5] = 99;
    assert_eq!(cache.lookup(&p3, 3), 1);
    assert_eq!(cache.stats().used_blocks, 3);
    assert_eq!(
        cache.stats().used_bytes,
        3 * PromptCache::slot_bytes(4, e.kv_row_bytes())
    );
    // a new prompt needs room: p1's last block (the only leaf) goes, its first two stay
    e.reset(s).unwrap();
    prefill(&mut e, s, &p2[..4]);
    assert_eq!(cache.save(&mut e, s, &p2, 1).unwrap(), 1);
    assert_eq!(cache.lookup(&p1, 3), 2);
    assert_eq!(cache.lookup(&p2, 3), 1);
    assert_eq!(cache.stats().evicted_blocks, 1);
    // p1 used again: p2's block is now the least recently used leaf
    let t = e.create_sequence(SamplerParams::greedy()).unwrap();
    assert_eq!(cache.load(&mut e, t, &p1, 0, 2).unwrap(), 2);
    e.reset(s).unwrap();
    let p4: Vec<u32> = (200..204).collect();
    prefill(&mut e, s, &p4);
    assert_eq!(cache.save(&mut e, s, &p4, 1).unwrap(), 1);
    assert_eq!(cache.lookup(&p2, 3), 0);
    assert_eq!(cache.lookup(&p1, 3), 2);
    assert_eq!(cache.lookup(&p4, 1), 1);
    // a chain longer than the cache keeps what fits, never a block without its prefix
    let mut small = PromptCache::new(2, 4, e.kv_row_bytes()).unwrap();
    e.reset(s).unwrap();
    prefill(&mut e, s, &p1);
    assert_eq!(small.save(&mut e, s, &p1, 3).unwrap(), 2);
    assert_eq!(small.lookup(&p1, 3), 2);
    let _ = std::fs::remove_dir_all(dir);
}

/// A system prompt of many 16-token blocks, shared by every request of the server test.
fn system() -> String {
    let words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma"];
    (0..200)
        .map(|i| words[(i * 3 + i / 7) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn body(question: &str, seed: Option<u64>) -> Value {
    let mut b = json!({
        "messages": [
            {"role": "system", "content": system()},
            {"role": "user", "content": question},
        ],
        "max_tokens": 12,
    });
    match seed {
        Some(s) => {
            b["temperature"] = json!(0.9);
            b["seed"] = json!(s);
        }
        None => b["temperature"] = json!(0),
    }
    b
}

/// Every answer of a fixed set of requests (4 at once, then 4 one by one), in order.
fn answers(s: &Server) -> Vec<String> {
    let questions = [
        "one", "two", "three", "four", "five", "six", "seven", "eight",
    ];
    let ask = |i: usize| {
        let seed = (i % 2 == 1).then_some(40 + i as u64);
        let (code, v) = post(s, "/v1/chat/completions", &body(questions[i], seed));
        assert_eq!(code, 200, "{v}");
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut out: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4).map(|i| sc.spawn(move || ask(i))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    out.extend((4..8).map(ask));
    out
}

#[test]
fn answers_are_the_same_bytes_with_and_without_the_cache() {
    let server = |mib| {
        Server::start(ServerOptions {
            cache_ram_mib: Some(mib),
            parallel: 2,
            ctx: 1024,
            ..opts()
        })
    };
    let off = server(0);
    let without = answers(&off);
    assert_eq!(metric(&off, "qwenrt_prompt_cache_capacity_bytes"), 0.0);
    assert_eq!(metric(&off, "qwenrt_prompt_cache_hit_tokens_total"), 0.0);
    let on = server(16);
    let with = answers(&on);
    assert_eq!(with, without);
    // the cache served prompts, and says so
    let hits = metric(&on, "qwenrt_prompt_cache_hit_tokens_total");
    assert!(hits >= 16.0, "hits {hits}");
    assert_eq!(hits % 16.0, 0.0);
    assert!(metric(&on, "qwenrt_prompt_cache_miss_tokens_total") >= 16.0);
    let used = metric(&on, "qwenrt_prompt_cache_used_bytes");
    let cap = metric(&on, "qwenrt_prompt_cache_capacity_bytes");
    assert!(
        used > 0.0 && used <= cap && cap <= 16.0 * 1048576.0,
        "{used} {cap}"
    );
    assert!(
        metric(&on, "qwenrt_prefix_cache_hits_total") >= hits,
        "the prefix cache counters count this cache's hits"
    );
}

#[test]
fn a_cache_larger_than_the_memory_is_refused_naming_the_flag() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let o = ServerOptions {
        cache_ram_mib: Some(1 << 30), // 1 PiB
        ..opts()
    };
    let e = run_on(listener, weights(), tokenizer(), "m".into(), o, async {}).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("--cache-ram 1073741824 MiB exceeds the memory available"),
        "{msg}"
    );
}
