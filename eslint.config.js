// ESLint for sinter's TypeScript (source and tests), run by scripts/static-checks.sh
// before the tests: typescript-eslint's type-checked recommended rules. Types come
// from the tsconfig each file is compiled with: src/ from tsconfig.json (its
// noUncheckedIndexedAccess makes some `!` necessary there), tests from
// tsconfig.test.json (which turns that option off, so the same `!` is noise).
// A rule is turned off or tuned here only with the reason on its line.
import eslint from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  // dist/ is build output; src/csi/generated/ is written by proto-loader-gen-types (npm run gen:csi-types).
  { ignores: ['dist/**', 'node_modules/**', 'src/csi/generated/**', '**/*.mjs', '**/*.cjs', 'eslint.config.js'] },
  eslint.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { project: './tsconfig.test.json', tsconfigRootDir: import.meta.dirname } },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // Promise-returning handlers and interface methods are `async` so that a validation throw is a rejection, which callers' `.catch()` and `.rejects` rely on.
      '@typescript-eslint/require-await': 'off',
      // A leading underscore marks a parameter or destructured rest-sibling kept for its position or to drop a key.
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', ignoreRestSiblings: true }],
      // Re-rejecting a caught error (typed unknown) passes on exactly what was thrown; new rejections still need an Error.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true }],
    },
  },
  {
    files: ['src/**/*.ts'],
    languageOptions: { parserOptions: { project: './tsconfig.json', tsconfigRootDir: import.meta.dirname } },
  },
);
