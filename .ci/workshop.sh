#!/usr/bin/env bash
# CI: the workshop's exercises cannot rot. Run from the repository root, in a virtual
# environment with requirements-dev.txt (`.ci/run` calls it with its newest-Python venv):
# `bash .ci/workshop.sh`. SQLite only, one Python.
#
# For each docs/workshop/solutions/NN-name.patch (a `git diff` against main, tests included):
# 1. a clean copy of HEAD (`git archive`: committed files only, as on CI's clean clone);
#    `git apply --check`, then apply; the README's test command (`pytest`) must pass there;
# 2. another clean copy with only the patch's test files applied (plus, for a test-only
#    exercise, its `# mutant:` diff, which removes the code the test is about): the exercise's
#    done test (`# done: pytest ...` in the patch's header, which `git apply` ignores) must
#    run and fail, exit status 1, not an import or collection error.
# One line per exercise; the exit status is 1 if any exercise failed. Arguments name some
# exercises only: `bash .ci/workshop.sh 02-items-search`.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

solutions="$PWD/docs/workshop/solutions"
TEST_FILES=(--include='test_*.py' --include='tests/*' --include='conftest.py')
failed=0

clean_copy() {
  rm -rf "$1"
  mkdir -p "$1"
  git archive HEAD | tar -x -C "$1"
}

# The value of the `# <key>: ...` line before the patch's first `diff --git`.
header() { sed -n "/^diff --git /q; s/^# $2: //p" "$1" | head -n 1; }

shopt -s nullglob
patches=(docs/workshop/solutions/*.patch)
if [ $# -gt 0 ]; then patches=("${@/#/docs/workshop/solutions/}"); patches=("${patches[@]/%/.patch}"); fi
if [ ${#patches[@]} = 0 ]; then echo "no docs/workshop/solutions/*.patch found"; exit 1; fi

for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  patch_path="$PWD/$patch"
  done_command=$(header "$patch" "done")
  mutant=$(header "$patch" mutant)
  log="$work/$name.log"
  fail() { echo "$name: FAILED: $*"; tail -n 30 "$log" 2>/dev/null | sed 's/^/    /'; failed=1; }
  if [ -z "$done_command" ]; then fail "no '# done: pytest ...' line in its header"; continue; fi
  read -ra done_args <<<"$done_command"

  # 1. The solution applies to a clean copy, and the whole suite passes with it.
  copy="$work/$name"
  clean_copy "$copy"
  if ! (cd "$copy" && git apply --check "$patch_path" && git apply "$patch_path") >"$log" 2>&1; then
    fail "the patch does not apply to HEAD"; continue
  fi
  if ! (cd "$copy" && pytest) >"$log" 2>&1; then fail "pytest failed with the patch applied"; continue; fi
  passed=$(grep -oE '[0-9]+ passed' "$log" | tail -n 1 | cut -d' ' -f1)

  # 2. Without its code (only its tests, or its tests and the mutant), the done test fails.
  without="$work/$name-without"
  clean_copy "$without"
  if ! (cd "$without" && git apply "${TEST_FILES[@]}" "$patch_path") >"$log" 2>&1; then
    fail "the patch's test files do not apply alone"; continue
  fi
  if [ -n "$mutant" ] && ! (cd "$without" && git apply "$solutions/$mutant") >>"$log" 2>&1; then
    fail "the mutant $mutant does not apply"; continue
  fi
  status=0
  (cd "$without" && "${done_args[@]}") >"$log" 2>&1 || status=$?
  if [ "$status" != 1 ]; then
    fail "without its code, '$done_command' exited $status (1 expected: tests ran and failed)"; continue
  fi
  without_what="without it"
  [ -n "$mutant" ] && without_what="without the code it tests ($mutant)"
  echo "$name: patch applies, suite passed ($passed passed), done test fails $without_what"
  rm -rf "$copy" "$without"
done

exit "$failed"
