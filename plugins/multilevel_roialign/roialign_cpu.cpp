// CPU implementation of the multi-level and single-level RoIAlign, exported with a C ABI.
// The per-sample math comes from roialign_math.h, shared with the CUDA kernel.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <new>
#include <thread>
#include <vector>

#include "roialign_api.h"
#include "roialign_contract.h"
#include "roialign_math.h"

// The C API's level limit is the contract's (contract.json, multilevel.max_levels).
static_assert(MASKRT_ROIALIGN_MAX_LEVELS == MASKRT_MULTILEVEL_MAX_LEVELS,
              "roialign_api.h's MASKRT_ROIALIGN_MAX_LEVELS differs from contract.json's max_levels");

namespace {

using maskrt::roialign::BilinearTaps;
using maskrt::roialign::HalfBits;
using maskrt::roialign::RoiSampling;

//! The MASKRT_ROIALIGN_E* code of the exception being handled (call inside a catch block).
int error_code_of_current_exception() {
    try {
        throw;
    } catch (std::bad_alloc const&) {
        return MASKRT_ROIALIGN_ENOMEM;
    } catch (...) {
        return MASKRT_ROIALIGN_EINTERNAL;
    }
}

//! Runs body(begin, end) over [0, n) split into contiguous chunks, one per thread, and returns
//! MASKRT_ROIALIGN_OK or the code of the first exception a chunk threw (an exception must not
//! leave a std::thread: that terminates the process). A thread that cannot be started leaves
//! its chunk to the calling thread.
template <typename F>
int parallel_chunks(int64_t n, int num_threads, F body) {
    if (n <= 0) return MASKRT_ROIALIGN_OK;
    int threads = num_threads > 0 ? num_threads : static_cast<int>(std::thread::hardware_concurrency());
    threads = std::max(1, std::min<int>(threads, static_cast<int>(std::min<int64_t>(n, 256))));
    std::atomic<int> error{MASKRT_ROIALIGN_OK};
    auto guarded = [&](int64_t b, int64_t e) {
        try {
            body(b, e);
        } catch (...) {
            int expected = MASKRT_ROIALIGN_OK;
            error.compare_exchange_strong(expected, error_code_of_current_exception());
        }
    };
    std::vector<std::thread> pool;
    int64_t const chunk = (n + threads - 1) / threads;
    try {
        pool.reserve(static_cast<size_t>(threads));
        for (int64_t b = chunk; b < n && pool.size() + 1 < static_cast<size_t>(threads); b += chunk) {
            pool.emplace_back(guarded, b, std::min(n, b + chunk));  // chunks 1, 2, ...
        }
    } catch (...) {  // a thread could not be started: its chunks run below, on this thread
    }
    guarded(0, std::min(n, chunk));
    int64_t const started_to = chunk * static_cast<int64_t>(pool.size() + 1);
    if (started_to < n) guarded(started_to, n);
    for (auto& th : pool) th.join();
    return error.load();
}

inline void store(float* out, int64_t i, float v) { out[i] = v; }
inline void store(HalfBits* out, int64_t i, float v) { out[i] = maskrt::roialign::half_from_float(v); }

//! Most bilinear taps cached per RoI (x 32 bytes: 8 MiB per thread). Adaptive sampling
//! (sampling_ratio 0) on a huge box asks for more; those RoIs compute their taps on the fly.
constexpr int64_t kMaxCachedTaps = int64_t{1} << 18;

//! Pools one RoI on one image of one level into out[channels, pooled_h, pooled_w]. The bilinear
//! taps depend only on the RoI, so they are computed once and reused for every channel, unless
//! there are more than kMaxCachedTaps: then each bin samples directly (the same arithmetic in
//! the same order, so the same values; slower, in bounded memory).
template <typename T>
void pool_roi(T const* image, int channels, int height, int width, RoiSampling const& s,
              int pooled_h, int pooled_w, T* out, std::vector<BilinearTaps>& taps) {
    int const gh = std::max(s.grid_h, 0);
    int const gw = std::max(s.grid_w, 0);
    int64_t const plane_size = static_cast<int64_t>(height) * width;
    // in double: pooled sizes and a fixed sampling_ratio are caller's ints, their product may
    // not fit 64 bits
    if (static_cast<double>(pooled_h) * pooled_w * gh * gw > static_cast<double>(kMaxCachedTaps)) {
        for (int c = 0; c < channels; ++c) {
            T const* src = image + c * plane_size;
            T* dst = out + static_cast<int64_t>(c) * pooled_h * pooled_w;
            for (int ph = 0; ph < pooled_h; ++ph) {
                for (int pw = 0; pw < pooled_w; ++pw) {
                    store(dst, ph * pooled_w + pw,
                          maskrt::roialign::pool_bin(src, height, width, s, ph, pw));
                }
            }
        }
        return;
    }
    taps.clear();
    for (int ph = 0; ph < pooled_h; ++ph) {
        for (int pw = 0; pw < pooled_w; ++pw) {
            for (int iy = 0; iy < gh; ++iy) {
                float const y = maskrt::roialign::sample_y(s, ph, iy);
                for (int ix = 0; ix < gw; ++ix) {
                    float const x = maskrt::roialign::sample_x(s, pw, ix);
                    taps.push_back(maskrt::roialign::bilinear_taps(height, width, y, x));
                }
            }
        }
    }
    int64_t const per_bin = static_cast<int64_t>(gh) * gw;
    for (int c = 0; c < channels; ++c) {
        T const* src = image + c * plane_size;
        T* dst = out + static_cast<int64_t>(c) * pooled_h * pooled_w;
        BilinearTaps const* t = taps.data();
        for (int bin = 0; bin < pooled_h * pooled_w; ++bin) {
            float acc = 0.0f;
            for (int64_t k = 0; k < per_bin; ++k, ++t) {
                acc += maskrt::roialign::apply_taps(src, *t);
            }
            store(dst, bin, acc / s.count);
        }
    }
}

template <typename T>
void store_zeros(T* out, int64_t n) {
    std::memset(static_cast<void*>(out), 0, sizeof(T) * static_cast<size_t>(n));
}

template <typename T>
int multilevel(int num_levels, void const* const* features, int const* heights, int const* widths,
               int batch, int channels, float const* rois, int num_rois, void* output,
               int output_size, int sampling_ratio, int aligned, float const* scales,
               float canonical_scale, int canonical_level, int num_threads) {
    int const k_min = maskrt::roialign::level_of_scale(scales[0]);
    int const k_max = maskrt::roialign::level_of_scale(scales[num_levels - 1]);
    int64_t const per_roi = static_cast<int64_t>(channels) * output_size * output_size;
    T* out = static_cast<T*>(output);
    return parallel_chunks(static_cast<int64_t>(batch) * num_rois, num_threads, [&](int64_t b, int64_t e) {
        std::vector<BilinearTaps> taps;
        for (int64_t r = b; r < e; ++r) {
            int64_t const img = r / num_rois;
            float const* box = rois + 4 * r;
            // a single level takes every box, as torchvision (no level mapping at all)
            int const lvl = num_levels == 1 ? 0
                : maskrt::roialign::assign_level(box[0], box[1], box[2], box[3], canonical_scale,
                                                 canonical_level, k_min, k_max);
            if (lvl < 0 || lvl >= num_levels) {
                store_zeros(out + r * per_roi, per_roi);
                continue;
            }
            RoiSampling const s = maskrt::roialign::roi_sampling(box[0], box[1], box[2], box[3],
                scales[lvl], output_size, output_size, sampling_ratio, aligned != 0,
                heights[lvl], widths[lvl]);
            int64_t const plane = static_cast<int64_t>(heights[lvl]) * widths[lvl];
            T const* image = static_cast<T const*>(features[lvl]) + img * channels * plane;
            pool_roi(image, channels, heights[lvl], widths[lvl], s, output_size, output_size,
                     out + r * per_roi, taps);
        }
    });
}

template <typename T>
int single(void const* x, int batch, int channels, int height, int width, float const* rois,
           int64_t const* batch_indices, int num_rois, void* output, int output_height,
           int output_width, int sampling_ratio, float spatial_scale, int aligned, int num_threads) {
    for (int r = 0; r < num_rois; ++r) {
        if (batch_indices[r] < 0 || batch_indices[r] >= batch) return MASKRT_ROIALIGN_EBATCHINDEX;
    }
    int64_t const plane = static_cast<int64_t>(height) * width;
    int64_t const per_roi = static_cast<int64_t>(channels) * output_height * output_width;
    T* out = static_cast<T*>(output);
    return parallel_chunks(num_rois, num_threads, [&](int64_t b, int64_t e) {
        std::vector<BilinearTaps> taps;
        for (int64_t r = b; r < e; ++r) {
            float const* box = rois + 4 * r;
            RoiSampling const s = maskrt::roialign::roi_sampling(box[0], box[1], box[2], box[3],
                spatial_scale, output_height, output_width, sampling_ratio, aligned != 0, height,
                width);
            T const* image = static_cast<T const*>(x) + batch_indices[r] * channels * plane;
            pool_roi(image, channels, height, width, s, output_height, output_width,
                     out + r * per_roi, taps);
        }
    });
}

}  // namespace

extern "C" {

char const* maskrt_plugin_namespace(void) { return MASKRT_PLUGIN_NAMESPACE; }
char const* maskrt_plugin_name(void) { return MASKRT_MULTILEVEL_PLUGIN_NAME; }
char const* maskrt_plugin_version(void) { return MASKRT_MULTILEVEL_PLUGIN_VERSION; }
char const* maskrt_plugin_field_names(void) { return MASKRT_MULTILEVEL_FIELD_NAMES; }
char const* maskrt_single_plugin_name(void) { return MASKRT_SINGLE_PLUGIN_NAME; }
char const* maskrt_single_plugin_version(void) { return MASKRT_SINGLE_PLUGIN_VERSION; }
char const* maskrt_single_plugin_field_names(void) { return MASKRT_SINGLE_FIELD_NAMES; }

char const* maskrt_roialign_strerror(int code) { return maskrt_roialign_error_text(code); }

int maskrt_roialign_cpu_multilevel(int dtype, int num_levels, void const* const* features,
    int const* heights, int const* widths, int batch, int channels, float const* rois, int num_rois,
    void* output, int output_size, int sampling_ratio, int aligned, float const* spatial_scales,
    float canonical_scale, int canonical_level, int num_threads) {
    if (num_levels < 1 || num_levels > MASKRT_ROIALIGN_MAX_LEVELS || batch < 0 || num_rois < 0 ||
        channels < 1 || output_size < 1 || (dtype != 0 && dtype != 1)) {
        return MASKRT_ROIALIGN_EINVAL;
    }
    for (int l = 0; l < num_levels; ++l) {
        if (heights[l] < 1 || widths[l] < 1 || !(spatial_scales[l] > 0.0f)) return MASKRT_ROIALIGN_EINVAL;
    }
    try {
        if (dtype == 0) {
            return multilevel<float>(num_levels, features, heights, widths, batch, channels, rois,
                num_rois, output, output_size, sampling_ratio, aligned, spatial_scales,
                canonical_scale, canonical_level, num_threads);
        }
        return multilevel<HalfBits>(num_levels, features, heights, widths, batch, channels, rois,
            num_rois, output, output_size, sampling_ratio, aligned, spatial_scales,
            canonical_scale, canonical_level, num_threads);
    } catch (...) {
        return error_code_of_current_exception();
    }
}

int maskrt_roialign_cpu_single(int dtype, void const* x, int batch, int channels, int height,
    int width, float const* rois, int64_t const* batch_indices, int num_rois, void* output,
    int output_height, int output_width, int sampling_ratio, float spatial_scale, int aligned,
    int num_threads) {
    if (batch < 0 || num_rois < 0 || channels < 1 || height < 1 || width < 1 ||
        output_height < 1 || output_width < 1 || (dtype != 0 && dtype != 1)) {
        return MASKRT_ROIALIGN_EINVAL;
    }
    try {
        if (dtype == 0) {
            return single<float>(x, batch, channels, height, width, rois, batch_indices,
                num_rois, output, output_height, output_width, sampling_ratio, spatial_scale,
                aligned, num_threads);
        }
        return single<HalfBits>(x, batch, channels, height, width, rois, batch_indices, num_rois,
            output, output_height, output_width, sampling_ratio, spatial_scale, aligned,
            num_threads);
    } catch (...) {
        return error_code_of_current_exception();
    }
}

}  // extern "C"
