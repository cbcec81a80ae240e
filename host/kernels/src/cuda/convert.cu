// f32 -> bf16 conversion of GEMM operands (round to nearest, ties to even; NaN stays a quiet
// NaN with its sign), for the bf16 precision: parameters stay f32, only a GEMM's inputs are
// rounded, into scratch buffers.
//
// Written with bit operations instead of cuda_bf16.h so NVRTC needs no include path: the PyPI
// NVRTC wheel that CI uses ships no CUDA headers. The result is stored as the 16-bit pattern
// (cuBLAS reads it as CUDA_R_16BF).
extern "C" __global__ void f32_to_bf16(const float* src, unsigned short* dst, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned int bits = __float_as_uint(src[i]);
        if ((bits & 0x7fffffffu) > 0x7f800000u) {
            // NaN: keep the sign and top mantissa bits, force the quiet bit.
            dst[i] = (unsigned short)((bits >> 16) | 0x0040u);
        } else {
            // Adding 0x7fff plus the lowest kept bit rounds half to even; overflow of the
            // largest finite values to infinity is the correct rounding.
            bits += 0x7fffu + ((bits >> 16) & 1u);
            dst[i] = (unsigned short)(bits >> 16);
        }
    }
}
