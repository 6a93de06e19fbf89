"""The quantiser grids of 'compact' precision: logprob ℓ → integer level, one grid per format version.

A grid is companded. Above its knee, levels are uniform in √p: level n decodes to p = (n·S/2)², so the
step in nats at ℓ is S·e^(−ℓ/2). Below the knee the step is a fixed `log_step` nats, down to
`LOGPROB_FLOOR`. Why √p: a position's KL error is ≈ ½ Var_p(ε) ≤ ½ Σ p_i ε_i² over its buckets (ε_i the
error in nats; a common shift cancels, since the KD target normalises the buckets), and a bucket of
probability p rounded to within half a step of S·e^(−ℓ/2) nats contributes at most p·(S/(2√p))² = S²/4,
whatever p. Below the knee a bucket contributes at most p·log_step²/4, less than S²/4 exactly when p is
below the point where the two steps meet. So with the knee at that point (ℓ* = 2 ln(S / log_step)) every
bucket is worth at most S²/4 and a position of k + 1 buckets at most (k + 1)·S²/8 nats, wherever an
adversary puts its values; an error in the top-k's mass shifts the k buckets together against the tail,
one more bucket's worth.

- version 3 (`GRID_V3`): S = 2/192 (192 levels per unit of √p, so p = 1 is a level of its own), the knee
  where the steps meet; worst case (k + 1)·S²/8 = 8.8e-4 nats at k = 64, 2.8e-4 at k = 20.
- versions 1 and 2 (`GRID_V2`): S = 0.015, knee at 2 ln(2S / log_step), where the level's *value*, not its
  step, matched: 0.25 nats below it against 0.125 above; top level 0.995. Kept as it was, so that the levels
  those caches store keep their meaning.

Decoding a level is a table lookup, so a batch decodes with a few vectorised numpy calls per record.
"""

from __future__ import annotations

import math

import numpy as np

LOGPROB_FLOOR = -80.0  # logprobs below this (e.g. -inf from masked tokens) are stored as the floor
_LOG_HALF = math.log(0.5)


class Grid:
    """One companded grid: `quantize` / `dequantize`, and the split code of a position's top-k and tail."""

    def __init__(self, sqrt_step: float, log_step: float, knee: float) -> None:
        self.sqrt_step, self.log_step, self.knee = sqrt_step, log_step, knee
        self.knee_level = 2.0 * math.exp(knee / 2.0) / sqrt_step
        self.min_level = int(math.floor(self.knee_level + (LOGPROB_FLOOR - knee) / log_step))
        self.max_level = int(math.ceil(2.0 / sqrt_step - 1e-9))  # the level of p = 1 (or the first above it)
        levels = np.arange(self.min_level, self.max_level + 1, dtype=np.float64)
        above = 2.0 * np.log(np.maximum(levels, 1e-9) * sqrt_step / 2.0)
        below = knee + (levels - self.knee_level) * log_step
        self.values = np.minimum(np.where(levels >= self.knee_level, above, below), 0.0).astype(np.float32)
        # split codes: below min_level the tail is empty; min_level..max_level is the level of log r (r ≤ ½);
        # from mass_offset + min_level on, the level of the top-k's mass log(1 − r) (r > ½). The two ranges
        # are disjoint, so a code is read by which range it falls in.
        self.mass_offset = 2 * (self.max_level - self.min_level + 2)

    def quantize(self, logprobs: np.ndarray) -> np.ndarray:
        """Map logprobs (any shape, float; NaN and below the floor: the floor) to int32 levels."""
        lp = np.clip(np.nan_to_num(logprobs.astype(np.float64), nan=LOGPROB_FLOOR), LOGPROB_FLOOR, 0.0)
        above = 2.0 * np.exp(lp / 2.0) / self.sqrt_step
        level = np.where(lp >= self.knee, above, self.knee_level + (lp - self.knee) / self.log_step)
        return np.clip(np.rint(level), self.min_level, self.max_level).astype(np.int32)

    def dequantize(self, levels: np.ndarray) -> np.ndarray:
        """Inverse of `quantize` (up to the quantisation error), float32, same shape."""
        return self.values[levels - self.min_level]

    def nan_levels(self, values: np.ndarray) -> np.ndarray:
        """Levels with NaN (unknown) kept apart from the floor, below every real level."""
        return np.where(np.isnan(values), self.min_level - 1, self.quantize(values)).astype(np.int32)

    def decode_nan_levels(self, levels: np.ndarray) -> np.ndarray:
        """Inverse of `nan_levels`: float32 values, NaN where unknown."""
        values = self.dequantize(np.maximum(levels, self.min_level))
        values[levels < self.min_level] = np.nan
        return values

    def split_codes(self, log_mass: np.ndarray, log_tail: np.ndarray) -> np.ndarray:
        """(T,) split codes from the top-k's log mass and the tail's log mass (float64, ≤ 0): whichever side
        is smaller is kept on the grid, so both keep their relative precision."""
        mass = self.mass_offset + self.quantize(log_mass)
        codes = np.where(log_tail <= _LOG_HALF, self.quantize(log_tail), mass)
        return np.where(np.isneginf(log_tail), self.min_level - 1, codes).astype(np.int32)

    def split_from_codes(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `split_codes`: (log mass of the top-k, log tail), float64 (T,) each."""
        # A top-k mass below the grid's level 0 (2.6e-4 on `GRID_V2`: a flat teacher's top-20 at V = 151,936) has
        # a code below mass_offset, but still above every tail code: the threshold is the top of the tail range.
        is_mass = codes > self.max_level
        level = np.clip(np.where(is_mass, codes - self.mass_offset, codes), self.min_level, self.max_level)
        stored = self.dequantize(level).astype(np.float64)
        log_mass = np.where(is_mass, stored, log1mexp(stored))
        log_tail = np.where(is_mass, log1mexp(stored), stored)
        empty = codes < self.min_level
        return np.where(empty, 0.0, log_mass), np.where(empty, -np.inf, log_tail)


def log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 − eˣ) for x ≤ 0 in float64 (−inf at 0), accurate at both ends."""
    x = np.minimum(np.asarray(x, np.float64), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > _LOG_HALF, np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _grid_where_steps_meet(sqrt_levels: int, log_step: float) -> Grid:
    """A grid of `sqrt_levels` levels per unit of √p, its knee where the two steps meet (S·e^(−ℓ*/2) = log_step)."""
    sqrt_step = 2.0 / sqrt_levels
    return Grid(sqrt_step, log_step, knee=2.0 * math.log(sqrt_step / log_step))


GRID_V2 = Grid(0.015, 0.25, knee=2.0 * math.log(2.0 * 0.015 / 0.25))
GRID_V3 = _grid_where_steps_meet(192, 0.25)
