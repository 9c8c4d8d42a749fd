// CUDA kernels of the multi-level and single-level RoIAlign and their C-ABI launchers.
//
// One launch covers every level: a block per RoI computes the RoI's level and sampling geometry
// once (shared memory), then its threads stride over the RoI's channels x bins. The per-sample
// math is the same header the CPU library uses (roialign_math.h); accumulation is float32.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "roialign_api.h"
#include "roialign_math.h"

namespace {

using maskrt::roialign::RoiSampling;

constexpr int kThreads = 256;

//! Level table passed by value: feature pointers and geometry of up to MAX_LEVELS levels.
struct Levels {
    void const* data[MASKRT_ROIALIGN_MAX_LEVELS];
    int height[MASKRT_ROIALIGN_MAX_LEVELS];
    int width[MASKRT_ROIALIGN_MAX_LEVELS];
    float scale[MASKRT_ROIALIGN_MAX_LEVELS];
    int count;
    int k_min;
    int k_max;
    float canonical_scale;
    int canonical_level;
};

__device__ __forceinline__ void store(float* out, long long i, float v) { out[i] = v; }
__device__ __forceinline__ void store(__half* out, long long i, float v) { out[i] = __float2half_rn(v); }

//! Pools the bins [threadIdx.x, per_roi) of one RoI whose geometry is in shared memory.
template <typename T>
__device__ void pool_roi(T const* image, int channels, int height, int width, RoiSampling const& s,
                         int pooled_h, int pooled_w, T* out) {
    int const bins = pooled_h * pooled_w;
    int const per_roi = channels * bins;
    long long const plane = static_cast<long long>(height) * width;
    for (int i = threadIdx.x; i < per_roi; i += blockDim.x) {
        int const c = i / bins;
        int const bin = i - c * bins;
        int const ph = bin / pooled_w;
        int const pw = bin - ph * pooled_w;
        float const v = maskrt::roialign::pool_bin(image + c * plane, height, width, s, ph, pw);
        store(out, i, v);
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) multilevel_kernel(Levels levels, float const* rois,
    int num_rois, int channels, int output_size, int sampling_ratio, int aligned, T* output) {
    __shared__ RoiSampling s_geom;
    __shared__ int s_level;
    long long const r = blockIdx.x;  // RoI index over batch * num_rois
    if (threadIdx.x == 0) {
        float const* box = rois + 4 * r;
        int const lvl = levels.count == 1 ? 0
            : maskrt::roialign::assign_level(box[0], box[1], box[2], box[3],
                  levels.canonical_scale, levels.canonical_level, levels.k_min, levels.k_max);
        s_level = lvl;
        if (lvl >= 0 && lvl < levels.count) {
            s_geom = maskrt::roialign::roi_sampling(box[0], box[1], box[2], box[3],
                levels.scale[lvl], output_size, output_size, sampling_ratio, aligned != 0,
                levels.height[lvl], levels.width[lvl]);
        }
    }
    __syncthreads();
    int const lvl = s_level;
    long long const per_roi = static_cast<long long>(channels) * output_size * output_size;
    T* out = output + r * per_roi;
    if (lvl < 0 || lvl >= levels.count) {
        for (int i = threadIdx.x; i < per_roi; i += blockDim.x) store(out, i, 0.0f);
        return;
    }
    int const h = levels.height[lvl];
    int const w = levels.width[lvl];
    long long const img = r / num_rois;
    T const* image = static_cast<T const*>(levels.data[lvl]) +
                     img * channels * static_cast<long long>(h) * w;
    RoiSampling const s = s_geom;
    pool_roi(image, channels, h, w, s, output_size, output_size, out);
}

//! R: float or __half RoIs. FP16 RoIs (FP16 graphs of other exporters) are read and widened here,
//! so the plugin needs no workspace for them.
template <typename T, typename R, typename I>
__global__ void __launch_bounds__(kThreads) single_kernel(T const* x, int batch, int channels,
    int height, int width, R const* rois, I const* batch_indices, int output_height,
    int output_width, int sampling_ratio, float spatial_scale, int aligned, T* output) {
    long long const r = blockIdx.x;
    long long const per_roi = static_cast<long long>(channels) * output_height * output_width;
    T* out = output + r * per_roi;
    long long const b = static_cast<long long>(batch_indices[r]);
    if (b < 0 || b >= batch) {
        for (int i = threadIdx.x; i < per_roi; i += blockDim.x) store(out, i, 0.0f);
        return;
    }
    R const* box = rois + 4 * r;
    using maskrt::roialign::to_float;
    RoiSampling const s = maskrt::roialign::roi_sampling(to_float(box[0]), to_float(box[1]),
        to_float(box[2]), to_float(box[3]), spatial_scale, output_height, output_width,
        sampling_ratio, aligned != 0, height, width);
    T const* image = x + b * channels * static_cast<long long>(height) * width;
    pool_roi(image, channels, height, width, s, output_height, output_width, out);
}

__global__ void half_to_float_kernel(__half const* src, float* dst, long long n) {
    long long const stride = static_cast<long long>(gridDim.x) * blockDim.x;
    for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
         i += stride) {
        dst[i] = __half2float(src[i]);
    }
}

int launch_status() {
    return cudaGetLastError() == cudaSuccess ? MASKRT_ROIALIGN_OK : MASKRT_ROIALIGN_ECUDA;
}

}  // namespace

extern "C" {

MASKRT_API int maskrt_roialign_cuda_multilevel(int dtype, int num_levels,
    void const* const* features, int const* heights, int const* widths, int batch, int channels,
    float const* rois, int num_rois, void* output, int output_size, int sampling_ratio, int aligned,
    float const* spatial_scales, float canonical_scale, int canonical_level, void* stream) {
    if (num_levels < 1 || num_levels > MASKRT_ROIALIGN_MAX_LEVELS || batch < 0 || num_rois < 0 ||
        channels < 1 || output_size < 1 || (dtype != 0 && dtype != 1)) {
        return MASKRT_ROIALIGN_EINVAL;
    }
    Levels levels{};
    for (int l = 0; l < num_levels; ++l) {
        if (heights[l] < 1 || widths[l] < 1 || !(spatial_scales[l] > 0.0f)) return MASKRT_ROIALIGN_EINVAL;
        levels.data[l] = features[l];
        levels.height[l] = heights[l];
        levels.width[l] = widths[l];
        levels.scale[l] = spatial_scales[l];
    }
    levels.count = num_levels;
    levels.k_min = maskrt::roialign::level_of_scale(spatial_scales[0]);
    levels.k_max = maskrt::roialign::level_of_scale(spatial_scales[num_levels - 1]);
    levels.canonical_scale = canonical_scale;
    levels.canonical_level = canonical_level;
    long long const blocks = static_cast<long long>(batch) * num_rois;
    if (blocks == 0) return MASKRT_ROIALIGN_OK;
    if (blocks > 0x7fffffffLL) return MASKRT_ROIALIGN_EINVAL;
    cudaStream_t const st = static_cast<cudaStream_t>(stream);
    if (dtype == 0) {
        multilevel_kernel<float><<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(levels, rois,
            num_rois, channels, output_size, sampling_ratio, aligned, static_cast<float*>(output));
    } else {
        multilevel_kernel<__half><<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(levels, rois,
            num_rois, channels, output_size, sampling_ratio, aligned, static_cast<__half*>(output));
    }
    return launch_status();
}

}  // extern "C"

namespace {

//! The single-level launch for float (rois_half = 0) or IEEE binary16 (1) RoIs.
int launch_single(int dtype, void const* x, int batch, int channels, int height, int width,
    void const* rois, int rois_half, void const* batch_indices, int batch_indices_int64,
    int num_rois, void* output, int output_height, int output_width, int sampling_ratio,
    float spatial_scale, int aligned, void* stream) {
    if (batch < 0 || num_rois < 0 || channels < 1 || height < 1 || width < 1 ||
        output_height < 1 || output_width < 1 || (dtype != 0 && dtype != 1)) {
        return MASKRT_ROIALIGN_EINVAL;
    }
    if (num_rois == 0) return MASKRT_ROIALIGN_OK;
    cudaStream_t const st = static_cast<cudaStream_t>(stream);
    unsigned const blocks = static_cast<unsigned>(num_rois);
#define MASKRT_LAUNCH_SINGLE(T, R, I)                                                              \
    single_kernel<T, R, I><<<blocks, kThreads, 0, st>>>(static_cast<T const*>(x), batch, channels, \
        height, width, static_cast<R const*>(rois), static_cast<I const*>(batch_indices),          \
        output_height, output_width, sampling_ratio, spatial_scale, aligned, static_cast<T*>(output))
#define MASKRT_LAUNCH_SINGLE_I(T, R)               \
    do {                                           \
        if (batch_indices_int64) {                 \
            MASKRT_LAUNCH_SINGLE(T, R, long long); \
        } else {                                   \
            MASKRT_LAUNCH_SINGLE(T, R, int);       \
        }                                          \
    } while (0)
    if (dtype == 0 && !rois_half) {
        MASKRT_LAUNCH_SINGLE_I(float, float);
    } else if (dtype == 0) {
        MASKRT_LAUNCH_SINGLE_I(float, __half);
    } else if (!rois_half) {
        MASKRT_LAUNCH_SINGLE_I(__half, float);
    } else {
        MASKRT_LAUNCH_SINGLE_I(__half, __half);
    }
#undef MASKRT_LAUNCH_SINGLE_I
#undef MASKRT_LAUNCH_SINGLE
    return launch_status();
}

}  // namespace

extern "C" {

MASKRT_API int maskrt_roialign_cuda_single(int dtype, void const* x, int batch, int channels,
    int height, int width, float const* rois, void const* batch_indices, int batch_indices_int64,
    int num_rois, void* output, int output_height, int output_width, int sampling_ratio,
    float spatial_scale, int aligned, void* stream) {
    return launch_single(dtype, x, batch, channels, height, width, rois, 0, batch_indices,
        batch_indices_int64, num_rois, output, output_height, output_width, sampling_ratio,
        spatial_scale, aligned, stream);
}

MASKRT_API int maskrt_roialign_cuda_single_half_rois(int dtype, void const* x, int batch,
    int channels, int height, int width, void const* rois, void const* batch_indices,
    int batch_indices_int64, int num_rois, void* output, int output_height, int output_width,
    int sampling_ratio, float spatial_scale, int aligned, void* stream) {
    return launch_single(dtype, x, batch, channels, height, width, rois, 1, batch_indices,
        batch_indices_int64, num_rois, output, output_height, output_width, sampling_ratio,
        spatial_scale, aligned, stream);
}

MASKRT_API int maskrt_roialign_cuda_half_to_float(void const* src, float* dst, long long n,
    void* stream) {
    if (n < 0) return MASKRT_ROIALIGN_EINVAL;
    if (n == 0) return MASKRT_ROIALIGN_OK;
    long long const wanted = (n + kThreads - 1) / kThreads;
    unsigned const blocks = static_cast<unsigned>(wanted < 4096 ? wanted : 4096);
    half_to_float_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<__half const*>(src), dst, n);
    return launch_status();
}

}  // extern "C"
