"""What a study found (``TuneResult``): tables, files and plots."""

from __future__ import annotations

import csv
import io
import logging
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from sensfind.runio import Result, load_json, save_json, save_result, write_atomic
from sensfind.tuning._config import TuneConfig
from sensfind.tuning._storage import _SETTINGS_ATTR, _display_url

log = logging.getLogger("sensfind.tuning")


@dataclass
class TuneResult(Result):
    """A study's trials and best settings.

    Attributes:
        study_name, storage: where the study lives (password hidden).
        directions: ``["maximize"]`` or ``["maximize", "minimize"]`` (metric, points).
        metric: the quality metric.
        trials: one row per trial: number, state, quality, points, seconds, worker, fail_reason, params.
        best: the best trial (single-objective) or the Pareto front sorted by points, as rows with ``config``.
        best_config: ``DiscoverConfig`` fields of the best trial (multi-objective: the highest quality on the
            front), or None before any trial completed. ``sensfind discover --config`` accepts it.
        ran: trials this worker ran.
        config: this worker's ``TuneConfig``; settings: what the study's workers share (search space included).

    ``TuneResult.load(directory)`` reads back what ``save`` wrote (``tune_result.json``).
    """

    MARKER = "tune_result.json"
    WHAT = "tuning results"

    study_name: str
    storage: str
    directions: list[str]
    metric: str
    trials: list[dict]
    best: list[dict]
    best_config: dict | None
    ran: int = 0
    config: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    @classmethod
    def from_study(cls, study: optuna.Study, config: TuneConfig, storage: str = "", ran: int = 0) -> TuneResult:
        trials = [_row(t) for t in study.get_trials(deepcopy=False)]
        best: list[FrozenTrial] = []
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if config.multi_objective:
                best = sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0]))
            else:
                best = [study.best_trial]
        best_rows = [_row(t) | {"config": t.user_attrs.get("discover_config")} for t in best]
        best_config = None
        if best:
            top = max(best, key=lambda t: (t.values[0], -(t.values[1] if len(t.values) > 1 else 0)))
            best_config = top.user_attrs.get("discover_config")
        return cls(study.study_name, _display_url(storage), config.directions, config.metric, trials, best_rows,
                   best_config, ran, config.to_dict(), study.user_attrs.get(_SETTINGS_ATTR, {}))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.trials:
            out[row["state"]] = out.get(row["state"], 0) + 1
        return out

    @property
    def points_spent(self) -> int:
        return sum(int(r["points"] or 0) for r in self.trials)

    def table(self, limit: int | None = 10) -> str:
        """Markdown table of the finished trials, best first."""
        rows = sorted((r for r in self.trials if r["quality"] is not None),
                      key=lambda r: (-r["quality"], r["points"] or 0))
        rows = rows[:limit] if limit is not None else rows
        names = sorted({k for r in rows for k in r["params"]})
        head = ["trial", "state", self.metric, "points", "seconds"] + names
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r["number"], r["state"], _fmt(r["quality"]), r["points"], _fmt(r["seconds"])]
            cells += [_fmt(r["params"].get(n)) for n in names]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        return "\n".join(lines)

    def summary(self) -> str:
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(self.counts().items()))
        lines = [(f"study {self.study_name!r} ({self.storage}): {len(self.trials)} trials ({counts}); "
                  f"this worker ran {self.ran}; {self.points_spent} points spent in all")]
        if self.best:
            b = self.best[0] if len(self.best) == 1 else max(self.best, key=lambda r: r["quality"])
            front = f", Pareto front of {len(self.best)}" if len(self.best) > 1 or len(self.directions) > 1 else ""
            lines.append(f"best {self.metric} {b['quality']:.4g} (trial {b['number']}, {b['points']} points){front}")
        return "\n".join(lines)

    def save(self, out: str | Path, study: optuna.Study | None = None, overwrite: bool = False) -> Path:
        """Write ``best_config.json`` (flat ``DiscoverConfig`` fields), ``pareto.json`` (multi-objective),
        ``trials.csv``, ``summary.md``, ``tune.json``, ``tune_result.json`` (everything, for ``load``) and
        ``config.json`` into ``out`` (see ``runio.save_result``), then, given the study, PNG plots."""
        out = save_result(self, out, overwrite)
        if study is not None:
            save_plots(study, out, self.metric)
        return out

    def config_dict(self) -> dict | None:
        return self.config or None

    def _write(self, out: Path) -> None:
        if self.best_config is not None:
            save_json(out / "best_config.json", self.best_config)
        if len(self.directions) > 1:
            save_json(out / "pareto.json", self.best)
        write_atomic(out / "trials.csv", self._csv())
        write_atomic(out / "summary.md", f"# {self.study_name}\n\n{self.summary()}\n\n{self.table(None)}\n")
        save_json(out / "tune.json", {"config": self.config, "settings": self.settings, "summary": self.summary(),
                                      "counts": self.counts(), "best": self.best})
        save_json(out / "tune_result.json", {f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def _read(cls, out: Path) -> TuneResult:
        return cls(**load_json(out / "tune_result.json", "tuning results"))

    def _csv(self) -> str:
        names = sorted({k for r in self.trials for k in r["params"]})
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["number", "state", self.metric, "points", "seconds", "worker", "fail_reason"] + names)
        for r in self.trials:
            w.writerow([r["number"], r["state"], r["quality"], r["points"], r["seconds"], r["worker"],
                        r["fail_reason"]] + [r["params"].get(n) for n in names])
        return buf.getvalue()


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _row(t: FrozenTrial) -> dict:
    values = t.values or []
    return {
        "number": t.number,
        "state": t.state.name,
        "quality": values[0] if values else None,
        "points": t.user_attrs.get("points"),
        "seconds": t.user_attrs.get("seconds"),
        "worker": t.user_attrs.get("worker"),
        "fail_reason": t.user_attrs.get("fail_reason"),
        "params": dict(t.params),
    }


def save_plots(study: optuna.Study, out: str | Path, metric: str) -> list[Path]:
    """Optimisation history, parameter importances, intermediate values (pruning) and the Pareto front
    (multi-objective) as PNG files; a plot that the study cannot support yet is skipped with a log line."""
    import matplotlib  # lazy: only figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: only figures need it
    from optuna.visualization import matplotlib as vis  # lazy: slow to import, only tuning needs it

    out = Path(out)
    multi = len(study.directions) > 1
    target = (lambda t: t.values[0]) if multi else None
    plots = {
        "history.png": lambda: vis.plot_optimization_history(study, target=target, target_name=metric),
        "importances.png": lambda: vis.plot_param_importances(study, target=target, target_name=metric),
    }
    if multi:
        plots["pareto.png"] = lambda: vis.plot_pareto_front(study, target_names=[metric, "points"])
    elif any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        plots["intermediate.png"] = lambda: vis.plot_intermediate_values(study)
    written = []
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            write_atomic(out / name, buf.getvalue())
            written.append(out / name)
        except Exception as exc:  # noqa: BLE001 - e.g. too few trials for importances; never fail the run
            log.info("skipped %s: %s", name, exc)
            plt.close("all")
    return written
