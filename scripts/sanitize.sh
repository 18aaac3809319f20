#!/usr/bin/env bash
# Builds the addon with AddressSanitizer + UBSan in its own directory (the normal build is untouched) and
# runs the native-facing tests against it. Usage: scripts/sanitize.sh [test files...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=$root/build-sanitize
rm -rf "$out" && mkdir -p "$out"
cp binding.gyp "$out/" && cp -r native "$out/native"
ln -s "$root/node_modules" "$out/node_modules"
(cd "$out" && node "$root/scripts/build-addon.js" rebuild -- -Dovl_sanitize=1 >build.log 2>&1) || { cat "$out/build.log"; exit 1; }
nm -D "$out/build/Release/ovl.node" | grep __asan_init >/dev/null || { echo "sanitize: the build has no ASan runtime" >&2; exit 1; }
npx tsc -p tsconfig.build.json
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(test/native.test.ts test/mount.test.ts test/hardening.test.ts test/lookup-once.test.ts test/diff.test.ts test/watch.test.ts test/idmap.test.ts)
# Node itself is not instrumented: preload the runtime; leaks are Node's own at exit, so report errors only.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OVL_NATIVE_PATH=$out/build/Release/ovl.node
export OVL_SANITIZED=1
node scripts/run-tests.js "${tests[@]}"
