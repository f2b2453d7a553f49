//! Building the real tokenizers must be fast: it happens on every model load.

mod common;

use std::time::Instant;

use fulcrum_tokenizer::Tokenizer;

#[test]
fn real_tokenizers_build_quickly() {
    for name in [common::GEMMA, common::QWEN_05] {
        // The best of three builds: one can land behind another test binary on a shared 2-core host.
        let (elapsed, vocab) = (0..3)
            .map(|_| {
                let spec = common::load_spec(name);
                let start = Instant::now();
                let tok = Tokenizer::new(spec).expect("tokenizer");
                (start.elapsed(), tok.vocab_size())
            })
            .min()
            .unwrap();
        eprintln!("{name}: {vocab} tokens built in {elapsed:?}");
        // The target is < 300 ms in release; the bound leaves room for a loaded CI machine.
        assert!(
            elapsed.as_millis() < 1500,
            "{name}: building took {elapsed:?}"
        );
    }
}

#[test]
fn long_text_encodes_quickly() {
    // About 35 KB of prose with many newlines (each a user-defined token in Gemma's vocabulary).
    let text = "The GNU General Public License is a free, copyleft license for software and other kinds of works.\n\n"
        .repeat(350);
    for name in [common::GEMMA, common::QWEN_05] {
        let tok = common::load(name);
        let (elapsed, ids) = (0..3)
            .map(|_| {
                let start = Instant::now();
                let ids = tok.encode(&text, true, true);
                (start.elapsed(), ids)
            })
            .min()
            .unwrap();
        eprintln!(
            "{name}: {} bytes -> {} tokens in {elapsed:?}",
            text.len(),
            ids.len()
        );
        assert_eq!(tok.decode(&ids, false), text);
        assert!(
            elapsed.as_millis() < 1000,
            "{name}: encoding took {elapsed:?}"
        );
    }
}
