// The only file that includes pybind11: converts Python buffers to views, releases the
// GIL around every codec call and maps statuses to exceptions. It links no torch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "actzip/actzip.h"
#include "actzip/pipeline.h"

namespace py = pybind11;

namespace {

struct FormatErrorTag {};
py::handle g_format_error;

[[noreturn]] void raise(const actzip::Status& s) {
  switch (s.code) {
    case actzip::StatusCode::kFormatError:
      PyErr_SetString(g_format_error.ptr(), s.message.c_str());
      throw py::error_already_set();
    case actzip::StatusCode::kInvalidArgument:
    case actzip::StatusCode::kBufferTooSmall: throw py::value_error(s.message);
    case actzip::StatusCode::kDeviceError: throw std::runtime_error("actzip CUDA backend: " + s.message);
    default: throw std::runtime_error("actzip internal error: " + s.message);
  }
}

void check(const actzip::Status& s) {
  if (!s.ok()) raise(s);
}

// A C-contiguous byte view of a Python buffer (numpy array, bytes, memoryview, ...).
struct ByteView {
  py::buffer_info info;
  const uint8_t* data() const { return static_cast<const uint8_t*>(info.ptr); }
  uint8_t* mutable_data() const { return static_cast<uint8_t*>(info.ptr); }
  uint64_t bytes() const { return uint64_t(info.size) * uint64_t(info.itemsize); }
};

ByteView contiguous_view(const py::buffer& buf, const char* name, bool writable) {
  ByteView v{buf.request(writable)};
  py::ssize_t expected = v.info.itemsize;
  for (py::ssize_t d = v.info.ndim; d-- > 0;) {
    if (v.info.shape[d] > 1 && v.info.strides[d] != expected)
      throw py::value_error(std::string(name) + " must be a C-contiguous buffer");
    expected *= v.info.shape[d];
  }
  return v;
}

actzip::DType to_dtype(int code) {
  if (code < 1 || code > 3) throw py::value_error("dtype code must be 1 (float32), 2 (float16) or 3 (bfloat16)");
  return actzip::DType(code);
}

// A compression plan: it holds the encoded stream until encode() copies it out.
struct PyPlan {
  std::unique_ptr<actzip::CompressPlan> plan;
};

// A plan's choices (predictors and codebooks), for plan_compress(reuse=...).
struct PyChoices {
  std::shared_ptr<const actzip::CompressChoices> choices;
};

py::dict stats_dict(const actzip::CompressStats& s) {
  py::dict d;
  d["zeros"] = s.zeros;
  d["coded"] = s.coded;
  d["outliers"] = s.outliers;
  d["raw_chunks"] = s.raw_chunks;
  d["zero_chunks"] = s.zero_chunks;
  d["lorenzo_chunks"] = s.lorenzo_chunks;
  d["lorenzo2d_chunks"] = s.lorenzo2d_chunks;
  d["zero_map_chunks"] = s.zero_map_chunks;
  d["sampled_chunks"] = s.sampled_chunks;
  return d;
}

py::dict info_dict(const actzip::StreamInfo& info) {
  py::dict d;
  d["dtype"] = int(info.dtype);
  d["shape"] = py::tuple(py::cast(info.shape));
  d["numel"] = info.numel;
  d["mode"] = info.mode == actzip::BoundMode::kAbs ? "abs" : "rel";
  d["requested_bound"] = info.requested_bound;
  d["error_bound"] = info.error_bound;
  d["quant_step"] = info.quant_step;
  d["payload_checksum"] = info.payload_checksum;
  d["num_chunks"] = info.num_chunks;
  d["header_bytes"] = info.header_bytes;
  d["stream_bytes"] = info.stream_bytes;
  return d;
}

namespace pl = actzip::pipeline;

// The chunk pipeline takes buffers by address (torch tensors' data_ptr(), on the host or
// on a CUDA device): the Python layer allocates them and owns their lifetime.
pl::Exec make_exec(int device, uintptr_t stream, int num_threads) {
  pl::Exec e;
  e.device = device;
  e.stream = reinterpret_cast<void*>(stream);
  e.num_threads = num_threads;
  return e;
}

pl::TensorRef tensor_ref(uintptr_t data, int dtype, const std::vector<uint64_t>& shape) {
  pl::TensorRef t;
  t.data = reinterpret_cast<const void*>(data);
  t.dtype = to_dtype(dtype);
  t.shape = shape;
  return t;
}

template <class T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

actzip::BoundMode to_mode(const std::string& mode) {
  if (mode == "abs") return actzip::BoundMode::kAbs;
  if (mode == "rel") return actzip::BoundMode::kRel;
  throw py::value_error("mode must be 'abs' or 'rel'");
}

// Runs a stage without the GIL (a host stage may take a while; a device stage only enqueues).
template <class F>
void stage(F f) {
  actzip::Status s;
  {
    py::gil_scoped_release release;
    s = f();
  }
  check(s);
}

void bind_pipeline(py::module_& m) {
  m.def("pipeline_cuda_compiled", &pl::cuda_compiled);
  m.def("pipeline_cuda_device_count", &pl::cuda_device_count);
  m.def("pipeline_num_chunks", &pl::num_chunks);
  m.attr("PIPELINE_HIST_COUNTERS") = pl::kHistCounters;
  m.attr("PIPELINE_LAYOUT_BYTES") = pl::kLayoutBytes;
  m.attr("PIPELINE_DECODE_TABLES_BYTES") = pl::kDecodeTablesBytes;

  m.def("pipeline_finite_range", [](int device, uintptr_t stream, int threads, uintptr_t x, int dtype,
                                    const std::vector<uint64_t>& shape, uintptr_t keys) {
    const pl::TensorRef t = tensor_ref(x, dtype, shape);
    stage([&] { return pl::finite_range(make_exec(device, stream, threads), t, ptr<int32_t>(keys)); });
  });
  m.def("pipeline_rel_abs_bound", &pl::rel_abs_bound);
  m.attr("PIPELINE_BOUND_BYTES") = pl::kBoundBytes;
  m.def("pipeline_resolve_bound", [](int device, uintptr_t stream, int threads, const std::string& mode,
                                     double requested, uintptr_t keys, uintptr_t bound) {
    const actzip::BoundMode m = to_mode(mode);
    stage([&] {
      return pl::resolve_bound(make_exec(device, stream, threads), m, requested, ptr<const int32_t>(keys),
                               ptr<double>(bound));
    });
  });
  m.def("pipeline_sample", [](int device, uintptr_t stream, int threads, uintptr_t x, int dtype,
                              const std::vector<uint64_t>& shape, uintptr_t bound, uintptr_t predictors,
                              uintptr_t hist) {
    const pl::TensorRef t = tensor_ref(x, dtype, shape);
    stage([&] {
      return pl::sample(make_exec(device, stream, threads), t, ptr<const double>(bound), ptr<uint8_t>(predictors),
                        ptr<uint64_t>(hist));
    });
  });

  py::class_<pl::Books>(m, "PipelineBooks")
      .def_readonly("direct_log2", &pl::Books::direct_log2)
      .def_property_readonly("packed", [](const pl::Books& b) {
        return py::bytes(reinterpret_cast<const char*>(b.packed.data()), b.packed.size() * 4);
      });
  m.def("pipeline_build_books", [](const py::buffer& hist) {
    const ByteView h = contiguous_view(hist, "hist", false);
    if (h.bytes() != pl::kHistBytes) throw py::value_error("hist must hold PIPELINE_HIST_COUNTERS u64 counters");
    std::vector<uint64_t> counts(pl::kHistCounters);
    std::memcpy(counts.data(), h.data(), pl::kHistBytes);
    pl::Books books;
    check(pl::build_books(counts.data(), &books));
    return books;
  });
  m.def("pipeline_measure", [](int device, uintptr_t stream, int threads, uintptr_t x, int dtype,
                               const std::vector<uint64_t>& shape, uintptr_t bound, uintptr_t predictors,
                               uintptr_t packed, int direct_log2, uintptr_t layouts) {
    const pl::TensorRef t = tensor_ref(x, dtype, shape);
    stage([&] {
      return pl::measure(make_exec(device, stream, threads), t, ptr<const double>(bound),
                         ptr<const uint8_t>(predictors),
                         ptr<const uint32_t>(packed), direct_log2, ptr<uint8_t>(layouts));
    });
  });
  m.def("pipeline_assemble", [](const py::buffer& layouts, int dtype, const std::vector<uint64_t>& shape,
                                const std::string& mode, double requested, double abs_bound, bool checksum,
                                const pl::Books& books) {
    const ByteView l = contiguous_view(layouts, "layouts", false);
    uint64_t numel = 1;
    for (uint64_t d : shape) numel *= d;
    if (l.bytes() < uint64_t(pl::num_chunks(numel)) * pl::kLayoutBytes)
      throw py::value_error("layouts is shorter than one record per chunk");
    pl::Assembly a;
    check(pl::assemble(l.data(), tensor_ref(0, dtype, shape), to_mode(mode), requested, abs_bound, checksum, books,
                       &a));
    return py::make_tuple(py::bytes(reinterpret_cast<const char*>(a.header.data()), a.header.size()),
                          a.stream_bytes, stats_dict(a.stats));
  });
  m.def("pipeline_write", [](int device, uintptr_t stream, int threads, uintptr_t x, int dtype,
                             const std::vector<uint64_t>& shape, uintptr_t bound, uintptr_t packed,
                             int direct_log2, uintptr_t layouts, uintptr_t out, uint64_t header_bytes) {
    const pl::TensorRef t = tensor_ref(x, dtype, shape);
    stage([&] {
      return pl::write(make_exec(device, stream, threads), t, ptr<const double>(bound), ptr<const uint32_t>(packed),
                       direct_log2, ptr<const uint8_t>(layouts), ptr<uint8_t>(out), header_bytes);
    });
  });

  py::class_<pl::DecodePlan>(m, "PipelineDecodePlan")
      .def_property_readonly("info", [](const pl::DecodePlan& p) { return info_dict(p.info); });
  m.def("pipeline_plan_decode", [](const py::buffer& header, uint64_t stream_bytes) {
    const ByteView h = contiguous_view(header, "header", false);
    pl::DecodePlan plan;
    check(pl::plan_decode(h.data(), h.bytes(), stream_bytes, &plan));
    return plan;
  });
  m.def("pipeline_decode", [](int device, uintptr_t stream, int threads, uintptr_t data, const pl::DecodePlan& plan,
                              uintptr_t tables, uintptr_t out, uintptr_t status) {
    stage([&] {
      const pl::Exec e = make_exec(device, stream, threads);
      actzip::Status s = pl::decode_tables(e, ptr<const uint8_t>(data), plan, ptr<uint8_t>(tables));
      if (!s.ok()) return s;
      return pl::decode(e, ptr<const uint8_t>(data), plan, ptr<const uint8_t>(tables), ptr<void>(out),
                        ptr<uint64_t>(status));
    });
  });
  m.def("pipeline_status_message", &pl::decode_status_message);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "actzip codec core (C++). Use the actzip package, not this module, directly.";
  static py::exception<FormatErrorTag> format_error(m, "FormatError", PyExc_ValueError);
  g_format_error = format_error;
  m.attr("FORMAT_VERSION") = actzip::kFormatVersion;
  m.attr("CHUNK_ELEMS") = actzip::kChunkElems;
#define ACTZIP_STR2(x) #x
#define ACTZIP_STR(x) ACTZIP_STR2(x)
  m.attr("__version__") = ACTZIP_STR(ACTZIP_VERSION_INFO);

  py::class_<PyChoices>(m, "CompressChoices")
      .def_property_readonly("dtype", [](const PyChoices& c) { return int(c.choices->dtype()); })
      .def_property_readonly("shape", [](const PyChoices& c) { return c.choices->shape(); })
      .def_property_readonly("quant_step", [](const PyChoices& c) { return c.choices->quant_step(); });

  py::class_<PyPlan>(m, "CompressPlan")
      .def_property_readonly("compressed_bytes", [](const PyPlan& p) { return p.plan->compressed_bytes(); })
      .def_property_readonly("choices", [](const PyPlan& p) { return PyChoices{p.plan->choices()}; })
      .def_property_readonly("error_bound", [](const PyPlan& p) { return p.plan->error_bound(); })
      .def_property_readonly("stats", [](const PyPlan& p) { return stats_dict(p.plan->stats()); })
      .def(
          "encode",
          [](const PyPlan& p, const py::buffer& out, int num_threads) {
            ByteView o = contiguous_view(out, "out", true);
            actzip::Status s;
            {
              py::gil_scoped_release release;
              s = actzip::encode(*p.plan, o.mutable_data(), o.bytes(), num_threads);
            }
            check(s);
          },
          py::arg("out"), py::arg("num_threads") = 1,
          "Copies the stream (exactly compressed_bytes bytes) into the writable buffer `out`.");

  m.def(
      "plan_compress",
      [](const py::buffer& data, int dtype, const std::vector<uint64_t>& shape, double error_bound,
         const std::string& mode, bool checksum, int num_threads, const PyChoices* reuse) {
        const ByteView input = contiguous_view(data, "data", false);
        auto p = std::make_unique<PyPlan>();
        actzip::CompressOptions opt;
        opt.error_bound = error_bound;
        if (mode == "abs") opt.mode = actzip::BoundMode::kAbs;
        else if (mode == "rel") opt.mode = actzip::BoundMode::kRel;
        else throw py::value_error("mode must be 'abs' or 'rel'");
        opt.payload_checksum = checksum;
        opt.num_threads = num_threads;
        if (reuse) opt.reuse = reuse->choices;
        const actzip::DType dt = to_dtype(dtype);
        uint64_t numel = 1;
        for (uint64_t d : shape) numel *= d;
        if (shape.size() <= size_t(actzip::kMaxDims) && input.bytes() != numel * actzip::element_size(dt))
          throw py::value_error("data holds " + std::to_string(input.bytes()) + " bytes, but the shape and dtype need " +
                                std::to_string(numel * actzip::element_size(dt)));
        actzip::Status s;
        {
          py::gil_scoped_release release;
          s = actzip::plan_compress(input.data(), dt, shape, opt, &p->plan);
        }
        check(s);
        return p;
      },
      py::arg("data"), py::arg("dtype"), py::arg("shape"), py::arg("error_bound"), py::arg("mode") = "abs",
      py::arg("checksum") = false, py::arg("num_threads") = 1, py::arg("reuse") = nullptr,
      "Phase 1 of compression: encodes the whole stream and tells its size. `reuse`: the\n"
      "choices of an earlier plan of the same shape and dtype, used instead of sampling.");

  m.def(
      "read_info",
      [](const py::buffer& stream) {
        ByteView v = contiguous_view(stream, "stream", false);
        actzip::StreamInfo info;
        check(actzip::read_info(v.data(), v.bytes(), &info));
        return info_dict(info);
      },
      py::arg("stream"), "Validates a stream's header and chunk table and returns what it says.");

  m.def(
      "validate",
      [](const py::buffer& stream) {
        ByteView v = contiguous_view(stream, "stream", false);
        actzip::StreamInfo info;
        actzip::Status s;
        {
          py::gil_scoped_release release;
          s = actzip::validate(v.data(), v.bytes(), &info);
        }
        check(s);
        return info_dict(info);
      },
      py::arg("stream"), "read_info() plus every chunk header and the payload checksum.");

  m.def(
      "decompress",
      [](const py::buffer& stream, const py::buffer& out, int num_threads) {
        ByteView v = contiguous_view(stream, "stream", false);
        ByteView o = contiguous_view(out, "out", true);
        actzip::Status s;
        {
          py::gil_scoped_release release;
          s = actzip::decompress(v.data(), v.bytes(), o.mutable_data(), o.bytes(), num_threads);
        }
        check(s);
      },
      py::arg("stream"), py::arg("out"), py::arg("num_threads") = 1,
      "Decodes `stream` into the writable buffer `out` (numel elements of the stream's dtype).");

  m.def(
      "compress_bound",
      [](uint64_t numel, int dtype, int ndim) { return actzip::compress_bound(numel, to_dtype(dtype), ndim); },
      py::arg("numel"), py::arg("dtype"), py::arg("ndim"), "Largest stream compress can produce.");
  m.def(
      "pack_mask",
      [](const py::buffer& data, int dtype, uint64_t numel, const py::buffer& out, int num_threads) -> py::object {
        const actzip::DType dt = to_dtype(dtype);
        ByteView in = contiguous_view(data, "data", false);
        ByteView o = contiguous_view(out, "out", true);
        if (in.bytes() < numel * actzip::element_size(dt)) throw py::value_error("data holds fewer than numel elements");
        bool packed = false;
        uint32_t value = 0;
        actzip::Status s;
        {
          py::gil_scoped_release release;
          s = actzip::pack_mask(in.data(), dt, numel, o.mutable_data(), o.bytes(), &packed, &value, num_threads);
        }
        check(s);
        if (!packed) return py::none();
        return py::int_(value);
      },
      py::arg("data"), py::arg("dtype"), py::arg("numel"), py::arg("out"), py::arg("num_threads") = 1,
      "Packs a tensor of +0.0 and one other finite value to bits in `out`; returns that value's "
      "bit pattern, or None (and `out` is garbage) if the tensor holds anything else.");
  m.def(
      "unpack_mask",
      [](const py::buffer& bits, int dtype, uint64_t numel, uint32_t value_bits, const py::buffer& out,
         int num_threads) {
        const actzip::DType dt = to_dtype(dtype);
        ByteView b = contiguous_view(bits, "bits", false);
        ByteView o = contiguous_view(out, "out", true);
        actzip::Status s;
        {
          py::gil_scoped_release release;
          s = actzip::unpack_mask(b.data(), b.bytes(), dt, numel, value_bits, o.mutable_data(), o.bytes(), num_threads);
        }
        check(s);
      },
      py::arg("bits"), py::arg("dtype"), py::arg("numel"), py::arg("value_bits"), py::arg("out"),
      py::arg("num_threads") = 1, "Inverse of pack_mask: writes numel elements, `value_bits` where a bit is set.");
  m.def("max_threads", &actzip::max_threads);
  m.def("parallel_runtime", &actzip::parallel_runtime,
        "Where multi-threaded calls run now: 'openmp' (the process's OpenMP runtime) or 'threads'.");
  m.def("use_own_threads", &actzip::use_own_threads, py::arg("own"),
        "Always run on actzip's own threads (True), or in the process's OpenMP runtime where usable.");
  m.def(
      "crc32",
      [](const py::buffer& data) {
        const ByteView v = contiguous_view(data, "data", false);
        return pl::crc32(v.data(), v.bytes());
      },
      py::arg("data"), "CRC-32 of a buffer (the payload checksum of docs/FORMAT.md section 7).");
  bind_pipeline(m);
}
