"""Runs metabert's single early-exit file (``early_exit.onnx``) with plain ``onnxruntime`` and numpy
only: no metabert import, as a service in any Python process would. The twin of
``tests/node/early_exit.js`` (same job, same answer), used by ``tests/test_single_file.py``.

    python single_file_client.py JOB.json   ->  JSON on stdout

JOB: {"model": path, "labels": [names], "runs": [{"threshold": γ or null, "patience": t or null,
"batches": [{"index": [...], "input_ids": [[...]], "attention_mask": [[...]], "token_type_ids": [[...]]}]}]}
(token_type_ids only where the file takes it; a null threshold or patience: the file's default).
Answer: {"runtime": "onnxruntime X", "runs": [{"labels": [...], "exit_layer": [...], "logits": [[...]]}]},
each in the order of the batches' "index" (dataset order).
"""

import json
import sys

import numpy as np
import onnxruntime as ort


def main(path: str) -> dict:
    with open(path) as f:
        job = json.load(f)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the notice that "threshold" is an overridable initializer: it is meant
    session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    runs = []
    for run in job["runs"]:
        size = sum(len(b["index"]) for b in run["batches"])
        logits, layers = [None] * size, [0] * size
        for batch in run["batches"]:
            feeds = {name: np.asarray(batch[name], dtype=np.int64) for name in inputs if name in batch}
            if run.get("threshold") is not None:
                feeds["threshold"] = np.asarray(run["threshold"], dtype=np.float32)
            if run.get("patience") is not None:
                feeds["patience"] = np.asarray(run["patience"], dtype=np.int64)
            out_logits, out_layer, _ = session.run(["logits", "exit_layer", "probabilities"], feeds)
            for row, index in enumerate(batch["index"]):
                logits[index] = out_logits[row].tolist()
                layers[index] = int(out_layer[row])
        runs.append({"labels": [job["labels"][int(np.argmax(v))] for v in logits], "exit_layer": layers,
                     "logits": logits})
    return {"runtime": f"onnxruntime {ort.__version__}", "runs": runs}


if __name__ == "__main__":
    json.dump(main(sys.argv[1]), sys.stdout)
