// W4A16 GEMM on x86 CPUs with AVX-512, built at first use by kernels/cpu_native.py and called through ctypes.
//
// Weight layout ("tiles", made once by kernels.cpu_native.repack):
//   tiles  uint8 [N/16, K/2, 16]  per 16 output rows and 2 inputs: byte j holds row j's input 2c in its low
//                                 nibble and input 2c + 1 in its high nibble (nibble = q + 8)
//   scales fp32  [N/16, K/G, 16]  the group scales of those 16 rows
// Activations x fp32 [M, K] (converted once per call) and outputs y bf16 [M, N] are row-major and contiguous.
//
// Why fp32 FMA and not vdpbf16ps: measured on a Sapphire Rapids core, 16 rows of fp32 FMA on two ports beat the
// bf16 dot product (~0.5 per cycle) by 1.5x at M = 8, at equal speed for M = 1; the int4 -> fp32 unpack is one
// vpermps per 16 weights because vpermps reads only the low 4 bits of each index.
#include <immintrin.h>

#include <cstdint>

#include "w4a16_tiles.h"

namespace {

using heavy::kChunkK;
using heavy::kTileN;
constexpr int kMaxRows = 8;     // activation rows sharing one unpacked chunk (registers: 2 per row)

// y[R, 16] = x[R, K] @ W_tile[16, K]^T for one tile of 16 output rows.
template <int R>
void gemm_tile(const float* x, int64_t K, const uint8_t* tile, const float* scales, uint16_t* y, int64_t ldy,
               int64_t G) {
  const __m512 q_values = _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, -1, -2, -3, -4, -5, -6, -7, -8);  // nibble -> q
  __m512 out[R];
  for (int r = 0; r < R; ++r) out[r] = _mm512_setzero_ps();
  for (int64_t g0 = 0; g0 < K; g0 += G) {
    __m512 acc[R];  // integer-weight sums of one group, scaled once per group
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = g0; k < g0 + G; k += kChunkK) {
      const __m512i bytes =
          _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(tile + k * (kTileN / kChunkK))));
      const __m512 w_even = _mm512_permutexvar_ps(bytes, q_values);                        // input k
      const __m512 w_odd = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), q_values);   // input k + 1
      for (int r = 0; r < R; ++r) {
        acc[r] = _mm512_fmadd_ps(w_even, _mm512_set1_ps(x[r * K + k]), acc[r]);
        acc[r] = _mm512_fmadd_ps(w_odd, _mm512_set1_ps(x[r * K + k + 1]), acc[r]);
      }
    }
    const __m512 scale = _mm512_loadu_ps(scales + (g0 / G) * kTileN);
    for (int r = 0; r < R; ++r) out[r] = _mm512_fmadd_ps(acc[r], scale, out[r]);
  }
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + r * ldy), (__m256i)_mm512_cvtneps_pbh(out[r]));
  }
}

constexpr heavy::TileFn<uint16_t> kTileFns[kMaxRows] = {gemm_tile<1>, gemm_tile<2>, gemm_tile<3>, gemm_tile<4>,
                                                        gemm_tile<5>, gemm_tile<6>, gemm_tile<7>, gemm_tile<8>};

}  // namespace

extern "C" {

// y bf16 [M, N] = x fp32 [M, K] @ dequant(tiles, scales)^T; N % 16 == 0, K % G == 0, G % 2 == 0.
void heavy_w4a16_gemm(const float* x, const uint8_t* tiles, const float* scales, uint16_t* y, int64_t M, int64_t N,
                      int64_t K, int64_t G, int num_threads) {
  heavy::gemm_tiles(kTileFns, x, tiles, scales, y, M, N, K, G, num_threads);
}

}  // extern "C"
