//! Every Rust snippet of the README appears, line for line, among the doctests of
//! `src/readme.rs` (which compile it, with the setup the README leaves out), so a
//! README example cannot rot: change one and this test names the other.

use std::path::Path;

/// The fenced `rust` blocks of a Markdown text, each as its lines.
fn readme_blocks(text: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start().starts_with("```rust") => current = Some(Vec::new()),
            Some(b) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            Some(b) => b.push(line.to_string()),
            None => {}
        }
    }
    blocks
}

/// The doctests of a Rust file's `///` comments, hidden (`# `) lines removed.
fn doctest_blocks(text: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        let Some(doc) = line.trim_start().strip_prefix("///") else {
            continue;
        };
        let doc = doc.strip_prefix(' ').unwrap_or(doc);
        match &mut current {
            None if doc.starts_with("```") => current = Some(Vec::new()),
            Some(b) if doc.starts_with("```") => {
                blocks.push(std::mem::take(b));
                current = None;
            }
            Some(b) if !(doc == "#" || doc.starts_with("# ")) => b.push(doc.to_string()),
            _ => {}
        }
    }
    blocks
}

#[test]
fn every_readme_snippet_is_a_compiled_doctest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("../../README.md")).expect("README.md");
    let docs = std::fs::read_to_string(root.join("src/readme.rs")).expect("src/readme.rs");
    let (snippets, tests) = (readme_blocks(&readme), doctest_blocks(&docs));
    assert!(
        snippets.len() >= 5,
        "README has {} rust snippets",
        snippets.len()
    );
    for snippet in &snippets {
        assert!(
            tests.contains(snippet),
            "this README snippet is not among src/readme.rs's doctests (update both):\n{}",
            snippet.join("\n")
        );
    }
    println!(
        "{} README snippets, each compiled as a doctest",
        snippets.len()
    );
}
