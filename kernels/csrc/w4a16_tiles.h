// What both W4A16 kernels (w4a16_avx512.cpp, w4a16_avx2.cpp) share: the tile layout's sizes and the loop that runs
// a kernel's tile function over every tile of 16 output rows (in parallel) and every block of activation rows.
#pragma once

#include <cstdint>

namespace heavy {

constexpr int64_t kTileN = 16;  // output rows per tile
constexpr int64_t kChunkK = 2;  // inputs per 16-byte chunk

// tile_fn<R>(x [R, K], K, tile, tile scales, y [R, 16] with row stride ldy, G): one tile for R activation rows.
template <typename Out>
using TileFn = void (*)(const float* x, int64_t K, const uint8_t* tile, const float* scales, Out* y, int64_t ldy,
                        int64_t G);

// y [M, N] = x fp32 [M, K] @ dequant(tiles, scales)^T, rows in blocks of up to MaxRows (tile_fns[rows - 1]).
template <typename Out, int MaxRows>
void gemm_tiles(const TileFn<Out> (&tile_fns)[MaxRows], const float* x, const uint8_t* tiles, const float* scales,
                Out* y, int64_t M, int64_t N, int64_t K, int64_t G, int num_threads) {
  const int64_t num_tiles = N / kTileN;
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t t = 0; t < num_tiles; ++t) {
    const uint8_t* tile = tiles + t * K * (kTileN / kChunkK);
    const float* tile_scales = scales + t * (K / G) * kTileN;
    for (int64_t m0 = 0; m0 < M; m0 += MaxRows) {
      const int64_t rows = M - m0 < MaxRows ? M - m0 : MaxRows;
      tile_fns[rows - 1](x + m0 * K, K, tile, tile_scales, y + m0 * N + t * kTileN, N, G);
    }
  }
}

}  // namespace heavy
