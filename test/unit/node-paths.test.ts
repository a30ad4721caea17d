import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../src/errors/domain-error.js';
import { confine, KubeletPaths } from '../../src/node/paths.js';
import { stringContaining } from '../helpers/matchers.js';

let dir: string;
let root: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sinter-paths-'));
  root = join(dir, 'kubelet');
  await mkdir(join(root, 'pods', 'p1'), { recursive: true });
  await mkdir(join(dir, 'outside'));
  await symlink(join(dir, 'outside'), join(root, 'out-link'));
  await symlink(join(root, 'pods'), join(root, 'in-link'));
  await writeFile(join(root, 'afile'), '');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('confine', () => {
  it('accepts normalized absolute paths strictly under a root, existing or not', async () => {
    const c = await confine(join(root, 'pods', 'p1', 'vol', 'mount'), [root]);
    expect(c).toMatchObject({ ok: true, root, exists: false });
    const e = await confine(join(root, 'pods', 'p1'), [root]);
    expect(e).toMatchObject({ ok: true, exists: true });
  });

  it('refuses, never throws, on a dangling symlink, a symlink loop or a name too long (found by fuzzing: INTERNAL before)', async () => {
    await symlink('/nonexistent-sinter-target', join(root, 'dangling'));
    await symlink(join(root, 'loop-b'), join(root, 'loop-a'));
    await symlink(join(root, 'loop-a'), join(root, 'loop-b'));
    expect(await confine(join(root, 'dangling', 'x'), [root])).toMatchObject({ ok: false, why: stringContaining('points nowhere') });
    expect(await confine(join(root, 'dangling'), [root])).toMatchObject({ ok: false });
    expect(await confine(join(root, 'loop-a', 'x'), [root])).toMatchObject({ ok: false, why: stringContaining('ELOOP') });
    expect(await confine(join(root, 'x'.repeat(300), 'y'), [root])).toMatchObject({ ok: false, why: stringContaining('ENAMETOOLONG') });
  });

  it('follows symlinks that stay inside and reports the resolved path', async () => {
    const c = await confine(join(root, 'in-link', 'p1', 'x'), [root]);
    expect(c).toMatchObject({ ok: true, resolved: join(root, 'pods', 'p1', 'x') });
  });

  it.each([
    ['relative', 'pods/p1', 'not an absolute path'],
    ['dot-dot', '/ROOT/pods/../../outside', 'not a normalized path'],
    ['dot', '/ROOT/./pods', 'not a normalized path'],
    ['double slash', '/ROOT//pods', 'not a normalized path'],
    ['trailing slash', '/ROOT/pods/', 'not a normalized path'],
    ['outside', '/etc/passwd', 'not under any allowed directory'],
    ['prefix trick', '/ROOT-evil/x', 'not under any allowed directory'],
    ['the root itself', '/ROOT', 'not under any allowed directory'],
    ['symlink escape', '/ROOT/out-link/x', 'through a symbolic link'],
    ['NUL', '/ROOT/a\0b', 'NUL'],
  ])('rejects %s', async (_name, p, why) => {
    const c = await confine(p.replace('/ROOT', root), [root]);
    expect(c.ok).toBe(false);
    expect(c.ok ? '' : c.why).toContain(why);
  });

  it('treats a file in the middle of the path as the existing prefix', async () => {
    const c = await confine(join(root, 'afile', 'below'), [root]);
    expect(c).toMatchObject({ ok: true, exists: false });
  });
});

describe('KubeletPaths', () => {
  it('check: missing is INVALID_ARGUMENT naming the field; outside is INVALID_ARGUMENT', async () => {
    const p = new KubeletPaths([root + '/']);
    await expect(p.check('target_path', '')).rejects.toMatchObject({ code: Code.INVALID_ARGUMENT, message: 'target_path is required' });
    await expect(p.check('target_path', '/etc/x')).rejects.toMatchObject({ code: Code.INVALID_ARGUMENT, message: stringContaining('target_path "/etc/x"') });
  });

  it('lookup: anything that cannot hold a volume is NOT_FOUND, a missing field INVALID_ARGUMENT', async () => {
    const p = new KubeletPaths([root]);
    await expect(p.lookup('volume_path', 'some/path')).rejects.toMatchObject({ code: Code.NOT_FOUND });
    await expect(p.lookup('volume_path', join(root, 'nope'))).rejects.toMatchObject({ code: Code.NOT_FOUND, message: stringContaining('does not exist') });
    await expect(p.lookup('volume_path', undefined)).rejects.toMatchObject({ code: Code.INVALID_ARGUMENT });
    await expect(p.lookup('volume_path', join(root, 'pods'))).resolves.toMatchObject({ exists: true });
  });
});
