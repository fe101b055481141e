// What the CUDA microbenchmarks of validation/ share: stop with the file, line and CUDA's message when a call fails.
#pragma once

#include <cstdio>
#include <cuda_runtime.h>

#define CHECK(call)                                                                        \
    do {                                                                                   \
        cudaError_t err_ = (call);                                                         \
        if (err_ != cudaSuccess) {                                                         \
            fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(err_));   \
            return 1;                                                                      \
        }                                                                                  \
    } while (0)
