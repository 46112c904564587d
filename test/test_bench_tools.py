"""``enet-seg bench metrics|eval|qos``: the benchmarks beside inference run end to end and write
their JSON (shapes and counts only: speed numbers belong in BENCHMARKS.md, never in tests)."""
from __future__ import annotations

import pytest
from bag_fixtures import make_camvid_folder, make_weights, read_json, run_cli


def test_bench_metrics_writes_one_row_per_evaluation_path(tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert run_cli(["bench", "metrics", "--size", "256x128", "--frames", 2, "--json", out]) == 0
    table = capsys.readouterr().out
    assert table.startswith("Metric overhead, 256x128, 2 frames") and "| Path | ms / frame |" in table
    result = read_json(out)
    assert result["size"] == [256, 128] and len(result["ms_per_frame"]) == 4
    assert all(ms > 0 for ms in result["ms_per_frame"].values())


def test_bench_eval_compares_bare_and_pipeline_on_a_folder(tmp_path):
    images, labels, _ = make_camvid_folder(tmp_path / "data", n=3)
    weights = make_weights(tmp_path / "enet.safetensors")
    out = tmp_path / "eval.json"
    assert run_cli(["bench", "eval", "--images", images, "--labels", labels, "--weights", weights,
                    "--backend", "torch", "--threads", 1, "--rounds", 2, "--json", out]) == 0
    result = read_json(out)
    assert result["frames_per_pass"] == 3 and result["rounds"] == 2 and len(result["round_ratios"]) == 2
    assert result["backend"] == "torch" and result["bare_fps"] > 0 and result["eval_fps"] > 0
    assert "CPUs" in result["machine"]


def test_bench_eval_needs_a_folder_or_a_bag(tmp_path, capsys):
    assert run_cli(["bench", "eval", "--weights", tmp_path / "w.safetensors"]) == 2
    assert "give --images and --labels, or --bag" in capsys.readouterr().err


def test_bench_qos_delivers_frames_from_an_image_source_process(tmp_path):
    pytest.importorskip("rclpy")
    out = tmp_path / "qos.json"
    assert run_cli(["bench", "qos", "--rates", "50", "--frames", 5, "--size", "64x48", "--json", out]) == 0
    rows = read_json(out)["rows"]
    assert [r["reliability"] for r in rows] == ["best_effort", "reliable"]
    assert all(0 < r["received"] <= r["sent"] == 5 for r in rows)


def test_train_flops_counts_convolution_work():
    """benchmarks/train_flops.py: a step's FLOPs grow with the pixels; ERFNet's first layer alone
    (3x3 conv 3 -> 13 channels at half resolution, forward) is a floor that can be counted by hand."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_flops.py"
    spec = importlib.util.spec_from_file_location("train_flops", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    small, large = tool.step_flops("erfnet", 32), tool.step_flops("erfnet", 64)
    assert large == pytest.approx(4 * small, rel=0.05)
    first_conv = 2 * 13 * 3 * 9 * 16 * 16 * tool.BATCH["erfnet"]
    assert small > 3 * first_conv
