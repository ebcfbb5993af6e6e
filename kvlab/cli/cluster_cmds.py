# TEMP STUB (bench engineer) - delete
import os, subprocess, sys, time, urllib.request, signal
def register(sub):
    up = sub.add_parser("up"); up.add_argument("--name"); up.add_argument("--nodes"); up.add_argument("--replicas"); up.add_argument("--write-quorum"); up.add_argument("--read-quorum"); up.add_argument("--port", type=int); up.set_defaults(func=run_up)
    down = sub.add_parser("down"); down.add_argument("--name"); down.set_defaults(func=run_down)
def run_up(a):
    home = os.environ["KVLAB_HOME"]; os.makedirs(home, exist_ok=True)
    p = subprocess.Popen([sys.executable, "/tmp/fakeserver.py", str(a.port)], start_new_session=True, stdin=subprocess.DEVNULL)
    open(f"{home}/{a.name}.pid", "w").write(str(p.pid))
    for _ in range(100):
        try: urllib.request.urlopen(f"http://127.0.0.1:{a.port}/get?key=x"); break
        except urllib.error.HTTPError: break
        except OSError: time.sleep(0.05)
    return 0
def run_down(a):
    f = f"{os.environ['KVLAB_HOME']}/{a.name}.pid"
    if os.path.exists(f): os.kill(int(open(f).read()), signal.SIGTERM)
    return 0
