// relu.cu -- bias + ReLU fused forward (in place), and the ReLU backward.
//
// What: bias_relu_forward: x[n, c, s] = relu(x[n, c, s] + b[c]) in place, x (N, C, S) with S the
//   flattened spatial size (H*W), b (C,); relu(v) = v if not (v <= 0) else 0, so a NaN passes
//   through like numpy.maximum(v, 0) and v <= 0 (also -0) gives +0.
//   relu_backward: dx = dout where out > 0, else 0 (elementwise over any shape; a select, not a
//   product, so an inf/NaN in dout does not leak through a dead unit -- as numpy.where).
// Launch geometry: blocks of 256 threads (x), grid-stride loops.
//   bias_relu_forward: 2-D grid, grid.y walks the N*C planes (one bias value per plane),
//   grid.x the S pixels of a plane (coalesced). relu_backward: 1-D grid over all elements.
//   All offsets 64-bit.
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: bias_relu_forward, relu_backward
// CPU twin: minunet/backend/cpu.py: bias_relu_forward, relu_backward
// Plain op: minunet/ops/conv.py: conv2d_forward
// Plain op: minunet/ops/relu.py: relu_forward, relu_backward
//   (bias_relu_forward fuses the plain conv's bias add with the ReLU that follows it)
// Used by: minunet/fast/conv.py: conv2d_forward, conv2d_backward
// Used by: minunet/fast/relu.py: relu_backward
// Test: tests/backend/test_gpu.py: test_bias_relu_forward_matches_numpy
// Test: tests/backend/test_gpu.py: test_relu_backward_matches_numpy
// Test: tests/backend/test_gpu.py: test_bias_relu_forward_64bit_offsets
// Test: tests/backend/test_gpu.py: test_op_cpu_gpu_agree, test_op_gradcheck_on_gpu
// Test: tests/backend/test_cpu_twins.py: test_bias_relu_forward, test_relu_backward
// Test: tests/backend/test_cpu_twins.py: test_relu_backward_conv_chunk_into_workspace
// Test: tests/emulation/test_kernels.py: test_bias_relu_forward, test_relu_backward

template <typename T>
__global__ void bias_relu_forward(T* __restrict__ x, const T* __restrict__ b,
                                  long long planes, int C, long long S)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long p = blockIdx.y; p < planes; p += gridDim.y) {
        const T bias = b[p % C];
        T* xp = x + p * S;
        for (long long s = (long long)blockIdx.x * blockDim.x + threadIdx.x; s < S; s += stride) {
            const T v = xp[s] + bias;
            xp[s] = (v <= T(0)) ? T(0) : v;
        }
    }
}

template <typename T>
__global__ void relu_backward(const T* __restrict__ dout, const T* __restrict__ out,
                              T* __restrict__ dx, long long n)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        dx[e] = out[e] > T(0) ? dout[e] : T(0);
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void bias_relu_forward<float>(float*, const float*, long long, int, long long);
template __global__ void bias_relu_forward<double>(double*, const double*, long long, int,
                                                   long long);
template __global__ void relu_backward<float>(const float*, const float*, float*, long long);
template __global__ void relu_backward<double>(const double*, const double*, double*, long long);
#endif
