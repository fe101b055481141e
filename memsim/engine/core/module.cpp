// memsim.engine._core: the compiled engine, one kernel launch at a time, through the CPython API. memsim/engine/
// compiled.py drives it; the SimPy engine (memsim/engine/simulate.py) stays the reference it is tested against
// (tests/test_engine_compiled.py).
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <memory>
#include <stdexcept>
#include <string>
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

// A step as memsim/engine/compiled.py encodes it: (kind, tensor or dtype, region or -1, index, a, b, rounds).
Step step_of(PyObject* t) {
  if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 7) fail("a step is a 7-tuple");
  Step s;
  s.kind = (int)integer(PyTuple_GET_ITEM(t, 0));
  s.tensor = (int)integer(PyTuple_GET_ITEM(t, 1));
  s.region = integer(PyTuple_GET_ITEM(t, 2));
  s.index = integer(PyTuple_GET_ITEM(t, 3));
  s.a = number(PyTuple_GET_ITEM(t, 4));
  s.b = number(PyTuple_GET_ITEM(t, 5));
  s.rounds = (long)integer(PyTuple_GET_ITEM(t, 6));
  return s;
}

Steps steps_of(PyObject* seq) {
  Obj fast(PySequence_Fast(seq, "steps must be a sequence"));
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.get());
  PyObject** items = PySequence_Fast_ITEMS(fast.p);
  Steps out;
  out.reserve(n);
  for (Py_ssize_t i = 0; i < n; ++i) out.push_back(step_of(items[i]));
  return out;
}

std::vector<Steps> iterations_of(PyObject* seq) {
  Obj fast(PySequence_Fast(seq, "iterations must be a sequence"));
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.get());
  PyObject** items = PySequence_Fast_ITEMS(fast.p);
  std::vector<Steps> out;
  out.reserve(n);
  for (Py_ssize_t i = 0; i < n; ++i) out.push_back(steps_of(items[i]));
  return out;
}

// (prologue, loop or None, epilogue); loop = (iterations, loads per iteration, compute per iteration, overlap_vector)
ProgramRef program_of(PyObject* t) {
  if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) fail("a program is (prologue, loop, epilogue)");
  auto p = std::make_shared<Program>();
  p->prologue = steps_of(PyTuple_GET_ITEM(t, 0));
  PyObject* loop = PyTuple_GET_ITEM(t, 1);
  if (loop != Py_None) {
    if (!PyTuple_Check(loop) || PyTuple_GET_SIZE(loop) != 4) fail("a loop is (iterations, loads, compute, overlap)");
    p->has_loop = true;
    p->iterations = (long)integer(PyTuple_GET_ITEM(loop, 0));
    p->loads = iterations_of(PyTuple_GET_ITEM(loop, 1));
    p->compute = iterations_of(PyTuple_GET_ITEM(loop, 2));
    p->overlap_vector = PyObject_IsTrue(PyTuple_GET_ITEM(loop, 3)) == 1;
    if ((long)p->loads.size() != p->iterations || (long)p->compute.size() != p->iterations)
      fail("a loop's loads and compute must name every iteration");
  }
  p->epilogue = steps_of(PyTuple_GET_ITEM(t, 2));
  return p;
}

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

std::vector<double> doubles(PyObject* seq) {
  Obj fast(PySequence_Fast(seq, "expected a sequence"));
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.get());
  std::vector<double> out;
  for (Py_ssize_t k = 0; k < n; ++k) out.push_back(number(PySequence_Fast_GET_ITEM(fast.p, k)));
  return out;
}
std::vector<int64_t> ints(PyObject* seq) {
  Obj fast(PySequence_Fast(seq, "expected a sequence"));
  Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.get());
  std::vector<int64_t> out;
  out.reserve(n);
  for (Py_ssize_t k = 0; k < n; ++k) out.push_back(integer(PySequence_Fast_GET_ITEM(fast.p, k)));
  return out;
}

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
  p.tensor_count = (int)i(d, "tensor_count");
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
  ProgramRef program(int64_t pid) override {
    Obj args(Py_BuildValue("(L)", (long long)pid));
    Obj encoded = call("program", args.get());
    return program_of(encoded.p);
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
  bool ran = false;
};

// ---- the Python type ------------------------------------------------------------------------------------------

struct LaunchObject {
  PyObject_HEAD
  Simulation* sim;
  PyObject* hooks;
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
  return 0;
}

void launch_dealloc(LaunchObject* self) {
  delete self->sim;
  Py_XDECREF(self->hooks);
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
    ProcessRef main = start(&sim->env, run_launch(sim->machine, sim->spec, &sim->py_hooks));
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

PyObject* launch_pooled_joins(LaunchObject* self, PyObject*) {
  return PyLong_FromLong(self->sim->machine.sm_groups.pooled_joins);
}

PyMethodDef launch_methods[] = {
    {"run", (PyCFunction)launch_run, METH_NOARGS, "Run the launch to its end; returns the end time in seconds."},
    {"snapshot", (PyCFunction)launch_snapshot, METH_NOARGS, "Counters, busy seconds and L2 fill so far."},
    {"deferred", (PyCFunction)launch_deferred, METH_NOARGS, "[(tensor, bytes)] still dirty in L2 at the end."},
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
