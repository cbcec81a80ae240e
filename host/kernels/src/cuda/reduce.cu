// Column sums of a rows x cols row-major matrix: the bias gradient.
//
// A block of 32 x 32 threads owns 32 adjacent columns: threadIdx.x picks the column (so a warp
// reads 32 consecutive floats of one row, coalesced) and the 32 rows of threads split the rows
// between them. Partial sums are kept in double, then added in a fixed order, so the result does
// not depend on scheduling and is at least as accurate as the CPU's in-order f32 sum.
// Launch with blockDim = (32, 32) and gridDim.x = ceil(cols / 32).

#define TILE 32

extern "C" __global__ void bias_grad(const float* grad, size_t rows, size_t cols, float* out) {
    __shared__ double partial[TILE][TILE + 1];  // +1: no bank conflicts reading a column
    size_t c = blockIdx.x * (size_t)TILE + threadIdx.x;
    double acc = 0.0;
    if (c < cols) {
        for (size_t r = threadIdx.y; r < rows; r += TILE) {
            acc += (double)grad[r * cols + c];
        }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        double sum = 0.0;
        for (int i = 0; i < TILE; ++i) {
            sum += partial[i][threadIdx.x];
        }
        out[c] = (float)sum;
    }
}
