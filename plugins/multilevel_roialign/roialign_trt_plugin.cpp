// TensorRT IPluginV3 plugins of the maskrt RoIAlign:
//   MultilevelRoIAlign_MASKRT  inputs P_1..P_L [B,C,H_l,W_l], rois [B,N,4] -> [B,N,C,P,P]
//   RoIAlign_MASKRT            inputs X [B,C,H,W], rois [R,4], batch_indices [R] -> [R,C,oh,ow]
// Names, version, namespace and field names come from the generated roialign_contract.h.
// enqueue() calls the same C-ABI CUDA launchers that the Python tests exercise.
//
// One source, two libraries (plugins/CMakeLists.txt), each with one way of reaching TensorRT's
// registry, as NVIDIA splits its own plugins (plugin/CMakeLists.txt: libnvinfer_vc_plugin
// exports getCreators/setLoggerFinder and links no libnvinfer; libnvinfer_plugin links it):
//  * libmaskrt_roialign_trt.so: getCreators/setLoggerFinder for IPluginRegistry::loadLibrary.
//    It never calls into a registry and links no libnvinfer.
//  * libmaskrt_roialign_trt_autoreg.so (MASKRT_TRT_REGISTER_ON_LOAD): links libnvinfer and
//    registers both creators while it is opened, for loaders that only dlopen it. It exports no
//    getCreators, so loadLibrary cannot take it.
// A build serves the TensorRT major of its headers: both libraries compare it with the loaded
// libnvinfer's getInferLibMajorVersion() and do nothing (one line on stderr) on a mismatch.
#include <NvInferRuntime.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__linux__)
#include <dlfcn.h>
#include <link.h>
#endif

#include "roialign_api.h"
#include "roialign_contract.h"

namespace {

using namespace nvinfer1;

ILoggerFinder* g_logger_finder = nullptr;

//! To TensorRT's logger when the loader gave us one (setLoggerFinder), else to stderr: a
//! library loaded with ctypes/dlopen before any logger exists must not fail silently.
void log_error(std::string const& msg) noexcept {
    char const* const prefix = "maskrt RoIAlign plugin: ";
    ILogger* logger = g_logger_finder != nullptr ? g_logger_finder->findLogger() : nullptr;
    if (logger != nullptr) {
        try {
            logger->log(ILogger::Severity::kERROR, (prefix + msg).c_str());
            return;
        } catch (...) {  // the message could not be built: say it plainly below
        }
    }
    std::fprintf(stderr, "%s%s\n", prefix, msg.c_str());
}

// --- plugin fields ----------------------------------------------------------------------------

int32_t field_int(PluginField const& f) {
    if (f.length < 1 || f.data == nullptr) throw std::invalid_argument(std::string(f.name) + ": empty");
    switch (f.type) {
        case PluginFieldType::kINT32: return *static_cast<int32_t const*>(f.data);
        case PluginFieldType::kINT64: return static_cast<int32_t>(*static_cast<int64_t const*>(f.data));
        default: throw std::invalid_argument(std::string(f.name) + ": expected an int32 field");
    }
}

std::vector<float> field_floats(PluginField const& f) {
    if (f.length < 1 || f.data == nullptr) throw std::invalid_argument(std::string(f.name) + ": empty");
    std::vector<float> out(static_cast<size_t>(f.length));
    for (int32_t i = 0; i < f.length; ++i) {
        switch (f.type) {
            case PluginFieldType::kFLOAT32: out[i] = static_cast<float const*>(f.data)[i]; break;
            case PluginFieldType::kFLOAT64: out[i] = static_cast<float>(static_cast<double const*>(f.data)[i]); break;
            default: throw std::invalid_argument(std::string(f.name) + ": expected a float32 field");
        }
    }
    return out;
}

bool is(PluginField const& f, char const* name) { return f.name != nullptr && std::strcmp(f.name, name) == 0; }

struct MultilevelParams {
    int32_t output_size = MASKRT_MULTILEVEL_DEFAULT_OUTPUT_SIZE;
    int32_t sampling_ratio = MASKRT_MULTILEVEL_DEFAULT_SAMPLING_RATIO;
    int32_t aligned = MASKRT_MULTILEVEL_DEFAULT_ALIGNED;
    std::vector<float> spatial_scales{MASKRT_MULTILEVEL_DEFAULT_SPATIAL_SCALES};
    int32_t canonical_scale = MASKRT_MULTILEVEL_DEFAULT_CANONICAL_SCALE;
    int32_t canonical_level = MASKRT_MULTILEVEL_DEFAULT_CANONICAL_LEVEL;

    static MultilevelParams parse(PluginFieldCollection const* fc) {
        MultilevelParams p;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
            PluginField const& f = fc->fields[i];
            if (is(f, MASKRT_MULTILEVEL_FIELD_OUTPUT_SIZE)) p.output_size = field_int(f);
            else if (is(f, MASKRT_MULTILEVEL_FIELD_SAMPLING_RATIO)) p.sampling_ratio = field_int(f);
            else if (is(f, MASKRT_MULTILEVEL_FIELD_ALIGNED)) p.aligned = field_int(f);
            else if (is(f, MASKRT_MULTILEVEL_FIELD_SPATIAL_SCALES)) p.spatial_scales = field_floats(f);
            else if (is(f, MASKRT_MULTILEVEL_FIELD_CANONICAL_SCALE)) p.canonical_scale = field_int(f);
            else if (is(f, MASKRT_MULTILEVEL_FIELD_CANONICAL_LEVEL)) p.canonical_level = field_int(f);
            // unknown fields (e.g. plugin_version passed through by a parser) are ignored
        }
        if (p.output_size < 1) throw std::invalid_argument("output_size must be >= 1");
        if (p.spatial_scales.empty() || p.spatial_scales.size() > MASKRT_ROIALIGN_MAX_LEVELS) {
            throw std::invalid_argument(
                "spatial_scales needs 1.." + std::to_string(MASKRT_ROIALIGN_MAX_LEVELS) + " levels");
        }
        for (float s : p.spatial_scales) {
            if (!(s > 0.0f)) throw std::invalid_argument("spatial_scales must be > 0");
        }
        // the level of a box divides by it (torchvision's LevelMapper)
        if (p.canonical_scale < 1) throw std::invalid_argument("canonical_scale must be >= 1");
        return p;
    }

    //! Points `fields` at this object's members (valid while it lives).
    void expose(std::vector<PluginField>& fields) const {
        fields.clear();
        fields.emplace_back(MASKRT_MULTILEVEL_FIELD_OUTPUT_SIZE, &output_size, PluginFieldType::kINT32, 1);
        fields.emplace_back(MASKRT_MULTILEVEL_FIELD_SAMPLING_RATIO, &sampling_ratio, PluginFieldType::kINT32, 1);
        fields.emplace_back(MASKRT_MULTILEVEL_FIELD_ALIGNED, &aligned, PluginFieldType::kINT32, 1);
        fields.emplace_back(MASKRT_MULTILEVEL_FIELD_SPATIAL_SCALES, spatial_scales.data(),
                            PluginFieldType::kFLOAT32, static_cast<int32_t>(spatial_scales.size()));
        fields.emplace_back(MASKRT_MULTILEVEL_FIELD_CANONICAL_SCALE, &canonical_scale, PluginFieldType::kINT32, 1);
        fields.emplace_back(MASKRT_MULTILEVEL_FIELD_CANONICAL_LEVEL, &canonical_level, PluginFieldType::kINT32, 1);
    }
};

struct SingleParams {
    int32_t output_height = MASKRT_SINGLE_DEFAULT_OUTPUT_HEIGHT;
    int32_t output_width = MASKRT_SINGLE_DEFAULT_OUTPUT_WIDTH;
    int32_t sampling_ratio = MASKRT_SINGLE_DEFAULT_SAMPLING_RATIO;
    float spatial_scale = MASKRT_SINGLE_DEFAULT_SPATIAL_SCALE;
    int32_t aligned = MASKRT_SINGLE_DEFAULT_ALIGNED;

    static SingleParams parse(PluginFieldCollection const* fc) {
        SingleParams p;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
            PluginField const& f = fc->fields[i];
            if (is(f, MASKRT_SINGLE_FIELD_OUTPUT_HEIGHT)) p.output_height = field_int(f);
            else if (is(f, MASKRT_SINGLE_FIELD_OUTPUT_WIDTH)) p.output_width = field_int(f);
            else if (is(f, MASKRT_SINGLE_FIELD_SAMPLING_RATIO)) p.sampling_ratio = field_int(f);
            else if (is(f, MASKRT_SINGLE_FIELD_SPATIAL_SCALE)) p.spatial_scale = field_floats(f)[0];
            else if (is(f, MASKRT_SINGLE_FIELD_ALIGNED)) p.aligned = field_int(f);
        }
        if (p.output_height < 1 || p.output_width < 1) throw std::invalid_argument("output size must be >= 1");
        if (!(p.spatial_scale > 0.0f)) throw std::invalid_argument("spatial_scale must be > 0");
        return p;
    }

    void expose(std::vector<PluginField>& fields) const {
        fields.clear();
        fields.emplace_back(MASKRT_SINGLE_FIELD_OUTPUT_HEIGHT, &output_height, PluginFieldType::kINT32, 1);
        fields.emplace_back(MASKRT_SINGLE_FIELD_OUTPUT_WIDTH, &output_width, PluginFieldType::kINT32, 1);
        fields.emplace_back(MASKRT_SINGLE_FIELD_SAMPLING_RATIO, &sampling_ratio, PluginFieldType::kINT32, 1);
        fields.emplace_back(MASKRT_SINGLE_FIELD_SPATIAL_SCALE, &spatial_scale, PluginFieldType::kFLOAT32, 1);
        fields.emplace_back(MASKRT_SINGLE_FIELD_ALIGNED, &aligned, PluginFieldType::kINT32, 1);
    }
};

bool is_float_linear(PluginTensorDesc const& d) {
    return (d.type == DataType::kFLOAT || d.type == DataType::kHALF) && d.format == TensorFormat::kLINEAR;
}

int dtype_code(DataType t) { return t == DataType::kHALF ? 1 : 0; }

// --- the plugins --------------------------------------------------------------------------------

//! Shared IPluginV3 plumbing: capability dispatch, naming, serialisation of Params' fields.
template <typename Params>
class RoIAlignPluginBase : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild,
                           public IPluginV3OneRuntime {
public:
    explicit RoIAlignPluginBase(Params params) : mParams(std::move(params)) {}

    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    AsciiChar const* getPluginNamespace() const noexcept override { return MASKRT_PLUGIN_NAMESPACE; }
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbOutputs != 1 || nbInputs < 1) return -1;
        outputTypes[0] = inputTypes[0];  // output has the features' type
        return 0;
    }

    int32_t configurePlugin(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                            int32_t) noexcept override {
        return 0;
    }

    int32_t onShapeChange(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) noexcept override {
        return 0;
    }

    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        try {
            mParams.expose(mFields);
        } catch (std::exception const& e) {  // no exception may leave a TensorRT entry point
            log_error(e.what());
            return nullptr;
        }
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
        return &mCollection;
    }

protected:
    Params mParams;
    std::vector<PluginField> mFields;
    PluginFieldCollection mCollection{};
};

class MultilevelRoIAlignPlugin final : public RoIAlignPluginBase<MultilevelParams> {
public:
    using RoIAlignPluginBase::RoIAlignPluginBase;

    AsciiChar const* getPluginName() const noexcept override { return MASKRT_MULTILEVEL_PLUGIN_NAME; }
    AsciiChar const* getPluginVersion() const noexcept override { return MASKRT_MULTILEVEL_PLUGIN_VERSION; }

    IPluginV3* clone() noexcept override {
        try {
            return new MultilevelRoIAlignPlugin(mParams);
        } catch (std::exception const& e) {
            log_error(e.what());
            return nullptr;
        }
    }

    int32_t levels() const { return static_cast<int32_t>(mParams.spatial_scales.size()); }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                            DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
        if (nbInputs != levels() + 1 || nbOutputs != 1) {
            log_error("expects one input per spatial scale plus rois");
            return -1;
        }
        DimsExprs const& rois = inputs[levels()];
        if (rois.nbDims != 3 || inputs[0].nbDims != 4) {
            log_error("features must be [B,C,H,W] and rois [B,N,4]");
            return -1;
        }
        outputs[0].nbDims = 5;  // [B, N, C, P, P]
        outputs[0].d[0] = rois.d[0];
        outputs[0].d[1] = rois.d[1];
        outputs[0].d[2] = inputs[0].d[1];
        outputs[0].d[3] = exprBuilder.constant(mParams.output_size);
        outputs[0].d[4] = exprBuilder.constant(mParams.output_size);
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (nbInputs != levels() + 1 || nbOutputs != 1 || pos < 0 || pos > nbInputs) return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (pos < levels()) {  // every level has the type of the first one
            return is_float_linear(d) && (pos == 0 || d.type == inOut[0].desc.type);
        }
        if (pos == levels()) return d.type == DataType::kFLOAT && d.format == TensorFormat::kLINEAR;
        return d.type == inOut[0].desc.type && d.format == TensorFormat::kLINEAR;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                    void* const* outputs, void*, cudaStream_t stream) noexcept override {
        int32_t const L = levels();
        int heights[MASKRT_ROIALIGN_MAX_LEVELS];
        int widths[MASKRT_ROIALIGN_MAX_LEVELS];
        for (int32_t l = 0; l < L; ++l) {
            heights[l] = static_cast<int>(inputDesc[l].dims.d[2]);
            widths[l] = static_cast<int>(inputDesc[l].dims.d[3]);
        }
        PluginTensorDesc const& rois = inputDesc[L];
        int const rc = maskrt_roialign_cuda_multilevel(dtype_code(inputDesc[0].type), L, inputs, heights,
            widths, static_cast<int>(rois.dims.d[0]), static_cast<int>(inputDesc[0].dims.d[1]),
            static_cast<float const*>(inputs[L]), static_cast<int>(rois.dims.d[1]), outputs[0],
            mParams.output_size, mParams.sampling_ratio, mParams.aligned, mParams.spatial_scales.data(),
            static_cast<float>(mParams.canonical_scale), mParams.canonical_level, stream);
        if (rc != MASKRT_ROIALIGN_OK) log_error(maskrt_roialign_error_text(rc));
        return rc == MASKRT_ROIALIGN_OK ? 0 : -1;
    }
};

class SingleRoIAlignPlugin final : public RoIAlignPluginBase<SingleParams> {
public:
    using RoIAlignPluginBase::RoIAlignPluginBase;

    AsciiChar const* getPluginName() const noexcept override { return MASKRT_SINGLE_PLUGIN_NAME; }
    AsciiChar const* getPluginVersion() const noexcept override { return MASKRT_SINGLE_PLUGIN_VERSION; }

    IPluginV3* clone() noexcept override {
        try {
            return new SingleRoIAlignPlugin(mParams);
        } catch (std::exception const& e) {
            log_error(e.what());
            return nullptr;
        }
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
                            DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
        if (nbInputs != 3 || nbOutputs != 1 || inputs[0].nbDims != 4 || inputs[1].nbDims != 2) {
            log_error("expects X [B,C,H,W], rois [R,4], batch_indices [R]");
            return -1;
        }
        outputs[0].nbDims = 4;  // [R, C, output_height, output_width]
        outputs[0].d[0] = inputs[1].d[0];
        outputs[0].d[1] = inputs[0].d[1];
        outputs[0].d[2] = exprBuilder.constant(mParams.output_height);
        outputs[0].d[3] = exprBuilder.constant(mParams.output_width);
        return 0;
    }

    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (nbInputs != 3 || nbOutputs != 1 || pos < 0 || pos > 3) return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        switch (pos) {
            case 0: return is_float_linear(d);
            case 1: return is_float_linear(d);  // FP16 RoIs (other exporters) pool in FP32
            case 2: return d.type == DataType::kINT32 || d.type == DataType::kINT64;
            default: return d.type == inOut[0].desc.type;
        }
    }

    //! No workspace: FP16 RoIs are read (and widened to FP32) by the kernel itself, so nothing
    //! depends on the RoI count's upper bound, which TensorRT may not know.
    size_t getWorkspaceSize(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                            int32_t) const noexcept override {
        return 0;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                    void* const* outputs, void*, cudaStream_t stream) noexcept override {
        Dims const& x = inputDesc[0].dims;
        int const dtype = dtype_code(inputDesc[0].type);
        int const idx64 = inputDesc[2].type == DataType::kINT64 ? 1 : 0;
        int const n = static_cast<int>(inputDesc[1].dims.d[0]);
        int const b = static_cast<int>(x.d[0]), c = static_cast<int>(x.d[1]);
        int const h = static_cast<int>(x.d[2]), w = static_cast<int>(x.d[3]);
        SingleParams const& p = mParams;
        int const rc = inputDesc[1].type == DataType::kHALF
            ? maskrt_roialign_cuda_single_half_rois(dtype, inputs[0], b, c, h, w, inputs[1], inputs[2],
                  idx64, n, outputs[0], p.output_height, p.output_width, p.sampling_ratio,
                  p.spatial_scale, p.aligned, stream)
            : maskrt_roialign_cuda_single(dtype, inputs[0], b, c, h, w,
                  static_cast<float const*>(inputs[1]), inputs[2], idx64, n, outputs[0],
                  p.output_height, p.output_width, p.sampling_ratio, p.spatial_scale, p.aligned,
                  stream);
        if (rc != MASKRT_ROIALIGN_OK) log_error(maskrt_roialign_error_text(rc));
        return rc == MASKRT_ROIALIGN_OK ? 0 : -1;
    }
};

// --- creators -----------------------------------------------------------------------------------

template <typename Plugin, typename Params>
class RoIAlignCreator final : public IPluginCreatorV3One {
public:
    RoIAlignCreator(char const* name, char const* version) : mName(name), mVersion(version) {
        Params().expose(mFields);
        for (auto& f : mFields) f.data = nullptr;  // advertise names, types and lengths only
        mCollection.nbFields = static_cast<int32_t>(mFields.size());
        mCollection.fields = mFields.data();
    }

    AsciiChar const* getPluginName() const noexcept override { return mName; }
    AsciiChar const* getPluginVersion() const noexcept override { return mVersion; }
    AsciiChar const* getPluginNamespace() const noexcept override { return MASKRT_PLUGIN_NAMESPACE; }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mCollection; }

    IPluginV3* createPlugin(AsciiChar const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
        try {
            return new Plugin(Params::parse(fc));
        } catch (std::exception const& e) {
            log_error(std::string(mName) + ": " + e.what());
            return nullptr;
        }
    }

private:
    char const* mName;
    char const* mVersion;
    std::vector<PluginField> mFields;
    PluginFieldCollection mCollection{};
};

}  // namespace

// --- library entry points ----------------------------------------------------------------------
// Which loader takes which library, with NVIDIA's sources: plugins/multilevel_roialign/README.md.

namespace {

IPluginCreatorInterface* const* creator_list(int32_t& count) {
    static RoIAlignCreator<MultilevelRoIAlignPlugin, MultilevelParams> multilevel(
        MASKRT_MULTILEVEL_PLUGIN_NAME, MASKRT_MULTILEVEL_PLUGIN_VERSION);
    static RoIAlignCreator<SingleRoIAlignPlugin, SingleParams> single(
        MASKRT_SINGLE_PLUGIN_NAME, MASKRT_SINGLE_PLUGIN_VERSION);
    static IPluginCreatorInterface* const creators[] = {&multilevel, &single};
    count = 2;
    return creators;
}

//! The one line a major mismatch prints: IPluginRegistry's V3 methods sit at other vtable slots
//! in another major (10.x still declares four V2 methods before them; 11 removed them), and the
//! plugin interfaces are compiled for this one.
void report_major_mismatch(int32_t loaded) noexcept {
    std::fprintf(stderr,
                 "maskrt RoIAlign plugin: built for TensorRT %d but the loaded libnvinfer is TensorRT "
                 "%d; no plugin registered (rebuild maskrt against TensorRT %d headers)\n",
                 static_cast<int>(NV_TENSORRT_MAJOR), static_cast<int>(loaded), static_cast<int>(loaded));
}

#if defined(MASKRT_TRT_REGISTER_ON_LOAD)
//! Registers all n creators or, when one is refused, none (undoes the ones before it).
bool register_all(IPluginRegistry& registry, IPluginCreatorInterface* const* creators, int32_t n) {
    for (int32_t i = 0; i < n; ++i) {
        if (!registry.registerCreator(*creators[i], MASKRT_PLUGIN_NAMESPACE)) {
            for (int32_t j = 0; j < i; ++j) registry.deregisterCreator(*creators[j]);
            return false;
        }
    }
    return true;
}

//! The libnvinfer this library is linked to is in the process before this runs (it is a
//! dependency), whatever opened the library and in which order: ctypes.CDLL, polygraphy
//! --plugins, trtexec --staticPlugins, Triton's plugins= or LD_PRELOAD.
struct RegisterAtLoad {
    RegisterAtLoad() noexcept {
        int32_t const loaded = getInferLibMajorVersion();
        if (loaded != NV_TENSORRT_MAJOR) {  // compare before any virtual call into the registry
            report_major_mismatch(loaded);
            return;
        }
        IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr) {
            log_error("libnvinfer returned no plugin registry; nothing registered");
            return;
        }
        try {  // an exception here would abort the process inside dlopen
            int32_t n = 0;
            IPluginCreatorInterface* const* creators = creator_list(n);
            if (!register_all(*registry, creators, n)) {
                log_error("TensorRT refused a creator (already registered?); none registered");
            }
        } catch (std::exception const& e) {
            log_error(std::string("registering the creators failed: ") + e.what());
        }
    }
} const g_register_at_load;

#elif defined(__linux__)
//! Major of the libnvinfer loaded in this process, or 0 where none is (or it cannot say). The
//! objects are walked by file name because Python's `import tensorrt` loads it privately.
int32_t loaded_nvinfer_major() noexcept {
    std::string path;
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* out) -> int {
            char const* name = info->dlpi_name != nullptr ? info->dlpi_name : "";
            char const* base = std::strrchr(name, '/');
            base = base != nullptr ? base + 1 : name;
            if (std::strncmp(base, "libnvinfer.so", 13) != 0) return 0;
            *static_cast<std::string*>(out) = name;
            return 1;
        },
        &path);
    if (path.empty()) return 0;
    void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
    if (handle == nullptr) return 0;
    using GetMajor = int32_t (*)();
    auto get = reinterpret_cast<GetMajor>(dlsym(handle, "getInferLibMajorVersion"));
    int32_t const major = get != nullptr ? get() : 0;
    dlclose(handle);  // drops only the reference NOLOAD added
    return major;
}
#endif

}  // namespace

extern "C" {

MASKRT_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { g_logger_finder = finder; }

//! The TensorRT major of the headers this library was compiled against (the Python runtime
//! refuses to hand it to another major's load_library).
MASKRT_API int32_t maskrt_trt_plugin_tensorrt_major() { return NV_TENSORRT_MAJOR; }

#if !defined(MASKRT_TRT_REGISTER_ON_LOAD)
// TensorRT 10.0's library loader may also look for this V2-era entry point (NVIDIA's own 10.0
// plugin library exports it beside getCreators; 10.1 dropped it). It lists IPluginCreator (V2)
// creators only, and these plugins are V3: an empty list, never the V3 creators.
MASKRT_API nvinfer1::IPluginCreatorInterface* const* getPluginCreators(int32_t& nbCreators) {
    static nvinfer1::IPluginCreatorInterface* const none[1] = {nullptr};
    nbCreators = 0;
    return none;
}

//! What IPluginRegistry::loadLibrary registers. Touches no registry (loadLibrary may hold its
//! lock while it calls this); lists none when the loaded libnvinfer is another major.
MASKRT_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    try {  // the creators are made on first use; nothing may throw across the C ABI
        nvinfer1::IPluginCreatorInterface* const* creators = creator_list(nbCreators);
#if defined(__linux__)
        int32_t const loaded = loaded_nvinfer_major();
        if (loaded != 0 && loaded != NV_TENSORRT_MAJOR) {
            report_major_mismatch(loaded);
            nbCreators = 0;
        }
#endif
        return creators;
    } catch (std::exception const& e) {
        log_error(std::string("making the creators failed: ") + e.what());
        nbCreators = 0;
        return nullptr;
    }
}
#endif

}  // extern "C"
