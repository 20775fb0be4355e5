"""Feature cards: what one direction does to the model and where it shows up in real text.

A card for a direction ``u`` at a subject (a site of one prompt) holds

* its effect curve (next-token KL vs slerp angle) beside the isotropic-random and real-other curves;
* the next tokens that gain and lose the most probability when the base is rotated by the direction's
  threshold angle (decoded strings; ``token_changes``);
* the distribution of ``u``'s projection over the corpus context tokens (mean subtracted), with the
  base's own projection marked (``projection_histogram``);
* corpus contexts by quantile (the top ones, and a few around the 75th and 50th percentiles of the
  positive values) ranked by the SAE latent's activation (latent cards) or by the projection (optima),
  each token of a context shaded by its own value (``ranked_contexts``);
* the direction's direct logit effect: the next tokens it raises and lowers most when pushed straight
  through the final norm's scale and the unembedding (``direct_logits``; transformer subjects only);
* the nearest dictionary latents with cosine and p-value against the isotropic and covariance nulls,
  and a Neuronpedia link where the dictionary is a Neuronpedia-hosted release.

Cards are saved as one JSON list (``save_cards``, the demo's ``cards.json``) and read back by ``load_cards``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from sensfind.errors import InputFileError
from sensfind.comparison.match import Matches
from sensfind.runio import json_float, load_json, save_json
from sensfind.core.geometry import perturb
from sensfind.core.scan import base_output
from sensfind.core.linear_response import linear_predictions
from sensfind.comparison.compare import project_dictionary
from sensfind.core.geometry import effective_directions
from sensfind.comparison.match import NullConfig, match_directions

__all__ = ["Context", "FeatureCard", "Histogram", "LatentMatch", "LogitEffect", "TokenChange", "build_cards",
           "comparison_cards", "decode_token", "direct_logits", "latent_activations", "load_cards", "projection_histogram",
           "projections", "ranked_contexts", "save_cards", "token_changes", "token_changes_batch"]


@dataclass(frozen=True)
class TokenChange:
    token: str
    p_before: float
    p_after: float


@dataclass(frozen=True)
class Context:
    """A corpus position: the text before it, its token (highlighted), a little text after it.

    ``value`` is what the card ranks its contexts by (the latent's activation on a latent card, the
    direction's projection minus the corpus mean otherwise); ``band`` which part of the ranking it comes
    from (``top``, or ``p75``/``p50``: near that percentile of the positive values); ``pieces`` the shown
    tokens as ``[text, value]`` pairs (the highlighted one at ``center``), ``value`` None where the
    corpus activation of that position is not held (massive positions)."""

    before: str
    token: str
    after: str
    value: float
    window: int
    position: int
    band: str = "top"
    pieces: list | None = None
    center: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "Context":
        """A saved context; cards saved before ``value`` (then ``projection``) and the bands still load."""
        d = dict(d)
        if "projection" in d:
            d["value"] = d.pop("projection")
        return cls(**d)


@dataclass(frozen=True)
class Histogram:
    """Counts of a direction's projection (minus the corpus mean) over corpus tokens in the bins
    ``edges`` (one more than ``counts``), and ``base``: the base activation's projection (same mean)."""

    edges: list
    counts: list
    base: float


@dataclass(frozen=True)
class LogitEffect:
    """A token and the direct logit change a unit of the direction gives it (see ``direct_logits``)."""

    token: str
    logit: float


@dataclass(frozen=True)
class LatentMatch:
    latent: int
    cos: float
    p_isotropic: float | None
    p_covariance: float | None
    url: str | None


@dataclass
class FeatureCard:
    """One direction's card. ``curve`` is the effect at ``analysis.steps``; ``angle`` the angle (deg) the
    token changes were read at (the threshold angle, or the scan's end if it was not reached)."""

    key: str
    title: str
    kind: str
    threshold_deg: float
    curve: list
    angle: float
    gains: list
    losses: list
    contexts: list
    matches: list
    facts: list = field(default_factory=list)  # [(label, value)] shown under the title
    histogram: Histogram | None = None  # the projection over the corpus context tokens
    context_measure: str = "projection"  # what the contexts are ranked and shaded by
    logits_up: list = field(default_factory=list)  # [LogitEffect]: the direct logit effect's top tokens
    logits_down: list = field(default_factory=list)  # and its bottom tokens
    notes: list = field(default_factory=list)  # one line per piece left out, and why

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threshold_deg"] = json_float(self.threshold_deg)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureCard":
        """The card ``to_dict`` wrote; a ``null`` threshold is ``inf`` (not reached within the scan). Cards
        saved before the histogram, direct logits and notes load without them."""
        threshold = math.inf if d["threshold_deg"] is None else float(d["threshold_deg"])
        hist = d.get("histogram")
        return cls(d["key"], d["title"], d["kind"], threshold, list(d["curve"]), d["angle"],
                   [TokenChange(**t) for t in d["gains"]], [TokenChange(**t) for t in d["losses"]],
                   [Context.from_dict(c) for c in d["contexts"]], [LatentMatch(**m) for m in d["matches"]],
                   [tuple(f) for f in d.get("facts", [])], None if hist is None else Histogram(**hist),
                   d.get("context_measure", "projection"), [LogitEffect(**t) for t in d.get("logits_up", [])],
                   [LogitEffect(**t) for t in d.get("logits_down", [])], list(d.get("notes", [])))


def save_cards(path, cards: list) -> None:
    """Write ``cards`` to ``path`` as a JSON list of ``FeatureCard.to_dict()`` (atomically)."""
    save_json(path, [c.to_dict() for c in cards])


def load_cards(path) -> list:
    """The ``FeatureCard`` list that ``save_cards`` wrote to ``path``."""
    data = load_json(path, "feature cards file")
    try:
        if not isinstance(data, list):
            raise TypeError(f"a JSON list was expected, not {type(data).__name__}")
        return [FeatureCard.from_dict(c) for c in data]
    except (KeyError, TypeError) as exc:
        raise InputFileError(f"feature cards file {str(path)!r} does not hold saved cards: {exc}") from None


def decode_token(tokenizer, token: int) -> str:
    """A token as text (bytes in ``<0x..>`` form for models without a tokenizer)."""
    if tokenizer is None:
        return chr(token) if 32 <= token < 127 else f"<0x{token:02x}>"
    return tokenizer.decode([int(token)])


VISIBLE_CHANGE = 5e-4  # a gain or loss smaller than this shows as 0.000 -> 0.000 and is left out
RELEVANT_P = 1e-3  # tokens below this probability both before and after are not ranked


@torch.no_grad()
def token_changes(subject, direction: Tensor, angle_deg: float, tokenizer=None, k: int = 8) -> tuple[list, list]:
    """(gains, losses): at most ``k`` next tokens each whose probability the direction raises / lowers most
    when the base is rotated by ``angle_deg`` towards it (sphere mode), ranked by the change of log
    probability (the factor, so that the prompt's likeliest tokens, which every large rotation lowers,
    do not fill every card's losses) among tokens with probability >= ``RELEVANT_P`` before or after;
    changes below ``VISIBLE_CHANGE`` are left out, so a list can be shorter than ``k``, or empty."""
    return token_changes_batch(subject, direction[None], [angle_deg], tokenizer, k)[0]


@torch.no_grad()
def token_changes_batch(subject, directions: Tensor, angles_deg, tokenizer=None, k: int = 8) -> list:
    """:func:`token_changes` for directions ``[N, d]`` at angles ``[N]`` in one batch of ``N`` runs."""
    base = subject.base
    angles = torch.as_tensor([float(a) for a in angles_deg], dtype=base.dtype, device=base.device)
    acts = perturb(base, directions.to(base), angles[:, None], "sphere")[:, 0]  # [N, d]
    p0 = torch.softmax(base_output(subject).double(), -1)
    p1 = torch.softmax(subject.run(acts).double(), -1)  # [N, vocab]
    out = []
    for row in p1:
        delta = row - p0
        factor = torch.log(row.clamp_min(1e-300)) - torch.log(p0.clamp_min(1e-300))
        relevant = torch.maximum(row, p0) >= RELEVANT_P

        def rows(score: Tensor, keep: Tensor) -> list:
            score = torch.where(keep & relevant, score, torch.full_like(score, -math.inf))
            idx = score.topk(min(k, score.numel())).indices
            return [TokenChange(decode_token(tokenizer, int(i)), float(p0[i]), float(row[i])) for i in idx.tolist()
                    if math.isfinite(float(score[i]))]

        out.append((rows(factor, delta >= VISIBLE_CHANGE), rows(-factor, -delta >= VISIBLE_CHANGE)))
    return out


HISTOGRAM_BINS = 30
BANDS = (("p75", 0.75), ("p50", 0.5))  # the lower bands of contexts: near these percentiles of the positive values
ENCODE_CHUNK = 4096  # corpus activations encoded at once (their codes [chunk, n_latents] are held briefly)


@torch.no_grad()
def projections(direction: Tensor, acts: Tensor, mean: Tensor) -> Tensor:
    """``[M]``: each activation of ``acts [M, d]`` projected on the unit ``direction``, minus ``mean``'s projection."""
    u = direction.to(torch.float32).cpu()
    u = u / u.norm()
    return acts.float().cpu() @ u - mean.float().cpu() @ u


@torch.no_grad()
def latent_activations(dictionary, acts: Tensor, latents) -> Tensor:
    """``[M, L]``: the SAE's activation (``dictionary.encode``) of each of ``latents [L]`` on ``acts [M, d]``,
    encoded ``ENCODE_CHUNK`` rows at a time."""
    idx = torch.as_tensor(latents, dtype=torch.long)
    out = [dictionary.encode(acts[i : i + ENCODE_CHUNK])[:, idx.to(dictionary.decoder.device)].detach().float().cpu()
           for i in range(0, acts.shape[0], ENCODE_CHUNK)]
    return torch.cat(out) if out else torch.empty(0, len(idx))


def projection_histogram(values: Tensor, base: float, bins: int = HISTOGRAM_BINS) -> Histogram:
    """The histogram of ``values [M]`` in ``bins`` equal bins spanning the values and ``base`` (so that the
    base's marker lies on the axis); the counts sum to ``M``."""
    v = values.double().cpu()
    lo, hi = min(float(v.min()), base), max(float(v.max()), base)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(v, bins, lo, hi)
    return Histogram(torch.linspace(lo, hi, bins + 1, dtype=torch.float64).tolist(), [int(c) for c in counts.tolist()],
                     float(base))


@torch.no_grad()
def ranked_contexts(values: Tensor, index: Tensor, tokens: Tensor, tokenizer=None, k: int = 6, k_band: int = 2,
                    bands=BANDS, left: int = 12, right: int = 3) -> list:
    """Contexts of the corpus positions ``index [M, 2]`` ((window, position) in the windows ``tokens [W, L]``)
    ranked by ``values [M]``: the ``k`` highest (band ``top``), then ``k_band`` nearest each ``bands``
    percentile of the positive values; positive values only, at most one context per window (its other
    tokens are shaded anyway). Each context shows ``left`` tokens before its position and ``right`` after,
    every token with its own value (None where ``index`` lacks the position: massive activations)."""
    values = values.double().cpu()
    grid = torch.full(tuple(tokens.shape), math.nan, dtype=torch.float64)
    grid[index[:, 0], index[:, 1]] = values
    positive = values > 0
    if not positive.any():
        return []
    seen: set = set()
    out = []

    def take(order: Tensor, n: int, band: str) -> None:
        got = 0
        for i in order.tolist():
            w, pos = (int(x) for x in index[i])
            if got == n:
                break
            if w in seen or not positive[i]:
                continue
            seen.add(w)
            got += 1
            ids = tokens[w].tolist()
            lo, hi = max(0, pos - left), min(len(ids), pos + 1 + right)
            pieces = [[decode_token(tokenizer, ids[j]), None if math.isnan(float(grid[w, j])) else float(grid[w, j])]
                      for j in range(lo, hi)]
            c = pos - lo
            out.append(Context("".join(p[0] for p in pieces[:c]), pieces[c][0], "".join(p[0] for p in pieces[c + 1 :]),
                               float(values[i]), w, pos, band, pieces, c))

    take(values.argsort(descending=True, stable=True), k, "top")
    pos_values = values[positive]
    for band, q in bands:
        target = float(torch.quantile(pos_values, q))
        take((values - target).abs().argsort(stable=True), k_band, band)
    return out


@torch.no_grad()
def direct_logits(subject, direction: Tensor, tokenizer=None, k: int = 8) -> tuple[list, list] | None:
    """The direction's direct logit effect: ``k`` tokens each with the largest and smallest entries of
    ``(v * w) @ W_U``, where ``v`` is the unit direction (its mean removed when the final norm is a
    LayerNorm, which removes it too), ``w`` the final norm's elementwise scale (``ln_final.w``; ones when the
    norm has none) and ``W_U`` the unembedding. The norm's division by the residual's scale (the same for
    every token) and the biases (independent of the direction) are left out, as are later layers.
    None when the subject has no model with an unembedding (a function subject, the toy)."""
    model = getattr(subject, "model", None)
    w_u = getattr(model, "W_U", None)
    if w_u is None:
        return None
    v = direction.detach().to(w_u.dtype).to(w_u.device)
    v = v / v.norm()
    if model.cfg.normalization_type in ("LN", "LNPre"):
        v = v - v.mean()
    scale = getattr(getattr(model, "ln_final", None), "w", None)
    if scale is not None:
        v = v * scale
    logits = (v @ w_u).double().cpu()
    k = min(k, logits.numel())
    pick = lambda idx: [LogitEffect(decode_token(tokenizer, int(i)), float(logits[i])) for i in idx.tolist()]  # noqa: E731
    return pick(logits.topk(k).indices), pick((-logits).topk(k).indices)


def _latent_matches(m: Matches, cov: Matches | None, i: int, exclude: int | None = None, k: int | None = None) -> list:
    """The nearest latents of direction ``i`` (at most ``k``), ``exclude`` (a latent card's own latent) left out."""
    out = []
    cov_p = {}
    if cov is not None:
        cov_p = {int(l): float(p) for l, p in zip(cov.latents[i], cov.p_value[i])}
    for j in range(m.k):
        lat = int(m.latents[i, j])
        if lat != exclude:
            out.append(LatentMatch(lat, float(m.cos[i, j]), float(m.p_value[i, j]), cov_p.get(lat), m.urls[i][j]))
    return out[:k]


def _own_matches(rows: Tensor, target, k: int, n_null: int, seed: int) -> Matches:
    """Matches of latent rows with the dictionary ``target``: one more than ``k``, since a latent's own row is
    its nearest latent and is left out of its card."""
    return match_directions(rows, target, min(k + 1, target.n_latents), NullConfig("isotropic", n_null, seed))


class _CardMaker:
    """What the cards of one subject share: the corpus contexts (or a note on why there are none), the
    latents' activations on them, and one batch of token changes for every card (``finish``)."""

    def __init__(self, subject, stop: float, dictionary, contexts, corpus_tokens, tokenizer, k_tokens: int,
                 k_contexts: int, no_contexts: str = "no corpus contexts"):
        self.subject, self.stop, self.dictionary, self.contexts = subject, stop, dictionary, contexts
        self.tokens, self.tokenizer, self.k_tokens, self.k_contexts = corpus_tokens, tokenizer, k_tokens, k_contexts
        self.no_contexts = no_contexts
        self.mean = None if contexts is None else contexts.acts.mean(0)
        self.latent_values: dict = {}
        self.cards: list = []
        self.pending: list = []

    def encode_latents(self, latents) -> None:
        """The activations of ``latents`` on the contexts, which their cards rank contexts by."""
        latents = [int(x) for x in latents]
        if self.contexts is not None and latents and self.dictionary.can_encode:
            acts = latent_activations(self.dictionary, self.contexts.acts, latents)
            self.latent_values = {lat: acts[:, j] for j, lat in enumerate(latents)}

    def add(self, key, title, kind, direction, curve, threshold: float, matches, facts, latent: int | None = None):
        notes, hist, ctx, measure = [], None, [], "projection"
        if self.contexts is None:
            notes.append(self.no_contexts)
        else:
            proj = projections(direction, self.contexts.acts, self.mean)
            hist = projection_histogram(proj, float(projections(direction, self.subject.base[None], self.mean)[0]))
            values = proj
            if latent is not None and latent in self.latent_values:
                values, measure = self.latent_values[latent], "latent activation"
            elif latent is not None:
                notes.append("contexts ranked by projection: the dictionary has no encoder")
            ctx = ranked_contexts(values, self.contexts.index, self.tokens, self.tokenizer, self.k_contexts)
            if not ctx:
                notes.append(f"no corpus token has a positive {measure}")
        logits = direct_logits(self.subject, direction, self.tokenizer, self.k_tokens)
        if logits is None:
            notes.append("no direct logit effect: the subject has no unembedding (W_U)")
        angle = threshold if math.isfinite(threshold) else self.stop
        self.pending.append(direction)
        self.cards.append(FeatureCard(key, title, kind, threshold, [float(x) for x in curve], angle, [], [], ctx, matches,
                                      facts, hist, measure, *(logits or ([], [])), notes))

    def finish(self, tau: float | None = None) -> list:
        """The cards, with their token changes; with ``tau`` (next-token KL effects) each card also states its
        threshold over the linear response's quadratic onset and its early growth (``core.linear_response``)."""
        if self.cards and tau is not None:
            pred = linear_predictions(self.subject, torch.stack([d.to(self.subject.base) for d in self.pending]),
                                      tau=tau, thresholds=torch.tensor([c.threshold_deg for c in self.cards]))
            for j, c in enumerate(self.cards):
                g = pred.early_growth[j]
                c.facts = [*c.facts, ("threshold / quadratic onset θ_quad (linear response)",
                                      f"{float(pred.ratio[j]):.3g} (θ_quad {float(pred.onset_deg[j]):.3g}°)"),
                           ("KL / quadratic form at " + " / ".join(f"{a:g}°" for a in pred.angles),
                            " / ".join(f"{float(x):.3g}" for x in g))]
        if self.cards:  # one batch for every card's token changes
            changes = token_changes_batch(self.subject, torch.stack([d.to(self.subject.base) for d in self.pending]),
                                          [c.angle for c in self.cards], self.tokenizer, self.k_tokens)
            for c, (gains, losses) in zip(self.cards, changes):
                c.gains, c.losses = gains, losses
        return self.cards


def build_cards(analysis, subject, dictionary, contexts, corpus_tokens: Tensor, tokenizer=None,
                k_tokens: int = 8, k_contexts: int = 6) -> list:
    """Cards for every optimum and every scanned latent of a ``PromptAnalysis``; ``contexts`` is the
    ``corpus_sae.SiteActivations`` of the corpus windows ``corpus_tokens [W, L]`` searched for contexts."""

    cfg = analysis.config
    maker = _CardMaker(subject, float(analysis.steps[-1]), dictionary, contexts, corpus_tokens, tokenizer, k_tokens,
                       k_contexts)
    iso, cov = analysis.matches["isotropic"], analysis.matches.get("covariance")
    opt_t = analysis.threshold("optima")
    found = analysis.discovery
    for i in range(len(found)):
        facts = [("restarts converged here", int(found.counts[i]))]
        if analysis.real_other is not None:
            facts.append(_real_other_fact(analysis.real_other, i))
        maker.add(f"optimum-{i}", f"Optimum {i}", "optimum", analysis.directions["optima"][i],
                  analysis.effects["optima"][i], float(opt_t[i]), _latent_matches(iso, cov, i), facts)

    target = project_dictionary(dictionary, subject.base)
    ref = analysis.refinement
    refined = {int(l): j for j, l in enumerate(analysis.refined_latents.tolist())}
    maker.encode_latents(torch.cat([analysis.latents[k] for k in ("SAE active", "SAE inactive")]).tolist())
    for kind in ("SAE active", "SAE inactive"):
        ids = analysis.latents[kind]
        if not len(ids):
            continue
        rows = analysis.directions[kind]
        m = _own_matches(rows, target, cfg.k, cfg.n_null, cfg.seed)
        t = analysis.threshold(kind)
        for i, lat in enumerate(ids.tolist()):
            facts = [("sign", "+" if float(rows[i] @ target.decoder[lat].to(rows)) >= 0 else "−")]
            if kind == "SAE active":
                facts.append(("activation on the base", f"{float(analysis.activation[i]):.3g}"))
            if ref is not None and lat in refined:
                facts += _refined_facts(ref, refined[lat])
            url = dictionary.neuronpedia_url(lat)
            title = f"Latent {lat} ({kind.split()[1]})"
            maker.add(f"latent-{lat}", title, kind, rows[i], analysis.effects[kind][i], float(t[i]),
                      _latent_matches(m, None, i, exclude=lat, k=cfg.k),
                      facts + ([("Neuronpedia", url)] if url else []), latent=lat)
    return maker.finish(cfg.tau)


def comparison_cards(comparison, subject, directions: Tensor, dictionary, contexts=None, corpus_tokens=None,
                     tokenizer=None, no_contexts: str = "no corpus contexts", k_tokens: int = 8,
                     k_contexts: int = 6) -> list:
    """Cards for the compared ``directions [N, d]`` and every scanned latent of a ``compare.Comparison``
    (its curves; none without them). ``contexts``/``corpus_tokens`` as for ``build_cards``; without them the
    cards carry the one-line note ``no_contexts`` instead of the histogram and contexts."""
    if comparison.steps is None or comparison.optima_effects is None:
        return []
    cfg = comparison.config
    kl_tau = cfg.tau if cfg.effect == "kl" else None  # the linear response predicts next-token KL only
    maker = _CardMaker(subject, float(comparison.steps[-1]), dictionary, contexts, corpus_tokens, tokenizer, k_tokens,
                       k_contexts, no_contexts)
    iso, cov = comparison.matches["isotropic"], comparison.matches.get("covariance")
    opt_t = comparison.optima_blowup
    for i in range(directions.shape[0]):
        facts = [] if comparison.real_other is None else [_real_other_fact(comparison.real_other, i)]
        maker.add(f"optimum-{i}", f"Direction {i}", "optimum", directions[i], comparison.optima_effects[i],
                  float(opt_t[i]), _latent_matches(iso, cov, i), facts)
    sens = comparison.sensitivity
    if not sens.latents.numel():
        return maker.finish(kl_tau)
    base = subject.base
    target = project_dictionary(dictionary, base) if cfg.project_base else dictionary
    rows = effective_directions(dictionary.decoder[sens.latents].to(base.dtype), base, "sphere")
    rows = rows * sens.sign[:, None].to(rows)
    m = _own_matches(rows, target, cfg.k, cfg.n_null, cfg.seed)
    why = {}
    for group, ids in sens.groups.items():
        for lat in ids:
            why.setdefault(int(lat), []).append(group)
    active = dictionary.encode(base[None].to(dictionary.decoder))[0].detach() if dictionary.can_encode else None
    refined = {} if comparison.refined_latents is None else \
        {int(l): j for j, l in enumerate(comparison.refined_latents.tolist())}
    maker.encode_latents(sens.latents.tolist())
    for i, lat in enumerate(sens.latents.tolist()):
        facts = [("sign", "+" if int(sens.sign[i]) > 0 else "−"), ("chosen as", ", ".join(why.get(lat, ["scanned"]))),
                 ("local optimum (no probe blows up earlier)", "yes" if bool(sens.local_optimum[i]) else "no")]
        if active is not None:
            facts.append(("activation on the base", f"{float(active[lat]):.3g}"))
        if comparison.refinement is not None and lat in refined:
            facts += _refined_facts(comparison.refinement, refined[lat])
        url = dictionary.neuronpedia_url(lat)
        kind = "SAE active" if active is not None and float(active[lat]) > 0 else "SAE latent"
        maker.add(f"latent-{lat}", f"Latent {lat}", kind, rows[i], sens.effects[i], float(sens.blowup[i]),
                  _latent_matches(m, None, i, exclude=lat, k=cfg.k), facts + ([("Neuronpedia", url)] if url else []),
                  latent=lat)
    return maker.finish(kl_tau)


def _real_other_fact(r, i: int) -> tuple:
    return ("best |cos| with a real-other direction", f"{abs(float(r.best_cos[i])):.3f} (p = {float(r.p_value[i]):.3g})")


def _refined_facts(ref, j: int) -> list:
    return [("refined: cos(start, end)", f"{float(ref.cos_start_end[j]):.3f}"),
            ("refined: threshold before → after (deg)", f"{_deg(ref.blowup_start[j])} → {_deg(ref.blowup_end[j])}")]


def _deg(x) -> str:
    x = float(x)
    return f"{x:.1f}" if math.isfinite(x) else "not reached"
