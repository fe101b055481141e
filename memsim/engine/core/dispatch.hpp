// memsim/engine/dispatch.py in the compiled engine: the block scheduler, CTAs to SMs in dispatch order as slots
// free up, breadth first; in fast mode consecutive CTAs of one work class dispatched together form a cohort.
#pragma once

#include <algorithm>
#include <tuple>
#include <vector>

#include "cta.hpp"

namespace memsim_core {

// What the Python side answers while a launch runs (memsim/engine/compiled.py): each cohort's program, and the
// fast mode's cutoff (memsim/engine/extrapolate.py) and progress.
struct LaunchHooks {
  virtual ~LaunchHooks() = default;
  virtual ProgramRef program(int64_t pid) = 0;
  virtual long limit() = 0;                                // CTAs to dispatch (the grid, or the cutoff's limit)
  virtual void dispatching(long position, long count) = 0;  // memsim.engine.simulate._run's on_dispatch
  virtual void dispatched(long position) = 0;               // cutoff.dispatched = position
  virtual void finished(long weight) = 0;                  // memsim.engine.simulate._run's on_finish
  bool watches_dispatch = false;                           // a cutoff is given
};

struct LaunchSpec {
  long grid;
  long slots;
  long num_stages;
  long batch;
  bool fast;
  std::vector<int64_t> order;       // dispatch position -> program id
  std::vector<int64_t> work_class;  // program id -> interned work class
  std::optional<Issue> issue;
};

inline std::vector<int> breadth_first(const std::vector<int>& free_slots, const std::vector<int>& slots_on_sm) {
  int sm_count = (int)slots_on_sm.size();
  std::vector<int> free_on_sm(sm_count, 0), rank(sm_count, 0);
  for (int slot : free_slots) free_on_sm[slot % sm_count] += 1;
  std::vector<int> sorted_slots(free_slots);
  std::sort(sorted_slots.begin(), sorted_slots.end());
  std::vector<std::tuple<int, int, int>> keyed;
  for (int slot : sorted_slots) {
    int sm = slot % sm_count;
    keyed.emplace_back(slots_on_sm[sm] - free_on_sm[sm] + rank[sm], sm, slot);
    rank[sm] += 1;
  }
  std::sort(keyed.begin(), keyed.end());
  std::vector<int> out;
  for (auto& [r, sm, slot] : keyed) out.push_back(slot);
  return out;
}

inline Task finish_cohort(Machine& m, Cohort* cohort, ProcessRef process, Store* free, LaunchHooks* hooks) {
  co_await wait(process);
  m.sm_groups.leave(cohort->group, cohort->weight);
  hooks->finished(cohort->weight);
  for (int slot : cohort->slots) free->put(slot);
}

inline Task run_launch(Machine& m, const LaunchSpec& launch, LaunchHooks* hooks, std::vector<CohortRef>* cohorts_out) {
  Env* env = m.env;
  Store free(env);
  int sm_count = m.p.sm_count;
  std::vector<int> slots_on_sm(sm_count, 0);
  for (long slot = 0; slot < launch.slots; ++slot) {
    free.put(slot);
    slots_on_sm[slot % sm_count] += 1;
  }
  std::vector<EventRef> running;
  long position = 0;
  while (position < hooks->limit()) {
    int first = (int)co_await wait(free.get());
    co_await wait(env->timeout(0));
    std::vector<int> free_slots(1, first);
    for (int64_t s : free.items) free_slots.push_back((int)s);
    std::vector<int> slots = breadth_first(free_slots, slots_on_sm);
    free.items.clear();
    if (hooks->watches_dispatch) hooks->dispatching(position, std::min(hooks->limit() - position, (long)slots.size()));
    long end = std::min(hooks->limit(), position + (long)slots.size());
    std::vector<int64_t> pids;
    for (long i = position; i < end; ++i) pids.push_back(launch.order[i]);
    position += (long)pids.size();
    if (hooks->watches_dispatch) hooks->dispatched(position);
    for (size_t i = pids.size(); i < slots.size(); ++i) free.put(slots[i]);
    // consecutive CTAs of one work class (fast mode; faithful: each CTA its own)
    std::vector<std::pair<std::vector<int64_t>, std::vector<int>>> classes;
    size_t start_at = 0;
    for (size_t i = 0; i < pids.size(); ++i) {
      bool same = i > 0 && launch.fast && launch.work_class[pids[i]] == launch.work_class[pids[i - 1]];
      if (!same) classes.emplace_back();
      classes.back().first.push_back(pids[i]);
      classes.back().second.push_back(slots[start_at + i]);
    }
    std::vector<std::vector<int>> class_slots;
    for (auto& c : classes) class_slots.push_back(c.second);
    std::vector<Placement> placed = m.sm_groups.place(class_slots);
    for (size_t c = 0; c < classes.size(); ++c) {
      auto& [members, member_slots] = classes[c];
      for (auto& [indices, group] : placed[c]) {
        auto cohort = std::make_shared<Cohort>();
        for (int i : indices) cohort->pids.push_back(members[i]);
        cohort->first_pid = cohort->pids[0];
        cohort->weight = (long)indices.size();
        for (int i : indices) cohort->slots.push_back(member_slots[i]);
        cohort->group = group;
        cohort->program = hooks->program(cohort->first_pid);
        ProcessRef process = start(env, run_cohort(m, cohort.get(), launch.num_stages, launch.batch, launch.issue));
        cohorts_out->push_back(cohort);
        running.push_back(start(env, finish_cohort(m, cohort.get(), process, &free, hooks)));
      }
    }
  }
  co_await wait(all_of(env, running));
  std::vector<EventRef> units;  // (g++ 12 takes no braced list inside a coroutine)
  units.push_back(m.hbm.idle());
  units.push_back(m.l2_unit.idle());
  co_await wait(all_of(env, units));
}

}  // namespace memsim_core
