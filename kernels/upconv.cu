// upconv.cu -- the rearrangements around the GEMM of the 2x2 stride-2 up-convolution.
//
// What: the up-conv GEMM gives cols = w.reshape(Cin, Cout*4).T @ x (per image), viewed as
//   cols (N, Cout, 2, 2, H, W). upconv_scatter paints each input pixel's 2x2 block and adds bias:
//       out[n, o, 2y+i, 2x+j] = cols[n, o, i, j, y, x] + b[o]          out (N, Cout, 2H, 2W)
//   upconv_gather is its inverse (without bias), the first step of the backward:
//       dcols[n, o, i, j, y, x] = dout[n, o, 2y+i, 2x+j]               dcols (N, Cout, 2, 2, H, W)
//   Pure data movement plus one add: the results equal the NumPy transposes bit for bit.
// Launch geometry: blocks of 256 threads (x), 2-D grid, grid-stride in both dimensions:
//   grid.y walks the N*Cout planes, grid.x the 4*H*W elements of one plane in the order of the
//   array being WRITTEN (scatter: out pixels; gather: dcols entries), so writes are coalesced and
//   reads come in two (scatter) or stride-2 (gather) streams. Plane offsets 64-bit, an index
//   inside one plane 32-bit (the launcher checks 4*H*W < 2^31).
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: upconv_scatter, upconv_gather
// CPU twin: minunet/backend/cpu.py: upconv_scatter, upconv_gather
// Plain op: minunet/ops/upconv.py: upconv2x2_forward, upconv2x2_backward
// Used by: minunet/fast/upconv.py: upconv2x2_forward, upconv2x2_backward
// Test: tests/backend/test_gpu.py: test_upconv_scatter_matches_numpy
// Test: tests/backend/test_gpu.py: test_upconv_gather_matches_numpy
// Test: tests/backend/test_gpu.py: test_op_cpu_gpu_agree, test_op_gradcheck_on_gpu
// Test: tests/backend/test_cpu_twins.py: test_upconv_scatter_gather
// Test: tests/emulation/test_kernels.py: test_upconv

template <typename T>
__global__ void upconv_scatter(const T* __restrict__ cols, const T* __restrict__ b,
                               T* __restrict__ out, long long planes, int Cout, int H, int W)
{
    const long long HW = (long long)H * W;
    const long long n = 4 * HW;  // elements per plane
    const int W2 = 2 * W;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const T bias = b[p % Cout];
        const T* src = cols + p * n;  // &cols[n, o, 0, 0, 0, 0]
        T* dst = out + p * n;         // &out[n, o, 0, 0]
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += stride) {
            const int Y = (int)q / W2;       // out row 2y + i
            const int X = (int)q - Y * W2;   // out column 2x + j
            const int tap = ((Y & 1) << 1) | (X & 1);  // 2i + j
            dst[q] = src[tap * HW + (long long)(Y >> 1) * W + (X >> 1)] + bias;
        }
    }
}

template <typename T>
__global__ void upconv_gather(const T* __restrict__ dout, T* __restrict__ dcols,
                              long long planes, int H, int W)
{
    const int HWi = H * W;
    const long long n = 4LL * HWi;
    const int W2 = 2 * W;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const T* src = dout + p * n;  // &dout[n, o, 0, 0]
        T* dst = dcols + p * n;       // &dcols[n, o, 0, 0, 0, 0]
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += stride) {
            const int tap = (int)q / HWi;       // 2i + j
            const int r = (int)q - tap * HWi;   // y*W + x
            const int y = r / W;
            const int x = r - y * W;
            dst[q] = src[(2 * y + (tap >> 1)) * W2 + 2 * x + (tap & 1)];
        }
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void upconv_scatter<float>(const float*, const float*, float*, long long, int,
                                               int, int);
template __global__ void upconv_scatter<double>(const double*, const double*, double*, long long,
                                                int, int, int);
template __global__ void upconv_gather<float>(const float*, float*, long long, int, int);
template __global__ void upconv_gather<double>(const double*, double*, long long, int, int);
#endif
