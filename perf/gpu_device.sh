#!/usr/bin/env bash
# `t2vserve gpu-check` on a lent GPU machine, from the repository root there (perf/README.md,
# "gpu-check on a lent GPU machine"); what it needs travels in .carry1/ and .carry2/, which
# perf/gpu_carry.sh builds here.
#   bash perf/gpu_device.sh unpack        unpack whichever carry folder travelled into /tmp/site
#   bash perf/gpu_device.sh run [ARGS]    preflight, then gpu-check ARGS, results into $OUT
set -euo pipefail

SITE=/tmp/site
case "${1:-}" in
unpack)
  mkdir -p "$SITE"
  for c in .carry1 .carry2; do
    if [ -f "$c/site.tar.xz" ]; then
      tar -C "$SITE" -xJf "$c/site.tar.xz"
      echo "unpacked $c into $SITE"
    fi
  done
  ;;
run)
  shift
  test -x "$SITE/pytriton/tritonserver/bin/tritonserver" || { echo "unpack .carry1 first" >&2; exit 2; }
  test -x "$SITE/bin/perf_analyzer" || { echo "unpack .carry2 first" >&2; exit 2; }
  # The package as pyproject.toml's package-dir lays it out (no pip install: nothing to
  # build offline), as links into this tree.
  PKG=/tmp/t2vserve-src
  rm -rf "$PKG" && mkdir -p "$PKG/t2vserve"
  for f in t2vserve/*; do ln -s "$PWD/$f" "$PKG/t2vserve/"; done
  for d in export client kernels perf profiles model_repository; do
    ln -s "$PWD/$d" "$PKG/t2vserve/$d"
  done
  # perf.analyzer runs the perf_analyzer beside sys.executable, and serve.server puts that
  # folder first on the stubs' PATH: a link to the interpreter next to it gives both. Linked
  # by its real path (python3 may be a shim), with its own site-packages named on PYTHONPATH
  # (a venv's are found from pyvenv.cfg beside the venv's link, not beside ours).
  BIN=/tmp/t2vserve-bin
  mkdir -p "$BIN"
  ln -sf "$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))')" "$BIN/python3"
  ln -sf "$SITE/bin/perf_analyzer" "$BIN/perf_analyzer"
  OWN=$(python3 -c 'import site; print(":".join(site.getsitepackages()))')
  export PYTHONPATH="$PKG:$SITE:$OWN" LD_LIBRARY_PATH="$SITE/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "--- preflight"
  "$BIN/python3" - <<'EOF' || true
import glob, os, platform, sys, sysconfig
import numpy, torch
print("python", sys.version.split()[0], "glibc", platform.libc_ver()[1], "numpy", numpy.__version__,
      "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())
libdir, ldlib = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")
print("libpython (the stub embeds it):", ldlib, os.path.exists(os.path.join(libdir or "", ldlib or "")),
      glob.glob("/usr/lib/x86_64-linux-gnu/libpython3.12.so*"))
st = os.statvfs("/dev/shm")
print("/dev/shm free GiB", round(st.f_bavail * st.f_frsize / 2**30, 1))
EOF
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  echo "--- gpu-check"
  exec "$BIN/python3" -m t2vserve.cli gpu-check --out-dir "${OUT:-perf/results}" "$@"
  ;;
*)
  echo "usage: bash perf/gpu_device.sh unpack | run [gpu-check arguments]" >&2
  exit 2
  ;;
esac
