// pool.cu -- 2x2 max-pooling with stride 2: forward with the arg-max, and backward.
//
// What: x (P, H, W) with P = N*C planes -> out (P, H/2, W/2) and arg (P, H/2, W/2) uint8, where
//   each window is read in the order 0: (0,0), 1: (0,1), 2: (1,0), 3: (1,1) and a later value
//   replaces the best only if strictly greater ('>'): the FIRST maximum in window order wins
//   (docs/DESIGN.md, "Max-pool ties"). arg = 2*i + j of the winner.
//   Backward: dout (P, Ho, Wo), arg -> dx (P, 2Ho, 2Wo): each thread writes all four pixels of
//   its window (dout at the arg-max, 0 elsewhere), so dx needs no zero-fill and no scatter.
// Launch geometry: blocks of 256 threads (x), 2-D grid, grid-stride in both dimensions:
//   grid.y walks the planes, grid.x the Ho*Wo windows of a plane (consecutive threads read
//   consecutive pairs of x and write consecutive outputs: coalesced). Plane offsets are 64-bit;
//   an index inside one plane is 32-bit (the launcher checks H*W < 2^31).
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: maxpool2x2_forward, maxpool2x2_backward
// CPU twin: minunet/backend/cpu.py: maxpool2x2_forward, maxpool2x2_backward
// Plain op: minunet/ops/pool.py: maxpool2x2_forward, maxpool2x2_backward
// Used by: minunet/fast/pool.py: maxpool2x2_forward, maxpool2x2_backward
// Test: tests/backend/test_gpu.py: test_maxpool_forward_matches_cpu
// Test: tests/backend/test_gpu.py: test_maxpool_tie_rule_first_maximum_in_window_order
// Test: tests/backend/test_gpu.py: test_maxpool_backward_matches_cpu
// Test: tests/backend/test_gpu.py: test_op_cpu_gpu_agree, test_op_gradcheck_on_gpu
// Test: tests/backend/test_cpu_twins.py: test_maxpool_forward_backward
// Test: tests/backend/test_cpu_twins.py: test_maxpool_tie_rule_first_maximum_in_window_order
// Test: tests/emulation/test_kernels.py: test_maxpool

template <typename T>
__global__ void maxpool2x2_forward(const T* __restrict__ x, T* __restrict__ out,
                                   unsigned char* __restrict__ arg,
                                   long long P, int H, int W)
{
    const int Ho = H / 2, Wo = W / 2;
    const long long n = (long long)Ho * Wo;  // windows per plane
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long p = blockIdx.y; p < P; p += gridDim.y) {
        const T* xp = x + p * H * W;
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += stride) {
            const int y = (int)q / Wo;
            const int xx = (int)q - y * Wo;
            const T* r0 = xp + (2 * y) * W + 2 * xx;  // &x[p, 2y, 2xx]
            const T* r1 = r0 + W;                     // &x[p, 2y+1, 2xx]
            T best = r0[0];
            unsigned char a = 0;
            T v = r0[1];
            if (v > best) { best = v; a = 1; }
            v = r1[0];
            if (v > best) { best = v; a = 2; }
            v = r1[1];
            if (v > best) { best = v; a = 3; }
            out[p * n + q] = best;
            arg[p * n + q] = a;
        }
    }
}

template <typename T>
__global__ void maxpool2x2_backward(const T* __restrict__ dout,
                                    const unsigned char* __restrict__ arg,
                                    T* __restrict__ dx, long long P, int Ho, int Wo)
{
    const long long n = (long long)Ho * Wo;
    const int W = 2 * Wo;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long p = blockIdx.y; p < P; p += gridDim.y) {
        T* dxp = dx + p * 4 * n;
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += stride) {
            const int y = (int)q / Wo;
            const int xx = (int)q - y * Wo;
            const T g = dout[p * n + q];
            const unsigned char a = arg[p * n + q];
            T* r0 = dxp + (2 * y) * W + 2 * xx;  // &dx[p, 2y, 2xx]
            T* r1 = r0 + W;                      // &dx[p, 2y+1, 2xx]
            r0[0] = a == 0 ? g : T(0);
            r0[1] = a == 1 ? g : T(0);
            r1[0] = a == 2 ? g : T(0);
            r1[1] = a == 3 ? g : T(0);
        }
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void maxpool2x2_forward<float>(const float*, float*, unsigned char*,
                                                   long long, int, int);
template __global__ void maxpool2x2_forward<double>(const double*, double*, unsigned char*,
                                                    long long, int, int);
template __global__ void maxpool2x2_backward<float>(const float*, const unsigned char*, float*,
                                                    long long, int, int);
template __global__ void maxpool2x2_backward<double>(const double*, const unsigned char*, double*,
                                                     long long, int, int);
#endif
