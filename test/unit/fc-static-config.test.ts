import { keyOf } from '../helpers/config-key.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { newVolumeId } from '../../src/backends/ids.js';
import { loadConfig } from '../../src/config/load.js';
import { isStaticHandle, parseStaticAttributes, STATIC_HANDLE_RE } from '../../src/controller/static-volumes.js';
import { Code, DomainError } from '../../src/errors/domain-error.js';
import { normalizeWwid } from '../../src/node/connectors/multipath.js';
import { byPathLun, parseHctl } from '../../src/node/connectors/scsi.js';

const dir = mkdtempSync(join(tmpdir(), 'sinter-fc-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

function load(role: 'all' | 'node' | 'controller', cfg: object) {
  const file = join(dir, `c${n++}.yaml`);
  writeFileSync(file, stringify(cfg));
  return loadConfig(role, ['--config', file]);
}


const backend = (name = 'b1') => ({ name, dataDir: join(dir, name) });

describe('configuration: node.sysfsRoot, node.devRoot, node.fc, controller.stateDir', () => {
  it('defaults', () => {
    const c = load('all', { backends: [backend()] });
    expect(c.node).toMatchObject({ sysfsRoot: '/sys', devRoot: '/dev', fc: { scanTimeoutSeconds: 30, removeTimeoutSeconds: 30 } });
    expect(c.controller.stateDir).toBe(join(dir, 'b1', 'controller-state'));
    expect(load('node', {}).controller.stateDir).toBe('/var/lib/sinter/controller');
  });

  it('takes values, normalized', () => {
    const c = load('node', { node: { sysfsRoot: '/host/sys/', devRoot: '/host/dev', fc: { scanTimeoutSeconds: 90, removeTimeoutSeconds: '5' } }, controller: { stateDir: '/var/lib/x/' } });
    expect(c.node).toMatchObject({ sysfsRoot: '/host/sys', devRoot: '/host/dev', fc: { scanTimeoutSeconds: 90, removeTimeoutSeconds: 5 } });
    expect(c.controller.stateDir).toBe('/var/lib/x');
  });

  it.each([
    [{ node: { sysfsRoot: 'sys' } }, 'node.sysfsRoot'],
    [{ node: { devRoot: '' } }, 'node.devRoot'],
    [{ node: { sysfsRoot: '/' } }, 'node.sysfsRoot'],
    [{ node: { fc: { scanTimeoutSeconds: 0 } } }, 'node.fc.scanTimeoutSeconds'],
    [{ node: { fc: { removeTimeoutSeconds: 'soon' } } }, 'node.fc.removeTimeoutSeconds'],
    [{ node: { fc: { scanTimeout: 5 } } }, 'node.fc.scanTimeout'],
    [{ node: { fc: 'yes' } }, 'node.fc'],
    [{ controller: { stateDir: 'rel' } }, 'controller.stateDir'],
    [{ controller: { statedir: '/x' } }, 'controller.statedir'],
  ])('refuses %j naming %s', (cfg, key) => {
    expect(keyOf(() => load('node', cfg))).toBe(key);
  });

  it('reserves backend names "static" and "static-…" for static volume handles', () => {
    expect(keyOf(() => load('controller', { backends: [backend('static')] }))).toBe('backends[0].name');
    expect(keyOf(() => load('controller', { backends: [backend('b1'), backend('static-fc')] }))).toBe('backends[1].name');
    expect(keyOf(() => load('controller', { backends: [backend('statics')] }))).toBeUndefined();
  });
});

describe('static volume handles and attributes', () => {
  it('a backend volume id is never a static handle, and the handle pattern is strict', () => {
    for (const b of ['b1', 'statics', 'x-static', 'default']) expect(isStaticHandle(newVolumeId(b))).toBe(false);
    for (const ok of ['static-a', 'static-lun-3', 'static-array1.pool2.lun3', `static-${'a'.repeat(63)}`]) expect(STATIC_HANDLE_RE.test(ok)).toBe(true);
    for (const bad of ['static-', 'static-A', 'static-a_b', 'static--a', 'static-a-', 'static-a/b', `static-${'a'.repeat(64)}`, 'Static-a']) expect(STATIC_HANDLE_RE.test(bad)).toBe(false);
  });

  it('normalizes FC WWNs and keeps iSCSI portals as written', () => {
    expect(parseStaticAttributes({ transport: 'fc', wwns: '0x5006016000000001, 50:06:01:60:00:00:00:02', lun: '0' }).context).toEqual({
      transport: 'fc',
      wwns: ['5006016000000001', '5006016000000002'],
      lun: 0,
    });
    expect(parseStaticAttributes({ transport: 'iscsi', portals: '10.0.0.1', iqn: 'iqn.2001-05.com.example:t', lun: '16383' }).context).toEqual({
      transport: 'iscsi',
      portals: ['10.0.0.1'],
      iqn: 'iqn.2001-05.com.example:t',
      lun: 16383,
    });
  });

  it('every refusal is INVALID_ARGUMENT', () => {
    try {
      parseStaticAttributes({ transport: 'fc', wwns: 'x', lun: '1' });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(DomainError);
      expect((e as DomainError).code).toBe(Code.INVALID_ARGUMENT);
    }
  });
});

describe('SCSI and multipath naming', () => {
  it('by-path LUN names as udev writes them', () => {
    expect(byPathLun(0)).toBe('lun-0');
    expect(byPathLun(255)).toBe('lun-255');
    expect(byPathLun(256)).toBe('lun-0x0100000000000000');
    expect(byPathLun(16383)).toBe('lun-0x3fff000000000000');
  });

  it('HCTL parsing', () => {
    expect(parseHctl('1:0:2:3')).toEqual({ host: 1, channel: 0, target: 2, lun: 3 });
    for (const bad of ['1:0:2', 'a:0:2:3', '1:0:2:3:4', '', undefined]) expect(parseHctl(bad)).toBeUndefined();
  });

  it('one WWID, however it is written (sysfs wwid, scsi_id, dm uuid)', () => {
    const a = normalizeWwid('naa.600A0B800012345600000000000000A3');
    expect(normalizeWwid('3600a0b800012345600000000000000a3')).toBe(a);
    expect(normalizeWwid('mpath-3600a0b800012345600000000000000a3')).toBe(a);
    expect(normalizeWwid('eui.0025385b71b0cdef')).toBe(normalizeWwid('20025385b71b0cdef'));
    expect(normalizeWwid('naa.600a0b800012345600000000000000a4')).not.toBe(a);
  });
});
