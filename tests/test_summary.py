"""``summarize`` / ``attnunet summary`` (torchinfo) and ``attnunet --help``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from attnunet import AttentionUNet, create_network
from attnunet.cli import COMMANDS, main
from attnunet.summary import default_input_size, summarize


@pytest.mark.parametrize(
    "name, kwargs, input_size",
    [
        ("attention_unet_2d", {"init_features": 4}, (3, 64, 48)),
        ("attention_unet_3d_small", {"depth": 2}, (1, 9, 10, 11)),
        (
            "monai_unet",
            {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "init_features": 4},
            (1, 32, 32),
        ),
    ],
)
def test_summarize_counts_every_parameter(name, kwargs, input_size):
    stats = summarize(name, input_size, batch_size=2, **kwargs)
    network = create_network(name, **kwargs)
    expected = sum(p.numel() for p in network.parameters())
    assert stats.total_params == expected
    assert f"Total params: {expected:,}" in str(stats)
    assert stats.summary_list[0].output_size == [2, network.out_channels, *input_size[1:]]


def test_summarize_module_with_default_input_size():
    model = AttentionUNet(2, 2, 1, init_features=2, depth=2)
    assert default_input_size(model) == (2, 256, 256)
    assert default_input_size(create_network("attention_unet_3d_small")) == (1, 96, 96, 96)
    stats = summarize(model)
    assert stats.summary_list[0].output_size == [1, 1, 256, 256]


ILL_CASES = [
    (("attention_unet_2d", (2, 32, 32)), {"init_features": 2}, "expects 3 input channels"),
    (("attention_unet_2d", (3, 32)), {"init_features": 2}, "expects a 4D input"),
    (("attention_unet_2d", (3,)), {"init_features": 2}, "input_size must be"),
    (("attention_unet_2d", (3, 0, 8)), {"init_features": 2}, "input_size must be"),
    (("attention_unet_2d", (3, 8, 8)), {"batch_size": 0}, "batch_size"),
    (("attention_unet_4d", (3, 8, 8)), {}, "did you mean"),
]


@pytest.mark.parametrize("args, kwargs, message", ILL_CASES)
def test_summarize_ill_inputs(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        summarize(*args, **kwargs)
    with pytest.raises(ValueError, match="not for a module"):
        summarize(AttentionUNet(2, 1, 1, init_features=2), (1, 8, 8), init_features=4)


def test_cli_summary(capsys):
    argv = ["summary", "--preset", "attention_unet_3d_small", "--input-size", "1", "20", "17", "16"]
    assert main([*argv, "--kwargs", '{"depth": 2, "attention": "gate"}', "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "AttentionGate" in out and "Total params" in out and "[2, 2, 20, 17, 16]" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--kwargs", "{bad"], "--kwargs is not valid JSON"),
        (["--kwargs", "[1]"], "must be a JSON object"),
        (["--kwargs", '{"colour": 1}'], "unexpected keyword argument 'colour'"),
        (["--input-size", "1", "64", "64"], "expects 3 input channels"),
        (["--preset", "nope"], "Available options are"),
    ],
)
def test_cli_summary_errors(capsys, argv, message):
    assert main(["summary", *argv]) == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_commands():
    done = subprocess.run(
        [sys.executable, "-m", "attnunet", "--help"], capture_output=True, text=True, check=True
    )
    for command in COMMANDS:
        assert f"  {command}" in done.stdout
    # the package imports torch and MONAI lazily: the command table loads without them
    code = "import sys, attnunet, attnunet.cli; print('torch' in sys.modules, 'monai' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == ["False", "False"]


def test_summary_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["summary", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(option in out for option in ("--preset", "--input-size", "--batch-size", "--kwargs"))


def test_summary_table_rows_have_output_shapes():
    stats = summarize(
        "attention_unet", (1, 16, 16), spatial_dims=2, in_channels=1, out_channels=2, init_features=2
    )
    rows = {layer.class_name for layer in stats.summary_list}
    assert {"NonLocalBlock", "DecoderStage", "TwoConv", "Down"} <= rows
    assert torch.Size(stats.summary_list[0].output_size) == (1, 2, 16, 16)
