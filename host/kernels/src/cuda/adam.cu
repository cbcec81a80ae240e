// One fused Adam(W) step: moments, bias-corrected update and decoupled weight decay in a single
// pass over memory (parameters, gradients and both moments read once, written once).
//
// The host folds the bias corrections into step_size = lr / (1 - beta1^t) and
// inv_sqrt_c2 = 1 / sqrt(1 - beta2^t) (in double, then rounded), and decay = 1 - lr * wd,
// exactly as the CPU backend does; with --fmad=false every operation below then rounds as the
// CPU's, in the same order.
extern "C" __global__ void adam_step(float* params, const float* grads, float* m, float* v,
                                     size_t n, float beta1, float beta2, float eps,
                                     float step_size, float inv_sqrt_c2, float decay) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = grads[i];
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] * decay - step_size * mi / (sqrtf(vi) * inv_sqrt_c2 + eps);
    }
}
