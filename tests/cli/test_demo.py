"""`kvmesh demo`'s side-by-side: text and the latent channel on the same tasks, figures from the runs themselves."""

import re

from kvmesh.cli.demo import LATENT, side_by_side


def test_the_side_by_side_prints_both_channels_on_the_same_tasks_with_measured_figures(tiny):
    lines = side_by_side("tiny-random", 3)
    assert lines[0].split()[-1] == LATENT and len(lines) == 1 + 3 + 1 + 2  # header, tasks, blank, one line each
    text, latent = lines[-2], lines[-1]
    assert text.startswith("text ") and latent.startswith(LATENT)
    assert re.search(r"correct \d/3, [\d.]+ s/task", text) and "0 read from a cache, 0 latent steps" in text
    assert "5 latent steps" in latent and "0 read from a cache" not in latent  # the latent channel reads a cache
