import { parentPort, workerData } from 'node:worker_threads';
import { chunkCompressor } from './compress.js';

// A compression thread for publish: receives plain chunks, returns zstd frames (both transferred).
const compress = chunkCompressor((workerData as { level: number }).level);
parentPort!.on('message', (msg: { seq: number; data: Uint8Array }) => {
  const z = compress(msg.data);
  const out = new Uint8Array(z.buffer, z.byteOffset, z.byteLength);
  parentPort!.postMessage({ seq: msg.seq, data: out }, z.byteOffset === 0 && z.byteLength === z.buffer.byteLength ? [z.buffer as ArrayBuffer] : []);
});
