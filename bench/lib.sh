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
