"""Finished-run records for the comparison's summary, as :func:`layerwise.compare.runner.run_one` returns
them, that more than one test file builds outcomes from."""


def seed_record(seed, final, seconds=(2.0, 4.0, 6.0), values=None):
    """Seed ``seed`` of a step-budget run ending at ``final`` accuracy (three evaluations)."""
    values = values or (final - 0.1, final - 0.05, final)
    curve = [{"step": i + 1, "seconds": s, "test_accuracy": v} for i, (s, v) in enumerate(zip(seconds, values))]
    return {
        "seed": seed,
        "wall_clock_s": seconds[-1],
        "test_metric": final,
        "diverged_at": None,
        "final_train_loss": 0.5,
        "steps": 100,
        "curve": curve,
        "budget": {"mode": "steps"},
    }


def time_budget_record(final, seconds, curve_values, budget_s=10.0, steps=100):
    """A time-budget run with its loss, LR and budget, as the plots and the budget ratio read them."""
    curve = [{"step": i + 1, "seconds": s, "test_accuracy": v} for i, (s, v) in enumerate(zip(seconds, curve_values))]
    return {
        "wall_clock_s": seconds[-1],
        "test_metric": final,
        "diverged_at": None,
        "final_train_loss": 0.5,
        "steps": steps,
        "curve": curve,
        "train_loss": [1.0, 0.8, 0.6],
        "lr_steps": [0, 1],
        "lr": {"a": [0.1, 0.05]},
        "groups": ["a"],
        "frozen_at": {},
        "budget": {"mode": "time", "source": "baseline", "seconds": budget_s},
    }


def time_budget_outcomes():
    """The baseline (3 seeds), ``fast`` (ahead, sooner, more steps) and ``over`` (1.5x its budget, one failure)."""
    seconds = [2.0, 4.0, 6.0, 8.0, 10.0]
    base = [time_budget_record(0.80 + d, seconds, [0.5, 0.6, 0.7, 0.78, 0.80 + d]) for d in (0.0, 0.01, 0.005)]
    fast = [
        time_budget_record(0.81 + d, seconds, [0.7, 0.8, 0.805, 0.81, 0.81 + d], steps=150)
        for d in (0.0, 0.005, -0.005)
    ]
    slow = [time_budget_record(0.70, [s * 1.5 for s in seconds], [0.3, 0.4, 0.5, 0.6, 0.70])]
    return {
        "baseline": {"records": base, "errors": []},
        "fast": {"records": fast, "errors": []},
        "over": {"records": slow, "errors": ["Traceback\nRuntimeError: boom"]},
    }
