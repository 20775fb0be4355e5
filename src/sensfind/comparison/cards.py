"""Feature cards: what one direction does to the model and where it shows up in real text.

A card for a direction ``u`` at a subject (a site of one prompt) holds

* its effect curve (next-token KL vs slerp angle) beside the isotropic-random and real-other curves;
* the next tokens that gain and lose the most probability when the base is rotated by the direction's
  threshold angle (decoded strings; ``token_changes``);
* the corpus contexts whose activation at the site projects most strongly on ``u`` after subtracting
  the corpus mean, with the token highlighted in its window (``top_contexts``);
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
from sensfind.comparison.compare import project_dictionary
from sensfind.comparison.match import NullConfig, match_directions

__all__ = ["Context", "FeatureCard", "LatentMatch", "TokenChange", "build_cards", "decode_token", "load_cards",
           "save_cards", "token_changes", "token_changes_batch", "top_contexts"]


@dataclass(frozen=True)
class TokenChange:
    token: str
    p_before: float
    p_after: float


@dataclass(frozen=True)
class Context:
    """A corpus position: the text before it, its token (highlighted), a little text after it."""

    before: str
    token: str
    after: str
    projection: float
    window: int
    position: int


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threshold_deg"] = json_float(self.threshold_deg)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureCard":
        """The card ``to_dict`` wrote; a ``null`` threshold is ``inf`` (not reached within the scan)."""
        threshold = math.inf if d["threshold_deg"] is None else float(d["threshold_deg"])
        return cls(d["key"], d["title"], d["kind"], threshold, list(d["curve"]), d["angle"],
                   [TokenChange(**t) for t in d["gains"]], [TokenChange(**t) for t in d["losses"]],
                   [Context(**c) for c in d["contexts"]], [LatentMatch(**m) for m in d["matches"]],
                   [tuple(f) for f in d.get("facts", [])])


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


@torch.no_grad()
def top_contexts(direction: Tensor, acts: Tensor, index: Tensor, tokens: Tensor, tokenizer=None, k: int = 6,
                 mean: Tensor | None = None, left: int = 12, right: int = 3) -> list:
    """The ``k`` corpus positions whose activation ``acts [M, d]`` (at (window, position) ``index [M, 2]``
    of windows ``tokens [W, L]``; massive activations already left out, see ``corpus_sae.clean_activations``)
    projects most strongly on ``direction`` after subtracting ``mean`` (the activations' mean by default),
    each with ``left`` tokens before it and ``right`` after."""
    u = direction.to(torch.float32).cpu()
    u = u / u.norm()
    mean = acts.mean(0) if mean is None else mean.float().cpu()
    proj = acts @ u - mean @ u  # [M]
    out = []
    for i in proj.topk(min(k, proj.numel())).indices.tolist():
        w, pos = (int(x) for x in index[i])
        ids = tokens[w].tolist()
        dec = lambda xs: "".join(decode_token(tokenizer, t) for t in xs)  # noqa: E731
        out.append(Context(dec(ids[max(0, pos - left) : pos]), decode_token(tokenizer, ids[pos]),
                           dec(ids[pos + 1 : pos + 1 + right]), float(proj[i]), w, pos))
    return out


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


def build_cards(analysis, subject, dictionary, contexts, corpus_tokens: Tensor, tokenizer=None,
                k_tokens: int = 8, k_contexts: int = 6) -> list:
    """Cards for every optimum and every scanned latent of a ``PromptAnalysis``; ``contexts`` is the
    ``corpus_sae.SiteActivations`` of the corpus windows ``corpus_tokens [W, L]`` searched for top contexts."""

    cfg = analysis.config
    steps = analysis.steps
    mean = contexts.acts.mean(0)
    stop = float(steps[-1])
    cards = []

    pending = []

    def card(key, title, kind, direction, curve, threshold, matches, facts):
        angle = threshold if math.isfinite(threshold) else stop
        top = top_contexts(direction, contexts.acts, contexts.index, corpus_tokens, tokenizer, k_contexts, mean)
        pending.append(direction)
        cards.append(FeatureCard(key, title, kind, threshold, [float(x) for x in curve], angle, [], [], top,
                                 matches, facts))

    iso, cov = analysis.matches["isotropic"], analysis.matches.get("covariance")
    opt_t = analysis.threshold("optima")
    found = analysis.discovery
    for i in range(len(found)):
        facts = [("restarts converged here", int(found.counts[i]))]
        if analysis.real_other is not None:
            r = analysis.real_other
            facts.append(("best |cos| with a real-other direction", f"{abs(float(r.best_cos[i])):.3f} "
                                                                    f"(p = {float(r.p_value[i]):.3g})"))
        card(f"optimum-{i}", f"Optimum {i}", "optimum", analysis.directions["optima"][i], analysis.effects["optima"][i],
             float(opt_t[i]), _latent_matches(iso, cov, i), facts)

    target = project_dictionary(dictionary, subject.base)
    ref = analysis.refinement
    refined = {int(l): j for j, l in enumerate(analysis.refined_latents.tolist())}
    for kind in ("SAE active", "SAE inactive"):
        ids = analysis.latents[kind]
        if not len(ids):
            continue
        rows = analysis.directions[kind]
        # one more than k: a latent's own row is its nearest latent, and is left out of its card
        m = match_directions(rows, target, min(cfg.k + 1, dictionary.n_latents), NullConfig("isotropic", cfg.n_null,
                                                                                           cfg.seed))
        t = analysis.threshold(kind)
        for i, lat in enumerate(ids.tolist()):
            facts = [("sign", "+" if float(rows[i] @ target.decoder[lat].to(rows)) >= 0 else "−")]
            if kind == "SAE active":
                facts.append(("activation on the base", f"{float(analysis.activation[i]):.3g}"))
            if ref is not None and lat in refined:
                j = refined[lat]
                facts.append(("refined: cos(start, end)", f"{float(ref.cos_start_end[j]):.3f}"))
                facts.append(("refined: threshold before → after (deg)",
                              f"{_deg(ref.blowup_start[j])} → {_deg(ref.blowup_end[j])}"))
            url = dictionary.neuronpedia_url(lat)
            title = f"Latent {lat} ({kind.split()[1]})"
            card(f"latent-{lat}", title, kind, rows[i], analysis.effects[kind][i], float(t[i]),
                 _latent_matches(m, None, i, exclude=lat, k=cfg.k), facts + ([("Neuronpedia", url)] if url else []))
    if cards:  # one batch for every card's token changes
        changes = token_changes_batch(subject, torch.stack(pending), [c.angle for c in cards], tokenizer, k_tokens)
        for c, (gains, losses) in zip(cards, changes):
            c.gains, c.losses = gains, losses
    return cards


def _deg(x) -> str:
    x = float(x)
    return f"{x:.1f}" if math.isfinite(x) else "not reached"
