# Everyday recipes. `just` is on PyPI as rust-just: `pip install rust-just`.

# the test suite, exactly as CI runs it
test:
    bash .ci/run

# fast tests only: the sans-IO core, storage, simulator and checker
unit:
    python -m pytest tests/unit -q

# start a local cluster in the background (arguments go to `kvlab up`)
up *ARGS:
    kvlab up {{ARGS}}

# stop it
down *ARGS:
    kvlab down {{ARGS}}

# the dashboard on a fresh cluster (stopped again on quit)
demo *ARGS:
    kvlab ui {{ARGS}}

# Installs Debian's wrk and nginx-light when missing; arguments go to the script,
# e.g. `just bench --duration 5 --json`, or `just bench --nginx-only --ceiling`.
# kvlab and nginx side by side under wrk, against the speed goals
bench *ARGS:
    command -v wrk >/dev/null && (command -v nginx || test -x /usr/sbin/nginx) >/dev/null \
        || (apt-get update && apt-get install -y wrk nginx-light)
    python scripts/bench_vs_nginx.py {{ARGS}}

# Installs Debian's librsvg2-bin (rsvg-convert) when missing.
# screenshots/*.png from the real dashboard on a throwaway local cluster
screenshots *ARGS:
    command -v rsvg-convert >/dev/null || (apt-get update && apt-get install -y librsvg2-bin)
    python scripts/screenshots.py {{ARGS}}
