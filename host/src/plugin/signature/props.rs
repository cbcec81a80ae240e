//! Property tests: a `plugin.sig` (mutated as JSON text), the wasm and the manifest (mutated as
//! bytes) verify only if the key is trusted and both files are exactly the ones signed.

use proptest::prelude::*;
use ring::signature::Ed25519KeyPair;

use super::*;
use gantry_fuzz::{self as fuzz, Syntax};

const WASM: &[u8] = b"\0asm\x0d\0\x01\0component bytes";
const MANIFEST: &[u8] = b"name = \"p\"\nversion = \"0.1.0\"\n";

fn key() -> Ed25519KeyPair {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    #[test]
    fn a_mutated_signature_verifies_only_for_the_signed_files_and_a_trusted_key(
        sig_edits in prop::collection::vec(fuzz::mutation(Syntax::Json), 0..3),
        wasm_edits in prop::collection::vec(fuzz::mutation(Syntax::Json), 0..2),
        manifest_edits in prop::collection::vec(fuzz::mutation(Syntax::Toml), 0..2),
        trust_signer in any::<bool>(),
    ) {
        thread_local!(static KEYS: (Ed25519KeyPair, Ed25519KeyPair) = (key(), key()));
        KEYS.with(|(signer, other)| -> Result<(), TestCaseError> {
            let sig = sign(signer, WASM, MANIFEST);
            let text = serde_json::to_vec_pretty(&sig).unwrap();
            let text = fuzz::apply(&text, Syntax::Json, &sig_edits);
            let wasm = fuzz::apply(WASM, Syntax::Json, &wasm_edits);
            let manifest = fuzz::apply(MANIFEST, Syntax::Toml, &manifest_edits);
            let trusted = if trust_signer { signer } else { other };
            let trusted = vec![hex(trusted.public_key().as_ref())];
            let Ok(parsed) = serde_json::from_slice::<PluginSignature>(&text) else {
                return Ok(());
            };
            if verify(&parsed, &wasm, &manifest, &trusted).is_ok() {
                prop_assert!(trust_signer);
                prop_assert_eq!(&wasm[..], WASM);
                prop_assert_eq!(&manifest[..], MANIFEST);
                prop_assert_eq!(keys::from_hex(&parsed.key), keys::from_hex(&sig.key));
            }
            Ok(())
        })?;
    }
}
