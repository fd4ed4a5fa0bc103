// W4A16 GEMM on x86 CPUs with AVX2 and FMA (no AVX-512), built at first use by kernels/cpu_native.py and called
// through ctypes. The weight layout is the AVX-512 kernel's (w4a16_avx512.cpp):
//   tiles  uint8 [N/16, K/2, 16]  per 16 output rows and 2 inputs: byte j holds row j's input 2c in its low
//                                 nibble and input 2c + 1 in its high nibble (nibble = q + 8)
//   scales fp32  [N/16, K/G, 16]  the group scales of those 16 rows
// Activations x fp32 [M, K] and outputs y fp32 [M, N] are row-major and contiguous.
//
// Each weight is dequantised to fp32 exactly as the torch reference does, (nibble - 8) * scale, and multiplied in
// fp32, so FP32 activations keep FP32 results (only the order of the sums differs from the reference). 16 output
// rows are two ymm registers; up to kMaxRows activation rows share one dequantised chunk, within the 16 ymm
// registers: 2 accumulators per row, 4 weight vectors, 2 scales.
#include <immintrin.h>

#include <cstdint>

#include "w4a16_tiles.h"

namespace {

using heavy::kChunkK;
using heavy::kTileN;
constexpr int kMaxRows = 4;     // activation rows sharing one dequantised chunk

// The 8 nibbles `shift` bits up in `bytes` (one per int32 lane) as fp32 weights: (nibble - 8) * scale.
inline __m256 dequantize(__m256i bytes, int shift, __m256 scale) {
  const __m256i nibbles = _mm256_and_si256(_mm256_srli_epi32(bytes, shift), _mm256_set1_epi32(0xF));
  return _mm256_mul_ps(_mm256_sub_ps(_mm256_cvtepi32_ps(nibbles), _mm256_set1_ps(8.0f)), scale);
}

// y[R, 16] = x[R, K] @ W_tile[16, K]^T for one tile of 16 output rows.
template <int R>
void gemm_tile(const float* x, int64_t K, const uint8_t* tile, const float* scales, float* y, int64_t ldy,
               int64_t G) {
  __m256 out_lo[R], out_hi[R];  // output rows 0-7 and 8-15 of the tile
  for (int r = 0; r < R; ++r) out_lo[r] = out_hi[r] = _mm256_setzero_ps();
  for (int64_t g0 = 0; g0 < K; g0 += G) {
    const float* group_scales = scales + (g0 / G) * kTileN;
    const __m256 scale_lo = _mm256_loadu_ps(group_scales), scale_hi = _mm256_loadu_ps(group_scales + 8);
    for (int64_t k = g0; k < g0 + G; k += kChunkK) {
      const uint8_t* chunk = tile + k * (kTileN / kChunkK);  // 16 bytes, one per output row
      const __m256i bytes_lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(chunk)));
      const __m256i bytes_hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(chunk + 8)));
      const __m256 even_lo = dequantize(bytes_lo, 0, scale_lo), even_hi = dequantize(bytes_hi, 0, scale_hi);  // k
      const __m256 odd_lo = dequantize(bytes_lo, 4, scale_lo), odd_hi = dequantize(bytes_hi, 4, scale_hi);  // k + 1
      for (int r = 0; r < R; ++r) {
        const __m256 x_even = _mm256_broadcast_ss(x + r * K + k), x_odd = _mm256_broadcast_ss(x + r * K + k + 1);
        out_lo[r] = _mm256_fmadd_ps(even_lo, x_even, out_lo[r]);
        out_hi[r] = _mm256_fmadd_ps(even_hi, x_even, out_hi[r]);
        out_lo[r] = _mm256_fmadd_ps(odd_lo, x_odd, out_lo[r]);
        out_hi[r] = _mm256_fmadd_ps(odd_hi, x_odd, out_hi[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(y + r * ldy, out_lo[r]);
    _mm256_storeu_ps(y + r * ldy + 8, out_hi[r]);
  }
}

constexpr heavy::TileFn<float> kTileFns[kMaxRows] = {gemm_tile<1>, gemm_tile<2>, gemm_tile<3>, gemm_tile<4>};

}  // namespace

extern "C" {

// y fp32 [M, N] = x fp32 [M, K] @ dequant(tiles, scales)^T; N % 16 == 0, K % G == 0, G % 2 == 0.
void heavy_w4a16_gemm(const float* x, const uint8_t* tiles, const float* scales, float* y, int64_t M, int64_t N,
                      int64_t K, int64_t G, int num_threads) {
  heavy::gemm_tiles(kTileFns, x, tiles, scales, y, M, N, K, G, num_threads);
}

}  // extern "C"
