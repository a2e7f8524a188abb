"""What the exit head costs in a layer graph: the pre-optimized layer graph with and without its
exit (extracted up to hidden_out), both run without optimizing again; fp32 and INT8 folders.
Usage: GLUE_DIR=... python scripts/probes/headcost.py COUNT ROUNDS ONNX_FOLDER [ONNX_FOLDER ...] (folders from `metabert export`, with
`--quantize int8 --no-calibrate` for INT8; SST-2 dev sentences at batch 1)."""
import sys as _sys, os.path as _p
_sys.path.insert(0, _p.dirname(_p.abspath(__file__)))
from _timing import interleaved, report, sst2_dev  # noqa: E402
import sys, tempfile
import onnx, onnxruntime as ort
from metabert.deploy.ort_runner import OrtMultiExit

count, rounds, folders = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
rows = sst2_dev(count)
variants = {}
for folder in folders:
    r = OrtMultiExit(folder)
    feeds = []
    for text, _ in rows:
        enc = r.tokenizer([text], return_tensors="np")
        feeds.append(r.layer_feeds(1, r.start(dict(enc))))
    tmp = tempfile.mkdtemp()
    opt, bare = f"{tmp}/l2.onnx", f"{tmp}/l2bare.onnx"
    ort.InferenceSession(f"{folder}/layer_2.onnx", r._make_options(optimized_path=opt), providers=["CPUExecutionProvider"])
    m = onnx.load(opt)
    bm = onnx.utils.Extractor(m).extract_model([i.name for i in m.graph.input], ["hidden_out"])
    onnx.save(bm, bare)
    o = lambda: r._make_options(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    tag = r.name
    variants[f"{tag} layer with exit"] = (ort.InferenceSession(opt, o(), providers=["CPUExecutionProvider"]), feeds)
    variants[f"{tag} layer alone"] = (ort.InferenceSession(bm.SerializeToString(), o(), providers=["CPUExecutionProvider"]),
                                      [{k: v for k, v in f.items() if k in {i.name for i in bm.graph.input}} for f in feeds])
report(interleaved({k: (lambda f, s=s: s.run(None, f), feeds) for k, (s, feeds) in variants.items()}, rounds, warm=10))
