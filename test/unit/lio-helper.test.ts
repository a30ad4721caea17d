import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { LioConfigfs } from '../../src/backends/targets/lio-configfs.js';
import { LioTargetHelper } from '../../src/backends/targets/lio.js';
import { DomainError } from '../../src/errors/domain-error.js';

// What can be checked without a kernel: the helper's refusals and its confinement to the
// target tree. Everything configfs does is tested on a real kernel in test/vm/lio.vm.test.ts.
const dir = mkdtempSync(join(tmpdir(), 'sinter-lio-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const VOL = 'san-0b5cf1a2-3c4d-4e5f-8a9b-0c1d2e3f4a5b';

describe('LIO helper without a kernel target', () => {
  const lio = new LioTargetHelper({ iqnPrefix: 'iqn.2026-12.io.sinter:', portals: ['127.0.0.1:3260'], configfsRoot: dir });

  it('says UNAVAILABLE, naming the modules to load, when the target core is not there (Probe reports not ready)', async () => {
    const e = await lio.listTargets().catch((x: unknown) => x);
    expect(e).toBeInstanceOf(DomainError);
    expect((e as DomainError).code).toBe('unavailable');
    expect((e as Error).message).toMatch(/modprobe target_core_mod iscsi_target_mod/);
    await expect(lio.ensureTarget(VOL, '/nonexistent/x.img')).rejects.toMatchObject({ code: 'unavailable' });
  });

  it('treats removal and refresh of what is not there as done (idempotent after a reboot)', async () => {
    await expect(lio.removeTarget(VOL)).resolves.toBeUndefined();
    await expect(lio.refreshLunSize(VOL, '/x.img')).resolves.toBe('absent');
  });

  it('refuses bad names and CHAP values LIO would misread, before touching anything', async () => {
    expect(lio.iqnFor(VOL)).toBe(`iqn.2026-12.io.sinter:${VOL}`);
    expect(() => lio.iqnFor('../etc')).toThrow();
    await expect(lio.allowInitiator(VOL, 'not an iqn')).rejects.toMatchObject({ code: 'invalid-argument' });
    await expect(lio.allowInitiator(VOL, 'iqn.2005-03.org.open-iscsi:n1', { user: 'u', password: 'NULL-and-more-1' })).rejects.toMatchObject({ code: 'invalid-argument' });
    expect(() => new LioTargetHelper({ iqnPrefix: 'iqn.2026-12.io.sinter:', portals: ['storage.example:3260'] })).toThrow(/IP literal/);
  });

  it('keeps every path inside the target tree', () => {
    const c = new LioConfigfs(dir);
    expect(c.abs('core/fileio_1/x')).toBe(join(dir, 'core/fileio_1/x'));
    expect(() => c.abs('../../etc/passwd')).toThrow(/outside/);
    expect(() => c.abs('/etc/passwd')).toThrow(/outside/);
    expect(c.rel(join(dir, 'iscsi/x'))).toBe('iscsi/x');
    expect(c.rel('/etc')).toBeUndefined();
  });
});
