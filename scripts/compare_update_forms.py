"""Does Page's form of the Nesterov update move accuracy? The same preset, seeds and data, trained
with `optimiser.update = "page"` and with `"torch"` (presets.Optimiser.update), in one process.

    python scripts/compare_update_forms.py --data ../shared/data/cifar10-jpeg-q75.tar.gz \
        --preset myrtle-final --width-mult 0.25 --train-subset 5000 --test-subset 1000 --epochs 4 --runs 3

Prints one row per form: final accuracy per seed, mean +- std, and the mean paired difference.
"""

from __future__ import annotations

import argparse
import statistics

from jax_resnet_speed import cli, flags, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_run_arguments(parser)
    args = parser.parse_args()
    cli.validate(args, parser)
    import jax

    base = cli.resolve_config(args, jax.default_backend())
    dataset = cli.load_data(args)
    accuracies: dict[str, list[float]] = {}
    for form in ("page", "torch"):
        config = train.RunConfig(base.recipe.replace(**{"optimiser.update": form}), base.precision, base.width_mult)
        run_one = cli.prepare_runs(config, dataset, args.seed, payload={})
        accuracies[form] = []
        for seed in range(args.seed, args.seed + args.runs):
            record = run_one(seed, lambda metrics: None, {})
            accuracies[form].append(record["final_accuracy"])
            print(f"{form} seed {seed}: {record['final_accuracy']:.4f}", flush=True)

    print(f"\n{base.recipe.name}, width x{base.width_mult}, {len(dataset.train_images)} train / "
          f"{len(dataset.test_images)} test images, {base.recipe.epochs} epochs, {base.precision}")
    print("| update form | accuracy per seed | mean +- std |\n| --- | --- | --- |")
    for form, values in accuracies.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| {form} | {', '.join(f'{v:.4f}' for v in values)} | {statistics.fmean(values):.4f} +- {std:.4f} |")
    differences = [p - t for p, t in zip(accuracies["page"], accuracies["torch"])]
    spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
    print(f"page - torch, paired by seed: {statistics.fmean(differences):+.4f} +- {spread:.4f}")


if __name__ == "__main__":
    main()
