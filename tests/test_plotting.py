import pytest

from layerwise.plotting import plot_schedule


def test_plot_writes_a_png(tmp_path):
    path = plot_schedule([[1.0, 0.5, 0.0], [0.5, 1.0, 1.0]], ["a", "b"], tmp_path / "x" / "lr.png", frozen_at=[2, None])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_checks_shape(tmp_path):
    with pytest.raises(ValueError, match="lr"):
        plot_schedule([[1.0, 0.5]], ["a", "b"], tmp_path / "lr.png")
