import { keyOf } from '../helpers/config-key.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { kubernetesFrom } from '../../src/config/kubernetes.js';
import { loadConfig } from '../../src/config/load.js';

const dir = mkdtempSync(join(tmpdir(), 'sinter-k8s-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const kubeconfig = join(dir, 'kubeconfig');
writeFileSync(kubeconfig, 'apiVersion: v1\nkind: Config\n');
const pod = { KUBERNETES_SERVICE_HOST: '10.96.0.1', KUBERNETES_SERVICE_PORT: '443' };
const none = {};


describe('kubernetes: configuration', () => {
  it('defaults: auto, 60 s resync, 120 s grace; on for a controller in a pod, off outside one', () => {
    expect(kubernetesFrom(undefined, 'controller', pod)).toEqual({ enabled: true, kubeconfig: undefined, resyncSeconds: 60, graceSeconds: 120 });
    expect(kubernetesFrom(undefined, 'controller', none).enabled).toBe(false);
    expect(kubernetesFrom({ kubeconfig }, 'controller', none)).toMatchObject({ enabled: true, kubeconfig });
  });

  it('is off in `sinter all` unless explicitly enabled, and always off for the node plugin', () => {
    expect(kubernetesFrom(undefined, 'all', pod).enabled).toBe(false);
    expect(kubernetesFrom({ kubeconfig }, 'all', none).enabled).toBe(false);
    expect(kubernetesFrom({ enabled: true, kubeconfig }, 'all', none).enabled).toBe(true);
    expect(kubernetesFrom({ enabled: true }, 'all', pod).enabled).toBe(true);
    expect(kubernetesFrom({ enabled: true, kubeconfig }, 'node', pod).enabled).toBe(false);
    expect(kubernetesFrom({ enabled: false }, 'controller', pod).enabled).toBe(false);
    expect(kubernetesFrom({ enabled: 'false' }, 'controller', pod).enabled).toBe(false);
  });

  it('names the key at fault', () => {
    expect(keyOf(() => kubernetesFrom({ enabeld: true }, 'controller', pod))).toBe('kubernetes.enabeld');
    expect(keyOf(() => kubernetesFrom({ enabled: 'yes' }, 'controller', pod))).toBe('kubernetes.enabled');
    expect(keyOf(() => kubernetesFrom({ enabled: true }, 'controller', none))).toBe('kubernetes.enabled');
    expect(keyOf(() => kubernetesFrom({ kubeconfig: 'relative/path' }, 'controller', none))).toBe('kubernetes.kubeconfig');
    expect(keyOf(() => kubernetesFrom({ kubeconfig: join(dir, 'missing') }, 'controller', none))).toBe('kubernetes.kubeconfig');
    expect(keyOf(() => kubernetesFrom({ resyncSeconds: 0 }, 'controller', pod))).toBe('kubernetes.resyncSeconds');
    expect(keyOf(() => kubernetesFrom({ graceSeconds: 'soon' }, 'controller', pod))).toBe('kubernetes.graceSeconds');
    expect(keyOf(() => kubernetesFrom(['x'], 'controller', pod))).toBe('kubernetes');
  });

  it('is read from the config file by loadConfig', () => {
    const file = join(dir, 'sinter.yaml');
    writeFileSync(file, `backends:\n- name: b1\n  dataDir: ${dir}/data\nkubernetes:\n  enabled: true\n  kubeconfig: ${kubeconfig}\n  resyncSeconds: 5\n  graceSeconds: 30\n`);
    expect(loadConfig('controller', ['--config', file]).kubernetes).toEqual({ enabled: true, kubeconfig, resyncSeconds: 5, graceSeconds: 30 });
    writeFileSync(file, `backends:\n- name: b1\n  dataDir: ${dir}/data\nkubernetes:\n  resync: 5\n`);
    expect(keyOf(() => loadConfig('controller', ['--config', file]))).toBe('kubernetes.resync');
  });
});
