// memsim/engine/sharing.py in the compiled engine: the pipes of one SM (or of a group of identical SMs), shared by
// the CTAs resident there. Requests with proportional demands and equal chain limits form a class, served by
// processor sharing; classes get rates by progressive filling. Line for line the reference.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

#include "fluid.hpp"

namespace memsim_core {

constexpr int PIPE_COUNT = 5;  // machine.py PIPES: tensor, cuda, sfu, smem, issue
using Demands = std::array<double, PIPE_COUNT>;

// Python's round(x, 12) and float(f"{x:.12g}"): both correctly rounded through decimal, as glibc's printf and strtod
// are (sharing.py _KEY_DIGITS).
inline double round_digits(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.12f", x);
  return std::strtod(buf, nullptr);
}
inline double significant_digits(double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.12g", x);
  return std::strtod(buf, nullptr);
}

// A dict key of sharing.py: a number per pipe and one more, equal when every bit is (Python compares the floats of
// a tuple exactly; no NaN reaches here). A class key is (direction, cap); a request's, (demands, chain_s).
struct PipeKey {
  Demands per_pipe;
  double other;
  bool operator==(const PipeKey& o) const {
    return std::memcmp(per_pipe.data(), o.per_pipe.data(), sizeof(Demands)) == 0 &&
           std::memcmp(&other, &o.other, sizeof other) == 0;
  }
};
using ClassKey = PipeKey;
using RequestKey = PipeKey;
inline size_t hash_doubles(const double* v, size_t n) {
  size_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) {
    uint64_t bits;
    std::memcpy(&bits, &v[i], sizeof bits);
    h ^= bits + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  }
  return h;
}
struct PipeKeyHash {
  size_t operator()(const PipeKey& k) const {
    return hash_doubles(k.per_pipe.data(), PIPE_COUNT) ^ (hash_doubles(&k.other, 1) * 31);
  }
};

struct KnownKey {
  ClassKey key;
  double scale;
  int class_id = -1;  // the key's number among every class key seen (KeyCache::class_ids)
};
// sharing.py _class_key: ((direction, cap), seconds on the dominant pipe).
inline KnownKey class_key(const Demands& demands, double chain_s) {
  double scale = 0.0;
  bool first = true;
  for (double d : demands) {  // max(demands, default=0.0)
    if (first || d > scale) scale = d;
    first = false;
  }
  KnownKey out{};
  out.scale = scale;
  if (scale <= 0) return out;
  for (int p = 0; p < PIPE_COUNT; ++p) out.key.per_pipe[p] = round_digits(demands[p] / scale);
  out.key.other = chain_s > 0 ? significant_digits(scale / chain_s) : INF;
  return out;
}
// Requests' class keys, worked out once per distinct request (shared by every SM group's pipes), each class key
// numbered, so that a group finds its class by number.
struct KeyCache {
  std::unordered_map<RequestKey, KnownKey, PipeKeyHash> known;
  std::unordered_map<ClassKey, int, PipeKeyHash> class_ids;
  const KnownKey& of(const Demands& demands, double chain_s) {
    RequestKey rk{demands, chain_s};
    auto it = known.find(rk);
    if (it != known.end()) return it->second;
    KnownKey k = class_key(demands, chain_s);
    if (k.scale > 0) k.class_id = class_ids.emplace(k.key, (int)class_ids.size()).first->second;
    return known.emplace(rk, k).first->second;
  }
};

struct PipeClass {
  explicit PipeClass(const ClassKey& k) : direction(k.per_pipe), cap(k.other) {
    for (int p = 0; p < PIPE_COUNT; ++p)
      if (direction[p] > 0) uses.push_back({p, direction[p]});
  }
  Demands direction;
  std::vector<std::pair<int, double>> uses;
  double cap;
  std::vector<Request> queue;
  double weight = 0.0, clock = 0.0, rate = 0.0;
};

struct SharedPipes {
  SharedPipes(Env* env, double capacity, KeyCache* keys) : env(env), capacity(capacity), keys(keys), last_s(env->now) {}
  Env* env;
  double capacity;
  KeyCache* keys;
  std::vector<std::unique_ptr<PipeClass>> classes;  // by class id (KeyCache), made as first used
  std::vector<PipeClass*> active;
  uint64_t next_id = 0;
  double last_s;
  uint64_t version = 0;
  Demands busy_s{};
  Demands served{};
  Demands use_now{};

  EventRef use(const Demands& demands, double chain_s, double weight = 1.0) {
    EventRef done = env->event();
    const KnownKey known = keys->of(demands, chain_s);
    if (known.scale <= 0 || weight <= 0) {
      done->succeed();
      return done;
    }
    advance();
    if (known.class_id >= (int)classes.size()) classes.resize(known.class_id + 1);
    auto& slot = classes[known.class_id];
    if (!slot) slot = std::make_unique<PipeClass>(known.key);
    PipeClass* cls = slot.get();
    if (cls->queue.empty()) active.push_back(cls);
    heap_push(cls->queue, Request{cls->clock + known.scale, next_id, weight, done, known.scale});
    next_id += 1;
    cls->weight += weight;
    for (int p = 0; p < PIPE_COUNT; ++p) served[p] += demands[p] * weight;
    rebalance();
    return done;
  }

  double busy_until_now(int p) const {
    double dt = env->now - last_s;
    if (dt > 0 && !active.empty()) return busy_s[p] + dt * std::min(capacity, use_now[p]);
    return busy_s[p];
  }

  void advance() {
    double dt = env->now - last_s;
    if (dt > 0 && !active.empty()) {
      for (PipeClass* cls : active) cls->clock += cls->rate * dt;
      for (int p = 0; p < PIPE_COUNT; ++p) busy_s[p] += dt * std::min(capacity, use_now[p]);
    }
    last_s = env->now;
  }

  void rebalance() {
    use_now = active.size() <= 1 ? fill_alone() : fill();
    reschedule();
  }

  Demands fill() {
    Demands used{}, demand{};
    std::array<int, PIPE_COUNT> users{};
    for (PipeClass* cls : active) {
      cls->rate = -1.0;
      for (auto [p, share] : cls->uses) {
        demand[p] += cls->weight * share;
        users[p] += 1;
      }
    }
    std::vector<PipeClass*> by_cap(active);
    std::stable_sort(by_cap.begin(), by_cap.end(), [](PipeClass* a, PipeClass* b) { return a->cap < b->cap; });
    size_t rising = by_cap.size(), next_cap = 0;
    auto freeze = [&](PipeClass* cls, double rate) {
      cls->rate = rate;
      for (auto [p, share] : cls->uses) {
        double s = cls->weight * share;
        used[p] += s * rate;
        demand[p] -= s;
        users[p] -= 1;
      }
    };
    while (rising) {
      while (by_cap[next_cap]->rate >= 0) next_cap += 1;
      double level = by_cap[next_cap]->cap;
      int full = -1;
      for (int p = 0; p < PIPE_COUNT; ++p) {
        if (users[p] && (capacity - used[p]) < level * demand[p]) {
          level = std::max(0.0, (capacity - used[p]) / demand[p]);
          full = p;
        }
      }
      if (full < 0) {
        while (next_cap < by_cap.size() && by_cap[next_cap]->cap <= level) {
          if (by_cap[next_cap]->rate < 0) {
            freeze(by_cap[next_cap], by_cap[next_cap]->cap);
            rising -= 1;
          }
          next_cap += 1;
        }
      } else {
        for (PipeClass* cls : by_cap) {
          if (cls->rate < 0 && cls->direction[full] > 0) {
            freeze(cls, std::min(level, cls->cap));
            rising -= 1;
          }
        }
      }
    }
    return used;
  }

  Demands fill_alone() {
    Demands used{};
    if (!active.empty()) {
      PipeClass* cls = active[0];
      double level = cls->cap;
      for (auto [p, share] : cls->uses) {
        double demand = cls->weight * share;
        if (capacity < level * demand) level = std::max(0.0, capacity / demand);
      }
      cls->rate = level;
      for (auto [p, share] : cls->uses) used[p] = cls->weight * share * level;
    }
    return used;
  }

  void reschedule() {
    version += 1;
    double delay_s = INF;
    for (PipeClass* cls : active) {
      if (cls->rate > 0) {
        double d = (cls->queue.front().finish - cls->clock) / cls->rate;
        if (d < delay_s) delay_s = d;
      }
    }
    if (delay_s == INF) return;
    uint64_t v = version;
    env->timer(std::max(delay_s, 0.0), this, v);
  }

  void on_timer(uint64_t v) {
    if (v != version) return;
    advance();
    for (PipeClass* cls : active) {
      cls->weight -= serve_due(cls->queue, cls->clock, cls->rate, env->now);
      if (cls->queue.empty()) cls->weight = 0.0;
    }
    active.erase(std::remove_if(active.begin(), active.end(), [](PipeClass* c) { return c->queue.empty(); }),
                 active.end());
    rebalance();
  }
};

}  // namespace memsim_core
