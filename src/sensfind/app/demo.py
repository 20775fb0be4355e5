"""The offline demo: a real model (SmolLM2-135M) or the toy -> SAE -> discovery -> comparison -> HTML report.

``run_model_demo`` (``sensfind demo``): one prompt drawn from the offline corpus, an SAE trained with
SAELens on corpus activations at the site (cached), discovery of sensitivity optima, their comparison
with isotropic, cov-random and real-other directions and with the SAE's active and inactive latents,
refinement of the most active latents, and a report with a feature card for every optimum and latent.

``run_demo`` (``sensfind demo --model toy``): the toy has planted features (ground truth), an SAE is
trained on its activations, and the optima are checked against the planted features; refinement starts
discovery from the SAE's decoder rows and measures whether it moves them closer to the features.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from sensfind.comparison.analysis import AnalysisConfig, analyse_prompt, massive_last_token
from sensfind.comparison.compare import CompareConfig, compare
from sensfind.configs import MAX_SEED, Config, check_int
from sensfind.dictionaries.corpus_sae import MAX_ACTIVATIONS, CorpusSAEConfig, clean_activations, train_corpus_sae
from sensfind.dictionaries.dictionary import Dictionary
from sensfind.dictionaries.training import TrainSAEConfig, train_sae
from sensfind.models.prompts import load_corpus, resolve_cache_dir
from sensfind.discovery.config import DiscoverConfig
from sensfind.discovery.loop import discover
from sensfind.core.recovery import recovery
from sensfind.runio import save_json, staged_dir
from sensfind.specs import parse_model_spec
from sensfind.core.toy import ToyConfig, ToyModel
from sensfind.reporting.report import write_demo_report
from sensfind.comparison.cards import build_cards, save_cards
from sensfind.models.loading import load_model
from sensfind.reporting.report import prompt_markup, write_model_demo_report
from sensfind.models.transformer_subject import TransformerSubject
from sensfind.models.prompts import prompt_activations

log = logging.getLogger(__name__)

__all__ = ["DemoConfig", "ModelDemoConfig", "run_demo", "run_model_demo"]


@dataclass(frozen=True)
class DemoConfig(Config):
    """Sizes of the demo. ``quick`` shrinks everything for tests.

    Attributes:
        seed: seeds the toy model, its training stream, the SAE and discovery (at most 4294967295).
        input: which input of the toy model's stream is the base (at most 4294967295).
        n_train: toy activations the SAE is trained on (at most 1000000: memory).
        d_sae: SAE latents (at most 65536).
        sae_epochs: SAE training epochs (at most 1000).
        restarts: discovery restarts per round (at most 4096, as ``DiscoverConfig``'s).
        iterations: discovery iterations per round (at most 10000, as ``DiscoverConfig``'s).
        n_others: real-other activations (other inputs of the toy; at most 100000).
        compare: settings of ``compare`` (a ``CompareConfig``; no budget: the toy's points are cheap).
    """

    seed: int = 0
    input: int = 0
    n_train: int = 20000
    d_sae: int = 256
    sae_epochs: int = 5
    restarts: int = 32
    iterations: int = 60
    n_others: int = 256
    compare: CompareConfig = CompareConfig(max_points=None)

    def __post_init__(self):
        for name, lo, hi in (("seed", 0, MAX_SEED), ("input", 0, MAX_SEED), ("n_train", 1, 1_000_000), ("d_sae", 1, 65536),
                             ("sae_epochs", 1, 1000), ("restarts", 1, 4096), ("iterations", 0, 10_000),
                             ("n_others", 1, 100_000)):
            check_int(name, getattr(self, name), lo, maximum=hi)
        if not isinstance(self.compare, CompareConfig):
            raise ValueError(f"compare must be a CompareConfig, got {type(self.compare).__name__}")

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        base = cls(n_train=4000, d_sae=192, sae_epochs=3, restarts=8, iterations=25, n_others=128,
                   compare=CompareConfig(n_null=300, n_latents=8, probes=4, scan_steps=181, refine_iterations=15,
                                         max_points=None))
        return replace(base, **overrides)


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), cache_dir: str | Path | None = None,
             progress: bool = True, overwrite: bool = False) -> dict:
    """Run the demo into ``out`` (written whole or not at all); returns the summary dict."""

    t0 = time.perf_counter()
    cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "sensfind"
    timings = {}
    with staged_dir(out, overwrite=overwrite) as tmp:
        toy = ToyModel(ToyConfig(seed=config.seed))
        subject = toy.subject(config.input)
        train = toy.sample(config.n_train, seed=config.seed + 10).acts
        t = time.perf_counter()
        sae = train_sae(train, hook_name=None, d_sae=config.d_sae, seed=config.seed, cache_dir=cache_dir,
                        config=TrainSAEConfig(epochs=config.sae_epochs))
        timings["sae_seconds"] = time.perf_counter() - t
        planted = toy.features
        sae_rec = (sae.decoder.double() @ planted.double().T).max(dim=0).values  # best cos per planted feature
        t = time.perf_counter()
        dconf = DiscoverConfig(restarts=config.restarts, iterations=config.iterations, seed=config.seed)
        found = discover(subject, dconf, progress=progress)
        timings["discover_seconds"] = time.perf_counter() - t
        others = subject.real_others(config.n_others, seed=config.seed + 20)
        t = time.perf_counter()
        comp = compare(subject, found.directions, sae, others, config.compare, discover_config=dconf)
        timings["compare_seconds"] = time.perf_counter() - t

        signed = subject.signed_features()
        rec = recovery(found.restart_directions, signed, subject.base)
        opt_rec = recovery(found.directions, signed, subject.base)
        # which planted features the SAE learned (some decoder row within cos 0.9 of the feature)
        learned = sae_rec >= 0.9
        opt_feature = opt_rec.best_feature
        opt_learned = torch.tensor([bool(learned[f]) if f >= 0 else False for f in opt_feature.tolist()])
        best_cos = comp.matches["isotropic"].cos[:, 0].abs()
        p = comp.matches["isotropic"].p_value[:, 0]
        summary = {
            "config": config.to_dict(),
            "sae_mean_best_cos_to_planted": float(sae_rec.mean()),
            "sae_fraction_planted_learned": float(learned.float().mean()),
            "restarts_reaching_planted": rec.fraction_reached,
            "distinct_optima": len(found),
            "distinct_planted_found": len(rec.distinct_features),
            "optima_blowup_deg": found.blowup_deg.tolist(),
            "random_blowup_median_deg": float(comp.sensitivity.summary()["random_blowup_median"]),
            "optima_best_sae_cos": best_cos.tolist(),
            "optima_p_value": p.tolist(),
            "optima_planted_learned_by_sae": opt_learned.tolist(),
            "optima_matching_sae": int(((best_cos >= 0.9) & (p < config.compare.alpha)).sum()),
            "optima_whose_feature_the_sae_learned": int(opt_learned.sum()),
            "comparison": comp.summary(),
            "timings": timings,
        }
        if comp.refinement is not None:
            start = recovery(comp.refinement.start, signed, subject.base, threshold=0.5)
            end = recovery(comp.refinement.end, signed, subject.base, threshold=0.5)
            summary["refinement_cos_to_planted"] = {"before": start.best_cos.tolist(), "after": end.best_cos.tolist()}
        comp.save(tmp / "comparison")
        found.save(tmp / "discovery")
        sae.save(tmp / "sae")
        timings["total_seconds"] = time.perf_counter() - t0
        save_json(tmp / "summary.json", summary)
        save_json(tmp / "config.json", {"command": "demo", "demo": config.to_dict(), "toy": toy.config.to_dict(),
                                        "discover": dconf.to_dict()})
        write_demo_report(tmp, found=found, comparison=comp, summary=summary)
    return summary


# ---------------------------------------------------------------------------------------------------
# The real job: a trained model, one corpus prompt

@dataclass(frozen=True)
class ModelDemoConfig(Config):
    """Sizes of the demo on a real model.

    Attributes:
        model: a ``sensfind.load_model`` name (``smollm2-135m``: offline, one corpus prompt, local SAE,
            feature cards); on the command line ``toy`` runs the toy demo (``DemoConfig``, planted features).
        sae: the SAE (``corpus_sae.train_corpus_sae``: SAELens on corpus activations, massive ones
            excluded, cached); its ``hook`` is the site; the perturbed position is the prompt's last token.
        seed: which prompt, real-other prompts and context windows are drawn (at most 4294967295).
        input: which prompt: the ``input``-th window (seeded by ``seed``) of the corpus's test split (at most
            10000).
        prompt_length: tokens per prompt window (at most 1024).
        context_windows: train-split windows searched for each card's top contexts; their activations
            (massive ones excluded) also give the mean and covariance of the cov-random baseline and the
            covariance null (at most 100000 windows, at most 4194304 tokens in all with context_length:
            their activations are held in memory).
        context_length: tokens per context window (at most 1024).
        n_others: test-split prompts whose last-token activations are the real-other targets (at most
            10000).
        analysis: discovery, baselines, matching and refinement sizes (``analysis.AnalysisConfig``).
    """

    model: str = "smollm2-135m"
    sae: CorpusSAEConfig = CorpusSAEConfig()
    seed: int = 0
    input: int = 0
    prompt_length: int = 10
    context_windows: int = 300
    context_length: int = 64
    n_others: int = 64
    analysis: AnalysisConfig = AnalysisConfig()

    def __post_init__(self):
        parse_model_spec(self.model, "model", allow_toy=False)
        for name, lo, hi in (("seed", 0, MAX_SEED), ("input", 0, 10_000), ("prompt_length", 2, 1024),
                             ("context_windows", 1, 100_000), ("context_length", 2, 1024), ("n_others", 1, 10_000)):
            check_int(name, getattr(self, name), lo, maximum=hi)
        if self.context_windows * self.context_length > MAX_ACTIVATIONS:
            raise ValueError(f"context_windows x context_length must be at most {MAX_ACTIVATIONS} tokens (their "
                             f"activations are held in memory), got {self.context_windows} x {self.context_length}")
        for name, cls in (("sae", CorpusSAEConfig), ("analysis", AnalysisConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")

    @property
    def hook(self) -> str:
        return self.sae.hook

    @classmethod
    def quick(cls, **overrides) -> "ModelDemoConfig":
        base = cls(sae=CorpusSAEConfig(expansion=4, n_windows=120, window=32, epochs=1, batch_size=256, eval_windows=4),
                   context_windows=40, context_length=32, n_others=16,
                   analysis=AnalysisConfig(max_points=None, restarts=3, iterations=4, scan_steps=8, n_random=6, n_cov=6, n_real_other=6,
                                           max_active=3, n_inactive=2, n_refine=1, refine_iterations=2, curve_steps=16,
                                           n_null=200))
        return replace(base, **overrides)


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[sensfind demo] {message}", file=sys.stderr, flush=True)


def _quality_line(q: dict) -> str:
    return (f"explained variance {q['explained_variance']:.3f}, L0 {q['l0']:.1f}, dead {q['dead_fraction']:.1%}, "
            f"next-token loss {q['ce_increase_sae']:+.3f} nats spliced (same-norm random error {q['ce_increase_random']:+.3f})")


def pick_prompt(model, config: ModelDemoConfig, corpus) -> tuple[list[int], int]:
    """The ``input``-th test-split window whose last token is not a massive activation, and how many
    windows were skipped for being one."""
    windows = corpus.windows(config.input + 50, config.prompt_length, seed=config.seed, split="test")
    massive = massive_last_token(model, windows, config.hook)
    ok = torch.nonzero(~massive)[:, 0]
    if len(ok) <= config.input:
        raise ValueError("too many corpus windows with a massive-activation base; try another --seed")
    i = int(ok[config.input])
    return windows[i].tolist(), int(massive[:i].sum())


def run_model_demo(out: str | Path, config: ModelDemoConfig = ModelDemoConfig(), cache_dir: str | Path | None = None,
                   progress: bool = True, overwrite: bool = False, device: str = "cpu") -> dict:
    """The real job on one corpus prompt, into ``out`` (written whole or not at all); returns the summary."""

    t0 = time.perf_counter()
    cache_dir = resolve_cache_dir(True if cache_dir is None else cache_dir)
    timings: dict = {}
    with staged_dir(out, overwrite=overwrite) as tmp:
        _say(progress, f"loading {config.model}")
        model = load_model(config.model, device=device)
        corpus = load_corpus(model)
        timings["load_seconds"] = time.perf_counter() - t0
        t = time.perf_counter()
        _say(progress, f"the corpus SAE at {config.hook} ({config.sae.expansion}x{model.cfg.d_model} latents; trained on "
                       f"{config.sae.n_windows} corpus windows x {config.sae.window} tokens unless cached)")
        sae = train_corpus_sae(model, config.sae, cache_dir=cache_dir)
        _say(progress, "SAE quality: " + _quality_line(sae.info["quality"]))
        timings["sae_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        prompt, skipped = pick_prompt(model, config, corpus)
        subject = TransformerSubject(model, prompt, hook=config.hook, chunk_size=1024)  # few large calls
        other_windows = corpus.windows(config.n_others + 1, config.prompt_length, seed=config.seed + 7, split="test")

        others = prompt_activations(model, [w.tolist() for w in other_windows if w.tolist() != prompt][: config.n_others],
                                    config.hook)
        ctx_tokens = corpus.windows(config.context_windows, config.context_length, seed=config.seed + 2, split="train")
        _say(progress, f"activations of {config.context_windows} context windows and {len(others)} real-other prompts")
        contexts = clean_activations(model, ctx_tokens, config.hook, config.sae.max_norm_ratio, config.sae.exclude_first)
        pool = contexts.acts
        timings["activations_seconds"] = time.perf_counter() - t
        a = config.analysis
        budget = f"rounds of {a.restarts} restarts, {a.max_points} scan points" if a.max_points else f"{a.restarts} restarts"
        _say(progress, f"discovery ({budget}, {a.iterations} iterations), "
                       "baselines, SAE latents, matching, refinement")
        analysis = analyse_prompt(subject, sae, others, pool, config.analysis, progress=progress)
        timings.update(analysis.timings)
        t = time.perf_counter()
        _say(progress, "feature cards and report")
        cards = build_cards(analysis, subject, sae, contexts, ctx_tokens, model.tokenizer)
        summary = model_summary(config, analysis, sae, subject, prompt, skipped, model.tokenizer)
        analysis.save(tmp / "analysis")
        sae.save(tmp / "sae")
        save_cards(tmp / "cards.json", cards)
        save_json(tmp / "config.json", {"command": "demo", "model": config.model, "demo": config.to_dict(),
                                        "discover": config.analysis.discover_config.to_dict()})
        write_model_demo_report(tmp, analysis, cards, summary)
        timings["report_seconds"] = time.perf_counter() - t
        timings["total_seconds"] = time.perf_counter() - t0
        summary["timings"] = timings
        save_json(tmp / "summary.json", summary)
    return summary


def model_summary(config: ModelDemoConfig, analysis, sae: Dictionary, subject, prompt, skipped: int, tokenizer) -> dict:
    """The demo's headline numbers (JSON-ready)."""

    s = analysis.summary()
    prompt_html = str(prompt_markup(prompt, -1, tokenizer))
    return {
        "config": config.to_dict(), "prompt_html": prompt_html,
        "model": config.model, "hook": config.hook,
        "prompt_tokens": prompt, "prompt_text": tokenizer.decode(prompt) if tokenizer is not None else None,
        "prompts_skipped_massive": skipped, "base_norm": subject.norm_info(),
        "sae": {"d_sae": sae.n_latents, "source": sae.source, "quality": sae.info["quality"],
                "exclusion": sae.info["exclusion"], "config": sae.info["config"]},
        "n_optima": len(analysis.discovery),
        "optima_beating_real_other_median": s["optima_beating_real_other_median"],
        "optima_matching_sae_isotropic": s["matches_isotropic"]["n_significant"],
        "optima_matching_sae_covariance": s["matches_covariance"]["n_significant"],
        "alpha": config.analysis.alpha,
        "analysis": s,
    }
