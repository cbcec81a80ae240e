//! Compilation for a device's architecture; need NVRTC (skipped without it, unless
//! `GANTRY_REQUIRE_NVRTC=1`), not a GPU.

use super::*;

fn nvrtc(test: &str) -> bool {
    if nvrtc_version().is_some() {
        return true;
    }
    let why = "libnvrtc.so.13 not found; set LD_LIBRARY_PATH (see host/kernels/nvrtc-check.sh)";
    assert!(
        std::env::var("GANTRY_REQUIRE_NVRTC").as_deref() != Ok("1"),
        "{test}: {why}"
    );
    eprintln!("{test}: skipped: {why}");
    false
}

#[test]
fn kernels_compile_for_the_devices_architecture_once() {
    if !nvrtc("kernels_compile_for_the_devices_architecture_once") {
        return;
    }
    // Hopper (the H200 machines) and Ampere, as CudaBackend::new compiles them.
    for (cc, target) in [((9, 0), ".target sm_90"), ((8, 0), ".target sm_80")] {
        let first = ptx_for(cc).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.len(), KERNEL_SOURCES.len());
        for ptx in first.iter() {
            assert!(ptx.to_src().contains(target), "not {target}");
        }
        // Cached: the same PTX set, not a second compilation.
        assert!(Arc::ptr_eq(&first, &ptx_for(cc).unwrap()));
    }
}

#[test]
fn an_architecture_nvrtc_does_not_know_falls_back_to_its_default() {
    if !nvrtc("an_architecture_nvrtc_does_not_know_falls_back_to_its_default") {
        return;
    }
    assert!(arch_known("compute_90"));
    assert!(!arch_known("compute_990"));
    let ptx = ptx_for((99, 0)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ptx.len(), KERNEL_SOURCES.len());
}

#[test]
fn a_declared_kernel_missing_from_the_ptx_is_named() {
    if !nvrtc("a_declared_kernel_missing_from_the_ptx_is_named") {
        return;
    }
    let source = KernelSource {
        file: "k.cu",
        source: r#"extern "C" __global__ void present() {}"#,
        functions: &["present", "absent"],
    };
    let err = compile_checked(&source).unwrap_err().to_string();
    assert_eq!(err, "compiling k.cu: the PTX defines no kernel `absent`");
    let ok = KernelSource {
        functions: &["present"],
        ..source
    };
    assert_eq!(compile_checked(&ok).unwrap().entries, ["present"]);
}
