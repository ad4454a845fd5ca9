#!/usr/bin/env bash
# Create .venv and install napari-xmag with a Qt binding.
#   --test  also the test tools, and (Debian/Ubuntu) Xvfb with the X libraries Qt needs:
#           napari draws with OpenGL, which a headless machine only has under Xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="all"
if [[ "${1:-}" == "--test" ]]; then
  extras="all,test"
  if ! command -v Xvfb >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
      sudo=""; [[ "$(id -u)" != 0 ]] && sudo="sudo"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 \
        libxcb-randr0 libxcb-shape0 libxcb-xfixes0 libxcb-cursor0 libxkbcommon-x11-0 \
        libegl1 libgl1 libdbus-1-3 libfontconfig1 >/dev/null
    else
      echo "install.sh: Xvfb is missing and this is not a Debian/Ubuntu system; install it by hand" >&2
    fi
  fi
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || { echo "install.sh: napari-xmag needs Python 3.10 or newer ($python is older)" >&2; exit 1; }
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned in the same command: an unpinned resolve can pull a multi-GB CUDA build.
torch_spec=${XMAG_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $torch_spec -e ".[$extras]"
echo "install.sh: napari-xmag installed in .venv ($extras)"
