"""The pipeline's stages, each a cached artifact (:mod:`east.cache`) keyed by exactly the
config it depends on. The driver side (:mod:`east.stages.driver`: keys, grading, building
records, dispatch) runs in the Hydra process; the stages that load model weights each have a
worker module with one entry point, run in the driver or, with ``isolate_stages``, in a child
process that owns its devices and gives them back when it exits:

- :mod:`east.stages.base_model` — the tiny model's warm-up, a GGUF checkpoint's conversion;
- :mod:`east.stages.generate` — sampling n responses, greedy evaluation (data-parallel shards);
- :mod:`east.stages.train` — the weighted trainers (one process, or under ``accelerate launch``).

:mod:`east.stages.launch` starts those workers; :mod:`east.stages.build` turns graded samples
into weighted training records. This package's own import is empty: a worker imports only
what it runs.
"""
