import { Code } from '../../src/errors/domain-error.js';
import { describe, expect, it } from 'vitest';
import { parseCapability } from '../../src/controller/capabilities.js';
import { paginate } from '../../src/controller/pagination.js';
import { parseParameters } from '../../src/controller/parameters.js';
import { MiB, sizeFor } from '../../src/controller/volumes.js';
import type { DomainError } from '../../src/errors/domain-error.js';

const codeOf = (fn: () => unknown): string | undefined => {
  try {
    fn();
  } catch (e) {
    return (e as DomainError).code;
  }
  return undefined;
};

describe('capacity_range → size', () => {
  it('uses the default when no range is given', () => expect(sizeFor(undefined, 1024 * MiB, MiB)).toBe(1024 * MiB));
  it('rounds the request up to whole MiB', () => expect(sizeFor({ required_bytes: 5 * MiB + 1 }, 0, MiB)).toBe(6 * MiB));
  it('never goes under the filesystem floor', () => expect(sizeFor({ required_bytes: MiB }, 0, 300 * MiB)).toBe(300 * MiB));
  it('fits under a limit when only the limit is given', () => expect(sizeFor({ limit_bytes: 10 * MiB }, 1024 * MiB, MiB)).toBe(10 * MiB));
  it('falls back to 4 KiB steps when whole MiB would pass the limit', () =>
    expect(sizeFor({ required_bytes: 5 * MiB + 1, limit_bytes: 5 * MiB + 5000 }, 0, MiB)).toBe(5 * MiB + 4096));
  it('is OUT_OF_RANGE when no 4 KiB step fits between required and limit', () =>
    expect(codeOf(() => sizeFor({ required_bytes: 5 * MiB + 1, limit_bytes: 5 * MiB + 2 }, 0, MiB))).toBe(Code.OUT_OF_RANGE));
  it('is OUT_OF_RANGE when the limit is under the filesystem floor', () =>
    expect(codeOf(() => sizeFor({ limit_bytes: 10 * MiB }, 0, 300 * MiB))).toBe(Code.OUT_OF_RANGE));
  it('rejects a limit below required', () => expect(codeOf(() => sizeFor({ required_bytes: 10, limit_bytes: 5 }, 0, MiB))).toBe(Code.INVALID_ARGUMENT));
  it('rejects negative sizes', () => expect(codeOf(() => sizeFor({ required_bytes: -1 }, 0, MiB))).toBe(Code.INVALID_ARGUMENT));
});

describe('volume capabilities', () => {
  it('accepts mount and block with every single-node mode', () => {
    for (const mode of ['SINGLE_NODE_WRITER', 'SINGLE_NODE_READER_ONLY', 'SINGLE_NODE_SINGLE_WRITER', 'SINGLE_NODE_MULTI_WRITER', 'MULTI_NODE_READER_ONLY']) {
      expect(parseCapability({ access_type: 'mount', mount: { fs_type: 'xfs' }, access_mode: { mode } }, 'c').fsType).toBe('xfs');
      expect(parseCapability({ access_type: 'block', block: {}, access_mode: { mode } }, 'c').accessType).toBe('block');
    }
  });
  it('offers multi-node writers only for block', () => {
    expect(parseCapability({ access_type: 'block', block: {}, access_mode: { mode: 'MULTI_NODE_MULTI_WRITER' } }, 'c').accessMode).toBe('MULTI_NODE_MULTI_WRITER');
    expect(codeOf(() => parseCapability({ access_type: 'mount', mount: {}, access_mode: { mode: 'MULTI_NODE_MULTI_WRITER' } }, 'c'))).toBe(Code.INVALID_ARGUMENT);
  });
  it('names the missing part', () => {
    expect(() => parseCapability({ access_type: 'mount', mount: {} }, 'volume_capability')).toThrow(/volume_capability.access_mode/);
    expect(() => parseCapability({ access_mode: { mode: 'SINGLE_NODE_WRITER' } }, 'volume_capability')).toThrow(/access_type/);
    expect(() => parseCapability({ access_type: 'mount', mount: { fs_type: 'ntfs' }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }, 'x')).toThrow(/ntfs/);
    expect(() => parseCapability({ access_type: 'mount', mount: { mount_flags: ['ro;rm -rf /'] }, access_mode: { mode: 'SINGLE_NODE_WRITER' } }, 'x')).toThrow(/mount_flags/);
  });
});

describe('StorageClass parameters', () => {
  it('keeps known keys and passes the sidecars keys through', () => {
    const p = parseParameters({ type: 'ssd', mkfsOptions: '-m 0', 'csi.storage.k8s.io/pvc/name': 'data', 'csi.storage.k8s.io/fstype': 'xfs' });
    expect(p).toMatchObject({ type: 'ssd', mkfsOptions: '-m 0' });
    expect(p.own).toEqual({ type: 'ssd', mkfsOptions: '-m 0' });
  });
  it.each(['fsType', 'fstype', 'FSType', 'FSTYPE'])('refuses %s, whatever its case, and points at csi.storage.k8s.io/fstype', (k) => {
    // csi-provisioner v6.3.0 (pkg/controller/controller.go) treats every key that lower-cases to "fstype" as its legacy key.
    expect(codeOf(() => parseParameters({ [k]: 'xfs' }))).toBe(Code.INVALID_ARGUMENT);
    expect(() => parseParameters({ [k]: 'xfs' })).toThrow(new RegExp(`parameters\\.${k} is not a sinter parameter: set the filesystem with csi\\.storage\\.k8s\\.io/fstype`));
  });
  it('points a deprecated unprefixed secret key at its csi.storage.k8s.io/ name', () =>
    expect(() => parseParameters({ csiNodeStageSecretName: 'chap' })).toThrow(/csiNodeStageSecretName .*use csi\.storage\.k8s\.io\/node-stage-secret-name/));
  it('names an unknown key', () => expect(() => parseParameters({ tpye: 'ssd' })).toThrow(/unknown key "tpye"/));
  it('refuses shell characters in mkfsOptions', () => expect(() => parseParameters({ mkfsOptions: '-E `id`' })).toThrow(/mkfsOptions/));
});

describe('pagination by last id', () => {
  const ids = ['a', 'c', 'e', 'g'];
  const page = (max: number, tok?: string, list = ids) => paginate(list, (x) => x, max, tok, (t) => /^[a-z]$/.test(t));
  it('walks pages and ends with an empty token', () => {
    const p1 = page(2);
    expect(p1).toEqual({ items: ['a', 'c'], nextToken: 'c' });
    expect(page(2, p1.nextToken)).toEqual({ items: ['e', 'g'], nextToken: '' });
  });
  it('survives the deletion of the token id and picks up new ids after it', () => {
    expect(page(2, 'c', ['a', 'd', 'e', 'g'])).toEqual({ items: ['d', 'e'], nextToken: 'e' });
  });
  it('skips hidden items without counting them, and ends when only hidden ones follow', () => {
    const list = ['a', 'B', 'c', 'D', 'e', 'F', 'G'];
    const shown = (x: string) => x === x.toLowerCase();
    const p = (max: number, tok?: string) => paginate(list, (x) => x.toLowerCase(), max, tok, (t) => /^[a-z]$/.test(t), shown);
    expect(p(2)).toEqual({ items: ['a', 'c'], nextToken: 'c' });
    expect(p(2, 'c')).toEqual({ items: ['e'], nextToken: '' });
    expect(p(1, 'c')).toEqual({ items: ['e'], nextToken: '' });
    expect(p(0)).toEqual({ items: ['a', 'c', 'e'], nextToken: '' });
    expect(p(2, 'e')).toEqual({ items: [], nextToken: '' });
  });
  it('is ABORTED for a token it never issued', () => expect(codeOf(() => page(2, 'not-a-token'))).toBe(Code.ABORTED));
  it('is INVALID_ARGUMENT for negative max_entries', () => expect(codeOf(() => page(-1))).toBe(Code.INVALID_ARGUMENT));
});
