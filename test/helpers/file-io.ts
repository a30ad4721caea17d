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

/** Writes `data` at `offset` of a file or block device and fsyncs it. */
export async function writeAt(path: string, offset: number, data: Buffer): Promise<void> {
  const fh = await fs.open(path, 'r+');
  try {
    await fh.write(data, 0, data.length, offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
