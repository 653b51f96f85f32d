// ACTZIP_HD marks the functions written once for the host and the GPU: __host__ __device__
// (and force-inlined) under nvcc, plain inline elsewhere.
#pragma once

#if defined(__CUDACC__)
#define ACTZIP_HD __host__ __device__ __forceinline__
#else
#define ACTZIP_HD inline
#endif
