// libedgestack_trt_plugins_autoload.so: for hosts that only dlopen a plugin library and expect it to register
// itself (Triton's TensorRT backend, `--backend-config=tensorrt,plugins=...`). Loading it registers every
// creator of libedgestack_trt_plugins.so (found beside it) with the registry of the libnvinfer already in the
// process. IPluginRegistry::loadLibrary and trtexec --dynamicPlugins take libedgestack_trt_plugins.so itself:
// they call its getCreators, and refuse creators that are already registered, so that library must not
// register itself on load.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdio>
#include <string>

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

namespace {

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

__attribute__((constructor)) void register_edgestack_plugins() {
    // RTLD_NOLOAD: only the libnvinfer the host already loaded (whatever its own dlopen flags were).
    const std::string soname = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
    void* nvinfer = dlopen(soname.c_str(), RTLD_NOW | RTLD_NOLOAD);
    if (!nvinfer) {
        std::fprintf(stderr, "[edgestack plugins] %s is not loaded in this process; nothing registered\n",
                     soname.c_str());
        return;
    }
    using RegistryGetter = nvinfer1::IPluginRegistry* (*)();
    using LoggerGetter = nvinfer1::ILogger* (*)();
    auto registry_of = reinterpret_cast<RegistryGetter>(dlsym(nvinfer, "getPluginRegistry"));
    auto logger_of = reinterpret_cast<LoggerGetter>(dlsym(nvinfer, "getLogger"));
    nvinfer1::IPluginRegistry* registry = registry_of ? registry_of() : nullptr;
    static ProcessLogger logger(logger_of ? logger_of() : nullptr);
    setLoggerFinder(&logger);
    if (!registry) {
        logger.log(nvinfer1::ILogger::Severity::kERROR, "edgestack plugins: libnvinfer has no plugin registry");
        return;
    }
    int32_t count = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(count);
    for (int32_t i = 0; i < count; ++i) {
        if (!registry->registerCreator(*creators[i], "")) {
            logger.log(nvinfer1::ILogger::Severity::kERROR,
                       "edgestack plugins: a creator could not be registered (already registered?)");
        }
    }
    dlclose(nvinfer);  // drops only this lookup's reference; the host keeps libnvinfer loaded
}

}  // namespace
