"""shufflenet-bench: options, and a small run whose numbers must agree with
each other and with FlopCounterMode on the fused model zoo."""

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import shufflenet_ops as so
from shufflenet_ops.bench import anchors, cli, model_level


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sections", "ops,gpu"], "expected a comma-separated subset of ops,models,theory"),
        (["--batch-sizes", "1,0"], "expected comma-separated positive integers"),
        (["--groups", "5"], "ShuffleNet v1 defines groups 1,2,3,4,8"),
        (["--threads", "0"], "--threads: expected a positive integer"),
        (["--dtype", "int8"], "invalid choice"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_options_are_rejected_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        cli.run(["--help"])
    text = capsys.readouterr().out
    for option in ("--device", "--dtype", "--quick", "--out", "--sections", "--batch-sizes", "--groups",
                   "--resolution", "--channels-last", "--min-run-time", "--threads", "--no-compile", "--no-anchors"):
        assert option in text


def zoo_multiply_adds(width_mult, groups, resolution):
    model = so.models.shufflenet_v1(groups=groups, width_mult=width_mult).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, resolution, resolution))
    return counter.get_total_flops() // 2


def test_small_run_is_consistent(tmp_path):
    results = cli.run(["--device", "cpu", "--sections", "ops,models,theory", "--groups", "3", "--batch-sizes", "1",
                       "--resolution", "64", "--min-run-time", "0.01", "--no-compile", "--no-anchors",
                       "--out", str(tmp_path)])
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["ops"] == results["ops"]
    for name in ("ops.csv", "models.csv", "theory.csv"):
        assert (tmp_path / name).read_text().count("\n") > 1

    # Every speedup is the reference's time over this row's, for the same shape and pass.
    ops = results["ops"]
    assert {r["backend"] for r in ops} == {"reference", "native", "matmul"}
    assert len({r["shape"] for r in ops}) == 6  # bottleneck in and out at each of the 3 stages
    for r in ops:
        ref = next(o for o in ops if o["shape"] == r["shape"] and o["pass"] == r["pass"] and o["backend"] == "reference")
        assert r["speedup_vs_reference"] == pytest.approx(ref["seconds"] / r["seconds"])

    # The theory's FLOPs are those of the fused model zoo, counted independently.
    theory_models = {(m["width_mult"], m["groups"]): m for m in results["theory_models"]}
    for (width_mult, groups), m in theory_models.items():
        assert m["macs"] == zoo_multiply_adds(width_mult, groups, 64)
    for row in results["theory"]:
        big, small = row["pair"].split(" vs ")
        key = lambda text: (float(text.split("x")[0]), int(text.split("g")[1]))  # noqa: E731
        b, s = theory_models[key(big)], theory_models[key(small)]
        assert row["theoretical"] == pytest.approx(b["macs"] / s["macs"])
        assert row["measured_fused"] == pytest.approx(b["seconds"]["fused"] / s["seconds"]["fused"])

    assert {(r["mode"], r["variant"]) for r in results["models"]} == {
        (mode, variant) for mode in ("inference", "train step") for variant in ("unfused", "fused")}
    # Each row's time over the fused model's is paired per round, then the median taken.
    for r in results["models"]:
        fused = next(f for f in results["models"] if f["mode"] == r["mode"] and f["variant"] == "fused")
        paired = sorted(t / f for t, f in zip(r["rounds_seconds"], fused["rounds_seconds"]))
        assert r["time_vs_fused"] == pytest.approx(paired[len(paired) // 2])


@pytest.mark.parametrize("runtime", anchors.RUNTIMES)
def test_anchor_runs_the_exported_unfused_model(runtime):
    if runtime not in anchors.installed():
        pytest.skip(f"{runtime} (or onnx/onnxscript for the export) is not installed")
    model = so.models.shufflenet_v1_unfused(groups=3, width_mult=0.5).eval()
    x = torch.randn(2, 3, 64, 64)
    run = anchors.runner(runtime, model, x)  # the runner itself checks its first output
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(run()), model(x), rtol=anchors.FLOAT32_RTOL,
                                   atol=anchors.FLOAT32_ATOL)


def test_anchors_are_timed_in_the_rounds_of_the_inference_variants():
    runtimes = anchors.installed()
    if not runtimes:
        pytest.skip("no anchor runtime (onnxruntime, openvino with onnx/onnxscript) is installed")
    rows = model_level.measure(("fused",), training=False, batch=1, groups=3, width_mult=0.5, resolution=64,
                               device=torch.device("cpu"), dtype=torch.float32, channels_last=False,
                               min_run_time=0.01, anchor_runtimes=runtimes)
    assert [r["variant"] for r in rows] == ["fused", *runtimes]
    for r in rows:
        assert len(r["rounds_seconds"]) == model_level.ROUNDS
