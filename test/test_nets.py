"""Networks: sizes from the papers, any input size, ONNX parity, unpooling, BN folding, tracing."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from enet_seg_ros.nets import build_model, count_parameters, fold_batchnorm, list_archs, split_concat_norms
from enet_seg_ros.nets.enet import local_to_flat_indices, max_pool2x2_with_argmax, max_unpool2x2
from enet_seg_ros.nets.espnet import ESPModule
from model_fixtures import randomize

torch.set_num_threads(1)  # 2 shared cores: more threads only oversubscribe them
ARCHS = ["enet", "erfnet", "espnet", "espnet_c"]


def _model(arch: str, num_classes: int = 20, **options) -> nn.Module:
    torch.manual_seed(0)
    return randomize(build_model(arch, num_classes, **options))


def test_list_archs_and_unknown_arch():
    assert list_archs() == ARCHS
    with pytest.raises(ValueError, match="unknown arch"):
        build_model("segnet", 20)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("erfnet", 0)


@pytest.mark.parametrize("arch,low,high", [
    ("enet", 345_000, 375_000),                     # ENet paper 0.37M, ESPNet paper 0.364M
    ("erfnet", 2_060_000 * 0.97, 2_060_000 * 1.03),  # ERFNet paper 2.06M
    ("espnet", 364_000 * 0.97, 364_000 * 1.03),      # ESPNet paper 0.364M
])
def test_parameter_counts_match_papers(arch, low, high):
    n = count_parameters(build_model(arch, 20))
    assert low <= n <= high, "{}: {} parameters".format(arch, n)


def test_espnet_counts_match_published_checkpoints():
    # Parameter counts of the authors' Cityscapes checkpoints (p=2, q=8, 20 outputs).
    assert count_parameters(build_model("espnet", 20)) == 364_569
    assert count_parameters(build_model("espnet_c", 20)) == 349_449
    # The CamVid checkpoint: 12 outputs, decoder merge takes level-1 features + image (19 + C).
    assert count_parameters(build_model("espnet", 12, decoder_concat_input=True)) == 354_517


def test_espnet_p_q_options_change_depth():
    small = build_model("espnet", 20, p=1, q=3)
    assert len(small.encoder.level2) == 1 and len(small.encoder.level3) == 3
    assert count_parameters(small) < count_parameters(build_model("espnet", 20))
    with pytest.raises(ValueError):
        build_model("espnet", 20, p=0)
    with pytest.raises(ValueError, match="num_classes must be >= 5"):
        build_model("espnet", 4)
    assert build_model("espnet_c", 2)(torch.randn(1, 3, 16, 16)).shape == (1, 2, 16, 16)


def test_esp_module_structure():
    m = ESPModule(64, 64)
    assert m.residual
    assert [b.dilation[0] for b in m.branches] == [1, 2, 4, 8, 16]
    assert [b.out_channels for b in m.branches] == [16, 12, 12, 12, 12]  # N/K, remainder in branch 1
    assert m.reduce.kernel_size == (1, 1)
    strided = ESPModule(19, 64, stride=2)
    assert not strided.residual and strided.reduce.stride == (2, 2)
    x = torch.randn(1, 19, 16, 24)
    assert strided(x).shape == (1, 64, 8, 12)
    with pytest.raises(ValueError):
        ESPModule(40, 20, residual=True)


def test_espnet_c_weights_fit_espnet_encoder():
    # Two-stage training: an ESPNet-C state dict initialises ESPNet's encoder as is.
    c = build_model("espnet_c", 20).state_dict()
    full = build_model("espnet", 20).state_dict()
    assert set(c) <= set(full)
    assert all(c[k].shape == full[k].shape for k in c)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("height,width", [(359, 641), (53, 97), (8, 8), (1, 13)])
def test_output_size_equals_input_size(arch, height, width):
    model = build_model(arch, 7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, height, width))
    assert out.shape == (1, 7, height, width)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_only_returns_one_eighth(arch):
    model = build_model(arch, 5).eval()
    model.encoder_only = True
    with torch.no_grad():
        out = model(torch.randn(2, 3, 53, 97))
    assert out.shape == (2, 5, 7, 13)  # ceil(53 / 8), ceil(97 / 8)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_step_gives_gradients(arch):
    model = build_model(arch, 6).train()
    out = model(torch.randn(2, 3, 32, 48))
    loss = nn.functional.cross_entropy(out, torch.randint(0, 6, (2, 32, 48)))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[:5])
    assert torch.isfinite(loss)


@pytest.mark.parametrize("arch", ARCHS)
def test_eval_mode_is_deterministic(arch):
    model = _model(arch, 6)
    x = torch.randn(1, 3, 29, 37)
    with torch.no_grad():
        a, b = model(x), model(x.clone())
    assert torch.equal(a, b)
    model.train()  # dropout active: outputs must differ, proving eval() is what makes them equal
    if any(isinstance(m, nn.Dropout2d) and m.p > 0 for m in model.modules()):
        with torch.no_grad():
            assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("arch", ARCHS)
def test_trace_has_no_value_dependent_branches(arch):
    """A trace recorded on one input must reproduce eager outputs on inputs of very different values."""
    model = _model(arch, 5)
    shape = (1, 3, 21, 27)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(model, torch.randn(shape), check_trace=False)
    # Shape reads become constants (fine: shapes are static per export); truth values of tensors never.
    assert not [w for w in caught if "Python boolean" in str(w.message)]
    with torch.no_grad():
        for x in (torch.zeros(shape), -torch.ones(shape), torch.rand(shape) * 255):
            torch.testing.assert_close(traced(x), model(x), atol=1e-4, rtol=1e-4)


def _onnx_ops(path) -> set:
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_export_matches_onnxruntime(arch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _model(arch, 11)
    x = torch.randn(1, 3, 45, 67)  # odd size: padding and cropping are in the graph
    path = tmp_path / "{}.onnx".format(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False,
                          input_names=["image"], output_names=["logits"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 45, 67) * 4 - 2  # not the export input: the graph must not depend on its values
    got = session.run(["logits"], {"image": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    assert got.shape == (1, 11, 45, 67)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    ops = _onnx_ops(path)
    assert "MaxUnpool" not in ops
    if arch == "enet":
        # TensorRT has neither MaxUnpool nor MaxPool-with-indices.
        import onnx

        pools = [n for n in onnx.load(str(path)).graph.node if n.op_type == "MaxPool"]
        assert all(len(n.output) == 1 for n in pools)


def test_unpool_matches_torch_including_ties():
    torch.manual_seed(0)
    # Few distinct values: most 2x2 windows contain ties, which must break like nn.MaxPool2d.
    x = torch.randint(0, 3, (2, 5, 12, 18)).float()
    pool = nn.MaxPool2d(2, stride=2, return_indices=True)
    unpool = nn.MaxUnpool2d(2, stride=2)
    ref_values, ref_indices = pool(x)
    values, argmax = max_pool2x2_with_argmax(x)
    assert torch.equal(values, ref_values)
    assert torch.equal(local_to_flat_indices(argmax, x.shape[-1]), ref_indices)
    y = torch.randn_like(values)  # decoder features differ from the pooled values
    assert torch.equal(max_unpool2x2(y, argmax), unpool(y, ref_indices, output_size=x.shape))
    # The torch backend runs channels_last: same values and indices there.
    values_cl, argmax_cl = max_pool2x2_with_argmax(x.contiguous(memory_format=torch.channels_last))
    assert torch.equal(values_cl, ref_values) and torch.equal(argmax_cl, argmax)
    # All-equal windows and negative values.
    x = -torch.ones(1, 1, 4, 4)
    values, argmax = max_pool2x2_with_argmax(x)
    assert torch.equal(argmax, torch.zeros_like(argmax))
    assert torch.equal(max_unpool2x2(values, argmax), unpool(*pool(x)))


@pytest.mark.parametrize("arch,options", [("espnet", {}), ("espnet", {"decoder_concat_input": True}), ("espnet_c", {})])
def test_concat_norms_split_per_part_keep_outputs(arch, options):
    model = fold_batchnorm(_model(arch, 12, **options))
    x = torch.randn(2, 3, 43, 61)
    with torch.no_grad():
        ref = model(x)
        split = split_concat_norms(model)
        switched = [m for m in split.modules() if getattr(m, "split_norm", False)]
        # 12 ESP modules and 3 BN-PReLUs on concatenations in the encoder (p=2, q=8), one of each in the decoder
        assert len(switched) == (17 if arch == "espnet" else 15)
        torch.testing.assert_close(split(x), ref, atol=1e-5, rtol=1e-5)
    # Training mode keeps the concatenated form: batch statistics and running updates as before.
    train_ref = _model(arch, 12, **options).train()
    train_split = split_concat_norms(_model(arch, 12, **options)).train()
    torch.testing.assert_close(train_split(x), train_ref(x))
    for a, b in zip(train_ref.buffers(), train_split.buffers()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("arch", ARCHS)
def test_batchnorm_folding_keeps_outputs(arch):
    model = _model(arch, 9)
    folded = fold_batchnorm(model)
    x = torch.randn(1, 3, 43, 61)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)

    def n_bn(m: nn.Module) -> int:
        return sum(isinstance(c, nn.BatchNorm2d) for c in m.modules())

    def n_active(m: nn.Module) -> int:
        return sum(not isinstance(c, nn.Identity) for c in m.modules())

    assert n_bn(folded) < n_bn(model)
    assert n_active(folded) < n_active(model)
    assert n_bn(model) == n_bn(build_model(arch, 9))  # the original is left untouched
