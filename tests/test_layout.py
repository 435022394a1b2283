"""DESIGN.md's data-flow rules, read from the import statements of every module (function-level imports too):
the runtime never imports train; export imports the runtime only to check what it wrote; nothing imports
benchmarks/."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ["edgestack", "models", "train", "export", "runtime", "kernels"]
# What export may take from the runtime, and why: both check the bundle export has just written.
EXPORT_USES_OF_RUNTIME = {
    ("export/tensorrt.py", "edgestack.runtime.engine"),  # verify_plan runs the new plan against onnxruntime
    ("export/quantize.py", "edgestack.runtime.images"),  # int8 calibration and its check see the runtime's input
}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names `path` imports anywhere in it."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imports_by_file() -> dict[str, set[str]]:
    return {str(path.relative_to(ROOT)): imported_modules(path)
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_imports_follow_the_data_flow():
    found = imports_by_file()
    assert "runtime/engine.py" in found and "export/tensorrt.py" in found  # the walk saw the packages
    runtime_imports_train = sorted(f"{file}: {name}" for file, names in found.items() if file.startswith("runtime/")
                                   for name in names if under(name, "edgestack.train"))
    assert runtime_imports_train == []
    export_uses_runtime = {(file, ".".join(name.split(".")[:3])) for file, names in found.items()
                           if file.startswith("export/") for name in names if under(name, "edgestack.runtime")}
    assert export_uses_runtime <= EXPORT_USES_OF_RUNTIME, sorted(export_uses_runtime - EXPORT_USES_OF_RUNTIME)
    imports_benchmarks = sorted(f"{file}: {name}" for file, names in found.items()
                                for name in names if under(name, "benchmarks"))
    assert imports_benchmarks == []


def test_imported_modules_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from edgestack.runtime.tensorrt import plan_problem\n")
    assert {"os", "edgestack.runtime.tensorrt", "edgestack.runtime.tensorrt.plan_problem"} <= imported_modules(source)
