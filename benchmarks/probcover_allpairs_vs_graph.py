"""ProbCover at 100k rows (E = 32, B = 100, two in-process shards): the neighbour-layer
construction against the all-pairs one it replaces, in one process (same picks checked).

    .venv/bin/python benchmarks/probcover_allpairs_vs_graph.py
"""
import json
import os
import sys
import time

import numpy as np

from alscale.pool import read_shard
from alscale.strategies import FanoutShards, InProcessFanout, ShardState, run_strategy
from alscale.strategies.probcover import select_probcover_allpairs
from alscale.strategies.registry import check_options
from alscale.types import ShardSpec

n=100000
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite  # noqa: E402

p = str(suite.ensure_pool(suite.SCENARIOS["probcover"], n))
emb=np.asarray(read_shard(ShardSpec(p,0,0,n),["embedding"]).embeddings_N_D,np.float32)
def mk(s):
    b=np.linspace(0,n,s+1).astype(int)
    return FanoutShards(InProcessFanout([ShardState(np.arange(b[i],b[i+1]),None,emb[b[i]:b[i+1]]) for i in range(s)]))
opts=check_options("probcover",{})
out={}
t = time.perf_counter()
new = run_strategy(mk(2), "probcover", 100, options={}, seed=0, round=0)
out["new_s"] = time.perf_counter() - t
out["load_new"] = os.getloadavg()
t = time.perf_counter()
old = select_probcover_allpairs(mk(2), 100, options=opts, seed=0, round=0)
out["old_s"] = time.perf_counter() - t
out["load_old"] = os.getloadavg()
out["same"] = bool((new.indices == old.indices).all() and (new.scores == old.scores).all())
t = time.perf_counter()
new = run_strategy(mk(2), "probcover", 100, options={}, seed=0, round=0)
out["new_s_again"] = time.perf_counter() - t
print(json.dumps(out))
