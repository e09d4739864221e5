// resample.cu -- bilinear up-sampling by an integer factor (both corner modes) and its adjoint.
//
// What: forward, x (P, H, W) planes -> out (P, f*H, f*W). Along one axis of input size S and
//   output size So = f*S, output index o reads the two input indices around its source
//   coordinate t (computed in double exactly as minunet/ops/resample.py's interpolation_matrix):
//       align_corners 0: t = max((o + 0.5) / f - 0.5, 0);  1: t = o * ((S-1) / (So-1)) (0 if So=1)
//       i0 = min((int)t, S-1),  i1 = min(i0 + 1, S-1),  l = t - i0,  w0 = (T)(1 - l), w1 = (T)l
//   and, as the plain op's x @ A_w.T then A_h @ (.), columns first:
//       r0 = w0x*x[y0, x0] + w1x*x[y0, x1],  r1 = w0x*x[y1, x0] + w1x*x[y1, x1]
//       out[Y, X] = w0y*r0 + w1y*r1
//   adjoint, one axis at a time, as a GATHER (no atomics, deterministic): src (P, So, Q),
//   A (So, S) the axis' interpolation matrix (the plain op's, from the cache), dst (P, S, Q):
//       dst[p, i, q] = sum over o in band(i), ascending, of A[o, i] * src[p, o, q]
//   band(i): the outputs whose taps can include i, from max(0, min(f*(i-1), (i-1)(So-1)/(S-1)) - 1)
//   to min(So, max(f*(i+2), (i+1)(So-1)/(S-1) + 2)) (all of 0..So-1 when S = 1), a bound valid
//   for both corner modes; A is exactly 0 elsewhere in the band. The backward of the plain op,
//   A_h.T @ dout @ A_w, is the adjoint along W (Q = 1, P = N*C*Ho) then along H (Q = W).
//   The CPU twins add in the same order with the same weights: bit for bit.
// Launch geometry: blocks of 256 threads (x), 2-D grid, grid-stride in both dimensions: grid.y
//   over the planes P, grid.x over the values of one output plane (forward: So_h*So_w; adjoint:
//   S*Q), so writes are coalesced. Plane offsets 64-bit; the launchers check a plane < 2^31.
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: bilinear_forward, bilinear_adjoint
// CPU twin: minunet/backend/cpu.py: bilinear_forward, bilinear_adjoint
// Plain op: minunet/ops/resample.py: bilinear_upsample_forward, bilinear_upsample_backward
// Used by: minunet/fast/resample.py: bilinear_upsample_forward, bilinear_upsample_backward
// Test: tests/backend/test_gpu_family.py: test_bilinear_kernels_match_cpu
// Test: tests/backend/test_cpu_twins_family.py: test_bilinear_forward, test_bilinear_adjoint
// Test: tests/emulation/test_kernels_family.py: test_bilinear

// The taps of output index o along an axis of input size S (factor f); see the header.
__device__ __forceinline__ void bilinear_tap(int o, int S, int f, int align, int& i0, int& i1,
                                             double& l)
{
    const int So = S * f;
    double t;
    if (align) {
        t = So > 1 ? (double)o * ((double)(S - 1) / (double)(So - 1)) : 0.0;
    } else {
        t = ((double)o + 0.5) / (double)f - 0.5;
        if (t < 0.0) t = 0.0;
    }
    i0 = (int)t;  // t >= 0: truncation is floor
    if (i0 > S - 1) i0 = S - 1;
    i1 = i0 + 1 < S ? i0 + 1 : S - 1;
    l = t - (double)i0;
}

template <typename T>
__global__ void bilinear_forward(const T* __restrict__ x, T* __restrict__ out, long long planes,
                                 int H, int W, int f, int align)
{
    const int Wo = W * f;
    const long long n = (long long)H * f * Wo;  // values of one output plane
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const T* src = x + p * H * W;
        T* dst = out + p * n;
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n; q += stride) {
            const int Y = (int)(q / Wo);
            const int X = (int)(q - (long long)Y * Wo);
            int y0, y1, x0, x1;
            double ly, lx;
            bilinear_tap(Y, H, f, align, y0, y1, ly);
            bilinear_tap(X, W, f, align, x0, x1, lx);
            const T w0y = (T)(1.0 - ly), w1y = (T)ly, w0x = (T)(1.0 - lx), w1x = (T)lx;
            const T r0 = w0x * src[y0 * W + x0] + w1x * src[y0 * W + x1];
            const T r1 = w0x * src[y1 * W + x0] + w1x * src[y1 * W + x1];
            dst[q] = w0y * r0 + w1y * r1;
        }
    }
}

template <typename T>
__global__ void bilinear_adjoint(const T* __restrict__ src, const T* __restrict__ a,
                                 T* __restrict__ dst, long long planes, int S, int So, int Q)
{
    const long long n = (long long)S * Q;  // values of one dst plane
    const long long stride = (long long)blockDim.x * gridDim.x;
    const long long f = So / S;
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const T* s = src + p * So * Q;
        T* d = dst + p * n;
        for (long long v = (long long)blockIdx.x * blockDim.x + threadIdx.x; v < n; v += stride) {
            const int i = (int)(v / Q);
            const int q = (int)(v - (long long)i * Q);
            long long lo = 0, hi = So;
            if (S > 1) {
                const long long lo_b = i >= 1 ? (long long)(i - 1) * (So - 1) / (S - 1) : 0;
                const long long hi_b = (long long)(i + 1) * (So - 1) / (S - 1) + 2;
                const long long lo_a = f * (i - 1), hi_a = f * (i + 2);
                lo = (lo_a < lo_b ? lo_a : lo_b) - 1;
                hi = hi_a > hi_b ? hi_a : hi_b;
                if (lo < 0) lo = 0;
                if (hi > So) hi = So;
            }
            T acc = T(0);
            for (long long o = lo; o < hi; ++o) acc += a[o * S + i] * s[o * Q + q];
            d[v] = acc;
        }
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void bilinear_forward<float>(const float*, float*, long long, int, int, int,
                                                 int);
template __global__ void bilinear_forward<double>(const double*, double*, long long, int, int,
                                                  int, int);
template __global__ void bilinear_adjoint<float>(const float*, const float*, float*, long long,
                                                 int, int, int);
template __global__ void bilinear_adjoint<double>(const double*, const double*, double*,
                                                  long long, int, int, int);
#endif
