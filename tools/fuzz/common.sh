# Shared by tools/fuzz/run.sh and tools/fuzz/ci.sh (sourced, not run).
#
# The targets live in fuzz/ at the repository root, a cargo workspace of its own. cargo-fuzz
# needs nightly compiler flags (sanitizers, coverage instrumentation); RUSTC_BOOTSTRAP=1 lets
# the stable toolchain accept them, so no nightly has to be installed.

export RUSTC_BOOTSTRAP=1

# Installs cargo-fuzz when it is missing.
ensure_cargo_fuzz() {
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is not installed; installing it (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
  fi
  cargo fuzz --version
}

# libFuzzer options every run uses: an input that takes longer than 20 s is a hang and fails
# the run like a crash; memory is capped below what the machine has.
LIBFUZZER_OPTIONS=(-timeout=20 -rss_limit_mb=2048 -print_final_stats=1)

# Seeds kept in the repository (fuzz/seeds/TARGET, valid inputs and small interesting ones)
# are read along with the local corpus (fuzz/corpus/TARGET, not kept), so a run starts from
# real encodings instead of from nothing.
corpus_dirs() {
  local target=$1
  mkdir -p "fuzz/corpus/$target"
  printf '%s\n' "fuzz/corpus/$target"
  if [ -d "fuzz/seeds/$target" ]; then
    printf '%s\n' "fuzz/seeds/$target"
  fi
}

# Prints how to replay each input libFuzzer left for a target (crash, timeout, out of memory)
# since the file $2 was touched.
print_reproduction() {
  local target=$1 since=$2
  local artifact
  [ -d "fuzz/artifacts/$target" ] || return 0
  find "fuzz/artifacts/$target" -type f -newer "$since" | sort | while read -r artifact; do
    echo "  input: $artifact"
    echo "    replay:  RUSTC_BOOTSTRAP=1 cargo fuzz run $target $artifact"
    echo "    show:    RUSTC_BOOTSTRAP=1 cargo fuzz fmt $target $artifact"
    echo "    shrink:  RUSTC_BOOTSTRAP=1 cargo fuzz tmin $target $artifact"
  done
  echo "  then add the input as a regression test (an ordinary cargo test replaying its bytes) with the fix."
}
