// transformers.js (in Node, offline) on an ONNX folder that convert.py onnx wrote: the prompt's token ids and the
// greedy continuation, printed as JSON for tests/test_export_onnx.py to compare with our model's.
//
//   node transformers_js_generate.cjs NODE_MODULES MODEL_DIR PROMPT MAX_NEW_TOKENS
const path = require("path");

const [nodeModules, modelDir, prompt, maxNewTokens] = process.argv.slice(2);
const transformers = require(require.resolve("@huggingface/transformers", { paths: [nodeModules] }));
const { env, AutoTokenizer, AutoModelForCausalLM } = transformers;

env.allowRemoteModels = false; // a local folder only: a missing file is an error, never a download
env.localModelPath = path.dirname(path.resolve(modelDir)) + path.sep;

async function main() {
  const modelId = path.basename(path.resolve(modelDir));
  const tokenizer = await AutoTokenizer.from_pretrained(modelId);
  const model = await AutoModelForCausalLM.from_pretrained(modelId, { dtype: "fp32", device: "cpu" });
  const inputs = tokenizer(prompt);
  const output = await model.generate({ ...inputs, max_new_tokens: Number(maxNewTokens), do_sample: false });
  const toNumbers = (tensor) => Array.from(tensor.data, Number);
  console.log(
    JSON.stringify({
      version: transformers.env.version,
      prompt_ids: toNumbers(inputs.input_ids),
      output_ids: toNumbers(output),
    }),
  );
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
