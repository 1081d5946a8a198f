//! Embedding qwenrt: two conversations answered together, their tokens streamed as they come.
//!
//! Uses the `qwenrt` crate alone (no server, no model hub). Loads the model directory it is
//! given (the default model's is printed by `qwenrt fetch --hf`, which fetches it on first
//! use), makes one [`Engine`] for two sequences, prefills both prompts in one step, then decodes both in
//! batched steps: every weight matrix is read once per step for the two rows.
//!
//! ```sh
//! cargo run --release --example embed -- "$(target/release/qwenrt fetch --hf)"
//! ```

use std::io::Write;
use std::sync::Arc;

use qwenrt::text::chat;
use qwenrt::{
    Engine, EngineOptions, Feed, Numerics, SamplerParams, SeqId, Tokenizer, Want, Weights,
};

const PROMPTS: [&str; 2] = [
    "Write a Rust function that reverses a string.",
    "In one sentence: what is a KV cache?",
];
const MAX_TOKENS: usize = 96;

struct Stream {
    seq: SeqId,
    decoder: qwenrt::text::tokenizer::StreamDecoder,
    text: String,
    next: Option<u32>,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Some(dir) = std::env::args_os().nth(1).map(std::path::PathBuf::from) else {
        return Err("usage: embed MODEL_DIR (a Hugging Face model directory; \
                    `qwenrt fetch --hf` prints the default model's)"
            .into());
    };
    let weights = Arc::new(Weights::load(&dir)?);
    let tok = Tokenizer::from_model_dir(&dir)?;
    let stop = qwenrt::text::chat::stop_ids(&tok, &weights.config);

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opts = EngineOptions {
        ctx: 1024,
        max_sequences: PROMPTS.len(),
        threads,
        ..EngineOptions::default()
    };
    let mut engine = Engine::new(weights, &opts)?;
    println!("{}", engine.memory_plan());

    // Both prompts in one step; each feed asks for the logits of its last row.
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| tok.encode(&chat::first_turn(chat::DEFAULT_SYSTEM_PROMPT, p)))
        .collect::<Result<_, _>>()?;
    let mut streams = Vec::new();
    for _ in &prompts {
        let seq = engine.create_sequence(SamplerParams::greedy())?;
        streams.push(Stream {
            seq,
            decoder: tok.stream_decoder(),
            text: String::new(),
            next: None,
        });
    }
    let feeds: Vec<Feed> = streams
        .iter()
        .zip(&prompts)
        .map(|(s, p)| Feed {
            seq: s.seq,
            tokens: p,
            numerics: Numerics::Prefill,
            logits: Want::Last,
        })
        .collect();
    engine.step(&feeds, &mut |_, _, _| {})?;
    for s in &mut streams {
        s.next = Some(engine.sample(s.seq)?);
    }

    // Decode: one row per live sequence per step, until each stops.
    for _ in 0..MAX_TOKENS {
        let mut tokens = Vec::new();
        for (i, s) in streams.iter_mut().enumerate() {
            let Some(t) = s.next else { continue };
            if stop.contains(&t) {
                s.next = None;
                continue;
            }
            let piece = s.decoder.push(t);
            print!("[{i}] {piece:?}  ");
            s.text.push_str(piece);
            tokens.push((s.seq, [t]));
        }
        std::io::stdout().flush()?;
        println!();
        if tokens.is_empty() {
            break;
        }
        let feeds: Vec<Feed> = tokens
            .iter()
            .map(|(seq, t)| Feed {
                seq: *seq,
                tokens: t,
                numerics: Numerics::Decode,
                logits: Want::Last,
            })
            .collect();
        engine.step(&feeds, &mut |_, _, _| {})?;
        for s in streams.iter_mut().filter(|s| s.next.is_some()) {
            s.next = Some(engine.sample(s.seq)?);
        }
    }
    for (i, s) in streams.iter_mut().enumerate() {
        s.text.push_str(s.decoder.finish());
        println!("\n--- sequence {i}: {}\n{}", PROMPTS[i], s.text);
    }
    Ok(())
}
