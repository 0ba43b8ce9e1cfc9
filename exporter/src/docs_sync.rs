//! Keeps the user docs true: every emitted metric and every configuration variable must
//! appear in the README and the telemetry reference, so docs and code cannot drift.
use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_metric_is_documented_with_its_unit() {
    let (readme, reference) = (read("README.md"), read("docs/telemetry.md"));
    for m in flowtel_semconv::metric::ALL {
        let row = format!("`{}`", m.name);
        for (doc, text) in [("README.md", &readme), ("docs/telemetry.md", &reference)] {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("| {row}")))
                .unwrap_or_else(|| panic!("{} missing from {doc}", m.name));
            assert!(line.contains(&format!("`{}`", m.unit)), "{doc}: {} should say unit {}", m.name, m.unit);
        }
    }
}

#[test]
fn every_setting_is_documented_with_its_variable() {
    let readme = read("README.md");
    let example = read("examples/flowtel.yaml");
    for (key, var) in crate::config::settings() {
        let line = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}`")))
            .unwrap_or_else(|| panic!("{key} missing from README"));
        assert!(line.contains(&format!("`{var}`")), "README row for {key} should name {var}");
        let leaf = key.rsplit('.').next().unwrap_or(&key);
        assert!(example.contains(&format!("{leaf}:")), "examples/flowtel.yaml lacks {key}");
    }
}

#[test]
fn example_config_is_valid_and_is_the_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/flowtel.yaml");
    let config = crate::config::Config::load(Some(&path), &[]).expect("examples/flowtel.yaml loads");
    assert_eq!(config, crate::config::Config::default());
}
