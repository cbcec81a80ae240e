// The two losses, each writing its gradient and per-row (or per-block) partial losses in double,
// and loss_total, which adds the partials in a fixed order into one value the host copies back.
// No atomics on the sums: the same inputs give the same loss on every run.

#define WARP 32
#define FULL_MASK 0xffffffffu
// loss_total and mse are launched with exactly this many threads per block.
#define REDUCE_THREADS 256

// Adds every thread's `acc` into part[0] in a fixed tree order (no atomics, so the same inputs
// give the same sum on every run). Call from all REDUCE_THREADS threads of the block.
__device__ void block_sum(double* part, double acc) {
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned int s = REDUCE_THREADS / 2; s > 0; s /= 2) {
        if (threadIdx.x < s) {
            part[threadIdx.x] += part[threadIdx.x + s];
        }
        __syncthreads();
    }
}

// Softmax cross-entropy, one warp per row (rows are independent; a warp loops over any number
// of classes). For each valid row: grad = softmax * grad_scale, minus grad_scale at the label,
// and row_loss = log(sum exp(z - max)) - (z[label] - max), as the CPU backend computes them.
//
// labels hold class ids as floats. An invalid one (negative, fractional, NaN, not below
// `classes`) leaves its row's gradient untouched and records the row in `bad` as
// 0xffffffff - row through atomicMax, so the host (which zeroes `bad` first) learns the FIRST bad
// row, the one the CPU backend reports. The host guarantees rows < 0xffffffff.
extern "C" __global__ void softmax_cross_entropy(const float* logits, const float* labels,
                                                 size_t rows, size_t classes, float grad_scale,
                                                 float* grad, double* row_loss,
                                                 unsigned int* bad) {
    const unsigned int lane = threadIdx.x % WARP;
    const size_t warps_per_block = blockDim.x / WARP;
    // Every lane of a warp handles the same row, so every branch below is warp-uniform and the
    // full-mask shuffles are safe.
    for (size_t row = blockIdx.x * warps_per_block + threadIdx.x / WARP; row < rows;
         row += (size_t)gridDim.x * warps_per_block) {
        const float label = labels[row];
        // 18446744073709551616.0f is 2^64: keeps the conversion below defined.
        const bool valid = label >= 0.0f && floorf(label) == label &&
                           label < 18446744073709551616.0f && (size_t)label < classes;
        if (!valid) {
            if (lane == 0) {
                atomicMax(bad, 0xffffffffu - (unsigned int)row);
                row_loss[row] = 0.0;
            }
            continue;
        }
        const size_t target = (size_t)label;
        const float* z = logits + row * classes;
        float* g = grad + row * classes;

        // The row's maximum, so no exponential overflows.
        // -infinity, spelled without math.h (NVRTC here has no CUDA headers).
        float max = __uint_as_float(0xff800000u);
        for (size_t c = lane; c < classes; c += WARP) {
            max = fmaxf(max, z[c]);
        }
        // Butterfly reductions leave the identical value in every lane (addition and fmaxf
        // are commutative), so all lanes scale by the same total.
        for (int offset = WARP / 2; offset > 0; offset /= 2) {
            max = fmaxf(max, __shfl_xor_sync(FULL_MASK, max, offset));
        }
        float total = 0.0f;
        for (size_t c = lane; c < classes; c += WARP) {
            total += expf(z[c] - max);
        }
        for (int offset = WARP / 2; offset > 0; offset /= 2) {
            total += __shfl_xor_sync(FULL_MASK, total, offset);
        }
        const float inv = grad_scale / total;
        for (size_t c = lane; c < classes; c += WARP) {
            // Recomputed rather than stored and re-read: cheaper than a round trip to memory.
            const float p = expf(z[c] - max) * inv;
            g[c] = c == target ? p - grad_scale : p;
        }
        if (lane == 0) {
            row_loss[row] = (double)(logf(total) - (z[target] - max));
        }
    }
}

// Squared error: grad = 2 (prediction - target) * grad_scale, and each block's sum of squared
// differences (in double) in partials[blockIdx.x]. Launch with REDUCE_THREADS threads.
extern "C" __global__ void mse(const float* prediction, const float* target, float grad_scale,
                               float* grad, size_t n, double* partials) {
    __shared__ double part[REDUCE_THREADS];
    double acc = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float d = prediction[i] - target[i];
        acc += (double)d * (double)d;
        grad[i] = 2.0f * d * grad_scale;
    }
    block_sum(part, acc);
    if (threadIdx.x == 0) {
        partials[blockIdx.x] = part[0];
    }
}

// out[0] = sum of x[0..n) (fixed order), out[1] = *bad: the two values a loss call reads back,
// in one copy. Launch one block of REDUCE_THREADS threads.
extern "C" __global__ void loss_total(const double* x, size_t n, const unsigned int* bad,
                                      double* out) {
    __shared__ double part[REDUCE_THREADS];
    double acc = 0.0;
    for (size_t i = threadIdx.x; i < n; i += REDUCE_THREADS) {
        acc += x[i];
    }
    block_sum(part, acc);
    if (threadIdx.x == 0) {
        out[0] = part[0];
        out[1] = (double)*bad;
    }
}
