// Element-wise kernels of the CUDA backend: a dense layer's bias + activation epilogue, the ReLU's
// backward pass, and the two BLAS-1 updates SGD needs. Each mirrors a loop of `cpu.rs`.
//
// Compiled by NVRTC with --fmad=false (see kernels.rs): no multiply-add contraction, so every
// value below is rounded exactly as the CPU backend rounds it, and the two agree bit for bit.
// Loops are grid-stride so one launch shape covers any length; indices are size_t because
// buffers may exceed 2^32 values.

// x[r][c] = x[r][c] + bias[c], then max(0, .) when relu != 0. Columns over x (threads and
// blocks), rows over y: no division or modulo per element, rows read coalesced, and a block of
// a narrow layer covers several rows instead of idling most of its threads.
extern "C" __global__ void bias_activation(float* x, const float* bias, size_t rows, size_t cols,
                                           int relu) {
    for (size_t r = blockIdx.y * (size_t)blockDim.y + threadIdx.y; r < rows;
         r += (size_t)gridDim.y * blockDim.y) {
        float* row = x + r * cols;
        for (size_t c = blockIdx.x * (size_t)blockDim.x + threadIdx.x; c < cols;
             c += (size_t)gridDim.x * blockDim.x) {
            float v = row[c] + bias[c];
            // fmaxf returns the other operand for a NaN, as Rust's f32::max does.
            row[c] = relu ? fmaxf(v, 0.0f) : v;
        }
    }
}

// grad[i] = 0 where the ReLU's output activated[i] is not positive (NaN included).
extern "C" __global__ void relu_backward(float* grad, const float* activated, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        grad[i] = activated[i] > 0.0f ? grad[i] : 0.0f;
    }
}

// y[i] += alpha * x[i]
extern "C" __global__ void axpy(float alpha, const float* x, float* y, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        y[i] += alpha * x[i];
    }
}

// x[i] *= alpha
extern "C" __global__ void scale(float alpha, float* x, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        x[i] *= alpha;
    }
}
