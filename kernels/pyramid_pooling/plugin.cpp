#include "plugin.h"

#include "../common/plugin_utils.h"
#include "kernel.h"

namespace edgestack::trt {

using namespace nvinfer1;

namespace {

constexpr int32_t kInputs = PyramidPoolingPlugin::kInputs;
constexpr int32_t kOutputs = PyramidPoolingPlugin::kOutputs;

bool fail(const std::string& message) { return edgestack::trt::fail(PyramidPoolingPlugin::kName, message); }

}  // namespace

std::vector<PluginField> PyramidPoolingPlugin::fields() {
    return {
        PluginField("bins", attributes_.bins.data(), PluginFieldType::kINT32, int32_t(attributes_.bins.size())),
        PluginField("align_corners", &attributes_.align_corners, PluginFieldType::kINT32, 1),
    };
}

int32_t PyramidPoolingPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, const DataType* inputTypes,
                                                 int32_t nbInputs) const noexcept {
    if (nbInputs != kInputs || nbOutputs != kOutputs) return -1;
    const auto is_float = [](DataType t) { return t == DataType::kFLOAT || t == DataType::kHALF; };
    if (!is_float(inputTypes[0]) || !is_float(inputTypes[1]) || inputTypes[2] != inputTypes[1]) {
        fail("x must be fp32 or fp16, and weight and bias one fp32 or fp16 type");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    return 0;
}

bool PyramidPoolingPlugin::check_dims(const Dims* dims, int32_t count) const noexcept {
    if (count != kInputs) return fail("expects 3 inputs (x, weight, bias), got " + std::to_string(count));
    const Dims& x = dims[0];
    const Dims& weight = dims[1];
    const Dims& bias = dims[2];
    if (x.nbDims != 4) return fail("x must be [B,C,H,W], got " + dims_text(x));
    if (weight.nbDims != 3 || bias.nbDims != 2)
        return fail("weight must be [nbins,R,C] and bias [nbins,R]; got " + dims_text(weight) + " and " +
                    dims_text(bias));
    const int64_t nbins = int64_t(attributes_.bins.size());
    if ((known(weight.d[0]) && weight.d[0] != nbins) || (known(bias.d[0]) && bias.d[0] != nbins))
        return fail("weight and bias must have nbins=" + std::to_string(nbins) + " rows; got " + dims_text(weight) +
                    " and " + dims_text(bias));
    if (known(weight.d[2]) && known(x.d[1]) && weight.d[2] != x.d[1])
        return fail("weight " + dims_text(weight) + " does not match C of x " + dims_text(x));
    if (known(weight.d[1]) && known(bias.d[1]) && weight.d[1] != bias.d[1])
        return fail("bias " + dims_text(bias) + " does not match R of weight " + dims_text(weight));
    if (known(x.d[0]) && known(x.d[1]) && known(x.d[2]) && known(x.d[3]) && known(weight.d[1])) {
        const int status = edgestack_pyramid_pooling_check(int(x.d[0]), int(x.d[1]), int(x.d[2]), int(x.d[3]),
                                                           int(weight.d[1]), attributes_.bins.data(), int(nbins));
        if (status != EDGESTACK_OK)
            return fail(std::string(edgestack_status_string(status)) + " (x " + dims_text(x) + ", weight " +
                        dims_text(weight) + ")");
    }
    return true;
}

int32_t PyramidPoolingPlugin::getOutputShapes(const DimsExprs* inputs, int32_t nbInputs, const DimsExprs*, int32_t,
                                              DimsExprs* outputs, int32_t nbOutputs,
                                              IExprBuilder& exprBuilder) noexcept {
    if (nbInputs != kInputs || nbOutputs != kOutputs) {
        fail("expects 3 inputs and 1 output");
        return -1;
    }
    if (!inputs_fit(inputs)) return -1;
    const IDimensionExpr* branches = exprBuilder.operation(DimensionOperation::kPROD, *inputs[1].d[0], *inputs[1].d[1]);
    outputs[0] = inputs[0];
    outputs[0].d[1] = exprBuilder.operation(DimensionOperation::kSUM, *inputs[0].d[1], *branches);
    return 0;
}

bool PyramidPoolingPlugin::supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* inOut,
                                                     int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != kInputs || nbOutputs != kOutputs || pos < 0 || pos >= kInputs + kOutputs) return false;
    // TensorRT fills inOut[0..pos] only: the shapes are checked at the last position, when all are there.
    const PluginTensorDesc& desc = inOut[pos].desc;
    switch (pos) {
        case 0: return is_float_linear(desc);
        case 1: return is_float_linear(desc);
        case 2: return is_float_linear(desc) && desc.type == inOut[1].desc.type;
        default: return is_float_linear(desc) && desc.type == inOut[0].desc.type && inputs_fit(inOut);
    }
}

size_t PyramidPoolingPlugin::getWorkspaceSize(const DynamicPluginTensorDesc* inputs, int32_t nbInputs,
                                              const DynamicPluginTensorDesc*, int32_t) const noexcept {
    if (nbInputs != kInputs) return 0;
    // Sized for the profile's largest batch and channel counts.
    return edgestack_pyramid_pooling_workspace_size(int(inputs[0].max.d[0]), int(inputs[0].max.d[1]),
                                                    int(inputs[1].max.d[1]), attributes_.bins.data(),
                                                    int(attributes_.bins.size()));
}

int32_t PyramidPoolingPlugin::enqueue(const PluginTensorDesc* inputDesc, const PluginTensorDesc*,
                                      const void* const* inputs, void* const* outputs, void* workspace,
                                      cudaStream_t stream) noexcept {
    const Dims& x = inputDesc[0].dims;
    const int reduced = int(inputDesc[1].dims.d[1]);
    const int nbins = int(attributes_.bins.size());
    // What these dims need; TensorRT gave getWorkspaceSize's bytes for the profile's largest B and C, which
    // covers it because the size grows with B, C and R only, never with H or W (the size is not serialized, so
    // the kernel cannot be told more).
    const size_t workspace_bytes =
        edgestack_pyramid_pooling_workspace_size(int(x.d[0]), int(x.d[1]), reduced, attributes_.bins.data(), nbins);
    const int status = edgestack_pyramid_pooling(
        inputs[0], inputs[1], inputs[2], outputs[0], workspace, workspace_bytes,
        to_edgestack_dtype(inputDesc[0].type), to_edgestack_dtype(inputDesc[1].type), int(x.d[0]), int(x.d[1]),
        int(x.d[2]), int(x.d[3]), reduced, attributes_.bins.data(), nbins, attributes_.align_corners, stream);
    return report(kName, status);
}

PyramidPoolingCreator::PyramidPoolingCreator()
    : CreatorBase({
          PluginField("bins", nullptr, PluginFieldType::kINT32, 0),
          PluginField("align_corners", nullptr, PluginFieldType::kINT32, 1),
      }) {}

IPluginV3* PyramidPoolingCreator::createPlugin(const char*, const PluginFieldCollection* fc, TensorRTPhase) noexcept {
    try {
        PyramidPoolingAttributes a;
        bool ok = true;
        for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
            const PluginField& f = fc->fields[i];
            if (is_field(f, "bins")) ok &= read_ints(f, a.bins);
            else if (is_field(f, "align_corners")) ok &= read_int(f, a.align_corners);
        }
        if (!ok) {
            fail("a field has an unexpected type or length");
            return nullptr;
        }
        if (a.align_corners != 0 && a.align_corners != 1) {
            fail("align_corners must be 0 or 1; got " + std::to_string(a.align_corners));
            return nullptr;
        }
        // The bins against the kernel's own check (count, sum, positive), at parse time, not at the first shape.
        const int status = edgestack_pyramid_pooling_check(1, 1, 1, 1, 1, a.bins.data(), int(a.bins.size()));
        if (status != EDGESTACK_OK) {
            fail(std::string(edgestack_status_string(status)) + ": bins must be a non-empty list of positive "
                 "integers, at most 8 bins summing to at most 32; got " + std::to_string(a.bins.size()) + " entries");
            return nullptr;
        }
        return new PyramidPoolingPlugin(a);
    } catch (...) {
        return nullptr;
    }
}

}  // namespace edgestack::trt
