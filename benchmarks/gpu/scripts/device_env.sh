# Sourced by the device_*.sh scripts here, on the GPU machine from the repository root with the
# wheels folder .carry/w carried: installs pytest (and the extra wheels named in EXTRA_WHEELS,
# e.g. "transformers regex") into /tmp/site, puts the source tree on the path and makes $OUT.
set -uo pipefail
mkdir -p /tmp/carry /tmp/site && cp -r .carry/w/* /tmp/carry/ 2>/dev/null
wheels="/tmp/carry/pytest-*.whl /tmp/carry/pluggy-*.whl /tmp/carry/iniconfig-*.whl"
for name in ${EXTRA_WHEELS:-}; do wheels="$wheels /tmp/carry/$name-*.whl"; done
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $wheels
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
