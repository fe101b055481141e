// memsim/engine/recency.py in the compiled engine: bytes of distinct tiles touched since a given touch (a Fenwick
// tree over touch sequence numbers). Line for line the reference, with the same float sums in the same order.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <unordered_map>
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

inline size_t mix(size_t h, uint64_t v) { return h ^ (v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2)); }
struct TileKeyHash {
  size_t operator()(const TileKey& k) const {
    size_t h = mix(0, (uint64_t)k.tensor);
    h = mix(h, (uint64_t)k.kind * 2 + k.rewrite);
    h = mix(h, (uint64_t)k.region);
    return mix(h, (uint64_t)k.index);
  }
};

// One member of an entry: tile (key, member), member 0 being the key itself.
struct MemberKey {
  TileKey tile;
  int64_t member = 0;
  bool operator==(const MemberKey& o) const { return tile == o.tile && member == o.member; }
};
struct MemberKeyHash {
  size_t operator()(const MemberKey& k) const { return mix(TileKeyHash()(k.tile), (uint64_t)k.member); }
};

struct Recency {
  Recency() { reset(); }
  std::vector<double> tree;
  int64_t size = 0;
  struct Last {
    int64_t seq;
    double nbytes;
  };
  std::unordered_map<MemberKey, Last, MemberKeyHash> last;
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
  int64_t touch(const MemberKey& key, double nbytes, int64_t watched_from = -1) {
    auto it = last.find(key);
    if (it != last.end()) {
      Last old = it->second;
      if (watched_from >= 0 && old.seq > watched_from && old.nbytes == nbytes) return old.seq;
      add(old.seq, -old.nbytes);
    }
    seq += 1;
    add(seq, nbytes);
    if (it != last.end()) {
      it->second = Last{seq, nbytes};
    } else {
      last.emplace(key, Last{seq, nbytes});
    }
    return seq;
  }

  int64_t touch_bytes(double nbytes) {
    seq += 1;
    add(seq, nbytes);
    return seq;
  }

  std::optional<int64_t> last_touch(const MemberKey& key) const {
    auto it = last.find(key);
    if (it == last.end()) return std::nullopt;
    return it->second.seq;
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
