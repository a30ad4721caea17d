import { closeSync, openSync, readSync } from 'node:fs';

/** One buffer for the start-up scan's reads: records are small, and a fresh buffer (and an fstat) per file was a third of their cost. */
const scanBuffer = Buffer.allocUnsafe(64 * 1024);

/** A whole file, read synchronously with open + read + close (no fstat, no allocation for a file that fits the buffer). */
export function readSmallFileSync(path: string): string {
  const fd = openSync(path, 'r');
  try {
    let n = readSync(fd, scanBuffer, 0, scanBuffer.length, 0);
    if (n < scanBuffer.length) return scanBuffer.toString('utf8', 0, n);
    const chunks = [Buffer.from(scanBuffer.subarray(0, n))];
    let pos = n;
    while ((n = readSync(fd, scanBuffer, 0, scanBuffer.length, pos)) > 0) {
      chunks.push(Buffer.from(scanBuffer.subarray(0, n)));
      pos += n;
    }
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    closeSync(fd);
  }
}
