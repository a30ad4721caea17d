import { promises as fs } from 'node:fs';

/** Reads `len` bytes at `offset` of a file or block device. */
export async function readAt(path: string, offset: number, len: number): Promise<Buffer> {
  const fh = await fs.open(path, 'r');
  try {
    const b = Buffer.alloc(len);
    await fh.read(b, 0, len, offset);
    return b;
  } finally {
    await fh.close();
  }
}
