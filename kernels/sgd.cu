// sgd.cu -- the momentum-SGD update in the Caffe convention, one launch per step.
//
// What: for every parameter element (Ronneberger et al. 2015 train with momentum 0.99):
//     v = momentum * v - lr * (g + weight_decay * w);   w = w + v
//   sgd_update works on one flat buffer (or one array) of n elements.
//   sgd_update_many works on A separate arrays in one launch: device tables of their w, v and g
//   pointers and the prefix sums offsets[0..A] of their sizes (offsets[0] = 0, offsets[A] = total);
//   a thread finds its array by binary search over offsets (A is a few dozen, so this is a
//   handful of cached loads).
// Launch geometry: 1-D grid of 256-thread blocks, grid-stride over the elements (64-bit).
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: sgd_update, sgd_update_many
// CPU twin: minunet/backend/cpu.py: sgd_update, sgd_update_many
// Plain op: none -- an optimiser step, not a layer op; the formula under What: is all of it
// Used by: minunet/nn/optim.py: MomentumSGD.step
// Test: tests/backend/test_gpu.py: test_sgd_update_matches_cpu
// Test: tests/backend/test_gpu.py: test_sgd_update_many_matches_cpu
// Test: tests/backend/test_cpu_twins.py: test_sgd_update
// Test: tests/emulation/test_kernels.py: test_sgd_update, test_sgd_update_many

template <typename T>
__global__ void sgd_update(T* __restrict__ w, T* __restrict__ v, const T* __restrict__ g,
                           long long n, T lr, T momentum, T weight_decay)
{
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const T wi = w[e];
        const T vi = momentum * v[e] - lr * (g[e] + weight_decay * wi);
        v[e] = vi;
        w[e] = wi + vi;
    }
}

template <typename T>
__global__ void sgd_update_many(T* const* __restrict__ ws, T* const* __restrict__ vs,
                                const T* const* __restrict__ gs,
                                const long long* __restrict__ offsets, int A,
                                T lr, T momentum, T weight_decay)
{
    const long long total = offsets[A];
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total; e += stride) {
        int lo = 0, hi = A - 1;  // find a with offsets[a] <= e < offsets[a+1]
        while (lo < hi) {
            const int mid = (lo + hi + 1) >> 1;
            if (offsets[mid] <= e) lo = mid; else hi = mid - 1;
        }
        const long long i = e - offsets[lo];
        T* w = ws[lo];
        T* v = vs[lo];
        const T wi = w[i];
        const T vi = momentum * v[i] - lr * (gs[lo][i] + weight_decay * wi);
        v[i] = vi;
        w[i] = wi + vi;
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void sgd_update<float>(float*, float*, const float*, long long, float, float,
                                           float);
template __global__ void sgd_update<double>(double*, double*, const double*, long long, double,
                                            double, double);
template __global__ void sgd_update_many<float>(float* const*, float* const*, const float* const*,
                                                const long long*, int, float, float, float);
template __global__ void sgd_update_many<double>(double* const*, double* const*,
                                                 const double* const*, const long long*, int,
                                                 double, double, double);
#endif
