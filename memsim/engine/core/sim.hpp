// The discrete-event kernel memsim's compiled engine runs on: SimPy's semantics (simpy 4.1, simpy/core.py and
// simpy/events.py), event for event, so that the compiled engine and memsim/engine (the reference) process the same
// events in the same order and agree to the bit.
//
// - Events are processed in order of (time, priority, insertion number): URGENT (0) before NORMAL (1) at one time.
// - succeed() schedules an event now; a Timeout schedules itself at now + delay when made; a process's start
//   (SimPy's Initialize) is URGENT; a process that ends schedules its own event now.
// - A process waiting on an event that is already processed goes on at once; on one that is not, it resumes when
//   the event is processed, after the callbacks registered before it.
// Processes are C++20 coroutines: `co_await event` is SimPy's `yield event`, `co_await task` is `yield from`.
#pragma once

#include <algorithm>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <functional>
#include <utility>
#include <vector>

namespace memsim_core {

struct Env;

// Free lists by size (16-byte classes): events and coroutine frames are made and dropped by the million, of a few
// sizes each. The engine runs on one thread.
class Pool {
 public:
  static void* get(size_t n) {
    size_t c = (n + 15) / 16;
    if (c >= CLASSES) return ::operator new(n);
    auto& list = lists()[c];
    if (list.empty()) return ::operator new(c * 16);
    void* p = list.back();
    list.pop_back();
    return p;
  }
  static void put(void* p, size_t n) {
    size_t c = (n + 15) / 16;
    if (c >= CLASSES) {
      ::operator delete(p);
      return;
    }
    lists()[c].push_back(p);
  }

 private:
  static constexpr size_t CLASSES = 256;
  static std::vector<std::vector<void*>>& lists() {
    static std::vector<std::vector<void*>> l(CLASSES);
    return l;
  }
};

// Intrusive reference count (events are shared by the queue, the processes waiting on them and the L2's maps).
template <class T>
class Ref {
 public:
  Ref() = default;
  Ref(T* p) : p_(p) { if (p_) ++p_->refs; }  // NOLINT: implicit from a raw pointer, as make_shared's result
  Ref(const Ref& o) : p_(o.p_) { if (p_) ++p_->refs; }
  Ref(Ref&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  template <class U>
  Ref(const Ref<U>& o) : p_(o.get()) { if (p_) ++p_->refs; }  // NOLINT
  ~Ref() { release(); }
  Ref& operator=(Ref o) noexcept { std::swap(p_, o.p_); return *this; }
  T* get() const { return p_; }
  T* operator->() const { return p_; }
  T& operator*() const { return *p_; }
  explicit operator bool() const { return p_ != nullptr; }
  bool operator==(const Ref& o) const { return p_ == o.p_; }

 private:
  void release() {
    if (p_ && --p_->refs == 0) delete p_;
    p_ = nullptr;
  }
  T* p_ = nullptr;
};

struct Event;

// What an event calls when processed: the process waiting on it resumes (most callbacks), a joining event counts
// one more of its events done (counting_down), or anything else.
struct Callback {
  Callback() = default;
  template <class F>
  Callback(F f) : call(std::move(f)) {}  // NOLINT: from a lambda, as std::function
  static Callback resuming(std::coroutine_handle<> h) {
    Callback c;
    c.resume = h;
    return c;
  }
  static Callback counting_down(Event* join);
  void operator()(Event* e) const;
  std::coroutine_handle<> resume;
  Ref<Event> join;  // succeeds when its value, the events it waits for, counts down to 0
  std::function<void(Event*)> call;
};

// An event's callbacks in the order registered: most events have one, held without a heap allocation.
class Callbacks {
 public:
  void push_back(Callback cb) {
    if (count_ == 0) {
      first_ = std::move(cb);
    } else {
      rest_.push_back(std::move(cb));
    }
    ++count_;
  }
  // Calls each in order (a callback may register more on other events, never on this one: it is processed).
  void run(Event* e) const {
    if (count_ == 0) return;
    first_(e);
    for (size_t i = 0; i < rest_.size(); ++i) rest_[i](e);
  }
  void clear() {
    if (count_ == 0) return;
    first_ = Callback();
    rest_.clear();
    count_ = 0;
  }

 private:
  Callback first_;
  std::vector<Callback> rest_;
  size_t count_ = 0;
};

struct Event {
  explicit Event(Env* env) : env(env) {}
  virtual ~Event() = default;
  static void* operator new(size_t n) { return Pool::get(n); }
  static void operator delete(void* p, size_t n) { Pool::put(p, n); }
  Env* env;
  int refs = 0;
  bool triggered = false;  // SimPy: _value is not PENDING
  bool processed = false;  // SimPy: callbacks is None
  int64_t value = 0;       // what `co_await` hands back (a Store's item)
  Callbacks callbacks;
  Event* succeed(int64_t v = 0);
  // Processing: its callbacks, in order; a timer (below) calls its unit instead.
  virtual void fire() { callbacks.run(this); }
};
using EventRef = Ref<Event>;

constexpr int URGENT = 0;
constexpr int NORMAL = 1;

// (time, priority, insertion number), the last two packed into one word: URGENT's numbers all come first.
struct Scheduled {
  double time;
  uint64_t order;  // priority << 62 | insertion number
  EventRef event;
};
struct LaterScheduled {
  bool operator()(const Scheduled& a, const Scheduled& b) const {
    if (a.time != b.time) return a.time > b.time;
    return a.order > b.order;
  }
};

// A 4-ary min-heap of scheduled events: half the levels of a binary heap, and a node's children share a cache line
// or two (the queue holds the timers of every unit and the latencies of every load in flight).
class EventHeap {
 public:
  bool empty() const { return items_.empty(); }
  const Scheduled& top() const { return items_.front(); }
  void push(Scheduled s) {
    size_t i = items_.size();
    items_.push_back(std::move(s));
    Scheduled moving = std::move(items_[i]);
    while (i > 0) {
      size_t parent = (i - 1) / ARITY;
      if (!later_(items_[parent], moving)) break;
      items_[i] = std::move(items_[parent]);
      i = parent;
    }
    items_[i] = std::move(moving);
  }
  Scheduled pop() {
    Scheduled out = std::move(items_.front());
    Scheduled moving = std::move(items_.back());
    items_.pop_back();
    size_t n = items_.size();
    if (n == 0) return out;
    size_t i = 0;
    for (;;) {
      size_t first = ARITY * i + 1;
      if (first >= n) break;
      size_t best = first, last = std::min(first + ARITY, n);
      for (size_t c = first + 1; c < last; ++c)
        if (later_(items_[best], items_[c])) best = c;
      if (!later_(moving, items_[best])) break;
      items_[i] = std::move(items_[best]);
      i = best;
    }
    items_[i] = std::move(moving);
    return out;
  }
  void clear() { items_.clear(); }

 private:
  static constexpr size_t ARITY = 4;
  LaterScheduled later_;
  std::vector<Scheduled> items_;
};

// A first-in first-out queue over one vector: appended at the back, taken from the front (its storage is reused
// once it empties, which the engine's queues do often).
template <class T>
class Fifo {
 public:
  bool empty() const { return head_ == items_.size(); }
  size_t size() const { return items_.size() - head_; }
  T& operator[](size_t i) { return items_[head_ + i]; }
  const T& operator[](size_t i) const { return items_[head_ + i]; }
  const T& front() const { return items_[head_]; }
  void push_back(T item) { items_.push_back(std::move(item)); }
  T pop_front() {
    T item = std::move(items_[head_]);
    erase_front(1);
    return item;
  }
  void erase_front(size_t n) {
    head_ += n;
    if (head_ == items_.size()) clear();
  }
  void clear() {
    items_.clear();
    head_ = 0;
  }

 private:
  std::vector<T> items_;
  size_t head_ = 0;
};

struct Process;

struct Env {
  explicit Env(double initial_time) : now(initial_time) {}
  ~Env() { clear(); }
  double now;
  uint64_t next_id = 0;
  // SimPy's one heap, kept as three: what is due now (most events: succeed() schedules now), URGENT and NORMAL
  // apart, each already in order; and the rest in a binary heap, earliest on top. step() takes the earliest of
  // the three heads, which is the top of SimPy's heap.
  Fifo<Scheduled> now_urgent, now_normal;  // due at the present instant, in the order scheduled
  EventHeap queue;
  std::vector<Ref<Process>> live;  // started and not ended: their frames are destroyed with the environment

  void schedule(Event* e, int priority = NORMAL, double delay = 0.0) {
    Scheduled s{now + delay, (uint64_t)priority << 62 | next_id++, EventRef(e)};
    if (s.time == now) {
      (priority == URGENT ? now_urgent : now_normal).push_back(std::move(s));
      return;
    }
    queue.push(std::move(s));
  }
  EventRef event() { return EventRef(new Event(this)); }
  EventRef timeout(double delay) {
    EventRef e(new Event(this));
    e->triggered = true;
    schedule(e.get(), NORMAL, delay);
    return e;
  }
  // A timeout that calls unit->on_timer(version) when processed (fluid.py and sharing.py's timers).
  template <class Unit>
  void timer(double delay, Unit* unit, uint64_t version);
  // Process the next event; false when none is left.
  bool step() {
    Scheduled s = next();
    if (!s.event) return false;
    now = s.time;
    Event* e = s.event.get();
    e->processed = true;
    e->fire();
    e->callbacks.clear();
    return true;
  }
  void clear();

 private:
  Scheduled next() {
    LaterScheduled later;
    // the earliest head: heap top, then what is due now (ties impossible: insertion numbers differ)
    int from = queue.empty() ? -1 : 0;
    const Scheduled* best = queue.empty() ? nullptr : &queue.top();
    if (!now_urgent.empty() && (!best || later(*best, now_urgent.front()))) {
      best = &now_urgent.front();
      from = 1;
    }
    if (!now_normal.empty() && (!best || later(*best, now_normal.front()))) {
      best = &now_normal.front();
      from = 2;
    }
    if (from == 1) return now_urgent.pop_front();
    if (from == 2) return now_normal.pop_front();
    if (from < 0) return Scheduled{0.0, 0, EventRef()};
    return queue.pop();
  }
};

inline Event* Event::succeed(int64_t v) {
  triggered = true;
  value = v;
  env->schedule(this);
  return this;
}

inline Callback Callback::counting_down(Event* join) {
  Callback c;
  c.join = Ref<Event>(join);
  return c;
}
inline void Callback::operator()(Event* e) const {
  if (resume) {
    resume.resume();
  } else if (join) {
    if (!join->triggered && --join->value == 0) join->succeed();
  } else {
    call(e);
  }
}

template <class Unit>
struct Timer : Event {
  Timer(Env* env, Unit* unit, uint64_t version) : Event(env), unit(unit), version(version) {}
  Unit* unit;
  uint64_t version;
  void fire() override { unit->on_timer(version); }
};
template <class Unit>
void Env::timer(double delay, Unit* unit, uint64_t version) {
  Event* e = new Timer<Unit>(this, unit, version);
  e->triggered = true;
  schedule(e, NORMAL, delay);
}

// ---- coroutines -----------------------------------------------------------------------------------------------

// A coroutine run by a process or by another coroutine (`co_await task`, SimPy's `yield from`). Lazy: it starts when
// awaited or when its process starts.
struct Task {
  struct promise_type {
    std::coroutine_handle<> continuation;
    Process* owner = nullptr;  // set on a process's outermost task
    static void* operator new(size_t n) { return Pool::get(n); }
    static void operator delete(void* p, size_t n) { Pool::put(p, n); }
    Task get_return_object() { return Task(std::coroutine_handle<promise_type>::from_promise(*this)); }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct Final {
      bool await_ready() noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept;
      void await_resume() noexcept {}
    };
    Final final_suspend() noexcept { return {}; }
    void return_void() {}
    void unhandled_exception() { throw; }
  };
  using Handle = std::coroutine_handle<promise_type>;
  explicit Task(Handle h) : handle(h) {}
  Task(Task&& o) noexcept : handle(o.handle) { o.handle = nullptr; }
  Task(const Task&) = delete;
  Task& operator=(Task&& o) noexcept { std::swap(handle, o.handle); return *this; }
  ~Task() { if (handle) handle.destroy(); }

  bool await_ready() { return false; }
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> parent) {
    handle.promise().continuation = parent;
    return handle;  // run the child now, as `yield from` does
  }
  void await_resume() {}
  Handle handle;
};

struct Process : Event {
  Process(Env* env, Task t) : Event(env), task(std::move(t)) { task.handle.promise().owner = this; }
  Task task;
  size_t live_index = 0;
  void end();
};
using ProcessRef = Ref<Process>;

inline std::coroutine_handle<> Task::promise_type::Final::await_suspend(std::coroutine_handle<promise_type> h) noexcept {
  auto& p = h.promise();
  if (p.continuation) return p.continuation;
  if (p.owner) p.owner->end();
  return std::noop_coroutine();
}

// SimPy's env.process(generator): starts (URGENT) at the next step of this instant.
inline ProcessRef start(Env* env, Task t) {
  ProcessRef p(new Process(env, std::move(t)));
  p->live_index = env->live.size();
  env->live.push_back(p);
  EventRef init(new Event(env));
  init->triggered = true;
  auto h = p->task.handle;
  init->callbacks.push_back(Callback::resuming(h));
  env->schedule(init.get(), URGENT);
  return p;
}

inline void Process::end() {
  succeed();  // the queue holds it now
  // Off the live list (swap with the last); its frame stays until nothing refers to the process.
  auto& live = env->live;
  size_t i = live_index;
  if (i < live.size() && live[i].get() == this) {
    if (i + 1 != live.size()) {
      live[i] = std::move(live.back());
      live[i]->live_index = i;
    }
    live.pop_back();
  }
}

inline void Env::clear() {
  // Suspended frames may hold events that hold callbacks into other frames: drop the queue first, then the frames.
  queue.clear();
  now_urgent.clear();
  now_normal.clear();
  std::vector<Ref<Process>> alive = std::move(live);
  live.clear();
  for (auto& p : alive) {
    if (p->task.handle) {
      p->task.handle.destroy();
      p->task.handle = nullptr;
    }
    p->callbacks.clear();
  }
}

// `co_await event`: SimPy's `yield event`.
struct Wait {
  EventRef event;
  bool await_ready() const { return event->processed; }
  void await_suspend(std::coroutine_handle<> h) { event->callbacks.push_back(Callback::resuming(h)); }
  int64_t await_resume() const { return event->value; }
};
inline Wait wait(EventRef e) { return Wait{std::move(e)}; }

// SimPy's AllOf: fires (is scheduled) once every event has been processed.
inline EventRef all_of(Env* env, const std::vector<EventRef>& events) {
  EventRef cond(new Event(env));
  if (events.empty()) {
    cond->succeed();
    return cond;
  }
  // The condition counts its events down in its value; its callbacks hold it alive while it is waited on.
  cond->value = (int64_t)events.size();
  Callback check = Callback::counting_down(cond.get());
  for (const auto& e : events) {
    if (e->processed) {
      check(e.get());
    } else {
      e->callbacks.push_back(check);
    }
  }
  return cond;
}

// simpy.Store of unbounded capacity, holding ints.
struct Store {
  explicit Store(Env* env) : env(env) {}
  Env* env;
  std::deque<int64_t> items;
  std::deque<EventRef> get_queue;

  EventRef put(int64_t item) {
    EventRef ev(new Event(env));
    items.push_back(item);  // _do_put: room always
    ev->callbacks.push_back([this](Event*) { trigger_get(); });
    ev->succeed();
    return ev;
  }
  EventRef get() {
    EventRef ev(new Event(env));
    get_queue.push_back(ev);
    // its callback _trigger_put has nothing to do: every put succeeds at once
    trigger_get();
    return ev;
  }
  void trigger_get() {
    // SimPy's _trigger_get tries the first waiting get only (Store._do_get returns None: stop)
    if (get_queue.empty()) return;
    if (!items.empty()) {
      EventRef g = get_queue.front();
      get_queue.pop_front();
      int64_t item = items.front();
      items.pop_front();
      g->succeed(item);
    }
  }
};

}  // namespace memsim_core
