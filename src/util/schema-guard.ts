import type * as v from 'valibot';

/**
 * A valibot schema compiled into a plain predicate that accepts exactly what
 * `v.is(schema, x)` accepts. The schema stays the one definition; this only
 * makes checking it cheap where it runs once per record file at start-up:
 * `v.is` builds a dataset and a copy of every object it checks, ~5 µs a
 * record, a fifth of loading 10,000 volume records.
 *
 * Only the parts of valibot the record schemas use are understood (object,
 * string, number, custom, and a pipe of regex checks); anything else throws
 * here, when the module loads, rather than being checked differently.
 * test/unit/schema-guard.test.ts holds the two to agreement on arbitrary input.
 */
export function compileGuard<T>(schema: v.GenericSchema<unknown, T>): (x: unknown) => x is T {
  const check = compile(schema, '$');
  return (x: unknown): x is T => check(x);
}

/** The fields of a valibot schema or action this compiler reads (valibot 1.x's object shapes). */
interface Node {
  kind: string;
  type: string;
  async?: boolean;
  entries?: Record<string, Node>;
  check?: (x: unknown) => boolean;
  requirement?: unknown;
  pipe?: Node[];
}

type Check = (x: unknown) => boolean;

function compile(node: Node, at: string): Check {
  if (node.kind !== 'schema' || node.async) throw new Error(`compileGuard: ${at}: only synchronous schemas are supported (got ${node.kind} ${node.type})`);
  const base = compileBase(node, at);
  const steps = (node.pipe ?? []).slice(1).map((a, i) => compileAction(a, `${at}.pipe[${i + 1}]`));
  if (steps.length === 0) return base;
  return (x) => {
    if (!base(x)) return false;
    for (let i = 0; i < steps.length; i++) if (!steps[i]!(x)) return false;
    return true;
  };
}

function compileBase(node: Node, at: string): Check {
  switch (node.type) {
    case 'string':
      return (x) => typeof x === 'string';
    case 'number':
      return (x) => typeof x === 'number' && !Number.isNaN(x);
    case 'custom': {
      const fn = node.check;
      if (typeof fn !== 'function') throw new Error(`compileGuard: ${at}: custom schema without a check`);
      return (x) => fn(x);
    }
    case 'object': {
      const fields = Object.entries(node.entries ?? {}).map(([key, sub]) => {
        // Optional entries have default/fallback rules of their own: not needed by the records, so not modelled.
        if (['optional', 'exact_optional', 'nullish', 'undefinedable'].includes(sub.type)) throw new Error(`compileGuard: ${at}.${key}: optional entries are not supported`);
        return [key, compile(sub, `${at}.${key}`)] as const;
      });
      // Parallel arrays and an index loop: no iterator or tuple allocated per record (start-up checks 10,000 of them before the JIT warms up).
      const keys = fields.map(([k]) => k);
      const checks = fields.map(([, c]) => c);
      return (x) => {
        if (!x || typeof x !== 'object') return false;
        const o = x as Record<string, unknown>;
        for (let i = 0; i < keys.length; i++) {
          const key = keys[i]!;
          if (!(key in o) || !checks[i]!(o[key])) return false;
        }
        return true;
      };
    }
    default:
      throw new Error(`compileGuard: ${at}: schema type "${node.type}" is not supported`);
  }
}

function compileAction(a: Node, at: string): Check {
  if (a.kind === 'validation' && a.type === 'regex' && a.requirement instanceof RegExp) {
    const re = a.requirement;
    // valibot calls re.test(x) on every input; a global or sticky pattern would carry lastIndex between records.
    if (re.global || re.sticky) throw new Error(`compileGuard: ${at}: a global or sticky regex is not supported`);
    return (x) => re.test(x as string);
  }
  throw new Error(`compileGuard: ${at}: pipe action ${a.kind} "${a.type}" is not supported`);
}
