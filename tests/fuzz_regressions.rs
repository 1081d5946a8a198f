//! Replays every kept fuzz input (`fuzz/regressions/<target>/*`, crashers once fixed, and
//! the committed seeds in `fuzz/seeds/<target>/`) through the harness its target runs, for
//! every target of `qwenrt::testkit::fuzzing::TARGETS`, and checks that `fuzz/` names the same
//! targets as that list.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use qwenrt::testkit::fuzzing::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    v.retain(|p| p.is_file());
    v.sort();
    v
}

fn listed() -> BTreeSet<String> {
    TARGETS.iter().map(|(t, _)| t.to_string()).collect()
}

#[test]
fn replay_regressions_and_seeds() {
    let fuzz = fuzz_dir();
    let mut replayed = 0;
    let mut per_target = vec![0; TARGETS.len()];
    for kind in ["regressions", "seeds"] {
        let root = fuzz.join(kind);
        // every directory names a target, so an input cannot sit somewhere it is never replayed
        for entry in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    TARGETS.iter().any(|(t, _)| *t == name),
                    "{} is not a fuzz target's directory (targets: {:?})",
                    path.display(),
                    listed()
                );
            }
        }
        for (i, (target, harness)) in TARGETS.iter().enumerate() {
            for file in files(&root.join(target)) {
                let data = std::fs::read(&file).unwrap();
                eprintln!("replaying {}", file.display());
                harness(&data);
                replayed += 1;
                per_target[i] += 1;
            }
        }
    }
    // every target replays something: a target without a seed would never be run here
    for ((target, _), n) in TARGETS.iter().zip(&per_target) {
        assert!(*n > 0, "fuzz target {target} has no input in fuzz/seeds/{target}/ or fuzz/regressions/{target}/");
    }
    // the committed seeds alone are 21 files
    assert!(replayed >= 21, "only {replayed} inputs replayed");
}

#[test]
fn fuzz_targets_are_the_listed_ones() {
    let fuzz = fuzz_dir();
    let sources: BTreeSet<String> = files(&fuzz.join("fuzz_targets"))
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    // the `name`s of fuzz/Cargo.toml's [[bin]] sections
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml")).unwrap();
    let mut bins = BTreeSet::new();
    let mut in_bin = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_bin = line == "[[bin]]";
        } else if let (true, Some(v)) = (in_bin, line.strip_prefix("name")) {
            let name = v
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"');
            bins.insert(name.to_string());
        }
    }
    let listed = listed();
    assert_eq!(
        listed.len(),
        TARGETS.len(),
        "a target is listed twice in TARGETS"
    );
    assert_eq!(
        sources, listed,
        "fuzz/fuzz_targets/*.rs and qwenrt::testkit::fuzzing::TARGETS name different targets"
    );
    assert_eq!(
        bins, listed,
        "fuzz/Cargo.toml's [[bin]]s and qwenrt::testkit::fuzzing::TARGETS name different targets"
    );
}
