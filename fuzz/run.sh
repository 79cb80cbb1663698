#!/usr/bin/env bash
# Runs the fuzz targets, each for a bounded time.
#
#   fuzz/run.sh [TARGET...] [--seconds N] [--sanitizer address|none] [-- LIBFUZZER_ARG...]
#
# With no TARGET, runs every target in fuzz/fuzz_targets/ (each needs a [[bin]] entry in
# fuzz/Cargo.toml, as `cargo fuzz add` writes). Each target runs for N seconds (default 60). The
# corpus grows in fuzz/corpus/TARGET; seeds checked in under fuzz/seeds/TARGET, if any, are read
# too; crashes land in fuzz/artifacts/TARGET. Exits non-zero if any target failed, after running
# all of them.
#
# Stable toolchain: cargo-fuzz's coverage instrumentation is made of stable -C flags; only the
# sanitizer needs `-Zsanitizer=...`, which stable rustc accepts under RUSTC_BOOTSTRAP=1. That is
# set for the fuzz build only, and only when a sanitizer is on. `--sanitizer none` needs nothing
# unstable and fuzzes faster; AddressSanitizer (the default) matters for the C and assembly that
# ring links in, since our own code forbids `unsafe`.
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit "${1:-2}"
}

seconds=60
sanitizer=address
targets=()
libfuzzer_args=()
while (($#)); do
    case "$1" in
    --seconds)
        [[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || usage
        seconds=$2
        shift 2
        ;;
    --seconds=*)
        seconds=${1#--seconds=}
        [[ $seconds =~ ^[0-9]+$ && $seconds -gt 0 ]] || usage
        shift
        ;;
    --sanitizer)
        [[ $# -ge 2 ]] || usage
        sanitizer=$2
        shift 2
        ;;
    --sanitizer=*)
        sanitizer=${1#--sanitizer=}
        shift
        ;;
    -h | --help) usage 0 ;;
    --)
        shift
        libfuzzer_args=("$@")
        break
        ;;
    -*) usage ;;
    *)
        targets+=("$1")
        shift
        ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")"

if ((${#targets[@]} == 0)); then
    for file in fuzz_targets/*.rs; do
        [[ -e $file ]] || continue
        name=${file##*/}
        targets+=("${name%.rs}")
    done
fi
if ((${#targets[@]} == 0)); then
    echo "run.sh: no fuzz targets in $(pwd)/fuzz_targets" >&2
    exit 1
fi
for target in "${targets[@]}"; do
    if [[ ! -f fuzz_targets/$target.rs ]]; then
        echo "run.sh: no such target: fuzz_targets/$target.rs" >&2
        exit 2
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

bootstrap=()
if [[ $sanitizer != none ]]; then
    bootstrap=(env RUSTC_BOOTSTRAP=1)
fi

failed=()
for target in "${targets[@]}"; do
    corpus=(corpus/"$target")
    mkdir -p "${corpus[0]}"
    if [[ -d seeds/$target ]]; then
        corpus+=(seeds/"$target")
    fi
    echo "=== $target: ${seconds}s, sanitizer $sanitizer" >&2
    # -a: debug assertions, so integer overflow panics instead of wrapping silently.
    # -timeout: one input running for 10 s is a hang worth reporting.
    if ! "${bootstrap[@]}" cargo fuzz run "$target" --sanitizer "$sanitizer" -a \
        "${corpus[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 "${libfuzzer_args[@]}"; then
        failed+=("$target")
    fi
done

if ((${#failed[@]})); then
    echo "run.sh: failed: ${failed[*]} (inputs in $(pwd)/artifacts/)" >&2
    exit 1
fi
echo "run.sh: ${#targets[@]} target(s) ran ${seconds}s each without a failure" >&2
