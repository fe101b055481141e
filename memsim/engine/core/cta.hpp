// memsim/engine/cta.py in the compiled engine: a CTA (or a cohort of identical CTAs) running its program. Each
// coroutine is the reference's generator of the same name, event for event; the reference's docstrings say what
// each models.
#pragma once

#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "machine.hpp"

namespace memsim_core {

struct Cohort {
  std::vector<int64_t> pids;  // its members' program ids, in the order of slots
  int64_t first_pid;
  long weight;
  std::vector<int> slots;
  SmGroup* group;
  ProgramRef program;
  double start_s = 0.0, end_s = 0.0;
};
using CohortRef = std::shared_ptr<Cohort>;

struct Issue {
  double instructions;
  long warps;
};

struct KeyOf {
  TileKey key;
  double nbytes;
  long members;
};
inline KeyOf tile_key(const Step& step, const Cohort& cohort) {
  if (step.region < 0) return {TileKey{step.tensor, PRIVATE, cohort.first_pid, step.index, false}, step.a * cohort.weight, cohort.weight};
  return {TileKey{step.tensor, SHARED, step.region, step.index, false}, step.a, 1};
}

inline Task wait_all(Env* env, const std::vector<EventRef>& events) {  // cta.py _all
  std::vector<EventRef> waiting;
  for (auto& e : events)
    if (!e->triggered) waiting.push_back(e);
  if (waiting.size() == 1) {
    co_await wait(waiting[0]);
  } else if (!waiting.empty()) {
    co_await wait(all_of(env, waiting));
  }
}

inline EventRef both(Env* env, EventRef a, EventRef b) {  // cta.py _both
  if (a->triggered) return b;
  if (b->triggered) return a;
  EventRef out = env->event();
  out->value = 2;
  a->callbacks.push_back(Callback::counting_down(out.get()));
  b->callbacks.push_back(Callback::counting_down(out.get()));
  return out;
}

struct Missed {
  TileId key;
  double nbytes;
  int tensor;
  long members;
  double fraction;
};

// What load_tiles loads: iterations of a program's loop, or one load step (the caller's, alive while it awaits).
struct LoadSource {
  const Program* program = nullptr;
  const Step* single = nullptr;
  template <class F>
  void each_load(long i, F&& f) const {
    if (single) {
      f(*single);
    } else {
      program->each_load(i, f);
    }
  }
};

// Iterations a .. b of `source`.
inline Task load_tiles(Machine& m, LoadSource source, long a, long b, Cohort* cohort) {
  Env* env = m.env;
  L2Cache& l2 = m.l2;
  Counters& c = m.counters;
  std::vector<Missed> missed;  // in the order missed (a Python dict); a load names a handful of tiles: scanned
  std::vector<EventRef> pending, streaming;
  double deliver = 0.0, shared_bytes = 0.0, private_bytes = 0.0;
  long miss_iterations = 0, hit_iterations = 0;
  const long weight = cohort->weight;
  for (long i = a; i < b; ++i) {
    int outcome = 1;  // True; 0: None; -1: False
    source.each_load(i, [&](const Step& load) {
      KeyOf k = tile_key(load, *cohort);
      TileId tile = l2.id(k.key);
      deliver += load.a;
      c.l2_read.add(load.tensor, load.a * weight);
      bool named_before = false;
      for (const Missed& miss : missed) named_before = named_before || miss.key == tile;
      if (named_before) return;
      if (load.region >= 0 && l2.shared_age_weight != 1.0) m.write_back(l2.read_shared(tile, k.nbytes, weight));
      Lookup found = l2.lookup(tile);
      if (found.found == Found::Miss) {
        double fraction = l2.missing_fraction(tile);
        missed.push_back(Missed{tile, k.nbytes, load.tensor, k.members, fraction});
        if (load.region < 0) {
          private_bytes += load.a * fraction;
        } else {
          shared_bytes += k.nbytes * fraction;
        }
        outcome = -1;
      } else if (found.found == Found::Pending) {
        pending.push_back(found.event);
        EventRef started = l2.transfer_started(tile);
        if (started && !started->triggered) streaming.push_back(started);
        if (outcome == 1) outcome = 0;
      }
    });
    if (outcome == -1) {
      miss_iterations += 1;
    } else if (outcome == 1) {
      hit_iterations += 1;
    }
  }
  double latency_s = miss_iterations * m.p.hbm_latency_s + hit_iterations * m.p.l2_hit_latency_s;
  EventRef delivery;
  if (!missed.empty()) {
    EventRef fetched = env->event(), transfer = env->event();
    for (auto& miss : missed) l2.start_fetch(miss.key, fetched, transfer);
    co_await wait(env->timeout(latency_s));
    transfer->succeed();
    co_await wait_all(env, streaming);
    delivery = m.l2_unit.use(deliver, weight);
    EventRef shared = m.hbm.use(shared_bytes);
    EventRef own = m.hbm.use(private_bytes, weight);
    co_await wait(both(env, shared, own));
    for (auto& miss : missed) {
      c.hbm_read.add(miss.tensor, miss.nbytes * miss.fraction);
      m.write_back(l2.finish_fetch(miss.key, miss.nbytes, miss.tensor, miss.members));
    }
    fetched->succeed();
  } else {
    if (latency_s) co_await wait(env->timeout(latency_s));
    if (!pending.empty()) {
      co_await wait_all(env, streaming);
      delivery = m.l2_unit.use(deliver, weight);
    }
  }
  if (pending.size() == 1) {
    co_await wait(pending[0]);
  } else if (!pending.empty()) {
    co_await wait(all_of(env, pending));
  }
  if (!delivery) {
    co_await wait(m.l2_unit.use(deliver, weight));
  } else if (!delivery->processed) {
    co_await wait(delivery);
  }
}

inline Task fetch_line(Machine& m, TileId key, double nbytes, int tensor, long members) {  // cta.py _fetch_line
  Lookup found = m.l2.lookup(key);
  if (found.found == Found::Hit) co_return;
  if (found.found == Found::Pending) {
    co_await wait(found.event);
    co_return;
  }
  EventRef fetched = m.env->event();
  m.l2.start_fetch(key, fetched);
  co_await wait(m.env->timeout(m.p.hbm_latency_s));
  double fraction = m.l2.missing_fraction(key);
  co_await wait(m.hbm.use(nbytes * fraction));
  m.counters.hbm_read.add(tensor, nbytes * fraction);
  m.write_back(m.l2.finish_fetch(key, nbytes, tensor, members));
  fetched->succeed();
}

inline Task store_tile(Machine& m, Step step, Cohort* cohort) {
  KeyOf k = tile_key(step, *cohort);
  TileId tile = m.l2.id(k.key);
  bool atomic = step.kind == ATOMIC;
  if (atomic) co_await fetch_line(m, tile, k.nbytes, step.tensor, k.members);
  double returned = atomic && step.rounds ? step.a : 0.0;
  m.counters.l2_write.add(step.tensor, step.a * cohort->weight);
  m.counters.l2_read.add(step.tensor, returned * cohort->weight);
  co_await wait(m.l2_unit.use(step.a, cohort->weight));
  m.write_back(m.l2.insert(tile, k.nbytes, step.tensor, true, k.members));
  if (atomic && step.rounds) co_await wait(m.env->timeout(step.rounds * m.p.ordered_atomic_latency_s));
}

inline void spill(Machine& m, const Step& step, const Cohort& cohort) {
  m.counters.l2_write.add(m.p.spill_tensor, step.a * cohort.weight);
  m.l2_unit.use(step.a, cohort.weight);
  for (int slot : cohort.slots) {
    TileKey key{m.p.spill_tensor, SPILL, slot, step.index, false};
    m.write_back(m.l2.insert(m.l2.id(key), step.a, m.p.spill_tensor, true));
  }
}

// `steps` is the caller's, alive while it awaits this.
inline Task compute(Machine& m, const std::vector<Step>* steps_, Cohort* cohort, long repeats, bool ping_pong,
                    std::optional<Issue> issue) {
  const std::vector<Step>& steps = *steps_;
  Demands demand_s{};
  double chain_s = 0.0;
  long dependent = 0;
  const long weight = cohort->weight;
  Counters& c = m.counters;
  for (const Step& step : steps) {
    double seconds;
    if (step.kind == MMA) {
      seconds = m.tensor_seconds(step.a, step.tensor);
      demand_s[m.p.mma_pipe] += seconds;
      if (m.p.mma_pipe == TENSOR_PIPE) {
        c.tensor_flops += step.a * weight;
      } else {
        c.cuda_ops += step.a / 2 * weight;
      }
    } else if (step.kind == VECTOR) {
      double cuda_s = m.cuda_seconds(step.a), sfu_s = m.sfu_seconds(step.b);
      demand_s[CUDA_PIPE] += cuda_s;
      demand_s[SFU_PIPE] += sfu_s;
      seconds = sfu_s > cuda_s ? sfu_s : cuda_s;  // Python's max(cuda_s, sfu_s)
      c.cuda_ops += (step.a + step.b) * weight;
      c.exp_ops += step.b * weight;
    } else {
      seconds = step.a / m.p.smem_bytes_per_s;
      demand_s[SMEM_PIPE] += seconds;
      c.smem_bytes += step.a * weight;
    }
    chain_s += seconds;
    dependent += seconds > 0;
  }
  if (!ping_pong && m.p.mma_pipe == TENSOR_PIPE) demand_s[TENSOR_PIPE] += demand_s[SFU_PIPE];
  chain_s = chain_s * m.p.sm_count + (double)(dependent * repeats) * m.p.dependent_step_latency_s;
  if (issue) {
    double clock_hz = m.p.clock_hz;
    demand_s[ISSUE_PIPE] = issue->instructions * issue->warps / (WARP_SCHEDULERS_PER_SM * clock_hz) / m.p.sm_count;
    double floor_s = issue->instructions * m.p.warp_cycles_per_instruction / clock_hz;
    if (floor_s > chain_s) chain_s = floor_s;
  }
  co_await wait(cohort->group->pipes.use(demand_s, chain_s, (double)weight));
}

// `steps` is the caller's, alive while it awaits this.
inline Task run_steps(Machine& m, const std::vector<Step>* steps_, Cohort* cohort, long repeats = 1,
                      bool ping_pong = false, std::optional<Issue> issue = std::nullopt) {
  const std::vector<Step>& steps = *steps_;
  std::vector<Step> pending;
  for (const Step& step : steps) {
    if (step.is_compute()) {
      pending.push_back(step);
      continue;
    }
    if (!pending.empty()) {
      co_await compute(m, &pending, cohort, repeats, ping_pong, issue);
      pending.clear();
      issue.reset();
    }
    if (step.kind == LOAD) {
      co_await load_tiles(m, LoadSource{nullptr, &step}, 0, 1, cohort);
    } else if (step.kind == STORE || step.kind == ATOMIC) {
      co_await store_tile(m, step, cohort);
    } else {
      spill(m, step, *cohort);
    }
  }
  if (!pending.empty()) co_await compute(m, &pending, cohort, repeats, ping_pong, issue);
}

// cta.py _times: what merge_steps makes of n equal steps.
inline void times(const Step& s, long n, std::vector<Step>& out) {
  if (s.kind == MMA || s.kind == SMEM_ROUND_TRIP) {
    Step t = s;
    t.a = s.a * n;
    out.push_back(t);
  } else if (s.kind == VECTOR) {
    Step t = s;
    t.a = s.a * n;
    t.b = s.b * n;
    out.push_back(t);
  } else {
    for (long i = 0; i < n; ++i) out.push_back(s);
  }
}

// cta.py merge_steps: the compute of several iterations as one, and how many iterations each step stands for.
inline std::pair<std::vector<Step>, long> merge_steps(const std::vector<const Steps*>& iterations) {
  const Steps& first = *iterations[0];
  long n = (long)iterations.size();
  std::vector<Step> out;
  if (n > 1) {
    bool same = true;
    for (const Steps* it : iterations)
      if (it != &first && !(*it == first)) {
        same = false;
        break;
      }
    if (same) {
      for (const Step& s : first) times(s, n, out);
      return {out, n};
    }
  }
  bool unlike = n == 1;
  for (const Steps* it : iterations) {
    if (unlike) break;
    if (it->size() != first.size()) {
      unlike = true;
      break;
    }
    for (size_t i = 0; i < first.size(); ++i)
      if ((*it)[i].kind != first[i].kind) {  // Python: type(a) is not type(b)
        unlike = true;
        break;
      }
  }
  if (unlike) {
    for (const Steps* it : iterations) out.insert(out.end(), it->begin(), it->end());
    return {out, 1};
  }
  for (size_t pos = 0; pos < first.size(); ++pos) {
    const Step& s = first[pos];
    if (s.kind == MMA || s.kind == SMEM_ROUND_TRIP || s.kind == VECTOR) {
      Step t = s;
      double a = 0.0, b = 0.0;
      for (long i = 0; i < n; ++i) {
        const Step& p = (*iterations[i])[pos];
        a = i ? a + p.a : p.a;  // Python's sum(): 0 + the first is the first
        b = i ? b + p.b : p.b;
      }
      t.a = a;
      t.b = s.kind == VECTOR ? b : 0.0;
      out.push_back(t);
    } else {
      for (long i = 0; i < n; ++i) out.push_back((*iterations[i])[pos]);
    }
  }
  return {out, n};
}

inline std::vector<std::pair<long, long>> spans(long iterations, long batch) {
  std::vector<std::pair<long, long>> out;
  long start = 0, size = 1;
  while (start < iterations) {
    long end = std::min(iterations, start + size);
    out.push_back({start, end});
    start = end;
    size = std::min(batch, size * 2);
  }
  return out;
}

inline Task overlapped_vectors(Machine& m, std::vector<Step> vectors, Cohort* cohort, ProcessRef previous, long repeats) {
  if (previous) co_await wait(previous);
  co_await run_steps(m, &vectors, cohort, repeats, true);
}

// cta.py _overlapped: this iteration's matmuls, then its softmax as a process of its own after the previous one's.
inline Task overlapped(Machine& m, const std::vector<Step>* steps, Cohort* cohort, ProcessRef previous, long repeats,
                       std::optional<Issue> issue, ProcessRef* out) {
  std::vector<Step> matmuls, vectors;
  for (const Step& s : *steps) (s.kind == VECTOR ? vectors : matmuls).push_back(s);
  co_await run_steps(m, &matmuls, cohort, repeats, true, issue);
  *out = start(m.env, overlapped_vectors(m, vectors, cohort, previous, repeats));
}

inline Task fetch_span(Machine& m, Cohort* cohort, long a, long b) {
  co_await load_tiles(m, LoadSource{cohort->program.get(), nullptr}, a, b, cohort);
}

inline Task run_loop(Machine& m, Cohort* cohort, long stages, long batch, std::optional<Issue> issue) {
  const Program& loop = *cohort->program;
  auto spans_ = spans(loop.iterations, batch);
  std::vector<ProcessRef> fetches;
  if (stages != 1)
    for (size_t j = 0; j < spans_.size() && (long)j < stages; ++j)
      fetches.push_back(start(m.env, fetch_span(m, cohort, spans_[j].first, spans_[j].second)));
  ProcessRef vector_chain;
  for (size_t j = 0; j < spans_.size(); ++j) {
    auto [a, b] = spans_[j];
    if (stages == 1) {
      co_await fetch_span(m, cohort, a, b);
    } else {
      co_await wait(fetches[j]);
    }
    // the span's compute: one iteration's as it is (merge_steps would copy it), several merged
    std::pair<Steps, long> merged;
    const Steps* steps = &loop.compute(a);
    long repeats = 1;
    if (b - a > 1) {
      std::vector<const Steps*> iterations;
      for (long i = a; i < b; ++i) iterations.push_back(&loop.compute(i));
      merged = merge_steps(iterations);
      steps = &merged.first;
      repeats = merged.second;
    }
    std::optional<Issue> span_issue;
    if (issue) span_issue = Issue{issue->instructions * (b - a), issue->warps};
    if (loop.overlap_vector) {
      ProcessRef next;
      co_await overlapped(m, steps, cohort, vector_chain, repeats, span_issue, &next);
      vector_chain = next;
    } else {
      co_await run_steps(m, steps, cohort, repeats, false, span_issue);
    }
    if (stages > 1 && j + stages < spans_.size())
      fetches.push_back(start(m.env, fetch_span(m, cohort, spans_[j + stages].first, spans_[j + stages].second)));
  }
  if (vector_chain) co_await wait(vector_chain);
}

inline Task run_cohort(Machine& m, Cohort* cohort, long stages, long batch, std::optional<Issue> issue) {
  cohort->start_s = m.env->now;
  const Program& p = *cohort->program;
  co_await run_steps(m, &p.prologue, cohort);
  if (p.has_loop && p.iterations > 0) co_await run_loop(m, cohort, stages, batch, issue);
  co_await run_steps(m, &p.epilogue, cohort);
  cohort->end_s = m.env->now;
}

}  // namespace memsim_core
