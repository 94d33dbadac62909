#!/usr/bin/env bash
# Installs what the pack needs and prints the ComfyUI folder and its Python on the last line
# ("COMFYUI=<dir> PYTHON=<python>"). Source of ComfyUI, in order:
#   COMFYUI_PATH    an existing ComfyUI install (folder with main.py); its Python is COMFYUI_PYTHON,
#                   else a venv/ or .venv/ inside it, else python3
#   COMFYUI_SOURCE  a git URL, a local checkout, or a source tarball ComfyUI-*.tar.gz; installed into
#                   $COME_HOME/ComfyUI with a venv in $COME_HOME/venv (COME_HOME default ~/.cache/comfyui-come)
#   default         the vendored tarball ../shared/vendor/ComfyUI-*.tar.gz if present, else the official git repo
# TORCH_PKGS (default "torch==2.14.1 torchvision==0.29.1") is installed when that Python has no torch, and
# .ci/torchaudio.txt when it has no torchaudio (ComfyUI's audio nodes need it; that file says why that release;
# a TORCH_PKGS with another torch names its own torchaudio).
set -euo pipefail
PACK=$(cd "$(dirname "$0")/.." && pwd)
COME_HOME=${COME_HOME:-$HOME/.cache/comfyui-come}
TORCH_PKGS=${TORCH_PKGS:-"torch==2.14.1 torchvision==0.29.1"}
log() { printf '[come-setup] %s\n' "$*" >&2; }

if [ -n "${COMFYUI_PATH:-}" ] && [ -f "$COMFYUI_PATH/main.py" ]; then
  COMFY=$(cd "$COMFYUI_PATH" && pwd)
  PY=${COMFYUI_PYTHON:-}
  for v in "$COMFY/venv" "$COMFY/.venv"; do [ -z "$PY" ] && [ -x "$v/bin/python" ] && PY="$v/bin/python"; done
  PY=${PY:-python3}
  log "using the existing ComfyUI at $COMFY with $PY"
else
  [ -n "${COMFYUI_PATH:-}" ] && log "COMFYUI_PATH=$COMFYUI_PATH has no main.py; installing ComfyUI instead"
  SRC=${COMFYUI_SOURCE:-}
  if [ -z "$SRC" ]; then
    SRC=$(ls "$PACK"/../shared/vendor/ComfyUI-*.tar.gz 2>/dev/null | head -1 || true)
    SRC=${SRC:-https://github.com/comfyanonymous/ComfyUI.git}
  fi
  COMFY=$COME_HOME/ComfyUI
  mkdir -p "$COME_HOME"
  stamp="$COME_HOME/.source"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$SRC" ] || [ ! -f "$COMFY/main.py" ]; then
    log "installing ComfyUI from $SRC into $COMFY"
    rm -rf "$COMFY"; mkdir -p "$COMFY"
    if [ -f "$SRC" ]; then
      tar -xzf "$SRC" -C "$COMFY" --strip-components=1
    elif [ -d "$SRC/.git" ] || [ -f "$SRC/main.py" ]; then
      cp -a "$SRC/." "$COMFY/"
    else
      git clone --depth 1 "$SRC" "$COMFY"
    fi
    printf '%s' "$SRC" > "$stamp"
  fi
  [ -x "$COME_HOME/venv/bin/python" ] || python3 -m venv "$COME_HOME/venv"
  PY=${COMFYUI_PYTHON:-$COME_HOME/venv/bin/python}
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
  log "pip install $TORCH_PKGS"
  "$PY" -m pip install -q $TORCH_PKGS
fi
if ! "$PY" -c "import torchaudio" 2>/dev/null; then
  log "pip install --no-deps -r .ci/torchaudio.txt"
  "$PY" -m pip install -q --no-deps -r "$PACK/.ci/torchaudio.txt"
  "$PY" -c "import torchaudio" || log "WARNING: torchaudio does not import beside this torch; ComfyUI's audio nodes will not load"
fi
log "pip install ComfyUI's and the pack's requirements"
"$PY" -m pip install -q -r <(grep -viE '^(torch|torchvision|torchaudio)([<>=! ]|$)' "$COMFY/requirements.txt") \
  -r "$PACK/requirements.txt" ${COME_EXTRA_PIP:-}
echo "COMFYUI=$COMFY PYTHON=$PY"
