// batchnorm.cu -- BatchNorm2d's per-channel reductions (one pass each) and its fused epilogues.
//
// What: x, dout, xhat (N, C, H, W) seen as P = N*C planes of HW = H*W values, plane p = n*C + c.
//   Each plane is cut into work items of kChunk = 2048 values (nq = ceil(HW / kChunk) per plane);
//   work item w = p*nq + q writes two float64 partial sums, part[w, 0..1]:
//     bn_stats_partials:  v = x - shift[c] (shift[c] = x[0, c, 0, 0], the channel's first value):
//                         part[w] = (sum v, sum v*v)   -- the mean and the biased variance follow
//                         (the host sums part over n and q); the shift keeps sum v*v free of the
//                         cancellation of E[x^2] - E[x]^2 when a channel's mean is large
//     bn_grad_partials:   part[w] = (sum dout, sum dout*xhat)  -- dbeta and dgamma, and the two
//                         means of the compact backward
//   Order of the sums, fixed: thread t of the 256 adds values t, t+256, ... of its work item in
//   float64; the block then adds the 256 values in a fixed tree (sh[t] += sh[t + half], half =
//   128 .. 1). The CPU twin does exactly this, so the partials agree BIT FOR BIT with it, on any
//   grid (a work item's sum does not depend on the grid).
//     bn_normalize:       xhat = (x - mean[c]) * inv_std[c];  out = gamma[c] * xhat + beta[c]
//     bn_backward_dx:     dx = k[c] * ((dout - m1[c]) - xhat * m2[c])
//                         (training: k = gamma*inv_std, m1 = dbeta/M, m2 = dgamma/M; eval: m = 0)
// Launch geometry: partials: 1-D grid of at most 65535 blocks of exactly 256 threads (kBlock; the
//   tree assumes it), grid-stride over the P*nq work items (one block per item; every thread of
//   a block takes the same trip count, so the barriers are uniform). Epilogues: blocks of 256
//   threads, grid.y over the P planes, grid.x over the HW values of a plane, grid-stride in both.
//   Plane offsets 64-bit; the launchers check HW < 2^31.
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: bn_stats_partials, bn_grad_partials, bn_normalize, bn_backward_dx
// CPU twin: minunet/backend/cpu.py: bn_stats_partials, bn_grad_partials, bn_normalize, bn_backward_dx
// Plain op: minunet/ops/norm.py: batchnorm2d_forward, batchnorm2d_backward
// Used by: minunet/fast/norm.py: batchnorm2d_forward, batchnorm2d_backward
// Test: tests/backend/test_gpu_family.py: test_batchnorm_kernels_match_cpu
// Test: tests/backend/test_cpu_twins_family.py: test_bn_partials, test_bn_normalize_and_dx
// Test: tests/emulation/test_kernels_family.py: test_bn_partials, test_bn_epilogues

constexpr int kBnBlock = 256;
constexpr int kBnChunk = 2048;

// Sum a and b over the block (blockDim.x == kBnBlock) in a fixed tree order; every thread
// returns with the totals. The last barrier lets the next work item reuse the shared arrays.
__device__ __forceinline__ void bn_block_sum2(double& a, double& b)
{
    __shared__ double s0[kBnBlock];
    __shared__ double s1[kBnBlock];
    const int t = threadIdx.x;
    s0[t] = a;
    s1[t] = b;
    __syncthreads();
    for (int half = kBnBlock / 2; half > 0; half >>= 1) {
        if (t < half) {
            s0[t] += s0[t + half];
            s1[t] += s1[t + half];
        }
        __syncthreads();
    }
    a = s0[0];
    b = s1[0];
    __syncthreads();
}

template <typename T>
__global__ void bn_stats_partials(const T* __restrict__ x, double* __restrict__ part,
                                  long long planes, int C, long long HW, int nq)
{
    const long long items = planes * nq;
    for (long long w = blockIdx.x; w < items; w += gridDim.x) {
        const long long p = w / nq;
        const long long e0 = (w - p * nq) * kBnChunk;  // first value of this item in its plane
        const long long rest = HW - e0;
        const int len = rest < kBnChunk ? (int)rest : kBnChunk;
        const T* src = x + p * HW + e0;
        const double shift = (double)x[(p % C) * HW];  // x[0, c, 0, 0]
        double s = 0.0, ss = 0.0;
        for (int e = threadIdx.x; e < len; e += blockDim.x) {
            const double v = (double)src[e] - shift;
            s += v;
            ss += v * v;
        }
        bn_block_sum2(s, ss);
        if (threadIdx.x == 0) {
            part[2 * w] = s;
            part[2 * w + 1] = ss;
        }
    }
}

template <typename T>
__global__ void bn_grad_partials(const T* __restrict__ dout, const T* __restrict__ xhat,
                                 double* __restrict__ part, long long planes, long long HW, int nq)
{
    const long long items = planes * nq;
    for (long long w = blockIdx.x; w < items; w += gridDim.x) {
        const long long p = w / nq;
        const long long e0 = (w - p * nq) * kBnChunk;
        const long long rest = HW - e0;
        const int len = rest < kBnChunk ? (int)rest : kBnChunk;
        const T* d = dout + p * HW + e0;
        const T* h = xhat + p * HW + e0;
        double s = 0.0, sh = 0.0;
        for (int e = threadIdx.x; e < len; e += blockDim.x) {
            const double g = (double)d[e];
            s += g;
            sh += g * (double)h[e];
        }
        bn_block_sum2(s, sh);
        if (threadIdx.x == 0) {
            part[2 * w] = s;
            part[2 * w + 1] = sh;
        }
    }
}

template <typename T>
__global__ void bn_normalize(const T* __restrict__ x, const T* __restrict__ mean,
                             const T* __restrict__ inv_std, const T* __restrict__ gamma,
                             const T* __restrict__ beta, T* __restrict__ xhat,
                             T* __restrict__ out, long long planes, int C, long long HW)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const int c = (int)(p % C);
        const T m = mean[c], s = inv_std[c], g = gamma[c], b = beta[c];
        const long long off = p * HW;
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < HW; q += stride) {
            const T h = (x[off + q] - m) * s;
            xhat[off + q] = h;
            out[off + q] = g * h + b;
        }
    }
}

template <typename T>
__global__ void bn_backward_dx(const T* __restrict__ dout, const T* __restrict__ xhat,
                               const T* __restrict__ k, const T* __restrict__ m1,
                               const T* __restrict__ m2, T* __restrict__ dx, long long planes,
                               int C, long long HW)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const int c = (int)(p % C);
        const T kc = k[c], a = m1[c], b = m2[c];
        const long long off = p * HW;
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < HW; q += stride) {
            dx[off + q] = kc * ((dout[off + q] - a) - xhat[off + q] * b);
        }
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void bn_stats_partials<float>(const float*, double*, long long, int,
                                                  long long, int);
template __global__ void bn_stats_partials<double>(const double*, double*, long long, int,
                                                   long long, int);
template __global__ void bn_grad_partials<float>(const float*, const float*, double*, long long,
                                                 long long, int);
template __global__ void bn_grad_partials<double>(const double*, const double*, double*,
                                                  long long, long long, int);
template __global__ void bn_normalize<float>(const float*, const float*, const float*,
                                             const float*, const float*, float*, float*,
                                             long long, int, long long);
template __global__ void bn_normalize<double>(const double*, const double*, const double*,
                                              const double*, const double*, double*, double*,
                                              long long, int, long long);
template __global__ void bn_backward_dx<float>(const float*, const float*, const float*,
                                               const float*, const float*, float*, long long,
                                               int, long long);
template __global__ void bn_backward_dx<double>(const double*, const double*, const double*,
                                                const double*, const double*, double*,
                                                long long, int, long long);
#endif
