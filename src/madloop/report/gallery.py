"""Sample galleries: a run's ``plots/samples/{arm}_gen{t:03d}*.{png,svg,jpg,txt}`` files, per arm
and generation, ready to inline in a page (images as data URIs, text as excerpts)."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

GALLERY_PATTERN = re.compile(
    r"^(?P<arm>.+)_gen(?P<gen>\d{3,})(?P<suffix>[^.]*)\.(?P<ext>png|svg|txt|jpg|jpeg)$"
)
GALLERY_COLUMNS = 6  # generations shown per arm: the first, the last and a log-spaced few between
TEXT_LIMIT = 3000  # characters of a text excerpt
IMAGE_LIMIT = 600_000  # bytes; larger gallery images are re-encoded smaller


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data`` as a base64 ``data:`` URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def shrink(data: bytes) -> bytes:
    """Re-encode a large gallery image at most 1024 px wide, so the page stays small."""
    if len(data) <= IMAGE_LIMIT:
        return data
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.thumbnail((1024, 1024))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _width(data: bytes) -> int:
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).size[0]
    except OSError:
        return 0


def pick_generations(gens: list[int], n: int = GALLERY_COLUMNS) -> list[int]:
    """At most ``n`` of ``gens``: the first, the last and log-spaced ones between."""
    gens = sorted(set(gens))
    if len(gens) <= n:
        return gens
    picks = {gens[0], gens[-1]}
    for target in np.geomspace(max(gens[0], 1), gens[-1], n)[1:-1]:
        picks.add(min(gens, key=lambda g: abs(np.log(max(g, 1)) - np.log(target))))
    return sorted(picks)[:n]


def _item(file: Path, suffix: str, ext: str) -> dict[str, str]:
    item: dict[str, str] = {"suffix": suffix.strip("_-")}
    if ext == "txt":
        text = file.read_text(errors="replace")
        item["text"] = text[:TEXT_LIMIT] + ("\n…" if len(text) > TEXT_LIMIT else "")
    elif ext == "svg":
        item["uri"] = data_uri(file.read_bytes(), "image/svg+xml")
    else:
        mime = "image/png" if ext == "png" else "image/jpeg"
        data = file.read_bytes()
        item["uri"] = data_uri(shrink(data) if mime == "image/png" else data, mime)
        item["pixel"] = "pixel" if _width(data) <= 320 else ""  # upscale sharp, not blurred
    return item


def galleries(folder: Path) -> list[dict[str, Any]]:
    """Per arm: the gallery files by generation (images inline, text excerpts as text)."""
    if not folder.is_dir():
        return []
    found: dict[str, dict[int, list[dict[str, str]]]] = {}
    for file in sorted(folder.iterdir()):
        m = GALLERY_PATTERN.match(file.name)
        if m:
            item = _item(file, m["suffix"], m["ext"])
            found.setdefault(m["arm"], {}).setdefault(int(m["gen"]), []).append(item)
    out = []
    for arm, by_gen in found.items():
        gens = pick_generations(list(by_gen))
        out.append({"arm": arm, "columns": [{"generation": g, "items": by_gen[g]} for g in gens]})
    return out
