// depthwise.cu -- the depthwise convolution (groups = C, one k x k filter per output channel),
// with zero padding p and stride s, forward and backward, without im2col.
//
// What: x (N, C, H, W), w (Co, 1, k, k) with Co = m*C (m filters per input channel; MobileNetV2
//   and EfficientNet use m = 1), b (Co,), Ho = (H + 2p - k)/s + 1, Wo likewise; output channel o
//   reads input channel c = o / m:
//     depthwise_forward:  out[n, o, y, x] = (sum over (i, j) ascending, taps inside the image, of
//                         w[o, i, j] * x[n, c, s*y + i - p, s*x + j - p]) + b[o]
//     depthwise_backward_dx (a GATHER, no atomics): dx[n, c, Y, X] = sum over r = 0..m-1, i, j
//                         ascending with s | (Y + p - i), s | (X + p - j) and the output pixel
//                         inside the map, of w[o, i, j] * dout[n, o, (Y+p-i)/s, (X+p-j)/s], o = c*m+r
//     depthwise_dw_partials: for work item q (2048 output pixels) of plane (n, o), in float64:
//                         part[n, o, q, i*k + j] = sum dout * x at tap (i, j);  part[.., k*k] =
//                         sum dout (db). Thread t of 256 adds pixels t, t+256, ...; then a fixed
//                         tree per tap: deterministic on any grid. The host sums over n and q.
//   The forward and dx add in the CPU twins' order: bit for bit. dw/db: the twin sums along
//   rows (another order, float64 too): equal to ~1e-15 relative, not bit for bit.
// Launch geometry: forward and dx: blocks of 256 threads, grid.y over the planes (N*Co for the
//   forward, N*C for dx), grid.x over a plane's pixels, grid-stride in both (coalesced writes).
//   dw partials: 1-D grid of at most 65535 blocks of exactly 256 threads (the tree assumes it),
//   grid-stride over the N*Co*nq work items. Plane offsets 64-bit; the launchers check that a
//   plane holds fewer than 2^31 values.
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: depthwise_forward, depthwise_backward_dx, depthwise_dw_partials
// CPU twin: minunet/backend/cpu.py: depthwise_forward, depthwise_backward_dx, depthwise_dw_partials
// Plain op: minunet/ops/conv_general.py: conv2d_general_forward, conv2d_general_backward
// Used by: minunet/fast/conv_general.py: conv2d_general_forward, conv2d_general_backward
// Test: tests/backend/test_gpu_family.py: test_depthwise_kernels_match_cpu
// Test: tests/backend/test_cpu_twins_family.py: test_depthwise
// Test: tests/emulation/test_kernels_family.py: test_depthwise

constexpr int kDwBlock = 256;
constexpr int kDwChunk = 2048;

__device__ __forceinline__ double dw_block_sum(double v)
{
    __shared__ double sh[kDwBlock];
    const int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int half = kDwBlock / 2; half > 0; half >>= 1) {
        if (t < half) sh[t] += sh[t + half];
        __syncthreads();
    }
    const double total = sh[0];
    __syncthreads();  // the next tap reuses sh
    return total;
}

template <typename T>
__global__ void depthwise_forward(const T* __restrict__ x, const T* __restrict__ w,
                                  const T* __restrict__ b, T* __restrict__ out, long long planes,
                                  int C, int m, int H, int W, int k, int s, int p, int Ho, int Wo)
{
    const long long n_out = (long long)Ho * Wo;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long pl = blockIdx.y; pl < planes; pl += gridDim.y) {
        const int Co = C * m;
        const int o = (int)(pl % Co);
        const long long n = pl / Co;
        const T* src = x + (n * C + o / m) * H * W;
        const T* wo = w + (long long)o * k * k;
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n_out;
             q += stride) {
            const int y = (int)(q / Wo);
            const int xx = (int)(q - (long long)y * Wo);
            T acc = T(0);
            for (int i = 0; i < k; ++i) {
                const int iy = s * y + i - p;
                if (iy < 0 || iy >= H) continue;
                for (int j = 0; j < k; ++j) {
                    const int ix = s * xx + j - p;
                    if (ix < 0 || ix >= W) continue;
                    acc += wo[i * k + j] * src[iy * W + ix];
                }
            }
            out[pl * n_out + q] = acc + b[o];
        }
    }
}

template <typename T>
__global__ void depthwise_backward_dx(const T* __restrict__ dout, const T* __restrict__ w,
                                      T* __restrict__ dx, long long planes, int C, int m, int H,
                                      int W, int k, int s, int p, int Ho, int Wo)
{
    const long long n_in = (long long)H * W;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long pl = blockIdx.y; pl < planes; pl += gridDim.y) {  // pl = n*C + c
        const int c = (int)(pl % C);
        const long long n = pl / C;
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < n_in;
             q += stride) {
            const int Y = (int)(q / W);
            const int X = (int)(q - (long long)Y * W);
            T acc = T(0);
            for (int r = 0; r < m; ++r) {
                const int o = c * m + r;
                const T* d = dout + (n * C * m + o) * Ho * Wo;
                const T* wo = w + (long long)o * k * k;
                for (int i = 0; i < k; ++i) {
                    const int ry = Y + p - i;  // s*y for the output row y that read Y by tap i
                    if (ry < 0 || ry % s != 0 || ry / s >= Ho) continue;
                    for (int j = 0; j < k; ++j) {
                        const int rx = X + p - j;
                        if (rx < 0 || rx % s != 0 || rx / s >= Wo) continue;
                        acc += wo[i * k + j] * d[(ry / s) * Wo + rx / s];
                    }
                }
            }
            dx[pl * n_in + q] = acc;
        }
    }
}

template <typename T>
__global__ void depthwise_dw_partials(const T* __restrict__ dout, const T* __restrict__ x,
                                      double* __restrict__ part, long long planes, int C, int m,
                                      int H, int W, int k, int s, int p, int Ho, int Wo, int nq)
{
    const long long items = planes * nq;
    const long long n_out = (long long)Ho * Wo;
    const int taps = k * k + 1;  // the k*k taps of dw, then db
    for (long long it = blockIdx.x; it < items; it += gridDim.x) {
        const long long pl = it / nq;  // n*Co + o
        const long long e0 = (it - pl * nq) * kDwChunk;
        const long long rest = n_out - e0;
        const int len = rest < kDwChunk ? (int)rest : kDwChunk;
        const int Co = C * m;
        const int o = (int)(pl % Co);
        const long long n = pl / Co;
        const T* d = dout + pl * n_out;
        const T* src = x + (n * C + o / m) * H * W;
        for (int tap = 0; tap < taps; ++tap) {
            const int i = tap / k, j = tap - (tap / k) * k;
            double acc = 0.0;
            for (int e = threadIdx.x; e < len; e += blockDim.x) {
                const long long q = e0 + e;
                const int y = (int)(q / Wo);
                const int xx = (int)(q - (long long)y * Wo);
                if (tap == taps - 1) {
                    acc += (double)d[q];
                    continue;
                }
                const int iy = s * y + i - p, ix = s * xx + j - p;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                acc += (double)d[q] * (double)src[iy * W + ix];
            }
            const double total = dw_block_sum(acc);
            if (threadIdx.x == 0) part[it * taps + tap] = total;
        }
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void depthwise_forward<float>(const float*, const float*, const float*,
                                                  float*, long long, int, int, int, int, int, int,
                                                  int, int, int);
template __global__ void depthwise_forward<double>(const double*, const double*, const double*,
                                                   double*, long long, int, int, int, int, int,
                                                   int, int, int, int);
template __global__ void depthwise_backward_dx<float>(const float*, const float*, float*,
                                                      long long, int, int, int, int, int, int,
                                                      int, int, int);
template __global__ void depthwise_backward_dx<double>(const double*, const double*, double*,
                                                       long long, int, int, int, int, int, int,
                                                       int, int, int);
template __global__ void depthwise_dw_partials<float>(const float*, const float*, double*,
                                                      long long, int, int, int, int, int, int,
                                                      int, int, int, int);
template __global__ void depthwise_dw_partials<double>(const double*, const double*, double*,
                                                       long long, int, int, int, int, int, int,
                                                       int, int, int, int);
#endif
