#!/usr/bin/env bash
# Runs inside the kernel lane's VM (started by tests/kernel/vm.sh): one pytest process for the
# whole suite, with this checkout's .venv (the host's root filesystem is shared). Writes the
# kernel release, pytest's output, its exit code and its summary line to OUT (the VM's only
# directory whose writes reach the host).
OUT=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
export PORTGUARD_KERNEL_VM=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
uname -r >"$OUT/kernel"
echo "guest: $(uname -r), $(nproc) CPU, python $(.venv/bin/python -V 2>&1)"
# shellcheck disable=SC2068  # extra pytest arguments split on purpose
.venv/bin/python -m pytest -p no:cacheprovider -p no:hypothesispytest -ra -v --durations=0 tests/kernel "$@" 2>&1 | tee "$OUT/pytest.log"
rc=${PIPESTATUS[0]}
grep -E '^=+ .* in [0-9.]+s.* =+$' "$OUT/pytest.log" | tail -n 1 >"$OUT/summary"
echo "$rc" >"$OUT/rc"
exit "$rc"
