// The host commands sinter can run, found from its source with the TypeScript
// type checker rather than kept as a list: every call whose resolved signature
// is src/exec's `run` or `spawnDaemon` (the one door to host commands), with
// its command argument evaluated from its type (a literal, a union of
// literals, or a template like `mkfs.${fsType}` over a literal union), plus the
// wrappers src/exec itself puts in front of a command (nsenter, chroot).
// A command argument whose value the checker cannot pin down is reported as
// unresolved, so a new dynamic call cannot slip past the image checks.
import { dirname, join, relative, sep } from 'node:path';
import ts from 'typescript';
import { ROOT } from './k8s.js';

export interface HostCommandCall {
  /** The binary's name, as looked up in PATH. */
  command: string;
  /** Repository-relative source file and line of the call. */
  at: string;
  /** Top folder under src/ the call is in: node, backends, exec, … */
  area: string;
}

export interface HostCommandScan {
  calls: HostCommandCall[];
  /** Calls whose command argument is not a compile-time string set. */
  unresolved: string[];
}

const EXEC_DIR = join(ROOT, 'src', 'exec');

/** All string values a type can take, or undefined when it is not a finite set of string literals. */
function literals(t: ts.Type): string[] | undefined {
  if (t.isStringLiteral()) return [t.value];
  if (t.isUnion()) {
    const parts = t.types.map(literals);
    return parts.every((p) => p !== undefined) ? parts.flat() : undefined;
  }
  return undefined;
}

function valuesOf(checker: ts.TypeChecker, e: ts.Expression): string[] | undefined {
  if (ts.isStringLiteralLike(e)) return [e.text];
  if (ts.isTemplateExpression(e)) {
    let acc = [e.head.text];
    for (const span of e.templateSpans) {
      const vs = valuesOf(checker, span.expression);
      if (!vs) return undefined;
      acc = acc.flatMap((a) => vs.map((v) => a + v + span.literal.text));
    }
    return acc;
  }
  if (ts.isParenthesizedExpression(e) || ts.isAsExpression(e)) return valuesOf(checker, e.expression);
  return literals(checker.getTypeAtLocation(e));
}

export function scanHostCommands(): HostCommandScan {
  const configPath = join(ROOT, 'tsconfig.json');
  const cfg = ts.getParsedCommandLineOfConfigFile(configPath, {}, { ...ts.sys, onUnRecoverableConfigFileDiagnostic: (d) => { throw new Error(ts.flattenDiagnosticMessageText(d.messageText, '\n')); } });
  if (!cfg) throw new Error('cannot read tsconfig.json');
  const program = ts.createProgram({ rootNames: cfg.fileNames, options: { ...cfg.options, noEmit: true } });
  const checker = program.getTypeChecker();
  const calls: HostCommandCall[] = [];
  const unresolved: string[] = [];
  const where = (sf: ts.SourceFile, n: ts.Node) => `${relative(ROOT, sf.fileName).split(sep).join('/')}:${sf.getLineAndCharacterOfPosition(n.getStart(sf)).line + 1}`;
  const areaOf = (sf: ts.SourceFile) => relative(join(ROOT, 'src'), sf.fileName).split(sep)[0].replace(/\.ts$/, '');

  for (const sf of program.getSourceFiles()) {
    if (sf.isDeclarationFile || !sf.fileName.startsWith(join(ROOT, 'src') + sep)) continue;
    const inExec = dirname(sf.fileName) === EXEC_DIR;
    const visit = (n: ts.Node): void => {
      if (ts.isCallExpression(n) && ts.isPropertyAccessExpression(n.expression) && ['run', 'spawnDaemon'].includes(n.expression.name.text)) {
        const decl = checker.getResolvedSignature(n)?.declaration;
        if (decl && dirname(decl.getSourceFile().fileName) === EXEC_DIR && !inExec) {
          const arg = n.arguments[0];
          const vs = arg && valuesOf(checker, arg);
          if (!vs) unresolved.push(`${where(sf, n)}: ${n.getText(sf).slice(0, 80)}`);
          else for (const command of vs) calls.push({ command, at: where(sf, n), area: areaOf(sf) });
        }
      }
      // src/exec's own wrappers: `return ['nsenter', [...]]` in the method that wraps a command.
      if (inExec && ts.isMethodDeclaration(n) && n.name.getText(sf) === 'wrap' && n.body) {
        const onReturn = (r: ts.Node): void => {
          if (ts.isReturnStatement(r) && r.expression && ts.isArrayLiteralExpression(r.expression)) {
            const first = r.expression.elements[0];
            if (first && ts.isStringLiteralLike(first)) calls.push({ command: first.text, at: where(sf, r), area: 'exec' });
          }
          ts.forEachChild(r, onReturn);
        };
        ts.forEachChild(n.body, onReturn);
      }
      ts.forEachChild(n, visit);
    };
    visit(sf);
  }
  return { calls, unresolved };
}
