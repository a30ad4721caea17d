import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LOADER_OPTIONS } from '../../src/csi/proto.js';

// src/csi/generated/ holds the TypeScript types of proto/csi.proto, written by
// proto-loader-gen-types (scripts/csi-gen-types.mjs). The .proto is the source
// of truth; regenerate with: npm run gen:csi-types
const gen = (await import(new URL('../../scripts/csi-gen-types.mjs', import.meta.url).href)) as {
  GENERATED_DIR: string;
  GEN_FLAGS: string[];
  generateCsiTypes: (outDir: string) => void;
};

function files(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const p = join(e.parentPath, e.name);
    out.set(relative(dir, p), readFileSync(p, 'utf8'));
  }
  return out;
}

const scratch = mkdtempSync(join(tmpdir(), 'sinter-csi-types-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe('src/csi/generated (TypeScript types of proto/csi.proto)', () => {
  it('are generated with the field conversions the runtime loader uses', () => {
    // Each loader option that shapes a message has its generator flag; a change to one without the other fails here.
    const o = LOADER_OPTIONS;
    const expected = [
      o.keepCase ? '--keepCase' : undefined,
      o.longs === Number ? '--longs=Number' : o.longs === String ? '--longs=String' : undefined,
      o.enums === String ? '--enums=String' : undefined,
      o.defaults ? '--defaults' : undefined,
      o.arrays ? '--arrays' : undefined,
      o.objects ? '--objects' : undefined,
      o.oneofs ? '--oneofs' : undefined,
    ].filter((f): f is string => f !== undefined);
    const shaping = gen.GEN_FLAGS.filter((f) => !f.startsWith('--grpcLib') && !f.startsWith('--importFileExtension'));
    expect(shaping).toEqual(expected);
    expect(Object.keys(o).sort()).toEqual(['arrays', 'defaults', 'enums', 'keepCase', 'longs', 'objects', 'oneofs']);
  });

  it('are what proto-loader-gen-types writes for proto/csi.proto today', { timeout: 60_000 }, () => {
    gen.generateCsiTypes(scratch);
    const want = files(scratch);
    const have = files(gen.GENERATED_DIR);
    expect([...have.keys()].sort(), 'src/csi/generated is out of date: run npm run gen:csi-types').toEqual([...want.keys()].sort());
    for (const [name, text] of want) expect(have.get(name), `${name} is out of date: run npm run gen:csi-types`).toBe(text);
  });
});
