// The static story demo: transformers.js runs the ONNX export in model/ with ONNX Runtime's WebAssembly build,
// every file served from beside this page (no CDN, no Hub). demo.json, written with the folder by `convert.py space
// --sdk static`, says what it holds: the model's folder and context, the examples, the two graphs and their figures.
//
// #status carries the page's state for scripts and tests: data-state (loading, ready, writing, done, error), and
// once a story is done data-new-tokens, data-seconds and data-first-token-ms (from the click); data-ready-ms is the
// time from the page's navigation to the model being ready. The page loads the 8-bit graph, the smaller download,
// unless its address says ?dtype=fp32; the other is fetched the first time it is chosen.
import {
  AutoModelForCausalLM,
  AutoTokenizer,
  InterruptableStoppingCriteria,
  TextStreamer,
  env,
} from "./transformers/transformers.min.js";

const here = new URL("./", import.meta.url);
env.allowRemoteModels = false; // a file missing here is an error, never a download from the Hub
env.allowLocalModels = true;
env.localModelPath = here.pathname; // model ids are folders beside this page
// The browser's HTTP cache is enough; transformers.js's own Cache Storage copies would outlive an update in place
env.useBrowserCache = false;
env.useWasmCache = false;
// The plain single-threaded SIMD build (14 MB): the page runs on the CPU, so the WebGPU-capable one (27 MB) would
// only be a larger download; threads would need cross-origin isolation headers, which a static host may not send.
env.backends.onnx.wasm.wasmPaths = {
  mjs: new URL("transformers/ort-wasm-simd-threaded.mjs", here).href,
  wasm: new URL("transformers/ort-wasm-simd-threaded.wasm", here).href,
};

const $ = (id) => document.getElementById(id);
const stopper = new InterruptableStoppingCriteria();
const models = {};
let tokenizer = null;

function setStatus(state, text, data = {}) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
  Object.assign(status.dataset, data);
}

function model(dtype) {
  // each graph is fetched the first time it is chosen
  models[dtype] ??= AutoModelForCausalLM.from_pretrained(demo.model, { dtype, device: "wasm" });
  return models[dtype];
}

function megabytes(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

// What is wrong with the settings, in words, or null: the checks and words of the Gradio demo (demo/app.py)
function problem(prompt, length, newTokens) {
  if (!prompt.trim()) return "The prompt is empty: type the story's first words, e.g. 'Once upon a time'.";
  const room = demo.context - length;
  if (room <= 0) {
    return `The prompt is ${length} tokens and the model's context is ${demo.context}: shorten the prompt, leaving room for the story.`;
  }
  if (!(newTokens >= 1)) return `Ask for at least 1 new token, got ${$("new-tokens").value}.`;
  if (newTokens > room) {
    return `The prompt is ${length} tokens and the model's context is ${demo.context}: ask for at most ${room} new tokens, or shorten the prompt.`;
  }
  return null;
}

async function write() {
  const prompt = $("prompt").value;
  const newTokens = Number($("new-tokens").value);
  const inputs = tokenizer(prompt);
  const wrong = problem(prompt, inputs.input_ids.dims[1], newTokens);
  if (wrong) return setStatus("error", wrong);
  $("write").disabled = true;
  $("stop").disabled = false;
  setStatus("writing", `Writing with the ${demo.graphs[$("dtype").value].label} weights...`);
  const generator = await model($("dtype").value);
  let text = prompt;
  let count = 0;
  let firstTokenMs = null;
  const started = performance.now();
  $("story").textContent = text;
  const streamer = new TextStreamer(tokenizer, {
    skip_prompt: true,
    skip_special_tokens: true,
    token_callback_function: () => {
      count += 1;
      firstTokenMs ??= performance.now() - started;
    },
    callback_function: (piece) => {
      text += piece;
      $("story").textContent = text;
    },
  });
  const sampling = $("greedy").checked
    ? { do_sample: false }
    : { do_sample: true, temperature: Number($("temperature").value), top_k: Number($("top-k").value) };
  stopper.reset();
  const output = await generator.generate({
    ...inputs,
    ...sampling,
    max_new_tokens: newTokens,
    streamer,
    stopping_criteria: [stopper],
  });
  const seconds = (performance.now() - started) / 1000;
  $("story").textContent = tokenizer.decode(output[0], { skip_special_tokens: true });
  setStatus(
    "done",
    `${(count / seconds).toFixed(0)} tokens/s: ${count} new tokens in ${seconds.toFixed(2)} s, ` +
      `the first after ${(firstTokenMs / 1000).toFixed(2)} s`,
    { newTokens: count, seconds, firstTokenMs },
  );
}

async function run(work) {
  try {
    await work();
  } catch (error) {
    setStatus("error", `Something went wrong: ${error.message ?? error}`);
  } finally {
    $("write").disabled = false;
    $("stop").disabled = true;
  }
}

const demo = await (await fetch(new URL("demo.json", here))).json();
$("prompt").value = demo.examples[0];
$("new-tokens").value = demo.new_tokens;
$("new-tokens").max = demo.context;
for (const example of demo.examples) {
  const button = document.createElement("button");
  button.textContent = example;
  button.onclick = () => ($("prompt").value = example);
  $("examples").append(button);
}
for (const [dtype, graph] of Object.entries(demo.graphs)) {
  const figure = graph.bits_per_byte === null ? "" : `, ${graph.bits_per_byte.toFixed(3)} bits per byte`;
  $("dtype").append(new Option(`${graph.label} (${megabytes(graph.download_bytes)}${figure})`, dtype));
}
// the smaller download first, unless the address asks for the other graph (?dtype=fp32)
const asked = new URLSearchParams(location.search).get("dtype");
$("dtype").value = asked in demo.graphs ? asked : demo.default_dtype;
$("write").onclick = () => run(write);
$("stop").onclick = () => stopper.interrupt();

try {
  tokenizer = await AutoTokenizer.from_pretrained(demo.model);
  await model($("dtype").value);
  setStatus("ready", "Ready: write a story.", { readyMs: performance.now() });
  $("write").disabled = false;
} catch (error) {
  setStatus("error", `The model could not be loaded: ${error.message ?? error}`);
}
