// What the pipeline's stages pass to a backend, and the CUDA backend's entry points
// (cpp/cuda/pipeline_cuda.cu). Arguments are checked by cpp/pipeline/pipeline.cpp first.
#pragma once

#include <cstdint>

#include "actzip/pipeline.h"
#include "codec/chunk.h"

namespace actzip {
namespace pipeline {

struct StageArgs {
  const void* data = nullptr;
  int dtype = 1;  // DType's value: 1 float32, 2 float16, 3 bfloat16
  uint64_t numel = 0;
  uint32_t num_chunks = 0;
  uint32_t row = 0;  // the 2-D predictor's row length (0: not considered)
  const double* bound = nullptr;  // the absolute bound and the step, where the stage runs
};

// The quantizer of a stage, from the bound resolve_bound() left in the Exec's memory.
ACTZIP_HD detail::Quantizer stage_quantizer(const StageArgs& a) {
  return detail::make_quantizer(a.bound[0], float(a.bound[1]));
}

struct DecodeArgs {
  const uint8_t* stream = nullptr;
  int dtype = 1;
  uint64_t header_bytes = 0;
  detail::DecodeParams params{};
};

#if defined(ACTZIP_HAVE_CUDA)
namespace cuda {
int device_count();
Status finite_range(const Exec& exec, const StageArgs& a, int32_t* keys);
Status resolve_bound(const Exec& exec, bool relative, double requested, const int32_t* keys, double* bound);
Status sample(const Exec& exec, const StageArgs& a, const float* nlog2n_host, uint8_t* predictors, uint64_t* hist);
Status measure(const Exec& exec, const StageArgs& a, const uint8_t* predictors, const uint32_t* packed_books,
               int direct_log2, uint8_t* layouts);
Status write(const Exec& exec, const StageArgs& a, const uint32_t* packed_books, int direct_log2,
             const uint8_t* layouts, uint8_t* stream, uint64_t header_bytes);
Status decode_tables(const Exec& exec, const uint8_t* stream, uint64_t mask_offset, uint32_t mask_symbols,
                     uint64_t code_offset, uint32_t code_symbols, uint64_t zmap_offset, uint32_t zmap_symbols,
                     int direct_log2, uint8_t* tables);
Status decode(const Exec& exec, const DecodeArgs& d, const uint8_t* tables, void* out, uint64_t* status);
}  // namespace cuda
#endif

}  // namespace pipeline
}  // namespace actzip
