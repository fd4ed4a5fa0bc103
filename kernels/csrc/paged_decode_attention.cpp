// Paged decode attention on x86 CPUs with AVX2 and FMA, for FP32 or BF16 tensors: each decoding sequence's one new
// query token attends over its context, read in place from the paged K/V cache through its slot list (no gather into
// a padded batch), with an online softmax over tiles of keys. BF16 rows are widened to FP32 as they are loaded (a
// shift), all arithmetic is FP32, and the output is rounded to BF16 once, to nearest even. Built and called by
// kernels/paged_attention.py.
//
// Shapes: B = sequences, H = query heads, Hkv = key/value heads, G = H / Hkv query heads per key/value head,
// Dk, Dv = key and value head dims (multiples of 8), S = cache slots, L = slot-list row stride (the longest context;
// 0 when all rows read one list, as the queries of a prefill chunk do).
//   q  [B, H, Dk]    out [B, H, Dv]    slots int64 [B, L] (the first lengths[b] of row b are used), lengths int64 [B]
//   key row of slot s, head g: k + s * row_stride + g * Dk; value row: v + s * row_stride + g * Dv
// Standard attention: k, v [S, Hkv, D] (strides Hkv * D). Absorbed multi-head latent attention (DeepSeek V3, Kimi
// K2): one latent row [S, C + R] per slot is both the key (all of it) and the value (its first C), Hkv = 1.
// Query head h reads key/value head h / G, as torch's SDPA with enable_gqa does.
//
// One task per (sequence, key/value head, block of up to `head_block` of its query heads): the block's heads share
// every key and value row it reads, so a row is read from memory once per block, and then from cache by each head
// (standard attention passes head_block = G: one read per step; latent attention's 64 heads over one latent row are
// split so that one sequence still makes several tasks). Scores are computed 8 keys at a time (8 dot products
// reduced together into one vector), values accumulated 8 vectors of Dv at a time. A head's arithmetic depends on
// neither the block it is in nor the other sequences of the batch, so results are batch-invariant.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using bf16 = uint16_t;  // the upper half of an FP32's bits

constexpr int64_t kKeyTile = 64;  // keys per softmax update: their rows (16 KiB at D = 64) stay in L1 (L2 for MLA)
constexpr int64_t kLanes = 8;     // floats per ymm register
constexpr int kValueChunks = 8;   // ymm accumulators of one head's output per pass over a tile: 8 FMA chains

// exp(x) for x <= 0 (scores minus their running maximum): 2^n * p(r) with x = n ln2 + r, |r| <= ln2/2, p the
// degree-6 Taylor polynomial (relative error < 2e-7 on that range). x is clamped at -87: exp(-87) ~ 1.6e-38.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-0.693145752f), x);  // Cody-Waite: ln2 in two parts
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-1.42860677e-6f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  for (const float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) {
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  }
  const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
}

inline float exp_nonpositive(float x) { return _mm256_cvtss_f32(exp_nonpositive(_mm256_set1_ps(x))); }

// 8 consecutive values as FP32.
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const bf16* p) {
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}

inline float to_float(float x) { return x; }
inline float to_float(bf16 x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline void store(float* out, float x) { *out = x; }
inline void store(bf16* out, float x) {  // round to nearest even, as torch's conversion does; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  *out = nan ? bf16{0x7fc0} : static_cast<bf16>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

// The 8 horizontal sums of s[0..7], in order, as one vector.
inline __m256 sum_each(const __m256 s[kLanes]) {
  const __m256 pairs01 = _mm256_hadd_ps(s[0], s[1]), pairs23 = _mm256_hadd_ps(s[2], s[3]);
  const __m256 pairs45 = _mm256_hadd_ps(s[4], s[5]), pairs67 = _mm256_hadd_ps(s[6], s[7]);
  const __m256 quads0123 = _mm256_hadd_ps(pairs01, pairs23), quads4567 = _mm256_hadd_ps(pairs45, pairs67);
  // quads0123 = [0 1 2 3 | 0 1 2 3] of s[0..3]'s low and high halves; likewise quads4567
  return _mm256_add_ps(_mm256_permute2f128_ps(quads0123, quads4567, 0x20),
                       _mm256_permute2f128_ps(quads0123, quads4567, 0x31));
}

// scores[j] = scale * q . keys[j] for 8 keys.
template <typename T>
inline __m256 score_eight(const float* q, const T* const keys[kLanes], int64_t d, __m256 scale) {
  __m256 s[kLanes];
  for (int j = 0; j < kLanes; ++j) s[j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < d; i += kLanes) {
    const __m256 query = _mm256_loadu_ps(q + i);
    for (int j = 0; j < kLanes; ++j) s[j] = _mm256_fmadd_ps(query, load8(keys[j] + i), s[j]);
  }
  return _mm256_mul_ps(sum_each(s), scale);
}

// sums[0, 8C) = sums * correction + sum_j weights[j] * (rows[j] + offset)[0, 8C): C ymm registers, C independent
// FMA chains, over `count` rows.
template <int C, typename T>
inline void accumulate(float* sums, const float* weights, const T* const* rows, int64_t count, int64_t offset,
                       float correction) {
  __m256 total[C];
  for (int c = 0; c < C; ++c) total[c] = _mm256_mul_ps(_mm256_loadu_ps(sums + c * kLanes), _mm256_set1_ps(correction));
  for (int64_t j = 0; j < count; ++j) {
    const __m256 weight = _mm256_broadcast_ss(weights + j);
    const T* row = rows[j] + offset;
    for (int c = 0; c < C; ++c) total[c] = _mm256_fmadd_ps(weight, load8(row + c * kLanes), total[c]);
  }
  for (int c = 0; c < C; ++c) _mm256_storeu_ps(sums + c * kLanes, total[c]);
}

struct Shape {
  int64_t heads, kv_heads, key_dim, value_dim, row_stride, head_block;  // row_stride: between slots, k and v alike
  float scale;
};

// One sequence, one key/value head, `groups` of its query heads: q and out point at their rows [groups, Dk] and
// [groups, Dv].
template <typename T>
void attend(const T* q, const T* k_cache, const T* v_cache, const int64_t* slots, int64_t length, int64_t kv_head,
            int64_t groups, const Shape& s, T* out) {
  const int64_t d = s.key_dim, dv = s.value_dim;
  std::vector<float> query(groups * d), acc(groups * dv, 0.0f), scores(groups * kKeyTile);
  std::vector<float> running_max(groups, -INFINITY), running_sum(groups, 0.0f);
  for (int64_t i = 0; i < groups * d; ++i) query[i] = to_float(q[i]);
  const T* keys[kKeyTile];
  const T* values[kKeyTile];
  const __m256 scale = _mm256_set1_ps(s.scale);
  for (int64_t start = 0; start < length; start += kKeyTile) {
    const int64_t count = std::min(kKeyTile, length - start);
    for (int64_t j = 0; j < kKeyTile; ++j) {  // past the context's end, repeat its last key: scored, never used
      const int64_t slot = slots[start + std::min(j, count - 1)];
      keys[j] = k_cache + slot * s.row_stride + kv_head * d;
      values[j] = v_cache + slot * s.row_stride + kv_head * dv;
    }
    for (int64_t h = 0; h < groups; ++h) {
      float* row = scores.data() + h * kKeyTile;  // [count]
      for (int64_t j = 0; j < count; j += kLanes) {
        _mm256_storeu_ps(row + j, score_eight(query.data() + h * d, keys + j, d, scale));
      }
      const float tile_max = *std::max_element(row, row + count);
      const float new_max = std::max(running_max[h], tile_max);
      const float correction = exp_nonpositive(running_max[h] - new_max);  // ~0 on the first tile
      const __m256 shift = _mm256_set1_ps(new_max);
      for (int64_t j = 0; j < count; j += kLanes) {
        _mm256_storeu_ps(row + j, exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(row + j), shift)));
      }
      float tile_sum = 0.0f;
      for (int64_t j = 0; j < count; ++j) tile_sum += row[j];
      running_sum[h] = running_sum[h] * correction + tile_sum;
      running_max[h] = new_max;
      float* sums = acc.data() + h * dv;
      int64_t i = 0;
      for (; i + kValueChunks * kLanes <= dv; i += kValueChunks * kLanes) {
        accumulate<kValueChunks, T>(sums + i, row, values, count, i, correction);
      }
      for (; i < dv; i += kLanes) accumulate<1, T>(sums + i, row, values, count, i, correction);
    }
  }
  for (int64_t h = 0; h < groups; ++h) {
    const float inverse = length > 0 ? 1.0f / running_sum[h] : 0.0f;
    for (int64_t i = 0; i < dv; ++i) store(out + h * dv + i, acc[h * dv + i] * inverse);
  }
}

template <typename T>
void paged_decode_attention(const T* q, const T* k_cache, const T* v_cache, const int64_t* slots,
                            const int64_t* lengths, T* out, int64_t batch, int64_t slot_stride, const Shape& shape,
                            int threads) {
  const int64_t groups = shape.heads / shape.kv_heads;
  const int64_t blocks = (groups + shape.head_block - 1) / shape.head_block;  // per key/value head
#pragma omp parallel for collapse(3) schedule(dynamic, 1) num_threads(threads)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t g = 0; g < shape.kv_heads; ++g) {
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t first = block * shape.head_block;  // of this key/value head's query heads
        const int64_t head = b * shape.heads + g * groups + first;
        attend(q + head * shape.key_dim, k_cache, v_cache, slots + b * slot_stride, lengths[b], g,
               std::min(shape.head_block, groups - first), shape, out + head * shape.value_dim);
      }
    }
  }
}

}  // namespace

// q, k_cache, v_cache and out all FP32 (is_bf16 = 0) or all BF16 (is_bf16 = 1); the shapes are checked by the
// caller (kernels/paged_attention.py).
extern "C" void heavy_paged_decode_attention(const void* q, const void* k_cache, const void* v_cache,
                                             const int64_t* slots, const int64_t* lengths, void* out, int64_t batch,
                                             int64_t heads, int64_t kv_heads, int64_t key_dim, int64_t value_dim,
                                             int64_t row_stride, int64_t head_block, int64_t slot_stride,
                                             float scale, int threads, int is_bf16) {
  const Shape shape{heads, kv_heads, key_dim, value_dim, row_stride, head_block, scale};
  if (is_bf16) {
    paged_decode_attention(static_cast<const bf16*>(q), static_cast<const bf16*>(k_cache),
                           static_cast<const bf16*>(v_cache), slots, lengths, static_cast<bf16*>(out), batch,
                           slot_stride, shape, threads);
  } else {
    paged_decode_attention(static_cast<const float*>(q), static_cast<const float*>(k_cache),
                           static_cast<const float*>(v_cache), slots, lengths, static_cast<float*>(out), batch,
                           slot_stride, shape, threads);
  }
}
