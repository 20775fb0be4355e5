"""Running an experiment: flags generated from config dataclasses, full and ``--smoke`` sizes, and one
run directory per run.

A size field declares its smoke value with :func:`sized` (``n_bases: int = sized(24, 8)``); the flags of a
config are ``--field-name`` with the field's doc (from the class docstring), its choices and its defaults.
:func:`run_experiment` parses the flags of the pool site (:class:`~sensfind.lab.pool.PoolConfig`), optionally
the SAE (:class:`~sensfind.lab.pool_sae.PoolSAEConfig`) and the scans (:class:`ScanSettings`), the experiment's
own config and :class:`RunOptions`; it builds the site, calls the experiment's body in a staged run
directory (``config.json``, ``summary.txt`` and whatever the body writes appear whole or not at all) and
prints the summary. Expected failures (offline model, bad value) print one line
``<name>: error: ...`` and return 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import importlib.metadata
import platform
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from sensfind.configs import Config, check_choice, check_int, check_number, field_choices, field_docs
from sensfind.lab.pool import PUBLISHED_MODEL, PoolConfig, PoolSite, exclusion_line, load_pool_site
from sensfind.lab.pool_sae import PoolSAEConfig, dictionary_info, load_pool_sae, synthetic_activations
from sensfind.core.scan import ScanConfig
from sensfind.errors import DictionaryUnavailableError
from sensfind.errors import ModelUnavailableError
from sensfind.errors import DatasetUnavailableError
from sensfind.runio import save_json, staged_dir
from sensfind.core.scan import scan
from sensfind.reporting.plots import plot_mean_curves
from sensfind.core.scan import step_grid

__all__ = ["PUBLISHED", "Run", "RunOptions", "Scans", "ScanSettings", "add_config_flags", "config_from_flags",
           "resolve_scans", "run_experiment", "sized", "smoke_config"]

log = logging.getLogger("sensfind.lab.experiment")

# design.md §3: what the anchors report for GPT-2 small, layer 1 -> output, last token, 10-token prompts
PUBLISHED = {
    "lasr_max_slope": {  # 100 steps of 0.5 towards the target, L2 at blocks.11.hook_resid_post; mean, sd, KS vs real
        "real-other": (51.7, 7.4, None),
        "cov-random": (64.9, 10.5, 0.62),
        "synthetic-structured": (55.7, 11.3, 0.22),
        "synthetic-baseline": (57.1, 11.3, 0.27),
    },
    "lasr_plateau": {"real": (15.1, 8.6), "cov-random": (8.3, 3.8)},  # first step with L2 >= 20, step 0.5
    "heimersheim_plateau_deg": 40.0,  # real bases plateau until ~40 deg of slerp
    "gurnee_kl_ratio": (2.2, 4.5),  # KL(SAE reconstruction) / KL(same-norm random error), residual SAEs
}


# -- flags from configs ---------------------------------------------------------------------------------
def sized(full, smoke):
    """A size field: ``full`` by default, ``smoke`` under ``--smoke``."""
    return field(default=full, metadata={"smoke": smoke})


def _scalar(hint) -> type:
    """The flag type of a field hint: ``int``/``float``/``str``/``bool``, through ``X | None`` and ``Literal``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    a = args[0]
    if typing.get_origin(a) is Literal:
        return type(typing.get_args(a)[0])
    return a if a in (int, float, bool) else str


def add_config_flags(parser: argparse.ArgumentParser, cls, title: str | None = None) -> None:
    """One flag per field of ``cls`` (``--field-name``; bools that default to False are switches), default
    None so that :func:`config_from_flags` can tell a given flag from the config's default."""
    docs, choices, hints = field_docs(cls), field_choices(cls), typing.get_type_hints(cls)
    g = parser.add_argument_group(title or cls.__name__)
    for f in dataclasses.fields(cls):
        names = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
        kind = _scalar(hints[f.name])
        default = f"default {f.default}" + (f"; --smoke {f.metadata['smoke']}" if "smoke" in f.metadata else "")
        allowed = f"one of {', '.join(map(str, choices[f.name]))}; " if f.name in choices else ""
        text = f"{docs.get(f.name, '')} [{allowed}{default}]".strip().replace("%", "%%")
        if kind is bool:
            if f.default is not False:
                raise TypeError(f"{cls.__name__}.{f.name}: a switch must default to False")
            g.add_argument(*names, dest=f.name, action="store_true", default=None, help=text)
        else:
            g.add_argument(*names, dest=f.name, type=kind, default=None, choices=choices.get(f.name), help=text)


def config_from_flags(cls, args: argparse.Namespace, smoke: bool = False):
    """``cls`` from the flags that were given; the others take the field's smoke value (when ``smoke``
    and it has one) or its default. Bad values raise the config's one-line ``ValueError``."""
    values = {}
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
        elif smoke and "smoke" in f.metadata:
            values[f.name] = f.metadata["smoke"]
    return cls.from_dict(values)


def smoke_config(cls, **overrides):
    """``cls`` with every size at its smoke value, then ``overrides``."""
    values = {f.name: f.metadata["smoke"] for f in dataclasses.fields(cls) if "smoke" in f.metadata}
    return cls.from_dict({**values, **overrides})


@dataclass(frozen=True)
class RunOptions(Config):
    """Where and how the run is written.

    Attributes:
        out: run directory (default runs/<experiment>-<model>-<time>)
        overwrite: replace a non-empty run directory
        smoke: tiny sizes, for tests
        cache_dir: where locally trained SAEs are cached
        verbose: log diagnostics
    """

    out: str | None = None
    overwrite: bool = False
    smoke: bool = False
    cache_dir: str = "runs/.cache"
    verbose: bool = field(default=False, metadata={"aliases": ("-v",)})


# -- scans ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanSettings(Config):
    """The sphere (Heimersheim & Mendel) and straight (LASR) scans of an experiment.

    Attributes:
        tau: sphere mode: KL threshold in nats
        straight_effect: straight mode effect: auto = l2 at the last block's hook_resid_post for gpt2 (LASR), kl otherwise
        straight_tau: straight mode threshold (default 20 for l2, LASR's GPT-2 value; 0.5 nats for kl)
        step: straight mode step, absolute (default 0.5 for gpt2 as LASR; otherwise the median distance between
            real activations / (straight steps - 1))
        angle_steps: sphere scan points over 0-180 deg (at most 100000)
        straight_steps: straight scan points (the first is the base; at most 100000)
    """

    tau: float = 0.5
    straight_effect: Literal["auto", "kl", "l2"] = "auto"
    straight_tau: float | None = None
    step: float | None = None
    angle_steps: int = sized(91, 31)
    straight_steps: int = sized(101, 41)

    def __post_init__(self):
        check_number("tau", self.tau, lo=0.0, lo_open=True)
        check_choice("straight_effect", self.straight_effect, ("auto", "kl", "l2"))
        check_number("straight_tau", self.straight_tau, lo=0.0, lo_open=True, optional=True)
        check_number("step", self.step, lo=0.0, lo_open=True, optional=True)
        check_int("angle_steps", self.angle_steps, minimum=2, maximum=100_000)
        check_int("straight_steps", self.straight_steps, minimum=2, maximum=100_000)


@dataclass(frozen=True)
class Scans:
    """Resolved scans: sphere (slerp, KL, threshold angle in degrees) and straight (absolute steps)."""

    sphere: object  # sensfind.ScanConfig
    straight: object  # sensfind.ScanConfig; plateau = first step index above the threshold
    straight_output_hook: str | None  # where the straight effect is read (None: logits)
    step: float

    def to_dict(self) -> dict:
        return dict(sphere=self.sphere.to_dict(), straight=self.straight.to_dict(),
                    straight_output_hook=self.straight_output_hook, step=self.step)

    def contexts(self, site: PoolSite, row: int) -> tuple:
        """The subjects of pool row ``row`` for the sphere scan and for the straight scan (the same one
        unless the straight effect is read at ``straight_output_hook``)."""
        subject = site.subject(row)
        return subject, subject if self.straight_output_hook is None else site.subject(row, self.straight_output_hook)

    def run(self, sphere_subject, straight_subject, directions) -> tuple:
        """The sphere and straight scans (``sensfind.Scan``) of ``directions [R, d]``."""

        return scan(sphere_subject, directions, self.sphere), scan(straight_subject, directions, self.straight)

    def plot_means(self, directory: Path, sphere: dict, straight: dict, title: str, straight_tau: bool = True) -> None:
        """``effect_vs_angle.png`` and ``effect_vs_distance.png``: mean ± sd effect curves of each group
        (``sphere[name]``, ``straight[name]``: effects ``[R, K]`` on this scan's grids)."""

        ang, alpha = step_grid(self.sphere), step_grid(self.straight)
        ylabel = "KL(p0 || p) (nats)" if self.straight.effect == "kl" else f"L2 distance at {self.straight_output_hook}"
        plot_mean_curves(Path(directory) / "effect_vs_angle.png", {k: (ang, e) for k, e in sphere.items()},
                         "angle θ (deg)", "KL(p0 || p) (nats)", title + " (sphere, mean ± sd)", self.sphere.tau)
        plot_mean_curves(Path(directory) / "effect_vs_distance.png", {k: (alpha, e) for k, e in straight.items()},
                         f"step α (absolute, steps of {self.step:.3g})", ylabel, title + " (straight, mean ± sd)",
                         self.straight.tau if straight_tau else None)


def resolve_scans(settings: ScanSettings, site: PoolSite) -> Scans:
    """The scans of ``settings`` on ``site``, the ``auto`` and unset values filled in for it."""

    published = site.name == PUBLISHED_MODEL
    effect = settings.straight_effect if settings.straight_effect != "auto" else "l2" if published else "kl"
    if effect == "l2" and site.is_toy:
        raise ValueError("the toy has no late residual stream; use --straight-effect kl")
    tau = settings.straight_tau if settings.straight_tau is not None else (20.0 if effect == "l2" else 0.5)
    if effect == "l2" and settings.straight_tau is None and not published:
        log.warning("straight threshold 20 is calibrated on GPT-2's blocks.11 residual stream; set --straight-tau")
    step = settings.step
    if step is None:
        if published:
            step = 0.5
        else:
            x = site.pool[:256].double()
            dist = torch.cdist(x, x)
            step = float(dist[~torch.eye(x.shape[0], dtype=torch.bool)].median()) / (settings.straight_steps - 1)
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    return Scans(
        sphere=ScanConfig(mode="sphere", steps=settings.angle_steps, effect="kl", tau=settings.tau),
        straight=ScanConfig(mode="straight", scale="absolute", start=0.0, stop=step * (settings.straight_steps - 1),
                            steps=settings.straight_steps, effect=effect, tau=tau),
        straight_output_hook=site.late_hook if effect == "l2" else None, step=step)


# -- the run -------------------------------------------------------------------------------------------
@dataclass
class Run:
    """The run being written: its (staging) directory, the config recorded beside the results, the site
    and the shared settings."""

    name: str
    dir: Path
    config: dict
    site: PoolSite
    options: RunOptions
    sae: PoolSAEConfig | None = None
    scan_settings: ScanSettings | None = None

    @property
    def published(self) -> bool:
        """Whether this is the published configuration (gpt2), whose reference numbers are printed beside ours."""
        return self.site.name == PUBLISHED_MODEL

    def path(self, name: str) -> Path:
        return self.dir / name

    def dictionary(self, spec: str | None = None, l1: float | None = None, required: bool = False):
        """The site's SAE (``--sae``, or ``spec``), None for ``none`` (a ``ValueError`` when ``required``)."""
        dic = load_pool_sae(self.site, self.sae, self.options.cache_dir, spec=spec, l1=l1)
        if dic is None and required:
            raise ValueError(f"{self.name} needs an SAE; --sae none is not allowed here")
        return dic

    def synthetic(self, n: int, seed: int) -> dict:
        """Synthetic activations ``[n, d]`` matched to the pool by the SAE (empty for ``--sae none``); the SAE
        and its latent statistics are recorded in the config."""
        dic = self.dictionary()
        acts, stats = synthetic_activations(dic, self.site, n, seed)
        if dic is not None:
            self.config.update(sae=dictionary_info(dic), latent_stats=stats)
        return acts

    def scans(self) -> Scans:
        """The resolved scans, recorded in the config."""
        scans = resolve_scans(self.scan_settings, self.site)
        self.config["scans"] = scans.to_dict()
        return scans


def environment() -> dict:
    """Versions of Python and the libraries a run depends on, and the command line."""
    import sae_lens  # lazy: sae_lens is slow to import and only this record needs its version
    import transformer_lens  # lazy: TransformerLens takes seconds to import

    return dict(python=platform.python_version(), torch=torch.__version__, sensfind=importlib.metadata.version("sensfind"),
                transformer_lens=getattr(transformer_lens, "__version__", "?"),
                sae_lens=getattr(sae_lens, "__version__", "?"), argv=sys.argv)


def run_experiment(name: str, description: str, config_cls, body: Callable[..., str], argv: list[str] | None = None,
                   *, sae: bool = False, scans: bool = False) -> int:
    """Parse ``argv`` into the configs, build the site and run ``body(config, site, run)`` in a staged run
    directory; ``body`` returns the summary text, printed and saved as ``summary.txt``. Returns the exit status."""

    parts = {"site": PoolConfig, **({"SAE": PoolSAEConfig} if sae else {}), **({"scans": ScanSettings} if scans else {}),
             name: config_cls, "run": RunOptions}
    parser = argparse.ArgumentParser(description=description)
    for title, cls in parts.items():
        add_config_flags(parser, cls, title)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = {title: config_from_flags(cls, args, smoke=bool(args.smoke)) for title, cls in parts.items()}
        pool, options = cfg["site"], cfg["run"]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path(options.out) if options.out else Path("runs") / f"{name}-{pool.model.replace(':', '-')}-{stamp}"
        site = load_pool_site(pool)
        with staged_dir(out, overwrite=options.overwrite) as tmp:
            flat = {k: v for c in cfg.values() for k, v in c.to_dict().items()}
            config = dict(experiment=name, args=flat, environment=environment(), d=site.d,
                          n_pool=int(site.pool.shape[0]), massive_activations=site.exclusion)
            run = Run(name=name, dir=tmp, config=config, site=site, options=options, sae=cfg.get("SAE"),
                      scan_settings=cfg.get("scans"))
            t0 = time.perf_counter()
            text = body(cfg[name], site, run) + exclusion_line(site)
            config["seconds"] = time.perf_counter() - t0
            save_json(tmp / "config.json", config)
            (tmp / "summary.txt").write_text(text + "\n")
    except (ModelUnavailableError, DictionaryUnavailableError, DatasetUnavailableError, ValueError,
            FileNotFoundError) as exc:
        print(f"{name}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(text)
    print(f"-> {out}")
    return 0
