//! The embedding example runs to its end: `cargo test --workspace` proves the core alone can
//! schedule under a policy, preprocess in the sandbox and train.

use std::process::Command;

#[test]
fn the_embedder_schedules_under_a_policy_preprocesses_and_trains_on_the_core_alone() {
    let out = Command::new(env!("CARGO_BIN_EXE_gantry-example-embedder"))
        .output()
        .expect("running the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "policy: ada-elsewhere refused: user ada is not a member of tenant language",
        "scheduler binpack: ada-train -> ",
        "preprocess standardize: 10000 records",
        "train: ",
    ] {
        assert!(stdout.contains(line), "no `{line}` in:\n{stdout}");
    }
}
