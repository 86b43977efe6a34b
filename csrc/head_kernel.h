// The fused yes-token head on CPU: one body, compiled once per instruction set.
//
// head.cpp includes this file inside a namespace and a `#pragma GCC target` region after defining:
//   vec, VL (lanes), NVR (weight rows per register tile), NRB (hidden rows per register tile),
//   vzero(), vset1(float), vload(const float*), vload(const uint16_t*) (bf16 -> fp32, shift left 16),
//   vstore(float*, vec), vstore(uint16_t*, vec) (fp32 -> bf16, round to nearest even), vfma(a, b, c) = a*b+c,
//   vsum(vec), vexp(vec); + and - on vec.
// Not a standalone header: no includes, no include guard (it is meant to be included several times).
//
// Layout: weight W [V, H] row-major (fp32 or bf16 as uint16_t), hidden copied once to fp32 `hp` [B, ldh]
// (ldh a multiple of VL, zero padded), logits of a chunk of ZC vocabulary rows kept in z [B, ZC].
// Each thread owns one contiguous slice of the vocabulary, so the weight is read from memory once. The slice
// is read as NVR interleaved runs (see Runs): a register tile takes one row from each run.

static inline float ld1(const float* p) { return *p; }
static inline float ld1(const uint16_t* p) {
    uint32_t u = uint32_t(*p) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static inline void st1(float* p, float x) { *p = x; }
static inline void st1(uint16_t* p, float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) { *p = uint16_t((u >> 16) | 0x40); return; }  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                                     // round to nearest even
    *p = uint16_t(u >> 16);
}

// sum_j exp(z[j] - m) for j < n.
static inline float sum_exp(const float* z, int64_t n, float m) {
    const vec mv = vset1(m);
    vec acc = vzero();
    int64_t j = 0;
    for (; j + VL <= n; j += VL) acc = acc + vexp(vload(z + j) - mv);
    float s = vsum(acc);
    for (; j < n; ++j) s += std::exp(z[j] - m);
    return s;
}

// z[j] = -c * exp(z[j] - l) for j < n: the dense part of dlogits.
static inline void neg_scaled_softmax(float* z, int64_t n, float c, float l) {
    const vec lv = vset1(l), cv = vset1(-c);
    int64_t j = 0;
    for (; j + VL <= n; j += VL) vstore(z + j, cv * vexp(vload(z + j) - lv));
    for (; j < n; ++j) z[j] = -c * std::exp(z[j] - l);
}

// z[b*ldz + r*zr] = <w + r*ldw, h + b*ldh> for r < NV, b < NB: NV*NB accumulators stay in registers for
// the whole row, each weight vector loaded once is used NB times (register blocking over hidden rows).
template <typename WT, int NV, int NB>
static inline void dot_tile(const WT* w, int64_t ldw, int64_t H, const float* h, int64_t ldh, float* z, int64_t ldz,
                            int64_t zr) {
    vec acc[NV][NB];
#pragma GCC unroll 8
    for (int r = 0; r < NV; ++r)
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) acc[r][b] = vzero();
    const int64_t Hv = H - H % VL;
    for (int64_t k = 0; k < Hv; k += VL) {
        vec wv[NV];
#pragma GCC unroll 8
        for (int r = 0; r < NV; ++r) wv[r] = vload(w + r * ldw + k);
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) {
            const vec hv = vload(h + b * ldh + k);
#pragma GCC unroll 8
            for (int r = 0; r < NV; ++r) acc[r][b] = vfma(wv[r], hv, acc[r][b]);
        }
    }
    for (int r = 0; r < NV; ++r)
        for (int b = 0; b < NB; ++b) {
            float s = vsum(acc[r][b]);
            for (int64_t k = Hv; k < H; ++k) s += ld1(w + r * ldw + k) * h[b * ldh + k];
            z[b * ldz + r * zr] = s;
        }
}

#ifdef RD_DPBF16
// The same tile for bf16 weight and bf16 hidden (row stride ldh) with vdpbf16ps: 32 products per instruction.
template <int NV, int NB>
static inline void dot_tile_dp(const uint16_t* w, int64_t ldw, int64_t H, const uint16_t* h, int64_t ldh, float* z,
                               int64_t ldz, int64_t zr) {
    vec acc[NV][NB];
#pragma GCC unroll 8
    for (int r = 0; r < NV; ++r)
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) acc[r][b] = vzero();
    const int64_t H2 = H - H % 32;
    for (int64_t k = 0; k < H2; k += 32) {
        __m512bh wv[NV];
#pragma GCC unroll 8
        for (int r = 0; r < NV; ++r) wv[r] = (__m512bh)_mm512_loadu_si512(w + r * ldw + k);
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) {
            const __m512bh hv = (__m512bh)_mm512_loadu_si512(h + b * ldh + k);
#pragma GCC unroll 8
            for (int r = 0; r < NV; ++r) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], wv[r], hv);
        }
    }
    for (int r = 0; r < NV; ++r)
        for (int b = 0; b < NB; ++b) {
            float s = vsum(acc[r][b]);
            for (int64_t k = H2; k < H; ++k) s += ld1(w + r * ldw + k) * ld1(h + b * ldh + k);
            z[b * ldz + r * zr] = s;
        }
}
template <int NV, int NB = NRB>
static inline void dot_tile_dp_n(int nb, const uint16_t* w, int64_t ldw, int64_t H, const uint16_t* h, int64_t ldh,
                                 float* z, int64_t ldz, int64_t zr) {
    if constexpr (NB >= 1) {
        if (nb == NB) dot_tile_dp<NV, NB>(w, ldw, H, h, ldh, z, ldz, zr);
        else dot_tile_dp_n<NV, NB - 1>(nb, w, ldw, H, h, ldh, z, ldz, zr);
    }
}
#endif

// dh[b] += sum_j d[b*ldd + cols[j]] * rows[j] for b < NB over the n weight rows of a chunk (dlogits @ W).
// Two vectors of dh per hidden row stay in registers while all n rows stream past (from L1/L2, they were just
// read for the logits): dh is loaded and stored once per chunk, each weight vector serves NB hidden rows, and
// d is broadcast straight from memory.
template <typename WT, int NB>
static inline void axpy_chunk(const WT* const* rows, const int64_t* cols, int n, int64_t H, const float* d,
                              int64_t ldd, float* dh, int64_t ldh) {
    const int64_t H2 = H - H % (2 * VL), Hv = H - H % VL;
    int64_t k = 0;
    for (; k < H2; k += 2 * VL) {
        vec a0[NB], a1[NB];
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) a0[b] = vload(dh + b * ldh + k), a1[b] = vload(dh + b * ldh + k + VL);
        for (int j = 0; j < n; ++j) {
            const vec w0 = vload(rows[j] + k), w1 = vload(rows[j] + k + VL);
#pragma GCC unroll 8
            for (int b = 0; b < NB; ++b) {
                const vec c = vset1(d[b * ldd + cols[j]]);
                a0[b] = vfma(c, w0, a0[b]);
                a1[b] = vfma(c, w1, a1[b]);
            }
        }
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) vstore(dh + b * ldh + k, a0[b]), vstore(dh + b * ldh + k + VL, a1[b]);
    }
    for (; k < Hv; k += VL) {
        vec a0[NB];
        for (int b = 0; b < NB; ++b) a0[b] = vload(dh + b * ldh + k);
        for (int j = 0; j < n; ++j) {
            const vec w0 = vload(rows[j] + k);
            for (int b = 0; b < NB; ++b) a0[b] = vfma(vset1(d[b * ldd + cols[j]]), w0, a0[b]);
        }
        for (int b = 0; b < NB; ++b) vstore(dh + b * ldh + k, a0[b]);
    }
    for (; k < H; ++k)
        for (int b = 0; b < NB; ++b) {
            float a = dh[b * ldh + k];
            for (int j = 0; j < n; ++j) a += d[b * ldd + cols[j]] * ld1(rows[j] + k);
            dh[b * ldh + k] = a;
        }
}

#ifdef RD_DPBF16
// The same for bf16 weights with vdpbf16ps: rows are taken in pairs, interleaved (vpunpck{l,h}wd) against a
// broadcast pair of d values rounded to bf16, half the instructions of the fp32 version. The interleave
// leaves each block of 32 k-values in a fixed permuted order, undone when dh is loaded and stored.
template <int NB>
static inline void axpy_chunk_dp(const uint16_t* const* rows, const int64_t* cols, int n, int64_t H, const float* d,
                                 int64_t ldd, float* dh, int64_t ldh) {
    const int np = (n + 1) / 2;
    uint32_t pairs[NB][128];  // n <= 256
    for (int b = 0; b < NB; ++b)
        for (int q = 0; q < np; ++q) {
            uint16_t lo, hi = 0;
            st1(&lo, d[b * ldd + cols[2 * q]]);
            if (2 * q + 1 < n) st1(&hi, d[b * ldd + cols[2 * q + 1]]);
            pairs[b][q] = uint32_t(lo) | (uint32_t(hi) << 16);
        }
    const __m512i to_lo = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    const __m512i to_hi = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    const __m512i back0 = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    const __m512i back1 = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    const int64_t H32 = H - H % 32;
    for (int64_t k = 0; k < H32; k += 32) {
        vec a0[NB], a1[NB];
        for (int b = 0; b < NB; ++b) {
            const vec v0 = vload(dh + b * ldh + k), v1 = vload(dh + b * ldh + k + 16);
            a0[b] = _mm512_permutex2var_ps(v0, to_lo, v1);
            a1[b] = _mm512_permutex2var_ps(v0, to_hi, v1);
        }
        for (int q = 0; q < np; ++q) {
            const __m512i x = _mm512_loadu_si512(rows[2 * q] + k);
            const __m512i y = 2 * q + 1 < n ? _mm512_loadu_si512(rows[2 * q + 1] + k) : x;  // odd n: weight 0
            const __m512bh lo = (__m512bh)_mm512_unpacklo_epi16(x, y), hi = (__m512bh)_mm512_unpackhi_epi16(x, y);
#pragma GCC unroll 8
            for (int b = 0; b < NB; ++b) {
                const __m512bh c = (__m512bh)_mm512_set1_epi32(int(pairs[b][q]));
                a0[b] = _mm512_dpbf16_ps(a0[b], lo, c);
                a1[b] = _mm512_dpbf16_ps(a1[b], hi, c);
            }
        }
        for (int b = 0; b < NB; ++b) {
            vstore(dh + b * ldh + k, _mm512_permutex2var_ps(a0[b], back0, a1[b]));
            vstore(dh + b * ldh + k + 16, _mm512_permutex2var_ps(a0[b], back1, a1[b]));
        }
    }
    for (int64_t k = H32; k < H; ++k)
        for (int b = 0; b < NB; ++b) {
            float a = dh[b * ldh + k];
            for (int j = 0; j < n; ++j) a += d[b * ldd + cols[j]] * ld1(rows[j] + k);
            dh[b * ldh + k] = a;
        }
}
#endif

// rows[j] = sum_b d[b*ldd + cols[j]] * h[b] over all B hidden rows, for the n rows of a chunk (dlogits^T @ hidden),
// each written once. Four vectors of H at a time: that slice of every hidden row stays in L1 while NR rows at a
// time accumulate it in registers.
template <typename DT, int NR>
static inline void outer_tile(DT* const* rows, const int64_t* cols, const float* d, int64_t ldd, const float* h,
                              int64_t ldh, int64_t B, int64_t k, int nvec) {
    vec acc[NR][4];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) acc[r][u] = vzero();
    for (int64_t b = 0; b < B; ++b) {
        vec hv[4];
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) hv[u] = u < nvec ? vload(h + b * ldh + k + u * VL) : vzero();
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
            const vec c = vset1(d[b * ldd + cols[r]]);
#pragma GCC unroll 4
            for (int u = 0; u < 4; ++u) acc[r][u] = vfma(c, hv[u], acc[r][u]);
        }
    }
    for (int r = 0; r < NR; ++r)
        for (int u = 0; u < nvec; ++u) vstore(rows[r] + k + u * VL, acc[r][u]);
}
template <typename DT>
static inline void outer_chunk(DT* const* rows, const int64_t* cols, int n, const float* d, int64_t ldd,
                               const float* h, int64_t ldh, int64_t B, int64_t H) {
    const int64_t Hv = H - H % VL;
    for (int64_t k = 0; k < Hv; k += 4 * VL) {
        const int nvec = int(std::min<int64_t>(4, (Hv - k) / VL));
        int j = 0;
        for (; j + NVR <= n; j += NVR) outer_tile<DT, NVR>(rows + j, cols + j, d, ldd, h, ldh, B, k, nvec);
        for (; j < n; ++j) outer_tile<DT, 1>(rows + j, cols + j, d, ldd, h, ldh, B, k, nvec);
    }
    for (int64_t k = Hv; k < H; ++k)
        for (int j = 0; j < n; ++j) {
            float a = 0.f;
            for (int64_t b = 0; b < B; ++b) a += d[b * ldd + cols[j]] * h[b * ldh + k];
            st1(rows[j] + k, a);
        }
}

// Run a tile kernel with NB = nb (1..NRB) known at compile time.
template <typename WT, int NV, int NB = NRB>
static inline void dot_tile_n(int nb, const WT* w, int64_t ldw, int64_t H, const float* h, int64_t ldh, float* z,
                              int64_t ldz, int64_t zr) {
    if constexpr (NB >= 1) {
        if (nb == NB) dot_tile<WT, NV, NB>(w, ldw, H, h, ldh, z, ldz, zr);
        else dot_tile_n<WT, NV, NB - 1>(nb, w, ldw, H, h, ldh, z, ldz, zr);
    }
}
template <typename WT, int NB = NRB>
static inline void axpy_chunk_n(int nb, const WT* const* rows, const int64_t* cols, int n, int64_t H, const float* d,
                                int64_t ldd, float* dh, int64_t ldh) {
    if constexpr (NB >= 1) {
#ifdef RD_DPBF16
        if constexpr (std::is_same<WT, uint16_t>::value)
            if (nb == NB) return axpy_chunk_dp<NB>(rows, cols, n, H, d, ldd, dh, ldh);
#endif
        if (nb == NB) axpy_chunk<WT, NB>(rows, cols, n, H, d, ldd, dh, ldh);
        else axpy_chunk_n<WT, NB - 1>(nb, rows, cols, n, H, d, ldd, dh, ldh);
    }
}

// A thread's slice [vs, ve) read as NVR interleaved runs: run s holds rows vs + s*q + i, i < len[s], and a
// register tile takes row i of every run. Each thread then keeps NVR far-apart sequential streams in flight,
// which reads memory measurably faster than one stream or NVR adjacent rows. A chunk covers offsets
// [i0, i0 + L) of every run (L = ZC / NVR); the logit of (run s, offset i0 + i) sits in column s*L + i of z.
struct Runs {
    int64_t vs, q, len[NVR];
    Runs(int64_t vs_, int64_t ve) : vs(vs_) {
        const int64_t n = ve - vs_;
        q = (n + NVR - 1) / NVR;
        for (int s = 0; s < NVR; ++s) len[s] = std::max<int64_t>(0, std::min(q, n - s * q));
    }
    // Calls f(std::integral_constant<int, NV>, first row, row stride, first column): full tiles of NVR rows
    // (one per run, columns L apart), then the rows only some runs have, one at a time.
    template <typename F>
    void tiles(int64_t i0, int64_t L, F&& f) const {
        const int64_t full = std::max<int64_t>(0, std::min(L, len[NVR - 1] - i0));  // len is non-increasing
        for (int64_t i = 0; i < full; ++i) f(std::integral_constant<int, NVR>(), vs + i0 + i, q, i);
        for (int s = 0; s < NVR; ++s)
            for (int64_t i = full; i < std::min(L, len[s] - i0); ++i) f(std::integral_constant<int, 1>(), vs + s * q + i0 + i, q, s * L + i);
    }
    // Calls f(row, column) for every row of the chunk.
    template <typename F>
    void rows(int64_t i0, int64_t L, F&& f) const {
        for (int s = 0; s < NVR; ++s)
            for (int64_t i = 0; i < std::min(L, len[s] - i0); ++i) f(vs + s * q + i0 + i, s * L + i);
    }
    // The column of row v in the chunk at i0, or -1.
    int64_t column(int64_t v, int64_t i0, int64_t L) const {
        if (v < vs || q == 0) return -1;
        const int64_t s = (v - vs) / q, i = (v - vs) % q - i0;
        return (s < NVR && i >= 0 && i < L && i0 + i < len[s]) ? s * L + i : -1;
    }
    bool ragged(int64_t i0, int64_t L) const { return i0 + L > len[NVR - 1]; }
};

// z[b*ZC + column] = <W[row], hp[b]> (+ bias) for the rows of the chunk at i0, all rows b; columns no row
// maps to (the ragged end of a slice) hold -inf. The chunk's weight rows (sized to stay in L2) come from
// memory for the first block of hidden rows and from cache for the others.
template <typename WT>
static void logits_chunk(const WT* W, const float* bias, int64_t H, const Runs& R, int64_t i0, int64_t L,
                         const float* hp, int64_t ldh, const uint16_t* hb, int64_t B, float* z, int64_t ZC) {
    if (R.ragged(i0, L)) std::fill(z, z + B * ZC, -INFINITY);
    for (int64_t b0 = 0; b0 < B; b0 += NRB) {
        const int nb = int(std::min<int64_t>(NRB, B - b0));
        R.tiles(i0, L, [&](auto nv, int64_t v, int64_t stride, int64_t col) {
            constexpr int NV = decltype(nv)::value;
#ifdef RD_DPBF16
            if constexpr (std::is_same<WT, uint16_t>::value) {  // bf16 hidden hb [B, H] used as is
                dot_tile_dp_n<NV>(nb, W + v * H, stride * H, H, hb + b0 * H, H, z + b0 * ZC + col, ZC, L);
                return;
            }
#endif
            (void)hb;
            dot_tile_n<WT, NV>(nb, W + v * H, stride * H, H, hp + b0 * ldh, ldh, z + b0 * ZC + col, ZC, L);
        });
    }
    if (bias)
        R.rows(i0, L, [&](int64_t v, int64_t col) {
            for (int64_t b = 0; b < B; ++b) z[b * ZC + col] += bias[v];
        });
}

template <typename WT>
static void forward_impl(const Problem& p, float* lse, float* tgt) {
    const WT* W = static_cast<const WT*>(p.weight);
    const int64_t B = p.B, H = p.H, V = p.V, K = p.K;
    const int64_t ldh = (H + VL - 1) / VL * VL;
    const int64_t ZC = chunk_rows(H, sizeof(WT), NVR), L = ZC / NVR;
    Buf hp = padded_hidden(p, ldh);
    const int T = int(std::max<int64_t>(1, std::min<int64_t>(p.nthreads, (V + NVR - 1) / NVR)));
    // Pieces of the vocabulary are handed out dynamically, so a thread whose core is busy with other work
    // takes fewer; partial results are kept per piece and merged in a fixed order (deterministic).
    const int64_t P = T * std::max<int64_t>(1, std::min<int64_t>(8, V / (1024 * T)));
    std::vector<float> part_m(size_t(P) * B, -INFINITY);
    std::vector<double> part_s(size_t(P) * B, 0.0);

#pragma omp parallel num_threads(T)
    {
        Buf z(size_t(B) * ZC);
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t piece = 0; piece < P; ++piece) {
            int64_t vs, ve;
            thread_slice(V, NVR, piece, P, &vs, &ve);
            const Runs R(vs, ve);
            float* m = &part_m[size_t(piece) * B];
            double* s = &part_s[size_t(piece) * B];
            for (int64_t i0 = 0; i0 < R.q; i0 += L) {
                logits_chunk<WT>(W, p.bias, H, R, i0, L, hp.data(), ldh, p.hidden_bf16, B, z.data(), ZC);
                for (int64_t b = 0; b < B; ++b) {  // online logsumexp, rescaled only when the running max grows
                    const float* zb = &z[size_t(b) * ZC];
                    float cm = -INFINITY;
                    for (int64_t j = 0; j < ZC; ++j) cm = std::max(cm, zb[j]);
                    if (cm == -INFINITY) continue;
                    if (cm > m[b]) { s[b] *= std::exp(double(m[b]) - double(cm)); m[b] = cm; }
                    s[b] += sum_exp(zb, ZC, m[b]);
                }
            }
        }
        // The K target logits: a few direct dot products, accumulated in double. No barriers in between: a
        // thread waiting at one for a core the OS gave to another process costs a scheduler tick.
#pragma omp for schedule(static) nowait
        for (int64_t i = 0; i < B * K; ++i) {
            const int64_t b = i / K, id = p.ids[i];
            const WT* w = W + id * H;
            double a = 0.0;
            for (int64_t k = 0; k < H; ++k) a += double(ld1(w + k)) * double(hp[size_t(b) * ldh + k]);
            tgt[i] = float(a + (p.bias ? double(p.bias[id]) : 0.0));
        }
    }
    for (int64_t b = 0; b < B; ++b) {  // merge the per-piece partial logsumexps
        float M = -INFINITY;
        for (int64_t t = 0; t < P; ++t) M = std::max(M, part_m[size_t(t) * B + b]);
        double S = 0.0;
        if (M != -INFINITY)
            for (int64_t t = 0; t < P; ++t) S += part_s[size_t(t) * B + b] * std::exp(double(part_m[size_t(t) * B + b]) - M);
        lse[b] = float(double(M) + std::log(S));
    }
}

// dlogits = scatter_add(g over ids) - coef * softmax, coef = sum_k g - g_lse; recomputed chunk by chunk from lse.
// dh = dlogits @ W (per-thread partial sums, added at the end), dW = dlogits^T @ hidden, db = sum_b dlogits.
template <typename WT, typename DWT>
static void backward_impl(const Problem& p, const float* lse, const float* g, const float* coef, float* dh, DWT* dw,
                          float* db) {
    const WT* W = static_cast<const WT*>(p.weight);
    const int64_t B = p.B, H = p.H, V = p.V, K = p.K;
    const int64_t ldh = (H + VL - 1) / VL * VL;
    const int64_t ZC = chunk_rows(H, sizeof(WT), NVR), L = ZC / NVR;
    Buf hp = padded_hidden(p, ldh);
    const int T = int(std::max<int64_t>(1, std::min<int64_t>(p.nthreads, (V + NVR - 1) / NVR)));
    Buf dh_part(dh ? size_t(T) * B * ldh : 0, 0.f);

#pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t vs, ve;
        thread_slice(V, NVR, t, nt, &vs, &ve);
        Buf z(size_t(B) * ZC);
        float* dht = dh ? &dh_part[size_t(t) * B * ldh] : nullptr;
        std::vector<const WT*> wrows(ZC);
        std::vector<DWT*> dwrows(ZC);
        std::vector<int64_t> cols(ZC);
        const Runs R(vs, ve);
        for (int64_t i0 = 0; i0 < R.q; i0 += L) {
            logits_chunk<WT>(W, p.bias, H, R, i0, L, hp.data(), ldh, p.hidden_bf16, B, z.data(), ZC);
            for (int64_t b = 0; b < B; ++b) {
                float* zb = &z[size_t(b) * ZC];
                neg_scaled_softmax(zb, ZC, coef[b], lse[b]);  // exactly 0 in unused (-inf) columns
                for (int64_t k = 0; k < K; ++k) {             // repeated ids add up
                    const int64_t col = R.column(p.ids[b * K + k], i0, L);
                    if (col >= 0) zb[col] += g[b * K + k];
                }
            }
            if (db)
                R.rows(i0, L, [&](int64_t v, int64_t col) {
                    float a = 0.f;
                    for (int64_t b = 0; b < B; ++b) a += z[size_t(b) * ZC + col];
                    db[v] = a;
                });
            if (dht || dw) {
                int n = 0;  // the chunk's rows: weight pointers and logit columns
                R.rows(i0, L, [&](int64_t v, int64_t col) {
                    wrows[n] = W + v * H;
                    if (dw) dwrows[n] = dw + v * H;
                    cols[n++] = col;
                });
                if (dht)
                    for (int64_t b0 = 0; b0 < B; b0 += NRB)
                        axpy_chunk_n<WT>(int(std::min<int64_t>(NRB, B - b0)), wrows.data(), cols.data(), n, H,
                                         &z[size_t(b0) * ZC], ZC, dht + b0 * ldh, ldh);
                if (dw) outer_chunk<DWT>(dwrows.data(), cols.data(), n, z.data(), ZC, hp.data(), ldh, B, H);
            }
        }
        if (dh) {
#pragma omp barrier
#pragma omp for schedule(static)
            for (int64_t i = 0; i < B * H; ++i) {
                const int64_t b = i / H, k = i % H;
                float a = 0.f;
                for (int u = 0; u < nt; ++u) a += dh_part[(size_t(u) * B + b) * ldh + k];
                dh[i] = a;
            }
        }
    }
}
