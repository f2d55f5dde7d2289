"""Scale-out on Ray: offline batches over many engines (Ray Data) and an online HTTP service
(Ray Serve replicas, or one local uvicorn replica). Needs `pip install 'graphrt[ray]'`.

One engine per GPU stays the unit of work: Ray moves rows and requests between engines, each
engine keeps its CUDA graphs. The core package never imports this one; `commands` (argparse
hooks, no Ray import) is what graphrt/cli.py registers.

  commands.py   CLI options of `locate --ray` and the `serve` command; clear error without Ray
  journal.py    output rows appended as they finish; resume skips lines already written
  replica.py    an engine that also takes images decoded elsewhere (CPU workers, HTTP handler)
  offline.py    the Ray Data pipeline: rows -> decode on CPU workers -> engine actors -> rows
  batcher.py    concurrent HTTP requests gathered into batches that fit the graph buckets
  service.py    the HTTP app (FastAPI): /v1/locate, /health, /status
  serve.py      that app as Ray Serve replicas, or one local replica under uvicorn
"""
