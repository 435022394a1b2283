// Helpers shared by the TensorRT plugins: logging through TensorRT's logger and PluginField parsing.
// Header-only use of TensorRT: nothing here needs libnvinfer at link time.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "status.h"

namespace edgestack::trt {

// Logs through the logger TensorRT handed over via setLoggerFinder (silent before that).
void log(nvinfer1::ILogger::Severity severity, const std::string& message) noexcept;

inline void log_error(const std::string& message) noexcept { log(nvinfer1::ILogger::Severity::kERROR, message); }

// Logs "<plugin>: <message>" as an error; returns false so checks can `return fail(...)`.
inline bool fail(const char* plugin, const std::string& message) noexcept {
    log_error(std::string(plugin) + ": " + message);
    return false;
}

inline bool known(int64_t dim) { return dim >= 0; }

inline std::string dims_text(const nvinfer1::Dims& dims) {
    std::string text = "[";
    for (int32_t i = 0; i < dims.nbDims; ++i) text += (i ? "," : "") + std::to_string(dims.d[i]);
    return text + "]";
}

// Logs a failed kernel status with its text; returns the TensorRT convention (0 ok, -1 failure).
inline int32_t report(const char* plugin, int status) noexcept {
    if (status == EDGESTACK_OK) return 0;
    log_error(std::string(plugin) + ": " + edgestack_status_string(status));
    return -1;
}

inline bool is_field(const nvinfer1::PluginField& field, const char* name) {
    return field.name && std::strcmp(field.name, name) == 0;
}

// Integers arrive as INT32 from the ONNX parser; INT64 (in int range)/INT16/INT8 are accepted too.
inline bool read_ints(const nvinfer1::PluginField& field, std::vector<int>& out) {
    if (field.length < 0 || (field.length > 0 && !field.data)) return false;
    out.resize(size_t(field.length));
    for (int32_t i = 0; i < field.length; ++i) {
        switch (field.type) {
            case nvinfer1::PluginFieldType::kINT32: out[i] = static_cast<const int32_t*>(field.data)[i]; break;
            case nvinfer1::PluginFieldType::kINT64: {
                const int64_t value = static_cast<const int64_t*>(field.data)[i];
                if (value < INT32_MIN || value > INT32_MAX) return false;
                out[i] = int(value);
                break;
            }
            case nvinfer1::PluginFieldType::kINT16: out[i] = static_cast<const int16_t*>(field.data)[i]; break;
            case nvinfer1::PluginFieldType::kINT8: out[i] = static_cast<const int8_t*>(field.data)[i]; break;
            default: return false;
        }
    }
    return true;
}

inline bool read_int(const nvinfer1::PluginField& field, int& out) {
    std::vector<int> values;
    if (!read_ints(field, values) || values.size() != 1) return false;
    out = values[0];
    return true;
}

inline bool read_float(const nvinfer1::PluginField& field, float& out) {
    if (field.length != 1 || !field.data) return false;
    switch (field.type) {
        case nvinfer1::PluginFieldType::kFLOAT32: out = *static_cast<const float*>(field.data); return true;
        case nvinfer1::PluginFieldType::kFLOAT64: out = float(*static_cast<const double*>(field.data)); return true;
        default: return false;
    }
}

inline int to_edgestack_dtype(nvinfer1::DataType type) {
    return type == nvinfer1::DataType::kHALF ? EDGESTACK_FLOAT16 : EDGESTACK_FLOAT32;
}

inline bool is_float_linear(const nvinfer1::PluginTensorDesc& desc) {
    return desc.format == nvinfer1::TensorFormat::kLINEAR &&
           (desc.type == nvinfer1::DataType::kFLOAT || desc.type == nvinfer1::DataType::kHALF);
}

// Every plugin reports version "1" in namespace "" (the ONNX node's plugin_version).
constexpr const char* kPluginVersion = "1";
constexpr const char* kPluginNamespace = "";

}  // namespace edgestack::trt
