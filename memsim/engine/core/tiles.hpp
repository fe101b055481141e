// Tiles by number: the compiled engine names each tile the L2 holds (memsim/engine/cta.py _key) once, by a dense
// id, so that the L2 (l2cache.hpp) and the recency tree (recency.hpp) keep their per-tile state in arrays and
// their orders in lists threaded through them. The reference keys Python dicts by the tuples themselves.
#pragma once

#include <cstdint>
#include <vector>

namespace memsim_core {

// A tile's name in L2 (memsim/engine/cta.py _key): a shared tile (tensor, region, index), a cohort's private tile
// (tensor, ("cta", first pid), index), a spill slot ("spill", slot, index); `rewrite` marks l2cache.py's
// ("rewrite of", key) while an entry is rebuilt.
struct TileKey {
  int32_t tensor = 0;
  int32_t kind = 0;  // SHARED, PRIVATE, SPILL
  int64_t region = 0;
  int64_t index = 0;
  bool rewrite = false;
  bool operator==(const TileKey& o) const {
    return tensor == o.tensor && kind == o.kind && region == o.region && index == o.index && rewrite == o.rewrite;
  }
};
constexpr int32_t SHARED = 0, PRIVATE = 1, SPILL = 2;
using TileId = int32_t;
constexpr TileId NO_TILE = -1;

// splitmix64's finalizer: every input bit moves every output bit (linear probing needs well-spread low bits).
inline uint64_t spread(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
inline uint64_t tile_hash(const TileKey& k) {
  uint64_t h = spread((uint64_t)k.region * 0x9e3779b97f4a7c15ull + (uint64_t)k.index);
  return spread(h ^ ((uint64_t)(uint32_t)k.tensor << 3 | (uint64_t)k.kind << 1 | (uint64_t)k.rewrite));
}

// TileKey -> id, ids given in the order tiles are first named; never forgets (a launch names a few thousand tiles).
class TileIds {
 public:
  TileId of(const TileKey& k) {
    if (2 * (keys_.size() + 1) > slots_.size()) grow();
    uint64_t h = tile_hash(k);
    size_t mask = slots_.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      Slot& s = slots_[i];
      if (s.id == NO_TILE) {
        s = Slot{(TileId)keys_.size(), (uint32_t)(h >> 32)};
        keys_.push_back(k);
        return s.id;
      }
      if (s.tag == (uint32_t)(h >> 32) && keys_[s.id] == k) return s.id;
    }
  }
  const TileKey& key(TileId id) const { return keys_[id]; }
  size_t size() const { return keys_.size(); }

 private:
  struct Slot {
    TileId id = NO_TILE;
    uint32_t tag = 0;  // the hash's high half: most probes that miss compare no key
  };
  void grow() {
    std::vector<Slot> old(slots_.size() < 1024 ? 1024 : 2 * slots_.size());
    old.swap(slots_);
    size_t mask = slots_.size() - 1;
    for (TileId id = 0; id < (TileId)keys_.size(); ++id) {
      uint64_t h = tile_hash(keys_[id]);
      size_t i = h & mask;
      while (slots_[i].id != NO_TILE) i = (i + 1) & mask;
      slots_[i] = Slot{id, (uint32_t)(h >> 32)};
    }
  }
  std::vector<TileKey> keys_;
  std::vector<Slot> slots_;
};

// An insertion-ordered set of tile ids (what l2cache.py's OrderedDicts keep the order of): append, erase,
// move to the end and the first, each O(1), through links indexed by id.
class IdList {
 public:
  bool contains(TileId id) const { return id < (TileId)in_.size() && in_[id]; }
  void push_back(TileId id) {  // id not in the list
    reserve(id);
    in_[id] = 1;
    prev_[id] = tail_;
    next_[id] = NO_TILE;
    if (tail_ != NO_TILE) {
      next_[tail_] = id;
    } else {
      head_ = id;
    }
    tail_ = id;
    ++count_;
  }
  bool erase(TileId id) {
    if (!contains(id)) return false;
    unlink(id);
    in_[id] = 0;
    --count_;
    return true;
  }
  void move_to_end(TileId id) {  // id in the list
    if (tail_ == id) return;
    unlink(id);
    prev_[id] = tail_;
    next_[id] = NO_TILE;
    next_[tail_] = id;
    tail_ = id;
  }
  TileId front() const { return head_; }
  TileId next(TileId id) const { return next_[id]; }
  size_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  void clear() {
    for (TileId id = head_; id != NO_TILE; id = next_[id]) in_[id] = 0;
    head_ = tail_ = NO_TILE;
    count_ = 0;
  }

 private:
  void reserve(TileId id) {
    if (id < (TileId)in_.size()) return;
    size_t n = in_.size() < 1024 ? 1024 : in_.size();
    while ((TileId)n <= id) n *= 2;
    in_.resize(n, 0);
    prev_.resize(n, NO_TILE);
    next_.resize(n, NO_TILE);
  }
  void unlink(TileId id) {
    TileId p = prev_[id], n = next_[id];
    if (p != NO_TILE) {
      next_[p] = n;
    } else {
      head_ = n;
    }
    if (n != NO_TILE) {
      prev_[n] = p;
    } else {
      tail_ = p;
    }
  }
  std::vector<char> in_;
  std::vector<TileId> prev_, next_;
  TileId head_ = NO_TILE, tail_ = NO_TILE;
  size_t count_ = 0;
};

}  // namespace memsim_core
