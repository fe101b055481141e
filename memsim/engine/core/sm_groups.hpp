// memsim/engine/sm_groups.py in the compiled engine: the SMs as groups of identical residents, each group with its
// own pipes. Line for line the reference (dicts in insertion order).
#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <unordered_map>
#include <utility>
#include <vector>

#include "sharing.hpp"

namespace memsim_core {

struct SmGroup {
  SmGroup(std::vector<int> sms, Env* env, double capacity, KeyCache* keys)
      : sms(std::move(sms)), pipes(env, capacity, keys) {}
  std::vector<int> sms;
  SharedPipes pipes;
  long residents = 0;
  bool live = true;
};

// One cohort's share of a placement: indices into its slots, and the group they landed in.
using Placement = std::vector<std::pair<std::vector<int>, SmGroup*>>;

struct SmGroups {
  SmGroups(Env* env, int sm_count) : env(env), sm_count(sm_count), of_sm(sm_count, nullptr) {}
  Env* env;
  int sm_count;
  std::vector<SmGroup*> of_sm;               // busy SM -> its group
  std::vector<std::unique_ptr<SmGroup>> all;  // every group made, live or dissolved
  std::vector<SmGroup*> live;                 // in the order they were made
  Demands busy_done_s{};
  long pooled_joins = 0;
  KeyCache class_keys;

  std::vector<Placement> place(const std::vector<std::vector<int>>& cohorts) {
    // holds: SM -> [(cohort, index)], in first-seen order
    std::vector<int> sm_order;
    std::unordered_map<int, std::vector<std::pair<int, int>>> holds;
    for (int c = 0; c < (int)cohorts.size(); ++c) {
      for (int index = 0; index < (int)cohorts[c].size(); ++index) {
        int sm = cohorts[c][index] % sm_count;
        auto it = holds.find(sm);
        if (it == holds.end()) {
          sm_order.push_back(sm);
          it = holds.emplace(sm, std::vector<std::pair<int, int>>()).first;
        }
        it->second.push_back({c, index});
      }
    }
    // by_signature: (group so far, sorted members per cohort) -> SMs, in first-seen order
    using Signature = std::pair<SmGroup*, std::vector<std::pair<int, int>>>;
    std::vector<Signature> signatures;
    std::vector<std::vector<int>> signature_sms;
    std::map<Signature, size_t> signature_index;
    for (int sm : sm_order) {
      std::map<int, int> counts;
      for (auto& [c, _] : holds[sm]) counts[c] += 1;
      Signature sig{of_sm[sm], std::vector<std::pair<int, int>>(counts.begin(), counts.end())};
      auto it = signature_index.find(sig);
      if (it == signature_index.end()) {
        it = signature_index.emplace(sig, signatures.size()).first;
        signatures.push_back(sig);
        signature_sms.emplace_back();
      }
      signature_sms[it->second].push_back(sm);
    }
    std::vector<SmGroup*> covered_order;
    std::unordered_map<SmGroup*, std::vector<size_t>> covered;
    std::unordered_map<int, SmGroup*> group_of;
    for (size_t s = 0; s < signatures.size(); ++s) {
      const auto& sms = signature_sms[s];
      SmGroup* group = of_sm[sms[0]];
      if (group == nullptr) {
        all.push_back(std::make_unique<SmGroup>(sms, env, (double)sms.size() / sm_count, &class_keys));
        group = all.back().get();
        live.push_back(group);
        for (int sm : sms) of_sm[sm] = group;
      } else {
        auto it = covered.find(group);
        if (it == covered.end()) {
          covered_order.push_back(group);
          it = covered.emplace(group, std::vector<size_t>()).first;
        }
        it->second.push_back(sms.size());
      }
      for (int sm : sms) group_of[sm] = group;
    }
    for (SmGroup* group : covered_order) {
      const auto& sizes = covered[group];
      pooled_joins += sizes.size() > 1 || sizes[0] != group->sms.size();
    }
    std::vector<Placement> placed;
    for (const auto& slots : cohorts) {
      std::vector<SmGroup*> order;
      std::unordered_map<SmGroup*, std::vector<int>> parts;
      for (int index = 0; index < (int)slots.size(); ++index) {
        SmGroup* g = group_of[slots[index] % sm_count];
        auto it = parts.find(g);
        if (it == parts.end()) {
          order.push_back(g);
          it = parts.emplace(g, std::vector<int>()).first;
        }
        it->second.push_back(index);
      }
      Placement p;
      for (SmGroup* g : order) {
        g->residents += (long)parts[g].size();
        p.push_back({std::move(parts[g]), g});
      }
      placed.push_back(std::move(p));
    }
    return placed;
  }

  void leave(SmGroup* group, long members) {
    group->residents -= members;
    if (group->residents > 0) return;
    group->live = false;
    live.erase(std::find(live.begin(), live.end(), group));
    for (int sm : group->sms) of_sm[sm] = nullptr;
    for (int p = 0; p < PIPE_COUNT; ++p) busy_done_s[p] += group->pipes.busy_until_now(p);
  }

  double busy_until_now(int p) const {
    double total = 0.0;
    for (SmGroup* g : live) total += g->pipes.busy_until_now(p);
    return busy_done_s[p] + total;
  }
};

}  // namespace memsim_core
