// cuda_emu.h -- just enough of CUDA to run kernels/*.cu as plain C++ on the CPU (emulation).
//
// What: a kernel file is compiled by g++ (-std=c++17 -ffp-contract=off) after this header and
//   launched by emu::launch(kernel, grid, block, args, order, seed): every block of the grid and
//   every thread of a block runs the kernel's own source, one emulated thread at a time, on ONE
//   OS thread. The CUDA surface the kernels use, and how it is emulated:
//     __global__, __device__, __forceinline__   no-ops (inline); __restrict__ is g++'s own keyword
//     threadIdx, blockIdx, blockDim, gridDim    thread_local globals, set before each emulated
//                                               thread runs (uint3 / dim3 of unsigned int, as CUDA)
//     __shared__                                a static variable: one copy, shared by the threads
//                                               of the running block (blocks run one after another)
//     __syncthreads()                           a real barrier: kernels that use it run each thread
//                                               of a block as a fiber (ucontext), and a barrier
//                                               switches to the next thread; the block's threads
//                                               run, phase by phase, in the order chosen below
//     expf, exp, logf, log                      <cmath> (glibc): see "Float results" below
//     __longlong_as_double                      a bit copy (memcpy)
//   No kernel uses atomics or warp functions, so none are defined: a kernel that starts to use
//   one fails to compile here, which is the signal to add it with CUDA's semantics.
// Thread order (the race check): order 0 runs blocks and threads in index order, 1 in reverse,
//   2 shuffled with `seed` (a fresh shuffle of the threads for every barrier phase). A kernel
//   whose result depends on the order, without atomics, has a race (or reads memory that a
//   barrier should have protected). A barrier that not all of a block's threads reach (CUDA:
//   undefined behaviour), or a barrier in a kernel launched without fibers, aborts the run.
// Float results: the emulation and the CPU twins (Numba, no fast-math) compute the same sums in
//   the same order with IEEE float/double and no fused multiply-add (-ffp-contract=off), so
//   data movement and arithmetic without transcendental functions agree bit for bit. The GPU
//   can differ from both: nvcc contracts a*b+c into one FMA by default (sgd.cu), CuPy compiles
//   with -ftz=true (float32 subnormals flushed to zero), and CUDA's expf/logf (2 and 1 ulp
//   maximum error) and exp/log are other implementations than glibc's: a last-bit difference
//   in softmax_xent.cu's probabilities and loss. Those are compared with a tolerance.
// Sanitizers: built with -fsanitize=address,undefined the fibers tell AddressSanitizer about
//   each stack switch (__sanitizer_start/finish_switch_fiber), so its reports stay exact.
// Used by: minunet/backend/emulate.py (builds and runs it); the driver is cuda_emu_driver.h.
// Test: tests/emulation/test_kernels.py, tests/emulation/test_seeded_bugs.py
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include <sys/mman.h>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct uint3 { unsigned int x, y, z; };
struct dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{};
inline thread_local dim3 gridDim{};

// expf, exp, logf, log: the C library's, declared by <cmath> in the global namespace.

inline double __longlong_as_double(long long v)
{
    double d;
    std::memcpy(&d, &v, sizeof d);
    return d;
}

void __syncthreads();

namespace emu {

[[noreturn]] inline void fail(const char* what)
{
    std::fprintf(stderr, "cuda_emu: %s\n", what);
    std::fflush(stderr);
    std::abort();
}

// --- fibers: one per thread of the running block ----------------------------------------

constexpr size_t kStack = 256 * 1024;  // per emulated thread (ASan frames are large)

struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    bool done = false;
};

struct Scheduler {
    ucontext_t main;
    std::vector<Fiber> fibers;
    int current = -1;
    bool use_fibers = false;
    void (*body)(void*) = nullptr;
    void* arg = nullptr;
#if EMU_ASAN
    void* fake = nullptr;
    const void* main_bottom = nullptr;
    size_t main_size = 0;
#endif
};

inline thread_local Scheduler sched;

inline void enter_fiber(int t)  // from the scheduler into fiber t; returns at its next barrier
{
    Fiber& f = sched.fibers[t];
    sched.current = t;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(&sched.fake, f.stack, kStack);
#endif
    swapcontext(&sched.main, &f.ctx);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(sched.fake, nullptr, nullptr);
#endif
}

inline void leave_fiber(bool finished)  // from the running fiber back to the scheduler
{
    Fiber& f = sched.fibers[sched.current];
    f.done = finished;
#if EMU_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(finished ? nullptr : &fake, sched.main_bottom, sched.main_size);
#endif
    swapcontext(&f.ctx, &sched.main);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(fake, &sched.main_bottom, &sched.main_size);
#endif
}

inline void fiber_entry()
{
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &sched.main_bottom, &sched.main_size);
#endif
    sched.body(sched.arg);
    leave_fiber(true);  // never returns: the scheduler does not resume a finished fiber
}

// A fresh context that starts fiber_entry on f's stack (its own function: getcontext
// returns twice, which must not touch the caller's loop variables).
__attribute__((noinline)) inline void prepare(Fiber& f)
{
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
    f.done = false;
}

// Order of n items (threads or blocks): 0 forward, 1 reverse, 2 shuffled.
inline void arrange(std::vector<unsigned>& v, unsigned n, int order, std::mt19937_64& rng)
{
    v.resize(n);
    for (unsigned i = 0; i < n; ++i) v[i] = i;
    if (order == 1) std::reverse(v.begin(), v.end());
    if (order == 2) std::shuffle(v.begin(), v.end(), rng);
}

inline void set_thread(unsigned t)
{
    threadIdx.x = t % blockDim.x;
    threadIdx.y = t / blockDim.x % blockDim.y;
    threadIdx.z = t / (blockDim.x * blockDim.y);
}

// Run one block: every thread to completion, phase by phase between barriers.
inline void run_block(unsigned nthreads, int order, std::mt19937_64& rng)
{
    std::vector<unsigned> ord;
    if (!sched.use_fibers) {
        arrange(ord, nthreads, order, rng);
        for (unsigned t : ord) {
            set_thread(t);
            sched.body(sched.arg);
        }
        return;
    }
    if (sched.fibers.size() < nthreads) sched.fibers.resize(nthreads);
    for (unsigned t = 0; t < nthreads; ++t) {
        Fiber& f = sched.fibers[t];
        if (!f.stack) {
            void* p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                           -1, 0);
            if (p == MAP_FAILED) fail("mmap of a fiber stack failed");
            f.stack = static_cast<char*>(p);
        }
        prepare(f);
    }
    for (;;) {  // one barrier phase per pass
        arrange(ord, nthreads, order, rng);
        unsigned finished = 0;
        for (unsigned t : ord) {
            set_thread(t);
            enter_fiber(static_cast<int>(t));
            finished += sched.fibers[t].done;
        }
        if (finished == nthreads) return;
        if (finished != 0) fail("__syncthreads() not reached by every thread of a block");
    }
}

// Launch kernel body(arg) on grid x block; blocks run one after another in `order`.
inline void run_grid(void (*body)(void*), void* arg, dim3 grid, dim3 block, bool fibers,
                     int order, unsigned long long seed)
{
    sched.body = body;
    sched.arg = arg;
    sched.use_fibers = fibers;
    gridDim = grid;
    blockDim = block;
    std::mt19937_64 rng(seed);
    const unsigned nblocks = grid.x * grid.y * grid.z;
    const unsigned nthreads = block.x * block.y * block.z;
    std::vector<unsigned> ord;
    arrange(ord, nblocks, order, rng);
    for (unsigned b : ord) {
        blockIdx.x = b % grid.x;
        blockIdx.y = b / grid.x % grid.y;
        blockIdx.z = b / (grid.x * grid.y);
        run_block(nthreads, order, rng);
    }
}

}  // namespace emu

inline void __syncthreads()
{
    if (!emu::sched.use_fibers)
        emu::fail("__syncthreads() in a kernel launched without fibers (sequential threads)");
    emu::leave_fiber(false);
}
