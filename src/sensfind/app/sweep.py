"""Sweeps: one site's per-prompt work over many prompts, on this machine or a Ray cluster.

A sweep is a site template (model, hook, position), a prompt source and the work done per prompt:
``discover`` (``DiscoverConfig`` and the isotropic baseline, what ``sensfind discover`` reports) or
``analysis`` (the central result's analysis: discovery, baselines, SAE matches, refinement). Each prompt
is a **unit**, written whole or not at all into ``DIR/units/<key>/`` (``unit.json`` beside the result's own
files and ``.safetensors`` tensors; a failed unit holds ``error.json`` with its one-line error instead).
The key hashes the prompt's tokens, the site, the work's configs and the model's weights, so a re-run
skips the finished units (and retries failed ones), and a changed config or model never mixes with
old results. Paths do not depend on the engine or the number of workers.

Units are grouped into chunks; a worker process loads the model (and SAE) once and keeps it for every
chunk it runs. Engines, behind :func:`run_units`:

* ``local``: in this process (``workers=1``) or a ``concurrent.futures`` process pool (spawn); no
  retries: a unit whose worker died is recorded as failed and runs again on the next sweep.
* ``ray``: Ray tasks (``ray.init()`` starts a local cluster of ``workers`` CPUs; ``address`` joins a
  running one, whose nodes must have sensfind installed and see ``DIR``); a task whose worker dies is
  retried (``retries``); ``device`` cuda asks for one GPU per task.

Every worker runs one BLAS thread (more workers, not more threads, use more cores), so results do not
depend on the engine. ``DIR/sweep.json`` lists this sweep's units, ``DIR/summary.json`` counts them
(:class:`SweepSummary`) and :func:`aggregate` pools them into ``DIR/results.json`` (for ``analysis``
also the central result's figures and ``report.html``).
"""

from __future__ import annotations

import hashlib
import json
import os
import logging
import math
import re
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, ClassVar, Iterable, Iterator, Literal

import torch
from torch import Tensor
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sensfind.comparison.analysis import PromptAnalysis, analyse_prompt
from sensfind.app.central import CHUNK, CentralConfig, _load, contexts, pooled_privileged, prompts_and_others, settings
from sensfind.app.central import aggregate as central_aggregate
from sensfind.configs import Config, check_bool, check_choice, check_int
from sensfind.dictionaries.corpus_sae import CorpusSAEConfig, _model_key
from sensfind.errors import EngineUnavailableError, one_line
from sensfind.app.jobs import check_run_settings, control_mixtures, discovery_summary
from sensfind.discovery.optima import Discovery
from sensfind.discovery.config import DiscoverConfig
from sensfind.discovery.loop import discover
from sensfind.models.prompts import load_corpus, one_token_variants, parse_corpus_source, prompt_activations
from sensfind.runio import Result, check_output_dir, load_json, read_text, save_json, staged_dir
from sensfind.app.site import DiscoverySiteConfig
from sensfind.models.transformer_subject import TransformerSubject, tokenize_prompt
from sensfind.core.toy import ToyConfig

__all__ = ["ENGINES", "MAX_WORKERS", "RAY_INSTALL", "WORKS", "Chunk", "SweepConfig", "SweepSummary", "Unit",
           "aggregate", "check_engine", "load_unit", "local_ray_options", "run_chunk", "run_sweep", "run_units", "unit_key"]

log = logging.getLogger("sensfind.app.sweep")

WORKS = ("discover", "analysis")
ENGINES = ("local", "ray")
MAX_WORKERS = 1024
RAY_INSTALL = "pip install 'sensfind[ray]'"
KEY_FORMAT = 2  # of the unit keys and files: bump when a unit's result changes meaning
CONTROLS_VERSION = 2  # of what --controls tests (2: the optima turned 15/30/60 degrees, p with a cross term)
DONE, FAILED = "unit.json", "error.json"
_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9._-]+:\d{1,5})$")
_UNIT_SITE = ("prompt", "tokens", "input")  # what each unit sets in the site template


@dataclass(frozen=True)
class SweepConfig(Config):
    """A sweep: the site template, the prompts, the per-prompt work and where it runs.

    Attributes:
        site: the site template (model, hook, position, dtype, device, seed; ``prompts``: the real-other
            prompts of discover work); each unit sets its prompt (the toy: its input).
        prompts: the prompt source: ``corpus:N[:LEN]`` (N windows of LEN tokens, default 10, from the installed
            corpus's test split whose last token is not a massive activation, seeded by the site's seed: the
            central result's prompts), ``inputs:N`` (the toy's first N inputs), a ``.jsonl`` file (one window of
            token ids per line: a JSON list, or an object with ``tokens``) or a text file (one prompt per line;
            every line is a unit, an empty one fails).
        work: ``discover`` (discovery with ``discover`` and ``random_baseline`` isotropic directions scanned
            beside the optima) or ``analysis`` (the central result's analysis of each prompt, at the corpus
            SAE's site: hook blocks.1.hook_resid_pre, last token).
        engine: ``local`` (this process, or a process pool for workers > 1) or ``ray``.
        workers: units run at once (processes or Ray tasks), each with one BLAS thread (1 to 1,024).
        address: ray only: the running Ray cluster to join (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``);
            ``None``: a local cluster of ``workers`` CPUs (or the Ray this process has already initialised).
        chunk: units per task (a worker loads the model once and keeps it for every chunk it runs);
            ``None``: about four chunks per worker, at most 16 units each (at most 100,000).
        retries: ray only: times a task is run again when its worker dies (at most 100).
        discover: discovery per prompt (work ``discover``).
        random_baseline: isotropic directions scanned finely beside each prompt's optima (work ``discover``).
        controls: work ``discover``: each unit also runs the mixture (Lp) test at the optima's τ on 4 isotropic
            directions, on G's top 4 eigenvectors and on the optima turned by 15°, 30° and 60°
            (``jobs.control_mixtures``), the controls of the optima's p.
        smoke: work ``analysis``: the central result's tiny sizes and the demo's quick SAE (for tests); with
            ``corpus:N`` prompts it also sets how many real-other windows are drawn beside them.
        cards: work ``analysis``: the aggregated report shows the first unit's feature cards (loads the model).
        mixture_pairs: work ``analysis``: pairs per kind of the privilege (Lp mixture) test in place of the central
            result's 6 (0: no test, and no linear, PCA or contrastive kinds: the analysis costs about half;
            at most 10000); ``None``: 6.
        cache_dir: the corpus SAE's cache (default: sensfind's cache).
    """

    site: DiscoverySiteConfig = DiscoverySiteConfig()
    prompts: str = "corpus:20"
    work: Literal["discover", "analysis"] = "discover"
    engine: Literal["local", "ray"] = "local"
    workers: int = 1
    address: str | None = None
    chunk: int | None = None
    retries: int = 3
    discover: DiscoverConfig = DiscoverConfig()
    random_baseline: int = 64
    controls: bool = False
    smoke: bool = False
    cards: bool = True
    cache_dir: str | None = None
    mixture_pairs: int | None = None

    def __post_init__(self):
        for name, cls in (("site", DiscoverySiteConfig), ("discover", DiscoverConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.prompts, str) or not self.prompts:
            raise ValueError(f"prompts must be corpus:N[:LEN], inputs:N, a .jsonl file or a text file, got {self.prompts!r}")
        if self.prompts.startswith("corpus:"):
            parse_corpus_source(self.prompts)
        if self.prompts.startswith("inputs:"):
            _toy_inputs(self.prompts)
        check_choice("work", self.work, WORKS)
        check_choice("engine", self.engine, ENGINES)
        check_int("workers", self.workers, 1, maximum=1024)
        if self.workers > MAX_WORKERS:
            raise ValueError(f"workers must be <= {MAX_WORKERS}, got {self.workers}")
        if self.address is not None:
            if self.engine != "ray":
                raise ValueError(f"address joins a Ray cluster and needs engine 'ray', got engine {self.engine!r}")
            port = self.address.rsplit(":", 1)[-1]
            if not (isinstance(self.address, str) and _ADDRESS.match(self.address)
                    and (self.address == "auto" or 0 < int(port) < 65536)):
                raise ValueError(f"address must be auto, HOST:PORT or ray://HOST:PORT (a running Ray cluster), "
                                 f"got {self.address!r}")
        check_int("chunk", self.chunk, 1, optional=True, maximum=100_000)
        check_int("retries", self.retries, 0, maximum=100)
        check_run_settings(self.random_baseline)
        check_bool("smoke", self.smoke)
        check_bool("controls", self.controls)
        if self.controls and self.work != "discover":
            raise ValueError("controls belong to work 'discover' (work 'analysis' tests every kind already)")
        check_bool("cards", self.cards)
        check_int("mixture_pairs", self.mixture_pairs, 0, optional=True, maximum=10_000)
        if self.mixture_pairs is not None and self.work != "analysis":
            raise ValueError(f"mixture_pairs sets work 'analysis' (work {self.work!r} tests its optima with 6 pairs)")
        if self.discover.init == "given":
            raise ValueError("discover init 'given' is not available in a sweep; use metric, isotropic or covariance")
        if self.work == "analysis":
            hook = CorpusSAEConfig().hook
            if self.site.is_toy or self.site.hook != hook or self.site.position != -1 or self.site.dtype != "float32":
                raise ValueError(f"work 'analysis' runs on a transformer at the corpus SAE's site (hook {hook}, "
                                 f"position -1, float32), got model {self.site.model!r}, hook {self.site.hook!r}, "
                                 f"position {self.site.position}, dtype {self.site.dtype}")

    @property
    def gpus(self) -> int:
        """GPUs each Ray task asks for: one when the site runs on CUDA."""
        return 1 if str(self.site.device).startswith("cuda") else 0

    def central(self, out: str | Path) -> CentralConfig:
        """The central result's config of this sweep's analysis (its settings, SAE and aggregation)."""
        return CentralConfig(model=self.site.model, out=str(out), seed=self.site.seed, smoke=self.smoke,
                             no_cards=not self.cards, cache_dir=self.cache_dir, mixture_pairs=self.mixture_pairs)


def _toy_inputs(source: str) -> int:
    n = source.split(":", 1)[1]
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"toy inputs are inputs:N with an integer N >= 1, got {source!r}")
    return int(n)


# -- units -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    """One prompt of a sweep: its place in the source, its key (its directory's name under ``units/``),
    its site (the template with the prompt set, as a dict) and a short label for logs."""

    index: int
    key: str
    site: dict
    label: str


@dataclass(frozen=True)
class Chunk:
    """Units run by one task, with what every unit of the sweep shares: the config, the run directory and
    (work ``analysis``) the real-other activations ``[M, d]``."""

    config: SweepConfig
    out: str
    units: tuple[Unit, ...]
    others: Tensor | None = None


def unit_key(payload: dict) -> str:
    """The hash naming a unit's directory: of everything its result depends on (a JSON-able dict)."""
    text = json.dumps({"format": KEY_FORMAT} | payload, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _label(prompt, tokenizer=None, width: int = 40) -> str:
    if isinstance(prompt, int):
        return f"input {prompt}"
    if isinstance(prompt, list) and tokenizer is not None:
        prompt = tokenizer.decode(prompt)
    elif isinstance(prompt, list) and all(0 <= t < 256 for t in prompt):  # a model without a tokenizer: bytes
        prompt = bytes(prompt).decode("utf-8", "replace")
    text = repr(prompt)
    return text if len(text) <= width else text[: width - 3] + "..."


def _read_source(config: SweepConfig) -> list | None:
    """The prompts of a file source, read and checked before any work (``None``: corpus or toy inputs)."""
    src = config.prompts
    if src.startswith(("corpus:", "inputs:")):
        if config.site.is_toy != src.startswith("inputs:"):
            want = "inputs:N" if config.site.is_toy else "corpus:N[:LEN], a .jsonl file or a text file"
            raise ValueError(f"prompts for model {config.site.model!r} are {want}, got {src!r}")
        return None
    if config.site.is_toy:
        raise ValueError(f"the toy's prompts are inputs:N (its inputs), got {src!r}")
    lines = read_text(src, "prompt file").splitlines()
    if not lines:
        raise ValueError(f"prompt file {src!r} holds no prompts (one per line expected)")
    if not src.endswith(".jsonl"):
        return lines
    windows = []
    for i, line in enumerate(lines, 1):
        try:
            v = json.loads(line) if line.strip() else []
            v = v["tokens"] if isinstance(v, dict) else v
            if not (isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)):
                raise ValueError
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"prompt file {src!r} line {i}: expected a JSON list of token ids or "
                             f"{{\"tokens\": [...]}}, got {line[:60]!r}") from None
        windows.append(v)
    return windows


def _corpus_demo(config: SweepConfig, length: int):
    """The central result's settings at this sweep's site and prompt length, and how many real-other
    windows are drawn beside the prompts."""
    demo, acfg = settings(config.central("."))
    demo = replace(demo, prompt_length=length, sae=replace(demo.sae, hook=config.site.hook))
    return demo, acfg, max(acfg.n_real_other, 8 if config.smoke else 64)


def _units(config: SweepConfig, model, file_prompts: list | None, sae=None) -> tuple[list[Unit], int, Tensor | None]:
    """The sweep's units (first of each key), the corpus windows skipped as massive-activation bases, and
    (work ``analysis``) the real-other activations."""
    site, skipped, others = config.site, 0, None
    if site.is_toy:
        prompts = list(range(_toy_inputs(config.prompts)))
        model_id = ToyConfig(seed=site.seed).to_dict()
    else:
        model_id = _model_key(model, None)
        length = parse_corpus_source(config.prompts)[1] if config.prompts.startswith("corpus:") else 10
        demo, acfg, n_others = _corpus_demo(config, length)
        if file_prompts is None or config.work == "analysis":
            corpus = load_corpus(model)
            chosen, skipped, others = prompts_and_others(model, corpus, demo, parse_corpus_source(config.prompts)[0]
                                                         if file_prompts is None else 1, n_others)
        prompts = chosen if file_prompts is None else file_prompts
    if config.work == "discover":
        settings_ = {"discover": config.discover.to_dict(), "random_baseline": config.random_baseline}
        if config.controls:  # a unit without controls keeps its key; 2: with the turned optima and p_cross
            settings_["controls"] = CONTROLS_VERSION
        others = None
    else:
        settings_ = {"demo": demo.to_dict(), "analysis": acfg.to_dict(), "sae": sae.source,
                     "others": hashlib.blake2b(others.numpy().tobytes(), digest_size=16).hexdigest()}
    template = site.to_dict()
    units, seen = [], set()
    for i, p in enumerate(prompts):
        if isinstance(p, int):
            unit_site = template | {"input": p}
        else:
            if isinstance(p, str):  # keyed by its tokens; a prompt that does not tokenize fails in its unit
                try:
                    p = tokenize_prompt(model, p)[0].tolist()
                except ValueError:
                    pass
            unit_site = template | ({"prompt": "", "tokens": ",".join(map(str, p))} if isinstance(p, list) and p
                                    else {"prompt": p if isinstance(p, str) else "", "tokens": None})
        keyed = {k: v for k, v in unit_site.items() if k != "device"}  # where it runs does not change the result
        key = unit_key({"work": config.work, "site": keyed, "settings": settings_, "model": model_id})
        if key in seen:
            log.info("prompt %d repeats an earlier one; it is one unit", i)
            continue
        seen.add(key)
        units.append(Unit(i, key, unit_site, _label(p, getattr(model, "tokenizer", None))))
    return units, skipped, others


# -- the work of one chunk, in a worker ---------------------------------------------------------------------

_LOADED: dict = {}  # what this worker process loaded for a sweep (one entry), kept for its next chunks


def _context(config: SweepConfig) -> dict:
    """The model (and, for analysis, corpus, SAE, covariance pool and settings) of this sweep, loaded
    once per worker process."""
    key = json.dumps([config.site.to_dict(), config.work, config.smoke, config.cache_dir], sort_keys=True)
    if key not in _LOADED:
        _LOADED.clear()
        if config.work == "discover":
            ctx = {"model": None if config.site.is_toy else config.site.load_model()}
        else:
            central = config.central(".")
            demo, acfg = settings(central)
            model, corpus, sae = _load(central, demo)
            ctx = {"model": model, "corpus": corpus, "sae": sae, "pool": contexts(model, corpus, demo)[1].acts,
                   "demo": demo, "acfg": acfg}
        _LOADED[key] = ctx
    return _LOADED[key]


def _work(config: SweepConfig, ctx: dict, site: DiscoverySiteConfig, others: Tensor | None, tmp: Path) -> tuple[dict, str]:
    """Run one unit's work into ``tmp``; its summary and a one-line description."""
    if config.work == "discover":
        built = site.build(ctx["model"])
        found = discover(built.subject, config.discover, activations=built.others, progress=False)
        found.save(tmp, overwrite=True)
        summary = discovery_summary(site, built.subject, found, config.discover, config.random_baseline)[0]
        if config.controls:
            summary["controls"] = control_mixtures(built.subject, config.discover.tau, seed=site.seed,
                                                   optima=found.directions)
        return summary, (f"{summary['n_optima']} optima, best {summary['best_blowup']:.3g} vs random median "
                         f"{summary['random_blowup_median']:.3g}")
    prompt = site.token_ids if site.tokens is not None else site.prompt
    subject = TransformerSubject(ctx["model"], prompt, hook=ctx["demo"].hook, chunk_size=CHUNK)
    a = analyse_prompt(subject, ctx["sae"], others, ctx["pool"], ctx["acfg"],
                       contrastive=_contrastive(ctx, prompt) if ctx["acfg"].mixture_pairs else None)
    a.save(tmp, overwrite=True)
    s = a.summary()
    return s, (f"{len(a.discovery)} optima, median threshold optima {s['kinds']['optima']['median_deg']} / "
               f"real-other {s['kinds']['real-other']['median_deg']} deg")


def _contrastive(ctx: dict, prompt) -> Tensor | None:
    """Site activations ``[C, d]`` of the prompt with one token replaced by a train-split window's token at
    that position (``n_real_other`` variants, seeded): the targets of the kind ``contrastive`` (``None``
    when no donor window differs from the prompt: the kind is left out)."""
    acfg, model = ctx["acfg"], ctx["model"]
    tokens = prompt if isinstance(prompt, list) else tokenize_prompt(model, prompt)[0].tolist()
    donors = ctx["corpus"].windows(4 * acfg.n_real_other, len(tokens), seed=acfg.seed + 5, split="train")
    variants = one_token_variants(tokens, donors, acfg.n_real_other, seed=acfg.seed + 6)
    return prompt_activations(model, variants, ctx["demo"].hook) if variants else None


def _run_unit(chunk: Chunk, ctx: dict, unit: Unit) -> dict:
    d = Path(chunk.out) / "units" / unit.key
    record = {"index": unit.index, "key": unit.key, "label": unit.label}
    if (d / DONE).is_file():  # finished by an earlier attempt of this chunk (a retried task)
        return record | {"status": "skipped", "seconds": 0.0}
    t0 = time.perf_counter()
    try:
        site = DiscoverySiteConfig.from_dict(unit.site)
        torch.manual_seed(site.seed)
        with staged_dir(d, overwrite=True) as tmp:
            summary, line = _work(chunk.config, ctx, site, chunk.others, tmp)
            seconds = time.perf_counter() - t0
            save_json(tmp / DONE, record | {"work": chunk.config.work, "site": unit.site, "seconds": seconds,
                                            "summary": summary})
        return record | {"status": "done", "seconds": seconds, "line": line}
    except Exception as exc:  # noqa: BLE001  (a unit's failure is its own: recorded, and the sweep goes on)
        error = f"{type(exc).__name__}: {one_line(exc)}"
        seconds = time.perf_counter() - t0
        _record_failure(d, record | {"site": unit.site}, error, seconds)
        return record | {"status": "failed", "seconds": seconds, "error": error}


def _record_failure(d: Path, record: dict, error: str, seconds: float) -> None:
    with staged_dir(d, overwrite=True) as tmp:
        save_json(tmp / FAILED, record | {"error": error, "seconds": seconds})


def run_chunk(chunk: Chunk) -> list[dict]:
    """The worker function: run a chunk's units (one BLAS thread), each written into ``units/<key>/``;
    one outcome per unit (``status`` done, failed or skipped, ``seconds``, ``error`` or ``line``)."""
    torch.set_num_threads(1)
    ctx = _context(chunk.config)
    return [_run_unit(chunk, ctx, u) for u in chunk.units]


# -- engines -----------------------------------------------------------------------------------------------

def _one_thread() -> None:
    torch.set_num_threads(1)


def check_engine(config: SweepConfig) -> None:
    """Refuse an engine that cannot run here, before any work: Ray not installed."""
    if config.engine == "ray":
        try:
            import ray  # noqa: F401  (Ray is an optional extra: only the ray engine imports it)
        except ImportError:
            raise EngineUnavailableError(f"engine 'ray' needs Ray, which is not installed; install it with: "
                                         f"{RAY_INSTALL}") from None


def run_units(chunks: list, work: Callable[[object], list], engine: str = "local", workers: int = 1,
              address: str | None = None, gpus: int = 0, retries: int = 3) -> Iterator[tuple[object, list | BaseException]]:
    """Run ``work(chunk)`` for every chunk on ``engine`` with at most ``workers`` at once; yields (chunk,
    its result, or the exception that ended it) as each finishes. ``work`` must be a module-level function
    (it is sent to other processes)."""
    if engine == "ray":
        yield from _ray(chunks, work, workers, address, gpus, retries)
    elif workers == 1:
        threads = torch.get_num_threads()
        try:
            for c in chunks:
                try:
                    yield c, work(c)
                except Exception as exc:  # noqa: BLE001  (the chunk's units are recorded as failed)
                    yield c, exc
        finally:
            torch.set_num_threads(threads)
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
            futures = {pool.submit(work, c): c for c in chunks}
            try:
                while futures:
                    finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in finished:
                        c = futures.pop(f)
                        yield c, (f.exception() or f.result())
            finally:
                for f in futures:
                    f.cancel()


def local_ray_options(workers: int) -> dict:
    """``ray.init`` arguments of a local cluster for a sweep: ``workers`` CPUs, no dashboard, a small object
    store (chunks and outcomes are small), and workers that import the same sensfind as this process."""
    path = os.pathsep.join(p for p in (str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH")) if p)
    return {"num_cpus": workers, "include_dashboard": False, "object_store_memory": 100 * 2**20,
            "log_to_driver": False, "runtime_env": {"env_vars": {"PYTHONPATH": path}}}


def _ray(chunks: list, work, workers: int, address: str | None, gpus: int, retries: int):
    import ray  # lazily: Ray is an optional extra (sensfind[ray]) and slow to import

    started = not ray.is_initialized()
    if started:
        if address is None:
            ray.init(**local_ray_options(workers))
        else:
            ray.init(address=address, log_to_driver=False)
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=retries)(work)
    queue, pending = list(chunks), {}
    try:
        while queue or pending:
            while queue and len(pending) < workers:
                c = queue.pop(0)
                pending[task.remote(c)] = c
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                c = pending.pop(ref)
                try:
                    yield c, ray.get(ref)
                except Exception as exc:  # noqa: BLE001  (retries spent, or the task raised: its units fail)
                    yield c, exc
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


# -- the sweep ---------------------------------------------------------------------------------------------

@dataclass
class SweepSummary(Result):
    """What a sweep did (``DIR/summary.json``).

    Attributes:
        units: units of the sweep (distinct prompts).
        done: units with a result (this run or an earlier one).
        failed: units whose last attempt failed (``errors``: their keys, indices and one-line errors).
        skipped: units already done before this run.
        ran: units run by this run.
        seconds_per_unit: median, mean, min and max of the units run by this run.
        wall_seconds: this run's time, the model loads included.
        prompts_skipped_massive: corpus windows skipped as massive-activation bases.
        config: the ``SweepConfig`` as a dict.
    """

    MARKER: ClassVar[str] = "summary.json"
    WHAT: ClassVar[str] = "sweep summary"

    units: int
    done: int
    failed: int
    skipped: int
    ran: int
    seconds_per_unit: dict
    wall_seconds: float
    prompts_skipped_massive: int = 0
    errors: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def _write(self, directory: Path) -> None:
        save_json(directory / self.MARKER, asdict(self))

    @classmethod
    def _read(cls, directory: Path) -> "SweepSummary":
        return cls(**load_json(directory / cls.MARKER, "sweep summary"))


def _chunks(config: SweepConfig, todo: list[Unit], out: Path, others: Tensor | None) -> list[Chunk]:
    size = config.chunk or max(1, min(16, math.ceil(len(todo) / (4 * config.workers))))
    return [Chunk(config, str(out), tuple(todo[i: i + size]), others) for i in range(0, len(todo), size)]


def run_sweep(config: SweepConfig, out: str | Path, progress: bool = True) -> SweepSummary:
    """Run ``config``'s units that are not done in ``out`` (see the module docstring), then write
    ``summary.json`` and :func:`aggregate` the finished units into ``results.json``."""
    t0 = time.perf_counter()
    out = Path(out)
    check_engine(config)
    file_prompts = _read_source(config)
    check_output_dir(out, overwrite=True)
    log.info("sweep: loading %s", config.site.model)
    model = sae = None
    if not config.site.is_toy:
        if config.work == "analysis":  # the SAE is trained (and cached) here once, before the workers load it
            model, _, sae = _load(config.central(out), settings(config.central(out))[0])
        else:
            model = config.site.load_model()
    units, skipped_massive, others = _units(config, model, file_prompts, sae)
    del model, sae
    (out / "units").mkdir(parents=True, exist_ok=True)
    save_json(out / "sweep.json", {"command": "sweep", "config": config.to_dict(), "prompts_skipped_massive": skipped_massive,
                                   "units": [{"index": u.index, "key": u.key, "label": u.label} for u in units]})
    todo = [u for u in units if not (out / "units" / u.key / DONE).is_file()]
    log.info("sweep: %d units, %d done before, %d to run on %s with %d worker(s)", len(units), len(units) - len(todo),
             len(todo), config.engine, config.workers)
    seconds = []
    counts = {"done": 0, "failed": 0}
    chunks = _chunks(config, todo, out, others)
    with logging_redirect_tqdm(), tqdm(total=len(todo), unit="unit", disable=not progress, dynamic_ncols=True,
                                       desc="sweep") as bar:
        for chunk, result in run_units(chunks, run_chunk, config.engine, config.workers, config.address, config.gpus,
                                       config.retries):
            if isinstance(result, BaseException):  # the chunk's worker died (retries spent) or could not load
                error = f"{type(result).__name__}: {one_line(result)}"
                lost = [u for u in chunk.units if not (out / "units" / u.key / DONE).is_file()]
                result = [{"index": u.index, "key": u.key, "label": u.label, "status": "failed", "seconds": 0.0,
                           "error": error} for u in lost]
                for r, u in zip(result, lost):
                    _record_failure(out / "units" / u.key, {k: r[k] for k in ("index", "key", "label")} | {"site": u.site},
                                    error, 0.0)
            for r in result:
                status = "done" if r["status"] == "skipped" else r["status"]
                counts[status] += 1
                seconds += [r["seconds"]] if r["status"] != "skipped" else []
                log.info("unit %d/%d %s %s: %s (%.1f s)", r["index"] + 1, len(units), r["key"][:12], r["label"],
                         r.get("line") or r.get("error") or "done by an earlier attempt", r["seconds"])
            bar.update(len(result))
            bar.set_postfix(done=counts["done"], failed=counts["failed"])
    _LOADED.clear()  # the in-process engine's model: not kept past the sweep
    for stale in (out / "units").glob(".*.partial-*"):  # stages of units whose worker was killed
        shutil.rmtree(stale, ignore_errors=True)
    summary = _summarise(config, out, units, len(units) - len(todo), seconds, time.perf_counter() - t0, skipped_massive)
    summary.save(out, overwrite=True)
    log.info("sweep: %d done, %d failed of %d units in %.0f s", summary.done, summary.failed, summary.units,
             summary.wall_seconds)
    if summary.done:
        aggregate(out)
    return summary


def _summarise(config, out: Path, units: list[Unit], skipped: int, seconds: list[float], wall: float,
               skipped_massive: int) -> SweepSummary:
    done = [u for u in units if (out / "units" / u.key / DONE).is_file()]
    errors = []
    for u in units:
        p = out / "units" / u.key / FAILED
        if u not in done and p.is_file():
            errors.append({"index": u.index, "key": u.key, "error": load_json(p)["error"]})
    t = torch.tensor(seconds, dtype=torch.float64)
    spu = ({"median": float(t.median()), "mean": float(t.mean()), "min": float(t.min()), "max": float(t.max())}
           if len(seconds) else {})
    return SweepSummary(units=len(units), done=len(done), failed=len(errors), skipped=skipped, ran=len(seconds),
                        seconds_per_unit=spu, wall_seconds=wall, prompts_skipped_massive=skipped_massive, errors=errors,
                        config=config.to_dict())


# -- pooling -----------------------------------------------------------------------------------------------

def aggregate(out: str | Path) -> dict:
    """Pool the finished units of the sweep in ``out`` (those its ``sweep.json`` lists) into ``results.json``;
    for work ``analysis`` the central result's pooled numbers, figures and ``report.html``. Returns the results."""
    out = Path(out)
    meta = load_json(out / "sweep.json", "sweep record")
    config = SweepConfig.from_dict(meta["config"])
    dirs = [(u, out / "units" / u["key"]) for u in meta["units"]]
    done = [(u, d) for u, d in dirs if (d / DONE).is_file()]
    if not done:
        raise ValueError(f"no finished units in {str(out / 'units')!r} to aggregate")
    if config.work == "analysis":
        units = [(d, DiscoverySiteConfig.from_dict(load_json(d / DONE)["site"]).token_ids) for _, d in done]
        return central_aggregate(config.central(out), units, meta["prompts_skipped_massive"])
    records = [load_json(d / DONE) for _, d in done]
    results = _pool_discoveries(records) | {"n_units": len(dirs), "n_failed": sum((d / FAILED).is_file() for _, d in dirs
                                                                                  if not (d / DONE).is_file())}
    save_json(out / "results.json", results)
    return results


def _finite(values: Iterable) -> Tensor:
    t = torch.tensor([math.inf if v is None else v for v in values], dtype=torch.float64)
    return t[torch.isfinite(t)]


def _median(t: Tensor) -> float | None:
    return float(t.median()) if t.numel() else None


_LINEAR_KEYS = ("ratio_median", "early_growth_2deg_median", "early_growth_4deg_median")


def _pool_discoveries(records: list[dict]) -> dict:
    """The numbers of a discover sweep's ``results.json``: optima and their thresholds pooled over units,
    against each unit's isotropic baseline (not reached: ``null`` in the units' JSON, counted apart)."""
    s = [r["summary"] for r in records]
    blowups = [b for x in s for b in x["optima_blowup"]]
    reached = _finite(blowups)
    inf = math.inf
    below = sum(sum(1 for b in x["optima_blowup"] if b is not None and b < (x["random_blowup_median"] or inf))
                for x in s)
    per_unit = torch.tensor([x["n_optima"] for x in s], dtype=torch.float64)
    out = {"n_done": len(records), "n_optima": int(per_unit.sum()), "optima_per_unit_median": float(per_unit.median()),
           "optima_threshold_median": _median(reached),
           "optima_not_reached": len(blowups) - int(reached.numel()),
           "best_blowup_median": _median(_finite(x["best_blowup"] for x in s)),
           "random_blowup_median_of_units": _median(_finite(x["random_blowup_median"] for x in s)),
           "optima_below_their_units_random_median": below,
           "seconds_per_unit_median": float(torch.tensor([r["seconds"] for r in records]).median()),
           "units": [{"index": r["index"], "key": r["key"], "label": r["label"], "n_optima": x["n_optima"],
                      "best_blowup": x["best_blowup"], "random_blowup_median": x["random_blowup_median"]}
                     for r, x in zip(records, s)]}
    # are the optima privileged? their mixture test (and the controls', where the units ran them) pooled
    privileged = [({"optima": x["mixture"] | {k: x["linear"].get(k) for k in _LINEAR_KEYS}} if "mixture" in x else {})
                  | x.get("controls", {}) for x in s]
    if any(privileged):
        out["privileged"] = pooled_privileged(privileged)
    if all("toy_recovery" in x for x in s):
        rec = [x["toy_recovery"] for x in s]
        out["toy_recovery"] = {"fraction_reached_mean": sum(r["fraction_reached"] for r in rec) / len(rec),
                               "distinct_features_union": len({f for r in rec for f in r["distinct_features"]})}
    return out


def analysis_record(out: str | Path) -> dict:
    """The ``sweep.json`` record of a ``--work analysis`` sweep in ``out``; refuses a discover sweep."""
    meta = load_json(Path(out) / "sweep.json", "sweep record")
    work = SweepConfig.from_dict(meta["config"]).work
    if work != "analysis":
        raise ValueError(f"--sweep {str(out)!r} ran work {work!r}; this needs a `--work analysis` sweep")
    return meta


def load_unit(out: str | Path, key: str):
    """A finished unit's result: ``Discovery`` (work discover) or ``PromptAnalysis`` (work analysis)."""
    d = Path(out) / "units" / key
    return PromptAnalysis.load(d) if (d / PromptAnalysis.MARKER).is_file() else Discovery.load(d)
