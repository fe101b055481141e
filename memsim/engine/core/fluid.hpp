// memsim/engine/fluid.py in the compiled engine: a unit shared by everything in flight on it (HBM and L2
// bandwidth), processor sharing with one service clock per unit of weight. Line for line the reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "sim.hpp"

namespace memsim_core {

constexpr double DONE_FRACTION = 1e-9;       // fluid.py _DONE
constexpr double CLOCK_RESOLUTION = 1e-12;   // fluid.py _CLOCK_RESOLUTION
constexpr double INF = std::numeric_limits<double>::infinity();

// One request in a processor-sharing queue: heap order (finish on the service clock, id).
struct Request {
  double finish;
  uint64_t id;
  double weight;
  EventRef done;
  double amount;
};
struct LaterFinish {
  bool operator()(const Request& a, const Request& b) const {
    if (a.finish != b.finish) return a.finish > b.finish;
    return a.id > b.id;
  }
};
inline void heap_push(std::vector<Request>& q, Request r) {
  q.push_back(std::move(r));
  std::push_heap(q.begin(), q.end(), LaterFinish());
}
inline Request heap_pop(std::vector<Request>& q) {
  std::pop_heap(q.begin(), q.end(), LaterFinish());
  Request r = std::move(q.back());
  q.pop_back();
  return r;
}

// fluid.py serve_due: pop and succeed every request the clock has reached; returns the weight that left.
inline double serve_due(std::vector<Request>& queue, double clock, double rate, double now_s) {
  double tiny_s = CLOCK_RESOLUTION * std::max(now_s, 1e-9);
  double left = 0.0;
  while (!queue.empty()) {
    double remaining = queue.front().finish - clock;
    if (remaining > DONE_FRACTION * queue.front().amount && (rate <= 0 || remaining / rate > tiny_s)) break;
    Request r = heap_pop(queue);
    left += r.weight;
    r.done->succeed();
  }
  return left;
}

struct FluidResource {
  FluidResource(Env* env, double rate, double cap = INF) : env(env), rate(rate), cap(cap), last_s(env->now) {}
  Env* env;
  double rate, cap;
  std::vector<Request> queue;
  uint64_t next_id = 0;
  double weight = 0.0;
  double served_per_weight = 0.0;
  double last_s;
  uint64_t version = 0;
  double timer_s = INF;
  double busy_s = 0.0;
  double served = 0.0;
  std::vector<EventRef> idle_waiters;

  EventRef use(double amount, double w = 1.0) {
    EventRef done = env->event();
    if (amount <= 0 || w <= 0) {
      done->succeed();
      return done;
    }
    advance();
    heap_push(queue, Request{served_per_weight + amount, next_id, w, done, amount});
    next_id += 1;
    weight += w;
    served += amount * w;
    if (timer_s == INF || queue.front().id == next_id - 1) reschedule();
    return done;
  }

  EventRef idle() {
    EventRef e = env->event();
    if (queue.empty()) {
      e->succeed();
      return e;
    }
    idle_waiters.push_back(e);
    return e;
  }

  double busy_until_now() const {
    double dt = env->now - last_s;
    if (dt > 0 && !queue.empty()) return busy_s + dt * std::min(1.0, unit_rate() * weight / rate);
    return busy_s;
  }

  double unit_rate() const { return std::min(cap, rate / weight); }

  void advance() {
    double dt = env->now - last_s;
    if (dt > 0 && !queue.empty()) {
      double r = unit_rate();
      served_per_weight += r * dt;
      busy_s += dt * std::min(1.0, r * weight / rate);
    }
    last_s = env->now;
  }

  void reschedule() {
    version += 1;
    if (queue.empty()) {
      timer_s = INF;
      return;
    }
    double remaining = queue.front().finish - served_per_weight;
    uint64_t v = version;
    double delay_s = std::max(remaining, 0.0) / unit_rate();
    timer_s = env->now + delay_s;
    env->timer(delay_s, this, v);
  }

  void on_timer(uint64_t v) {
    if (v != version) return;
    advance();
    weight -= serve_due(queue, served_per_weight, unit_rate(), env->now);
    if (queue.empty()) {
      weight = 0.0;
      std::vector<EventRef> waiters = std::move(idle_waiters);
      idle_waiters.clear();
      for (auto& e : waiters) e->succeed();
    }
    reschedule();
  }
};

}  // namespace memsim_core
