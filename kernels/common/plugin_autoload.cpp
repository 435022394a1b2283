// libedgestack_trt_plugins_autoload.so: for hosts that only dlopen a plugin library and expect it to register
// itself (Triton's TensorRT backend, `--backend-config=tensorrt,plugins=...`). Loading it opens the
// libedgestack_trt_plugins.so beside it (by path: every TensorRT plugin library exports the same entry-point
// names) and registers its creators with the registry of the libnvinfer already in the process.
// IPluginRegistry::loadLibrary and trtexec --dynamicPlugins take libedgestack_trt_plugins.so itself: they call
// its getCreators and refuse creators that are already registered, so that library must not register itself.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdio>
#include <string>

namespace {

constexpr const char* kPluginLibrary = "libedgestack_trt_plugins.so";

// Hands the plugins the process's TensorRT logger when libnvinfer has one, else prints to stderr.
class ProcessLogger : public nvinfer1::ILogger, public nvinfer1::ILoggerFinder {
public:
    explicit ProcessLogger(nvinfer1::ILogger* tensorrt) : tensorrt_(tensorrt) {}
    nvinfer1::ILogger* findLogger() noexcept override { return this; }
    void log(Severity severity, const char* message) noexcept override {
        if (tensorrt_) tensorrt_->log(severity, message);
        else if (severity <= Severity::kWARNING) std::fprintf(stderr, "[edgestack plugins] %s\n", message);
    }

private:
    nvinfer1::ILogger* tensorrt_;
};

void complain(const std::string& message) { std::fprintf(stderr, "[edgestack plugins] %s\n", message.c_str()); }

// The folder this library was loaded from, with a trailing slash ("" when unknown).
std::string own_folder() {
    Dl_info info{};
    if (!dladdr(reinterpret_cast<void*>(&complain), &info) || !info.dli_fname) return "";
    const std::string path = info.dli_fname;
    const size_t slash = path.rfind('/');
    return slash == std::string::npos ? "" : path.substr(0, slash + 1);
}

__attribute__((constructor)) void register_edgestack_plugins() {
    // RTLD_NOLOAD: only the libnvinfer the host already loaded (whatever its own dlopen flags were).
    const std::string soname = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
    void* nvinfer = dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (!nvinfer) return complain(soname + " is not loaded in this process; nothing registered");
    const std::string plugins_path = own_folder() + kPluginLibrary;
    void* plugins = dlopen(plugins_path.c_str(), RTLD_NOW | RTLD_LOCAL);  // kept open: the creators live there
    if (!plugins) return complain("cannot load " + plugins_path + ": " + dlerror());

    using RegistryGetter = nvinfer1::IPluginRegistry* (*)();
    using LoggerGetter = nvinfer1::ILogger* (*)();
    using CreatorsGetter = nvinfer1::IPluginCreatorInterface* const* (*)(int32_t&);
    using FinderSetter = void (*)(nvinfer1::ILoggerFinder*);
    auto registry_of = reinterpret_cast<RegistryGetter>(dlsym(nvinfer, "getPluginRegistry"));
    auto logger_of = reinterpret_cast<LoggerGetter>(dlsym(nvinfer, "getLogger"));
    auto get_creators = reinterpret_cast<CreatorsGetter>(dlsym(plugins, "getCreators"));
    auto set_logger_finder = reinterpret_cast<FinderSetter>(dlsym(plugins, "setLoggerFinder"));
    nvinfer1::IPluginRegistry* registry = registry_of ? registry_of() : nullptr;
    if (!registry || !get_creators || !set_logger_finder)
        return complain("libnvinfer's plugin registry or " + plugins_path + "'s entry points not found");

    static ProcessLogger logger(logger_of ? logger_of() : nullptr);
    set_logger_finder(&logger);
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = get_creators(count);
    for (int32_t i = 0; i < count; ++i) {
        if (!registry->registerCreator(*creators[i], ""))
            logger.log(nvinfer1::ILogger::Severity::kERROR,
                       "edgestack plugins: a creator could not be registered (already registered?)");
    }
    dlclose(nvinfer);  // drops only this lookup's reference; the host keeps libnvinfer loaded
}

}  // namespace
