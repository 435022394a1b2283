// What every edgestack IPluginV3 shares, written once (CRTP): capability lookup, clone, names, the shape checks
// at configure/shape-change time, attach and serialization. Header-only TensorRT use.
//
// A plugin `P : PluginBase<P, Attributes>` provides
//   static constexpr const char* kName;  static constexpr int32_t kInputs, kOutputs;
//   explicit P(const Attributes&);
//   bool check_dims(const nvinfer1::Dims* dims, int32_t count) const noexcept;  // contract check, logs why not
//   std::vector<nvinfer1::PluginField> fields();  // the ONNX attributes, pointing into attributes_
// and the op's own getOutputDataTypes, getOutputShapes, supportsFormatCombination, getWorkspaceSize, enqueue.
#pragma once

#include <NvInferRuntime.h>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "plugin_utils.h"

namespace edgestack::trt {

template <typename Plugin, typename Attributes>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public nvinfer1::IPluginV3OneBuild,
                   public nvinfer1::IPluginV3OneRuntime {
public:
    explicit PluginBase(const Attributes& attributes) : attributes_(attributes) {}

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override {
        switch (type) {
            case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
            case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
            case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override {
        try {
            return new Plugin(attributes_);
        } catch (...) {
            return nullptr;
        }
    }

    const char* getPluginName() const noexcept override { return Plugin::kName; }
    const char* getPluginVersion() const noexcept override { return kPluginVersion; }
    const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }
    int32_t getNbOutputs() const noexcept override { return Plugin::kOutputs; }

    int32_t configurePlugin(const nvinfer1::DynamicPluginTensorDesc* in, int32_t nbInputs,
                            const nvinfer1::DynamicPluginTensorDesc*, int32_t nbOutputs) noexcept override {
        if (nbInputs != Plugin::kInputs || nbOutputs != Plugin::kOutputs) return -1;
        // The profile's smallest and largest shapes too: a profile that admits a shape the kernel refuses fails
        // the build here, instead of the first enqueue of that shape on the line.
        return inputs_fit(in) && profile_fits(in) ? 0 : -1;
    }

    int32_t onShapeChange(const nvinfer1::PluginTensorDesc* in, int32_t nbInputs, const nvinfer1::PluginTensorDesc*,
                          int32_t nbOutputs) noexcept override {
        if (nbInputs != Plugin::kInputs || nbOutputs != Plugin::kOutputs) return -1;
        nvinfer1::Dims dims[Plugin::kInputs];
        for (int32_t t = 0; t < Plugin::kInputs; ++t) dims[t] = in[t].dims;
        return self().check_dims(dims, Plugin::kInputs) ? 0 : -1;
    }

    // Layers of one op with the same attributes time alike, so TensorRT's timing cache may keep their timings
    // (it adds the shapes, types and formats); the default, nullptr, keeps them out and times them every build.
    const char* getTimingCacheID() noexcept override {
        try {
            std::string id;
            for (const nvinfer1::PluginField& field : self().fields()) {
                id += std::string(field.name) + "=";
                for (int32_t i = 0; i < field.length; ++i) {
                    if (field.type == nvinfer1::PluginFieldType::kINT32)
                        id += std::to_string(static_cast<const int32_t*>(field.data)[i]);
                    else if (field.type == nvinfer1::PluginFieldType::kFLOAT32)
                        id += float_text(static_cast<const float*>(field.data)[i]);
                    id += i + 1 < field.length ? "," : "";
                }
                id += ";";
            }
            timing_cache_id_ = std::move(id);
            return timing_cache_id_.c_str();
        } catch (...) {
            return nullptr;
        }
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override { return clone(); }

    const nvinfer1::PluginFieldCollection* getFieldsToSerialize() noexcept override {
        fields_ = self().fields();
        collection_.nbFields = int32_t(fields_.size());
        collection_.fields = fields_.data();
        return &collection_;
    }

protected:
    // The build-time dims of the inputs (-1 where still dynamic) checked against the contract.
    bool inputs_fit(const nvinfer1::DynamicPluginTensorDesc* in) const noexcept {
        nvinfer1::Dims dims[Plugin::kInputs];
        for (int32_t t = 0; t < Plugin::kInputs; ++t) dims[t] = in[t].desc.dims;
        return self().check_dims(dims, Plugin::kInputs);
    }

    // The profile's min and max dims of the inputs checked against the contract (configure time).
    bool profile_fits(const nvinfer1::DynamicPluginTensorDesc* in) const noexcept {
        nvinfer1::Dims min[Plugin::kInputs], max[Plugin::kInputs];
        for (int32_t t = 0; t < Plugin::kInputs; ++t) {
            min[t] = in[t].min;
            max[t] = in[t].max;
        }
        return self().check_dims(min, Plugin::kInputs) && self().check_dims(max, Plugin::kInputs);
    }

    // Same from shape expressions (getOutputShapes): constant dims as numbers, the rest -1.
    bool inputs_fit(const nvinfer1::DimsExprs* inputs) const noexcept {
        nvinfer1::Dims dims[Plugin::kInputs];
        for (int32_t t = 0; t < Plugin::kInputs; ++t) {
            dims[t].nbDims = inputs[t].nbDims;
            for (int32_t i = 0; i < inputs[t].nbDims; ++i)
                dims[t].d[i] = inputs[t].d[i]->isConstant() ? inputs[t].d[i]->getConstantValue() : -1;
        }
        return self().check_dims(dims, Plugin::kInputs);
    }

    Attributes attributes_;

private:
    const Plugin& self() const { return static_cast<const Plugin&>(*this); }
    Plugin& self() { return static_cast<Plugin&>(*this); }

    // Nine significant digits: the text reads back as the same float.
    static std::string float_text(float value) {
        char text[32];
        std::snprintf(text, sizeof text, "%.9g", double(value));
        return text;
    }

    std::vector<nvinfer1::PluginField> fields_;
    nvinfer1::PluginFieldCollection collection_{};
    std::string timing_cache_id_;
};

// The creator half: field names (the ONNX attributes plus plugin_version) and the plugin's identity.
template <typename Plugin>
class CreatorBase : public nvinfer1::IPluginCreatorV3One {
public:
    explicit CreatorBase(std::vector<nvinfer1::PluginField> fields) : fields_(std::move(fields)) {
        fields_.emplace_back("plugin_version", nullptr, nvinfer1::PluginFieldType::kCHAR, 0);
        collection_.nbFields = int32_t(fields_.size());
        collection_.fields = fields_.data();
    }
    const nvinfer1::PluginFieldCollection* getFieldNames() noexcept override { return &collection_; }
    const char* getPluginName() const noexcept override { return Plugin::kName; }
    const char* getPluginVersion() const noexcept override { return kPluginVersion; }
    const char* getPluginNamespace() const noexcept override { return kPluginNamespace; }

private:
    std::vector<nvinfer1::PluginField> fields_;
    nvinfer1::PluginFieldCollection collection_{};
};

}  // namespace edgestack::trt
