"""TensorRT backend, the parts that need no GPU: cache keying (environment digest), stale /
corrupt engine detection, store-after-deserialise, builder choice and record, dtype map, Q/DQ
input checks. Real engine builds are in test_gpu_tensorrt.py (skipped without TensorRT)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from enet_seg_ros.engine.backends.tensorrt_backend import (ENGINE_SUFFIX, TORCH2TRT_BROKEN, TRT_TO_TORCH,
                                                           check_qdq_onnx, choose_builder, engine_env, engine_fields,
                                                           fetch_engine, restore_torch_functions, store_engine,
                                                           tensorrt_status, torch_dtype_name)
from enet_seg_ros.engine.cache import ArtifactCache
from enet_seg_ros.engine.registry import create_backend

MAGIC = b"ENGINE:"


def _deserialize(data: bytes):
    """Stand-in for trt.Runtime.deserialize_cuda_engine: None for bytes it does not accept."""
    return data[len(MAGIC):].decode() if data.startswith(MAGIC) else None


@pytest.fixture()
def cache(tmp_path):
    return ArtifactCache(tmp_path, "tensorrt")


def test_engine_key_covers_weights_size_precision_and_calibration():
    base = engine_fields("a" * 64, "enet", (1280, 720), "fp16")
    variants = [
        engine_fields("b" * 64, "enet", (1280, 720), "fp16"),
        engine_fields("a" * 64, "enet", (640, 360), "fp16"),
        engine_fields("a" * 64, "enet", (1280, 720), "fp32"),
        engine_fields("a" * 64, "enet", (1280, 720), "int8", calibration="c1"),
        engine_fields("a" * 64, "enet", (1280, 720), "int8", calibration="c2"),
    ]
    store = ArtifactCache("/nonexistent", "tensorrt")
    names = {store.paths(f, ENGINE_SUFFIX)[0].name for f in [base] + variants}
    assert len(names) == 6
    assert store.paths(base, ENGINE_SUFFIX)[0].name.startswith("enet-1280x720-fp16_")


def test_cached_engine_is_loaded_when_everything_matches(cache):
    fields = engine_fields("a" * 64, "enet", (640, 360), "fp16")
    env = engine_env("10.3.0", "Orin", (8, 7))
    cache.store(fields, ENGINE_SUFFIX, MAGIC + b"net", env)
    engine, reason, info = fetch_engine(cache, fields, env, _deserialize)
    assert engine == "net" and reason == ""


@pytest.mark.parametrize("change", [
    {"tensorrt": "10.4.0"},                       # TensorRT upgraded
    {"gpu": "NVIDIA GeForce RTX 4090"},           # copied to another GPU
    {"compute_capability": "8.9"},
])
def test_stale_engine_from_other_tensorrt_or_gpu_is_rebuilt(cache, change):
    fields = engine_fields("a" * 64, "enet", (640, 360), "fp16")
    env = engine_env("10.3.0", "Orin", (8, 7))
    path = cache.store(fields, ENGINE_SUFFIX, MAGIC + b"net", env)
    engine, reason, info = fetch_engine(cache, fields, dict(env, **change), _deserialize)
    assert engine is None and "different environment" in reason
    assert not path.exists(), "a stale engine is deleted so it is rebuilt, never trusted"


def test_corrupt_or_undeserialisable_engine_is_rebuilt(cache):
    fields = engine_fields("a" * 64, "enet", (640, 360), "fp16")
    env = engine_env("10.3.0", "Orin", (8, 7))
    path = cache.store(fields, ENGINE_SUFFIX, MAGIC + b"net", env)
    path.write_bytes(MAGIC + b"nXt")  # bit rot: digest mismatch
    engine, reason, info = fetch_engine(cache, fields, env, _deserialize)
    assert engine is None and "hash mismatch" in reason and not path.exists()

    # Bytes whose digest matches but that TensorRT refuses (e.g. truncated at build time).
    path = cache.store(fields, ENGINE_SUFFIX, b"garbage", env)
    engine, reason, info = fetch_engine(cache, fields, env, _deserialize)
    assert engine is None and "deserialize" in reason and not path.exists()

    # Missing sidecar (crash between artefact and sidecar write).
    path = cache.store(fields, ENGINE_SUFFIX, MAGIC + b"net", env)
    path.with_name(path.name + ".json").unlink()
    engine, reason, info = fetch_engine(cache, fields, env, _deserialize)
    assert engine is None and "sidecar" in reason


def test_sidecar_records_what_the_engine_was_built_for(cache):
    fields = engine_fields("a" * 64, "espnet", (1024, 512), "int8", calibration="abc")
    env = engine_env("8.6.2", "Orin", (8, 7))
    path = cache.store(fields, ENGINE_SUFFIX, MAGIC + b"x", env)
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    assert meta["env"] == {"tensorrt": "8.6.2", "gpu": "Orin", "compute_capability": "8.7"}
    assert meta["fields"]["calibration"] == "abc" and meta["fields"]["size"] == "1024x512"


def test_two_environments_sharing_a_cache_keep_their_own_engines(cache):
    """Item 6: the environment digest is in the key, so an Orin engine and an RTX engine coexist."""
    orin, rtx = engine_env("10.3.0", "Orin", (8, 7)), engine_env("10.3.0", "NVIDIA GeForce RTX 4090", (8, 9))
    f_orin = engine_fields("a" * 64, "enet", (640, 360), "fp16", env=orin)
    f_rtx = engine_fields("a" * 64, "enet", (640, 360), "fp16", env=rtx)
    assert cache.paths(f_orin, ENGINE_SUFFIX) != cache.paths(f_rtx, ENGINE_SUFFIX)
    cache.store(f_orin, ENGINE_SUFFIX, MAGIC + b"orin", orin)
    cache.store(f_rtx, ENGINE_SUFFIX, MAGIC + b"rtx", rtx)
    assert fetch_engine(cache, f_orin, orin, _deserialize)[0] == "orin"
    assert fetch_engine(cache, f_rtx, rtx, _deserialize)[0] == "rtx"
    other_trt = engine_env("10.7.0", "Orin", (8, 7))
    assert engine_fields("a" * 64, "enet", (640, 360), "fp16", env=other_trt) != f_orin


def test_engine_is_stored_only_after_it_deserialises_and_records_its_builder(cache):
    """Item 7: bytes TensorRT cannot load never reach the cache; a hit reports the real builder."""
    env = engine_env("10.3.0", "Orin", (8, 7))
    fields = engine_fields("a" * 64, "espnet", (640, 360), "fp16", env=env, builder="torch2trt")
    with pytest.raises(RuntimeError, match="deserialize"):
        store_engine(cache, fields, env, b"garbage", _deserialize, "torch2trt")
    assert not cache.paths(fields, ENGINE_SUFFIX)[0].exists()
    # torch2trt was asked for but the ONNX parser built it (fallback): the sidecar says so.
    assert store_engine(cache, fields, env, MAGIC + b"net", _deserialize, "onnx") == "net"
    engine, reason, info = fetch_engine(cache, fields, env, _deserialize)
    assert engine == "net" and info == {"builder": "onnx"}


def test_builder_defaults_to_the_onnx_parser_and_torch2trt_is_opt_in_per_arch():
    assert choose_builder("espnet", None) == ("onnx", "")
    assert choose_builder("espnet", "onnx", torch2trt_installed=True) == ("onnx", "")
    assert choose_builder("espnet", "torch2trt", torch2trt_installed=True) == ("torch2trt", "")
    for arch in ("enet", "erfnet"):  # known mis-conversions: never torch2trt, even when listed
        assert choose_builder(arch, "torch2trt", [arch], True) == ("onnx", TORCH2TRT_BROKEN[arch])
    b, why = choose_builder("espnet", "torch2trt", ["espnet_c"], True)
    assert b == "onnx" and "not enabled for espnet" in why
    b, why = choose_builder("espnet", "torch2trt", None, False)
    assert b == "onnx" and "not installed" in why
    with pytest.raises(ValueError, match="builder"):
        choose_builder("enet", "polygraphy")


def test_dtype_map_covers_every_tensorrt_io_type_torch_has():
    """Item 8: bf16 / int64 / bool mapped (names as in TensorRT's pyFoundationalTypes.cpp)."""
    class FakeEnum:  # only the ``.name`` of TensorRT's pybind11 enum is read
        def __init__(self, name):
            self.name = name

    for trt_name, torch_name in TRT_TO_TORCH.items():
        assert torch_dtype_name(FakeEnum(trt_name)) == torch_name
        assert isinstance(getattr(torch, torch_name), torch.dtype)
    assert {"BF16", "INT64", "BOOL", "UINT8"} <= set(TRT_TO_TORCH)
    with pytest.raises(ValueError, match="FP8"):
        torch_dtype_name(FakeEnum("FP8"))


def test_restore_torch_functions_puts_back_what_a_failed_conversion_left_patched():
    import torch.nn.functional as F

    original = F.max_pool2d
    with pytest.raises(RuntimeError):
        with restore_torch_functions() as guard:
            F.max_pool2d = lambda *a, **k: None  # what a converter hook does
            raise RuntimeError("converter failed midway")
    assert F.max_pool2d is original and guard.restored == ["torch.nn.functional.max_pool2d"]

    # What torch2trt's ConversionContext.__enter__ does to torch.Tensor (class attributes that
    # normally come from the C base class), left behind by a failure before its __exit__.
    size = torch.Tensor.size
    with pytest.raises(RuntimeError):
        with restore_torch_functions() as guard:
            torch.Tensor.size = lambda self, *a: (0,)
            raise RuntimeError("failed inside __enter__")
    assert "size" not in vars(torch.Tensor) and torch.Tensor.size is size
    assert torch.zeros(2, 3).size() == (2, 3) and guard.restored == ["torch.Tensor.size (removed)"]


def test_qdq_onnx_is_checked_before_building(tmp_path):
    """Int8 from a Q/DQ graph: the 'network' flavour with Q/DQ nodes at the right size."""
    import onnx
    from onnx import TensorProto, helper

    def graph(path, op_types, in_name="input", shape=(1, 3, 48, 64)):
        nodes, prev = [], in_name
        for i, op in enumerate(op_types):
            ins = [prev] + (["s", "z"] if op in ("QuantizeLinear", "DequantizeLinear") else [])
            nodes.append(helper.make_node(op, ins, ["t{}".format(i)]))
            prev = "t{}".format(i)
        nodes.append(helper.make_node("Identity", [prev], ["logits"]))
        inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
        onnx.save(helper.make_model(g), str(path))
        return path

    good = graph(tmp_path / "q.onnx", ["QuantizeLinear", "DequantizeLinear"])
    assert len(check_qdq_onnx(good, (64, 48))) == 64
    with pytest.raises(ValueError, match="not a Q/DQ graph"):
        check_qdq_onnx(graph(tmp_path / "f.onnx", ["Relu"]), (64, 48))
    with pytest.raises(ValueError, match="'network' flavour"):
        check_qdq_onnx(graph(tmp_path / "i.onnx", ["QuantizeLinear", "DequantizeLinear"], in_name="image"), (64, 48))
    with pytest.raises(ValueError, match="does not match"):
        check_qdq_onnx(good, (128, 96))
    with pytest.raises(ValueError, match="not found"):
        check_qdq_onnx(tmp_path / "missing.onnx", (64, 48))

    # What onnx-tensorrt's parser refuses: an int32 (bias) DequantizeLinear, non-zero zero points.
    def edited(name, change):
        proto = onnx.load(str(good))
        change(proto)
        path = tmp_path / name
        onnx.save(proto, str(path))
        return path

    def int32_bias(proto):
        proto.graph.initializer.extend([helper.make_tensor("b", TensorProto.INT32, [2], [1, 2]),
                                        helper.make_tensor("bs", TensorProto.FLOAT, [], [0.01])])
        proto.graph.node.insert(0, helper.make_node("DequantizeLinear", ["b", "bs"], ["bias_f"], name="bias_dq"))

    def asymmetric(proto):
        for init in proto.graph.initializer:
            if init.name == "z":
                init.CopyFrom(helper.make_tensor("z", TensorProto.INT8, [], [3]))

    def uint8(proto):
        for init in proto.graph.initializer:
            if init.name == "z":
                init.CopyFrom(helper.make_tensor("z", TensorProto.UINT8, [], [0]))

    with pytest.raises(ValueError, match="DequantizeLinear bias_dq of a INT32 tensor"):
        check_qdq_onnx(edited("bias.onnx", int32_bias), (64, 48))
    with pytest.raises(ValueError, match="non-zero zero point"):
        check_qdq_onnx(edited("asym.onnx", asymmetric), (64, 48))
    with pytest.raises(ValueError, match="UINT8 zero points"):
        check_qdq_onnx(edited("u8.onnx", uint8), (64, 48))


def test_tensorrt_is_skipped_cleanly_without_a_gpu(tmp_path):
    ok, why = tensorrt_status()
    if ok:
        pytest.skip("TensorRT is available here; covered by the GPU test")
    from enet_seg_ros.data.labels import get_label_spec
    from enet_seg_ros.engine.source import load_source
    from enet_seg_ros.nets import build_model
    from enet_seg_ros.weights import ModelCard

    card = ModelCard.for_dataset("enet", get_label_spec("camvid"), [64, 48])
    source = load_source((build_model("enet", 11), card))
    with pytest.raises(RuntimeError, match="tensorrt-cuda: "):
        create_backend(source, (64, 48), backend="tensorrt", strict=True, cache_dir=tmp_path)
    assert why


def test_legacy_exporter_selected_on_torch_with_and_without_the_dynamo_parameter():
    """Item 10: ``dynamo=False`` only where torch.onnx.export has the parameter (torch >= 2.5)."""
    from enet_seg_ros.engine.export import legacy_exporter_kwargs

    def export_2_3(model, args, f, export_params=True, verbose=False, training=None, input_names=None,
                   output_names=None, operator_export_type=None, opset_version=None, do_constant_folding=True,
                   dynamic_axes=None, keep_initializers_as_inputs=None, custom_opsets=None,
                   export_modules_as_functions=False, autograd_inlining=True):
        """The pre-2.5 signature: no dynamo, no **kwargs."""

    def export_2_5(model, args, f, *, opset_version=None, dynamo=False, **kwargs):
        """The 2.5+ shape of it."""

    assert legacy_exporter_kwargs(export_2_3) == {}
    assert legacy_exporter_kwargs(export_2_5) == {"dynamo": False}
    assert legacy_exporter_kwargs() == {"dynamo": False}  # this torch (>= 2.5)


def test_fp16_network_graph_for_strongly_typed_tensorrt():
    """TensorRT 11 builds fp16 only from a typed graph: the 'network' flavour in float16."""
    import onnx

    from enet_seg_ros.data.labels import get_label_spec
    from enet_seg_ros.engine.export import export_onnx_bytes
    from enet_seg_ros.engine.source import load_source
    from enet_seg_ros.nets import build_model
    from enet_seg_ros.weights import ModelCard

    card = ModelCard.for_dataset("espnet", get_label_spec("camvid"), [64, 48])
    source = load_source((build_model("espnet", 11), card))
    proto = onnx.load_from_string(export_onnx_bytes(source, (64, 48), flavour="network", half=True))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "input" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 48, 64]
    assert out.name == "logits" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {i.data_type for i in proto.graph.initializer} <= {onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64}
    with pytest.raises(ValueError, match="network"):
        export_onnx_bytes(source, (64, 48), flavour="full", half=True)


def test_the_quantisers_network_graph_is_what_the_tensorrt_int8_build_accepts(tmp_path):
    """i13's int8_onnx(flavour="network") output passes the TensorRT backend's Q/DQ checks."""
    import cv2
    import onnx

    from enet_seg_ros.data.labels import get_label_spec
    from enet_seg_ros.engine.quantize import Int8Request, int8_onnx
    from enet_seg_ros.engine.source import load_source
    from enet_seg_ros.nets import build_model
    from enet_seg_ros.weights import ModelCard

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(calib / "f{}.png".format(i)), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    card = ModelCard.for_dataset("espnet", get_label_spec("camvid"), [64, 48])
    source = load_source((build_model("espnet", 11), card))
    path = int8_onnx(ArtifactCache(tmp_path / "cache", "onnx"), source, (64, 48), Int8Request(calib, limit=3),
                     flavour="network")
    assert len(check_qdq_onnx(path, (64, 48))) == 64
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


# The operators the networks' graphs use, each supported by TensorRT's ONNX parser (onnx-tensorrt
# docs/operators.md, TensorRT 8.4 to 10.x); a new operator must be checked there before it joins.
TENSORRT_ONNX_OPS = {"Add", "AveragePool", "BatchNormalization", "Cast", "Concat", "Constant", "ConstantOfShape",
                     "Conv", "ConvTranspose", "DepthToSpace", "Equal", "Gather", "Identity", "MaxPool", "Mul", "Not", "Pad",
                     "PRelu", "Relu", "Reshape", "Shape", "Slice", "Transpose", "Unsqueeze"}


@pytest.mark.parametrize("half", [False, True], ids=["fp32", "fp16"])
@pytest.mark.parametrize("arch", ["enet", "espnet", "erfnet"])
def test_network_graphs_use_only_what_the_tensorrt_onnx_parser_takes(arch, half):
    """The graph the TensorRT backend builds from (``network`` flavour, the shipped 480x360): its
    operators and the parser's restrictions on them (weights and axes as initializers, no pooling
    indices, 2D pooling and convolutions)."""
    import onnx

    from enet_seg_ros.data.labels import get_label_spec
    from enet_seg_ros.engine.export import export_onnx_bytes
    from enet_seg_ros.engine.source import load_source
    from enet_seg_ros.nets import build_model
    from enet_seg_ros.weights import ModelCard

    card = ModelCard.for_dataset(arch, get_label_spec("camvid"), [480, 360])
    source = load_source((build_model(arch, 11), card))
    proto = onnx.load_from_string(export_onnx_bytes(source, (480, 360), flavour="network", half=half))
    ops = {n.op_type for n in proto.graph.node}
    assert ops <= TENSORRT_ONNX_OPS, "not checked against TensorRT's parser: {}".format(sorted(ops - TENSORRT_ONNX_OPS))
    constants = {i.name for i in proto.graph.initializer} | {o for n in proto.graph.node if n.op_type == "Constant"
                                                             for o in n.output}
    for n in proto.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type in ("Conv", "ConvTranspose"):
            assert n.input[1] in constants, "{}: weights must be an initializer".format(n.name)
            assert len(attrs.get("kernel_shape", [1, 1])) == 2
        elif n.op_type in ("MaxPool", "AveragePool"):
            assert len(n.output) == 1 and len(attrs["kernel_shape"]) == 2  # no Indices output
        elif n.op_type == "Slice" and len(n.input) > 3:
            assert n.input[3] in constants, "{}: Slice axes must be an initializer".format(n.name)
        elif n.op_type == "Unsqueeze":
            assert n.input[1] in constants
        elif n.op_type == "Pad":
            assert attrs.get("mode", b"constant") == b"constant"
