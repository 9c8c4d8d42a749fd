// Per-sample math of the multi-level RoIAlign, shared by the CPU library and the CUDA kernel.
//
// Everything here is a small inline function usable on host and device. The arithmetic follows
// torchvision's roi_align kernels and LevelMapper step by step, in float32 and in the same order,
// so that the level chosen for a box and the sampled values agree with torchvision.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MASKRT_HD __host__ __device__ __forceinline__
#include <cuda_fp16.h>
#else
#define MASKRT_HD inline
#endif

namespace maskrt {
namespace roialign {

// ----------------------------------------------------------------------------------------------
// Element loads: features are float32 or IEEE half; accumulation is always float32.

//! Raw IEEE binary16 bits; the CPU library reads fp16 features through this type.
struct HalfBits {
    uint16_t bits;
};

MASKRT_HD float to_float(float v) { return v; }

MASKRT_HD float to_float(HalfBits h) {
    // Exact binary16 -> binary32 conversion without relying on compiler half support.
    uint32_t const sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
    uint32_t exp = (h.bits >> 10) & 0x1fu;
    uint32_t mant = h.bits & 0x3ffu;
    uint32_t out;
    if (exp == 0x1fu) {
        out = sign | 0x7f800000u | (mant << 13);  // inf / nan
    } else if (exp != 0) {
        out = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        out = sign;  // signed zero
    } else {
        // subnormal half: normalise the mantissa
        exp = 113u;
        while ((mant & 0x400u) == 0) {
            mant <<= 1;
            --exp;
        }
        out = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
    }
    union {
        uint32_t u;
        float f;
    } bits;
    bits.u = out;
    return bits.f;
}

MASKRT_HD HalfBits half_from_float(float f) {
    // Round-to-nearest-even binary32 -> binary16 (used by the CPU library for fp16 outputs).
    union {
        float f;
        uint32_t u;
    } in;
    in.f = f;
    uint32_t const x = in.u;
    uint16_t const sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    uint32_t const absx = x & 0x7fffffffu;
    HalfBits h;
    if (absx >= 0x7f800000u) {  // inf or nan
        h.bits = static_cast<uint16_t>(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
        return h;
    }
    if (absx >= 0x477ff000u) {  // rounds to >= 65520 -> inf
        h.bits = static_cast<uint16_t>(sign | 0x7c00u);
        return h;
    }
    if (absx < 0x38800000u) {  // below the smallest normal half: subnormal or zero
        if (absx < 0x33000000u) {  // < 2^-25 rounds to zero
            h.bits = sign;
            return h;
        }
        uint32_t const e = absx >> 23;
        uint32_t const m = (absx & 0x7fffffu) | 0x800000u;
        uint32_t const shift = 126u - e;  // 14 + (113 - e) - 1
        uint32_t const val = m >> shift;
        uint32_t const rem = m & ((1u << shift) - 1u);
        uint32_t const half = 1u << (shift - 1u);
        uint32_t r = val;
        if (rem > half || (rem == half && (val & 1u))) {
            ++r;
        }
        h.bits = static_cast<uint16_t>(sign | r);
        return h;
    }
    uint32_t const mant = absx & 0x7fffffu;
    uint32_t r = ((absx >> 23) - 112u) << 10 | (mant >> 13);
    uint32_t const rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) {
        ++r;  // may carry into the exponent, which is the correct result
    }
    h.bits = static_cast<uint16_t>(sign | r);
    return h;
}

#if defined(__CUDACC__)
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
#endif

// ----------------------------------------------------------------------------------------------
// FPN level assignment (torchvision.ops.poolers.LevelMapper).

//! Pyramid level index k of a spatial scale 2^-k, truncated toward zero like torchvision's
//! ``int(-log2(scale))`` on a float32 scale.
MASKRT_HD int level_of_scale(float scale) {
    return static_cast<int>(-static_cast<float>(log2(static_cast<double>(scale))));
}

//! Index (0-based, into the list of levels) of the level that pools box (x1, y1, x2, y2), or -1
//! when torchvision assigns it no level (its area is negative or NaN: such boxes pool zeros).
//!
//! torchvision: lvl = floor(canonical_level + log2(sqrt(area) / canonical_scale) + 1e-6) in
//! float32, clamped to [k_min, k_max]. log2 is evaluated in double and rounded to float, which
//! matches torch's float32 log2 at every level boundary.
MASKRT_HD int assign_level(float x1, float y1, float x2, float y2, float canonical_scale,
                           int canonical_level, int k_min, int k_max) {
    float const area = (x2 - x1) * (y2 - y1);
    float const s = sqrtf(area);
    float const ratio = s / canonical_scale;
    float const lg = static_cast<float>(log2(static_cast<double>(ratio)));
    float lvl = static_cast<float>(canonical_level) + lg;
    lvl = lvl + 1e-6f;
    lvl = floorf(lvl);
    if (!(lvl == lvl)) {
        return -1;  // NaN: torchvision's level comparison never matches, the row stays zero
    }
    lvl = fminf(fmaxf(lvl, static_cast<float>(k_min)), static_cast<float>(k_max));
    return static_cast<int>(lvl) - k_min;
}

// ----------------------------------------------------------------------------------------------
// Sampling geometry of one RoI on one feature map (torchvision roi_align forward).

struct RoiSampling {
    float start_h;  //!< top of the RoI in feature-map pixels
    float start_w;  //!< left of the RoI in feature-map pixels
    float bin_h;    //!< height of one output bin
    float bin_w;    //!< width of one output bin
    int grid_h;     //!< sample rows per bin (0: the bin is empty and pools zero)
    int grid_w;     //!< sample columns per bin
    float count;    //!< divisor of the bin sum: max(grid_h * grid_w, 1)
};

//! Most adaptive sample rows (or columns) per bin on a map `extent` pixels high (or wide):
//! floor(extent / pooled) + 2 >= ceil(extent / pooled) + 1. A box inside the map spans at most
//! `extent` pixels (plus a float rounding of the aligned -0.5 shift), so torchvision's
//! ceil(roi / pooled) never exceeds this for it: the cap changes nothing there. It bounds the
//! work of huge, infinite or garbage boxes (TensorRT's timing runs feed uninitialised RoIs).
MASKRT_HD int max_adaptive_grid(int extent, int pooled) {
    int64_t const cap = static_cast<int64_t>(extent > 0 ? extent : 0) / (pooled > 0 ? pooled : 1) + 2;
    return cap < (int64_t{1} << 30) ? static_cast<int>(cap) : (1 << 30);
}

//! torchvision's adaptive grid ceil(roi / pooled), made total: NaN and sizes <= 0 give 0 (an
//! empty bin that pools zero, what torchvision's loops do for a size <= 0), and the result is at
//! most `cap`, so +-inf and 1e30 never reach a float -> int conversion out of range.
MASKRT_HD int adaptive_grid(float roi, int pooled, int cap) {
    float const g = ceilf(roi / static_cast<float>(pooled));
    if (!(g > 0.0f)) return 0;
    return g < static_cast<float>(cap) ? static_cast<int>(g) : cap;
}

//! Geometry of box (x1, y1, x2, y2) on a height x width map. Adaptive sampling (sampling_ratio
//! <= 0) is torchvision's grid, capped by max_adaptive_grid: identical for every box inside the
//! map, bounded work for any other (NaN boxes pool zero; see the plugin README's contract).
MASKRT_HD RoiSampling roi_sampling(float x1, float y1, float x2, float y2, float spatial_scale,
                                   int pooled_h, int pooled_w, int sampling_ratio, bool aligned,
                                   int height, int width) {
    float const offset = aligned ? 0.5f : 0.0f;
    RoiSampling s;
    s.start_w = x1 * spatial_scale - offset;
    s.start_h = y1 * spatial_scale - offset;
    float const end_w = x2 * spatial_scale - offset;
    float const end_h = y2 * spatial_scale - offset;
    float roi_w = end_w - s.start_w;
    float roi_h = end_h - s.start_h;
    if (!aligned) {
        // legacy (non-aligned) RoIAlign forces malformed RoIs to be at least 1x1; written as
        // torchvision's std::max(roi, 1), which keeps a NaN size NaN (fmaxf would make it 1 and
        // pool a 1x1 box at a NaN box's corner)
        if (roi_w < 1.0f) roi_w = 1.0f;
        if (roi_h < 1.0f) roi_h = 1.0f;
    }
    s.bin_h = roi_h / static_cast<float>(pooled_h);
    s.bin_w = roi_w / static_cast<float>(pooled_w);
    // adaptive: ceil(roi_size / pooled_size) samples per bin, as torchvision, capped
    s.grid_h = sampling_ratio > 0
        ? sampling_ratio
        : adaptive_grid(roi_h, pooled_h, max_adaptive_grid(height, pooled_h));
    s.grid_w = sampling_ratio > 0
        ? sampling_ratio
        : adaptive_grid(roi_w, pooled_w, max_adaptive_grid(width, pooled_w));
    int64_t const n = static_cast<int64_t>(s.grid_h) * s.grid_w;  // 2^30 squared fits
    s.count = static_cast<float>(n > 1 ? n : 1);
    return s;
}

//! y coordinate of sample row iy of bin row ph.
MASKRT_HD float sample_y(RoiSampling const& s, int ph, int iy) {
    return s.start_h + static_cast<float>(ph) * s.bin_h +
           static_cast<float>(iy + 0.5f) * s.bin_h / static_cast<float>(s.grid_h);
}

//! x coordinate of sample column ix of bin column pw.
MASKRT_HD float sample_x(RoiSampling const& s, int pw, int ix) {
    return s.start_w + static_cast<float>(pw) * s.bin_w +
           static_cast<float>(ix + 0.5f) * s.bin_w / static_cast<float>(s.grid_w);
}

// ----------------------------------------------------------------------------------------------
// Bilinear interpolation.

//! The four taps of one bilinear sample: flat offsets into an H*W plane and their weights.
struct BilinearTaps {
    int pos[4];
    float w[4];
};

//! Taps for the sample at (y, x) on an height x width plane. Samples more than one pixel
//! outside the map get zero weights; the rest are clamped to the border, as torchvision.
MASKRT_HD BilinearTaps bilinear_taps(int height, int width, float y, float x) {
    BilinearTaps t;
    // written as "not inside" so that a NaN coordinate (NaN box, 0 * inf) also pools zero
    // instead of reaching the float -> int conversions below (undefined for NaN)
    if (!(y >= -1.0f && y <= static_cast<float>(height) && x >= -1.0f &&
          x <= static_cast<float>(width))) {
        for (int i = 0; i < 4; ++i) {
            t.pos[i] = 0;
            t.w[i] = 0.0f;
        }
        return t;
    }
    if (y <= 0.0f) y = 0.0f;
    if (x <= 0.0f) x = 0.0f;
    int y_low = static_cast<int>(y);
    int x_low = static_cast<int>(x);
    int y_high, x_high;
    if (y_low >= height - 1) {
        y_high = y_low = height - 1;
        y = static_cast<float>(y_low);
    } else {
        y_high = y_low + 1;
    }
    if (x_low >= width - 1) {
        x_high = x_low = width - 1;
        x = static_cast<float>(x_low);
    } else {
        x_high = x_low + 1;
    }
    float const ly = y - static_cast<float>(y_low);
    float const lx = x - static_cast<float>(x_low);
    float const hy = 1.0f - ly;
    float const hx = 1.0f - lx;
    t.pos[0] = y_low * width + x_low;
    t.pos[1] = y_low * width + x_high;
    t.pos[2] = y_high * width + x_low;
    t.pos[3] = y_high * width + x_high;
    t.w[0] = hy * hx;
    t.w[1] = hy * lx;
    t.w[2] = ly * hx;
    t.w[3] = ly * lx;
    return t;
}

//! Weighted sum of the four taps on one plane, in torchvision's summation order.
template <typename T>
MASKRT_HD float apply_taps(T const* plane, BilinearTaps const& t) {
    return t.w[0] * to_float(plane[t.pos[0]]) + t.w[1] * to_float(plane[t.pos[1]]) +
           t.w[2] * to_float(plane[t.pos[2]]) + t.w[3] * to_float(plane[t.pos[3]]);
}

//! Average of the grid_h x grid_w bilinear samples of output bin (ph, pw) on one plane.
template <typename T>
MASKRT_HD float pool_bin(T const* plane, int height, int width, RoiSampling const& s, int ph,
                         int pw) {
    float acc = 0.0f;
    for (int iy = 0; iy < s.grid_h; ++iy) {
        float const y = sample_y(s, ph, iy);
        for (int ix = 0; ix < s.grid_w; ++ix) {
            float const x = sample_x(s, pw, ix);
            acc += apply_taps(plane, bilinear_taps(height, width, y, x));
        }
    }
    return acc / s.count;
}

}  // namespace roialign
}  // namespace maskrt
