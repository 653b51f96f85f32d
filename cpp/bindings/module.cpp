// The only file that includes pybind11: converts Python buffers to views, releases the
// GIL around every codec call and maps statuses to exceptions. It links no torch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "actzip/actzip.h"

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

  py::class_<PyPlan>(m, "CompressPlan")
      .def_property_readonly("compressed_bytes", [](const PyPlan& p) { return p.plan->compressed_bytes(); })
      .def_property_readonly("error_bound", [](const PyPlan& p) { return p.plan->error_bound(); })
      .def_property_readonly("stats",
                             [](const PyPlan& p) {
                               const auto& s = p.plan->stats();
                               py::dict d;
                               d["zeros"] = s.zeros;
                               d["coded"] = s.coded;
                               d["outliers"] = s.outliers;
                               d["raw_chunks"] = s.raw_chunks;
                               d["zero_chunks"] = s.zero_chunks;
                               d["lorenzo_chunks"] = s.lorenzo_chunks;
                               d["lorenzo2d_chunks"] = s.lorenzo2d_chunks;
                               return d;
                             })
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
         const std::string& mode, bool checksum, int num_threads) {
        const ByteView input = contiguous_view(data, "data", false);
        auto p = std::make_unique<PyPlan>();
        actzip::CompressOptions opt;
        opt.error_bound = error_bound;
        if (mode == "abs") opt.mode = actzip::BoundMode::kAbs;
        else if (mode == "rel") opt.mode = actzip::BoundMode::kRel;
        else throw py::value_error("mode must be 'abs' or 'rel'");
        opt.payload_checksum = checksum;
        opt.num_threads = num_threads;
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
      py::arg("checksum") = false, py::arg("num_threads") = 1,
      "Phase 1 of compression: encodes the whole stream and tells its size.");

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
  m.def("max_threads", &actzip::max_threads);
}
