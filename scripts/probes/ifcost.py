"""Is an INT8 layer slower inside an If subgraph? Times one layer graph: as its own session, with
prepacking off, pre-optimized run without optimizing, and inside If(true).
Usage: GLUE_DIR=... python scripts/probes/ifcost.py ONNX_FOLDER COUNT ROUNDS (folders from `metabert export`, with
`--quantize int8 --no-calibrate` for INT8; SST-2 dev sentences at batch 1)."""
import sys as _sys, os.path as _p
_sys.path.insert(0, _p.dirname(_p.abspath(__file__)))
from _timing import interleaved, report, sst2_dev  # noqa: E402
import sys, tempfile
import onnx, onnxruntime as ort
from onnx import helper, TensorProto
from metabert.deploy.ort_runner import OrtMultiExit
from metabert.deploy.onnx_fused import _renamed

folder, count, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = OrtMultiExit(folder)
rows = sst2_dev(count)
feeds = []
for text, _ in rows:
    enc = r.tokenizer([text], return_tensors="np")
    state = r.start({k: v for k, v in enc.items()})
    feeds.append(r.layer_feeds(1, state))
tmp = tempfile.mkdtemp()
opt = f"{tmp}/l2.onnx"
ort.InferenceSession(f"{folder}/layer_2.onnx", r._make_options(optimized_path=opt), providers=["CPUExecutionProvider"])
g = onnx.load(opt)
def sess(model_or_path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, prepack=True):
    o = r._make_options(level)
    if not prepack:
        o.add_session_config_entry("session.disable_prepacking", "1")
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, o, providers=["CPUExecutionProvider"])
outer = {i.name: i.name for i in g.graph.input}
def branch(prefix):
    nodes, inits, out = _renamed(g.graph, prefix, outer)
    outs = [helper.make_node("Identity", [out["hidden_out"]], [prefix + "h"]), helper.make_node("Identity", [out["logits"]], [prefix + "l"])]
    return helper.make_graph(nodes + outs, prefix, [], [helper.make_tensor_value_info(prefix + "h", TensorProto.FLOAT, None),
                             helper.make_tensor_value_info(prefix + "l", TensorProto.FLOAT, None)], inits)
cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.BOOL, [], [True]))
iff = helper.make_node("If", ["c"], ["hidden_out", "logits"], then_branch=branch("a/"), else_branch=branch("b/"))
wrapped = helper.make_model(helper.make_graph([cond, iff], "w", list(g.graph.input), list(g.graph.output)),
                            opset_imports=list(g.opset_import))
wrapped.ir_version = g.ir_version
variants = {
    "session (ENABLE_ALL)": sess(f"{folder}/layer_2.onnx"),
    "session, no prepacking": sess(f"{folder}/layer_2.onnx", prepack=False),
    "pre-optimized, DISABLE_ALL": sess(opt, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
    "pre-optimized inside If(true), DISABLE_ALL": sess(wrapped, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
}
report(interleaved({k: (lambda f, s=s: s.run(None, f), feeds) for k, s in variants.items()}, rounds, warm=10))
