import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_resnet_speed import flops, presets, train
from jax_resnet_speed.data import in_memory


def resnet9_macs(widths) -> tuple[int, int]:
    """Post 4's ResNet-9 by hand: multiply-adds per image of its first conv, and of every other conv
    (3x3, "same") and the head."""
    c0, c1, c2, c3 = widths
    prep = 32 * 32 * 9 * 3 * c0
    rest = (32 * 32 * 9 * c0 * c1  # layer 1's conv runs before its pool
            + 2 * 16 * 16 * 9 * c1 * c1  # residual block 1
            + 16 * 16 * 9 * c1 * c2 + 8 * 8 * 9 * c2 * c3  # layers 2 and 3
            + 2 * 4 * 4 * 9 * c3 * c3  # residual block 3
            + c3 * 10)  # the linear head
    return prep, rest


def resnet9_train_flops_per_image(widths) -> int:
    prep, rest = resnet9_macs(widths)
    # Forward, weight gradient, and input gradient for every layer but the first (the images need none).
    return 2 * (2 * prep + 3 * rest)


def resnet9_forward_flops_per_image(widths) -> int:
    return 2 * sum(resnet9_macs(widths))


def test_a_convolution_and_a_product_counted_by_hand():
    x, w = jnp.ones((8, 16, 16, 4)), jnp.ones((3, 3, 4, 6))

    def loss(w, x):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (jnp.tanh(y).mean(axis=(1, 2)) @ jnp.ones((6, 10))).sum()

    conv, dot = 2 * 8 * 16 * 16 * 6 * 9 * 4, 2 * 8 * 6 * 10
    assert flops.model_flops(loss, w, x) == conv + dot
    assert flops.model_flops(jax.grad(loss), w, x) == 2 * conv + 2 * dot  # no gradient for x or the constant
    grouped = jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 2, 6)), (1, 1), "SAME", feature_group_count=2,
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert flops.jaxpr_model_flops(jax.make_jaxpr(lambda: grouped)()) == 0  # a constant: nothing traced
    assert flops.model_flops(lambda a: jax.lax.conv_general_dilated(
        a, jnp.ones((3, 3, 2, 6)), (1, 1), "SAME", feature_group_count=2,
        dimension_numbers=("NHWC", "HWIO", "NHWC")), x) == 2 * 8 * 16 * 16 * 6 * 9 * 2


def test_a_scan_counts_its_body_once_per_iteration():
    def body(carry, _):
        return carry @ jnp.ones((4, 4)), None

    assert flops.model_flops(lambda c: jax.lax.scan(body, c, length=5)[0], jnp.ones((2, 4))) == 5 * 2 * 2 * 4 * 4


def test_the_train_step_of_a_tiny_resnet9_matches_the_count_by_hand():
    recipe = presets.get_preset("myrtle-resnet9").replace(**{"data.batch_size": 32})
    config = train.RunConfig(recipe, "fp32", 0.0625)
    images = np.zeros((64, 32, 32, 3), np.uint8)
    labels = np.zeros(64, np.int32)
    data = train.put_on_device(in_memory(images, labels, images[:10], labels[:10],
                                         np.full(3, 0.5), np.full(3, 0.25)),
                               recipe, jnp.float32)
    programs = train.build_programs(config, data)
    state = jax.eval_shape(programs.init, jax.random.key(0), data.train_padded, programs.hyper)
    batches = jax.ShapeDtypeStruct((2, 32), jnp.int32)
    counted = flops.model_flops(programs.train_step, state, data.train_padded, data.train_labels, batches)
    assert counted == 32 * resnet9_train_flops_per_image((4, 8, 16, 32))


@pytest.mark.parametrize("kind, name", [("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
                                        ("NVIDIA H200", "H200"), ("NVIDIA A100-SXM4-80GB", "A100"),
                                        ("Tesla V100-SXM2-16GB", "V100"), ("cpu", None)])
def test_device_peaks_are_found_by_device_kind(kind, name):
    peak = flops.device_peak(kind)
    assert (peak.name if peak else None) == name
    if peak:
        assert peak.source and peak.memory_tb_per_s > 0 and all(v > 0 for v in peak.tflops.values())


def test_the_measured_matmul_rate_is_positive():
    assert flops.measured_matmul_tflops(jnp.float32, 128, repeats=2) > 0
