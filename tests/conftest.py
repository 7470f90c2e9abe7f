"""Shared fixtures: golden reference data, small random scan inputs, tiny image folders."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parent / "data" / "golden"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def import_timm():
    """timm, or a skip: it imports torchvision, which on a CPU-only torch build may need the
    workplace's test-only shim (``shared/tools/torchvision_cpu_shim.py`` above the checkout)."""
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm not installed (optional extra)")
    shim = next((p / "shared" / "tools" for p in Path(__file__).resolve().parents
                 if (p / "shared" / "tools" / "torchvision_cpu_shim.py").is_file()), None)
    if shim is not None and str(shim) not in sys.path:
        sys.path.insert(0, str(shim))
        __import__("torchvision_cpu_shim")
    try:
        import timm
    except Exception as e:  # noqa: BLE001 - timm raises whatever its torchvision import raises
        pytest.skip(f"timm does not import here: {e}")
    return timm


@pytest.fixture
def timm_module():
    """:func:`import_timm` as a fixture."""
    return import_timm()


def load_golden(name: str) -> dict:
    """A golden file of the authors' release (see tests/data/golden/README.md)."""
    return torch.load(GOLDEN / name, weights_only=True)


@pytest.fixture(scope="session")
def golden_ops() -> dict:
    return load_golden("golden_ops.pt")


def make_scan_inputs(batch=2, channels=8, length=13, n=4, groups=2, dtype=torch.float64,
                     requires_grad=False, seed=0, dt_scale=0.5):
    """Random selective-scan inputs: u, delta, A, B, C, D, delta_bias, z."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    tensors = dict(
        u=r(batch, channels, length),
        delta=r(batch, channels, length) * dt_scale,
        A=-(torch.rand(channels, n, generator=g, dtype=torch.float64) * 2 + 0.2),
        B=r(batch, groups, n, length),
        C=r(batch, groups, n, length),
        D=r(channels),
        delta_bias=r(channels) * 0.3,
        z=r(batch, channels, length),
    )
    out = {}
    for k, t in tensors.items():
        t = t.to(torch.float32 if k in ("A", "D", "delta_bias") and dtype != torch.float64 else dtype)
        out[k] = t.requires_grad_(requires_grad)
    return out


def _image_folder(root: Path, classes=("cat", "dog"), per_class: int = 8, size: int = 20) -> Path:
    """train/ and val/ folders of small coloured PNG/JPEG images, one colour tint per class."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                img = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
                img[..., c % 3] += 120
                Image.fromarray(img).save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="session")
def make_image_folder():
    """``make_image_folder(root, classes=("cat", "dog"), per_class=8, size=20) -> root``: an
    ImageFolder layout (train/, val/) of tinted images, one tint per class (needs Pillow)."""
    pytest.importorskip("PIL")
    return _image_folder


# --- a web server on 127.0.0.1 for the download tests ------------------------------------------

class Reply:
    """What the test server answers for one path: ``body`` with ``status``, optionally cut off
    after ``cut`` bytes (a truncated transfer), delayed by ``delay`` seconds, or as ``content_type``."""

    def __init__(self, body: bytes = b"", status: int = 200, cut: int | None = None, delay: float = 0.0,
                 content_type: str = "application/octet-stream"):
        self.body, self.status, self.cut, self.delay, self.content_type = body, status, cut, delay, content_type


@pytest.fixture
def weights_server():
    """A threaded HTTP server on 127.0.0.1: ``server.files[path] = Reply(...)`` (raw paths, e.g.
    '/%23v2cls/x.pth'), ``server.requests`` lists the paths asked for, ``server.url`` its base."""
    import http.server
    import threading
    import time

    files: dict[str, Reply] = {}
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            requests.append(self.path)
            reply = files.get(self.path)
            if reply is None:
                reply = Reply(b"<html><body>Not Found</body></html>", status=404, content_type="text/html")
            time.sleep(reply.delay)
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            try:
                self.wfile.write(reply.body if reply.cut is None else reply.body[: reply.cut])
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            if reply.cut is not None:
                self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.files, server.requests = files, requests
    server.url = f"http://127.0.0.1:{server.server_address[1]}/"
    yield server
    server.shutdown()
    server.server_close()
