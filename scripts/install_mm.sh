#!/usr/bin/env bash
# Install the OpenMMLab stack for vmamba's dense-prediction integration (vmamba.mmdet,
# vmamba.mmseg) into the current Python environment, on CPU-only torch. Idempotent: a second
# run checks and installs nothing.
#
#   mmcv 2.1.0 with its compiled ops (nms, RoIAlign, ...): the newest mmcv that mmdet 3.3.0
#       and mmsegmentation 1.2.2 accept. mmcv-lite lacks the ops Mask R-CNN needs, and PyPI has
#       no CPU wheel, so it comes from a prebuilt wheel when one for this Python is found in
#       $VMAMBA_WHEELS (default: ../shared/wheels beside the repository), else it is built
#       from source (MMCV_WITH_OPS=1 FORCE_CUDA=0, no build isolation, setuptools < 80 used
#       for the build only; about 10 minutes on 2 cores).
#   mmengine 0.10.7, mmdet 3.3.0, mmsegmentation 1.2.2 and the few runtime packages they
#       import, all through the repository's constraints.txt so torch is never replaced.
#       OpenCV is the headless build (the GUI one needs libGL, absent on servers and CI).
#
# Usage: bash scripts/install_mm.sh        (run inside the environment vmamba is installed in)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CONSTRAINTS="$ROOT/constraints.txt"
WHEELS="${VMAMBA_WHEELS:-$ROOT/../shared/wheels}"
PY="${PYTHON:-python}"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS")

torch_version() { "$PY" -c "import torch; print(torch.__version__)"; }
before="$(torch_version)"

# Runtime packages mmengine/mmcv/mmdet/mmseg import (their own requirement lists name
# opencv-python, which is replaced by the headless build, so they are installed --no-deps).
"${PIP[@]}" addict pyyaml rich termcolor yapf "opencv-python-headless>=4.5,<5" packaging pillow \
    matplotlib scipy pycocotools shapely six terminaltables tqdm prettytable ftfy regex
"${PIP[@]}" --no-deps mmengine==0.10.7

if "$PY" - <<'EOF' 2>/dev/null
import mmcv, mmcv.ops  # noqa: F401  (fails without the compiled ops)
assert mmcv.__version__ == "2.1.0", mmcv.__version__
EOF
then
    echo "mmcv 2.1.0 with ops already installed"
else
    tag="cp$("$PY" -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')"
    wheel="$(ls "$WHEELS"/mmcv-2.1.0-"$tag"-"$tag"-linux_x86_64.whl 2>/dev/null | head -n1 || true)"
    if [[ -n "$wheel" ]]; then
        echo "installing mmcv from $wheel"
        "${PIP[@]}" --no-deps --force-reinstall "$wheel"
    else
        echo "no prebuilt mmcv wheel for $tag in $WHEELS: building mmcv 2.1.0 from source (~10 min on 2 cores)"
        build_tools="$(mktemp -d)"
        trap 'rm -rf "$build_tools"' EXIT
        # setuptools >= 80 cannot build mmcv 2.1.0; keep the older one out of the environment.
        "$PY" -m pip install --quiet --disable-pip-version-check --target "$build_tools" "setuptools<80" wheel
        PYTHONPATH="$build_tools${PYTHONPATH:+:$PYTHONPATH}" MMCV_WITH_OPS=1 FORCE_CUDA=0 \
            MAX_JOBS="${MAX_JOBS:-2}" "${PIP[@]}" --no-deps --no-build-isolation --no-binary mmcv mmcv==2.1.0
    fi
fi

"${PIP[@]}" --no-deps mmdet==3.3.0 mmsegmentation==1.2.2

after="$(torch_version)"
if [[ "$before" != "$after" ]]; then
    echo "error: torch changed from $before to $after during the install" >&2
    exit 1
fi
"$PY" -W ignore - <<'EOF'
import mmcv, mmdet, mmengine, mmseg
from mmcv.ops import RoIAlign, nms  # noqa: F401
import vmamba.mmdet, vmamba.mmseg  # noqa: F401  (registers the backbones)
print(f"OK: mmengine {mmengine.__version__}, mmcv {mmcv.__version__} (with ops), "
      f"mmdet {mmdet.__version__}, mmseg {mmseg.__version__}")
EOF
