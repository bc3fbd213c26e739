// Runs an exported model directory through transformers.js (Node, onnxruntime-node, CPU, fp32
// graphs) and compares its greedy tokens with the goldens written by tools/reference.py.
// Started by tools/check-transformers-js.sh, which installs transformers.js:
//   node tools/check-transformers-js.mjs NODE_PACKAGE_DIR MODEL_DIR
// Every case runs from the goldens' prompt token ids with their max_new_tokens. Image cases
// are fed the goldens' pixel_values and position ids (goldens/pixels/NAME.f32), not
// transformers.js's own image processor, whose Gemma 4 resize differs from transformers (the
// oracle); so they check the vision encoder and the merge of its rows, not preprocessing.
// Prints one line per case; exits 1 on a mismatch, a load or run failure, or when no text
// case was compared.

import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [packageDir, modelArg] = process.argv.slice(2);
if (!packageDir || !modelArg) {
  console.error('usage: node check-transformers-js.mjs NODE_PACKAGE_DIR MODEL_DIR');
  process.exit(2);
}
const modelDir = resolve(modelArg);

// The package's Node ES module entry, from its own package.json (exports -> node -> import).
const pkgDir = join(resolve(packageDir), 'node_modules', '@huggingface', 'transformers');
const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8'));
const entry = join(pkgDir, pkg.exports?.node?.import?.default ?? pkg.main);
const { env, Gemma4ForConditionalGeneration, Tensor } = await import(pathToFileURL(entry).href);
const version = pkg.version;

// Local files only: an absolute path is read as a directory, never as a Hub model id.
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useBrowserCache = false;
env.useFSCache = false;

const goldens = JSON.parse(readFileSync(join(modelDir, 'goldens', 'cases.json'), 'utf8'));
const cases = goldens.cases;
const textCases = cases.filter((c) => (c.images ?? []).length === 0).length;

function imageInputs(c) {
  const buf = readFileSync(join(modelDir, 'goldens', 'pixels', `${c.name}.f32`));
  const data = new Float32Array(buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.length));
  const dims = c.pixel_values_shape;
  const pos = BigInt64Array.from(c.pixel_position_ids.flat(2).map(BigInt));
  return {
    pixel_values: new Tensor('float32', data, dims),
    image_position_ids: new Tensor('int64', pos, [dims[0], dims[1], 2]),
  };
}

let model;
try {
  // The full multimodal class: it loads embed_tokens, decoder_model_merged, vision_encoder
  // and audio_encoder, as a user of the model directory would.
  model = await Gemma4ForConditionalGeneration.from_pretrained(modelDir, { dtype: 'fp32', device: 'cpu' });
} catch (e) {
  console.error(`FAIL: transformers.js ${version} could not load ${modelArg}: ${e?.stack ?? e}`);
  process.exit(1);
}
const decoderInputs = model.sessions.decoder_model_merged.inputNames;
console.log(
  `transformers.js ${version}: loaded ${Object.keys(model.sessions).join(', ')}; ` +
    `decoder lists num_logits_to_keep: ${decoderInputs.includes('num_logits_to_keep') ? 'yes' : 'no'}`,
);

let compared = 0;
let textCompared = 0;
let matched = 0;
let failed = 0;
for (const c of cases) {
  const isText = (c.images ?? []).length === 0;
  const ids = c.input_ids.map(BigInt);
  const want = c.greedy_ids;
  let got;
  try {
    const input_ids = new Tensor('int64', BigInt64Array.from(ids), [1, ids.length]);
    const attention_mask = new Tensor('int64', new BigInt64Array(ids.length).fill(1n), [1, ids.length]);
    const images = isText ? {} : imageInputs(c);
    const out = await model.generate({
      input_ids,
      attention_mask,
      ...images,
      max_new_tokens: c.max_new_tokens,
      do_sample: false,
    });
    got = out.tolist()[0].slice(ids.length).map(Number);
  } catch (e) {
    failed++;
    console.log(`FAIL ${c.name}: generate threw: ${e?.message ?? e}`);
    continue;
  }
  compared++;
  if (isText) textCompared++;
  let same = 0;
  while (same < Math.min(got.length, want.length) && got[same] === want[same]) same++;
  const ok = same === want.length && got.length === want.length;
  if (ok) matched++;
  else failed++;
  console.log(
    `${ok ? 'ok  ' : 'FAIL'} ${c.name}: ${ids.length} prompt tokens, ${same}/${want.length} golden tokens match` +
      (ok ? '' : ` (first difference at ${same}: got [${got.join(',')}], want [${want.join(',')}])`),
  );
}
await model.dispose();

if (textCompared === 0) {
  console.log(`FAIL: no text case compared (${textCases} text cases in the goldens)`);
  process.exit(1);
}
console.log(`${matched}/${cases.length} cases match the goldens (${textCases} text, ${cases.length - textCases} image)`);
process.exit(failed > 0 ? 1 : 0);
