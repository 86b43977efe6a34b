// The bf16 head on AMX tiles (Intel Advanced Matrix Extensions: TDPBF16PS, a 16x16 fp32 block += a 16x32 bf16
// block times a 32x16 one per instruction). head.cpp includes this inside a namespace compiled for
// avx512bf16 + amx-tile + amx-bf16, after head_avx512.h and head_kernel.h (whose kernels it falls back to).
// Not a standalone header.
//
// Tiles: 0-3 fp32 accumulators C [16 x 16], 4-5 left operands A [16 rows x 32 bf16], 6-7 right operands B
// [16 rows x 32 bf16]: B holds a 32 x 16 block as pairs (row r, column n) = (element 2r, n), (element 2r+1, n).
// Logits zt[v][b] = <W[v], h[b]>: A = 16 weight rows loaded straight from W (no copy of the weight), B = hidden
// packed once per call. dh[b][k] = sum_v d[b][v] W[v][k]: A = the chunk's dlogits (transposed to bf16), B = the
// chunk's weight repacked in pairs of rows, 32 columns of H at a time, from L2 (the logits just read it).
// Used when H % 32 == 0 (whole tiles along H) and, in backward, when only dh is wanted; otherwise the
// avx512bf16 kernels run.

// Tile loads of the weight run this many 32-column steps behind a software prefetch of the same rows: with
// more than 16 batch rows the tiles' work per step slows the hardware prefetcher's stream (measured on the 7B
// head, 1 thread: B=32 fwd 82 -> 77 ms, B=64 112 -> 106 ms; 8 was no better, 16 worse).
constexpr int64_t kPrefetchSteps = 4;

struct alignas(64) TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

static inline void amx_configure() {
    TileConfig c;
    std::memset(&c, 0, sizeof(c));
    c.palette = 1;
    for (int t = 0; t < 8; ++t) c.colsb[t] = 64, c.rows[t] = 16;
    _tile_loadconfig(&c);
}

using U32Buf = std::vector<uint32_t, AlignedAllocator<uint32_t>>;
using U16Buf = std::vector<uint16_t, AlignedAllocator<uint16_t>>;

// Hidden rows as right operands: hv[bb][kb] is the 16 x 16 block of bf16 pairs (h[bb*16+n][kb*32+2r],
// h[bb*16+n][kb*32+2r+1]) at (r, n); rows past B are zero.
static U32Buf amx_pack_hidden(const uint16_t* h, int64_t B, int64_t H, int64_t nbb) {
    const int64_t nkb = H / 32;
    U32Buf hv(size_t(nbb * nkb * 256), 0u);
    for (int64_t b = 0; b < B; ++b) {
        const uint32_t* row = reinterpret_cast<const uint32_t*>(h + b * H);  // bf16 pairs
        for (int64_t kb = 0; kb < nkb; ++kb)
            for (int r = 0; r < 16; ++r) hv[size_t(((b / 16) * nkb + kb) * 256 + r * 16 + b % 16)] = row[kb * 16 + r];
    }
    return hv;
}

template <int NR>
static inline void amx_prefetch_rows(const uint16_t* w, int64_t H) {
    for (int r = 0; r < NR; ++r) _mm_prefetch(reinterpret_cast<const char*>(w + r * H), _MM_HINT_T0);
}

// zt[r*ldz + b] = <W[r], h[b]> for NR = 16 or 32 weight rows and every padded batch column b < nbb*16.
template <int NR>
static inline void amx_logit_rows(const uint16_t* W, int64_t H, const uint32_t* hv, int64_t nbb, float* zt,
                                  int64_t ldz) {
    const int64_t nkb = H / 32, sw = H * 2, sz = ldz * 4;
    for (int64_t bb = 0; bb < nbb; bb += 2) {
        const uint32_t* b0 = hv + bb * nkb * 256;
        const uint32_t* b1 = b0 + nkb * 256;
        _tile_zero(0);
        _tile_zero(2);
        if (bb + 1 < nbb) {
            _tile_zero(1);
            _tile_zero(3);
            for (int64_t kb = 0; kb < nkb; ++kb) {
                if (bb == 0 && kb + kPrefetchSteps < nkb) amx_prefetch_rows<NR>(W + (kb + kPrefetchSteps) * 32, H);
                _tile_loadd(4, W + kb * 32, sw);
                _tile_loadd(6, b0 + kb * 256, 64);
                _tile_loadd(7, b1 + kb * 256, 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                if (NR == 32) {
                    _tile_loadd(5, W + 16 * H + kb * 32, sw);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            }
            _tile_stored(1, zt + (bb + 1) * 16, sz);
            if (NR == 32) _tile_stored(3, zt + 16 * ldz + (bb + 1) * 16, sz);
        } else {
            for (int64_t kb = 0; kb < nkb; ++kb) {
                if (bb == 0 && kb + kPrefetchSteps < nkb) amx_prefetch_rows<NR>(W + (kb + kPrefetchSteps) * 32, H);
                _tile_loadd(4, W + kb * 32, sw);
                _tile_loadd(6, b0 + kb * 256, 64);
                _tile_dpbf16ps(0, 4, 6);
                if (NR == 32) {
                    _tile_loadd(5, W + 16 * H + kb * 32, sw);
                    _tile_dpbf16ps(2, 5, 6);
                }
            }
        }
        _tile_stored(0, zt + bb * 16, sz);
        if (NR == 32) _tile_stored(2, zt + 16 * ldz + bb * 16, sz);
    }
}

// zt[r*ldz + b] (+ bias) for the n rows of W starting at row v0: tiles of 32 and 16 rows, the last < 16 rows by
// dot products (only the vocabulary's last rows, once per call). Padded batch columns hold 0 (+ bias).
static void amx_logits(const uint16_t* W, const float* bias, int64_t H, int64_t v0, int64_t n, const uint32_t* hv,
                       const uint16_t* h, int64_t B, int64_t nbb, float* zt, int64_t ldz) {
    int64_t r = 0;
    for (; r + 32 <= n; r += 32) amx_logit_rows<32>(W + (v0 + r) * H, H, hv, nbb, zt + r * ldz, ldz);
    if (r + 16 <= n) amx_logit_rows<16>(W + (v0 + r) * H, H, hv, nbb, zt + r * ldz, ldz), r += 16;
    for (; r < n; ++r)
        for (int64_t b = 0; b < nbb * 16; ++b) {
            float a = 0.f;
            if (b < B)
                for (int64_t k = 0; k < H; ++k) a += ld1(W + (v0 + r) * H + k) * ld1(h + b * H + k);
            zt[r * ldz + b] = a;
        }
    if (bias)
        for (int64_t i = 0; i < n; ++i) {
            const vec bv = vset1(bias[v0 + i]);
            for (int64_t b = 0; b < ldz; b += VL) vstore(zt + i * ldz + b, vload(zt + i * ldz + b) + bv);
        }
}

// Rows of the vocabulary per chunk in backward: the chunk's weight (read for the logits, then again for dh)
// stays in L2 beside the dh accumulators (768 KiB; for H = 3584 that is 96 rows, measured faster than 64, 128
// or 256 at B = 16-64 on one thread); a multiple of 32 so dlogits fill whole tiles.
static inline int64_t amx_chunk_rows(int64_t H) {
    return std::max<int64_t>(32, std::min<int64_t>(256, (768 << 10) / (H * 2) / 32 * 32));
}

static void amx_forward(const Problem& p, float* lse, float* tgt) {
    if (p.H % 32 != 0) return forward_impl<uint16_t>(p, lse, tgt);
    const uint16_t* W = static_cast<const uint16_t*>(p.weight);
    const uint16_t* h = p.hidden_bf16;
    const int64_t B = p.B, H = p.H, V = p.V, K = p.K;
    const int64_t nbb = (B + 15) / 16, ldz = nbb * 16, ZR = 256;
    const U32Buf hv = amx_pack_hidden(h, B, H, nbb);
    const int T = int(std::max<int64_t>(1, std::min<int64_t>(p.nthreads, (V + 31) / 32)));
    // As in forward_impl: pieces handed out dynamically, partial logsumexps merged in a fixed order.
    const int64_t P = T * std::max<int64_t>(1, std::min<int64_t>(8, V / (1024 * T)));
    std::vector<float> part_m(size_t(P * ldz), -INFINITY);
    std::vector<double> part_s(size_t(P * ldz), 0.0);

#pragma omp parallel num_threads(T)
    {
        amx_configure();
        Buf zt(size_t(ZR * ldz));
        alignas(64) float cm[VL], cs[VL];
#pragma omp for schedule(dynamic, 1) nowait
        for (int64_t piece = 0; piece < P; ++piece) {
            int64_t vs, ve;
            thread_slice(V, 32, piece, P, &vs, &ve);
            float* m = &part_m[size_t(piece * ldz)];
            double* s = &part_s[size_t(piece * ldz)];
            for (int64_t c0 = vs; c0 < ve; c0 += ZR) {
                const int64_t n = std::min<int64_t>(ZR, ve - c0);
                amx_logits(W, p.bias, H, c0, n, hv.data(), h, B, nbb, zt.data(), ldz);
                for (int64_t b0 = 0; b0 < ldz; b0 += VL) {  // online logsumexp, VL batch rows per vector
                    vec mx = vset1(-INFINITY);
                    for (int64_t r = 0; r < n; ++r) mx = _mm512_max_ps(mx, vload(&zt[size_t(r * ldz + b0)]));
                    vstore(cm, mx);
                    for (int i = 0; i < VL; ++i)
                        if (cm[i] > m[b0 + i]) {
                            s[b0 + i] *= std::exp(double(m[b0 + i]) - double(cm[i]));
                            m[b0 + i] = cm[i];
                        }
                    const vec mv = vload(m + b0);
                    vec acc = vzero();
                    for (int64_t r = 0; r < n; ++r) acc = acc + vexp(vload(&zt[size_t(r * ldz + b0)]) - mv);
                    vstore(cs, acc);
                    for (int i = 0; i < VL; ++i) s[b0 + i] += cs[i];
                }
            }
        }
        _tile_release();
#pragma omp for schedule(static) nowait
        for (int64_t i = 0; i < B * K; ++i) {  // the K target logits, accumulated in double
            const int64_t b = i / K, id = p.ids[i];
            double a = 0.0;
            for (int64_t k = 0; k < H; ++k) a += double(ld1(W + id * H + k)) * double(ld1(h + b * H + k));
            tgt[i] = float(a + (p.bias ? double(p.bias[id]) : 0.0));
        }
    }
    for (int64_t b = 0; b < B; ++b) {
        float M = -INFINITY;
        for (int64_t t = 0; t < P; ++t) M = std::max(M, part_m[size_t(t * ldz + b)]);
        double S = 0.0;
        if (M != -INFINITY)
            for (int64_t t = 0; t < P; ++t) S += part_s[size_t(t * ldz + b)] * std::exp(double(part_m[size_t(t * ldz + b)]) - M);
        lse[b] = float(double(M) + std::log(S));
    }
}

// Weight rows [v0, v0 + n) (n <= npad, npad a multiple of 32), columns [k0, k0 + 32), as two right operands
// (columns k0..k0+15 and k0+16..k0+31): wp[half][q][c] = pairs (W[v0+2q][k0+16*half+c], W[v0+2q+1][...]);
// rows past n are zero.
static inline void amx_pack_weight_cols(const uint16_t* W, int64_t H, int64_t v0, int64_t n, int64_t npad,
                                        int64_t k0, uint16_t* wp) {
    const __m512i first = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
    const __m512i second = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    const int64_t half = npad / 2 * 32;  // elements per 16 columns
    for (int64_t q = 0; q < npad / 2; ++q) {
        const int64_t r0 = 2 * q, r1 = 2 * q + 1;
        const __m512i x = r0 < n ? _mm512_loadu_si512(W + (v0 + r0) * H + k0) : _mm512_setzero_si512();
        const __m512i y = r1 < n ? _mm512_loadu_si512(W + (v0 + r1) * H + k0) : _mm512_setzero_si512();
        const __m512i lo = _mm512_unpacklo_epi16(x, y), hi = _mm512_unpackhi_epi16(x, y);  // per 128-bit lane
        _mm512_storeu_si512(wp + q * 32, _mm512_permutex2var_epi64(lo, first, hi));
        _mm512_storeu_si512(wp + half + q * 32, _mm512_permutex2var_epi64(lo, second, hi));
    }
}

// dT[bb][vb][b][j] = bf16(zt[(vb*32 + j)*ldz + bb*16 + b]) (round to nearest even), rows j past n zero: the
// chunk's dlogits as left operands. Two chunk rows at a time become 16 bf16 pairs, one per batch row, scattered
// to their rows of the 16 x 32 block.
static inline void amx_pack_dlogits(const float* zt, int64_t ldz, int64_t n, int64_t nvb, int64_t nbb, uint16_t* dT) {
    // after unpack{lo,hi} of two 8-lane halves, lane i holds batch row (0-3, 8-11, 4-7, 12-15)[i]
    const __m512i row = _mm512_setr_epi32(0, 16, 32, 48, 128, 144, 160, 176, 64, 80, 96, 112, 192, 208, 224, 240);
    for (int64_t bb = 0; bb < nbb; ++bb)
        for (int64_t vb = 0; vb < nvb; ++vb) {
            int* blk = reinterpret_cast<int*>(dT + (bb * nvb + vb) * 512);  // 16 rows of 16 bf16 pairs
            for (int q = 0; q < 16; ++q) {
                const int64_t r0 = vb * 32 + 2 * q;
                const __m512 x = r0 < n ? _mm512_loadu_ps(zt + r0 * ldz + bb * 16) : _mm512_setzero_ps();
                const __m512 y = r0 + 1 < n ? _mm512_loadu_ps(zt + (r0 + 1) * ldz + bb * 16) : _mm512_setzero_ps();
                const __m256i bx = (__m256i)_mm512_cvtneps_pbh(x), by = (__m256i)_mm512_cvtneps_pbh(y);
                const __m512i pairs = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_unpacklo_epi16(bx, by)),
                                                         _mm256_unpackhi_epi16(bx, by), 1);
                _mm512_i32scatter_epi32(blk + q, row, pairs, 4);
            }
        }
}

// dh[b][k] for one chunk: dT[bb][vb] is the 16 x 32 bf16 block of dlogits (batch rows bb*16.., chunk rows
// vb*32..); dhp [ldz][H] fp32 accumulates. Two batch blocks x two 16-column blocks of H per step.
static void amx_dh_chunk(const uint16_t* W, int64_t H, int64_t v0, int64_t n, int64_t npad, const uint16_t* dT,
                         int64_t nbb, float* dhp, uint16_t* wp) {
    const int64_t nvb = npad / 32, half = npad / 2 * 32, sdh = H * 4;
    for (int64_t k0 = 0; k0 < H; k0 += 32) {
        amx_pack_weight_cols(W, H, v0, n, npad, k0, wp);
        for (int64_t bb = 0; bb < nbb; bb += 2) {
            const bool two = bb + 1 < nbb;
            float* c0 = dhp + bb * 16 * H + k0;
            _tile_loadd(0, c0, sdh);
            _tile_loadd(1, c0 + 16, sdh);
            if (two) {
                _tile_loadd(2, c0 + 16 * H, sdh);
                _tile_loadd(3, c0 + 16 * H + 16, sdh);
            }
            for (int64_t vb = 0; vb < nvb; ++vb) {
                _tile_loadd(4, dT + (bb * nvb + vb) * 512, 64);
                _tile_loadd(6, wp + vb * 512, 64);
                _tile_loadd(7, wp + half + vb * 512, 64);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                if (two) {
                    _tile_loadd(5, dT + ((bb + 1) * nvb + vb) * 512, 64);
                    _tile_dpbf16ps(2, 5, 6);
                    _tile_dpbf16ps(3, 5, 7);
                }
            }
            _tile_stored(0, c0, sdh);
            _tile_stored(1, c0 + 16, sdh);
            if (two) {
                _tile_stored(2, c0 + 16 * H, sdh);
                _tile_stored(3, c0 + 16 * H + 16, sdh);
            }
        }
    }
}

template <typename DWT>
static void amx_backward(const Problem& p, const float* lse, const float* g, const float* coef, float* dh, DWT* dw,
                         float* db) {
    if (p.H % 32 != 0 || dw || db || !dh) return backward_impl<uint16_t, DWT>(p, lse, g, coef, dh, dw, db);
    const uint16_t* W = static_cast<const uint16_t*>(p.weight);
    const uint16_t* h = p.hidden_bf16;
    const int64_t B = p.B, H = p.H, V = p.V, K = p.K;
    const int64_t nbb = (B + 15) / 16, ldz = nbb * 16, ZR = amx_chunk_rows(H);
    const U32Buf hv = amx_pack_hidden(h, B, H, nbb);
    const int T = int(std::max<int64_t>(1, std::min<int64_t>(p.nthreads, (V + 31) / 32)));
    Buf dh_part(size_t(T * ldz * H), 0.f);
    Buf lse_p(size_t(ldz), 0.f), coef_p(size_t(ldz), 0.f);  // padded batch rows: coefficient 0, so dlogits 0
    std::copy(lse, lse + B, lse_p.begin());
    std::copy(coef, coef + B, coef_p.begin());

#pragma omp parallel num_threads(T)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int64_t vs, ve;
        thread_slice(V, 32, t, nt, &vs, &ve);
        amx_configure();
        Buf zt(size_t(ZR * ldz));
        U16Buf dT(size_t(nbb * ZR * 16)), wp(size_t(ZR * 32));
        float* dhp = &dh_part[size_t(t * ldz * H)];
        for (int64_t c0 = vs; c0 < ve; c0 += ZR) {
            const int64_t n = std::min<int64_t>(ZR, ve - c0), npad = (n + 31) / 32 * 32, nvb = npad / 32;
            amx_logits(W, p.bias, H, c0, n, hv.data(), h, B, nbb, zt.data(), ldz);
            for (int64_t b0 = 0; b0 < ldz; b0 += VL) {  // dlogits = -coef * softmax, VL batch rows per vector
                const vec l = vload(&lse_p[size_t(b0)]), c = vzero() - vload(&coef_p[size_t(b0)]);
                for (int64_t r = 0; r < n; ++r) {
                    float* zr = &zt[size_t(r * ldz + b0)];
                    vstore(zr, c * vexp(vload(zr) - l));
                }
            }
            for (int64_t i = 0; i < B * K; ++i) {  // + g at the targets (repeated ids add up)
                const int64_t id = p.ids[i];
                if (id >= c0 && id < c0 + n) zt[size_t((id - c0) * ldz + i / K)] += g[i];
            }
            amx_pack_dlogits(zt.data(), ldz, n, nvb, nbb, dT.data());
            amx_dh_chunk(W, H, c0, n, npad, dT.data(), nbb, dhp, wp.data());
        }
        _tile_release();
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t i = 0; i < B * H; ++i) {
            float a = 0.f;
            for (int u = 0; u < nt; ++u) a += dh_part[size_t(u * ldz * H + i)];
            dh[i] = a;
        }
    }
}
