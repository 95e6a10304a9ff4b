#!/usr/bin/env python3
"""Greedy set cover over libFuzzer features: pick at most N inputs (forced seeds first) from
a merge control file. Usage: pick.py CONTROL_FILE OUT_DIR N FORCED_PREFIX_DIR"""
import hashlib, os, shutil, sys

ctl, out, n, forced_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = open(ctl).read().splitlines()
nfiles = int(lines[0]); files = lines[2:2 + nfiles]
feats, covs = {}, {}
for l in lines[2 + nfiles:]:
    p = l.split()
    if p and p[0] == 'FT':
        feats[int(p[1])] = set(map(int, p[2:]))
    if p and p[0] == 'COV':
        covs[int(p[1])] = set(map(int, p[2:]))
chosen, have, havec = [], set(), set()
forced = [i for i, f in enumerate(files) if os.path.dirname(f) == forced_dir.rstrip('/')]
for i in forced:
    chosen.append(i); have |= feats.get(i, set()); havec |= covs.get(i, set())
total = set().union(*feats.values()) if feats else set()
while len(chosen) < n:
    best, gain = None, (0, 0)
    for i, f in feats.items():
        if i in chosen: continue
        g = (len(covs.get(i, set()) - havec), len(f - have))
        if g > gain or (g == gain and g > (0, 0) and os.path.getsize(files[i]) < os.path.getsize(files[best])):
            best, gain = i, g
    if best is None: break
    chosen.append(best); have |= feats[best]; havec |= covs.get(best, set())
os.makedirs(out, exist_ok=True)
for i in chosen:
    src = files[i]
    base = os.path.basename(src)
    import re
    name = base if (i in forced or not re.fullmatch(r'[0-9a-f]{40}', base)) else hashlib.sha1(open(src, 'rb').read()).hexdigest()
    shutil.copy(src, os.path.join(out, name))
totalc = set().union(*covs.values()) if covs else set()
print(f"picked {len(chosen)} ({len(forced)} forced) covering {len(havec)} of {len(totalc)} edges, {len(have)} of {len(total)} features")
