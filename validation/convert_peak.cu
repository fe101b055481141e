// Throughput of the type conversions a KV-cache dequantisation and a softmax-to-matmul hand-off run on the
// CUDA cores, against the fp32 FMA, in instructions per clock per SM, on the GPU it runs on.
//
//     nvcc -O3 -arch=sm_90 -o convert_peak validation/convert_peak.cu && ./convert_peak > convert.json
//
// Each thread runs ILP independent dependency chains of one instruction (a conversion's result is fed back
// as the next one's input, bit for bit), 2^14 iterations, one block of W warps per SM; the SM's cycles come
// from clock64 around the loop (slowest block), so the clock the card runs at cancels. The CUDA C++
// Programming Guide's throughput table (cc 9.0) gives 128 fp32 FMA and 16 "other type conversions" per
// clock per SM; this measures what the instructions a Triton dequantisation compiles to actually get.
//
// Prints one JSON object: per instruction, the best instructions per clock per SM and every run.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>
#include <cuda_runtime.h>

#include "cuda_check.cuh"

enum Op { FFMA, I2F_S32, I2F_S16, F2F_F16_TO_F32, F2FP_BF16X2, F2FP_F16X2, E4M3X2_TO_F16X2, EX2, EX2_AND_I2F_S16,
          N_OPS };
static const char* kName[] = {"fma.rn.f32", "cvt.rn.f32.s32", "cvt.rn.f32.s16", "cvt.f32.f16",
                              "cvt.rn.bf16x2.f32", "cvt.rn.f16x2.f32", "cvt.rn.f16x2.e4m3x2", "ex2.approx.ftz.f32",
                              "ex2.approx.ftz.f32 + cvt.rn.f32.s16"};
// Instructions per step: EX2_AND_I2F_S16 issues one of each, so its rate is of the pair's instructions together
// (16 per clock if they share a unit, 32 if each has its own).
static const int kPerStep[] = {1, 1, 1, 1, 1, 1, 1, 1, 2};

template <int OP>
__device__ __forceinline__ void step(uint32_t& x) {
    if constexpr (OP == FFMA) {
        asm volatile("fma.rn.f32 %0, %0, 0f3F800001, 0f3F800000;" : "+r"(x));
    } else if constexpr (OP == I2F_S32) {
        asm volatile("cvt.rn.f32.s32 %0, %0;" : "+r"(x));
    } else if constexpr (OP == I2F_S16) {
        asm volatile("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %0; cvt.rn.f32.s16 %0, lo; }" : "+r"(x));
    } else if constexpr (OP == F2F_F16_TO_F32) {
        asm volatile("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %0; cvt.f32.f16 %0, lo; }" : "+r"(x));
    } else if constexpr (OP == F2FP_BF16X2) {
        asm volatile("cvt.rn.bf16x2.f32 %0, %0, %0;" : "+r"(x));
    } else if constexpr (OP == F2FP_F16X2) {
        asm volatile("cvt.rn.f16x2.f32 %0, %0, %0;" : "+r"(x));
    } else if constexpr (OP == E4M3X2_TO_F16X2) {
        asm volatile("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %0; cvt.rn.f16x2.e4m3x2 %0, lo; }" : "+r"(x));
    } else if constexpr (OP == EX2) {
        asm volatile("ex2.approx.ftz.f32 %0, %0;" : "+r"(x));
    } else {
        asm volatile("{ .reg .b16 lo, hi; .reg .b32 t; ex2.approx.ftz.f32 t, %0; mov.b32 {lo, hi}, %0; "
                     "cvt.rn.f32.s16 %0, lo; add.u32 %0, %0, t; }" : "+r"(x));
    }
}

template <int OP, int ILP>
__global__ void loop(int iterations, uint32_t seed, uint32_t* sink, long long* cycles) {
    uint32_t x[ILP];
#pragma unroll
    for (int j = 0; j < ILP; ++j) x[j] = seed + threadIdx.x * 7 + j;
    __syncthreads();
    long long start = clock64();
    for (int i = 0; i < iterations; ++i) {
#pragma unroll
        for (int j = 0; j < ILP; ++j) step<OP>(x[j]);
    }
    __syncthreads();
    long long end = clock64();
    uint32_t total = 0;
#pragma unroll
    for (int j = 0; j < ILP; ++j) total ^= x[j];
    if (total == 0x12345678u) sink[0] = total;  // keeps the chains live
    if (threadIdx.x == 0) cycles[blockIdx.x] = end - start;
}

struct Run {
    int warps_per_sm, ilp;
    double per_clk_per_sm;
};

template <int OP, int ILP>
static int run_one(int sms, int warps, Run* out) {
    const int iterations = 1 << 14;
    uint32_t* sink;
    long long* cycles;
    CHECK(cudaMalloc(&sink, sizeof(uint32_t)));
    CHECK(cudaMalloc(&cycles, sizeof(long long) * sms));
    loop<OP, ILP><<<sms, 32 * warps>>>(iterations / 16, 0x3f800000u, sink, cycles);  // warm-up
    CHECK(cudaDeviceSynchronize());
    std::vector<double> rates;
    for (int repeat = 0; repeat < 5; ++repeat) {
        loop<OP, ILP><<<sms, 32 * warps>>>(iterations, 0x3f800000u, sink, cycles);
        CHECK(cudaDeviceSynchronize());
        CHECK(cudaGetLastError());
        std::vector<long long> host(sms);
        CHECK(cudaMemcpy(host.data(), cycles, sizeof(long long) * sms, cudaMemcpyDeviceToHost));
        long long longest = *std::max_element(host.begin(), host.end());
        rates.push_back((double)iterations * ILP * kPerStep[OP] * 32 * warps / (double)longest);
    }
    std::sort(rates.begin(), rates.end());
    *out = {warps, ILP, rates[2]};  // median of 5
    cudaFree(sink);
    cudaFree(cycles);
    return 0;
}

template <int OP>
static int sweep(int sms, std::vector<Run>& runs) {
    for (int warps : {8, 16, 32}) {
        Run r;
        if (run_one<OP, 4>(sms, warps, &r)) return 1;
        runs.push_back(r);
        if (run_one<OP, 8>(sms, warps, &r)) return 1;
        runs.push_back(r);
    }
    return 0;
}

template <int OP>
static int report(int sms, bool first) {
    std::vector<Run> runs;
    if (sweep<OP>(sms, runs)) return 1;
    Run best = *std::max_element(runs.begin(), runs.end(),
                                 [](const Run& a, const Run& b) { return a.per_clk_per_sm < b.per_clk_per_sm; });
    printf("%s\n  \"%s\": {\"per_clk_per_sm\": %.1f, \"warps_per_sm\": %d, \"ilp\": %d, \"runs\": [", first ? "" : ",",
           kName[OP], best.per_clk_per_sm, best.warps_per_sm, best.ilp);
    for (size_t i = 0; i < runs.size(); ++i)
        printf("%s[%d, %d, %.1f]", i ? ", " : "", runs[i].warps_per_sm, runs[i].ilp, runs[i].per_clk_per_sm);
    printf("]}");
    return 0;
}

int main() {
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    int sms = prop.multiProcessorCount;
    printf("{\"device\": \"%s\", \"sms\": %d, \"method\": \"ILP dependent chains of one instruction per thread, one "
           "block of W warps per SM, 2^14 iterations; instructions per clock per SM from clock64 around the loop "
           "(slowest block); medians of 5\",\n \"instructions\": {",
           prop.name, sms);
    if (report<FFMA>(sms, true) || report<I2F_S32>(sms, false) || report<I2F_S16>(sms, false) ||
        report<F2F_F16_TO_F32>(sms, false) || report<F2FP_BF16X2>(sms, false) || report<F2FP_F16X2>(sms, false) ||
        report<E4M3X2_TO_F16X2>(sms, false) || report<EX2>(sms, false) || report<EX2_AND_I2F_S16>(sms, false))
        return 1;
    printf("},\n \"runs_columns\": [\"warps_per_sm\", \"ilp\", \"per_clk_per_sm\"]}\n");
    return 0;
}
