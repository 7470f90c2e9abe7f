"""Small helpers shared across the package: image file extensions, progress bars, plotting.

tqdm and matplotlib are optional (the ``train`` extra): without them, bars are silent and
plots are skipped.
"""
from __future__ import annotations

import sys

# Files that ImageFolder datasets and the ERF tool read as images (Pillow opens all of them).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")


def progress_bar(total: int | None, desc: str = "", enabled: bool = True, bytes: bool = False):
    """A tqdm bar on stderr (ETA included), or a silent stand-in when disabled or tqdm is missing.

    ``bytes=True`` counts a transfer (B, KiB, MiB). Both kinds of bar have ``update(n)``,
    ``set_description(text)``, ``set_postfix(**values)`` and ``close()``.
    """
    if enabled:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            units = dict(unit="B", unit_scale=True, unit_divisor=1024) if bytes else {}
            return tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False, file=sys.stderr,
                        mininterval=0.5, **units)
    return _NoBar()


class _NoBar:
    def update(self, n=1):
        pass

    def set_description(self, text):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
