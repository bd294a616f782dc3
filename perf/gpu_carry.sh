#!/usr/bin/env bash
# Build the carry folders for `t2vserve gpu-check` on a lent GPU machine (perf/README.md,
# "gpu-check on a lent GPU machine"). Run here, from the repository root, with network:
#   bash perf/gpu_carry.sh
# It downloads the wheels the served stack needs there (Python 3.12, x86-64), unpacks them
# into a site folder, keeps what the check runs (tritonserver, its Python 3.12 stub and the
# libraries they load, perf_analyzer, libb64, libcudart.so.12) and packs two xz tarballs:
#   .carry1/site.tar.xz  tritonserver (slimmed nvidia-pytriton 0.7.0), the gRPC client stack,
#                        sentencepiece, libcudart.so.12, libb64
#   .carry2/site.tar.xz  PyAV, diffusers, ml_dtypes, perf_analyzer
# Each call's working tree (tracked files + one carry folder) must stay under 64 MiB: the
# script prints both and fails if either call would not fit.
set -euo pipefail

ROOT=$(pwd)
test -f pyproject.toml && test -d perf || { echo "run from the repository root" >&2; exit 2; }
WORK=build/gpu-carry
PY=${PYTHON:-python3}
rm -rf "$WORK" .carry1 .carry2
mkdir -p "$WORK/wheels" "$WORK/site1" "$WORK/site2" .carry1 .carry2

# The pins: pyproject.toml's server pins, the client's (tritonclient 2.73.0 and what its gRPC
# module imports), and tritonclient 2.50.0 for the perf_analyzer binary only (as the Makefile).
WHEELS1="nvidia-pytriton==0.7.0 tritonclient==2.73.0 grpcio==1.85.3 protobuf==6.33.6
python-rapidjson==1.25 urllib3==2.8.0 sentencepiece==0.2.3 nvidia-cuda-runtime-cu12==12.9.79"
WHEELS2="av==18.1.0 diffusers==0.42.1 ml-dtypes==0.5.4 tritonclient==2.50.0"
for spec in $WHEELS1 $WHEELS2; do
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_35_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$WORK/wheels" "$spec" 2>&1 | grep -v "^WARNING: Location" || true
done

wheel() {  # the downloaded wheel of a distribution (file names use _ for -)
  local name=${1//-/_}
  ls "$WORK"/wheels/"$name"-"$2"-*.whl
}
unpack() {  # a wheel into a site folder, as pip install --target lays out a pure/plat wheel
  "$PY" -m zipfile -e "$1" "$2"
}

# --- call 1 ------------------------------------------------------------------------------
for dist in "tritonclient 2.73.0" "grpcio 1.85.3" "protobuf 6.33.6" "python_rapidjson 1.25" \
            "urllib3 2.8.0" "sentencepiece 0.2.3"; do
  unpack "$(wheel $dist)" "$WORK/site1"
done
# nvidia-pytriton: only the tritonserver tree and the libraries it loads. Its Python package
# (pytriton's own client, which imports pyzmq, typer, sh, ...) is not used: triton_home()
# needs the package's folder, so an empty __init__.py stands in for it.
PT="$WORK/pytriton-full"
unpack "$(wheel nvidia-pytriton 0.7.0)" "$PT"
TS=pytriton/tritonserver
mkdir -p "$WORK/site1/$TS/python_backend_stubs" "$WORK/site1/nvidia_pytriton.libs"
cp -a "$PT/$TS/bin" "$PT/$TS/backends" "$PT/$TS/caches" "$WORK/site1/$TS/"
cp -a "$PT/$TS/python_backend_stubs/3.12" "$WORK/site1/$TS/python_backend_stubs/"
: > "$WORK/site1/pytriton/__init__.py"
cp -a "$PT"/nvidia_pytriton-0.7.0.dist-info "$WORK/site1/"
chmod +x "$WORK/site1/$TS/bin/tritonserver" "$WORK/site1/$TS/python_backend_stubs/3.12/"*
for f in "$PT/$TS/bin/tritonserver" "$PT/$TS"/backends/python/*.so "$PT/$TS"/caches/local/*.so \
         "$PT/$TS/python_backend_stubs/3.12/triton_python_backend_stub"; do
  LD_LIBRARY_PATH="$PT/nvidia_pytriton.libs" ldd "$f"
done | awk '/nvidia_pytriton.libs/ {print $3}' | xargs -n1 realpath | sort -u \
  | xargs -I{} cp -a {} "$WORK/site1/nvidia_pytriton.libs/"
# libcudart.so.12 for perf_analyzer, where analyzer.environment() looks (nvidia.cuda_runtime)
mkdir -p "$WORK/site1/nvidia/cuda_runtime/lib"
"$PY" - "$(wheel nvidia_cuda_runtime_cu12 12.9.79)" "$WORK/site1" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("nvidia/cuda_runtime/lib/libcudart.so.12", sys.argv[2])
EOF
# libb64 (Debian's libb64-0d) for perf_analyzer
(cd "$WORK" && apt-get download -q libb64-0d >/dev/null 2>&1)
dpkg-deb -x "$WORK"/libb64-0d_*.deb "$WORK/libb64"
mkdir -p "$WORK/site1/lib"
cp -L "$WORK"/libb64/usr/lib/x86_64-linux-gnu/libb64.so.0d "$WORK/site1/lib/"

# --- call 2 ------------------------------------------------------------------------------
for dist in "av 18.1.0" "diffusers 0.42.1" "ml_dtypes 0.5.4"; do
  unpack "$(wheel $dist)" "$WORK/site2"
done
chmod -R u+rwX "$WORK/site1" "$WORK/site2"
mkdir -p "$WORK/site2/bin"
"$PY" - "$(wheel tritonclient 2.50.0)" "$WORK/site2/bin" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("tritonclient-2.50.0.data/data/bin/perf_analyzer") as src, \
        open(sys.argv[2] + "/perf_analyzer", "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
chmod +x "$WORK/site2/bin/perf_analyzer"

# python -m zipfile drops the exec bits of the wheels' shared objects; loaders do not need them
echo "packing (xz -9, about two minutes on two cores) ..."
XZ_OPT="-9 -T0" tar -C "$WORK/site1" -cJf .carry1/site.tar.xz .
XZ_OPT="-9 -T0" tar -C "$WORK/site2" -cJf .carry2/site.tar.xz .

tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=${untracked:-0}
limit=$((64 * 1024 * 1024))
status=0
for c in .carry1 .carry2; do
  size=$(du -cb "$c" | tail -1 | cut -f1)
  total=$((tree + untracked + size))
  awk -v c="$c" -v s="$size" -v t="$((tree + untracked))" -v a="$total" 'BEGIN {
    printf "%s: %.1f MiB carried + %.1f MiB working tree = %.1f MiB of 64 MiB\n",
           c, s / 1048576, t / 1048576, a / 1048576 }'
  [ "$total" -lt "$limit" ] || { echo "  $c does not fit one call" >&2; status=1; }
done
exit $status
