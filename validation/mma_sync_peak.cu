// Peak throughput of the warp-level matrix instruction (mma.sync, the Ampere-style path that
// sm80 kernels such as FlashAttention-2 and CUTLASS's memory-efficient attention compile to) on
// the GPU it runs on, in FLOP per clock per SM and in TFLOP/s.
//
//     nvcc -O3 -arch=sm_90 -o mma_sync_peak validation/mma_sync_peak.cu && ./mma_sync_peak > peak.json
//
// Each warp repeats independent mma.sync instructions on register operands (no memory traffic),
// ILP accumulators deep; every SM holds the same number of warps. The clock is read on the SM
// (clock64) around the loop, so FLOP per clock does not depend on the clock the card runs at.
// Hopper's warpgroup instruction (wgmma) does 4096 dense bf16/fp16 FLOP per clock per SM
// (NVIDIA H100 whitepaper, 1024 dense FMA per clock per SM): the ratio of the two is what a
// kernel on the warp-level path can get at most (memsim: tensor_flops_per_s_warp_mma).
//
// Prints one JSON object: per dtype, the best configuration and every configuration tried.

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <vector>
#include <cuda_runtime.h>

#include "cuda_check.cuh"

enum Dtype { BF16 = 0, FP16 = 1, FP8 = 2 };
static const char* kDtypeName[] = {"bf16", "fp16", "fp8"};
// FLOP of one instruction: m16n8k16 (bf16, fp16) or m16n8k32 (fp8 e4m3), 2 per multiply-add.
static const double kFlopPerMma[] = {2.0 * 16 * 8 * 16, 2.0 * 16 * 8 * 16, 2.0 * 16 * 8 * 32};

template <int DTYPE>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    if constexpr (DTYPE == BF16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else if constexpr (DTYPE == FP16) {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

template <int DTYPE, int ILP>
__global__ void mma_loop(int iterations, uint32_t operand, float* sink, long long* cycles) {
    uint32_t a[4] = {operand, operand, operand, operand};
    uint32_t b[2] = {operand, operand};
    float d[ILP][4] = {};
    __syncthreads();
    long long start = clock64();
    for (int i = 0; i < iterations; ++i) {
#pragma unroll
        for (int j = 0; j < ILP; ++j) mma<DTYPE>(d[j], a, b);
    }
    __syncthreads();
    long long end = clock64();
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < ILP; ++j) total += d[j][0] + d[j][1] + d[j][2] + d[j][3];
    if (total == 1234.5f) sink[0] = total;  // keeps the loop live; never true for these operands
    if (threadIdx.x == 0) cycles[blockIdx.x] = end - start;
}

struct Run {
    int warps_per_sm, ilp;
    double flop_per_clk_per_sm, tflops;
};

template <int DTYPE, int ILP>
static int run_one(int sms, int warps_per_sm, Run* out) {
    const int iterations = 1 << 14;
    const int threads = 32 * warps_per_sm;  // one block per SM, all its warps
    // small finite operands: 0x3c00 is 1.0 in fp16, 0x3f80 in bf16; 0x38 is 1.0 in e4m3
    const uint32_t operand = DTYPE == BF16 ? 0x3f803f80u : DTYPE == FP16 ? 0x3c003c00u : 0x38383838u;
    float* sink;
    long long* cycles;
    CHECK(cudaMalloc(&sink, sizeof(float)));
    CHECK(cudaMalloc(&cycles, sizeof(long long) * sms));
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    mma_loop<DTYPE, ILP><<<sms, threads>>>(iterations / 16, operand, sink, cycles);  // warm-up
    CHECK(cudaDeviceSynchronize());
    std::vector<double> seconds, flop_per_clk;
    for (int repeat = 0; repeat < 5; ++repeat) {
        CHECK(cudaEventRecord(t0));
        mma_loop<DTYPE, ILP><<<sms, threads>>>(iterations, operand, sink, cycles);
        CHECK(cudaEventRecord(t1));
        CHECK(cudaEventSynchronize(t1));
        CHECK(cudaGetLastError());
        float ms;
        CHECK(cudaEventElapsedTime(&ms, t0, t1));
        std::vector<long long> host(sms);
        CHECK(cudaMemcpy(host.data(), cycles, sizeof(long long) * sms, cudaMemcpyDeviceToHost));
        long long longest = 0;
        for (long long c : host) longest = c > longest ? c : longest;
        double flop_per_sm = kFlopPerMma[DTYPE] * ILP * (double)iterations * warps_per_sm;
        seconds.push_back(ms * 1e-3);
        flop_per_clk.push_back(flop_per_sm / (double)longest);
    }
    std::sort(seconds.begin(), seconds.end());
    std::sort(flop_per_clk.begin(), flop_per_clk.end());
    double flop = kFlopPerMma[DTYPE] * ILP * (double)iterations * warps_per_sm * sms;
    *out = {warps_per_sm, ILP, flop_per_clk[2], flop / seconds[2] / 1e12};  // medians of 5
    cudaFree(sink);
    cudaFree(cycles);
    return 0;
}

template <int DTYPE>
static int sweep(int sms, std::vector<Run>& runs) {
    for (int warps : {4, 8, 16, 32}) {
        Run r;
        if (run_one<DTYPE, 2>(sms, warps, &r)) return 1;
        runs.push_back(r);
        if (run_one<DTYPE, 4>(sms, warps, &r)) return 1;
        runs.push_back(r);
        if (run_one<DTYPE, 8>(sms, warps, &r)) return 1;
        runs.push_back(r);
    }
    return 0;
}

int main() {
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("{\"device\": \"%s\", \"sms\": %d, \"method\": \"mma.sync on register operands, one block of W warps per "
           "SM, ILP independent accumulators per warp, 2^14 iterations; SM cycles from clock64 around the loop "
           "(slowest block), time from CUDA events; medians of 5\",\n \"dtypes\": {",
           prop.name, prop.multiProcessorCount);
    for (int dtype = BF16; dtype <= FP8; ++dtype) {
        std::vector<Run> runs;
        int failed = dtype == BF16 ? sweep<BF16>(prop.multiProcessorCount, runs)
                   : dtype == FP16 ? sweep<FP16>(prop.multiProcessorCount, runs)
                                   : sweep<FP8>(prop.multiProcessorCount, runs);
        if (failed) return 1;
        Run best = runs[0];
        for (const Run& r : runs) best = r.flop_per_clk_per_sm > best.flop_per_clk_per_sm ? r : best;
        printf("%s\n  \"%s\": {\"flop_per_clk_per_sm\": %.1f, \"tflops\": %.1f, \"warps_per_sm\": %d, \"ilp\": %d, "
               "\"runs\": [",
               dtype == BF16 ? "" : ",", kDtypeName[dtype], best.flop_per_clk_per_sm, best.tflops, best.warps_per_sm,
               best.ilp);
        for (size_t i = 0; i < runs.size(); ++i)
            printf("%s[%d, %d, %.1f, %.1f]", i ? ", " : "", runs[i].warps_per_sm, runs[i].ilp,
                   runs[i].flop_per_clk_per_sm, runs[i].tflops);
        printf("]}");
    }
    printf("},\n \"runs_columns\": [\"warps_per_sm\", \"ilp\", \"flop_per_clk_per_sm\", \"tflops\"]}\n");
    return 0;
}
