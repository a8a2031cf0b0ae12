// The exported DUDA student in the browser: transformers.js's image-segmentation pipeline on a local model folder.
//
// Query parameters: model (a folder under models/, default "student"), dtype ("fp32": onnx/model.onnx, "q8":
// onnx/model_quantized.onnx), image (an image URL), threads (WebAssembly threads; more than 1 needs a
// cross-origin isolated page). The result is shown on the page and kept, as JSON, in #result and in
// window.dudaResult: the labels present with their pixel share, the class of every pixel, and the latency.
import { env, pipeline, RawImage } from "./node_modules/@huggingface/transformers/dist/transformers.js";

const params = new URLSearchParams(location.search);
const model = params.get("model") ?? "student";
const dtype = params.get("dtype") ?? "fp32";
const imageUrl = params.get("image") ?? "sample.png";
const threads = Number(params.get("threads") ?? "1");

// Everything from this server: the model folder, and ONNX Runtime's WebAssembly files from node_modules
// (transformers.js would otherwise fetch them from a CDN).
env.allowRemoteModels = false;
env.allowLocalModels = true;
// A path, not a full URL: transformers.js 4.3 looks for local files only under a localModelPath that is not a URL.
env.localModelPath = new URL("./models/", location.href).pathname;
env.useBrowserCache = false;
const ortDist = new URL("./node_modules/onnxruntime-web/dist/", location.href).href;
env.backends.onnx.wasm.wasmPaths = {
  mjs: `${ortDist}ort-wasm-simd-threaded.asyncify.mjs`,
  wasm: `${ortDist}ort-wasm-simd-threaded.asyncify.wasm`,
};
env.backends.onnx.wasm.numThreads = threads;

const status = document.getElementById("status");

function show(state, text) {
  status.dataset.state = state;
  status.textContent = text;
}

async function main() {
  const loadStart = performance.now();
  const segmenter = await pipeline("image-segmentation", model, { dtype, device: "wasm" });
  const loadMs = performance.now() - loadStart;
  const image = await RawImage.fromURL(imageUrl);
  document.getElementById("image").src = imageUrl;
  await segmenter(image); // warm-up: the first call also compiles the WebAssembly kernels
  const started = performance.now();
  const segments = await segmenter(image);
  const latencyMs = performance.now() - started;

  const label2id = segmenter.model.config.label2id;
  const pixels = image.width * image.height;
  const classes = new Array(pixels).fill(-1);
  const shares = {};
  for (const { label, mask } of segments) {
    let count = 0;
    for (let i = 0; i < pixels; i++) {
      if (mask.data[i] > 0) {
        classes[i] = label2id[label];
        count++;
      }
    }
    shares[label] = count / pixels;
  }
  const result = { model, dtype, threads, width: image.width, height: image.height, load_ms: loadMs, latency_ms: latencyMs, shares, classes };
  window.dudaResult = result;
  document.getElementById("result").textContent = JSON.stringify(result);
  document.getElementById("latency").textContent = `${dtype}: ${latencyMs.toFixed(1)} ms per image (${image.width}x${image.height})`;
  const table = document.getElementById("labels");
  for (const [label, share] of Object.entries(shares).sort((a, b) => b[1] - a[1])) {
    const row = table.insertRow();
    row.insertCell().textContent = label;
    row.insertCell().textContent = `${(100 * share).toFixed(1)}%`;
  }
  show("done", "done");
}

main().catch((error) => {
  console.error(error);
  show("error", `error: ${error?.message ?? error}`);
});
