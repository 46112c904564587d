"""int8 Q/DQ quantisation, the accuracy guard, model-card records and precision "auto" (real ONNX Runtime)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from enet_seg_ros.bench.runner import synthetic_frame
from enet_seg_ros.cli import main as cli_main
from enet_seg_ros.data.labels import get_label_spec
from enet_seg_ros.engine import Segmenter
from enet_seg_ros.engine.backends.base import BackendUnavailable
from enet_seg_ros.engine.cache import GRAPH_FORMAT, ArtifactCache
from enet_seg_ros.engine.cpu import cpu_int8_class
from enet_seg_ros.engine.quantize import (Int8Request, QuantSettings, activation_qparams, int8_onnx, qdq_summary,
                                         tensor_digest)
from enet_seg_ros.engine.source import load_source
from enet_seg_ros.evaluate.precision_guard import record_int8, record_precision, validate_int8, verdict
from enet_seg_ros.nets import build_model
from enet_seg_ros.weights import ModelCard, Normalization, read_card, save_model
from model_fixtures import randomize

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    for i in range(6):
        cv2.imwrite(str(folder / "{}.png".format(i)), synthetic_frame(120, 90, seed=i))
    return folder


def _weights(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = randomize(build_model("enet", 11), seed=seed)
    norm = Normalization(channel_order="rgb", mean=[105.0, 108.0, 110.0], std=[78.0, 79.0, 78.0])
    card = ModelCard.for_dataset("enet", get_label_spec("camvid"), [96, 64], normalization=norm)
    return save_model(folder / "enet_small.safetensors", model, card)


def test_quantize_makes_a_qdq_graph_with_per_channel_weights(tmp_path, calib_dir):
    source = load_source(_weights(tmp_path))
    cache = ArtifactCache(tmp_path / "cache", "onnx")
    path = int8_onnx(cache, source, (96, 64), Int8Request(calib_dir, limit=4))
    summary = qdq_summary(path)
    assert summary["quantize_linear"] > 0 and summary["dequantize_linear"] > summary["quantize_linear"]
    # Every convolution has int8 weights with one scale per output channel.
    assert summary["int8_weights"] == summary["convs"] == summary["per_channel_weights"] > 50
    proto = onnx.load(str(path))
    assert {"enet_seg_ros.card", "enet_seg_ros.quantization"} <= {p.key for p in proto.metadata_props}
    assert [i.name for i in proto.graph.input] == ["image"]
    # Cached: the second request finds the same file without calibration images (digest only).
    again = int8_onnx(cache, source, (96, 64), Int8Request(None, Int8Request(calib_dir, limit=4).digest()))
    assert again == path
    # Excluding the sensitive first / last convolutions keeps them in float.
    excluded = int8_onnx(cache, source, (96, 64),
                         Int8Request(calib_dir, limit=4, settings=QuantSettings(exclude=("first_conv", "last_conv"))))
    assert qdq_summary(excluded)["int8_weights"] == summary["convs"] - 2
    with pytest.raises(ValueError, match="no such node"):
        int8_onnx(cache, source, (96, 64), Int8Request(calib_dir, limit=4, settings=QuantSettings(exclude=("x",))))


def test_network_flavour_for_tensorrt_has_symmetric_int8_activations(tmp_path, calib_dir):
    source = load_source(_weights(tmp_path))
    path = int8_onnx(ArtifactCache(tmp_path / "cache", "onnx"), source, (96, 64), Int8Request(calib_dir, limit=2),
                     flavour="network")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    inits = {i.name: i for i in proto.graph.initializer}
    zero_points = [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zero_points and all(z.data_type == onnx.TensorProto.INT8 for z in zero_points)
    assert all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)


def test_int8_labels_agree_with_fp32_on_real_frames(camvid_root, tmp_path):
    weights = REPO / "models" / "espnet_camvid.safetensors"
    common = dict(backend="onnxruntime", strict=True, input_size=(240, 180), cache_dir=tmp_path, warmup=0)
    fp32 = Segmenter(weights, precision="fp32", **common)
    int8 = Segmenter(weights, precision="int8", calibration=camvid_root / "train", calibration_limit=8, **common)
    assert int8.precision == "int8" and "precision int8 (requested)" in int8.selection_reason
    frames = [cv2.imread(str(p)) for p in sorted((camvid_root / "val").glob("*.png"))[::25]]
    same = [np.mean(fp32.segment(f, "bgr").labels == int8.segment(f, "bgr").labels) for f in frames]
    assert np.mean(same) >= 0.95, same


def test_guard_verdict_applies_both_bars():
    assert verdict(0.50, 0.495, 0.99)[0]
    ok, why = verdict(0.50, 0.485, 0.99)
    assert not ok and "mIoU drop 1.50 pt > 1.00" in why
    ok, why = verdict(0.50, 0.50, 0.97)
    assert not ok and "agreement 97.00% < 98%" in why


def test_guard_rejects_a_model_that_misses_the_bar(camvid_root, tmp_path, calib_dir):
    # A random network's logits are nearly tied: int8 flips many labels, the guard must say no.
    weights = _weights(tmp_path, seed=3)
    record = validate_int8(weights, calib_dir, camvid_root / "val", backends=("onnxruntime",), size=(96, 64),
                           cache_dir=tmp_path / "cache", frame_limit=4, calibration_limit=4)
    assert record["accepted"] is False and record["backends"] == {}
    row = record["rejected"]["onnxruntime"]
    assert row["agreement_vs_fp32"] < 0.98 and "agreement" in row["verdict"]
    assert record["val_frames"] == 4 and record["weights_digest"] == tensor_digest(load_source(weights).model)
    # Recording a rejected result keeps precision auto at fp32.
    record_precision(weights, "int8", record)
    assert read_card(weights).precisions["int8"]["accepted"] is False
    seg = Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=tmp_path / "cache", warmup=0)
    assert seg.precision == "fp32" and "no validated lossy precision" in seg.selection_reason


def test_precision_auto_picks_a_validated_record_else_fp32(camvid_root, tmp_path, calib_dir):
    weights = _weights(tmp_path, seed=1)
    cache = tmp_path / "cache"
    seg = Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=cache, warmup=0)
    assert seg.precision == "fp32"  # no record: the exact default
    assert "no validated lossy precision for this model on onnxruntime cpu" in seg.selection_reason
    # A record accepted under its own (here loosened) criteria: a real validation run.
    record = validate_int8(weights, calib_dir, camvid_root / "val", backends=("onnxruntime",), size=(96, 64),
                           cache_dir=cache, frame_limit=3, calibration_limit=4, max_drop_pt=100.0, min_agreement=0.0)
    assert record["accepted"] and set(record["backends"]) == {"onnxruntime"}
    record_precision(weights, "int8", record)
    card_json = json.loads(weights.with_name("enet_small.card.json").read_text())
    assert card_json["precisions"]["int8"]["calibration_digest"] == record["calibration_digest"]
    seg = Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=cache, warmup=1)
    assert seg.precision == "int8", seg.selection_reason
    assert "precision int8 (validated in the model card" in seg.selection_reason
    assert seg.info()["selection_reason"] == seg.selection_reason
    assert seg.segment(synthetic_frame(96, 64)).labels.shape == (64, 96)
    # The torch backend has no int8 record: auto stays at its default there.
    assert Segmenter(weights, backend="torch", strict=True, warmup=0).precision == "fp32"
    # Without the cached graph and calibration images, the record's activation ranges rebuild the
    # graph (the tests at the end of this file); a record without them is skipped and fp32 runs.
    assert len(record["activation_qparams"]) > 50
    seg = Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=tmp_path / "empty", warmup=0)
    assert seg.precision == "int8", seg.selection_reason
    record_precision(weights, "int8", {k: v for k, v in record.items() if k != "activation_qparams"})
    seg = Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=tmp_path / "empty2", warmup=0)
    assert seg.precision == "fp32" and "onnxruntime-cpu/int8" in seg.backend.skipped
    record_precision(weights, "int8", record)
    # A record made for other tensors is ignored.
    other = _weights(tmp_path / "other", seed=2)
    record_precision(other, "int8", record)
    assert Segmenter(other, backend="onnxruntime", strict=True, cache_dir=cache, warmup=0).precision == "fp32"
    # So is one validated on another exported graph format (the export changed since); one made
    # before records named their format still counts.
    assert record["graph_format"] == GRAPH_FORMAT
    record_precision(weights, "int8", dict(record, graph_format=GRAPH_FORMAT - 1))
    seg = Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=cache, warmup=0)
    assert seg.precision == "fp32", seg.selection_reason
    record_precision(weights, "int8", {k: v for k, v in record.items() if k != "graph_format"})
    assert Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=cache, warmup=0).precision == "int8"


def test_doctor_self_tests_int8_through_the_card_record(camvid_root, tmp_path, calib_dir):
    from enet_seg_ros.bench.doctor import diagnose

    weights = _weights(tmp_path, seed=1)
    cache = tmp_path / "cache"

    def int8_entry(cache_dir):
        report = diagnose(weights, backends=("onnxruntime",), device="cpu", runs=1, cache_dir=cache_dir)
        return next(e for e in report["backends"] if e["precision"] == "int8")

    # No record, no --calib: listed, not run.
    entry = int8_entry(cache)
    assert not entry["usable"] and "int8 not self-tested" in entry["reason"]
    record = validate_int8(weights, calib_dir, camvid_root / "val", backends=("onnxruntime",), size=(96, 64),
                           cache_dir=cache, frame_limit=2, calibration_limit=4, max_drop_pt=100.0, min_agreement=0.0)
    record_precision(weights, "int8", record)
    # With the record, the graph it names (built by the validation, in the cache) is self-tested.
    entry = int8_entry(cache)
    assert entry["usable"] and entry["reason"] == "" and entry["ms_median"] > 0, entry
    assert 0.0 <= entry["agreement_vs_torch_fp32"] <= 1.0
    # In an empty cache the record's activation ranges rebuild it (another machine, no images) ...
    entry = int8_entry(tmp_path / "empty")
    assert entry["usable"] and entry["reason"] == "", entry
    # ... and a record without them cannot: unusable, saying what is missing.
    record_precision(weights, "int8", {k: v for k, v in record.items() if k != "activation_qparams"})
    entry = int8_entry(tmp_path / "empty2")
    assert not entry["usable"] and "calibration images" in entry["reason"], entry


def test_quantize_command_builds_and_checks_its_arguments(tmp_path, calib_dir, capsys):
    weights = _weights(tmp_path)
    out = tmp_path / "enet_int8.onnx"
    assert cli_main(["quantize", str(weights), "--calib", str(calib_dir), "--calib-frames", "3", "--size", "96x64",
                     "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    assert qdq_summary(out)["per_channel_weights"] > 0
    assert "int8 Q/DQ graphs" in capsys.readouterr().out
    assert cli_main(["quantize", str(weights), "--calib", str(calib_dir), "--record"]) == 2
    assert "--record needs --validate" in capsys.readouterr().err
    assert cli_main(["quantize", str(weights), "--calib", str(calib_dir), "--isa", "AVX2"]) == 2
    assert "--isa needs --validate" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: invalid choice
        cli_main(["quantize", str(weights), "--calib", str(calib_dir), "--weight-bits", "6"])
    assert "invalid choice: 6" in capsys.readouterr().err


def test_cpu_int8_class_reads_the_flags_and_honours_the_onednn_cap(tmp_path, monkeypatch):
    from enet_seg_ros.engine.cpu import cpu_int8_class

    vnni, plain = tmp_path / "vnni", tmp_path / "plain"
    vnni.write_text("processor : 0\nflags : fpu sse avx2 fma avx512f avx512_vnni\n")
    plain.write_text("processor : 0\nflags : fpu sse avx2 fma\n")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert cpu_int8_class(str(vnni)) == "vnni"
    assert cpu_int8_class(str(plain)) == "avx2"
    assert cpu_int8_class(str(tmp_path / "missing")) == "avx2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert cpu_int8_class(str(vnni)) == "avx2"
    assert cpu_int8_class(str(vnni), honour_cap=False) == "vnni"  # what ONNX Runtime (no cap) runs


@pytest.mark.parametrize("cap, vnni, bf16", [
    ("", True, True), ("ALL", True, True), ("SSE41", False, False), ("AVX2", False, False),
    ("AVX512_CORE", False, False), ("AVX2_VNNI", True, False), ("AVX512_CORE_VNNI", True, False),
    ("avx512_core_bf16", True, True), ("AVX512_CORE_AMX", True, True), ("AVX10_1_512_AMX_FP16", True, True)])
def test_one_reading_of_the_onednn_cap_for_int8_and_bf16(tmp_path, monkeypatch, cap, vnni, bf16):
    """The int8 class, bf16 autocast and OpenVINO bf16 all read the cap through engine.cpu."""
    from enet_seg_ros.engine.cpu import cap_allows, cpu_has_bf16, cpu_int8_class, isa_cap

    sapphire = tmp_path / "cpuinfo"
    sapphire.write_text("flags : avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8\n")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert cap_allows(isa_cap(), "vnni") is vnni and cap_allows(isa_cap(), "bf16") is bf16
    assert cpu_int8_class(str(sapphire)) == ("vnni" if vnni else "avx2")
    assert cpu_has_bf16(str(sapphire)) is bf16
    assert cpu_has_bf16(str(sapphire), honour_cap=False) is True


def test_an_int8_record_counts_only_on_the_cpu_class_it_was_validated_on(camvid_root, tmp_path, calib_dir,
                                                                          monkeypatch):
    """Measured: OpenVINO int8 ERFNet agrees 99.2 % with fp32 with VNNI, 88 % without (AVX2 kernels)."""
    from enet_seg_ros.engine.quantize import cpu_int8_class, validated_precisions

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    weights = _weights(tmp_path, seed=3)
    cache = tmp_path / "cache"
    record = validate_int8(weights, calib_dir, camvid_root / "val", backends=("onnxruntime",), size=(96, 64),
                           cache_dir=cache, frame_limit=2, calibration_limit=4, max_drop_pt=100.0, min_agreement=0.0)
    assert record["cpu_int8_class"] == cpu_int8_class()
    record_precision(weights, "int8", record)
    assert "int8" in validated_precisions(load_source(weights))
    assert Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=cache, warmup=0).precision == "int8"
    # The same record seen from the other class of CPU is not used by precision "auto".
    other = "avx2" if record["cpu_int8_class"] == "vnni" else "vnni"
    record_precision(weights, "int8", dict(record, cpu_int8_class=other))
    assert "int8" not in validated_precisions(load_source(weights))
    seg = Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=cache, warmup=0)
    assert seg.precision == "fp32", seg.selection_reason
    # Asked for explicitly, int8 still runs (the user's choice).
    assert Segmenter(weights, backend="onnxruntime", precision="int8", strict=True, cache_dir=cache,
                     warmup=0).precision == "int8"


def _max_int8_weight(path: Path) -> int:
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    weights = [inits[n.input[0]] for n in proto.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert weights
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights)


def _openvino_available() -> bool:
    from enet_seg_ros.engine.backends.openvino_backend import openvino_status

    return openvino_status()[0]


_OV_CHILD = """
import json, sys
import numpy as np
import openvino as ov
graph, frames, out = sys.argv[1:4]
core = ov.Core()
compiled = core.compile_model(core.read_model(graph), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
data = np.load(frames)["frames"]
np.save(out, np.stack([compiled({0: f[None]})[compiled.outputs[0]][0] for f in data]))
kinds = sorted({op.get_rt_info()["primitiveType"].astype(str) for op in compiled.get_runtime_model().get_ops()
                if op.get_rt_info()["layerType"].astype(str) == "Convolution"})
print(json.dumps(kinds))
"""


def _saturation_probe(path: Path, weight_max: int) -> Path:
    """One Q/DQ 3x3 convolution, u8 activations x s8 weights, whose channel 0 has every weight at
    ``weight_max``: with activations at 255 each pair of products is 2 * 255 * weight_max."""
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).integers(-weight_max, weight_max + 1, size=(4, 16, 3, 3)).astype(np.int8)
    weights[0] = weight_max
    inits = [numpy_helper.from_array(weights, "w_q"), numpy_helper.from_array(np.array(0.01, np.float32), "w_s"),
             numpy_helper.from_array(np.array(0, np.int8), "w_z"),
             numpy_helper.from_array(np.array(1 / 255, np.float32), "x_s"),
             numpy_helper.from_array(np.array(0, np.uint8), "x_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _ov_native_and_avx2(tmp_path: Path, graph: Path, frames: np.ndarray) -> dict:
    """Outputs and convolution kernels of ``graph`` in OpenVINO, natively and under ONEDNN_MAX_CPU_ISA=AVX2."""
    import os
    import subprocess
    import sys

    np.savez(tmp_path / "frames.npz", frames=frames)
    script = tmp_path / "ov_child.py"
    script.write_text(_OV_CHILD)
    runs = {}
    for name, cap in (("native", None), ("avx2", "AVX2")):
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"}
        if cap:
            env["ONEDNN_MAX_CPU_ISA"] = cap
        out = tmp_path / "{}_{}.npy".format(graph.stem, name)
        proc = subprocess.run([sys.executable, str(script), str(graph), str(tmp_path / "frames.npz"), str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = (np.load(out), json.loads(proc.stdout.strip().splitlines()[-1]))
    # Under the limit the convolutions ran oneDNN's AVX2 int8 kernels, nothing wider.
    assert any("avx2" in k and "I8" in k for k in runs["avx2"][1]), runs["avx2"][1]
    assert not any("avx512" in k or "amx" in k for k in runs["avx2"][1]), runs["avx2"][1]
    return runs


def test_seven_bit_weights_fit_in_64_and_compute_the_same_with_and_without_vnni(tmp_path, calib_dir):
    """7-bit weights (|w| <= 64) cannot saturate the 16-bit pair sums of non-VNNI int8 kernels
    (255 * 64 * 2 = 32640; 8-bit: 255 * 127 * 2 = 64770 overflows): OpenVINO under
    ONEDNN_MAX_CPU_ISA=AVX2 (its jit_avx2 int8 kernels) gives the integers it gives natively."""
    from enet_seg_ros.engine.cpu import cpu_int8_class

    source = load_source(_weights(tmp_path))
    cache = ArtifactCache(tmp_path / "cache", "onnx")
    seven_settings = QuantSettings(weight_bits=7)
    eight = int8_onnx(cache, source, (96, 64), Int8Request(calib_dir, limit=4), output="logits")
    seven = int8_onnx(cache, source, (96, 64), Int8Request(calib_dir, limit=4, settings=seven_settings),
                      output="logits")
    assert seven != eight  # its own cache entry
    assert _max_int8_weight(eight) == 127 and _max_int8_weight(seven) == 64
    # Settings made before weight_bits existed keep their cache keys / card records.
    assert "weight_bits" not in QuantSettings().to_dict()
    assert QuantSettings.from_dict(seven_settings.to_dict()) == seven_settings
    assert QuantSettings.from_dict(QuantSettings().to_dict()).weight_bits == 8
    with pytest.raises(ValueError, match="weight_bits"):
        QuantSettings(weight_bits=6)
    if not _openvino_available():
        pytest.skip("openvino not installed: the AVX2 half needs it")
    if cpu_int8_class(honour_cap=False) != "vnni":
        pytest.skip("this CPU has no VNNI: nothing to compare the AVX2 kernels with")
    # The arithmetic, on one convolution at the worst case (activations at 255, channel 0's weights
    # all at the limit): 7-bit gives the same numbers on both kernels, 8-bit saturates without VNNI.
    probe = np.ones((2, 16, 8, 8), np.float32)
    probe[1, :, ::2] = np.random.default_rng(1).random((16, 4, 8))
    for weight_max, same in ((64, True), (127, False)):
        runs = _ov_native_and_avx2(tmp_path, _saturation_probe(tmp_path / "probe{}.onnx".format(weight_max), weight_max),
                                   probe)
        native, limited = runs["native"][0], runs["avx2"][0]
        gap = np.abs(native - limited).max() / np.abs(native).max()
        assert (gap <= 1e-6) if same else (gap > 0.1), (weight_max, gap)
    # The whole 7-bit ENet graph: the same labels almost everywhere. Not bit-identical logits: on some
    # CPUs (an AMD EPYC Zen 4, 2026-11-28) OpenVINO's AVX2 and AVX-512 code paths round the float
    # epilogues between the int8 layers differently (AVX512_CORE without VNNI gives the native
    # numbers there, so it is not the int8 arithmetic), and a random network amplifies the flips.
    frames = np.stack([synthetic_frame(96, 64, seed=s) for s in range(3)])
    runs = _ov_native_and_avx2(tmp_path, Path(seven), frames)
    native, limited = runs["native"][0], runs["avx2"][0]
    assert (native.argmax(1) == limited.argmax(1)).mean() >= 0.98
    assert np.abs(native - limited).mean() <= 0.02 * np.abs(native).max()


def test_guard_validates_under_the_avx2_limit_and_the_card_keeps_one_record_per_cpu_class(
        camvid_root, tmp_path, calib_dir, monkeypatch):
    from enet_seg_ros.engine.quantize import cpu_int8_class, int8_records, validated_precisions
    from enet_seg_ros.evaluate.precision_guard import record_int8

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native = cpu_int8_class()
    weights = _weights(tmp_path, seed=1)
    cache = tmp_path / "cache"
    loose = dict(size=(96, 64), cache_dir=cache, frame_limit=2, calibration_limit=4, max_drop_pt=100.0,
                 min_agreement=0.0)
    backends = ("onnxruntime", "openvino") if _openvino_available() else ("onnxruntime",)
    here = validate_int8(weights, calib_dir, camvid_root / "val", backends=("onnxruntime",), **loose)
    assert here["cpu_int8_class"] == native and here["isa_limit"] is None
    # The AVX2 record: 7-bit weights, validated in a child process with the oneDNN ISA limited.
    seven = QuantSettings(weight_bits=7)
    avx2 = validate_int8(weights, calib_dir, camvid_root / "val", backends=backends, settings=seven, isa="AVX2",
                         **loose)
    assert avx2["cpu_int8_class"] == "avx2" and avx2["isa_limit"] == "AVX2"
    assert avx2["quantization"]["weight_bits"] == 7 and set(avx2["backends"]) == set(backends)
    if native == "vnni":  # ONNX Runtime ignored the limit: accepted for 7-bit weights only, and said so
        assert "ignores ONEDNN_MAX_CPU_ISA" in avx2["backends"]["onnxruntime"]["isa_note"]
        eight = validate_int8(weights, calib_dir, camvid_root / "val", backends=("onnxruntime",), isa="AVX2", **loose)
        assert not eight["accepted"] and "8-bit weights may saturate" in eight["unavailable"]["onnxruntime"]
    with pytest.raises(ValueError, match="isa"):
        validate_int8(weights, calib_dir, camvid_root / "val", isa="SSE9", **loose)
    # One record per class in the card: the first stays at the top (readers of precisions.int8
    # keep reading it), another class goes under by_cpu_class; re-recording a class replaces it.
    record_int8(weights, here)
    record_int8(weights, avx2)
    card = read_card(weights).precisions["int8"]
    assert card["cpu_int8_class"] == native
    assert sorted(r["cpu_int8_class"] for r in int8_records(card)) == sorted({native, "avx2"})
    record_int8(weights, here)
    assert sorted(r["cpu_int8_class"] for r in int8_records(read_card(weights).precisions["int8"])) == sorted(
        {native, "avx2"})
    card_json = json.loads(weights.with_name("enet_small.card.json").read_text())
    assert card_json["precisions"]["int8"] == read_card(weights).precisions["int8"]
    # precision auto takes the record of this CPU's class: 7-bit weights under the AVX2 limit.
    assert "weight_bits" not in validated_precisions(load_source(weights))["int8"]["quantization"] or native == "avx2"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    chosen = validated_precisions(load_source(weights))["int8"]
    assert chosen["cpu_int8_class"] == "avx2" and chosen["quantization"]["weight_bits"] == 7
    seg = Segmenter(weights, backend="onnxruntime", strict=True, cache_dir=cache, warmup=0, auto_probe=False)
    assert seg.precision == "int8", seg.selection_reason
    meta = {p.key: p.value for p in onnx.load(str(seg.backend.path)).metadata_props}
    assert "'weight_bits': 7" in meta["enet_seg_ros.quantization"]


def test_precision_auto_measures_the_validated_candidates_once_and_caches_the_choice(
        camvid_root, tmp_path, calib_dir, monkeypatch):
    from enet_seg_ros.evaluate.precision_guard import record_int8

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    weights = _weights(tmp_path, seed=1)
    cache = tmp_path / "cache"
    record = validate_int8(weights, calib_dir, camvid_root / "val", backends=("onnxruntime",), size=(96, 64),
                           cache_dir=cache, frame_limit=2, calibration_limit=4, max_drop_pt=100.0, min_agreement=0.0)
    record_int8(weights, record)
    common = dict(backend="onnxruntime", strict=True, cache_dir=cache, warmup=0)
    seg = Segmenter(weights, auto_probe=True, **common)
    measured = seg.backend.selection["measured"]
    assert measured and measured["cached"] is False and set(measured["ms"]) == {"int8", "fp32"}
    # The choice is the faster of the two as measured (ties: the static order), whichever it is.
    assert seg.precision == min(("int8", "fp32"), key=lambda p: measured["ms"][p])
    assert "fastest of the validated candidates" in seg.selection_reason and "measured now" in seg.selection_reason
    assert ("validated in the model card" if seg.precision == "int8" else
            "the backend's default: faster here than the validated lossy precisions") in seg.selection_reason
    stored = [p for p in (cache / "autoprobe").glob("*.json") if not p.name.endswith(".json.json")]
    assert len(stored) == 1 and json.loads(stored[0].read_text())["ms"] == measured["ms"]
    assert seg.segment(synthetic_frame(96, 64)).labels.shape == (64, 96)
    # A later start reuses the measurement (nothing re-timed) and builds the same precision.
    again = Segmenter(weights, auto_probe=True, **common)
    assert again.precision == seg.precision and again.backend.selection["measured"]["cached"] is True
    assert "measured at the first start, cached" in again.selection_reason
    # Anything the timing depends on (here the thread count) keys its own measurement.
    other = Segmenter(weights, auto_probe=True, threads=1, **common)
    assert other.backend.selection["measured"]["cached"] is False
    assert len([p for p in (cache / "autoprobe").glob("*.json") if not p.name.endswith(".json.json")]) == 2
    # Skipped (option or environment): the static order, said so.
    static = Segmenter(weights, auto_probe=False, **common)
    assert static.precision == "int8" and static.backend.selection["measured"] is None
    assert "static order" in static.selection_reason
    monkeypatch.setenv("ENET_SEG_AUTO_PROBE", "0")
    assert Segmenter(weights, **common).backend.selection["measured"] is None


def test_a_measurement_with_a_failed_candidate_is_measured_again(tmp_path):
    """A stored choice made while a candidate could not be built (e.g. int8 before its graph could be
    made on this machine) is not reused: it would keep the node off that precision for good."""
    from enet_seg_ros.engine.autoprobe import cached_choice, probe_fields, store_choice
    from enet_seg_ros.engine.cache import ArtifactCache

    cache = ArtifactCache(tmp_path, "autoprobe")
    fields = probe_fields("a" * 64, "openvino", "cpu", (96, 64), {"int8": {"calibration_digest": "d"},
                                                                  "default": None}, {}, "enet")
    store_choice(cache, fields, "default", {"fp32": 80.0}, failed=["int8"])
    assert cached_choice(cache, fields) is None
    store_choice(cache, fields, "int8", {"int8": 50.0, "fp32": 80.0})
    assert cached_choice(cache, fields)["choice"] == "int8"


def test_bf16_guard_judges_openvino_bf16_or_says_why_not(camvid_root, tmp_path, monkeypatch):
    """``enet-seg quantize --bf16``'s guard: real OpenVINO bf16 against ONNX Runtime fp32 where the CPU
    has bf16 units; elsewhere (an AVX2-only CPU, or the cap imitating one) a clear error, no record."""
    pytest.importorskip("openvino")
    from enet_seg_ros.engine.cpu import cpu_has_bf16
    from enet_seg_ros.evaluate.precision_guard import validate_bf16

    # a trained model: a random network's near-tied logits would make any lossy precision fail
    weights = REPO / "models" / "enet_camvid.safetensors"
    kwargs = dict(size=(160, 120), cache_dir=tmp_path / "cache", frame_limit=3, threads=1)
    if cpu_has_bf16():
        record = validate_bf16(weights, camvid_root / "val", **kwargs)
        row = (record["backends"] or record["rejected"])["openvino"]
        assert 0.9 < row["agreement_vs_fp32"] <= 1.0 and abs(row["miou_drop_pt"]) < 5
        assert record["accepted"] is (row["agreement_vs_fp32"] >= 0.98 and row["miou_drop_pt"] <= 1.0)
        assert record["val_frames"] == 3 and record["val_size"] == "160x120"
        assert record["weights_digest"] == tensor_digest(load_source(weights).model)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # what every AVX2-only CPU sees
    with pytest.raises(RuntimeError, match="no backend could run bf16: .*openvino.*AVX512-BF16 or AMX"):
        validate_bf16(weights, camvid_root / "val", **kwargs)


# -- int8 without the calibration images: the record's activation ranges --------------------------------
def _tensors(path: Path) -> dict:
    proto = onnx.load(str(path))
    return {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}


@pytest.mark.parametrize("settings", [QuantSettings(), QuantSettings(calibrate="percentile", weight_bits=7,
                                                                     exclude=("first_conv",))])
def test_record_ranges_rebuild_the_same_graph_without_images(tmp_path, calib_dir, settings):
    source = load_source(_weights(tmp_path))
    request = Int8Request(calib_dir, limit=4, settings=settings)
    made = int8_onnx(ArtifactCache(tmp_path / "a", "onnx"), source, (96, 64), request)
    qparams = activation_qparams(made)
    assert len(qparams) > 50 and all(s > 0 and 0 <= z <= 255 for s, z in qparams.values())
    # A fresh cache (another machine): no images, only the record's digest, settings and ranges.
    fresh = ArtifactCache(tmp_path / "b", "onnx")
    with pytest.raises(BackendUnavailable, match="not in the cache"):
        int8_onnx(fresh, source, (96, 64), Int8Request(None, request.digest(), settings=settings))
    again = int8_onnx(fresh, source, (96, 64), Int8Request(None, request.digest(), settings=settings, qparams=qparams))
    a, b = _tensors(made), _tensors(again)
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)  # bit-identical: every scale, zero point and weight
    # Other outputs of the same network (confidence, the comparison argmax OpenVINO uses) are covered too.
    conf = int8_onnx(fresh, source, (96, 64), Int8Request(None, request.digest(), settings=settings, qparams=qparams),
                     with_confidence=True, argmax="compare")
    assert activation_qparams(conf) == qparams


def test_ranges_that_do_not_cover_the_graph_are_refused(tmp_path, calib_dir):
    source = load_source(_weights(tmp_path))
    request = Int8Request(calib_dir, limit=4)
    qparams = activation_qparams(int8_onnx(ArtifactCache(tmp_path / "a", "onnx"), source, (96, 64), request))
    partial = dict(list(qparams.items())[:-5])
    with pytest.raises(BackendUnavailable, match="do not cover this graph"):
        int8_onnx(ArtifactCache(tmp_path / "b", "onnx"), source, (96, 64),
                  Int8Request(None, request.digest(), qparams=partial))


def test_attach_ranges_lets_a_machine_without_the_images_run_the_recorded_int8(tmp_path, calib_dir, capsys):
    source = load_source(_weights(tmp_path / "w"))
    weights = tmp_path / "enet_small.safetensors"
    save_model(weights, source.model, source.card)
    request = Int8Request(calib_dir, limit=4)
    # A record as `enet-seg quantize --record` filed them before ranges were kept (no activation_qparams).
    record_int8(weights, {"accepted": True, "backends": {"onnxruntime": {"verdict": "ok"}},
                          "calibration_digest": request.digest(), "quantization": QuantSettings().to_dict(),
                          "weights_digest": tensor_digest(source.model), "graph_format": GRAPH_FORMAT,
                          "cpu_int8_class": cpu_int8_class(), "val_size": "96x64"})
    frame = synthetic_frame(96, 64, seed=7)
    fresh = dict(backend="onnxruntime", strict=True, warmup=0, input_size=(96, 64))
    seg = Segmenter(weights, cache_dir=tmp_path / "fresh1", **fresh)
    assert seg.precision == "fp32" and "onnxruntime-cpu/int8" in seg.backend.skipped  # no images, no ranges
    # Attach the ranges (no validation) from the calibration images the record names ...
    assert cli_main(["quantize", str(weights), "--calib", str(calib_dir), "--calib-frames", "4", "--attach-ranges",
                     "--cache-dir", str(tmp_path / "here")]) == 0
    rec = read_card(weights).precisions["int8"]
    assert len(rec["activation_qparams"]) > 50
    assert rec["calibration_digest"] == request.digest()  # the rest of the record is as it was
    # ... and another machine (an empty cache, no images) runs the validated int8 graph.
    seg = Segmenter(weights, cache_dir=tmp_path / "fresh2", **fresh)
    assert seg.precision == "int8", seg.selection_reason
    with_images = Segmenter(weights, precision="int8", calibration=calib_dir, calibration_limit=4,
                            cache_dir=tmp_path / "fresh3", **fresh)
    assert np.array_equal(seg.segment(frame).labels, with_images.segment(frame).labels)
    # Images other than the record's are refused, naming the digest.
    other = tmp_path / "other_calib"
    other.mkdir()
    cv2.imwrite(str(other / "0.png"), synthetic_frame(120, 90, seed=99))
    assert cli_main(["quantize", str(weights), "--calib", str(other), "--calib-frames", "4", "--attach-ranges"]) == 2
    assert "no accepted int8 record" in capsys.readouterr().err
