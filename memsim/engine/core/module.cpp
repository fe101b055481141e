// memsim.engine._core: the compiled engine, one kernel launch at a time, through the CPython API. memsim/engine/
// compiled.py drives it; the SimPy engine (memsim/engine/simulate.py) stays the reference it is tested against
// (tests/test_engine_compiled.py).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "dispatch.hpp"

using namespace memsim_core;

namespace {

// A Python exception is set: unwind to the module's entry point, which returns NULL.
struct PythonError {};

// An owned reference.
struct Obj {
  explicit Obj(PyObject* p = nullptr) : p(p) {}
  Obj(const Obj&) = delete;
  Obj(Obj&& o) noexcept : p(o.p) { o.p = nullptr; }
  ~Obj() { Py_XDECREF(p); }
  PyObject* p;
  PyObject* get() const {
    if (!p) throw PythonError();
    return p;
  }
};

double number(PyObject* o) {
  double v = PyFloat_AsDouble(o);
  if (v == -1.0 && PyErr_Occurred()) throw PythonError();
  return v;
}
long long integer(PyObject* o) {
  long long v = PyLong_AsLongLong(o);
  if (v == -1 && PyErr_Occurred()) throw PythonError();
  return v;
}
[[noreturn]] void fail(const char* message) {
  PyErr_SetString(PyExc_ValueError, message);
  throw PythonError();
}

// Reads programs (memsim.schedules.steps) straight from their Python objects: steps by type, tensors, regions and
// dtypes named by small integers through dicts the Python side keeps (memsim/engine/compiled.py), a streamed loop
// (steps.streamed_loop) from its data, any other loop by calling its loads(i) and compute(i).
struct Decoder {
  PyObject* types[7] = {};  // Load, Store, Atomic, Mma, Vector, SmemRoundTrip, Spill: StepKind order (borrowed)
  PyObject* tensors = nullptr;  // name -> id (borrowed; ids are added here)
  PyObject* regions = nullptr;  // region -> id
  PyObject* dtypes = nullptr;   // dtype -> id (the rates the machine has)
  PyObject* hooks = nullptr;    // hooks.unknown_dtype(dtype) raises the SimPy engine's error

  static PyObject* name(const char* s) {
    PyObject* n = PyUnicode_InternFromString(s);
    if (!n) throw PythonError();
    return n;  // kept for the module's life
  }
  PyObject *tensor_ = name("tensor"), *region_ = name("region"), *index_ = name("index"), *bytes_ = name("bytes"),
           *rounds_ = name("ordered_rounds"), *flops_ = name("flops"), *dtype_ = name("dtype"),
           *cuda_ops_ = name("cuda_ops"), *exp_ops_ = name("exp_ops"), *prologue_ = name("prologue"),
           *loop_ = name("loop"), *epilogue_ = name("epilogue"), *iterations_ = name("iterations"),
           *loads_ = name("loads"), *compute_ = name("compute"), *overlap_ = name("overlap_vector"),
           *streams_ = name("streams"), *runs_ = name("runs"), *first_ = name("first"), *stride_ = name("stride"),
           *edge_ = name("edge"), *edge_bytes_ = name("edge_bytes");

  ~Decoder() {
    for (PyObject* n : {tensor_, region_, index_, bytes_, rounds_, flops_, dtype_, cuda_ops_, exp_ops_, prologue_, loop_,
                        epilogue_, iterations_, loads_, compute_, overlap_, streams_, runs_, first_, stride_, edge_,
                        edge_bytes_})
      Py_XDECREF(n);
  }

  static Obj attr(PyObject* o, PyObject* n) {
    Obj v(PyObject_GetAttr(o, n));
    v.get();
    return v;
  }
  static double number_attr(PyObject* o, PyObject* n) { return number(attr(o, n).p); }
  static long long integer_attr(PyObject* o, PyObject* n) { return integer(attr(o, n).p); }

  static int intern(PyObject* dict, PyObject* key) {
    PyObject* found = PyDict_GetItemWithError(dict, key);  // borrowed
    if (found) return (int)integer(found);
    if (PyErr_Occurred()) throw PythonError();
    Obj id(PyLong_FromSsize_t(PyDict_Size(dict)));
    if (PyDict_SetItem(dict, key, id.get()) < 0) throw PythonError();
    return (int)integer(id.p);
  }
  int region(PyObject* o) {
    Obj r = attr(o, region_);
    return r.p == Py_None ? -1 : intern(regions, r.p);
  }
  int dtype(PyObject* o) {
    Obj d = attr(o, dtype_);
    PyObject* found = PyDict_GetItemWithError(dtypes, d.p);
    if (found) return (int)integer(found);
    if (PyErr_Occurred()) throw PythonError();
    Obj raised(PyObject_CallMethod(hooks, "unknown_dtype", "O", d.p));
    raised.get();
    fail("a dtype without a tensor-core rate");
  }

  Step step(PyObject* s) {
    PyObject* type = (PyObject*)Py_TYPE(s);
    int kind = -1;
    for (int k = 0; k < 7; ++k)
      if (type == types[k]) kind = k;
    Step out;
    out.kind = kind;
    switch (kind) {
      case LOAD:
      case STORE:
      case ATOMIC:
        out.tensor = intern(tensors, attr(s, tensor_).p);
        out.region = region(s);
        out.index = integer_attr(s, index_);
        out.a = number_attr(s, bytes_);
        out.rounds = kind == ATOMIC ? (long)integer_attr(s, rounds_) : 0;
        break;
      case MMA:
        out.tensor = dtype(s);
        out.a = number_attr(s, flops_);
        break;
      case VECTOR:
        out.a = number_attr(s, cuda_ops_);
        out.b = number_attr(s, exp_ops_);
        break;
      case SMEM_ROUND_TRIP:
        out.a = number_attr(s, bytes_);
        break;
      case SPILL_STEP:
        out.index = integer_attr(s, index_);
        out.a = number_attr(s, bytes_);
        break;
      default:
        PyErr_Format(PyExc_TypeError, "unknown step %R", s);
        throw PythonError();
    }
    return out;
  }

  Steps steps(PyObject* seq) {
    Obj fast(PySequence_Fast(seq, "steps must be a sequence"));
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.get());
    PyObject** items = PySequence_Fast_ITEMS(fast.p);
    Steps out;
    out.reserve(n);
    for (Py_ssize_t k = 0; k < n; ++k) out.push_back(step(items[k]));
    return out;
  }

  // steps.Stream, as data: the engine makes each iteration's loads as it reads them
  void streamed(PyObject* loop, PyObject* streams, Program& p) {
    Obj fast(PySequence_Fast(streams, "streams must be a sequence"));
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.get());
    p.streamed = true;
    for (Py_ssize_t k = 0; k < n; ++k) {
      PyObject* s = PySequence_Fast_GET_ITEM(fast.p, k);
      Stream st;
      st.base.kind = LOAD;
      st.base.tensor = intern(tensors, attr(s, tensor_).p);
      st.base.region = region(s);
      st.base.index = integer_attr(s, first_);
      st.base.a = number_attr(s, bytes_);
      st.stride = integer_attr(s, stride_);
      Obj e = attr(s, edge_);
      st.has_edge = e.p != Py_None;
      st.edge = st.has_edge ? integer(e.p) : 0;
      st.edge_bytes = number_attr(s, edge_bytes_);
      p.streams.push_back(st);
    }
    Obj runs = attr(loop, runs_);
    Obj fast_runs(PySequence_Fast(runs.p, "runs must be a sequence"));
    Py_ssize_t r = PySequence_Fast_GET_SIZE(fast_runs.get());
    std::vector<long> starts;
    for (Py_ssize_t k = 0; k < r; ++k) {
      PyObject* run = PySequence_Fast_GET_ITEM(fast_runs.p, k);
      if (!PyTuple_Check(run) || PyTuple_GET_SIZE(run) != 2) fail("a run is (first iteration, steps)");
      starts.push_back((long)integer(PyTuple_GET_ITEM(run, 0)));
      p.bodies.push_back(steps(PyTuple_GET_ITEM(run, 1)));
    }
    p.body_of.resize(p.iterations);
    size_t run = 0;
    for (long i = 0; i < p.iterations; ++i) {
      while (run + 1 < starts.size() && starts[run + 1] <= i) ++run;
      p.body_of[i] = (int)run;
    }
  }

  void called(PyObject* loop, Program& p) {
    Obj loads = attr(loop, loads_), compute = attr(loop, compute_);
    p.load_from.reserve(p.iterations + 1);
    for (long i = 0; i < p.iterations; ++i) {
      Obj l(PyObject_CallFunction(loads.p, "l", i));
      p.load_from.push_back(p.load_steps.size());
      Steps these = steps(l.get());
      p.load_steps.insert(p.load_steps.end(), these.begin(), these.end());
      Obj c(PyObject_CallFunction(compute.p, "l", i));
      p.bodies.push_back(steps(c.get()));
      p.body_of.push_back((int)i);
    }
    p.load_from.push_back(p.load_steps.size());
  }

  ProgramRef program(PyObject* cta) {
    auto p = std::make_shared<Program>();
    p->prologue = steps(attr(cta, prologue_).p);
    Obj loop = attr(cta, loop_);
    if (loop.p != Py_None) {
      p->has_loop = true;
      p->iterations = (long)integer_attr(loop.p, iterations_);
      p->overlap_vector = PyObject_IsTrue(attr(loop.p, overlap_).p) == 1;
      if (p->iterations > 0) {  // the engines run no loop of no iterations
        Obj streams = attr(loop.p, streams_);
        if (streams.p != Py_None) {
          streamed(loop.p, streams.p, *p);
        } else {
          called(loop.p, *p);
        }
      }
    }
    p->epilogue = steps(attr(cta, epilogue_).p);
    return p;
  }
};

PyObject* item(PyObject* dict, const char* key) {
  PyObject* v = PyDict_GetItemString(dict, key);  // borrowed
  if (!v) {
    PyErr_Format(PyExc_KeyError, "missing %s", key);
    throw PythonError();
  }
  return v;
}
double f(PyObject* d, const char* key) { return number(item(d, key)); }
long long i(PyObject* d, const char* key) { return integer(item(d, key)); }

// A Python sequence's items, each read by `read` (number or integer).
template <class T, class Read>
std::vector<T> sequence(PyObject* seq, Read read) {
  Obj fast(PySequence_Fast(seq, "expected a sequence"));
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.get());
  std::vector<T> out;
  out.reserve(n);
  for (Py_ssize_t k = 0; k < n; ++k) out.push_back((T)read(PySequence_Fast_GET_ITEM(fast.p, k)));
  return out;
}
std::vector<double> doubles(PyObject* seq) { return sequence<double>(seq, number); }
std::vector<int64_t> ints(PyObject* seq) { return sequence<int64_t>(seq, integer); }

Params params_of(PyObject* d) {
  Params p;
  p.sm_count = (int)i(d, "sm_count");
  p.clock_hz = f(d, "clock_hz");
  p.hbm_bytes_per_s = f(d, "hbm_bytes_per_s");
  p.l2_bytes_per_s = f(d, "l2_bytes_per_s");
  p.l2_bytes = f(d, "l2_bytes");
  p.l2_dirty_limit_bytes = f(d, "l2_dirty_limit_bytes");
  p.l2_dirty_lifetime_bytes = f(d, "l2_dirty_lifetime_bytes");
  p.l2_shared_age_weight = f(d, "l2_shared_age_weight");
  p.l2_ways = (int)i(d, "l2_ways");
  p.l2_lossless_bytes = f(d, "l2_lossless_bytes");
  p.hbm_latency_s = f(d, "hbm_latency_s");
  p.l2_hit_latency_s = f(d, "l2_hit_latency_s");
  p.dependent_step_latency_s = f(d, "dependent_step_latency_s");
  p.ordered_atomic_latency_s = f(d, "ordered_atomic_latency_s");
  p.warp_cycles_per_instruction = f(d, "warp_cycles_per_instruction");
  p.mma_pipe = (int)i(d, "mma_pipe");
  p.tensor_flops_per_s = doubles(item(d, "tensor_flops_per_s"));
  p.cuda_ops_per_s = f(d, "cuda_ops_per_s");
  p.sfu_ops_per_s = f(d, "sfu_ops_per_s");
  p.smem_bytes_per_s = f(d, "smem_bytes_per_s");
  p.spill_tensor = (int)i(d, "spill_tensor");
  return p;
}

struct PyHooks : LaunchHooks {
  PyObject* hooks = nullptr;  // borrowed: the Launch object holds it
  bool calls_finished = false;
  long grid = 0;
  Obj call(const char* name, PyObject* args) {
    Obj method(PyObject_GetAttrString(hooks, name));
    Obj result(PyObject_CallObject(method.get(), args));
    result.get();
    return result;
  }
  Decoder decoder;
  // Programs read lately, by their Python object (a schedule may hand the same object to several CTAs); each
  // object held, so that its address names it.
  static constexpr size_t PROGRAMS_KEPT = 4096;
  std::unordered_map<PyObject*, std::pair<PyObject*, ProgramRef>> read;
  ~PyHooks() { forget(); }
  void forget() {
    for (auto& [_, held] : read) Py_DECREF(held.first);
    read.clear();
  }
  ProgramRef program(int64_t pid) override {
    Obj args(Py_BuildValue("(L)", (long long)pid));
    Obj cta = call("program", args.get());
    auto found = read.find(cta.p);
    if (found != read.end()) return found->second.second;
    ProgramRef p = decoder.program(cta.p);
    if (read.size() >= PROGRAMS_KEPT) forget();
    Py_INCREF(cta.p);
    read.emplace(cta.p, std::make_pair(cta.p, p));
    return p;
  }
  long limit() override {
    if (!watches_dispatch) return grid;
    Obj result = call("limit", nullptr);
    return (long)integer(result.p);
  }
  void dispatching(long position, long count) override {
    Obj args(Py_BuildValue("(ll)", position, count));
    call("dispatching", args.get());
  }
  void dispatched(long position) override {
    Obj args(Py_BuildValue("(l)", position));
    call("dispatched", args.get());
  }
  void finished(long weight) override {
    if (!calls_finished) return;
    Obj args(Py_BuildValue("(l)", weight));
    call("finished", args.get());
  }
};

struct Simulation {
  Simulation(PyObject* params, PyObject* launch, PyObject* hooks)
      : params(params_of(params)), env(f(launch, "start_s")), machine(&env, this->params) {
    spec.grid = (long)i(launch, "grid");
    spec.slots = (long)i(launch, "slots");
    spec.num_stages = (long)i(launch, "num_stages");
    spec.batch = (long)i(launch, "batch");
    spec.fast = PyObject_IsTrue(item(launch, "fast")) == 1;
    spec.order = ints(item(launch, "order"));
    spec.work_class = ints(item(launch, "work_class"));
    if ((long)spec.order.size() != spec.grid || (long)spec.work_class.size() != spec.grid)
      fail("order and work_class must name every CTA of the grid");
    PyObject* issue = item(launch, "issue");
    if (issue != Py_None) {
      if (!PyTuple_Check(issue) || PyTuple_GET_SIZE(issue) != 2) fail("issue is (instructions, warps)");
      spec.issue = Issue{number(PyTuple_GET_ITEM(issue, 0)), (long)integer(PyTuple_GET_ITEM(issue, 1))};
    }
    py_hooks.hooks = hooks;
    PyObject* names = item(launch, "names");
    PyObject* types = item(names, "types");
    if (!PyTuple_Check(types) || PyTuple_GET_SIZE(types) != 7) fail("names['types']: the 7 step types");
    for (int k = 0; k < 7; ++k) py_hooks.decoder.types[k] = PyTuple_GET_ITEM(types, k);
    py_hooks.decoder.tensors = item(names, "tensors");
    py_hooks.decoder.regions = item(names, "regions");
    py_hooks.decoder.dtypes = item(names, "dtypes");
    py_hooks.decoder.hooks = hooks;
    py_hooks.watches_dispatch = PyObject_IsTrue(item(launch, "watches_dispatch")) == 1;
    py_hooks.calls_finished = PyObject_IsTrue(item(launch, "calls_finished")) == 1;
    py_hooks.grid = spec.grid;
  }
  ~Simulation() { env.clear(); }
  Params params;
  Env env;
  Machine machine;
  LaunchSpec spec;
  PyHooks py_hooks;
  WrittenBack deferred;
  std::vector<CohortRef> cohorts;
  bool ran = false;
};

// ---- the Python type ------------------------------------------------------------------------------------------

struct LaunchObject {
  PyObject_HEAD
  Simulation* sim;
  PyObject* hooks;
  PyObject* launch;  // holds the dicts the decoder names tensors, regions and dtypes through
};

PyObject* pairs(const std::vector<std::pair<int, double>>& v) {
  PyObject* out = PyList_New((Py_ssize_t)v.size());
  for (size_t k = 0; k < v.size(); ++k) PyList_SET_ITEM(out, k, Py_BuildValue("(id)", v[k].first, v[k].second));
  return out;
}
PyObject* tensor_bytes(const TensorBytes& b) {
  PyObject* out = PyList_New((Py_ssize_t)b.order.size());
  for (size_t k = 0; k < b.order.size(); ++k) {
    int t = b.order[k];
    PyList_SET_ITEM(out, k, Py_BuildValue("(id)", t, b.value[t]));
  }
  return out;
}

int launch_init(LaunchObject* self, PyObject* args, PyObject*) {
  PyObject *params, *launch, *hooks;
  if (!PyArg_ParseTuple(args, "O!O!O", &PyDict_Type, &params, &PyDict_Type, &launch, &hooks)) return -1;
  try {
    delete self->sim;
    self->sim = new Simulation(params, launch, hooks);
  } catch (PythonError&) {
    return -1;
  } catch (std::exception& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
    return -1;
  }
  Py_XINCREF(hooks);
  Py_XDECREF(self->hooks);
  self->hooks = hooks;
  Py_XINCREF(launch);
  Py_XDECREF(self->launch);
  self->launch = launch;
  return 0;
}

void launch_dealloc(LaunchObject* self) {
  delete self->sim;
  Py_XDECREF(self->hooks);
  Py_XDECREF(self->launch);
  Py_TYPE(self)->tp_free((PyObject*)self);
}

// run() -> end time: the launch to its end (its process processed, as SimPy's env.run(until=process)), then the
// L2 flushed as the next kernel finds it (what was dirty: deferred()).
PyObject* launch_run(LaunchObject* self, PyObject*) {
  Simulation* sim = self->sim;
  if (!sim || sim->ran) {
    PyErr_SetString(PyExc_RuntimeError, "a Launch runs once");
    return nullptr;
  }
  sim->ran = true;
  try {
    ProcessRef main = start(&sim->env, run_launch(sim->machine, sim->spec, &sim->py_hooks, &sim->cohorts));
    while (!main->processed) {
      if (!sim->env.step()) {
        PyErr_SetString(PyExc_RuntimeError, "the launch stopped with work left undone");
        return nullptr;
      }
    }
    sim->deferred = sim->machine.l2.flush();
    return PyFloat_FromDouble(sim->env.now);
  } catch (PythonError&) {
    return nullptr;
  } catch (std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
}

// snapshot() -> (now, [l2_read, l2_write, hbm_read, hbm_write, hbm_write_deferred] each [(tensor, bytes)],
// dirty [(tensor, bytes)], (tensor_flops, cuda_ops, exp_ops, smem_bytes),
// busy seconds [tensor, cuda, sfu, smem, issue, hbm, l2], bytes the L2 has taken in)
PyObject* launch_snapshot(LaunchObject* self, PyObject*) {
  Simulation* sim = self->sim;
  const Counters& c = sim->machine.counters;
  PyObject* groups = PyList_New(5);
  const TensorBytes* all[5] = {&c.l2_read, &c.l2_write, &c.hbm_read, &c.hbm_write, &c.hbm_write_deferred};
  for (int k = 0; k < 5; ++k) PyList_SET_ITEM(groups, k, tensor_bytes(*all[k]));
  std::vector<double> busy = sim->machine.busy_s();
  PyObject* busy_list = PyList_New((Py_ssize_t)busy.size());
  for (size_t k = 0; k < busy.size(); ++k) PyList_SET_ITEM(busy_list, k, PyFloat_FromDouble(busy[k]));
  return Py_BuildValue("(dNN(dddd)Nd)", sim->env.now, groups, pairs(sim->machine.l2.dirty_by_tensor()), c.tensor_flops,
                       c.cuda_ops, c.exp_ops, c.smem_bytes, busy_list, sim->machine.l2.filled_bytes);
}

PyObject* launch_deferred(LaunchObject* self, PyObject*) { return pairs(self->sim->deferred); }

// cohorts() -> [(pids, slots, start_s, end_s)] in the order they were dispatched
PyObject* launch_cohorts(LaunchObject* self, PyObject*) {
  const auto& cohorts = self->sim->cohorts;
  PyObject* out = PyList_New((Py_ssize_t)cohorts.size());
  for (size_t k = 0; k < cohorts.size(); ++k) {
    const Cohort& c = *cohorts[k];
    PyObject* pids = PyTuple_New((Py_ssize_t)c.pids.size());
    for (size_t j = 0; j < c.pids.size(); ++j) PyTuple_SET_ITEM(pids, j, PyLong_FromLongLong(c.pids[j]));
    PyObject* slots = PyList_New((Py_ssize_t)c.slots.size());
    for (size_t j = 0; j < c.slots.size(); ++j) PyList_SET_ITEM(slots, j, PyLong_FromLong(c.slots[j]));
    PyList_SET_ITEM(out, k, Py_BuildValue("(NNdd)", pids, slots, c.start_s, c.end_s));
  }
  return out;
}

PyObject* launch_pooled_joins(LaunchObject* self, PyObject*) {
  return PyLong_FromLong(self->sim->machine.sm_groups.pooled_joins);
}

PyMethodDef launch_methods[] = {
    {"run", (PyCFunction)launch_run, METH_NOARGS, "Run the launch to its end; returns the end time in seconds."},
    {"snapshot", (PyCFunction)launch_snapshot, METH_NOARGS, "Counters, busy seconds and L2 fill so far."},
    {"deferred", (PyCFunction)launch_deferred, METH_NOARGS, "[(tensor, bytes)] still dirty in L2 at the end."},
    {"cohorts", (PyCFunction)launch_cohorts, METH_NOARGS, "[(pids, slots, start_s, end_s)] as dispatched."},
    {"pooled_joins", (PyCFunction)launch_pooled_joins, METH_NOARGS, "Cohorts that joined pooled SM groups."},
    {nullptr, nullptr, 0, nullptr}};

PyTypeObject LaunchType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_core",
                          "memsim's compiled engine: one kernel launch, event for event as memsim.engine's SimPy "
                          "reference",
                          -1, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__core(void) {
  LaunchType.tp_name = "memsim.engine._core.Launch";
  LaunchType.tp_basicsize = sizeof(LaunchObject);
  LaunchType.tp_flags = Py_TPFLAGS_DEFAULT;
  LaunchType.tp_doc = "Launch(params, launch, hooks): one kernel launch on the compiled engine";
  LaunchType.tp_new = PyType_GenericNew;
  LaunchType.tp_init = (initproc)launch_init;
  LaunchType.tp_dealloc = (destructor)launch_dealloc;
  LaunchType.tp_methods = launch_methods;
  if (PyType_Ready(&LaunchType) < 0) return nullptr;
  PyObject* m = PyModule_Create(&module_def);
  if (!m) return nullptr;
  Py_INCREF(&LaunchType);
  if (PyModule_AddObject(m, "Launch", (PyObject*)&LaunchType) < 0) {
    Py_DECREF(&LaunchType);
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
