import { expect } from 'vitest';

/**
 * vitest's asymmetric matchers, typed `unknown` instead of vitest's `any` so a
 * matcher can sit inside an expected object without an unsafe-any assignment.
 */
export const stringContaining = (s: string): unknown => expect.stringContaining(s);
export const stringMatching = (re: string | RegExp): unknown => expect.stringMatching(re);
export const objectContaining = (o: object): unknown => expect.objectContaining(o);
export const arrayContaining = (a: unknown[]): unknown => expect.arrayContaining(a);
export const anything = (): unknown => expect.anything();
export const any = (ctor: unknown): unknown => expect.any(ctor);
