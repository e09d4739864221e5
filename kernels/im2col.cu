// im2col.cu -- the column matrix of a valid k x k convolution (im2col) and its adjoint (col2im).
//
// What: for one image x (C, H, W) and output rows y0 <= y < y1 (Wo = W-k+1, L = (y1-y0)*Wo):
//     im2col:  out[(c*k + i)*k + j, (y-y0)*Wo + xx] = x[c, y+i, xx+j]          out (C*k*k, L)
//     col2im:  dx[c, Y, X] += sum over (i, j) with 0 <= Y-y0-i < y1-y0, 0 <= X-j < Wo of
//              cols[(c*k + i)*k + j, (Y-y0-i)*Wo + (X-j)]                        dx (C, H, W)
//   col2im is a GATHER: one thread owns one dx pixel and sums the column entries that were
//   copied from it, in (i, j) order -- the order of the CPU twin, so the result is bit-identical
//   to it. No atomics; deterministic. Only the rows y0 .. y1+k-2 of dx are touched.
// Launch geometry: blocks of 256 threads (x), 2-D grid, grid-stride loops in both dimensions.
//   im2col: grid.y walks the C*k*k rows of out, grid.x the L columns, so consecutive threads write
//   consecutive output columns (coalesced writes, coalesced reads of one image row).
//   col2im: grid.y walks the channels c, grid.x the (y1-y0+k-1)*W pixels of that channel's band.
//   Offsets of rows/channels are 64-bit; an index inside one row of out (< L) or one channel band
//   (< H*W) is 32-bit, and the launcher checks L < 2^31 and H*W < 2^31.
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: im2col, col2im
// CPU twin: minunet/backend/cpu.py: im2col, col2im
// Plain op: minunet/ops/conv.py: im2col, col2im, conv2d_forward, conv2d_backward
// Used by: minunet/fast/conv.py: conv2d_forward, conv2d_backward
// Test: tests/backend/test_gpu.py: test_im2col_matches_cpu, test_col2im_matches_cpu
// Test: tests/backend/test_gpu.py: test_im2col_accepts_a_strided_image_and_refuses_a_bad_out
// Test: tests/backend/test_gpu.py: test_im2col_64bit_offsets
// Test: tests/backend/test_gpu.py: test_op_cpu_gpu_agree, test_op_gradcheck_on_gpu
// Test: tests/backend/test_cpu_twins.py: test_im2col, test_col2im_accumulates
// Test: tests/emulation/test_kernels.py: test_im2col, test_col2im, test_im2col_col2im_64bit_offsets

template <typename T>
__global__ void im2col(const T* __restrict__ x, T* __restrict__ out,
                       int C, int H, int W, int k, int y0, int y1)
{
    const int Wo = W - k + 1;
    const long long L = (long long)(y1 - y0) * Wo;  // columns of out
    const int R = C * k * k;                          // rows of out
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (int r = blockIdx.y; r < R; r += gridDim.y) {
        const int c = r / (k * k);
        const int i = (r / k) % k;
        const int j = r % k;
        const T* src = x + ((long long)c * H + y0 + i) * W + j;  // &x[c, y0+i, j]
        T* dst = out + (long long)r * L;                          // &out[r, 0]
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < L; q += stride) {
            const int y = (int)q / Wo;       // output row, relative to y0
            const int xx = (int)q - y * Wo;  // output column
            dst[q] = src[y * W + xx];
        }
    }
}

template <typename T>
__global__ void col2im(const T* __restrict__ cols, T* __restrict__ dx,
                       int C, int H, int W, int k, int y0, int y1)
{
    const int Wo = W - k + 1;
    const int rows = y1 - y0;
    const long long L = (long long)rows * Wo;          // columns of cols
    const long long P = (long long)(rows + k - 1) * W; // pixels of the band y0 .. y1+k-2
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        const T* col_c = cols + (long long)c * k * k * L;  // &cols[c*k*k, 0]
        T* dx_c = dx + ((long long)c * H + y0) * W;         // &dx[c, y0, 0]
        for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < P; p += stride) {
            const int Y = (int)p / W;       // band row: dx row y0 + Y
            const int X = (int)p - Y * W;   // dx column
            T acc = dx_c[p];
            for (int i = 0; i < k; ++i) {
                const int y = Y - i;        // output row that read this pixel through tap row i
                if (y < 0 || y >= rows) continue;
                for (int j = 0; j < k; ++j) {
                    const int xx = X - j;   // output column that read it through tap column j
                    if (xx < 0 || xx >= Wo) continue;
                    acc += col_c[(long long)(i * k + j) * L + (long long)y * Wo + xx];
                }
            }
            dx_c[p] = acc;
        }
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void im2col<float>(const float*, float*, int, int, int, int, int, int);
template __global__ void im2col<double>(const double*, double*, int, int, int, int, int, int);
template __global__ void col2im<float>(const float*, float*, int, int, int, int, int, int);
template __global__ void col2im<double>(const double*, double*, int, int, int, int, int, int);
#endif
