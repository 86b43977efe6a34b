// rdfast._C: the CPU yes-token head (rdfast.ops backend "cpp").
//
// Plain pybind11, no torch headers: Python passes tensor.data_ptr() integers and shapes. The caller keeps
// the tensors alive and contiguous, checks shapes, dtypes and id ranges, and passes torch's thread count
// so this OpenMP team and torch's do not oversubscribe the cores.
//
// Vector code is compiled for AMX (bf16 tiles), AVX-512 BF16, AVX-512, AVX2+FMA and a portable baseline (GCC vector extensions, which
// map to SSE2 or NEON) in one file via `#pragma GCC target`; the best one the CPU supports is picked at
// run time, so the module builds and runs on any CPU.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <omp.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define RD_X86 1
// AVX-512 BF16 needs GCC >= 11 or Clang >= 11 to compile (the CPU check happens at run time).
#if (defined(__clang__) && __clang_major__ >= 11) || (!defined(__clang__) && __GNUC__ >= 11)
#define RD_BF16_ISA 1
#endif
// AMX (tile registers, bf16 tile products): GCC >= 11 or Clang >= 12, x86-64 Linux (the kernel grants the tile
// state per process through arch_prctl).
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define RD_AMX_ISA 1
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif
#endif

namespace py = pybind11;


namespace {

enum DType { kF32 = 0, kBF16 = 1 };

struct Problem {
    const float* hidden_f32 = nullptr;      // [B, H] when dtype is fp32
    const uint16_t* hidden_bf16 = nullptr;  // [B, H] when dtype is bf16
    const void* weight = nullptr;           // [V, H], same dtype as hidden
    const float* bias = nullptr;            // [V] fp32 or null
    const int64_t* ids = nullptr;           // [B, K], each in [0, V)
    int64_t B = 0, H = 0, V = 0, K = 0;
    int nthreads = 1;
};

// Vocabulary rows per chunk: the chunk's weight (re-read once per block of hidden rows) stays in L2.
int64_t chunk_rows(int64_t H, size_t elt, int nvr) {
    int64_t rows = int64_t((256 * 1024) / (size_t(H) * elt));
    rows = std::max<int64_t>(nvr, std::min<int64_t>(rows, 256));
    return rows >= 16 ? rows / 16 * 16 : rows / nvr * nvr;  // whole vectors for the exps when possible
}

// Part t of nt of the vocabulary: a contiguous slice, aligned to the register tile.
void thread_slice(int64_t V, int align, int64_t t, int64_t nt, int64_t* vs, int64_t* ve) {
    const int64_t tiles = (V + align - 1) / align;
    *vs = std::min<int64_t>(V, tiles * t / nt * align);
    *ve = std::min<int64_t>(V, tiles * (t + 1) / nt * align);
}

// Zero-initialised float buffer aligned to a cache line: vector loads never split across lines.
template <typename T>
struct AlignedAllocator {
    using value_type = T;
    AlignedAllocator() = default;
    template <typename U>
    AlignedAllocator(const AlignedAllocator<U>&) {}
    T* allocate(size_t n) {
        void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
        if (!p) throw std::bad_alloc();
        return static_cast<T*>(p);
    }
    void deallocate(T* p, size_t) { std::free(p); }
    template <typename U>
    bool operator==(const AlignedAllocator<U>&) const { return true; }
    template <typename U>
    bool operator!=(const AlignedAllocator<U>&) const { return false; }
};
using Buf = std::vector<float, AlignedAllocator<float>>;

// Hidden rows as fp32 with rows padded to a multiple of the vector width: O(B*H) extra memory.
Buf padded_hidden(const Problem& p, int64_t ldh) {
    Buf hp(size_t(p.B) * ldh, 0.f);
    for (int64_t b = 0; b < p.B; ++b)
        for (int64_t k = 0; k < p.H; ++k) {
            float x;
            if (p.hidden_f32) {
                x = p.hidden_f32[b * p.H + k];
            } else {
                const uint32_t u = uint32_t(p.hidden_bf16[b * p.H + k]) << 16;
                std::memcpy(&x, &u, 4);
            }
            hp[size_t(b) * ldh + k] = x;
        }
    return hp;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Instruction sets. Each namespace defines the vector primitives head_kernel.h expects, then includes it.

#if RD_X86
// GCC 12 warns about the deliberately undefined vectors inside its own AVX-512 intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")
namespace rd_avx512 {
#include "head_avx512.h"
#include "head_kernel.h"
}  // namespace rd_avx512
#pragma GCC pop_options

#if RD_BF16_ISA
// AVX-512 BF16: bf16 logits with vdpbf16ps (pairs of bf16 products accumulated in fp32, half the instructions).
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")
namespace rd_avx512bf16 {
#include "head_avx512.h"
#define RD_DPBF16 1
#include "head_kernel.h"
#undef RD_DPBF16
}  // namespace rd_avx512bf16
#pragma GCC pop_options
#endif

#if RD_AMX_ISA
// AMX: bf16 logits and dh on tiles (head_amx.h); fp32, and shapes the tiles do not fit, as avx512bf16.
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,amx-tile,amx-bf16,avx2,fma")
namespace rd_amx {
#include "head_avx512.h"
#define RD_DPBF16 1
#include "head_kernel.h"
#undef RD_DPBF16
#include "head_amx.h"
}  // namespace rd_amx
#pragma GCC pop_options
#endif
#pragma GCC diagnostic pop

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace rd_avx2 {
typedef __m256 vec;
constexpr int VL = 8, NVR = 2, NRB = 4;  // 8 accumulators + 2 + 1 of 16 registers
static inline vec vzero() { return _mm256_setzero_ps(); }
static inline vec vset1(float x) { return _mm256_set1_ps(x); }
static inline vec vload(const float* p) { return _mm256_loadu_ps(p); }
static inline vec vload(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline void vstore(float* p, vec v) { _mm256_storeu_ps(p, v); }
static inline void st1(uint16_t* p, float x);
static inline void vstore(uint16_t* p, vec v) {
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    for (int i = 0; i < 8; ++i) st1(p + i, tmp[i]);
}
static inline vec vfma(vec a, vec b, vec c) { return _mm256_fmadd_ps(a, b, c); }
static inline vec vexp(vec x) {  // as in head_avx512.h, with 2^n built in the exponent bits
    const vec keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_NLT_UQ);
    x = _mm256_min_ps(_mm256_set1_ps(88.f), _mm256_max_ps(_mm256_set1_ps(-87.f), x));
    const vec n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    vec r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    vec p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(keep, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}
static inline float vsum(vec v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#include "head_kernel.h"
}  // namespace rd_avx2
#pragma GCC pop_options
#endif  // RD_X86

// Portable baseline: 4-lane GCC/Clang vector extensions (SSE2 on x86-64, NEON on ARM), no FMA assumed.
namespace rd_generic {
typedef float vec __attribute__((vector_size(16)));
typedef uint32_t uvec __attribute__((vector_size(16)));
constexpr int VL = 4, NVR = 4, NRB = 2;
static inline vec vzero() { return vec{0.f, 0.f, 0.f, 0.f}; }
static inline vec vset1(float x) { return vec{x, x, x, x}; }
static inline vec vload(const float* p) {
    vec v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
static inline vec vload(const uint16_t* p) {
    uvec u = uvec{p[0], p[1], p[2], p[3]} << 16;
    vec v;
    std::memcpy(&v, &u, sizeof(v));
    return v;
}
static inline void vstore(float* p, vec v) { std::memcpy(p, &v, sizeof(v)); }
static inline void st1(uint16_t* p, float x);
static inline void vstore(uint16_t* p, vec v) {
    for (int i = 0; i < 4; ++i) st1(p + i, v[i]);
}
static inline vec vfma(vec a, vec b, vec c) { return a * b + c; }
static inline vec vexp(vec x) { return vec{std::exp(x[0]), std::exp(x[1]), std::exp(x[2]), std::exp(x[3])}; }
static inline float vsum(vec v) { return (v[0] + v[1]) + (v[2] + v[3]); }
#include "head_kernel.h"
}  // namespace rd_generic

// ---------------------------------------------------------------------------------------------------
// Run-time dispatch.

namespace {

struct Isa {
    const char* name;
    void (*fwd_f32)(const Problem&, float*, float*);
    void (*fwd_bf16)(const Problem&, float*, float*);
    void (*bwd_f32)(const Problem&, const float*, const float*, const float*, float*, float*, float*);
    void (*bwd_bf16)(const Problem&, const float*, const float*, const float*, float*, uint16_t*, float*);
};

#define RD_ISA(name, ns)                                                                         \
    Isa {                                                                                        \
        name, ns::forward_impl<float>, ns::forward_impl<uint16_t>, ns::backward_impl<float, float>, \
            ns::backward_impl<uint16_t, uint16_t>                                                \
    }

#if RD_AMX_ISA
// AMX-TILE and AMX-BF16 in CPUID (leaf 7, EDX bits 24 and 22), and the tile state granted to this process.
bool amx_usable() {
    static const bool ok = [] {
        unsigned a, b, c, d;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1u) || !((d >> 22) & 1u)) return false;
        return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
    }();
    return ok;
}
#endif

std::vector<Isa> supported_isas() {
    std::vector<Isa> out;  // best first
#if RD_X86
    __builtin_cpu_init();
#if RD_AMX_ISA
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bf16") && amx_usable())
        out.push_back(Isa{"amx", rd_amx::forward_impl<float>, rd_amx::amx_forward, rd_amx::backward_impl<float, float>,
                          rd_amx::amx_backward<uint16_t>});
#endif
#if RD_BF16_ISA
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bf16"))
        out.push_back(RD_ISA("avx512bf16", rd_avx512bf16));
#endif
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        out.push_back(RD_ISA("avx512", rd_avx512));
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) out.push_back(RD_ISA("avx2", rd_avx2));
#endif
    out.push_back(RD_ISA("generic", rd_generic));
    return out;
}

Isa& current_isa() {
    static Isa isa = supported_isas().front();
    return isa;
}

Problem make_problem(uintptr_t hidden, uintptr_t weight, uintptr_t bias, uintptr_t ids, int64_t B, int64_t H,
                     int64_t V, int64_t K, int dtype, int nthreads) {
    if (B < 1 || H < 1 || V < 1 || K < 1) throw std::invalid_argument("rdfast._C: B, H, V, K must be >= 1");
    if (dtype != kF32 && dtype != kBF16) throw std::invalid_argument("rdfast._C: dtype must be 0 (fp32) or 1 (bf16)");
    Problem p;
    if (dtype == kF32) p.hidden_f32 = reinterpret_cast<const float*>(hidden);
    else p.hidden_bf16 = reinterpret_cast<const uint16_t*>(hidden);
    p.weight = reinterpret_cast<const void*>(weight);
    p.bias = reinterpret_cast<const float*>(bias);
    p.ids = reinterpret_cast<const int64_t*>(ids);
    p.B = B, p.H = H, p.V = V, p.K = K;
    p.nthreads = std::max(1, nthreads);
    return p;
}

void forward(uintptr_t hidden, uintptr_t weight, uintptr_t bias, uintptr_t ids, int64_t B, int64_t H, int64_t V,
             int64_t K, int dtype, int nthreads, uintptr_t lse, uintptr_t tgt) {
    const Problem p = make_problem(hidden, weight, bias, ids, B, H, V, K, dtype, nthreads);
    const Isa& isa = current_isa();
    (dtype == kF32 ? isa.fwd_f32 : isa.fwd_bf16)(p, reinterpret_cast<float*>(lse), reinterpret_cast<float*>(tgt));
}

void backward(uintptr_t hidden, uintptr_t weight, uintptr_t bias, uintptr_t ids, int64_t B, int64_t H, int64_t V,
              int64_t K, int dtype, int nthreads, uintptr_t lse, uintptr_t g, uintptr_t coef, uintptr_t dh,
              uintptr_t dw, uintptr_t db) {
    const Problem p = make_problem(hidden, weight, bias, ids, B, H, V, K, dtype, nthreads);
    const Isa& isa = current_isa();
    auto f = [](uintptr_t x) { return reinterpret_cast<float*>(x); };
    if (dtype == kF32) isa.bwd_f32(p, f(lse), f(g), f(coef), f(dh), f(dw), f(db));
    else isa.bwd_bf16(p, f(lse), f(g), f(coef), f(dh), reinterpret_cast<uint16_t*>(dw), f(db));
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = "rdfast CPU kernels: the fused yes-token head (raw pointers, no torch headers).";
    m.def("head_forward", &forward, py::call_guard<py::gil_scoped_release>(),
          "head_forward(hidden, weight, bias, ids, B, H, V, K, dtype, nthreads, lse, tgt): data pointers as ints; "
          "hidden [B,H] and weight [V,H] fp32 (dtype 0) or bf16 (dtype 1), bias fp32 [V] or 0, ids int64 [B,K]; "
          "writes lse fp32 [B] and target logits fp32 [B,K].");
    m.def("head_backward", &backward, py::call_guard<py::gil_scoped_release>(),
          "head_backward(hidden, weight, bias, ids, B, H, V, K, dtype, nthreads, lse, g, coef, dh, dw, db): "
          "g fp32 [B,K], coef fp32 [B] = sum_k g - g_lse; writes (pointers may be 0 to skip) dh fp32 [B,H], "
          "dw [V,H] in the weight dtype, db fp32 [V].");
    m.def("isa", []() { return std::string(current_isa().name); }, "The instruction set in use.");
    m.def("supported_isas", []() {
        py::list names;
        for (const Isa& i : supported_isas()) names.append(i.name);
        return names;
    }, "Instruction sets this CPU can run, best first.");
    m.def("set_isa", [](const std::string& name) {
        for (const Isa& i : supported_isas())
            if (name == i.name) { current_isa() = i; return; }
        throw std::invalid_argument("rdfast._C: instruction set '" + name + "' is not supported on this CPU");
    }, "Force an instruction set (for tests and benchmarks).");
}
