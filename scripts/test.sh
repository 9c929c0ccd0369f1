#!/usr/bin/env bash
# Run the whole test suite as root: install dependencies, build the guest image for the VM tests
# (cached in $USSYCODE_TEST_IMAGE_DIR), then ruff, mypy (strict) and pytest.
#
#   scripts/test.sh            everything (about 30 minutes on 2 cores)
#   scripts/test.sh --quick    skip the tests marked vm, which boot QEMU guests
#   scripts/test.sh ARGS...    extra arguments go to pytest
set -euo pipefail

cd "$(dirname "$0")/.."
quick=0
if [ "${1:-}" = "--quick" ]; then
  quick=1
  shift
fi

scripts/install.sh
export USSYCODE_TEST_IMAGE_DIR=${USSYCODE_TEST_IMAGE_DIR:-/var/cache/ussycode-test/images}
if [ "$quick" -eq 0 ]; then
  .venv/bin/ussycode image build --image-dir "$USSYCODE_TEST_IMAGE_DIR" --data-dir "$USSYCODE_TEST_IMAGE_DIR/../data"
fi

echo "test.sh: ruff"
.venv/bin/ruff check src tests scripts
.venv/bin/ruff format --check src tests scripts
echo "test.sh: mypy"
.venv/bin/mypy
echo "test.sh: pytest"
marker=()
if [ "$quick" -eq 1 ]; then
  marker=(-m "not vm")
fi
status=0
.venv/bin/python -m pytest "${marker[@]}" "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests" >&2
fi
exit "$status"
