use std::fs;

use super::*;
use crate::testing::{listing, tiny_tensors, write_tiny_model, TestDir};

#[test]
fn a_wide_draft_is_copied_to_q4_0_once_and_the_copy_reused() {
    let dir = TestDir::new("draft-copy");
    let input = dir.0.join("draft.gguf");
    write_tiny_model(&input, &tiny_tensors());
    let size = fs::metadata(&input).expect("stat").len();
    let cache = dir.0.join("models");

    let kept = draft_weights_in(&cache, &input, DraftType::Keep).expect("keep");
    assert!(
        matches!(&kept, DraftWeights::Original(p) if *p == input),
        "{kept:?}"
    );
    assert!(!cache.exists(), "keep writes nothing");

    let first = draft_weights_in(&cache, &input, DraftType::Q4_0).expect("copy");
    let copy = cache
        .join("derived")
        .join(format!("draft-{size}.q4_0.gguf"));
    assert!(
        matches!(&first, DraftWeights::Copy { path, written: true } if *path == copy),
        "{first:?}"
    );
    assert_eq!(
        listing(&cache.join("derived")),
        [format!("draft-{size}.q4_0.gguf")]
    );
    let file = GgufFile::open(&copy).expect("the copy reads back");
    assert_eq!(
        file.tensor("blk.0.ffn_up.weight").map(|t| t.ty),
        Some(GgmlType::Q4_0)
    );
    drop(file);
    let modified = fs::metadata(&copy)
        .and_then(|m| m.modified())
        .expect("mtime");

    let again = draft_weights_in(&cache, &input, DraftType::Q4_0).expect("reuse");
    assert!(
        matches!(&again, DraftWeights::Copy { path, written: false } if *path == copy),
        "{again:?}"
    );
    assert_eq!(
        fs::metadata(&copy)
            .and_then(|m| m.modified())
            .expect("mtime"),
        modified
    );

    // The copy itself is narrow: drafting from it directly loads it as it is.
    let narrow = draft_weights_in(&cache, &copy, DraftType::Q4_0).expect("narrow");
    assert!(
        matches!(&narrow, DraftWeights::Original(p) if *p == copy),
        "{narrow:?}"
    );
}

#[test]
fn a_copy_that_cannot_be_written_falls_back_to_the_file_with_a_warning() {
    let dir = TestDir::new("draft-unwritable");
    let input = dir.0.join("draft.gguf");
    write_tiny_model(&input, &tiny_tensors());
    let cache = dir.0.join("models");
    fs::create_dir_all(&cache).expect("mkdir");
    // A file where the derived/ folder should be: the copy's folder cannot be created.
    fs::write(cache.join("derived"), b"in the way").expect("write");

    let weights = draft_weights_in(&cache, &input, DraftType::Q4_0).expect("fallback");
    assert_eq!(weights.path(), input);
    let DraftWeights::Fallback { warning, .. } = &weights else {
        panic!("expected a fallback, got {weights:?}");
    };
    let message = warning.to_string();
    assert!(message.contains("cannot write a Q4_0 copy"), "{message}");
    assert!(message.contains(&input.display().to_string()), "{message}");
    assert!(message.contains("derived"), "{message}");
}

#[test]
fn a_file_that_is_not_gguf_is_an_error() {
    let dir = TestDir::new("draft-not-gguf");
    let input = dir.0.join("draft.gguf");
    fs::write(&input, b"not a model").expect("write");
    let err = draft_weights_in(&dir.0, &input, DraftType::Q4_0).expect_err("not GGUF");
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
    assert_eq!(listing(&dir.0), ["draft.gguf"]);
}
