// TensorRT IPluginV3 for windowed masked attention: EdgeWindowMaskedAttention, version "1", namespace "".
// Inputs q, k, v [B,H,W,C], mask [B,H,W,1]; outputs out [B,H,W,C], mask_out [B,H,W,1]; fp32 or fp16 linear,
// one type for all; dynamic shapes. Fields = the ONNX node's attributes.
#pragma once

#include <NvInferRuntime.h>

#include <vector>

#include "../common/plugin_base.h"

namespace edgestack::trt {

struct WindowAttentionAttributes {
    int num_heads = 0;
    int window_size = 0;
    int shift_size = 0;
    float scale = 0.f;  // <= 0: head_dim^-0.5
    float masked_bias = -100.f;
};

class WindowAttentionPlugin : public PluginBase<WindowAttentionPlugin, WindowAttentionAttributes> {
public:
    static constexpr const char* kName = "EdgeWindowMaskedAttention";
    static constexpr int32_t kInputs = 4;
    static constexpr int32_t kOutputs = 2;

    using PluginBase::PluginBase;

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               const nvinfer1::DataType* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs, const nvinfer1::DimsExprs* shapeInputs,
                            int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                    const void* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;

    // Whether q/k/v/mask dims fit the contract (-1 entries, unknown at build time, are skipped); logs why not.
    bool check_dims(const nvinfer1::Dims* dims, int32_t count) const noexcept;
    std::vector<nvinfer1::PluginField> fields();
};

class WindowAttentionCreator : public CreatorBase<WindowAttentionPlugin> {
public:
    WindowAttentionCreator();
    nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;
};

}  // namespace edgestack::trt
