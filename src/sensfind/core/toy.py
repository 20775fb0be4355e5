"""A ground-truth toy model of computation in superposition, to test discovery against planted features.

The model
---------
``n_features`` unit feature directions ``f_j`` (rows of ``features``, ``[n, d]``) live in a smaller
activation space (``d < n``). An input activates ``k_active`` of them with magnitudes drawn
uniformly from ``magnitude = (lo, hi)``, plus optional isotropic noise::

    x = Σ_{i ∈ active} m_i f_i + noise                                       [d]

Each feature is read off linearly and passed through a steep ("error-correcting") threshold, and
every feature that is on votes for a fixed random subset of the output tokens::

    r_j = f_j · x                        read-off                            [n]
    g_j = σ((r_j − threshold) / sharpness)   gate, ~0 or ~1                  [n]
    logits = output_scale · V g          V[t, j] = 1 if feature j votes for token t   [n_out]

``V`` holds independent Bernoulli(``vote_fraction``) entries. The next-token distribution of an
input is nearly uniform over the tokens that *every* active feature votes for (about
``n_out · ρ^k`` of them), so it is broad rather than one-hot and a single gate flip always moves it:
turning an active feature off lets the ``1/ρ`` times larger set voted for by the other ``k − 1``
catch up (KL ≈ log(1/ρ) ≈ 1.4 nats at ρ = 0.25), and turning an inactive one on lifts roughly a
fraction ρ of the current top tokens and many tokens one vote behind (KL ≈ 1–3 nats). A Gaussian
``V`` was tried first and rejected: the summed logits of k features make the distribution peaked,
and then 10–20% of flips only move tokens of negligible probability (KL under 2τ, often under τ).

Why the planted features are the sensitivity optima in sphere mode
------------------------------------------------------------------
In sphere mode ``x(θ) = |x0| (cos θ x̂0 + sin θ t̂)``, so a read-off evolves as
``r_j(θ) = cos θ · r_j(0) + sin θ · |x0| (f_j · t̂)``.

* Along a planted feature (``t̂`` = ``f_j`` with the base projected out, so ``f_j · t̂ ≈ 1``) the whole
  rotation goes into one read-off: an inactive feature turns on at
  ``sin θ ≈ (threshold − r_j(0)) / |x0|``. With the defaults (``|x0| ≈ 2.2``, ``threshold = 0.6``) that
  is ≈ 16° for a typical feature and 4–10° for the one closest to its threshold. Turning an
  active feature off along ``−f_i`` is similarly fast.
* Along an isotropic random direction the rotation is spread over all ``n`` read-offs, each getting
  ``f_j · t̂ ~ N(0, 1/d)``; the best-placed of ``n`` features gets only ``≈ √(2 ln n / d) ≈ 0.39`` of
  it, and every other read-off changes less. Meanwhile active read-offs shrink as ``cos θ`` and an
  active feature only drops out near ``cos θ ≈ threshold / m ≈ 0.6`` (≈ 50°). Random directions
  therefore cross τ = 0.5 nats at a median of ≈ 30–45° (measured on 20 inputs of 5 seeds: 4–7× the
  best feature's angle, ≈ 2× the median feature's).
* A feature direction is a local optimum: tilting it by ε moves ``f_j · t̂`` by ``−ε²/2`` (second
  order), and the first-order gain on other read-offs (``ε · f_l · g`` with ``g`` a random tangent) is
  spread thin and far from their thresholds; with a steep gate the other read-offs contribute
  nothing until they cross.

Why these defaults (measured, see ``tests/test_toy.py``)
--------------------------------------------------------
* ``d = 64``, ``n_features = 128`` (2× superposition), ``feature_init = "spread"``: features are
  random unit vectors pushed apart (gradient descent on the soft maximum of pairwise |cos|), which
  brings the largest pairwise |cos| from ≈ 0.45 (plain random) to ≈ 0.12 (Welch bound 0.089). With
  plain random features ~97% of inputs have an inactive feature reading above the threshold or an
  active one reading below it; spread features make nearly every input clean. Spreading cannot
  lower the *average* interference (for a tight frame Σ_j (f_j·x)² = (n/d)|x|²), only its tails.
* ``k_active = 3``, ``magnitude = (1.0, 1.5)``, ``threshold = 0.6``: inactive read-offs of an input
  are interference of rms ≈ |x0|/√n ≈ 0.2 and rarely reach 0.5; active read-offs stay above 0.7.
  A threshold near the middle keeps both margins; a lower threshold would let spread random
  perturbations turn features on, a higher one lets ``cos θ`` switch actives off early.
* ``sharpness = 0.03`` (the gate goes from 5% to 95% over ±0.09 of read-off): a plateau then a step.
* ``n_out = 1024``, ``vote_fraction = 0.25``, ``output_scale = 6``: every single flip costs ≥ ~0.9 nats
  (median ≈ 1.4 for off-flips, ≈ 3 for on-flips), well over τ = 0.5, and the base distribution
  spreads over ~15 tokens.
* Scans are cheap: 64 directions × 91 angles is one ``[5824, 64] → [5824, 1024]`` pass.

Knobs that break the picture (on purpose)
-----------------------------------------
* more features or smaller ``d`` (or ``feature_init="random"``): more interference, inputs stop being
  clean (``sample`` then resamples, and refuses when almost nothing is clean; use ``clean=False``);
* small ``output_scale``: flips no longer matter, nothing crosses τ along a single feature;
* large ``sharpness``: no plateau, the effect grows smoothly in every direction;
* large ``noise``: read-offs blur and base activations sit near thresholds.

Sphere mode only sees the part of a direction orthogonal to the base, so comparisons of found
directions with planted features go through ``project_out`` / ``feature_cosines``. After that
projection inactive features stay nearly orthogonal, but the active ones do not: their projected
parts nearly cancel (with k = 3, pairwise cosines of −0.3 to −0.7), so an optimum that
switches one active feature off (−f_i) has cosines ≈ +0.5 with the other active features.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from sensfind.configs import Config, is_int, is_number
from sensfind.core.effects import kl
from sensfind.core.geometry import PARALLEL_TOL, project_out, reject
from sensfind.core.subject import check_acts, check_base
from sensfind.core.scan import ScanConfig, scan

log = logging.getLogger(__name__)

__all__ = ["ToyConfig", "ToyModel", "ToySample", "ToySubject", "feature_cosines"]

FeatureInit = Literal["spread", "random"]

_SPREAD_STEPS = 100
_SPREAD_POWER = 8  # soft maximum of |cos| via Σ (cos / c_max)^8
_SPREAD_LR = 0.1
_MAX_DRAWS_PER_SAMPLE = 1000  # clean sampling gives up below a 0.1% clean rate
_MIN_REFILL = 64


@dataclass(frozen=True)
class ToyConfig(Config):
    """A toy model of features in superposition read off by steep thresholds.

    Attributes:
        d: activation width.
        n_features: number of planted unit feature directions; must exceed ``d`` (superposition).
        k_active: features active in each input.
        magnitude: ``(lo, hi)``; active magnitudes are uniform in this range.
        noise: std of isotropic Gaussian noise added to each input coordinate.
        threshold: read-off level at which a feature's gate is half on; must lie in ``(0, lo)``.
        sharpness: width of the gate's sigmoid, in read-off units (smaller = steeper).
        n_out: number of output logits (tokens).
        vote_fraction: probability that a feature votes for a given token.
        output_scale: logit added to a token per vote.
        feature_init: ``spread`` (random, then pushed apart to lower the largest pairwise |cos|) or
            ``random`` (plain random unit vectors, more interference).
        margin: clean samples have active read-offs ≥ ``threshold + margin`` and inactive ones
            ≤ ``threshold − margin``.
        seed: seeds the features, the votes and the inputs returned by ``ToyModel.subject(i)``.
    """

    d: int = 64
    n_features: int = 128
    k_active: int = 3
    magnitude: tuple[float, float] = (1.0, 1.5)
    noise: float = 0.0
    threshold: float = 0.6
    sharpness: float = 0.03
    n_out: int = 1024
    vote_fraction: float = 0.25
    output_scale: float = 6.0
    feature_init: FeatureInit = "spread"
    margin: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if not is_int(self.d) or self.d < 2:
            raise ValueError(f"d must be an integer >= 2, got {self.d!r}")
        if not is_int(self.n_features) or self.n_features <= self.d:
            raise ValueError(
                f"n_features must be an integer > d = {self.d} (features in superposition), got {self.n_features!r}"
            )
        if not is_int(self.k_active) or not 1 <= self.k_active < self.n_features:
            raise ValueError(
                f"k_active must be an integer in [1, n_features - 1 = {self.n_features - 1}], got {self.k_active!r}"
            )
        mag = self.magnitude
        if not isinstance(mag, (tuple, list)) or len(mag) != 2 or not all(is_number(m) for m in mag):
            raise ValueError(f"magnitude must be a pair (lo, hi) of finite numbers, got {mag!r}")
        lo, hi = float(mag[0]), float(mag[1])
        if not 0 < lo <= hi:
            raise ValueError(f"magnitude must satisfy 0 < lo <= hi, got {mag!r}")
        object.__setattr__(self, "magnitude", (lo, hi))
        if not is_number(self.noise) or self.noise < 0:
            raise ValueError(f"noise must be a finite number >= 0, got {self.noise!r}")
        if not is_number(self.threshold) or not 0 < self.threshold < lo:
            raise ValueError(
                f"threshold must be a finite number in (0, lo = {lo}) so that an active feature reads above it, "
                f"got {self.threshold!r}"
            )
        if not is_number(self.sharpness) or self.sharpness <= 0:
            raise ValueError(f"sharpness must be a finite number > 0, got {self.sharpness!r}")
        if not is_int(self.n_out) or self.n_out < 2:
            raise ValueError(f"n_out must be an integer >= 2, got {self.n_out!r}")
        if not is_number(self.vote_fraction) or not 0 < self.vote_fraction < 1:
            raise ValueError(f"vote_fraction must be a number in (0, 1), got {self.vote_fraction!r}")
        if not is_number(self.output_scale) or self.output_scale <= 0:
            raise ValueError(f"output_scale must be a finite number > 0, got {self.output_scale!r}")
        if self.feature_init not in ("spread", "random"):
            raise ValueError(f"feature_init must be 'spread' or 'random', got {self.feature_init!r}")
        if not is_number(self.margin) or not 0 <= self.margin < self.threshold:
            raise ValueError(
                f"margin must be a finite number in [0, threshold = {self.threshold}), got {self.margin!r}"
            )
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")


def _derived_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer keys (independent streams for features, votes, inputs)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _generator(seed: int | torch.Generator | None, default: int) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if seed is None:
        seed = default
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, a torch.Generator or None, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def _unit_rows(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True)


@functools.lru_cache(maxsize=8)
def _planted_features(n: int, d: int, init: str, seed: int) -> Tensor:
    """Unit feature directions ``[n, d]`` in float64 (cached: spreading costs ~0.15 s at n = 128)."""
    g = torch.Generator().manual_seed(_derived_seed(seed, 0))
    f = _unit_rows(torch.randn(n, d, generator=g, dtype=torch.float64))
    if init == "random":
        return f
    # Push apart: descend Σ_{i≠j} (cos_ij / c)^q, a soft maximum of |cos| (c = current max |cos|,
    # q even), with the gradient projected onto each row's tangent space and rows renormalised.
    # Plain einsum loops rather than BLAS: at this size a thread pool only adds wake-up stalls on a busy
    # CPU, and a single fixed summation order keeps the features identical across machines.
    x = f.numpy()
    for _ in range(_SPREAD_STEPS):
        cos = np.einsum("id,jd->ij", x, x, optimize=False)
        np.fill_diagonal(cos, 0.0)
        c = np.abs(cos).max()
        grad = np.einsum("ij,jd->id", (cos / c) ** (_SPREAD_POWER - 1), x, optimize=False)
        grad -= (grad * x).sum(1, keepdims=True) * x
        x = x - _SPREAD_LR * c * grad / np.linalg.norm(grad, axis=1).max()
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x)


class ToySample(NamedTuple):
    acts: Tensor  # [N, d] input activations
    active: Tensor  # [N, k] planted active feature ids (sorted), long


class ToyModel:
    """The toy model built from a ``ToyConfig``; see the module docstring for the maths.

    Args:
        config: the configuration.
        dtype: floating dtype of every tensor (``torch.float64`` for ``gradcheck``). Features, votes
            and samples are drawn in float64 and cast, so models of different dtypes agree.
        device: device of every tensor.
    """

    def __init__(self, config: ToyConfig = ToyConfig(), dtype: torch.dtype = torch.float32, device=None):
        if not isinstance(config, ToyConfig):
            raise TypeError(f"config must be a ToyConfig, got {type(config).__name__}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(
                f"dtype must be a floating torch.dtype, e.g. torch.float32 or torch.float64, got {dtype!r}"
            )
        self.config = config
        self.dtype = dtype
        self.device = torch.device("cpu") if device is None else torch.device(device)
        c = config
        feats = _planted_features(c.n_features, c.d, c.feature_init, c.seed)
        self._features64 = feats.to(self.device, copy=True)  # [n, d] master copy: inputs are drawn in float64
        self.features = feats.to(dtype=dtype, device=self.device, copy=True)  # [n, d] unit rows
        g = torch.Generator().manual_seed(_derived_seed(c.seed, 1))
        votes = torch.rand(c.n_out, c.n_features, generator=g, dtype=torch.float64) < c.vote_fraction
        self.votes = votes.to(dtype=dtype, device=self.device)  # [n_out, n] 0/1
        if log.isEnabledFor(logging.DEBUG):
            cos = feats @ feats.T
            cos.fill_diagonal_(0.0)
            log.debug("toy features: init=%s, max |cos| = %.3f", c.feature_init, float(cos.abs().max()))

    # -- the forward pass ---------------------------------------------------------------------
    @property
    def d(self) -> int:
        return self.config.d

    @property
    def n_features(self) -> int:
        return self.config.n_features

    def readoff(self, x: Tensor) -> Tensor:
        """Linear read-offs ``f_j · x``: ``[B, d] -> [B, n]``."""
        return x.to(self.dtype) @ self.features.T

    def gates(self, x: Tensor) -> Tensor:
        """Thresholded read-offs ``σ((f_j · x − threshold) / sharpness)`` in (0, 1): ``[B, d] -> [B, n]``."""
        c = self.config
        return torch.sigmoid((self.readoff(x) - c.threshold) / c.sharpness)

    def logits_from_gates(self, gates: Tensor) -> Tensor:
        """Output logits from gates: ``[B, n] -> [B, n_out]``."""
        return self.config.output_scale * gates @ self.votes.T

    def logits(self, x: Tensor) -> Tensor:
        """Output logits: ``[B, d] -> [B, n_out]``; differentiable in ``x``."""
        return self.logits_from_gates(self.gates(x))

    def on(self, x: Tensor) -> Tensor:
        """Which features read above the threshold: ``[B, d] -> [B, n]`` bool."""
        return self.readoff(x) > self.config.threshold

    # -- inputs -------------------------------------------------------------------------------
    def sample(self, n: int, seed: int | torch.Generator | None = None, clean: bool = True) -> ToySample:
        """``n`` inputs (``acts [n, d]``, planted ``active [n, k]``).

        ``seed``: an int, a ``torch.Generator`` (advanced in place) or ``None`` (the config's seed).
        ``clean=True`` redraws inputs whose read-offs disagree with their planted features by less than
        ``margin`` (an inactive feature near or above the threshold, or an active one near or below
        it), so that the planted active set is exactly the set of features that are on, with room to
        spare. It raises ``ValueError`` when interference makes clean inputs too rare.
        """
        if not is_int(n) or n < 1:
            raise ValueError(f"number of samples must be an integer >= 1, got {n!r}")
        g = _generator(seed, _derived_seed(self.config.seed, 2))
        acts, active = self._draw(n, g)
        if not clean:
            return ToySample(acts.to(self.dtype), active)
        ok = self.is_clean(acts, active)
        acts, active = acts[ok], active[ok]
        drawn, limit = n, _MAX_DRAWS_PER_SAMPLE * n
        while acts.shape[0] < n:
            if drawn >= limit:
                c = self.config
                raise ValueError(
                    f"only {acts.shape[0]} of {drawn} drawn inputs were clean (needed {n}): interference between "
                    f"the {c.n_features} features in d = {c.d} (k_active = {c.k_active}, threshold = {c.threshold}, "
                    f"margin = {c.margin}) is too strong; use more dimensions, fewer features, "
                    "feature_init='spread', a smaller margin, or sample(clean=False)"
                )
            batch = max(2 * (n - acts.shape[0]), _MIN_REFILL)
            more, more_active = self._draw(batch, g)
            ok = self.is_clean(more, more_active)
            acts, active = torch.cat([acts, more[ok]]), torch.cat([active, more_active[ok]])
            drawn += batch
        if drawn > n:
            log.debug("toy sample: drew %d inputs for %d clean ones", drawn, n)
        return ToySample(acts[:n].to(self.dtype), active[:n])

    def _draw(self, n: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """Raw inputs in float64 on the model's device (drawn on the CPU): ``[n, d]``, ``[n, k]``."""
        c = self.config
        lo, hi = c.magnitude
        active = torch.rand(n, c.n_features, generator=g, dtype=torch.float64).argsort(dim=1)[:, : c.k_active]
        active = active.sort(dim=1).values
        mags = lo + (hi - lo) * torch.rand(n, c.k_active, generator=g, dtype=torch.float64)
        acts = torch.einsum("nk,nkd->nd", mags.to(self.device), self._features64[active.to(self.device)])
        if c.noise > 0:
            acts = acts + c.noise * torch.randn(n, c.d, generator=g, dtype=torch.float64).to(self.device)
        return acts, active.to(self.device)

    def is_clean(self, acts: Tensor, active: Tensor) -> Tensor:
        """``[N]`` bool: whether each input's read-offs agree with its planted ``active`` ``[N, k]`` by ``margin``."""
        c = self.config
        r = acts.to(torch.float64) @ self._features64.T  # [n, n_features]
        planted = torch.zeros_like(r, dtype=torch.bool).scatter_(1, active, True)
        low_active = (planted & (r < c.threshold + c.margin)).any(dim=1)
        high_inactive = (~planted & (r > c.threshold - c.margin)).any(dim=1)
        return ~(low_active | high_inactive)

    def input(self, index: int) -> ToySample:
        """The ``index``-th input of the model's fixed stream (clean; ``acts [1, d]``, ``active [1, k]``)."""
        if not is_int(index) or index < 0:
            raise ValueError(f"input index must be an integer >= 0, got {index!r}")
        return self.sample(1, seed=_derived_seed(self.config.seed, 3, index))

    def subject(self, index_or_activation: int | Tensor) -> "ToySubject":
        """A subject for input ``index`` of the fixed stream, or for a given activation ``[d]``.

        For a given activation the active features are those reading above the threshold.
        """
        x = index_or_activation
        if isinstance(x, Tensor):
            base = check_base(x.detach().to(dtype=self.dtype, device=self.device).reshape(-1))
            if base.shape[0] != self.d:
                raise ValueError(f"activation must have shape [{self.d}], got {tuple(x.shape)}")
            active = self.on(base[None])[0].nonzero()[:, 0]
            return ToySubject(self, base, active)
        if is_int(x):
            sample = self.input(int(x))
            return ToySubject(self, sample.acts[0], sample.active[0])
        raise TypeError(f"expected an input index (int) or an activation tensor [d], got {type(x).__name__}")

    def __repr__(self) -> str:
        c = self.config
        return (
            f"ToyModel(d={c.d}, n_features={c.n_features}, k_active={c.k_active}, n_out={c.n_out}, "
            f"feature_init={c.feature_init!r}, dtype={self.dtype}, seed={c.seed})"
        )


class ToySubject:
    """One input of a ``ToyModel`` as a ``Subject``: outputs are the model's logits.

    Attributes:
        model: the ``ToyModel``.
        base: the input activation ``[d]``.
        base_output: logits of the base ``[n_out]``.
        active: ids of the active features ``[k]`` (sorted, long).
        features: the planted feature directions ``[n, d]`` (unit rows).
    """

    def __init__(self, model: ToyModel, base: Tensor, active: Tensor):
        self.model = model
        self.base = check_base(base.detach())
        self.active = active.detach().to(torch.long)
        self.features = model.features
        with torch.no_grad():
            self.base_output = model.logits(self.base[None])[0]

    @property
    def d(self) -> int:
        return self.base.shape[0]

    def run(self, acts: Tensor) -> Tensor:
        """Logits ``[B, n_out]`` for replacement activations ``[B, d]``; differentiable."""
        return self.model.logits(check_acts(acts, self.d))

    @property
    def is_active(self) -> Tensor:
        """``[n]`` bool mask of the active features."""
        mask = torch.zeros(self.model.n_features, dtype=torch.bool, device=self.base.device)
        mask[self.active] = True
        return mask

    def signed_features(self) -> Tensor:
        """Planted directions flipping one feature each, ``[n, d]``: ``+f_j`` if ``j`` is inactive, else ``−f_j``."""
        sign = 1.0 - 2.0 * self.is_active.to(self.features.dtype)
        return sign[:, None] * self.features

    def flip_kl(self) -> Tensor:
        """KL (nats) between the base output and the output with one feature's gate flipped, ``[n]``.

        This is the ground truth of which features matter for this input: those above τ.
        """
        with torch.no_grad():
            g0 = self.model.gates(self.base[None])[0]  # [n]
            flipped = g0.expand(g0.shape[0], -1).clone()
            idx = torch.arange(g0.shape[0], device=g0.device)
            flipped[idx, idx] = 1.0 - g0
            return kl(self.base_output, self.model.logits_from_gates(flipped))

    def signed_thresholds(self, tau: float = 0.5, coarse: float = 0.5, fine: float = 0.005) -> Tensor:
        """Threshold angle (degrees, sphere mode, KL > ``tau``) along each signed feature, ``[n]``.

        A ``coarse`` grid over 0–180° finds the first crossing, a ``fine`` grid inside that step refines
        it (inf where never reached). Ranks the planted features by sensitivity: the ground truth that
        discovery's most sensitive optima are compared with.
        """

        sig = self.signed_features()
        with torch.no_grad():
            first = scan(self, sig, ScanConfig(steps=int(round(180 / coarse)) + 1, tau=tau)).threshold
            lo = (first - coarse).clamp(min=0).nan_to_num(posinf=0.0)
            n = int(round(coarse / fine)) + 1
            steps = lo[:, None] + torch.linspace(0, coarse, n, dtype=torch.float64)[None]
            refined = scan(self, sig, ScanConfig(steps=n, tau=tau), steps=steps.to(sig.dtype)).threshold
        return torch.where(torch.isfinite(first), refined, first)

    def real_others(self, n: int, seed: int | torch.Generator | None = None) -> Tensor:
        """``n`` other clean inputs of the model (targets for "real-other" directions), ``[n, d]``.

        Rows equal to the base (possible when ``seed`` reproduces this input's stream) are redrawn.
        """
        if not is_int(n) or n < 1:
            raise ValueError(f"number of other inputs must be an integer >= 1, got {n!r}")
        g = _generator(seed, _derived_seed(self.model.config.seed, 4))
        rows = []
        while sum(r.shape[0] for r in rows) < n:
            acts = self.model.sample(n, seed=g).acts
            rows.append(acts[~torch.isclose(acts, self.base).all(dim=1)])
        return torch.cat(rows)[:n]

    def __repr__(self) -> str:
        return f"ToySubject(active={self.active.tolist()}, |base|={float(self.base.norm()):.3f}, model={self.model!r})"


def feature_cosines(directions: Tensor, features: Tensor, base: Tensor) -> Tensor:
    """Cosines ``[N, n]`` between directions ``[N, d]`` and features ``[n, d]``, base projected out of both.

    Signed: ``+1`` means the direction is the feature, ``−1`` its opposite. A feature (numerically)
    parallel to the base has no orthogonal part and gets cosine 0 with every direction.
    """
    dirs = project_out(directions, base)
    if features.ndim != 2 or features.shape[1] != base.shape[0]:
        raise ValueError(f"features must have shape [n, {base.shape[0]}], got {tuple(features.shape)}")
    x = features.to(dirs.dtype)
    t = reject(x, base)
    rel = t.norm(dim=1) / x.norm(dim=1)  # size of the orthogonal part relative to the feature's norm
    keep = rel >= PARALLEL_TOL
    t = torch.where(keep[:, None], t, torch.zeros_like(t))
    norms = torch.where(keep, t.norm(dim=1), torch.ones_like(rel))
    return dirs @ (t / norms[:, None]).T
