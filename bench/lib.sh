# Shared by the bench scripts: `. "$(dirname "$0")/lib.sh"`.

# wait_port PORT [PID]: 0 once something accepts on 127.0.0.1:PORT (within 10 s);
# 1 on timeout or, with PID, as soon as that process has exited.
wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then return 1; fi
        sleep 0.05
    done
    return 1
}

# need_npm_dev_peers ROOT MODULE...: installs tests/interop's npm packages with their
# devDependencies (the benchmarks' Node peers; the test setup leaves them out) unless every
# MODULE is already there.
need_npm_dev_peers() {
    local root=$1 m missing=0
    shift
    for m in "$@"; do
        [ -e "$root/tests/interop/node_modules/$m/package.json" ] || missing=1
    done
    [ "$missing" = 0 ] && return 0
    echo "installing tests/interop's npm packages with the benchmarks' devDependencies (npm ci)"
    (cd "$root/tests/interop" && npm ci --include=dev --no-audit --no-fund --loglevel=error >/dev/null &&
        cp package-lock.json node_modules/.interop-lock.json)
}

# cpu_ticks PID...: the processes' utime+stime so far, summed, in clock ticks (getconf
# CLK_TCK a second); fails if one has exited.
cpu_ticks() {
    local p sum=0 t
    for p in "$@"; do
        t=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$p/stat") || return 1
        sum=$((sum + t))
    done
    echo "$sum"
}
