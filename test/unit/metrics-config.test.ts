import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load.js';

const dir = mkdtempSync(join(tmpdir(), 'sinter-metrics-cfg-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const base = ['--data-dir', join(dir, 'data')];

describe('--metrics-address / metricsAddress', () => {
  it('is off unless given', () => {
    expect(loadConfig('controller', base).metricsAddress).toBeUndefined();
  });
  it('takes host:port, [ipv6]:port and :port (every interface)', () => {
    expect(loadConfig('controller', [...base, '--metrics-address', '127.0.0.1:9859']).metricsAddress).toEqual({ host: '127.0.0.1', port: 9859, raw: '127.0.0.1:9859' });
    expect(loadConfig('node', [...base, '--metrics-address=:9849']).metricsAddress).toMatchObject({ host: '', port: 9849 });
    expect(loadConfig('all', [...base, '--metrics-address', '[::1]:0']).metricsAddress).toMatchObject({ host: '::1', port: 0 });
    expect(loadConfig('all', [...base, '--metrics-address', 'metrics.local:8080']).metricsAddress).toMatchObject({ host: 'metrics.local', port: 8080 });
  });
  it('refuses what is not host:port, naming the flag or key', () => {
    for (const bad of ['9859', 'localhost', 'http://x:1', '1.2.3.4:65536', ':-1', 'a b:1', '::1:80'])
      expect(() => loadConfig('controller', [...base, '--metrics-address', bad]), bad).toThrow(/^--metrics-address: .*host:port/);
    const f = join(dir, 'bad.yaml');
    writeFileSync(f, 'metricsAddress: 9859\n');
    expect(() => loadConfig('controller', [...base, '--config', f])).toThrow(/^metricsAddress: /);
  });
  it('comes from the config file, and an empty flag turns it off again', () => {
    const f = join(dir, 'on.yaml');
    writeFileSync(f, 'metricsAddress: "0.0.0.0:9859"\n');
    expect(loadConfig('controller', [...base, '--config', f]).metricsAddress).toMatchObject({ host: '0.0.0.0', port: 9859 });
    expect(loadConfig('controller', [...base, '--config', f, '--metrics-address=']).metricsAddress).toBeUndefined();
  });
});
