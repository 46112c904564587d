"""``enet-seg bench``: JSON schema on a tiny run, FLOP counting convention, Markdown output."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from torch import nn

from enet_seg_ros.bench import count_macs
from enet_seg_ros.commands import bench as bench_cmd

torch.set_num_threads(1)
RESULT_KEYS = {"arch", "backend", "precision", "width", "height", "ms_median", "ms_p90", "fps", "gflops", "params",
               "fp16_mb", "speedup_vs_eager", "end_to_end_ms_median"}


def _bench(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    bench_cmd.add_arguments(parser)
    return bench_cmd.run(parser.parse_args(list(argv)))


def test_bench_json_schema_on_a_tiny_run(tmp_path, capsys):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert _bench("--arch", "enet", "--backend", "torch,onnxruntime,tensorrt", "--size", "64x48,96x64",
                  "--runs", "2", "--warmup", "1", "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
                  "--json", str(out), "--markdown", str(md)) == 0
    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "results"}
    machine = report["machine"]
    for key in ("cpu", "cores", "threads", "torch", "onnxruntime", "tensorrt", "gpu", "matmul_gflops_fp32", "date"):
        assert key in machine
    assert machine["threads"] == 1 and machine["matmul_gflops_fp32"] > 0
    results = report["results"]
    # eager baseline + torch + onnxruntime per size; tensorrt is skipped (with a reason) without a GPU.
    expected = 3 + (1 if torch.cuda.is_available() else 0)
    assert len(results) == 2 * expected
    for rec in results:
        assert RESULT_KEYS <= set(rec), RESULT_KEYS - set(rec)
        assert rec["arch"] == "enet" and (rec["width"], rec["height"]) in ((64, 48), (96, 64))
        assert rec["ms_median"] > 0 and rec["ms_p90"] >= rec["ms_median"] * 0.999
        assert rec["fps"] == pytest.approx(1000 / rec["ms_median"], rel=0.01)
        assert 0.34e6 < rec["params"] < 0.38e6 and rec["fp16_mb"] == pytest.approx(rec["params"] * 2 / 1e6, rel=1e-3)
        assert rec["end_to_end_ms_median"] > 0 and rec["gflops"] > 0
    eager = [r for r in results if r["backend"] == "torch-eager"]
    assert len(eager) == 2 and all(r["speedup_vs_eager"] == 1.0 for r in eager)
    for base in eager:
        # Timed before and after the block's backends; the faster median is the baseline.
        assert len(base["eager_ms_medians"]) == 2 and base["ms_median"] == min(base["eager_ms_medians"])
        for rec in results:
            if rec["width"] == base["width"] and rec is not base:
                assert rec["speedup_vs_eager"] == pytest.approx(base["ms_median"] / rec["ms_median"], rel=1e-2)
    by_size = {r["width"]: r["gflops"] for r in eager}
    assert by_size[96] == pytest.approx(by_size[64] * 2, rel=0.1)  # FLOPs scale with pixels
    if not torch.cuda.is_available():
        assert any(s["backend"] == "tensorrt" for s in report["skipped"])
    text = md.read_text()
    assert "| arch | backend |" in text and "torch-eager" in text and "onnxruntime" in text
    assert "GEMM" in capsys.readouterr().out


def test_flop_convention_counts_conv_multiply_adds():
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 4, 2, stride=2))
    macs = count_macs(conv, (10, 6))
    assert macs == 6 * 10 * 8 * 3 * 9 + 6 * 10 * 8 * 4 * 4


def test_enet_gflops_match_the_paper_scale():
    from enet_seg_ros.nets import build_model

    # ENet at 640x360 is ~1.7 G multiply-adds (the paper's 3.83 GFLOPs at 1024x512 scaled).
    macs = count_macs(build_model("enet", 20), (640, 360))
    assert 1.5e9 < macs < 1.9e9


def test_bench_rejects_unknown_choices(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        _bench("--arch", "segnet", "--runs", "1")
    with pytest.raises(ValueError, match="unknown backend"):
        _bench("--arch", "enet", "--backend", "coreml", "--runs", "1")
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        _bench("--arch", "enet", "--size", "640", "--runs", "1")


def test_every_lossy_row_reports_agreement_vs_fp32(tmp_path):
    import cv2
    import numpy as np

    from enet_seg_ros.bench.runner import synthetic_frame

    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(4):
        cv2.imwrite(str(calib / "{}.png".format(i)), synthetic_frame(96, 64, seed=i))
    out = tmp_path / "bench.json"
    assert _bench("--arch", "enet", "--backend", "onnxruntime", "--precision", "fp32,int8", "--size", "96x64",
                  "--runs", "2", "--warmup", "1", "--threads", "1", "--calib", str(calib),
                  "--cache-dir", str(tmp_path / "cache"), "--json", str(out)) == 0
    rows = {r["precision"]: r for r in json.loads(out.read_text())["results"] if r["backend"] == "onnxruntime"}
    assert set(rows) == {"fp32", "int8"}
    assert "agreement_vs_fp32" not in rows["fp32"]  # exact rows need none
    lossy = rows["int8"]
    assert 0.0 <= lossy["agreement_vs_fp32"] <= 1.0 and lossy["agreement_frames"] == 1
    assert lossy["agreement_source"] == "benchmark frame"
    assert np.isfinite(lossy["ms_median"])
