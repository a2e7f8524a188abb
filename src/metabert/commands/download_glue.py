"""``metabert download-glue DIR``: fetch GLUE with the `datasets` library (online users only) and write
it in the original TSV layout that ``--data-dir`` reads."""

from __future__ import annotations

from pathlib import Path

from metabert.data.tasks import GLUE_TASKS

# hub config name and the split names to write, per task folder
HUB = {
    "sst2": ("sst2", {"train": "train", "validation": "dev"}),
    "mrpc": ("mrpc", {"train": "train", "validation": "dev"}),
    "rte": ("rte", {"train": "train", "validation": "dev"}),
    "cola": ("cola", {"train": "train", "validation": "dev"}),
    "qnli": ("qnli", {"train": "train", "validation": "dev"}),
    "qqp": ("qqp", {"train": "train", "validation": "dev"}),
    "mnli": ("mnli", {"train": "train", "validation_matched": "dev_matched",
                      "validation_mismatched": "dev_mismatched"}),
}
# hub field names -> our file's columns, in the GLUE layout
FIELDS = {
    "sst2": (["sentence", "label"], ["sentence", "label"]),
    "mrpc": (["label", "idx", "idx", "sentence1", "sentence2"], ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]),
    "rte": (["idx", "sentence1", "sentence2", "label"], ["index", "sentence1", "sentence2", "label"]),
    "cola": (["source", "label", "star", "sentence"], None),
    "qnli": (["idx", "question", "sentence", "label"], ["index", "question", "sentence", "label"]),
    "qqp": (["idx", "idx", "idx", "question1", "question2", "label"],
            ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]),
    "mnli": (["idx"] + [""] * 7 + ["premise", "hypothesis"] + [""] * 5 + ["label"],
             ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "label2", "label3",
              "label4", "label5", "gold_label"]),
}


def add_parser(sub, name):
    p = sub.add_parser(name, help="download GLUE (needs internet and `pip install datasets`)", description=__doc__)
    p.add_argument("directory", help="where to write <TASK>/<split>.tsv")
    p.add_argument("--tasks", default=",".join(HUB), help="comma-separated tasks (default: all)")
    p.set_defaults(run=run)


def write_task(task: str, rows_by_split: dict[str, list[dict]], label_names: list[str], root: Path) -> list[Path]:
    """Write one task's splits as GLUE TSV files. ``rows_by_split`` maps our split name to dict rows
    with the hub's field names; integer labels are mapped through ``label_names``."""
    spec = GLUE_TASKS[task]
    fields, header = FIELDS[task]
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split, rows in rows_by_split.items():
        path = folder / f"{split}.tsv"
        with open(path, "w", encoding="utf-8", newline="\n") as handle:
            if header:
                handle.write("\t".join(header) + "\n")
            for row in rows:
                values = []
                for name in fields:
                    if name == "label":
                        values.append(label_names[row["label"]])
                    elif name == "star":
                        values.append("" if row["label"] == 1 else "*")
                    elif name == "source":
                        values.append("hf")
                    else:
                        values.append(str(row.get(name, "")).replace("\t", " ").replace("\n", " "))
                handle.write("\t".join(values) + "\n")
        written.append(path)
    return written


def run(args) -> int:
    try:
        from datasets import load_dataset
    except ImportError:
        raise ValueError("download-glue needs the `datasets` library: pip install 'metabert[download]'") from None
    root = Path(args.directory)
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        if task not in HUB:
            raise ValueError(f"unknown task {task!r}; choose from {', '.join(HUB)}")
        config, splits = HUB[task]
        loaded = load_dataset("nyu-mll/glue", config)
        rows = {ours: list(loaded[hub]) for hub, ours in splits.items()}
        names = loaded[next(iter(splits))].features["label"].names
        # GLUE files name RTE/QNLI/MNLI classes; SST-2, MRPC, CoLA and QQP use 0/1
        label_names = names if task in ("rte", "qnli", "mnli") else [str(i) for i in range(len(names))]
        for path in write_task(task, rows, label_names, root):
            print(f"wrote {path}")
    return 0
