// Host-side check of libedgestack_trt_plugins.so, run without a GPU or libnvinfer: the library is opened and
// driven through its entry points the way TensorRT and its ONNX parser drive it (setLoggerFinder, getCreators,
// fields typed as onnx-tensorrt types ONNX attributes: INT/INTS -> kINT32, FLOAT -> kFLOAT32, STRING -> kCHAR),
// then each plugin's build-time half: output types and shapes (through a small IExprBuilder), format
// combinations, contract violations (refused with a logged message), workspace, and the serialize ->
// createPlugin(kRUNTIME) round trip. No kernel runs here; the GPU tests cover that.
//   edgestack_trt_plugin_check path/to/libedgestack_trt_plugins.so   -> exit 0 when every check holds
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

class Logger : public ILogger, public ILoggerFinder {
public:
    void log(Severity, const char* message) noexcept override { messages.emplace_back(message); }
    ILogger* findLogger() noexcept override { return this; }
    // True when a message since the last call contains `text`; clears the messages.
    bool said(const char* text) {
        bool found = false;
        for (const std::string& m : messages) found |= m.find(text) != std::string::npos;
        if (!found)
            for (const std::string& m : messages) std::printf("  logged: %s\n", m.c_str());
        messages.clear();
        return found;
    }
    std::vector<std::string> messages;
};
Logger logger;

int failures = 0;

// A failed check also drops what was logged, so a later logger.said() cannot match a stale message.
#define CHECK(condition)                                                   \
    do {                                                                   \
        if (!(condition)) {                                                \
            std::printf("FAILED line %d: %s\n", __LINE__, #condition);     \
            ++failures;                                                    \
            logger.messages.clear();                                       \
        }                                                                  \
    } while (0)

// Dimension expressions: a constant or unknown (-1) value; sums and products of constants fold.
class DimensionValue : public apiv::VDimensionExpr {
public:
    explicit DimensionValue(int64_t value) : value_(value) {}
    bool isConstant() const override { return value_ >= 0; }
    int64_t getConstantValue() const override { return value_; }
    bool isSizeTensor() const override { return false; }

private:
    int64_t value_;
};

class Dimension : public IDimensionExpr {
public:
    explicit Dimension(int64_t value) : value_(value) { mImpl = &value_; }

private:
    DimensionValue value_;
};

class ExpressionValues : public apiv::VExprBuilder {
public:
    const IDimensionExpr* constant(int64_t value) override {
        made_.push_back(std::make_unique<Dimension>(value));
        return made_.back().get();
    }
    const IDimensionExpr* operation(DimensionOperation op, const IDimensionExpr& a, const IDimensionExpr& b) override {
        if (!a.isConstant() || !b.isConstant()) return constant(-1);
        const int64_t x = a.getConstantValue(), y = b.getConstantValue();
        if (op == DimensionOperation::kSUM) return constant(x + y);
        if (op == DimensionOperation::kPROD) return constant(x * y);
        return constant(-1);
    }
    const IDimensionExpr* declareSizeTensor(int32_t, const IDimensionExpr&, const IDimensionExpr&) override {
        return nullptr;
    }

private:
    std::vector<std::unique_ptr<Dimension>> made_;
};

class Expressions : public IExprBuilder {
public:
    Expressions() { mImpl = &values_; }
    DimsExprs of(const std::vector<int64_t>& dims) {
        DimsExprs e{};
        e.nbDims = int32_t(dims.size());
        for (size_t i = 0; i < dims.size(); ++i) e.d[i] = constant(dims[i]);
        return e;
    }

private:
    ExpressionValues values_;
};

Dims dims_of(const std::vector<int64_t>& values) {
    Dims d{};
    d.nbDims = int32_t(values.size());
    for (size_t i = 0; i < values.size(); ++i) d.d[i] = values[i];
    return d;
}

std::vector<int64_t> values_of(const DimsExprs& e) {
    std::vector<int64_t> v;
    for (int32_t i = 0; i < e.nbDims; ++i) v.push_back(e.d[i]->isConstant() ? e.d[i]->getConstantValue() : -1);
    return v;
}

// Build-time tensor description: `dims` as TensorRT sees them (-1 dynamic), max = `max` where given.
DynamicPluginTensorDesc tensor(const std::vector<int64_t>& dims, DataType type, std::vector<int64_t> max = {}) {
    DynamicPluginTensorDesc t{};
    t.desc.dims = dims_of(dims);
    t.desc.type = type;
    t.desc.format = TensorFormat::kLINEAR;
    t.max = dims_of(max.empty() ? dims : max);
    t.min = t.opt = t.max;
    return t;
}

// ONNX attributes as the parser hands them over (owning their bytes).
class Attributes {
public:
    Attributes& ints(const char* name, std::vector<int32_t> values) {
        return add(name, values.data(), values.size() * 4, PluginFieldType::kINT32, int32_t(values.size()));
    }
    Attributes& floats(const char* name, float value) { return add(name, &value, 4, PluginFieldType::kFLOAT32, 1); }
    Attributes& text(const char* name, const char* value) {
        return add(name, value, std::strlen(value) + 1, PluginFieldType::kCHAR, int32_t(std::strlen(value) + 1));
    }
    Attributes& int64s(const char* name, int64_t value) { return add(name, &value, 8, PluginFieldType::kINT64, 1); }
    const PluginFieldCollection* collection(bool reversed = false) {
        fields_.clear();
        for (size_t i = 0; i < names_.size(); ++i)
            fields_.emplace_back(names_[i].c_str(), bytes_[i].data(), types_[i], lengths_[i]);
        if (reversed) std::vector<PluginField>(fields_.rbegin(), fields_.rend()).swap(fields_);
        collection_ = {int32_t(fields_.size()), fields_.data()};
        return &collection_;
    }

private:
    Attributes& add(const char* name, const void* data, size_t bytes, PluginFieldType type, int32_t length) {
        names_.emplace_back(name);
        bytes_.emplace_back(static_cast<const char*>(data), static_cast<const char*>(data) + bytes);
        types_.push_back(type);
        lengths_.push_back(length);
        return *this;
    }
    std::vector<std::string> names_;
    std::vector<std::vector<char>> bytes_;
    std::vector<PluginFieldType> types_;
    std::vector<int32_t> lengths_;
    std::vector<PluginField> fields_;
    PluginFieldCollection collection_{};
};

IPluginV3OneCore* core(IPluginV3* p) {
    return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE));
}
IPluginV3OneBuild* build(IPluginV3* p) {
    return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD));
}
IPluginV3OneRuntime* runtime(IPluginV3* p) {
    return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
}

size_t field_bytes(const PluginField& f) {
    const size_t element = f.type == PluginFieldType::kINT64 || f.type == PluginFieldType::kFLOAT64 ? 8
                           : f.type == PluginFieldType::kCHAR                                        ? 1
                                                                                                     : 4;
    return element * size_t(f.length);
}

// Serialize (TensorRT copies the bytes), create a runtime plugin from them, and compare its fields.
void check_round_trip(IPluginCreatorV3One* creator, IPluginV3* plugin) {
    const PluginFieldCollection* saved = runtime(plugin)->getFieldsToSerialize();
    CHECK(saved && saved->nbFields > 0);
    if (!saved) return;
    std::vector<std::vector<char>> bytes;
    std::vector<PluginField> copies;
    bytes.reserve(size_t(saved->nbFields));
    for (int32_t i = 0; i < saved->nbFields; ++i) {
        const PluginField& f = saved->fields[i];
        bytes.emplace_back(static_cast<const char*>(f.data), static_cast<const char*>(f.data) + field_bytes(f));
        copies.emplace_back(f.name, bytes.back().data(), f.type, f.length);
    }
    PluginFieldCollection collection{int32_t(copies.size()), copies.data()};
    IPluginV3* restored = creator->createPlugin("restored", &collection, TensorRTPhase::kRUNTIME);
    CHECK(restored != nullptr);
    if (!restored) return;
    const PluginFieldCollection* again = runtime(restored)->getFieldsToSerialize();
    CHECK(again->nbFields == saved->nbFields);
    for (int32_t i = 0; i < again->nbFields && i < saved->nbFields; ++i) {
        CHECK(std::strcmp(again->fields[i].name, copies[size_t(i)].name) == 0);
        CHECK(again->fields[i].length == copies[size_t(i)].length);
        CHECK(std::memcmp(again->fields[i].data, bytes[size_t(i)].data(), bytes[size_t(i)].size()) == 0);
    }
    IPluginV3* attached = runtime(restored)->attachToContext(nullptr);
    CHECK(attached != nullptr && attached != restored);
    delete attached;
    delete restored;
}

// supportsFormatCombination over every position as TensorRT asks it: inOut[0..pos] hold the candidate, the
// entries after pos are undecided (garbage here, so a plugin that reads them fails).
bool formats_ok(IPluginV3* plugin, const std::vector<DynamicPluginTensorDesc>& candidate, int32_t inputs) {
    const int32_t count = int32_t(candidate.size());
    for (int32_t pos = 0; pos < count; ++pos) {
        std::vector<DynamicPluginTensorDesc> in_out = candidate;
        for (int32_t later = pos + 1; later < count; ++later) {
            in_out[size_t(later)].desc.type = DataType::kINT8;
            in_out[size_t(later)].desc.dims = dims_of({12345, -7, 3});
        }
        if (!build(plugin)->supportsFormatCombination(pos, in_out.data(), inputs, count - inputs)) return false;
    }
    return true;
}

void check_window_attention(IPluginCreatorV3One* creator, Expressions& expressions) {
    std::printf("EdgeWindowMaskedAttention\n");
    Attributes onnx;
    onnx.ints("num_heads", {6}).ints("window_size", {8}).ints("shift_size", {4}).floats("scale", 0.f)
        .floats("masked_bias", -100.f).text("plugin_version", "1");
    IPluginV3* plugin = creator->createPlugin("attn", onnx.collection(/*reversed=*/true), TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    if (!plugin) return;
    CHECK(std::string(core(plugin)->getPluginName()) == "EdgeWindowMaskedAttention");
    CHECK(std::string(core(plugin)->getPluginVersion()) == "1");
    CHECK(build(plugin)->getNbOutputs() == 2);
    const char* timing_id = build(plugin)->getTimingCacheID();
    CHECK(timing_id && std::string(timing_id) == "num_heads=6;window_size=8;shift_size=4;scale=0;masked_bias=-100;");

    DataType types[2];
    const DataType half[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kHALF};
    CHECK(build(plugin)->getOutputDataTypes(types, 2, half, 4) == 0 && types[0] == DataType::kHALF &&
          types[1] == DataType::kHALF);
    const DataType mixed[4] = {DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kFLOAT};
    CHECK(build(plugin)->getOutputDataTypes(types, 2, mixed, 4) == -1 && logger.said("share one type"));

    // MAT's 64x64 stage, batch and size dynamic: outputs keep the inputs' shapes.
    DimsExprs in[4] = {expressions.of({-1, -1, -1, 180}), expressions.of({-1, -1, -1, 180}),
                       expressions.of({-1, -1, -1, 180}), expressions.of({-1, -1, -1, 1})};
    DimsExprs out[2];
    CHECK(build(plugin)->getOutputShapes(in, 4, nullptr, 0, out, 2, expressions) == 0);
    CHECK(values_of(out[0]) == std::vector<int64_t>({-1, -1, -1, 180}));
    CHECK(values_of(out[1]) == std::vector<int64_t>({-1, -1, -1, 1}));
    DimsExprs bad_heads[4] = {expressions.of({1, 64, 64, 181}), expressions.of({1, 64, 64, 181}),
                              expressions.of({1, 64, 64, 181}), expressions.of({1, 64, 64, 1})};
    CHECK(build(plugin)->getOutputShapes(bad_heads, 4, nullptr, 0, out, 2, expressions) == -1 &&
          logger.said("not divisible by num_heads=6"));

    const auto q = tensor({2, 64, 64, 180}, DataType::kHALF);
    const auto mask = tensor({2, 64, 64, 1}, DataType::kHALF);
    CHECK(formats_ok(plugin, {q, q, q, mask, q, mask}, 4));
    CHECK(!formats_ok(plugin, {q, q, tensor({2, 64, 64, 180}, DataType::kFLOAT), mask, q, mask}, 4));
    const auto odd = tensor({2, 60, 64, 180}, DataType::kHALF);  // H not a multiple of the window
    const auto odd_mask = tensor({2, 60, 64, 1}, DataType::kHALF);
    CHECK(!formats_ok(plugin, {odd, odd, odd, odd_mask, odd, odd_mask}, 4) && logger.said("multiples of window_size=8"));
    const auto other_k = tensor({2, 64, 64, 120}, DataType::kHALF);  // k does not match q
    CHECK(!formats_ok(plugin, {q, other_k, q, mask, q, mask}, 4) && logger.said("share one shape"));
    std::vector<DynamicPluginTensorDesc> io = {q, q, q, mask, q, mask};
    CHECK(build(plugin)->configurePlugin(io.data(), 4, io.data() + 4, 2) == 0);
    std::vector<DynamicPluginTensorDesc> bad_io = {odd, odd, odd, odd_mask, odd, odd_mask};
    CHECK(build(plugin)->configurePlugin(bad_io.data(), 4, bad_io.data() + 4, 2) == -1 && logger.said("window_size"));
    // A dynamic profile is checked at its corners: a largest H of 68 (not a multiple of 8) fails the build.
    const auto profile = [](int64_t channels, int64_t max_height) {
        DynamicPluginTensorDesc t = tensor({-1, -1, -1, channels}, DataType::kHALF, {1, 64, 64, channels});
        t.max = dims_of({2, max_height, 64, channels});
        return t;
    };
    std::vector<DynamicPluginTensorDesc> profile_io = {profile(180, 128), profile(180, 128), profile(180, 128),
                                                       profile(1, 128),   profile(180, 128), profile(1, 128)};
    CHECK(build(plugin)->configurePlugin(profile_io.data(), 4, profile_io.data() + 4, 2) == 0);
    for (auto& t : profile_io) t.max.d[1] = 68;
    CHECK(build(plugin)->configurePlugin(profile_io.data(), 4, profile_io.data() + 4, 2) == -1 &&
          logger.said("multiples of window_size=8"));
    check_round_trip(creator, plugin);

    // head_dim 30 (MAT) and any other up to the kernel's 64; beyond is refused once C is known.
    DimsExprs wide[4] = {expressions.of({1, 16, 16, 6 * 80}), expressions.of({1, 16, 16, 6 * 80}),
                         expressions.of({1, 16, 16, 6 * 80}), expressions.of({1, 16, 16, 1})};
    CHECK(build(plugin)->getOutputShapes(wide, 4, nullptr, 0, out, 2, expressions) == -1 &&
          logger.said("head_dim=80"));
    delete plugin;

    Attributes bad_shift;
    bad_shift.ints("num_heads", {6}).ints("window_size", {8}).ints("shift_size", {8});
    CHECK(creator->createPlugin("attn", bad_shift.collection(), TensorRTPhase::kBUILD) == nullptr &&
          logger.said("shift_size < window_size"));
    Attributes missing;
    missing.ints("window_size", {8});
    CHECK(creator->createPlugin("attn", missing.collection(), TensorRTPhase::kBUILD) == nullptr &&
          logger.said("num_heads >= 1"));
    Attributes float_heads;
    float_heads.floats("num_heads", 6.f).ints("window_size", {8});
    CHECK(creator->createPlugin("attn", float_heads.collection(), TensorRTPhase::kBUILD) == nullptr &&
          logger.said("unexpected type"));
    Attributes huge;
    huge.int64s("num_heads", int64_t(1) << 40).ints("window_size", {8});
    CHECK(creator->createPlugin("attn", huge.collection(), TensorRTPhase::kBUILD) == nullptr &&
          logger.said("unexpected type"));
}

void check_pyramid_pooling(IPluginCreatorV3One* creator, Expressions& expressions) {
    std::printf("EdgePyramidPooling\n");
    Attributes onnx;
    onnx.ints("bins", {1, 2, 3, 6}).ints("align_corners", {1}).text("plugin_version", "1");
    IPluginV3* plugin = creator->createPlugin("ppm", onnx.collection(), TensorRTPhase::kBUILD);
    CHECK(plugin != nullptr);
    if (!plugin) return;
    CHECK(std::string(core(plugin)->getPluginName()) == "EdgePyramidPooling");
    // The timing cache ID names the attributes, so layers with others are timed apart.
    const char* timing_id = build(plugin)->getTimingCacheID();
    CHECK(timing_id && std::string(timing_id) == "bins=1,2,3,6;align_corners=1;");

    DataType type;
    const DataType half_x[3] = {DataType::kHALF, DataType::kFLOAT, DataType::kFLOAT};
    CHECK(build(plugin)->getOutputDataTypes(&type, 1, half_x, 3) == 0 && type == DataType::kHALF);
    const DataType int_x[3] = {DataType::kINT32, DataType::kFLOAT, DataType::kFLOAT};
    CHECK(build(plugin)->getOutputDataTypes(&type, 1, int_x, 3) == -1 && logger.said("fp32 or fp16"));

    // PSPNet-r50 head: C 2048, R 512, 4 bins -> 2048 + 4*512 channels; batch and size stay dynamic.
    DimsExprs in[3] = {expressions.of({-1, 2048, -1, -1}), expressions.of({4, 512, 2048}), expressions.of({4, 512})};
    DimsExprs out[1];
    CHECK(build(plugin)->getOutputShapes(in, 3, nullptr, 0, out, 1, expressions) == 0);
    CHECK(values_of(out[0]) == std::vector<int64_t>({-1, 4096, -1, -1}));
    DimsExprs wrong_c[3] = {expressions.of({1, 1024, 60, 60}), expressions.of({4, 512, 2048}),
                            expressions.of({4, 512})};
    CHECK(build(plugin)->getOutputShapes(wrong_c, 3, nullptr, 0, out, 1, expressions) == -1 &&
          logger.said("does not match C"));
    DimsExprs wrong_bins[3] = {expressions.of({1, 2048, 60, 60}), expressions.of({3, 512, 2048}),
                               expressions.of({3, 512})};
    CHECK(build(plugin)->getOutputShapes(wrong_bins, 3, nullptr, 0, out, 1, expressions) == -1 &&
          logger.said("nbins=4"));

    const auto x = tensor({-1, 2048, -1, -1}, DataType::kHALF, {4, 2048, 97, 97});
    const auto weight = tensor({4, 512, 2048}, DataType::kFLOAT);
    const auto bias = tensor({4, 512}, DataType::kFLOAT);
    const auto y = tensor({-1, 4096, -1, -1}, DataType::kHALF, {4, 4096, 97, 97});
    CHECK(formats_ok(plugin, {x, weight, bias, y}, 3));
    CHECK(!formats_ok(plugin, {x, weight, tensor({4, 512}, DataType::kHALF), y}, 3));  // bias type != weight type
    CHECK(!formats_ok(plugin, {x, weight, bias, tensor({-1, 4096, -1, -1}, DataType::kFLOAT)}, 3));
    std::vector<DynamicPluginTensorDesc> io = {x, weight, bias, y};
    // Workspace for the profile's largest batch: 4 bytes x B x cells (1+4+9+36) x (C + R).
    CHECK(build(plugin)->getWorkspaceSize(io.data(), 3, io.data() + 3, 1) == size_t(4) * 4 * 50 * (2048 + 512));
    CHECK(build(plugin)->configurePlugin(io.data(), 3, io.data() + 3, 1) == 0);
    // The profile's largest shape is held to the kernel's limits at build time: a batch of 70000 is over the
    // conv grid's 65535, and a 100000-wide map over any device's shared memory (without a GPU the device query
    // fails, so the plugin refuses all the same, with CUDA's reason).
    std::vector<DynamicPluginTensorDesc> big_batch = io;
    big_batch[0].max.d[0] = big_batch[3].max.d[0] = 70000;
    CHECK(build(plugin)->configurePlugin(big_batch.data(), 3, big_batch.data() + 3, 1) == -1 &&
          logger.said("shape outside what this kernel implements"));
    std::vector<DynamicPluginTensorDesc> wide = io;
    wide[0].max.d[3] = wide[3].max.d[3] = 100000;
    CHECK(build(plugin)->configurePlugin(wide.data(), 3, wide.data() + 3, 1) == -1 && logger.said("100000"));
    check_round_trip(creator, plugin);
    delete plugin;

    Attributes no_bins;  // the contract's default bins 1,2,3,6
    no_bins.ints("align_corners", {0});
    IPluginV3* defaulted = creator->createPlugin("ppm", no_bins.collection(), TensorRTPhase::kBUILD);
    CHECK(defaulted != nullptr);
    if (defaulted) {
        const PluginFieldCollection* fields = runtime(defaulted)->getFieldsToSerialize();
        const PluginField& bins = fields->fields[0];
        CHECK(std::strcmp(bins.name, "bins") == 0 && bins.length == 4);
        CHECK(bins.length == 4 && std::memcmp(bins.data, std::vector<int32_t>({1, 2, 3, 6}).data(), 16) == 0);
        const char* other_id = build(defaulted)->getTimingCacheID();
        CHECK(other_id && std::string(other_id) == "bins=1,2,3,6;align_corners=0;");
        delete defaulted;
    }
    Attributes two_corners;  // a boolean attribute: any other value is a malformed graph, not "true"
    two_corners.ints("bins", {1, 2}).ints("align_corners", {2});
    CHECK(creator->createPlugin("ppm", two_corners.collection(), TensorRTPhase::kBUILD) == nullptr &&
          logger.said("align_corners must be 0 or 1; got 2"));
    Attributes empty_bins;
    empty_bins.ints("bins", {});
    CHECK(creator->createPlugin("ppm", empty_bins.collection(), TensorRTPhase::kBUILD) == nullptr &&
          logger.said("non-empty"));
    Attributes nine_bins;  // more bins than the kernel takes: refused at parse time, not at the first shape
    nine_bins.ints("bins", {1, 1, 1, 1, 1, 1, 1, 1, 1});
    CHECK(creator->createPlugin("ppm", nine_bins.collection(), TensorRTPhase::kBUILD) == nullptr &&
          logger.said("at most 8 bins"));
    Attributes zero_bin;
    zero_bin.ints("bins", {1, 0, 3});
    CHECK(creator->createPlugin("ppm", zero_bin.collection(), TensorRTPhase::kBUILD) == nullptr &&
          logger.said("positive integers"));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s path/to/libedgestack_trt_plugins.so\n", argv[0]);
        return 2;
    }
    void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
        return 2;
    }
    using FinderSetter = void (*)(ILoggerFinder*);
    using CreatorsGetter = IPluginCreatorInterface* const* (*)(int32_t&);
    auto set_logger_finder = reinterpret_cast<FinderSetter>(dlsym(library, "setLoggerFinder"));
    auto get_creators = reinterpret_cast<CreatorsGetter>(dlsym(library, "getCreators"));
    CHECK(set_logger_finder != nullptr && get_creators != nullptr);
    if (!set_logger_finder || !get_creators) return 1;
    set_logger_finder(&logger);
    // The first finder stays: neither a later nullptr nor another finder takes our messages from it (every
    // logger.said() below depends on that).
    Logger other;
    set_logger_finder(nullptr);
    set_logger_finder(&other);

    int32_t count = 0;
    IPluginCreatorInterface* const* creators = get_creators(count);
    CHECK(count == 2);
    Expressions expressions;
    int checked = 0;
    for (int32_t i = 0; i < count; ++i) {
        CHECK(std::string(creators[i]->getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE");
        auto* creator = static_cast<IPluginCreatorV3One*>(creators[i]);
        CHECK(std::string(creator->getPluginVersion()) == "1" && std::string(creator->getPluginNamespace()).empty());
        const std::string name = creator->getPluginName();
        if (name == "EdgeWindowMaskedAttention") check_window_attention(creator, expressions), ++checked;
        if (name == "EdgePyramidPooling") check_pyramid_pooling(creator, expressions), ++checked;
    }
    CHECK(checked == 2);
    std::printf("%s: %d failed check(s)\n", failures ? "FAILED" : "passed", failures);
    return failures ? 1 : 0;
}
