# Installs Debian's wrk and nginx-light when missing; arguments go to the script,
# e.g. `just bench --duration 5 --json`, or `just bench --nginx-only --ceiling`.
# kvlab and nginx side by side under wrk, against the speed goals
bench *ARGS:
    command -v wrk >/dev/null && (command -v nginx || test -x /usr/sbin/nginx) >/dev/null \
        || (apt-get update && apt-get install -y wrk nginx-light)
    python scripts/bench_vs_nginx.py {{ARGS}}
