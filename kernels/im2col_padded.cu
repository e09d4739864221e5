// im2col_padded.cu -- im2col and col2im with zero padding p and stride s (the U-Net family's conv).
//
// What: for one image x (C, H, W), Ho = (H + 2p - k)/s + 1, Wo = (W + 2p - k)/s + 1 and output
//   rows y0 <= y < y1 (L = (y1-y0)*Wo), as kernels/im2col.cu with two changes (stride, padding):
//     im2col_padded: out[(c*k + i)*k + j, (y-y0)*Wo + xx] = x[c, s*y + i - p, s*xx + j - p],
//                    0 where that pixel lies in the padding                     out (C*k*k, L)
//     col2im_padded: dx[c, Y, X] += sum over (i, j) ascending with s | (Y + p - i), s | (X + p - j),
//                    y0 <= (Y+p-i)/s < y1 and 0 <= (X+p-j)/s < Wo of
//                    cols[(c*k + i)*k + j, ((Y+p-i)/s - y0)*Wo + (X+p-j)/s]      dx (C, H, W)
//   col2im_padded is a GATHER (one thread per dx pixel, no atomics), in the CPU twin's (i, j)
//   order: bit for bit. Only the band of rows max(0, s*y0 - p) .. min(H, s*(y1-1) - p + k) - 1
//   is touched. With s = 1, p = 0 these are im2col.cu's kernels.
// Launch geometry: as im2col.cu: blocks of 256 threads (x), 2-D grid, grid-stride in both.
//   im2col_padded: grid.y over the C*k*k rows of out, grid.x over the L columns (coalesced
//   writes). col2im_padded: grid.y over the channels, grid.x over the band's pixels. Row and
//   channel offsets 64-bit; an index inside one row of out or one channel 32-bit (the launchers
//   check L < 2^31 and H*W < 2^31).
// Pointers (one 'Field: file: names' a line; tests/backend/test_kernel_files.py checks them):
// Launcher: minunet/backend/gpu.py: im2col_padded, col2im_padded
// CPU twin: minunet/backend/cpu.py: im2col_padded, col2im_padded
// Plain op: minunet/ops/conv_general.py: im2col_general, col2im_general
// Used by: minunet/fast/conv_general.py: conv2d_general_forward, conv2d_general_backward
// Test: tests/backend/test_gpu_family.py: test_im2col_padded_kernels_match_cpu
// Test: tests/backend/test_cpu_twins_family.py: test_im2col_padded, test_col2im_padded
// Test: tests/emulation/test_kernels_family.py: test_im2col_padded, test_col2im_padded

template <typename T>
__global__ void im2col_padded(const T* __restrict__ x, T* __restrict__ out, int C, int H, int W,
                              int k, int s, int p, int y0, int y1)
{
    const int Wo = (W + 2 * p - k) / s + 1;
    const long long L = (long long)(y1 - y0) * Wo;
    const int R = C * k * k;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (int r = blockIdx.y; r < R; r += gridDim.y) {
        const int c = r / (k * k);
        const int i = (r / k) % k;
        const int j = r % k;
        const T* src = x + (long long)c * H * W;
        T* dst = out + (long long)r * L;
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < L; q += stride) {
            const int y = (int)q / Wo;
            const int xx = (int)q - y * Wo;
            const int iy = s * (y0 + y) + i - p;
            const int ix = s * xx + j - p;
            dst[q] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? src[iy * W + ix] : T(0);
        }
    }
}

template <typename T>
__global__ void col2im_padded(const T* __restrict__ cols, T* __restrict__ dx, int C, int H, int W,
                              int k, int s, int p, int y0, int y1)
{
    const int Wo = (W + 2 * p - k) / s + 1;
    const long long L = (long long)(y1 - y0) * Wo;
    const int Y0 = s * y0 - p > 0 ? s * y0 - p : 0;                  // the band's first row
    const int Y1 = s * (y1 - 1) - p + k < H ? s * (y1 - 1) - p + k : H;  // one past its last
    const long long P = (long long)(Y1 > Y0 ? Y1 - Y0 : 0) * W;
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (int c = blockIdx.y; c < C; c += gridDim.y) {
        const T* col_c = cols + (long long)c * k * k * L;
        T* dx_c = dx + ((long long)c * H + Y0) * W;
        for (long long q = (long long)blockIdx.x * blockDim.x + threadIdx.x; q < P; q += stride) {
            const int Y = Y0 + (int)q / W;
            const int X = (int)q - (Y - Y0) * W;
            T acc = dx_c[q];
            for (int i = 0; i < k; ++i) {
                const int ry = Y + p - i;  // s*y of the output row that read Y through tap row i
                if (ry < 0 || ry % s != 0 || ry / s < y0 || ry / s >= y1) continue;
                for (int j = 0; j < k; ++j) {
                    const int rx = X + p - j;
                    if (rx < 0 || rx % s != 0 || rx / s >= Wo) continue;
                    acc += col_c[(long long)(i * k + j) * L + (long long)(ry / s - y0) * Wo + rx / s];
                }
            }
            dx_c[q] = acc;
        }
    }
}

#ifdef MINUNET_NVCC_CHECK  // explicit instances for the CI compile (.ci/compile_kernels.sh)
template __global__ void im2col_padded<float>(const float*, float*, int, int, int, int, int, int,
                                              int, int);
template __global__ void im2col_padded<double>(const double*, double*, int, int, int, int, int,
                                               int, int, int);
template __global__ void col2im_padded<float>(const float*, float*, int, int, int, int, int, int,
                                              int, int);
template __global__ void col2im_padded<double>(const double*, double*, int, int, int, int, int,
                                               int, int, int);
#endif
