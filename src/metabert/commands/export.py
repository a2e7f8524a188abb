"""``metabert export --checkpoint DIR --output DIR [--quantize int8]``: exit-aware ONNX graphs
(embeddings, each layer with its exit head, and the full model as a baseline), checked against
PyTorch; with ``--quantize int8`` every graph is quantized for ONNX Runtime (``metabert.deploy.quantize``)
and the folder is the ``ort-int8`` runner's."""

from __future__ import annotations

import argparse

from metabert.commands.common import add_policy_options, add_progress_option
from metabert.data import DEFAULT_MAX_LENGTH
from metabert.eval.calibrate import calibrate_checkpoint
from metabert.model.multi_exit import MultiExitBert
from metabert.deploy.onnx_export import LAYERS, check_export
from metabert.deploy.ort_runner import OrtMultiExit
from metabert.deploy.quantize import METHODS, QuantizeConfig
from metabert.deploy.runners import export_for


def add_parser(sub, name):
    p = sub.add_parser(name, help="export for ONNX Runtime (fp32 or INT8)", description=__doc__)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--output", required=True, help="folder for the graphs")
    p.add_argument("--quantize", choices=["int8"], help="quantize every graph (default: fp32)")
    p.add_argument("--quantize-method", choices=METHODS, default="dynamic",
                   help="dynamic (default; activations quantized per call) or static (QDQ, activation ranges "
                        "from the checkpoint's calibration slice)")
    p.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                   help="one weight scale per output channel (default; --no-per-channel: one per tensor, about 7%% "
                        "faster and less accurate, docs/INT8_OPTIONS.md)")
    p.add_argument("--static-examples", type=int, default=256, help="calibration examples for --quantize-method static")
    p.add_argument("--no-calibrate", action="store_true",
                   help="--quantize int8: do not calibrate the INT8 runner's γ on the held-out slice")
    p.add_argument("--single-file", action="store_true",
                   help="also write early_exit.onnx: one graph with the per-sample early exit inside, batched, for "
                        "any ONNX Runtime binding (metabert.deploy.single_file); its default γ is the runner's "
                        "calibrated one unless --policy/--threshold/--patience say otherwise")
    p.add_argument("--batch-one-path", action=argparse.BooleanOptionalAction, default=True,
                   help="with --single-file: a second copy of the layers that batches of one row take, without the "
                        "row bookkeeping (default; --no-batch-one-path: a smaller file, 3 to 9%% slower at batch 1, "
                        "docs/SINGLE_FILE.md)")
    p.add_argument("--layers", choices=LAYERS, default="fused",
                   help="fused (default): BERT-layout layers with ONNX Runtime's fused attention (contrib operators, "
                        "docs/FUSED_LAYERS.md; other layouts fall back to torch); torch: torch.onnx.export of the "
                        "layers, standard ONNX operators only")
    p.add_argument("--triton", metavar="DIR",
                   help="also write a Triton model repository for the single file into DIR (implies --single-file)")
    add_policy_options(p)
    add_progress_option(p)
    p.set_defaults(run=run)


def _static_batches(model: MultiExitBert, count: int) -> list[dict]:
    from metabert.data.batching import collate, encode, model_inputs
    from metabert.eval.calibrate import calibration_set

    held, _ = calibration_set(model)
    encoded = encode(held, model.tokenizer, DEFAULT_MAX_LENGTH)
    return [model_inputs(collate(encoded, [i], model.tokenizer.pad_token_id)) for i in range(min(count, len(encoded)))]


def run(args) -> int:
    rule = (args.policy, args.threshold, args.patience)
    if not (args.single_file or args.triton) and any(v is not None for v in rule):
        raise ValueError("--policy, --threshold and --patience set the single file's rule: add --single-file")
    model = MultiExitBert.from_pretrained(args.checkpoint)
    runner = "ort-int8" if args.quantize else "ort"
    config = QuantizeConfig(method=args.quantize_method, per_channel=args.per_channel)
    batches = _static_batches(model, args.static_examples) if args.quantize and config.method == "static" else None
    out = export_for(model, args.checkpoint, runner, args.output, config, batches, progress=args.progress,
                     layers=args.layers)
    diff = check_export(model, OrtMultiExit(out))
    print(f"exported {model.num_layers} layers with their exits to {out} (the {runner} runner); "
          f"max |PyTorch - ONNX Runtime| over every exit's logits and the full graph's: {diff:.2e}")
    if args.quantize:
        print(f"INT8 ({config.method}{', per channel' if config.per_channel else ''}) logits differ by design "
              "from the fp32 ones, so the INT8 runner gets its own γ")
        record = None if args.no_calibrate else calibrate_checkpoint(args.checkpoint, runner=runner, onnx=out,
                                                                         model=model)
        if record is None:
            print(f"not calibrated: `metabert calibrate --checkpoint {args.checkpoint} --onnx {out} --max-drop 1`")
        else:
            print(f"calibrated for {runner} on {record['chosen_on']}: {record['name']} γ={record['threshold']:g} "
                  f"for {record['goal']}, layer speed-up {record['calibration_layer_speedup']:.2f}x; serve it with "
                  f"`metabert serve --checkpoint {args.checkpoint} --onnx {out}`")
    if args.single_file or args.triton:
        from metabert.deploy.single_file import write, write_triton

        path = write(out, name=args.policy, threshold=args.threshold, patience=args.patience,
                     checkpoint=args.checkpoint, batch_one=args.batch_one_path)
        print(f"wrote {path}: the per-sample early exit in one ONNX graph, batched, for any ONNX Runtime binding "
              "(outputs logits, exit_layer, probabilities; what it holds: its metadata_props)")
        if args.triton:
            print(f"wrote the Triton model repository {write_triton(path, args.triton)}")
    return 0
