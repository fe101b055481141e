// memsim/engine/machine.py in the compiled engine: the GPU's shared units, its L2 and its counters; and a CTA's
// program as plain data (memsim/schedules/steps.py), as the Python side hands it over (memsim/engine/compiled.py).
#pragma once

#include <memory>
#include <vector>

#include "fluid.hpp"
#include "l2cache.hpp"
#include "sm_groups.hpp"

namespace memsim_core {

enum StepKind : int { LOAD = 0, STORE = 1, ATOMIC = 2, MMA = 3, VECTOR = 4, SMEM_ROUND_TRIP = 5, SPILL_STEP = 6 };

// One step. Load/Store/Atomic: tensor, region (-1: private to the CTA, None in Python), index, a = bytes,
// rounds = ordered rounds. Mma: tensor = dtype, a = flops. Vector: a = cuda ops, b = exp ops. SmemRoundTrip: a = bytes.
// Spill: index, a = bytes.
struct Step {
  int kind = 0;
  int tensor = 0;
  int64_t region = -1;
  int64_t index = 0;
  double a = 0.0;
  double b = 0.0;
  long rounds = 0;
  bool operator==(const Step& o) const {
    return kind == o.kind && tensor == o.tensor && region == o.region && index == o.index && a == o.a && b == o.b &&
           rounds == o.rounds;
  }
  bool is_compute() const { return kind == MMA || kind == VECTOR || kind == SMEM_ROUND_TRIP; }
};
using Steps = std::vector<Step>;

// steps.Stream: iteration i loads tile first + stride * i (`base` with that index), edge_bytes long at the edge tile.
struct Stream {
  Step base;
  int64_t stride = 0;
  bool has_edge = false;
  int64_t edge = 0;
  double edge_bytes = 0.0;
  Step load(long i) const {
    Step st = base;
    st.index = base.index + stride * i;
    if (has_edge && st.index == edge) st.a = edge_bytes;
    return st;
  }
};

struct Program {
  Steps prologue, epilogue;
  bool has_loop = false;
  long iterations = 0;
  bool streamed = false;          // its loads are streams (steps.streamed_loop), made as they are read
  std::vector<Stream> streams;    // streamed: iteration i loads streams[k].load(i), k in order
  Steps load_steps;               // otherwise every iteration's loads, one after another,
  std::vector<size_t> load_from;  // iteration i's being load_steps[load_from[i] .. load_from[i + 1])
  std::vector<Steps> bodies;      // the loop's distinct compute steps
  std::vector<int> body_of;       // per iteration: its compute steps, in bodies
  bool overlap_vector = false;
  const Steps& compute(long i) const { return bodies[body_of[i]]; }
  // f(load) for each of iteration i's loads, in order
  template <class F>
  void each_load(long i, F&& f) const {
    if (streamed) {
      for (const Stream& s : streams) f(s.load(i));
      return;
    }
    for (size_t k = load_from[i]; k < load_from[i + 1]; ++k) f(load_steps[k]);
  }
};
using ProgramRef = std::shared_ptr<const Program>;

// Bytes per tensor, in the order the tensors first appeared (a Python defaultdict(float)).
struct TensorBytes {
  explicit TensorBytes(size_t tensors = 0) : value(tensors, 0.0), present(tensors, 0) {}
  std::vector<double> value;
  std::vector<char> present;
  std::vector<int> order;
  void add(int t, double v) {
    if ((size_t)t >= value.size()) {  // a tensor named after the launch began (ids grow as programs are read)
      value.resize(t + 1, 0.0);
      present.resize(t + 1, 0);
    }
    if (!present[t]) {
      present[t] = 1;
      order.push_back(t);
    }
    value[t] += v;
  }
};

struct Params {
  int sm_count;
  double clock_hz;
  double hbm_bytes_per_s, l2_bytes_per_s;
  double l2_bytes, l2_dirty_limit_bytes, l2_dirty_lifetime_bytes, l2_shared_age_weight;  // < 0: None
  int l2_ways;                                                                           // 0: None
  double l2_lossless_bytes;
  double hbm_latency_s, l2_hit_latency_s, dependent_step_latency_s, ordered_atomic_latency_s;
  double warp_cycles_per_instruction;
  int mma_pipe;                          // index into PIPES: 0 tensor, 1 cuda
  std::vector<double> tensor_flops_per_s;  // by dtype id
  double cuda_ops_per_s, sfu_ops_per_s, smem_bytes_per_s;
  int spill_tensor;  // tensor ids are small integers, given as programs are read (TensorBytes grows)
};

constexpr int TENSOR_PIPE = 0, CUDA_PIPE = 1, SFU_PIPE = 2, SMEM_PIPE = 3, ISSUE_PIPE = 4;
constexpr int WARP_SCHEDULERS_PER_SM = 4;  // machine.py

struct Counters {
  TensorBytes l2_read, l2_write, hbm_read, hbm_write, hbm_write_deferred;
  double tensor_flops = 0.0, cuda_ops = 0.0, exp_ops = 0.0, smem_bytes = 0.0;
};

struct Machine {
  Machine(Env* env, const Params& p)
      : env(env), p(p), sm_groups(env, p.sm_count), hbm(env, p.hbm_bytes_per_s), l2_unit(env, p.l2_bytes_per_s),
        l2(p.l2_bytes, p.l2_dirty_limit_bytes, p.l2_dirty_lifetime_bytes, p.l2_shared_age_weight, p.l2_ways,
           p.l2_lossless_bytes),
        counters() {}
  Env* env;
  const Params& p;
  SmGroups sm_groups;
  FluidResource hbm, l2_unit;
  L2Cache l2;
  Counters counters;

  void write_back(const WrittenBack& evicted) {
    for (auto& [tensor, nbytes] : evicted) {
      counters.hbm_write.add(tensor, nbytes);
      hbm.use(nbytes);
    }
  }
  double tensor_seconds(double flops, int dtype) const { return flops / p.tensor_flops_per_s[dtype]; }
  double cuda_seconds(double ops) const { return ops / p.cuda_ops_per_s; }
  double sfu_seconds(double ops) const { return ops / p.sfu_ops_per_s; }
  // busy seconds so far: PIPES then hbm, l2
  std::vector<double> busy_s() const {
    std::vector<double> out;
    for (int u = 0; u < PIPE_COUNT; ++u) out.push_back(sm_groups.busy_until_now(u));
    out.push_back(hbm.busy_until_now());
    out.push_back(l2_unit.busy_until_now());
    return out;
  }
};

}  // namespace memsim_core
