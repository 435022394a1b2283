"""TensorRT backend: a bundle's `model.plan` run with `execute_async_v3` on a CUDA stream (cuda-python).

Whether a plan may run here (plan_problem) is a pure function of meta.json and an environment description, so
it is tested without a GPU. Finding TensorRT, cuda-python and the plugin library is edgestack.tensorrt_env's.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgestack import bundle as bundle_format
from edgestack.errors import EdgestackError
from edgestack.runtime.engine import check_declared_io
from edgestack.tensorrt_env import (
    cuda_check,
    current_environment,
    find_plugin_library,
    hardware_compatible_problem,
    import_cudart,
    import_tensorrt,
    load_plugins,
    trt_logger,
    version_tuple,
)

log = logging.getLogger("edgestack.runtime")


def plan_problem(meta: dict[str, Any], env: dict[str, Any]) -> str | None:
    """Why the bundle's plan cannot run in `env` (see current_environment), or None when it can.

    A plan runs only on the TensorRT version that built it unless built version-compatible (then any later
    release of the same major version), and only on the GPU model it was built for unless built
    hardware-compatible (then any Ampere or newer GPU).
    """
    info = meta.get("tensorrt")
    if not info:
        return "meta.json has no TensorRT record for model.plan (built by another tool?)"
    flags = info.get("flags", {})
    built, here = version_tuple(info["version"]), version_tuple(env["tensorrt"])
    if flags.get("version_compatible"):
        if built[0] != here[0] or here < built:
            return (f"the plan was built version-compatible with TensorRT {info['version']}; it runs on "
                    f"TensorRT {built[0]}.x >= {info['version']}, this is {env['tensorrt']}")
    elif built != here:
        return f"the plan was built with TensorRT {info['version']}, this is TensorRT {env['tensorrt']}"
    cc_built, cc_here = (tuple(int(v) for v in c.split(".")) for c in (info["compute_capability"],
                                                                       env["compute_capability"]))
    if flags.get("hardware_compatible"):
        problem = hardware_compatible_problem(env)
        if problem:
            return f"the plan is hardware-compatible, but {problem}"
    elif cc_built != cc_here:
        return (f"the plan was built for {info['gpu']} (compute capability {info['compute_capability']}), this GPU "
                f"is {env['gpu']} ({env['compute_capability']})")
    elif info["gpu"] != env["gpu"]:
        # Same architecture but another model: TensorRT would load it, with tactics timed on other hardware.
        return f"the plan was built and tuned on {info['gpu']}, this GPU is {env['gpu']}"
    return None


def _plan_io(meta: dict[str, Any], plan_dtypes: dict[str, np.dtype]) -> list[tuple[str, str]]:
    """The plan's (name, dtype) in meta.json's order, for check_declared_io. A dtype of the declared kind counts
    as the declared one: TensorRT may narrow int64 to int32 (EfficientNMS_TRT's counts and classes), and Engine
    hands outputs back in the declared dtype."""
    declared = {t["name"]: np.dtype(t["dtype"]) for t in [*meta["inputs"], *meta["outputs"]]}
    found = [(name, declared[name].name if dtype.kind == declared[name].kind else dtype.name)
             for name, dtype in plan_dtypes.items() if name in declared]
    order = list(declared)
    return sorted(found, key=lambda pair: order.index(pair[0])) + [
        (name, dtype.name) for name, dtype in plan_dtypes.items() if name not in declared]


class _Buffer:
    """One I/O tensor: a device allocation and a pinned host mirror, grown on demand."""

    def __init__(self) -> None:
        self.capacity = 0
        self.device = 0
        self.host = 0

    def ensure(self, nbytes: int) -> bool:
        """Make room for nbytes; True when the device address changed."""
        if nbytes <= self.capacity:
            return False
        cudart = import_cudart()
        self.free()
        # Locals until both exist: free() skips a buffer of capacity 0, so a lone device block is released here.
        device = cuda_check(cudart.cudaMalloc(nbytes), "cudaMalloc")
        try:
            host = cuda_check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
        except EdgestackError:
            cuda_check(cudart.cudaFree(device), "cudaFree")
            raise
        self.device, self.host, self.capacity = device, host, nbytes
        return True

    def host_array(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        raw = (ctypes.c_uint8 * nbytes).from_address(self.host)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def free(self) -> None:
        if self.capacity:
            cudart = import_cudart()
            cuda_check(cudart.cudaFree(self.device), "cudaFree")
            cuda_check(cudart.cudaFreeHost(self.host), "cudaFreeHost")
            self.capacity = 0


class TensorRTBackend:
    """`model.plan` on the GPU: pinned host buffers, device buffers, one stream, an optional CUDA graph."""

    def __init__(self, bundle: Path, meta: dict[str, Any], rebuild: bool = False, cuda_graph: bool = False):
        plan_path = bundle / bundle_format.PLAN
        if not plan_path.is_file() or "tensorrt" not in meta:
            raise EdgestackError(
                f"bundle {bundle} has no {bundle_format.PLAN}; build one with `edgestack build {bundle} --precision "
                "fp16` on the target machine"
            )
        trt = import_tensorrt()
        cudart = import_cudart()
        env = current_environment()
        problem = plan_problem(meta, env)
        if problem and rebuild:
            from edgestack.export.tensorrt import rebuild_plan

            log.warning("%s; rebuilding the plan for this machine", problem)
            # The Engine holds this dict: refreshed in place so it describes the plan loaded. Workers of one service
            # loading together: the first rebuilds, the others wait for it and take its plan.
            with bundle_format.changing(bundle, wait=True):
                meta.clear()
                meta.update(bundle_format.read_meta(bundle, verify=True))
                if plan_problem(meta, env):
                    rebuild_plan(bundle, meta)
                    meta.clear()
                    meta.update(bundle_format.read_meta(bundle, verify=True))
            problem = plan_problem(meta, env)
        if problem:
            raise EdgestackError(
                f"{plan_path}: {problem}. Rebuild it here with `edgestack build {bundle} --precision "
                f"{meta['tensorrt']['precision']}`, or load with rebuild=True"
            )
        info = meta["tensorrt"]
        runtime = trt.Runtime(trt_logger())
        if info.get("plugins"):
            load_plugins(runtime.get_plugin_registry(), find_plugin_library(), info["plugins"])
        if info["flags"].get("version_compatible"):
            runtime.engine_host_code_allowed = True  # the plan carries its own lean runtime
        engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if engine is None:
            raise EdgestackError(f"TensorRT could not deserialize {plan_path} (see its log above); rebuild the plan")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.dtypes = {}
        for n in names:
            try:
                self.dtypes[n] = np.dtype(trt.nptype(engine.get_tensor_dtype(n)))
            except TypeError:  # bf16, fp8, int4: no numpy type
                raise EdgestackError(f"{plan_path}: tensor {n!r} is {engine.get_tensor_dtype(n)}, which has no numpy "
                                     "type; export the model with fp32/fp16 inputs and outputs") from None
        check_declared_io(bundle, meta, _plan_io(meta, self.dtypes), bundle_format.PLAN)
        context = engine.create_execution_context()
        if context is None:
            raise EdgestackError(f"TensorRT could not create an execution context for {plan_path} (out of GPU "
                                 "memory? see its log above); free GPU memory or rebuild with a smaller --profile")
        self.trt, self.cudart, self.runtime, self.engine, self.context = trt, cudart, runtime, engine, context
        # Non-blocking: no implicit sync with the legacy default stream that torch or another library may use, which
        # would also invalidate a CUDA-graph capture in progress here (as trtexec creates its streams).
        self.stream = cuda_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                                 "cudaStreamCreateWithFlags")
        # One context, one set of buffers and a graph: concurrent calls (and close) take turns.
        self._lock = threading.Lock()
        self.inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [spec["name"] for spec in meta["outputs"]]
        self.buffers = {n: _Buffer() for n in names}
        self.cuda_graph = cuda_graph
        # One graph, for the input shapes it was captured with: a context's state after a shape change is
        # TensorRT's own, so a graph of earlier shapes is not replayed but captured again.
        self.graph: tuple[tuple, Any] | None = None
        self.name = "tensorrt"
        self.device = f"{env['gpu']}, sm {env['compute_capability']}, {info['precision']}"

    def _set_shapes(self, feed: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Input shapes into the context (checked against the plan's profile); all I/O shapes back."""
        shapes = {}
        for name in self.inputs:
            shape = feed[name].shape
            low, _, high = (tuple(s) for s in self.engine.get_tensor_profile_shape(name, 0))
            if any(not lo <= s <= hi for s, lo, hi in zip(shape, low, high)):
                raise EdgestackError(
                    f"input {name!r} of shape {list(shape)} is outside the plan's optimization profile "
                    f"{list(low)}..{list(high)}; rebuild with an `edgestack build --profile MIN,OPT,MAX` covering it"
                )
            if not self.context.set_input_shape(name, shape):
                raise EdgestackError(f"TensorRT rejected shape {list(shape)} for input {name!r}")
            shapes[name] = tuple(shape)
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(s < 0 for s in shape):
                raise EdgestackError(f"output {name!r} has a data-dependent shape {shape}; not supported")
            shapes[name] = shape
        return shapes

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            if self.stream is None:  # closed while this call waited for the lock
                raise EdgestackError("this TensorRT engine is closed; load the bundle again to run it")
            return self._run(feed)

    def _run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = self.cudart
        shapes = self._set_shapes(feed)
        moved = False
        for name, shape in shapes.items():
            moved |= self.buffers[name].ensure(max(1, int(np.prod(shape))) * self.dtypes[name].itemsize)
        if moved:  # new addresses: a captured graph points at the old ones
            self._drop_graph()
            for name, buffer in self.buffers.items():
                self.context.set_tensor_address(name, buffer.device)
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in self.inputs:
            host = self.buffers[name].host_array(shapes[name], self.dtypes[name])
            np.copyto(host, feed[name], casting="same_kind")
            cuda_check(cudart.cudaMemcpyAsync(self.buffers[name].device, self.buffers[name].host, host.nbytes, h2d,
                                              self.stream), "cudaMemcpyAsync")
        self._execute(tuple(shapes[n] for n in self.inputs))
        results = []
        for name in self.outputs:
            host = self.buffers[name].host_array(shapes[name], self.dtypes[name])
            cuda_check(cudart.cudaMemcpyAsync(self.buffers[name].host, self.buffers[name].device, host.nbytes, d2h,
                                              self.stream), "cudaMemcpyAsync")
            results.append(host)
        cuda_check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        # Copies: the pinned buffers are overwritten by the next call (Engine casts to the declared dtypes).
        return [r.copy() for r in results]

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(int(self.stream)):
            raise EdgestackError("TensorRT execute_async_v3 failed (see the TensorRT log above)")

    def _execute(self, key: tuple) -> None:
        """Run the plan; with cuda_graph, replay a graph captured for these input shapes."""
        cudart = self.cudart
        if self.graph is not None and self.graph[0] == key:
            cuda_check(cudart.cudaGraphLaunch(self.graph[1], self.stream), "cudaGraphLaunch")
            return
        self._drop_graph()
        self._enqueue()
        if self.cuda_graph:
            # TensorRT needs one plain enqueue after a shape change before its work can be captured.
            try:
                self.graph = (key, self._capture())
            except EdgestackError as exc:  # the plain run above already produced this call's outputs
                log.warning("CUDA graph capture failed (%s); running this plan without CUDA graphs", exc)
                self.cuda_graph = False

    def _capture(self) -> Any:
        """One enqueue captured as an instantiated CUDA graph. The capture always ends, so a failure inside it
        never leaves the stream capturing (which would break every later call)."""
        cudart = self.cudart
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
        captured = None
        try:
            try:
                self._enqueue()
            finally:
                err, captured = cudart.cudaStreamEndCapture(self.stream)
            cuda_check((err,), "cudaStreamEndCapture")
            return cuda_check(cudart.cudaGraphInstantiate(captured, 0), "cudaGraphInstantiate")
        finally:
            if captured is not None and int(captured):  # a null cudaGraph_t is truthy
                cuda_check(cudart.cudaGraphDestroy(captured), "cudaGraphDestroy")

    def _drop_graph(self) -> None:
        if self.graph is not None:
            graph, self.graph = self.graph[1], None
            cuda_check(self.cudart.cudaGraphExecDestroy(graph), "cudaGraphExecDestroy")

    def close(self) -> None:
        """Free device and pinned memory, graphs, the stream, and the context's and engine's GPU memory (also
        done when the backend is collected); waits for a run in progress."""
        lock = getattr(self, "_lock", None)  # absent when the constructor failed before the stream existed
        if lock is None:
            return
        with lock:
            if self.stream is None:
                return
            cuda_check(self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
            self._drop_graph()
            for buffer in self.buffers.values():
                buffer.free()
            cuda_check(self.cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None
            self.context = self.engine = self.runtime = None  # in that order: each holds the next

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass
