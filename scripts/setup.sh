#!/usr/bin/env bash
# Set up a fresh machine for snapgen-archsearch, then stop: the README's first command runs this and
# then the main job. Idempotent (what is present is skipped); needs Debian/Ubuntu's apt for the
# system packages (root, or sudo) and pip for the Python ones.
#
#   system   dataset-fashion-mnist (the embedded default data: /usr/share/datasets/fashion-mnist),
#            postgresql (the shared-storage tests start a real server), chromium (the dashboard test
#            renders headless); SNAPGEN_SETUP_SYSTEM=0 skips them (then see docs/proxy.md for the
#            other places the data can come from)
#   python   torch + torchvision (only if they do not import: the pinned builds below are the ones this
#            kind of machine holds locally; elsewhere install the build for your accelerator first),
#            then this package with its dev extra
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
PY=${PYTHON:-python}

if [ "${SNAPGEN_SETUP_SYSTEM:-1}" = 1 ]; then
  pkgs=()
  [ -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || pkgs+=(dataset-fashion-mnist)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || pkgs+=(postgresql)
  command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
  if [ ${#pkgs[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! command -v apt-get >/dev/null 2>&1; then
      echo "setup: no apt-get here; install ${pkgs[*]} yourself (or SNAPGEN_SETUP_SYSTEM=0)" >&2
      exit 2
    fi
    echo "setup: apt-get install ${pkgs[*]}"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
fi

if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  echo "setup: pip install torch==2.14.1 torchvision==0.29.1"
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
echo "setup: pip install -e .[dev]"
"$PY" -m pip install -q -e ".[dev]"
echo "setup: done ($("$PY" -c 'import snapgen; print("snapgen-archsearch", snapgen.__version__)' 2>/dev/null || echo installed))"
