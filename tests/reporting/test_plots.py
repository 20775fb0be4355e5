"""plots: effect plots start at 0 for non-negative effects with the legend clear of the curves; round starts."""

import pytest
import torch

from sensfind.reporting import plots


@pytest.fixture
def drawn(monkeypatch):
    """The axes each plot hands to ``finish`` (kept after the figure is saved)."""
    seen = []
    real = plots.finish

    def spy(fig, ax, *args, **kwargs):
        out = real(fig, ax, *args, **kwargs)
        seen.append((fig, ax))
        return out

    monkeypatch.setattr(plots, "finish", spy)
    return seen


def _kl_curves(n=6, k=31, seed=0):
    g = torch.Generator().manual_seed(seed)
    steps = torch.linspace(0, 90, k, dtype=torch.float64)
    return steps, (torch.rand(n, 1, generator=g, dtype=torch.float64) * steps / 30).exp() - 1  # >= 0, like KL


def _legend_clear_of_axes(fig, ax) -> bool:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: as plots imports matplotlib

    r = FigureCanvasAgg(fig).get_renderer()  # the figure is closed: a fresh canvas measures it
    legend, box = ax.get_legend().get_window_extent(r), ax.get_window_extent(r)
    return legend.x0 >= box.x1 or legend.y0 >= box.y1 or legend.x1 <= box.x0 or legend.y1 <= box.y0


@pytest.mark.parametrize("at_zero", [0.0, -1.5e-7])  # a float32 KL at angle 0 can round just below 0
def test_kl_effect_plots_start_at_zero_and_the_legend_hides_no_curve(tmp_path, drawn, at_zero):
    steps, e = _kl_curves()
    e[:, 0] = at_zero
    plots.plot_median_curves(tmp_path / "m.png", steps, {"isotropic": e, "optima": e[:2] * 3}, "deg", "kl", 0.5)
    plots.plot_effect_curves(tmp_path / "e.png", {"random": (steps, e), "discovered optima": (steps, e[:2] * 3)},
                             "deg", "kl", 0.5)
    assert len(drawn) == 2
    for fig, ax in drawn:
        assert ax.get_ylim()[0] == 0.0
        assert _legend_clear_of_axes(fig, ax)


def test_signed_effects_keep_their_negative_range(tmp_path, drawn):
    steps, e = _kl_curves()
    plots.plot_effect_curves(tmp_path / "e.png", {"signed": (steps, e - 1.0)}, "deg", "cos")
    assert drawn[0][1].get_ylim()[0] < 0


@pytest.mark.parametrize("rounds", [[0, 0, 0, 0], [0, 0, 1, 1, 1, 2, 3]])
def test_objective_plot_marks_each_later_round_start(tmp_path, drawn, rounds):
    history = [{"iteration": i, "round": r, "objective_mean": 10.0 - i, "objective_min": 8.0 - i, "blowup_median": 20.0}
               for i, r in enumerate(rounds)]
    plots.plot_history(tmp_path / "h.png", history)
    ax = drawn[0][1]
    lines = [line for line in ax.lines if line.get_gid() == "round-start"]
    assert len(lines) == len(set(rounds)) - 1
    starts = [i for i in range(1, len(rounds)) if rounds[i] != rounds[i - 1]]
    assert [line.get_xdata()[0] for line in lines] == [s - 0.5 for s in starts]
    labels = ax.get_legend_handles_labels()[1]
    assert labels.count("start of a discovery round") == (1 if starts else 0)
