// Runs metabert's single early-exit file (early_exit.onnx) with the npm package onnxruntime-node:
// the twin of tests/single_file_client.py (same job file, same answer on stdout), used by
// tests/test_single_file.py to check that the file answers outside Python as metabert does.
//
//   node early_exit.js JOB.json
//
// JOB: {"model": path, "labels": [names], "runs": [{"threshold": γ or null, "patience": t or null,
// "batches": [{"index": [...], "input_ids": [[...]], "attention_mask": [[...]], "token_type_ids": [[...]]}]}]}
// A null threshold (patience) leaves the file's stored default; another value is refused, since
// onnxruntime-node cannot feed an overridable initializer (see below).
'use strict';

const fs = require('fs');
const ort = require('onnxruntime-node');

function int64(rows) {
  const width = rows[0].length;
  const data = new BigInt64Array(rows.length * width);
  rows.forEach((row, r) => row.forEach((v, c) => { data[r * width + c] = BigInt(v); }));
  return new ort.Tensor('int64', data, [rows.length, width]);
}

async function main(path) {
  const job = JSON.parse(fs.readFileSync(path, 'utf8'));
  // severity 3: not the notice that "threshold" is an overridable initializer, which is meant
  const session = await ort.InferenceSession.create(job.model, { logSeverityLevel: 3 });
  const runs = [];
  for (const run of job.runs) {
    const size = run.batches.reduce((n, b) => n + b.index.length, 0);
    const logits = new Array(size);
    const layers = new Array(size);
    for (const batch of run.batches) {
      const feeds = {};
      for (const name of session.inputNames) {
        if (batch[name] !== undefined) feeds[name] = int64(batch[name]);
      }
      for (const name of ['threshold', 'patience']) {
        if (run[name] === null || run[name] === undefined) continue;
        // onnxruntime-node passes on only the feeds named in session.inputNames, which leave out
        // overridable initializers: a threshold fed here would be dropped without a word
        if (!session.inputNames.includes(name)) {
          throw new Error(`${name} is an overridable initializer of this file, which onnxruntime-node `
                          + 'cannot feed: write the file with the value wanted as its default');
        }
        feeds[name] = name === 'threshold'
          ? new ort.Tensor('float32', Float32Array.from([run[name]]), [])
          : new ort.Tensor('int64', BigInt64Array.from([BigInt(run[name])]), []);
      }
      const out = await session.run(feeds);
      const classes = out.logits.dims[1];
      batch.index.forEach((index, row) => {
        logits[index] = Array.from(out.logits.data.slice(row * classes, (row + 1) * classes));
        layers[index] = Number(out.exit_layer.data[row]);
      });
    }
    const labels = logits.map((v) => job.labels[v.indexOf(Math.max(...v))]);
    runs.push({ labels, exit_layer: layers, logits });
  }
  return { runtime: `onnxruntime-node ${ort.env.versions.node}`, runs };
}

main(process.argv[2]).then(
  (answer) => process.stdout.write(JSON.stringify(answer)),
  (err) => { process.stderr.write(`${err.stack || err}\n`); process.exit(1); },
);
