// Counts the host calls a proxy-wasm module makes per request, and times
// the module's own work, by running it under Node's V8 with a minimal
// proxy-wasm host (ABI 0.2.1) whose every import counts its calls.
//
//   node bench/hostcalls.mjs SPEC.json            (bench/bench.py writes SPEC)
//   node --cpu-prof bench/hostcalls.mjs SPEC.json  (where the module's time goes)
//
// SPEC: {"modules": {"filter": PATH, ...}, "configuration": "<plugin JSON>",
//        "requests": [{"name", "module", "headers": [[name, value]...],
//                      "before": n (requests sent first, uncounted), "timed": n}]}
// Prints {"columns": [import names], "rows": [{"name", "calls": {import: n},
//         "vm_entries", "bytes_in", "bytes_out", "ns_per_request"}]}.
// The host here is cheap JS: its times show the module's own work (plus
// V8's boundary crossings), not Envoy's cost per call.

import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const OK = 0, NOT_FOUND = 1, CAS_MISMATCH = 8;

function instantiate(path, configuration) {
  const module = new WebAssembly.Module(readFileSync(path));
  let instance;
  const counts = {};
  let bytesIn = 0, bytesOut = 0;
  const shared = new Map(); // key -> {value: Uint8Array, cas}
  let cas = 1;
  const maps = { 0: [], 2: [] };
  let metricId = 0;
  const mem = () => new Uint8Array(instance.exports.memory.buffer);
  const view = () => new DataView(instance.exports.memory.buffer);
  const bytesAt = (ptr, len) => { bytesOut += len; return mem().slice(ptr, ptr + len); };
  // Names and keys are short ASCII: a latin-1 read is cheap and exact for them.
  const str = (ptr, len) => { bytesOut += len; return String.fromCharCode.apply(null, new Uint8Array(instance.exports.memory.buffer, ptr, len)); };
  const serialised = new WeakMap(); // a request's header list -> its serialised map
  // Host -> VM copies go through the module's allocator, as in Envoy.
  function give(bytes, retPtr, retSize) {
    bytesIn += bytes.length;
    const at = bytes.length ? instance.exports.proxy_on_memory_allocate(bytes.length) : 0;
    counts["(callback) proxy_on_memory_allocate"] = (counts["(callback) proxy_on_memory_allocate"] || 0) + 1;
    if (bytes.length) mem().set(bytes, at);
    view().setUint32(retPtr, at, true);
    view().setUint32(retSize, bytes.length, true);
  }
  function serialise(pairs) {
    const parts = pairs.map(([k, v]) => [encoder.encode(k), encoder.encode(v)]);
    let size = 4 + parts.length * 8;
    for (const [k, v] of parts) size += k.length + v.length + 2;
    const out = new Uint8Array(size);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, parts.length, true);
    let at = 4;
    for (const [k, v] of parts) { dv.setUint32(at, k.length, true); dv.setUint32(at + 4, v.length, true); at += 8; }
    for (const [k, v] of parts) { out.set(k, at); at += k.length + 1; out.set(v, at); at += v.length + 1; }
    return out;
  }
  const config = encoder.encode(configuration);
  const impl = {
    proxy_log: (level, ptr, len) => { if (level >= 3) process.stderr.write(`[wasm log ${level}] ${str(ptr, len)}\n`); return OK; },
    proxy_get_buffer_bytes: (type, start, max, retPtr, retSize) => {
      if (type !== 7) return NOT_FOUND;
      give(config.subarray(start >>> 0, Math.min(config.length, (start >>> 0) + (max >>> 0))), retPtr, retSize);
      return OK;
    },
    proxy_get_header_map_pairs: (map, retPtr, retSize) => {
      const pairs = maps[map] || [];
      let bytes = serialised.get(pairs);
      if (!bytes) { bytes = serialise(pairs); serialised.set(pairs, bytes); }
      give(bytes, retPtr, retSize);
      return OK;
    },
    proxy_get_header_map_value: (map, kPtr, kLen, retPtr, retSize) => {
      const name = str(kPtr, kLen).toLowerCase();
      const hit = (maps[map] || []).find(([k]) => k === name);
      if (!hit) return NOT_FOUND;
      give(encoder.encode(hit[1]), retPtr, retSize);
      return OK;
    },
    // Header edits are counted, not applied: each request starts from its own map.
    proxy_add_header_map_value: (map, kPtr, kLen, vPtr, vLen) => { bytesOut += kLen + vLen; return OK; },
    proxy_replace_header_map_value: (map, kPtr, kLen, vPtr, vLen) => { bytesOut += kLen + vLen; return OK; },
    proxy_remove_header_map_value: (map, kPtr, kLen) => { bytesOut += kLen; return OK; },
    proxy_set_header_map_pairs: (map, ptr, len) => { bytesOut += len; return OK; },
    proxy_send_local_response: (status, dPtr, dLen, bPtr, bLen, hPtr, hLen) => { bytesOut += dLen + bLen + hLen; return OK; },
    proxy_get_shared_data: (kPtr, kLen, retPtr, retSize, casPtr) => {
      const entry = shared.get(str(kPtr, kLen));
      if (!entry) return NOT_FOUND;
      give(entry.value, retPtr, retSize);
      view().setUint32(casPtr, entry.cas, true);
      return OK;
    },
    proxy_set_shared_data: (kPtr, kLen, vPtr, vLen, expected) => {
      const key = str(kPtr, kLen);
      const entry = shared.get(key);
      if (entry && expected !== 0 && expected !== entry.cas) return CAS_MISMATCH;
      const value = entry && entry.value.length === vLen ? entry.value : new Uint8Array(vLen);
      value.set(new Uint8Array(instance.exports.memory.buffer, vPtr, vLen)); bytesOut += vLen;
      shared.set(key, { value, cas: ++cas });
      return OK;
    },
    proxy_get_current_time_nanoseconds: (ptr) => { view().setBigUint64(ptr, BigInt(Date.now()) * 1000000n, true); return OK; },
    clock_time_get: (id, precision, ptr) => { const t = performance.now(); view().setBigUint64(ptr, BigInt(Math.floor(t * 1e6)), true); return OK; },
    proxy_define_metric: (type, nPtr, nLen, retId) => { bytesAt(nPtr, nLen); view().setUint32(retId, ++metricId, true); return OK; },
    proxy_get_property: () => NOT_FOUND,
    random_get: (ptr, len) => { mem().fill(7, ptr, ptr + len); return OK; },
    environ_sizes_get: (countPtr, sizePtr) => { view().setUint32(countPtr, 0, true); view().setUint32(sizePtr, 0, true); return OK; },
    fd_write: (fd, iovs, n, written) => { view().setUint32(written, 0, true); return OK; },
    proc_exit: (code) => { throw new Error(`proc_exit(${code})`); },
  };
  const imports = {};
  for (const { module: space, name } of WebAssembly.Module.imports(module)) {
    const fn = impl[name] || (() => OK);
    (imports[space] ||= {})[name] = (...args) => { counts[name] = (counts[name] || 0) + 1; return fn(...args); };
  }
  instance = new WebAssembly.Instance(module, imports);
  const ex = instance.exports;
  ex._initialize?.();
  ex.proxy_on_context_create(1, 0);
  ex.proxy_on_vm_start?.(1, 0);
  if (!ex.proxy_on_configure(1, config.length)) throw new Error(`${path}: on_configure refused the configuration`);
  let context = 2;
  const stages = ["proxy_on_request_headers", "proxy_on_response_headers", "proxy_on_done", "proxy_on_log", "proxy_on_delete"];
  return {
    exports: stages.filter((s) => ex[s]),
    request(headers) {
      const id = context++;
      maps[0] = headers;
      maps[2] = RESPONSE;
      let entries = 0;
      ex.proxy_on_context_create(id, 1); entries++;
      const action = ex.proxy_on_request_headers(id, maps[0].length, 1); entries++;
      if (ex.proxy_on_response_headers) { ex.proxy_on_response_headers(id, maps[2].length, 0); entries++; }
      if (ex.proxy_on_done) { ex.proxy_on_done(id); entries++; }
      if (ex.proxy_on_log) { ex.proxy_on_log(id); entries++; }
      ex.proxy_on_delete(id); entries++;
      return { action, entries };
    },
    reset() { for (const k of Object.keys(counts)) delete counts[k]; bytesIn = 0; bytesOut = 0; },
    snapshot() { return { calls: { ...counts }, bytesIn, bytesOut }; },
  };
}

const RESPONSE = [[":status", "200"], ["content-length", "3"], ["content-type", "text/plain"]];
const hosts = {};
for (const [name, path] of Object.entries(spec.modules)) {
  hosts[name] = instantiate(path, name === "filter" ? spec.configuration : "");
}
const rows = [];
for (const r of spec.requests) {
  const host = hosts[r.module];
  r.headers = r.headers.map(([k, v]) => [k.toLowerCase(), v]);
  for (let i = 0; i < (r.before || 0); i++) host.request(r.headers);
  host.reset();
  const { entries } = host.request(r.headers);
  const { calls, bytesIn, bytesOut } = host.snapshot();
  let ns = null;
  if (r.timed) {
    for (let i = 0; i < r.timed; i++) host.request(r.headers); // warm: let V8 tier up
    const start = performance.now();
    for (let i = 0; i < r.timed; i++) host.request(r.headers);
    ns = Math.round(((performance.now() - start) * 1e6) / r.timed);
  }
  rows.push({ name: r.name, calls, vm_entries: entries, bytes_in: bytesIn, bytes_out: bytesOut, ns_per_request: ns });
}
const columns = [...new Set(rows.flatMap((row) => Object.keys(row.calls)))].sort();
console.log(JSON.stringify({ columns, rows }, null, 1));
