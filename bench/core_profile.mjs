// Runs bench/core-profile (apikey-core's request steps, wasm32-wasip1) under
// Node's V8 with WASI: the spec JSON on stdin, a JSON array of
// `[step, nanoseconds]` pairs on stdout.
//
//   node bench/core_profile.mjs target/core-profile/wasm32-wasip1/release/core-profile.wasm < SPEC
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";

const wasi = new WASI({ version: "preview1", args: ["core-profile"], env: {}, stdin: 0, stdout: 1, stderr: 2 });
const module = await WebAssembly.compile(readFileSync(process.argv[2]));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
