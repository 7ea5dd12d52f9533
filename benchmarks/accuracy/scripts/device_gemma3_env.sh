# Sourced by device_selection.sh and device_ruler.sh on the GPU machine, after the folders that
# device_gemma3_parts.sh made were copied to /tmp/carry by earlier calls: joins and checks
# gemma3's GGUF, installs the carried wheels and sets the environment of the runs.
set -uo pipefail
LIMIT=${LIMIT:-480}
C=/tmp/carry
mkdir -p /tmp/models /tmp/acc /tmp/site
[ -f /tmp/models/gemma-3-270m-q4_k_m.gguf ] || cat $C/gemma.part* > /tmp/models/gemma-3-270m-q4_k_m.gguf
sha256sum /tmp/models/*.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site $C/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 DHSA_MODELS_DIR=/tmp/models
export DHSA_HAYSTACK=$C/PaulGrahamEssays.json
OUT=${OUT:-out}; mkdir -p "$OUT"
