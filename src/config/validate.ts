import { isAbsolute, normalize } from 'node:path';

/** A configuration mistake, named by the key at fault; the CLI exits 2 on it. */
export class ConfigError extends Error {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(`${key}: ${message}`);
    this.name = 'ConfigError';
  }
}

export type Obj = Record<string, unknown>;

export function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export function onlyKeys(o: Obj, allowed: readonly string[], where: string): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new ConfigError(where ? `${where}.${k}` : k, `unknown key (allowed: ${allowed.join(', ')})`);
  }
}

export function str(v: unknown, key: string): string {
  if (typeof v !== 'string' || v === '') throw new ConfigError(key, 'must be a non-empty string');
  return v;
}

export function absPath(v: unknown, key: string): string {
  const s = str(v, key);
  if (!isAbsolute(s)) throw new ConfigError(key, `"${s}" must be an absolute path`);
  const n = normalize(s);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

export function num(v: unknown, key: string, min: number, max: number): number {
  const n = typeof v === 'string' && v.trim() !== '' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isFinite(n) || n < min || n > max) throw new ConfigError(key, `must be a number from ${min} to ${max}`);
  return n;
}

export function int(v: unknown, key: string, min: number, max: number): number {
  const n = num(v, key, min, max);
  if (!Number.isInteger(n)) throw new ConfigError(key, 'must be a whole number');
  return n;
}

export function strMap(v: unknown, key: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) throw new ConfigError(key, 'must be a map of strings');
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (typeof val !== 'string' && typeof val !== 'number' && typeof val !== 'boolean') throw new ConfigError(`${key}.${k}`, 'must be a string');
    out[k] = String(val);
  }
  return out;
}

export function oneOf<T extends string>(v: unknown, key: string, options: readonly T[]): T {
  if (typeof v !== 'string' || !(options as readonly string[]).includes(v)) throw new ConfigError(key, `must be one of ${options.join(', ')}`);
  return v as T;
}
