// ESLint formatter: one line per finding, `path:line:col: message [rule]`,
// paths relative to the repository, so CI logs name the place to fix.
import { relative } from 'node:path';

export default function format(results) {
  const lines = [];
  for (const r of results) {
    for (const m of r.messages) lines.push(`${relative(process.cwd(), r.filePath)}:${m.line ?? 0}:${m.column ?? 0}: ${m.message} [${m.ruleId ?? 'eslint'}]`);
  }
  return lines.length ? `${lines.join('\n')}\n${lines.length} lint finding(s)` : '';
}
