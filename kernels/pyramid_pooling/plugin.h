// TensorRT IPluginV3 for PSPNet pyramid pooling: EdgePyramidPooling, version "1", namespace "".
// Inputs x [B,C,H,W], weight [nbins,R,C], bias [nbins,R] (constant initializers); output [B, C + nbins*R, H, W].
// x and y fp32 or fp16 linear (one type), weight and bias fp32 or fp16 (one type); dynamic shapes.
// Fields = the ONNX node's attributes (bins, align_corners, plugin_version).
#pragma once

#include <NvInferRuntime.h>

#include <vector>

#include "../common/plugin_base.h"

namespace edgestack::trt {

struct PyramidPoolingAttributes {
    std::vector<int> bins{1, 2, 3, 6};  // the contract's default when the node has no bins
    int align_corners = 1;
};

class PyramidPoolingPlugin : public PluginBase<PyramidPoolingPlugin, PyramidPoolingAttributes> {
public:
    static constexpr const char* kName = "EdgePyramidPooling";
    static constexpr int32_t kInputs = 3;
    static constexpr int32_t kOutputs = 1;

    using PluginBase::PluginBase;

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                               const nvinfer1::DataType* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(const nvinfer1::DimsExprs* inputs, int32_t nbInputs, const nvinfer1::DimsExprs* shapeInputs,
                            int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                            nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, const nvinfer1::DynamicPluginTensorDesc* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(const nvinfer1::DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                            const nvinfer1::DynamicPluginTensorDesc* outputs, int32_t nbOutputs) const noexcept override;
    int32_t enqueue(const nvinfer1::PluginTensorDesc* inputDesc, const nvinfer1::PluginTensorDesc* outputDesc,
                    const void* const* inputs, void* const* outputs, void* workspace,
                    cudaStream_t stream) noexcept override;

    // Whether x/weight/bias dims fit the contract (-1 entries, unknown at build time, are skipped); logs why not.
    bool check_dims(const nvinfer1::Dims* dims, int32_t count) const noexcept;
    std::vector<nvinfer1::PluginField> fields();
};

class PyramidPoolingCreator : public CreatorBase<PyramidPoolingPlugin> {
public:
    PyramidPoolingCreator();
    nvinfer1::IPluginV3* createPlugin(const char* name, const nvinfer1::PluginFieldCollection* fc,
                                      nvinfer1::TensorRTPhase phase) noexcept override;
};

}  // namespace edgestack::trt
