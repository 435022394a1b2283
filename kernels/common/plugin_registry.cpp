// Entry points TensorRT looks up when it loads this library (IPluginRegistry::loadLibrary,
// trtexec --dynamicPlugins): setLoggerFinder and getCreators.
#include <atomic>

#include "../pyramid_pooling/plugin.h"
#include "../window_attention/plugin.h"
#include "plugin_utils.h"

namespace {
std::atomic<nvinfer1::ILoggerFinder*> logger_finder{nullptr};
}

namespace edgestack::trt {

void log(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept {
    nvinfer1::ILoggerFinder* finder = logger_finder.load();
    nvinfer1::ILogger* logger = finder ? finder->findLogger() : nullptr;
    if (logger) logger->log(severity, message.c_str());
}

}  // namespace edgestack::trt

// The first finder stays, as in TensorRT's own plugins: a later nullptr (or a shorter-lived finder) must not
// silence our messages or leave a dangling pointer.
extern "C" EDGESTACK_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
    nvinfer1::ILoggerFinder* none = nullptr;
    if (finder) logger_finder.compare_exchange_strong(none, finder);
}

extern "C" EDGESTACK_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static edgestack::trt::WindowAttentionCreator window_attention;
    static edgestack::trt::PyramidPoolingCreator pyramid_pooling;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&window_attention, &pyramid_pooling};
    nbCreators = 2;
    return creators;
}
