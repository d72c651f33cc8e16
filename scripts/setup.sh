# Sourced by scripts/demo and scripts/test: installs what the build needs on Debian 12 and
# builds the release binary. Safe to run again: every step checks before it acts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TORCH_VERSION="2.13.0"
VENV="$ROOT/.venv"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

need_apt=()
for pkg in fuse3 libfuse3-dev pkg-config build-essential python3-venv attr util-linux systemd chromium; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  log "apt: installing ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null || { log "no Rust toolchain (cargo) found: install one (rustup) first"; exit 1; }

# PyTorch from PyPI in a virtualenv in the repo: it is the libtorch that tch links against.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
  log "pip: installing torch==$TORCH_VERSION into $VENV (about 1 minute, 4.7 GB)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION"
fi
LIBTORCH="$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)"
export LIBTORCH LIBTORCH_BYPASS_VERSION_CHECK=1

log "cargo build --release"
cargo build --release --locked
export PATH="$ROOT/target/release:$PATH"
