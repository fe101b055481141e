// memsim/engine/l2cache.py in the compiled engine: the L2 as a least-recently-used store of tiles with dirty
// lifetimes, a dirty limit, sets and the two partitions' copies of shared tiles. Line for line the reference; its
// docstring says what each rule models and where each number comes from.
#pragma once

#include <cmath>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "recency.hpp"
#include "sim.hpp"

namespace memsim_core {

constexpr double BYTE_ROUNDING = 1e-9;
constexpr double EXP_UNDERFLOW = 600.0;
constexpr double NEGLIGIBLE_LOSS = 1e-4;
constexpr int ON_BOTH_SURELY = 64;

// Python's OrderedDict, as l2cache.py uses it: insertion order, move_to_end, first, erase.
template <class K, class V, class H>
class LinkedMap {
 public:
  using Item = std::pair<K, V>;
  V* find(const K& k) {
    auto it = index_.find(k);
    return it == index_.end() ? nullptr : &it->second->second;
  }
  bool contains(const K& k) const { return index_.count(k) != 0; }
  // d[k] = v: a new key goes last, a present one keeps its place
  void set(const K& k, V v) {
    auto it = index_.find(k);
    if (it != index_.end()) {
      it->second->second = std::move(v);
      return;
    }
    items_.emplace_back(k, std::move(v));
    index_.emplace(k, std::prev(items_.end()));
  }
  void move_to_end(const K& k) {
    auto it = index_.find(k);
    items_.splice(items_.end(), items_, it->second);
  }
  bool erase(const K& k) {
    auto it = index_.find(k);
    if (it == index_.end()) return false;
    items_.erase(it->second);
    index_.erase(it);
    return true;
  }
  std::optional<V> pop(const K& k) {
    auto it = index_.find(k);
    if (it == index_.end()) return std::nullopt;
    V v = std::move(it->second->second);
    items_.erase(it->second);
    index_.erase(it);
    return v;
  }
  Item& front() { return items_.front(); }
  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  void clear() {
    items_.clear();
    index_.clear();
  }
  typename std::list<Item>::iterator begin() { return items_.begin(); }
  typename std::list<Item>::iterator end() { return items_.end(); }

 private:
  std::list<Item> items_;
  std::unordered_map<K, typename std::list<Item>::iterator, H> index_;
};

struct Entry {
  Entry(double member_bytes, long members, int tensor) : member_bytes(member_bytes), members(members), tensor(tensor) {}
  double member_bytes;
  long members;
  int tensor;
  std::deque<int64_t> stamps;  // each dirty member's last touch, oldest first
  long first = 0;
  double nbytes() const { return member_bytes * members; }
  long dirty() const { return (long)stamps.size(); }
};
using EntryRef = std::shared_ptr<Entry>;

using WrittenBack = std::vector<std::pair<int, double>>;  // (tensor, bytes)
inline void extend(WrittenBack& a, const WrittenBack& b) { a.insert(a.end(), b.begin(), b.end()); }

// memsim.writes.on_both_partitions
inline double on_both_partitions(double readers) {
  return readers > 0 ? std::max(0.0, 1.0 - std::pow(2.0, 1.0 - readers)) : 0.0;
}
// on_both_partitions of a whole number of readers, from a table of the same values
inline double on_both_partitions(long readers) {
  static const std::vector<double> table = [] {
    std::vector<double> t;
    for (long k = 0; k <= 4 * ON_BOTH_SURELY; ++k) t.push_back(on_both_partitions((double)k));
    return t;
  }();
  return readers >= 0 && readers < (long)table.size() ? table[readers] : on_both_partitions((double)readers);
}

inline double set_survival(double distance_bytes, double capacity_bytes, int ways) {
  double mean = ways * distance_bytes / capacity_bytes;
  if (mean <= 0) return 1.0;
  if (mean < EXP_UNDERFLOW) {
    double term = std::exp(-mean), total = term;
    for (int k = 1; k < ways; ++k) {
      term *= mean / k;
      total += term;
    }
    return std::min(1.0, total);
  }
  std::vector<double> logs;
  for (int k = 0; k < ways; ++k) logs.push_back(k * std::log(mean) - mean - std::lgamma(k + 1));
  double top = logs[0];
  for (double v : logs)
    if (v > top) top = v;
  double sum = 0.0;
  for (double v : logs) sum += std::exp(v - top);
  return std::min(1.0, std::exp(top) * sum);
}

inline long members_covering(double nbytes, double member_bytes) {
  if (nbytes <= member_bytes) return 1;
  return std::max(1L, (long)std::ceil(nbytes / member_bytes - BYTE_ROUNDING));
}

enum class Found { Miss, Hit, Pending };
struct Lookup {
  Found found;
  EventRef event;  // the fetch in flight, when Pending
};

struct L2Cache {
  // Python None: dirty_limit_bytes / dirty_lifetime_bytes < 0, ways 0.
  L2Cache(double capacity_bytes, double dirty_limit_bytes, double dirty_lifetime_bytes, double shared_age_weight,
          int ways, double lossless_bytes)
      : capacity_bytes(capacity_bytes), ways(ways), lossless_bytes(lossless_bytes), dirty_limit_bytes(dirty_limit_bytes),
        dirty_lifetime_bytes(dirty_lifetime_bytes), shared_age_weight(shared_age_weight) {
    readers.reserve(1 << 12);
    recency.last.reserve(1 << 14);
  }

  double capacity_bytes;
  int ways;
  double lossless_bytes;
  std::unordered_map<TileKey, double, TileKeyHash> missing;
  double dirty_limit_bytes, dirty_lifetime_bytes, shared_age_weight;
  std::unordered_map<TileKey, long, TileKeyHash> readers;
  std::unordered_map<TileKey, std::vector<std::pair<double, long>>, TileKeyHash> parts;
  LinkedMap<TileKey, EntryRef, TileKeyHash> lines;
  LinkedMap<TileKey, char, TileKeyHash> dirty_keys;
  double filled_bytes = 0.0;
  Recency recency;
  int64_t newest_stamp = 0;
  std::unordered_map<TileKey, EventRef, TileKeyHash> inflight;
  std::unordered_map<TileKey, EventRef, TileKeyHash> transfers;
  double used_bytes = 0.0;
  double dirty_bytes = 0.0;

  static MemberKey member_key(const TileKey& tile, long member) { return MemberKey{tile, member}; }

  Lookup lookup(const TileKey& key) {
    EntryRef* found = lines.find(key);
    if (found != nullptr) {
      EntryRef entry = *found;
      double lost = lost_to_sets(key, *entry);
      if (lost <= NEGLIGIBLE_LOSS) {
        lines.move_to_end(key);
        touch(key, *entry);
        return {Found::Hit, {}};
      }
      missing[key] = lost;
      forget_readers(key, lost);
      lines.erase(key);
      used_bytes -= entry->nbytes();
      return {Found::Miss, {}};
    }
    auto it = inflight.find(key);
    if (it == inflight.end()) return {Found::Miss, {}};
    return {Found::Pending, it->second};
  }

  double missing_fraction(const TileKey& key) const {
    auto it = missing.find(key);
    return it == missing.end() ? 1.0 : it->second;
  }

  double lost_to_sets(const TileKey& key, const Entry& entry) {
    if (ways == 0 || !entry.stamps.empty() || entry.members != 1 || entry.first) return 0.0;
    auto last = recency.last_touch(member_key(key, 0));
    if (!last) return 0.0;
    double distance = recency.since(*last);
    if (distance <= lossless_bytes) return 0.0;
    return 1.0 - set_survival(distance, capacity_bytes, ways);
  }

  WrittenBack read_shared(const TileKey& key, double nbytes, long readers_now) {
    double extra = (shared_age_weight - 1.0) * nbytes * copied_across(key, readers_now);
    if (extra <= 0) return {};
    filled_bytes += extra;
    recency.touch_bytes(extra);
    return write_back_oldest();
  }

  double copied_across(const TileKey& key, long more) {
    auto p = parts.find(key);
    if (p == parts.end()) {
      long before = 0;
      auto r = readers.find(key);
      if (r != readers.end()) before = r->second;
      long after = before + more;
      readers[key] = after;
      return on_both_partitions(after) - on_both_partitions(before);
    }
    std::vector<std::pair<double, long>> old = p->second, kept;
    for (auto [f, r] : old)
      if (r + more < ON_BOTH_SURELY) kept.push_back({f, r + more});
    p->second = kept;
    double sum = 0.0;
    bool first = true;
    for (auto [f, r] : old) {
      double term = f * (on_both_partitions(r + more) - on_both_partitions(r));
      sum = first ? term : sum + term;  // Python's sum(): 0 + the first term is the first term
      first = false;
    }
    return sum;
  }

  void forget_readers(const TileKey& key, double lost = 1.0) {
    if (lost >= 1.0) {
      readers.erase(key);
      parts.erase(key);
      return;
    }
    std::vector<std::pair<double, long>> current;
    auto p = parts.find(key);
    if (p == parts.end()) {
      auto r = readers.find(key);
      if (r == readers.end()) return;  // never read as shared
      current = {{1.0, r->second}};
      readers.erase(r);
    } else {
      current = p->second;
    }
    std::vector<std::pair<double, long>> next;
    for (auto [f, r] : current)
      if (r < ON_BOTH_SURELY) next.push_back({f * (1.0 - lost), r});
    next.push_back({lost, 0});
    parts[key] = next;
  }

  void start_fetch(const TileKey& key, EventRef event, EventRef transfer = {}) {
    inflight[key] = event;
    if (transfer) transfers[key] = transfer;
  }

  EventRef transfer_started(const TileKey& key) const {
    auto it = transfers.find(key);
    return it == transfers.end() ? EventRef() : it->second;
  }

  WrittenBack finish_fetch(const TileKey& key, double nbytes, int tensor, long members = 1) {
    inflight.erase(key);
    transfers.erase(key);
    double fetched = 1.0;
    auto m = missing.find(key);
    if (m != missing.end()) {
      fetched = m->second;
      missing.erase(m);
    }
    WrittenBack written_back = insert(key, nbytes, tensor, false, members);
    filled_bytes -= (1.0 - fetched) * nbytes;
    return written_back;
  }

  WrittenBack insert(const TileKey& key, double nbytes, int tensor, bool dirty, long members = 1) {
    double member_bytes = nbytes / members;
    EntryRef* found = lines.find(key);
    if (found == nullptr) {
      EntryRef entry = std::make_shared<Entry>(member_bytes, 0, tensor);
      lines.set(key, entry);
      return add_members(key, *entry, members, dirty);
    }
    EntryRef old = *found;
    TileKey new_key = key;
    new_key.rewrite = true;
    EntryRef entry = std::make_shared<Entry>(member_bytes, 0, tensor);
    lines.set(new_key, entry);
    WrittenBack written_back;
    for (long k = 0; k < members; ++k) {
      bool resident = old->members > 0 && k >= members - old->members;
      if (resident) drop_oldest(key, *old);
      extend(written_back, add_members(new_key, *entry, 1, dirty, !resident, &key));
    }
    lines.erase(key);
    dirty_keys.erase(key);
    std::optional<EntryRef> moved = lines.pop(new_key);
    lines.set(key, *moved);
    if (dirty_keys.contains(new_key)) {
      dirty_keys.erase(new_key);
      dirty_keys.set(key, 0);
    }
    return written_back;
  }

  WrittenBack add_members(const TileKey& key, Entry& entry, long count, bool dirty, bool brought_in = true,
                          const TileKey* tiles_of = nullptr) {
    entry.members += count;
    used_bytes += count * entry.member_bytes;
    if (brought_in) filled_bytes += count * entry.member_bytes;
    if (dirty) {
      for (long i = 0; i < count; ++i) entry.stamps.push_back(0);
      dirty_bytes += count * entry.member_bytes;
      dirty_keys.set(key, 0);
    }
    touch(key, entry, count, tiles_of);
    WrittenBack out = evict();
    extend(out, write_back_oldest());
    return out;
  }

  // `newest` < 0: every member.
  void touch(const TileKey& key, Entry& entry, long newest = -1, const TileKey* tiles_of = nullptr) {
    long members = newest < 0 ? entry.members : newest;
    long start = entry.first + entry.members - members;
    const TileKey& tiles = tiles_of == nullptr ? key : *tiles_of;
    double nbytes = entry.member_bytes;
    if (entry.stamps.empty()) {
      int64_t watched = ways == 0 ? newest_stamp : -1;
      for (long member = start; member < start + members; ++member) recency.touch(member_key(tiles, member), nbytes, watched);
      return;
    }
    long dirty_from = entry.first + entry.members - (long)entry.stamps.size();
    for (long member = start; member < start + members; ++member) {
      int64_t seq = recency.touch(member_key(tiles, member), nbytes);
      if (member >= dirty_from) {
        entry.stamps[member - dirty_from] = seq;
        newest_stamp = seq;
      }
    }
    dirty_keys.move_to_end(key);
  }

  void drop_oldest(const TileKey& key, Entry& entry) {
    if (entry.dirty() == entry.members) {
      entry.stamps.pop_front();
      dirty_bytes -= entry.member_bytes;
      if (!entry.dirty()) dirty_keys.erase(key);
    }
    entry.members -= 1;
    entry.first += 1;
    used_bytes -= entry.member_bytes;
    if (!entry.members) lines.erase(key);
  }

  WrittenBack evict() {
    WrittenBack written_back;
    while (used_bytes > capacity_bytes) {
      auto& front = lines.front();
      TileKey key = front.first;
      EntryRef entry = front.second;
      long count = std::min(entry->members - (long)(lines.size() == 1),
                            members_covering(used_bytes - capacity_bytes, entry->member_bytes));
      if (count <= 0) break;
      if (!entry->stamps.empty()) {
        long dirty = std::max(0L, count - (entry->members - (long)entry->stamps.size()));
        if (dirty) {
          written_back.push_back({entry->tensor, dirty * entry->member_bytes});
          dirty_bytes -= dirty * entry->member_bytes;
          entry->stamps.erase(entry->stamps.begin(), entry->stamps.begin() + dirty);
        }
        if (entry->stamps.empty()) dirty_keys.erase(key);
      }
      used_bytes -= count * entry->member_bytes;
      entry->members -= count;
      entry->first += count;
      if (!entry->members) {
        lines.erase(key);
        forget_readers(key);
      }
    }
    return written_back;
  }

  WrittenBack write_back_oldest() {
    WrittenBack written_back;
    while (!dirty_keys.empty()) {
      TileKey key = dirty_keys.front().first;
      EntryRef entry = *lines.find(key);
      long count = 0;
      if (dirty_lifetime_bytes >= 0) {
        while (count < (long)entry->stamps.size() && recency.since(entry->stamps[count]) > dirty_lifetime_bytes) count += 1;
      }
      if (dirty_limit_bytes >= 0 && dirty_bytes > dirty_limit_bytes) {
        long keep = dirty_keys.size() == 1 ? 1 : 0;
        long over = members_covering(dirty_bytes - dirty_limit_bytes, entry->member_bytes);
        count = std::max(count, std::min(entry->dirty() - keep, over));
      }
      if (count <= 0) break;
      written_back.push_back({entry->tensor, count * entry->member_bytes});
      dirty_bytes -= count * entry->member_bytes;
      entry->stamps.erase(entry->stamps.begin(), entry->stamps.begin() + count);
      if (entry->dirty()) break;
      dirty_keys.erase(key);
    }
    return written_back;
  }

  // tensor -> bytes dirty now, in the order l2cache.py's dict would hold them
  std::vector<std::pair<int, double>> dirty_by_tensor() {
    std::vector<std::pair<int, double>> out;
    for (auto& item : dirty_keys) {
      Entry& entry = **lines.find(item.first);
      bool found = false;
      for (auto& [t, v] : out) {
        if (t == entry.tensor) {
          v = v + entry.dirty() * entry.member_bytes;
          found = true;
        }
      }
      if (!found) out.push_back({entry.tensor, 0.0 + entry.dirty() * entry.member_bytes});
    }
    return out;
  }

  WrittenBack flush() {
    WrittenBack dirty;
    for (auto& item : lines)
      if (item.second->dirty()) dirty.push_back({item.second->tensor, item.second->dirty() * item.second->member_bytes});
    lines.clear();
    dirty_keys.clear();
    inflight.clear();
    transfers.clear();
    missing.clear();
    readers.clear();
    parts.clear();
    recency.reset();
    newest_stamp = 0;
    used_bytes = 0.0;
    dirty_bytes = 0.0;
    return dirty;
  }
};

}  // namespace memsim_core
