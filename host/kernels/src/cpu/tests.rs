use super::*;
use crate::agreement::{adam_cases, assert_close, gemm_cases, values};
use crate::reference;

fn backends() -> Vec<CpuBackend> {
    vec![CpuBackend::new(1).unwrap(), CpuBackend::new(2).unwrap()]
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
    for cpu in backends() {
        for case in gemm_cases(&sizes) {
            let mut got = case.c.clone();
            cpu.gemm(case.shape, &case.a, &case.b, &mut got).unwrap();
            assert_close(&got, &case.want, 1e-4);
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
    // 3 x 5 runs inline; 300 x 512 crosses PARALLEL_MIN and runs on the pool.
    for cpu in backends() {
        for (rows, cols) in [(3, 5), (300, 512)] {
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
            assert_close(&sums, &reference::bias_grad(&got_g, cols), 1e-5);

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
    let (rows, cols) = (256, 1024);
    let g = values(rows * cols, 30);
    let mut sums = [vec![0.0; cols], vec![0.0; cols]];
    for (cpu, out) in backends().iter().zip(sums.iter_mut()) {
        cpu.bias_grad(&g, out).unwrap();
    }
    assert!(sums[0] == sums[1]);
}
