# Provenance of results/training_guides_small.json (run from the repository root:
#   PYTHONPATH=$PWD OMP_NUM_THREADS=1 python results/training_guides_small.py; 13 min on the shared 2 cores).
# The full-size acausal run (reproduce training --guide acausal) was killed for memory (24 GB): the
# anticausal GLM path builds queries x future-events tensors; this reduced run fits in 3.4 GB.
# reduced training comparison for the guide extensions: T = 20, 6 training / 6 test sequences, 10 batched epochs
import json, time
from pyro_dpp.experiments import Setting, compare_training, paired_guides
setting = Setting(duration=20.0)
out = {}
for guide in ("model", "separate", "acausal"):
    t = time.perf_counter()
    out[guide] = compare_training(seeds=(0, 1, 2, 3, 4), num_train=6, num_test=6, num_epochs=10, eval_particles=16,
                                  setting=setting, guide=guide, estimators=("pathwise", "score_function"),
                                  marginal_particles=64)
    out[guide]["wall_seconds"] = time.perf_counter() - t
    print(guide, round(out[guide]["wall_seconds"]), {k: round(v["gain"]["mean"]) for k, v in out[guide]["runs"].items()}, flush=True)
out["acausal - separate"] = {key: paired_guides(out["acausal"], out["separate"], key) for key in ("after", "log_marginal_after")}
out["setting"] = {"duration": 20.0, "num_train": 6, "num_test": 6, "num_epochs": 10, "seeds": [0, 1, 2, 3, 4]}
json.dump(out, open("results/training_guides_small.json", "w"), indent=1)
print(json.dumps(out["acausal - separate"], indent=1))
for g in ("model", "separate", "acausal"):
    print(g, json.dumps(out[g]["paired"]), json.dumps(out[g]["paired_log_marginal"]))
