//! `gantry init`, `gantry store` and `gantry key rotate` through the binary.

use crate::support::{gantry, text};

#[test]
fn init_put_rotate_get_and_a_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--data-dir", d]);
        gantry(&all, dir.path())
    };
    let out = run(&["init"]);
    assert!(out.status.success(), "{}", text(&out).1);
    // A second init must not replace the keys.
    let out = run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("already a Gantry data directory"));

    let file = dir.path().join("blob");
    let content: Vec<u8> = (0..2_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();
    let out = run(&["store", "put", file.to_str().unwrap()]);
    let id = text(&out).0.trim().to_string();
    assert_eq!(id.len(), 64, "{}", text(&out).1);

    let out = run(&["key", "rotate"]);
    assert!(
        text(&out).0.contains("1 data key(s) re-wrapped"),
        "{}",
        text(&out).1
    );
    let back = dir.path().join("back");
    let out = run(&["store", "get", &id, "-o", back.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(std::fs::read(&back).unwrap() == content);
    assert!(run(&["store", "verify"]).status.success());

    // One flipped bit in the object: verify and get fail naming it; get writes nothing.
    let object = data.join("objects").join(&id[..2]).join(&id);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[1_500_000] ^= 4;
    std::fs::write(&object, bytes).unwrap();
    let out = run(&["store", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains(&id) && text(&out).1.contains("does not authenticate"));
    let again = dir.path().join("again");
    let out = run(&["store", "get", &id, "-o", again.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!again.exists(), "nothing written from a corrupt object");
}
