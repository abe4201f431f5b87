"""The AlgoPerf summary over tasks against a hand-computed three-task example."""

import math

import numpy as np
import pytest

from layerwise.compare.profiles import (
    Speedup,
    line_styles,
    plot_profile,
    profile,
    profile_figure,
    ratios,
    score,
    speedups,
)

# Median time to target (seconds) per task and method; inf: missed.
TIMES = {
    "t1": {"A": 10.0, "B": 20.0, "C": 40.0},  # fastest A: ratios A 1, B 2, C 4
    "t2": {"A": 30.0, "B": 15.0, "C": math.inf},  # fastest B: ratios A 2, B 1, C inf
    "t3": {"A": math.inf, "B": 50.0, "C": 25.0},  # fastest C: ratios A inf, B 2, C 1
}


def test_ratios_to_the_fastest_method_of_each_task():
    assert ratios(TIMES) == {
        "A": {"t1": 1.0, "t2": 2.0, "t3": math.inf},
        "B": {"t1": 2.0, "t2": 1.0, "t3": 2.0},
        "C": {"t1": 4.0, "t2": math.inf, "t3": 1.0},
    }


def test_profile_is_the_share_of_tasks_within_tau():
    # tau = 1: each method is fastest on one task of three; tau = 2: A {1, 2}, B {2, 1, 2}, C {1};
    # tau = 4: C's ratio 4 counts too; a miss (inf) never counts.
    rho = profile(ratios(TIMES), [1.0, 2.0, 3.5, 4.0])
    assert rho["A"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert rho["B"] == pytest.approx([1 / 3, 1.0, 1.0, 1.0])
    assert rho["C"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 2 / 3])


def test_score_is_the_normalised_area_under_the_profile():
    # Each task adds (4 - r) / 3 / 3 for its ratio r <= 4:
    # A: (3 + 2 + 0) / 9 = 5/9; B: (2 + 3 + 2) / 9 = 7/9; C: (0 + 0 + 3) / 9 = 1/3.
    scores = score(ratios(TIMES))
    assert scores == pytest.approx({"A": 5 / 9, "B": 7 / 9, "C": 1 / 3})
    taus = np.linspace(1.0, 4.0, 30001)
    for method, rho in profile(ratios(TIMES), taus).items():  # the same as integrating the steps
        assert np.trapezoid(rho, taus) / 3.0 == pytest.approx(scores[method], abs=1e-3)
    assert score(ratios(TIMES), tau_max=2.0) == pytest.approx({"A": 1 / 3, "B": 1 / 3, "C": 1 / 3})


def test_speedup_over_the_baseline_uses_tasks_both_reached():
    # Over A: B on t1 10/20 = 0.5 and t2 30/15 = 2 (t3: A missed): sqrt(0.5 * 2) = 1;
    # C only on t1: 10/40 = 0.25 (t2: C missed, t3: A missed).
    assert speedups(TIMES, "A") == {
        "A": Speedup(1.0, 2, 3),
        "B": Speedup(pytest.approx(1.0), 2, 3),
        "C": Speedup(0.25, 1, 3),
    }
    assert speedups({"t": {"A": math.inf, "B": 1.0}}, "A")["B"] == Speedup(None, 0, 1)


def test_a_task_without_a_finished_run_is_left_out_not_missed():
    # B is faster than A on t1, failed on t2 (None) and never ran on t3 (absent): only t1 counts for it
    partial = {"t1": {"A": 10.0, "B": 5.0}, "t2": {"A": 8.0, "B": None}, "t3": {"A": 20.0}}
    assert ratios(partial) == {"A": {"t1": 2.0, "t2": 1.0, "t3": 1.0}, "B": {"t1": 1.0}}
    assert score(ratios(partial)) == pytest.approx({"A": (2 / 3 + 1 + 1) / 3, "B": 1.0})
    assert profile(ratios(partial), [1.0])["B"].tolist() == [1.0]
    assert speedups(partial, "A")["B"] == Speedup(2.0, 1, 1)  # t1 alone: both ran only there
    assert ratios({"t": {"A": 3.0, "B": None}}) == {"A": {"t": 1.0}}  # no run anywhere: no profile at all
    every_miss = ratios({"t": {"A": math.inf, "B": math.inf}})  # a miss is a finished run that missed
    assert every_miss == {"A": {"t": math.inf}, "B": {"t": math.inf}} and score(every_miss) == {"A": 0.0, "B": 0.0}


def test_plot_profile_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = plot_profile(ratios(TIMES), tmp_path / "profile.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_summary_over_tasks_says_not_run_and_leaves_it_out_of_the_score(tmp_path):
    pytest.importorskip("matplotlib")
    from layerwise.compare.main_job import summarize_tasks

    def row(method, runs, seconds):
        return {"method": method, "runs": runs, "time_to_target_s": seconds}

    sections = [  # fast never ran on t2; broken failed every seed on t1 and missed on t2
        {"task": "t1", "rows": [row("baseline", 3, 10.0), row("fast", 3, 5.0), row("broken", 0, None)]},
        {"task": "t2", "rows": [row("baseline", 3, 8.0), row("broken", 3, None)]},
    ]
    lines = summarize_tasks(sections, tmp_path)["table"].splitlines()
    assert lines[2:] == [
        "| baseline | 10.0 (2.00) | 8.0 (1.00) | 0.83 | 1.00x (2 of 2 tasks) |",  # (2/3 + 1) / 2
        "| fast | 5.0 (1.00) | not run | 1.00 (over the 1 of 2 tasks it ran) | 2.00x (1 of 1 tasks) |",
        "| broken | no finished run | missed | 0.00 (over the 1 of 2 tasks it ran) | — |",
    ]


def test_the_profile_of_13_methods_has_its_legend_outside_and_distinct_lines():
    pytest.importorskip("matplotlib")
    methods = [f"m{i}" for i in range(13)]
    times = {"t1": {m: 10.0 + i for i, m in enumerate(methods)}, "t2": {m: 30.0 - i for i, m in enumerate(methods)}}
    fig = profile_figure(ratios(times))
    ax = fig.axes[0]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert ax.get_legend().get_window_extent(renderer).x0 > ax.get_window_extent(renderer).x1
    drawn = {(line.get_linestyle(), line.get_marker()) for line in ax.get_lines()}
    assert len(drawn) == 13 and len(set(line_styles(methods).values())) == 13
    fig.clf()
