use super::*;
use crate::agreement::{adam_cases, assert_close, bf16_round, gemm_cases, values};
use crate::reference;

fn backends() -> Vec<CpuBackend> {
    vec![CpuBackend::new(1).unwrap(), CpuBackend::new(2).unwrap()]
}

/// Every transpose and `alpha`/`beta` of each size, on 1 and 2 threads, against the reference.
fn assert_gemms_match_the_reference(sizes: &[(usize, usize, usize)]) {
    for cpu in backends() {
        for case in gemm_cases(sizes) {
            let mut got = case.c.clone();
            cpu.gemm(case.shape, &case.a, &case.b, &mut got).unwrap();
            assert_close(&got, &case.want, 1e-4);
        }
    }
}

#[test]
fn gemm_matches_the_reference_for_every_transpose_and_odd_sizes() {
    // (37, 300, 250) and (37, 200, 410), on 2 threads: too narrow for bands, so a transposed b
    // that large is transposed into scratch first, with ragged 16 x 16 tile edges. (9, 530, 40)
    // and (5, 530, 130), on 2 threads: split in bands of columns (272 and a ragged 258), b read
    // transposed in place.
    let sizes = [
        (1, 1, 1),
        (7, 5, 3),
        (33, 65, 17),
        (130, 70, 300),
        (37, 300, 250),
        (37, 200, 410),
        (9, 530, 40),
        (5, 530, 130),
    ];
    assert_gemms_match_the_reference(&sizes);
}

#[test]
fn narrow_products_match_the_reference_for_every_transpose_and_edge() {
    // With AVX-512, c at most 16 wide or a shared dimension of at most 16 runs in `narrow`:
    // n of 1, 3, 10, 16 (a full vector) and 17 (just past it), k of 1, 10 and 16, rows in
    // blocks of 8 and a ragged rest, and products large enough to be split over the pool
    // (300 x 10 x 1024, 256 x 1024 x 10). Elsewhere these run in the `gemm` crate.
    let sizes = [
        (1, 16, 1),
        (37, 3, 7),
        (200, 1, 50),
        (130, 16, 300),
        (300, 10, 1024),
        (1024, 10, 256),
        (256, 1024, 10),
        (9, 530, 16),
        (5, 17, 3),
        (70, 33, 1),
    ];
    assert_gemms_match_the_reference(&sizes);
}

#[test]
fn narrow_products_are_the_same_on_one_thread_and_two() {
    let [one, two] = [CpuBackend::new(1).unwrap(), CpuBackend::new(2).unwrap()];
    for case in gemm_cases(&[(300, 10, 1024), (256, 1024, 10), (1024, 10, 256)]) {
        let (mut c1, mut c2) = (case.c.clone(), case.c.clone());
        one.gemm(case.shape, &case.a, &case.b, &mut c1).unwrap();
        two.gemm(case.shape, &case.a, &case.b, &mut c2).unwrap();
        assert!(c1 == c2, "{:?}", case.shape);
    }
}

#[test]
fn fused_epilogues_give_the_same_bits_as_the_separate_calls() {
    // Bands of columns with the epilogue inside (1 thread: one band; 2 threads: 256 x 1024 x
    // 784 and 37 x 530 x 40, ragged), and shapes that fall back to the separate calls: too
    // narrow for bands on 2 threads (5 x 300 x 20), a narrow product (9 x 10 x 50).
    for cpu in backends() {
        for (m, n, k) in [(256, 1024, 784), (37, 530, 40), (5, 300, 20), (9, 10, 50)] {
            for op_b in [Op::N, Op::T] {
                let s = GemmShape::new(Op::N, op_b, m, n, k);
                let (a, b) = (values(m * k, 50), values(k * n, 51));
                let (bias, activated) = (values(n, 52), values(m * n, 53));
                for relu in [true, false] {
                    let (mut fused, mut apart) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                    cpu.gemm_bias_activation(s, &a, &b, &mut fused, &bias, relu)
                        .unwrap();
                    cpu.gemm(s, &a, &b, &mut apart).unwrap();
                    cpu.bias_activation(&mut apart, &bias, relu).unwrap();
                    assert!(fused == apart, "{s:?}, relu {relu}");
                }
                let (mut fused, mut apart) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                let (mut db_fused, mut db_apart) = (vec![f32::NAN; n], vec![f32::NAN; n]);
                cpu.gemm_relu_backward(s, &a, &b, &mut fused, &activated, &mut db_fused)
                    .unwrap();
                cpu.gemm(s, &a, &b, &mut apart).unwrap();
                cpu.relu_backward(&mut apart, &activated).unwrap();
                cpu.bias_grad(&apart, &mut db_apart).unwrap();
                assert!(fused == apart && db_fused == db_apart, "{s:?}");
            }
        }
    }
}

#[test]
fn gemm_with_beta_zero_ignores_nan_in_c() {
    let cpu = CpuBackend::new(1).unwrap();
    let mut c = vec![f32::NAN; 4];
    cpu.gemm(
        GemmShape::new(Op::N, Op::N, 2, 2, 1),
        &vec![1.0, 2.0],
        &vec![3.0, 4.0],
        &mut c,
    )
    .unwrap();
    assert_eq!(c, [3.0, 4.0, 6.0, 8.0]);
}

#[test]
fn wrong_shapes_are_typed_errors() {
    let cpu = CpuBackend::new(1).unwrap();
    let err = cpu
        .gemm(
            GemmShape::new(Op::N, Op::N, 2, 2, 2),
            &vec![0.0; 3],
            &vec![0.0; 4],
            &mut vec![0.0; 4],
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "gemm: a has 3 values, expected 4");
    let err = cpu
        .softmax_cross_entropy(&vec![0.0; 4], &vec![0.0, 2.0], 2, 1.0, &mut vec![0.0; 4])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "softmax_cross_entropy: label 2 of row 1 is not below 2"
    );
}

#[test]
fn element_wise_kernels_match_the_reference_small_and_large() {
    // 3 x 5 runs inline; 300 x 512 crosses PARALLEL_MIN (Adam's and the losses' threshold)
    // and 2100 x 520 LIGHT_PARALLEL_MIN: they run on the pool.
    for cpu in backends() {
        for (rows, cols) in [(3, 5), (300, 512), (2100, 520)] {
            let x0 = values(rows * cols, 4);
            let bias = values(cols, 5);

            let mut want = x0.clone();
            reference::bias_relu_forward(&mut want, &bias);
            let mut got = x0.clone();
            cpu.bias_activation(&mut got, &bias, true).unwrap();
            assert!(got == want, "bias + relu");

            let mut linear = x0.clone();
            cpu.bias_activation(&mut linear, &bias, false).unwrap();
            for (i, v) in linear.iter().enumerate() {
                assert_eq!(*v, x0[i] + bias[i % cols]);
            }

            let g0 = values(rows * cols, 6);
            let mut want_g = g0.clone();
            reference::relu_backward(&mut want_g, &want);
            let mut got_g = g0.clone();
            cpu.relu_backward(&mut got_g, &got).unwrap();
            assert!(got_g == want_g, "relu backward");

            let mut sums = vec![f32::NAN; cols];
            cpu.bias_grad(&got_g, &mut sums).unwrap();
            // f32 sums of `rows` values against the reference's f64: rounding grows with rows.
            let tol = if rows > 1000 { 1e-4 } else { 1e-5 };
            assert_close(&sums, &reference::bias_grad(&got_g, cols), tol);

            let mut y = x0.clone();
            let mut want_y = x0.clone();
            cpu.axpy(-0.25, &g0, &mut y).unwrap();
            reference::axpy(-0.25, &g0, &mut want_y);
            assert!(y == want_y, "axpy");
            cpu.scale(3.0, &mut y).unwrap();
            reference::scale(3.0, &mut want_y);
            assert!(y == want_y, "scale");
        }
    }
}

#[test]
fn losses_match_the_reference() {
    for cpu in backends() {
        for (rows, classes) in [(4, 3), (1000, 40)] {
            let logits: Vec<f32> = values(rows * classes, 7).iter().map(|v| v * 8.0).collect();
            let labels: Vec<u32> = (0..rows).map(|r| (r * 7 % classes) as u32).collect();
            let (want_loss, want_grad) =
                reference::softmax_cross_entropy(&logits, &labels, classes);
            let label_buf: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
            let mut grad = vec![0.0; rows * classes];
            let sum = cpu
                .softmax_cross_entropy(&logits, &label_buf, classes, 1.0 / rows as f32, &mut grad)
                .unwrap();
            assert!(((sum / rows as f64) as f32 - want_loss).abs() < 1e-4 * want_loss.max(1.0));
            assert_close(&grad, &want_grad, 1e-5);

            let pred = values(rows * classes, 8);
            let target = values(rows * classes, 9);
            let (want_mse, want_grad) = reference::mse(&pred, &target);
            let n = pred.len();
            let sum = cpu.mse(&pred, &target, 1.0 / n as f32, &mut grad).unwrap();
            assert!(((sum / n as f64) as f32 - want_mse).abs() < 1e-5);
            assert_close(&grad, &want_grad, 1e-5);
        }
    }
}

#[test]
fn adam_matches_the_reference_over_several_steps() {
    for cpu in backends() {
        for (n, opt) in adam_cases() {
            let mut p = values(n, 10);
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let (mut want_p, mut want_m, mut want_v) = (p.clone(), m.clone(), v.clone());
            for step in 1..=5 {
                let g = values(n, 10 + u64::from(step));
                cpu.adam_step(&opt, step, &mut p, &g, &mut m, &mut v)
                    .unwrap();
                reference::adam_step(&opt, step, &mut want_p, &g, &mut want_m, &mut want_v);
            }
            assert_close(&p, &want_p, 1e-5);
            assert_close(&m, &want_m, 1e-6);
            assert_close(&v, &want_v, 1e-6);
        }
    }
}

#[test]
fn adam_moments_never_turn_subnormal_which_made_long_training_up_to_2x_slower() {
    // Parameters whose gradient stays zero: their moments decay by beta1 / beta2 each step,
    // and from just above the smallest normal f32 they would turn subnormal at once. Sizes
    // that run inline and on the pool, and a gradient that is itself subnormal.
    for cpu in backends() {
        for n in [37, 70_000] {
            let mut p = values(n, 40);
            let mut m = vec![1.1 * f32::MIN_POSITIVE; n];
            let mut v = vec![1.0001 * f32::MIN_POSITIVE; n];
            let mut g = vec![0.0; n];
            g[0] = f32::MIN_POSITIVE / 4.0;
            let before = p.clone();
            for step in 1..=3 {
                cpu.adam_step(&Adam::default(), step, &mut p, &g, &mut m, &mut v)
                    .unwrap();
            }
            let subnormal = |x: &[f32]| x.iter().filter(|x| x.is_subnormal()).count();
            assert_eq!((subnormal(&m), subnormal(&v)), (0, 0), "n = {n}");
            assert!(m.iter().chain(&v).all(|x| *x == 0.0), "n = {n}");
            // What they would have moved the parameters by is below f32's resolution anyway.
            assert_close(&p, &before, 1e-6);
        }
    }
}

#[test]
fn a_confident_rows_softmax_gradient_is_zero_not_subnormal() {
    // exp(-100) is subnormal in f32, exp(-75) normal but so small that the backward pass's
    // products with it turn subnormal, which x86 computes on in microcode. Rows inline and on
    // the pool.
    for cpu in backends() {
        for (rows, gap) in [(2, 75.0), (2, 100.0), (5000, 75.0), (5000, 100.0)] {
            let classes = 10;
            let mut logits = vec![-gap; rows * classes];
            let labels: Vec<f32> = (0..rows).map(|r| (r % classes) as f32).collect();
            for (r, l) in labels.iter().enumerate() {
                logits[r * classes + *l as usize] = 0.0;
            }
            let mut grad = vec![f32::NAN; rows * classes];
            let loss = cpu
                .softmax_cross_entropy(&logits, &labels, classes, 1.0 / rows as f32, &mut grad)
                .unwrap();
            assert!(grad.iter().all(|g| !g.is_subnormal() && g.is_finite()));
            assert!(grad.iter().all(|g| *g == 0.0), "{:?}", &grad[..classes]);
            assert!((0.0..1e-30).contains(&loss), "{loss}");
        }
    }
}

#[test]
fn all_reduce_sums_into_every_replica_in_replica_order() {
    let pools = [
        CpuBackend::new(1).unwrap(),
        CpuBackend::new(1).unwrap(),
        CpuBackend::new(1).unwrap(),
    ];
    let replicas: Vec<&CpuBackend> = pools.iter().collect();
    for len in [5, 100_003] {
        let mut bufs: Vec<Vec<f32>> = (0..3).map(|r| values(len, 20 + r)).collect();
        let want: Vec<f32> = (0..len)
            .map(|i| bufs[0][i] + bufs[1][i] + bufs[2][i])
            .collect();
        let mut refs: Vec<&mut Vec<f32>> = bufs.iter_mut().collect();
        CpuBackend::all_reduce_sum(&replicas, &mut refs).unwrap();
        for b in &bufs {
            assert!(b == &want);
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // Repeatability per thread count is promised; these kernels also agree across counts,
    // because each output value is computed by one thread in a fixed order.
    // Large enough for the bias gradient's bands (LIGHT_PARALLEL_MIN).
    let (rows, cols) = (1100, 1024);
    let g = values(rows * cols, 30);
    let mut sums = [vec![0.0; cols], vec![0.0; cols]];
    for (cpu, out) in backends().iter().zip(sums.iter_mut()) {
        cpu.bias_grad(&g, out).unwrap();
    }
    assert!(sums[0] == sums[1]);
}

/// A bf16 backend on `threads` threads, or `None` (with a note) where the CPU has no AMX.
fn bf16_backend(test: &str, threads: usize) -> Option<CpuBackend> {
    if !CpuBackend::bf16_available() {
        eprintln!("{test}: skipped, this CPU has no AMX-BF16 (or Linux refused its tile state)");
        return None;
    }
    Some(CpuBackend::with_precision(threads, Precision::Bf16).unwrap())
}

#[test]
fn bf16_gemm_matches_the_reference_on_bf16_inputs_for_every_transpose_and_edge() {
    // Sizes around the 32 x 32 blocks and 32-value k steps: single values, ragged edges on
    // every side, exact multiples, and blocks whole in one dimension and ragged in another.
    let sizes = [
        (1, 1, 1),
        (7, 5, 3),
        (32, 32, 32),
        (33, 65, 17),
        (16, 48, 64),
        (64, 96, 95),
        (130, 70, 300),
        (5, 530, 130),
        (96, 33, 257),
    ];
    for threads in [1, 2] {
        let Some(cpu) = bf16_backend("bf16_gemm_matches_the_reference", threads) else {
            return;
        };
        for mut case in gemm_cases(&sizes) {
            // Inputs already bf16: only the f32 accumulation's order differs from the f64
            // reference, so the tolerance is f32's.
            let s = case.shape;
            case.a.iter_mut().for_each(|x| *x = bf16_round(*x));
            case.b.iter_mut().for_each(|x| *x = bf16_round(*x));
            let mut want = case.c.clone();
            reference::gemm(
                s.op_a, s.op_b, s.m, s.n, s.k, s.alpha, &case.a, &case.b, s.beta, &mut want,
            );
            let mut got = case.c.clone();
            cpu.gemm(s, &case.a, &case.b, &mut got).unwrap();
            assert_close(&got, &want, 1e-5);
        }
    }
}

#[test]
fn bf16_gemm_in_panels_matches_the_reference() {
    // Packed a larger than L2 (4 bytes a pair of bf16 values): b is taken in panels of block
    // columns, here two tasks of two blocks, the last ragged.
    let Some(cpu) = bf16_backend("bf16_gemm_in_panels_matches_the_reference", 2) else {
        return;
    };
    let (n, k) = (100, 32);
    let m = amx::l2_bytes() / 2 / k + 40;
    let round = |v: Vec<f32>| v.into_iter().map(bf16_round).collect::<Vec<_>>();
    let (a, b) = (round(values(m * k, 7)), round(values(k * n, 8)));
    let mut want = vec![0.0; m * n];
    reference::gemm(Op::N, Op::N, m, n, k, 1.0, &a, &b, 0.0, &mut want);
    let mut got = vec![f32::NAN; m * n];
    cpu.gemm(GemmShape::new(Op::N, Op::N, m, n, k), &a, &b, &mut got)
        .unwrap();
    assert_close(&got, &want, 1e-5);
}

#[test]
fn bf16_gemm_rounds_its_inputs_to_nearest_even() {
    let Some(cpu) = bf16_backend("bf16_gemm_rounds_its_inputs_to_nearest_even", 1) else {
        return;
    };
    // bf16 keeps 7 mantissa bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 (ties to the even
    // 1), 1 + 3 * 2^-8 halfway between 1 + 2^-7 and 1 + 2^-6 (ties to the even 1 + 2^-6).
    let e = f32::EPSILON * 2f32.powi(15); // 2^-8
    let inputs = [
        1.0 + e,
        1.0 + 3.0 * e,
        1.0 + 1.1 * e,
        -(1.0 + 0.9 * e),
        3.0e38,
        f32::INFINITY,
        f32::NAN,
    ];
    for x in inputs {
        let mut got = vec![0.0f32];
        cpu.gemm(
            GemmShape::new(Op::N, Op::N, 1, 1, 1),
            &vec![x],
            &vec![1.0],
            &mut got,
        )
        .unwrap();
        let want = bf16_round(x);
        assert!(
            got[0] == want || (got[0].is_nan() && want.is_nan()),
            "{x:e}: got {:e}, want {want:e}",
            got[0]
        );
    }
    assert_eq!(bf16_round(1.0 + e), 1.0);
    assert_eq!(bf16_round(1.0 + 3.0 * e), 1.0 + 4.0 * e);
}

#[test]
fn bf16_gemm_is_the_same_on_one_thread_and_two() {
    let (Some(one), Some(two)) = (
        bf16_backend("bf16_gemm_is_the_same_on_one_thread_and_two", 1),
        bf16_backend("bf16_gemm_is_the_same_on_one_thread_and_two", 2),
    ) else {
        return;
    };
    for case in gemm_cases(&[(96, 200, 300), (100, 130, 70)]) {
        let (mut c1, mut c2) = (case.c.clone(), case.c.clone());
        one.gemm(case.shape, &case.a, &case.b, &mut c1).unwrap();
        two.gemm(case.shape, &case.a, &case.b, &mut c2).unwrap();
        assert!(c1.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()));
        // Unrounded inputs here: the answer is the reference's on their bf16 roundings.
        let s = case.shape;
        let round = |v: &[f32]| v.iter().map(|&x| bf16_round(x)).collect::<Vec<_>>();
        let mut want = case.c.clone();
        reference::gemm(
            s.op_a,
            s.op_b,
            s.m,
            s.n,
            s.k,
            s.alpha,
            &round(&case.a),
            &round(&case.b),
            s.beta,
            &mut want,
        );
        assert_close(&c1, &want, 1e-5);
    }
}

#[test]
fn bf16_gemm_with_beta_zero_ignores_nan_in_c() {
    let Some(cpu) = bf16_backend("bf16_gemm_with_beta_zero_ignores_nan_in_c", 2) else {
        return;
    };
    // A ragged block (through the scratch block) and a whole one (stored straight into c).
    for (m, n) in [(2, 2), (32, 64)] {
        let mut c = vec![f32::NAN; m * n];
        let (a, b) = (vec![1.0; m], vec![3.0; n]);
        cpu.gemm(GemmShape::new(Op::N, Op::N, m, n, 1), &a, &b, &mut c)
            .unwrap();
        assert!(c.iter().all(|&v| v == 3.0), "{m} x {n}");
    }
}

#[test]
fn precisions_the_cpu_cannot_run_are_clear_errors() {
    let err = CpuBackend::with_precision(1, Precision::Tf32).unwrap_err();
    assert!(
        err.to_string().contains("tf32 is a GPU tensor-core format"),
        "{err}"
    );
    match CpuBackend::with_precision(1, Precision::Bf16) {
        Ok(cpu) => {
            assert!(CpuBackend::bf16_available());
            assert!(
                cpu.describe().contains("bf16 on AMX tiles"),
                "{}",
                cpu.describe()
            );
        }
        Err(err) => {
            assert!(!CpuBackend::bf16_available());
            assert!(err.to_string().contains("needs Intel AMX"), "{err}");
        }
    }
}
