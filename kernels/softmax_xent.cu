// softmax_xent.cu -- pixel-wise softmax fused with the weighted cross-entropy, and its backward.
//
// What: logits (N, K, H, W), labels (N, H, W) integer (int or long long), weights (N, H, W):
//     m = max_k z_k,  s = sum_k exp(z_k - m),  probs[n, k, y, x] = exp(z_k - m) / s
//     loss_sum = sum over pixels with w != 0 of  w * (log s - (z_l - m))      (= w * -log p_l)
//   One thread per pixel makes ONE pass over its K logits for m, s and z_l (an online max/sum:
//   s is rescaled when the running max grows), then writes the K probabilities (re-reading the
//   logits it just read, from cache). No exponential exceeds 1, so any logit size is safe
//   (|z| = 1e4 and beyond). Pixels with w == 0 are skipped (ignored), as in the CPU twin.
//   A label outside 0..K-1 on a pixel with w != 0 makes the loss NaN (the GPU cannot raise; the
//   host checks labels once in the loaders).
//   Loss reduction, deterministic and free of float atomics: each block sums its threads'
//   per-pixel losses in double (fixed tree in shared memory) into partial[blockIdx.x]; then
//   sum_partials (one block) adds the partials in a fixed order and writes the 0-d loss in T.
//   The number of blocks depends only on the pixel count (the launcher caps it at 1024), so the
//   same input gives the same bits on every run.
//   Backward: dlogits[n, k, y, x] = scale * w * (probs[n, k, y, x] - [k == l]).
// Launch geometry: softmax_xent_forward: 1-D grid of at most 1024 blocks of exactly 256 threads
//   (kBlock; the tree reduction assumes it), grid-stride over the N*H*W pixels; reads and writes
//   of one class plane are coalesced (consecutive threads, consecutive pixels).
//   sum_partials: 1 block of 256 threads. softmax_xent_backward: 1-D grid of 256-thread blocks,
//   grid-stride over pixels. Pixel and element offsets 64-bit.
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: softmax_xent_forward, softmax_xent_backward
// CPU twin: minunet/backend/cpu.py: softmax_xent_forward, softmax_xent_backward
//   (sum_partials has no twin of its own: the CPU twin sums its row losses in a fixed order)
// Plain op: minunet/ops/softmax.py: softmax_cross_entropy_forward
// Plain op: minunet/ops/softmax.py: softmax_cross_entropy_backward
// Used by: minunet/fast/softmax.py: softmax_cross_entropy_forward
// Used by: minunet/fast/softmax.py: softmax_cross_entropy_backward
// Test: tests/backend/test_gpu.py: test_softmax_xent_forward_matches_cpu
// Test: tests/backend/test_gpu.py: test_softmax_xent_backward_matches_cpu
// Test: tests/backend/test_gpu.py: test_softmax_xent_deterministic_and_stable
// Test: tests/backend/test_gpu.py: test_softmax_xent_label_dtypes
// Test: tests/backend/test_gpu.py: test_softmax_xent_bad_label_gives_nan_not_garbage
// Test: tests/backend/test_gpu.py: test_op_cpu_gpu_agree, test_op_gradcheck_on_gpu
// Test: tests/backend/test_cpu_twins.py: test_softmax_xent_forward_backward
// Test: tests/emulation/test_kernels.py: test_softmax_xent, test_softmax_xent_bad_label_gives_nan

constexpr int kBlock = 256;

__device__ __forceinline__ float ex(float v) { return expf(v); }
__device__ __forceinline__ double ex(double v) { return exp(v); }
__device__ __forceinline__ float lg(float v) { return logf(v); }
__device__ __forceinline__ double lg(double v) { return log(v); }

// Sum one double per thread over the block (blockDim.x == kBlock) in a fixed tree order.
__device__ __forceinline__ double block_sum(double v)
{
    __shared__ double sh[kBlock];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int half = kBlock / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
        __syncthreads();
    }
    return sh[0];
}

template <typename T, typename L>
__global__ void softmax_xent_forward(const T* __restrict__ logits, const L* __restrict__ labels,
                                     const T* __restrict__ weights, T* __restrict__ probs,
                                     double* __restrict__ partial, int K, long long HW,
                                     long long npix)
{
    double acc = 0.0;  // this thread's share of the loss
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long pix = (long long)blockIdx.x * blockDim.x + threadIdx.x; pix < npix;
         pix += stride) {
        const long long n = pix / HW;
        const long long base = n * K * HW + (pix - n * HW);  // &logits[n, 0, y, x]
        const L lab = labels[pix];
        // one pass: running max m and s = sum exp(z - m), rescaled when m grows
        T m = logits[base];
        T s = T(1);
        T zl = m;  // the label's logit
        for (int c = 1; c < K; ++c) {
            const T z = logits[base + c * HW];
            if (c == lab) zl = z;
            if (z > m) {
                s = s * ex(m - z) + T(1);
                m = z;
            } else {
                s += ex(z - m);
            }
        }
        for (int c = 0; c < K; ++c) {  // second read of the K logits: from L1/L2, not DRAM
            probs[base + c * HW] = ex(logits[base + c * HW] - m) / s;
        }
        const T w = weights[pix];
        if (w != T(0)) {
            const bool valid = lab >= 0 && lab < K;
            const double nan = __longlong_as_double(0x7ff8000000000000LL);
            acc += valid ? (double)(w * (lg(s) - (zl - m))) : nan;
        }
    }
    const double total = block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

// The second stage of the loss reduction: out[0] = (T) sum(partial[0 .. n-1]), fixed order.
template <typename T>
__global__ void sum_partials(const double* __restrict__ partial, int n, T* __restrict__ out)
{
    double acc = 0.0;
    for (int b = threadIdx.x; b < n; b += blockDim.x) acc += partial[b];
    const double total = block_sum(acc);
    if (threadIdx.x == 0) out[0] = (T)total;
}

template <typename T, typename L>
__global__ void softmax_xent_backward(const T* __restrict__ probs, const L* __restrict__ labels,
                                      const T* __restrict__ weights, T* __restrict__ dlogits,
                                      T scale, int K, long long HW, long long npix)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long pix = (long long)blockIdx.x * blockDim.x + threadIdx.x; pix < npix;
         pix += stride) {
        const long long n = pix / HW;
        const long long base = n * K * HW + (pix - n * HW);  // &probs[n, 0, y, x]
        const T g = scale * weights[pix];
        const L lab = labels[pix];
        for (int c = 0; c < K; ++c) {
            const T onehot = (c == lab) ? T(1) : T(0);
            dlogits[base + c * HW] = g * (probs[base + c * HW] - onehot);
        }
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void softmax_xent_forward<float, int>(
    const float*, const int*, const float*, float*, double*, int, long long, long long);
template __global__ void softmax_xent_forward<float, long long>(
    const float*, const long long*, const float*, float*, double*, int, long long, long long);
template __global__ void softmax_xent_forward<double, int>(
    const double*, const int*, const double*, double*, double*, int, long long, long long);
template __global__ void softmax_xent_forward<double, long long>(
    const double*, const long long*, const double*, double*, double*, int, long long, long long);
template __global__ void softmax_xent_backward<float, int>(
    const float*, const int*, const float*, float*, float, int, long long, long long);
template __global__ void softmax_xent_backward<float, long long>(
    const float*, const long long*, const float*, float*, float, int, long long, long long);
template __global__ void softmax_xent_backward<double, int>(
    const double*, const int*, const double*, double*, double, int, long long, long long);
template __global__ void softmax_xent_backward<double, long long>(
    const double*, const long long*, const double*, double*, double, int, long long, long long);
template __global__ void sum_partials<float>(const double*, int, float*);
template __global__ void sum_partials<double>(const double*, int, double*);
#endif
