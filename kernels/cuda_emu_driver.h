// cuda_emu_driver.h -- main() of an emulated kernel file: reads a launch script, runs it.
//
// What: minunet/backend/emulate.py writes one C++ file per kernel file,
//     #include "cuda_emu.h"  /  #include "<kernel>.cu"  /  #include "cuda_emu_driver.h"
//     static const emu::Entry kEntries[] = {EMU_ENTRY(im2col<float>), ...};   (every instance
//     of backend/gpu.py's name_expressions)  and  int main(...) { return emu::main(...); }
//   compiles it with g++ and runs the program on a script (a file named by argv[1]), one
//   command a line:
//     buf ID NBYTES                  a zero-filled device buffer (malloc'd at its exact size, so
//                                    AddressSanitizer sees a read or write one past its end)
//     fill ID OFFSET PATH            copy the bytes of file PATH into buffer ID at byte OFFSET
//     ptrs ID ID1 ID2 ...            buffer ID: a table of the addresses of buffers ID1, ID2, ...
//     launch FIBERS ORDER SEED GX GY GZ BX BY BZ EXPR     start a launch of instance EXPR
//     arg p ID | arg i V | arg l V | arg f HEXBITS | arg d HEXBITS     its arguments, in order
//     go                             check the argument kinds against EXPR's parameters, run it
//     save ID OFFSET NBYTES PATH     write bytes of buffer ID to file PATH
//   FIBERS 1 runs each thread as a fiber (kernels with __syncthreads); ORDER 0/1/2 forward,
//   reverse, shuffled with SEED (cuda_emu.h). Errors print "cuda_emu: ..." and exit non-zero.
// Used by: minunet/backend/emulate.py
#pragma once

#include <cinttypes>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace emu {

// The kind letter of one kernel parameter type (the script's 'arg' letters).
template <typename A> constexpr char kind()
{
    if constexpr (std::is_pointer_v<A>) return 'p';
    else if constexpr (std::is_same_v<A, int>) return 'i';
    else if constexpr (std::is_same_v<A, long long>) return 'l';
    else if constexpr (std::is_same_v<A, float>) return 'f';
    else if constexpr (std::is_same_v<A, double>) return 'd';
    else return '?';
}

struct Arg {
    char kind;
    alignas(8) unsigned char bytes[8];
};

struct Launch {
    std::string expr;
    bool fibers;
    int order;
    unsigned long long seed;
    dim3 grid, block;
    std::vector<Arg> args;
};

template <typename... A>
struct Call {  // the kernel and its arguments, unpacked once; run once per emulated thread
    void (*f)(A...);
    std::tuple<A...> args;
    static void body(void* self)
    {
        auto* c = static_cast<Call*>(self);
        std::apply(c->f, c->args);
    }
};

template <typename... A, size_t... I>
void run(void (*f)(A...), const Launch& L, std::index_sequence<I...>)
{
    const std::string want{kind<A>()...};
    std::string got;
    for (const Arg& a : L.args) got += a.kind;
    if (want != got) {
        std::fprintf(stderr, "cuda_emu: %s takes arguments '%s', the script passed '%s'\n",
                     L.expr.c_str(), want.c_str(), got.c_str());
        std::exit(3);
    }
    Call<A...> call{f, {}};
    ((std::memcpy(&std::get<I>(call.args), L.args[I].bytes, sizeof(A))), ...);
    run_grid(&Call<A...>::body, &call, L.grid, L.block, L.fibers, L.order, L.seed);
}

using Runner = void (*)(const Launch&);

struct Entry {
    const char* expr;
    Runner run;
};

#define EMU_ENTRY(...) \
    emu::Entry{#__VA_ARGS__, [](const emu::Launch& L) { \
        emu::run(&__VA_ARGS__, L, std::make_index_sequence<emu::arity(&__VA_ARGS__)>{}); }}

template <typename... A> constexpr size_t arity(void (*)(A...)) { return sizeof...(A); }

inline std::string squash(const std::string& s)  // "f<float, int>" and "f<float,int>" alike
{
    std::string o;
    for (char ch : s) if (ch != ' ') o += ch;
    return o;
}

inline int main(int argc, char** argv, const Entry* entries, size_t n)
{
    if (argc != 2) fail("usage: program SCRIPT");
    std::ifstream in(argv[1]);
    if (!in) fail("cannot open the script");
    std::map<long, std::pair<unsigned char*, size_t>> bufs;
    Launch L;
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream ss(line);
        std::string cmd;
        ss >> cmd;
        if (cmd.empty()) continue;
        if (cmd == "buf") {
            long id; size_t nbytes;
            ss >> id >> nbytes;
            auto* p = static_cast<unsigned char*>(std::calloc(nbytes ? nbytes : 1, 1));
            if (!p) fail("out of memory");
            bufs[id] = {p, nbytes};
        } else if (cmd == "fill" || cmd == "save") {
            long id; size_t off, nbytes = 0; std::string path;
            ss >> id >> off;
            if (cmd == "save") ss >> nbytes;
            ss >> path;
            auto& b = bufs.at(id);
            if (cmd == "fill") {
                std::ifstream f(path, std::ios::binary | std::ios::ate);
                nbytes = static_cast<size_t>(f.tellg());
                f.seekg(0);
                if (off + nbytes > b.second) fail("fill past the end of a buffer");
                f.read(reinterpret_cast<char*>(b.first + off), static_cast<long>(nbytes));
            } else {
                if (off + nbytes > b.second) fail("save past the end of a buffer");
                std::ofstream f(path, std::ios::binary);
                f.write(reinterpret_cast<const char*>(b.first + off), static_cast<long>(nbytes));
            }
        } else if (cmd == "ptrs") {
            long id, other;
            ss >> id;
            std::vector<void*> table;
            while (ss >> other) table.push_back(bufs.at(other).first);
            const size_t nbytes = table.size() * sizeof(void*);
            auto* p = static_cast<unsigned char*>(std::malloc(nbytes ? nbytes : 1));
            std::memcpy(p, table.data(), nbytes);
            bufs[id] = {p, nbytes};
        } else if (cmd == "launch") {
            L = Launch{};
            int fibers;
            ss >> fibers >> L.order >> L.seed >> L.grid.x >> L.grid.y >> L.grid.z >> L.block.x
               >> L.block.y >> L.block.z >> std::ws;
            L.fibers = fibers != 0;
            std::getline(ss, L.expr);  // the rest of the line: "f<float, long long>"
        } else if (cmd == "arg") {
            Arg a{};
            std::string v;
            ss >> a.kind >> v;
            if (a.kind == 'p') {
                void* p = bufs.at(std::stol(v)).first;
                std::memcpy(a.bytes, &p, sizeof p);
            } else if (a.kind == 'i') {
                const int x = static_cast<int>(std::stol(v));
                std::memcpy(a.bytes, &x, sizeof x);
            } else if (a.kind == 'l') {
                const long long x = std::stoll(v);
                std::memcpy(a.bytes, &x, sizeof x);
            } else if (a.kind == 'f') {
                const uint32_t x = static_cast<uint32_t>(std::stoul(v, nullptr, 16));
                std::memcpy(a.bytes, &x, sizeof x);
            } else if (a.kind == 'd') {
                const uint64_t x = std::stoull(v, nullptr, 16);
                std::memcpy(a.bytes, &x, sizeof x);
            } else {
                fail("unknown argument kind");
            }
            L.args.push_back(a);
        } else if (cmd == "go") {
            const Entry* e = nullptr;
            for (size_t i = 0; i < n; ++i)
                if (squash(entries[i].expr) == squash(L.expr)) e = &entries[i];
            if (!e) {
                std::fprintf(stderr, "cuda_emu: no instance %s in this program\n", L.expr.c_str());
                std::exit(3);
            }
            e->run(L);
        } else {
            fail(("unknown script command " + cmd).c_str());
        }
    }
    for (auto& kv : bufs) std::free(kv.second.first);
    return 0;
}

}  // namespace emu
