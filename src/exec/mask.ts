/** `s` with every non-empty secret replaced by ***: for command lines, outputs and messages that may echo one. */
export function maskSecrets(s: string, secrets: readonly string[] | undefined): string {
  let out = s;
  for (const sec of secrets ?? []) if (sec) out = out.split(sec).join('***');
  return out;
}
