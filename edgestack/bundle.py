"""The bundle on disk (`artifacts/<model>/`): file names, meta.json schema, integrity checks.

Export writes bundles and runtime reads them; both go through this module so the format lives in one place.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from edgestack.errors import EdgestackError
from edgestack.interrupts import interrupts_held

SCHEMA_VERSION = 2  # 2: meta.json carries the sha256 of its own content
META = "meta.json"
META_SHA256 = "meta_sha256"  # meta.json's key for the sha256 of the rest of its content
REPORT = "report.md"
PORTABLE_ONNX = "model.onnx"
PLUGINS_ONNX = "model.plugins.onnx"
PLAN = "model.plan"
INT8_ONNX = "model.int8.onnx"  # the Q/DQ model `edgestack quantize` writes
WEIGHTS = "weights.safetensors"
DTYPES = {"float32", "float16", "int64", "int32", "bool", "uint8"}  # of the graphs' inputs and outputs


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write a file whole or not at all (temp file + rename), so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a power loss must not leave an empty file in place
        tmp.replace(path)
    except BaseException:  # a full disk: no half-written .tmp left behind
        tmp.unlink(missing_ok=True)
        raise


def write_meta(bundle: Path, meta: dict[str, Any]) -> None:
    """meta.json, signed with the sha256 of its content: an edit by hand (a preprocessing mean, a class list)
    would change every result in silence, so it is refused on load like a changed model file."""
    write_atomic(bundle / META, _signed_meta(meta))


def _signed_meta(meta: dict[str, Any]) -> bytes:
    signed = {key: value for key, value in meta.items() if key != META_SHA256}
    signed[META_SHA256] = _content_sha256(signed)
    return (json.dumps(signed, indent=2, sort_keys=False) + "\n").encode()


def replace_files(bundle: Path, meta: dict[str, Any], files: dict[str, Path | bytes | memoryview]) -> None:
    """Put new versions of bundle files (name -> a file anywhere, or the content) in place, with a meta.json
    recording them. Everything is written beside its place and meta.json before the first rename, so a failure
    (a full disk) leaves the bundle as it was; Ctrl-C and SIGTERM wait for the renames (only a power loss or
    SIGKILL in those microseconds leaves new files under the old meta.json, which then refuses to load)."""
    staged = {name: bundle / f"{name}.tmp" for name in [*files, META]}
    try:
        for name, source in files.items():
            if isinstance(source, Path):
                shutil.copyfile(source, staged[name])
            else:
                staged[name].write_bytes(source)
            meta["files"][name] = sha256(staged[name])
        staged[META].write_bytes(_signed_meta(meta))
        with interrupts_held():
            for name, path in staged.items():
                path.replace(bundle / name)
    except BaseException:
        for path in staged.values():
            path.unlink(missing_ok=True)
        raise


def exclusive_lock(path: Path, wait: bool = False):
    """An open file holding an exclusive lock on `path` (created), or None where another process holds it and
    `wait` is False. The lock goes with the file's close, or with the process when it dies, so a killed command
    never leaves a folder locked. A holder may remove the file before it closes it: a waiter that then holds the
    lock of a removed file tries again on the path. A file system that cannot lock (NFS without its lock
    daemon) raises its OSError: not another holder."""
    while True:
        lock = open(path, "a+")
        try:
            _lock(lock.fileno(), wait)
            if os.path.samestat(os.fstat(lock.fileno()), os.stat(path)):
                return lock
        except FileNotFoundError:  # removed by the holder we waited for
            pass
        except OSError as exc:
            lock.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):  # held by another
                return None
            raise
        lock.close()


def _lock(descriptor: int, wait: bool) -> None:
    if os.name != "nt":
        import fcntl

        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return
    import msvcrt

    while True:  # LK_LOCK itself gives up after 10 s, and a plan build takes minutes
        try:
            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
            return
        except OSError as exc:
            if not wait or exc.errno not in (errno.EACCES, errno.EDEADLK):  # only another holder is waited for
                raise
            time.sleep(0.5)


_changing = threading.local()  # the folders this thread holds the change lock of: a nested change goes on


@contextmanager
def changing(folder: Path, wait: bool = False) -> Iterator[None]:
    """Held while a command rewrites a bundle (export, build, quantize, a plan rebuild) or a Triton model folder:
    two at once would share one staging folder, or one would drop what the other recorded in meta.json. The lock
    is `.NAME.lock` beside the folder (its real path: `.` or a link name the same one) while it is held, and a
    graph of a multi-graph bundle holds its parent's too (a re-export swaps the whole parent); a second command
    is refused, or with `wait` waits its turn (the workers of one service rebuilding one plan)."""
    held = _changing.__dict__.setdefault("folders", set())
    real = Path(folder).resolve()
    if real in held:
        yield
        return
    with ExitStack() as stack:
        if _is_a_graph_folder(real):
            stack.enter_context(changing(real.parent, wait))
        path = real.with_name(f".{real.name}.lock")
        try:
            lock = exclusive_lock(path, wait)
            if lock is None:
                raise EdgestackError(f"{folder} is being changed by another edgestack command (export, build, "
                                     "quantize or triton); let it end, or write to another folder")
        except OSError:  # a parent we may not write to (no export can stage beside it either), or no locks there
            lock = None
        held.add(real)
        try:
            yield
        finally:
            held.discard(real)
            if lock is not None:
                if os.name != "nt":  # no lock file left beside the bundle (Windows cannot remove an open file)
                    path.unlink(missing_ok=True)
                lock.close()


def _is_a_graph_folder(folder: Path) -> bool:
    """Whether `folder` is one graph of a multi-graph bundle (vglaw's text/ or vision/)."""
    try:
        graphs = json.loads((folder.parent / META).read_text()).get("graphs", {})
        return any(graph.get("folder") == folder.name for graph in graphs.values())
    except (OSError, ValueError, AttributeError, TypeError):
        return False


def changes_bundle(command):
    """`command(bundle, ...)`, which rewrites files of the bundle, run while it holds changing(bundle)."""

    @functools.wraps(command)
    def locked(bundle, *args, **kwargs):
        with changing(Path(bundle)):
            return command(bundle, *args, **kwargs)

    return locked


@contextmanager
def folder_replaced(target: Path, beside: Path | None = None) -> Iterator[Path]:
    """A staging folder, put in `target`'s place whole when the block finishes without an error and removed when
    it does not. It is `.NAME.staging` beside `beside` (default `target`, whose parent must exist), so the rename
    stays on one file system (a Triton repository is often its own mount); what a killed run left there is ours by
    name, as is the old folder moved aside to `.NAME.replaced` during the swap."""
    beside = beside or target
    staging = beside.with_name(f".{beside.name}.staging")
    with changing(beside):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()  # the umask's mode, as `target` would have (a bundle or a model folder is meant to be shared)
        try:
            yield staging
            _swap_in(staging, target, beside.with_name(f".{beside.name}.replaced"))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _swap_in(staging: Path, target: Path, old: Path) -> None:
    """Put the folder `staging` in `target`'s place: the old `target` is renamed to `old` and deleted only once the
    new one has its name, Ctrl-C and SIGTERM wait for the renames, and a failed rename puts the old one back.
    So `target` is the old folder or the new one, never a part of either (a killed export left half a bundle)."""
    shutil.rmtree(old, ignore_errors=True)  # what a kill between the renames left: ours by name
    swapped = False
    try:
        with interrupts_held():
            if target.exists():
                target.rename(old)
            try:
                staging.rename(target)
            except BaseException:
                if old.exists():
                    old.rename(target)
                raise
            swapped = True
    finally:
        if swapped:
            shutil.rmtree(old, ignore_errors=True)


def _graph_meta_with_a_plan(path: Path, expected: str) -> bool:
    """Whether a graph's meta.json, which an earlier version's multi-graph bundle recorded by its sha256 (`expected`),
    is that file with a plan added by `edgestack build` since: the same graph, not another export's."""
    try:
        meta = json.loads(path.read_text())
        files = {name: sha for name, sha in meta["files"].items() if name != PLAN}
        before = {key: value for key, value in meta.items() if key != "tensorrt"} | {"files": files}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False
    return "tensorrt" in meta and hashlib.sha256(_signed_meta(before)).hexdigest() == expected


def _content_sha256(meta: dict[str, Any]) -> str:
    content = {key: value for key, value in meta.items() if key != META_SHA256}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def require_recorded(bundle: Path, meta: dict[str, Any], filename: str, how: str) -> None:
    """Only files whose sha256 meta.json records (and read_meta checked) are run or deployed."""
    if filename not in meta["files"]:
        found = ("a " + filename + " that meta.json does not record (no sha256 to check it by)"
                 if (bundle / filename).is_file() else "no " + filename)
        raise EdgestackError(f"bundle {bundle} has {found}; {how}")


def axis_problem(meta: dict[str, Any], axis: str, size: int) -> str | None:
    """Why `size` is not allowed for axis `axis` (batch, height, width) of this bundle, or None."""
    rng = meta["axes"].get(axis)
    if rng is None:  # exported static (MAT): only its own size
        fixed = dict(zip(("height", "width"), meta["default_size"])).get(axis, 1)
        return None if size == fixed else f"{axis}={size}, but this model's {axis} is fixed at {fixed}"
    if not rng["min"] <= size <= rng["max"] or size % rng["multiple_of"]:
        multiple = f", multiple of {rng['multiple_of']}" if rng["multiple_of"] > 1 else ""
        return f"{axis}={size} is outside the model's allowed range {rng['min']}..{rng['max']}{multiple}"
    return None


def refuse_several_graphs(bundle: str | Path, meta: dict[str, Any], advice: str) -> None:
    """Commands that take one graph refuse a bundle of several (vglaw: text + vision), naming its sub-bundles."""
    if "graphs" in meta:
        subs = ", ".join(str(Path(bundle) / graph["folder"]) for graph in meta["graphs"].values())
        raise EdgestackError(f"{bundle} holds {len(meta['graphs'])} graphs ({', '.join(meta['graphs'])}), not one "
                             f"(sub-bundles {subs}); {advice}")


def read_meta(bundle: str | Path, verify: bool = True) -> dict[str, Any]:
    """meta.json of a bundle; with `verify`, every file it lists must exist and match its sha256."""
    if not isinstance(bundle, (str, os.PathLike)):
        raise EdgestackError(f"a bundle is the path of its folder (str or Path), got {type(bundle).__name__}")
    bundle = Path(bundle)
    meta_path = bundle / META
    if not meta_path.is_file():
        raise EdgestackError(
            f"{bundle} is not an edgestack bundle (no {META}); create one with `edgestack export MODEL --out {bundle}`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgestackError(f"{meta_path} is not valid JSON ({exc}); re-export the bundle") from None
    if not isinstance(meta, dict):
        raise EdgestackError(f"{meta_path} holds a JSON {type(meta).__name__}, not a bundle description; re-export "
                             "the bundle")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise EdgestackError(
            f"{meta_path} has schema version {meta.get('schema_version')!r}, this edgestack reads "
            f"{SCHEMA_VERSION}; re-export the bundle with this version"
        )
    problem = _structure_problem(meta) or (
        meta.get(META_SHA256) != _content_sha256(meta) and f"its content does not match its {META_SHA256}")
    if problem:
        raise EdgestackError(f"{meta_path} is damaged or edited ({problem}); re-export the bundle")
    if verify:
        graph_metas = {f"{graph['folder']}/{META}" for graph in meta.get("graphs", {}).values()
                       if isinstance(graph, dict) and "folder" in graph}
        for name, expected in meta["files"].items():
            path = bundle / name
            if not path.is_file():
                raise EdgestackError(f"bundle {bundle} is missing {name}; re-export it")
            try:
                actual = sha256(path)
            except OSError as exc:  # another account's export (a CI job, a Dockerfile run as root)
                raise EdgestackError(f"cannot read bundle file {path} ({exc.strerror or exc}); make the bundle "
                                     "readable by this account (chmod -R a+rX)") from None
            if actual != expected and name in graph_metas and _graph_meta_with_a_plan(path, expected):
                read_meta(path.parent, verify=True)  # the graph as its meta.json now records it, plan included
            elif actual != expected:
                raise EdgestackError(
                    f"bundle file {path} does not match the sha256 recorded in {META} (modified or corrupted); "
                    "re-export the bundle"
                )
    return meta


def _structure_problem(meta: dict[str, Any]) -> str | None:
    """What of meta.json's structure the runtime relies on is missing or malformed, or None."""
    files, model = meta.get("files"), meta.get("model")
    if not isinstance(files, dict) or not files or not all(isinstance(v, str) for v in files.values()):
        return "no sha256 listing of its files"
    if not isinstance(model, dict) or not all(isinstance(model.get(key), str) for key in ("name", "config")):
        return "no model name and config"
    if "graphs" in meta:
        return None if isinstance(meta["graphs"], dict) and meta["graphs"] else "no graphs listed"
    for key in ("inputs", "outputs"):
        tensors = meta.get(key)
        if not isinstance(tensors, list) or not tensors:
            return f"no {key}"
        for tensor in tensors:
            if not (isinstance(tensor, dict) and isinstance(tensor.get("name"), str)
                    and isinstance(tensor.get("shape"), list) and tensor.get("dtype") in DTYPES):
                return f"{key} entry {tensor!r} lacks a name, a shape or a dtype of {sorted(DTYPES)}"
    axes = meta.get("axes")
    if not isinstance(axes, dict):
        return "no axes"
    for axis, limits in axes.items():
        if not (isinstance(limits, dict) and all(isinstance(limits.get(k), int) for k in ("min", "max", "multiple_of"))
                and 1 <= limits["multiple_of"] and limits["min"] <= limits["max"]):
            return f"axis {axis} has no valid min, max and multiple_of"
    return None
