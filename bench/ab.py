#!/usr/bin/env python3
"""bench/ab.py: interleaved A/B of 1 GiB TLS `ferry put` / `ferry get` between ferry binaries.

    bench/ab.py RUNS LABEL=PATH [LABEL=PATH ...]      (env OPS=put,get; MIB=1024)

Each binary gets its own server (TLS, its own data root) on tmpfs (/dev/shm); the runs
alternate between the binaries (order reversed every other round) in the same time window,
so a noisy, shared machine slows them alike. Before each run it waits (up to 60 s) for the
machine to be under 30 % busy. Prints per run, then medians per binary: wall time of the
client, the client's user+sys (wait4) and the server's (/proc/PID/stat before and after).
Standard library only; leaves nothing behind."""
import os, sys, subprocess, time, resource, statistics, shutil, tempfile
runs = int(sys.argv[1]); bins = [a.split('=',1) for a in sys.argv[2:]]
ops = os.environ.get('OPS', 'put,get').split(',')
W = tempfile.mkdtemp(dir='/dev/shm', prefix='tlsab-')
src = os.path.join(W, 'big.bin')
if not os.path.exists(src):
    subprocess.run(f"head -c {int(os.environ.get('MIB', '1024')) << 20} /dev/urandom > {src}", shell=True, check=True)
CLK = os.sysconf('SC_CLK_TCK')
def proc_cpu(pid):
    f = open(f'/proc/{pid}/stat').read().rsplit(')',1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK
servers = {}
def busy():
    def snap():
        f = open('/proc/stat').readline().split()[1:]
        v = list(map(int, f)); return sum(v), v[3] + v[4]
    a = snap(); time.sleep(0.5); b = snap()
    return 1 - (b[1]-a[1]) / max(1, b[0]-a[0])
def wait_quiet(limit=0.3, max_wait=60):
    t = time.monotonic()
    while busy() > limit and time.monotonic() - t < max_wait:
        pass
try:
    for label, path in bins:
        root = os.path.join(W, 'root-'+label); cfg = os.path.join(W, 'cfg-'+label)
        os.makedirs(cfg)
        subprocess.run([path, 'user', 'add', 'u', '--root', root, '--password-stdin', '--quota', 'unlimited'], input=b'pw\n', check=True, stdout=subprocess.DEVNULL)
        log = open(os.path.join(W, 'serve-'+label+'.log'), 'w')
        p = subprocess.Popen([path, 'serve', '--root', root, '--listen', '127.0.0.1:0'], stdout=subprocess.PIPE, stderr=log, text=True)
        line = p.stdout.readline().strip()
        addr = line.split()[-1]
        env = dict(os.environ, FERRY_SERVER=addr, FERRY_USER='u', FERRY_PASSWORD='pw', FERRY_CONFIG_DIR=cfg)
        servers[label] = (p, env, path)
        # seed: server copy for get
        subprocess.run([path, 'put', '-q', src, 'seed.bin'], env=env, check=True)
        subprocess.run([path, 'get', '-q', '-f', 'seed.bin', os.path.join(W, 'warm-'+label)], env=env, check=True)
        os.remove(os.path.join(W, 'warm-'+label))
    res = {(l, o): [] for l, _ in bins for o in ops}
    for i in range(runs):
        for o in ops:
            order = bins if i % 2 == 0 else bins[::-1]
            for label, path in order:
                p, env, _ = servers[label]
                dst = os.path.join(W, 'dl.bin')
                if o == 'put':
                    subprocess.run([path, 'rm', 'up.bin'], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    cmd = [path, 'put', '-q', src, 'up.bin']
                else:
                    if os.path.exists(dst): os.remove(dst)
                    cmd = [path, 'get', '-q', 'seed.bin', dst]
                wait_quiet()
                s0 = proc_cpu(p.pid); r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.monotonic()
                subprocess.run(cmd, env=env, check=True)
                t1 = time.monotonic()
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                time.sleep(0.05)
                s1 = proc_cpu(p.pid)
                c = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
                res[(label, o)].append((t1-t0, c, s1-s0))
                print(f"{i} {o} {label}: wall {t1-t0:.3f} client {c:.2f} server {s1-s0:.2f}", flush=True)
    print()
    for o in ops:
        for label, _ in bins:
            r = res[(label, o)]
            w = sorted(x[0] for x in r); c = [x[1] for x in r]; s = [x[2] for x in r]
            print(f"{o} {label}: wall median {statistics.median(w):.3f} (min {w[0]:.3f} max {w[-1]:.3f})  client cpu {statistics.median(c):.2f}  server cpu {statistics.median(s):.2f}  total {statistics.median([a+b for a,b in zip(c,s)]):.2f}")
finally:
    for label,(p,_,_) in servers.items():
        p.terminate(); p.wait()
    shutil.rmtree(W)
