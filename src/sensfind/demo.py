"""The offline demo: toy model -> locally trained SAE -> discovery -> comparison -> HTML report.

Everything runs on this machine in a few minutes: the toy has planted features (ground truth), an SAE
is trained on its activations with SAELens (cached), discovery looks for sensitivity optima on one
input, and the optima are compared with the SAE's latents, with real-other directions and with
random directions. Refinement starts discovery from the SAE's decoder rows and measures, against the
planted features, whether it moves them closer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .compare import CompareConfig, compare
from .dictionary import TrainSAEConfig, train_sae
from .optimize import DiscoverConfig, discover
from .recovery import recovery
from .runio import save_json, staged_dir
from .toy import ToyConfig, ToyModel

log = logging.getLogger(__name__)

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo. ``quick`` shrinks everything for tests."""

    seed: int = 0
    input: int = 0
    n_train: int = 20000
    d_sae: int = 256
    sae_epochs: int = 5
    restarts: int = 32
    iterations: int = 60
    n_others: int = 256
    compare: CompareConfig = CompareConfig()

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        base = cls(n_train=4000, d_sae=192, sae_epochs=3, restarts=8, iterations=25, n_others=128,
                   compare=CompareConfig(n_null=300, n_latents=8, probes=4, scan_steps=181, refine_iterations=15))
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), cache_dir: str | Path | None = None,
             progress: bool = True, overwrite: bool = False) -> dict:
    """Run the demo into ``out`` (written whole or not at all); returns the summary dict."""
    from .report import write_demo_report

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
        write_demo_report(tmp, subject=subject, found=found, comparison=comp, summary=summary, sae_rec=sae_rec)
    return summary
