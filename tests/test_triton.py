"""Triton model repository: config.pbtxt parsed by Triton's own ModelConfig protobuf (from tritonclient)."""

import errno
import shutil
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient: pip install 'tritonclient[grpc]'")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from edgestack import bundle as bundle_format  # noqa: E402
from edgestack.cli import main  # noqa: E402
from edgestack.errors import EdgestackError  # noqa: E402
from edgestack.export.tensorrt import resolve_profile  # noqa: E402
from edgestack.export.triton import triton_config, write_repository  # noqa: E402

ModelConfig = model_config_pb2.ModelConfig


def parse(text: str):
    return text_format.Parse(text, ModelConfig())


@pytest.fixture(scope="module")
def bundle(pspnet_bundle):
    return pspnet_bundle


@pytest.fixture(scope="module")
def meta(bundle):
    return bundle_format.read_meta(bundle)


def test_onnx_config_fields(meta):
    config = parse(triton_config(meta, "onnx", "psp", max_batch=8, instances=2, kind="KIND_CPU"))
    assert config.name == "psp" and config.backend == "onnxruntime" and config.max_batch_size == 8
    (image,) = config.input
    assert image.name == "image" and image.data_type == model_config_pb2.TYPE_FP32 and list(image.dims) == [3, -1, -1]
    (logits,) = config.output
    assert logits.name == "logits" and list(logits.dims) == [150, -1, -1]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = config.instance_group
    assert group.count == 2 and group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_unbatched_config_keeps_the_batch_dim(meta):
    config = parse(triton_config(meta, "onnx", "psp", max_batch=0))
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [-1, 3, -1, -1]
    assert not config.HasField("dynamic_batching")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_plan_config_follows_the_plans_profile(meta):
    # The profile record `edgestack build --profile 1x65x65,1x473x473,8x1025x1025` writes (no plan needed for
    # the config text itself).
    plan_meta = dict(meta, tensorrt={"profile": resolve_profile(meta, "1x65x65,1x473x473,8x1025x1025")})
    config = parse(triton_config(plan_meta, "plan", "psp-trt", max_batch=8))
    assert config.backend == "tensorrt" and config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    with pytest.raises(EdgestackError, match="exceeds the plan model's largest batch 8; rebuild the plan"):
        triton_config(plan_meta, "plan", "psp-trt", max_batch=16)
    with pytest.raises(EdgestackError, match="runs on the GPU only"):
        triton_config(plan_meta, "plan", "psp-trt", max_batch=8, kind="KIND_CPU")
    with pytest.raises(EdgestackError, match="--instances 0 must be at least 1"):
        triton_config(meta, "onnx", "psp", max_batch=8, instances=0)


def test_write_onnx_repository(bundle, tmp_path):
    model_dir = write_repository(bundle, tmp_path / "repo", cpu=True)
    assert model_dir == tmp_path / "repo" / "pspnet-r18"
    assert (model_dir / "1" / "model.onnx").read_bytes() == (bundle / "model.onnx").read_bytes()
    config = parse((model_dir / "config.pbtxt").read_text())
    assert config.name == "pspnet-r18" and config.backend == "onnxruntime"
    assert config.max_batch_size == 32  # the model's batch axis range
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4, 8, 16, 32]
    with pytest.raises(EdgestackError, match="has no model.plan; build it with `edgestack build"):
        write_repository(bundle, tmp_path / "repo", fmt="plan")


def test_cli_triton(bundle, tmp_path, capsys):
    repo = tmp_path / "line 3 models"  # the printed command quotes it, so it can be pasted
    assert main(["triton", str(bundle), "--repo", str(repo), "--name", "seg", "--max-batch", "4",
                 "--instances", "3"]) == 0
    assert f"`tritonserver --model-repository '{repo}'`" in capsys.readouterr().out
    config = parse((repo / "seg" / "config.pbtxt").read_text())
    assert config.max_batch_size == 4 and config.instance_group[0].count == 3
    assert (repo / "seg" / "1" / "model.onnx").is_file()
    assert main(["triton", str(bundle), "--repo", str(repo), "--max-batch", "64"]) == 2
    assert "exceeds the onnx model's largest batch 32" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../escape", ".", "a/b"])
def test_a_model_name_is_one_folder_of_the_repository(bundle, tmp_path, capsys, name):
    assert main(["triton", str(bundle), "--repo", str(tmp_path / "models"), "--name", name]) == 2
    assert "must be letters, digits, _ . - (one folder name, not a path)" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "models" / "config.pbtxt").exists()


def test_a_model_folder_is_replaced_only_when_asked_and_then_whole(bundle, tmp_path, capsys):
    repo = tmp_path / "models"
    model_dir = write_repository(bundle, repo, cpu=True)
    (model_dir / "1" / "model.plan").write_bytes(b"an older plan")  # what a replaced plan model leaves behind
    assert main(["triton", str(bundle), "--repo", str(repo), "--cpu"]) == 2
    assert f"{model_dir} exists; pass --replace to replace it" in capsys.readouterr().err
    assert main(["triton", str(bundle), "--repo", str(repo), "--cpu", "--replace"]) == 0
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.onnx"]


def test_replacing_never_deletes_the_bundle_or_the_old_folder_before_the_new_one_is_whole(bundle, tmp_path,
                                                                                         capsys, monkeypatch):
    # `triton artifacts/pspnet-r18 --repo artifacts --replace`: the default name is the config's, so the model
    # folder was the bundle itself, deleted before its model was copied.
    artifacts = tmp_path / "artifacts"
    shutil.copytree(bundle, artifacts / "pspnet-r18")
    before = sorted(p.name for p in (artifacts / "pspnet-r18").iterdir())
    inside, holding = (artifacts / "pspnet-r18", ["--name", "x"]), (tmp_path, ["--name", "artifacts"])
    for repo, name in ((artifacts, []), inside, holding):
        assert main(["triton", str(artifacts / "pspnet-r18"), "--repo", str(repo), "--cpu", "--replace", *name]) == 2
        assert "is the bundle" in capsys.readouterr().err
    assert sorted(p.name for p in (artifacts / "pspnet-r18").iterdir()) == before
    # A failure while writing the new folder (a full disk) leaves the old one as it was, and no staging folder.
    repo = tmp_path / "models"
    model_dir = write_repository(bundle, repo, cpu=True)
    old = (model_dir / "config.pbtxt").read_text()

    def disk_full(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_repository(bundle, repo, cpu=True, max_batch=2, replace=True)
    assert (model_dir / "config.pbtxt").read_text() == old and (model_dir / "1" / "model.onnx").is_file()
    assert [p.name for p in repo.iterdir()] == ["pspnet-r18"]
    # What a kill mid-write or mid-swap leaves (the staging folder, the old folder moved aside) lies beside the
    # repository, not in it, and is cleared by the next write, not in its way.
    monkeypatch.undo()
    leftovers = [tmp_path / ".models.pspnet-r18.staging", tmp_path / ".models.pspnet-r18.replaced"]
    for leftover in leftovers:
        (leftover / "1").mkdir(parents=True)
    write_repository(bundle, repo, cpu=True, max_batch=2, replace=True)
    assert [p.name for p in repo.iterdir()] == ["pspnet-r18"] and "max_batch_size: 2" in \
        (model_dir / "config.pbtxt").read_text()
    assert not any(leftover.exists() for leftover in leftovers)


def test_the_model_folder_is_written_outside_the_repository_triton_watches(bundle, tmp_path, monkeypatch):
    """Triton loads every folder of its repository, dot-named ones too: a polling server must never see a
    half-written model folder, and one that a kill left must not stop a starting server."""
    from edgestack.export import triton

    repo, seen = tmp_path / "models", {}
    write_folder = triton._write_model_folder

    def watched(model_dir, *args):
        write_folder(model_dir, *args)
        seen["staging"], seen["repository"] = model_dir, sorted(p.name for p in repo.iterdir())

    monkeypatch.setattr(triton, "_write_model_folder", watched)
    write_repository(bundle, repo, cpu=True)
    assert seen["staging"].parent == tmp_path and seen["repository"] == []
    write_repository(bundle, repo, cpu=True, max_batch=2, replace=True)
    assert seen["repository"] == ["pspnet-r18"]  # the old model only, until the new one is whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    # A repository bind-mounted into its parent's file system still refuses a rename across the mount (EXDEV):
    # the folder is then staged inside it, as a rename from beside it could not move it in.
    rename = Path.rename

    def across_a_mount(self, target):
        if Path(target).parent != self.parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", across_a_mount)
    write_repository(bundle, repo, cpu=True, max_batch=4, replace=True)
    assert seen["staging"].parent == repo and "max_batch_size: 4" in (repo / "pspnet-r18" / "config.pbtxt").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"] and sorted(p.name for p in repo.iterdir()) == [
        "pspnet-r18"]


def test_each_graph_of_a_multi_graph_model_gets_its_own_name(bundle, tmp_path):
    repo = tmp_path / "models"
    for graph in ("text", "vision"):  # vglaw's sub-bundles share one config name
        copy = tmp_path / graph
        shutil.copytree(bundle, copy)
        meta = bundle_format.read_meta(copy)
        meta["model"]["graph"] = graph
        bundle_format.write_meta(copy, meta)
        assert write_repository(copy, repo, cpu=True) == repo / f"pspnet-r18-{graph}"
    assert sorted(p.name for p in repo.iterdir()) == ["pspnet-r18-text", "pspnet-r18-vision"]


def test_a_plan_meta_json_does_not_record_is_never_deployed(bundle, tmp_path):
    from edgestack.runtime.environment import findings

    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    shutil.copyfile(copy / "model.onnx", copy / "model.plan")  # copied in by hand: no sha256, no build record
    with pytest.raises(EdgestackError, match="has a model.plan that meta.json does not record .*edgestack build"):
        write_repository(copy, tmp_path / "models")
    plan = [f for f in findings(copy) if f.component.startswith("plan ")]
    assert [(f.status, "does not record" in f.detail) for f in plan] == [("problem", True)]
