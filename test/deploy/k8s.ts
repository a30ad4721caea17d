// Helpers for the deploy/ tests: render a kustomization with the real
// `kubectl kustomize` (offline; see findKubectl), parse YAML streams, and walk
// the pods, containers and mounts of the rendered objects.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const DEPLOY = join(ROOT, 'deploy', 'kubernetes');
export const OVERLAYS = ['single-node', 'iscsi', 'ceph'] as const;
export type Overlay = (typeof OVERLAYS)[number];

export type Obj = Record<string, unknown>;

export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [k: string]: unknown;
}

export interface Container {
  name: string;
  image?: string;
  command?: string[];
  args?: string[];
  env?: { name: string; value?: string; valueFrom?: Obj }[];
  ports?: { name?: string; containerPort: number; protocol?: string }[];
  volumeMounts?: { name: string; mountPath: string; mountPropagation?: string; readOnly?: boolean }[];
  securityContext?: {
    privileged?: boolean;
    runAsUser?: number;
    runAsNonRoot?: boolean;
    allowPrivilegeEscalation?: boolean;
    readOnlyRootFilesystem?: boolean;
    capabilities?: { add?: string[]; drop?: string[] };
  };
  livenessProbe?: { httpGet?: { path?: string; port: number | string }; exec?: { command: string[] } };
  lifecycle?: { preStop?: { exec?: { command: string[] } } };
}

export interface Volume {
  name: string;
  hostPath?: { path: string; type?: string };
  emptyDir?: Obj;
  configMap?: { name: string };
  secret?: { secretName: string };
  persistentVolumeClaim?: { claimName: string };
}

export interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  volumes?: Volume[];
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  serviceAccountName?: string;
  automountServiceAccountToken?: boolean;
  securityContext?: { runAsUser?: number; runAsGroup?: number; runAsNonRoot?: boolean; fsGroup?: number };
}

export interface Workload {
  obj: K8sObject;
  /** "DaemonSet/sinter-node" */
  id: string;
  pod: PodSpec;
}

export interface KubectlInfo {
  path: string;
  clientVersion: string;
  kustomizeVersion: string;
}

let kubectl: KubectlInfo | undefined;

/**
 * The kubectl that renders the kustomizations: $KUBECTL, else `kubectl` on PATH.
 * `kubectl kustomize` needs no cluster and no network.
 */
export function findKubectl(): KubectlInfo {
  if (kubectl) return kubectl;
  const candidates = process.env.KUBECTL ? [process.env.KUBECTL] : (process.env.PATH ?? '').split(delimiter).map((d) => join(d, 'kubectl'));
  const path = candidates.find((p) => existsSync(p));
  if (!path)
    throw new Error(
      'no kubectl found ($KUBECTL or PATH): the deploy tests render deploy/kubernetes with `kubectl kustomize` (kubectl >= 1.27, which embeds kustomize v5)',
    );
  const out = execFileSync(path, ['version', '--client'], { encoding: 'utf8', timeout: 20_000 });
  const clientVersion = /Client Version:\s*(\S+)/.exec(out)?.[1] ?? 'unknown';
  const kustomizeVersion = /Kustomize Version:\s*(\S+)/.exec(out)?.[1] ?? 'unknown';
  kubectl = { path, clientVersion, kustomizeVersion };
  return kubectl;
}

export function parseYamlStream(text: string, what: string): K8sObject[] {
  const out: K8sObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length) throw new Error(`${what}: ${doc.errors[0].message}`);
    const v: unknown = doc.toJS();
    if (v === null || v === undefined) continue;
    out.push(v as K8sObject);
  }
  return out;
}

const rendered = new Map<string, K8sObject[]>();

/** `kubectl kustomize <dir>` parsed; dir is relative to deploy/kubernetes. */
export function render(dir: string): K8sObject[] {
  const cached = rendered.get(dir);
  if (cached) return cached;
  const { path } = findKubectl();
  const text = execFileSync(path, ['kustomize', join(DEPLOY, dir)], { encoding: 'utf8', timeout: 60_000, maxBuffer: 64 << 20 });
  const docs = parseYamlStream(text, `kubectl kustomize ${dir}`);
  rendered.set(dir, docs);
  return docs;
}

/** The example manifests (deploy/kubernetes/examples/*.yaml), each file's documents. */
export function examples(): Map<string, K8sObject[]> {
  const dir = join(DEPLOY, 'examples');
  const out = new Map<string, K8sObject[]>();
  for (const f of readdirSync(dir).filter((f) => f.endsWith('.yaml')).sort()) {
    out.set(f, parseYamlStream(readFileSync(join(dir, f), 'utf8'), `examples/${f}`));
  }
  return out;
}

export function gvk(o: K8sObject): string {
  return `${o.apiVersion}/${o.kind}`;
}

export function idOf(o: K8sObject): string {
  return `${o.kind}/${o.metadata.name}`;
}

export function workloads(docs: K8sObject[]): Workload[] {
  const out: Workload[] = [];
  for (const o of docs) {
    if (o.kind === 'Deployment' || o.kind === 'DaemonSet' || o.kind === 'StatefulSet') {
      const pod = ((o.spec as Obj).template as Obj).spec as PodSpec;
      out.push({ obj: o, id: idOf(o), pod });
    } else if (o.kind === 'Pod') {
      out.push({ obj: o, id: idOf(o), pod: o.spec as PodSpec });
    }
  }
  return out;
}

export function workload(docs: K8sObject[], id: string): Workload {
  const w = workloads(docs).find((x) => x.id === id);
  if (!w) throw new Error(`${id} is not in the rendered manifests`);
  return w;
}

export function allContainers(pod: PodSpec): { c: Container; init: boolean }[] {
  return [...(pod.initContainers ?? []).map((c) => ({ c, init: true })), ...pod.containers.map((c) => ({ c, init: false }))];
}

export function container(pod: PodSpec, name: string): Container {
  const c = allContainers(pod).find((x) => x.c.name === name)?.c;
  if (!c) throw new Error(`no container ${name}`);
  return c;
}

export function volumeOf(pod: PodSpec, name: string): Volume {
  const v = (pod.volumes ?? []).find((x) => x.name === name);
  if (!v) throw new Error(`no volume ${name}`);
  return v;
}

/** `--flag=value` / `--flag value` / `-flag=value` pairs of an argument list (value undefined for a bare flag). */
export function flagsOf(args: readonly string[]): { flag: string; value: string | undefined }[] {
  const out: { flag: string; value: string | undefined }[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('-')) continue;
    const eq = a.indexOf('=');
    if (eq > 0) out.push({ flag: a.slice(0, eq).replace(/^-+/, ''), value: a.slice(eq + 1) });
    else out.push({ flag: a.replace(/^-+/, ''), value: undefined });
  }
  return out;
}

export function flagValue(args: readonly string[], flag: string): string | undefined {
  return flagsOf(args).find((f) => f.flag === flag)?.value;
}

/** Substitutes $(VAR) the way the kubelet does for args, from plain values given. */
export function expandVars(s: string, env: Record<string, string>): string {
  return s.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, name: string) => env[name] ?? m);
}
