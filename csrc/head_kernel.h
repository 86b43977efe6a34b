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
// Each thread owns one contiguous slice of the vocabulary, so the weight is read from memory once.

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

// z[b*ldz + r] = <w[r], h[b]> for r < NV, b < NB: NV*NB accumulators stay in registers for the whole row,
// each weight vector loaded once is used NB times (register blocking over hidden rows).
template <typename WT, int NV, int NB>
static inline void dot_tile(const WT* w, int64_t H, const float* h, int64_t ldh, float* z, int64_t ldz) {
    vec acc[NV][NB];
#pragma GCC unroll 8
    for (int r = 0; r < NV; ++r)
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) acc[r][b] = vzero();
    const int64_t Hv = H - H % VL;
    for (int64_t k = 0; k < Hv; k += VL) {
        vec wv[NV];
#pragma GCC unroll 8
        for (int r = 0; r < NV; ++r) wv[r] = vload(w + r * H + k);
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
            for (int64_t k = Hv; k < H; ++k) s += ld1(w + r * H + k) * h[b * ldh + k];
            z[b * ldz + r] = s;
        }
}

// One weight row against NB <= 2 hidden rows, two accumulators each: for B <= 2 the weight is streamed one
// row at a time, which reads memory as fast as a plain sum (several concurrent row streams are slower).
template <typename WT, int NB>
static inline void dot_row(const WT* w, int64_t H, const float* h, int64_t ldh, float* z, int64_t ldz) {
    vec a0[NB], a1[NB];
    for (int b = 0; b < NB; ++b) a0[b] = a1[b] = vzero();
    const int64_t H2 = H - H % (2 * VL), Hv = H - H % VL;
    int64_t k = 0;
    for (; k < H2; k += 2 * VL) {
        const vec w0 = vload(w + k), w1 = vload(w + k + VL);
        for (int b = 0; b < NB; ++b) {
            a0[b] = vfma(w0, vload(h + b * ldh + k), a0[b]);
            a1[b] = vfma(w1, vload(h + b * ldh + k + VL), a1[b]);
        }
    }
    for (; k < Hv; k += VL) {
        const vec w0 = vload(w + k);
        for (int b = 0; b < NB; ++b) a0[b] = vfma(w0, vload(h + b * ldh + k), a0[b]);
    }
    for (int b = 0; b < NB; ++b) {
        float s = vsum(a0[b]) + vsum(a1[b]);
        for (int64_t kk = Hv; kk < H; ++kk) s += ld1(w + kk) * h[b * ldh + kk];
        z[b * ldz] = s;
    }
}

#ifdef RD_DPBF16
template <int NB>
static inline void dot_row_dp(const uint16_t* w, int64_t H, const uint16_t* h, int64_t ldh, float* z, int64_t ldz) {
    vec a0[NB], a1[NB];
    for (int b = 0; b < NB; ++b) a0[b] = a1[b] = vzero();
    const int64_t H4 = H - H % 64, H2 = H - H % 32;
    int64_t k = 0;
    for (; k < H4; k += 64) {
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k), w1 = (__m512bh)_mm512_loadu_si512(w + k + 32);
        for (int b = 0; b < NB; ++b) {
            a0[b] = _mm512_dpbf16_ps(a0[b], w0, (__m512bh)_mm512_loadu_si512(h + b * ldh + k));
            a1[b] = _mm512_dpbf16_ps(a1[b], w1, (__m512bh)_mm512_loadu_si512(h + b * ldh + k + 32));
        }
    }
    for (; k < H2; k += 32) {
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512(w + k);
        for (int b = 0; b < NB; ++b) a0[b] = _mm512_dpbf16_ps(a0[b], w0, (__m512bh)_mm512_loadu_si512(h + b * ldh + k));
    }
    for (int b = 0; b < NB; ++b) {
        float s = vsum(a0[b]) + vsum(a1[b]);
        for (int64_t kk = H2; kk < H; ++kk) s += ld1(w + kk) * ld1(h + b * ldh + kk);
        z[b * ldz] = s;
    }
}

// The same tile for bf16 weight and bf16 hidden (row stride ldh) with vdpbf16ps: 32 products per instruction.
template <int NV, int NB>
static inline void dot_tile_dp(const uint16_t* w, int64_t H, const uint16_t* h, int64_t ldh, float* z, int64_t ldz) {
    vec acc[NV][NB];
#pragma GCC unroll 8
    for (int r = 0; r < NV; ++r)
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) acc[r][b] = vzero();
    const int64_t H2 = H - H % 32;
    for (int64_t k = 0; k < H2; k += 32) {
        __m512bh wv[NV];
#pragma GCC unroll 8
        for (int r = 0; r < NV; ++r) wv[r] = (__m512bh)_mm512_loadu_si512(w + r * H + k);
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
            for (int64_t k = H2; k < H; ++k) s += ld1(w + r * H + k) * ld1(h + b * ldh + k);
            z[b * ldz + r] = s;
        }
}
template <int NV, int NB = NRB>
static inline void dot_tile_dp_n(int nb, const uint16_t* w, int64_t H, const uint16_t* h, int64_t ldh, float* z,
                                 int64_t ldz) {
    if constexpr (NB >= 1) {
        if (nb == NB) dot_tile_dp<NV, NB>(w, H, h, ldh, z, ldz);
        else dot_tile_dp_n<NV, NB - 1>(nb, w, H, h, ldh, z, ldz);
    }
}
#endif

// dh[b] += sum_r d[b*ldd + r] * w[r] for r < NV, b < NB (the dlogits @ W product, one weight tile at a time).
template <typename WT, int NV, int NB>
static inline void axpy_tile(const WT* w, int64_t H, const float* d, int64_t ldd, float* dh, int64_t ldh) {
    vec c[NV][NB];
    for (int r = 0; r < NV; ++r)
        for (int b = 0; b < NB; ++b) c[r][b] = vset1(d[b * ldd + r]);
    const int64_t Hv = H - H % VL;
    for (int64_t k = 0; k < Hv; k += VL) {
        vec wv[NV];
#pragma GCC unroll 8
        for (int r = 0; r < NV; ++r) wv[r] = vload(w + r * H + k);
#pragma GCC unroll 8
        for (int b = 0; b < NB; ++b) {
            vec a = vload(dh + b * ldh + k);
#pragma GCC unroll 8
            for (int r = 0; r < NV; ++r) a = vfma(c[r][b], wv[r], a);
            vstore(dh + b * ldh + k, a);
        }
    }
    for (int64_t k = Hv; k < H; ++k)
        for (int b = 0; b < NB; ++b) {
            float a = dh[b * ldh + k];
            for (int r = 0; r < NV; ++r) a += d[b * ldd + r] * ld1(w + r * H + k);
            dh[b * ldh + k] = a;
        }
}

// dw[r] = sum_b d[b*ldd + r] * h[b] for r < NV over all B rows (the dlogits^T @ hidden product), written once.
// Four vectors of H per step so each broadcast of d is used four times.
template <typename DT, int NV>
static inline void outer_rows(const float* d, int64_t ldd, const float* h, int64_t ldh, int64_t B, int64_t H, DT* dw) {
    const int64_t H4 = H - H % (4 * VL), Hv = H - H % VL;
    int64_t k = 0;
    for (; k < H4; k += 4 * VL) {
        vec acc[NV][4];
#pragma GCC unroll 8
        for (int r = 0; r < NV; ++r)
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) acc[r][j] = vzero();
        for (int64_t b = 0; b < B; ++b) {
            vec hv[4];
#pragma GCC unroll 4
            for (int j = 0; j < 4; ++j) hv[j] = vload(h + b * ldh + k + j * VL);
#pragma GCC unroll 8
            for (int r = 0; r < NV; ++r) {
                const vec c = vset1(d[b * ldd + r]);
#pragma GCC unroll 4
                for (int j = 0; j < 4; ++j) acc[r][j] = vfma(c, hv[j], acc[r][j]);
            }
        }
        for (int r = 0; r < NV; ++r)
            for (int j = 0; j < 4; ++j) vstore(dw + r * H + k + j * VL, acc[r][j]);
    }
    for (; k < Hv; k += VL) {
        vec acc[NV];
        for (int r = 0; r < NV; ++r) acc[r] = vzero();
        for (int64_t b = 0; b < B; ++b) {
            const vec hv = vload(h + b * ldh + k);
            for (int r = 0; r < NV; ++r) acc[r] = vfma(vset1(d[b * ldd + r]), hv, acc[r]);
        }
        for (int r = 0; r < NV; ++r) vstore(dw + r * H + k, acc[r]);
    }
    for (; k < H; ++k)
        for (int r = 0; r < NV; ++r) {
            float a = 0.f;
            for (int64_t b = 0; b < B; ++b) a += d[b * ldd + r] * h[b * ldh + k];
            st1(dw + r * H + k, a);
        }
}

// Run a tile kernel with NB = nb (1..NRB) known at compile time.
template <typename WT, int NV, int NB = NRB>
static inline void dot_tile_n(int nb, const WT* w, int64_t H, const float* h, int64_t ldh, float* z, int64_t ldz) {
    if constexpr (NB >= 1) {
        if (nb == NB) dot_tile<WT, NV, NB>(w, H, h, ldh, z, ldz);
        else dot_tile_n<WT, NV, NB - 1>(nb, w, H, h, ldh, z, ldz);
    }
}
template <typename WT, int NV, int NB = NRB>
static inline void axpy_tile_n(int nb, const WT* w, int64_t H, const float* d, int64_t ldd, float* dh, int64_t ldh) {
    if constexpr (NB >= 1) {
        if (nb == NB) axpy_tile<WT, NV, NB>(w, H, d, ldd, dh, ldh);
        else axpy_tile_n<WT, NV, NB - 1>(nb, w, H, d, ldd, dh, ldh);
    }
}

// z[b*ZC + j] = <W[v0+j], hp[b]> (+ bias) for j < nv, all rows b. The nv weight rows (one chunk, sized to
// stay in L2) come from memory for the first block of hidden rows and from cache for the others.
template <typename WT>
static void logits_chunk(const WT* W, const float* bias, int64_t H, int64_t v0, int64_t nv, const float* hp,
                         int64_t ldh, const uint16_t* hb, int64_t B, float* z, int64_t ZC) {
    for (int64_t b0 = 0; b0 < B; b0 += NRB) {
        const int nb = int(std::min<int64_t>(NRB, B - b0));
        int64_t r = 0;
#ifdef RD_DPBF16
        if constexpr (std::is_same<WT, uint16_t>::value) {  // bf16 hidden hb [B, H] used as is
            if (B <= 2)
                for (; r < nv; ++r)
                    (nb == 1 ? dot_row_dp<1> : dot_row_dp<2>)(W + (v0 + r) * H, H, hb + b0 * H, H, z + b0 * ZC + r, ZC);
            for (; r + NVR <= nv; r += NVR) dot_tile_dp_n<NVR>(nb, W + (v0 + r) * H, H, hb + b0 * H, H, z + b0 * ZC + r, ZC);
            for (; r < nv; ++r) dot_tile_dp_n<1>(nb, W + (v0 + r) * H, H, hb + b0 * H, H, z + b0 * ZC + r, ZC);
        }
#else
        (void)hb;
#endif
        if (B <= 2)
            for (; r < nv; ++r)
                (nb == 1 ? dot_row<WT, 1> : dot_row<WT, 2>)(W + (v0 + r) * H, H, hp + b0 * ldh, ldh, z + b0 * ZC + r, ZC);
        for (; r + NVR <= nv; r += NVR) dot_tile_n<WT, NVR>(nb, W + (v0 + r) * H, H, hp + b0 * ldh, ldh, z + b0 * ZC + r, ZC);
        for (; r < nv; ++r) dot_tile_n<WT, 1>(nb, W + (v0 + r) * H, H, hp + b0 * ldh, ldh, z + b0 * ZC + r, ZC);
    }
    if (bias)
        for (int64_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < nv; ++j) z[b * ZC + j] += bias[v0 + j];
}

template <typename WT>
static void forward_impl(const Problem& p, float* lse, float* tgt) {
    const WT* W = static_cast<const WT*>(p.weight);
    const int64_t B = p.B, H = p.H, V = p.V, K = p.K;
    const int64_t ldh = (H + VL - 1) / VL * VL;
    const int64_t ZC = chunk_rows(H, sizeof(WT), NVR);
    std::vector<float> hp = padded_hidden(p, ldh);
    const int T = int(std::max<int64_t>(1, std::min<int64_t>(p.nthreads, (V + NVR - 1) / NVR)));
    std::vector<float> part_m(size_t(T) * B, -INFINITY);
    std::vector<double> part_s(size_t(T) * B, 0.0);

#pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t vs, ve;
        thread_slice(V, NVR, t, nt, &vs, &ve);
        std::vector<float> z(size_t(B) * ZC);
        float* m = &part_m[size_t(t) * B];
        double* s = &part_s[size_t(t) * B];
        for (int64_t v0 = vs; v0 < ve; v0 += ZC) {
            const int64_t nv = std::min(ZC, ve - v0);
            logits_chunk<WT>(W, p.bias, H, v0, nv, hp.data(), ldh, p.hidden_bf16, B, z.data(), ZC);
            for (int64_t b = 0; b < B; ++b) {  // online logsumexp, rescaled only when the running max grows
                const float* zb = &z[size_t(b) * ZC];
                float cm = -INFINITY;
                for (int64_t j = 0; j < nv; ++j) cm = std::max(cm, zb[j]);
                if (cm == -INFINITY) continue;
                if (cm > m[b]) { s[b] *= std::exp(double(m[b]) - double(cm)); m[b] = cm; }
                s[b] += sum_exp(zb, nv, m[b]);
            }
        }
        // The K target logits: a few direct dot products, accumulated in double.
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B * K; ++i) {
            const int64_t b = i / K, id = p.ids[i];
            const WT* w = W + id * H;
            double a = 0.0;
            for (int64_t k = 0; k < H; ++k) a += double(ld1(w + k)) * double(hp[size_t(b) * ldh + k]);
            tgt[i] = float(a + (p.bias ? double(p.bias[id]) : 0.0));
        }
    }
    for (int64_t b = 0; b < B; ++b) {  // merge the per-thread partial logsumexps
        float M = -INFINITY;
        for (int t = 0; t < T; ++t) M = std::max(M, part_m[size_t(t) * B + b]);
        double S = 0.0;
        if (M != -INFINITY)
            for (int t = 0; t < T; ++t) S += part_s[size_t(t) * B + b] * std::exp(double(part_m[size_t(t) * B + b]) - M);
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
    const int64_t ZC = chunk_rows(H, sizeof(WT), NVR);
    std::vector<float> hp = padded_hidden(p, ldh);
    const int T = int(std::max<int64_t>(1, std::min<int64_t>(p.nthreads, (V + NVR - 1) / NVR)));
    std::vector<float> dh_part(dh ? size_t(T) * B * ldh : 0, 0.f);

#pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t vs, ve;
        thread_slice(V, NVR, t, nt, &vs, &ve);
        std::vector<float> z(size_t(B) * ZC);
        float* dht = dh ? &dh_part[size_t(t) * B * ldh] : nullptr;
        for (int64_t v0 = vs; v0 < ve; v0 += ZC) {
            const int64_t nv = std::min(ZC, ve - v0);
            logits_chunk<WT>(W, p.bias, H, v0, nv, hp.data(), ldh, p.hidden_bf16, B, z.data(), ZC);
            for (int64_t b = 0; b < B; ++b) {
                float* zb = &z[size_t(b) * ZC];
                neg_scaled_softmax(zb, nv, coef[b], lse[b]);
                for (int64_t k = 0; k < K; ++k) {  // repeated ids add up
                    const int64_t id = p.ids[b * K + k];
                    if (id >= v0 && id < v0 + nv) zb[id - v0] += g[b * K + k];
                }
            }
            if (db)
                for (int64_t j = 0; j < nv; ++j) {
                    float a = 0.f;
                    for (int64_t b = 0; b < B; ++b) a += z[size_t(b) * ZC + j];
                    db[v0 + j] = a;
                }
            if (dht)
                for (int64_t b0 = 0; b0 < B; b0 += NRB) {
                    const int nb = int(std::min<int64_t>(NRB, B - b0));
                    int64_t r = 0;
                    for (; r + NVR <= nv; r += NVR)
                        axpy_tile_n<WT, NVR>(nb, W + (v0 + r) * H, H, &z[size_t(b0) * ZC + r], ZC, dht + b0 * ldh, ldh);
                    for (; r < nv; ++r)
                        axpy_tile_n<WT, 1>(nb, W + (v0 + r) * H, H, &z[size_t(b0) * ZC + r], ZC, dht + b0 * ldh, ldh);
                }
            if (dw) {
                int64_t r = 0;
                for (; r + NVR <= nv; r += NVR) outer_rows<DWT, NVR>(&z[r], ZC, hp.data(), ldh, B, H, dw + (v0 + r) * H);
                for (; r < nv; ++r) outer_rows<DWT, 1>(&z[r], ZC, hp.data(), ldh, B, H, dw + (v0 + r) * H);
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
