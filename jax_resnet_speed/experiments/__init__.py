"""Posts 5-7 of the series as experiments: `python -m jax_resnet_speed.experiments.NAME --out DIR`.

hyperparameters (post 5), weight_decay (post 6) and batch_norm (post 7); see docs/experiments.md.
"""
