//! The CUDA backend against the reference kernels and the CPU backend.
//!
//! Two kinds of test: NVRTC compile checks, which need only `libnvrtc.so.13` (no GPU; CI runs
//! them through `host/kernels/nvrtc-check.sh`), and device tests, which need a GPU. Each skips
//! with its reason on stderr when its library or device is missing, unless
//! `GANTRY_REQUIRE_NVRTC=1` / `GANTRY_REQUIRE_GPU=1` turns the skip into a failure (CI on
//! machines that must have them).
#![cfg(feature = "cuda")]

use gantry_kernels::agreement::{
    adam_cases, assert_close, assert_staging_changes_nothing, bf16_round, fit, gemm_cases,
    transpose, values,
};
use gantry_kernels::cuda::{self, CudaBackend};
use gantry_kernels::{
    Activation, Adam, Backend, CpuBackend, GemmShape, KernelError, Loss, MlpSpec, Op, Optimizer,
    Precision, Trainer, reference, synthetic,
};

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// `true` when NVRTC can be loaded; otherwise says why the test is skipped (or fails).
fn nvrtc_or_skip(test: &str) -> bool {
    if let Some((major, minor)) = cuda::nvrtc_version() {
        eprintln!("{test}: NVRTC {major}.{minor}");
        return true;
    }
    let why = "libnvrtc.so.13 not found; set LD_LIBRARY_PATH to a folder holding it \
               (host/kernels/nvrtc-check.sh installs one from PyPI)";
    assert!(!required("GANTRY_REQUIRE_NVRTC"), "{test}: {why}");
    eprintln!("{test}: skipped: {why}");
    false
}

/// Why there is no device to test on, if there is none.
fn no_device() -> Option<String> {
    match cuda::detect() {
        Ok(devices) if devices.is_empty() => Some("the CUDA driver found no device".into()),
        Ok(_) => None,
        Err(why) => Some(why),
    }
}

/// A backend on device 0, or `None` (and the reason on stderr) without one.
fn gpu(test: &str, precision: Precision) -> Option<CudaBackend> {
    if let Some(why) = no_device() {
        assert!(!required("GANTRY_REQUIRE_GPU"), "{test}: {why}");
        eprintln!("{test}: skipped: {why}");
        return None;
    }
    let backend = CudaBackend::new(0, precision).unwrap();
    eprintln!("{test}: {}", backend.describe());
    Some(backend)
}

fn cpu() -> CpuBackend {
    CpuBackend::new(1).unwrap()
}

fn to_host(gpu: &CudaBackend, buf: &<CudaBackend as Backend>::Buffer) -> Vec<f32> {
    let mut out = vec![0.0; buf.len()];
    gpu.download(buf, &mut out).unwrap();
    out
}

// ---- NVRTC only -------------------------------------------------------------------------------

#[test]
fn every_cuda_kernel_compiles_to_ptx() {
    if !nvrtc_or_skip("every_cuda_kernel_compiles_to_ptx") {
        return;
    }
    let compiled = cuda::compile_kernels().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compiled.len(), cuda::KERNEL_SOURCES.len());
    for (c, source) in compiled.iter().zip(cuda::KERNEL_SOURCES) {
        eprintln!(
            "compiled {}: {} bytes of PTX, kernels {:?}",
            c.file, c.ptx_bytes, c.entries
        );
        assert_eq!(c.file, source.file);
        assert!(c.ptx_bytes > 0);
        assert_eq!(c.entries, source.functions);
    }
}

#[test]
fn a_broken_kernel_is_refused_with_the_compilers_message() {
    if !nvrtc_or_skip("a_broken_kernel_is_refused_with_the_compilers_message") {
        return;
    }
    let broken = r#"extern "C" __global__ void broken(float* x) { x[0] = not_declared; }"#;
    let err = cuda::compile_source("broken.cu", broken).unwrap_err();
    let KernelError::Device { context, message } = &err else {
        panic!("not a device error: {err:?}");
    };
    assert!(context.contains("broken.cu"), "{context}");
    // NVRTC's own diagnostic: file, the undeclared name, "error".
    assert!(
        message.contains("broken.cu") && message.contains("not_declared"),
        "{message}"
    );
    assert!(message.contains("error"), "{message}");
    eprintln!("refused as expected: {err}");
    assert!(cuda::compile_source("fine.cu", "extern \"C\" __global__ void k() {}").unwrap() > 0);
}

// ---- without a device -------------------------------------------------------------------------

#[test]
fn detect_explains_itself_and_never_panics() {
    match cuda::detect() {
        Err(why) => {
            eprintln!("detect: {why}");
            assert!(!why.is_empty());
            // Without a driver a backend is a typed error, not a panic.
            let err = CudaBackend::new(0, Precision::F32).unwrap_err();
            assert!(matches!(err, KernelError::Device { .. }), "{err:?}");
            assert!(err.to_string().contains(&why), "{err}");
            eprintln!("CudaBackend::new: {err}");
        }
        Ok(devices) => {
            for d in &devices {
                eprintln!("detect: {d}");
                assert!(!d.name.is_empty() && d.memory_bytes > 0, "{d:?}");
            }
            // An ordinal past the last device is a typed error too.
            let err = CudaBackend::new(devices.len(), Precision::F32).unwrap_err();
            let count = format!("sees {} device(s)", devices.len());
            assert!(err.to_string().contains(&count), "{err}");
        }
    }
}

// ---- on a device ------------------------------------------------------------------------------

#[test]
fn gemm_matches_the_reference_for_every_transpose_and_precision() {
    // Tolerances: f32 like the CPU backend; tf32 (10-bit mantissa) and bf16 (7-bit) inputs
    // over k <= 300 values in [-1, 1].
    for (precision, tol) in [
        (Precision::F32, 1e-4),
        (Precision::Tf32, 1e-2),
        (Precision::Bf16, 2e-2),
    ] {
        let Some(gpu) = gpu("gemm_matches_the_reference", precision) else {
            return;
        };
        for case in gemm_cases(&[(1, 1, 1), (7, 5, 3), (33, 65, 17), (130, 70, 300)]) {
            let (ga, gb) = (gpu.upload(&case.a).unwrap(), gpu.upload(&case.b).unwrap());
            let mut gc = gpu.upload(&case.c).unwrap();
            gpu.gemm(case.shape, &ga, &gb, &mut gc).unwrap();
            assert_close(&to_host(&gpu, &gc), &case.want, tol);
        }
    }
}

#[test]
fn bf16_gemm_is_exact_on_bf16_inputs() {
    // With the inputs rounded on the host first, only the f32 accumulation differs from the
    // f64 reference: a tight tolerance checks the conversion kernel and the operand order.
    let Some(gpu) = gpu("bf16_gemm_is_exact_on_bf16_inputs", Precision::Bf16) else {
        return;
    };
    let (m, n, k) = (64, 48, 200);
    let a: Vec<f32> = values(m * k, 4).into_iter().map(bf16_round).collect();
    let b: Vec<f32> = values(k * n, 5).into_iter().map(bf16_round).collect();
    let mut want = vec![0.0; m * n];
    reference::gemm(
        Op::N,
        Op::T,
        m,
        n,
        k,
        1.0,
        &a,
        &transpose(&b, k, n),
        0.0,
        &mut want,
    );
    let (ga, gb) = (
        gpu.upload(&a).unwrap(),
        gpu.upload(&transpose(&b, k, n)).unwrap(),
    );
    let mut gc = gpu.alloc(m * n).unwrap();
    gpu.gemm(GemmShape::new(Op::N, Op::T, m, n, k), &ga, &gb, &mut gc)
        .unwrap();
    assert_close(&to_host(&gpu, &gc), &want, 1e-4);
}

#[test]
fn gemm_edge_cases_match_the_cpu_backend() {
    let Some(gpu) = gpu("gemm_edge_cases_match_the_cpu_backend", Precision::F32) else {
        return;
    };
    // beta = 0 ignores NaN in c.
    let mut c = gpu.upload(&[f32::NAN; 4]).unwrap();
    let (a, b) = (
        gpu.upload(&[1.0, 2.0]).unwrap(),
        gpu.upload(&[3.0, 4.0]).unwrap(),
    );
    gpu.gemm(GemmShape::new(Op::N, Op::N, 2, 2, 1), &a, &b, &mut c)
        .unwrap();
    assert_eq!(to_host(&gpu, &c), [3.0, 4.0, 6.0, 8.0]);
    // k = 0: c = beta * c.
    let empty = gpu.alloc(0).unwrap();
    let shape = GemmShape {
        beta: 0.5,
        ..GemmShape::new(Op::N, Op::N, 2, 2, 0)
    };
    gpu.gemm(shape, &empty, &empty, &mut c).unwrap();
    assert_eq!(to_host(&gpu, &c), [1.5, 2.0, 3.0, 4.0]);
    // Shapes are typed errors with the CPU backend's wording.
    let err = gpu
        .gemm(
            GemmShape::new(Op::N, Op::N, 2, 2, 2),
            &gpu.alloc(3).unwrap(),
            &gpu.alloc(4).unwrap(),
            &mut gpu.alloc(4).unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "gemm: a has 3 values, expected 4");
}

#[test]
fn element_wise_kernels_match_the_cpu_backend_bit_for_bit() {
    let Some(gpu) = gpu("element_wise_kernels_match_the_cpu_backend", Precision::F32) else {
        return;
    };
    let cpu = cpu();
    // Narrow, wide and odd shapes; 300 x 512 spans many blocks.
    for (rows, cols) in [(3, 5), (1, 1), (300, 512), (1000, 10), (7, 1000)] {
        let x0 = values(rows * cols, 4);
        let bias = values(cols, 5);
        let gbias = gpu.upload(&bias).unwrap();
        for relu in [true, false] {
            let mut want = x0.clone();
            cpu.bias_activation(&mut want, &bias, relu).unwrap();
            let mut got = gpu.upload(&x0).unwrap();
            gpu.bias_activation(&mut got, &gbias, relu).unwrap();
            assert!(to_host(&gpu, &got) == want, "bias_activation relu={relu}");
        }
        let mut act = x0.clone();
        reference::bias_relu_forward(&mut act, &bias);
        let g0 = values(rows * cols, 6);

        let mut want = g0.clone();
        cpu.relu_backward(&mut want, &act).unwrap();
        let mut got = gpu.upload(&g0).unwrap();
        gpu.relu_backward(&mut got, &gpu.upload(&act).unwrap())
            .unwrap();
        assert!(to_host(&gpu, &got) == want, "relu_backward");

        let mut sums = gpu.upload(&vec![f32::NAN; cols]).unwrap();
        gpu.bias_grad(&got, &mut sums).unwrap();
        assert_close(
            &to_host(&gpu, &sums),
            &reference::bias_grad(&want, cols),
            1e-6,
        );

        let mut want_y = x0.clone();
        cpu.axpy(-0.25, &g0, &mut want_y).unwrap();
        cpu.scale(3.0, &mut want_y).unwrap();
        let mut y = gpu.upload(&x0).unwrap();
        gpu.axpy(-0.25, &gpu.upload(&g0).unwrap(), &mut y).unwrap();
        gpu.scale(3.0, &mut y).unwrap();
        assert!(to_host(&gpu, &y) == want_y, "axpy, scale");
    }
    let err = gpu
        .bias_activation(&mut gpu.alloc(7).unwrap(), &gpu.alloc(2).unwrap(), true)
        .unwrap_err();
    assert!(matches!(err, KernelError::Shape { .. }), "{err}");
}

#[test]
fn losses_match_the_reference_and_the_cpu_backend() {
    let Some(gpu) = gpu("losses_match_the_reference", Precision::F32) else {
        return;
    };
    let cpu = cpu();
    // 40 classes span two warp passes; 1 class-pair row; 5000 rows span many blocks.
    for (rows, classes) in [(4, 3), (1, 2), (1000, 40), (5000, 10)] {
        let logits: Vec<f32> = values(rows * classes, 7).iter().map(|v| v * 8.0).collect();
        let labels: Vec<u32> = (0..rows).map(|r| (r * 7 % classes) as u32).collect();
        let (want_loss, want_grad) = reference::softmax_cross_entropy(&logits, &labels, classes);
        let label_buf: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
        let scale = 1.0 / rows as f32;
        let mut cpu_grad = vec![0.0; rows * classes];
        let cpu_sum = cpu
            .softmax_cross_entropy(&logits, &label_buf, classes, scale, &mut cpu_grad)
            .unwrap();
        let mut grad = gpu.alloc(rows * classes).unwrap();
        let sum = gpu
            .softmax_cross_entropy(
                &gpu.upload(&logits).unwrap(),
                &gpu.upload(&label_buf).unwrap(),
                classes,
                scale,
                &mut grad,
            )
            .unwrap();
        let mean = (sum / rows as f64) as f32;
        assert!(
            (mean - want_loss).abs() < 1e-4 * want_loss.max(1.0),
            "{mean} vs {want_loss}"
        );
        assert!(
            (sum - cpu_sum).abs() < 1e-5 * cpu_sum.abs().max(1.0),
            "{sum} vs {cpu_sum}"
        );
        let grad = to_host(&gpu, &grad);
        assert_close(&grad, &want_grad, 1e-5);
        assert_close(&grad, &cpu_grad, 1e-6);

        let pred = values(rows * classes, 8);
        let target = values(rows * classes, 9);
        let n = pred.len();
        let (want_mse, want_grad) = reference::mse(&pred, &target);
        let mut cpu_grad = vec![0.0; n];
        let cpu_sum = cpu
            .mse(&pred, &target, 1.0 / n as f32, &mut cpu_grad)
            .unwrap();
        let mut grad = gpu.alloc(n).unwrap();
        let sum = gpu
            .mse(
                &gpu.upload(&pred).unwrap(),
                &gpu.upload(&target).unwrap(),
                1.0 / n as f32,
                &mut grad,
            )
            .unwrap();
        assert!(((sum / n as f64) as f32 - want_mse).abs() < 1e-5);
        assert!(
            (sum - cpu_sum).abs() < 1e-9 * cpu_sum.max(1.0),
            "{sum} vs {cpu_sum}"
        );
        let grad = to_host(&gpu, &grad);
        assert_close(&grad, &want_grad, 1e-5);
        assert!(
            grad == cpu_grad,
            "mse gradient differs from the CPU backend's"
        );
    }
}

#[test]
fn invalid_labels_are_typed_errors_naming_the_first_bad_row() {
    let Some(gpu) = gpu("invalid_labels_are_typed_errors", Precision::F32) else {
        return;
    };
    let cpu = cpu();
    for labels in [
        vec![0.0, 2.0, 1.0, 5.0],
        vec![0.0, 1.0, -1.0, 0.0],
        vec![1.5, 0.0, 0.0, 0.0],
        vec![0.0, 0.0, 0.0, f32::NAN],
    ] {
        let logits = values(4 * 2, 1);
        let want = cpu
            .softmax_cross_entropy(&logits, &labels, 2, 1.0, &mut vec![0.0; 8])
            .unwrap_err()
            .to_string();
        let got = gpu
            .softmax_cross_entropy(
                &gpu.upload(&logits).unwrap(),
                &gpu.upload(&labels).unwrap(),
                2,
                1.0,
                &mut gpu.alloc(8).unwrap(),
            )
            .unwrap_err()
            .to_string();
        assert_eq!(got, want);
    }
    // The flag is cleared between calls: a valid call after an invalid one succeeds.
    let ok = gpu.softmax_cross_entropy(
        &gpu.upload(&[0.0, 1.0]).unwrap(),
        &gpu.upload(&[1.0]).unwrap(),
        2,
        1.0,
        &mut gpu.alloc(2).unwrap(),
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn adam_matches_the_cpu_backend_and_the_reference() {
    let Some(gpu) = gpu("adam_matches_the_cpu_backend", Precision::F32) else {
        return;
    };
    let cpu = cpu();
    for (n, opt) in adam_cases() {
        let p0 = values(n, 10);
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let (mut rp, mut rm, mut rv) = (p0.clone(), vec![0.0; n], vec![0.0; n]);
        let mut gp = gpu.upload(&p0).unwrap();
        let (mut gm, mut gv) = (gpu.alloc(n).unwrap(), gpu.alloc(n).unwrap());
        for step in 1..=5 {
            let g = values(n, 10 + u64::from(step));
            cpu.adam_step(&opt, step, &mut p, &g, &mut m, &mut v)
                .unwrap();
            reference::adam_step(&opt, step, &mut rp, &g, &mut rm, &mut rv);
            let gg = gpu.upload(&g).unwrap();
            gpu.adam_step(&opt, step, &mut gp, &gg, &mut gm, &mut gv)
                .unwrap();
        }
        let (gp, gm, gv) = (to_host(&gpu, &gp), to_host(&gpu, &gm), to_host(&gpu, &gv));
        // The kernel rounds as the CPU loop does (no FMA contraction).
        assert_close(&gp, &p, 1e-7);
        assert_close(&gm, &m, 1e-7);
        assert_close(&gv, &v, 1e-7);
        assert_close(&gp, &rp, 1e-5);
    }
    let err = gpu
        .adam_step(
            &Adam::default(),
            0,
            &mut gpu.alloc(1).unwrap(),
            &gpu.alloc(1).unwrap(),
            &mut gpu.alloc(1).unwrap(),
            &mut gpu.alloc(1).unwrap(),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "adam_step: steps count from 1");
}

#[test]
fn all_reduce_sums_across_devices() {
    let Some(first) = gpu("all_reduce_sums_across_devices", Precision::F32) else {
        return;
    };
    // One replica: a no-op, as for the CPU backend.
    let data = values(1000, 40);
    let mut buf = first.upload(&data).unwrap();
    CudaBackend::all_reduce_sum(&[&first], &mut [&mut buf]).unwrap();
    assert!(to_host(&first, &buf) == data);

    let devices = cuda::detect().map_or(0, |d| d.len());
    if devices < 2 {
        eprintln!(
            "all_reduce_sums_across_devices: multi-device part skipped: {devices} device(s); \
             NCCL refuses two ranks on one GPU"
        );
        let err = CudaBackend::all_reduce_sum(
            &[&first, &first],
            &mut [&mut buf, &mut first.alloc(1000).unwrap()],
        )
        .unwrap_err();
        assert!(err.to_string().contains("one device per replica"), "{err}");
        return;
    }
    let backends: Vec<CudaBackend> = (0..devices)
        .map(|d| CudaBackend::new(d, Precision::F32).unwrap())
        .collect();
    let replicas: Vec<&CudaBackend> = backends.iter().collect();
    for len in [5, 100_003] {
        let host: Vec<Vec<f32>> = (0..devices).map(|r| values(len, 50 + r as u64)).collect();
        let want: Vec<f32> = (0..len)
            .map(|i| host.iter().map(|h| h[i]).sum::<f32>())
            .collect();
        let mut bufs: Vec<_> = backends
            .iter()
            .zip(&host)
            .map(|(b, h)| b.upload(h).unwrap())
            .collect();
        let mut refs: Vec<&mut _> = bufs.iter_mut().collect();
        CudaBackend::all_reduce_sum(&replicas, &mut refs).unwrap();
        for (b, buf) in backends.iter().zip(&bufs) {
            assert_close(&to_host(b, buf), &want, 1e-6);
        }
    }
}

#[test]
fn training_on_cuda_follows_training_on_cpu() {
    let Some(gpu0) = gpu("training_on_cuda_follows_training_on_cpu", Precision::F32) else {
        return;
    };
    let data = synthetic::spirals(3, 200, 0.2, 6);
    let spec = MlpSpec {
        sizes: vec![2, 64, 32, 3],
        activation: Activation::Relu,
        loss: Loss::SoftmaxCrossEntropy,
    };
    // SGD keeps rounding differences proportional to the gradients, so the parameters stay
    // close step for step.
    let sgd = Optimizer::Sgd {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    let mut on_cpu = Trainer::new(spec.clone(), sgd, vec![cpu()], 9).unwrap();
    let mut on_gpu = Trainer::new(spec.clone(), sgd, vec![gpu0], 9).unwrap();
    let (lc, lg) = (
        fit(&mut on_cpu, &data, 5, 64, 3),
        fit(&mut on_gpu, &data, 5, 64, 3),
    );
    assert!((lc - lg).abs() < 1e-4 * lc.max(1.0), "{lc} vs {lg}");
    let (a, b) = (on_cpu.snapshot().unwrap(), on_gpu.snapshot().unwrap());
    assert_eq!(a.step, b.step);
    for (x, y) in a.params.iter().zip(&b.params) {
        assert_close(y, x, 1e-3);
    }
    let (ec, eg) = (
        on_cpu.evaluate(&data, 256).unwrap(),
        on_gpu.evaluate(&data, 256).unwrap(),
    );
    assert!((ec.loss - eg.loss).abs() < 1e-3, "{ec:?} vs {eg:?}");

    // Adam, and reduced-precision GEMMs: the same learning, judged by the loss.
    let adam = Optimizer::Adam(Adam {
        lr: 0.01,
        ..Adam::default()
    });
    let mut on_cpu = Trainer::new(spec.clone(), adam, vec![cpu()], 9).unwrap();
    let want = fit(&mut on_cpu, &data, 20, 64, 3);
    for precision in [Precision::F32, Precision::Tf32, Precision::Bf16] {
        let backend = CudaBackend::new(0, precision).unwrap();
        let mut on_gpu = Trainer::new(spec.clone(), adam, vec![backend], 9).unwrap();
        let got = fit(&mut on_gpu, &data, 20, 64, 3);
        eprintln!("adam, 20 epochs: cpu loss {want:.4}, cuda {precision} {got:.4}");
        assert!(
            (got - want).abs() < 0.05 + 0.2 * want,
            "{precision}: {got} vs {want}"
        );
        let accuracy = on_gpu.evaluate(&data, 256).unwrap().accuracy.unwrap();
        assert!(accuracy > 0.8, "{precision}: accuracy {accuracy}");
    }
}

#[test]
fn prefetched_batches_train_exactly_like_written_ones() {
    // Staging batch i + 1 during step i (a copy stream from page-locked memory) must order
    // every copy before the kernels that read it: bit-identical to plain steps.
    let Some(gpu0) = gpu(
        "prefetched_batches_train_exactly_like_written_ones",
        Precision::F32,
    ) else {
        return;
    };
    let gpu1 = CudaBackend::new(0, Precision::F32).unwrap();
    let data = synthetic::spirals(3, 300, 0.2, 7);
    let spec = MlpSpec {
        sizes: vec![2, 256, 256, 3],
        activation: Activation::Relu,
        loss: Loss::SoftmaxCrossEntropy,
    };
    let adam = Optimizer::Adam(Adam::default());
    let mut plain = Trainer::new(spec.clone(), adam, vec![gpu0], 2).unwrap();
    let mut staged = Trainer::new(spec, adam, vec![gpu1], 2).unwrap();
    assert_staging_changes_nothing(&mut plain, &mut staged, &data, 100, 2);
}
