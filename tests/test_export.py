"""TorchScript and ONNX export: the exported models give eager's outputs; files are never clobbered."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx.reference import ReferenceEvaluator

from attnunet import AttentionUNet
from attnunet.checkpoints import save_checkpoint
from attnunet.cli import main
from attnunet.export import export_onnx, export_torchscript
from attnunet.spec import ModelSpec

TINY = {"init_features": 4, "depth": 2}
# thick slices along the last axis: pooled in-plane, then once through-plane; 1-voxel kernels through-plane
THICK = {"pool_sizes": [[2, 2, 1], [2, 2, 2]], "kernel_sizes": [[3, 3, 1], [3, 3, 1], [3, 3, 3]]}


def _eager(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize(
    "spatial_dims, attention, shapes, options",
    [
        (2, "nonlocal", [(1, 2, 13, 10), (2, 2, 32, 7)], {}),
        (3, "nonlocal", [(1, 2, 9, 8, 7), (1, 2, 16, 3, 5)], {}),
        (3, "gate", [(2, 2, 5, 6, 7)], {}),
        (2, "none", [(1, 2, 17, 17)], {}),
        (3, "nonlocal", [(1, 2, 9, 10, 3), (1, 2, 12, 7, 1)], {**THICK, "upsample": "deconv"}),
    ],
)
def test_torchscript_script_matches_eager_at_any_size(tmp_path, spatial_dims, attention, shapes, options):
    torch.manual_seed(0)
    model = AttentionUNet(spatial_dims, 2, 3, attention=attention, **TINY, **options)
    path = export_torchscript(model, tmp_path / "model.ts")
    scripted = torch.jit.load(str(path))
    for shape in shapes:  # a scripted model keeps the padding logic: every size works
        x = torch.randn(shape)
        torch.testing.assert_close(scripted(x), _eager(model, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="expects 2 input channels"):
        scripted(torch.randn(1, 3, *shapes[0][2:]))


def test_torchscript_trace_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = AttentionUNet(3, 1, 2, **TINY)
    x = torch.randn(1, 1, 10, 9, 8)
    traced = torch.jit.load(
        str(export_torchscript(model, tmp_path / "t.ts", method="trace", example_input=x))
    )
    torch.testing.assert_close(traced(x), _eager(model, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs an example_input"):
        export_torchscript(model, tmp_path / "u.ts", method="trace")
    with pytest.raises(ValueError, match="trace"):
        export_torchscript(model, tmp_path / "u.ts", method="compile")


@pytest.mark.parametrize(
    "spatial_dims, attention, shape, options",
    [
        (3, "nonlocal", (1, 1, 9, 10, 7), {}),
        (2, "gate", (2, 1, 20, 13), {}),
        (3, "nonlocal", (1, 1, 9, 10, 3), THICK),
    ],
)
def test_onnx_matches_eager(tmp_path, spatial_dims, attention, shape, options):
    torch.manual_seed(0)
    model = AttentionUNet(spatial_dims, 1, 2, attention=attention, **TINY, **options)
    x = torch.randn(shape)
    path = export_onnx(model, tmp_path / "model.onnx", x)
    assert not list(tmp_path.glob("*.data")) and not list(tmp_path.glob(".*tmp"))  # one self-contained file
    graph = onnx.load(str(path))
    assert graph.opset_import[0].version == 23
    ops = {node.op_type for node in graph.graph.node}
    assert ("Attention" in ops) == (attention == "nonlocal")  # the fused operator, not MatMul/Softmax
    (result,) = ReferenceEvaluator(graph).run(None, {"image": x.numpy()})
    np.testing.assert_allclose(result, _eager(model, x).numpy(), rtol=1e-4, atol=1e-5)


def test_export_never_overwrites_unless_asked(tmp_path):
    target = tmp_path / "model.ts"
    target.write_text("keep me")
    model = AttentionUNet(2, 1, 1, **TINY)
    with pytest.raises(FileExistsError, match="already exists"):
        export_torchscript(model, target)
    with pytest.raises(FileExistsError, match="already exists"):
        export_onnx(model, target, torch.randn(1, 1, 8, 8))
    assert target.read_text() == "keep me"
    export_torchscript(model, target, overwrite=True)
    assert torch.jit.load(str(target))(torch.randn(1, 1, 8, 8)).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="expects 1 input channels"):
        export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 2, 8, 8))
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_preset_to_torchscript(tmp_path, capsys):
    output = tmp_path / "out" / "small.ts"
    kwargs = '{"init_features": 2, "depth": 2, "out_channels": 3}'
    argv = ["export", "--preset", "attention_unet_3d_small", "--kwargs", kwargs, "--output", str(output)]
    assert main(argv) == 0
    assert str(output) in capsys.readouterr().out
    assert torch.jit.load(str(output))(torch.randn(1, 1, 7, 6, 5)).shape == (1, 3, 7, 6, 5)
    assert main(argv) == 2  # exists
    assert "already exists" in capsys.readouterr().err


def test_cli_export_checkpoint_to_onnx_uses_the_roi_size(tmp_path):
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, **TINY}
    spec = ModelSpec("attention_unet", kwargs, {"0": "background", "1": "organ"}, "ct", (12, 10, 8))
    model = spec.build()
    checkpoint = save_checkpoint(tmp_path / "best.pt", {"spec": spec.to_dict(), "model": model.state_dict()})
    output = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(output)]) == 0
    graph = onnx.load(str(output))
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 12, 10, 8]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    (result,) = ReferenceEvaluator(graph).run(None, {"image": x})
    np.testing.assert_allclose(result, _eager(model, torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "attention_unet_2d", "--checkpoint", "x.pt"], "exactly one of --preset"),
        ([], "exactly one of --preset"),
        (["--preset", "attention_unet_2d", "--format", "tflite"], "tflite"),
        (["--checkpoint", "missing.pt"], "does not exist"),
        (["--preset", "attention_unet_2d", "--input-size", "3"], "channels then spatial sizes"),
    ],
)
def test_cli_export_bad_arguments(tmp_path, capsys, argv, message):
    assert main(["export", *argv, "--output", str(tmp_path / "m.ts")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.ts").exists()
