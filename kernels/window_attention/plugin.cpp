#include "plugin.h"

#include "../common/plugin_utils.h"
#include "kernel.h"

namespace edgestack::trt {

using namespace nvinfer1;

namespace {

constexpr int32_t kInputs = WindowAttentionPlugin::kInputs;
constexpr int32_t kOutputs = WindowAttentionPlugin::kOutputs;

bool fail(const std::string& message) { return edgestack::trt::fail(WindowAttentionPlugin::kName, message); }

}  // namespace

std::vector<PluginField> WindowAttentionPlugin::fields() {
    return {
        PluginField("num_heads", &attributes_.num_heads, PluginFieldType::kINT32, 1),
        PluginField("window_size", &attributes_.window_size, PluginFieldType::kINT32, 1),
        PluginField("shift_size", &attributes_.shift_size, PluginFieldType::kINT32, 1),
        PluginField("scale", &attributes_.scale, PluginFieldType::kFLOAT32, 1),
        PluginField("masked_bias", &attributes_.masked_bias, PluginFieldType::kFLOAT32, 1),
    };
}

int32_t WindowAttentionPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs,
                                                  const DataType* inputTypes, int32_t nbInputs) const noexcept {
    if (nbInputs != kInputs || nbOutputs != kOutputs) return -1;
    // The kernel takes one dtype for q, k, v, mask and both outputs.
    const bool is_float = inputTypes[0] == DataType::kFLOAT || inputTypes[0] == DataType::kHALF;
    if (!is_float || inputTypes[1] != inputTypes[0] || inputTypes[2] != inputTypes[0] || inputTypes[3] != inputTypes[0]) {
        fail("q, k, v and mask must share one type, fp32 or fp16");
        return -1;
    }
    outputTypes[0] = inputTypes[0];
    outputTypes[1] = inputTypes[0];
    return 0;
}

bool WindowAttentionPlugin::check_dims(const Dims* dims, int32_t count) const noexcept {
    if (count != kInputs) return fail("expects 4 inputs (q, k, v, mask), got " + std::to_string(count));
    const Dims& q = dims[0];
    if (q.nbDims != 4) return fail("q must be [B,H,W,C], got " + dims_text(q));
    for (int32_t t = 1; t < kInputs; ++t) {
        if (dims[t].nbDims != 4) return fail("every input must have rank 4, got " + dims_text(dims[t]));
        for (int32_t i = 0; i < 4; ++i) {
            const int64_t expected = (t == 3 && i == 3) ? 1 : q.d[i];
            if (known(expected) && known(dims[t].d[i]) && dims[t].d[i] != expected)
                return fail("q, k, v must share one shape and mask must be [B,H,W,1]; got q " + dims_text(q) +
                            " and input " + std::to_string(t) + " " + dims_text(dims[t]));
        }
    }
    const int64_t h = q.d[1], w = q.d[2], c = q.d[3];
    const WindowAttentionAttributes& a = attributes_;
    if (known(c) && c % a.num_heads)
        return fail("C=" + std::to_string(c) + " is not divisible by num_heads=" + std::to_string(a.num_heads));
    if (known(c) && c / a.num_heads > 64)
        return fail("head_dim=" + std::to_string(c / a.num_heads) + " exceeds the kernel's limit of 64");
    if ((known(h) && h % a.window_size) || (known(w) && w % a.window_size))
        return fail("H=" + std::to_string(h) + " and W=" + std::to_string(w) + " must be multiples of window_size=" +
                    std::to_string(a.window_size));
    if (known(q.d[0]) && known(h) && known(w) && known(c)) {  // every limit the kernel has, once all dims are known
        const int status = edgestack_window_attention_check(int(q.d[0]), int(h), int(w), int(c), a.num_heads,
                                                            a.window_size, a.shift_size);
        if (status != EDGESTACK_OK) return fail(std::string(edgestack_status_string(status)) + " (q " + dims_text(q) + ")");
    }
    return true;
}

int32_t WindowAttentionPlugin::getOutputShapes(const DimsExprs* inputs, int32_t nbInputs, const DimsExprs*, int32_t,
                                               DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept {
    if (nbInputs != kInputs || nbOutputs != kOutputs) {
        fail("expects 4 inputs and 2 outputs");
        return -1;
    }
    if (!inputs_fit(inputs)) return -1;
    outputs[0] = inputs[0];
    outputs[1] = inputs[3];
    return 0;
}

bool WindowAttentionPlugin::supportsFormatCombination(int32_t pos, const DynamicPluginTensorDesc* inOut,
                                                      int32_t nbInputs, int32_t nbOutputs) noexcept {
    if (nbInputs != kInputs || nbOutputs != kOutputs || pos < 0 || pos >= kInputs + kOutputs) return false;
    // TensorRT fills inOut[0..pos] only: the shapes are checked at the last position, when all are there.
    const PluginTensorDesc& desc = inOut[pos].desc;
    if (pos == 0) return is_float_linear(desc);
    const bool fits = is_float_linear(desc) && desc.type == inOut[0].desc.type;
    return pos == kInputs + kOutputs - 1 ? fits && inputs_fit(inOut) : fits;
}

int32_t WindowAttentionPlugin::enqueue(const PluginTensorDesc* inputDesc, const PluginTensorDesc*,
                                       const void* const* inputs, void* const* outputs, void*,
                                       cudaStream_t stream) noexcept {
    const Dims& d = inputDesc[0].dims;
    const WindowAttentionAttributes& a = attributes_;
    const int status = edgestack_window_attention(
        inputs[0], inputs[1], inputs[2], inputs[3], outputs[0], outputs[1], to_edgestack_dtype(inputDesc[0].type),
        int(d.d[0]), int(d.d[1]), int(d.d[2]), int(d.d[3]), a.num_heads, a.window_size, a.shift_size, a.scale,
        a.masked_bias, stream);
    return report(kName, status);
}

WindowAttentionCreator::WindowAttentionCreator()
    : CreatorBase({
          PluginField("num_heads", nullptr, PluginFieldType::kINT32, 1),
          PluginField("window_size", nullptr, PluginFieldType::kINT32, 1),
          PluginField("shift_size", nullptr, PluginFieldType::kINT32, 1),
          PluginField("scale", nullptr, PluginFieldType::kFLOAT32, 1),
          PluginField("masked_bias", nullptr, PluginFieldType::kFLOAT32, 1),
      }) {}

IPluginV3* WindowAttentionCreator::createPlugin(const char*, const PluginFieldCollection* fc,
                                                TensorRTPhase) noexcept {
    try {
        WindowAttentionAttributes a;
        bool ok = true;
        for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
            const PluginField& f = fc->fields[i];
            if (is_field(f, "num_heads")) ok &= read_int(f, a.num_heads);
            else if (is_field(f, "window_size")) ok &= read_int(f, a.window_size);
            else if (is_field(f, "shift_size")) ok &= read_int(f, a.shift_size);
            else if (is_field(f, "scale")) ok &= read_float(f, a.scale);
            else if (is_field(f, "masked_bias")) ok &= read_float(f, a.masked_bias);
        }
        if (!ok) {
            fail("a field has an unexpected type or length");
            return nullptr;
        }
        // The attributes alone against the kernel's limits: one window of num_heads channels (head_dim 1).
        const int status = edgestack_window_attention_check(1, a.window_size, a.window_size, a.num_heads, a.num_heads,
                                                            a.window_size, a.shift_size);
        if (status != EDGESTACK_OK) {
            fail(std::string(edgestack_status_string(status)) + ": needs num_heads >= 1, window_size >= 1 and 0 <= "
                 "shift_size < window_size; got " + std::to_string(a.num_heads) + ", " +
                 std::to_string(a.window_size) + ", " + std::to_string(a.shift_size));
            return nullptr;
        }
        return new WindowAttentionPlugin(a);
    } catch (...) {
        return nullptr;
    }
}

}  // namespace edgestack::trt
