"""Sample galleries: which generations get one, and writing them where the report finds them
(``plots/samples/{label}_gen{t:03d}.*``, rendered by the data source)."""

from __future__ import annotations

from pathlib import Path

from madloop.capabilities import RendersSamples, satisfies
from madloop.loop import Engine
from madloop.storage.layout import SAMPLES

GALLERY_SIZE = 256


def gallery_generations(generations: int) -> set[int]:
    """Generations that get a sample gallery: 1, the last, and a roughly log-spaced few."""
    marks = {2, 3, 5, 7, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000}
    return {1, generations} | {g for g in marks if g < generations}


def write_gallery(engine: Engine, out: Path) -> list[Path]:
    """Samples of the current generation per label, rendered by the real source when it knows
    how (``render_samples(points, path_stem) -> list[Path]``; image grid, 2-D scatter, text...).
    Files land in ``plots/samples/{label}_gen{t:03d}.*`` (':' of a lineage label as '-')."""
    if not satisfies(engine.real, RendersSamples):
        return []
    paths = []
    for label, points in engine.galleries(GALLERY_SIZE).items():
        stem = out / SAMPLES / f"{label.replace(':', '-')}_gen{engine.generation:03d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        paths += engine.real.render_samples(points, stem)
    return paths
