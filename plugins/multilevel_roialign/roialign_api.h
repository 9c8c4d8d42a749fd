// C ABI of the RoIAlign libraries: the CPU library (always built) and the CUDA launcher library
// (built when nvcc is found). Python loads them with ctypes; the TensorRT plugin calls the CUDA
// launchers from enqueue().
//
// Conventions shared by every entry point:
//   dtype            0 = float32 features/output, 1 = float16 (IEEE binary16) features/output
//   features[l]      pointer to level l, NCHW [batch, channels, heights[l], widths[l]]
//   rois             float32 [batch, num_rois, 4] (multi-level) or [num_rois, 4] (single),
//                    x1, y1, x2, y2 in input-image pixels
//   return value     0 on success, otherwise a MASKRT_ROIALIGN_E* code (see maskrt_roialign_strerror);
//                    no C++ exception ever leaves an entry point
#pragma once

#include <stdint.h>

#if defined(_WIN32)
#define MASKRT_API __declspec(dllexport)
#else
#define MASKRT_API __attribute__((visibility("default")))
#endif

#define MASKRT_ROIALIGN_OK 0
#define MASKRT_ROIALIGN_EINVAL 1       /* bad argument (sizes, dtype, number of levels) */
#define MASKRT_ROIALIGN_EBATCHINDEX 2  /* single-level mode: a batch index is out of range */
#define MASKRT_ROIALIGN_ECUDA 3        /* a CUDA launch failed */
#define MASKRT_ROIALIGN_ENOMEM 4       /* host memory ran out (std::bad_alloc, caught) */
#define MASKRT_ROIALIGN_EINTERNAL 5    /* any other C++ exception, caught at the C ABI */
/* contract.json's multilevel.max_levels; this header stands alone (the kernel compiles without
 * the generated contract header), and roialign_cpu.cpp asserts the two agree at compile time. */
#define MASKRT_ROIALIGN_MAX_LEVELS 8

/* Text of a MASKRT_ROIALIGN_E* code (inline so every library has it without linking another). */
static inline char const* maskrt_roialign_error_text(int code) {
    switch (code) {
        case MASKRT_ROIALIGN_OK: return "ok";
        case MASKRT_ROIALIGN_EINVAL: return "invalid argument (sizes, dtype or number of levels)";
        case MASKRT_ROIALIGN_EBATCHINDEX: return "a batch index is outside [0, batch)";
        case MASKRT_ROIALIGN_ECUDA: return "CUDA kernel launch failed";
        case MASKRT_ROIALIGN_ENOMEM: return "out of host memory";
        case MASKRT_ROIALIGN_EINTERNAL: return "internal error (a C++ exception was caught)";
        default: return "unknown error";
    }
}

#ifdef __cplusplus
extern "C" {
#endif

/* --- contract getters (values come from the generated roialign_contract.h) --- */
MASKRT_API char const* maskrt_plugin_namespace(void);
MASKRT_API char const* maskrt_plugin_name(void);
MASKRT_API char const* maskrt_plugin_version(void);
MASKRT_API char const* maskrt_plugin_field_names(void);        /* comma separated, in order */
MASKRT_API char const* maskrt_single_plugin_name(void);
MASKRT_API char const* maskrt_single_plugin_version(void);
MASKRT_API char const* maskrt_single_plugin_field_names(void); /* comma separated, in order */
MASKRT_API char const* maskrt_roialign_strerror(int code);

/* Multi-level RoIAlign (torchvision MultiScaleRoIAlign). output: [batch, num_rois, channels,
 * output_size, output_size]. num_threads <= 0: one per hardware thread. */
MASKRT_API int maskrt_roialign_cpu_multilevel(int dtype, int num_levels, void const* const* features,
    int const* heights, int const* widths, int batch, int channels, float const* rois, int num_rois,
    void* output, int output_size, int sampling_ratio, int aligned, float const* spatial_scales,
    float canonical_scale, int canonical_level, int num_threads);

/* Single-level RoIAlign with ONNX RoiAlign (avg mode) semantics. x: [batch, channels, height,
 * width]; rois float32 [num_rois, 4]; batch_indices int64 [num_rois]; output [num_rois, channels,
 * output_height, output_width]. aligned = 1 for coordinate_transformation_mode half_pixel. */
MASKRT_API int maskrt_roialign_cpu_single(int dtype, void const* x, int batch, int channels,
    int height, int width, float const* rois, int64_t const* batch_indices, int num_rois,
    void* output, int output_height, int output_width, int sampling_ratio, float spatial_scale,
    int aligned, int num_threads);

/* CUDA launchers (libmaskrt_roialign_cuda): same arguments, device pointers for features, rois,
 * batch_indices and output, host arrays for heights/widths/spatial_scales/feature pointers.
 * One kernel launch on `stream` (a cudaStream_t; NULL = default stream); asynchronous. */
MASKRT_API int maskrt_roialign_cuda_multilevel(int dtype, int num_levels, void const* const* features,
    int const* heights, int const* widths, int batch, int channels, float const* rois, int num_rois,
    void* output, int output_size, int sampling_ratio, int aligned, float const* spatial_scales,
    float canonical_scale, int canonical_level, void* stream);

/* batch_indices_int64 = 1 for int64 indices, 0 for int32. Out-of-range indices pool zeros. */
MASKRT_API int maskrt_roialign_cuda_single(int dtype, void const* x, int batch, int channels,
    int height, int width, float const* rois, void const* batch_indices, int batch_indices_int64,
    int num_rois, void* output, int output_height, int output_width, int sampling_ratio,
    float spatial_scale, int aligned, void* stream);

/* The same with IEEE binary16 RoIs [num_rois, 4] (FP16 graphs), read and widened to float32 in
 * the kernel: what the TensorRT plugin calls for FP16 RoIs (it needs no workspace). */
MASKRT_API int maskrt_roialign_cuda_single_half_rois(int dtype, void const* x, int batch,
    int channels, int height, int width, void const* rois, void const* batch_indices,
    int batch_indices_int64, int num_rois, void* output, int output_height, int output_width,
    int sampling_ratio, float spatial_scale, int aligned, void* stream);

/* dst[i] = (float)src[i] for n IEEE binary16 values (device pointers): FP16 RoIs become the
 * float32 RoIs the launchers take. One launch on `stream`; asynchronous. */
MASKRT_API int maskrt_roialign_cuda_half_to_float(void const* src, float* dst, long long n,
    void* stream);

#ifdef __cplusplus
}
#endif
