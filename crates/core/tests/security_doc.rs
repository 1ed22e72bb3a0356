//! `docs/security.md` lists every network the target guard judges specially;
//! this keeps the page and the table in `target.rs` from drifting apart.

use std::path::Path;

#[test]
fn the_security_page_lists_every_special_network() {
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/security.md");
    let text = std::fs::read_to_string(&page).expect("cannot read docs/security.md");
    let missing: Vec<String> = navigator_core::special_networks()
        .map(|(network, what, _)| (network.to_string(), what))
        .filter(|(network, _)| !text.contains(&format!("`{network}`")))
        .map(|(network, what)| format!("{network} ({what})"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/security.md does not list these networks of navigator_core's target guard: {missing:?}"
    );
}
