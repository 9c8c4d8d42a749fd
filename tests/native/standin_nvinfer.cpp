// A stand-in for libnvinfer, written for the tests (NOT TensorRT): it exports getPluginRegistry()
// with an in-memory IPluginRegistry built on TensorRT's own header interface, a loadLibrary that
// does what TensorRT documents (open the library, call its getCreators(), register every creator,
// fail with nullptr if any of them is registered already), and getInferLibMajorVersion(), which
// reports STANDIN_NVINFER_MAJOR where that is set (a libnvinfer of another major: the plugin must
// then make no registry call at all) and the headers' major otherwise.
// The registry's methods are documented as synchronised by a mutex; TensorRT may hold it during
// loadLibrary. This stand-in counts instead of deadlocking: every registry call made while its
// loadLibrary runs (from the library being opened or from its getCreators) is a re-entry.
#include <NvInferRuntime.h>

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

using namespace nvinfer1;

struct Entry {
    IPluginCreatorInterface* creator;
    std::string name_space;
};

class StandInRegistry : public IPluginRegistry {
public:
    std::vector<Entry> entries;
    int duplicate_attempts = 0;
    int calls = 0;      // registry calls from outside (the plugin library)
    int reentries = 0;  // ... of which made while loadLibrary ran
    bool in_load = false;
    std::vector<std::pair<void*, std::vector<IPluginCreatorInterface*>>> libraries;

    void called() {
        ++calls;
        if (in_load) ++reentries;
    }

    bool registerCreator(IPluginCreatorInterface& creator, AsciiChar const* const ns) noexcept override {
        called();
        return add(creator, ns);
    }
    bool add(IPluginCreatorInterface& creator, AsciiChar const* const ns) {
        for (Entry const& e : entries) {
            if (same(*e.creator, creator)) {
                ++duplicate_attempts;
                return false;
            }
        }
        entries.push_back({&creator, ns != nullptr ? ns : ""});
        return true;
    }
    bool deregisterCreator(IPluginCreatorInterface const& creator) noexcept override {
        called();
        return remove(creator);
    }
    bool remove(IPluginCreatorInterface const& creator) {
        for (auto it = entries.begin(); it != entries.end(); ++it) {
            if (it->creator == &creator) {
                entries.erase(it);
                return true;
            }
        }
        return false;
    }
    IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
        const_cast<StandInRegistry*>(this)->called();
        *n = static_cast<int32_t>(entries.size());
        return nullptr;
    }
    IPluginCreatorInterface* getCreator(AsciiChar const* const, AsciiChar const* const,
                                        AsciiChar const* const) noexcept override {
        called();
        return nullptr;
    }
    PluginLibraryHandle loadLibrary(AsciiChar const* path) noexcept override {
        in_load = true;  // TensorRT's lock would be held from here to the end
        PluginLibraryHandle const handle = load(path);
        in_load = false;
        return handle;
    }
    PluginLibraryHandle load(AsciiChar const* path) {
        void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (lib == nullptr) return nullptr;
        using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
        auto get = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
        if (get == nullptr) return nullptr;
        int32_t n = 0;
        IPluginCreatorInterface* const* creators = get(n);
        for (int32_t i = 0; i < n; ++i) {
            if (!add(*creators[i], "")) {
                for (int32_t j = 0; j < i; ++j) remove(*creators[j]);
                return nullptr;
            }
        }
        libraries.emplace_back(lib, std::vector<IPluginCreatorInterface*>(creators, creators + n));
        return lib;
    }
    //! Deregisters the creators that loadLibrary registered for this library (and only those).
    void deregisterLibrary(PluginLibraryHandle handle) noexcept override {
        for (auto& [lib, creators] : libraries) {
            if (lib != handle) continue;
            for (IPluginCreatorInterface* c : creators) remove(*c);
            creators.clear();
        }
    }
    void setErrorRecorder(IErrorRecorder* const) noexcept override {}
    IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
    bool isParentSearchEnabled() const override { return false; }
    void setParentSearchEnabled(bool const) override {}
    IPluginResource* acquirePluginResource(AsciiChar const*, IPluginResource*) noexcept override { return nullptr; }
    int32_t releasePluginResource(AsciiChar const*) noexcept override { return 0; }
    // Declared by some releases only (pure there, absent elsewhere): defined without `override`.
    IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept {
        return getAllCreators(n);
    }
#if NV_TENSORRT_MAJOR < 11
    bool registerCreator(IPluginCreator&, AsciiChar const* const) noexcept override {
        called();
        return false;
    }
    IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
        *n = 0;
        return nullptr;
    }
    IPluginCreator* getPluginCreator(AsciiChar const* const, AsciiChar const* const,
                                     AsciiChar const* const) noexcept override {
        return nullptr;
    }
    bool deregisterCreator(IPluginCreator const&) noexcept override {
        called();
        return false;
    }
#endif

private:
    static bool same(IPluginCreatorInterface& a, IPluginCreatorInterface& b) {
        // Every maskrt creator is an IPluginCreatorV3One: compare what TensorRT keys on.
        auto& x = static_cast<IPluginCreatorV3One&>(a);
        auto& y = static_cast<IPluginCreatorV3One&>(b);
        return std::strcmp(x.getPluginName(), y.getPluginName()) == 0 &&
               std::strcmp(x.getPluginVersion(), y.getPluginVersion()) == 0;
    }
};

StandInRegistry g_registry;

}  // namespace

extern "C" {
__attribute__((visibility("default"))) IPluginRegistry* getPluginRegistry() noexcept { return &g_registry; }
__attribute__((visibility("default"))) int32_t getInferLibMajorVersion() noexcept {
    char const* major = std::getenv("STANDIN_NVINFER_MAJOR");
    return major != nullptr && major[0] != '\0' ? std::atoi(major) : NV_TENSORRT_MAJOR;
}
__attribute__((visibility("default"))) int standin_calls() { return g_registry.calls; }
__attribute__((visibility("default"))) int standin_reentries() { return g_registry.reentries; }
__attribute__((visibility("default"))) int standin_registered() {
    return static_cast<int>(g_registry.entries.size());
}
__attribute__((visibility("default"))) int standin_duplicate_attempts() { return g_registry.duplicate_attempts; }
__attribute__((visibility("default"))) void* standin_load_library(char const* path) {
    return g_registry.loadLibrary(path);
}
__attribute__((visibility("default"))) void standin_deregister_library(void* handle) {
    g_registry.deregisterLibrary(handle);
}
}
