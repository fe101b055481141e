// memsim/engine/recency.py in the compiled engine: bytes of distinct tiles touched since a given touch (a Fenwick
// tree over touch sequence numbers). Line for line the reference, with the same float sums in the same order; tiles
// by id (tiles.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include "tiles.hpp"

namespace memsim_core {

// One member of an entry: member 0 of a tile is the tile itself (l2cache.py's (key, member) beyond it).
// Members beyond 0 by (tile id, member) packed into one word, in an open-addressing table that never forgets until
// reset (recency.py's _last is only ever cleared whole).
class MemberTouches {
 public:
  struct Last {
    int64_t seq = 0;  // 0: never touched (sequence numbers start at 1)
    double nbytes = 0.0;
  };
  Last* find(TileId tile, int64_t member) {
    if (member == 0) return tile < (TileId)first_.size() && first_[tile].seq ? &first_[tile] : nullptr;
    if (slots_.empty()) return nullptr;
    uint64_t key = pack(tile, member);
    size_t mask = slots_.size() - 1;
    for (size_t i = spread(key) & mask;; i = (i + 1) & mask) {
      if (slots_[i].key == key) return &slots_[i].last;
      if (slots_[i].key == 0) return nullptr;
    }
  }
  // the member's record, made (never touched) if new
  Last& at(TileId tile, int64_t member) {
    if (member == 0) {
      if (tile >= (TileId)first_.size()) first_.resize(std::max<size_t>(2 * first_.size(), tile + 1024));
      return first_[tile];
    }
    if (2 * (used_ + 1) > slots_.size()) grow();
    uint64_t key = pack(tile, member);
    size_t mask = slots_.size() - 1;
    for (size_t i = spread(key) & mask;; i = (i + 1) & mask) {
      if (slots_[i].key == key) return slots_[i].last;
      if (slots_[i].key == 0) {
        slots_[i].key = key;
        ++used_;
        return slots_[i].last;
      }
    }
  }
  void clear() {
    std::fill(first_.begin(), first_.end(), Last{});
    std::fill(slots_.begin(), slots_.end(), Slot{});
    used_ = 0;
  }

 private:
  struct Slot {
    uint64_t key = 0;  // 0: empty (a member beyond 0 never packs to 0)
    Last last;
  };
  static uint64_t pack(TileId tile, int64_t member) { return (uint64_t)tile << 32 ^ (uint64_t)member; }
  void grow() {
    std::vector<Slot> old(slots_.size() < 1024 ? 1024 : 2 * slots_.size());
    old.swap(slots_);
    size_t mask = slots_.size() - 1;
    for (const Slot& s : old) {
      if (s.key == 0) continue;
      size_t i = spread(s.key) & mask;
      while (slots_[i].key != 0) i = (i + 1) & mask;
      slots_[i] = s;
    }
  }
  std::vector<Last> first_;
  std::vector<Slot> slots_;
  size_t used_ = 0;
};

struct Recency {
  Recency() { reset(); }
  std::vector<double> tree;
  int64_t size = 0;
  using Last = MemberTouches::Last;
  MemberTouches last;
  int64_t seq = 0;
  double total = 0.0;

  void reset() {
    size = 1 << 12;
    tree.assign(size + 1, 0.0);
    last.clear();
    seq = 0;
    total = 0.0;
  }

  // `watched_from` < 0: None.
  int64_t touch(TileId tile, int64_t member, double nbytes, int64_t watched_from = -1) {
    Last& old = last.at(tile, member);
    if (old.seq) {
      if (watched_from >= 0 && old.seq > watched_from && old.nbytes == nbytes) return old.seq;
      add(old.seq, -old.nbytes);
    }
    seq += 1;
    add(seq, nbytes);  // (the tree's growth leaves `old` where it is)
    old = Last{seq, nbytes};
    return seq;
  }

  int64_t touch_bytes(double nbytes) {
    seq += 1;
    add(seq, nbytes);
    return seq;
  }

  std::optional<int64_t> last_touch(TileId tile, int64_t member) {
    Last* found = last.find(tile, member);
    if (found == nullptr) return std::nullopt;
    return found->seq;
  }

  double since(int64_t s) const {
    int64_t i = s < size ? s : size;
    double prefix = 0.0;
    while (i > 0) {
      prefix += tree[i];
      i -= i & -i;
    }
    return total - prefix;
  }

  void add(int64_t i, double value) {
    if (i > size) grow(i);
    total += value;
    while (i <= size) {
      tree[i] += value;
      i += i & -i;
    }
  }

  void grow(int64_t needed) {
    while (size < needed) {
      int64_t n = size;
      tree.resize(2 * n + 1, 0.0);
      tree[2 * n] = total;
      size = 2 * n;
    }
  }
};

}  // namespace memsim_core
