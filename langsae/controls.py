"""The random-feature control shared by every ablation and steering stage: which features a seeded draw
ablates, and the language label of such a control. Here, below the stages, so that a stage (downstream,
steering) draws the same controls as the Section 5 sweep without importing the sweep's module."""

from __future__ import annotations

import numpy as np
import torch

NO_LANGUAGE = "none"  # `ablated_lang` of a random-feature control


def random_draw(pool: torch.Tensor, k: int, seed: int, layer: int, draw: int) -> tuple[int, ...]:
    """k features from the control pool, seeded by (seed, layer, k, draw): each draw reproducible alone."""
    rng = np.random.default_rng([seed, layer, k, draw])
    return tuple(sorted(int(pool[i]) for i in rng.choice(len(pool), size=k, replace=False)))
