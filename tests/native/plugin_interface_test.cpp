// The plugin's own methods driven through TensorRT's header interfaces (NOT a TensorRT run):
// this program opens the real plugin library, takes its creators from getCreators(), and calls
// what TensorRT's builder and runtime would call before enqueue(): createPlugin with fields as
// onnx-tensorrt's parser passes them (INT -> kINT32, FLOATS -> kFLOAT32), the capability
// interfaces, getOutputShapes with symbolic and constant dimensions (an IExprBuilder built here
// on TensorRT's apiv::VExprBuilder interface), getOutputDataTypes, supportsFormatCombination,
// the serialisation round trip, clone, attachToContext, and bad fields. It links no libnvinfer.
// The FP16-RoI check of getWorkspaceSize is issue 31's item 4 (enqueue itself needs a GPU).
// Usage: plugin_interface_test LIBRARY; prints "ok <check>" lines, exits 1 at the first failure.
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

int g_checks = 0;

void check(bool ok, char const* what) {
    if (!ok) {
        std::printf("FAIL %s\n", what);
        std::exit(1);
    }
    ++g_checks;
    std::printf("ok %s\n", what);
}

// --- an IExprBuilder on TensorRT's own implementation interfaces --------------------------------

class Expr final : public IDimensionExpr {
public:
    Expr(bool constant, int64_t value) : mValue(constant, value) { mImpl = &mValue; }
    ~Expr() noexcept override = default;

private:
    struct Value final : apiv::VDimensionExpr {
        Value(bool c, int64_t v) : constant(c), value(v) {}
        bool isConstant() const override { return constant; }
        int64_t getConstantValue() const override { return constant ? value : -1; }
        bool isSizeTensor() const override { return false; }
        bool constant;
        int64_t value;
    } mValue;
};

class Builder final : public IExprBuilder {
public:
    Builder() { mImpl = &mImplObj; }
    ~Builder() noexcept override = default;
    IDimensionExpr const* symbol() { return mImplObj.keep(false, 0); }

private:
    struct Impl final : apiv::VExprBuilder {
        std::vector<std::unique_ptr<Expr>> made;
        IDimensionExpr const* keep(bool c, int64_t v) {
            made.push_back(std::make_unique<Expr>(c, v));
            return made.back().get();
        }
        IDimensionExpr const* constant(int64_t value) override { return keep(true, value); }
        IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a,
                                        IDimensionExpr const& b) override {
            if (!a.isConstant() || !b.isConstant()) return keep(false, 0);
            int64_t const x = a.getConstantValue(), y = b.getConstantValue();
            switch (op) {
                case DimensionOperation::kSUM: return keep(true, x + y);
                case DimensionOperation::kPROD: return keep(true, x * y);
                case DimensionOperation::kMAX: return keep(true, x > y ? x : y);
                case DimensionOperation::kMIN: return keep(true, x < y ? x : y);
                case DimensionOperation::kSUB: return keep(true, x - y);
                default: return keep(false, 0);
            }
        }
        IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
            return keep(false, 0);
        }
    } mImplObj;
};

// --- helpers ------------------------------------------------------------------------------------

using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);

IPluginCreatorV3One* find_creator(GetCreators get, char const* name) {
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = get(n);
    for (int32_t i = 0; i < n; ++i) {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), name) == 0) return c;
    }
    return nullptr;
}

struct Fields {
    std::vector<PluginField> list;
    PluginFieldCollection collection() const {
        PluginFieldCollection fc{};
        fc.nbFields = static_cast<int32_t>(list.size());
        fc.fields = list.data();
        return fc;
    }
};

DynamicPluginTensorDesc desc(DataType type, int32_t rank, TensorFormat format = TensorFormat::kLINEAR) {
    DynamicPluginTensorDesc d{};
    d.desc.type = type;
    d.desc.format = format;
    d.desc.dims.nbDims = rank;
    for (int32_t i = 0; i < rank; ++i) d.desc.dims.d[i] = -1;
    d.min = d.max = d.desc.dims;
    return d;
}

//! Whether the plugin accepts every position of this input/output description.
bool all_supported(IPluginV3OneBuild* build, DynamicPluginTensorDesc const* io, int32_t nbInputs) {
    for (int32_t pos = 0; pos <= nbInputs; ++pos) {
        if (!build->supportsFormatCombination(pos, io, nbInputs, 1)) return false;
    }
    return true;
}

template <typename T>
T* capability(IPluginV3* plugin, PluginCapabilityType type) {
    return static_cast<T*>(plugin->getCapabilityInterface(type));
}

//! The fields a plugin serialises, as bytes per name, to compare two plugins.
std::string serialised(IPluginV3* plugin) {
    auto* core = capability<IPluginV3OneRuntime>(plugin, PluginCapabilityType::kRUNTIME);
    PluginFieldCollection const* fc = core->getFieldsToSerialize();
    std::string out;
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        PluginField const& f = fc->fields[i];
        size_t const size = f.type == PluginFieldType::kFLOAT32 || f.type == PluginFieldType::kINT32 ? 4 : 0;
        out += std::string(f.name) + ":" + std::to_string(static_cast<int>(f.type)) + ":";
        out.append(static_cast<char const*>(f.data), size * static_cast<size_t>(f.length));
        out += ";";
    }
    return out;
}

// --- the multi-level plugin ---------------------------------------------------------------------

void multilevel(GetCreators get) {
    IPluginCreatorV3One* creator = find_creator(get, "MultilevelRoIAlign_MASKRT");
    check(creator != nullptr, "multilevel: creator listed");
    int32_t output_size = 7, sampling_ratio = 2, aligned = 0, canonical_scale = 224, canonical_level = 4;
    float scales[4] = {0.25f, 0.125f, 0.0625f, 0.03125f};
    Fields fields{{{"output_size", &output_size, PluginFieldType::kINT32, 1},
                   {"sampling_ratio", &sampling_ratio, PluginFieldType::kINT32, 1},
                   {"aligned", &aligned, PluginFieldType::kINT32, 1},
                   {"spatial_scales", scales, PluginFieldType::kFLOAT32, 4},
                   {"canonical_scale", &canonical_scale, PluginFieldType::kINT32, 1},
                   {"canonical_level", &canonical_level, PluginFieldType::kINT32, 1}}};
    PluginFieldCollection fc = fields.collection();
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("p", &fc, TensorRTPhase::kBUILD));
    check(plugin != nullptr, "multilevel: createPlugin from parser-typed fields");
    for (auto type : {PluginCapabilityType::kCORE, PluginCapabilityType::kBUILD, PluginCapabilityType::kRUNTIME}) {
        check(plugin->getCapabilityInterface(type) != nullptr, "multilevel: capability interface");
    }
    auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
    check(build->getNbOutputs() == 1, "multilevel: one output");

    DataType in_types[5] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kFLOAT};
    DataType out_type = DataType::kFLOAT;
    check(build->getOutputDataTypes(&out_type, 1, in_types, 5) == 0 && out_type == DataType::kHALF,
          "multilevel: output type is the features' type");

    Builder eb;
    IDimensionExpr const* batch = eb.symbol();
    IDimensionExpr const* rois_n = eb.symbol();
    DimsExprs inputs[5];
    for (int32_t l = 0; l < 4; ++l) {
        inputs[l].nbDims = 4;
        inputs[l].d[0] = batch;
        inputs[l].d[1] = eb.constant(64);
        inputs[l].d[2] = eb.symbol();
        inputs[l].d[3] = eb.symbol();
    }
    inputs[4].nbDims = 3;
    inputs[4].d[0] = batch;
    inputs[4].d[1] = rois_n;
    inputs[4].d[2] = eb.constant(4);
    DimsExprs out{};
    check(build->getOutputShapes(inputs, 5, nullptr, 0, &out, 1, eb) == 0, "multilevel: getOutputShapes");
    check(out.nbDims == 5 && out.d[0] == batch && out.d[1] == rois_n, "multilevel: output [B, N, ...] keeps the symbols");
    check(out.d[2]->isConstant() && out.d[2]->getConstantValue() == 64, "multilevel: output channels = C");
    check(out.d[3]->isConstant() && out.d[3]->getConstantValue() == 7 && out.d[4]->getConstantValue() == 7,
          "multilevel: output P x P from output_size");
    inputs[4].nbDims = 2;
    check(build->getOutputShapes(inputs, 5, nullptr, 0, &out, 1, eb) != 0, "multilevel: rois of rank 2 refused");

    // supportsFormatCombination: pos 0..3 levels, 4 rois, 5 output
    DynamicPluginTensorDesc io[6];
    auto fill = [&](DataType feat, DataType rois, DataType output) {
        for (int32_t l = 0; l < 4; ++l) io[l] = desc(feat, 4);
        io[4] = desc(rois, 3);
        io[5] = desc(output, 5);
    };
    auto all_ok = [&]() { return all_supported(build, io, 5); };
    fill(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT);
    check(all_ok(), "multilevel: FP32 features, FP32 rois, FP32 out");
    fill(DataType::kHALF, DataType::kFLOAT, DataType::kHALF);
    check(all_ok(), "multilevel: FP16 features, FP32 rois, FP16 out");
    fill(DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT);
    check(!build->supportsFormatCombination(5, io, 5, 1), "multilevel: output type other than features refused");
    fill(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT);
    io[2].desc.type = DataType::kHALF;
    check(!build->supportsFormatCombination(2, io, 5, 1), "multilevel: mixed level types refused");
    fill(DataType::kINT8, DataType::kFLOAT, DataType::kINT8);
    check(!build->supportsFormatCombination(0, io, 5, 1), "multilevel: INT8 features refused");
    fill(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT);
    io[0] = desc(DataType::kFLOAT, 4, TensorFormat::kHWC);
    check(!build->supportsFormatCombination(0, io, 5, 1), "multilevel: non-linear format refused");

    // serialisation round trip, clone, attachToContext
    auto* runtime = capability<IPluginV3OneRuntime>(plugin.get(), PluginCapabilityType::kRUNTIME);
    PluginFieldCollection const* saved = runtime->getFieldsToSerialize();
    check(saved != nullptr && saved->nbFields == 6, "multilevel: six fields serialised");
    std::unique_ptr<IPluginV3> restored(creator->createPlugin("p", saved, TensorRTPhase::kRUNTIME));
    check(restored != nullptr && serialised(restored.get()) == serialised(plugin.get()),
          "multilevel: createPlugin(kRUNTIME) from the serialised fields gives the same fields");
    auto* core = capability<IPluginV3OneCore>(plugin.get(), PluginCapabilityType::kCORE);
    check(std::strcmp(core->getPluginName(), creator->getPluginName()) == 0 &&
          std::strcmp(core->getPluginVersion(), creator->getPluginVersion()) == 0 &&
          std::strcmp(core->getPluginNamespace(), creator->getPluginNamespace()) == 0,
          "multilevel: plugin and creator agree on name, version, namespace");
    std::unique_ptr<IPluginV3> copy(plugin->clone());
    check(copy != nullptr && serialised(copy.get()) == serialised(plugin.get()), "multilevel: clone");
    std::unique_ptr<IPluginV3> attached(runtime->attachToContext(nullptr));
    check(attached != nullptr && serialised(attached.get()) == serialised(plugin.get()), "multilevel: attachToContext");

    // bad fields: refused (nullptr), never a crash
    float zero_scale[1] = {0.0f};
    float nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    int32_t zero = 0;
    float as_float = 7.0f;
    int8_t tiny = 7;
    std::vector<Fields> bad{
        {{{"output_size", &zero, PluginFieldType::kINT32, 1}}},
        {{{"output_size", &as_float, PluginFieldType::kFLOAT32, 1}}},
        {{{"output_size", &tiny, PluginFieldType::kINT8, 1}}},
        {{{"output_size", nullptr, PluginFieldType::kINT32, 1}}},
        {{{"spatial_scales", zero_scale, PluginFieldType::kFLOAT32, 1}}},
        {{{"spatial_scales", nine, PluginFieldType::kFLOAT32, 9}}},
        {{{"spatial_scales", scales, PluginFieldType::kFLOAT32, 0}}},
        {{{"canonical_scale", &zero, PluginFieldType::kINT32, 1}}},
    };
    for (Fields const& f : bad) {
        PluginFieldCollection bfc = f.collection();
        std::unique_ptr<IPluginV3> p(creator->createPlugin("p", &bfc, TensorRTPhase::kBUILD));
        check(p == nullptr, "multilevel: bad field refused");
    }
    Fields missing{{{"output_size", &output_size, PluginFieldType::kINT32, 1}}};
    PluginFieldCollection mfc = missing.collection();
    std::unique_ptr<IPluginV3> defaults(creator->createPlugin("p", &mfc, TensorRTPhase::kBUILD));
    check(defaults != nullptr && serialised(defaults.get()) == serialised(plugin.get()),
          "multilevel: missing fields take the contract's defaults (torchvision's FPN)");
}

// --- the single-level plugin --------------------------------------------------------------------

void single(GetCreators get) {
    IPluginCreatorV3One* creator = find_creator(get, "RoIAlign_MASKRT");
    check(creator != nullptr, "single: creator listed");
    int32_t oh = 7, ow = 5, sampling_ratio = 0, aligned = 1;
    float scale = 0.25f;
    Fields fields{{{"output_height", &oh, PluginFieldType::kINT32, 1},
                   {"output_width", &ow, PluginFieldType::kINT32, 1},
                   {"sampling_ratio", &sampling_ratio, PluginFieldType::kINT32, 1},
                   {"spatial_scale", &scale, PluginFieldType::kFLOAT32, 1},
                   {"aligned", &aligned, PluginFieldType::kINT32, 1}}};
    PluginFieldCollection fc = fields.collection();
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("p", &fc, TensorRTPhase::kBUILD));
    check(plugin != nullptr, "single: createPlugin");
    auto* build = capability<IPluginV3OneBuild>(plugin.get(), PluginCapabilityType::kBUILD);
    Builder eb;
    IDimensionExpr const* r = eb.symbol();
    DimsExprs inputs[3];
    inputs[0].nbDims = 4;
    inputs[0].d[0] = eb.symbol();
    inputs[0].d[1] = eb.constant(256);
    inputs[0].d[2] = eb.symbol();
    inputs[0].d[3] = eb.symbol();
    inputs[1].nbDims = 2;
    inputs[1].d[0] = r;
    inputs[1].d[1] = eb.constant(4);
    inputs[2].nbDims = 1;
    inputs[2].d[0] = r;
    DimsExprs out{};
    check(build->getOutputShapes(inputs, 3, nullptr, 0, &out, 1, eb) == 0 && out.nbDims == 4 && out.d[0] == r &&
              out.d[1]->getConstantValue() == 256 && out.d[2]->getConstantValue() == 7 &&
              out.d[3]->getConstantValue() == 5,
          "single: output [R, C, output_height, output_width]");
    DynamicPluginTensorDesc io[4];
    auto fill = [&](DataType x, DataType rois, DataType idx) {
        io[0] = desc(x, 4);
        io[1] = desc(rois, 2);
        io[2] = desc(idx, 1);
        io[3] = desc(x, 4);
    };
    auto all_ok = [&]() { return all_supported(build, io, 3); };
    for (DataType x : {DataType::kFLOAT, DataType::kHALF}) {
        for (DataType rois : {DataType::kFLOAT, DataType::kHALF}) {
            for (DataType idx : {DataType::kINT32, DataType::kINT64}) {
                fill(x, rois, idx);
                check(all_ok(), "single: FP32/FP16 features x FP32/FP16 rois x int32/int64 indices");
            }
        }
    }
    fill(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT);
    check(!build->supportsFormatCombination(2, io, 3, 1), "single: float batch indices refused");
    fill(DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32);
    io[1] = desc(DataType::kINT32, 2);
    check(!build->supportsFormatCombination(1, io, 3, 1), "single: int rois refused");
    // FP16 RoIs are read by the kernel itself: no workspace, whether TensorRT knows the RoI
    // count's upper bound (max.d[0]) or not (-1), so enqueue never writes one it was not given
    fill(DataType::kFLOAT, DataType::kHALF, DataType::kINT64);
    io[1].max.d[0] = 1000;
    check(build->getWorkspaceSize(io, 3, &io[3], 1) == 0, "single: FP16 rois, max R known: no workspace");
    io[1].max.d[0] = -1;
    check(build->getWorkspaceSize(io, 3, &io[3], 1) == 0, "single: FP16 rois, max R unknown: no workspace");
    io[1] = desc(DataType::kFLOAT, 2);
    check(build->getWorkspaceSize(io, 3, &io[3], 1) == 0, "single: FP32 rois need no workspace");
    std::unique_ptr<IPluginV3> restored(creator->createPlugin(
        "p", capability<IPluginV3OneRuntime>(plugin.get(), PluginCapabilityType::kRUNTIME)->getFieldsToSerialize(),
        TensorRTPhase::kRUNTIME));
    check(restored != nullptr && serialised(restored.get()) == serialised(plugin.get()), "single: serialisation round trip");
    float bad_scale = -1.0f;
    Fields bad{{{"spatial_scale", &bad_scale, PluginFieldType::kFLOAT32, 1}}};
    PluginFieldCollection bfc = bad.collection();
    std::unique_ptr<IPluginV3> refused(creator->createPlugin("p", &bfc, TensorRTPhase::kBUILD));
    check(refused == nullptr, "single: negative spatial_scale refused");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s libmaskrt_roialign_trt.so\n", argv[0]);
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
        std::printf("FAIL dlopen: %s\n", dlerror());
        return 1;
    }
    auto get = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    check(get != nullptr, "getCreators exported");
    using GetMajor = int32_t (*)();
    auto major = reinterpret_cast<GetMajor>(dlsym(lib, "maskrt_trt_plugin_tensorrt_major"));
    check(major != nullptr && major() == NV_TENSORRT_MAJOR, "the library reports the headers' TensorRT major");
    multilevel(get);
    single(get);
    std::printf("%d checks passed (the plugin's own methods through TensorRT's header interfaces; "
                "not a TensorRT run)\n", g_checks);
    return 0;
}
