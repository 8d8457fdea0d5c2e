import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from jax_resnet_speed import xla_report

ROOT = Path(__file__).resolve().parents[1]

# A tiny NHWC CNN (conv, BN, relu, strided conv, relu, pool, dense) and one SGD train step.
DUMP_SCRIPT = """
import sys
import flax.linen as nn, jax, jax.numpy as jnp, optax

dtype = {"bf16": jnp.bfloat16, "f32": jnp.float32}[sys.argv[1]]

class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.BatchNorm(use_running_average=False, dtype=dtype)(nn.Conv(8, (3, 3), dtype=dtype)(x)))
        x = nn.relu(nn.Conv(16, (3, 3), strides=2, dtype=dtype)(x))
        return nn.Dense(10, dtype=dtype)(x.mean(axis=(1, 2)))

net, tx = Tiny(), optax.sgd(0.1, momentum=0.9)
x, y = jnp.ones((4, 16, 16, 3)), jnp.zeros((4,), jnp.int32)
variables = net.init(jax.random.key(0), x)

def train_step(params, batch_stats, opt_state, x, y):
    def loss_fn(p):
        logits, updates = net.apply({"params": p, "batch_stats": batch_stats}, x, mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()
        return loss, updates["batch_stats"]
    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

params = variables["params"]
jax.jit(train_step)(params, variables["batch_stats"], tx.init(params), x, y)[3].block_until_ready()
"""

# GPU-style HLO: a fused transpose feeding a cuDNN forward conv, a cuDNN weight-gradient conv,
# a plain f32 convolution, an all-reduce, and a while loop that runs its body 3 times.
GPU_HLO = """HloModule jit_train_step, entry_computation_layout={(bf16[8,64,32,32]{3,2,1,0})->bf16[8,32,32,64]{3,2,1,0}}

%wrapped_transpose_computation (param_0: bf16[8,64,32,32]) -> bf16[8,32,32,64] {
  %param_0 = bf16[8,64,32,32]{3,2,1,0} parameter(0)
  ROOT %transpose.1 = bf16[8,32,32,64]{3,2,1,0} transpose(%param_0), dimensions={0,2,3,1}
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%body (p: (s32[], f32[64])) -> (s32[], f32[64]) {
  %p = (s32[], f32[64]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %v = f32[64]{0} get-tuple-element(%p), index=1
  %scaled = f32[64]{0} multiply(%v, %v)
  ROOT %t = (s32[], f32[64]{0}) tuple(%i, %scaled)
}

%cond (p.1: (s32[], f32[64])) -> pred[] {
  %p.1 = (s32[], f32[64]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%p.1), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%i.1, %n), direction=LT
}

ENTRY %main.10 (Arg_0.1: bf16[8,64,32,32], Arg_1.2: bf16[64,3,3,64], Arg_2.3: f32[8,32,32,64]) -> bf16[8,32,32,64] {
  %Arg_0.1 = bf16[8,64,32,32]{3,2,1,0} parameter(0)
  %Arg_1.2 = bf16[64,3,3,64]{3,2,1,0} parameter(1)
  %Arg_2.3 = f32[8,32,32,64]{3,2,1,0} parameter(2)
  %wrapped_transpose = bf16[8,32,32,64]{3,2,1,0} fusion(%Arg_0.1), kind=kInput, calls=%wrapped_transpose_computation
  %cudnn-conv = (bf16[8,32,32,64]{3,2,1,0}, u8[0]{0}) custom-call(%wrapped_transpose, %Arg_1.2), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/jvp(ResNet9)/prep/Conv_0/conv_general_dilated" source_file="model.py" source_line=80}, backend_config={"cudnn_conv_backend_config":{"activation_mode":"kNone","conv_result_scale":1}}
  %get-tuple-element = bf16[8,32,32,64]{3,2,1,0} get-tuple-element(%cudnn-conv), index=0
  %cudnn-conv-bw-filter = (bf16[64,3,3,64]{3,2,1,0}, u8[1024]{0}) custom-call(bf16[8,32,32,64]{3,2,1,0} %wrapped_transpose, bf16[8,32,32,64]{3,2,1,0} %get-tuple-element), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter", metadata={op_name="jit(train_step)/transpose(jvp(ResNet9))/prep/Conv_0/conv_general_dilated"}
  %weight-grad = bf16[64,3,3,64]{3,2,1,0} get-tuple-element(%cudnn-conv-bw-filter), index=0
  %plain = f32[8,32,32,64]{3,2,1,0} convolution(%Arg_2.3, %Arg_2.3), window={size=32x32 pad=15_16x15_16}, dim_labels=b01f_01io->b01f, feature_group_count=64, metadata={op_name="jit(train_step)/jvp(ResNet9)/head/conv_general_dilated"}
  %zero = f32[] constant(0)
  %bias = f32[64]{0} reduce(%plain, %zero), dimensions={0,1,2}, to_apply=%add
  %all-reduce = f32[64]{0} all-reduce(%bias), replica_groups={}, to_apply=%add
  %i0 = s32[] constant(0)
  %init = (s32[], f32[64]{0}) tuple(%i0, %all-reduce)
  %loop = (s32[], f32[64]{0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %copy.4 = bf16[8,32,32,64]{3,2,1,0} copy(%get-tuple-element)
}
"""


@pytest.fixture(scope="session")
def dumps(tmp_path_factory) -> dict[str, Path]:
    """XLA dumps of the tiny model's train step in bf16 and f32, made in parallel subprocesses."""
    root = tmp_path_factory.mktemp("xla")
    script = root / "tiny.py"
    script.write_text(DUMP_SCRIPT)
    procs = {}
    for dtype in ("bf16", "f32"):
        flags = f"--xla_dump_to={root / dtype} --xla_dump_hlo_as_text --xla_dump_hlo_module_re=train_step"
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}")
        procs[dtype] = subprocess.Popen([sys.executable, str(script), dtype], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for dtype, proc in procs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
    return {dtype: root / dtype for dtype in procs}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "jax_resnet_speed.xla_report", *map(str, args)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_bf16_dump_lists_forward_and_backward_convs(dumps):
    report = xla_report.report_dir(dumps["bf16"])
    convs = report["convolutions"]
    assert report["module"] == "jit_train_step" and report["backend"] == "cpu"
    # Two forward convs, their two weight gradients, and the input gradient of the second only.
    assert Counter(c["kind"] for c in convs) == {"forward": 2, "backward-filter": 2, "backward-input": 1}
    forward = {c["where"]: c for c in convs if c["kind"] == "forward"}
    assert set(forward) == {"Tiny/Conv_0", "Tiny/Conv_1"}
    shapes = [[t["dims"] for t in c["tensors"]] for c in (forward["Tiny/Conv_0"], forward["Tiny/Conv_1"])]
    assert shapes == [[[4, 16, 16, 3], [3, 3, 3, 8], [4, 16, 16, 8]], [[4, 16, 16, 8], [3, 3, 8, 16], [4, 8, 8, 16]]]
    assert [t["layout"] for t in forward["Tiny/Conv_1"]["tensors"]] == ["NHWC", "HWIO", "NHWC"]
    assert forward["Tiny/Conv_1"]["window"] == {"size": "3x3", "stride": "2x2", "pad": "0_1x0_1"}
    for conv in forward.values():
        # XLA:CPU runs bf16 convolutions in f32 on converted inputs; a GPU keeps bf16.
        assert conv["dtype"] == "bf16" or conv["upcast_from"] == "bf16"
    weight_grads = {c["where"]: c["tensors"] for c in convs if c["kind"] == "backward-filter"}
    assert set(weight_grads) == {"Tiny/Conv_0 (by kernel shape)", "Tiny/Conv_1 (by kernel shape)"}
    assert sorted(weight_grads["Tiny/Conv_1 (by kernel shape)"][2]["dims"]) == [3, 3, 8, 16]
    backward_input = next(c for c in convs if c["kind"] == "backward-input")
    assert backward_input["where"] == "Tiny/Conv_1" and backward_input["tensors"][2]["dims"] == [4, 16, 16, 8]
    assert report["expected_dtype"] == "bf16"
    for count in (report["fusions"]["count"], report["kernels"]["count"], report["bytes_per_step"]):
        assert isinstance(count, int) and count > 0
    assert report["collectives"]["count"] == 0


def test_cli_prints_report_and_json(dumps, tmp_path):
    result = run_cli(dumps["bf16"], "--json", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr
    assert "Convolutions: 5 (" in result.stdout and "Tiny/Conv_0" in result.stdout
    assert "Fusions: " in result.stdout and "Bytes moved per step (estimate): " in result.stdout
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["convolutions"] == xla_report.report_dir(dumps["bf16"])["convolutions"]


def test_f32_model_with_expected_bf16_warns(dumps):
    assert not any("compute in" in w for w in xla_report.report_dir(dumps["f32"])["warnings"])
    result = run_cli(dumps["f32"], "--expect-dtype", "bf16")
    assert result.returncode == 0, result.stderr
    assert "all 5 convolutions compute in f32, not bf16" in result.stdout


def test_gpu_snippet_cudnn_calls_and_warnings():
    module = xla_report.parse_module(GPU_HLO)
    report = xla_report.build_report(module, "gpu")
    first, weight_grad, plain = report["convolutions"]
    assert (first["kind"], first["library"], first["dtype"]) == ("forward", "__cudnn$convForward", "bf16")
    assert [t["layout"] for t in first["tensors"]] == ["NHWC", "OHWI", "NHWC"]
    assert first["where"] == "ResNet9/prep/Conv_0"
    assert (weight_grad["kind"], weight_grad["library"]) == ("backward-filter", "__cudnn$convBackwardFilter")
    assert [t["role"] for t in weight_grad["tensors"]] == ["input", "grad_out", "grad_kernel"]
    assert weight_grad["tensors"][2]["dims"] == [64, 3, 3, 64]
    assert (plain["kind"], plain["library"], plain["feature_group_count"]) == ("forward", None, 64)
    assert report["library_calls"] == {"__cudnn$convForward": 1, "__cudnn$convBackwardFilter": 1}
    assert report["collectives"]["count"] == 1
    # fusion, 2 custom-calls, convolution, reduce, all-reduce, copy, and 3 trips of the loop's multiply and compare.
    assert report["kernels"]["count"] == 13 and report["kernels"]["by_opcode"]["multiply"] == 3
    assert report["transposes_copies"]["by_kind"] == {"fused transpose": 1, "copy": 1}
    warnings = "\n".join(report["warnings"])
    assert "conv #1 forward ResNet9/prep/Conv_0: layout change next to it, in: wrapped_transpose" in warnings
    assert "out: copy.4" in warnings
    assert "1 of 3 convolutions compute in f32, not bf16: #3" in warnings
    assert "1 of 3 convolutions run as XLA's own kernels, not library (cuDNN) calls: #3" in warnings
    assert "1 collectives in the step" in warnings
    assert "Convolutions: 3 (forward 2, backward-filter 1; 2 library calls)" in xla_report.format_report(report)


def test_parse_shapes_handles_tuples_tiling_and_scalars():
    shapes = xla_report.parse_shapes("(bf16[512,32,32,64]{3,2,1,0:T(8,128)(2,1)}, f32[], u8[<=16]{0})")
    assert [(s.dtype, s.dims, s.minor_to_major) for s in shapes] == [
        ("bf16", (512, 32, 32, 64), (3, 2, 1, 0)), ("f32", (), None), ("u8", (16,), (0,))]
    assert [s.nbytes for s in shapes] == [512 * 32 * 32 * 64 * 2, 4, 16]


def write_module(directory: Path, number: int, name: str, padding: int = 0) -> None:
    text = GPU_HLO.replace("HloModule jit_train_step", f"HloModule {name}") + "\n" * padding
    (directory / f"module_{number:04d}.{name}.sm_9.0_gpu_after_optimizations.txt").write_text(text)


def test_find_module_picks_largest_match_and_says_so(tmp_path):
    write_module(tmp_path, 3, "jit_train_step", padding=100)
    write_module(tmp_path, 7, "jit_train_step")
    write_module(tmp_path, 9, "jit_evaluate")
    selection = xla_report.find_module(tmp_path)
    assert selection.path.name.startswith("module_0003") and "2 modules match" in selection.note
    assert xla_report.report_dir(tmp_path)["backend"] == "gpu"
    with pytest.raises(xla_report.ReportError, match="available: jit_evaluate, jit_train_step"):
        xla_report.find_module(tmp_path, "nothing_like_this")


@pytest.mark.parametrize("make_dir", ["empty", "no_match", "missing"])
def test_errors_are_one_line_with_exit_1(tmp_path, make_dir):
    if make_dir == "no_match":
        write_module(tmp_path, 1, "jit_evaluate")
    target = tmp_path / "absent" if make_dir == "missing" else tmp_path
    result = run_cli(target)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("xla_report: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_help():
    assert "--expect-dtype" in run_cli("--help").stdout
