"""--plot (curves.py): the figure's axes and lines hold each run's accuracies and loss against its training seconds."""

import numpy as np

from jax_resnet_speed import curves


def record(seed: int, seconds: list[float], test: list[float], tta: list[float], loss: list[float]) -> dict:
    epochs = [{"epoch": i + 1, "train_seconds": s, "test_accuracy": a, "tta_accuracy": t, "train_loss": l}
              for i, (s, a, t, l) in enumerate(zip(seconds, test, tta, loss))]
    return {"seed": seed, "status": "completed", "epochs": epochs}


RUNS = [record(0, [1.5, 3.0, 4.5], [0.5, 0.7, 0.9], [0.52, 0.72, 0.93], [1.9, 1.2, 0.6]),
        record(1, [1.6, 3.1], [0.4, 0.8], [0.41, 0.83], [float("nan"), 1.0])]


def test_accuracy_above_loss_below_against_training_seconds():
    figure = curves.figure(RUNS, target=0.94, title="myrtle-final, cpu")
    accuracy_axes, loss_axes = figure.axes
    assert accuracy_axes.get_title() == "myrtle-final, cpu"
    assert accuracy_axes.get_ylabel() == "test accuracy"
    assert loss_axes.get_ylabel() == "train loss" and "training seconds" in loss_axes.get_xlabel()
    # Per run: a solid test line and a dashed TTA line above, its loss below, in one colour.
    *run_lines, target = accuracy_axes.get_lines()
    assert len(run_lines) == 4 and len(loss_axes.get_lines()) == 2
    for index, run in enumerate(RUNS):
        seconds = [m["train_seconds"] for m in run["epochs"]]
        test, tta, loss = run_lines[2 * index], run_lines[2 * index + 1], loss_axes.get_lines()[index]
        np.testing.assert_allclose(test.get_xdata(), seconds)
        np.testing.assert_allclose(test.get_ydata(), [m["test_accuracy"] for m in run["epochs"]])
        np.testing.assert_allclose(tta.get_ydata(), [m["tta_accuracy"] for m in run["epochs"]])
        np.testing.assert_allclose(loss.get_xdata(), seconds)
        np.testing.assert_allclose(loss.get_ydata(), [m["train_loss"] for m in run["epochs"]])  # nan: a gap
        assert test.get_linestyle() == "-" and tta.get_linestyle() == "--"
        assert test.get_color() == tta.get_color() == loss.get_color()
    assert run_lines[0].get_color() != run_lines[2].get_color()
    assert list(target.get_ydata()) == [0.94, 0.94]
    assert [text.get_text() for text in accuracy_axes.get_legend().get_texts()] == ["test", "TTA", "target 94.00%"]
    assert [text.get_text() for text in loss_axes.get_legend().get_texts()] == ["seed 0", "seed 1"]
    import matplotlib.pyplot as plt
    plt.close(figure)


def test_the_title_names_recipe_device_runs_and_images():
    payload = {"config": {"recipe": {"name": "myrtle-final"}, "train_images": 2048},
               "environment": {"device_kind": "NVIDIA H100"}, "runs": RUNS}
    assert curves.title(payload) == "myrtle-final on NVIDIA H100: 2 runs, 2048 training images"
    assert curves.title({**payload, "runs": RUNS[:1]}).endswith(": 1 run, 2048 training images")


def test_write_leaves_one_png_and_no_temp_file(tmp_path):
    path = tmp_path / "out" / "curve.png"
    curves.write({"runs": RUNS}, 0.94, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]
