// memsim/engine/l2cache.py in the compiled engine: the L2 as a least-recently-used store of tiles with dirty
// lifetimes, a dirty limit, sets and the two partitions' copies of shared tiles. Line for line the reference; its
// docstring says what each rule models and where each number comes from.
#pragma once

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <vector>

#include "recency.hpp"
#include "sim.hpp"

namespace memsim_core {

constexpr double BYTE_ROUNDING = 1e-9;
constexpr double EXP_UNDERFLOW = 600.0;
constexpr double NEGLIGIBLE_LOSS = 1e-4;
constexpr int ON_BOTH_SURELY = 64;

// Each dirty member's last touch, oldest first: appended at the back, taken from the front.
using Stamps = Fifo<int64_t>;

struct Entry {
  double member_bytes = 0.0;
  long members = 0;
  int tensor = 0;
  Stamps stamps;  // each dirty member's last touch, oldest first
  long first = 0;
  double nbytes() const { return member_bytes * members; }
  long dirty() const { return (long)stamps.size(); }
  void reset(double bytes_each, int of_tensor) {
    member_bytes = bytes_each;
    members = 0;
    tensor = of_tensor;
    stamps.clear();
    first = 0;
  }
};

// What l2cache.py's dicts hold for one tile, by its id.
struct TileState {
  Entry entry;                                 // _lines[key], while lines.contains(id)
  long readers = 0;                            // _readers[key], while has_readers
  std::vector<std::pair<double, long>> parts;  // _parts[key], while has_parts
  double missing = 0.0;                        // _missing[key], while has_missing
  EventRef inflight, transfer;                 // _inflight[key], _transfers[key] (null: absent)
  TileId rewrite = NO_TILE;                    // ("rewrite of", key)'s id, once named
  bool has_readers = false, has_parts = false, has_missing = false;
};

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
        dirty_lifetime_bytes(dirty_lifetime_bytes), shared_age_weight(shared_age_weight) {}

  double capacity_bytes;
  int ways;
  double lossless_bytes;
  double dirty_limit_bytes, dirty_lifetime_bytes, shared_age_weight;
  TileIds ids;
  std::vector<TileState> tiles;  // by id
  IdList lines;                  // _lines' order: least recently used first
  IdList dirty_keys;             // _dirty: keys with dirty members, least recently touched first
  double filled_bytes = 0.0;
  Recency recency;
  int64_t newest_stamp = 0;
  double used_bytes = 0.0;
  double dirty_bytes = 0.0;

  // The id of a tile, named once; its state is tiles[id] from then on.
  TileId id(const TileKey& key) {
    TileId t = ids.of(key);
    if (t >= (TileId)tiles.size()) tiles.resize(std::max<size_t>(2 * tiles.size(), t + 1024));
    return t;
  }
  TileId rewrite_of(TileId key) {
    if (tiles[key].rewrite == NO_TILE) {
      TileKey k = ids.key(key);
      k.rewrite = true;
      TileId r = id(k);  // (may move tiles)
      tiles[key].rewrite = r;
    }
    return tiles[key].rewrite;
  }

  Lookup lookup(TileId key) {
    TileState& t = tiles[key];
    if (lines.contains(key)) {
      Entry& entry = t.entry;
      double lost = lost_to_sets(key, entry);
      if (lost <= NEGLIGIBLE_LOSS) {
        lines.move_to_end(key);
        touch(key, entry);
        return {Found::Hit, {}};
      }
      t.missing = lost;
      t.has_missing = true;
      forget_readers(key, lost);
      lines.erase(key);
      used_bytes -= entry.nbytes();
      return {Found::Miss, {}};
    }
    if (!t.inflight) return {Found::Miss, {}};
    return {Found::Pending, t.inflight};
  }

  double missing_fraction(TileId key) const { return tiles[key].has_missing ? tiles[key].missing : 1.0; }

  double lost_to_sets(TileId key, const Entry& entry) {
    if (ways == 0 || !entry.stamps.empty() || entry.members != 1 || entry.first) return 0.0;
    auto last = recency.last_touch(key, 0);
    if (!last) return 0.0;
    double distance = recency.since(*last);
    if (distance <= lossless_bytes) return 0.0;
    return 1.0 - set_survival(distance, capacity_bytes, ways);
  }

  WrittenBack read_shared(TileId key, double nbytes, long readers_now) {
    double extra = (shared_age_weight - 1.0) * nbytes * copied_across(key, readers_now);
    if (extra <= 0) return {};
    filled_bytes += extra;
    recency.touch_bytes(extra);
    return write_back_oldest();
  }

  double copied_across(TileId key, long more) {
    TileState& t = tiles[key];
    if (!t.has_parts) {
      long before = t.has_readers ? t.readers : 0;
      long after = before + more;
      t.readers = after;
      t.has_readers = true;
      return on_both_partitions(after) - on_both_partitions(before);
    }
    std::vector<std::pair<double, long>> old = t.parts, kept;
    for (auto [f, r] : old)
      if (r + more < ON_BOTH_SURELY) kept.push_back({f, r + more});
    t.parts = kept;
    double sum = 0.0;
    bool first = true;
    for (auto [f, r] : old) {
      double term = f * (on_both_partitions(r + more) - on_both_partitions(r));
      sum = first ? term : sum + term;  // Python's sum(): 0 + the first term is the first term
      first = false;
    }
    return sum;
  }

  void forget_readers(TileId key, double lost = 1.0) {
    TileState& t = tiles[key];
    if (lost >= 1.0) {
      t.has_readers = false;
      t.has_parts = false;
      t.parts.clear();
      return;
    }
    std::vector<std::pair<double, long>> current;
    if (!t.has_parts) {
      if (!t.has_readers) return;  // never read as shared
      current = {{1.0, t.readers}};
      t.has_readers = false;
    } else {
      current = t.parts;
    }
    std::vector<std::pair<double, long>> next;
    for (auto [f, r] : current)
      if (r < ON_BOTH_SURELY) next.push_back({f * (1.0 - lost), r});
    next.push_back({lost, 0});
    t.parts = next;
    t.has_parts = true;
  }

  void start_fetch(TileId key, EventRef event, EventRef transfer = {}) {
    tiles[key].inflight = event;
    if (transfer) tiles[key].transfer = transfer;
  }

  EventRef transfer_started(TileId key) const { return tiles[key].transfer; }

  WrittenBack finish_fetch(TileId key, double nbytes, int tensor, long members = 1) {
    TileState& t = tiles[key];
    t.inflight = EventRef();
    t.transfer = EventRef();
    double fetched = 1.0;
    if (t.has_missing) {
      fetched = t.missing;
      t.has_missing = false;
    }
    WrittenBack written_back = insert(key, nbytes, tensor, false, members);
    filled_bytes -= (1.0 - fetched) * nbytes;
    return written_back;
  }

  // lines[key] = a new entry (a present key keeps its place)
  Entry& new_line(TileId key, double member_bytes, int tensor) {
    if (!lines.contains(key)) lines.push_back(key);
    Entry& entry = tiles[key].entry;
    entry.reset(member_bytes, tensor);
    return entry;
  }

  WrittenBack insert(TileId key, double nbytes, int tensor, bool dirty, long members = 1) {
    double member_bytes = nbytes / members;
    if (!lines.contains(key)) {
      Entry& entry = new_line(key, member_bytes, tensor);
      return add_members(key, entry, members, dirty);
    }
    TileId new_key = rewrite_of(key);
    Entry& old = tiles[key].entry;
    Entry& entry = new_line(new_key, member_bytes, tensor);
    WrittenBack written_back;
    for (long k = 0; k < members; ++k) {
      bool resident = old.members > 0 && k >= members - old.members;
      if (resident) drop_oldest(key, old);
      extend(written_back, add_members(new_key, entry, 1, dirty, !resident, key));
    }
    lines.erase(key);
    dirty_keys.erase(key);
    // lines[key] = lines.pop(new_key)
    lines.erase(new_key);
    std::swap(tiles[key].entry, tiles[new_key].entry);
    lines.push_back(key);
    if (dirty_keys.contains(new_key)) {
      dirty_keys.erase(new_key);
      dirty_keys.push_back(key);
    }
    return written_back;
  }

  // `tiles_of`: the tile the members are to the recency tree, when not `key` (while a rewrite builds the entry)
  WrittenBack add_members(TileId key, Entry& entry, long count, bool dirty, bool brought_in = true,
                          TileId tiles_of = NO_TILE) {
    entry.members += count;
    used_bytes += count * entry.member_bytes;
    if (brought_in) filled_bytes += count * entry.member_bytes;
    if (dirty) {
      for (long i = 0; i < count; ++i) entry.stamps.push_back(0);
      dirty_bytes += count * entry.member_bytes;
      if (!dirty_keys.contains(key)) dirty_keys.push_back(key);  // _dirty[key] = None: a present key keeps its place
    }
    touch(key, entry, count, tiles_of);
    WrittenBack out = evict();
    extend(out, write_back_oldest());
    return out;
  }

  // `newest` < 0: every member.
  void touch(TileId key, Entry& entry, long newest = -1, TileId tiles_of = NO_TILE) {
    long members = newest < 0 ? entry.members : newest;
    long start = entry.first + entry.members - members;
    TileId tiles_id = tiles_of == NO_TILE ? key : tiles_of;
    double nbytes = entry.member_bytes;
    if (entry.stamps.empty()) {
      int64_t watched = ways == 0 ? newest_stamp : -1;
      for (long member = start; member < start + members; ++member) recency.touch(tiles_id, member, nbytes, watched);
      return;
    }
    long dirty_from = entry.first + entry.members - (long)entry.stamps.size();
    for (long member = start; member < start + members; ++member) {
      int64_t seq = recency.touch(tiles_id, member, nbytes);
      if (member >= dirty_from) {
        entry.stamps[member - dirty_from] = seq;
        newest_stamp = seq;
      }
    }
    dirty_keys.move_to_end(key);
  }

  void drop_oldest(TileId key, Entry& entry) {
    if (entry.dirty() == entry.members) {
      entry.stamps.erase_front(1);
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
      TileId key = lines.front();
      Entry& entry = tiles[key].entry;
      long count = std::min(entry.members - (long)(lines.size() == 1),
                            members_covering(used_bytes - capacity_bytes, entry.member_bytes));
      if (count <= 0) break;
      if (!entry.stamps.empty()) {
        long dirty = std::max(0L, count - (entry.members - (long)entry.stamps.size()));
        if (dirty) {
          written_back.push_back({entry.tensor, dirty * entry.member_bytes});
          dirty_bytes -= dirty * entry.member_bytes;
          entry.stamps.erase_front(dirty);
        }
        if (entry.stamps.empty()) dirty_keys.erase(key);
      }
      used_bytes -= count * entry.member_bytes;
      entry.members -= count;
      entry.first += count;
      if (!entry.members) {
        lines.erase(key);
        forget_readers(key);
      }
    }
    return written_back;
  }

  WrittenBack write_back_oldest() {
    WrittenBack written_back;
    while (!dirty_keys.empty()) {
      TileId key = dirty_keys.front();
      Entry& entry = tiles[key].entry;  // (a dirty key is in _lines)
      long count = 0;
      if (dirty_lifetime_bytes >= 0) {
        while (count < (long)entry.stamps.size() && recency.since(entry.stamps[count]) > dirty_lifetime_bytes) count += 1;
      }
      if (dirty_limit_bytes >= 0 && dirty_bytes > dirty_limit_bytes) {
        long keep = dirty_keys.size() == 1 ? 1 : 0;
        long over = members_covering(dirty_bytes - dirty_limit_bytes, entry.member_bytes);
        count = std::max(count, std::min(entry.dirty() - keep, over));
      }
      if (count <= 0) break;
      written_back.push_back({entry.tensor, count * entry.member_bytes});
      dirty_bytes -= count * entry.member_bytes;
      entry.stamps.erase_front(count);
      if (entry.dirty()) break;
      dirty_keys.erase(key);
    }
    return written_back;
  }

  // tensor -> bytes dirty now, in the order l2cache.py's dict would hold them
  std::vector<std::pair<int, double>> dirty_by_tensor() {
    std::vector<std::pair<int, double>> out;
    for (TileId key = dirty_keys.front(); key != NO_TILE; key = dirty_keys.next(key)) {
      const Entry& entry = tiles[key].entry;
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
    for (TileId key = lines.front(); key != NO_TILE; key = lines.next(key)) {
      const Entry& entry = tiles[key].entry;
      if (entry.dirty()) dirty.push_back({entry.tensor, entry.dirty() * entry.member_bytes});
    }
    lines.clear();
    dirty_keys.clear();
    for (TileState& t : tiles) {  // _inflight, _transfers, _missing, _readers, _parts cleared
      TileId rewrite = t.rewrite;
      t = TileState();
      t.rewrite = rewrite;
    }
    recency.reset();
    newest_stamp = 0;
    used_bytes = 0.0;
    dirty_bytes = 0.0;
    return dirty;
  }
};

}  // namespace memsim_core
