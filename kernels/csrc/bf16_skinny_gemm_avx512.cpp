// Dense BF16 GEMM for a few activation rows (decode steps) on x86 CPUs with AVX512-BF16, built at first use by
// kernels/bf16_skinny.py and called through ctypes.
//
//   y bf16 [M, N] = x bf16 [M, K] @ W bf16 [N, K]^T (+ bias bf16 [N]), all row-major and contiguous, up to 4 rows of
// x per pass over a weight tile.
//
// A decode step reads every weight once and does ~1 FMA per weight, so it is bound by memory: torch's BF16 path
// reads the weight at about half the rate an FP32 sum streams it here (scripts/bench_cpu_decode.py). Each task takes
// 16 output rows; for NG rows at a time it streams 32 BF16 inputs of each row and multiplies them with every
// activation row by vdpbf16ps (pairs of BF16 products summed into FP32 lanes), so the weight is read from memory
// once for all M rows. Sums stay FP32 until the one rounding to BF16 at the end. Each output's sum runs in one fixed
// order over K, whatever M and the thread count: a row's result does not depend on its batch.
#include <immintrin.h>

#include <cstdint>

namespace {

constexpr int64_t kTileN = 16;  // output rows per task
constexpr int64_t kLanes = 32;  // BF16 inputs per register
constexpr int kMaxRows = 4;
constexpr int NG = 4;  // weight rows in flight

// The sums of four vectors' 16 lanes each, as one vector of 4: lanes are added in a fixed tree.
inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));  // per 128 bits: a b a b
  const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));  // c d c d
  const __m512 s = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))));
  const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));  // a b c d a b c d
  return _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
}

// out[r][j0 + j] = sum_k x[r, k] * w[j, k] for NG rows of the weight, R activation rows.
template <int R>
void dot_rows(const uint16_t* x, const uint16_t* w, int64_t K, float (*out)[kTileN], int j0) {
  __m512 acc[R][NG];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NG; ++j) acc[r][j] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += kLanes) {
    const __mmask32 mask = K - k >= kLanes ? ~__mmask32(0) : (__mmask32(1) << (K - k)) - 1;  // the tail zero-filled
    __m512bh wv[NG];
    for (int j = 0; j < NG; ++j) wv[j] = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + j * K + k);
    for (int r = 0; r < R; ++r) {
      const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + r * K + k);
      for (int j = 0; j < NG; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xv, wv[j]);
    }
  }
  for (int r = 0; r < R; ++r) _mm_storeu_ps(out[r] + j0, reduce4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
}

// y[R, 16] (row stride ldy) for one task of 16 weight rows.
template <int R>
void tile(const uint16_t* x, const uint16_t* w, const uint16_t* bias, int64_t K, uint16_t* y, int64_t ldy) {
  float out[R][kTileN];
  for (int j = 0; j < kTileN; j += NG) dot_rows<R>(x, w + j * K, K, out, j);
  __m512 b = _mm512_setzero_ps();
  if (bias != nullptr) {  // BF16 -> FP32 is a 16-bit shift
    b = _mm512_castsi512_ps(_mm512_slli_epi32(
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bias))), 16));
  }
  for (int r = 0; r < R; ++r) {
    const __m512 sums = _mm512_add_ps(_mm512_loadu_ps(out[r]), b);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + r * ldy), (__m256i)_mm512_cvtneps_pbh(sums));
  }
}

using TileFn = void (*)(const uint16_t*, const uint16_t*, const uint16_t*, int64_t, uint16_t*, int64_t);
constexpr TileFn kTiles[kMaxRows] = {tile<1>, tile<2>, tile<3>, tile<4>};

}  // namespace

extern "C" {

// N % 16 == 0; any K; bias may be null.
void heavy_bf16_skinny_gemm(const uint16_t* x, const uint16_t* w, const uint16_t* bias, uint16_t* y, int64_t M,
                            int64_t N, int64_t K, int num_threads) {
  const int64_t tasks = N / kTileN;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < tasks; ++t) {
    const uint16_t* tile_bias = bias == nullptr ? nullptr : bias + t * kTileN;
    for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
      const int64_t rows = M - m0 < kMaxRows ? M - m0 : kMaxRows;
      kTiles[rows - 1](x + m0 * K, w + t * kTileN * K, tile_bias, K, y + m0 * N + t * kTileN, N);
    }
  }
}

}  // extern "C"
